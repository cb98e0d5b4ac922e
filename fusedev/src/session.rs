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

use crate::fs::{FsConfig, FsModel};
use crate::fuse::FuseFs;
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
    });
    // From here a failure must unmount: `Mounted`'s Drop does it.
    let mut mounted = Mounted {
        shared: shared.clone(),
        workers: Vec::new(),
        model,
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
    for (index, fd) in fds.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        mounted.spawn_worker(index, fd, server.clone(), bufsize, cpu)?;
    }
    let meta = probe(&mp)?;
    if let Some(kb) = opts.readahead_kb {
        set_readahead(meta.dev(), kb);
    }
    tracing::info!(mountpoint = ?mp, threads, pinned = !cpus.is_empty(), "mounted");
    Ok(mounted)
}

impl Mounted {
    fn spawn_worker(
        &mut self,
        index: usize,
        fd: File,
        server: Arc<Server<FuseFs>>,
        bufsize: usize,
        cpu: Option<usize>,
    ) -> Result<(), FuseError> {
        let shared = self.shared.clone();
        // Hold the slot table while spawning so a worker that ends at once finds its slot.
        let mut slots = lock(&self.shared.slots);
        *lock(&self.shared.live) += 1;
        let spawned = std::thread::Builder::new()
            .name(format!("musicfs-fuse-{index}"))
            .spawn(move || {
                let end = serve(index, &fd, &server, bufsize, cpu, &shared);
                drop(fd);
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
    server: &Server<FuseFs>,
    bufsize: usize,
    cpu: Option<usize>,
    shared: &Shared,
) -> WorkerEnd {
    unblock_wake_signal();
    if let Some(cpu) = cpu {
        pin_to(cpu);
    }
    let raw = fd.as_raw_fd();
    // Separate request and reply buffers, allocated once: the crate's own channel aliases
    // one buffer for both, which relies on handlers never reading after writing.
    let mut inbuf = vec![0u8; bufsize];
    let mut outbuf = vec![0u8; bufsize];
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
