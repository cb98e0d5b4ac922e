//! Track metadata and the catalog record: what the scanner produces, the catalog stores and
//! the template renders.

use serde::{Deserialize, Serialize};

/// Stable id of a track in the catalog. Never reused; files in the tree take it as inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TrackId(pub u64);

/// Index of an origin in the catalog's origin table (and in a snapshot's origin list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OriginId(pub u32);

/// Audio container formats MusicFS recognises by extension and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Format {
    /// FLAC (Vorbis comments, picture blocks).
    Flac,
    /// MPEG-1/2 layer III (ID3v2, ID3v1).
    Mp3,
    /// MP4/M4A (AAC or ALAC; ilst atoms).
    M4a,
    /// Ogg Vorbis.
    Ogg,
    /// Ogg Opus.
    Opus,
    /// RIFF WAVE (INFO chunk).
    Wav,
    /// A container a format plugin reads (`musicfs-plugin-api`'s format kind): the tree
    /// keeps the source's extension ([`TrackRecord::format_ext`]) and serves its bytes
    /// unchanged.
    Other,
}

impl Format {
    /// Every format, in a fixed order.
    pub const ALL: [Format; 7] = [
        Format::Flac,
        Format::Mp3,
        Format::M4a,
        Format::Ogg,
        Format::Opus,
        Format::Wav,
        Format::Other,
    ];

    /// The extension used in the virtual tree (`$format`), lower case; `other` for
    /// [`Format::Other`], whose tracks keep their source's ([`TrackRecord::format_ext`]).
    pub fn ext(self) -> &'static str {
        match self {
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
            Format::M4a => "m4a",
            Format::Ogg => "ogg",
            Format::Opus => "opus",
            Format::Wav => "wav",
            Format::Other => "other",
        }
    }

    /// The format for a source file extension (case-insensitive), if it is one we read.
    pub fn from_ext(ext: &str) -> Option<Format> {
        let e = ext.to_ascii_lowercase();
        Some(match e.as_str() {
            "flac" => Format::Flac,
            "mp3" => Format::Mp3,
            "m4a" | "mp4" | "m4b" | "aac" | "alac" => Format::M4a,
            "ogg" | "oga" => Format::Ogg,
            "opus" => Format::Opus,
            "wav" | "wave" => Format::Wav,
            _ => return None,
        })
    }
}

/// Tags and stream facts of one track, as read from the file. `None`/empty means absent:
/// defaults ("Unknown Artist", ...) are applied when rendering, never stored.
///
/// Multi-valued tags (two ARTIST comments) keep every value in order; renderers join them
/// with `"; "`. Where a file carries both ID3v2 and ID3v1, the scanner keeps the ID3v2 value
/// and uses ID3v1 only for fields ID3v2 lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackMeta {
    /// Track title.
    pub title: Option<String>,
    /// Track artist(s).
    pub artist: Vec<String>,
    /// Album title.
    pub album: Option<String>,
    /// Album artist(s); albums group by this, falling back to `artist`.
    pub album_artist: Vec<String>,
    /// Genre(s).
    pub genre: Vec<String>,
    /// Date as tagged (`1969`, `1969-10-22`, ...); `$year` takes its first four digits.
    pub date: Option<String>,
    /// Track number as tagged, without the total: `3`, `A1`.
    pub track: Option<String>,
    /// Track total (`3/12` or TRACKTOTAL).
    pub track_total: Option<u32>,
    /// Disc number as tagged, without the total.
    pub disc: Option<String>,
    /// Disc total.
    pub disc_total: Option<u32>,
    /// Composer(s).
    pub composer: Vec<String>,
    /// Unsynchronised lyrics.
    pub lyrics: Option<String>,
    /// Duration in milliseconds.
    pub duration_ms: Option<u64>,
    /// Average bitrate in bits per second.
    pub bitrate: Option<u32>,
    /// Sample rate in Hz.
    pub sample_rate: Option<u32>,
    /// Channel count.
    pub channels: Option<u16>,
    /// The file embeds cover art.
    pub has_art: bool,
}

/// What a scan remembers of a source file to tell, without opening it, whether it changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanState {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number on the origin's filesystem.
    pub ino: u64,
    /// Status change time, nanoseconds since the epoch. A `chmod` or `chown` changes it,
    /// so a file whose owner or mode changed is rescanned like one whose content did.
    pub ctime_ns: i64,
    /// Owner and permission bits, where the origin reports them (local origins do);
    /// `None` for origins that do not, and for records of a catalog written before they
    /// were recorded (until the next scan sees the file).
    pub perm: Option<Perm>,
}

/// A source file's owner and permission bits, as the origin reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    /// Permission bits (`st_mode & 0o7777`): set-id, sticky, and rwx for user, group and
    /// others. The tree shows only the read and execute bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// One track in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRecord {
    /// Stable id (never reused).
    pub id: TrackId,
    /// The origin that holds the file.
    pub origin: OriginId,
    /// Path of the file relative to the origin root, as raw bytes (Unix paths need not be
    /// UTF-8).
    pub rel_path: Vec<u8>,
    /// Container format.
    pub format: Format,
    /// File facts at the last scan.
    pub scan: ScanState,
    /// Tags and stream facts.
    pub meta: TrackMeta,
}

impl TrackRecord {
    /// The source file's name without directory and extension, lossily decoded: the title
    /// used when the file has none.
    pub fn file_stem(&self) -> String {
        let name = self
            .rel_path
            .rsplit(|b| *b == b'/')
            .next()
            .unwrap_or(&self.rel_path);
        let stem = match name.iter().rposition(|b| *b == b'.') {
            Some(0) | None => name,
            Some(dot) => &name[..dot],
        };
        String::from_utf8_lossy(stem).into_owned()
    }

    /// The extension the tree shows (`$format`): the format's, or for [`Format::Other`]
    /// the source file's own, lower case.
    pub fn format_ext(&self) -> std::borrow::Cow<'static, str> {
        if self.format != Format::Other {
            return std::borrow::Cow::Borrowed(self.format.ext());
        }
        let name = self
            .rel_path
            .rsplit(|b| *b == b'/')
            .next()
            .unwrap_or(&self.rel_path);
        // Only a short alphanumeric extension is shown as it is (plugins register such).
        match name.iter().rposition(|b| *b == b'.') {
            Some(dot)
                if dot > 0
                    && (1..=8).contains(&(name.len() - dot - 1))
                    && name[dot + 1..].iter().all(u8::is_ascii_alphanumeric) =>
            {
                std::borrow::Cow::Owned(
                    String::from_utf8_lossy(&name[dot + 1..]).to_ascii_lowercase(),
                )
            }
            _ => std::borrow::Cow::Borrowed(Format::Other.ext()),
        }
    }
}

/// What a track's bytes are, for finding the same track in several places (two origins
/// mirroring a library, a symlink, a copy with other tags): computed when the file's tags
/// are read, from bytes that read fetches anyway.
///
/// `audio` names the audio: the format, the exact length of the audio payload (the file
/// minus its leading tag region, and minus trailing ID3v1/APEv2 tags) and a hash of the
/// payload's first [`IDENTITY_WINDOW`] bytes. Copies with other tags have the same `audio`.
/// `file` names the whole file: `audio` plus the size and a hash of the tag region and of
/// any trailing tags. Equal `file` means the same bytes at the same offsets, so a read can
/// move from one copy to the other mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The audio payload's identity.
    pub audio: u128,
    /// The whole file's identity.
    pub file: u128,
}

/// The tags two copies of one audio must not disagree on to be one track (title, artists,
/// album, track number), each folded (case, surrounding blanks) and hashed; `None` where
/// untagged. See [`CopyTags::agrees`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTags {
    /// Title.
    pub title: Option<u64>,
    /// Artists, in order.
    pub artist: Option<u64>,
    /// Album.
    pub album: Option<u64>,
    /// Track number.
    pub track: Option<u64>,
    /// Duration.
    pub duration_ms: Option<u64>,
}

/// Durations of copies of one audio may differ by this much (an estimate from a header
/// against one from the stream).
pub const COPY_DURATION_SLACK_MS: u64 = 1000;

impl CopyTags {
    /// The copy tags of `m`.
    pub fn of(m: &TrackMeta) -> CopyTags {
        fn fold(s: &str) -> u64 {
            xxhash_rust::xxh3::xxh3_64(s.trim().to_lowercase().as_bytes())
        }
        let artist = (!m.artist.is_empty()).then(|| {
            let joined: Vec<String> = m.artist.iter().map(|a| a.trim().to_lowercase()).collect();
            xxhash_rust::xxh3::xxh3_64(joined.join("\0").as_bytes())
        });
        CopyTags {
            title: m.title.as_deref().map(fold),
            artist,
            album: m.album.as_deref().map(fold),
            track: m.track.as_deref().map(fold),
            duration_ms: m.duration_ms,
        }
    }

    /// Whether two tracks of the same audio are the same track: no tag both have differs,
    /// durations within [`COPY_DURATION_SLACK_MS`].
    pub fn agrees(&self, o: &CopyTags) -> bool {
        fn same(a: Option<u64>, b: Option<u64>) -> bool {
            a.zip(b).is_none_or(|(a, b)| a == b)
        }
        let durations = self
            .duration_ms
            .zip(o.duration_ms)
            .is_none_or(|(a, b)| a.abs_diff(b) <= COPY_DURATION_SLACK_MS);
        durations
            && same(self.title, o.title)
            && same(self.artist, o.artist)
            && same(self.album, o.album)
            && same(self.track, o.track)
    }

    /// All four tags as one nonzero key when all are there (two complete copy tags agree
    /// only if their keys are equal); `None` for a partly tagged track.
    pub fn complete(&self) -> Option<u64> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [self.title?, self.artist?, self.album?, self.track?] {
            h.update(&part.to_le_bytes());
        }
        Some(h.digest().max(1))
    }
}

/// Bytes of a file's audio payload hashed into [`Identity::audio`].
pub const IDENTITY_WINDOW: usize = 4 << 10;

/// The names an album folder's cover art takes in the tree: the cover as JPEG or PNG,
/// and its two smaller renditions.
pub const COVER_NAMES: [&str; 4] = [
    "cover.jpg",
    "cover.png",
    "cover-medium.jpg",
    "cover-thumb.jpg",
];

/// Extensions (lower case) of the non-audio files an album folder shows beside its tracks:
/// pictures, cue sheets, rip logs and checksums, booklets, lyrics, notes and playlists.
pub const EXTRA_EXTS: [&str; 18] = [
    "jpg", "jpeg", "png", "gif", "webp", "bmp", "cue", "log", "pdf", "lrc", "txt", "nfo", "m3u",
    "m3u8", "md5", "sfv", "ffp", "accurip",
];

/// Whether a file named `name` (no directory) in an origin folder follows its album into
/// the tree: one of [`EXTRA_EXTS`] (case-insensitive), and not hidden (`.DS_Store`,
/// AppleDouble `._*` files) or a system file (`Thumbs.db`, `desktop.ini` have no such
/// extension).
pub fn is_extra(name: &[u8]) -> bool {
    if name.first() == Some(&b'.') {
        return false;
    }
    let Some(dot) = name.iter().rposition(|b| *b == b'.') else {
        return false;
    };
    let ext = &name[dot + 1..];
    EXTRA_EXTS
        .iter()
        .any(|e| e.as_bytes().eq_ignore_ascii_case(ext))
}

#[cfg(test)]
mod extra_tests {
    use super::is_extra;

    #[test]
    fn extras_are_known_non_audio_files_that_are_not_hidden() {
        for yes in [
            "cover.jpg",
            "Folder.JPG",
            "booklet.pdf",
            "01 a.lrc",
            "rip.log",
            "x.cue",
        ] {
            assert!(is_extra(yes.as_bytes()), "{yes}");
        }
        for no in [
            "._cover.jpg",
            ".DS_Store",
            "Thumbs.db",
            "desktop.ini",
            "a.flac",
            "a.exe",
            "README",
            "jpg",
        ] {
            assert!(!is_extra(no.as_bytes()), "{no}");
        }
    }
}
