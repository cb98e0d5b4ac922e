//! The local driver: an origin that is a directory of this machine (a disk, or an NFS/SMB
//! share mounted on it).
//!
//! Files are opened read-only, with `O_NOATIME` where the kernel allows it (it refuses it,
//! EPERM, on files the daemon does not own; then they are opened without), and with
//! `O_NONBLOCK` until `fstat` has shown a regular file, so a FIFO put where a track was
//! cannot block a reader; the flag is then cleared, since io_uring treats an `O_NONBLOCK`
//! file as never-blocking. Symlinks are followed on open and stat, as the scanner's
//! `open_readonly` always did (the walk only catalogs symlinks that resolve inside the
//! origin). A stale NFS handle (ESTALE) is retried once, since the kernel looks the path
//! up afresh.
//!
//! The probe tells an unmounted share from the real one by [`RootIdentity`]: a root that
//! was the root of a mount and no longer is shows the (usually empty) directory below it.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    check_rel, is_vanished_io, ChangeDetection, ChangeToken, Entry, EntryKind, Health, Listed,
    Offline, Origin, OriginError, OriginSpec, RootIdentity, SkipReason, Source, Stat,
};

/// A local directory as an origin. See the module documentation.
#[derive(Debug)]
pub struct LocalOrigin {
    spec: OriginSpec,
    /// Canonical when the root could be resolved at open, else as given.
    root: PathBuf,
    key: OsString,
    /// The spec's display form, for errors.
    name: String,
}

impl LocalOrigin {
    /// Opens the local origin `spec` names. The root need not exist now (the origin then
    /// probes [`Offline::Missing`]); it is resolved once, here.
    pub fn open(spec: &OriginSpec) -> Result<LocalOrigin, OriginError> {
        let OriginSpec::Local(local) = spec else {
            return Err(OriginError::UnsupportedScheme {
                spec: spec.to_string(),
                scheme: spec.scheme(),
            });
        };
        if !local.root.is_absolute() {
            return Err(OriginError::RelativePath {
                path: local.root.display().to_string(),
            });
        }
        let key = spec.key();
        Ok(LocalOrigin {
            root: PathBuf::from(&key),
            key,
            name: spec.to_string(),
            spec: spec.clone(),
        })
    }

    /// The root directory (canonical if it existed at open).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens regular file `rel` read-only (what [`Origin::open`] does, without the `Arc`
    /// and the trait object).
    pub fn open_file(&self, rel: &Path) -> Result<LocalSource, OriginError> {
        check_rel(self, rel)?;
        // The path is assembled on the stack: the FUSE open path allocates nothing.
        let mut buf = [0u8; libc::PATH_MAX as usize];
        let path = stack_path(
            &mut buf,
            self.root.as_os_str().as_bytes(),
            rel.as_os_str().as_bytes(),
        )
        .map_err(|e| self.fail("open", rel, e))?;
        let (file, noatime) =
            retry_stale(|| open_nonblocking_c(path)).map_err(|e| self.fail("open", rel, e))?;
        let md = file.metadata().map_err(|e| self.fail("open", rel, e))?;
        if !md.is_file() {
            return Err(OriginError::NotAFile {
                origin: self.name.clone(),
                rel: rel.to_path_buf(),
            });
        }
        // Keep O_NOATIME if it was granted; F_SETFL leaves the access mode alone.
        let flags = if noatime { libc::O_NOATIME } else { 0 };
        // SAFETY: `file` is an open descriptor owned by this function; F_SETFL takes an int.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) } != 0 {
            return Err(self.fail("open", rel, io::Error::last_os_error()));
        }
        Ok(LocalSource {
            file,
            len: md.len(),
        })
    }

    fn path_of(&self, rel: &Path) -> Result<PathBuf, OriginError> {
        check_rel(self, rel)?;
        Ok(if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        })
    }

    fn fail(&self, op: &'static str, rel: &Path, source: io::Error) -> OriginError {
        OriginError::from_io(&self.name, op, rel, source)
    }

    /// The stat of a symlink's target, if it stays inside the origin.
    fn follow(&self, link: &Path) -> Result<Stat, SkipReason> {
        let target = link.canonicalize().map_err(|_| SkipReason::Dangling {
            target: fs::read_link(link).unwrap_or_default(),
        })?;
        if !target.starts_with(&self.root) {
            return Err(SkipReason::OutsideOrigin { target });
        }
        fs::metadata(&target)
            .map(|md| stat_of(&md))
            .map_err(SkipReason::Unreadable)
    }

    fn listed(&self, dir: &Path, entry: &fs::DirEntry) -> Option<Listed> {
        let name = entry.file_name();
        let skipped = |reason| Listed::Skipped {
            name: name.clone(),
            reason,
        };
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) if is_vanished_io(&e) => return None,
            Err(e) => return Some(skipped(SkipReason::Unreadable(e))),
        };
        let (via_symlink, stat) = if kind.is_symlink() {
            match self.follow(&dir.join(&name)) {
                Ok(stat) => (true, stat),
                Err(reason) => return Some(skipped(reason)),
            }
        } else {
            // fstatat on the listing's directory fd, not following (it is no symlink).
            match entry.metadata() {
                Ok(md) => (false, stat_of(&md)),
                // Removed since the directory was read: it is simply gone.
                Err(e) if is_vanished_io(&e) => return None,
                Err(e) => return Some(skipped(SkipReason::Unreadable(e))),
            }
        };
        Some(Listed::Entry(Entry {
            name,
            via_symlink,
            stat,
        }))
    }
}

impl Origin for LocalOrigin {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    fn key(&self) -> &OsStr {
        &self.key
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        let path = self.path_of(dir)?;
        let entries = retry_stale(|| fs::read_dir(&path)).map_err(|e| self.fail("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.fail("list", dir, e))?;
            if let Some(listed) = self.listed(&path, &entry) {
                each(listed);
            }
        }
        Ok(())
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        let path = self.path_of(rel)?;
        retry_stale(|| fs::metadata(&path))
            .map(|md| stat_of(&md))
            .map_err(|e| self.fail("stat", rel, e))
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        Ok(Arc::new(self.open_file(rel)?))
    }

    fn as_local(&self) -> Option<&LocalOrigin> {
        Some(self)
    }

    fn change_detection(&self) -> ChangeDetection {
        match fs_type(&self.root) {
            Ok(t) if NETWORK_FS.contains(&t) => ChangeDetection::Poll,
            Ok(_) => ChangeDetection::Inotify,
            // Unreachable now: whatever comes back must be walked to be seen.
            Err(_) => ChangeDetection::Poll,
        }
    }

    fn probe(&self, recorded: Option<&RootIdentity>) -> Health {
        let offline = Health::Offline;
        let unreadable = |e: io::Error| {
            Health::Offline(Offline::Unreadable {
                reason: e.to_string(),
            })
        };
        let md = match retry_stale(|| fs::metadata(&self.root)) {
            Ok(md) => md,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return offline(Offline::Missing)
            }
            Err(e) => return unreadable(e),
        };
        if !md.is_dir() {
            return offline(Offline::NotADirectory);
        }
        if let Some(rec) = recorded {
            let now = match identity_of(&self.root) {
                Ok(now) => now,
                Err(e) => return unreadable(e),
            };
            if rec.mount_root && !now.mount_root {
                return offline(Offline::NotMounted);
            }
            if rec.dev != now.dev {
                return offline(Offline::DeviceChanged {
                    recorded: rec.dev,
                    found: now.dev,
                });
            }
        }
        // Listing proves readability (a stat does not need read permission).
        match fs::read_dir(&self.root) {
            Ok(_) => Health::Up,
            Err(e) => unreadable(e),
        }
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        identity_of(&self.root).ok()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

/// An open local file. See the module documentation for how it is opened.
#[derive(Debug)]
pub struct LocalSource {
    file: File,
    len: u64,
}

impl LocalSource {
    /// Opens the regular file at `path` read-only (a file the daemon keeps itself, such as
    /// stored cover art; origin files are opened with [`LocalOrigin::open_file`]).
    pub fn open_path(path: &Path) -> io::Result<LocalSource> {
        let file = File::open(path)?;
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(LocalSource {
            file,
            len: md.len(),
        })
    }

    /// The open file (read-only).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Source for LocalSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = offset.checked_add(done as u64) else {
                break;
            };
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// Opens `path` read-only and non-blocking; says whether `O_NOATIME` was granted.
/// `root/rel` (or `root` for an empty `rel`), NUL-terminated in `buf`.
fn stack_path<'b>(buf: &'b mut [u8], root: &[u8], rel: &[u8]) -> io::Result<&'b std::ffi::CStr> {
    let len = if rel.is_empty() {
        root.len()
    } else {
        root.len() + 1 + rel.len()
    };
    if len >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf[..root.len()].copy_from_slice(root);
    if !rel.is_empty() {
        buf[root.len()] = b'/';
        buf[root.len() + 1..len].copy_from_slice(rel);
    }
    buf[len] = 0;
    std::ffi::CStr::from_bytes_with_nul(&buf[..=len])
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `path` read-only and non-blocking (so a FIFO cannot block), with `O_NOATIME`
/// when the kernel allows it; says whether it did.
fn open_nonblocking_c(path: &std::ffi::CStr) -> io::Result<(File, bool)> {
    let open = |extra: i32| {
        // SAFETY: `path` is a valid NUL-terminated string; open(2) only reads it.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | extra,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    match open(libc::O_NOATIME) {
        // O_NOATIME needs ownership of the file or CAP_FOWNER.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok((open(0)?, false)),
        other => other.map(|f| (f, true)),
    }
}

/// Runs `f` again once if it fails with ESTALE (the NFS client then looks the path up
/// afresh instead of trusting its cached handle).
fn retry_stale<T>(f: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match f() {
        Err(e) if e.raw_os_error() == Some(libc::ESTALE) => f(),
        other => other,
    }
}

pub(super) fn stat_of(md: &Metadata) -> Stat {
    let kind = if md.is_file() {
        EntryKind::File
    } else if md.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::Other
    };
    Stat {
        kind,
        size: md.size(),
        mtime_ns: nanos(md.mtime(), md.mtime_nsec()),
        mode: Some(md.mode() & 0o7777),
        uid: Some(md.uid()),
        gid: Some(md.gid()),
        token: ChangeToken::Local {
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: nanos(md.ctime(), md.ctime_nsec()),
        },
    }
}

/// Seconds and nanoseconds as nanoseconds since the epoch (saturating, as the scanner's
/// `scan_state` does, so both compute the same values).
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The device of `path` and whether it is the root of a mount.
fn identity_of(path: &Path) -> io::Result<RootIdentity> {
    let c = c_path(path)?;
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and `buf` is a writable
    // statx-sized buffer; the kernel writes nothing else.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded, so it filled the buffer (which was zeroed before anyway,
    // and every field of `statx` is a plain integer).
    let stx = unsafe { buf.assume_init() };
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    let flag = libc::STATX_ATTR_MOUNT_ROOT as u64;
    let mount_root = if stx.stx_attributes_mask & flag != 0 {
        stx.stx_attributes & flag != 0
    } else {
        // Kernels before 5.8 do not say: a mount root (other than a bind mount within one
        // file system) is on another device than its parent.
        path.parent()
            .map_or(Ok(true), |p| fs::metadata(p).map(|m| m.dev() != dev))?
    };
    Ok(RootIdentity { dev, mount_root })
}

/// File systems whose changes can come from other machines, which inotify never sees:
/// NFS, SMB (old, CIFS, SMB2), FUSE (sshfs, rclone, s3fs), Ceph, 9P, AFS, Coda, GFS2, OCFS2.
const NETWORK_FS: [u32; 12] = [
    0x6969,
    0x517B,
    0xFF53_4D42,
    0xFE53_4D42,
    0x6573_5546,
    0x00C3_6400,
    0x0102_1997,
    0x5346_414F,
    0x6B41_4653,
    0x7375_7245,
    0x0116_1970,
    0x7461_636F,
];

/// The file system type (`statfs` `f_type`) of `path`.
fn fs_type(path: &Path) -> io::Result<u32> {
    let c = c_path(path)?;
    let mut buf = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: as in `identity_of`: a NUL-terminated path and a writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded and filled the (zeroed, plain-integer) buffer.
    let st = unsafe { buf.assume_init() };
    // Magic numbers are 32-bit; f_type is a wider signed word.
    Ok(st.f_type as u32)
}
