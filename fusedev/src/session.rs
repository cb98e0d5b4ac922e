//! Mounting and serving: the FUSE session, the worker threads and their lifecycle.
//!
//! Thread model: `threads` workers, each with its own `/dev/fuse` fd made by
//! `FUSE_DEV_IOC_CLONE`, optionally pinned to one CPU, with its own request and reply
//! buffers, blocking in `read(2)` on its fd. Every cloned fd keeps its own processing queue
//! in the kernel (replies are matched per fd), and a request wakes exactly one blocked reader
//! (the kernel's wait is exclusive), so idle workers do not stampede as they do when many
//! threads `epoll` one shared fd. No async runtime, no lock on the request path.
//!
//! Stopping: an external `umount`/`fusermount3 -u` makes every read fail with ENODEV and the
//! workers return. [`Unmounter::unmount`] detaches the mount, then sets a stop flag and
//! interrupts each still-blocked worker with a signal (see [`wake_signal`]) so `wait`
//! returns even when a process still holds a file open on the detached mount.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use fuse_backend_rs::transport::FuseSession;
use musicfs_core::config::{PassthroughSetting, TransportSetting};
use musicfs_core::health::OriginHealth;
use musicfs_core::snapshot::Snapshot;
use musicfs_storage::Catalog;

use crate::dispatch::Dispatcher;
use crate::fs::{FsConfig, FsModel};
use crate::status::{OriginReads, ServeStatus, Transport};
use crate::uring;
use crate::xattr::TagSource;
use crate::FuseError;

mod features;
mod mountpoint;
mod watchdog;
mod worker;

pub use features::{uring_param_enabled, URING_PARAM};
pub use mountpoint::{check_mountpoint, clear_dead_mount, is_mountpoint};
pub use worker::wake_signal;

use features::{feature_wants, probe_read_ring};
use mountpoint::{detach, probe};
use watchdog::Watchdog;
use worker::{allowed_cpus, install_wake_handler, worker_fd, Serving, WorkerEnd};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Worker threads; 0 means one per CPU this process may run on.
    pub threads: usize,
    /// Kernel cache lifetime of name → inode answers.
    pub entry_timeout: Duration,
    /// Kernel cache lifetime of attributes.
    pub attr_timeout: Duration,
    /// Kernel cache lifetime of "no such name"; zero disables negative caching.
    pub negative_timeout: Duration,
    /// Let users other than the mounting one in (needs `user_allow_other` when not root).
    pub allow_other: bool,
    /// Owner shown on every node; `None`: each node's origin owner (the daemon's uid where
    /// the origin does not say).
    pub uid: Option<u32>,
    /// Group shown on every node; `None`: each node's origin group (the daemon's gid where
    /// the origin does not say).
    pub gid: Option<u32>,
    /// Permission bits cleared from every node's mode.
    pub umask: u32,
    /// Pin worker `i` to the `i`-th CPU of the process's affinity mask.
    pub pin_threads: bool,
    /// Source name shown by `mount` (`musicfs` by default).
    pub fsname: String,
    /// Mount through `fusermount3 -o auto_unmount`, whose helper process unmounts when the
    /// daemon dies, even by SIGKILL. Off: mount(2) directly when root (a killed daemon then
    /// leaves a dead mount until `umount`).
    pub auto_unmount: bool,
    /// The origins files are read from, shared with the daemon's refresh loop (which marks
    /// them offline and back); `None` opens the ones the snapshot records.
    pub origins: Option<Arc<ArcSwap<musicfs_storage::origin::OriginTable>>>,
    /// What answers `/.search` and `/.collections` (none: they do not exist).
    pub finder: Option<Arc<dyn crate::virt::Finder>>,
    /// What tells album folders' extra entries (cover art, sidecars); `None` shows only
    /// tracks.
    pub album_extras: Option<Arc<dyn crate::album::AlbumExtras>>,
    /// Where plays are reported, and how long a track must stay open to count as played.
    pub play_log: Option<(Arc<dyn crate::plays::PlayLog>, Duration)>,
    /// Where file events go (opened, read progress, closed); none: not reported.
    pub events: Option<musicfs_core::events::Events>,
    /// Renditions of tracks with tag edits, kept current by the refresher; none: every
    /// file reads as its source.
    pub renditions: Option<Arc<arc_swap::ArcSwap<musicfs_core::overlay::RenditionSet>>>,
    /// Prefetch of the next tracks (see [`crate::prefetch`]); `None`: off.
    pub prefetch: Option<crate::prefetch::PrefetchConfig>,
    /// Per-operation counts and latencies, when wanted (see [`crate::opstats`]).
    pub op_stats: Option<Arc<crate::opstats::OpStats>>,
    /// Kernel readahead for the mount's bdi, in KiB (root only; best effort).
    pub readahead_kb: Option<u32>,
    /// FUSE passthrough for reads of local sources.
    pub passthrough: PassthroughSetting,
    /// Which transport carries requests.
    pub transport: TransportSetting,
    /// Read sources through a per-worker io_uring (falls back to `pread` without it).
    pub uring_reads: bool,
    /// Write `Y` to `/sys/module/fuse/parameters/enable_uring` before mounting, when the
    /// transport may use io_uring (root only). The daemon never touches it otherwise.
    pub enable_uring_param: bool,
    /// When reads go through the daemon (no passthrough), let the kernel open files
    /// without asking (OPEN answered ENOSYS once): one round trip less per open.
    pub skip_open: bool,
    /// Testing: make the kernel refuse every passthrough registration (a malformed
    /// `fuse_backing_map`), to exercise the plain-read fallback.
    pub refuse_passthrough: bool,
    /// Testing: make the kernel refuse io_uring queue registration (a malformed register
    /// command), to exercise the `/dev/fuse` fallback.
    pub refuse_uring: bool,
    /// Which origins are offline (the daemon's refresh loop updates it): opens of their
    /// tracks answer EIO at once.
    pub origin_health: Arc<OriginHealth>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 0,
            entry_timeout: Duration::from_secs(3600),
            attr_timeout: Duration::from_secs(3600),
            negative_timeout: Duration::from_secs(3600),
            allow_other: false,
            uid: None,
            gid: None,
            umask: 0,
            pin_threads: true,
            fsname: "musicfs".to_string(),
            auto_unmount: true,
            origins: None,
            finder: None,
            album_extras: None,
            play_log: None,
            renditions: None,
            prefetch: None,
            events: None,
            op_stats: None,
            readahead_kb: Some(1024),
            passthrough: PassthroughSetting::Auto,
            transport: TransportSetting::Auto,
            uring_reads: true,
            enable_uring_param: false,
            skip_open: false,
            refuse_passthrough: false,
            refuse_uring: false,
            origin_health: Arc::default(),
        }
    }
}

struct WorkerSlot {
    thread: libc::pthread_t,
    alive: bool,
}

struct Shared {
    mountpoint: PathBuf,
    session: Mutex<Option<FuseSession>>,
    stop: AtomicBool,
    unmounting: AtomicBool,
    slots: Mutex<Vec<WorkerSlot>>,
    live: Mutex<usize>,
    live_cv: Condvar,
    watchdog: Mutex<Option<Watchdog>>,
    /// io_uring entry buffers of finished queue workers, freed once the connection is gone.
    uring_buffers: Mutex<Vec<Box<[u8]>>>,
    /// The mount's device number (its FUSE connection's name under /sys/fs/fuse).
    conn_dev: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few assignments; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn worker_exited(&self, index: usize) {
        if let Some(slot) = lock(&self.slots).get_mut(index) {
            slot.alive = false;
        }
        let mut live = lock(&self.live);
        *live -= 1;
        self.live_cv.notify_all();
    }

    /// Sets the stop flag and interrupts blocked workers until all have returned.
    fn stop_workers(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // A worker may check the flag just before the signal lands and then block in read;
        // re-sending covers that window.
        for _ in 0..500 {
            for slot in lock(&self.slots).iter().filter(|s| s.alive) {
                // SAFETY: the thread is alive (it clears `alive` under this lock before it
                // returns, and is joined only after every slot is dead), so its pthread_t is
                // valid.
                unsafe { libc::pthread_kill(slot.thread, wake_signal()) };
            }
            let live = lock(&self.live);
            let (live, _) = self
                .live_cv
                .wait_timeout_while(live, Duration::from_millis(10), |n| *n > 0)
                .unwrap_or_else(|p| p.into_inner());
            if *live == 0 {
                return;
            }
        }
        tracing::warn!(mountpoint = ?self.mountpoint, "FUSE workers did not stop in 5 s");
    }
}

/// A live mount. Dropping it unmounts and joins the workers.
pub struct Mounted {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<WorkerEnd>>,
    model: Arc<FsModel>,
    dispatcher: Arc<Dispatcher>,
}

/// A handle another thread (a signal handler thread) uses to unmount.
#[derive(Clone)]
pub struct Unmounter {
    shared: Arc<Shared>,
}

/// Mounts `snapshot` at `mountpoint`, with tags from `catalog`, and starts the workers.
/// Returns once the mount answers (the kernel's INIT and a `stat` of the root went through).
pub fn mount(
    mountpoint: &Path,
    snapshot: Arc<ArcSwap<Snapshot>>,
    catalog: Option<Arc<Catalog>>,
    opts: &MountOptions,
) -> Result<Mounted, FuseError> {
    let tags = catalog.map(|c| c as Arc<dyn TagSource>);
    mount_with_tags(mountpoint, snapshot, tags, opts)
}

/// [`mount`] with any [`TagSource`] for the xattrs.
pub fn mount_with_tags(
    mountpoint: &Path,
    snapshot: Arc<ArcSwap<Snapshot>>,
    tags: Option<Arc<dyn TagSource>>,
    opts: &MountOptions,
) -> Result<Mounted, FuseError> {
    let mp = check_mountpoint(mountpoint)?;
    let defaults = FsConfig::default();
    let cfg = FsConfig {
        entry_timeout: opts.entry_timeout,
        attr_timeout: opts.attr_timeout,
        negative_timeout: opts.negative_timeout,
        uid: opts.uid,
        gid: opts.gid,
        umask: opts.umask & 0o777,
        skip_open: opts.skip_open,
        origin_health: opts.origin_health.clone(),
        ..defaults
    };
    let model = match &opts.origins {
        Some(origins) => FsModel::with_origins(snapshot, origins.clone(), tags, cfg),
        None => FsModel::new(snapshot, tags, cfg),
    };
    let model = match &opts.finder {
        Some(finder) => model.with_finder(finder.clone()),
        None => model,
    };
    let model = match &opts.album_extras {
        Some(extras) => model.with_album_extras(extras.clone()),
        None => model,
    };
    let model = match &opts.play_log {
        Some((log, after)) => model.with_play_log(log.clone(), *after),
        None => model,
    };
    let model = match &opts.renditions {
        Some(r) => model.with_renditions(r.clone()),
        None => model,
    };
    let model = match opts.prefetch {
        Some(cfg) => model.with_prefetch(cfg),
        None => model,
    };
    let model = Arc::new(match &opts.events {
        Some(events) => model.with_events(events.clone()),
        None => model,
    });
    let wants = feature_wants(opts)?;
    let dispatcher = Dispatcher::new(model.clone(), wants, opts.refuse_passthrough);
    let dispatcher = Arc::new(match &opts.op_stats {
        Some(stats) => dispatcher.with_stats(stats.clone()),
        None => dispatcher,
    });
    let uring_reads = opts.uring_reads && probe_read_ring();
    let session_err = |e: fuse_backend_rs::transport::Error| FuseError::Session {
        path: mp.clone(),
        reason: e.to_string(),
    };
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    // fusermount3's own auto_unmount helper (3.14) checks the dead mount by opening it as
    // root, which the kernel refuses for another user's mount without allow_other, so it
    // never unmounts an unprivileged mount; and a daemon killed while fusermount3 is still
    // handing it the fd kills fusermount3 with SIGPIPE after it mounted. A watchdog of ours,
    // started before the mount, covers both: whenever this process dies, it unmounts.
    let watchdog = opts.auto_unmount.then(|| Watchdog::spawn(&mp));
    let mut session = FuseSession::new_with_autounmount(
        &mp,
        &opts.fsname,
        "musicfs",
        true,
        opts.auto_unmount && root,
    )
    .map_err(session_err)?;
    session.set_allow_other(opts.allow_other);
    if let Err(e) = session.mount() {
        if let Some(Ok(w)) = watchdog {
            w.disarm();
        }
        return Err(session_err(e));
    }
    let bufsize = session.bufsize();
    let mut fds = Vec::new();
    let cpus = if opts.pin_threads {
        allowed_cpus()
    } else {
        Vec::new()
    };
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let cloned: Result<(), FuseError> = (0..threads).try_for_each(|_| {
        fds.push(worker_fd(&session).map_err(session_err)?);
        Ok(())
    });
    let shared = Arc::new(Shared {
        mountpoint: mp.clone(),
        session: Mutex::new(Some(session)),
        stop: AtomicBool::new(false),
        unmounting: AtomicBool::new(false),
        slots: Mutex::new(Vec::new()),
        live: Mutex::new(0),
        live_cv: Condvar::new(),
        watchdog: Mutex::new(None),
        uring_buffers: Mutex::new(Vec::new()),
        conn_dev: std::sync::atomic::AtomicU64::new(0),
    });
    // From here a failure must unmount: `Mounted`'s Drop does it.
    let mut mounted = Mounted {
        shared: shared.clone(),
        workers: Vec::new(),
        model,
        dispatcher: dispatcher.clone(),
    };
    match watchdog {
        Some(Ok(w)) => *lock(&shared.watchdog) = Some(w),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no unmount watchdog: a killed daemon will leave a dead mount")
        }
        None => {}
    }
    cloned?;
    install_wake_handler();
    let serving = Serving {
        dispatcher: dispatcher.clone(),
        bufsize,
        uring_reads,
    };
    let serving = Arc::new(serving);
    for (index, fd) in fds.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        mounted.spawn_worker(index, fd, serving.clone(), cpu)?;
    }
    // Once INIT grants io_uring, the kernel holds every request until all queues are
    // registered (or a registration fails): register before the first probe.
    let negotiated = dispatcher.wait_init(INIT_WAIT).unwrap_or_default();
    let transport = if negotiated.uring() {
        start_uring(&mut mounted, threads, &cpus, uring_reads, opts)?
    } else {
        Transport::Dev
    };
    let meta = probe(&mp)?;
    shared.conn_dev.store(meta.dev(), Ordering::SeqCst);
    if let Some(kb) = opts.readahead_kb {
        set_readahead(meta.dev(), kb);
    }
    let model = mounted.model.clone();
    let status = model.status();
    status.set_origin_reads(if uring_reads {
        OriginReads::IoUring
    } else {
        OriginReads::Pread
    });
    let passthrough = negotiated.passthrough() && dispatcher.backing().enabled();
    status.set_passthrough(passthrough);
    if opts.passthrough == PassthroughSetting::On && !passthrough {
        return Err(FuseError::Unavailable {
            feature: "FUSE passthrough",
            reason: "the kernel did not grant FUSE_PASSTHROUGH at INIT".into(),
        });
    }
    if transport == Transport::Dev && opts.transport == TransportSetting::Uring {
        return Err(FuseError::Unavailable {
            feature: "FUSE-over-io_uring",
            reason: "the kernel did not grant FUSE_OVER_IO_URING at INIT".into(),
        });
    }
    status.set_transport(transport);
    tracing::info!(
        mountpoint = ?mp,
        threads,
        pinned = !cpus.is_empty(),
        transport = status.value("transport").unwrap_or("?"),
        passthrough = status.value("passthrough").unwrap_or("?"),
        origin_reads = status.value("origin_reads").unwrap_or("?"),
        "mounted"
    );
    Ok(mounted)
}

/// Starts one io_uring queue worker per `/dev/fuse` worker (pinned alike) and waits for
/// each to report its registration. A refusal falls back to `/dev/fuse` (the kernel keeps
/// routing requests there until every queue is registered), unless the options require
/// io_uring.
fn start_uring(
    mounted: &mut Mounted,
    threads: usize,
    cpus: &[usize],
    uring_reads: bool,
    opts: &MountOptions,
) -> Result<Transport, FuseError> {
    let plan = uring::assign_queues(uring::queue_count(), threads, cpus);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut started = 0;
    for (index, qids) in plan.into_iter().enumerate() {
        if qids.is_empty() {
            continue;
        }
        let fd = {
            let session = lock(&mounted.shared.session);
            let session = session.as_ref().ok_or_else(|| FuseError::Session {
                path: mounted.shared.mountpoint.clone(),
                reason: "the session is closed".into(),
            })?;
            worker_fd(session).map_err(|e| FuseError::Session {
                path: mounted.shared.mountpoint.clone(),
                reason: e.to_string(),
            })?
        };
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        let qw = uring::QueueWorker {
            index,
            fd,
            qids,
            uring_reads,
            refuse: opts.refuse_uring,
        };
        mounted.spawn_queue_worker(qw, cpu, tx.clone())?;
        started += 1;
    }
    drop(tx);
    let mut failure = None;
    for _ in 0..started {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e.to_string());
            }
            Err(_) => {
                failure.get_or_insert("a queue worker ended before registering".to_string());
            }
        }
    }
    match failure {
        None => Ok(Transport::Uring),
        Some(reason) if opts.transport == TransportSetting::Uring => Err(FuseError::Unavailable {
            feature: "FUSE-over-io_uring",
            reason,
        }),
        Some(reason) => {
            tracing::warn!(%reason, "FUSE-over-io_uring refused by the kernel; serving on /dev/fuse");
            Ok(Transport::Dev)
        }
    }
}

/// How long mount waits for the kernel's INIT before probing anyway (the probe then
/// reports a mount that does not answer).
const INIT_WAIT: Duration = Duration::from_secs(30);

impl Mounted {
    /// A handle that unmounts from another thread and makes [`Mounted::wait`] return.
    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            shared: self.shared.clone(),
        }
    }

    /// A notifier for kernel cache invalidation, on its own cloned `/dev/fuse` fd.
    pub fn notifier(&self) -> Result<crate::notify::Notifier, FuseError> {
        let session = lock(&self.shared.session);
        let session = session.as_ref().ok_or_else(|| FuseError::Session {
            path: self.shared.mountpoint.clone(),
            reason: "the session is closed".into(),
        })?;
        let fd = worker_fd(session).map_err(|e| FuseError::Session {
            path: self.shared.mountpoint.clone(),
            reason: e.to_string(),
        })?;
        Ok(crate::notify::Notifier::new(fd))
    }

    /// How the mount is being served (transport, passthrough, origin reads).
    pub fn status(&self) -> &ServeStatus {
        self.model.status()
    }

    /// Number of passthrough backing ids registered now (one per inode open in
    /// passthrough mode).
    pub fn passthrough_files(&self) -> usize {
        self.dispatcher.backing().registered()
    }

    /// Requests answered through FUSE-over-io_uring queues so far.
    pub fn uring_requests(&self) -> u64 {
        self.dispatcher.uring_requests()
    }

    /// The (canonical) mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.shared.mountpoint
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// The filesystem model being served (open-handle counts, the snapshot it reads).
    pub fn model(&self) -> &Arc<FsModel> {
        &self.model
    }

    /// Blocks until the filesystem is unmounted (externally, or by an [`Unmounter`]), then
    /// releases every thread, fd and handle. An error means a worker stopped on a transport
    /// failure rather than an unmount.
    pub fn wait(mut self) -> Result<(), FuseError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), FuseError> {
        {
            let live = lock(&self.shared.live);
            drop(
                self.shared
                    .live_cv
                    .wait_while(live, |n| *n > 0)
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
        let mut first_err = None;
        for (index, handle) in self.workers.drain(..).enumerate() {
            match handle.join() {
                Ok(WorkerEnd::Unmounted) | Ok(WorkerEnd::Stopped) => {}
                Ok(WorkerEnd::Failed(source)) => {
                    first_err.get_or_insert(FuseError::Worker { index, source });
                }
                Err(_) => {
                    first_err.get_or_insert(FuseError::Worker {
                        index,
                        source: io::Error::other("worker panicked"),
                    });
                }
            }
        }
        // Closing the session fd (and, with auto_unmount, the fusermount3 keep-alive
        // socket) ends the connection; nothing is mounted any more at this point.
        drop(lock(&self.shared.session).take());
        lock(&self.shared.uring_buffers).clear();
        self.dispatcher.backing().clear();
        if let Some(w) = lock(&self.shared.watchdog).take() {
            w.disarm();
        }
        self.model.close_all();
        tracing::info!(mountpoint = ?self.shared.mountpoint, "unmounted");
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.workers.is_empty() && lock(&self.shared.session).is_none() {
            return;
        }
        if let Err(e) = self.unmounter().unmount() {
            tracing::warn!(error = %e, "unmount on drop");
        }
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "FUSE workers on drop");
        }
    }
}

impl Unmounter {
    /// Detaches the mount (lazily: processes inside it keep their cwd but lose service),
    /// stops the workers and makes [`Mounted::wait`] return. Calling it twice is harmless.
    pub fn unmount(&self) -> Result<(), FuseError> {
        let sh = &self.shared;
        if sh.unmounting.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let detached = detach(&sh.mountpoint);
        drop(lock(&sh.session).take());
        sh.stop_workers();
        detached
    }
}

fn set_readahead(dev: u64, kb: u32) {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!(path, kb, "readahead set"),
        Err(e) => tracing::debug!(path, error = %e, "cannot set readahead"),
    }
}
