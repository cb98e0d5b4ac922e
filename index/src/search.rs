//! The search index: every tag field of every catalogued track in a tantivy index kept in
//! the state dir (`search/`), and the query language over it ([`query`]).
//!
//! It follows the catalog: [`SearchIndex::sync`] brings it to the catalog's change counter,
//! which it records in each commit. When the caller knows which tracks changed since the
//! counter the index holds (the refresh loop's [`Touched`]), only those documents are
//! rewritten; otherwise the index and the catalog are compared record by record (each
//! document holds a stamp of what it was made from) and only differences are written, so
//! a restart after a change costs one read of the catalog, not a rebuild. An index that is
//! missing, of another schema, or damaged is rebuilt from the catalog.
//!
//! Text is folded (lower case, accents removed: `Björk` = `bjork`) at indexing and in
//! queries alike. A search answers track ids with their scores, best first; which of them
//! the served tree shows, and what they are called, is the caller's business.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use musicfs_core::{TrackId, TrackRecord};
use musicfs_storage::catalog::{Catalog, CatalogError};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::scan::Touched;

pub mod collection;
pub mod query;

pub use collection::{Collection, Sort, SortKey};
pub use query::QueryError;

/// Bump when the schema or what is indexed changes: an index of another version is rebuilt.
const SCHEMA_VERSION: u32 = 2;
/// The folding analyzer's name in the index.
const FOLD: &str = "musicfs_fold";
/// Memory the writer may buffer before it flushes a segment.
const WRITER_HEAP: usize = 48 << 20;

/// Field names a query may use (`album_artist` is also accepted for `albumartist`).
pub const FIELD_NAMES: [&str; 16] = [
    "title",
    "artist",
    "album",
    "albumartist",
    "genre",
    "composer",
    "lyrics",
    "date",
    "format",
    "year",
    "track",
    "disc",
    "duration",
    "bitrate",
    "samplerate",
    "channels",
];

/// What can go wrong with the index.
#[derive(Debug, Error)]
pub enum SearchError {
    /// The query does not parse.
    #[error("query does not parse: {0}")]
    Query(#[from] QueryError),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// tantivy failed (I/O in the state dir, a damaged index).
    #[error("search index {dir}: {source}")]
    Index {
        /// The index directory.
        dir: PathBuf,
        /// tantivy's error.
        source: tantivy::TantivyError,
    },
    /// The index directory could not be made or cleared.
    #[error("search index {dir}: {source}")]
    Io {
        /// The index directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One result: a track and how well it matched (higher is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The track.
    pub id: TrackId,
    /// tantivy's BM25 score (1.0 for queries that do not score, such as ranges).
    pub score: f32,
}

/// What [`SearchIndex::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Documents written.
    pub written: u64,
    /// Documents deleted.
    pub deleted: u64,
    /// Whether the catalog was compared whole (else only the touched tracks were looked at).
    pub compared: bool,
}

/// The fields of the schema.
pub(crate) struct Fields {
    id: Field,
    stamp: Field,
    title: Field,
    artist: Field,
    album: Field,
    albumartist: Field,
    genre: Field,
    composer: Field,
    /// Title, artist, album, album artist, genre and composer together: where a bare word
    /// looks (one term lookup instead of six).
    all: Field,
    lyrics: Field,
    date: Field,
    format: Field,
    year: Field,
    track: Field,
    disc: Field,
    duration: Field,
    bitrate: Field,
    samplerate: Field,
    channels: Field,
}

impl Fields {
    fn schema() -> (Schema, Fields) {
        let mut b = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(FOLD)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let number = NumericOptions::default().set_indexed().set_fast();
        let fields = Fields {
            id: b.add_u64_field("id", number.clone()),
            stamp: b.add_u64_field("stamp", NumericOptions::default().set_fast()),
            title: b.add_text_field("title", text.clone()),
            artist: b.add_text_field("artist", text.clone()),
            album: b.add_text_field("album", text.clone()),
            albumartist: b.add_text_field("albumartist", text.clone()),
            genre: b.add_text_field("genre", text.clone()),
            composer: b.add_text_field("composer", text.clone()),
            all: b.add_text_field("all", text.clone()),
            lyrics: b.add_text_field("lyrics", text.clone()),
            date: b.add_text_field("date", text.clone()),
            format: b.add_text_field("format", text),
            year: b.add_u64_field("year", number.clone()),
            track: b.add_u64_field("track", number.clone()),
            disc: b.add_u64_field("disc", number.clone()),
            duration: b.add_u64_field("duration", number.clone()),
            bitrate: b.add_u64_field("bitrate", number.clone()),
            samplerate: b.add_u64_field("samplerate", number.clone()),
            channels: b.add_u64_field("channels", number),
        };
        (b.build(), fields)
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<query::FieldRef> {
        use query::FieldRef::{Number, Text};
        Some(match name {
            "title" => Text(self.title),
            "artist" => Text(self.artist),
            "album" => Text(self.album),
            "albumartist" | "album_artist" => Text(self.albumartist),
            "genre" => Text(self.genre),
            "composer" => Text(self.composer),
            "lyrics" => Text(self.lyrics),
            "date" => Text(self.date),
            "format" => Text(self.format),
            "year" => Number(self.year),
            "track" => Number(self.track),
            "disc" => Number(self.disc),
            "duration" => Number(self.duration),
            "bitrate" => Number(self.bitrate),
            "samplerate" => Number(self.samplerate),
            "channels" => Number(self.channels),
            _ => return None,
        })
    }

    /// Where a bare word looks.
    pub(crate) fn default_fields(&self) -> Vec<Field> {
        vec![self.all]
    }

    /// The fields copied into `all`.
    fn default_sources(&self) -> [Field; 6] {
        [
            self.title,
            self.artist,
            self.album,
            self.albumartist,
            self.genre,
            self.composer,
        ]
    }

    fn document(&self, t: &TrackRecord) -> TantivyDocument {
        let m = &t.meta;
        let mut d = TantivyDocument::new();
        d.add_u64(self.id, t.id.0);
        d.add_u64(self.stamp, stamp(t));
        let texts = [
            (self.title, m.title.iter().collect::<Vec<_>>()),
            (self.artist, m.artist.iter().collect()),
            (self.album, m.album.iter().collect()),
            (self.albumartist, m.album_artist.iter().collect()),
            (self.genre, m.genre.iter().collect()),
            (self.composer, m.composer.iter().collect()),
            (self.lyrics, m.lyrics.iter().collect()),
            (self.date, m.date.iter().collect()),
        ];
        let defaults = self.default_sources();
        for (field, values) in texts {
            for v in values {
                d.add_text(field, v);
                if defaults.contains(&field) {
                    d.add_text(self.all, v);
                }
            }
        }
        if m.title.is_none() {
            // The tree names such a track by its file stem: find it by that too.
            let stem = t.file_stem();
            d.add_text(self.title, &stem);
            d.add_text(self.all, &stem);
        }
        d.add_text(self.format, t.format_ext());
        let numbers = [
            (self.year, m.date.as_deref().and_then(leading_number)),
            (self.track, m.track.as_deref().and_then(leading_number)),
            (self.disc, m.disc.as_deref().and_then(leading_number)),
            (self.duration, m.duration_ms.map(|ms| ms / 1000)),
            (self.bitrate, m.bitrate.map(|b| u64::from(b) / 1000)),
            (self.samplerate, m.sample_rate.map(u64::from)),
            (self.channels, m.channels.map(u64::from)),
        ];
        for (field, v) in numbers {
            if let Some(v) = v {
                d.add_u64(field, v);
            }
        }
        d
    }
}

/// The digits a tag value starts with (`1969-10-22` → 1969, `3` → 3), if any.
fn leading_number(s: &str) -> Option<u64> {
    let s = s.trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// What a document was made from, hashed: a changed record gets a new stamp.
fn stamp(t: &TrackRecord) -> u64 {
    let made_of = format!("{:?}|{:?}|{:?}", t.meta, t.format, t.rel_path);
    xxhash_rust::xxh3::xxh3_64(made_of.as_bytes())
}

/// The folding analyzer: words split at anything not alphanumeric, lower-cased, accents
/// folded to ASCII where they have a folding.
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The library's search index.
pub struct SearchIndex {
    dir: PathBuf,
    index: Index,
    fields: Fields,
    reader: IndexReader,
    analyzer: TextAnalyzer,
    /// Held while syncing: one writer at a time in this process.
    writing: Mutex<()>,
    /// Bumped by every sync that changed the index ([`SearchIndex::version`]).
    version: AtomicU64,
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it (empty: [`SearchIndex::sync`] fills it) when it
    /// is missing, and starting over when it is of another schema or cannot be opened.
    pub fn open(dir: &Path) -> Result<SearchIndex, SearchError> {
        match Self::open_existing(dir) {
            Ok(Some(index)) => return Ok(index),
            Ok(None) => {}
            Err(e) => warn!("{e}; rebuilding the search index from the catalog"),
        }
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|source| SearchError::Io {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        fs::create_dir_all(dir).map_err(|source| SearchError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        let (schema, fields) = Fields::schema();
        let index = Index::create_in_dir(dir, schema).map_err(tantivy_err(dir))?;
        Self::with_index(dir, index, fields)
    }

    /// The index in `dir` when it is there and of this schema; `Ok(None)` when it is not
    /// there or of another schema.
    fn open_existing(dir: &Path) -> Result<Option<SearchIndex>, SearchError> {
        if !dir.join("meta.json").exists() {
            return Ok(None);
        }
        let mmap = MmapDirectory::open(dir).map_err(|e| SearchError::Index {
            dir: dir.to_path_buf(),
            source: e.into(),
        })?;
        let index = Index::open(mmap).map_err(tantivy_err(dir))?;
        let (schema, fields) = Fields::schema();
        if index.schema() != schema || read_payload(&index, dir)?.schema != SCHEMA_VERSION {
            info!(dir = %dir.display(), "search index of another version: rebuilding it");
            return Ok(None);
        }
        Self::with_index(dir, index, fields).map(Some)
    }

    fn with_index(dir: &Path, index: Index, fields: Fields) -> Result<SearchIndex, SearchError> {
        let analyzer = analyzer();
        index.tokenizers().register(FOLD, analyzer.clone());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err(dir))?;
        Ok(SearchIndex {
            dir: dir.to_path_buf(),
            index,
            fields,
            reader,
            analyzer,
            writing: Mutex::new(()),
            version: AtomicU64::new(1),
        })
    }

    /// A number that changes whenever this process changed the index: what was found
    /// before may have changed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The catalog change counter the index reflects (0 for a new index).
    pub fn catalog_version(&self) -> Result<u64, SearchError> {
        Ok(read_payload(&self.index, &self.dir)?.catalog)
    }

    /// Brings the index to the catalog as it is now. `touched`, when given, is what changed
    /// in the catalog since change counter `since`: used when the index is at exactly that
    /// counter and the list is complete; otherwise the catalog is compared whole.
    pub fn sync(
        &self,
        catalog: &Catalog,
        touched: Option<(u64, &Touched)>,
    ) -> Result<Synced, SearchError> {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // Another process (`musicfs scan`) may have written it since.
        self.reader.reload().map_err(tantivy_err(&self.dir))?;
        let have = self.catalog_version()?;
        let want = catalog.change_counter()?;
        if have == want && have != 0 {
            return Ok(Synced::default());
        }
        let mut writer: IndexWriter = self
            .index
            .writer_with_num_threads(1, WRITER_HEAP)
            .map_err(tantivy_err(&self.dir))?;
        let synced = match touched {
            Some((since, t)) if since == have && !t.overflow && have != 0 => {
                self.write_touched(&mut writer, catalog, t)?
            }
            _ => self.write_differences(&mut writer, catalog)?,
        };
        let mut commit = writer.prepare_commit().map_err(tantivy_err(&self.dir))?;
        commit.set_payload(&format!("{SCHEMA_VERSION} {want}"));
        commit.commit().map_err(tantivy_err(&self.dir))?;
        writer
            .wait_merging_threads()
            .map_err(tantivy_err(&self.dir))?;
        self.reader.reload().map_err(tantivy_err(&self.dir))?;
        self.version.fetch_add(1, Ordering::Release);
        debug!(?synced, catalog = want, "search index synced");
        Ok(synced)
    }

    fn write_touched(
        &self,
        writer: &mut IndexWriter,
        catalog: &Catalog,
        touched: &Touched,
    ) -> Result<Synced, SearchError> {
        let mut synced = Synced::default();
        let mut seen = std::collections::HashSet::new();
        for &(id, _) in &touched.tracks {
            if !seen.insert(id) {
                continue;
            }
            writer.delete_term(Term::from_field_u64(self.fields.id, id.0));
            synced.deleted += 1;
            if let Some(t) = catalog.get(id)? {
                self.add(writer, &t)?;
                synced.written += 1;
            }
        }
        Ok(synced)
    }

    /// Compares every document's stamp with the catalog's record and rewrites what differs.
    fn write_differences(
        &self,
        writer: &mut IndexWriter,
        catalog: &Catalog,
    ) -> Result<Synced, SearchError> {
        let mut indexed = self.stamps()?;
        let mut synced = Synced {
            compared: true,
            ..Synced::default()
        };
        let mut failed = None;
        catalog.for_each(|t| {
            if failed.is_some() {
                return;
            }
            match indexed.remove(&t.id.0) {
                Some(s) if s == stamp(&t) => return,
                Some(_) => {
                    writer.delete_term(Term::from_field_u64(self.fields.id, t.id.0));
                    synced.deleted += 1;
                }
                None => {}
            }
            match self.add(writer, &t) {
                Ok(()) => synced.written += 1,
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        for id in indexed.into_keys() {
            writer.delete_term(Term::from_field_u64(self.fields.id, id));
            synced.deleted += 1;
        }
        Ok(synced)
    }

    fn add(&self, writer: &mut IndexWriter, t: &TrackRecord) -> Result<(), SearchError> {
        writer
            .add_document(self.fields.document(t))
            .map(drop)
            .map_err(tantivy_err(&self.dir))
    }

    /// Every live document's id and stamp.
    fn stamps(&self) -> Result<HashMap<u64, u64>, SearchError> {
        let searcher = self.reader.searcher();
        let mut out = HashMap::new();
        for segment in searcher.segment_readers() {
            let fast = segment.fast_fields();
            let ids = fast.u64("id").map_err(tantivy_err(&self.dir))?;
            let stamps = fast.u64("stamp").map_err(tantivy_err(&self.dir))?;
            for doc in segment.doc_ids_alive() {
                if let (Some(id), Some(s)) = (ids.first(doc), stamps.first(doc)) {
                    out.insert(id, s);
                }
            }
        }
        Ok(out)
    }
}

/// The first `limit` live matches of `q`, in index order, without scoring.
fn first_matches(
    searcher: &tantivy::Searcher,
    q: &dyn tantivy::query::Query,
    limit: usize,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    use tantivy::query::EnableScoring;
    use tantivy::{DocSet, TERMINATED};
    let weight = q.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut out = Vec::with_capacity(limit.min(1024));
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        let alive = segment.alive_bitset();
        let mut scorer = weight.scorer(segment, 1.0)?;
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            if out.len() >= limit {
                return Ok(out);
            }
            if alive.is_none_or(|a| a.is_alive(doc)) {
                out.push((1.0, DocAddress::new(ord as u32, doc)));
            }
            doc = scorer.advance();
        }
    }
    Ok(out)
}

/// Checks that `query` parses, without an index (configuration checks at start-up).
pub fn check_query(query: &str) -> Result<(), QueryError> {
    let (_, fields) = Fields::schema();
    query::parse(query, &fields, &analyzer()).map(drop)
}

impl SearchIndex {
    /// The tracks matching `query`, best first (equal scores in track-id order), at most
    /// `limit`.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        let (q, constant) = query::parse_ranked(query, &self.fields, &self.analyzer)?;
        let searcher = self.reader.searcher();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let top: Vec<(f32, DocAddress)> = if constant {
            // Every match scores the same: the first `limit` are as good as any, and
            // there is no need to visit the others (a range can match most of the
            // library).
            first_matches(&searcher, q.as_ref(), limit).map_err(tantivy_err(&self.dir))?
        } else {
            searcher
                .search(&q, &TopDocs::with_limit(limit))
                .map_err(tantivy_err(&self.dir))?
        };
        // The id column of each segment, opened once (not once per hit).
        let columns = searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().u64("id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(tantivy_err(&self.dir))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let ids = &columns[addr.segment_ord as usize];
            if let Some(id) = ids.first(addr.doc_id) {
                hits.push(Hit {
                    id: TrackId(id),
                    score,
                });
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(hits)
    }

    /// The tracks matching `query` in catalog-id order (the order the catalog first saw
    /// them), newest first when `newest_first`, at most `limit`: read from the id column,
    /// without scoring.
    pub fn search_by_id(
        &self,
        query: &str,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<TrackId>, SearchError> {
        let q = query::parse(query, &self.fields, &self.analyzer)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let order = if newest_first {
            tantivy::Order::Desc
        } else {
            tantivy::Order::Asc
        };
        let searcher = self.reader.searcher();
        let top: Vec<(u64, DocAddress)> = searcher
            .search(
                &q,
                &TopDocs::with_limit(limit).order_by_fast_field::<u64>("id", order),
            )
            .map_err(tantivy_err(&self.dir))?;
        Ok(top.into_iter().map(|(id, _)| TrackId(id)).collect())
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when the index holds no document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the index takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// The commit payload: schema version and the catalog counter indexed.
struct Payload {
    schema: u32,
    catalog: u64,
}

fn read_payload(index: &Index, dir: &Path) -> Result<Payload, SearchError> {
    let metas = index.load_metas().map_err(tantivy_err(dir))?;
    let parsed = metas.payload.as_deref().and_then(|p| {
        let (schema, catalog) = p.split_once(' ')?;
        Some(Payload {
            schema: schema.parse().ok()?,
            catalog: catalog.parse().ok()?,
        })
    });
    Ok(parsed.unwrap_or(Payload {
        schema: SCHEMA_VERSION,
        catalog: 0,
    }))
}

fn tantivy_err(dir: &Path) -> impl Fn(tantivy::TantivyError) -> SearchError + '_ {
    move |source| SearchError::Index {
        dir: dir.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
