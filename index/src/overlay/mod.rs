//! Tag synthesis for the metadata overlay: given a source file and tag edits, the segments of
//! a file that carries the edited tags in front of (or around) the source's audio bytes,
//! unchanged. See `musicfs_core::overlay` for the model.
//!
//! Per container:
//! - FLAC ([`flac`]): the VORBIS_COMMENT block is rewritten; every other block (pictures,
//!   seek table, padding) and the frames are the source's bytes.
//! - MP3 ([`id3`]): a new ID3v2.4 tag replaces the leading ID3v2 tag (frames the edits do not
//!   touch are carried over, converted from v2.2/v2.3); a trailing ID3v1 tag is updated.
//! - Ogg Vorbis and Opus ([`ogg`]): the comment packet is rewritten and the header pages
//!   laid out again; when their number changes, every later page is renumbered and its
//!   CRC recomputed.
//! - M4A ([`mp4`]): `moov/udta/meta/ilst` is rewritten; chunk offsets (`stco`/`co64`) are
//!   shifted when `moov` precedes the media data.
//!
//! Only what the edits name changes; a file this module cannot rewrite safely gives an
//! error (the caller keeps serving it unmodified), never a guess.

use std::io;

use musicfs_core::meta::Format;
use musicfs_core::overlay::{Edits, SegmentsBuilder, TagField};
use musicfs_storage::origin::Source;

use crate::fields::{field_of_raw_key, split_position};

mod flac;
mod id3;
mod mp4;
mod ogg;

/// Why a file's tags could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Reading the source failed.
    #[error("reading the source: {0}")]
    Io(#[from] io::Error),
    /// The file is not what its format says.
    #[error("malformed {format:?} file: {why}")]
    Malformed {
        /// The container.
        format: Format,
        /// What is wrong.
        why: String,
    },
    /// A valid file this synthesiser does not rewrite (yet).
    #[error("cannot rewrite the tags of this {format:?} file: {why}")]
    Unsupported {
        /// The container.
        format: Format,
        /// Why.
        why: String,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, SynthError>;

/// The largest tag region (header blocks, ID3 tag, Ogg header packets, `moov`) read into
/// memory.
const MAX_HEADER: u64 = 64 << 20;

/// The segments of `src` (a file of `format`) with `edits` applied to its tags.
pub fn synthesise(format: Format, src: &dyn Source, edits: &Edits) -> Result<SegmentsBuilder> {
    match format {
        Format::Flac => flac::synthesise(src, edits),
        Format::Mp3 => id3::synthesise(src, edits),
        Format::Ogg | Format::Opus => ogg::synthesise(format, src, edits),
        Format::M4a => mp4::synthesise(src, edits),
        Format::Wav => Err(SynthError::Unsupported {
            format,
            why: "tag edits of WAV files are not supported".into(),
        }),
        Format::Other => Err(SynthError::Unsupported {
            format,
            why: "tag edits of files a format plugin reads are not supported (a plugin \
                  reads tags, it does not write them)"
                .into(),
        }),
    }
}

/// `len` bytes of `src` at `offset`; a file that ends first is malformed.
fn read_exact(src: &dyn Source, offset: u64, len: u64, format: Format) -> Result<Vec<u8>> {
    if len > MAX_HEADER {
        return Err(SynthError::Unsupported {
            format,
            why: format!("a tag region of {len} bytes is larger than {MAX_HEADER}"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    let n = src.read_at(&mut buf, offset)?;
    if n < buf.len() {
        return Err(malformed(format, "the file ends inside its header"));
    }
    Ok(buf)
}

fn malformed(format: Format, why: impl Into<String>) -> SynthError {
    SynthError::Malformed {
        format,
        why: why.into(),
    }
}

fn unsupported(format: Format, why: impl Into<String>) -> SynthError {
    SynthError::Unsupported {
        format,
        why: why.into(),
    }
}

/// A track or disc position after edits: the number and the total, each from the edits
/// when edited, else from the old tag (`old`, as `"3"` or `"3/12"`, and `old_total`).
fn position(
    edits: &Edits,
    (num_field, total_field): (TagField, TagField),
    old: Option<&str>,
    old_total: Option<u32>,
) -> (Option<String>, Option<u32>) {
    let (old_num, old_split_total) = old.map(split_position).unwrap_or((None, None));
    let num = match edits.get(&num_field) {
        Some(v) => v.first().cloned(),
        None => old_num,
    };
    let total = match edits.get(&total_field) {
        Some(v) => v.first().and_then(|t| t.trim().parse().ok()),
        None => old_total.or(old_split_total),
    };
    (num, total)
}

/// Rewrites a Vorbis comment structure (vendor, comments; no framing bit) from the start of
/// `body`: comments of edited fields are dropped and the edited values appended. Returns the
/// new structure and how many bytes of `body` the old one took.
fn rewrite_vorbis_comment(body: &[u8], edits: &Edits, format: Format) -> Result<(Vec<u8>, usize)> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| malformed(format, "a Vorbis comment runs past its block"))?;
        let s = &body[at..end];
        at = end;
        Ok(s)
    };
    let u32le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let vendor_len = u32le(take(4)?);
    let vendor = take(vendor_len)?.to_vec();
    let count = u32le(take(4)?);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let (mut old_track, mut old_track_total, mut old_disc, mut old_disc_total) =
        (None, None, None, None);
    for _ in 0..count {
        let len = u32le(take(4)?);
        let comment = take(len)?.to_vec();
        let key_end = comment
            .iter()
            .position(|&b| b == b'=')
            .unwrap_or(comment.len());
        let key = String::from_utf8_lossy(&comment[..key_end]).to_string();
        let value = String::from_utf8_lossy(comment.get(key_end + 1..).unwrap_or(&[])).to_string();
        let field = field_of_raw_key(&key);
        match field {
            Some(TagField::Track) => old_track = Some(value.clone()),
            Some(TagField::TrackTotal) => old_track_total = value.trim().parse().ok(),
            Some(TagField::Disc) => old_disc = Some(value.clone()),
            Some(TagField::DiscTotal) => old_disc_total = value.trim().parse().ok(),
            _ => {}
        }
        let touched = field.is_some_and(|f| {
            edits.contains_key(&f)
                || (matches!(f, TagField::Track | TagField::TrackTotal)
                    && (edits.contains_key(&TagField::Track)
                        || edits.contains_key(&TagField::TrackTotal)))
                || (matches!(f, TagField::Disc | TagField::DiscTotal)
                    && (edits.contains_key(&TagField::Disc)
                        || edits.contains_key(&TagField::DiscTotal)))
        });
        if !touched {
            kept.push(comment);
        }
    }
    let mut added: Vec<(String, String)> = Vec::new();
    for (field, values) in edits {
        let key = match field {
            TagField::Title => "TITLE",
            TagField::Artist => "ARTIST",
            TagField::Album => "ALBUM",
            TagField::AlbumArtist => "ALBUMARTIST",
            TagField::Genre => "GENRE",
            TagField::Date => "DATE",
            TagField::Composer => "COMPOSER",
            TagField::Lyrics => "LYRICS",
            // Positions are written below, number and total together.
            TagField::Track | TagField::TrackTotal | TagField::Disc | TagField::DiscTotal => {
                continue
            }
        };
        for v in values {
            added.push((key.into(), v.clone()));
        }
    }
    let pairs = [
        (
            (TagField::Track, TagField::TrackTotal),
            ("TRACKNUMBER", "TRACKTOTAL"),
            old_track,
            old_track_total,
        ),
        (
            (TagField::Disc, TagField::DiscTotal),
            ("DISCNUMBER", "DISCTOTAL"),
            old_disc,
            old_disc_total,
        ),
    ];
    for (fields, (num_key, total_key), old, old_total) in pairs {
        if !edits.contains_key(&fields.0) && !edits.contains_key(&fields.1) {
            continue;
        }
        let (num, total) = position(edits, fields, old.as_deref(), old_total);
        if let Some(n) = num {
            added.push((num_key.into(), n));
        }
        if let Some(t) = total {
            added.push((total_key.into(), t.to_string()));
        }
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    out.extend_from_slice(&vendor);
    let total = kept.len() + added.len();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    for c in &kept {
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(c);
    }
    for (k, v) in &added {
        let c = format!("{k}={v}");
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(c.as_bytes());
    }
    Ok((out, at))
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::io;

    use musicfs_core::overlay::{Rendition, SegmentsBuilder};
    use musicfs_storage::origin::Source;

    /// A source over bytes in memory.
    #[derive(Debug)]
    pub struct Mem(pub Vec<u8>);

    impl Source for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let off = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - off);
            buf[..n].copy_from_slice(&self.0[off..off + n]);
            Ok(n)
        }
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
    }

    /// The whole rendered file.
    pub fn render(src: &Mem, segs: SegmentsBuilder) -> Vec<u8> {
        let r = Rendition::new(segs.into_segments(), src.len(), 0, 0, 0);
        let mut out = vec![0u8; r.size as usize];
        let n = r.read_at(&mut out, 0, |b, o| src.read_at(b, o)).unwrap();
        assert_eq!(n, out.len());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musicfs_core::overlay::parse_assignments;

    fn vc(vendor: &str, comments: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        out.extend_from_slice(vendor.as_bytes());
        out.extend_from_slice(&(comments.len() as u32).to_le_bytes());
        for c in comments {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c.as_bytes());
        }
        out
    }

    #[test]
    fn vorbis_comments_of_edited_fields_are_replaced_and_others_kept() {
        let body = vc(
            "v",
            &[
                "TITLE=Old",
                "ARTIST=A",
                "TRACKNUMBER=3/12",
                "Album Artist=X",
            ],
        );
        let edits = parse_assignments(&["title=New", "track=4", "albumartist=Y"]).unwrap();
        let (out, used) = rewrite_vorbis_comment(&body, &edits, Format::Flac).unwrap();
        assert_eq!(used, body.len());
        let want = vc(
            "v",
            &[
                "ARTIST=A",
                "TITLE=New",
                "ALBUMARTIST=Y",
                "TRACKNUMBER=4",
                "TRACKTOTAL=12",
            ],
        );
        assert_eq!(out, want);
        assert!(rewrite_vorbis_comment(&body[..body.len() - 2], &edits, Format::Flac).is_err());
    }
}
