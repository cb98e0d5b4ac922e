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

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, FuseSession, Reader};
use musicfs_core::snapshot::Snapshot;
use musicfs_storage::Catalog;

use crate::abi::{self, Pod};
use crate::fs::{FsConfig, FsModel};
use crate::fuse::FuseFs;
use crate::native::{Native, Outcome, Req, WorkerIo};
use crate::negotiate::Wants;
use crate::ring::ReadRing;
use crate::status::{OriginReads, PassthroughMode, ServeStatus, Transport, TransportMode};
use crate::uring;
use crate::xattr::TagSource;
use crate::FuseError;

/// `statfs` type of a FUSE mount.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

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
    /// Owner shown on every node; `None` is the daemon's uid.
    pub uid: Option<u32>,
    /// Group shown on every node; `None` is the daemon's gid.
    pub gid: Option<u32>,
    /// Pin worker `i` to the `i`-th CPU of the process's affinity mask.
    pub pin_threads: bool,
    /// Source name shown by `mount` (`musicfs` by default).
    pub fsname: String,
    /// Mount through `fusermount3 -o auto_unmount`, whose helper process unmounts when the
    /// daemon dies, even by SIGKILL. Off: mount(2) directly when root (a killed daemon then
    /// leaves a dead mount until `umount`).
    pub auto_unmount: bool,
    /// Kernel readahead for the mount's bdi, in KiB (root only; best effort).
    pub readahead_kb: Option<u32>,
    /// FUSE passthrough for reads of local sources.
    pub passthrough: PassthroughMode,
    /// Which transport carries requests.
    pub transport: TransportMode,
    /// Read sources through a per-worker io_uring (falls back to `pread` without it).
    pub uring_reads: bool,
    /// Write `Y` to `/sys/module/fuse/parameters/enable_uring` before mounting, when the
    /// transport may use io_uring (root only). The daemon never touches it otherwise.
    pub enable_uring_param: bool,
    /// Testing: make the kernel refuse every passthrough registration (a malformed
    /// `fuse_backing_map`), to exercise the plain-read fallback.
    pub refuse_passthrough: bool,
    /// Testing: make the kernel refuse io_uring queue registration (a malformed register
    /// command), to exercise the `/dev/fuse` fallback.
    pub refuse_uring: bool,
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
            pin_threads: true,
            fsname: "musicfs".to_string(),
            auto_unmount: true,
            readahead_kb: Some(1024),
            passthrough: PassthroughMode::Auto,
            transport: TransportMode::Auto,
            uring_reads: true,
            enable_uring_param: false,
            refuse_passthrough: false,
            refuse_uring: false,
        }
    }
}

/// The signal [`Unmounter`] sends to interrupt workers blocked in `read(2)`: `SIGRTMIN + 3`.
/// Its handler does nothing; it is installed without `SA_RESTART`, so the read returns
/// EINTR and the worker sees the stop flag. Only worker threads are ever sent it.
pub fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_wake_signal(_: libc::c_int) {}

fn install_wake_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we set a handler that does nothing (so it is
        // async-signal-safe) and an empty mask; flags 0 leaves SA_RESTART off on purpose.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            if libc::sigaction(wake_signal(), &sa, std::ptr::null_mut()) != 0 {
                tracing::warn!(error = %io::Error::last_os_error(), "cannot install FUSE worker wake handler");
            }
        }
    });
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

/// Unprivileged auto-unmount: a `sh` in its own session reading a pipe whose write end only
/// the daemon holds. A clean stop writes a line (the watchdog exits); if the daemon dies, the
/// read sees EOF and the watchdog runs `fusermount3 -u -z` on the mountpoint.
struct Watchdog {
    child: std::process::Child,
}

impl Watchdog {
    fn spawn(mp: &Path) -> io::Result<Watchdog> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"if read -r _; then exit 0; fi; exec fusermount3 -u -z -q -- "$0""#)
            .arg(mp)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe, as required between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        Ok(Watchdog {
            child: cmd.spawn()?,
        })
    }

    fn disarm(mut self) {
        use std::io::Write;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
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
    native: Arc<Native>,
}

/// A handle another thread (a signal handler thread) uses to unmount.
#[derive(Clone)]
pub struct Unmounter {
    shared: Arc<Shared>,
}

enum WorkerEnd {
    Unmounted,
    Stopped,
    Failed(io::Error),
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
        uid: opts.uid.unwrap_or(defaults.uid),
        gid: opts.gid.unwrap_or(defaults.gid),
    };
    let model = Arc::new(FsModel::new(snapshot, tags, cfg));
    let server = Arc::new(Server::new(FuseFs::new(model.clone())));
    let wants = feature_wants(opts)?;
    let native = Arc::new(Native::new(model.clone(), wants, opts.refuse_passthrough));
    let uring_reads = opts.uring_reads && probe_read_ring();
    let session_err = |e: fuse_backend_rs::transport::Error| FuseError::Session {
        path: mp.clone(),
        reason: e.to_string(),
    };
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    // fusermount3's own auto_unmount helper (3.14) checks the dead mount by opening it as
    // root, which the kernel refuses for another user's mount without allow_other, so it
    // never unmounts an unprivileged mount: a watchdog of ours does it then.
    let mut session = FuseSession::new_with_autounmount(
        &mp,
        &opts.fsname,
        "musicfs",
        true,
        opts.auto_unmount && root,
    )
    .map_err(session_err)?;
    session.set_allow_other(opts.allow_other);
    session.mount().map_err(session_err)?;
    let watchdog = (opts.auto_unmount && !root).then(|| Watchdog::spawn(&mp));
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
        native: native.clone(),
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
        server,
        native: native.clone(),
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
    let negotiated = native.wait_init(INIT_WAIT).unwrap_or_default();
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
    let passthrough = negotiated.passthrough() && native.backing().enabled();
    status.set_passthrough(passthrough);
    if opts.passthrough == PassthroughMode::On && !passthrough {
        return Err(FuseError::Unavailable {
            feature: "FUSE passthrough",
            reason: "the kernel did not grant FUSE_PASSTHROUGH at INIT".into(),
        });
    }
    if transport == Transport::Dev && opts.transport == TransportMode::Uring {
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
        Some(reason) if opts.transport == TransportMode::Uring => Err(FuseError::Unavailable {
            feature: "FUSE-over-io_uring",
            reason,
        }),
        Some(reason) => {
            tracing::warn!(%reason, "FUSE-over-io_uring refused by the kernel; serving on /dev/fuse");
            Ok(Transport::Dev)
        }
    }
}

/// Aborts FUSE connection `dev` (through the fusectl filesystem), failing every pending
/// and future request with ENOTCONN.
fn abort_connection(dev: u64) {
    let path = format!("/sys/fs/fuse/connections/{dev}/abort");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::error!(path, error = %e, "cannot abort the FUSE connection");
    }
}

/// How long mount waits for the kernel's INIT before probing anyway (the probe then
/// reports a mount that does not answer).
const INIT_WAIT: Duration = Duration::from_secs(30);

/// What every `/dev/fuse` worker serves with.
struct Serving {
    server: Arc<Server<FuseFs>>,
    native: Arc<Native>,
    bufsize: usize,
    uring_reads: bool,
}

/// Whether this process holds `CAP_SYS_ADMIN` (passthrough's backing-open needs it).
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Path of the kernel's switch for FUSE-over-io_uring (kernel 6.14+).
pub const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the kernel currently allows FUSE-over-io_uring.
pub fn uring_param_enabled() -> bool {
    std::fs::read_to_string(URING_PARAM).is_ok_and(|v| v.trim() == "Y")
}

/// Which optional INIT features to ask for, failing early when the options require one
/// this process or kernel cannot have.
fn feature_wants(opts: &MountOptions) -> Result<Wants, FuseError> {
    let cap = has_cap_sys_admin();
    let passthrough = match opts.passthrough {
        PassthroughMode::Off => false,
        PassthroughMode::Auto => {
            if !cap {
                tracing::info!(
                    "no CAP_SYS_ADMIN: FUSE passthrough off, reads go through the daemon"
                );
            }
            cap
        }
        PassthroughMode::On if !cap => {
            return Err(FuseError::Unavailable {
                feature: "FUSE passthrough",
                reason: "it needs CAP_SYS_ADMIN".into(),
            })
        }
        PassthroughMode::On => true,
    };
    if opts.transport != TransportMode::Dev && opts.enable_uring_param && !uring_param_enabled() {
        match std::fs::write(URING_PARAM, "Y") {
            Ok(()) => tracing::info!(param = URING_PARAM, "enabled FUSE-over-io_uring"),
            Err(e) => {
                tracing::warn!(param = URING_PARAM, error = %e, "cannot enable FUSE-over-io_uring")
            }
        }
    }
    let uring = match opts.transport {
        TransportMode::Dev => false,
        TransportMode::Auto => {
            let on = uring_param_enabled();
            if !on {
                tracing::info!(
                    param = URING_PARAM,
                    "FUSE-over-io_uring is off in the kernel; using /dev/fuse"
                );
            }
            on
        }
        TransportMode::Uring if !uring_param_enabled() => {
            return Err(FuseError::Unavailable {
                feature: "FUSE-over-io_uring",
                reason: format!("{URING_PARAM} is not Y (see --enable-uring-param)"),
            })
        }
        TransportMode::Uring => true,
    };
    Ok(Wants { passthrough, uring })
}

/// Whether this process may create an io_uring (seccomp or `kernel.io_uring_disabled` may
/// forbid it); workers read sources with `pread` otherwise.
fn probe_read_ring() -> bool {
    match ReadRing::new() {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(error = %e, "io_uring unavailable; origin reads use pread");
            false
        }
    }
}

impl Mounted {
    fn spawn_worker(
        &mut self,
        index: usize,
        fd: File,
        serving: Arc<Serving>,
        cpu: Option<usize>,
    ) -> Result<(), FuseError> {
        self.spawn_thread(format!("musicfs-fuse-{index}"), move |slot, shared| {
            let end = serve(slot, &fd, &serving, cpu, shared);
            drop(fd);
            end
        })
    }

    /// Starts a queue worker for FUSE-over-io_uring; it reports its registration on `ready`.
    fn spawn_queue_worker(
        &mut self,
        qw: uring::QueueWorker,
        cpu: Option<usize>,
        ready: std::sync::mpsc::Sender<io::Result<()>>,
    ) -> Result<(), FuseError> {
        let native = self.native.clone();
        self.spawn_thread(format!("musicfs-uring-{}", qw.index), move |_, shared| {
            unblock_wake_signal();
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            let keep = |bufs: Vec<Box<[u8]>>| lock(&shared.uring_buffers).extend(bufs);
            match uring::run(&qw, &native, &shared.stop, ready, &keep) {
                uring::QueueEnd::Closed => WorkerEnd::Unmounted,
                uring::QueueEnd::Stopped | uring::QueueEnd::Refused => WorkerEnd::Stopped,
                uring::QueueEnd::Failed(e) => {
                    // Requests already routed to this queue would wait forever: end the
                    // connection so callers get ENOTCONN instead of hanging.
                    tracing::error!(worker = qw.index, error = %e, "FUSE io_uring queue failed; aborting the connection");
                    abort_connection(shared.conn_dev.load(Ordering::SeqCst));
                    WorkerEnd::Failed(e)
                }
            }
        })
    }

    fn spawn_thread(
        &mut self,
        name: String,
        body: impl FnOnce(usize, &Shared) -> WorkerEnd + Send + 'static,
    ) -> Result<(), FuseError> {
        let shared = self.shared.clone();
        // Hold the slot table while spawning so a worker that ends at once finds its slot.
        let mut slots = lock(&self.shared.slots);
        let index = slots.len();
        *lock(&self.shared.live) += 1;
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let end = body(index, &shared);
            shared.worker_exited(index);
            end
        });
        match spawned {
            Ok(handle) => {
                slots.push(WorkerSlot {
                    thread: handle.as_pthread_t(),
                    alive: true,
                });
                self.workers.push(handle);
                Ok(())
            }
            Err(source) => {
                *lock(&self.shared.live) -= 1;
                Err(FuseError::SpawnWorker { index, source })
            }
        }
    }

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
        self.native.backing().registered()
    }

    /// Requests answered through FUSE-over-io_uring queues so far.
    pub fn uring_requests(&self) -> u64 {
        self.native.uring_requests()
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
        self.native.backing().clear();
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

/// A worker's own fd: a `FUSE_DEV_IOC_CLONE` of the session fd, or, where `/dev/fuse` cannot
/// be opened (an unprivileged user when the device is mode 0600 and fusermount3 opened it),
/// a dup of the session fd made blocking: workers then share one kernel processing queue.
fn worker_fd(session: &FuseSession) -> fuse_backend_rs::transport::Result<File> {
    use fuse_backend_rs::transport::Error as TErr;
    match session.clone_fuse_file() {
        Ok(f) => Ok(f),
        Err(clone_err) => {
            let file = session
                .get_fuse_file()
                .ok_or_else(|| TErr::SessionFailure("no session fd".into()))?;
            let dup = file.try_clone().map_err(TErr::IoError)?;
            // SAFETY: F_GETFL/F_SETFL on an fd we own change only its status flags.
            let rc = unsafe {
                let flags = libc::fcntl(dup.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(dup.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK)
            };
            if rc != 0 {
                return Err(TErr::IoError(io::Error::last_os_error()));
            }
            tracing::warn!(error = %clone_err, "cannot clone /dev/fuse; workers share the session fd");
            Ok(dup)
        }
    }
}

fn serve(
    index: usize,
    fd: &File,
    serving: &Serving,
    cpu: Option<usize>,
    shared: &Shared,
) -> WorkerEnd {
    unblock_wake_signal();
    if let Some(cpu) = cpu {
        pin_to(cpu);
    }
    let raw = fd.as_raw_fd();
    let server = &serving.server;
    let mut io = WorkerIo {
        dev_fd: raw,
        ring: serving.uring_reads.then(ReadRing::new).and_then(|r| {
            r.map_err(|e| tracing::warn!(worker = index, error = %e, "no io_uring for origin reads; pread"))
                .ok()
        }),
    };
    // Separate request and reply buffers, allocated once: the crate's own channel aliases
    // one buffer for both, which relies on handlers never reading after writing.
    let mut inbuf = vec![0u8; serving.bufsize];
    let mut outbuf = vec![0u8; serving.bufsize];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return WorkerEnd::Stopped;
        }
        // SAFETY: reads at most inbuf.len() bytes into memory inbuf owns; raw stays open
        // while `fd` is borrowed.
        let n = unsafe { libc::read(raw, inbuf.as_mut_ptr().cast(), inbuf.len()) };
        if n <= 0 {
            let err = io::Error::last_os_error();
            match (n, err.raw_os_error()) {
                (0, _) | (_, Some(libc::ENODEV)) => return WorkerEnd::Unmounted,
                // ENOENT: the request was interrupted before we read it.
                (_, Some(libc::EINTR | libc::EAGAIN | libc::ENOENT)) => continue,
                _ => {
                    tracing::error!(worker = index, error = %err, "reading /dev/fuse");
                    return WorkerEnd::Failed(err);
                }
            }
        }
        let len = n as usize;
        if let Some(h) = abi::InHeader::read_from(&inbuf[..len]) {
            if Native::handles_on_dev(h.opcode) {
                let hlen = std::mem::size_of::<abi::InHeader>();
                let req = Req {
                    h,
                    op: &inbuf[hlen..len],
                    data: &[],
                };
                let olen = std::mem::size_of::<abi::OutHeader>();
                let outcome = serving.native.handle(&mut io, &req, &mut outbuf[olen..]);
                write_reply(raw, h.unique, outcome, &mut outbuf, index);
                if h.opcode == abi::FUSE_INIT {
                    serving.native.init_replied();
                }
                continue;
            }
        }
        let reader = match Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut inbuf[..len])) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(worker = index, error = %e, "bad FUSE request buffer");
                continue;
            }
        };
        let writer = match FuseDevWriter::<()>::new(raw, &mut outbuf) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(worker = index, error = %e, "FUSE reply buffer");
                continue;
            }
        };
        if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
            tracing::debug!(worker = index, error = %e, "FUSE request not answered");
        }
    }
}

/// Sends the reply to request `unique` whose body `native` left after the out-header room
/// in `outbuf`, header and body in one `write(2)`.
fn write_reply(fd: i32, unique: u64, outcome: Outcome, outbuf: &mut [u8], worker: usize) {
    let olen = std::mem::size_of::<abi::OutHeader>();
    let (body, error) = match outcome {
        Outcome::Silent => return,
        Outcome::Reply(n) => (n, 0),
        Outcome::Error(e) => (0, -e),
    };
    let total = olen + body;
    let header = abi::OutHeader {
        len: total as u32,
        error,
        unique,
    };
    let _ = header.write_to(outbuf);
    // SAFETY: writes `total` bytes that `outbuf` holds (the body was written within it).
    let n = unsafe { libc::write(fd, outbuf.as_ptr().cast(), total) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the request was interrupted and is gone; nothing to answer.
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::debug!(worker, error = %e, "FUSE reply not delivered");
        }
    }
}

fn unblock_wake_signal() {
    // SAFETY: sigset operations on a local, zero-initialised set; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, wake_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: as above; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(cpu, error = %io::Error::last_os_error(), "cannot pin FUSE worker");
    }
}

/// `stat`s the mount root (which waits for INIT and a GETATTR round trip) and checks that a
/// FUSE filesystem now sits there.
fn probe(mp: &Path) -> Result<std::fs::Metadata, FuseError> {
    let err = |source| FuseError::NotAnswering {
        path: mp.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(mp).map_err(err)?;
    let cpath = std::ffi::CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: statfs writes into a zeroed local struct; cpath is NUL-terminated.
    let fs_type = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(cpath.as_ptr(), &mut st) != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        st.f_type
    };
    if fs_type as i64 != FUSE_SUPER_MAGIC {
        return Err(err(io::Error::other(format!(
            "filesystem type {fs_type:#x} is not FUSE"
        ))));
    }
    Ok(meta)
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

fn detach(mp: &Path) -> Result<(), FuseError> {
    let fail = |reason: String| FuseError::Unmount {
        path: mp.to_path_buf(),
        reason,
    };
    let cpath = std::ffi::CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| fail("path contains NUL".into()))?;
    // SAFETY: cpath is a valid NUL-terminated path.
    if unsafe { libc::umount2(cpath.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Already gone (unmounted externally).
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        Some(libc::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "-q", "--"])
                .arg(mp)
                .status()
                .map_err(|e| fail(format!("fusermount3: {e}")))?;
            if status.success() || !is_mountpoint(mp).unwrap_or(true) {
                Ok(())
            } else {
                Err(fail(format!("fusermount3 -u exited with {status}")))
            }
        }
        _ => Err(fail(err.to_string())),
    }
}

/// Checks that `path` can take a mount: it exists, is a directory, and nothing (not even a
/// dead FUSE mount) is mounted there. Returns the canonical path.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, FuseError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FuseError::MountpointMissing(path.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(FuseError::DeadMount(path.to_path_buf()))
        }
        Err(source) => {
            return Err(FuseError::Mountpoint {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(FuseError::MountpointNotDirectory(path.to_path_buf()));
    }
    let canon = path
        .canonicalize()
        .map_err(|source| FuseError::Mountpoint {
            path: path.to_path_buf(),
            source,
        })?;
    let mounted = is_mountpoint(&canon).map_err(|source| FuseError::Mountpoint {
        path: path.to_path_buf(),
        source,
    })?;
    if mounted {
        return Err(FuseError::AlreadyMounted(canon));
    }
    Ok(canon)
}

/// Whether `path` (canonical) is a mount point in this process's mount namespace.
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    Ok(info
        .split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .any(|field| unescape_mountinfo(field) == want))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (field[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode_spaces_and_backslashes() {
        assert_eq!(unescape_mountinfo(br"/mnt/my\040music"), b"/mnt/my music");
        assert_eq!(unescape_mountinfo(br"/a\134b"), b"/a\\b");
        assert_eq!(unescape_mountinfo(br"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(br"/trailing\04"), br"/trailing\04");
    }

    #[test]
    fn root_is_a_mountpoint_and_a_fresh_dir_is_not() {
        assert!(is_mountpoint(Path::new("/")).unwrap_or(false));
        let dir = tempfile::tempdir().expect("tempdir");
        let canon = dir.path().canonicalize().expect("canon");
        assert!(!is_mountpoint(&canon).expect("mountinfo"));
    }

    #[test]
    fn mountpoint_checks_give_distinct_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        assert!(matches!(
            check_mountpoint(&missing),
            Err(FuseError::MountpointMissing(_))
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(
            check_mountpoint(&file),
            Err(FuseError::MountpointNotDirectory(_))
        ));
        assert!(matches!(
            check_mountpoint(Path::new("/")),
            Err(FuseError::AlreadyMounted(_))
        ));
        assert!(check_mountpoint(dir.path()).is_ok());
    }
}
