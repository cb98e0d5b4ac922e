//! How the mount is being served right now (transport, read path), as the log states it and
//! as the root directory's `user.musicfs.*` attributes show it (see docs/SEMANTICS.md).

use std::sync::atomic::{AtomicU8, Ordering};

/// Root attributes that report the serving mode, with their names after `user.musicfs.`.
pub const STATUS_FIELDS: [&str; 3] = ["transport", "passthrough", "origin_reads"];

/// Which queues the kernel's requests arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `read(2)`/`write(2)` on per-worker `/dev/fuse` fds.
    Dev = 0,
    /// FUSE-over-io_uring: one queue per CPU.
    Uring = 1,
}

/// How a worker reads source bytes for the plain (non-passthrough) path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginReads {
    /// `pread(2)`.
    Pread = 0,
    /// `IORING_OP_READ` on a per-worker ring.
    IoUring = 1,
}

/// The serving mode, updated by the session as features are negotiated.
#[derive(Debug, Default)]
pub struct ServeStatus {
    transport: AtomicU8,
    passthrough: AtomicU8,
    origin_reads: AtomicU8,
}

impl ServeStatus {
    /// The transport in use.
    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Relaxed) {
            1 => Transport::Uring,
            _ => Transport::Dev,
        }
    }

    /// Records the transport in use.
    pub fn set_transport(&self, t: Transport) {
        self.transport.store(t as u8, Ordering::Relaxed);
    }

    /// Whether opens are answered with FUSE passthrough.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed) != 0
    }

    /// Records whether passthrough is active.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(u8::from(on), Ordering::Relaxed);
    }

    /// How plain reads reach the source.
    pub fn origin_reads(&self) -> OriginReads {
        match self.origin_reads.load(Ordering::Relaxed) {
            1 => OriginReads::IoUring,
            _ => OriginReads::Pread,
        }
    }

    /// Records how plain reads reach the source.
    pub fn set_origin_reads(&self, r: OriginReads) {
        self.origin_reads.store(r as u8, Ordering::Relaxed);
    }

    /// The value of status attribute `field` (one of [`STATUS_FIELDS`]).
    pub fn value(&self, field: &str) -> Option<&'static str> {
        Some(match field {
            "transport" => match self.transport() {
                Transport::Dev => "dev",
                Transport::Uring => "uring",
            },
            "passthrough" => {
                if self.passthrough() {
                    "on"
                } else {
                    "off"
                }
            }
            "origin_reads" => match self.origin_reads() {
                OriginReads::Pread => "pread",
                OriginReads::IoUring => "io_uring",
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_follow_what_the_session_records() {
        let s = ServeStatus::default();
        assert_eq!(s.value("transport"), Some("dev"));
        assert_eq!(s.value("passthrough"), Some("off"));
        assert_eq!(s.value("origin_reads"), Some("pread"));
        s.set_transport(Transport::Uring);
        s.set_passthrough(true);
        s.set_origin_reads(OriginReads::IoUring);
        assert_eq!(s.value("transport"), Some("uring"));
        assert_eq!(s.value("passthrough"), Some("on"));
        assert_eq!(s.value("origin_reads"), Some("io_uring"));
        assert_eq!(s.value("nope"), None);
    }
}
