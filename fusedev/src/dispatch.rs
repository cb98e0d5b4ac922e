//! The one FUSE dispatcher: every request of every transport (`/dev/fuse` queues and
//! FUSE-over-io_uring) is decoded here, answered by one call into [`FsModel`], and encoded
//! into the reply buffer the transport hands in. Transports only move bytes: the
//! `/dev/fuse` worker passes the request after the in-header as `op` (the per-op struct and
//! its name or payload together); an io_uring queue passes the per-op struct and the
//! payload apart. The reply body is written into `out`, and the transport adds the
//! out-header.
//!
//! INIT is shaped here (protocol 7.42 features: passthrough, io_uring queues), OPEN/RELEASE
//! manage passthrough backing ids, and READ goes to the origin through the worker's
//! io_uring or `pread`. Errors become an errno once, in `fail`, where they are logged.
//!
//! The lookup, getattr, readdir(plus), open, read, release and forget paths allocate
//! nothing (checked by `tests::no_alloc`).

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use musicfs_core::nodeid;
use musicfs_storage::origin::ChangeToken;

use crate::abi::{self, Pod};
use crate::fs::{Attr, DirItem, FsModel, Kind};
use crate::negotiate::{self, InitAnswer, Negotiated, Wants};
use crate::opstats::OpStats;
use crate::passthrough::{Backing, Opened};
use crate::ring::{pread_full, ReadRing};
use crate::sources::Source;
use crate::xattr::XattrReply;
use crate::FsError;

/// One decoded request: the in-header, the per-opcode struct and the data after it (names,
/// ...). On `/dev/fuse` the last two are one buffer; on io_uring they arrive apart.
pub struct Req<'a> {
    /// `fuse_in_header`.
    pub h: abi::InHeader,
    /// The per-opcode struct (`fuse_read_in`, ...); may be longer than the struct.
    pub op: &'a [u8],
    /// What follows it (a name for lookup and getxattr).
    pub data: &'a [u8],
}

/// What to send back.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reply whose body is the first `n` bytes of the output buffer.
    Reply(usize),
    /// An error reply with this errno.
    Error(i32),
    /// No reply (forget, interrupt, destroy).
    Silent,
}

/// Per-worker I/O state.
pub struct WorkerIo {
    /// The worker's FUSE device fd (for the backing-id ioctls).
    pub dev_fd: RawFd,
    /// The worker's ring for origin reads, if io_uring is usable.
    pub ring: Option<ReadRing>,
}

/// The request dispatcher shared by every worker of every transport.
pub struct Dispatcher {
    model: Arc<FsModel>,
    backing: Backing,
    wants: Wants,
    init: Mutex<InitState>,
    init_cv: Condvar,
    uring_requests: AtomicU64,
    stats: Option<Arc<OpStats>>,
}

#[derive(Default)]
struct InitState {
    negotiated: Option<Negotiated>,
    /// The INIT reply reached the kernel (so the connection is initialised).
    replied: bool,
}

fn split(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// The kernel's view of `a`.
pub fn fuse_attr(a: &Attr) -> abi::Attr {
    let secs = a.mtime_ns.div_euclid(1_000_000_000) as u64;
    let nsecs = a.mtime_ns.rem_euclid(1_000_000_000) as u32;
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks(),
        atime: secs,
        mtime: secs,
        ctime: secs,
        atimensec: nsecs,
        mtimensec: nsecs,
        ctimensec: nsecs,
        mode: a.mode(),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: crate::fs::IO_BLOCK_SIZE,
        flags: 0,
    }
}

fn dirent_type(kind: Kind) -> u32 {
    match kind {
        Kind::Dir => u32::from(libc::DT_DIR),
        Kind::File => u32::from(libc::DT_REG),
        Kind::Symlink => u32::from(libc::DT_LNK),
    }
}

/// Writes `v` at the start of `out` and returns the reply outcome.
fn put<T: Pod>(out: &mut [u8], v: &T) -> Outcome {
    match v.write_to(out) {
        Some(n) => Outcome::Reply(n),
        None => Outcome::Error(libc::ERANGE),
    }
}

/// The entry reply for `a` (lookup, readdirplus), with the configured timeouts.
/// A virtual node (search and collection results, [`crate::virt`]) is cached for no time:
/// it follows the library without invalidations.
fn entry_out(cfg: &crate::fs::FsConfig, a: &crate::fs::Attr) -> abi::EntryOut {
    let (es, ens) = split(timeout(cfg.entry_timeout, a.ino));
    let (as_, ans) = split(timeout(cfg.attr_timeout, a.ino));
    abi::EntryOut {
        // A track file's node id names its content version: a re-tagged file is a new node
        // to the kernel, and handles on the old one keep reading it (core's `nodeid`).
        nodeid: nodeid::kernel_id(a.ino, a.generation),
        generation: a.generation,
        entry_valid: es,
        attr_valid: as_,
        entry_valid_nsec: ens,
        attr_valid_nsec: ans,
        attr: fuse_attr(a),
    }
}

/// `configured`, or zero for a virtual node.
fn timeout(configured: Duration, ino: u64) -> Duration {
    if crate::virt::is_virtual(ino) || crate::album::is_extra(ino) || crate::prefetch::is_hint(ino)
    {
        Duration::ZERO
    } else {
        configured
    }
}

/// The name argument, NUL-terminated: after the per-op struct (`skip` bytes) where the
/// transport delivers both in `op` (`/dev/fuse`), else in `data` (io_uring).
fn name_arg<'a>(req: &Req<'a>, skip: usize) -> Option<&'a [u8]> {
    let raw = if req.op.len() > skip {
        &req.op[skip..]
    } else {
        req.data
    };
    let end = raw.iter().position(|b| *b == 0)?;
    Some(&raw[..end])
}

impl Dispatcher {
    /// A handler over `model` that asks INIT for `wants`; `refuse_backing` makes every
    /// passthrough registration fail as a refusing kernel would (to test the fallback).
    pub fn new(model: Arc<FsModel>, wants: Wants, refuse_backing: bool) -> Dispatcher {
        let backing = Backing::new(refuse_backing);
        if !wants.passthrough {
            backing.disable();
        }
        Dispatcher {
            model,
            backing,
            wants,
            init: Mutex::new(InitState::default()),
            init_cv: Condvar::new(),
            uring_requests: AtomicU64::new(0),
            stats: None,
        }
    }

    /// Counts and times every request into `stats` (see [`crate::opstats`]).
    pub fn with_stats(mut self, stats: Arc<OpStats>) -> Dispatcher {
        self.stats = Some(stats);
        self
    }

    /// The filesystem model requests are answered from.
    pub fn model(&self) -> &Arc<FsModel> {
        &self.model
    }

    /// What INIT settled, once it has run.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.init_state().negotiated
    }

    fn init_state(&self) -> std::sync::MutexGuard<'_, InitState> {
        self.init.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the INIT reply was written (the kernel processes it in that write).
    pub fn init_replied(&self) {
        self.init_state().replied = true;
        self.init_cv.notify_all();
    }

    /// Waits until the INIT reply went out, at most `limit`; returns what was settled.
    pub fn wait_init(&self, limit: Duration) -> Option<Negotiated> {
        let state = self.init_state();
        let (state, _) = self
            .init_cv
            .wait_timeout_while(state, limit, |s| !s.replied)
            .unwrap_or_else(|p| p.into_inner());
        state.negotiated
    }

    /// Counts one request answered through an io_uring queue.
    pub fn count_uring_request(&self) {
        self.uring_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered through io_uring queues so far.
    pub fn uring_requests(&self) -> u64 {
        self.uring_requests.load(Ordering::Relaxed)
    }

    /// The passthrough table.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Answers `req`, writing the reply body into `out` (timed, when counting).
    pub fn handle(&self, io: &mut WorkerIo, req: &Req<'_>, out: &mut [u8]) -> Outcome {
        let Some(stats) = &self.stats else {
            return self.answer(io, req, out);
        };
        let mut timer = stats.start(req.h.opcode);
        let outcome = self.answer(io, req, out);
        if matches!(outcome, Outcome::Error(_)) {
            timer.failed();
        }
        outcome
    }

    fn answer(&self, io: &mut WorkerIo, req: &Req<'_>, out: &mut [u8]) -> Outcome {
        // The inode the node id stands for; getattr, open and read also mind the version
        // it names (a track file's id carries its content version: core's `nodeid`).
        let ino = nodeid::split(req.h.nodeid).0;
        let result = match req.h.opcode {
            abi::FUSE_INIT => return self.init(req, out),
            abi::FUSE_FORGET | abi::FUSE_BATCH_FORGET | abi::FUSE_INTERRUPT => {
                return Outcome::Silent
            }
            abi::FUSE_DESTROY => {
                self.model.close_all();
                self.backing.clear();
                return Outcome::Silent;
            }
            abi::FUSE_LOOKUP => return self.lookup(req, out),
            abi::FUSE_GETATTR => self.getattr(req, ino).map(|a| {
                let (s, ns) = split(timeout(self.model.config().attr_timeout, ino));
                put(
                    out,
                    &abi::AttrOut {
                        attr_valid: s,
                        attr_valid_nsec: ns,
                        dummy: 0,
                        attr: fuse_attr(&a),
                    },
                )
            }),
            abi::FUSE_OPEN => self.open(io, req, out),
            abi::FUSE_READ => self.read(io, req, out),
            abi::FUSE_RELEASE => {
                let r = abi::ReleaseIn::read_prefix(req.op);
                self.backing.release(io.dev_fd, r.fh);
                self.model.release(r.fh).map(|()| Outcome::Reply(0))
            }
            abi::FUSE_OPENDIR => self.model.opendir(ino).map(|fh| {
                // A virtual directory's listing changes with the library: not cached.
                let open_flags = if crate::virt::is_virtual(ino) || crate::prefetch::is_hint(ino) {
                    0
                } else {
                    abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE
                };
                put(
                    out,
                    &abi::OpenOut {
                        fh,
                        open_flags,
                        backing_id: 0,
                    },
                )
            }),
            abi::FUSE_READDIR => self.readdir(req, out, false),
            abi::FUSE_READDIRPLUS => self.readdir(req, out, true),
            abi::FUSE_RELEASEDIR => {
                let r = abi::ReleaseIn::read_prefix(req.op);
                self.model.releasedir(r.fh).map(|()| Outcome::Reply(0))
            }
            abi::FUSE_STATFS => {
                let s = self.model.statfs();
                Ok(put(
                    out,
                    &abi::Kstatfs {
                        blocks: s.blocks,
                        files: s.files,
                        bsize: s.block_size,
                        frsize: s.block_size,
                        namelen: s.name_max,
                        ..abi::Kstatfs::default()
                    },
                ))
            }
            abi::FUSE_ACCESS => {
                let a = abi::AccessIn::read_prefix(req.op);
                self.model.access(ino, a.mask).map(|()| Outcome::Reply(0))
            }
            abi::FUSE_GETXATTR => {
                let g = abi::GetxattrIn::read_prefix(req.op);
                match name_arg(req, std::mem::size_of::<abi::GetxattrIn>()) {
                    Some(name) => self
                        .model
                        .getxattr(ino, name, g.size)
                        .map(|r| xattr_reply(r, out)),
                    None => return Outcome::Error(libc::EINVAL),
                }
            }
            abi::FUSE_LISTXATTR => {
                let g = abi::GetxattrIn::read_prefix(req.op);
                self.model
                    .listxattr(ino, g.size)
                    .map(|r| xattr_reply(r, out))
            }
            // ENOSYS makes the kernel stop sending FLUSH (`fc->no_flush`), so `close(2)`
            // no longer waits for a round trip; a read-only file has nothing to flush.
            abi::FUSE_FLUSH => return Outcome::Error(libc::ENOSYS),
            abi::FUSE_FSYNC | abi::FUSE_FSYNCDIR => Ok(Outcome::Reply(0)),
            abi::FUSE_READLINK => {
                self.model
                    .readlink(ino)
                    .map(|target| match out.get_mut(..target.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(&target);
                            Outcome::Reply(target.len())
                        }
                        None => Outcome::Error(libc::ENAMETOOLONG),
                    })
            }
            abi::FUSE_SETATTR
            | abi::FUSE_SYMLINK
            | abi::FUSE_MKNOD
            | abi::FUSE_MKDIR
            | abi::FUSE_UNLINK
            | abi::FUSE_RMDIR
            | abi::FUSE_RENAME
            | abi::FUSE_RENAME2
            | abi::FUSE_LINK
            | abi::FUSE_WRITE
            | abi::FUSE_SETXATTR
            | abi::FUSE_REMOVEXATTR
            | abi::FUSE_CREATE
            | abi::FUSE_TMPFILE
            | abi::FUSE_FALLOCATE
            | abi::FUSE_COPY_FILE_RANGE => Err(FsError::ReadOnly("write")),
            _ => return Outcome::Error(libc::ENOSYS),
        };
        match result {
            Ok(o) => o,
            Err(e) => Outcome::Error(fail(op_name(req.h.opcode), ino, e)),
        }
    }

    fn init(&self, req: &Req<'_>, out: &mut [u8]) -> Outcome {
        match negotiate::answer(req.op, self.wants) {
            InitAnswer::Error(e) => {
                tracing::error!(errno = e, "FUSE INIT: unsupported protocol major version");
                Outcome::Error(e)
            }
            InitAnswer::Reply {
                out: init,
                len,
                settled,
            } => {
                if let Some(n) = settled {
                    if !n.passthrough() {
                        self.backing.disable();
                    }
                    self.init_state().negotiated = Some(n);
                    tracing::info!(
                        minor = n.minor,
                        offered = format_args!("{:#x}", n.offered),
                        granted = format_args!("{:#x}", n.granted),
                        passthrough = n.passthrough(),
                        uring = n.uring(),
                        "FUSE INIT"
                    );
                }
                let bytes = negotiate::reply_bytes(&init, len);
                match out.get_mut(..bytes.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(bytes);
                        Outcome::Reply(bytes.len())
                    }
                    None => Outcome::Error(libc::ERANGE),
                }
            }
        }
    }

    fn lookup(&self, req: &Req<'_>, out: &mut [u8]) -> Outcome {
        let parent = nodeid::split(req.h.nodeid).0;
        let Some(name) = name_arg(req, 0) else {
            return Outcome::Error(libc::EINVAL);
        };
        let cfg = self.model.config();
        let entry = match self.model.lookup(parent, name) {
            Ok(a) => entry_out(cfg, &a),
            // Not under a virtual directory: its names come and go with the library.
            Err(FsError::NotFound { .. })
                if !cfg.negative_timeout.is_zero()
                    && !crate::virt::is_virtual(parent)
                    && !crate::prefetch::is_hint(parent) =>
            {
                // nodeid 0 with a timeout: a negative entry the kernel caches.
                let (es, ens) = split(cfg.negative_timeout);
                abi::EntryOut {
                    entry_valid: es,
                    entry_valid_nsec: ens,
                    ..abi::EntryOut::default()
                }
            }
            Err(e) => return Outcome::Error(fail("lookup", parent, e)),
        };
        put(out, &entry)
    }

    /// Whether handle `fh`'s source differs in size or mtime from `shown`, what the tree
    /// shows for it (the origin replaced it and no refresh has followed yet).
    fn source_changed(&self, shown: Option<&crate::fs::Attr>, fh: u64) -> bool {
        let Some(shown) = shown else {
            return false;
        };
        self.model
            .with_source(fh, |s| {
                // A remote source is read by the version it opened (pinned by its ETag),
                // which may already be a newer one than the tree shows: its ETag, else its
                // size and its mtime to the second (a listing's and a HEAD's precision
                // differ), tell.
                let Some(fd) = s.raw_fd() else {
                    let crate::sources::Source::Other(o) = s else {
                        // A rendition: its bytes are the tree's own.
                        return Ok(false);
                    };
                    // A source that names its version (an ETag, also a chunk-cached one):
                    // when the listing the tree was built from gave ETags, the content
                    // generation the source would have in the tree (with the tree's mtime:
                    // a HEAD's is coarser than a listing's) tells a replaced object even
                    // of the same size within the same second. A listing without ETags
                    // (s3s-fs) leaves size and mtime to tell.
                    if let Some(token @ ChangeToken::ETag(_)) = o.token() {
                        if token.content_generation(o.len(), shown.mtime_ns) == shown.generation {
                            return Ok(false);
                        }
                        let untagged = ChangeToken::ETag(String::new());
                        if untagged.content_generation(shown.size, shown.mtime_ns)
                            != shown.generation
                        {
                            return Ok(true);
                        }
                    }
                    let secs = |ns: i64| ns.div_euclid(1_000_000_000);
                    let mtime_differs = o
                        .mtime_ns()
                        .is_some_and(|m| m != 0 && secs(m) != secs(shown.mtime_ns));
                    return Ok(o.len() != shown.size || mtime_differs);
                };
                // SAFETY: fstat of an open descriptor into a zeroed local struct.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                if unsafe { libc::fstat(fd, &mut st) } != 0 {
                    return Ok(false);
                }
                let mtime = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec;
                Ok(st.st_size as u64 != shown.size || mtime != shown.mtime_ns)
            })
            .unwrap_or(false)
    }

    /// The attributes of the node the kernel asks about: the current version's, or, for a
    /// node id naming an older version of a file that handles still read (a refresh moved
    /// the name on), that version's as it was opened.
    fn getattr(&self, req: &Req<'_>, ino: u64) -> Result<Attr, FsError> {
        let current = self.model.getattr(ino);
        match &current {
            Ok(a) if nodeid::names_version(req.h.nodeid, ino, a.generation) => current,
            _ => {
                let g = abi::GetattrIn::read_prefix(req.op);
                let fh = (g.getattr_flags & abi::FUSE_GETATTR_FH != 0).then_some(g.fh);
                match self.model.attr_of_open_version(req.h.nodeid, fh) {
                    Some(a) => Ok(a),
                    None => current.and(Err(FsError::StaleInode(ino))),
                }
            }
        }
    }

    fn open(&self, io: &mut WorkerIo, req: &Req<'_>, out: &mut [u8]) -> Result<Outcome, FsError> {
        let ino = nodeid::split(req.h.nodeid).0;
        if self.model.config().skip_open && !self.backing.enabled() {
            // The kernel remembers this (`fc->no_open`): later opens cost no round trip,
            // and READs arrive without a handle (see `FsModel::with_inode_source`). The
            // mount is read-only and checks modes itself, so nothing is lost by not asking.
            return Ok(Outcome::Error(libc::ENOSYS));
        }
        let o = abi::OpenIn::read_prefix(req.op);
        let fh = self.model.open(ino, o.flags)?;
        // The attributes of the version opened: its generation keys the backing file, its
        // size and mtime tell a replaced source.
        let shown = self.model.opened_attr(fh);
        let generation = shown.as_ref().map_or(0, |a| a.generation);
        if !nodeid::names_version(req.h.nodeid, ino, generation) {
            // The node id names a version a refresh has replaced since the kernel looked
            // the name up: ESTALE makes the kernel look it up again (`open(2)` retries the
            // walk) and open the version the tree shows now.
            let _ = self.model.release(fh);
            return Err(FsError::StaleInode(ino));
        }
        let backing = if self.backing.enabled() {
            self.model
                .with_source(fh, |s| {
                    Ok(s.raw_fd()
                        .map(|fd| self.backing.open(io.dev_fd, (ino, generation), fh, fd)))
                })
                .ok()
                .flatten()
                .unwrap_or(Opened::Plain)
        } else {
            Opened::Plain
        };
        let reply = match backing {
            // The page cache is the source file's own: FOPEN_KEEP_CACHE has nothing to keep.
            Opened::Backing(id) => abi::OpenOut {
                fh,
                open_flags: abi::FOPEN_PASSTHROUGH,
                backing_id: id,
            },
            // Without passthrough, when the source just opened is not the version the tree
            // shows (replaced since the last refresh): the inode's cached pages may hold
            // the old version's bytes, which must not mix with this handle's. Direct I/O
            // uses no page cache: its reads come from its own source through the daemon.
            Opened::Plain if self.source_changed(shown.as_ref(), fh) => {
                tracing::debug!(
                    ino,
                    fh,
                    "the source opened is not the version the tree shows: direct I/O"
                );
                abi::OpenOut {
                    fh,
                    open_flags: abi::FOPEN_DIRECT_IO,
                    backing_id: 0,
                }
            }
            // An extra entry's inode keeps its name, not its content (a new cover under
            // the same name): its pages are not kept across opens.
            Opened::Plain if crate::album::is_extra(ino) => abi::OpenOut {
                fh,
                open_flags: 0,
                backing_id: 0,
            },
            Opened::Plain => abi::OpenOut {
                fh,
                open_flags: abi::FOPEN_KEEP_CACHE,
                backing_id: 0,
            },
        };
        Ok(put(out, &reply))
    }

    fn read(&self, io: &mut WorkerIo, req: &Req<'_>, out: &mut [u8]) -> Result<Outcome, FsError> {
        let r = abi::ReadIn::read_prefix(req.op);
        let want = (r.size as usize).min(out.len());
        let dst = &mut out[..want];
        let read = |s: &Source| match (s.raw_fd(), io.ring.as_mut()) {
            (Some(fd), Some(ring)) => ring.read_full(fd, dst, r.offset),
            (Some(fd), None) => pread_full(fd, dst, r.offset),
            (None, _) => s.read_at(dst, r.offset),
        };
        // Handle 0 is never one of ours: the kernel opened the file without asking.
        let n = if r.fh == 0 {
            self.model.with_inode_source(req.h.nodeid, read)?
        } else {
            self.model.with_source(r.fh, read)?
        };
        let ino = nodeid::split(req.h.nodeid).0;
        self.model.note_read(r.fh, ino, r.offset, n);
        if let Some(stats) = &self.stats {
            if let Some(origin) = self.model.origin_of(ino) {
                stats.add_bytes(origin, n as u64);
            }
        }
        Ok(Outcome::Reply(n))
    }

    fn readdir(&self, req: &Req<'_>, out: &mut [u8], plus: bool) -> Result<Outcome, FsError> {
        let r = abi::ReadIn::read_prefix(req.op);
        let limit = (r.size as usize).min(out.len());
        let cfg = self.model.config();
        let mut used = 0;
        let mut emit = |item: DirItem<'_>| {
            let dirent_len = abi::dirent_size(item.name.len());
            let entry_len = if plus {
                std::mem::size_of::<abi::EntryOut>()
            } else {
                0
            };
            if used + entry_len + dirent_len > limit {
                return false;
            }
            let buf = &mut out[used..used + entry_len + dirent_len];
            buf.fill(0);
            if plus {
                let entry = match &item.attr {
                    Some(a) if item.current => entry_out(cfg, a),
                    Some(a) => abi::EntryOut {
                        entry_valid: 0,
                        entry_valid_nsec: 0,
                        attr_valid: 0,
                        attr_valid_nsec: 0,
                        ..entry_out(cfg, a)
                    },
                    // `.` and `..`: the kernel does not instantiate a zero nodeid.
                    None => abi::EntryOut::default(),
                };
                let _ = entry.write_to(buf);
            }
            let d = abi::Dirent {
                ino: item.ino,
                off: item.next_offset,
                namelen: item.name.len() as u32,
                typ: dirent_type(item.kind),
            };
            let at = entry_len;
            let _ = d.write_to(&mut buf[at..]);
            let name_at = at + std::mem::size_of::<abi::Dirent>();
            buf[name_at..name_at + item.name.len()].copy_from_slice(item.name);
            used += entry_len + dirent_len;
            true
        };
        self.model
            .readdir(r.fh, nodeid::split(req.h.nodeid).0, r.offset, &mut emit)?;
        Ok(Outcome::Reply(used))
    }
}

fn xattr_reply(r: XattrReply, out: &mut [u8]) -> Outcome {
    match r {
        XattrReply::Size(n) => put(
            out,
            &abi::GetxattrOut {
                size: n,
                padding: 0,
            },
        ),
        XattrReply::Data(v) => match out.get_mut(..v.len()) {
            Some(dst) => {
                dst.copy_from_slice(&v);
                Outcome::Reply(v.len())
            }
            None => Outcome::Error(libc::ERANGE),
        },
    }
}

/// The errno for `e`, logged once here: expected answers (a missing name, a refused write)
/// at debug level, faults as warnings — at most [`WARNINGS_PER_SECOND`] a second: a player
/// retrying a file whose source just vanished must not flood the log (the rest go to debug
/// and are counted in one warning the next second).
pub(crate) fn fail(op: &'static str, ino: u64, e: FsError) -> i32 {
    let errno = e.to_errno();
    if e.is_expected() {
        tracing::debug!(op, ino, errno, error = %e, "fuse op refused");
    } else if WARNINGS.admit() {
        tracing::warn!(op, ino, errno, error = %e, "fuse op failed");
    } else {
        tracing::debug!(op, ino, errno, error = %e, "fuse op failed");
    }
    errno
}

/// Most failure warnings logged in one second.
pub const WARNINGS_PER_SECOND: u64 = 20;

static WARNINGS: WarnBudget = WarnBudget::new();

/// A per-second budget of warnings, shared by every worker (lock-free).
pub(crate) struct WarnBudget {
    /// The second (since the process started) the count is for, and the count, packed
    /// as `second << 32 | count`.
    state: std::sync::atomic::AtomicU64,
    /// Warnings left out since the last report.
    dropped: std::sync::atomic::AtomicU64,
}

impl WarnBudget {
    pub(crate) const fn new() -> WarnBudget {
        WarnBudget {
            state: std::sync::atomic::AtomicU64::new(0),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether one more warning may be logged now.
    pub(crate) fn admit(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            & 0xffff_ffff;
        let mut cur = self.state.load(Relaxed);
        loop {
            let (second, count) = (cur >> 32, cur & 0xffff_ffff);
            let (next, ok) = if second != now {
                ((now << 32) | 1, true)
            } else if count < WARNINGS_PER_SECOND {
                (cur + 1, true)
            } else {
                (cur, false)
            };
            if !ok {
                self.dropped.fetch_add(1, Relaxed);
                return false;
            }
            match self
                .state
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => {
                    if second != now {
                        let dropped = self.dropped.swap(0, Relaxed);
                        if dropped > 0 {
                            tracing::warn!(
                                dropped,
                                "fuse op failures not logged (over {WARNINGS_PER_SECOND} a second)"
                            );
                        }
                    }
                    return true;
                }
                Err(seen) => cur = seen,
            }
        }
    }
}

fn op_name(opcode: u32) -> &'static str {
    match opcode {
        abi::FUSE_GETATTR => "getattr",
        abi::FUSE_OPEN => "open",
        abi::FUSE_READ => "read",
        abi::FUSE_RELEASE => "release",
        abi::FUSE_OPENDIR => "opendir",
        abi::FUSE_READDIR => "readdir",
        abi::FUSE_READDIRPLUS => "readdirplus",
        abi::FUSE_RELEASEDIR => "releasedir",
        abi::FUSE_ACCESS => "access",
        abi::FUSE_GETXATTR => "getxattr",
        abi::FUSE_LISTXATTR => "listxattr",
        abi::FUSE_READLINK => "readlink",
        _ => "write",
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod no_alloc;

#[cfg(test)]
mod semantics;
