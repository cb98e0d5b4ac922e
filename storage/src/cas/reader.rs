//! Chunk reads through io_uring: one small ring per reading thread (FUSE workers read
//! concurrently; a ring is not shared). Where io_uring is unavailable (old kernel,
//! seccomp, `io_uring_disabled`) the thread notes it once and the caller falls back to
//! `pread`.
//!
//! No registered buffers: a chunk is read straight into the caller's buffer, and a
//! registered one would add a copy; reads are one SQE each, so the ring stays small.

use std::cell::RefCell;
use std::io;
use std::os::unix::io::RawFd;

use io_uring::{opcode, types, IoUring};

const RING_ENTRIES: u32 = 4;

thread_local! {
    /// `None`: not tried yet; `Some(None)`: unavailable on this thread.
    static RING: RefCell<Option<Option<IoUring>>> = const { RefCell::new(None) };
}

/// Fills `buf` from `fd` at `offset` through this thread's ring; `None` when io_uring is
/// unavailable (the caller then uses `pread`).
pub(crate) fn read_exact_at(fd: RawFd, buf: &mut [u8], offset: u64) -> Option<io::Result<()>> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let ring = slot.get_or_insert_with(|| match IoUring::new(RING_ENTRIES) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(error = %e, "io_uring unavailable for chunk reads; using pread");
                None
            }
        });
        let ring = ring.as_mut()?;
        match read_loop(ring, fd, buf, offset) {
            Err(Broken(e)) => {
                tracing::debug!(error = %e, "io_uring failed; this thread reads with pread");
                *slot = Some(None);
                None
            }
            Ok(done) => Some(done),
        }
    })
}

/// The ring refused a submission (it was not consumed): stop using it.
struct Broken(io::Error);

/// Waits for the one submission in flight, through signals.
fn submit_and_wait(ring: &mut IoUring) -> Result<(), Broken> {
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => return Err(Broken(e)),
        }
    }
}

fn read_loop(
    ring: &mut IoUring,
    fd: RawFd,
    buf: &mut [u8],
    offset: u64,
) -> Result<io::Result<()>, Broken> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let sqe = opcode::Read::new(types::Fd(fd), rest.as_mut_ptr(), len)
            .offset(offset + done as u64)
            .build()
            .user_data(1);
        // SAFETY: the buffer `rest` stays borrowed (alive, not moved) until the completion
        // is reaped below: `submit_and_wait` returns early only on errors of
        // io_uring_enter that come before the entry is consumed (signals and busy rings
        // are waited through), and the ring is then dropped with nothing in flight. The
        // ring is this thread's alone, so no other submission shares it.
        unsafe { ring.submission().push(&sqe) }
            .map_err(|_| Broken(io::Error::other("io_uring submission queue full")))?;
        submit_and_wait(ring)?;
        let Some(cqe) = ring.completion().next() else {
            return Err(Broken(io::Error::other("io_uring returned no completion")));
        };
        match cqe.result() {
            n if n < 0 => {
                let e = io::Error::from_raw_os_error(-n);
                if e.kind() != io::ErrorKind::Interrupted {
                    return Ok(Err(e));
                }
            }
            0 => return Ok(Err(io::ErrorKind::UnexpectedEof.into())),
            n => done += n as usize,
        }
    }
    Ok(Ok(()))
}
