//! MusicFS chunker: where a music file is cut into chunks, and what each chunk is called.
//!
//! Pure: bytes in, boundaries and hashes out. No I/O, no allocation beyond the returned
//! chunk lists, no panics on any input (hostile headers included).
//!
//! The scheme (docs/DESIGN-NOTES.md, "Chunking"):
//! - **Tag region first.** [`tag_region`] finds where a file's metadata ends (FLAC metadata
//!   blocks, an ID3v2 tag, an MP4 `moov` placed before `mdat`, Ogg header pages). That
//!   offset is always a chunk boundary, so a tag-only edit changes only chunks before it.
//! - **Fixed windows, content-defined cuts inside.** Each region is split into windows of
//!   [`Params::window`] bytes: the tag region counted from offset 0, the audio region counted
//!   from the tag region's end. FastCDC (the 2020 variant) cuts inside each window and every
//!   window end is a forced cut. A window can therefore be chunked from its own bytes
//!   alone, so a range fetched on a cache miss (widened to windows with
//!   [`Layout::align`]) yields the same chunks as chunking the whole file, and a tag edit
//!   that grows or shrinks the tag region shifts no audio chunk.
//! - Chunks are named by their xxh3-128 ([`hash`]).
//!
//! Types to read first: [`Layout`] (the windows of one file version and how to chunk them),
//! [`Chunk`], [`Params`] (sizes, with [`Params::AUDIO`] the tuned default), and
//! [`scan_tag_region`] / [`locate_tag_region`] for finding the tag region from a file's head.
#![deny(missing_docs)]

mod layout;
mod tags;

pub use layout::{chunk_file, Layout, LayoutError};
pub use tags::{
    locate_tag_region, locate_tag_region_from, scan_tag_region, tag_region, TagScan, FIRST_HEAD,
    MAX_HEAD,
};

/// One chunk of a file: where it is and the xxh3-128 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes (never 0; at most a window).
    pub len: u32,
    /// xxh3-128 of the bytes.
    pub hash: u128,
}

impl Chunk {
    /// The offset just past the chunk.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The chunk name: xxh3-128 of its bytes.
pub fn hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// `len` deterministic bytes that do not compress, standing in for compressed audio in
/// tests, examples and benchmarks of chunking: an xorshift64 stream started from `seed`
/// (made odd), one byte from each step. The same seed gives the same bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FastCDC sizes for one region: minimum, average (target) and maximum chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    min: u32,
    avg: u32,
    max: u32,
}

impl Sizes {
    /// Checked sizes: `min <= avg <= max` within FastCDC 2020's limits (min 64 B..1 MiB,
    /// avg 256 B..4 MiB, max 1 KiB..16 MiB).
    pub const fn new(min: u32, avg: u32, max: u32) -> Option<Sizes> {
        use fastcdc::v2020 as f;
        let in_limits = min >= f::MINIMUM_MIN
            && min <= f::MINIMUM_MAX
            && avg >= f::AVERAGE_MIN
            && avg <= f::AVERAGE_MAX
            && max >= f::MAXIMUM_MIN
            && max <= f::MAXIMUM_MAX;
        if in_limits && min <= avg && avg <= max {
            Some(Sizes { min, avg, max })
        } else {
            None
        }
    }

    /// Minimum chunk size (a window's last chunk may be shorter).
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Average chunk size FastCDC aims at.
    pub fn avg(&self) -> u32 {
        self.avg
    }

    /// Maximum chunk size.
    pub fn max(&self) -> u32 {
        self.max
    }
}

/// Chunking parameters. Every chunk of a CAS must be cut with the same parameters for
/// dedup to work; changing them only lowers dedup, never correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Sizes inside the tag region (small: a tag edit re-fetches little).
    pub tag: Sizes,
    /// Sizes inside the audio region (large: fewer index entries; audio never dedups
    /// below the frame level anyway).
    pub audio: Sizes,
    /// Window length: forced cuts every `window` bytes from the start of each region.
    /// Also the unit a miss is fetched in.
    pub window: u32,
}

const fn sizes(min: u32, avg: u32, max: u32) -> Sizes {
    match Sizes::new(min, avg, max) {
        Some(s) => s,
        None => panic!("invalid built-in chunk sizes"),
    }
}

impl Params {
    /// The sizes MusicFS uses, measured on generated FLAC and MP3 files
    /// (docs/DESIGN-NOTES.md, "Chunking"): tag region 1/4/16 KiB, audio 64/256/1024 KiB,
    /// 4 MiB windows.
    pub const AUDIO: Params = Params {
        tag: sizes(1 << 10, 4 << 10, 16 << 10),
        audio: sizes(64 << 10, 256 << 10, 1 << 20),
        window: 4 << 20,
    };
}

impl Default for Params {
    fn default() -> Params {
        Params::AUDIO
    }
}

#[cfg(test)]
mod tests;
