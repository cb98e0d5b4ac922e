//! FUSE passthrough (protocol 7.40): an open file's reads go straight from the kernel to the
//! source file, without a round trip to the daemon.
//!
//! On OPEN the daemon registers the source fd with `FUSE_DEV_IOC_BACKING_OPEN` and answers
//! `FOPEN_PASSTHROUGH` with the backing id; on RELEASE it drops it with
//! `FUSE_DEV_IOC_BACKING_CLOSE`. The kernel refuses two different backing files for one inode
//! at the same time (EBUSY on open), so ids are shared per (inode, source file) and reference
//! counted. Keying by the source file too means a source replaced while a handle is open
//! never lends the old file's id to a new open: the new open registers the new file (and the
//! kernel, told of the new generation, gives it a new inode).
//!
//! Until the refresh that follows a source's replacement, the old inode is still the one
//! the kernel knows: a new open then reaches the new file while a handle may still hold the
//! old one in passthrough, and the kernel fails an open with another backing file, or a
//! plain one, with EIO. Such an open shares the backing of the version already open (the
//! one the tree still shows) until the refresh gives the new version its own inode.
//!
//! Any refusal falls back to the plain read path for that open: EPERM (no `CAP_SYS_ADMIN`,
//! or the connection did not negotiate passthrough) turns passthrough off for the whole
//! mount; other errors (ELOOP for a source on a stacked filesystem, ...) only for that file.

use std::collections::HashMap;
use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::abi::{self, FuseBackingMap};

/// What [`Backing::open`] decided for an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Passthrough with this backing id.
    Backing(i32),
    /// The plain read path.
    Plain,
}

/// Backing ids of the files open in passthrough mode.
pub struct Backing {
    enabled: AtomicBool,
    refuse: bool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (inode, source file) → (backing id, open handles using it)
    by_ino: HashMap<Key, (i32, u32)>,
    /// file handle → key, for handles opened in passthrough mode
    by_fh: HashMap<u64, Key>,
}

/// An inode of ours (number and generation: a republished new version is a new inode to
/// the kernel) and the identity (device, inode) of the source file behind it.
type Key = (u64, u64, u64, u64);

fn source_identity(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat writes into a zeroed local struct; fd is a valid open descriptor.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.st_dev, st.st_ino))
    }
}

impl Backing {
    /// A table that tries passthrough; `refuse` makes every registration fail the way a
    /// refusing kernel does (a malformed map, EINVAL), to exercise the fallback.
    pub fn new(refuse: bool) -> Backing {
        Backing {
            enabled: AtomicBool::new(true),
            refuse,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether opens still try passthrough.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Stops trying (INIT did not grant passthrough).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below is a few map operations; a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `file_fd` (the source of `ino`, opened as handle `fh`) through the FUSE
    /// device `dev_fd`; returns the backing id for the OPEN reply, or `None` to serve this
    /// open on the plain path.
    pub fn open(
        &self,
        dev_fd: RawFd,
        (ino, generation): (u64, u64),
        fh: u64,
        file_fd: RawFd,
    ) -> Opened {
        if !self.enabled() {
            return Opened::Plain;
        }
        let key = match source_identity(file_fd) {
            Ok((dev, src)) => (ino, generation, dev, src),
            Err(e) => {
                self.refused(ino, &e);
                return Opened::Plain;
            }
        };
        let mut inner = self.lock();
        // The kernel takes no second backing file for an inode (EIO), nor a plain open of
        // one in passthrough: a new open of a replaced source, before the refresh gives it
        // an inode of its own, shares the version the other handles (and the tree) have.
        let key = match inner
            .by_ino
            .keys()
            .find(|k| (k.0, k.1) == (ino, generation) && **k != key)
        {
            Some(held) => {
                tracing::debug!(
                    ino,
                    "source replaced while open in passthrough: the open shares the version held"
                );
                *held
            }
            None => key,
        };
        let id = match inner.by_ino.get_mut(&key) {
            Some((id, refs)) => {
                *refs += 1;
                *id
            }
            None => match backing_open(dev_fd, file_fd, self.refuse) {
                Ok(id) => {
                    inner.by_ino.insert(key, (id, 1));
                    id
                }
                Err(e) => {
                    drop(inner);
                    self.refused(ino, &e);
                    return Opened::Plain;
                }
            },
        };
        inner.by_fh.insert(fh, key);
        Opened::Backing(id)
    }

    fn refused(&self, ino: u64, e: &io::Error) {
        if e.raw_os_error() == Some(libc::EPERM) {
            if self.enabled.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "FUSE passthrough refused (needs CAP_SYS_ADMIN); reads go through the daemon");
            }
        } else {
            tracing::info!(ino, error = %e, "FUSE passthrough refused for this file; plain reads");
        }
    }

    /// Drops handle `fh`'s use of its backing id (closing the id with its last handle).
    /// Handles that were not opened in passthrough mode are ignored.
    pub fn release(&self, dev_fd: RawFd, fh: u64) {
        let mut inner = self.lock();
        let Some(key) = inner.by_fh.remove(&fh) else {
            return;
        };
        let close = match inner.by_ino.get_mut(&key) {
            Some((id, refs)) if *refs <= 1 => Some(*id),
            Some((_, refs)) => {
                *refs -= 1;
                None
            }
            None => None,
        };
        if let Some(id) = close {
            inner.by_ino.remove(&key);
            if let Err(e) = backing_close(dev_fd, id) {
                tracing::warn!(ino = key.0, id, error = %e, "FUSE_DEV_IOC_BACKING_CLOSE");
            }
        }
    }

    /// Number of backing ids registered now.
    pub fn registered(&self) -> usize {
        self.lock().by_ino.len()
    }

    /// Forgets every id (after unmount, when the connection and its ids are gone).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.by_ino.clear();
        inner.by_fh.clear();
    }
}

fn backing_open(dev_fd: RawFd, file_fd: RawFd, refuse: bool) -> io::Result<i32> {
    let map = FuseBackingMap {
        fd: file_fd,
        // Nonzero flags are refused by the kernel with EINVAL: the simulated refusal.
        flags: u32::from(refuse),
        padding: 0,
    };
    // SAFETY: the ioctl reads a fuse_backing_map from a pointer to a live local value.
    let id = unsafe {
        libc::ioctl(
            dev_fd,
            abi::FUSE_DEV_IOC_BACKING_OPEN as _,
            &map as *const FuseBackingMap,
        )
    };
    if id <= 0 {
        // A zero id is not valid either; treat it as a refusal.
        let e = io::Error::last_os_error();
        return Err(if id == 0 {
            io::Error::from_raw_os_error(libc::EINVAL)
        } else {
            e
        });
    }
    Ok(id)
}

fn backing_close(dev_fd: RawFd, id: i32) -> io::Result<()> {
    let id = id as u32;
    // SAFETY: the ioctl reads a u32 from a pointer to a live local value.
    let rc = unsafe {
        libc::ioctl(
            dev_fd,
            abi::FUSE_DEV_IOC_BACKING_CLOSE as _,
            &id as *const u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_is_not_fuse_refuses_and_the_open_falls_back() {
        // /dev/null does not know the ioctl: ENOTTY, a per-file refusal.
        let null = std::fs::File::open("/dev/null").expect("null");
        use std::os::unix::io::AsRawFd;
        let b = Backing::new(false);
        assert_eq!(
            b.open(null.as_raw_fd(), (5, 0), 1, null.as_raw_fd()),
            Opened::Plain
        );
        assert!(b.enabled());
        assert_eq!(b.registered(), 0);
        // Releasing a handle that never had a backing id does nothing.
        b.release(null.as_raw_fd(), 1);
        b.disable();
        assert!(!b.enabled());
    }
}
