//! FUSE INIT, answered by MusicFS itself rather than by fuse-backend-rs (whose reply stops at
//! protocol 7.33 and drops flags it does not know, among them passthrough and io_uring).
//!
//! The session's read loop hands INIT here and writes the reply; the crate's `Server` never
//! sees it. What the crate would have stored from INIT is only the kernel's minor version,
//! which it consults for one pre-7.4 quirk (negative lookups), so leaving its default (7.33)
//! in place is harmless on any kernel new enough to mount us.

use crate::abi::{self, InitIn, InitOut, Pod};

/// Largest request the kernel may send: 256 pages (1 MiB) of data plus headers.
pub const MAX_PAGES: u16 = 256;
/// Largest write/read payload, matching [`MAX_PAGES`].
pub const MAX_PAYLOAD: u32 = MAX_PAGES as u32 * 4096;

/// The flags MusicFS always asks for: asynchronous and parallel reads and lookups,
/// readdirplus, 1 MiB requests, cached symlinks (none exist, but it costs nothing).
pub const BASE_FLAGS: u64 = abi::FUSE_ASYNC_READ
    | abi::FUSE_BIG_WRITES
    | abi::FUSE_PARALLEL_DIROPS
    | abi::FUSE_DO_READDIRPLUS
    | abi::FUSE_READDIRPLUS_AUTO
    | abi::FUSE_MAX_PAGES
    | abi::FUSE_CACHE_SYMLINKS;

/// Optional features the daemon would like, subject to what the kernel offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants {
    /// FUSE passthrough (7.40).
    pub passthrough: bool,
    /// FUSE-over-io_uring (7.42).
    pub uring: bool,
}

/// What INIT settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol minor in use: the smaller of the kernel's and ours.
    pub minor: u32,
    /// The kernel's offered flags (64-bit view).
    pub offered: u64,
    /// Flags granted (offered ∩ asked).
    pub granted: u64,
}

impl Negotiated {
    /// Whether passthrough was granted.
    pub fn passthrough(&self) -> bool {
        self.granted & abi::FUSE_PASSTHROUGH != 0
    }

    /// Whether FUSE-over-io_uring was granted.
    pub fn uring(&self) -> bool {
        self.granted & abi::FUSE_OVER_IO_URING != 0
    }
}

/// The answer to one INIT request.
pub enum InitAnswer {
    /// Reply with these bytes (an `InitOut`, possibly truncated for an old kernel).
    Reply {
        /// Reply body.
        out: InitOut,
        /// How many bytes of `out` to send.
        len: usize,
        /// What was settled; `None` when the kernel must send INIT again (newer major).
        settled: Option<Negotiated>,
    },
    /// Refuse with this errno (a major version older than 7).
    Error(i32),
}

/// Answers INIT from the raw request body (everything after `fuse_in_header`).
pub fn answer(body: &[u8], wants: Wants) -> InitAnswer {
    let init = InitIn::read_prefix(body);
    if init.major < abi::FUSE_KERNEL_VERSION {
        return InitAnswer::Error(libc::EPROTO);
    }
    if init.major > abi::FUSE_KERNEL_VERSION {
        // The kernel retries with our major.
        let out = InitOut {
            major: abi::FUSE_KERNEL_VERSION,
            minor: abi::FUSE_KERNEL_MINOR_VERSION,
            ..InitOut::default()
        };
        return InitAnswer::Reply {
            out,
            len: std::mem::size_of::<InitOut>(),
            settled: None,
        };
    }
    let mut offered = u64::from(init.flags);
    // flags2 exists from 7.36 on, and only counts when the kernel says so.
    if init.minor >= 36 && offered & abi::FUSE_INIT_EXT != 0 && body.len() >= 20 {
        offered |= u64::from(init.flags2) << 32;
    }
    let mut ask = BASE_FLAGS;
    if wants.passthrough {
        ask |= abi::FUSE_PASSTHROUGH;
    }
    if wants.uring {
        ask |= abi::FUSE_OVER_IO_URING;
    }
    let mut granted = offered & ask;
    if granted >> 32 != 0 {
        granted |= abi::FUSE_INIT_EXT;
    }
    let minor = init.minor.min(abi::FUSE_KERNEL_MINOR_VERSION);
    let out = InitOut {
        major: abi::FUSE_KERNEL_VERSION,
        minor,
        max_readahead: init.max_readahead,
        flags: granted as u32,
        flags2: (granted >> 32) as u32,
        max_background: u16::MAX,
        congestion_threshold: u16::MAX / 4 * 3,
        max_write: MAX_PAYLOAD,
        time_gran: 1,
        max_pages: MAX_PAGES,
        // Origins are plain local filesystems (stack depth 0); a depth of 1 keeps the
        // mount itself stackable once (an overlay on top of it still works).
        max_stack_depth: if granted & abi::FUSE_PASSTHROUGH != 0 {
            1
        } else {
            0
        },
        ..InitOut::default()
    };
    let len = if minor < 23 {
        abi::FUSE_COMPAT_22_INIT_OUT_SIZE
    } else {
        std::mem::size_of::<InitOut>()
    };
    InitAnswer::Reply {
        out,
        len,
        settled: Some(Negotiated {
            minor,
            offered,
            granted: granted & !abi::FUSE_INIT_EXT,
        }),
    }
}

/// The reply bytes of an [`InitAnswer::Reply`].
pub fn reply_bytes(out: &InitOut, len: usize) -> &[u8] {
    &out.as_bytes()[..len.min(std::mem::size_of::<InitOut>())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_in(minor: u32, flags: u64) -> Vec<u8> {
        InitIn {
            major: 7,
            minor,
            max_readahead: 131072,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            ..InitIn::default()
        }
        .as_bytes()
        .to_vec()
    }

    fn reply(body: &[u8], wants: Wants) -> (InitOut, usize, Option<Negotiated>) {
        match answer(body, wants) {
            InitAnswer::Reply { out, len, settled } => (out, len, settled),
            InitAnswer::Error(e) => panic!("refused with {e}"),
        }
    }

    #[test]
    fn a_new_kernel_gets_passthrough_and_uring_in_flags2_with_init_ext() {
        let all = u64::MAX;
        let wants = Wants {
            passthrough: true,
            uring: true,
        };
        let (out, len, settled) = reply(&init_in(44, all), wants);
        let settled = settled.expect("settled");
        assert_eq!(len, 64);
        assert_eq!(out.minor, 42);
        assert!(u64::from(out.flags) & abi::FUSE_INIT_EXT != 0);
        assert_eq!(out.flags2, (1 << 5) | (1 << 9));
        assert_eq!(out.max_stack_depth, 1);
        assert_eq!(out.max_pages, 256);
        assert_eq!(out.max_write, 1 << 20);
        assert!(settled.passthrough() && settled.uring());
        assert_eq!(settled.minor, 42);
    }

    #[test]
    fn features_not_wanted_or_not_offered_are_not_granted() {
        let offered = BASE_FLAGS | abi::FUSE_INIT_EXT | abi::FUSE_PASSTHROUGH;
        let (out, _, settled) = reply(&init_in(40, offered), Wants::default());
        assert_eq!(out.flags2, 0);
        assert_eq!(u64::from(out.flags) & abi::FUSE_INIT_EXT, 0);
        assert_eq!(out.max_stack_depth, 0);
        let wants = Wants {
            passthrough: true,
            uring: true,
        };
        let (out, _, settled2) = reply(&init_in(40, offered), wants);
        assert_eq!(out.flags2, 1 << 5);
        assert!(!settled.expect("s").passthrough());
        let s2 = settled2.expect("s2");
        assert!(s2.passthrough() && !s2.uring());
        assert_eq!(out.minor, 40);
    }

    #[test]
    fn flags2_is_ignored_without_init_ext_or_before_7_36() {
        let flags = abi::FUSE_PASSTHROUGH | abi::FUSE_ASYNC_READ;
        let wants = Wants {
            passthrough: true,
            uring: false,
        };
        let (_, _, s) = reply(&init_in(44, flags), wants);
        assert!(!s.expect("s").passthrough());
        let (_, _, s) = reply(&init_in(35, flags | abi::FUSE_INIT_EXT), wants);
        assert!(!s.expect("s").passthrough());
    }

    #[test]
    fn old_minors_get_the_short_reply_and_bad_majors_are_handled() {
        let (_, len, _) = reply(&init_in(22, 0), Wants::default());
        assert_eq!(len, 24);
        let mut v8 = init_in(0, 0);
        v8[0] = 8;
        let (out, _, settled) = reply(&v8, Wants::default());
        assert_eq!(out.major, 7);
        assert!(settled.is_none());
        let mut v6 = init_in(0, 0);
        v6[0] = 6;
        assert!(matches!(
            answer(&v6, Wants::default()),
            InitAnswer::Error(libc::EPROTO)
        ));
        assert!(matches!(
            answer(&[], Wants::default()),
            InitAnswer::Error(libc::EPROTO)
        ));
    }
}
