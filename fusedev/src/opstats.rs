//! Per-operation counts and latency histograms, recorded by the dispatcher for every
//! request it answers (an [`OpTimer`] guard around [`crate::dispatch::Dispatcher::handle`]).
//!
//! Recording is two clock reads and three relaxed atomic adds on counters that belong to the
//! opcode: no lock, no allocation, so it stays on (its cost is measured by `musicfs-bench
//! ops --metrics`). The daemon exports a [`OpStats::snapshot`] as Prometheus histograms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::abi;

/// Upper bounds of the latency buckets, in nanoseconds (the last bucket is unbounded).
pub const BUCKET_BOUNDS_NS: [u64; 16] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// The operations counted one by one (every other opcode is counted as `other`).
pub const OPS: [(u32, &str); 17] = [
    (abi::FUSE_LOOKUP, "lookup"),
    (abi::FUSE_GETATTR, "getattr"),
    (abi::FUSE_OPEN, "open"),
    (abi::FUSE_READ, "read"),
    (abi::FUSE_RELEASE, "release"),
    (abi::FUSE_OPENDIR, "opendir"),
    (abi::FUSE_READDIR, "readdir"),
    (abi::FUSE_READDIRPLUS, "readdirplus"),
    (abi::FUSE_RELEASEDIR, "releasedir"),
    (abi::FUSE_STATFS, "statfs"),
    (abi::FUSE_ACCESS, "access"),
    (abi::FUSE_GETXATTR, "getxattr"),
    (abi::FUSE_LISTXATTR, "listxattr"),
    (abi::FUSE_READLINK, "readlink"),
    (abi::FUSE_FORGET, "forget"),
    (abi::FUSE_BATCH_FORGET, "batch_forget"),
    (abi::FUSE_INIT, "init"),
];

/// Slot of opcodes not in [`OPS`].
const OTHER: usize = OPS.len();

/// Counters of one operation.
#[derive(Default)]
struct Slot {
    count: AtomicU64,
    errors: AtomicU64,
    sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKET_BOUNDS_NS.len() + 1],
}

/// Origins whose read bytes are counted one by one (ids past it are summed in the last).
pub const COUNTED_ORIGINS: usize = 64;

/// Counts and latency histograms of every operation, and bytes read per origin.
pub struct OpStats {
    slots: [Slot; OPS.len() + 1],
    origin_bytes: [AtomicU64; COUNTED_ORIGINS],
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            slots: std::array::from_fn(|_| Slot::default()),
            origin_bytes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for OpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpStats").finish_non_exhaustive()
    }
}

/// One operation's numbers at some moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSnapshot {
    /// `lookup`, `read`, ... or `other`.
    pub op: &'static str,
    /// Requests answered.
    pub count: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// Time spent answering them, in nanoseconds.
    pub sum_ns: u64,
    /// Requests per bucket of [`BUCKET_BOUNDS_NS`] (not cumulative; the last is the
    /// overflow bucket).
    pub buckets: Vec<u64>,
}

fn slot_of(opcode: u32) -> usize {
    OPS.iter()
        .position(|(code, _)| *code == opcode)
        .unwrap_or(OTHER)
}

impl OpStats {
    /// Starts timing a request of `opcode`; recorded when the guard drops.
    pub fn start(&self, opcode: u32) -> OpTimer<'_> {
        OpTimer {
            stats: self,
            slot: slot_of(opcode),
            start: Instant::now(),
            failed: false,
        }
    }

    fn record(&self, slot: usize, ns: u64, failed: bool) {
        let s = &self.slots[slot];
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if failed {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let b = BUCKET_BOUNDS_NS
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(BUCKET_BOUNDS_NS.len());
        s.buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` bytes read by the daemon from a file of origin `origin` (reads the
    /// kernel does itself through passthrough are not seen).
    pub fn add_bytes(&self, origin: u32, n: u64) {
        let i = (origin as usize).min(COUNTED_ORIGINS - 1);
        self.origin_bytes[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes read per origin id, for the origins read from at all.
    pub fn origin_bytes(&self) -> Vec<(u32, u64)> {
        self.origin_bytes
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, b.load(Ordering::Relaxed)))
            .filter(|(_, b)| *b > 0)
            .collect()
    }

    /// The numbers of every operation that ran at least once.
    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        let names = OPS.iter().map(|(_, n)| *n).chain(std::iter::once("other"));
        self.slots
            .iter()
            .zip(names)
            .filter(|(s, _)| s.count.load(Ordering::Relaxed) > 0)
            .map(|(s, op)| OpSnapshot {
                op,
                count: s.count.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                sum_ns: s.sum_ns.load(Ordering::Relaxed),
                buckets: s
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect(),
            })
            .collect()
    }
}

/// Times one request; records it when dropped (whatever path the handler returned by).
pub struct OpTimer<'a> {
    stats: &'a OpStats,
    slot: usize,
    start: Instant,
    failed: bool,
}

impl OpTimer<'_> {
    /// Marks the request as answered with an error.
    pub fn failed(&mut self) {
        self.failed = true;
    }
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        let ns = self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.stats.record(self.slot, ns, self.failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_lands_in_its_operation_and_bucket() {
        let stats = OpStats::default();
        drop(stats.start(abi::FUSE_LOOKUP));
        let mut t = stats.start(abi::FUSE_READ);
        t.failed();
        drop(t);
        drop(stats.start(9999));
        stats.record(slot_of(abi::FUSE_READ), 7_000, false);
        stats.record(slot_of(abi::FUSE_READ), 5_000_000_000, false);
        let snap = stats.snapshot();
        let ops: Vec<&str> = snap.iter().map(|s| s.op).collect();
        assert_eq!(ops, ["lookup", "read", "other"]);
        let read = &snap[1];
        assert_eq!((read.count, read.errors), (3, 1));
        assert_eq!(read.buckets.iter().sum::<u64>(), 3);
        assert!(read.buckets[1] >= 1); // the 7 µs one
        assert_eq!(*read.buckets.last().unwrap(), 1);
    }
}
