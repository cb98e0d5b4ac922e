//! Worker threads: the wake signal that interrupts them, their fds and CPU pinning, the
//! `/dev/fuse` serve loop, and the spawning of `/dev/fuse` and io_uring queue workers.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once};

use fuse_backend_rs::transport::FuseSession;

use crate::abi::{self, Pod};
use crate::dispatch::{Outcome, Req, WorkerIo};
use crate::ring::ReadRing;
use crate::uring;
use crate::FuseError;

use super::{lock, Mounted, Shared, WorkerSlot};

/// The signal [`Unmounter`](super::Unmounter) sends to interrupt workers blocked in
/// `read(2)`: `SIGRTMIN + 3`. Its handler does nothing; it is installed without
/// `SA_RESTART`, so the read returns EINTR and the worker sees the stop flag. Only worker
/// threads are ever sent it.
pub fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_wake_signal(_: libc::c_int) {}

pub(super) fn install_wake_handler() {
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

pub(super) enum WorkerEnd {
    Unmounted,
    Stopped,
    Failed(io::Error),
}

/// What every `/dev/fuse` worker serves with.
pub(super) struct Serving {
    pub(super) dispatcher: Arc<crate::dispatch::Dispatcher>,
    pub(super) bufsize: usize,
    pub(super) uring_reads: bool,
}

/// A worker's own fd: a `FUSE_DEV_IOC_CLONE` of the session fd, or, where `/dev/fuse` cannot
/// be opened (an unprivileged user when the device is mode 0600 and fusermount3 opened it),
/// a dup of the session fd made blocking: workers then share one kernel processing queue.
pub(super) fn worker_fd(session: &FuseSession) -> fuse_backend_rs::transport::Result<File> {
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
        let hlen = std::mem::size_of::<abi::InHeader>();
        let Some(h) = abi::InHeader::read_from(&inbuf[..len]) else {
            tracing::warn!(worker = index, len, "short FUSE request ignored");
            continue;
        };
        // The kernel sends the whole request in one read; a header claiming more than
        // arrived is a malformed request: decode only what arrived.
        let req = Req {
            h,
            op: &inbuf[hlen.min(len)..len],
            data: &[],
        };
        let olen = std::mem::size_of::<abi::OutHeader>();
        let outcome = serving
            .dispatcher
            .handle(&mut io, &req, &mut outbuf[olen..]);
        write_reply(raw, h.unique, outcome, &mut outbuf, index);
        if h.opcode == abi::FUSE_INIT {
            serving.dispatcher.init_replied();
        }
    }
}

/// Sends the reply to request `unique` whose body the dispatcher left after the out-header room
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
pub(super) fn allowed_cpus() -> Vec<usize> {
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

impl Mounted {
    pub(super) fn spawn_worker(
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
    pub(super) fn spawn_queue_worker(
        &mut self,
        qw: uring::QueueWorker,
        cpu: Option<usize>,
        ready: std::sync::mpsc::Sender<io::Result<()>>,
    ) -> Result<(), FuseError> {
        let dispatcher = self.dispatcher.clone();
        self.spawn_thread(format!("musicfs-uring-{}", qw.index), move |_, shared| {
            unblock_wake_signal();
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            let keep = |bufs: Vec<Box<[u8]>>| lock(&shared.uring_buffers).extend(bufs);
            match uring::run(&qw, &dispatcher, &shared.stop, ready, &keep) {
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
}

/// Aborts FUSE connection `dev` (through the fusectl filesystem), failing every pending
/// and future request with ENOTCONN.
fn abort_connection(dev: u64) {
    let path = format!("/sys/fs/fuse/connections/{dev}/abort");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::error!(path, error = %e, "cannot abort the FUSE connection");
    }
}
