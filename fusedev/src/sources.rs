//! Open sources: what a file handle reads from, the pool that lets opening reuse a
//! released handle's allocation, and the per-inode sources read when the kernel opens files
//! without asking (after OPEN answered ENOSYS, READ carries no handle).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use musicfs_core::overlay::Rendition;
use musicfs_storage::origin::{LocalSource, Source as OriginSource};

/// An open source: a local file (read by fd: passthrough, io_uring, `pread`), or any other
/// origin's source (read through the origin seam).
pub enum Source {
    /// A file of a local origin.
    Local(LocalSource),
    /// A source of another kind of origin.
    Other(Arc<dyn OriginSource>),
    /// A file with tag edits: the rendition's synthesised bytes around the source's
    /// (never passthrough: the kernel would read the source as it is).
    Rendered {
        /// What the reads return.
        rendition: Arc<Rendition>,
        /// The source file the rendition was cut from.
        inner: Box<Source>,
    },
}

impl Source {
    /// The raw fd, for passthrough and io_uring (local files only).
    pub fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Source::Local(l) => Some(l.file().as_raw_fd()),
            Source::Other(o) => o.raw_fd(),
            Source::Rendered { .. } => None,
        }
    }

    /// Reads `buf.len()` bytes at `offset` (short only at end of file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Source::Local(l) => l.read_at(buf, offset),
            Source::Other(o) => o.read_at(buf, offset),
            Source::Rendered { rendition, inner } => {
                rendition.read_at(buf, offset, |b, at| inner.read_at(b, at))
            }
        }
    }
}

/// One open source behind a handle. The `Option` lets a released handle's allocation be
/// reused for the next open.
pub struct OpenFile {
    pub(crate) source: Option<Source>,
    /// The attributes of the version opened, as the kernel was shown them (its node id
    /// names that version: [`musicfs_core::nodeid`]); `None` for per-inode sources.
    pub(crate) shown: Option<crate::fs::Attr>,
}

/// Released handles kept for reuse at most (a burst of opens beyond it allocates).
const SPARE_HANDLES: usize = 4096;

/// Allocations of released handles, for the next opens.
#[derive(Default)]
pub struct HandlePool {
    spare: Mutex<Vec<Arc<OpenFile>>>,
}

impl HandlePool {
    fn spare(&self) -> MutexGuard<'_, Vec<Arc<OpenFile>>> {
        // Every update is one push or pop: a poisoned pool is still consistent.
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle holding `source` of the version shown as `shown`, made from a pooled
    /// allocation when there is one.
    pub fn wrap(&self, source: Source, shown: Option<crate::fs::Attr>) -> Arc<OpenFile> {
        let mut handle = self.spare().pop().unwrap_or_else(|| {
            Arc::new(OpenFile {
                source: None,
                shown: None,
            })
        });
        match Arc::get_mut(&mut handle) {
            Some(slot) => {
                slot.source = Some(source);
                slot.shown = shown;
            }
            // Only handles nobody else holds are pooled; this cannot happen, but a fresh
            // allocation is the safe answer if it ever did.
            None => {
                handle = Arc::new(OpenFile {
                    source: Some(source),
                    shown,
                })
            }
        }
        handle
    }

    /// Closes `handle`'s source and keeps its allocation, unless a read still holds it
    /// (that reader's drop then closes the source).
    pub fn recycle(&self, mut handle: Arc<OpenFile>) {
        if let Some(slot) = Arc::get_mut(&mut handle) {
            slot.source = None;
            let mut pool = self.spare();
            if pool.len() < SPARE_HANDLES {
                pool.push(handle);
            }
        }
    }
}

const INODE_SHARDS: usize = 64;
/// Sources kept per shard: 256 open files at most, well under the default fd limit.
const INODE_WAYS: usize = 4;

struct InodeSlot {
    ino: u64,
    generation: u64,
    handle: Arc<OpenFile>,
}

#[derive(Default)]
struct InodeShard {
    slots: Vec<InodeSlot>,
    /// The slot the next insertion into a full shard replaces.
    hand: usize,
}

/// Sources by inode and content generation, for READs that carry no handle: a small
/// set-associative cache (64 shards of 4), so the open files it keeps stay bounded.
pub struct InodeSources {
    shards: Box<[Mutex<InodeShard>]>,
}

impl Default for InodeSources {
    fn default() -> Self {
        let shards = (0..INODE_SHARDS)
            .map(|_| {
                Mutex::new(InodeShard {
                    slots: Vec::with_capacity(INODE_WAYS),
                    hand: 0,
                })
            })
            .collect();
        InodeSources { shards }
    }
}

impl InodeSources {
    fn shard(&self, ino: u64) -> MutexGuard<'_, InodeShard> {
        // Every update is a single assignment or push: a poisoned shard is consistent.
        self.shards[(ino as usize) % INODE_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The source of `ino` at content `generation`, if one is open.
    pub fn get(&self, ino: u64, generation: u64) -> Option<Arc<OpenFile>> {
        let shard = self.shard(ino);
        let slot = shard.slots.iter().find(|s| s.ino == ino)?;
        (slot.generation == generation).then(|| slot.handle.clone())
    }

    /// Keeps `handle` as the source of `ino` at `generation`; returns the handle it
    /// replaces (an older generation of `ino`, or the victim of a full shard).
    pub fn insert(
        &self,
        ino: u64,
        generation: u64,
        handle: Arc<OpenFile>,
    ) -> Option<Arc<OpenFile>> {
        let mut shard = self.shard(ino);
        let fresh = InodeSlot {
            ino,
            generation,
            handle,
        };
        if let Some(i) = shard.slots.iter().position(|s| s.ino == ino) {
            return Some(std::mem::replace(&mut shard.slots[i], fresh).handle);
        }
        if shard.slots.len() < INODE_WAYS {
            shard.slots.push(fresh);
            return None;
        }
        let victim = shard.hand % INODE_WAYS;
        shard.hand = shard.hand.wrapping_add(1);
        Some(std::mem::replace(&mut shard.slots[victim], fresh).handle)
    }

    /// Drops every source (on unmount).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .slots
                .clear();
        }
    }

    /// Number of sources kept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).slots.len())
            .sum()
    }

    /// Whether no source is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Arc<OpenFile> {
        Arc::new(OpenFile {
            source: None,
            shown: None,
        })
    }

    #[test]
    fn a_source_is_found_only_at_its_generation_and_replaced_by_a_newer_one() {
        let c = InodeSources::default();
        let first = handle();
        assert!(c.insert(7, 1, first.clone()).is_none());
        assert!(c.get(7, 1).is_some_and(|h| Arc::ptr_eq(&h, &first)));
        assert!(c.get(7, 2).is_none());
        let old = c.insert(7, 2, handle()).expect("replaced");
        assert!(Arc::ptr_eq(&old, &first));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_shard_evicts_so_open_sources_stay_bounded() {
        let c = InodeSources::default();
        let mut evicted = 0;
        for i in 0..(INODE_SHARDS * INODE_WAYS * 3) as u64 {
            evicted += usize::from(c.insert(i, 1, handle()).is_some());
        }
        assert_eq!(c.len(), INODE_SHARDS * INODE_WAYS);
        assert_eq!(evicted, INODE_SHARDS * INODE_WAYS * 2);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn recycled_handles_are_reused_unless_still_held() {
        let pool = HandlePool::default();
        let held = handle();
        let reader = held.clone();
        pool.recycle(held);
        assert!(pool.spare().is_empty(), "a reader still holds it");
        drop(reader);
        let free = handle();
        let ptr = Arc::as_ptr(&free);
        pool.recycle(free);
        let again = pool.spare().pop().expect("pooled");
        assert_eq!(Arc::as_ptr(&again), ptr);
    }
}
