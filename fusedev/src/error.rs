//! Errors: [`FsError`] for what one filesystem operation can fail with (mapped to an errno
//! once, at the FUSE edge, by [`FsError::to_errno`]) and [`FuseError`] for mounting and
//! running the session.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why one filesystem operation failed.
#[derive(Debug, Error)]
pub enum FsError {
    /// The directory has no entry of that name.
    /// Carries no name, so a negative lookup allocates nothing.
    #[error("no such entry in directory {parent}")]
    NotFound {
        /// Directory inode.
        parent: u64,
    },
    /// The inode is not in the current snapshot (it was in an earlier one).
    #[error("inode {0} is not in the current snapshot")]
    StaleInode(u64),
    /// A directory operation on a file.
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),
    /// A file operation on a directory.
    #[error("inode {0} is a directory")]
    IsADirectory(u64),
    /// readlink on a node that is not a symlink (MusicFS has none).
    #[error("inode {0} is not a symbolic link")]
    NotASymlink(u64),
    /// A write of any kind: MusicFS is read-only.
    #[error("{0}: the filesystem is read-only")]
    ReadOnly(&'static str),
    /// The daemon is draining before it unmounts: no new opens.
    #[error("the filesystem is shutting down: no new opens")]
    Draining,
    /// A permission the file mode does not grant (execute on a file).
    #[error("access mask {mask:#o} denied on inode {ino}")]
    AccessDenied {
        /// Inode.
        ino: u64,
        /// The `access(2)` mask asked for.
        mask: u32,
    },
    /// A file or directory handle the kernel sent that this server does not hold.
    #[error("unknown handle {0}")]
    BadHandle(u64),
    /// Opening the source of a track failed at its origin (the file is gone, unreadable,
    /// or no longer a regular file).
    #[error("inode {ino}: {source}")]
    Origin {
        /// Inode.
        ino: u64,
        /// What the origin said.
        source: musicfs_storage::origin::OriginError,
    },
    /// Reading or opening the source failed.
    #[error("source {path:?}: {source}")]
    SourceIo {
        /// Absolute source path (empty when only the handle is known).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The track's origin is offline (missing, unmounted, emptied): answered without
    /// touching it. The refresh loop logs the state change once; this is not logged again.
    #[error("inode {ino}: origin {origin} is offline")]
    OriginOffline {
        /// Inode.
        ino: u64,
        /// Origin id.
        origin: u32,
    },
    /// A file node names an origin the snapshot does not list.
    #[error("inode {ino} names unknown origin {origin}")]
    UnknownOrigin {
        /// Inode.
        ino: u64,
        /// Origin index.
        origin: u32,
    },
    /// The extended attribute is not set on this node.
    #[error("no attribute {0:?}")]
    NoAttribute(String),
    /// The caller's buffer is smaller than the attribute value or name list.
    #[error("attribute needs {needed} bytes, buffer has {given}")]
    AttributeRange {
        /// Bytes the value needs.
        needed: usize,
        /// Bytes the caller offered.
        given: u32,
    },
    /// The catalog could not be read.
    #[error("catalog: {0}")]
    Catalog(String),
    /// Writing the reply into the kernel buffer failed.
    #[error("reply: {0}")]
    Reply(io::Error),
}

impl FsError {
    /// The errno the kernel gets for this error. Exhaustive on purpose: a new variant must
    /// choose its errno here.
    pub fn to_errno(&self) -> i32 {
        match self {
            FsError::NotFound { .. } => libc::ENOENT,
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::NotASymlink(_) => libc::EINVAL,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::Draining => libc::EBUSY,
            FsError::AccessDenied { .. } => libc::EACCES,
            FsError::BadHandle(_) => libc::EBADF,
            // EIO, not ENOENT or ESTALE: the name is still listed, and a player should
            // report a read error rather than a missing file or a stale handle.
            FsError::Origin { .. } => libc::EIO,
            FsError::OriginOffline { .. } => libc::EIO,
            FsError::SourceIo { source, .. } => match source.raw_os_error() {
                Some(libc::ESTALE) => libc::ESTALE,
                Some(libc::EINTR) => libc::EINTR,
                _ => libc::EIO,
            },
            FsError::UnknownOrigin { .. } => libc::EIO,
            FsError::NoAttribute(_) => libc::ENODATA,
            FsError::AttributeRange { .. } => libc::ERANGE,
            FsError::Catalog(_) => libc::EIO,
            FsError::Reply(_) => libc::EIO,
        }
    }

    /// Whether this is an ordinary answer (a missing name, a refused write) rather than a
    /// fault worth a warning.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            FsError::NotFound { .. }
                | FsError::ReadOnly(_)
                | FsError::NoAttribute(_)
                | FsError::AttributeRange { .. }
                | FsError::NotADirectory(_)
                | FsError::IsADirectory(_)
                | FsError::NotASymlink(_)
                | FsError::AccessDenied { .. }
                | FsError::OriginOffline { .. }
                | FsError::Draining
        )
    }
}

/// Why mounting or serving failed.
#[derive(Debug, Error)]
pub enum FuseError {
    /// The mountpoint does not exist.
    #[error("mountpoint {0:?} does not exist")]
    MountpointMissing(PathBuf),
    /// The mountpoint is not a directory.
    #[error("mountpoint {0:?} is not a directory")]
    MountpointNotDirectory(PathBuf),
    /// Something is already mounted there.
    #[error("{0:?} is already a mountpoint; unmount it first")]
    AlreadyMounted(PathBuf),
    /// A FUSE mount whose daemon died is still there.
    #[error(
        "{0:?} is a dead FUSE mount (transport endpoint not connected); run `fusermount3 -u {0:?}`"
    )]
    DeadMount(PathBuf),
    /// The mountpoint could not be inspected.
    #[error("mountpoint {path:?}: {source}")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The FUSE session (mount(2) or fusermount3, /dev/fuse) failed.
    #[error("FUSE session at {path:?}: {reason}")]
    Session {
        /// The mountpoint.
        path: PathBuf,
        /// The transport's message.
        reason: String,
    },
    /// A worker thread could not be started.
    #[error("cannot start FUSE worker {index}: {source}")]
    SpawnWorker {
        /// Worker number.
        index: usize,
        /// The I/O error.
        source: io::Error,
    },
    /// The mount did not answer its first request.
    #[error("mount at {path:?} does not answer: {source}")]
    NotAnswering {
        /// The mountpoint.
        path: PathBuf,
        /// The I/O error of the probe.
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("cannot unmount {path:?}: {reason}")]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A feature the options require (`--passthrough=on`, `--transport=uring`) is not
    /// available on this kernel or to this process.
    #[error("{feature} is required but unavailable: {reason}")]
    Unavailable {
        /// The feature.
        feature: &'static str,
        /// Why it is unavailable.
        reason: String,
    },
    /// A worker stopped on an error reading or writing /dev/fuse.
    #[error("FUSE worker {index} failed: {source}")]
    Worker {
        /// Worker number.
        index: usize,
        /// The I/O error.
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_refusals_map_to_erofs_and_lookups_to_enoent() {
        assert_eq!(FsError::ReadOnly("mkdir").to_errno(), libc::EROFS);
        let nf = FsError::NotFound { parent: 1 };
        assert_eq!(nf.to_errno(), libc::ENOENT);
        assert!(nf.is_expected());
    }

    #[test]
    fn a_vanished_source_or_an_offline_origin_is_eio() {
        let gone = FsError::Origin {
            ino: 9,
            source: musicfs_storage::origin::OriginError::Vanished {
                origin: "/music".into(),
                rel: PathBuf::from("a.flac"),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
        };
        assert_eq!(gone.to_errno(), libc::EIO);
        let offline = FsError::OriginOffline { ino: 9, origin: 1 };
        assert_eq!(offline.to_errno(), libc::EIO);
        assert!(offline.is_expected(), "logged once by the refresh loop");
    }

    #[test]
    fn source_errors_become_eio_except_estale() {
        let eio = FsError::SourceIo {
            path: PathBuf::new(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(eio.to_errno(), libc::EIO);
        assert!(!eio.is_expected());
        let stale = FsError::SourceIo {
            path: PathBuf::new(),
            source: io::Error::from_raw_os_error(libc::ESTALE),
        };
        assert_eq!(stale.to_errno(), libc::ESTALE);
    }
}
