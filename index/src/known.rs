//! What the catalog remembers of one origin, for the walking threads to compare stats
//! against without taking a lock per file.
//!
//! Tracks are found by a 128-bit xxh3 of their relative path (two paths of one library
//! sharing it is as unlikely as a content-addressed store mixing up two chunks), so a
//! lookup touches one small table slot instead of hashing and comparing a heap-allocated
//! path, and a found track is marked with an atomic flag rather than removed: whatever is
//! unmarked at the end was not found. Remembered broken files are few; they sit behind a
//! mutex that is only taken when there are any.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use musicfs_core::{ScanState, TrackId};
use xxhash_rust::xxh3::xxh3_128;

/// A track the catalog knows, and whether the walk found it.
struct Entry {
    id: TrackId,
    state: ScanState,
    seen: AtomicBool,
}

/// Hashes an already uniformly distributed `u128` key by keeping its low bits.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128 (none here); fold them in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Known {
    /// Entries live in the table itself: one cache miss per lookup at a million tracks.
    by_path: HashMap<u128, Entry, BuildHasherDefault<PassThrough>>,
    broken: Mutex<HashMap<Vec<u8>, (ScanState, String)>>,
    any_broken: bool,
}

/// A known track found by the walk.
pub(crate) struct Hit {
    pub id: TrackId,
    pub state: ScanState,
}

impl Known {
    /// Builds the lookup from `tracks` (rel path, id, state) and the remembered `broken`
    /// files (rel path -> (state, reason)).
    pub fn new(
        tracks: Vec<(u128, TrackId, ScanState)>,
        broken: HashMap<Vec<u8>, (ScanState, String)>,
    ) -> Known {
        let mut by_path = HashMap::with_capacity_and_hasher(tracks.len(), Default::default());
        for (key, id, state) in tracks {
            let seen = AtomicBool::new(false);
            by_path.insert(key, Entry { id, state, seen });
        }
        Known {
            by_path,
            any_broken: !broken.is_empty(),
            broken: Mutex::new(broken),
        }
    }

    /// The key of a relative path.
    pub fn key(rel: &[u8]) -> u128 {
        xxh3_128(rel)
    }

    /// The known track at `rel`, marked found.
    pub fn find(&self, rel: &[u8]) -> Option<Hit> {
        let e = self.by_path.get(&Known::key(rel))?;
        e.seen.store(true, Ordering::Relaxed);
        Some(Hit {
            id: e.id,
            state: e.state,
        })
    }

    /// The remembered broken file at `rel`, forgotten (it was found).
    pub fn take_broken(&self, rel: &[u8]) -> Option<(ScanState, String)> {
        if !self.any_broken {
            return None;
        }
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rel)
    }

    /// Known tracks the walk did not find.
    pub fn unseen(&self) -> Vec<TrackId> {
        self.by_path
            .values()
            .filter(|e| !e.seen.load(Ordering::Relaxed))
            .map(|e| e.id)
            .collect()
    }

    /// Remembered broken files the walk did not find, by rel path.
    pub fn unseen_broken(&self) -> Vec<Vec<u8>> {
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *broken).into_keys().collect()
    }
}
