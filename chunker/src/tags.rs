//! Where a music file's tag (metadata) region ends, from the file's first bytes.
//!
//! Every parser walks headers with checked arithmetic and bounds-checked reads: a
//! truncated header asks for more bytes ([`TagScan::NeedMore`]), a size that points past
//! the file or a structure it does not know gives [`TagScan::Unknown`]. Nothing panics.

/// Bytes of a file's head worth fetching first: enough for ID3v2 headers, Ogg header pages
/// and most FLAC metadata without cover art.
pub const FIRST_HEAD: usize = 64 << 10;

/// The most of a file's head [`locate_tag_region`] reads: a tag region that does not end
/// within it is treated as absent (the file is then windowed from offset 0).
pub const MAX_HEAD: usize = 16 << 20;

/// What the head of a file says about its tag region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagScan {
    /// The tag region ends here (a file offset, at most the file's length).
    End(u64),
    /// The head is too short to tell: give at least this many bytes of the file's head.
    NeedMore(u64),
    /// Not a format with a tag region we separate, or headers that make no sense.
    Unknown,
}

/// Where the tag region of a `file_len`-byte file ends, from its first bytes `head`;
/// `None` when the format is unknown, the headers are damaged or `head` is too short
/// (see [`scan_tag_region`] to tell those apart).
pub fn tag_region(head: &[u8], file_len: u64) -> Option<u64> {
    match scan_tag_region(head, file_len) {
        TagScan::End(end) => Some(end),
        TagScan::NeedMore(_) | TagScan::Unknown => None,
    }
}

/// Finds the tag region by asking `read_head(n)` for the file's first `n` bytes (it may
/// return fewer at the end of the file), starting with [`FIRST_HEAD`] and growing as the
/// headers require, up to [`MAX_HEAD`]. The answer depends only on the file's bytes, so
/// every fetch path derives the same layout.
pub fn locate_tag_region<E>(
    file_len: u64,
    read_head: impl FnMut(usize) -> Result<Vec<u8>, E>,
) -> Result<Option<u64>, E> {
    locate_tag_region_from(file_len, FIRST_HEAD, read_head)
}

/// [`locate_tag_region`] starting with a head of `first` bytes (a caller whose reads of the
/// head are already cached asks for little first).
pub fn locate_tag_region_from<E>(
    file_len: u64,
    first: usize,
    mut read_head: impl FnMut(usize) -> Result<Vec<u8>, E>,
) -> Result<Option<u64>, E> {
    let mut want = first.min(usize::try_from(file_len).unwrap_or(usize::MAX));
    loop {
        let head = read_head(want)?;
        match scan_tag_region(&head, file_len) {
            TagScan::End(end) => return Ok(Some(end)),
            TagScan::Unknown => return Ok(None),
            TagScan::NeedMore(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                // A head that did not grow, or a need past the cap, ends the search.
                if n > MAX_HEAD || n <= head.len() || head.len() < want {
                    return Ok(None);
                }
                want = n.max(want.saturating_mul(2)).min(MAX_HEAD);
            }
        }
    }
}

/// Where the tag region ends, or what more is needed to tell. See [`TagScan`].
pub fn scan_tag_region(head: &[u8], file_len: u64) -> TagScan {
    let head = &head[..head
        .len()
        .min(usize::try_from(file_len).unwrap_or(usize::MAX))];
    if head.len() < 4 {
        return need(4, file_len);
    }
    match &head[..4] {
        b"fLaC" => flac(head, 0, file_len),
        b"OggS" => ogg(head, file_len),
        [b'I', b'D', b'3', _] => id3(head, file_len),
        _ if head.len() < 8 => need(8, file_len),
        _ if &head[4..8] == b"ftyp" => mp4(head, file_len),
        _ => TagScan::Unknown,
    }
}

/// Asks for `n` bytes, unless the file is shorter (then the headers are truncated).
fn need(n: u64, file_len: u64) -> TagScan {
    if n > file_len {
        TagScan::Unknown
    } else {
        TagScan::NeedMore(n)
    }
}

/// `head[at..at + N]`, if present.
fn bytes<const N: usize>(head: &[u8], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    head.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// An end offset, checked against the file.
fn end_at(end: u64, file_len: u64) -> TagScan {
    if end <= file_len {
        TagScan::End(end)
    } else {
        TagScan::Unknown
    }
}

/// ID3v2 (MP3, and FLAC or AAC files with an ID3 tag in front).
fn id3(head: &[u8], file_len: u64) -> TagScan {
    let Some(h) = bytes::<10>(head, 0) else {
        return need(10, file_len);
    };
    let (major, flags, size) = (h[3], h[5], &h[6..10]);
    if !(2..=4).contains(&major) || h[4] == 0xFF || size.iter().any(|b| b & 0x80 != 0) {
        return TagScan::Unknown;
    }
    let size = size.iter().fold(0u64, |acc, b| (acc << 7) | u64::from(*b));
    let footer = if major == 4 && flags & 0x10 != 0 {
        10
    } else {
        0
    };
    let end = 10 + size + footer;
    if end > file_len {
        return TagScan::Unknown;
    }
    // A FLAC stream after the tag: its metadata belongs to the tag region too.
    match bytes::<4>(head, end) {
        Some(m) if &m == b"fLaC" => flac(head, end, file_len),
        Some(_) => TagScan::End(end),
        None if end.saturating_add(4) <= file_len => TagScan::NeedMore(end + 4),
        None => TagScan::End(end),
    }
}

/// FLAC: the `fLaC` marker at `start`, then metadata blocks until the one flagged last.
fn flac(head: &[u8], start: u64, file_len: u64) -> TagScan {
    let mut at = start + 4;
    loop {
        let Some(h) = bytes::<4>(head, at) else {
            return need(at.saturating_add(4), file_len);
        };
        let block_type = h[0] & 0x7F;
        if block_type == 127 {
            return TagScan::Unknown;
        }
        let len = u64::from(u32::from_be_bytes([0, h[1], h[2], h[3]]));
        at = at.saturating_add(4 + len);
        if at > file_len {
            return TagScan::Unknown;
        }
        if h[0] & 0x80 != 0 {
            return TagScan::End(at);
        }
    }
}

/// MP4/M4A: top-level boxes; a `moov` before `mdat` ends the tag region at the start of
/// `mdat`'s payload. With `mdat` first the metadata sits at the end and nothing is split.
fn mp4(head: &[u8], file_len: u64) -> TagScan {
    let mut at = 0u64;
    let mut seen_moov = false;
    while at < file_len {
        let Some(h) = bytes::<8>(head, at) else {
            return need(at.saturating_add(8), file_len);
        };
        let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let kind = &h[4..8];
        let (size, header) = match size32 {
            0 => (file_len - at, 8),
            1 => match bytes::<8>(head, at.saturating_add(8)) {
                Some(l) => (u64::from_be_bytes(l), 16),
                None => return need(at.saturating_add(16), file_len),
            },
            n => (u64::from(n), 8),
        };
        if size < header {
            return TagScan::Unknown;
        }
        match kind {
            b"moov" => seen_moov = true,
            b"mdat" if seen_moov => return end_at(at.saturating_add(header), file_len),
            b"mdat" => return TagScan::Unknown,
            _ => {}
        }
        at = match at.checked_add(size) {
            Some(next) if next <= file_len => next,
            _ => return TagScan::Unknown,
        };
    }
    TagScan::Unknown
}

/// Ogg: pages until the codec's header packets are complete (Vorbis 3, Opus 2, FLAC-in-Ogg
/// 1 + the count its first packet gives); the end of that page ends the tag region.
fn ogg(head: &[u8], file_len: u64) -> TagScan {
    let mut at = 0u64;
    let mut wanted: Option<u64> = None;
    let mut done = 0u64;
    let mut serial = None;
    loop {
        let Some(h) = bytes::<27>(head, at) else {
            return need(at.saturating_add(27), file_len);
        };
        if &h[..4] != b"OggS" || h[4] != 0 {
            return TagScan::Unknown;
        }
        let page_serial = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
        if *serial.get_or_insert(page_serial) != page_serial {
            return TagScan::Unknown;
        }
        let nsegs = u64::from(h[26]);
        let table_at = at.saturating_add(27);
        let payload_at = table_at.saturating_add(nsegs);
        let Some(table) = usize::try_from(table_at)
            .ok()
            .and_then(|t| head.get(t..t.checked_add(nsegs as usize)?))
        else {
            return need(payload_at, file_len);
        };
        let payload: u64 = table.iter().map(|&l| u64::from(l)).sum();
        if wanted.is_none() {
            match header_packets(head, payload_at, file_len) {
                Ok(n) => wanted = Some(n),
                Err(scan) => return scan,
            }
        }
        done += table.iter().filter(|&&l| l < 255).count() as u64;
        at = payload_at.saturating_add(payload);
        if at > file_len {
            return TagScan::Unknown;
        }
        if wanted.is_some_and(|w| done >= w) {
            return TagScan::End(at);
        }
    }
}

/// How many header packets the Ogg codec whose first packet starts at `at` has.
fn header_packets(head: &[u8], at: u64, file_len: u64) -> Result<u64, TagScan> {
    let Some(p) = bytes::<9>(head, at) else {
        return Err(need(at.saturating_add(9), file_len));
    };
    if &p[..7] == b"\x01vorbis" {
        Ok(3)
    } else if &p[..8] == b"OpusHead" {
        Ok(2)
    } else if &p[..5] == b"\x7fFLAC" {
        match u16::from_be_bytes([p[7], p[8]]) {
            0 => Err(TagScan::Unknown),
            n => Ok(1 + u64::from(n)),
        }
    } else {
        Err(TagScan::Unknown)
    }
}
