//! [`Chunking`] by `musicfs-chunker`: tag regions from the format parsers, FastCDC inside
//! fixed windows (see that crate).

use std::ops::Range;

use musicfs_chunker::{Layout, Params, TagScan};

use super::cached::{ChunkRef, Chunking};

/// The chunker MusicFS caches remote files with ([`Params::AUDIO`] by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioChunking {
    params: Params,
}

impl AudioChunking {
    /// Chunking with `params`.
    pub fn new(params: Params) -> AudioChunking {
        AudioChunking { params }
    }

    fn layout(&self, len: u64, tag_end: u64) -> Layout {
        Layout::new(len, Some(tag_end), self.params)
    }
}

/// Where FLAC's STREAMINFO says what the audio is: sample rate, channels, bits, total
/// samples and the MD5 of the decoded audio (bytes 10..34 of the block, after the 4-byte
/// marker and the 4-byte block header).
const STREAMINFO_AUDIO: Range<usize> = 18..42;

impl Chunking for AudioChunking {
    fn tag_end(&self, head: &[u8], len: u64) -> Result<u64, u64> {
        match musicfs_chunker::scan_tag_region(head, len) {
            TagScan::End(end) => Ok(end),
            TagScan::NeedMore(n) => Err(n),
            TagScan::Unknown => Ok(0),
        }
    }

    fn window_at(&self, len: u64, tag_end: u64, offset: u64) -> Range<u64> {
        self.layout(len, tag_end)
            .window_at(offset)
            .unwrap_or(len..len)
    }

    fn cut(&self, len: u64, tag_end: u64, start: u64, bytes: &[u8]) -> Vec<ChunkRef> {
        // The tag region is one window for the read path (it may span several of the
        // chunker's): `chunk_range` cuts each of them.
        self.layout(len, tag_end)
            .chunk_range(start, bytes)
            .unwrap_or_default()
    }

    fn same_audio(&self, old_head: &[u8], new_head: &[u8]) -> bool {
        let flac = |h: &[u8]| h.starts_with(b"fLaC") && h.len() >= STREAMINFO_AUDIO.end;
        if flac(old_head) && flac(new_head) {
            return old_head[STREAMINFO_AUDIO] == new_head[STREAMINFO_AUDIO];
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flac_audio_identity_is_compared_and_other_formats_pass() {
        let mut a = b"fLaC\x00\x00\x00\x22".to_vec();
        a.extend((0u8..34).collect::<Vec<u8>>());
        let mut b = a.clone();
        let c = AudioChunking::default();
        assert!(c.same_audio(&a, &b));
        b[40] ^= 1;
        assert!(!c.same_audio(&a, &b));
        assert!(c.same_audio(b"ID3\x04", b"ID3\x04"));
    }

    #[test]
    fn cuts_tile_a_window_and_a_bad_range_gives_none() {
        let c = AudioChunking::default();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| ((i * 7919) >> 3) as u8).collect();
        let len = bytes.len() as u64;
        let w = c.window_at(len, 0, 0);
        assert_eq!(w, 0..len);
        let refs = c.cut(len, 0, 0, &bytes);
        assert_eq!(refs.first().map(|r| r.offset), Some(0));
        assert_eq!(refs.iter().map(|r| u64::from(r.len)).sum::<u64>(), len);
        assert!(c.cut(len, 0, 5, &bytes[5..]).is_empty());
    }
}
