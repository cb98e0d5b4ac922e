//! Scans of some directories of an origin instead of all of it: what an inotify event asks
//! for, so a change costs the files of its directory, not the whole library.
//!
//! A [`Scope`] is a set of start directories. A *shallow* start (a directory an event
//! named) is listed with its own files, and of its subdirectories only those the catalog
//! has no track under are walked (deep: a directory that appeared may hold a whole album);
//! a subdirectory the catalog has tracks under that the listing no longer shows has
//! vanished, and so have those tracks. A *deep* start (a directory created or moved in) is
//! walked whole. Only the catalog entries under the starts are loaded and compared, so an
//! unchanged track elsewhere is neither stat'ed nor read from the catalog.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use musicfs_core::{OriginId, TrackId};
use musicfs_storage::{Catalog, CatalogError};

use super::is_under;
use crate::known::KnownBuilder;
use crate::walk::Start;

/// More directories than this: scan the whole origin (see [`crate::watch::MAX_DIRS`]).
pub use crate::watch::MAX_DIRS;

/// Which part of an origin a scan looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Extent {
    /// All of it.
    #[default]
    Whole,
    /// These directories (relative to the origin root, as bytes; empty for the root): each
    /// is listed with its own files and its new subdirectories walked; with `true`,
    /// everything below it is walked.
    Dirs(BTreeMap<Vec<u8>, bool>),
}

impl Extent {
    /// Adds directory `dir` (deep: walk all below it); past [`MAX_DIRS`] directories the
    /// extent becomes [`Extent::Whole`].
    pub fn add_dir(&mut self, dir: Vec<u8>, deep: bool) {
        if let Extent::Dirs(dirs) = self {
            *dirs.entry(dir).or_insert(deep) |= deep;
            if dirs.len() > MAX_DIRS {
                *self = Extent::Whole;
            }
        }
    }

    /// Widens this extent to cover `other` too.
    pub fn merge(&mut self, other: Extent) {
        match other {
            Extent::Whole => *self = Extent::Whole,
            Extent::Dirs(dirs) => {
                for (dir, deep) in dirs {
                    self.add_dir(dir, deep);
                }
            }
        }
    }

    /// Just directory `dir`.
    pub fn dir(dir: Vec<u8>, deep: bool) -> Extent {
        Extent::Dirs(BTreeMap::from([(dir, deep)]))
    }
}

/// The directories of one scoped scan, and what its walk learns about them.
pub(super) struct Scope {
    starts: Vec<Start>,
    /// Subdirectories of shallow starts that the catalog has tracks under.
    known_subdirs: BTreeSet<Vec<u8>>,
    /// Subdirectories the listings of shallow starts showed.
    present: Mutex<HashSet<Vec<u8>>>,
    /// Subdirectories of shallow starts walked because they are new.
    descended: Mutex<Vec<Vec<u8>>>,
    /// The most catalog tracks found under one start: at most the origin's tracks.
    loaded: u64,
    /// Files found so far: a start inside a walked new subdirectory is listed twice.
    found: Mutex<HashSet<Vec<u8>>>,
}

/// `dir` as a path prefix: `dir/`, or nothing for the root.
fn prefix_of(dir: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p
}

impl Scope {
    /// The starts of `dirs`, without those a deep start already covers.
    pub(super) fn new(dirs: &BTreeMap<Vec<u8>, bool>) -> Scope {
        let deep: Vec<&Vec<u8>> = dirs.iter().filter(|d| *d.1).map(|d| d.0).collect();
        let covered = |dir: &[u8], is_deep: bool| {
            deep.iter()
                .any(|d| is_under(dir, d) || (!is_deep && d.as_slice() == dir))
        };
        let starts = dirs
            .iter()
            .filter(|(dir, &d)| !covered(dir, d))
            .map(|(rel, &deep)| Start {
                rel: rel.clone(),
                deep,
            })
            .collect();
        Scope {
            starts,
            known_subdirs: BTreeSet::new(),
            present: Mutex::default(),
            descended: Mutex::default(),
            loaded: 0,
            found: Mutex::default(),
        }
    }

    /// Where the walk starts.
    pub(super) fn starts(&self) -> &[Start] {
        &self.starts
    }

    /// Loads the catalog's tracks under the starts into `tracks`: everything under
    /// a deep start, the files directly in a shallow one (and the names of its
    /// subdirectories holding tracks).
    pub(super) fn load(
        &mut self,
        catalog: &Catalog,
        origin: OriginId,
        tracks: &mut KnownBuilder,
    ) -> Result<(), CatalogError> {
        for start in &self.starts {
            let prefix = prefix_of(&start.rel);
            let mut last: Option<Vec<u8>> = None;
            let mut under = 0;
            catalog.for_each_scan_state_under(origin, &prefix, |rel, id, state| {
                under += 1;
                let below = &rel[prefix.len()..];
                match below.iter().position(|&b| b == b'/') {
                    Some(slash) if !start.deep => {
                        let sub = &rel[..prefix.len() + slash];
                        // Paths come in order: one subdirectory's tracks are consecutive.
                        if last.as_deref() != Some(sub) {
                            self.known_subdirs.insert(sub.to_vec());
                            last = Some(sub.to_vec());
                        }
                    }
                    _ => tracks.push(rel, id, &state),
                }
            })?;
            self.loaded = self.loaded.max(under);
        }
        Ok(())
    }

    /// Whether file `rel` is found for the first time in this scan.
    pub(super) fn first_find(&self, rel: &[u8]) -> bool {
        lock(&self.found).insert(rel.to_vec())
    }

    /// Whether the walk goes into `sub`, a subdirectory a shallow start lists: only when
    /// the catalog has no track under it (it is new) and no start is it.
    pub(super) fn descend(&self, sub: &[u8]) -> bool {
        lock(&self.present).insert(sub.to_vec());
        let new = !self.known_subdirs.contains(sub) && !self.starts.iter().any(|s| s.rel == sub);
        if new {
            lock(&self.descended).push(sub.to_vec());
        }
        new
    }

    /// The subdirectories holding tracks that a listing of their (readable) parent no
    /// longer showed; `unreadable` are the directories the walk could not list.
    pub(super) fn vanished(&self, unreadable: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let present = lock(&self.present);
        self.known_subdirs
            .iter()
            .filter(|sub| !present.contains(*sub))
            .filter(|sub| !unreadable.iter().any(|u| is_under(sub, u) || u == *sub))
            .cloned()
            .collect()
    }

    /// The tracks under `vanished` subdirectories.
    pub(super) fn tracks_under(
        catalog: &Catalog,
        origin: OriginId,
        vanished: &[Vec<u8>],
    ) -> Result<Vec<TrackId>, CatalogError> {
        let mut ids = Vec::new();
        for dir in vanished {
            catalog.for_each_scan_state_under(origin, &prefix_of(dir), |_, id, _| ids.push(id))?;
        }
        Ok(ids)
    }

    /// Whether the scan looked at `rel` (a file path): under a deep start or a walked new
    /// subdirectory, directly in a shallow start, or under a `vanished` subdirectory.
    pub(super) fn covers(&self, rel: &[u8], vanished: &[Vec<u8>]) -> bool {
        let parent = rel
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(&rel[..0], |i| &rel[..i]);
        self.starts.iter().any(|s| {
            if s.deep {
                is_under(rel, &s.rel)
            } else {
                parent == s.rel
            }
        }) || lock(&self.descended).iter().any(|d| is_under(rel, d))
            || vanished.iter().any(|d| is_under(rel, d))
    }

    /// The most catalog tracks under one start: a lower bound of the origin's tracks.
    pub(super) fn loaded(&self) -> u64 {
        self.loaded
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_below_a_deep_start_are_dropped_and_deep_wins() {
        let mut e = Extent::dir(b"a".to_vec(), false);
        e.add_dir(b"a".to_vec(), true);
        e.add_dir(b"a/b".to_vec(), false);
        e.add_dir(b"a/b/c".to_vec(), true);
        e.add_dir(b"ab".to_vec(), false);
        let Extent::Dirs(dirs) = &e else {
            panic!("few dirs stay dirs")
        };
        let scope = Scope::new(dirs);
        let starts: Vec<(&[u8], bool)> = scope
            .starts
            .iter()
            .map(|s| (s.rel.as_slice(), s.deep))
            .collect();
        assert_eq!(starts, vec![(&b"a"[..], true), (&b"ab"[..], false)]);
    }

    #[test]
    fn too_many_directories_or_a_whole_origin_make_the_extent_whole() {
        let mut e = Extent::Dirs(BTreeMap::new());
        for n in 0..=MAX_DIRS {
            e.add_dir(format!("d{n}").into_bytes(), false);
        }
        assert_eq!(e, Extent::Whole);
        let mut e = Extent::dir(b"x".to_vec(), false);
        e.merge(Extent::Whole);
        assert_eq!(e, Extent::Whole);
        e.add_dir(b"y".to_vec(), true);
        assert_eq!(e, Extent::Whole, "whole stays whole");
    }
}
