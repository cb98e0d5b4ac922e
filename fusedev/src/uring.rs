//! FUSE-over-io_uring (protocol 7.42, kernel 6.14+): the kernel queues each request on the
//! ring queue of the CPU its caller runs on, and a worker pinned to that CPU answers it with
//! one `IORING_OP_URING_CMD` that commits the reply and fetches the next request.
//!
//! Every worker owns one 128-byte-SQE ring and serves one or more queues (one queue per
//! possible CPU; the kernel only switches to the ring once every queue has an entry). Each
//! entry is a header buffer (`fuse_uring_req_header`: in/out header, per-op struct, entry
//! info) and a payload buffer of the connection's largest request. FORGET, INTERRUPT and
//! notifications keep using `/dev/fuse`, whose workers stay up beside these.
//!
//! Requests are answered by [`Dispatcher`], which writes replies straight into the payload
//! buffer (fuse-backend-rs's writer can only write to a file descriptor).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::abi::{self, InHeader, OutHeader, Pod, UringCmdReq, UringEntInOut};
use crate::dispatch::{Dispatcher, Outcome, Req, WorkerIo};
use crate::negotiate::MAX_PAYLOAD;
use crate::ring::ReadRing;

/// Ring entries per queue: one being answered while the next request waits in the other.
pub const QUEUE_DEPTH: usize = 2;

const OP_IN_AT: usize = abi::FUSE_URING_IN_OUT_HEADER_SZ;
const ENT_IN_OUT_AT: usize = OP_IN_AT + abi::FUSE_URING_OP_IN_OUT_SZ;
const HEADER_LEN: usize = std::mem::size_of::<InHeader>();

/// How one queue worker is set up.
pub struct QueueWorker {
    /// Worker number (for logs).
    pub index: usize,
    /// Its own fd on the connection (a `FUSE_DEV_IOC_CLONE` of the session fd).
    pub fd: File,
    /// Queue ids (CPU numbers) it serves.
    pub qids: Vec<u16>,
    /// Read sources through an io_uring of its own.
    pub uring_reads: bool,
    /// Testing: register with a malformed command so the kernel refuses.
    pub refuse: bool,
}

/// How a queue worker ended.
pub enum QueueEnd {
    /// The connection went away (unmount).
    Closed,
    /// The stop flag was raised.
    Stopped,
    /// The kernel refused the registration (the mount stays on `/dev/fuse`).
    Refused,
    /// The ring failed while serving.
    Failed(io::Error),
}

/// One ring entry's buffers. Their addresses are handed to the kernel at registration.
struct Entry {
    qid: u16,
    header: Box<[u8]>,
    payload: Box<[u8]>,
    iov: [libc::iovec; 2],
}

impl Entry {
    fn new(qid: u16) -> Entry {
        let mut header = vec![0u8; abi::FUSE_URING_REQ_HEADER_SZ].into_boxed_slice();
        let mut payload = vec![0u8; MAX_PAYLOAD as usize].into_boxed_slice();
        let iov = [
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ];
        Entry {
            qid,
            header,
            payload,
            iov,
        }
    }
}

fn cmd_bytes(req: &UringCmdReq) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    let _ = req.write_to(&mut cmd);
    cmd
}

/// Sets the `len` field of a 128-byte SQE (byte offset 24 of `struct io_uring_sqe`), which
/// the io-uring crate's `UringCmd80` builder has no setter for.
fn with_sqe_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is repr(C) and exactly the kernel's 128-byte SQE (asserted by the
    // crate); every bit pattern of its bytes is a valid value of the plain C struct.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above, in the other direction.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

struct Worker<'a> {
    w: &'a QueueWorker,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: Vec<Entry>,
    dispatcher: &'a Dispatcher,
    io: WorkerIo,
    scratch: Vec<u8>,
    ready: Vec<(u64, i32)>,
}

impl Worker<'_> {
    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: the SQE points at buffers (and, for REGISTER, iovecs) owned by
            // `self.entries`, which outlive the ring (see `run`).
            let pushed = unsafe { self.ring.submission().push(sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Registers every entry. Returns the completions that arrived meanwhile: once the
    /// last queue has its entries the kernel may hand out a request at once (its task work
    /// runs as the submitting syscall returns), so a completion seen here can already be a
    /// request that must be answered, not dropped.
    fn register_all(&mut self) -> io::Result<Vec<(u64, i32)>> {
        let fd = self.w.fd.as_raw_fd();
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            let req = UringCmdReq {
                qid: e.qid,
                ..UringCmdReq::default()
            };
            let sqe = opcode::UringCmd80::new(types::Fd(fd), abi::FUSE_IO_URING_CMD_REGISTER)
                .cmd(cmd_bytes(&req))
                .addr(Some(e.iov.as_ptr() as u64))
                .build()
                .user_data(i as u64);
            // Two iovecs: header and payload. The forced refusal sends a count the kernel
            // rejects with EINVAL.
            let sqe = with_sqe_len(sqe, if self.w.refuse { 3 } else { 2 });
            self.push(&sqe)?;
        }
        self.ring.submit()?;
        // A refused registration completes at once with an error; accepted ones stay
        // queued until a request arrives.
        let early: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        if let Some(&(_, res)) = early.iter().find(|(_, res)| *res < 0) {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(early)
    }

    /// Answers the request in entry `i` and queues its commit-and-fetch.
    fn answer(&mut self, i: usize) -> io::Result<()> {
        let e = &mut self.entries[i];
        let h = InHeader::read_from(&e.header).unwrap_or_default();
        let mut ent = UringEntInOut::read_from(&e.header[ENT_IN_OUT_AT..]).unwrap_or_default();
        let payload_len = (ent.payload_sz as usize).min(e.payload.len());
        let op_len = (h.len as usize)
            .saturating_sub(HEADER_LEN + payload_len)
            .min(abi::FUSE_URING_OP_IN_OUT_SZ);
        // Names arrive in the payload buffer, which the reply overwrites: copy them out.
        self.scratch.clear();
        if matches!(h.opcode, abi::FUSE_LOOKUP | abi::FUSE_GETXATTR) {
            self.scratch.extend_from_slice(&e.payload[..payload_len]);
        }
        let req = Req {
            h,
            op: &e.header[OP_IN_AT..OP_IN_AT + op_len],
            data: &self.scratch,
        };
        let outcome = self.dispatcher.handle(&mut self.io, &req, &mut e.payload);
        self.dispatcher.count_uring_request();
        let (body, error) = match outcome {
            Outcome::Reply(n) => (n, 0),
            Outcome::Error(errno) => (0, -errno),
            Outcome::Silent => (0, 0),
        };
        let out = OutHeader {
            len: (std::mem::size_of::<OutHeader>() + body) as u32,
            error,
            unique: h.unique,
        };
        let _ = out.write_to(&mut e.header);
        ent.payload_sz = body as u32;
        let _ = ent.write_to(&mut e.header[ENT_IN_OUT_AT..]);
        let req = UringCmdReq {
            commit_id: ent.commit_id,
            qid: e.qid,
            ..UringCmdReq::default()
        };
        let sqe = opcode::UringCmd80::new(
            types::Fd(self.w.fd.as_raw_fd()),
            abi::FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
        )
        .cmd(cmd_bytes(&req))
        .build()
        .user_data(i as u64);
        self.push(&sqe)
    }

    /// Answers `early` (requests that arrived during registration), then serves until
    /// the connection closes or `stop` is raised.
    fn serve(&mut self, stop: &AtomicBool, early: &[(u64, i32)]) -> QueueEnd {
        if let Some(end) = self.answer_batch(early) {
            return end;
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                return QueueEnd::Stopped;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return QueueEnd::Failed(e),
            }
            // Reused across batches: no allocation on the request path.
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            let end = self.answer_batch(&ready);
            self.ready = ready;
            if let Some(end) = end {
                return end;
            }
        }
    }

    fn answer_batch(&mut self, ready: &[(u64, i32)]) -> Option<QueueEnd> {
        for &(i, res) in ready {
            match res {
                0 => {}
                e if -e == libc::ENOTCONN || -e == libc::ECONNABORTED || -e == libc::ECANCELED => {
                    return Some(QueueEnd::Closed)
                }
                e => return Some(QueueEnd::Failed(io::Error::from_raw_os_error(-e))),
            }
            if let Err(e) = usize::try_from(i)
                .ok()
                .filter(|i| *i < self.entries.len())
                .ok_or_else(|| io::Error::other("completion for an unknown entry"))
                .and_then(|i| self.answer(i))
            {
                return Some(QueueEnd::Failed(e));
            }
        }
        None
    }
}

/// Runs queue worker `w`: registers its entries, reports the outcome on `ready` (so the
/// mount can fall back when the kernel refuses), then serves until unmount or `stop`.
/// The entry buffers are handed to `keep` at the end: the kernel may still be finishing
/// with them until the connection is gone.
pub fn run(
    w: &QueueWorker,
    dispatcher: &Dispatcher,
    stop: &AtomicBool,
    ready: Sender<io::Result<()>>,
    keep: &dyn Fn(Vec<Box<[u8]>>),
) -> QueueEnd {
    let entries: Vec<Entry> = w
        .qids
        .iter()
        .flat_map(|q| (0..QUEUE_DEPTH).map(move |_| Entry::new(*q)))
        .collect();
    let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .build((entries.len() * 2).next_power_of_two() as u32);
    let ring = match ring {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(
                e.kind(),
                format!("io_uring setup: {e}"),
            )));
            return QueueEnd::Refused;
        }
    };
    let io = WorkerIo {
        dev_fd: w.fd.as_raw_fd(),
        ring: if w.uring_reads {
            ReadRing::new().ok()
        } else {
            None
        },
    };
    let mut worker = Worker {
        w,
        ring,
        entries,
        dispatcher,
        io,
        scratch: Vec::with_capacity(4096),
        ready: Vec::with_capacity(64),
    };
    let end = match worker.register_all() {
        Ok(early) => {
            let _ = ready.send(Ok(()));
            worker.serve(stop, &early)
        }
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(
                e.kind(),
                format!("FUSE_IO_URING_CMD_REGISTER: {e}"),
            )));
            QueueEnd::Refused
        }
    };
    let Worker { ring, entries, .. } = worker;
    drop(ring);
    keep(
        entries
            .into_iter()
            .flat_map(|e| [e.header, e.payload])
            .collect(),
    );
    end
}

/// The queue ids (0 .. number of possible CPUs) the kernel will use.
pub fn queue_count() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts the CPUs of a kernel CPU list such as `0-3,6,8-9`.
pub fn count_cpu_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0usize, |acc, part| {
        let n = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        Some(acc + n)
    })
}

/// Splits queues `0..queues` among workers pinned to `cpus` (worker `i` on
/// `cpus[i % cpus.len()]`, or unpinned when `cpus` is empty): each queue goes to the
/// worker on its CPU, the rest round-robin.
pub fn assign_queues(queues: usize, workers: usize, cpus: &[usize]) -> Vec<Vec<u16>> {
    let mut out = vec![Vec::new(); workers.max(1)];
    let mut spare = 0;
    for q in 0..queues {
        let owner = (0..workers)
            .find(|i| !cpus.is_empty() && cpus[i % cpus.len()] == q)
            .unwrap_or_else(|| {
                spare += 1;
                (spare - 1) % workers.max(1)
            });
        out[owner].push(q as u16);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn each_queue_goes_to_the_worker_on_its_cpu_and_none_is_left_out() {
        assert_eq!(assign_queues(2, 2, &[0, 1]), vec![vec![0], vec![1]]);
        assert_eq!(assign_queues(2, 2, &[1, 0]), vec![vec![1], vec![0]]);
        assert_eq!(assign_queues(4, 2, &[0, 1]), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(assign_queues(3, 1, &[]), vec![vec![0, 1, 2]]);
        let all: usize = assign_queues(8, 3, &[2, 5, 7]).iter().map(Vec::len).sum();
        assert_eq!(all, 8);
    }

    #[test]
    fn the_register_sqe_carries_the_iovec_count_in_len() {
        let sqe = opcode::UringCmd80::new(types::Fd(3), abi::FUSE_IO_URING_CMD_REGISTER)
            .addr(Some(0x1000))
            .build();
        let sqe = with_sqe_len(sqe, 2);
        // SAFETY: Entry128 is the 128-byte SQE (see with_sqe_len).
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]), 2);
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().expect("addr")),
            0x1000
        );
        assert_eq!(raw[0], io_uring::opcode::UringCmd80::CODE);
    }
}
