//! Tags as extended attributes: `user.musicfs.<field>` on every file, read from the catalog,
//! plus `user.musicfs.source` (the absolute source path) from the snapshot.

use std::borrow::Cow;
use std::error::Error;

use musicfs_core::meta::{TrackId, TrackRecord};
use musicfs_storage::Catalog;

/// Prefix of every attribute MusicFS exposes.
pub const XATTR_PREFIX: &str = "user.musicfs.";

/// The tag fields, in the order `listxattr` lists them.
pub const TAG_FIELDS: [&str; 15] = [
    "title",
    "artist",
    "album",
    "albumartist",
    "genre",
    "date",
    "track",
    "disc",
    "composer",
    "lyrics",
    "duration_ms",
    "bitrate",
    "sample_rate",
    "channels",
    "format",
];

/// The attribute holding the source path.
pub const SOURCE_FIELD: &str = "source";

/// The attribute listing a track's other copies (one line each: the copy's source path,
/// a tab, `same` for the same bytes or `retagged` for the same audio with other tags),
/// present only on tracks that have copies.
pub const ALTERNATES_FIELD: &str = "alternates";

/// The root's attribute listing every origin with its state (up, degraded or offline, with
/// why).
pub const ORIGINS_FIELD: &str = "origins";

/// Where track records come from (the catalog in the daemon, a map in tests).
pub trait TagSource: Send + Sync {
    /// The record of track `id`, or `None` when the catalog does not know it.
    fn track(&self, id: u64) -> Result<Option<TrackRecord>, Box<dyn Error + Send + Sync>>;

    /// The records of `ids`, in order (a source that can read them at once overrides this).
    fn tracks(
        &self,
        ids: &[u64],
    ) -> Result<Vec<Option<TrackRecord>>, Box<dyn Error + Send + Sync>> {
        ids.iter().map(|&id| self.track(id)).collect()
    }
}

impl TagSource for Catalog {
    fn track(&self, id: u64) -> Result<Option<TrackRecord>, Box<dyn Error + Send + Sync>> {
        Ok(self.get(TrackId(id))?)
    }

    fn tracks(
        &self,
        ids: &[u64],
    ) -> Result<Vec<Option<TrackRecord>>, Box<dyn Error + Send + Sync>> {
        let ids: Vec<TrackId> = ids.iter().map(|&id| TrackId(id)).collect();
        Ok(self.get_many(&ids)?)
    }
}

fn join(values: &[String]) -> Option<Cow<'_, str>> {
    match values {
        [] => None,
        [one] => Some(Cow::Borrowed(one.as_str())),
        many => Some(Cow::Owned(many.join("; "))),
    }
}

/// The value of tag `field` for `rec`, `None` when absent. Multi-valued tags are joined
/// with `"; "`, as the path templates do.
pub fn tag_value<'a>(rec: &'a TrackRecord, field: &str) -> Option<Cow<'a, str>> {
    let m = &rec.meta;
    let text = |v: &'a Option<String>| v.as_deref().map(Cow::Borrowed);
    let num = |v: Option<String>| v.map(Cow::Owned);
    match field {
        "title" => text(&m.title),
        "artist" => join(&m.artist),
        "album" => text(&m.album),
        "albumartist" => join(&m.album_artist),
        "genre" => join(&m.genre),
        "date" => text(&m.date),
        "track" => text(&m.track),
        "disc" => text(&m.disc),
        "composer" => join(&m.composer),
        "lyrics" => text(&m.lyrics),
        "duration_ms" => num(m.duration_ms.map(|v| v.to_string())),
        "bitrate" => num(m.bitrate.map(|v| v.to_string())),
        "sample_rate" => num(m.sample_rate.map(|v| v.to_string())),
        "channels" => num(m.channels.map(|v| v.to_string())),
        "format" => Some(rec.format_ext()),
        _ => None,
    }
    .filter(|v| !v.is_empty())
}

/// The field part of an attribute name, if it is one of ours.
pub fn field_of(name: &[u8]) -> Option<&str> {
    let rest = name.strip_prefix(XATTR_PREFIX.as_bytes())?;
    std::str::from_utf8(rest).ok()
}

/// Answer to a getxattr/listxattr: the size the caller must offer, or the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrReply {
    /// Size probe (`size == 0`): how many bytes the value or list takes.
    Size(u32),
    /// The value or the NUL-separated name list.
    Data(Vec<u8>),
}

/// Applies the size-probe and ERANGE rules of getxattr(2)/listxattr(2) to `bytes`.
pub fn sized_reply(bytes: Vec<u8>, size: u32) -> Result<XattrReply, crate::FsError> {
    if size == 0 {
        return u32::try_from(bytes.len())
            .map(XattrReply::Size)
            .map_err(|_| crate::FsError::AttributeRange {
                needed: bytes.len(),
                given: size,
            });
    }
    if bytes.len() > size as usize {
        return Err(crate::FsError::AttributeRange {
            needed: bytes.len(),
            given: size,
        });
    }
    Ok(XattrReply::Data(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use musicfs_core::meta::{Format, OriginId, ScanState, TrackMeta};

    fn rec() -> TrackRecord {
        TrackRecord {
            id: TrackId(1),
            origin: OriginId(0),
            rel_path: b"a.flac".to_vec(),
            format: Format::Flac,
            scan: ScanState::default(),
            meta: TrackMeta {
                title: Some("Song".into()),
                artist: vec!["A".into(), "B".into()],
                duration_ms: Some(1234),
                album: Some(String::new()),
                ..TrackMeta::default()
            },
        }
    }

    #[test]
    fn multi_valued_tags_join_with_semicolons_and_empty_ones_are_absent() {
        let r = rec();
        assert_eq!(tag_value(&r, "artist").as_deref(), Some("A; B"));
        assert_eq!(tag_value(&r, "title").as_deref(), Some("Song"));
        assert_eq!(tag_value(&r, "duration_ms").as_deref(), Some("1234"));
        assert_eq!(tag_value(&r, "format").as_deref(), Some("flac"));
        assert_eq!(tag_value(&r, "album"), None);
        assert_eq!(tag_value(&r, "genre"), None);
        assert_eq!(tag_value(&r, "nonsense"), None);
    }

    #[test]
    fn only_our_prefix_names_a_field() {
        assert_eq!(field_of(b"user.musicfs.title"), Some("title"));
        assert_eq!(field_of(b"user.other"), None);
        assert_eq!(field_of(b"security.selinux"), None);
    }
}
