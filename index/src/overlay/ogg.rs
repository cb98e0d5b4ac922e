//! Ogg Vorbis and Opus: the comment packet rewritten and the header pages laid out again.
//! The identification page and the audio pages are the source's bytes, unless the header
//! needs another number of pages: then every later page of the stream is renumbered and its
//! CRC recomputed (its body still read from the source).

use musicfs_core::meta::Format;
use musicfs_core::overlay::{Edits, SegmentsBuilder};
use musicfs_storage::origin::Source;

use super::{malformed, read_exact, rewrite_vorbis_comment, unsupported, Result};

/// Pages read before the header packets must be complete.
const MAX_HEADER_PAGES: usize = 1024;

struct Page {
    at: u64,
    serial: u32,
    lacing: Vec<u8>,
    /// Header plus body length.
    len: u64,
}

impl Page {
    fn header_len(&self) -> u64 {
        27 + self.lacing.len() as u64
    }
}

fn read_page(src: &dyn Source, at: u64, format: Format) -> Result<Page> {
    let h = read_exact(src, at, 27, format)?;
    if &h[..4] != b"OggS" || h[4] != 0 {
        return Err(malformed(format, format!("no Ogg page at byte {at}")));
    }
    let serial = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
    let lacing = read_exact(src, at + 27, u64::from(h[26]), format)?;
    let body: u64 = lacing.iter().map(|&l| u64::from(l)).sum();
    let len = 27 + lacing.len() as u64 + body;
    if at + len > src.len() {
        return Err(malformed(
            format,
            "an Ogg page runs past the end of the file",
        ));
    }
    Ok(Page {
        at,
        serial,
        lacing,
        len,
    })
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, zero start) of `bytes`.
fn crc(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *slot = r;
        }
        t
    });
    bytes.iter().fold(0u32, |c, &b| {
        (c << 8) ^ table[((c >> 24) as u8 ^ b) as usize]
    })
}

/// A page with its CRC filled in.
fn page_bytes(
    flags: u8,
    granule: u64,
    serial: u32,
    seq: u32,
    lacing: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(27 + lacing.len() + body.len());
    p.extend_from_slice(b"OggS\0");
    p.push(flags);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    p.extend_from_slice(body);
    let c = crc(&p);
    p[22..26].copy_from_slice(&c.to_le_bytes());
    p
}

pub(super) fn synthesise(
    format: Format,
    src: &dyn Source,
    edits: &Edits,
) -> Result<SegmentsBuilder> {
    let needed = if format == Format::Opus { 2 } else { 3 };
    // Read pages until the header packets are complete.
    let mut pages: Vec<Page> = Vec::new();
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut at = 0u64;
    let serial;
    loop {
        if pages.len() >= MAX_HEADER_PAGES {
            return Err(malformed(format, "no end to the header packets"));
        }
        let page = read_page(src, at, format)?;
        if let Some(first) = pages.first() {
            if page.serial != first.serial {
                return Err(unsupported(format, "several logical streams"));
            }
        }
        let body = read_exact(
            src,
            page.at + page.header_len(),
            page.len - page.header_len(),
            format,
        )?;
        let mut off = 0usize;
        let mut done_at = None;
        for (i, &l) in page.lacing.iter().enumerate() {
            partial.extend_from_slice(&body[off..off + usize::from(l)]);
            off += usize::from(l);
            if l < 255 {
                packets.push(std::mem::take(&mut partial));
                if packets.len() == needed || (pages.is_empty() && packets.len() == 1) {
                    done_at = Some(i);
                }
            }
        }
        at += page.len;
        let ends_clean = done_at == Some(page.lacing.len().wrapping_sub(1));
        let first_page = pages.is_empty();
        pages.push(page);
        if first_page {
            if packets.len() != 1 || !ends_clean {
                return Err(unsupported(
                    format,
                    "the first page holds more than the identification header",
                ));
            }
            continue;
        }
        if packets.len() >= needed {
            if !ends_clean || packets.len() > needed {
                return Err(unsupported(format, "audio shares a page with the headers"));
            }
            serial = pages[0].serial;
            break;
        }
    }
    let audio = at;
    let comment = &packets[1];
    let (magic, what): (&[u8], &str) = if format == Format::Opus {
        (b"OpusTags", "OpusTags")
    } else {
        (b"\x03vorbis", "Vorbis comment")
    };
    if !comment.starts_with(magic) {
        return Err(malformed(
            format,
            format!("the second packet is not a {what} header"),
        ));
    }
    let (vc, used) = rewrite_vorbis_comment(&comment[magic.len()..], edits, format)?;
    let mut new_comment = magic.to_vec();
    new_comment.extend_from_slice(&vc);
    let rest = &comment[magic.len() + used..];
    if format == Format::Ogg && rest.is_empty() {
        new_comment.push(1); // the framing bit
    } else {
        new_comment.extend_from_slice(rest);
    }
    // Lacing values and bytes of the header packets after the identification header.
    let mut lacing: Vec<u8> = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for p in std::iter::once(&new_comment).chain(&packets[2..]) {
        lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
        lacing.push((p.len() % 255) as u8);
        data.extend_from_slice(p);
    }
    let old_count = pages.len() - 1;
    let total = lacing.len();
    let count = if total > 255 * old_count {
        total.div_ceil(255)
    } else {
        old_count.min(total)
    };
    let mut out = SegmentsBuilder::new();
    out.origin(0, pages[0].len);
    let (mut li, mut di) = (0usize, 0usize);
    let mut continued = false;
    for i in 0..count {
        let take = (total - li - (count - i - 1)).min(255);
        let lac = &lacing[li..li + take];
        let bytes: usize = lac.iter().map(|&l| usize::from(l)).sum();
        let ends_packet = lac.iter().any(|&l| l < 255);
        let granule = if ends_packet { 0 } else { u64::MAX };
        let flags = if continued { 1 } else { 0 };
        out.bytes(&page_bytes(
            flags,
            granule,
            serial,
            1 + i as u32,
            lac,
            &data[di..di + bytes],
        ));
        continued = lac.last() == Some(&255);
        li += take;
        di += bytes;
    }
    if count == old_count {
        out.origin(audio, src.len() - audio);
        return Ok(out);
    }
    // Renumber every later page of the stream.
    let shift = count as i64 - old_count as i64;
    let mut at = audio;
    while at < src.len() {
        let page = match read_page(src, at, format) {
            Ok(p) => p,
            Err(_) => {
                // Trailing bytes that are no page are kept as they are.
                out.origin(at, src.len() - at);
                break;
            }
        };
        if page.serial != serial {
            out.origin(at, page.len);
            at += page.len;
            continue;
        }
        let mut whole = read_exact(src, at, page.len, format)?;
        let seq = u32::from_le_bytes([whole[18], whole[19], whole[20], whole[21]]);
        let seq = (i64::from(seq) + shift) as u32;
        whole[18..22].copy_from_slice(&seq.to_le_bytes());
        whole[22..26].copy_from_slice(&[0; 4]);
        let c = crc(&whole);
        whole[22..26].copy_from_slice(&c.to_le_bytes());
        let hl = page.header_len() as usize;
        out.bytes(&whole[..hl])
            .origin(at + hl as u64, page.len - hl as u64);
        at += page.len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::testutil::{render, Mem};
    use musicfs_core::overlay::parse_assignments;

    fn lace(p: &[u8]) -> Vec<u8> {
        let mut l = vec![255u8; p.len() / 255];
        l.push((p.len() % 255) as u8);
        l
    }

    fn comment(title: &str) -> Vec<u8> {
        let mut p = b"OpusTags".to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(b'v');
        p.extend_from_slice(&1u32.to_le_bytes());
        let c = format!("TITLE={title}");
        p.extend_from_slice(&(c.len() as u32).to_le_bytes());
        p.extend_from_slice(c.as_bytes());
        p
    }

    fn opus_file(title: &str, audio_pages: u32) -> Vec<u8> {
        let head = b"OpusHead\x01\x02\x38\x01\x80\xbb\0\0\0\0\0".to_vec();
        let mut f = page_bytes(2, 0, 9, 0, &lace(&head), &head);
        let c = comment(title);
        f.extend(page_bytes(0, 0, 9, 1, &lace(&c), &c));
        for i in 0..audio_pages {
            let body = vec![i as u8; 100];
            f.extend(page_bytes(
                0,
                960 * u64::from(i + 1),
                9,
                2 + i,
                &lace(&body),
                &body,
            ));
        }
        f
    }

    /// Checks every page's CRC and that sequence numbers count up from 0.
    fn check_pages(f: &[u8]) -> Vec<Vec<u8>> {
        let src = Mem(f.to_vec());
        let mut at = 0u64;
        let mut seq = 0u32;
        let mut bodies = Vec::new();
        while at < f.len() as u64 {
            let p = read_page(&src, at, Format::Opus).unwrap();
            let mut whole = f[at as usize..(at + p.len) as usize].to_vec();
            let stored = u32::from_le_bytes([whole[22], whole[23], whole[24], whole[25]]);
            whole[22..26].copy_from_slice(&[0; 4]);
            assert_eq!(crc(&whole), stored, "CRC of page {seq}");
            assert_eq!(
                u32::from_le_bytes([whole[18], whole[19], whole[20], whole[21]]),
                seq
            );
            bodies.push(whole[p.header_len() as usize..].to_vec());
            seq += 1;
            at += p.len;
        }
        bodies
    }

    #[test]
    fn the_comment_page_is_rewritten_and_audio_pages_kept() {
        let f = opus_file("Old", 3);
        let src = Mem(f.clone());
        let edits = parse_assignments(&["title=A much longer new title"]).unwrap();
        let out = render(&src, synthesise(Format::Opus, &src, &edits).unwrap());
        let bodies = check_pages(&out);
        assert_eq!(bodies.len(), 5);
        assert!(bodies[1].ends_with(b"TITLE=A much longer new title"));
        let old = check_pages(&f);
        assert_eq!(bodies[2..], old[2..]);
    }

    #[test]
    fn a_comment_that_needs_more_pages_renumbers_the_rest() {
        let f = opus_file("Old", 3);
        let src = Mem(f.clone());
        let big = "x".repeat(40_000);
        let edits =
            parse_assignments(&[format!("lyrics={big}"), format!("composer={big}")]).unwrap();
        let out = render(&src, synthesise(Format::Opus, &src, &edits).unwrap());
        let bodies = check_pages(&out);
        assert_eq!(bodies.len(), 6, "two comment pages now");
        let old = check_pages(&f);
        assert_eq!(bodies[3..], old[2..]);
    }
}
