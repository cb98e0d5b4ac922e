//! The FUSE kernel ABI this crate speaks itself, beyond what fuse-backend-rs 0.14 knows
//! (it stops at protocol 7.33). Written from the kernel's `include/uapi/linux/fuse.h`; the
//! protocol minor that introduced each newer item is noted beside it. Layouts are checked
//! against the header's documented sizes and offsets in the tests below.

#![allow(missing_docs)] // field names are the kernel's; the header documents them

/// Protocol major version.
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// The minor version MusicFS answers with: 7.42 adds FUSE-over-io_uring, the newest
/// feature we use. The connection runs at the smaller of this and the kernel's minor.
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 42;

/// Size of `fuse_init_out` before 7.23 (servers older than that get the short reply).
pub const FUSE_COMPAT_22_INIT_OUT_SIZE: usize = 24;

// INIT flags, as bits of the 64-bit value `flags | flags2 << 32`.
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
pub const FUSE_SPLICE_READ: u64 = 1 << 9;
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13; // 7.21
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14; // 7.21
pub const FUSE_ASYNC_DIO: u64 = 1 << 15; // 7.22
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16; // 7.23
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18; // 7.25
pub const FUSE_MAX_PAGES: u64 = 1 << 22; // 7.28
pub const FUSE_CACHE_SYMLINKS: u64 = 1 << 23; // 7.28
pub const FUSE_NO_OPENDIR_SUPPORT: u64 = 1 << 24; // 7.29
pub const FUSE_EXPLICIT_INVAL_DATA: u64 = 1 << 25; // 7.30
pub const FUSE_INIT_EXT: u64 = 1 << 30; // 7.36: flags2 is valid
pub const FUSE_PASSTHROUGH: u64 = 1 << 37; // 7.40 (flags2 bit 5)
pub const FUSE_NO_EXPORT_SUPPORT: u64 = 1 << 38; // 7.40 (flags2 bit 6)
pub const FUSE_OVER_IO_URING: u64 = 1 << 41; // 7.42 (flags2 bit 9)

// OPEN reply flags.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3; // 7.28
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7; // 7.40

/// Deepest filesystem stack the kernel allows (`FILESYSTEM_MAX_STACK_DEPTH`).
pub const FILESYSTEM_MAX_STACK_DEPTH: u32 = 2;

// Opcodes.
pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_SETATTR: u32 = 4;
pub const FUSE_READLINK: u32 = 5;
pub const FUSE_SYMLINK: u32 = 6;
pub const FUSE_MKNOD: u32 = 8;
pub const FUSE_MKDIR: u32 = 9;
pub const FUSE_UNLINK: u32 = 10;
pub const FUSE_RMDIR: u32 = 11;
pub const FUSE_RENAME: u32 = 12;
pub const FUSE_LINK: u32 = 13;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FSYNC: u32 = 20;
pub const FUSE_SETXATTR: u32 = 21;
pub const FUSE_GETXATTR: u32 = 22;
pub const FUSE_LISTXATTR: u32 = 23;
pub const FUSE_REMOVEXATTR: u32 = 24;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_FSYNCDIR: u32 = 30;
pub const FUSE_ACCESS: u32 = 34;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_BATCH_FORGET: u32 = 42;
pub const FUSE_FALLOCATE: u32 = 43;
pub const FUSE_READDIRPLUS: u32 = 44;
pub const FUSE_RENAME2: u32 = 45;
pub const FUSE_COPY_FILE_RANGE: u32 = 47;
pub const FUSE_TMPFILE: u32 = 51; // 7.37

// /dev/fuse ioctls: _IOW(229, nr, type) = 1 << 30 | size << 16 | 229 << 8 | nr.
const fn iow(nr: u32, size: usize) -> u32 {
    1 << 30 | (size as u32) << 16 | 229 << 8 | nr
}
/// `FUSE_DEV_IOC_BACKING_OPEN` (7.40): register a backing file, returns its id.
pub const FUSE_DEV_IOC_BACKING_OPEN: u32 = iow(1, std::mem::size_of::<FuseBackingMap>());
/// `FUSE_DEV_IOC_BACKING_CLOSE` (7.40): drop a backing id.
pub const FUSE_DEV_IOC_BACKING_CLOSE: u32 = iow(2, std::mem::size_of::<u32>());

// FUSE-over-io_uring (7.42).
/// `FUSE_IO_URING_CMD_REGISTER`: hand the kernel one entry's buffers and fetch a request.
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: answer the entry's request and fetch the next.
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `FUSE_URING_IN_OUT_HEADER_SZ`: room for the in/out header at the start of an entry.
pub const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the per-opcode header that follows.
pub const FUSE_URING_OP_IN_OUT_SZ: usize = 128;
/// Size of `struct fuse_uring_req_header` (in_out, op_in, ring_ent_in_out).
pub const FUSE_URING_REQ_HEADER_SZ: usize =
    FUSE_URING_IN_OUT_HEADER_SZ + FUSE_URING_OP_IN_OUT_SZ + std::mem::size_of::<UringEntInOut>();

/// Plain-data structs that may be read from and written to byte buffers as they are.
///
/// # Safety
/// Implementors are `repr(C)`, have no padding the compiler may leave uninitialised, and
/// every bit pattern is a valid value.
pub unsafe trait Pod: Copy + Default {
    /// The value's bytes.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types are repr(C) without uninitialised padding (trait contract).
        unsafe {
            std::slice::from_raw_parts((self as *const Self).cast(), std::mem::size_of::<Self>())
        }
    }

    /// Reads a value from the start of `buf`; `None` when `buf` is too short.
    fn read_from(buf: &[u8]) -> Option<Self> {
        if buf.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked above; any bit pattern is valid (trait contract);
        // read_unaligned copes with any alignment of the buffer.
        Some(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<Self>()) })
    }

    /// Reads a value that may be shorter in `buf` (an older protocol's prefix of the
    /// struct): missing trailing bytes are zero.
    fn read_prefix(buf: &[u8]) -> Self {
        let mut v = Self::default();
        let n = buf.len().min(std::mem::size_of::<Self>());
        // SAFETY: writes n ≤ size_of::<Self>() bytes into v; any bit pattern is valid.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), (&mut v as *mut Self).cast::<u8>(), n)
        };
        v
    }

    /// Writes the value at the start of `buf`; `None` when `buf` is too short.
    fn write_to(&self, buf: &mut [u8]) -> Option<usize> {
        let bytes = self.as_bytes();
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(bytes.len())
    }
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: each listed struct is repr(C), made only of integers laid out without
        // implicit padding (checked by the size tests), so every bit pattern is valid.
        unsafe impl Pod for $t {}
    )*};
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16, // 7.36
    pub padding: u16,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub flags2: u32, // 7.36
    pub unused: [u32; 11],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32, // 7.23
    pub max_pages: u16, // 7.28
    pub map_alignment: u16,
    pub flags2: u32,          // 7.36
    pub max_stack_depth: u32, // 7.40
    pub request_timeout: u16, // 7.43
    pub unused: [u16; 11],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenIn {
    pub flags: u32,
    pub open_flags: u32, // 7.38 (FUSE_OPEN_KILL_SUIDGID)
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32, // 7.40 (was padding)
}

/// `fuse_getattr_in.getattr_flags`: `fh` names the handle the kernel asks through.
pub const FUSE_GETATTR_FH: u32 = 1 << 0;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GetattrIn {
    pub getattr_flags: u32,
    pub dummy: u32,
    pub fh: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ReleaseIn {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GetxattrIn {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GetxattrOut {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct AccessIn {
    pub mask: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

/// `struct fuse_dirent` without its trailing name.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub typ: u32,
}

/// `struct fuse_backing_map` (7.40), the argument of `FUSE_DEV_IOC_BACKING_OPEN`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FuseBackingMap {
    pub fd: i32,
    pub flags: u32,
    pub padding: u64,
}

/// `struct fuse_uring_ent_in_out` (7.42), the last part of an entry's header buffer.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UringEntInOut {
    pub flags: u64,
    pub commit_id: u64,
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_cmd_req` (7.42), in the 80-byte command area of a 128-byte SQE.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

pod!(
    InHeader,
    OutHeader,
    InitIn,
    InitOut,
    OpenIn,
    OpenOut,
    GetattrIn,
    ReleaseIn,
    ReadIn,
    GetxattrIn,
    GetxattrOut,
    AccessIn,
    Attr,
    EntryOut,
    AttrOut,
    Kstatfs,
    Dirent,
    FuseBackingMap,
    UringEntInOut,
    UringCmdReq
);

/// Size of a `fuse_dirent` with a name of `namelen` bytes, padded to 8 bytes.
pub fn dirent_size(namelen: usize) -> usize {
    (std::mem::size_of::<Dirent>() + namelen).next_multiple_of(8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn struct_sizes_match_the_kernel_header() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitIn>(), 64);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<OpenIn>(), 8);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<Kstatfs>(), 80);
        assert_eq!(size_of::<Dirent>(), 24);
        assert_eq!(size_of::<FuseBackingMap>(), 16);
        assert_eq!(size_of::<UringEntInOut>(), 32);
        assert_eq!(size_of::<UringCmdReq>(), 24);
        assert_eq!(FUSE_URING_REQ_HEADER_SZ, 288);
    }

    #[test]
    fn init_out_fields_sit_where_the_kernel_reads_them() {
        assert_eq!(offset_of!(InitOut, max_write), 20);
        assert_eq!(offset_of!(InitOut, time_gran), 24);
        assert_eq!(offset_of!(InitOut, max_pages), 28);
        assert_eq!(offset_of!(InitOut, flags2), 32);
        assert_eq!(offset_of!(InitOut, max_stack_depth), 36);
        assert_eq!(offset_of!(InitOut, request_timeout), 40);
        assert_eq!(offset_of!(InitIn, flags2), 16);
        assert_eq!(offset_of!(OpenOut, backing_id), 12);
        assert_eq!(offset_of!(UringEntInOut, payload_sz), 16);
        assert_eq!(offset_of!(UringCmdReq, qid), 16);
        assert_eq!(offset_of!(EntryOut, attr), 40);
        assert_eq!(offset_of!(AttrOut, attr), 16);
    }

    #[test]
    fn new_flags_are_the_documented_flags2_bits() {
        assert_eq!(FUSE_PASSTHROUGH >> 32, 1 << 5);
        assert_eq!(FUSE_OVER_IO_URING >> 32, 1 << 9);
        assert_eq!(FUSE_INIT_EXT, 0x4000_0000);
    }

    #[test]
    fn backing_ioctls_encode_as_iow_229() {
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }

    #[test]
    fn pod_round_trips_and_short_buffers_are_refused() {
        let h = OutHeader {
            len: 16,
            error: -2,
            unique: 7,
        };
        let mut buf = [0u8; 16];
        assert_eq!(h.write_to(&mut buf), Some(16));
        let back = OutHeader::read_from(&buf).expect("read");
        assert_eq!((back.len, back.error, back.unique), (16, -2, 7));
        assert!(OutHeader::read_from(&buf[..15]).is_none());
        assert!(h.write_to(&mut [0u8; 8]).is_none());
        let short = InitIn::read_prefix(&[7, 0, 0, 0, 31, 0, 0, 0]);
        assert_eq!((short.major, short.minor, short.flags2), (7, 31, 0));
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
    }
}
