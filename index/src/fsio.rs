//! Read-only access to origin files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use musicfs_core::{Perm, ScanState};

/// Opens `path` read-only with `O_NOATIME`, so scanning does not dirty inodes on the origin.
/// The kernel refuses `O_NOATIME` (EPERM) on files the caller does not own; then the file is
/// opened plainly.
pub fn open_readonly(path: &Path) -> io::Result<File> {
    let noatime = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_CLOEXEC)
        .open(path);
    match noatime {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path),
        other => other,
    }
}

/// The facts the incremental scan compares to tell whether a file changed, and the owner
/// and permission bits the tree shows.
pub fn scan_state(md: &std::fs::Metadata) -> ScanState {
    ScanState {
        size: md.size(),
        mtime_ns: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
        ino: md.ino(),
        ctime_ns: md
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.ctime_nsec()),
        perm: Some(Perm {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        }),
    }
}
