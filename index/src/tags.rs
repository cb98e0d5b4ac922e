//! Tag and stream-fact reading with symphonia, without decoding audio.
//!
//! # Which tag wins
//!
//! symphonia 0.6's probe reads *trailing* metadata first (ID3v1 and APE sit at fixed
//! offsets from the end), then leading metadata (ID3v2) while it searches for the
//! container, then the container's own tags (Vorbis comments, MP4 `ilst`, RIFF `INFO`).
//! Each arrives as a separate [`MetadataRevision`] tagged with a [`MetadataId`]. We rank the
//! revisions by that id, not by arrival order: ID3v2 first, then the container's native tags,
//! then APE, then ID3v1. Each field is taken whole from the best-ranked revision that has it,
//! so ID3v1 only fills fields ID3v2 lacks, and a multi-valued field is never a mix of two
//! tag blocks.

use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use musicfs_core::{Format, Identity, TrackMeta};
use musicfs_storage::origin::{LocalOrigin, OriginError, OriginSpec, Source};
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::well_known as fmt_ids;
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::well_known as meta_ids;
use symphonia::core::meta::{
    MetadataId, MetadataOptions, MetadataRevision, RawValue, StandardTag, Tag,
};

use crate::blocks::Blocked;
use crate::fields::{self, Field};
use crate::riff;

/// Why a file's tags could not be read. The `Display` text is the human reason the scanner
/// reports for a skipped file.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// The file could not be read.
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    /// The origin could not open the file (gone, unreadable, not a regular file).
    #[error("cannot open file: {0}")]
    Open(#[from] OriginError),
    /// The file has no bytes.
    #[error("empty file (0 bytes)")]
    Empty,
    /// The file ends before its headers do.
    #[error("truncated file: data ends inside the headers")]
    Truncated,
    /// No known container was found in the bytes.
    #[error("not a recognised audio file ({0})")]
    Unrecognised(String),
    /// The container is recognised but its structure is broken.
    #[error("malformed audio file: {0}")]
    Malformed(String),
    /// A container symphonia reads but MusicFS does not serve (Matroska, AIFF, CAF, ...).
    #[error("unsupported container: {0}")]
    UnsupportedContainer(&'static str),
    /// The file's content is not the format its extension promises.
    #[error("extension says {expected} but the content is {found}")]
    FormatMismatch {
        /// Format implied by the extension.
        expected: &'static str,
        /// Format found in the content.
        found: &'static str,
    },
    /// The container holds no audio track.
    #[error("no audio track in the file")]
    NoAudioTrack,
    /// The tag reader panicked on this input; caught so one hostile file cannot take the
    /// scanner down.
    #[error("tag reader crashed on this file: {0}")]
    Panicked(String),
}

impl From<SymphoniaError> for TagError {
    fn from(e: SymphoniaError) -> Self {
        match e {
            SymphoniaError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                TagError::Truncated
            }
            SymphoniaError::IoError(io) => TagError::Io(io),
            SymphoniaError::Unsupported(msg) if msg.contains("no suitable format reader") => {
                TagError::Unrecognised("no known audio container in it".into())
            }
            SymphoniaError::Unsupported(msg) => TagError::Unrecognised(msg.to_string()),
            other => TagError::Malformed(other.to_string()),
        }
    }
}

/// Reads the container format, tags and stream facts of the file at `path` (a file outside
/// any configured origin, e.g. for a test or a diagnostic tool).
///
/// The file is opened through a local origin at its directory, as the scanner opens
/// sources: read-only, with `O_NOATIME` where allowed. See [`read_tags_from`].
pub fn read_tags(path: &Path) -> Result<(Format, TrackMeta), TagError> {
    let path = std::path::absolute(path)?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(TagError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a path to a file",
        )));
    };
    let source = LocalOrigin::open(&OriginSpec::local(dir))?.open_file(Path::new(name))?;
    let expected = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_ext);
    read_tags_from(Arc::new(source), expected)
}

/// Reads the container format, tags and stream facts from a source an origin opened.
///
/// `expected` is the format the file's extension promises; when given, content of another
/// format is an error (Ogg Vorbis and Ogg Opus count as one family, since `.ogg` files often
/// hold Opus). Never panics: a panic inside symphonia is caught and returned as
/// [`TagError::Panicked`].
pub fn read_tags_from(
    source: Arc<dyn Source>,
    expected: Option<Format>,
) -> Result<(Format, TrackMeta), TagError> {
    read_track_from(source, expected).map(|(format, meta, _)| (format, meta))
}

/// An embedded picture: the front cover when the file marks one, else its first picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// The picture's bytes, as embedded (JPEG, PNG, ...).
    pub data: Vec<u8>,
    /// The picture is a PNG (by its media type or its signature).
    pub png: bool,
}

/// [`read_tags_from`] that also returns the file's cover picture, if it embeds one.
pub fn read_track_from(
    source: Arc<dyn Source>,
    expected: Option<Format>,
) -> Result<(Format, TrackMeta, Option<Picture>), TagError> {
    let len = source.len();
    if len == 0 {
        return Err(TagError::Empty);
    }
    let source = blocked(source);
    read_guarded(source, len, expected)
}

/// A source without a file descriptor is remote (each read is a request): read in blocks.
fn blocked(source: Arc<dyn Source>) -> Arc<dyn Source> {
    match source.raw_fd() {
        Some(_) => source,
        None => Arc::new(Blocked::new(source)),
    }
}

/// [`read_inner`] with a panic in symphonia turned into an error.
fn read_guarded(
    source: Arc<dyn Source>,
    len: u64,
    expected: Option<Format>,
) -> Result<(Format, TrackMeta, Option<Picture>), TagError> {
    match catch_unwind(AssertUnwindSafe(|| read_inner(source, len, expected))) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::warn!(panic = %msg, "symphonia panicked while probing a file");
            Err(TagError::Panicked(msg))
        }
    }
}

/// What reading a track's file found: [`read_track_from`] plus the file's [`Identity`].
#[derive(Debug)]
pub struct TrackRead {
    /// The container format.
    pub format: Format,
    /// Tags and stream facts.
    pub meta: TrackMeta,
    /// The cover picture, if the file embeds one.
    pub picture: Option<Picture>,
    /// What the file's bytes are (`None` when reading them for it failed: the track is
    /// still cataloged, only not matched with its copies).
    pub identity: Option<Identity>,
}

/// Reads a track's tags, cover and identity, from the same reads where they overlap.
pub fn read_track_identity(
    source: Arc<dyn Source>,
    expected: Option<Format>,
) -> Result<TrackRead, TagError> {
    let len = source.len();
    if len == 0 {
        return Err(TagError::Empty);
    }
    let raw = source.clone();
    let source = blocked(source);
    let (format, meta, picture) = read_guarded(source.clone(), len, expected)?;
    let identity = match crate::identity::identity_split(source.as_ref(), raw.as_ref(), format) {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the file for its identity");
            None
        }
    };
    Ok(TrackRead {
        format,
        meta,
        picture,
        identity,
    })
}

/// Reads a track of a container a format plugin registered (see [`crate::formats`]): its
/// tags and facts from the plugin, its identity over the whole file. A plugin that fails or
/// panics makes the file a logged skip.
pub fn read_plugin_track(source: Arc<dyn Source>, rel: &[u8]) -> Result<TrackRead, TagError> {
    let len = source.len();
    if len == 0 {
        return Err(TagError::Empty);
    }
    let reader = crate::formats::reader_for_path(rel).ok_or_else(|| {
        TagError::Unrecognised("no format plugin reads this extension any more".into())
    })?;
    let raw = source.clone();
    let source = blocked(source);
    let pairs = catch_unwind(AssertUnwindSafe(|| reader.read(source.as_ref())))
        .map_err(|_| TagError::Panicked(format!("format plugin {} panicked", reader.name())))?
        .map_err(|why| TagError::Malformed(format!("format plugin {}: {why}", reader.name())))?;
    let meta = crate::formats::meta_from_pairs(&pairs);
    let identity =
        match crate::identity::identity_split(source.as_ref(), raw.as_ref(), Format::Other) {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the file for its identity");
                None
            }
        };
    Ok(TrackRead {
        format: Format::Other,
        meta,
        picture: None,
        identity,
    })
}

/// A [`Source`] as the `Read + Seek` stream symphonia probes: every read is a
/// [`Source::read_at`] at the stream's position, so a local file and a remote object are
/// read alike (and no `fstat` is needed to learn the length: the source knows it).
///
/// The FLAC metadata block headers at the offsets in `hidden` read as padding: symphonia
/// 0.6 loads every APPLICATION block whole into memory (up to 16 MiB each, any number of
/// them, whatever `MetadataOptions` says), which we never use, while it skips padding by
/// seeking. A file carrying hundreds of MiB of them would otherwise cost that much memory
/// per tag-reading thread.
struct SourceReader {
    source: Arc<dyn Source>,
    pos: u64,
    hidden: Vec<u64>,
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read_at(buf, self.pos)?;
        let end = self.pos + n as u64;
        for &at in self.hidden.iter().filter(|&&at| at >= self.pos && at < end) {
            let b = &mut buf[(at - self.pos) as usize];
            *b = (*b & FLAC_LAST_BLOCK) | FLAC_PADDING;
        }
        self.pos = end;
        Ok(n)
    }
}

/// FLAC metadata block header: the last-block flag, and the types we look at.
const FLAC_LAST_BLOCK: u8 = 0x80;
const FLAC_PADDING: u8 = 1;
const FLAC_APPLICATION: u8 = 2;
/// More metadata blocks than any real file has: a damaged chain stops here.
const FLAC_MAX_BLOCKS: usize = 4096;

/// Offsets of the headers of the APPLICATION blocks of a FLAC stream starting at offset 0
/// (see [`SourceReader`]); empty when the source is not one or its metadata is damaged
/// (symphonia then reports the damage as usual).
fn flac_application_headers(source: &dyn Source, len: u64) -> Vec<u64> {
    let mut found = Vec::new();
    let mut header = [0u8; 4];
    if !matches!(source.read_at(&mut header, 0), Ok(4)) || &header != b"fLaC" {
        return found;
    }
    let mut at = 4u64;
    for _ in 0..FLAC_MAX_BLOCKS {
        if !matches!(source.read_at(&mut header, at), Ok(4)) {
            break;
        }
        if header[0] & !FLAC_LAST_BLOCK == FLAC_APPLICATION {
            found.push(at);
        }
        let block_len = u64::from(u32::from_be_bytes([0, header[1], header[2], header[3]]));
        at += 4 + block_len;
        if header[0] & FLAC_LAST_BLOCK != 0 || at >= len {
            break;
        }
    }
    found
}

impl Seek for SourceReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(at) => {
                self.pos = at;
                return Ok(at);
            }
            SeekFrom::End(delta) => (self.source.len(), delta),
            SeekFrom::Current(delta) => (self.pos, delta),
        };
        self.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

impl MediaSource for SourceReader {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.source.len())
    }
}

fn read_inner(
    source: Arc<dyn Source>,
    len: u64,
    expected: Option<Format>,
) -> Result<(Format, TrackMeta, Option<Picture>), TagError> {
    // The WAV INFO workaround (see `riff`) reads the same source by offset.
    let side = source.clone();
    let hidden = match expected {
        Some(Format::Flac) => flac_application_headers(source.as_ref(), len),
        _ => Vec::new(),
    };
    let reader = SourceReader {
        source,
        pos: 0,
        hidden,
    };
    let mss = MediaSourceStream::new(Box::new(reader), Default::default());
    let mut hint = Hint::new();
    if let Some(f) = expected {
        hint.with_extension(f.ext());
    }
    let mut reader = symphonia::default::get_probe().probe(
        &hint,
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    )?;
    let track = reader
        .default_track(TrackType::Audio)
        .cloned()
        .ok_or(TagError::NoAudioTrack)?;
    let found = container_format(reader.as_ref(), &track)?;
    if let Some(exp) = expected {
        if !same_family(exp, found) {
            return Err(TagError::FormatMismatch {
                expected: format_name(exp),
                found: format_name(found),
            });
        }
    }

    let extra = match found {
        Format::Wav => riff::wav_info_revision(side.as_ref(), len),
        _ => None,
    };
    let (mut meta, picture) = merge_revisions(reader.as_mut(), track.id, extra);
    stream_facts(&mut meta, &track, reader.as_ref(), len);
    Ok((found, meta, picture))
}

fn container_format(reader: &dyn FormatReader, track: &Track) -> Result<Format, TagError> {
    let id = reader.format_info().format;
    let info = reader.format_info();
    Ok(if id == fmt_ids::FORMAT_ID_FLAC {
        Format::Flac
    } else if id == fmt_ids::FORMAT_ID_MP3 {
        Format::Mp3
    } else if id == fmt_ids::FORMAT_ID_ISOMP4 || id == fmt_ids::FORMAT_ID_ADTS {
        Format::M4a
    } else if id == fmt_ids::FORMAT_ID_WAVE {
        Format::Wav
    } else if id == fmt_ids::FORMAT_ID_OGG {
        match &track.codec_params {
            Some(CodecParameters::Audio(p)) if p.codec == CODEC_ID_OPUS => Format::Opus,
            _ => Format::Ogg,
        }
    } else {
        return Err(TagError::UnsupportedContainer(info.long_name));
    })
}

fn same_family(a: Format, b: Format) -> bool {
    let ogg = |f| matches!(f, Format::Ogg | Format::Opus);
    a == b || (ogg(a) && ogg(b))
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Flac => "FLAC",
        Format::Mp3 => "MP3",
        Format::M4a => "MP4/M4A",
        Format::Ogg => "Ogg Vorbis",
        Format::Opus => "Ogg Opus",
        Format::Wav => "WAV",
        Format::Other => "a plugin's format",
    }
}

/// Lower is better; see the module docs.
fn revision_rank(id: MetadataId) -> u8 {
    if id == meta_ids::METADATA_ID_ID3V2 {
        0
    } else if id == meta_ids::METADATA_ID_APEV1 || id == meta_ids::METADATA_ID_APEV2 {
        2
    } else if id == meta_ids::METADATA_ID_ID3V1 {
        3
    } else {
        1
    }
}

fn merge_revisions(
    reader: &mut dyn FormatReader,
    track_id: u32,
    extra: Option<MetadataRevision>,
) -> (TrackMeta, Option<Picture>) {
    let mut parts: Vec<(u8, TrackMeta)> = Vec::new();
    let mut has_art = false;
    // (rank, front cover?) of the picture kept: a front cover beats any other picture,
    // then the better-ranked tag block wins.
    let mut picture: Option<((bool, u8), Picture)> = None;
    if let Some(rev) = &extra {
        parts.push((
            revision_rank(rev.info.metadata),
            revision_meta(rev, track_id),
        ));
    }
    let mut log = reader.metadata();
    loop {
        if let Some(rev) = log.current() {
            has_art |= revision_has_art(rev);
            let rank = revision_rank(rev.info.metadata);
            if let Some((front, p)) = revision_picture(rev) {
                let key = (!front, rank);
                if picture.as_ref().is_none_or(|(k, _)| key < *k) {
                    picture = Some((key, p));
                }
            }
            parts.push((
                revision_rank(rev.info.metadata),
                revision_meta(rev, track_id),
            ));
        }
        if log.pop().is_none() {
            break;
        }
    }
    parts.sort_by_key(|(rank, _)| *rank);

    let mut out = TrackMeta {
        has_art,
        ..TrackMeta::default()
    };
    for (_, p) in parts {
        fill_missing(&mut out, p);
    }
    (out, picture.map(|(_, p)| p))
}

/// The best picture of one tag block (its front cover, else its first picture) and whether
/// it is a front cover.
fn revision_picture(rev: &MetadataRevision) -> Option<(bool, Picture)> {
    use symphonia::core::meta::StandardVisualKey;
    let visuals = rev
        .media
        .visuals
        .iter()
        .chain(rev.per_track.iter().flat_map(|t| t.metadata.visuals.iter()))
        .filter(|v| !v.data.is_empty());
    let mut first = None;
    for v in visuals {
        let front = v.usage == Some(StandardVisualKey::FrontCover);
        if front || first.is_none() {
            let png = v.data.starts_with(b"\x89PNG\r\n\x1a\n")
                || v.media_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case("image/png"));
            let p = Picture {
                data: v.data.to_vec(),
                png,
            };
            if front {
                return Some((true, p));
            }
            first = Some((false, p));
        }
    }
    first
}

fn revision_has_art(rev: &MetadataRevision) -> bool {
    !rev.media.visuals.is_empty() || rev.per_track.iter().any(|t| !t.metadata.visuals.is_empty())
}

fn revision_meta(rev: &MetadataRevision, track_id: u32) -> TrackMeta {
    let mut m = TrackMeta::default();
    let track_tags = rev
        .per_track
        .iter()
        .filter(|t| t.track_id == u64::from(track_id))
        .flat_map(|t| t.metadata.tags.iter());
    for tag in rev.media.tags.iter().chain(track_tags) {
        apply_tag(&mut m, tag);
    }
    m
}

fn fill_missing(out: &mut TrackMeta, p: TrackMeta) {
    fn opt<T>(dst: &mut Option<T>, src: Option<T>) {
        if dst.is_none() {
            *dst = src;
        }
    }
    fn list(dst: &mut Vec<String>, src: Vec<String>) {
        if dst.is_empty() {
            *dst = src;
        }
    }
    opt(&mut out.title, p.title);
    list(&mut out.artist, p.artist);
    opt(&mut out.album, p.album);
    list(&mut out.album_artist, p.album_artist);
    list(&mut out.genre, p.genre);
    opt(&mut out.date, p.date);
    opt(&mut out.track, p.track);
    opt(&mut out.track_total, p.track_total);
    opt(&mut out.disc, p.disc);
    opt(&mut out.disc_total, p.disc_total);
    list(&mut out.composer, p.composer);
    opt(&mut out.lyrics, p.lyrics);
}

fn std_field(std: &StandardTag) -> Option<Field> {
    use StandardTag as S;
    Some(match std {
        S::TrackTitle(_) => Field::Title,
        S::Artist(_) => Field::Artist,
        S::Album(_) => Field::Album,
        S::AlbumArtist(_) => Field::AlbumArtist,
        S::Genre(_) => Field::Genre,
        S::RecordingDate(_)
        | S::ReleaseDate(_)
        | S::RecordingYear(_)
        | S::ReleaseYear(_)
        | S::RecordingTime(_)
        | S::ReleaseTime(_) => Field::Date,
        S::TrackNumber(_) => Field::Track,
        S::TrackTotal(_) => Field::TrackTotal,
        S::DiscNumber(_) => Field::Disc,
        S::DiscTotal(_) => Field::DiscTotal,
        S::Composer(_) => Field::Composer,
        S::Lyrics(_) => Field::Lyrics,
        _ => return None,
    })
}

/// The tag's text values. A parsed standard string wins over the raw text (an ID3v2 genre
/// `(17)` becomes `Rock`); otherwise every string of the raw value is kept.
fn text_values(tag: &Tag) -> Vec<String> {
    use StandardTag as S;
    if let Some(
        S::TrackTitle(s)
        | S::Artist(s)
        | S::Album(s)
        | S::AlbumArtist(s)
        | S::Genre(s)
        | S::Composer(s)
        | S::Lyrics(s),
    ) = &tag.std
    {
        return vec![s.as_str().to_owned()];
    }
    raw_strings(&tag.raw.value)
}

fn raw_strings(v: &RawValue) -> Vec<String> {
    match v {
        RawValue::String(s) => vec![s.as_str().to_owned()],
        RawValue::StringList(l) => l.iter().cloned().collect(),
        RawValue::UnsignedInt(n) if *n > 0 => vec![n.to_string()],
        RawValue::SignedInt(n) if *n > 0 => vec![n.to_string()],
        _ => Vec::new(),
    }
}

/// A numeric standard tag's value, for positions stored as numbers (MP4 `trkn`, ID3v1).
fn std_number(std: &Option<StandardTag>) -> Option<u64> {
    use StandardTag as S;
    match std {
        Some(S::TrackNumber(n) | S::TrackTotal(n) | S::DiscNumber(n) | S::DiscTotal(n)) => {
            Some(*n).filter(|n| *n > 0)
        }
        _ => None,
    }
}

fn apply_tag(m: &mut TrackMeta, tag: &Tag) {
    let field = match &tag.std {
        Some(std) => std_field(std),
        None => fields::field_of_raw_key(&tag.raw.key),
    };
    let Some(field) = field else { return };
    match field {
        Field::Title => set_first(&mut m.title, text_values(tag), fields::clean),
        Field::Album => set_first(&mut m.album, text_values(tag), fields::clean),
        Field::Lyrics => set_first(&mut m.lyrics, text_values(tag), fields::clean),
        Field::Date => set_first(&mut m.date, text_values(tag), fields::clean_date),
        Field::Artist => fields::push_unique(&mut m.artist, text_values(tag)),
        Field::AlbumArtist => fields::push_unique(&mut m.album_artist, text_values(tag)),
        Field::Genre => fields::push_unique(&mut m.genre, text_values(tag)),
        Field::Composer => fields::push_unique(&mut m.composer, text_values(tag)),
        Field::Track => apply_position(&mut m.track, &mut m.track_total, tag),
        Field::Disc => apply_position(&mut m.disc, &mut m.disc_total, tag),
        Field::TrackTotal => apply_total(&mut m.track_total, tag),
        Field::DiscTotal => apply_total(&mut m.disc_total, tag),
    }
}

fn set_first(dst: &mut Option<String>, values: Vec<String>, f: fn(&str) -> Option<String>) {
    if dst.is_none() {
        *dst = values.iter().find_map(|v| f(v));
    }
}

/// Positions are read from the raw text when there is one, so `A1` survives and `3/12`
/// yields its total; numeric-only sources (MP4, ID3v1) go through the standard tag.
fn apply_position(pos: &mut Option<String>, total: &mut Option<u32>, tag: &Tag) {
    if let RawValue::String(s) = &tag.raw.value {
        let (p, t) = fields::split_position(s);
        // A raw `3/12` is attached to two standard tags (number and total); only the number
        // one reaches here, and the total comes along from the same split.
        if pos.is_none() {
            *pos = p;
        }
        if total.is_none() {
            *total = t;
        }
        return;
    }
    if let Some(StandardTag::TrackTotal(_) | StandardTag::DiscTotal(_)) = &tag.std {
        return;
    }
    if pos.is_none() {
        *pos = std_number(&tag.std).map(|n| n.to_string()).or_else(|| {
            raw_strings(&tag.raw.value)
                .into_iter()
                .find_map(|v| fields::clean(&v))
        });
    }
}

fn apply_total(total: &mut Option<u32>, tag: &Tag) {
    if total.is_some() {
        return;
    }
    *total = match std_number(&tag.std) {
        Some(n) => u32::try_from(n).ok(),
        None => match &tag.raw.value {
            // `3/12` under a total key is still a position string; take what follows the `/`.
            RawValue::String(s) => match s.split_once('/') {
                Some((_, t)) => fields::parse_count(t),
                None => fields::parse_count(s),
            },
            _ => None,
        },
    };
}

fn stream_facts(m: &mut TrackMeta, track: &Track, reader: &dyn FormatReader, file_len: u64) {
    if let Some(CodecParameters::Audio(p)) = &track.codec_params {
        m.sample_rate = p.sample_rate.filter(|r| *r > 0);
        m.channels = p
            .channels
            .as_ref()
            .and_then(|c| u16::try_from(c.count()).ok())
            .filter(|c| *c > 0);
    }
    m.duration_ms = duration_ms(track, m.sample_rate).or_else(|| {
        let info = reader.media_info();
        let tb = info.time_base?;
        let t = tb.calc_duration(info.duration?)?;
        u64::try_from(t.as_millis()).ok()
    });
    m.bitrate = m
        .duration_ms
        .filter(|d| *d > 0)
        .and_then(|d| u32::try_from(u128::from(file_len) * 8000 / u128::from(d)).ok());
}

fn duration_ms(track: &Track, sample_rate: Option<u32>) -> Option<u64> {
    if let (Some(tb), Some(dur)) = (track.time_base, track.duration) {
        if let Some(t) = tb.calc_duration(dur) {
            if let Ok(ms) = u64::try_from(t.as_millis()) {
                return Some(ms);
            }
        }
    }
    let frames = track.num_frames?;
    let rate = u64::from(sample_rate?);
    Some(frames.saturating_mul(1000) / rate)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A file in memory that counts the bytes read from it.
    #[derive(Debug)]
    struct Counted {
        bytes: Vec<u8>,
        read: AtomicU64,
    }

    impl Source for Counted {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - from);
            buf[..n].copy_from_slice(&self.bytes[from..from + n]);
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }

        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }
    }

    fn block(out: &mut Vec<u8>, kind: u8, last: bool, body: &[u8]) {
        let len = body.len() as u32;
        let flag = if last { FLAC_LAST_BLOCK } else { 0 };
        out.push(flag | kind);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(body);
    }

    fn crc(bytes: &[u8], poly: u16, width: u32) -> u16 {
        let top = 1u16 << (width - 1);
        let mask = if width == 16 {
            u16::MAX
        } else {
            (1 << width) - 1
        };
        let mut c = 0u16;
        for &b in bytes {
            c ^= u16::from(b) << (width - 8);
            for _ in 0..8 {
                c = if c & top != 0 {
                    (c << 1) ^ poly
                } else {
                    c << 1
                } & mask;
            }
        }
        c
    }

    /// One FLAC frame of 192 silent mono 16-bit samples at 44.1 kHz (a constant subframe).
    fn silent_frame() -> Vec<u8> {
        let mut f = vec![0xFF, 0xF8, 0x19, 0x08, 0x00];
        f.push(crc(&f, 0x07, 8) as u8);
        f.extend_from_slice(&[0x00, 0x00, 0x00]);
        let c = crc(&f, 0x8005, 16);
        f.extend_from_slice(&c.to_be_bytes());
        f
    }

    /// A FLAC stream of one silent frame with `apps` APPLICATION blocks of `app_len` bytes
    /// each between its stream info and its Vorbis comment (title "Held").
    fn flac_with_application_blocks(apps: usize, app_len: usize) -> Vec<u8> {
        let mut info = Vec::new();
        info.extend_from_slice(&192u16.to_be_bytes());
        info.extend_from_slice(&192u16.to_be_bytes());
        info.extend_from_slice(&[0; 6]);
        // 44100 Hz (20 bits), 1 channel (3 bits: 0), 16 bits (5 bits: 15), 192 samples.
        let packed: u64 = (44100 << 44) | (15 << 36) | 192;
        info.extend_from_slice(&packed.to_be_bytes());
        info.extend_from_slice(&[0; 16]);
        let mut out = b"fLaC".to_vec();
        block(&mut out, 0, false, &info);
        let mut app = b"TEST".to_vec();
        app.resize(app_len, 0xAB);
        for _ in 0..apps {
            block(&mut out, FLAC_APPLICATION, false, &app);
        }
        let mut vc = Vec::new();
        for part in [&b"vendor"[..], b"TITLE=Held"] {
            if part == b"TITLE=Held" {
                vc.extend_from_slice(&1u32.to_le_bytes());
            }
            vc.extend_from_slice(&(part.len() as u32).to_le_bytes());
            vc.extend_from_slice(part);
        }
        block(&mut out, 4, true, &vc);
        out.extend_from_slice(&silent_frame());
        out
    }

    #[test]
    fn flac_application_blocks_are_skipped_not_loaded() {
        let app_len = 1 << 20;
        let source = Arc::new(Counted {
            bytes: flac_with_application_blocks(8, app_len),
            read: AtomicU64::new(0),
        });
        let (format, meta) = read_tags_from(source.clone(), Some(Format::Flac)).unwrap();
        assert_eq!(format, Format::Flac);
        assert_eq!(meta.title.as_deref(), Some("Held"));
        let read = source.read.load(Ordering::Relaxed);
        assert!(
            read < app_len as u64,
            "read {read} bytes of a file holding 8 MiB of application data"
        );
        // Its identity reads the ends of the metadata, not all of it.
        source.read.store(0, Ordering::Relaxed);
        let track = read_track_identity(source.clone(), Some(Format::Flac)).unwrap();
        assert!(track.identity.is_some());
        let read = source.read.load(Ordering::Relaxed);
        assert!(
            read < 4 * app_len as u64,
            "read {read} bytes for the identity"
        );
    }

    #[test]
    fn the_application_block_walk_stops_at_the_last_block_and_at_damage() {
        let bytes = flac_with_application_blocks(3, 100);
        let source = Counted {
            bytes: bytes.clone(),
            read: AtomicU64::new(0),
        };
        let first = 4 + 4 + 34;
        let expected: Vec<u64> = (0..3).map(|i| (first + i * 104) as u64).collect();
        assert_eq!(
            flac_application_headers(&source, bytes.len() as u64),
            expected
        );
        let truncated = Counted {
            bytes: bytes[..first + 50].to_vec(),
            read: AtomicU64::new(0),
        };
        assert_eq!(
            flac_application_headers(&truncated, (first + 50) as u64).len(),
            1
        );
        let not_flac = Counted {
            bytes: b"ID3\x04rest".to_vec(),
            read: AtomicU64::new(0),
        };
        assert!(flac_application_headers(&not_flac, 8).is_empty());
    }
}
