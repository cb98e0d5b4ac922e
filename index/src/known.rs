//! What the catalog remembers of one origin, for the walking threads to compare stats
//! against without taking a lock per file.
//!
//! Tracks are found by a 128-bit xxh3 of their relative path (two paths of one library
//! sharing it is as unlikely as a content-addressed store mixing up two chunks), and their
//! scan state is kept as a 64-bit xxh3 of its fields: the walk only asks "unchanged?", so
//! an entry is 32 bytes (path hash, id, state hash), whatever the path's length. The
//! entries sit in one array sorted by path hash, with a directory indexed by the hash's
//! top bits pointing into it: the hashes are uniform, so a lookup reads one directory slot
//! and scans about one entry, two cache misses at a million tracks, and the whole table
//! is about 36 bytes per track (a `HashMap` of full states took about 170). A found track
//! is marked in a bitmap of atomic words rather than removed: whatever is unmarked at the
//! end was not found. Remembered broken files are few; they sit behind a mutex that is
//! only taken when there are any.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use musicfs_core::{ScanState, TrackId};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// A track the catalog knows: 32 bytes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u128,
    id: u64,
    state: u64,
}

/// Collects the known tracks of an origin, then sorts them into a [`Known`].
#[derive(Default)]
pub(crate) struct KnownBuilder {
    entries: Vec<Entry>,
}

impl KnownBuilder {
    /// Adds the track at `rel` (relative path) with its catalog id and recorded state.
    pub fn push(&mut self, rel: &[u8], id: TrackId, state: &ScanState) {
        self.entries.push(Entry {
            key: Known::key(rel),
            id: id.0,
            state: state_hash(state),
        });
    }

    /// How many tracks were added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The lookup, with the remembered `broken` files (rel path -> (state, reason)).
    pub fn finish(mut self, broken: HashMap<Vec<u8>, (ScanState, String)>) -> Known {
        self.entries.shrink_to_fit();
        self.entries.sort_unstable_by_key(|e| e.key);
        let n = self.entries.len();
        // About one entry per directory slot.
        let bits = n.next_power_of_two().trailing_zeros().min(24);
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for e in &self.entries {
            starts[slot(e.key, bits) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let seen = (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Known {
            entries: self.entries,
            starts,
            bits,
            seen,
            any_broken: !broken.is_empty(),
            broken: Mutex::new(broken),
        }
    }
}

/// See the module documentation.
pub(crate) struct Known {
    /// Sorted by key.
    entries: Vec<Entry>,
    /// `starts[s]..starts[s + 1]`: the entries whose key's top `bits` bits are `s`.
    starts: Vec<u32>,
    bits: u32,
    /// One bit per entry: found by the walk.
    seen: Vec<AtomicU64>,
    broken: Mutex<HashMap<Vec<u8>, (ScanState, String)>>,
    any_broken: bool,
}

/// A known track found by the walk.
pub(crate) struct Hit {
    pub id: TrackId,
    /// The 64-bit hash of the recorded scan state (compare with [`state_hash`]).
    pub state: u64,
}

/// The directory slot of `key`: its top `bits` bits.
fn slot(key: u128, bits: u32) -> usize {
    match bits {
        0 => 0,
        b => (key >> (128 - b)) as usize,
    }
}

/// A 64-bit digest of every field of a scan state: equal states give equal digests, and
/// two different ones collide with probability 2^-64.
pub(crate) fn state_hash(s: &ScanState) -> u64 {
    let mut b = [0u8; 48];
    b[0..8].copy_from_slice(&s.size.to_le_bytes());
    b[8..16].copy_from_slice(&s.mtime_ns.to_le_bytes());
    b[16..24].copy_from_slice(&s.ino.to_le_bytes());
    b[24..32].copy_from_slice(&s.ctime_ns.to_le_bytes());
    if let Some(p) = s.perm {
        b[32] = 1;
        b[33..37].copy_from_slice(&p.mode.to_le_bytes());
        b[37..41].copy_from_slice(&p.uid.to_le_bytes());
        b[41..45].copy_from_slice(&p.gid.to_le_bytes());
    }
    xxh3_64(&b)
}

impl Known {
    /// The key of a relative path.
    pub fn key(rel: &[u8]) -> u128 {
        xxh3_128(rel)
    }

    /// The known track at `rel`, marked found.
    pub fn find(&self, rel: &[u8]) -> Option<Hit> {
        let key = Known::key(rel);
        let s = slot(key, self.bits);
        let (lo, hi) = (self.starts[s] as usize, self.starts[s + 1] as usize);
        let i = lo + self.entries[lo..hi].iter().position(|e| e.key == key)?;
        self.seen[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
        let e = &self.entries[i];
        Some(Hit {
            id: TrackId(e.id),
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
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) == 0)
            .map(|(_, e)| TrackId(e.id))
            .collect()
    }

    /// Remembered broken files the walk did not find, by rel path.
    pub fn unseen_broken(&self) -> Vec<Vec<u8>> {
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *broken).into_keys().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(size: u64) -> ScanState {
        ScanState {
            size,
            mtime_ns: 1,
            ino: 2,
            ctime_ns: 3,
            perm: None,
        }
    }

    fn table(n: u64) -> Known {
        let mut b = KnownBuilder::default();
        for i in 0..n {
            b.push(format!("a/{i}.flac").as_bytes(), TrackId(i), &state(i));
        }
        b.finish(HashMap::new())
    }

    #[test]
    fn every_known_path_is_found_with_its_id_and_state() {
        let k = table(5000);
        for i in (0..5000).rev() {
            let hit = k.find(format!("a/{i}.flac").as_bytes()).expect("known");
            assert_eq!(hit.id, TrackId(i));
            assert_eq!(hit.state, state_hash(&state(i)));
        }
        assert!(k.find(b"a/5000.flac").is_none());
        assert!(k.unseen().is_empty());
    }

    #[test]
    fn tracks_not_found_are_the_unseen_ones() {
        let k = table(300);
        for i in (0..300).filter(|i| i % 7 != 0) {
            k.find(format!("a/{i}.flac").as_bytes());
        }
        let mut unseen = k.unseen();
        unseen.sort();
        let expected: Vec<TrackId> = (0..300).filter(|i| i % 7 == 0).map(TrackId).collect();
        assert_eq!(unseen, expected);
    }

    #[test]
    fn an_empty_table_finds_nothing() {
        let k = table(0);
        assert!(k.find(b"x.flac").is_none());
        assert!(k.unseen().is_empty());
    }

    #[test]
    fn every_field_of_the_state_counts() {
        let base = state(10);
        let perm = musicfs_core::meta::Perm {
            mode: 0o644,
            uid: 1,
            gid: 2,
        };
        let variants = [
            ScanState { size: 11, ..base },
            ScanState {
                mtime_ns: 9,
                ..base
            },
            ScanState { ino: 9, ..base },
            ScanState {
                ctime_ns: 9,
                ..base
            },
            ScanState {
                perm: Some(perm),
                ..base
            },
            ScanState {
                perm: Some(musicfs_core::meta::Perm { uid: 3, ..perm }),
                ..base
            },
        ];
        let h = state_hash(&base);
        let mut all: Vec<u64> = variants.iter().map(state_hash).collect();
        assert!(all.iter().all(|&v| v != h));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), variants.len());
        assert_eq!(h, state_hash(&state(10)));
    }
}
