//! What sits at the mountpoint: the checks before mounting, the probe after, the detach at
//! the end, and the `/proc/self/mountinfo` parsing they share.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::FuseError;

/// `statfs` type of a FUSE mount.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// `stat`s the mount root (which waits for INIT and a GETATTR round trip) and checks that a
/// FUSE filesystem now sits there.
///
/// This process's own workers answer those requests, so the probe runs on a thread of its
/// own whose file table holds none of the process's fds. The kernel waits for the answer
/// to a request a worker has already read uninterruptibly, even for a SIGKILLed process: a
/// thread stuck so keeps its file table, and had that table held the `/dev/fuse` fds, the
/// connection could never abort and the killed daemon would hang (in D state, its mount
/// dead) for good. With a private table, the other threads' exit closes `/dev/fuse`, the
/// kernel aborts the connection, and the probe fails and exits too.
pub(super) fn probe(mp: &Path) -> Result<std::fs::Metadata, FuseError> {
    let err = |source| FuseError::NotAnswering {
        path: mp.to_path_buf(),
        source,
    };
    let path = mp.to_path_buf();
    std::thread::Builder::new()
        .name("mount-probe".into())
        .spawn(move || {
            without_inherited_fds()?;
            probe_here(&path)
        })
        .map_err(err)?
        .join()
        .map_err(|_| err(io::Error::other("the mount probe panicked")))?
}

/// Gives the calling thread a private file table with every fd but stdin, stdout and
/// stderr closed (the rest of the process keeps them).
fn without_inherited_fds() -> Result<(), FuseError> {
    let fail = |source| FuseError::NotAnswering {
        path: PathBuf::from("/proc/thread-self/fd"),
        source,
    };
    // SAFETY: unshare(CLONE_FILES) only replaces this thread's file table with a copy.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: closes fds of the private copy only; no other thread uses that table, and
    // this thread holds no File or other owner of them.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what the table lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/thread-self/fd")
        .map_err(fail)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above; an fd already gone (the directory's own) gives EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn probe_here(mp: &Path) -> Result<std::fs::Metadata, FuseError> {
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

pub(super) fn detach(mp: &Path) -> Result<(), FuseError> {
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
    Ok(mount_type(path)?.is_some())
}

/// The filesystem type (`fuse.musicfs`, `ext4`, ...) of the mount at `path` (absolute,
/// as the mount table spells it), if something is mounted there. The last mount wins.
fn mount_type(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    Ok(info
        .split(|b| *b == b'\n')
        .filter(|line| {
            line.split(|b| *b == b' ')
                .nth(4)
                .map(unescape_mountinfo)
                .as_deref()
                == Some(want)
        })
        .filter_map(|line| {
            // Optional fields end at " - "; the type follows it.
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let dash = fields.iter().position(|f| *f == b"-")?;
            fields.get(dash + 1).map(|t| t.to_vec())
        })
        .next_back())
}

/// Lazily unmounts a dead MusicFS mount at `path` (one whose daemon was killed before its
/// auto-unmount helper could act), so a restart can mount again. Returns whether one was
/// cleared; a dead mount of another filesystem is left alone.
pub fn clear_dead_mount(path: &Path) -> Result<bool, FuseError> {
    let abs = std::path::absolute(path).map_err(|source| FuseError::Mountpoint {
        path: path.to_path_buf(),
        source,
    })?;
    let fstype = mount_type(&abs).map_err(|source| FuseError::Mountpoint {
        path: path.to_path_buf(),
        source,
    })?;
    if fstype.as_deref() != Some(b"fuse.musicfs".as_slice()) {
        return Ok(false);
    }
    detach(&abs)?;
    tracing::warn!(mountpoint = ?abs, "cleared a dead MusicFS mount left by a killed daemon");
    Ok(true)
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
