//! The snapshot diff that decides what the kernel must forget after a republish.
//!
//! Entries and attributes are cached for long timeouts (the tree is versioned), and
//! directories are opened with `FOPEN_CACHE_DIR`, so after a new snapshot is swapped in the
//! daemon must invalidate exactly what changed: [`invalidate_changes`] compares the old and
//! the new snapshot and reports to an [`InvalidationSink`] every name added, removed or
//! re-pointed in a directory ([`InvalidationSink::inval_entry`]), and every directory whose
//! listing changed and every file whose size or mtime changed
//! ([`InvalidationSink::inval_inode`], which also drops its pages, as `FOPEN_KEEP_CACHE`
//! would otherwise keep them). It is a pure function of the two snapshots: the sink is the
//! kernel in the daemon (`musicfs_fusedev::notify::Notifier`) and a recorder in tests.
//!
//! Two snapshots on the same base differ only in the nodes their deltas record
//! ([`super::delta`]), so then only those are compared: O(change), not O(library). Across
//! bases (a full publish) the whole new tree is walked.

use std::cmp::Ordering;
use std::io;

use super::{Node, Snapshot};

/// How many notices an [`invalidate_changes`] call sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Invalidated {
    /// `INVAL_ENTRY` notices (names).
    pub entries: u64,
    /// `INVAL_INODE` notices (attributes, listings, pages).
    pub inodes: u64,
}

/// Something that can receive invalidation notices: the kernel, or a recorder in tests.
pub trait InvalidationSink {
    /// The name `name` in directory `parent` may have changed.
    fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()>;
    /// The attributes, listing or contents of `ino` may have changed.
    fn inval_inode(&self, ino: u64) -> io::Result<()>;
}

/// Sends the notices that make the kernel's caches agree with `new` after serving `old`.
/// Failures are logged and counted out, never fatal: the worst case is a stale entry until
/// its timeout.
pub fn invalidate_changes(
    old: &Snapshot,
    new: &Snapshot,
    sink: &dyn InvalidationSink,
) -> Invalidated {
    let mut done = Invalidated::default();
    let mut entry = |parent: u64, name: &[u8]| match sink.inval_entry(parent, name) {
        Ok(()) => done.entries += 1,
        Err(e) => {
            tracing::warn!(parent, name = %String::from_utf8_lossy(name), "cannot invalidate entry: {e}")
        }
    };
    let mut inodes = Vec::new();
    if old.base_id() == new.base_id() {
        // Same base: only the nodes either delta records can differ (module docs).
        let mut changed: Vec<u64> = old.delta_inos().chain(new.delta_inos()).collect();
        changed.sort_unstable();
        changed.dedup();
        for node in changed.into_iter().filter_map(|ino| new.node(ino)) {
            compare(old, new, node, &mut entry, &mut inodes);
        }
    } else {
        new.for_each_node(|node| compare(old, new, node, &mut entry, &mut inodes));
    }
    for ino in inodes {
        match sink.inval_inode(ino) {
            Ok(()) => done.inodes += 1,
            Err(e) => tracing::warn!(ino, "cannot invalidate inode: {e}"),
        }
    }
    done
}

/// Records what the kernel must forget about `dir` (any node of `new`): a file's new
/// content or attributes, a directory's changed names and attributes.
fn compare(
    old: &Snapshot,
    new: &Snapshot,
    dir: Node<'_>,
    entry: &mut impl FnMut(u64, &[u8]),
    inodes: &mut Vec<u64>,
) {
    if !dir.is_dir() {
        if let Some(before) = old.node(dir.ino()) {
            if before.generation() != dir.generation() {
                // Replaced content: make the kernel look the name up again. The new
                // version is another node id ([`crate::nodeid`]), a fresh inode; the old
                // one keeps its pages for the handles still reading the old version.
                entry(dir.parent_ino(), dir.name());
            } else if before.size() != dir.size()
                || before.mtime_ns() != dir.mtime_ns()
                || !same_owner_and_mode(&before, &dir)
            {
                inodes.push(crate::nodeid::kernel_id(dir.ino(), dir.generation()));
            }
        }
        return;
    }
    let Some(before) = old.node(dir.ino()).filter(|d| d.is_dir()) else {
        // A new directory: its parent's listing covers the name; nothing cached below.
        return;
    };
    // A directory's owner and mode follow the files below it (a chmod of one of them
    // can change them) and are cached with its attributes.
    let mut changed = !same_owner_and_mode(&before, &dir);
    let mut was = old.children(dir.ino(), 0).peekable();
    let mut now = new.children(dir.ino(), 0).peekable();
    loop {
        let step = match (was.peek(), now.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.name().cmp(b.name()),
        };
        match step {
            Ordering::Less => {
                let gone = was.next().map(|n| n.name());
                entry(dir.ino(), gone.unwrap_or_default());
                changed = true;
            }
            Ordering::Greater => {
                let added = now.next().map(|n| n.name());
                entry(dir.ino(), added.unwrap_or_default());
                changed = true;
            }
            Ordering::Equal => {
                if let (Some(a), Some(b)) = (was.next(), now.next()) {
                    if a.ino() != b.ino() || a.is_dir() != b.is_dir() {
                        entry(dir.ino(), b.name());
                        changed = true;
                    }
                }
            }
        }
    }
    if changed {
        inodes.push(dir.ino());
    }
}

/// Whether two versions of a node show the same owner, group and permission bits.
fn same_owner_and_mode(a: &Node<'_>, b: &Node<'_>) -> bool {
    (a.perm_bits(), a.uid(), a.gid()) == (b.perm_bits(), b.uid(), b.gid())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
    use crate::snapshot::ROOT_INO;
    use crate::tree::TreeBuilder;

    #[derive(Default)]
    struct Recorder {
        entries: RefCell<Vec<(u64, String)>>,
        inodes: RefCell<Vec<u64>>,
    }

    impl InvalidationSink for Recorder {
        fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
            let name = String::from_utf8_lossy(name).into_owned();
            self.entries.borrow_mut().push((parent, name));
            Ok(())
        }
        fn inval_inode(&self, ino: u64) -> io::Result<()> {
            self.inodes.borrow_mut().push(ino);
            Ok(())
        }
    }

    /// Tracks shown at `/`-separated paths, and snapshots of them.
    struct Library {
        dir: tempfile::TempDir,
        records: Vec<(TrackRecord, Vec<String>)>,
    }

    impl Library {
        fn new() -> Library {
            Library {
                dir: tempfile::tempdir().expect("tempdir"),
                records: Vec::new(),
            }
        }

        fn add(&mut self, path: &str, size: u64) {
            self.add_with_perm(path, size, None);
        }

        fn add_with_perm(&mut self, path: &str, size: u64, perm: Option<crate::meta::Perm>) {
            let id = self.records.len() as u64 + 1;
            let rec = TrackRecord {
                id: TrackId(id),
                origin: OriginId(0),
                rel_path: format!("src/{id}.flac").into_bytes(),
                format: Format::Flac,
                scan: ScanState {
                    size,
                    mtime_ns: 1_700_000_000_123_456_789 + id as i64,
                    ino: 0,
                    ctime_ns: 0,
                    perm,
                },
                meta: TrackMeta::default(),
            };
            let parts = path.split('/').map(str::to_string).collect();
            self.records.push((rec, parts));
        }

        fn snapshot(&self, generation: u64) -> Snapshot {
            let origin = self.dir.path().join("origin");
            let mut b = TreeBuilder::new("$artist/$album/$title", vec![origin]);
            for (rec, parts) in &self.records {
                b.add(rec, parts);
            }
            let path = self.dir.path().join(format!("snap-{generation}"));
            Snapshot::write(&path, &b.build(), generation).expect("write snapshot");
            Snapshot::open(&path).expect("open snapshot")
        }
    }

    #[test]
    fn unchanged_tree_sends_nothing() {
        let mut lib = Library::new();
        lib.add("A/B/one", 10);
        let rec = Recorder::default();
        let done = invalidate_changes(&lib.snapshot(1), &lib.snapshot(2), &rec);
        assert_eq!(done, Invalidated::default());
        assert!(rec.entries.borrow().is_empty());
        assert!(rec.inodes.borrow().is_empty());
    }

    #[test]
    fn added_removed_and_changed_names_and_files_are_invalidated() {
        let mut lib = Library::new();
        lib.add("A/B/kept", 10);
        lib.add("A/B/moved", 10);
        let old = lib.snapshot(1);
        // "moved" goes to a new artist, "kept" changes size, a new album appears.
        lib.records[1].1 = vec!["C".into(), "D".into(), "moved".into()];
        lib.records[0].0.scan.size = 11;
        lib.add("A/E/new", 5);
        let new = lib.snapshot(2);
        let rec = Recorder::default();
        let done = invalidate_changes(&old, &new, &rec);

        let a = new.lookup(ROOT_INO, b"A").unwrap().ino();
        let b = new.lookup(a, b"B").unwrap().ino();
        let mut entries = rec.entries.borrow().clone();
        entries.sort();
        // "kept" has new content (a new generation): its name is looked up again.
        let mut want = vec![
            (ROOT_INO, "C".to_string()),
            (a, "E".to_string()),
            (b, "kept".to_string()),
            (b, "moved".to_string()),
        ];
        want.sort();
        assert_eq!(entries, want);
        let inodes = rec.inodes.borrow().clone();
        let kept = new.lookup(b, b"kept").unwrap();
        let was = old.lookup(b, b"kept").unwrap();
        assert_eq!(kept.ino(), was.ino(), "st_ino stays");
        for ino in [ROOT_INO, a, b] {
            assert!(inodes.contains(&ino), "{ino} not invalidated: {inodes:?}");
        }
        // Its old version is another node to the kernel, left alone: the handles still
        // open on it read the old version through its pages.
        let old_id = crate::nodeid::kernel_id(was.ino(), was.generation());
        assert_ne!(
            old_id,
            crate::nodeid::kernel_id(kept.ino(), kept.generation())
        );
        assert!(!inodes.contains(&old_id), "{inodes:?}");
        assert_eq!(inodes.len(), 3, "{inodes:?}");
        assert_eq!(
            done,
            Invalidated {
                entries: 4,
                inodes: 3
            }
        );
    }

    #[test]
    fn a_chmod_invalidates_the_file_and_every_directory_whose_derived_mode_changed() {
        let perm = |mode| {
            Some(crate::meta::Perm {
                mode,
                uid: 10,
                gid: 20,
            })
        };
        let mut lib = Library::new();
        lib.add_with_perm("A/B/one", 10, perm(0o644));
        lib.add_with_perm("C/D/two", 10, perm(0o644));
        let old = lib.snapshot(1);
        lib.records[0].0.scan.perm = perm(0o600);
        let new = lib.snapshot(2);
        let rec = Recorder::default();
        invalidate_changes(&old, &new, &rec);

        let a = new.lookup(ROOT_INO, b"A").unwrap().ino();
        let b = new.lookup(a, b"B").unwrap().ino();
        let one = new.lookup(b, b"one").unwrap();
        // The file's node id, as the kernel knows it (its content did not change).
        let one = crate::nodeid::kernel_id(one.ino(), one.generation());
        let mut inodes = rec.inodes.borrow().clone();
        inodes.sort_unstable();
        let mut want = vec![a, b, one];
        want.sort_unstable();
        assert_eq!(
            inodes, want,
            "the root still holds C's 0644 file: r-x for all"
        );
    }
}
