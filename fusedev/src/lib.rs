//! MusicFS FUSE server: mounts a tree snapshot read-only and answers the kernel from it.
//!
//! It owns the session (mount, unmount, auto-unmount), the worker threads (one cloned
//! `/dev/fuse` fd each, pinned, with their own buffers) and the filesystem operations. It
//! does not know how bytes are fetched: it asks the origin a track names
//! (`musicfs_storage::origin`) for a source and reads that; it never opens a path itself and
//! never writes anywhere: every write operation answers EROFS.
//!
//! Types to read first:
//! - [`mount`] / [`MountOptions`] / [`Mounted`] / [`Unmounter`]: the lifecycle the daemon
//!   drives ([`session`]).
//! - [`FsModel`]: every operation as a plain function over the snapshot, tested without a
//!   kernel ([`fs`]).
//! - [`dispatch::Dispatcher`]: the one request dispatcher both transports use: decodes a
//!   request, calls the model, encodes the reply; [`FsError::to_errno`] turns errors into
//!   errnos there. fuse-backend-rs only mounts and clones the session fd.
//! - [`notify::Notifier`]: core's `InvalidationSink` for a mount, which the daemon hands to
//!   the refresh loop.
#![deny(missing_docs)]

pub mod abi;
pub mod album;
pub mod dispatch;
pub mod error;
pub mod fs;
pub mod handles;
pub mod negotiate;
pub mod notify;
pub mod opstats;
pub mod passthrough;
pub mod plays;
pub mod prefetch;
pub mod ring;
pub mod session;
pub mod sources;
pub mod status;
pub mod uring;
pub mod virt;
pub mod xattr;

pub use error::{FsError, FuseError};
pub use fs::{Attr, DirItem, FsConfig, FsModel, FsStats, Kind};
pub use session::{mount, mount_with_tags, MountOptions, Mounted, Unmounter};
pub use status::{ServeStatus, Transport};
pub use xattr::{TagSource, XattrReply};
