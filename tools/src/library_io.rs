//! Library import and export: tags and play counts from other players' libraries (a beets
//! `library.db`, an iTunes/Music `Library.xml`) into the overlay and the access
//! statistics, and the catalog with its tag edits out to JSON or CSV (and back in).
//!
//! Tracks are matched by their source path (an origin's root joined with the file's path in
//! it). Imported tags become overrides only for the fields asked for (`--fields`), and only
//! where they differ from the file's own; the origin is never written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use musicfs_core::meta::{TrackId, TrackRecord};
use musicfs_core::overlay::{check_value, Override, TagField};
use musicfs_storage::{Catalog, Plays};
use serde::{Deserialize, Serialize};

/// One track as another library (or an export) describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Foreign {
    /// Its file, as that library names it.
    pub path: PathBuf,
    /// Its tags there (fields it has).
    pub tags: BTreeMap<TagField, Vec<String>>,
    /// Fields to apply whatever `--fields` says (an export's edits).
    pub edited: Vec<TagField>,
    /// Plays counted there.
    pub plays: u64,
    /// Its last play there, ns since the epoch (0: unknown).
    pub last_ns: i64,
    /// When its edits were made (an export's), ns since the epoch.
    pub edited_ns: Option<i64>,
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Entries read from the source.
    pub entries: usize,
    /// Entries matched to a catalogued track.
    pub matched: usize,
    /// Tracks whose overrides changed.
    pub overridden: usize,
    /// Tracks whose play statistics were merged.
    pub plays: usize,
    /// Paths of entries matching no track (the first 20).
    pub unmatched: Vec<String>,
}

/// Which kind of file `path` is, by its name.
pub fn read_any(path: &Path) -> Result<Vec<Foreign>> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".db") || name.ends_with(".blb") || name.ends_with(".sqlite") {
        read_beets(path)
    } else if name.ends_with(".xml") {
        read_itunes(path)
    } else if name.ends_with(".json") {
        read_export_json(path)
    } else if name.ends_with(".csv") {
        read_export_csv(path)
    } else {
        bail!(
            "{}: cannot tell the kind of library (beets .db, iTunes .xml, or a musicfs export .json/.csv)",
            path.display()
        )
    }
}

fn put(tags: &mut BTreeMap<TagField, Vec<String>>, field: TagField, value: Option<String>) {
    if let Some(v) = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    {
        if check_value(field, &v).is_ok() {
            tags.insert(field, vec![v]);
        }
    }
}

fn positive(n: Option<i64>) -> Option<String> {
    n.filter(|&n| n > 0).map(|n| n.to_string())
}

/// A beets library (SQLite, opened read-only): `items` and their flexible attributes
/// (`play_count`, `last_played` as the mpdstats plugin writes them).
pub fn read_beets(path: &Path) -> Result<Vec<Foreign>> {
    use rusqlite::{Connection, OpenFlags};
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the beets library {}", path.display()))?;
    let mut flex: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    if let Ok(mut q) = db.prepare("SELECT entity_id, key, value FROM item_attributes") {
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, rusqlite::types::Value>(2)?,
            ))
        })?;
        for row in rows {
            let (id, key, value) = row?;
            let num = match value {
                rusqlite::types::Value::Integer(n) => n as f64,
                rusqlite::types::Value::Real(f) => f,
                rusqlite::types::Value::Text(t) => t.trim().parse().unwrap_or(0.0),
                _ => 0.0,
            };
            let e = flex.entry(id).or_default();
            match key.as_str() {
                "play_count" => e.0 = num.max(0.0) as u64,
                "last_played" => e.1 = (num * 1e9) as i64,
                _ => {}
            }
        }
    }
    let mut q = db
        .prepare(
            "SELECT id, path, title, artist, album, albumartist, genre, year, month, day, \
             track, tracktotal, disc, disctotal, composer, lyrics FROM items",
        )
        .context("not a beets library (no items table)")?;
    let rows = q.query_map([], |r| {
        let text = |i: usize| r.get::<_, Option<String>>(i);
        let int = |i: usize| r.get::<_, Option<i64>>(i);
        let path: Vec<u8> = match r.get::<_, rusqlite::types::Value>(1)? {
            rusqlite::types::Value::Blob(b) => b,
            rusqlite::types::Value::Text(t) => t.into_bytes(),
            _ => Vec::new(),
        };
        let mut tags = BTreeMap::new();
        put(&mut tags, TagField::Title, text(2)?);
        put(&mut tags, TagField::Artist, text(3)?);
        put(&mut tags, TagField::Album, text(4)?);
        put(&mut tags, TagField::AlbumArtist, text(5)?);
        put(&mut tags, TagField::Genre, text(6)?);
        let date = match (
            int(7)?.unwrap_or(0),
            int(8)?.unwrap_or(0),
            int(9)?.unwrap_or(0),
        ) {
            (0, _, _) => None,
            (y, 0, _) => Some(format!("{y:04}")),
            (y, m, 0) => Some(format!("{y:04}-{m:02}")),
            (y, m, d) => Some(format!("{y:04}-{m:02}-{d:02}")),
        };
        put(&mut tags, TagField::Date, date);
        put(&mut tags, TagField::Track, positive(int(10)?));
        put(&mut tags, TagField::TrackTotal, positive(int(11)?));
        put(&mut tags, TagField::Disc, positive(int(12)?));
        put(&mut tags, TagField::DiscTotal, positive(int(13)?));
        put(&mut tags, TagField::Composer, text(14)?);
        put(&mut tags, TagField::Lyrics, text(15)?);
        Ok((r.get::<_, i64>(0)?, path, tags))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, path, tags) = row?;
        let (plays, last_ns) = flex.get(&id).copied().unwrap_or_default();
        out.push(Foreign {
            path: PathBuf::from(OsStr::from_bytes(&path)),
            tags,
            edited: Vec::new(),
            plays,
            last_ns,
            edited_ns: None,
        });
    }
    Ok(out)
}

/// An iTunes/Music `Library.xml` (plist): its `Tracks`, located by `file://` URL.
pub fn read_itunes(path: &Path) -> Result<Vec<Foreign>> {
    let root = plist::Value::from_file(path)
        .with_context(|| format!("cannot read the iTunes library {}", path.display()))?;
    let tracks = root
        .as_dictionary()
        .and_then(|d| d.get("Tracks"))
        .and_then(|t| t.as_dictionary())
        .context("not an iTunes library (no Tracks dictionary)")?;
    let mut out = Vec::new();
    for (_, t) in tracks {
        let Some(t) = t.as_dictionary() else { continue };
        let s = |k: &str| t.get(k).and_then(|v| v.as_string()).map(str::to_string);
        let n = |k: &str| t.get(k).and_then(|v| v.as_signed_integer());
        let Some(loc) = s("Location") else { continue };
        let Some(rest) = loc.strip_prefix("file://") else {
            continue;
        };
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(rest).collect();
        let mut tags = BTreeMap::new();
        put(&mut tags, TagField::Title, s("Name"));
        put(&mut tags, TagField::Artist, s("Artist"));
        put(&mut tags, TagField::Album, s("Album"));
        put(&mut tags, TagField::AlbumArtist, s("Album Artist"));
        put(&mut tags, TagField::Genre, s("Genre"));
        put(&mut tags, TagField::Composer, s("Composer"));
        put(&mut tags, TagField::Date, positive(n("Year")));
        put(&mut tags, TagField::Track, positive(n("Track Number")));
        put(&mut tags, TagField::TrackTotal, positive(n("Track Count")));
        put(&mut tags, TagField::Disc, positive(n("Disc Number")));
        put(&mut tags, TagField::DiscTotal, positive(n("Disc Count")));
        let last_ns = t
            .get("Play Date UTC")
            .and_then(|v| v.as_date())
            .and_then(|d| {
                std::time::SystemTime::from(d)
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
            })
            .map_or(0, |d| d.as_nanos() as i64);
        out.push(Foreign {
            path: PathBuf::from(OsStr::from_bytes(&bytes)),
            tags,
            edited: Vec::new(),
            plays: n("Play Count").unwrap_or(0).max(0) as u64,
            last_ns,
            edited_ns: None,
        });
    }
    Ok(out)
}

/// One track of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportTrack {
    /// Its source file (origin root joined with its path there).
    pub source: String,
    /// Its container.
    pub format: String,
    /// The tags shown (edits applied), by field name.
    pub tags: BTreeMap<String, Vec<String>>,
    /// The fields edited in MusicFS.
    pub edited: Vec<String>,
    /// Plays counted.
    pub plays: u64,
    /// Last play, ns since the epoch (0: never).
    pub last_played_ns: i64,
    /// When the edits were made, ns since the epoch (0: no edits).
    #[serde(default)]
    pub edited_ns: i64,
}

/// An export file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Export {
    /// Format version (1).
    pub musicfs_export: u32,
    /// Every catalogued track.
    pub tracks: Vec<ExportTrack>,
}

/// The catalog with its edits and plays, one entry per track in id order.
pub fn export(catalog: &Catalog) -> Result<Export> {
    let roots: BTreeMap<u32, PathBuf> = catalog
        .origins()?
        .into_iter()
        .map(|(id, p)| (id.0, p))
        .collect();
    let plays: BTreeMap<TrackId, Plays> = catalog.plays()?.into_iter().collect();
    let mut edits: BTreeMap<TrackId, Override> = BTreeMap::new();
    for (_, ov, tracks) in catalog.overrides()? {
        for id in tracks {
            edits.insert(id, ov.clone());
        }
    }
    let mut tracks = Vec::new();
    let mut failed = None;
    catalog.for_each(|rec: TrackRecord| {
        let Some(root) = roots.get(&rec.origin.0) else {
            return;
        };
        let ov = edits.get(&rec.id).cloned().unwrap_or_default();
        let shown = ov.apply(&rec.meta);
        let mut tags = BTreeMap::new();
        for f in TagField::ALL {
            let v = f.values(&shown);
            if !v.is_empty() {
                tags.insert(f.name().to_string(), v);
            }
        }
        let p = plays.get(&rec.id);
        let source = root.join(OsStr::from_bytes(&rec.rel_path));
        match source.to_str() {
            Some(s) => tracks.push(ExportTrack {
                source: s.to_string(),
                format: rec.format_ext().into_owned(),
                tags,
                edited: ov.edits.keys().map(|f| f.name().to_string()).collect(),
                plays: p.map_or(0, |p| p.count),
                last_played_ns: p.map_or(0, |p| p.last_ns),
                edited_ns: ov.changed_ns,
            }),
            None => failed = Some(source),
        }
    })?;
    if let Some(p) = failed {
        tracing::warn!("{}: not UTF-8, left out of the export", p.display());
    }
    Ok(Export {
        musicfs_export: 1,
        tracks,
    })
}

/// CSV columns after `source` and `format`: one per field, then these.
const CSV_TAIL: [&str; 4] = ["edited", "plays", "last_played_ns", "edited_ns"];

/// Writes `export` as CSV: a header, then one row per track; several values of a field are
/// joined with `; `.
pub fn write_csv(export: &Export, out: impl std::io::Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut header = vec!["source", "format"];
    header.extend(TagField::ALL.iter().map(|f| f.name()));
    header.extend(CSV_TAIL);
    w.write_record(&header)?;
    for t in &export.tracks {
        let mut row = vec![t.source.clone(), t.format.clone()];
        for f in TagField::ALL {
            row.push(
                t.tags
                    .get(f.name())
                    .map(|v| v.join("; "))
                    .unwrap_or_default(),
            );
        }
        row.push(t.edited.join(" "));
        row.push(t.plays.to_string());
        row.push(t.last_played_ns.to_string());
        row.push(t.edited_ns.to_string());
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

fn foreign_of(t: ExportTrack) -> Foreign {
    let mut tags = BTreeMap::new();
    for (k, v) in t.tags {
        if let Some(f) = TagField::parse(&k) {
            tags.insert(f, v);
        }
    }
    Foreign {
        path: PathBuf::from(t.source),
        tags,
        edited: t.edited.iter().filter_map(|f| TagField::parse(f)).collect(),
        plays: t.plays,
        last_ns: t.last_played_ns,
        edited_ns: (t.edited_ns != 0).then_some(t.edited_ns),
    }
}

fn read_export_json(path: &Path) -> Result<Vec<Foreign>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let export: Export = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a musicfs export", path.display()))?;
    if export.musicfs_export != 1 {
        bail!(
            "{}: export format {} is not supported",
            path.display(),
            export.musicfs_export
        );
    }
    Ok(export.tracks.into_iter().map(foreign_of).collect())
}

fn read_export_csv(path: &Path) -> Result<Vec<Foreign>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let source = col("source").context("not a musicfs export (no source column)")?;
    let mut out = Vec::new();
    for row in r.records() {
        let row = row?;
        let get = |i: Option<usize>| i.and_then(|i| row.get(i)).unwrap_or("").to_string();
        let mut tags = BTreeMap::new();
        for f in TagField::ALL {
            let v = get(col(f.name()));
            if !v.is_empty() {
                tags.insert(
                    f.name().to_string(),
                    v.split("; ").map(str::to_string).collect(),
                );
            }
        }
        out.push(foreign_of(ExportTrack {
            source: get(Some(source)),
            format: get(col("format")),
            tags,
            edited: get(col("edited"))
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            plays: get(col("plays")).parse().unwrap_or(0),
            last_played_ns: get(col("last_played_ns")).parse().unwrap_or(0),
            edited_ns: get(col("edited_ns")).parse().unwrap_or(0),
        }));
    }
    Ok(out)
}

/// Applies `entries` to the catalog: for each matched track, the fields in `fields` (and
/// the entry's own edited fields) that differ from the file's become overrides, and plays
/// are merged. `path_map` rewrites a path prefix first (`FROM`, `TO`).
pub fn import(
    catalog: &Catalog,
    entries: Vec<Foreign>,
    fields: &[TagField],
    path_map: Option<(&Path, &Path)>,
) -> Result<ImportReport> {
    let roots = catalog.origins()?;
    let mut report = ImportReport {
        entries: entries.len(),
        ..ImportReport::default()
    };
    let mut plays = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    for e in entries {
        let path = match path_map {
            Some((from, to)) => match e.path.strip_prefix(from) {
                Ok(rest) => to.join(rest),
                Err(_) => e.path.clone(),
            },
            None => e.path.clone(),
        };
        let mut found = None;
        for (origin, root) in &roots {
            if let Ok(rel) = path.strip_prefix(root) {
                if let Some(t) = catalog.find(*origin, rel.as_os_str().as_bytes())? {
                    found = Some(t);
                    break;
                }
            }
        }
        let Some(rec) = found else {
            if report.unmatched.len() < 20 {
                report.unmatched.push(path.to_string_lossy().into_owned());
            }
            continue;
        };
        report.matched += 1;
        let mut ov = catalog.override_of(rec.id)?.unwrap_or_default();
        let before = ov.edits.clone();
        for (field, values) in &e.tags {
            if !(fields.contains(field) || e.edited.contains(field)) {
                continue;
            }
            if field.values(&rec.meta) != *values {
                ov.edits.insert(*field, values.clone());
            }
        }
        for field in &e.edited {
            if !e.tags.contains_key(field) {
                ov.edits.insert(*field, Vec::new()); // edited away
            }
        }
        if ov.edits != before {
            ov.changed_ns = e.edited_ns.unwrap_or(now);
            let key = catalog.override_key(rec.id)?;
            if catalog.set_override(key, Some(&ov))? {
                report.overridden += 1;
            }
        }
        if e.plays > 0 {
            plays.push((
                rec.id,
                Plays {
                    count: e.plays,
                    last_ns: e.last_ns,
                },
            ));
        }
    }
    report.plays = plays.len();
    catalog.merge_plays(&plays)?;
    Ok(report)
}

/// Parses `--fields`: comma-separated names, or `all`.
pub fn parse_fields(s: &str) -> Result<Vec<TagField>> {
    if s.trim() == "all" {
        return Ok(TagField::ALL.to_vec());
    }
    s.split(',')
        .filter(|f| !f.trim().is_empty())
        .map(|f| TagField::parse(f).with_context(|| format!("unknown tag field {f:?}")))
        .collect()
}
