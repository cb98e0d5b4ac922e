//! Change detection on local origins: inotify (through the `notify` crate), reduced to
//! "origin N changed" signals for the refresh loop, which rescans (stat-only for files
//! that did not change) and republishes.
//!
//! Events are only hints: the scan compares (size, mtime, inode, ctime) with the catalog, so
//! a lost, duplicated or coalesced event never leaves the tree wrong, and an inotify queue
//! overflow simply asks for the same full stat walk. Access events (our own reads open
//! files) are ignored so serving never triggers a rescan.

use std::path::PathBuf;

use crossbeam_channel::Sender;
use notify::{EventKind, RecursiveMode, Watcher};

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Something under origin `origin` (its index in the list given to [`watch`]) changed.
    Origin(usize),
    /// Events were lost (queue overflow) or the watcher failed: rescan everything.
    Overflow(String),
}

/// Running watches; dropping it stops them.
pub struct Watches {
    _inner: Vec<notify::RecommendedWatcher>,
}

/// Watches every origin in `roots` recursively with inotify, sending a [`Change`] on `tx`
/// for each relevant event. Fails if an origin cannot be watched (e.g. the inotify watch
/// limit is reached): the caller falls back to polling.
pub fn watch(roots: &[PathBuf], tx: Sender<Change>) -> Result<Watches, notify::Error> {
    let mut inner = Vec::with_capacity(roots.len());
    for (index, root) in roots.iter().enumerate() {
        let tx = tx.clone();
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let change = match ev {
                Ok(ev) if ev.need_rescan() => {
                    Some(Change::Overflow("inotify queue overflow".into()))
                }
                Ok(ev) => relevant(&ev.kind).then_some(Change::Origin(index)),
                Err(e) => Some(Change::Overflow(e.to_string())),
            };
            if let Some(c) = change {
                // The receiver is gone only when the daemon is stopping.
                let _ = tx.send(c);
            }
        })?;
        w.watch(root, RecursiveMode::Recursive)?;
        inner.push(w);
    }
    Ok(Watches { _inner: inner })
}

fn relevant(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(_))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_new_file_is_reported_for_its_origin_and_reads_are_not() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("x.flac"), b"x").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let _w = watch(&[a.path().to_path_buf(), b.path().to_path_buf()], tx).unwrap();
        let _ = std::fs::read(b.path().join("x.flac")).unwrap();
        std::fs::create_dir(a.path().join("sub")).unwrap();
        std::fs::write(a.path().join("sub/new.flac"), b"y").unwrap();
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, Change::Origin(0));
        while let Ok(c) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(c, Change::Origin(0), "a read in origin 1 must not count");
        }
    }
}
