//! What an album folder shows besides its tracks: cover art (`cover.jpg`, its renditions)
//! and the files that sat beside the tracks in the origin (booklets, cue sheets, lyrics).
//!
//! The tree (the snapshot) holds only tracks; a directory's extra entries come from an
//! [`AlbumExtras`] provider (the daemon's, over the catalog and the art store) and follow
//! the directory's children in lookups and listings. Answers are kept per directory until
//! the snapshot or the provider's version changes. An extra entry's inode is a hash of its
//! directory and name in its own range ([`EXTRA_BIT`]), the same whenever it is made
//! again; the kernel is told not to cache extra entries (zero timeouts), so a name that
//! changes meaning is looked up again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use musicfs_core::snapshot::Snapshot;
use xxhash_rust::xxh3::xxh3_64;

/// The bit that marks an extra entry's inode (bits 62 and 63 clear: not a directory of
/// the tree, not a search; track inodes stay far below it).
pub const EXTRA_BIT: u64 = 1 << 61;

/// Whether `ino` is an extra entry's.
pub fn is_extra(ino: u64) -> bool {
    ino >> 61 == 1
}

/// Where an extra entry's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraSource {
    /// A file of an origin (the snapshot's origin index), by its path there.
    Origin {
        /// Origin index.
        origin: u32,
        /// Path relative to the origin root.
        rel_path: Vec<u8>,
    },
    /// A file the daemon keeps (cover art, renditions).
    Stored(PathBuf),
}

/// One extra entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// Its name in the directory.
    pub name: Vec<u8>,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Where its bytes are.
    pub source: ExtraSource,
}

/// What tells the extra entries of a directory.
pub trait AlbumExtras: Send + Sync + std::fmt::Debug {
    /// The extra entries of directory `dir` of `snap` (its file children are the tracks
    /// it shows), in the order to list them; names are unique and none is a child's.
    fn extras(&self, snap: &Snapshot, dir: u64) -> Vec<Extra>;
    /// Changes whenever an answer may have changed besides the snapshot.
    fn version(&self) -> u64;
}

/// The extra entries of one directory, with their inodes.
#[derive(Debug)]
pub struct DirExtras {
    /// The directory.
    pub dir: u64,
    /// Its entries.
    pub entries: Vec<Extra>,
    /// Their inodes, by index.
    pub inos: Vec<u64>,
}

impl DirExtras {
    /// The entry named `name`, by index.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }
}

#[derive(Default)]
struct State {
    /// (snapshot generation, provider version) the answers were made for.
    made_for: (u64, u64),
    dirs: HashMap<u64, Arc<DirExtras>>,
    /// Extra inode → its directory.
    inos: HashMap<u64, u64>,
}

/// The extra entries of one mount's directories.
pub struct Albums {
    provider: Arc<dyn AlbumExtras>,
    state: Mutex<State>,
}

/// Directories whose answers are kept at most (a walk of a huge library drops the
/// oldest: they are made again on demand).
const MAX_DIRS: usize = 65_536;

impl Albums {
    /// Extra entries told by `provider`.
    pub fn new(provider: Arc<dyn AlbumExtras>) -> Albums {
        Albums {
            provider,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self, snap: &Snapshot) -> MutexGuard<'_, State> {
        let key = (snap.generation(), self.provider.version());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.made_for != key {
            state.dirs.clear();
            state.inos.clear();
            state.made_for = key;
        }
        state
    }

    /// The extra entries of tree directory `dir`, made if not known.
    pub fn of_dir(&self, snap: &Snapshot, dir: u64) -> Arc<DirExtras> {
        if let Some(d) = self.state(snap).dirs.get(&dir) {
            return d.clone();
        }
        // Made unlocked: the provider may read files.
        let entries = self.provider.extras(snap, dir);
        let mut inos = Vec::with_capacity(entries.len());
        for e in &entries {
            let mut key = dir.to_le_bytes().to_vec();
            key.extend_from_slice(&e.name);
            inos.push(EXTRA_BIT | (xxh3_64(&key) & (EXTRA_BIT - 1)));
        }
        let made = Arc::new(DirExtras { dir, entries, inos });
        let mut state = self.state(snap);
        if state.dirs.len() >= MAX_DIRS {
            state.dirs.clear();
            state.inos.clear();
        }
        for &ino in &made.inos {
            // A hash shared with another directory's entry (about one in 2^61): the first
            // made keeps it.
            state.inos.entry(ino).or_insert(dir);
        }
        state.dirs.insert(dir, made.clone());
        made
    }

    /// The extra entry `ino` (its directory's entries and its index), if it is known now.
    pub fn find(&self, snap: &Snapshot, ino: u64) -> Option<(Arc<DirExtras>, usize)> {
        let dir = *self.state(snap).inos.get(&ino)?;
        let d = self.of_dir(snap, dir);
        let i = d.inos.iter().position(|&x| x == ino)?;
        Some((d, i))
    }
}
