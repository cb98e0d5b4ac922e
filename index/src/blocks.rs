//! Block reads in front of a remote source, for the tag reader.
//!
//! symphonia reads a file in many small pieces (a 4-byte box header here, 1 KiB there,
//! growing to 32 KiB while it reads on). Against a local file each piece is a `pread`;
//! against an object store each [`Source::read_at`] is a request, so the tag reader reads a
//! remote source through a [`Blocked`] one: a miss fetches the aligned block around it, a
//! few recent blocks are kept, and a run of reads that goes on where the last fetch ended
//! fetches twice as much each time (up to [`MAX_RUN`]). So a probe of a file costs a few
//! requests, for its head and its tail, and never the whole file: reads that skip ahead
//! (over audio data, to the end for ID3v1, APE or a trailing MP4 `moov`) fetch only the
//! block they land in.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use musicfs_storage::origin::Source;

/// The smallest fetch, and the alignment of every fetch.
pub(crate) const BLOCK: u64 = 16 * 1024;
/// The largest fetch of a sequential run.
pub(crate) const MAX_RUN: u64 = 512 * 1024;
/// Fetched runs kept.
const KEEP: usize = 4;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Blocked {
    inner: Arc<dyn Source>,
    len: u64,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// Fetched runs, oldest first: (offset, bytes).
    runs: VecDeque<(u64, Vec<u8>)>,
    /// Where the last fetch ended, and how much it fetched.
    last_end: u64,
    last_len: u64,
}

impl Blocked {
    /// `inner` read in blocks.
    pub(crate) fn new(inner: Arc<dyn Source>) -> Blocked {
        Blocked {
            len: inner.len(),
            inner,
            cache: Mutex::new(Cache::default()),
        }
    }
}

impl Cache {
    /// Copies what a kept run holds of `offset..` into `buf`; how much.
    fn copy(&self, buf: &mut [u8], offset: u64) -> usize {
        for (start, bytes) in self.runs.iter().rev() {
            let end = start + bytes.len() as u64;
            if (*start..end).contains(&offset) {
                let from = (offset - start) as usize;
                let n = buf.len().min(bytes.len() - from);
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                return n;
            }
        }
        0
    }

    /// The range to fetch for a miss at `offset` by a read that wants bytes up to `end`:
    /// the aligned blocks that hold them (one fetch even when the read straddles a block
    /// boundary), or more when it continues the last fetch.
    fn plan(&mut self, offset: u64, end: u64, len: u64) -> (u64, u64) {
        let start = offset - offset % BLOCK;
        let run = if start == self.last_end && self.last_len > 0 {
            (self.last_len * 2).min(MAX_RUN)
        } else {
            BLOCK
        };
        let covering = end.div_ceil(BLOCK) * BLOCK - start;
        let size = run.max(covering).min(len - start);
        (self.last_end, self.last_len) = (start + size, size);
        (start, size)
    }
}

impl Source for Blocked {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut filled = 0;
        while filled < want {
            let at = offset + filled as u64;
            let n = cache.copy(&mut buf[filled..want], at);
            if n > 0 {
                filled += n;
                continue;
            }
            let (start, size) = cache.plan(at, offset + want as u64, self.len);
            let mut bytes = vec![0u8; size as usize];
            let got = self.inner.read_at(&mut bytes, start)?;
            bytes.truncate(got);
            if start + (got as u64) <= at {
                // The source ended early (it shrank since it was opened).
                break;
            }
            if cache.runs.len() == KEEP {
                cache.runs.pop_front();
            }
            cache.runs.push_back((start, bytes));
        }
        Ok(filled)
    }

    fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Debug)]
    struct Counting {
        bytes: Vec<u8>,
        calls: AtomicU64,
        read: AtomicU64,
    }

    impl Source for Counting {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let from = (offset as usize).min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - from);
            buf[..n].copy_from_slice(&self.bytes[from..from + n]);
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }

        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }
    }

    fn counting(len: usize) -> Arc<Counting> {
        Arc::new(Counting {
            bytes: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            calls: AtomicU64::new(0),
            read: AtomicU64::new(0),
        })
    }

    #[test]
    fn small_reads_are_served_from_one_fetched_block_and_bytes_are_right() {
        let inner = counting(10 << 20);
        let blocked = Blocked::new(inner.clone());
        let mut buf = [0u8; 100];
        for off in (0..16_000u64).step_by(100) {
            assert_eq!(blocked.read_at(&mut buf, off).unwrap(), 100);
            assert_eq!(&buf[..], &inner.bytes[off as usize..off as usize + 100]);
        }
        assert_eq!(inner.calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_read_at_the_tail_fetches_one_block_and_short_reads_mean_end_of_file() {
        let len = (3 << 20) + 77;
        let inner = counting(len);
        let blocked = Blocked::new(inner.clone());
        let mut buf = [0u8; 128];
        assert_eq!(blocked.read_at(&mut buf, len as u64 - 128).unwrap(), 128);
        assert_eq!(&buf[..], &inner.bytes[len - 128..]);
        assert_eq!(blocked.read_at(&mut buf, len as u64 - 10).unwrap(), 10);
        assert_eq!(blocked.read_at(&mut buf, len as u64 + 5).unwrap(), 0);
        assert_eq!(inner.calls.load(Ordering::Relaxed), 1);
        assert!(inner.read.load(Ordering::Relaxed) <= 2 * BLOCK);
    }

    #[test]
    fn a_sequential_run_fetches_growing_runs_and_reads_across_blocks_join_up() {
        let len = 8 << 20;
        let inner = counting(len);
        let blocked = Blocked::new(inner.clone());
        let mut buf = vec![0u8; 4096];
        let mut off = 1000u64;
        while off + 4096 < 4 << 20 {
            assert_eq!(blocked.read_at(&mut buf, off).unwrap(), 4096);
            assert_eq!(&buf[..], &inner.bytes[off as usize..off as usize + 4096]);
            off += 4096;
        }
        // 16K, 32K, ..., 512K, then 512K runs: far fewer than one call per 4 KiB read.
        let calls = inner.calls.load(Ordering::Relaxed);
        assert!(calls <= 14, "{calls} fetches");
        assert!(inner.read.load(Ordering::Relaxed) < (4 << 20) + MAX_RUN);
    }
}
