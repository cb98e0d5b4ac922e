//! Origin reads through io_uring: each worker owns a small ring and reads source bytes
//! with `IORING_OP_READ` straight into the buffer its reply is then written from, once.
//! Where io_uring is unavailable (seccomp, `kernel.io_uring_disabled`), workers `pread`.

use std::io;
use std::os::unix::io::RawFd;

use io_uring::{opcode, types, IoUring};

/// One worker's ring for origin reads.
pub struct ReadRing {
    ring: IoUring,
}

impl ReadRing {
    /// A ring with a few entries (reads are issued one at a time per worker).
    pub fn new() -> io::Result<ReadRing> {
        Ok(ReadRing {
            ring: IoUring::new(4)?,
        })
    }

    /// Reads into `buf` from `fd` at `offset` until `buf` is full or end of file; returns
    /// the bytes read.
    pub fn read_full(&mut self, fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            let sqe = opcode::Read::new(types::Fd(fd), rest.as_mut_ptr(), len)
                .offset(offset + done as u64)
                .build();
            // SAFETY: the entry points into `buf`, which stays borrowed (and alive) until
            // the completion is reaped below, before this function returns.
            unsafe {
                self.ring
                    .submission()
                    .push(&sqe)
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            let res = self.complete_one()?;
            match res {
                0 => break,
                n if n > 0 => done += n as usize,
                e if -e == libc::EINTR || -e == libc::EAGAIN => {}
                e => return Err(io::Error::from_raw_os_error(-e)),
            }
        }
        Ok(done)
    }

    fn complete_one(&mut self) -> io::Result<i32> {
        loop {
            if let Some(cqe) = self.ring.completion().next() {
                return Ok(cqe.result());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // A signal (the unmount wake-up) while waiting: the read is still in
                // flight and its buffer borrowed, so keep waiting for its completion.
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `pread` until `buf` is full or end of file.
pub fn pread_full(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: pread writes at most rest.len() bytes into memory rest owns.
        let n = unsafe {
            libc::pread(
                fd,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn ring_reads_match_pread_at_any_offset_and_stop_at_eof() {
        let mut f = tempfile::tempfile().expect("tmp");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).expect("write");
        let Ok(mut ring) = ReadRing::new() else {
            eprintln!("io_uring unavailable here; only pread is tested");
            return;
        };
        for (off, len) in [(0usize, 4096usize), (12_345, 100_000), (299_000, 4096)] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            let na = ring
                .read_full(f.as_raw_fd(), &mut a, off as u64)
                .expect("ring");
            let nb = pread_full(f.as_raw_fd(), &mut b, off as u64).expect("pread");
            assert_eq!(na, nb);
            assert_eq!(&a[..na], &data[off..off + na]);
        }
        let mut past = [0u8; 16];
        assert_eq!(
            ring.read_full(f.as_raw_fd(), &mut past, 1 << 30)
                .expect("eof"),
            0
        );
    }

    #[test]
    fn a_bad_fd_is_an_error_not_a_hang() {
        let Ok(mut ring) = ReadRing::new() else {
            return;
        };
        let mut buf = [0u8; 8];
        let e = ring.read_full(-1, &mut buf, 0).expect_err("bad fd");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
