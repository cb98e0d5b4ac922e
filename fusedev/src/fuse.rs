//! The FUSE edge: a `fuse_backend_rs` [`FileSystem`] that decodes each request, calls one
//! function of [`FsModel`], and encodes the answer. Errors become an errno here, once, with
//! one log line each.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

use crate::fs::{Attr, DirItem, FsModel, Kind};
use crate::xattr::XattrReply;
use crate::FsError;

/// The [`FileSystem`] the session serves: a thin shell around [`FsModel`].
pub struct FuseFs {
    model: Arc<FsModel>,
}

impl FuseFs {
    /// Feeds directory items to the kernel's reply buffer until it is full (`add` returns
    /// 0) or fails; shared by readdir and readdirplus.
    fn fill_dir(
        &self,
        op: &'static str,
        inode: u64,
        handle: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry, &DirItem<'_>) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut err = None;
        let mut emit = |item: DirItem<'_>| {
            let d = DirEntry {
                ino: item.ino,
                offset: item.next_offset,
                type_: dirent_type(item.kind),
                name: item.name,
            };
            match add(d, &item) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        };
        self.model
            .readdir(handle, inode, offset, &mut emit)
            .map_err(|e| fail(op, inode, e))?;
        err.map_or(Ok(()), Err)
    }

    /// Serves `model`.
    pub fn new(model: Arc<FsModel>) -> FuseFs {
        FuseFs { model }
    }
}

pub(crate) fn fail(op: &'static str, ino: u64, e: FsError) -> io::Error {
    let errno = e.to_errno();
    if e.is_expected() {
        tracing::debug!(op, ino, errno, error = %e, "fuse op refused");
    } else {
        tracing::warn!(op, ino, errno, error = %e, "fuse op failed");
    }
    io::Error::from_raw_os_error(errno)
}

fn read_only(op: &'static str, ino: u64) -> io::Error {
    fail(op, ino, FsError::ReadOnly(op))
}

fn to_stat(a: &Attr) -> stat64 {
    // SAFETY: stat64 is plain old data; all-zero is a valid value for every field.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = a.ino;
    st.st_mode = a.mode();
    st.st_nlink = u64::from(a.nlink) as _;
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_size = a.size as i64;
    st.st_blksize = crate::fs::IO_BLOCK_SIZE as _;
    st.st_blocks = a.blocks() as i64;
    let secs = a.mtime_ns.div_euclid(1_000_000_000);
    let nsecs = a.mtime_ns.rem_euclid(1_000_000_000);
    st.st_mtime = secs;
    st.st_mtime_nsec = nsecs;
    st.st_atime = secs;
    st.st_atime_nsec = nsecs;
    st.st_ctime = secs;
    st.st_ctime_nsec = nsecs;
    st
}

fn dirent_type(kind: Kind) -> u32 {
    match kind {
        Kind::Dir => u32::from(libc::DT_DIR),
        Kind::File => u32::from(libc::DT_REG),
    }
}

impl FuseFs {
    fn entry(&self, attr: &Attr) -> Entry {
        let cfg = self.model.config();
        Entry {
            inode: attr.ino,
            generation: attr.generation,
            attr: to_stat(attr),
            attr_flags: 0,
            attr_timeout: cfg.attr_timeout,
            entry_timeout: cfg.entry_timeout,
        }
    }

    /// A readdirplus entry the kernel will not instantiate (`.`, `..`).
    fn empty_entry() -> Entry {
        Entry {
            inode: 0,
            generation: 0,
            // SAFETY: stat64 is plain old data; all-zero is a valid value.
            attr: unsafe { std::mem::zeroed() },
            attr_flags: 0,
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
        }
    }
}

/// A borrowed source file the crate's zero-copy writer can `pread` from straight into the
/// reply buffer. Read-only: its write methods refuse.
struct SourceFd<'a>(&'a File);

impl FileReadWriteVolatile for SourceFd<'_> {
    fn read_volatile(&mut self, slice: FileVolatileSlice) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `slice.len()` bytes into memory `slice` owns
        // for the duration of the call; the fd is valid while `self.0` is borrowed.
        let n = unsafe { libc::read(self.0.as_raw_fd(), slice.as_ptr().cast(), slice.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn read_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        // SAFETY: as in read_volatile; pread does not move any shared file offset, so
        // concurrent readers of the same handle do not interfere.
        let n = unsafe {
            libc::pread(
                self.0.as_raw_fd(),
                slice.as_ptr().cast(),
                slice.len(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_at_volatile(&mut self, _slice: FileVolatileSlice, _offset: u64) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }
}

/// The INIT capabilities MusicFS asks for (the kernel grants the intersection).
pub fn wanted_options() -> FsOptions {
    FsOptions::ASYNC_READ
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::DO_READDIRPLUS
        | FsOptions::READDIRPLUS_AUTO
        | FsOptions::MAX_PAGES
        | FsOptions::BIG_WRITES
}

impl FileSystem for FuseFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let want = wanted_options();
        tracing::debug!(granted = ?(capable & want), "FUSE INIT");
        Ok(want)
    }

    fn destroy(&self) {
        self.model.close_all();
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        match self.model.lookup(parent, name.to_bytes()) {
            Ok(attr) => Ok(self.entry(&attr)),
            Err(FsError::NotFound { .. }) if !self.model.config().negative_timeout.is_zero() => {
                // A zero inode with a timeout is a negative entry the kernel caches.
                let mut e = Self::empty_entry();
                e.entry_timeout = self.model.config().negative_timeout;
                Ok(e)
            }
            Err(e) => Err(fail("lookup", parent, e)),
        }
    }

    // Inodes are derived from the snapshot, not allocated per lookup: nothing to forget.
    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}

    fn batch_forget(&self, _ctx: &Context, _requests: Vec<(u64, u64)>) {}

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        match self.model.getattr(inode) {
            Ok(attr) => Ok((to_stat(&attr), self.model.config().attr_timeout)),
            Err(e) => Err(fail("getattr", inode, e)),
        }
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        Err(read_only("setattr", inode))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        Err(fail("readlink", inode, FsError::NotASymlink(inode)))
    }

    fn symlink(
        &self,
        _ctx: &Context,
        _linkname: &CStr,
        parent: u64,
        _name: &CStr,
    ) -> io::Result<Entry> {
        Err(read_only("symlink", parent))
    }

    fn mknod(
        &self,
        _ctx: &Context,
        parent: u64,
        _name: &CStr,
        _mode: u32,
        _rdev: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        Err(read_only("mknod", parent))
    }

    fn mkdir(
        &self,
        _ctx: &Context,
        parent: u64,
        _name: &CStr,
        _mode: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        Err(read_only("mkdir", parent))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, _name: &CStr) -> io::Result<()> {
        Err(read_only("unlink", parent))
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, _name: &CStr) -> io::Result<()> {
        Err(read_only("rmdir", parent))
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        _oldname: &CStr,
        _newdir: u64,
        _newname: &CStr,
        _flags: u32,
    ) -> io::Result<()> {
        Err(read_only("rename", olddir))
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        _newparent: u64,
        _newname: &CStr,
    ) -> io::Result<Entry> {
        Err(read_only("link", inode))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        match self.model.open(inode, flags) {
            Ok(fh) => Ok((Some(fh), OpenOptions::KEEP_CACHE, None)),
            Err(e) => Err(fail("open", inode, e)),
        }
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: u64,
        _name: &CStr,
        _args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        Err(read_only("create", parent))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let want = (size as usize).min(w.available_bytes());
        let res = self.model.with_file(handle, |file| {
            let mut src = SourceFd(file);
            let mut done = 0;
            while done < want {
                match w.write_from(&mut src, want - done, offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(done)
        });
        res.map_err(|e| fail("read", inode, e))
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        Err(read_only("write", inode))
    }

    // Nothing is buffered for writing, so a flush on close has nothing to do.
    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _mode: u32,
        _offset: u64,
        _length: u64,
    ) -> io::Result<()> {
        Err(read_only("fallocate", inode))
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.model
            .release(handle)
            .map_err(|e| fail("release", inode, e))
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let s = self.model.statfs();
        // SAFETY: statvfs64 is plain old data; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = u64::from(s.block_size) as _;
        st.f_frsize = u64::from(s.block_size) as _;
        st.f_blocks = s.blocks;
        st.f_files = s.files;
        st.f_namemax = u64::from(s.name_max) as _;
        Ok(st)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        Err(read_only("setxattr", inode))
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        match self.model.getxattr(inode, name.to_bytes(), size) {
            Ok(XattrReply::Size(n)) => Ok(GetxattrReply::Count(n)),
            Ok(XattrReply::Data(v)) => Ok(GetxattrReply::Value(v)),
            Err(e) => Err(fail("getxattr", inode, e)),
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        match self.model.listxattr(inode, size) {
            Ok(XattrReply::Size(n)) => Ok(ListxattrReply::Count(n)),
            Ok(XattrReply::Data(v)) => Ok(ListxattrReply::Names(v)),
            Err(e) => Err(fail("listxattr", inode, e)),
        }
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, _name: &CStr) -> io::Result<()> {
        Err(read_only("removexattr", inode))
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        match self.model.opendir(inode) {
            Ok(fh) => Ok((Some(fh), OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE)),
            Err(e) => Err(fail("opendir", inode, e)),
        }
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fill_dir("readdir", inode, handle, offset, |d, _| add_entry(d))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fill_dir("readdirplus", inode, handle, offset, |d, item| {
            let e = match &item.attr {
                Some(attr) => self.entry(attr),
                None => Self::empty_entry(),
            };
            add_entry(d, e)
        })
    }

    fn fsyncdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        _datasync: bool,
        _handle: u64,
    ) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.model
            .releasedir(handle)
            .map_err(|e| fail("releasedir", inode, e))
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.model
            .access(inode, mask)
            .map_err(|e| fail("access", inode, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testlib::Library;
    use crate::fs::FsConfig;
    use musicfs_core::meta::TrackMeta;

    fn fs() -> (Library, FuseFs, u64) {
        let mut l = Library::new();
        l.add("A/b.flac", 10, TrackMeta::default());
        let model = Arc::new(FsModel::new(l.shared(), None, FsConfig::default()));
        let file = model
            .lookup(1, b"A")
            .and_then(|a| model.lookup(a.ino, b"b.flac"));
        let ino = file.expect("file").ino;
        (l, FuseFs::new(model), ino)
    }

    fn errno<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn every_write_operation_answers_erofs() {
        let (_l, fs, ino) = fs();
        let ctx = Context::new();
        let name = c"n";
        // SAFETY: stat64 is plain old data.
        let st: stat64 = unsafe { std::mem::zeroed() };
        let create_in = CreateIn {
            flags: 0,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let results = [
            errno(fs.setattr(&ctx, ino, st, None, SetattrValid::SIZE)),
            errno(fs.mkdir(&ctx, 1, name, 0o755, 0)),
            errno(fs.mknod(&ctx, 1, name, 0o644, 0, 0)),
            errno(fs.create(&ctx, 1, name, create_in)),
            errno(fs.unlink(&ctx, 1, name)),
            errno(fs.rmdir(&ctx, 1, name)),
            errno(fs.rename(&ctx, 1, name, 1, c"m", 0)),
            errno(fs.link(&ctx, ino, 1, name)),
            errno(fs.symlink(&ctx, c"target", 1, name)),
            errno(fs.setxattr(&ctx, ino, c"user.x", b"v", 0)),
            errno(fs.removexattr(&ctx, ino, c"user.musicfs.title")),
            errno(fs.fallocate(&ctx, ino, 1, 0, 0, 10)),
            errno(fs.open(&ctx, ino, libc::O_WRONLY as u32, 0)),
            errno(fs.open(&ctx, ino, libc::O_RDWR as u32, 0)),
            errno(fs.open(&ctx, ino, (libc::O_RDONLY | libc::O_TRUNC) as u32, 0)),
            errno(fs.access(&ctx, ino, libc::W_OK as u32)),
        ];
        for (i, r) in results.iter().enumerate() {
            assert_eq!(*r, Some(libc::EROFS), "operation #{i}");
        }
    }

    #[test]
    fn open_and_opendir_ask_the_kernel_to_keep_its_caches() {
        let (_l, fs, ino) = fs();
        let ctx = Context::new();
        let (fh, opts, _) = fs.open(&ctx, ino, 0, 0).expect("open");
        assert_eq!(opts, OpenOptions::KEEP_CACHE);
        fs.release(&ctx, ino, 0, fh.expect("fh"), false, false, None)
            .expect("release");
        let (dh, opts) = fs.opendir(&ctx, 1, 0).expect("opendir");
        assert_eq!(opts, OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE);
        fs.releasedir(&ctx, 1, 0, dh.expect("dh"))
            .expect("releasedir");
    }

    #[test]
    fn lookup_miss_is_a_cached_negative_entry_and_getattr_uses_the_attr_timeout() {
        let (_l, fs, ino) = fs();
        let ctx = Context::new();
        let neg = fs.lookup(&ctx, 1, c"missing").expect("negative entry");
        assert_eq!(neg.inode, 0);
        assert_eq!(neg.entry_timeout, Duration::from_secs(3600));
        let (st, ttl) = fs.getattr(&ctx, ino, None).expect("getattr");
        assert_eq!(st.st_size, 10);
        assert_eq!(st.st_mode, libc::S_IFREG | 0o444);
        assert_eq!(ttl, Duration::from_secs(3600));
    }

    #[test]
    fn init_asks_for_readdirplus_parallel_dirops_and_big_reads() {
        let (_l, fs, _) = fs();
        let want = fs.init(FsOptions::all()).expect("init");
        assert!(want.contains(FsOptions::DO_READDIRPLUS | FsOptions::PARALLEL_DIROPS));
        assert!(want.contains(FsOptions::MAX_PAGES | FsOptions::ASYNC_READ));
        assert!(!want.contains(FsOptions::WRITEBACK_CACHE));
    }
}
