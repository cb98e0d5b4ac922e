//! Telling the kernel that cached names and attributes are stale after a republish.
//!
//! What to invalidate is decided by core's snapshot diff
//! ([`musicfs_core::snapshot::diff::invalidate_changes`]); [`Notifier`] is its sink for a
//! mount: each name it reports becomes a `FUSE_NOTIFY_INVAL_ENTRY` and each inode a
//! `FUSE_NOTIFY_INVAL_INODE` (which also drops the file's pages, as `FOPEN_KEEP_CACHE`
//! would otherwise keep them).
//!
//! Notifications are written to a cloned `/dev/fuse` fd from a thread that is not a FUSE
//! worker, so the kernel never waits on a worker that is itself blocked writing one.

use std::fs::File;
use std::io::{self, IoSlice, Write};

use musicfs_core::snapshot::diff::InvalidationSink;

/// `fuse_notify_code` values (include/uapi/linux/fuse.h, since 7.12).
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER_LEN: usize = 16;

/// Writes invalidation notices to the kernel for one mount.
pub struct Notifier {
    fd: File,
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
