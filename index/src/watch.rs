//! Change detection on local origins with inotify, reduced to "directory D of origin N
//! changed" signals for the refresh loop, which rescans that directory (stat-only for files
//! that did not change) and republishes.
//!
//! Each watch is remembered with the directory it was added for (relative to the origin
//! root), so an event names its directory: a file event in `D` asks for `D` to be listed
//! again, a directory created or moved into `D` as `N` asks for `D/N` to be walked whole
//! (it may hold a whole album), and a directory removed from `D` is found missing by the
//! listing of `D`. A directory reached through two paths (a symlink inside the origin) has
//! one watch, which names both. An event on a watch not (yet) remembered asks for the whole
//! origin, as do events naming more than [`MAX_DIRS`] directories at once.
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

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchMask};

/// More directories than this changed in one batch of events (or one burst of them):
/// rescan the whole origin instead, whose walk is then cheaper than one per directory.
pub const MAX_DIRS: usize = 1000;

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Directory `dir` (relative to the root of origin `origin`, its index in the list
    /// given to [`watch`]; empty for the root) changed: its files, or the set of its
    /// subdirectories. With `deep`, `dir` itself appeared (created or moved in) and
    /// everything below it is new.
    Dir {
        /// The origin's index.
        origin: usize,
        /// The directory, relative to the origin root, as bytes.
        dir: Vec<u8>,
        /// Walk everything below `dir`, not just its own files.
        deep: bool,
    },
    /// Something under origin `origin` (its index in the list given to [`watch`]) changed,
    /// somewhere not known: rescan all of it.
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

/// Per origin: the directories (relative, joined by NUL bytes, which no path holds) each
/// watch descriptor was added for.
type DirsByWatch = Arc<Vec<Mutex<HashMap<i32, Box<[u8]>>>>>;

/// One inotify instance per origin, and the thread reading them; dropping it stops the
/// thread and closes the instances (which removes every watch).
pub struct Watches {
    origins: Vec<inotify::Watches>,
    dirs: DirsByWatch,
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
    let dirs: DirsByWatch = Arc::new((0..origins).map(|_| Mutex::default()).collect());
    let reader_dirs = dirs.clone();
    let reader = std::thread::Builder::new()
        .name("inotify".into())
        .spawn(move || read_events(instances, &reader_dirs, stop_fd, tx))?;
    Ok(Watches {
        origins: origins_w,
        dirs,
        failed: (0..origins).map(|_| Mutex::new(None)).collect(),
        stop,
        reader: Some(reader),
    })
}

impl Watches {
    /// Watches directory `dir` of origin `origin`, which is `rel` relative to the origin's
    /// root (again is harmless). A failure is remembered (see [`Watches::failed`]) and
    /// returned.
    pub fn add_dir(&self, origin: usize, dir: &Path, rel: &Path) -> io::Result<()> {
        let (Some(w), Some(dirs)) = (self.origins.get(origin), self.dirs.get(origin)) else {
            return Err(io::Error::other(format!("no origin {origin} is watched")));
        };
        // Held across the add, so the reader never sees an event of this watch before it
        // knows the watch's directory.
        let mut dirs = dirs.lock().unwrap_or_else(|p| p.into_inner());
        // `inotify::Watches` is a shared handle on the instance: cloning it is cheap.
        match w.clone().add(dir, mask()) {
            Ok(wd) => {
                remember(&mut dirs, wd.get_watch_descriptor_id(), rel);
                Ok(())
            }
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

/// Records that watch `wd` is (also) directory `rel`.
fn remember(dirs: &mut HashMap<i32, Box<[u8]>>, wd: i32, rel: &Path) {
    let rel = rel.as_os_str().as_bytes();
    match dirs.get_mut(&wd) {
        None => {
            dirs.insert(wd, rel.into());
        }
        Some(known) if known.split(|&b| b == 0).any(|k| k == rel) => {}
        Some(known) => {
            let mut both = known.to_vec();
            both.push(0);
            both.extend_from_slice(rel);
            *known = both.into_boxed_slice();
        }
    }
}

/// The reader thread: waits on every instance and the stop eventfd; sends the changes of
/// each batch of events read, one per directory.
fn read_events(mut instances: Vec<Inotify>, dirs: &DirsByWatch, stop: i32, tx: Sender<Change>) {
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
            let changes = match drain(inotify, &dirs[origin], &mut buf) {
                Ok(Seen::Dirs(d)) if d.is_empty() => continue,
                Ok(Seen::Dirs(d)) => d
                    .into_iter()
                    .map(|(dir, deep)| Change::Dir { origin, dir, deep })
                    .collect(),
                Ok(Seen::Whole) => vec![Change::Origin(origin)],
                Ok(Seen::Overflow) => vec![Change::Overflow("inotify queue overflow".into())],
                Err(e) => {
                    let _ = tx.send(Change::Overflow(format!("reading inotify: {e}")));
                    return;
                }
            };
            for change in changes {
                // The receiver is gone only when the daemon is stopping.
                if tx.send(change).is_err() {
                    return;
                }
            }
        }
    }
}

/// What one drain of an instance saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// These directories changed (deep: appeared); none when no event mattered.
    Dirs(BTreeMap<Vec<u8>, bool>),
    /// Somewhere not known, or too many directories: all of the origin.
    Whole,
    /// Events were lost.
    Overflow,
}

/// Reads every pending event of `inotify`, naming their directories through `dirs`.
fn drain(
    inotify: &mut Inotify,
    dirs: &Mutex<HashMap<i32, Box<[u8]>>>,
    buf: &mut [u8],
) -> io::Result<Seen> {
    let mut seen = Seen::Dirs(BTreeMap::new());
    loop {
        let events = match inotify.read_events(buf) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(seen),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut dirs = dirs.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            let wd = ev.wd.get_watch_descriptor_id();
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                seen = Seen::Overflow;
            } else if ev.mask.contains(EventMask::IGNORED) {
                // The directory is gone (or unmounted): its watch with it.
                dirs.remove(&wd);
            } else if let Seen::Dirs(changed) = &mut seen {
                let name = ev.name.map(|n| n.as_bytes());
                if !note(changed, dirs.get(&wd).map(|d| &d[..]), ev.mask, name) {
                    seen = Seen::Whole;
                }
            }
        }
    }
}

/// Adds what one event says changed to `changed`: the directories (NUL-joined) of its
/// watch, or the one it names when a directory appeared. False when the watch is not
/// known or too many directories changed: the whole origin must be rescanned.
fn note(
    changed: &mut BTreeMap<Vec<u8>, bool>,
    watched: Option<&[u8]>,
    mask: EventMask,
    name: Option<&[u8]>,
) -> bool {
    let Some(watched) = watched else {
        return false;
    };
    let appeared =
        mask.contains(EventMask::ISDIR) && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
    for dir in watched.split(|&b| b == 0) {
        match name.filter(|_| appeared) {
            Some(name) => {
                let mut sub = dir.to_vec();
                if !sub.is_empty() {
                    sub.push(b'/');
                }
                sub.extend_from_slice(name);
                changed.insert(sub, true);
            }
            None => {
                changed.entry(dir.to_vec()).or_insert(false);
            }
        }
    }
    changed.len() <= MAX_DIRS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn dir(origin: usize, dir: &str, deep: bool) -> Change {
        Change::Dir {
            origin,
            dir: dir.as_bytes().to_vec(),
            deep,
        }
    }

    /// The changes received until none came for 200 ms (at least one: waits up to 10 s).
    fn changes(rx: &crossbeam_channel::Receiver<Change>) -> Vec<Change> {
        let mut got = vec![rx.recv_timeout(Duration::from_secs(10)).unwrap()];
        while let Ok(c) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(c);
        }
        got.dedup();
        got
    }

    #[test]
    fn an_event_names_its_directory_and_a_new_directory_is_walked_deep() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("x.flac"), b"x").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = watch(2, tx).unwrap();
        w.add_dir(0, a.path(), Path::new("")).unwrap();
        w.add_dir(1, b.path(), Path::new("")).unwrap();
        let _ = std::fs::read(b.path().join("x.flac")).unwrap();
        std::fs::create_dir(a.path().join("sub")).unwrap();
        assert_eq!(changes(&rx), vec![dir(0, "sub", true)]);
        // The new directory is watched once a scan lists it (here: by hand).
        w.add_dir(0, &a.path().join("sub"), Path::new("sub"))
            .unwrap();
        std::fs::write(a.path().join("sub/new.flac"), b"y").unwrap();
        assert_eq!(
            changes(&rx),
            vec![dir(0, "sub", false)],
            "a read in origin 1 does not count"
        );
        std::fs::remove_dir_all(a.path().join("sub")).unwrap();
        let gone = changes(&rx);
        assert!(gone.contains(&dir(0, "", false)), "{gone:?}");
        assert_eq!(w.failed(0), None);
        drop(w);
    }

    #[test]
    fn a_directory_reached_by_two_paths_names_both() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("real")).unwrap();
        std::os::unix::fs::symlink(a.path().join("real"), a.path().join("alias")).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = watch(1, tx).unwrap();
        w.add_dir(0, &a.path().join("real"), Path::new("real"))
            .unwrap();
        w.add_dir(0, &a.path().join("alias"), Path::new("alias"))
            .unwrap();
        std::fs::write(a.path().join("real/new.flac"), b"y").unwrap();
        let mut got = changes(&rx);
        got.sort_by_key(|c| match c {
            Change::Dir { dir, .. } => dir.clone(),
            _ => Vec::new(),
        });
        // One write may come as events read in two batches (duplicates are harmless).
        got.dedup();
        assert_eq!(got, vec![dir(0, "alias", false), dir(0, "real", false)]);
    }

    #[test]
    fn an_unknown_watch_or_too_many_directories_mean_the_whole_origin() {
        let mut changed = BTreeMap::new();
        assert!(!note(&mut changed, None, EventMask::MODIFY, None));
        for n in 0..MAX_DIRS {
            let d = format!("d{n}");
            assert!(note(
                &mut changed,
                Some(d.as_bytes()),
                EventMask::MODIFY,
                None
            ));
        }
        assert!(!note(
            &mut changed,
            Some(b"one more"),
            EventMask::MODIFY,
            None
        ));
    }

    #[test]
    fn a_directory_that_cannot_be_watched_is_remembered() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let w = watch(1, tx).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let rel = Path::new("x");
        // Watching a vanished directory is not a failure: the listing reports it.
        assert!(w.add_dir(0, Path::new("/nonexistent/musicfs"), rel).is_ok());
        assert!(w
            .add_dir(0, &file.path().join("below-a-file"), rel)
            .is_err());
        assert!(w.failed(0).is_some_and(|r| r.contains("below-a-file")));
        assert!(w.add_dir(3, Path::new("/"), rel).is_err());
    }
}
