//! The metadata overlay: tag edits MusicFS keeps for a track without touching its origin,
//! and the rendition that serves the edited file (a synthesised tag region spliced with
//! ranges of the origin's bytes).
//!
//! An [`Override`] belongs to a track's audio (its audio identity), so it follows the track
//! when the source moves or is re-tagged. Applying it to a [`TrackMeta`] gives the tags the
//! tree shows; a [`Rendition`] built from the source file by the index crate gives the bytes
//! a read returns. Both are plain data: nothing here reads a file.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use crate::meta::TrackMeta;

/// A tag field the scanner keeps and the overlay can edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TagField {
    /// Track title.
    Title,
    /// Track artist(s).
    Artist,
    /// Album title.
    Album,
    /// Album artist(s).
    AlbumArtist,
    /// Genre(s).
    Genre,
    /// Date (`1969`, `1969-10-22`).
    Date,
    /// Track number.
    Track,
    /// Track total.
    TrackTotal,
    /// Disc number.
    Disc,
    /// Disc total.
    DiscTotal,
    /// Composer(s).
    Composer,
    /// Unsynchronised lyrics.
    Lyrics,
}

impl TagField {
    /// Every field, in display order.
    pub const ALL: [TagField; 12] = [
        TagField::Title,
        TagField::Artist,
        TagField::Album,
        TagField::AlbumArtist,
        TagField::Genre,
        TagField::Date,
        TagField::Track,
        TagField::TrackTotal,
        TagField::Disc,
        TagField::DiscTotal,
        TagField::Composer,
        TagField::Lyrics,
    ];

    /// The name used on the command line and in exports.
    pub fn name(self) -> &'static str {
        match self {
            TagField::Title => "title",
            TagField::Artist => "artist",
            TagField::Album => "album",
            TagField::AlbumArtist => "albumartist",
            TagField::Genre => "genre",
            TagField::Date => "date",
            TagField::Track => "track",
            TagField::TrackTotal => "tracktotal",
            TagField::Disc => "disc",
            TagField::DiscTotal => "disctotal",
            TagField::Composer => "composer",
            TagField::Lyrics => "lyrics",
        }
    }

    /// The field a command-line name stands for (case-insensitive; a few common aliases).
    pub fn parse(name: &str) -> Option<TagField> {
        let n = name.trim().to_ascii_lowercase().replace(['_', ' '], "");
        Some(match n.as_str() {
            "title" => TagField::Title,
            "artist" => TagField::Artist,
            "album" => TagField::Album,
            "albumartist" => TagField::AlbumArtist,
            "genre" => TagField::Genre,
            "date" | "year" => TagField::Date,
            "track" | "tracknumber" => TagField::Track,
            "tracktotal" | "totaltracks" => TagField::TrackTotal,
            "disc" | "discnumber" | "disk" => TagField::Disc,
            "disctotal" | "totaldiscs" => TagField::DiscTotal,
            "composer" => TagField::Composer,
            "lyrics" => TagField::Lyrics,
            _ => return None,
        })
    }

    /// Whether the field holds a number (a total): its values must parse as one.
    pub fn is_count(self) -> bool {
        matches!(self, TagField::TrackTotal | TagField::DiscTotal)
    }

    /// The field's values in `meta` (empty when absent).
    pub fn values(self, meta: &TrackMeta) -> Vec<String> {
        let one = |v: &Option<String>| v.iter().cloned().collect();
        let count = |v: &Option<u32>| v.iter().map(|n| n.to_string()).collect();
        match self {
            TagField::Title => one(&meta.title),
            TagField::Artist => meta.artist.clone(),
            TagField::Album => one(&meta.album),
            TagField::AlbumArtist => meta.album_artist.clone(),
            TagField::Genre => meta.genre.clone(),
            TagField::Date => one(&meta.date),
            TagField::Track => one(&meta.track),
            TagField::TrackTotal => count(&meta.track_total),
            TagField::Disc => one(&meta.disc),
            TagField::DiscTotal => count(&meta.disc_total),
            TagField::Composer => meta.composer.clone(),
            TagField::Lyrics => one(&meta.lyrics),
        }
    }

    /// Sets the field in `meta` to `values` (empty: absent). Single-valued fields take the
    /// first value; a total that is not a number is absent.
    pub fn set(self, meta: &mut TrackMeta, values: &[String]) {
        let first = values.first().cloned();
        let count = values.first().and_then(|v| v.trim().parse::<u32>().ok());
        match self {
            TagField::Title => meta.title = first,
            TagField::Artist => meta.artist = values.to_vec(),
            TagField::Album => meta.album = first,
            TagField::AlbumArtist => meta.album_artist = values.to_vec(),
            TagField::Genre => meta.genre = values.to_vec(),
            TagField::Date => meta.date = first,
            TagField::Track => meta.track = first,
            TagField::TrackTotal => meta.track_total = count,
            TagField::Disc => meta.disc = first,
            TagField::DiscTotal => meta.disc_total = count,
            TagField::Composer => meta.composer = values.to_vec(),
            TagField::Lyrics => meta.lyrics = first,
        }
    }
}

impl fmt::Display for TagField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Edited fields and their new values; an empty list removes the field.
pub type Edits = BTreeMap<TagField, Vec<String>>;

/// Why an edit was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    /// `field=value` did not name a field.
    #[error("unknown tag field {0:?} (known: title, artist, album, albumartist, genre, date, track, tracktotal, disc, disctotal, composer, lyrics)")]
    UnknownField(String),
    /// The argument has no `=`.
    #[error("expected field=value, got {0:?}")]
    NotAnAssignment(String),
    /// A total that is not a number.
    #[error("{field} must be a number, got {value:?}")]
    NotANumber {
        /// The field.
        field: TagField,
        /// The value given.
        value: String,
    },
    /// A value with a NUL or longer than [`MAX_VALUE_LEN`].
    #[error("{field}: {why}")]
    BadValue {
        /// The field.
        field: TagField,
        /// What is wrong.
        why: &'static str,
    },
}

/// The longest tag value the overlay accepts (lyrics included).
pub const MAX_VALUE_LEN: usize = 64 << 10;

/// Parses `field=value` assignments into edits. The same field given twice collects its
/// values in order (`artist=A artist=B`); `field=` removes the field.
pub fn parse_assignments<S: AsRef<str>>(args: &[S]) -> Result<Edits, EditError> {
    let mut edits = Edits::new();
    for arg in args {
        let arg = arg.as_ref();
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| EditError::NotAnAssignment(arg.to_string()))?;
        let field = TagField::parse(name).ok_or_else(|| EditError::UnknownField(name.into()))?;
        let values = edits.entry(field).or_default();
        if value.is_empty() {
            continue;
        }
        check_value(field, value)?;
        values.push(value.to_string());
    }
    Ok(edits)
}

/// Checks one value of `field`.
pub fn check_value(field: TagField, value: &str) -> Result<(), EditError> {
    if value.contains('\0') {
        return Err(EditError::BadValue {
            field,
            why: "a value cannot hold a NUL",
        });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(EditError::BadValue {
            field,
            why: "a value is longer than 64 KiB",
        });
    }
    if field.is_count() && value.trim().parse::<u32>().is_err() {
        return Err(EditError::NotANumber {
            field,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// A track's tag edits as stored in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The edited fields.
    pub edits: Edits,
    /// When the edits last changed, ns since the epoch: the served file's modification
    /// time is at least this, so players that rescan by mtime see the change.
    pub changed_ns: i64,
}

impl Override {
    /// `meta` with the edits applied.
    pub fn apply(&self, meta: &TrackMeta) -> TrackMeta {
        let mut out = meta.clone();
        for (field, values) in &self.edits {
            field.set(&mut out, values);
        }
        out
    }

    /// A number that changes whenever the edits change (a rendition built for another
    /// version is rebuilt).
    pub fn version(&self) -> u64 {
        let mut bytes = Vec::new();
        for (field, values) in &self.edits {
            bytes.extend_from_slice(field.name().as_bytes());
            for v in values {
                bytes.push(0);
                bytes.extend_from_slice(v.as_bytes());
            }
            bytes.push(1);
        }
        bytes.extend_from_slice(&self.changed_ns.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}

/// A piece of a rendition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// Bytes made by the synthesiser.
    Bytes(Vec<u8>),
    /// `len` bytes of the origin's file from `offset`.
    Origin {
        /// Offset in the origin's file.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl Segment {
    /// The segment's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::Origin { len, .. } => *len,
        }
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a read of an overridden file returns: segments in order, and the facts of the
/// source file they were cut from (a rendition is only valid for that version of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// The pieces, in file order.
    pub segments: Vec<Segment>,
    /// Offset of each segment in the rendered file.
    pub starts: Vec<u64>,
    /// Size of the rendered file.
    pub size: u64,
    /// Modification time served, ns since the epoch.
    pub mtime_ns: i64,
    /// Size of the source file it was cut from.
    pub base_size: u64,
    /// Modification time of that source file.
    pub base_mtime_ns: i64,
    /// [`Override::version`] of the edits it shows.
    pub version: u64,
}

/// Collects segments, merging neighbours (adjacent origin ranges, consecutive bytes).
#[derive(Debug, Default)]
pub struct SegmentsBuilder {
    segments: Vec<Segment>,
}

impl SegmentsBuilder {
    /// An empty list.
    pub fn new() -> SegmentsBuilder {
        SegmentsBuilder::default()
    }

    /// Appends synthesised bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        if b.is_empty() {
            return self;
        }
        if let Some(Segment::Bytes(last)) = self.segments.last_mut() {
            last.extend_from_slice(b);
        } else {
            self.segments.push(Segment::Bytes(b.to_vec()));
        }
        self
    }

    /// Appends `len` bytes of the origin from `offset`.
    pub fn origin(&mut self, offset: u64, len: u64) -> &mut Self {
        if len == 0 {
            return self;
        }
        if let Some(Segment::Origin { offset: o, len: l }) = self.segments.last_mut() {
            if *o + *l == offset {
                *l += len;
                return self;
            }
        }
        self.segments.push(Segment::Origin { offset, len });
        self
    }

    /// Appends another list.
    pub fn extend(&mut self, other: SegmentsBuilder) -> &mut Self {
        for s in other.segments {
            match s {
                Segment::Bytes(b) => self.bytes(&b),
                Segment::Origin { offset, len } => self.origin(offset, len),
            };
        }
        self
    }

    /// Total length so far.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The segments.
    pub fn into_segments(self) -> Vec<Segment> {
        self.segments
    }
}

impl Rendition {
    /// A rendition of `segments`, cut from a source of `base_size` bytes modified at
    /// `base_mtime_ns`, showing edits of `version` changed at `changed_ns`.
    pub fn new(
        segments: Vec<Segment>,
        base_size: u64,
        base_mtime_ns: i64,
        version: u64,
        changed_ns: i64,
    ) -> Rendition {
        let mut starts = Vec::with_capacity(segments.len());
        let mut at = 0u64;
        for s in &segments {
            starts.push(at);
            at += s.len();
        }
        Rendition {
            segments,
            starts,
            size: at,
            mtime_ns: base_mtime_ns.max(changed_ns),
            base_size,
            base_mtime_ns,
            version,
        }
    }

    /// Whether the rendition was cut from this version of the source and shows these edits.
    pub fn fits(&self, base_size: u64, base_mtime_ns: i64, version: u64) -> bool {
        self.base_size == base_size
            && self.base_mtime_ns == base_mtime_ns
            && self.version == version
    }

    /// Reads `buf.len()` bytes at `offset` of the rendered file (short only at its end):
    /// synthesised bytes from memory, the rest through `origin(buf, offset)`, which reads
    /// the source like [`std::os::unix::fs::FileExt::read_at`] filling the buffer. A source
    /// shorter than the rendition expects is an error, never zeros.
    pub fn read_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        mut origin: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.size - offset) as usize;
        let mut i = self.starts.partition_point(|&s| s <= offset) - 1;
        let mut done = 0usize;
        while done < want {
            let at = offset + done as u64;
            let seg = &self.segments[i];
            let within = at - self.starts[i];
            let n = ((seg.len() - within) as usize).min(want - done);
            let out = &mut buf[done..done + n];
            match seg {
                Segment::Bytes(b) => out.copy_from_slice(&b[within as usize..within as usize + n]),
                Segment::Origin { offset: o, .. } => {
                    let got = origin(out, o + within)?;
                    if got < n {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the source file is shorter than when its tags were edited",
                        ));
                    }
                }
            }
            done += n;
            i += 1;
        }
        Ok(want)
    }
}

/// The renditions the FUSE read path serves: those of the tree being published and of the
/// one before it, so a file opened from either tree reads the bytes its size promised.
#[derive(Debug, Default)]
pub struct RenditionSet {
    current: std::collections::HashMap<u64, std::sync::Arc<Rendition>>,
    previous: std::collections::HashMap<u64, std::sync::Arc<Rendition>>,
}

impl RenditionSet {
    /// The rendition of track `track` whose rendered size and mtime are these (what the
    /// tree node shows), if there is one.
    pub fn find(&self, track: u64, size: u64, mtime_ns: i64) -> Option<std::sync::Arc<Rendition>> {
        [&self.current, &self.previous]
            .into_iter()
            .filter_map(|m| m.get(&track))
            .find(|r| r.size == size && r.mtime_ns == mtime_ns)
            .cloned()
    }

    /// The set after a publish showing `current`: this set's current becomes previous.
    pub fn next(
        &self,
        current: std::collections::HashMap<u64, std::sync::Arc<Rendition>>,
    ) -> RenditionSet {
        RenditionSet {
            current,
            previous: self.current.clone(),
        }
    }

    /// Whether no rendition is served.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_parse_collect_and_refuse_bad_input() {
        let e = parse_assignments(&["title=X", "artist=A", "Artist=B", "genre="]).unwrap();
        assert_eq!(e[&TagField::Title], vec!["X"]);
        assert_eq!(e[&TagField::Artist], vec!["A", "B"]);
        assert!(e[&TagField::Genre].is_empty());
        assert!(matches!(
            parse_assignments(&["mood=happy"]),
            Err(EditError::UnknownField(_))
        ));
        assert!(matches!(
            parse_assignments(&["title"]),
            Err(EditError::NotAnAssignment(_))
        ));
        assert!(matches!(
            parse_assignments(&["tracktotal=ten"]),
            Err(EditError::NotANumber { .. })
        ));
        assert!(parse_assignments(&["title=a\0b"]).is_err());
    }

    #[test]
    fn an_override_replaces_only_its_fields() {
        let meta = TrackMeta {
            title: Some("Old".into()),
            artist: vec!["A".into()],
            album: Some("Al".into()),
            ..TrackMeta::default()
        };
        let ov = Override {
            edits: parse_assignments(&["title=New", "album=", "tracktotal=9"]).unwrap(),
            changed_ns: 5,
        };
        let m = ov.apply(&meta);
        assert_eq!(m.title.as_deref(), Some("New"));
        assert_eq!(m.artist, vec!["A"]);
        assert_eq!(m.album, None);
        assert_eq!(m.track_total, Some(9));
        let mut other = ov.clone();
        other.changed_ns = 6;
        assert_ne!(ov.version(), other.version());
    }

    #[test]
    fn reads_at_any_offset_join_bytes_and_origin_ranges() {
        let origin: Vec<u8> = (0..200u8).collect();
        let mut b = SegmentsBuilder::new();
        b.bytes(b"HEAD").origin(10, 50).origin(60, 40).bytes(b"T");
        let r = Rendition::new(b.into_segments(), 200, 1, 7, 9);
        assert_eq!(r.segments.len(), 3, "adjacent origin ranges merge");
        assert_eq!(r.size, 4 + 90 + 1);
        assert_eq!(r.mtime_ns, 9);
        let mut whole = b"HEAD".to_vec();
        whole.extend_from_slice(&origin[10..100]);
        whole.push(b'T');
        let read = |buf: &mut [u8], off: u64| {
            let off = off as usize;
            let n = buf.len().min(origin.len().saturating_sub(off));
            buf[..n].copy_from_slice(&origin[off..off + n]);
            Ok(n)
        };
        for off in 0..whole.len() {
            for len in [1usize, 3, 7, 64, 200] {
                let mut buf = vec![0u8; len];
                let n = r.read_at(&mut buf, off as u64, read).unwrap();
                let end = (off + len).min(whole.len());
                assert_eq!(&buf[..n], &whole[off..end], "off {off} len {len}");
            }
        }
        let mut buf = [0u8; 4];
        assert_eq!(r.read_at(&mut buf, r.size, read).unwrap(), 0);
        let short = |_: &mut [u8], _: u64| Ok(0);
        assert!(r.read_at(&mut buf, 4, short).is_err());
    }
}
