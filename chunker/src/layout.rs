//! The windows of one file version and the chunks inside them.

use std::ops::Range;

use crate::{hash, tags, Chunk, Params, Sizes};

/// Why a range could not be chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The bytes given do not start at a window start, or do not end at a window end (or
    /// the end of the file).
    NotAligned {
        /// Offset of the first byte given.
        start: u64,
        /// Offset just past the last byte given.
        end: u64,
    },
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::NotAligned { start, end } => write!(
                f,
                "bytes {start}..{end} do not start and end on chunking windows"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// How one file version is cut: its length, where its tag region ends, and the
/// parameters. Two layouts built from the same file bytes are equal, however the bytes
/// were fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    file_len: u64,
    tag_end: u64,
    params: Params,
}

impl Layout {
    /// The layout of a file of `file_len` bytes whose tag region ends at `tag_end` (from
    /// [`tag_region`](crate::tag_region); `None` or 0 means no tag region: windows count
    /// from 0). A `tag_end` past the file is clamped.
    pub fn new(file_len: u64, tag_end: Option<u64>, params: Params) -> Layout {
        Layout {
            file_len,
            tag_end: tag_end.unwrap_or(0).min(file_len),
            params,
        }
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Where the tag region ends (0 when there is none): always a chunk boundary.
    pub fn tag_end(&self) -> u64 {
        self.tag_end
    }

    /// The window holding `offset`, or `None` past the end of the file.
    pub fn window_at(&self, offset: u64) -> Option<Range<u64>> {
        if offset >= self.file_len {
            return None;
        }
        let w = u64::from(self.params.window.max(1));
        let (base, limit) = if offset < self.tag_end {
            (0, self.tag_end)
        } else {
            (self.tag_end, self.file_len)
        };
        let start = base + (offset - base) / w * w;
        Some(start..start.saturating_add(w).min(limit))
    }

    /// Widens `range` to whole windows (clamped to the file): what to fetch on a miss so
    /// the bytes can be chunked with [`Layout::chunk_range`].
    pub fn align(&self, range: Range<u64>) -> Range<u64> {
        let end = range.end.min(self.file_len);
        if range.start >= end {
            return end..end;
        }
        let (Some(first), Some(last)) = (self.window_at(range.start), self.window_at(end - 1))
        else {
            return end..end;
        };
        first.start..last.end
    }

    /// Every window of the file, in order.
    pub fn windows(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let w = self.window_at(at)?;
            at = w.end;
            Some(w)
        })
    }

    /// Chunks `bytes`, which hold the file from `start` on and must cover whole windows
    /// (as [`Layout::align`] returns them). Chunk offsets are file offsets.
    pub fn chunk_range(&self, start: u64, bytes: &[u8]) -> Result<Vec<Chunk>, LayoutError> {
        let end = start.saturating_add(bytes.len() as u64);
        let aligned = self.align(start..end);
        if bytes.is_empty() || aligned != (start..end) {
            return Err(LayoutError::NotAligned { start, end });
        }
        let mut out = Vec::with_capacity(bytes.len() / self.params.audio.avg() as usize + 4);
        let mut at = start;
        while at < end {
            let Some(window) = self.window_at(at) else {
                break;
            };
            let from = (window.start - start) as usize;
            let to = (window.end - start) as usize;
            let sizes = if window.start < self.tag_end {
                self.params.tag
            } else {
                self.params.audio
            };
            cut_window(&bytes[from..to], window.start, sizes, &mut out);
            at = window.end;
        }
        Ok(out)
    }
}

/// FastCDC inside one window, with the window's end as the last cut.
fn cut_window(bytes: &[u8], base: u64, sizes: Sizes, out: &mut Vec<Chunk>) {
    let cdc = fastcdc::v2020::FastCDC::new(bytes, sizes.min(), sizes.avg(), sizes.max());
    for c in cdc {
        let data = &bytes[c.offset..c.offset + c.length];
        out.push(Chunk {
            offset: base + c.offset as u64,
            len: c.length as u32,
            hash: hash(data),
        });
    }
}

/// Chunks a whole file held in memory: finds its tag region, then cuts every window.
/// Returns the layout with the chunks.
pub fn chunk_file(data: &[u8], params: Params) -> (Layout, Vec<Chunk>) {
    let len = data.len() as u64;
    let tag_end = tags::tag_region(data, len);
    let layout = Layout::new(len, tag_end, params);
    let chunks = if data.is_empty() {
        Vec::new()
    } else {
        // A whole file is always aligned.
        layout.chunk_range(0, data).unwrap_or_default()
    };
    (layout, chunks)
}
