//! Open-handle tables: a sharded slab, so concurrent workers opening, reading and releasing
//! different files rarely touch the same lock, and a read holds a lock only long enough to
//! clone an `Arc`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Handles per shard with room reserved up front (1 024 per table): opening and releasing
/// allocate nothing until more are open at once.
const SHARD_CAPACITY: usize = 16;

/// A table of open handles. Handle numbers are never 0 and are reused after release (the
/// kernel never sends a handle after releasing it).
pub struct HandleTable<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    next_shard: AtomicUsize,
}

struct Shard<V> {
    slots: Vec<Option<V>>,
    free: Vec<usize>,
    used: usize,
}

impl<V: Clone> HandleTable<V> {
    /// An empty table.
    pub fn new() -> HandleTable<V> {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    slots: Vec::with_capacity(SHARD_CAPACITY),
                    free: Vec::with_capacity(SHARD_CAPACITY),
                    used: 0,
                })
            })
            .collect();
        HandleTable {
            shards,
            next_shard: AtomicUsize::new(0),
        }
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard<V>> {
        // A panic while holding a shard cannot leave a slot half-written (every update is
        // a single assignment), so a poisoned lock is still consistent.
        self.shards[index % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn split(fh: u64) -> Option<(usize, usize)> {
        let raw = fh.checked_sub(1)?;
        let shard = (raw & (SHARDS as u64 - 1)) as usize;
        let slot = usize::try_from(raw >> SHARD_BITS).ok()?;
        Some((shard, slot))
    }

    /// Stores `value` and returns its handle.
    pub fn insert(&self, value: V) -> u64 {
        let shard_index = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut shard = self.shard(shard_index);
        let slot = match shard.free.pop() {
            Some(slot) => {
                shard.slots[slot] = Some(value);
                slot
            }
            None => {
                shard.slots.push(Some(value));
                shard.slots.len() - 1
            }
        };
        shard.used += 1;
        ((slot as u64) << SHARD_BITS | shard_index as u64) + 1
    }

    /// A clone of the value under `fh`.
    pub fn get(&self, fh: u64) -> Option<V> {
        let (shard, slot) = Self::split(fh)?;
        self.shard(shard).slots.get(slot)?.clone()
    }

    /// Puts `value` under the open handle `fh`, returning the value it held (`None`, and
    /// `value` dropped, when `fh` is not open).
    pub fn replace(&self, fh: u64, value: V) -> Option<V> {
        let (shard_index, slot) = Self::split(fh)?;
        let mut shard = self.shard(shard_index);
        let held = shard.slots.get_mut(slot)?.as_mut()?;
        Some(std::mem::replace(held, value))
    }

    /// Removes and returns the value under `fh`.
    pub fn remove(&self, fh: u64) -> Option<V> {
        let (shard_index, slot) = Self::split(fh)?;
        let mut shard = self.shard(shard_index);
        let value = shard.slots.get_mut(slot)?.take()?;
        shard.free.push(slot);
        shard.used -= 1;
        Some(value)
    }

    /// The first `f(value)` that is `Some`, over every open handle (a scan: for rare
    /// questions, not for a request's fast path).
    pub fn find_map<R>(&self, mut f: impl FnMut(&V) -> Option<R>) -> Option<R> {
        (0..SHARDS).find_map(|i| self.shard(i).slots.iter().flatten().find_map(&mut f))
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).used).sum()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every handle (on unmount, when the kernel will send no more releases).
    pub fn clear(&self) {
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            shard.slots.clear();
            shard.free.clear();
            // clear() keeps the reserved room: later opens still allocate nothing.
            shard.used = 0;
        }
    }
}

impl<V: Clone> Default for HandleTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_nonzero_distinct_and_reused_after_release() {
        let t = HandleTable::new();
        let hs: Vec<u64> = (0..200).map(|i| t.insert(i)).collect();
        assert!(hs.iter().all(|h| *h != 0));
        let mut sorted = hs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), hs.len());
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(t.get(*h), Some(i));
        }
        assert_eq!(t.len(), 200);
        assert_eq!(t.remove(hs[5]), Some(5));
        assert_eq!(t.get(hs[5]), None);
        assert_eq!(t.remove(hs[5]), None);
        assert_eq!(t.len(), 199);
        assert_eq!(t.find_map(|v| (*v == 7).then_some("seven")), Some("seven"));
        assert_eq!(t.find_map(|v| (*v == 5).then_some(())), None, "released");
    }

    #[test]
    fn unknown_handles_are_refused_not_panicking() {
        let t: HandleTable<u8> = HandleTable::new();
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(u64::MAX), None);
        assert_eq!(t.remove(12345), None);
        t.insert(1);
        t.clear();
        assert!(t.is_empty());
    }
}
