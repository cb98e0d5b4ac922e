//! What the daemon reports as it runs: files opened, read and closed, the library changing,
//! origins changing state, the chunk cache evicting. Producers (the FUSE workers, the
//! refresh loop, the health prober) hand an [`Event`] to an [`EventSink`]; the daemon's
//! sink fans them out (control API stream, Server-Sent Events, the access log, webhooks)
//! on threads of its own.
//!
//! The FUSE path emits only the file variants, which hold plain numbers: building one
//! allocates nothing, and a sink must neither block nor allocate on `emit` (the daemon's
//! pushes into a bounded queue and counts what it had to drop).

use std::sync::Arc;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A track was opened (`fh` names the handle until it is closed).
    FileOpened {
        /// The handle.
        fh: u64,
        /// The file's inode.
        ino: u64,
        /// The catalog's track id.
        track_id: u64,
    },
    /// Reads of a handle reached `percent` (25, 50, 75 or 100) of the file. Only reads
    /// the daemon serves are seen: with passthrough the kernel reads local files itself.
    FileRead {
        /// The handle.
        fh: u64,
        /// The file's inode.
        ino: u64,
        /// The catalog's track id.
        track_id: u64,
        /// How far into the file the reads got.
        percent: u8,
    },
    /// A handle was closed.
    FileClosed {
        /// The handle.
        fh: u64,
        /// The file's inode.
        ino: u64,
        /// The catalog's track id.
        track_id: u64,
        /// How long it stayed open, in milliseconds.
        held_ms: u64,
    },
    /// A new tree was published and is being served.
    LibraryChanged {
        /// Its generation.
        generation: u64,
        /// Tracks added, changed and removed by the change that led to it.
        added: u64,
        /// See `added`.
        changed: u64,
        /// See `added`.
        removed: u64,
        /// Files in the tree.
        tracks: u64,
    },
    /// An origin changed state.
    OriginHealth {
        /// The origin's catalog id.
        origin: u32,
        /// `up`, `degraded` or `offline`.
        state: &'static str,
        /// Why (empty when up).
        reason: String,
    },
    /// A plugin misbehaved (trapped, ran out of fuel or memory) and was stopped and
    /// unloaded.
    PluginStopped {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The chunk cache evicted chunks to keep within its budget (or was cleared).
    CacheEvicted {
        /// Chunks evicted since the last such event.
        chunks: u64,
        /// Chunks left.
        cached_chunks: u64,
    },
}

impl Event {
    /// The event's kind as external consumers see it (`file.opened`, `library.changed`,
    /// ...): what webhook filters and the access log name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::FileOpened { .. } => "file.opened",
            Event::FileRead { .. } => "file.read",
            Event::FileClosed { .. } => "file.closed",
            Event::LibraryChanged { .. } => "library.changed",
            Event::OriginHealth { .. } => "origin.health",
            Event::CacheEvicted { .. } => "cache.evicted",
            Event::PluginStopped { .. } => "plugin.stopped",
        }
    }
}

/// Where events go. `emit` is called on the FUSE path: it must not block.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Reports `event`.
    fn emit(&self, event: Event);
}

/// A shared sink.
pub type Events = Arc<dyn EventSink>;

/// The read-progress marks a read from `offset` of `len` bytes crosses in a file of `size`
/// bytes: each of 25, 50, 75 and 100 % whose byte position lies in `(offset, offset+len]`.
pub fn progress_marks(offset: u64, len: u64, size: u64) -> impl Iterator<Item = u8> {
    [25u8, 50, 75, 100].into_iter().filter(move |p| {
        if size == 0 || len == 0 {
            return false;
        }
        let mark = (u128::from(size) * u128::from(*p) / 100) as u64;
        offset < mark && mark <= offset.saturating_add(len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_marks_fire_once_each_as_reads_cross_them() {
        let size = 1000;
        let mut seen = Vec::new();
        for off in (0..size).step_by(100) {
            seen.extend(progress_marks(off, 100, size));
        }
        assert_eq!(seen, [25, 50, 75, 100]);
        assert_eq!(
            progress_marks(0, 4096, 1000).collect::<Vec<_>>(),
            [25, 50, 75, 100]
        );
        assert_eq!(progress_marks(0, 10, 0).count(), 0);
        assert_eq!(progress_marks(300, 0, 1000).count(), 0);
        // Reading the head again does not report the 25 % mark twice from a later read.
        assert_eq!(progress_marks(260, 100, 1000).count(), 0);
    }
}
