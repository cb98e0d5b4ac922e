//! Telling the kernel that cached names and attributes are stale after a republish.
//!
//! Entries and attributes are cached for long timeouts (the tree is versioned), and
//! directories are opened with `FOPEN_CACHE_DIR`, so after a new snapshot is swapped in the
//! daemon must invalidate exactly what changed: [`invalidate_changes`] compares the old and
//! the new snapshot and sends `FUSE_NOTIFY_INVAL_ENTRY` for every name added, removed or
//! re-pointed in a directory, and `FUSE_NOTIFY_INVAL_INODE` for every directory whose
//! listing changed and every file whose size or mtime changed (which also drops its pages,
//! as `FOPEN_KEEP_CACHE` would otherwise keep them).
//!
//! Notifications are written to a cloned `/dev/fuse` fd from a thread that is not a FUSE
//! worker, so the kernel never waits on a worker that is itself blocked writing one.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, IoSlice, Write};

use musicfs_core::snapshot::{Node, Snapshot};

/// `fuse_notify_code` values (include/uapi/linux/fuse.h, since 7.12).
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER_LEN: usize = 16;

/// Writes invalidation notices to the kernel for one mount.
pub struct Notifier {
    fd: File,
}

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

impl Notifier {
    /// A notifier writing to `fd`, a `/dev/fuse` fd of the mount's connection.
    pub fn new(fd: File) -> Notifier {
        Notifier { fd }
    }

    fn send(&self, code: i32, body: &[u8], name: &[u8]) -> io::Result<()> {
        let nul = if name.is_empty() { 0 } else { 1 };
        let len = OUT_HEADER_LEN + body.len() + name.len() + nul;
        let mut header = [0u8; OUT_HEADER_LEN];
        header[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&code.to_ne_bytes());
        // unique stays 0: that is what marks a notification.
        let parts = [
            IoSlice::new(&header),
            IoSlice::new(body),
            IoSlice::new(name),
            IoSlice::new(&b"\0"[..nul]),
        ];
        let written = (&self.fd).write_vectored(&parts)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short notification write: {written} of {len} bytes"),
            ));
        }
        Ok(())
    }
}

/// ENOENT means the kernel has nothing cached for it: nothing to invalidate.
fn ignore_uncached(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl InvalidationSink for Notifier {
    fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        // struct fuse_notify_inval_entry_out { u64 parent; u32 namelen; u32 flags; }
        let mut body = [0u8; 16];
        body[0..8].copy_from_slice(&parent.to_ne_bytes());
        body[8..12].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        ignore_uncached(self.send(FUSE_NOTIFY_INVAL_ENTRY, &body, name))
    }

    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        // struct fuse_notify_inval_inode_out { u64 ino; s64 off; s64 len; }; len 0 = all.
        let mut body = [0u8; 24];
        body[0..8].copy_from_slice(&ino.to_ne_bytes());
        ignore_uncached(self.send(FUSE_NOTIFY_INVAL_INODE, &body, &[]))
    }
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
    for (_, dir) in std::iter::once((Vec::new(), new.root())).chain(new.walk()) {
        if !dir.is_dir() {
            if let Some(before) = old.node(dir.ino()) {
                if before.generation() != dir.generation() {
                    // Replaced content: make the kernel look the name up again, so it sees
                    // the new generation, retires the old inode (I/O on it fails with EIO
                    // instead of mixing old and new pages) and starts a fresh one.
                    entry(dir.parent_ino(), dir.name());
                    inodes.push(dir.ino());
                } else if before.size() != dir.size()
                    || before.mtime_ns() != dir.mtime_ns()
                    || !same_owner_and_mode(&before, &dir)
                {
                    inodes.push(dir.ino());
                }
            }
            continue;
        }
        let Some(before) = old.node(dir.ino()).filter(|d| d.is_dir()) else {
            // A new directory: its parent's listing covers the name; nothing cached below.
            continue;
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
    for ino in inodes {
        match sink.inval_inode(ino) {
            Ok(()) => done.inodes += 1,
            Err(e) => tracing::warn!(ino, "cannot invalidate inode: {e}"),
        }
    }
    done
}

/// Whether two versions of a node show the same owner, group and permission bits.
fn same_owner_and_mode(a: &Node<'_>, b: &Node<'_>) -> bool {
    (a.perm_bits(), a.uid(), a.gid()) == (b.perm_bits(), b.uid(), b.gid())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use musicfs_core::meta::TrackMeta;
    use musicfs_core::snapshot::ROOT_INO;

    use super::*;
    use crate::fs::testlib::Library;

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

    #[test]
    fn unchanged_tree_sends_nothing() {
        let mut lib = Library::new();
        lib.add("A/B/one", 10, TrackMeta::default());
        let rec = Recorder::default();
        let done = invalidate_changes(&lib.snapshot(1), &lib.snapshot(2), &rec);
        assert_eq!(done, Invalidated::default());
    }

    #[test]
    fn added_removed_and_changed_names_and_files_are_invalidated() {
        let mut lib = Library::new();
        lib.add("A/B/kept", 10, TrackMeta::default());
        lib.add("A/B/moved", 10, TrackMeta::default());
        let old = lib.snapshot(1);
        // "moved" goes to a new artist, "kept" changes size, a new album appears.
        lib.records[1].1 = vec!["C".into(), "D".into(), "moved".into()];
        lib.records[0].0.scan.size = 11;
        lib.add("A/E/new", 5, TrackMeta::default());
        let new = lib.snapshot(2);
        let rec = Recorder::default();
        invalidate_changes(&old, &new, &rec);

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
        let kept_ino = new.lookup(b, b"kept").unwrap().ino();
        assert_eq!(kept_ino, old.lookup(b, b"kept").unwrap().ino());
        for ino in [ROOT_INO, a, b, kept_ino] {
            assert!(inodes.contains(&ino), "{ino} not invalidated: {inodes:?}");
        }
        assert_eq!(inodes.len(), 4, "{inodes:?}");
    }

    #[test]
    fn a_chmod_invalidates_the_file_and_every_directory_whose_derived_mode_changed() {
        let perm = |mode| {
            Some(musicfs_core::Perm {
                mode,
                uid: 10,
                gid: 20,
            })
        };
        let mut lib = Library::new();
        lib.add_with_perm("A/B/one", 10, TrackMeta::default(), perm(0o644));
        lib.add_with_perm("C/D/two", 10, TrackMeta::default(), perm(0o644));
        let old = lib.snapshot(1);
        lib.records[0].0.scan.perm = perm(0o600);
        let new = lib.snapshot(2);
        let rec = Recorder::default();
        invalidate_changes(&old, &new, &rec);

        let a = new.lookup(ROOT_INO, b"A").unwrap().ino();
        let b = new.lookup(a, b"B").unwrap().ino();
        let one = new.lookup(b, b"one").unwrap().ino();
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
