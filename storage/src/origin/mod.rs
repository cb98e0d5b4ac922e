//! The origin seam: where source files live and how MusicFS lists, stats and reads them.
//!
//! An origin is named by an [`OriginSpec`] (`/music`, `file:///music`, `s3://…`,
//! `sftp://…`, `smb://…`) and registered in the catalog under [`OriginSpec::key`] (for a
//! local origin its canonical root, which is what catalogs keyed by path already hold).
//! [`open_origin`] turns a spec into an [`Origin`], the one interface the scanner, the
//! watcher and the read path are meant to use:
//!
//! - [`Origin::list`] a directory (entries with a [`Stat`]: kind, size, mtime, mode bits,
//!   owner and a [`ChangeToken`]), [`Origin::stat`] one path;
//! - [`Origin::open`] a [`Source`] for ranged reads ([`Source::read_at`]); a local source
//!   also exposes its raw fd ([`Source::raw_fd`]) so FUSE passthrough and io_uring reads
//!   keep working;
//! - [`Origin::change_detection`]: whether inotify can be trusted or the origin must be
//!   polled;
//! - [`Origin::probe`]: is the origin there ([`Health::Up`]) or [`Health::Offline`]
//!   (missing, unreadable, not a directory, on another device than recorded, or a mount
//!   point whose file system is no longer mounted). An offline origin's tracks are kept;
//!   deciding that is the caller's job, the probe only reports.
//!
//! Drivers: local directories ([`LocalOrigin`]), S3 buckets ([`S3Origin`]) and SFTP
//! servers ([`SftpOrigin`]); an `smb://` spec parses, and opening it fails with
//! [`OriginError::UnsupportedScheme`]. Every path handed to an origin is
//! relative to its root (raw bytes, as the catalog stores them), never absolute and never
//! with `..`. Nothing here ever opens a file for writing.

pub mod cached;
mod chunking;
mod error;
mod escape;
mod failover;
mod local;
pub mod remote;
mod s3;
mod sftp;
mod smb;
mod spec;
mod table;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use musicfs_core::ScanState;
use serde::{Deserialize, Serialize};

pub use self::smb::{SmbOrigin, SmbSource};
pub use cached::{
    CacheCounters, CacheOptions, CachedOrigin, CachedSource, ChunkCache, ChunkRef, ChunkTier,
    Chunking,
};
pub use chunking::AudioChunking;
pub use error::{is_vanished_io, OriginError};
pub use failover::{Copy, FailoverSource};
pub use local::{LocalOrigin, LocalSource};
pub use s3::tier::{S3Tier, TierCounters};
pub use s3::{S3Origin, S3Source};
pub use sftp::{SftpOrigin, SftpSource};
pub use spec::{LocalSpec, OriginSpec, PluginSpec, S3Spec, Secret, Server, SftpSpec, SmbSpec};
pub use table::OriginTable;

/// What kind of thing a path is (after following a symlink, for listed symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else (FIFO, socket, device): never a track.
    Other,
}

/// How to tell, without reading it, that a file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeToken {
    /// A local file: its device and inode (which also tell a walker it met a directory
    /// twice) and its status-change time, which any write or rename updates.
    Local {
        /// Device of the file system holding it.
        dev: u64,
        /// Inode number.
        ino: u64,
        /// Status change time, nanoseconds since the epoch.
        ctime_ns: i64,
    },
    /// A remote object's ETag.
    ETag(String),
}

impl ChangeToken {
    /// The (inode, ctime) a scan records for this token ([`Stat::scan_state`]).
    fn scan_identity(&self) -> (u64, i64) {
        match self {
            ChangeToken::Local { ino, ctime_ns, .. } => (*ino, *ctime_ns),
            ChangeToken::ETag(etag) => (xxhash_rust::xxh3::xxh3_64(etag.as_bytes()), 0),
        }
    }

    /// The content generation a scan would give a file of `size` and `mtime_ns` with this
    /// token (its FUSE generation in the tree): what tells an opened source's version from
    /// the one the tree shows.
    pub fn content_generation(&self, size: u64, mtime_ns: i64) -> u64 {
        let (ino, ctime_ns) = self.scan_identity();
        musicfs_core::tree::content_generation(&ScanState {
            size,
            mtime_ns,
            ino,
            ctime_ns,
            perm: None,
        })
    }
}

/// The facts about one path in an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// File, directory or other.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Permission bits (`mode & 0o7777`), when the origin has them (local: always).
    pub mode: Option<u32>,
    /// Owner, when the origin has one (local: always).
    pub uid: Option<u32>,
    /// Group, when the origin has one (local: always).
    pub gid: Option<u32>,
    /// What changes whenever the content may have.
    pub token: ChangeToken,
}

impl Stat {
    /// The stat of a local file from its metadata (what a local walk that keeps its own
    /// `fstatat` results uses, so both agree).
    pub fn from_metadata(md: &std::fs::Metadata) -> Stat {
        local::stat_of(md)
    }

    /// What the catalog stores to compare with the next scan. An ETag origin has no inode
    /// or ctime: the ETag's 64-bit xxh3 stands in the inode's place (ctime is 0), so an
    /// object rewritten with the same size within the same second still reads as changed.
    pub fn scan_state(&self) -> ScanState {
        let (ino, ctime_ns) = self.token.scan_identity();
        let perm = match (self.mode, self.uid, self.gid) {
            (Some(mode), Some(uid), Some(gid)) => Some(musicfs_core::meta::Perm { mode, uid, gid }),
            _ => None,
        };
        ScanState {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ino,
            ctime_ns,
            perm,
        }
    }
}

/// One directory entry found by [`Origin::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name in the directory.
    pub name: OsString,
    /// It is a symlink (inside the origin) and `stat` describes its target.
    pub via_symlink: bool,
    /// Its stat.
    pub stat: Stat,
}

/// Why a listed name was not made an [`Entry`].
#[derive(Debug)]
pub enum SkipReason {
    /// A symlink whose target does not exist (or a loop of symlinks).
    Dangling {
        /// What the link says, as far as it could be read.
        target: PathBuf,
    },
    /// A symlink that resolves outside the origin root.
    OutsideOrigin {
        /// Where it resolves to.
        target: PathBuf,
    },
    /// It could not be stat'ed.
    Unreadable(io::Error),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Dangling { target } => {
                write!(f, "dangling symlink (to {})", target.display())
            }
            SkipReason::OutsideOrigin { target } => {
                write!(
                    f,
                    "symlink points outside the origin (to {})",
                    target.display()
                )
            }
            SkipReason::Unreadable(e) => write!(f, "cannot stat: {e}"),
        }
    }
}

/// What [`Origin::list`] reports for each name in a directory.
#[derive(Debug)]
pub enum Listed {
    /// A usable entry.
    Entry(Entry),
    /// A name that is there but cannot be used, and why.
    Skipped {
        /// Its name in the directory.
        name: OsString,
        /// Why.
        reason: SkipReason,
    },
}

/// How an origin's changes can be noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeDetection {
    /// inotify watches on its directories see every change.
    Inotify,
    /// Only walking it again finds changes (network file systems, object stores).
    Poll,
    /// Changes cannot be detected; it is scanned when asked to.
    None,
}

/// What an origin's root was like when it was last known good, for [`Origin::probe`] to
/// tell a different or unmounted file system from the real one. Small and serialisable,
/// so the caller can keep it with the catalog or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RootIdentity {
    /// `st_dev` of the root.
    pub dev: u64,
    /// The root is the root of a mount (`STATX_ATTR_MOUNT_ROOT`).
    pub mount_root: bool,
}

/// Why an origin is offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offline {
    /// The root does not exist.
    Missing,
    /// The root is not a directory.
    NotADirectory,
    /// The root cannot be stat'ed or listed.
    Unreadable {
        /// What the system said.
        reason: String,
    },
    /// The root was a mount point and is not one any more: its file system (an NFS or SMB
    /// share, a disk) is not mounted, and what shows is the empty directory below.
    NotMounted,
    /// The root is on another device than recorded.
    DeviceChanged {
        /// The recorded `st_dev`.
        recorded: u64,
        /// The `st_dev` now.
        found: u64,
    },
    /// The probe did not answer in time (a hung network mount).
    Unresponsive {
        /// How long it was given.
        waited: Duration,
    },
}

impl fmt::Display for Offline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offline::Missing => f.write_str("root is missing"),
            Offline::NotADirectory => f.write_str("root is not a directory"),
            Offline::Unreadable { reason } => write!(f, "root is unreadable: {reason}"),
            Offline::NotMounted => f.write_str("root is a mount point with nothing mounted"),
            Offline::DeviceChanged { recorded, found } => write!(
                f,
                "root is on another device than recorded ({found:#x}, was {recorded:#x})"
            ),
            Offline::Unresponsive { waited } => {
                write!(f, "root did not answer within {} ms", waited.as_millis())
            }
        }
    }
}

/// The answer of a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The origin can be listed and read.
    Up,
    /// It cannot: keep its tracks, fail its reads fast, probe again later.
    Offline(Offline),
}

/// A file as the tree records it: what [`Origin::open_seen`] is asked to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
}

/// One origin: lists, stats and opens files under its root. See the module documentation.
pub trait Origin: Send + Sync + fmt::Debug {
    /// The spec it was opened from.
    fn spec(&self) -> &OriginSpec;

    /// The catalog key it was opened under ([`OriginSpec::key`] at open time).
    fn key(&self) -> &std::ffi::OsStr;

    /// Calls `each` for every name in directory `dir` (relative; empty for the root), in no
    /// particular order. Symlinks that resolve inside the origin are followed (`via_symlink`).
    /// A symlink to a directory is listed as that directory: a walker that descends into
    /// it detects loops by the (dev, ino) in [`ChangeToken::Local`]. A name that vanishes
    /// while being listed is left out. On `Err` the names already delivered are not the
    /// whole directory: the caller must treat it as unreadable, not as shrunk.
    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError>;

    /// The stat of `rel` (following symlinks, as [`Origin::open`] does).
    fn stat(&self, rel: &Path) -> Result<Stat, OriginError>;

    /// Opens regular file `rel` for reading.
    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError>;

    /// Opens regular file `rel` as the tree records it (`seen`: its size and mtime at the
    /// last scan). An origin read through a cache may serve a version it holds that
    /// matches `seen` without asking the server, checking the file only when it must
    /// fetch; others open as [`Origin::open`] does.
    fn open_seen(&self, rel: &Path, seen: Seen) -> Result<Arc<dyn Source>, OriginError> {
        let _ = seen;
        self.open(rel)
    }

    /// How changes to this origin can be noticed.
    fn change_detection(&self) -> ChangeDetection;

    /// Whether the origin is there, compared with `recorded` (what
    /// [`Origin::root_identity`] said when it was last known good; `None` skips the device
    /// and mount checks). May block on a hung network mount: see [`probe_within`].
    fn probe(&self, recorded: Option<&RootIdentity>) -> Health;

    /// The identity of the root now, to record while the origin is good (`None` when the
    /// root cannot be reached or the origin has no such notion).
    fn root_identity(&self) -> Option<RootIdentity>;

    /// The root directory, for origins that are local directories (so inotify watches and
    /// a walk of their own can use it).
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// The local driver behind this origin, if it is one: the FUSE read path opens local
    /// files through it without the `Arc` and trait object of [`Origin::open`].
    fn as_local(&self) -> Option<&LocalOrigin> {
        None
    }

    /// Whether `rel` can be opened and read whole while the origin is offline (a remote
    /// file its cache holds whole: see [`CachedOrigin`]).
    fn readable_offline(&self, rel: &Path) -> bool {
        let _ = rel;
        false
    }

    /// The calling discipline of a network origin (deadline, concurrency, traffic), for
    /// the control plane to read and change; `None` for local origins.
    fn remote(&self) -> Option<&remote::Remote> {
        None
    }

    /// Prefetch: brings the first `bytes` of `rel` (as the tree records it: `seen`) into
    /// the origin's cache, at low priority (an origin with a cache lets reads being served
    /// go first), asking `stop` between fetches whether to give up. Returns how many bytes
    /// of the file were fetched. Origins without a cache (local folders) fetch nothing.
    fn warm(
        &self,
        rel: &Path,
        seen: Seen,
        bytes: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, OriginError> {
        let _ = (rel, seen, bytes, stop);
        Ok(0)
    }
}

/// An open file of an origin, read by offset.
pub trait Source: Send + Sync + fmt::Debug {
    /// Reads into `buf` from `offset`: fills it unless the file ends first (short reads and
    /// EINTR are retried), so `Ok(n < buf.len())` means end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The file's size when it was opened.
    fn len(&self) -> u64;

    /// Whether the file was empty when it was opened.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open file descriptor, for sources backed by one (FUSE passthrough, io_uring). It
    /// stays valid as long as the source lives and is opened read-only.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// What identifies the version of the file this source reads (an object's ETag), when
    /// the origin says: a cache keys what it keeps by it.
    fn token(&self) -> Option<ChangeToken> {
        None
    }

    /// The file's modification time when it was opened (nanoseconds since the epoch), when
    /// the origin says.
    fn mtime_ns(&self) -> Option<i64> {
        None
    }
}

/// What opening a network origin may need beside its spec: where its secrets are (never
/// in the spec's display form, logs or errors) and how it is called. Local origins ignore
/// it. The daemon fills it from the origin's table in the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OriginSettings {
    /// S3: an AWS-format credentials file (else `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else `~/.aws/credentials`).
    pub credentials_file: Option<PathBuf>,
    /// S3: the profile in the credentials file (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// SFTP: the private key file (else the ssh agent at `SSH_AUTH_SOCK`).
    pub identity_file: Option<PathBuf>,
    /// SFTP: the known_hosts file holding the server's key (else `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// SMB, SFTP: a file whose first line is the password (else `MUSICFS_SMB_PASSWORD`
    /// for SMB).
    pub password_file: Option<PathBuf>,
    /// Deadline, retries and concurrency of requests.
    pub remote: remote::RemoteOptions,
}

/// Opens the origin `spec` names with default [`OriginSettings`] (secrets from the
/// environment). A local origin whose root is missing still opens (it then probes offline).
pub fn open_origin(spec: &OriginSpec) -> Result<Arc<dyn Origin>, OriginError> {
    open_origin_with(spec, &OriginSettings::default())
}

/// Opens the origin `spec` names with `settings`. A network origin opens without
/// contacting its server (an unreachable one then probes offline), but a missing or
/// unreadable secret is an error here.
pub fn open_origin_with(
    spec: &OriginSpec,
    settings: &OriginSettings,
) -> Result<Arc<dyn Origin>, OriginError> {
    match spec {
        OriginSpec::Local(_) => Ok(Arc::new(LocalOrigin::open(spec)?)),
        OriginSpec::Sftp(_) => Ok(Arc::new(SftpOrigin::open(spec, settings)?)),
        OriginSpec::S3(_) => Ok(Arc::new(S3Origin::open(spec, settings)?)),
        OriginSpec::Smb(_) => Ok(Arc::new(SmbOrigin::open(spec, settings)?)),
        OriginSpec::Plugin(p) => {
            let opener = PLUGIN_OPENER
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match opener {
                Some(open) => open(p),
                None => Err(OriginError::BadSpec {
                    spec: spec.to_string(),
                    reason: "plugin origins are served by a daemon or CLI with plugins loaded"
                        .into(),
                }),
            }
        }
    }
}

/// Opens a plugin's origin (registered by the program that loads plugins).
pub type PluginOpener =
    Arc<dyn Fn(&PluginSpec) -> Result<Arc<dyn Origin>, OriginError> + Send + Sync>;

static PLUGIN_OPENER: std::sync::RwLock<Option<PluginOpener>> = std::sync::RwLock::new(None);

/// Makes `plugin://` origins open through `opener` (the plugin host).
pub fn set_plugin_opener(opener: PluginOpener) {
    *PLUGIN_OPENER.write().unwrap_or_else(|e| e.into_inner()) = Some(opener);
}

/// [`Origin::probe`] on a helper thread, reporting [`Offline::Unresponsive`] if it does
/// not answer within `timeout` (a hard-mounted NFS share that went away blocks `stat`
/// forever; the refresh loop must not). A probe that hangs leaves its thread behind, blocked
/// in the kernel, until the call returns.
pub fn probe_within(
    origin: &Arc<dyn Origin>,
    recorded: Option<RootIdentity>,
    timeout: Duration,
) -> Health {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let origin = Arc::clone(origin);
    let spawned = std::thread::Builder::new()
        .name("origin-probe".into())
        .spawn(move || {
            // The receiver may have given up waiting: nothing to do then.
            let _ = tx.send(origin.probe(recorded.as_ref()));
        });
    if let Err(e) = spawned {
        return Health::Offline(Offline::Unreadable {
            reason: format!("cannot start the probe thread: {e}"),
        });
    }
    match rx.recv_timeout(timeout) {
        Ok(health) => health,
        Err(RecvTimeoutError::Timeout) => {
            Health::Offline(Offline::Unresponsive { waited: timeout })
        }
        Err(RecvTimeoutError::Disconnected) => Health::Offline(Offline::Unreadable {
            reason: "the probe failed without an answer".into(),
        }),
    }
}

/// Checks that `rel` stays inside an origin: relative, without `..`.
fn check_rel(origin: &dyn Origin, rel: &Path) -> Result<(), OriginError> {
    let reason = rel.components().find_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some("it is absolute"),
        Component::ParentDir => Some("it contains '..'"),
        Component::CurDir | Component::Normal(_) => None,
    });
    match reason {
        None => Ok(()),
        Some(reason) => Err(OriginError::BadRelPath {
            origin: origin.spec().to_string(),
            rel: rel.to_path_buf(),
            reason,
        }),
    }
}

#[cfg(test)]
mod cached_tests;
#[cfg(test)]
mod local_tests;
