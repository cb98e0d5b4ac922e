//! Smart collections: saved queries with an order and a limit, as the configuration's
//! `[collections.NAME]` tables give them, plus the built-in `Recently Added`.

use std::cmp::Ordering;

use musicfs_core::config::CollectionConfig;
use musicfs_core::{TrackId, TrackRecord};
use musicfs_storage::catalog::Catalog;

use super::{SearchError, SearchIndex};

/// Most tracks a collection without a `limit` holds.
pub const DEFAULT_LIMIT: usize = 10_000;
/// The built-in collection of the newest tracks.
pub const RECENTLY_ADDED: &str = "Recently Added";
/// How many tracks `Recently Added` holds.
const RECENTLY_ADDED_LIMIT: usize = 200;

/// What a collection is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Best match first.
    Relevance,
    /// When the catalog first saw the track (its id).
    Added,
    /// The year of its date.
    Year,
    /// Artist, then album, disc and track.
    Artist,
    /// Album, then disc and track.
    Album,
    /// Title.
    Title,
}

/// An order: a key and a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    /// The key.
    pub key: SortKey,
    /// Largest first.
    pub descending: bool,
}

impl Sort {
    /// Parses `relevance`, `added`, `year`, `artist`, `album` or `title`, each optionally
    /// with a leading `-` for the reverse order.
    pub fn parse(s: &str) -> Result<Sort, String> {
        let (descending, name) = match s.trim().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.trim()),
        };
        let key = match name {
            "relevance" => SortKey::Relevance,
            "added" => SortKey::Added,
            "year" => SortKey::Year,
            "artist" => SortKey::Artist,
            "album" => SortKey::Album,
            "title" => SortKey::Title,
            other => {
                return Err(format!(
                    "unknown sort `{other}` (relevance, added, year, artist, album, title; \
                     `-` before one reverses it)"
                ))
            }
        };
        Ok(Sort { key, descending })
    }
}

/// One collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Its name: the directory under `/.collections`.
    pub name: String,
    /// Its query.
    pub query: String,
    /// Its order.
    pub sort: Sort,
    /// Most tracks it holds.
    pub limit: usize,
}

impl Collection {
    /// The collections of a configuration, then the built-ins it does not redefine; the
    /// first error names the collection and what is wrong (a bad name or sort, a query that
    /// does not parse).
    pub fn from_config<'a>(
        configured: impl IntoIterator<Item = (&'a String, &'a CollectionConfig)>,
    ) -> Result<Vec<Collection>, String> {
        let mut out = Vec::new();
        for (name, c) in configured {
            let bad = |why: String| format!("collection `{name}`: {why}");
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(bad("a name is one non-empty path component".into()));
            }
            let sort = match &c.sort {
                Some(s) => Sort::parse(s).map_err(bad)?,
                None => Sort {
                    key: SortKey::Relevance,
                    descending: false,
                },
            };
            super::check_query(&c.query).map_err(|e| bad(format!("query does not parse: {e}")))?;
            out.push(Collection {
                name: name.clone(),
                query: c.query.clone(),
                sort,
                limit: c.limit.unwrap_or(DEFAULT_LIMIT),
            });
        }
        if !out.iter().any(|c| c.name == RECENTLY_ADDED) {
            out.push(Collection {
                name: RECENTLY_ADDED.into(),
                query: "*".into(),
                sort: Sort {
                    key: SortKey::Added,
                    descending: true,
                },
                limit: RECENTLY_ADDED_LIMIT,
            });
        }
        Ok(out)
    }

    /// Its tracks, in its order.
    pub fn tracks(
        &self,
        index: &SearchIndex,
        catalog: &Catalog,
    ) -> Result<Vec<TrackId>, SearchError> {
        if self.sort.key == SortKey::Added {
            return index.search_by_id(&self.query, self.limit, self.sort.descending);
        }
        // Every match when the order is not the index's own: the limit applies after
        // sorting.
        let take = match self.sort.key {
            SortKey::Relevance if !self.sort.descending => self.limit,
            _ => usize::MAX >> 1,
        };
        let hits = index.search(&self.query, take.min(index.len() as usize + 1))?;
        let mut ids: Vec<TrackId> = hits.iter().map(|h| h.id).collect();
        match self.sort.key {
            SortKey::Relevance => {
                if self.sort.descending {
                    ids.reverse();
                }
            }
            key => {
                let mut keyed: Vec<(TrackRecord, TrackId)> = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(r) = catalog.get(id)? {
                        keyed.push((r, id));
                    }
                }
                keyed.sort_by(|(a, ia), (b, ib)| {
                    let o = compare(key, a, b);
                    let o = if self.sort.descending { o.reverse() } else { o };
                    // Ties in the order the catalog first saw them, either way.
                    o.then(ia.cmp(ib))
                });
                ids = keyed.into_iter().map(|(_, id)| id).collect();
            }
        }
        ids.truncate(self.limit);
        Ok(ids)
    }
}

fn compare(key: SortKey, a: &TrackRecord, b: &TrackRecord) -> Ordering {
    let text = |v: Option<&String>| v.map(|s| s.to_lowercase());
    let first = |v: &Vec<String>| text(v.first());
    let year = |r: &TrackRecord| r.meta.date.as_deref().and_then(super::leading_number);
    let number = |v: &Option<String>| v.as_deref().and_then(super::leading_number);
    let in_album = |a: &TrackRecord, b: &TrackRecord| {
        number(&a.meta.disc)
            .cmp(&number(&b.meta.disc))
            .then(number(&a.meta.track).cmp(&number(&b.meta.track)))
    };
    match key {
        SortKey::Relevance | SortKey::Added => Ordering::Equal,
        SortKey::Year => year(a).cmp(&year(b)),
        SortKey::Title => text(a.meta.title.as_ref()).cmp(&text(b.meta.title.as_ref())),
        SortKey::Album => text(a.meta.album.as_ref())
            .cmp(&text(b.meta.album.as_ref()))
            .then_with(|| in_album(a, b)),
        SortKey::Artist => first(&a.meta.artist)
            .cmp(&first(&b.meta.artist))
            .then_with(|| text(a.meta.album.as_ref()).cmp(&text(b.meta.album.as_ref())))
            .then_with(|| in_album(a, b)),
    }
}
