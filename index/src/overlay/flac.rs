//! FLAC: the VORBIS_COMMENT block rewritten, every other block and the frames kept.

use musicfs_core::meta::Format;
use musicfs_core::overlay::{Edits, SegmentsBuilder};
use musicfs_storage::origin::Source;

use super::{malformed, read_exact, rewrite_vorbis_comment, unsupported, Result};

const STREAMINFO: u8 = 0;
const VORBIS_COMMENT: u8 = 4;
/// Metadata blocks at most (a file with more is damaged or hostile).
const MAX_BLOCKS: usize = 1024;

struct Block {
    kind: u8,
    /// Offset of its 4-byte header.
    at: u64,
    len: u64,
}

pub(super) fn synthesise(src: &dyn Source, edits: &Edits) -> Result<SegmentsBuilder> {
    let f = Format::Flac;
    let size = src.len();
    // An ID3v2 tag some taggers put in front is dropped: FLAC readers take the comments.
    let mut at = 0u64;
    let head = read_exact(src, 0, 10.min(size), f)?;
    if head.len() == 10 && &head[..3] == b"ID3" {
        let s = &head[6..10];
        let len = (u64::from(s[0]) << 21)
            | (u64::from(s[1]) << 14)
            | (u64::from(s[2]) << 7)
            | u64::from(s[3]);
        at = 10 + len + if head[5] & 0x10 != 0 { 10 } else { 0 };
    }
    if read_exact(src, at, 4, f)? != b"fLaC" {
        return Err(malformed(f, "no fLaC marker"));
    }
    let marker = at;
    at += 4;
    let mut blocks = Vec::new();
    loop {
        if blocks.len() >= MAX_BLOCKS {
            return Err(malformed(f, "too many metadata blocks"));
        }
        let h = read_exact(src, at, 4, f)?;
        let len = (u64::from(h[1]) << 16) | (u64::from(h[2]) << 8) | u64::from(h[3]);
        let kind = h[0] & 0x7f;
        if kind == 127 {
            return Err(malformed(f, "invalid metadata block type 127"));
        }
        blocks.push(Block { kind, at, len });
        at += 4 + len;
        if at > size {
            return Err(malformed(
                f,
                "a metadata block runs past the end of the file",
            ));
        }
        if h[0] & 0x80 != 0 {
            break;
        }
    }
    if blocks.first().map(|b| b.kind) != Some(STREAMINFO) {
        return Err(malformed(f, "the first metadata block is not STREAMINFO"));
    }
    let audio = at;
    let old_vc = blocks.iter().find(|b| b.kind == VORBIS_COMMENT);
    let new_vc = match old_vc {
        Some(b) => {
            let body = read_exact(src, b.at + 4, b.len, f)?;
            rewrite_vorbis_comment(&body, edits, f)?.0
        }
        None => rewrite_vorbis_comment(&empty_comment(), edits, f)?.0,
    };
    if new_vc.len() >= 1 << 24 {
        return Err(unsupported(
            f,
            "the comments outgrow a metadata block (16 MiB)",
        ));
    }
    // The blocks in their order, the new comment block where the old one was (or after
    // STREAMINFO): (kind, Some(source block) | None for the new comments).
    let mut order: Vec<Option<&Block>> = Vec::with_capacity(blocks.len() + 1);
    for b in &blocks {
        if b.kind == VORBIS_COMMENT {
            if old_vc.is_some_and(|o| o.at == b.at) {
                order.push(None);
            }
            // A second comment block is dropped: readers disagree on which one counts.
            continue;
        }
        order.push(Some(b));
        if old_vc.is_none() && b.kind == STREAMINFO {
            order.push(None);
        }
    }
    let mut out = SegmentsBuilder::new();
    out.origin(marker, 4);
    let last = order.len() - 1;
    for (i, entry) in order.iter().enumerate() {
        let last_flag = if i == last { 0x80 } else { 0 };
        match entry {
            None => {
                let len = new_vc.len() as u32;
                let hdr = [
                    last_flag | VORBIS_COMMENT,
                    (len >> 16) as u8,
                    (len >> 8) as u8,
                    len as u8,
                ];
                out.bytes(&hdr).bytes(&new_vc);
            }
            Some(b) => {
                let was_last = b.at + 4 + b.len == audio;
                if was_last == (i == last) {
                    out.origin(b.at, 4 + b.len);
                } else {
                    let len = b.len as u32;
                    let hdr = [
                        last_flag | b.kind,
                        (len >> 16) as u8,
                        (len >> 8) as u8,
                        len as u8,
                    ];
                    out.bytes(&hdr).origin(b.at + 4, b.len);
                }
            }
        }
    }
    out.origin(audio, size - audio);
    Ok(out)
}

fn empty_comment() -> Vec<u8> {
    let vendor = b"MusicFS";
    let mut v = (vendor.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(vendor);
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::testutil::{render, Mem};
    use musicfs_core::overlay::parse_assignments;

    fn block(out: &mut Vec<u8>, kind: u8, last: bool, body: &[u8]) {
        out.push(kind | if last { 0x80 } else { 0 });
        let n = body.len() as u32;
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
        out.extend_from_slice(body);
    }

    fn comment(comments: &[&str]) -> Vec<u8> {
        let mut v = 1u32.to_le_bytes().to_vec();
        v.push(b'x');
        v.extend_from_slice(&(comments.len() as u32).to_le_bytes());
        for c in comments {
            v.extend_from_slice(&(c.len() as u32).to_le_bytes());
            v.extend_from_slice(c.as_bytes());
        }
        v
    }

    #[test]
    fn the_comment_block_is_rewritten_and_the_rest_kept_byte_for_byte() {
        let mut file = b"fLaC".to_vec();
        block(&mut file, 0, false, &[7u8; 34]);
        block(&mut file, 4, false, &comment(&["TITLE=Old", "ARTIST=A"]));
        block(&mut file, 6, true, b"picture-bytes");
        file.extend_from_slice(b"FRAMES");
        let src = Mem(file);
        let edits = parse_assignments(&["title=New"]).unwrap();
        let out = render(&src, synthesise(&src, &edits).unwrap());
        let mut want = b"fLaC".to_vec();
        block(&mut want, 0, false, &[7u8; 34]);
        block(&mut want, 4, false, &comment(&["ARTIST=A", "TITLE=New"]));
        block(&mut want, 6, true, b"picture-bytes");
        want.extend_from_slice(b"FRAMES");
        assert_eq!(out, want);
    }

    #[test]
    fn a_file_without_comments_gets_a_block_after_streaminfo() {
        let mut file = b"fLaC".to_vec();
        block(&mut file, 0, true, &[1u8; 34]);
        file.extend_from_slice(b"AUDIO");
        let src = Mem(file);
        let edits = parse_assignments(&["album=X"]).unwrap();
        let out = render(&src, synthesise(&src, &edits).unwrap());
        assert_eq!(out[4], 0, "STREAMINFO is no longer last");
        assert_eq!(out[4 + 4 + 34] & 0x7f, 4);
        assert_ne!(out[4 + 4 + 34] & 0x80, 0);
        assert!(out.ends_with(b"AUDIO"));
        let bad = Mem(b"fLaC\x00\xff\xff\xff".to_vec());
        assert!(synthesise(&bad, &edits).is_err());
    }
}
