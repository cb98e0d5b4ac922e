//! A track's [`Identity`]: what finds the same track in two places (mirrored origins, a
//! symlink, a copy with other tags) without reading whole files.
//!
//! The audio payload is the file minus its leading tag region (ID3v2, FLAC metadata
//! blocks, Ogg header pages, an MP4 `moov` placed first; `musicfs_chunker::tags` finds it)
//! and, for MP3, minus trailing ID3v1 and APEv2 tags. Its exact length and the hash of its
//! first [`IDENTITY_WINDOW`] bytes name the audio: two different recordings with a payload
//! of the same length to the byte whose first 4 KiB of compressed audio are equal do not
//! happen in practice. The tag region (what symphonia just read; past 4 MiB only its first
//! and last MiB) and the trailing tags go into the whole-file identity.

use std::io;

use musicfs_chunker::locate_tag_region_from;
use musicfs_core::meta::{Format, Identity, IDENTITY_WINDOW};
use musicfs_storage::origin::Source;
use xxhash_rust::xxh3::Xxh3;

/// ID3v1 tag length, from the end of the file.
const ID3V1_LEN: u64 = 128;
/// APEv2 footer (and header) length.
const APE_FOOTER_LEN: u64 = 32;
/// APEv2 flag: the tag has a header too.
const APE_HAS_HEADER: u32 = 1 << 31;

/// The identity of the `format` file `source` reads. `None` for an empty file.
pub fn identity_of(source: &dyn Source, format: Format) -> io::Result<Option<Identity>> {
    identity_split(source, source, format)
}

/// How much of a tag region the whole-file identity hashes: all of it up to `whole`, else
/// its first and last `sample` bytes and its length.
#[derive(Debug, Clone, Copy)]
struct TagHashing {
    whole: u64,
    sample: u64,
}

/// A local file (page cache, cheap reads).
const LOCAL_TAGS: TagHashing = TagHashing {
    whole: 4 << 20,
    sample: 1 << 20,
};
/// A remote file: every byte not already fetched for the tags is a request's worth, and a
/// scan must stay a small share of the library.
const REMOTE_TAGS: TagHashing = TagHashing {
    whole: 32 << 10,
    sample: 16 << 10,
};

/// [`identity_of`] reading the head, tags and tail from `tags` (what the tag reader read
/// through: its blocks are still there) and the audio window from `audio` (one exact read:
/// a remote file is not read further in on a block reader's sequential guess).
pub fn identity_split(
    tags: &dyn Source,
    audio: &dyn Source,
    format: Format,
) -> io::Result<Option<Identity>> {
    let source = tags;
    let tag_hashing = match audio.raw_fd() {
        Some(_) => LOCAL_TAGS,
        None => REMOTE_TAGS,
    };
    let len = source.len();
    if len == 0 {
        return Ok(None);
    }
    let tag_end = match format {
        // FLAC metadata is walked header by header: a file with megabytes of APPLICATION
        // blocks is not read whole to find where its audio starts.
        Format::Flac => flac_metadata_end(source, len)?,
        _ => locate_tag_region_from(len, 4096, |n| read_exact_at(source, 0, n))?,
    }
    .unwrap_or(0)
    .min(len);
    let trailer = match format {
        Format::Mp3 => trailing_tags(source, tag_end, len)?,
        _ => 0,
    };
    let payload_len = len - tag_end - trailer;
    let window = usize::try_from(payload_len)
        .unwrap_or(usize::MAX)
        .min(IDENTITY_WINDOW);
    let head = read_exact_at(audio, tag_end, window)?;

    let mut h = Xxh3::new();
    h.update(b"musicfs audio 1");
    h.update(&[format as u8]);
    h.update(&payload_len.to_le_bytes());
    h.update(&head);
    let audio = h.digest128();

    let mut h = Xxh3::new();
    h.update(b"musicfs file 1");
    h.update(&audio.to_le_bytes());
    h.update(&len.to_le_bytes());
    hash_sampled(&mut h, source, 0, tag_end, tag_hashing)?;
    hash_range(&mut h, source, len - trailer, trailer)?;
    Ok(Some(Identity {
        audio,
        file: h.digest128(),
    }))
}

/// Bytes of trailing tags (ID3v1, APEv2 before it or alone) of an MP3 of `len` bytes whose
/// leading tags end at `tag_end`.
fn trailing_tags(source: &dyn Source, tag_end: u64, len: u64) -> io::Result<u64> {
    let mut end = len;
    if end >= tag_end + ID3V1_LEN {
        let tail = read_exact_at(source, end - ID3V1_LEN, 3)?;
        if tail == b"TAG" {
            end -= ID3V1_LEN;
        }
    }
    if end >= tag_end + APE_FOOTER_LEN {
        let footer = read_exact_at(source, end - APE_FOOTER_LEN, APE_FOOTER_LEN as usize)?;
        if footer.len() == APE_FOOTER_LEN as usize && &footer[..8] == b"APETAGEX" {
            let size = u64::from(u32::from_le_bytes([
                footer[12], footer[13], footer[14], footer[15],
            ]));
            let flags = u32::from_le_bytes([footer[20], footer[21], footer[22], footer[23]]);
            let whole = size
                + if flags & APE_HAS_HEADER != 0 {
                    APE_FOOTER_LEN
                } else {
                    0
                };
            // A size that does not fit is damage, not a tag: leave the bytes as audio.
            if whole >= APE_FOOTER_LEN && whole <= end - tag_end {
                end -= whole;
            }
        }
    }
    Ok(len - end)
}

/// Where the metadata blocks of a FLAC stream end (its first audio frame), from the block
/// headers alone; `None` when it is not one or the chain is damaged.
fn flac_metadata_end(source: &dyn Source, len: u64) -> io::Result<Option<u64>> {
    const LAST: u8 = 0x80;
    const MAX_BLOCKS: usize = 4096;
    if read_exact_at(source, 0, 4)? != b"fLaC" {
        return Ok(None);
    }
    let mut at = 4u64;
    for _ in 0..MAX_BLOCKS {
        let header = read_exact_at(source, at, 4)?;
        let [kind, a, b, c] = header[..] else {
            return Ok(None);
        };
        at += 4 + u64::from(u32::from_be_bytes([0, a, b, c]));
        if at > len {
            return Ok(None);
        }
        if kind & LAST != 0 {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Feeds `len` bytes at `offset` to `h`, or, past `how.whole`, their ends (cover art of
/// several megabytes need not be read twice).
fn hash_sampled(
    h: &mut Xxh3,
    source: &dyn Source,
    offset: u64,
    len: u64,
    how: TagHashing,
) -> io::Result<()> {
    if len <= how.whole {
        return hash_range(h, source, offset, len);
    }
    h.update(&len.to_le_bytes());
    hash_range(h, source, offset, how.sample)?;
    hash_range(h, source, offset + len - how.sample, how.sample)
}

/// Up to `n` bytes at `offset` (fewer only at end of file).
fn read_exact_at(source: &dyn Source, offset: u64, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let got = source.read_at(&mut buf, offset)?;
    buf.truncate(got);
    Ok(buf)
}

/// Feeds `len` bytes at `offset` to `h`, a bounded buffer at a time.
fn hash_range(h: &mut Xxh3, source: &dyn Source, offset: u64, len: u64) -> io::Result<()> {
    const STEP: u64 = 1 << 20;
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(STEP) as usize;
        let bytes = read_exact_at(source, at, n)?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        h.update(&bytes);
        at += bytes.len() as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Mem(Vec<u8>);

    impl Source for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let start = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
    }

    fn id3v2(body: &[u8]) -> Vec<u8> {
        let n = body.len() as u32;
        let size = [
            ((n >> 21) & 0x7f) as u8,
            ((n >> 14) & 0x7f) as u8,
            ((n >> 7) & 0x7f) as u8,
            (n & 0x7f) as u8,
        ];
        let mut v = b"ID3\x04\x00\x00".to_vec();
        v.extend_from_slice(&size);
        v.extend_from_slice(body);
        v
    }

    fn mp3(lead: &[u8], audio: &[u8], id3v1: Option<&[u8]>) -> Mem {
        let mut v = if lead.is_empty() {
            Vec::new()
        } else {
            id3v2(lead)
        };
        v.extend_from_slice(audio);
        if let Some(t) = id3v1 {
            let mut tag = b"TAG".to_vec();
            tag.extend_from_slice(t);
            tag.resize(ID3V1_LEN as usize, 0);
            v.extend_from_slice(&tag);
        }
        Mem(v)
    }

    fn id(m: &Mem) -> Identity {
        identity_of(m, Format::Mp3).unwrap().unwrap()
    }

    #[test]
    fn tags_change_the_file_identity_not_the_audio_one() {
        let audio: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
        let a = id(&mp3(b"TIT2 one", &audio, None));
        let b = id(&mp3(b"TIT2 another title", &audio, Some(b"old tag")));
        let c = id(&mp3(b"", &audio, None));
        assert_eq!(a.audio, b.audio);
        assert_eq!(a.audio, c.audio);
        assert_ne!(a.file, b.file);
        assert_ne!(a.file, c.file);
        assert_eq!(a, id(&mp3(b"TIT2 one", &audio, None)));
    }

    #[test]
    fn other_audio_of_the_same_length_or_prefix_differs() {
        let audio: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8 | 1).collect();
        let mut other = audio.clone();
        other[10] ^= 0x40;
        assert_ne!(
            id(&mp3(b"x", &audio, None)).audio,
            id(&mp3(b"x", &other, None)).audio
        );
        let longer = [audio.as_slice(), &[1, 2, 3]].concat();
        assert_ne!(
            id(&mp3(b"x", &audio, None)).audio,
            id(&mp3(b"x", &longer, None)).audio
        );
    }

    #[test]
    fn damaged_or_tiny_files_do_not_panic() {
        assert!(identity_of(&Mem(Vec::new()), Format::Mp3)
            .unwrap()
            .is_none());
        for v in [
            b"ID3".to_vec(),
            b"TAG".to_vec(),
            b"APETAGEX".repeat(9),
            vec![0xff; 40],
        ] {
            let _ = identity_of(&Mem(v), Format::Mp3).unwrap();
        }
        let mut ape = vec![0xffu8; 100];
        ape.extend_from_slice(b"APETAGEX");
        ape.extend_from_slice(&[0u8; 4]);
        ape.extend_from_slice(&u32::MAX.to_le_bytes());
        ape.extend_from_slice(&[0u8; 16]);
        assert!(identity_of(&Mem(ape), Format::Mp3).unwrap().is_some());
    }
}
