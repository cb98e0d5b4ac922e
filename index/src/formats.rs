//! Containers the built-in reader does not know, read by format plugins: a registry of
//! extensions → readers that the walk consults for files symphonia cannot read
//! ([`Format::Other`]) and the scanner calls for their tags.
//!
//! The daemon's plugin host registers a reader when a plugin with the format kind is loaded
//! and withdraws it when the plugin is unloaded; files of its extensions then appear at the
//! next walk and leave at the walk after it is gone. A built-in format is never handed to a
//! plugin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use musicfs_core::{Format, TrackMeta};
use musicfs_storage::origin::Source;

use crate::fields::{clean, clean_date, field_of_raw_key, push_unique, split_position, Field};

/// Reads the tags of one container (a format plugin, as the host wraps it).
pub trait FormatReader: Send + Sync {
    /// The plugin's name (for log lines and for withdrawing it).
    fn name(&self) -> &str;

    /// The tags and stream facts of `source` as (key, value) pairs: tag names as in Vorbis
    /// comments (`title`, `artist`, `albumartist`, `album`, `date`, `tracknumber`, ...) and
    /// the facts `duration_ms`, `sample_rate`, `channels`, `bitrate`.
    fn read(&self, source: &dyn Source) -> Result<Vec<(String, String)>, String>;
}

type Registry = HashMap<String, Arc<dyn FormatReader>>;

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: std::sync::OnceLock<RwLock<Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(RwLock::default)
}

/// Registers `reader` for `extensions` (compared case-insensitively, without the dot).
/// Returns the extensions it took: a built-in format's, or one another plugin holds, is
/// refused with a warning.
pub fn register(extensions: &[&str], reader: Arc<dyn FormatReader>) -> Vec<String> {
    let mut all = registry().write().unwrap_or_else(|p| p.into_inner());
    let mut took = Vec::new();
    for ext in extensions {
        let ext = ext.trim().trim_start_matches('.').to_ascii_lowercase();
        if ext.is_empty() || ext.contains('/') {
            continue;
        }
        if Format::from_ext(&ext).is_some() {
            tracing::warn!(
                plugin = reader.name(),
                ext,
                "a built-in format's extension stays built in"
            );
            continue;
        }
        match all.get(&ext) {
            Some(other) if other.name() != reader.name() => {
                tracing::warn!(
                    plugin = reader.name(),
                    ext,
                    holder = other.name(),
                    "another format plugin reads this extension"
                );
            }
            _ => {
                all.insert(ext.clone(), reader.clone());
                took.push(ext);
            }
        }
    }
    took
}

/// Withdraws every extension plugin `name` registered.
pub fn unregister(name: &str) {
    let mut all = registry().write().unwrap_or_else(|p| p.into_inner());
    all.retain(|_, r| r.name() != name);
}

/// The reader for files ending in `.ext`, if a plugin registered one.
pub fn reader_for(ext: &str) -> Option<Arc<dyn FormatReader>> {
    let all = registry().read().unwrap_or_else(|p| p.into_inner());
    if all.is_empty() {
        return None;
    }
    all.get(&ext.to_ascii_lowercase()).cloned()
}

/// The reader for a source path `rel`, by its extension.
pub fn reader_for_path(rel: &[u8]) -> Option<Arc<dyn FormatReader>> {
    let name = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
    let dot = name.iter().rposition(|b| *b == b'.').filter(|d| *d > 0)?;
    reader_for(std::str::from_utf8(&name[dot + 1..]).ok()?)
}

/// The [`TrackMeta`] for what a format plugin returned. Unknown keys are ignored; numbers
/// that do not parse are dropped.
pub fn meta_from_pairs(pairs: &[(String, String)]) -> TrackMeta {
    let mut m = TrackMeta::default();
    for (k, v) in pairs {
        match k.to_ascii_lowercase().as_str() {
            "duration_ms" => m.duration_ms = v.trim().parse().ok(),
            "sample_rate" => m.sample_rate = v.trim().parse().ok(),
            "channels" => m.channels = v.trim().parse().ok(),
            "bitrate" => m.bitrate = v.trim().parse().ok(),
            key => match field_of_raw_key(key) {
                Some(Field::Title) if m.title.is_none() => m.title = clean(v),
                Some(Field::Album) if m.album.is_none() => m.album = clean(v),
                Some(Field::Lyrics) if m.lyrics.is_none() => m.lyrics = clean(v),
                Some(Field::Date) if m.date.is_none() => m.date = clean_date(v),
                Some(Field::Artist) => push_unique(&mut m.artist, [v.clone()]),
                Some(Field::AlbumArtist) => push_unique(&mut m.album_artist, [v.clone()]),
                Some(Field::Genre) => push_unique(&mut m.genre, [v.clone()]),
                Some(Field::Composer) => push_unique(&mut m.composer, [v.clone()]),
                Some(Field::Track) if m.track.is_none() => {
                    let (n, total) = split_position(v);
                    m.track = n;
                    m.track_total = m.track_total.or(total);
                }
                Some(Field::Disc) if m.disc.is_none() => {
                    let (n, total) = split_position(v);
                    m.disc = n;
                    m.disc_total = m.disc_total.or(total);
                }
                Some(Field::TrackTotal) => m.track_total = crate::fields::parse_count(v),
                Some(Field::DiscTotal) => m.disc_total = crate::fields::parse_count(v),
                _ => {}
            },
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(&'static str);
    impl FormatReader for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn read(&self, _: &dyn Source) -> Result<Vec<(String, String)>, String> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn plugins_take_only_unknown_extensions_and_leave_cleanly() {
        let took = register(&["wvtest", ".WVX", "flac", ""], Arc::new(Fixed("a")));
        assert_eq!(took, ["wvtest", "wvx"]);
        assert!(register(&["wvtest"], Arc::new(Fixed("b"))).is_empty());
        assert_eq!(reader_for("WVTEST").unwrap().name(), "a");
        assert_eq!(reader_for_path(b"x/y/01 - a.wvx").unwrap().name(), "a");
        assert!(reader_for_path(b"x/.wvx").is_none());
        assert!(reader_for("flac").is_none());
        unregister("a");
        assert!(reader_for("wvtest").is_none());
    }

    #[test]
    fn pairs_become_meta() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let m = meta_from_pairs(&[
            p("Title", " So What "),
            p("Artist", "Miles Davis"),
            p("ARTIST", "John Coltrane"),
            p("Album Artist", "Miles Davis"),
            p("Track", "1/5"),
            p("Year", "1959"),
            p("duration_ms", "545000"),
            p("sample_rate", "44100"),
            p("channels", "x"),
            p("Comment", "ignored"),
        ]);
        assert_eq!(m.title.as_deref(), Some("So What"));
        assert_eq!(m.artist, ["Miles Davis", "John Coltrane"]);
        assert_eq!(m.album_artist, ["Miles Davis"]);
        assert_eq!((m.track.as_deref(), m.track_total), (Some("1"), Some(5)));
        assert_eq!(m.date.as_deref(), Some("1959"));
        assert_eq!(m.duration_ms, Some(545_000));
        assert_eq!(m.sample_rate, Some(44_100));
        assert_eq!(m.channels, None);
    }
}
