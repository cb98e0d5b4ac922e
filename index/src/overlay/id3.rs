//! MP3: a new ID3v2.4 tag in front, frames the edits do not touch carried over from the old
//! tag (v2.2 and v2.3 frames converted), the audio unchanged, a trailing ID3v1 tag updated.

use musicfs_core::meta::Format;
use musicfs_core::overlay::{Edits, SegmentsBuilder, TagField};
use musicfs_storage::origin::Source;

use super::{malformed, position, read_exact, Result};
use crate::fields::field_of_raw_key;

const F: Format = Format::Mp3;

fn syncsafe(b: &[u8]) -> u64 {
    b.iter()
        .fold(0u64, |acc, &x| (acc << 7) | u64::from(x & 0x7f))
}

fn to_syncsafe(n: u32) -> [u8; 4] {
    [
        ((n >> 21) & 0x7f) as u8,
        ((n >> 14) & 0x7f) as u8,
        ((n >> 7) & 0x7f) as u8,
        (n & 0x7f) as u8,
    ]
}

/// Undoes ID3 unsynchronisation (`FF 00` → `FF`).
fn unsync(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        out.push(b[i]);
        if b[i] == 0xff && b.get(i + 1) == Some(&0) {
            i += 1;
        }
        i += 1;
    }
    out
}

/// A frame of the old tag, as a v2.4 frame id and body (`flags` already v2.4).
struct Frame {
    id: [u8; 4],
    flags: [u8; 2],
    body: Vec<u8>,
}

/// v2.2 frame ids and their v2.4 equivalents (frames not listed are dropped).
const V22: &[(&[u8; 3], &[u8; 4])] = &[
    (b"TT1", b"TIT1"),
    (b"TT2", b"TIT2"),
    (b"TT3", b"TIT3"),
    (b"TP1", b"TPE1"),
    (b"TP2", b"TPE2"),
    (b"TP3", b"TPE3"),
    (b"TP4", b"TPE4"),
    (b"TAL", b"TALB"),
    (b"TRK", b"TRCK"),
    (b"TPA", b"TPOS"),
    (b"TYE", b"TDRC"),
    (b"TCO", b"TCON"),
    (b"TCM", b"TCOM"),
    (b"TEN", b"TENC"),
    (b"TSS", b"TSSE"),
    (b"TBP", b"TBPM"),
    (b"TPB", b"TPUB"),
    (b"TCR", b"TCOP"),
    (b"TXX", b"TXXX"),
    (b"COM", b"COMM"),
    (b"ULT", b"USLT"),
    (b"PIC", b"APIC"),
    (b"UFI", b"UFID"),
];

/// The frames of an ID3v2 tag body (after the header and any extended header).
fn frames(version: u8, body: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let hdr = if version == 2 { 6 } else { 10 };
    while at + hdr <= body.len() {
        let h = &body[at..at + hdr];
        if h[0] == 0 {
            break; // padding
        }
        let (id, len, flags) = match version {
            2 => {
                let len = (usize::from(h[3]) << 16) | (usize::from(h[4]) << 8) | usize::from(h[5]);
                let Some((_, to)) = V22.iter().find(|(from, _)| from[..] == h[..3]) else {
                    at += hdr + len;
                    continue;
                };
                (**to, len, [0u8, 0u8])
            }
            3 => {
                let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
                ([h[0], h[1], h[2], h[3]], len, [h[8], h[9]])
            }
            _ => (
                [h[0], h[1], h[2], h[3]],
                syncsafe(&h[4..8]) as usize,
                [h[8], h[9]],
            ),
        };
        let start = at + hdr;
        let Some(end) = start.checked_add(len).filter(|&e| e <= body.len()) else {
            break; // a damaged frame ends the list; what came before is kept
        };
        let raw = &body[start..end];
        at = end;
        let frame = match version {
            2 if &id == b"APIC" => {
                // PIC: encoding, 3-letter image format, type, description, data.
                if raw.len() < 5 {
                    continue;
                }
                let mime: &[u8] = match &raw[1..4] {
                    b"PNG" | b"png" => b"image/png",
                    _ => b"image/jpeg",
                };
                let mut b = vec![raw[0]];
                b.extend_from_slice(mime);
                b.push(0);
                b.extend_from_slice(&raw[4..]);
                Frame { id, flags, body: b }
            }
            2 => Frame {
                id,
                flags,
                body: raw.to_vec(),
            },
            3 => {
                // Compressed, encrypted or grouped v2.3 frames are not converted.
                if flags[1] & 0xe0 != 0 {
                    continue;
                }
                let id = match &id {
                    b"TYER" => *b"TDRC",
                    b"TORY" => *b"TDOR",
                    b"TDAT" | b"TIME" | b"TRDA" | b"TSIZ" | b"EQUA" | b"RVAD" => continue,
                    _ => id,
                };
                // v2.3 status flags (preserve on tag/file alteration, read-only) map to
                // v2.4's, one bit lower.
                Frame {
                    id,
                    flags: [(flags[0] & 0xe0) >> 1, 0],
                    body: raw.to_vec(),
                }
            }
            _ => Frame {
                id,
                flags,
                body: raw.to_vec(),
            },
        };
        if frame
            .id
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            out.push(frame);
        }
    }
    out
}

/// The text of a text frame body (encoding byte then strings), NUL-separated values.
fn text_of(body: &[u8]) -> Option<String> {
    let (&enc, rest) = body.split_first()?;
    let s = match enc {
        0 => rest.iter().map(|&b| b as char).collect::<String>(),
        3 => String::from_utf8_lossy(rest).into_owned(),
        1 | 2 => {
            let (big, data) = match (enc, rest) {
                (1, [0xfe, 0xff, d @ ..]) => (true, d),
                (1, [0xff, 0xfe, d @ ..]) => (false, d),
                (2, d) => (true, d),
                (_, d) => (false, d),
            };
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| {
                    if big {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    }
                })
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => return None,
    };
    Some(
        s.trim_end_matches('\0')
            .split('\0')
            .next()
            .unwrap_or("")
            .to_string(),
    )
}

fn text_frame(id: &[u8; 4], values: &[String]) -> Frame {
    let mut body = vec![3u8];
    body.extend_from_slice(values.join("\0").as_bytes());
    Frame {
        id: *id,
        flags: [0, 0],
        body,
    }
}

fn field_frame(field: TagField) -> Option<&'static [u8; 4]> {
    Some(match field {
        TagField::Title => b"TIT2",
        TagField::Artist => b"TPE1",
        TagField::Album => b"TALB",
        TagField::AlbumArtist => b"TPE2",
        TagField::Genre => b"TCON",
        TagField::Date => b"TDRC",
        TagField::Composer => b"TCOM",
        _ => return None,
    })
}

pub(super) fn synthesise(src: &dyn Source, edits: &Edits) -> Result<SegmentsBuilder> {
    let size = src.len();
    let head = read_exact(src, 0, 10.min(size), F)?;
    let (old_frames, audio_start) = if head.len() == 10 && &head[..3] == b"ID3" {
        let version = head[3];
        if !(2..=4).contains(&version) {
            return Err(malformed(F, format!("unknown ID3v2 version 2.{version}")));
        }
        let flags = head[5];
        let len = syncsafe(&head[6..10]);
        let footer = if version == 4 && flags & 0x10 != 0 {
            10
        } else {
            0
        };
        let end = 10 + len + footer;
        if end > size {
            return Err(malformed(F, "the ID3v2 tag runs past the end of the file"));
        }
        let mut body = read_exact(src, 10, len, F)?;
        if flags & 0x80 != 0 && version < 4 {
            body = unsync(&body);
        }
        if version == 2 && flags & 0x40 != 0 {
            // v2.2 compression: no scheme was ever defined; keep no frames.
            body.clear();
        }
        let mut start = 0usize;
        if version >= 3 && flags & 0x40 != 0 && body.len() >= 4 {
            let ext = if version == 3 {
                4 + u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize
            } else {
                syncsafe(&body[..4]) as usize
            };
            start = ext.min(body.len());
        }
        (frames(version, &body[start..]), end)
    } else {
        (Vec::new(), 0)
    };
    // ID3v1 at the end (updated below), APEv2 and the rest kept.
    let v1 = if size >= audio_start + 128 {
        let t = read_exact(src, size - 128, 128, F)?;
        (&t[..3] == b"TAG").then_some(t)
    } else {
        None
    };
    let audio_end = size - if v1.is_some() { 128 } else { 0 };

    let edited = |f: TagField| edits.contains_key(&f);
    let touches = |id: &[u8; 4]| -> bool {
        let key = String::from_utf8_lossy(id);
        match field_of_raw_key(&key) {
            Some(TagField::Track) => edited(TagField::Track) || edited(TagField::TrackTotal),
            Some(TagField::Disc) => edited(TagField::Disc) || edited(TagField::DiscTotal),
            Some(f) => edited(f),
            None => false,
        }
    };
    let old_text = |id: &[u8; 4]| {
        old_frames
            .iter()
            .find(|f| &f.id == id)
            .and_then(|f| text_of(&f.body))
    };
    let mut new_frames: Vec<Frame> = Vec::new();
    for (field, values) in edits {
        if let Some(id) = field_frame(*field) {
            if !values.is_empty() {
                new_frames.push(text_frame(id, values));
            }
        }
    }
    for (fields, id) in [
        ((TagField::Track, TagField::TrackTotal), b"TRCK"),
        ((TagField::Disc, TagField::DiscTotal), b"TPOS"),
    ] {
        if !edited(fields.0) && !edited(fields.1) {
            continue;
        }
        let (num, total) = position(edits, fields, old_text(id).as_deref(), None);
        let text = match (num, total) {
            (Some(n), Some(t)) => Some(format!("{n}/{t}")),
            (Some(n), None) => Some(n),
            (None, Some(t)) => Some(format!("0/{t}")),
            (None, None) => None,
        };
        if let Some(text) = text {
            new_frames.push(text_frame(id, &[text]));
        }
    }
    if let Some(text) = edits.get(&TagField::Lyrics).and_then(|v| v.first()) {
        let mut body = vec![3u8];
        body.extend_from_slice(b"eng\0");
        body.extend_from_slice(text.as_bytes());
        new_frames.push(Frame {
            id: *b"USLT",
            flags: [0, 0],
            body,
        });
    }

    let mut tag_body = Vec::new();
    for f in old_frames
        .iter()
        .filter(|f| !touches(&f.id))
        .chain(&new_frames)
    {
        let len = u32::try_from(f.body.len())
            .ok()
            .filter(|&n| n < 1 << 28)
            .ok_or_else(|| malformed(F, "a frame is larger than ID3v2.4 allows"))?;
        tag_body.extend_from_slice(&f.id);
        tag_body.extend_from_slice(&to_syncsafe(len));
        tag_body.extend_from_slice(&f.flags);
        tag_body.extend_from_slice(&f.body);
    }
    let tag_len = u32::try_from(tag_body.len())
        .ok()
        .filter(|&n| n < 1 << 28)
        .ok_or_else(|| malformed(F, "the tag is larger than ID3v2.4 allows"))?;
    let mut header = b"ID3\x04\x00\x00".to_vec();
    header.extend_from_slice(&to_syncsafe(tag_len));

    let mut out = SegmentsBuilder::new();
    out.bytes(&header).bytes(&tag_body);
    out.origin(audio_start, audio_end - audio_start);
    if let Some(mut t) = v1 {
        update_v1(&mut t, edits);
        out.bytes(&t);
    }
    Ok(out)
}

/// Writes the edited fields ID3v1 can hold into the 128-byte tag `t`.
fn update_v1(t: &mut [u8], edits: &Edits) {
    let mut put = |at: usize, len: usize, value: &str| {
        let field = &mut t[at..at + len];
        field.fill(0);
        for (dst, c) in field.iter_mut().zip(value.chars()) {
            *dst = u8::try_from(u32::from(c)).unwrap_or(b'?');
        }
    };
    let first = |f: TagField| {
        edits
            .get(&f)
            .map(|v| v.first().cloned().unwrap_or_default())
    };
    if let Some(v) = first(TagField::Title) {
        put(3, 30, &v);
    }
    if let Some(v) = first(TagField::Artist) {
        put(33, 30, &v);
    }
    if let Some(v) = first(TagField::Album) {
        put(63, 30, &v);
    }
    if let Some(v) = first(TagField::Date) {
        put(93, 4, &v);
    }
    if let Some(v) = first(TagField::Track) {
        // ID3v1.1: a zero byte before the track number in the comment's last two bytes.
        let n = v
            .split('/')
            .next()
            .and_then(|n| n.trim().parse::<u8>().ok())
            .unwrap_or(0);
        t[125] = 0;
        t[126] = n;
    }
    if edits.contains_key(&TagField::Genre) {
        t[127] = 255; // unknown: the v2.4 tag names it
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::testutil::{render, Mem};
    use musicfs_core::overlay::parse_assignments;

    fn v23(frames: &[(&[u8; 4], &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, text) in frames {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(text.len() as u32 + 1).to_be_bytes());
            body.extend_from_slice(&[0, 0, 0]);
            body.extend_from_slice(text.as_bytes());
        }
        body.extend_from_slice(&[0u8; 16]); // padding
        let mut out = b"ID3\x03\x00\x00".to_vec();
        out.extend_from_slice(&to_syncsafe(body.len() as u32));
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_v23_tag_becomes_v24_with_untouched_frames_kept_and_v1_updated() {
        let mut file = v23(&[
            (b"TIT2", "Old"),
            (b"TPE1", "Artist"),
            (b"TYER", "1999"),
            (b"TRCK", "3/12"),
        ]);
        file.extend_from_slice(b"\xff\xfbAUDIOFRAMES");
        let mut v1 = vec![0u8; 128];
        v1[..3].copy_from_slice(b"TAG");
        v1[3..6].copy_from_slice(b"Old");
        file.extend_from_slice(&v1);
        let src = Mem(file);
        let edits = parse_assignments(&["title=Nouveau Titré", "track=4"]).unwrap();
        let out = render(&src, synthesise(&src, &edits).unwrap());
        assert_eq!(&out[..4], b"ID3\x04");
        let len = syncsafe(&out[6..10]) as usize;
        let fr = frames(4, &out[10..10 + len]);
        let ids: Vec<&[u8; 4]> = fr.iter().map(|f| &f.id).collect();
        assert_eq!(ids, vec![b"TPE1", b"TDRC", b"TIT2", b"TRCK"]);
        assert_eq!(text_of(&fr[2].body).unwrap(), "Nouveau Titré");
        assert_eq!(text_of(&fr[3].body).unwrap(), "4/12");
        assert_eq!(text_of(&fr[1].body).unwrap(), "1999");
        let audio_at = 10 + len;
        assert_eq!(&out[audio_at..audio_at + 13], b"\xff\xfbAUDIOFRAMES");
        let tail = &out[out.len() - 128..];
        assert_eq!(&tail[..3], b"TAG");
        assert_eq!(&tail[3..17], b"Nouveau Titr\xe9\0");
        assert_eq!(tail[126], 4);
    }

    #[test]
    fn a_file_without_a_tag_gets_one_and_damage_is_refused() {
        let src = Mem(b"\xff\xfbFRAMES".to_vec());
        let edits = parse_assignments(&["artist=A", "artist=B"]).unwrap();
        let out = render(&src, synthesise(&src, &edits).unwrap());
        assert!(out.ends_with(b"\xff\xfbFRAMES"));
        let len = syncsafe(&out[6..10]) as usize;
        let fr = frames(4, &out[10..10 + len]);
        assert_eq!(fr[0].body, b"\x03A\0B");
        let bad = Mem(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f".to_vec());
        assert!(synthesise(&bad, &edits).is_err());
    }
}
