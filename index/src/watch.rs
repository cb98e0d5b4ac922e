//! Change detection on local origins with inotify, reduced to "origin N changed" signals
//! for the refresh loop, which rescans (stat-only for files that did not change) and
//! republishes.
//!
//! Watches are added by the scans themselves: the daemon passes [`Watches::add_dir`] as the
//! scan's [`crate::ScanOptions::dir_hook`], which runs on each directory just before it is
//! listed. A change is therefore either seen by that listing or reported by the watch, and
//! one walk does both jobs (setting up watches used to be a second walk of every directory
//! before the start-up reconcile). A directory created later is reported by its parent's
//! watch; the rescan that follows lists it and so watches it. Removed directories lose
//! their watches in the kernel.
//!
//! Events are only hints: the scan compares (size, mtime, inode, ctime) with the catalog, so
//! a lost, duplicated or coalesced event never leaves the tree wrong, and an inotify queue
//! overflow simply asks for the same full stat walk. Access events (our own reads open
//! files) are not asked for, so serving never triggers a rescan.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchMask};

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Something under origin `origin` (its index in the list given to [`watch`]) changed.
    Origin(usize),
    /// Events were lost (queue overflow) or the watcher failed: rescan everything.
    Overflow(String),
}

/// Everything that can change what a scan would find.
fn mask() -> WatchMask {
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MOVE_SELF
}

/// One inotify instance per origin, and the thread reading them; dropping it stops the
/// thread and closes the instances (which removes every watch).
pub struct Watches {
    origins: Vec<inotify::Watches>,
    /// The first watch that could not be added, per origin (e.g. the watch limit).
    failed: Vec<Mutex<Option<String>>>,
    stop: OwnedFd,
    reader: Option<JoinHandle<()>>,
}

/// Creates an inotify instance for each of `origins` origins (no directory is watched yet:
/// see [`Watches::add_dir`]) and a thread that sends a [`Change`] on `tx` for each batch of
/// events. Fails only when inotify or the thread cannot be set up at all.
pub fn watch(origins: usize, tx: Sender<Change>) -> io::Result<Watches> {
    let instances = (0..origins)
        .map(|_| Inotify::init())
        .collect::<io::Result<Vec<_>>>()?;
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `efd` is a freshly created descriptor that nothing else owns.
    let stop = unsafe { OwnedFd::from_raw_fd(efd) };
    let origins_w = instances.iter().map(Inotify::watches).collect();
    let stop_fd = stop.as_raw_fd();
    let reader = std::thread::Builder::new()
        .name("inotify".into())
        .spawn(move || read_events(instances, stop_fd, tx))?;
    Ok(Watches {
        origins: origins_w,
        failed: (0..origins).map(|_| Mutex::new(None)).collect(),
        stop,
        reader: Some(reader),
    })
}

impl Watches {
    /// Watches directory `dir` of origin `origin` (again is harmless). A failure is
    /// remembered (see [`Watches::failed`]) and returned.
    pub fn add_dir(&self, origin: usize, dir: &Path) -> io::Result<()> {
        let Some(w) = self.origins.get(origin) else {
            return Err(io::Error::other(format!("no origin {origin} is watched")));
        };
        // `inotify::Watches` is a shared handle on the instance: cloning it is cheap.
        match w.clone().add(dir, mask()) {
            Ok(_) => Ok(()),
            // Vanished between being found and being listed: the listing will say so.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => {
                let mut f = self.failed[origin]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if f.is_none() {
                    *f = Some(format!("cannot watch {}: {e}", dir.display()));
                }
                Err(e)
            }
        }
    }

    /// Why origin `origin` is not completely watched, if it is not (then only polling can
    /// be trusted to see its changes).
    pub fn failed(&self, origin: usize) -> Option<String> {
        self.failed
            .get(origin)?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd.
        let _ = unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The reader thread: waits on every instance and the stop eventfd; sends one change per
/// origin per batch of events read.
fn read_events(mut instances: Vec<Inotify>, stop: i32, tx: Sender<Change>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds: Vec<libc::pollfd> = instances
        .iter()
        .map(|i| i.as_raw_fd())
        .chain([stop])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let _ = tx.send(Change::Overflow(format!("inotify poll: {e}")));
            return;
        }
        if fds.last().is_some_and(|f| f.revents != 0) {
            return;
        }
        for (origin, inotify) in instances.iter_mut().enumerate() {
            if fds[origin].revents == 0 {
                continue;
            }
            let change = match drain(inotify, &mut buf) {
                Ok(None) => continue,
                Ok(Some(overflow)) if overflow => Change::Overflow("inotify queue overflow".into()),
                Ok(Some(_)) => Change::Origin(origin),
                Err(e) => {
                    let _ = tx.send(Change::Overflow(format!("reading inotify: {e}")));
                    return;
                }
            };
            // The receiver is gone only when the daemon is stopping.
            if tx.send(change).is_err() {
                return;
            }
        }
    }
}

/// Reads every pending event of `inotify`: `None` when none mattered, `Some(true)` when
/// the queue overflowed, `Some(false)` for a relevant change.
fn drain(inotify: &mut Inotify, buf: &mut [u8]) -> io::Result<Option<bool>> {
    let mut seen = None;
    loop {
        let events = match inotify.read_events(buf) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(seen),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                seen = Some(true);
            } else if !ev.mask.contains(EventMask::IGNORED) && seen.is_none() {
                seen = Some(false);
            }
        }
    }
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
        let w = watch(2, tx).unwrap();
        w.add_dir(0, a.path()).unwrap();
        w.add_dir(1, b.path()).unwrap();
        let _ = std::fs::read(b.path().join("x.flac")).unwrap();
        std::fs::create_dir(a.path().join("sub")).unwrap();
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, Change::Origin(0));
        // The new directory is watched once a scan lists it (here: by hand).
        w.add_dir(0, &a.path().join("sub")).unwrap();
        std::fs::write(a.path().join("sub/new.flac"), b"y").unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            Change::Origin(0)
        );
        while let Ok(c) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(c, Change::Origin(0), "a read in origin 1 must not count");
        }
        assert_eq!(w.failed(0), None);
        drop(w);
    }

    #[test]
    fn a_directory_that_cannot_be_watched_is_remembered() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let w = watch(1, tx).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        // Watching a vanished directory is not a failure: the listing reports it.
        assert!(w.add_dir(0, Path::new("/nonexistent/musicfs")).is_ok());
        assert!(w.add_dir(0, &file.path().join("below-a-file")).is_err());
        assert!(w.failed(0).is_some_and(|r| r.contains("below-a-file")));
        assert!(w.add_dir(3, Path::new("/")).is_err());
    }
}
