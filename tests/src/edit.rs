//! In-place tag edits as a tagger makes them, for the tests and benchmarks that measure
//! what an edit upstream costs a remote mount: the value of one Vorbis comment rewritten
//! with one of the same length, so the FLAC's padding and size stay as they were.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};

/// Where a FLAC file's metadata blocks end (the audio frames start there).
pub fn flac_tag_region(bytes: &[u8]) -> Result<u64> {
    ensure!(bytes.starts_with(b"fLaC"), "not a FLAC file");
    let mut at = 4usize;
    loop {
        let h = bytes.get(at..at + 4).context("truncated FLAC metadata")?;
        let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        at += 4 + len;
        if h[0] & 0x80 != 0 {
            return Ok(at as u64);
        }
    }
}

/// Rewrites the value of the `title` comment (ASCII case ignored in the key) from `from`
/// to `to` (same length) in the file's first `limit` bytes, in place: a tagger's in-place
/// edit of a Vorbis comment.
pub fn retitle_in_place(path: &Path, from: &str, to: &str, limit: u64) -> Result<()> {
    ensure!(from.len() == to.len(), "a same-length title keeps the size");
    let mut bytes = fs::read(path)?;
    let needle = format!("title={from}");
    let head = &bytes[..(limit as usize).min(bytes.len())];
    let at = head
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        .with_context(|| format!("{needle:?} not in the tag region"))?;
    let value = at + "title=".len();
    bytes[value..value + to.len()].copy_from_slice(to.as_bytes());
    fs::write(path, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FLAC head: the marker, a STREAMINFO-sized block, then a last VORBIS_COMMENT block.
    fn flac_with_comment(comment: &[u8]) -> Vec<u8> {
        let mut b = b"fLaC".to_vec();
        b.extend_from_slice(&[0x00, 0, 0, 34]);
        b.extend_from_slice(&[0u8; 34]);
        let len = comment.len() as u32;
        b.extend_from_slice(&[0x84, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
        b.extend_from_slice(comment);
        b.extend_from_slice(b"AUDIO FRAMES");
        b
    }

    #[test]
    fn the_tag_region_ends_after_the_last_metadata_block() {
        let b = flac_with_comment(b"TITLE=Noise");
        assert_eq!(flac_tag_region(&b).unwrap(), (b.len() - 12) as u64);
        assert!(flac_tag_region(b"ID3 not flac").is_err());
    }

    #[test]
    fn a_retitle_changes_only_the_value_and_keeps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.flac");
        let b = flac_with_comment(b"TITLE=Noise");
        fs::write(&p, &b).unwrap();
        let region = flac_tag_region(&b).unwrap();
        retitle_in_place(&p, "Noise", "Nuise", region).unwrap();
        let after = fs::read(&p).unwrap();
        assert_eq!(after.len(), b.len());
        assert_eq!(after, flac_with_comment(b"TITLE=Nuise"));
        assert!(retitle_in_place(&p, "Noise", "Nuise", region).is_err());
        assert!(retitle_in_place(&p, "Nuise", "Longer", region).is_err());
    }
}
