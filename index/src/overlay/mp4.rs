//! M4A: `moov/udta/meta/ilst` rewritten (items the edits do not touch kept, cover art
//! included), the rest of `moov` kept, and when `moov` grows or shrinks in front of media
//! data, every chunk offset (`stco`, `co64`) pointing past it shifted by the difference.

use musicfs_core::meta::Format;
use musicfs_core::overlay::{Edits, SegmentsBuilder, TagField};
use musicfs_storage::origin::Source;

use super::{malformed, position, read_exact, unsupported, Result};

const F: Format = Format::M4a;
/// Top-level atoms read before giving up on finding `moov`.
const MAX_TOP_ATOMS: usize = 4096;

/// Containers rebuilt on the way to `ilst` and to the chunk offset tables.
const CONTAINERS: &[&[u8; 4]] = &[
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"ilst",
];

/// An atom inside a buffer: type, where its body starts and ends.
struct Atom<'a> {
    kind: [u8; 4],
    whole: &'a [u8],
    body: &'a [u8],
}

fn atoms(mut b: &[u8]) -> Result<Vec<Atom<'_>>> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let size32 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let kind = [b[4], b[5], b[6], b[7]];
        let (size, hdr) = match size32 {
            0 => (b.len() as u64, 8),
            1 if b.len() >= 16 => (
                u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
                16,
            ),
            1 => return Err(malformed(F, "a truncated 64-bit atom size")),
            n => (n, 8),
        };
        if size < hdr as u64 || size > b.len() as u64 {
            return Err(malformed(
                F,
                format!("atom {} has a bad size", String::from_utf8_lossy(&kind)),
            ));
        }
        let (whole, rest) = b.split_at(size as usize);
        out.push(Atom {
            kind,
            whole,
            body: &whole[hdr..],
        });
        b = rest;
    }
    Ok(out)
}

fn atom(kind: &[u8; 4], body: &[u8]) -> Result<Vec<u8>> {
    let size = u32::try_from(body.len() + 8).map_err(|_| unsupported(F, "an atom over 4 GiB"))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    Ok(out)
}

/// The `ilst` item an edited field is written to.
fn item_of(field: TagField) -> &'static [u8; 4] {
    match field {
        TagField::Title => b"\xa9nam",
        TagField::Artist => b"\xa9ART",
        TagField::Album => b"\xa9alb",
        TagField::AlbumArtist => b"aART",
        TagField::Genre => b"\xa9gen",
        TagField::Date => b"\xa9day",
        TagField::Composer => b"\xa9wrt",
        TagField::Lyrics => b"\xa9lyr",
        TagField::Track | TagField::TrackTotal => b"trkn",
        TagField::Disc | TagField::DiscTotal => b"disk",
    }
}

/// A `data` atom: type (1 = UTF-8, 0 = implicit), locale 0, payload.
fn data(kind: u32, payload: &[u8]) -> Result<Vec<u8>> {
    let mut body = kind.to_be_bytes().to_vec();
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(payload);
    atom(b"data", &body)
}

/// The (number, total) of a `trkn`/`disk` item.
fn pair_of(item: &[u8]) -> (Option<String>, Option<u32>) {
    let Ok(list) = atoms(item) else {
        return (None, None);
    };
    for a in list {
        if &a.kind == b"data" && a.body.len() >= 8 + 6 {
            let p = &a.body[8..];
            let n = u16::from_be_bytes([p[2], p[3]]);
            let t = u16::from_be_bytes([p[4], p[5]]);
            return (
                (n > 0).then(|| n.to_string()),
                (t > 0).then_some(u32::from(t)),
            );
        }
    }
    (None, None)
}

fn new_ilst(old: &[u8], edits: &Edits) -> Result<Vec<u8>> {
    let edited_items: Vec<&[u8; 4]> = edits.keys().map(|f| item_of(*f)).collect();
    let mut body = Vec::new();
    let mut old_pairs = [(None, None), (None, None)];
    for item in atoms(old)? {
        if &item.kind == b"trkn" {
            old_pairs[0] = pair_of(item.body);
        }
        if &item.kind == b"disk" {
            old_pairs[1] = pair_of(item.body);
        }
        let genre_edit = &item.kind == b"gnre" && edits.contains_key(&TagField::Genre);
        if !edited_items.contains(&&item.kind) && !genre_edit {
            body.extend_from_slice(item.whole);
        }
    }
    for (field, values) in edits {
        if matches!(
            field,
            TagField::Track | TagField::TrackTotal | TagField::Disc | TagField::DiscTotal
        ) || values.is_empty()
        {
            continue;
        }
        let d = data(1, values.join("; ").as_bytes())?;
        body.extend(atom(item_of(*field), &d)?);
    }
    for (i, fields) in [
        (TagField::Track, TagField::TrackTotal),
        (TagField::Disc, TagField::DiscTotal),
    ]
    .into_iter()
    .enumerate()
    {
        if !edits.contains_key(&fields.0) && !edits.contains_key(&fields.1) {
            continue;
        }
        let (old_n, old_t) = &old_pairs[i];
        let (num, total) = position(edits, fields, old_n.as_deref(), *old_t);
        let num = match num {
            None => 0,
            Some(n) => n.trim().parse::<u16>().map_err(|_| {
                unsupported(
                    F,
                    format!("M4A {} numbers are numbers, not {n:?}", fields.0),
                )
            })?,
        };
        let total = total
            .map(|t| t.min(u32::from(u16::MAX)) as u16)
            .unwrap_or(0);
        if num == 0 && total == 0 {
            continue;
        }
        let mut payload = vec![0, 0];
        payload.extend_from_slice(&num.to_be_bytes());
        payload.extend_from_slice(&total.to_be_bytes());
        if i == 0 {
            payload.extend_from_slice(&[0, 0]);
        }
        body.extend(atom(item_of(fields.0), &data(0, &payload)?)?);
    }
    atom(b"ilst", &body)
}

/// An empty `meta` for a file that has none: full-box header, `hdlr` (mdir/appl), `ilst`.
fn new_meta(edits: &Edits) -> Result<Vec<u8>> {
    let mut hdlr = vec![0u8; 8];
    hdlr.extend_from_slice(b"mdirappl");
    hdlr.extend_from_slice(&[0; 9]);
    let mut body = vec![0u8; 4];
    body.extend(atom(b"hdlr", &hdlr)?);
    body.extend(new_ilst(&[], edits)?);
    atom(b"meta", &body)
}

struct Rewrite<'e> {
    edits: &'e Edits,
    /// Offsets at or past this point move by `shift`.
    moved_from: u64,
    shift: i64,
}

impl Rewrite<'_> {
    /// The new bytes of atom `a`, whose path from the top is `path`.
    fn atom(&self, a: &Atom<'_>, path: &[[u8; 4]]) -> Result<Vec<u8>> {
        let under =
            |p: &[&[u8; 4]]| path.len() == p.len() && path.iter().zip(p).all(|(x, y)| x == *y);
        match &a.kind {
            b"stco" | b"co64" if self.shift != 0 => self.offsets(a),
            b"meta" if under(&[b"moov", b"udta"]) => {
                if a.body.len() < 4 {
                    return Err(malformed(F, "a meta atom without its version"));
                }
                let mut body = a.body[..4].to_vec();
                let mut had_ilst = false;
                for child in atoms(&a.body[4..])? {
                    if &child.kind == b"ilst" {
                        had_ilst = true;
                        body.extend(new_ilst(child.body, self.edits)?);
                    } else {
                        body.extend_from_slice(child.whole);
                    }
                }
                if !had_ilst {
                    body.extend(new_ilst(&[], self.edits)?);
                }
                atom(b"meta", &body)
            }
            kind if CONTAINERS.contains(&kind) && &a.kind != b"ilst" => {
                let mut inner = path.to_vec();
                inner.push(a.kind);
                let mut body = Vec::with_capacity(a.body.len());
                let mut had_meta = false;
                for child in atoms(a.body)? {
                    had_meta |= &child.kind == b"meta";
                    body.extend(self.atom(&child, &inner)?);
                }
                if under(&[b"moov"]) && &a.kind == b"udta" && !had_meta {
                    body.extend(new_meta(self.edits)?);
                }
                atom(&a.kind, &body)
            }
            _ => Ok(a.whole.to_vec()),
        }
    }

    fn offsets(&self, a: &Atom<'_>) -> Result<Vec<u8>> {
        let wide = &a.kind == b"co64";
        let b = a.body;
        if b.len() < 8 {
            return Err(malformed(F, "a chunk offset table without its count"));
        }
        let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let w = if wide { 8 } else { 4 };
        if b.len() < 8 + n * w {
            return Err(malformed(F, "a chunk offset table shorter than its count"));
        }
        let mut body = b[..8].to_vec();
        for i in 0..n {
            let e = &b[8 + i * w..8 + (i + 1) * w];
            let old = if wide {
                u64::from_be_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]])
            } else {
                u64::from(u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
            };
            let new = if old >= self.moved_from {
                old.checked_add_signed(self.shift)
                    .ok_or_else(|| malformed(F, "a chunk offset out of range"))?
            } else {
                old
            };
            if wide {
                body.extend_from_slice(&new.to_be_bytes());
            } else {
                let v = u32::try_from(new)
                    .map_err(|_| unsupported(F, "a chunk offset no longer fits in stco"))?;
                body.extend_from_slice(&v.to_be_bytes());
            }
        }
        body.extend_from_slice(&b[8 + n * w..]);
        atom(&a.kind, &body)
    }
}

pub(super) fn synthesise(src: &dyn Source, edits: &Edits) -> Result<SegmentsBuilder> {
    let size = src.len();
    let mut at = 0u64;
    let mut moov = None;
    let mut count = 0usize;
    while at + 8 <= size {
        count += 1;
        if count > MAX_TOP_ATOMS {
            return Err(malformed(F, "too many top-level atoms"));
        }
        let h = read_exact(src, at, 8, F)?;
        let mut len = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
        if len == 1 {
            let x = read_exact(src, at + 8, 8, F)?;
            len = u64::from_be_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        } else if len == 0 {
            len = size - at;
        }
        if len < 8 || at + len > size {
            return Err(malformed(
                F,
                "a top-level atom runs past the end of the file",
            ));
        }
        if &h[4..8] == b"moov" {
            moov = Some((at, len));
        }
        if &h[4..8] == b"moof" {
            return Err(unsupported(F, "fragmented MP4"));
        }
        at += len;
    }
    let (moov_at, moov_len) = moov.ok_or_else(|| malformed(F, "no moov atom"))?;
    let old = read_exact(src, moov_at, moov_len, F)?;
    let list = atoms(&old)?;
    let top = list
        .first()
        .ok_or_else(|| malformed(F, "an empty moov atom"))?;
    if atoms(top.body)?.iter().any(|a| &a.kind == b"mvex") {
        return Err(unsupported(F, "fragmented MP4"));
    }
    let moov_end = moov_at + moov_len;
    let build = |shift: i64| -> Result<Vec<u8>> {
        let mut new = Rewrite {
            edits,
            moved_from: moov_end,
            shift,
        }
        .atom(top, &[])?;
        if !atoms(top.body)?.iter().any(|a| &a.kind == b"udta") {
            // No udta at all: add one holding the new meta, at the end of moov.
            let udta = atom(b"udta", &new_meta(edits)?)?;
            new.extend(udta);
            let size = u32::try_from(new.len()).map_err(|_| unsupported(F, "a moov over 4 GiB"))?;
            new[..4].copy_from_slice(&size.to_be_bytes());
        }
        Ok(new)
    };
    // The size change decides the shift; rewriting with the shift does not change sizes
    // (offsets keep their width), so two passes suffice.
    let first = build(0)?;
    let shift = first.len() as i64 - moov_len as i64;
    let new = if shift == 0 { first } else { build(shift)? };
    if new.len() as i64 - moov_len as i64 != shift {
        return Err(malformed(
            F,
            "moov changed size while its offsets were shifted",
        ));
    }
    let mut out = SegmentsBuilder::new();
    out.origin(0, moov_at)
        .bytes(&new)
        .origin(moov_end, size - moov_end);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::testutil::{render, Mem};
    use musicfs_core::overlay::parse_assignments;

    fn a(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        atom(kind, body).unwrap()
    }

    fn file(title: &str) -> Vec<u8> {
        let mut stco = vec![0u8; 4];
        stco.extend_from_slice(&1u32.to_be_bytes());
        let ilst = a(b"ilst", &a(b"\xa9nam", &data(1, title.as_bytes()).unwrap()));
        let mut meta = vec![0u8; 4];
        meta.extend(ilst);
        let moov_body = [
            a(b"mvhd", &[0u8; 20]),
            a(
                b"trak",
                &a(
                    b"mdia",
                    &a(
                        b"minf",
                        &a(
                            b"stbl",
                            &a(b"stco", &{
                                let mut s = stco.clone();
                                s.extend_from_slice(&0u32.to_be_bytes()); // patched below
                                s
                            }),
                        ),
                    ),
                ),
            ),
            a(b"udta", &a(b"meta", &meta)),
        ]
        .concat();
        let ftyp = a(b"ftyp", b"M4A \0\0\0\0");
        let moov = a(b"moov", &moov_body);
        let mdat_at = (ftyp.len() + moov.len()) as u32;
        let mut f = [ftyp, moov, a(b"mdat", b"SAMPLES")].concat();
        // The one chunk starts at the mdat body.
        let pos = f.windows(4).position(|w| w == b"stco").unwrap() + 4 + 8;
        f[pos..pos + 4].copy_from_slice(&(mdat_at + 8).to_be_bytes());
        f
    }

    fn chunk_offset(f: &[u8]) -> usize {
        let pos = f.windows(4).position(|w| w == b"stco").unwrap() + 4 + 8;
        u32::from_be_bytes([f[pos], f[pos + 1], f[pos + 2], f[pos + 3]]) as usize
    }

    #[test]
    fn ilst_is_rewritten_and_chunk_offsets_follow_the_moved_media() {
        let f = file("Old");
        assert_eq!(&f[chunk_offset(&f)..chunk_offset(&f) + 7], b"SAMPLES");
        let src = Mem(f);
        let edits =
            parse_assignments(&["title=A longer title", "track=2", "tracktotal=9"]).unwrap();
        let out = render(&src, synthesise(&src, &edits).unwrap());
        let off = chunk_offset(&out);
        assert_eq!(&out[off..off + 7], b"SAMPLES");
        assert!(out.windows(14).any(|w| w == b"A longer title"));
        assert!(!out.windows(3).any(|w| w == b"Old"));
        let trkn = out.windows(4).position(|w| w == b"trkn").unwrap();
        let payload = &out[trkn + 4 + 16..trkn + 4 + 16 + 8];
        assert_eq!(payload, &[0, 0, 0, 2, 0, 9, 0, 0]);
    }

    #[test]
    fn a_file_without_moov_is_refused() {
        let src = Mem(a(b"ftyp", b"M4A \0\0\0\0"));
        let edits = parse_assignments(&["title=X"]).unwrap();
        assert!(synthesise(&src, &edits).is_err());
    }
}
