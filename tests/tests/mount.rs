#![cfg(feature = "e2e")]
//! The fixture library on a real mount: the tree as `musicfs tree` describes it, coreutils
//! walking it, bit-exact content, read-only enforcement, concurrent and massive use.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musicfs_tests::harness::{
    self, checksum_tree, library, run_ok, sort_bytewise, walk_files, walk_tree, MountOptions,
    MountedFs, SplitMix64,
};

fn mount_library() -> MountedFs {
    let lib = library();
    MountedFs::start(MountOptions::new([lib.root.clone()])).expect("mounting the fixture library")
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = run_ok(cmd).unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every virtual file with the origin file it is served from.
fn virtual_to_source(fs: &MountedFs) -> BTreeMap<PathBuf, PathBuf> {
    fs.track_sources(&[library().root.clone()])
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", fs.log()))
}

#[test]
fn mounted_tree_equals_musicfs_tree_and_coreutils_walk_it() {
    let fs = mount_library();
    let walked = walked_without_extras(&fs);
    let listed = fs.tree().unwrap();
    let mut sorted = listed.clone();
    sort_bytewise(&mut sorted);
    assert_eq!(
        listed, sorted,
        "`musicfs tree` output is not sorted bytewise"
    );
    assert_eq!(
        walked, listed,
        "the mounted tree differs from `musicfs tree`"
    );
    let files = walk_files(fs.mountpoint()).unwrap();
    assert!(
        files.len() >= library().good.len(),
        "fewer files than good tracks: {files:?}"
    );

    let find = stdout_of(Command::new("find").arg(fs.mountpoint()));
    assert_eq!(
        find.lines()
            .filter(|l| !harness::is_album_extra(Path::new(l)))
            .count(),
        walked.len() + 1,
        "find output:\n{find}"
    );

    let ls = stdout_of(Command::new("ls").arg("-lR").arg(fs.mountpoint()));
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            ls.contains(name.as_ref()),
            "`ls -lR` does not show {name}:\n{ls}"
        );
    }

    let sources = virtual_to_source(&fs);
    let long: BTreeMap<PathBuf, harness::TreeEntry> = fs
        .tree_long()
        .unwrap()
        .into_iter()
        .map(|e| (fs.path(&e.path), e))
        .collect();
    let stat = stdout_of(
        Command::new("stat")
            .args(["-c", "%s %i %F"])
            .args(sources.keys()),
    );
    assert_eq!(stat.lines().count(), sources.len(), "stat output:\n{stat}");
    for (line, (file, source)) in stat.lines().zip(&sources) {
        let size = std::fs::metadata(source).unwrap().len();
        let entry = &long[file];
        assert_eq!(
            line,
            format!("{size} {} regular file", entry.ino),
            "stat of {} (tree --long: {entry:?})",
            file.display()
        );
        assert_eq!(entry.size, size, "{entry:?}");
        assert_eq!(entry.source.as_ref(), Some(source), "{entry:?}");
    }

    let total: u64 = sources
        .values()
        .map(|s| std::fs::metadata(s).unwrap().len())
        .sum();
    let du_bytes = stdout_of(Command::new("du").arg("-sb").arg(fs.mountpoint()));
    let apparent: u64 = du_bytes.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        apparent >= total,
        "du -sb says {apparent}, files hold {total} bytes"
    );
    let du_blocks = stdout_of(Command::new("du").arg("-sk").arg(fs.mountpoint()));
    let kib: u64 = du_blocks
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        kib * 1024 >= total / 2,
        "du -sk says {kib} KiB for {total} bytes of files"
    );
}

#[test]
fn every_track_plays_bit_exact_through_the_mount() {
    let fs = mount_library();
    let pairs = virtual_to_source(&fs);
    let served: BTreeSet<&PathBuf> = pairs.values().collect();
    for good in &library().good {
        if std::fs::symlink_metadata(good)
            .unwrap()
            .file_type()
            .is_symlink()
        {
            // A symlink to another track of the library is that track: served as it.
            let target = std::fs::canonicalize(good).unwrap();
            assert!(
                served.contains(&target),
                "{} is not served",
                target.display()
            );
            continue;
        }
        let count = pairs.values().filter(|s| *s == good).count();
        assert_eq!(
            count,
            1,
            "{} is served {count} times (all sources: {served:?})",
            good.display()
        );
    }

    let pairs: Vec<(PathBuf, PathBuf)> = pairs.into_iter().collect();
    let good: BTreeSet<&PathBuf> = library().good.iter().collect();
    std::thread::scope(|scope| {
        for half in pairs.chunks(pairs.len().div_ceil(2).max(1)) {
            let good = &good;
            scope.spawn(move || {
                for (virt, source) in half {
                    let through = std::fs::read(virt).unwrap();
                    let original = std::fs::read(source).unwrap();
                    assert!(
                        through == original,
                        "{} differs from {}",
                        virt.display(),
                        source.display()
                    );
                    if good.contains(source) {
                        let a = harness::audio_md5(virt).unwrap_or_else(|e| panic!("{e:#}"));
                        let b = harness::audio_md5(source).unwrap_or_else(|e| panic!("{e:#}"));
                        assert_eq!(a, b, "decoded audio of {} differs", virt.display());
                    }
                }
            });
        }
    });
    assert!(
        fs.mount_entry().unwrap().is_some(),
        "the daemon died serving reads:\n{}",
        fs.log()
    );
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// The result of a raw libc call: `Ok` when it succeeded, else its errno.
fn outcome(ret: i64) -> Result<(), i32> {
    if ret >= 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn open_outcome(path: &CString, flags: libc::c_int) -> Result<(), i32> {
    // SAFETY: `path` is NUL-terminated; the mode argument is read only with O_CREAT.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644 as libc::c_uint) };
    let result = outcome(fd.into());
    if fd >= 0 {
        // SAFETY: we own the fd just opened.
        unsafe { libc::close(fd) };
    }
    result
}

/// Tries every write syscall on `file_path` (a track in the mount) and its directory; returns
/// one line per call that was not refused with EROFS.
fn write_syscalls_not_refused(fs: &MountedFs, file_path: &Path) -> Vec<String> {
    let dir_path = file_path.parent().unwrap().to_path_buf();
    let (file, dir) = (cstr(file_path), cstr(&dir_path));
    let new = cstr(&dir_path.join("new-file.flac"));
    let new_dir = cstr(&fs.path("New Artist"));
    let xname = CString::new("user.musicfs.test").unwrap();
    let source_xattr = CString::new(harness::SOURCE_XATTR).unwrap();
    let (rdwr_creat, wr_trunc) = (
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        libc::O_WRONLY | libc::O_TRUNC,
    );

    // SAFETY (all calls below): every pointer is a live NUL-terminated string or null where
    // the call allows it; the kernel reads them only during the call.
    let calls: Vec<(&str, Result<(), i32>)> = unsafe {
        vec![
            ("open O_WRONLY", open_outcome(&file, libc::O_WRONLY)),
            ("open O_RDWR", open_outcome(&file, libc::O_RDWR)),
            ("open O_WRONLY|O_TRUNC", open_outcome(&file, wr_trunc)),
            (
                "open O_CREAT",
                open_outcome(&new, libc::O_WRONLY | libc::O_CREAT),
            ),
            ("open O_RDWR|O_CREAT|O_EXCL", open_outcome(&new, rdwr_creat)),
            ("creat", outcome(libc::creat(new.as_ptr(), 0o644).into())),
            (
                "mkdir",
                outcome(libc::mkdir(new_dir.as_ptr(), 0o755).into()),
            ),
            (
                "mknod",
                outcome(libc::mknod(new.as_ptr(), libc::S_IFIFO | 0o644, 0).into()),
            ),
            ("unlink", outcome(libc::unlink(file.as_ptr()).into())),
            ("rmdir", outcome(libc::rmdir(dir.as_ptr()).into())),
            (
                "rename file",
                outcome(libc::rename(file.as_ptr(), new.as_ptr()).into()),
            ),
            (
                "rename dir",
                outcome(libc::rename(dir.as_ptr(), new_dir.as_ptr()).into()),
            ),
            (
                "link",
                outcome(libc::link(file.as_ptr(), new.as_ptr()).into()),
            ),
            (
                "symlink",
                outcome(libc::symlink(file.as_ptr(), new.as_ptr()).into()),
            ),
            ("chmod", outcome(libc::chmod(file.as_ptr(), 0o600).into())),
            ("chown", outcome(libc::chown(file.as_ptr(), 1, 1).into())),
            ("truncate", outcome(libc::truncate(file.as_ptr(), 0).into())),
            (
                "utimensat",
                outcome(libc::utimensat(libc::AT_FDCWD, file.as_ptr(), std::ptr::null(), 0).into()),
            ),
            (
                "setxattr",
                outcome(
                    libc::setxattr(file.as_ptr(), xname.as_ptr(), c"x".as_ptr().cast(), 1, 0)
                        as i64,
                ),
            ),
            (
                "removexattr",
                outcome(libc::removexattr(file.as_ptr(), source_xattr.as_ptr()).into()),
            ),
        ]
    };
    let mut wrong: Vec<String> = calls
        .iter()
        .filter(|(_, r)| *r != Err(libc::EROFS))
        .map(|(name, r)| match r {
            Ok(()) => format!("{name}: succeeded"),
            Err(e) => format!("{name}: {}", io::Error::from_raw_os_error(*e)),
        })
        .collect();

    // A read-only fd is the only kind the mount hands out, and the kernel checks the fd's
    // mode (EBADF) before the filesystem's (EROFS): either refusal is correct here.
    let ro = File::open(file_path).unwrap();
    // SAFETY: `ro` is an open fd for the duration of the call.
    let falloc = outcome(unsafe { libc::fallocate(ro.as_raw_fd(), 0, 0, 4096) }.into());
    if !matches!(falloc, Err(libc::EROFS) | Err(libc::EBADF)) {
        wrong.push(format!("fallocate on a read-only fd: {falloc:?}"));
    }
    for created in [dir_path.join("new-file.flac"), fs.path("New Artist")] {
        if created.symlink_metadata().is_ok() {
            wrong.push(format!("{} exists afterwards", created.display()));
        }
    }
    wrong
}

#[test]
fn every_write_syscall_fails_with_erofs_even_on_a_writable_mount_and_the_origin_is_untouched() {
    let lib = library();
    let before = checksum_tree(&lib.root).unwrap();
    assert_eq!(
        before, lib.checksums,
        "the origin changed before this test ran"
    );
    let fs = mount_library();
    let file_path = walk_files(fs.mountpoint())
        .unwrap()
        .into_iter()
        .next()
        .expect("a file");
    let original = std::fs::read(&file_path).unwrap();

    // The daemon mounts read-only, so the kernel refuses writes before asking it.
    let by_kernel = write_syscalls_not_refused(&fs, &file_path);
    // Made writable by the admin, the daemon itself must still refuse every write.
    // Not a skip: without the remount the daemon's own refusals go unchecked, so fail.
    harness::remount_writable(fs.mountpoint())
        .unwrap_or_else(|e| panic!("cannot remount rw to check the daemon's own EROFS: {e:#}"));
    let by_daemon = write_syscalls_not_refused(&fs, &file_path);
    assert!(
        by_kernel.is_empty() && by_daemon.is_empty(),
        "write syscalls not refused with EROFS\non the read-only mount:\n{}\n\
         after `mount -o remount,rw` (the daemon's own answers):\n{}",
        by_kernel.join("\n"),
        by_daemon.join("\n")
    );
    assert_eq!(
        std::fs::read(&file_path).unwrap(),
        original,
        "content changed"
    );
    drop(fs);
    assert_eq!(
        checksum_tree(&lib.root).unwrap(),
        before,
        "the origin was modified"
    );
}

/// Reads up to `buf.len()` bytes at `offset`, stopping only at end of file.
fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[test]
fn sixty_four_threads_reading_random_ranges_get_the_source_bytes() {
    let fs = mount_library();
    let handles: Vec<(PathBuf, File, File, u64)> = virtual_to_source(&fs)
        .into_iter()
        .map(|(v, s)| {
            let size = std::fs::metadata(&s).unwrap().len();
            (
                v.clone(),
                File::open(&v).unwrap(),
                File::open(&s).unwrap(),
                size,
            )
        })
        .collect();
    assert!(!handles.is_empty());
    std::thread::scope(|scope| {
        for thread in 0..64u64 {
            let handles = &handles;
            scope.spawn(move || {
                let mut rng = SplitMix64::new(0x5EED_0000 + thread);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for _ in 0..100 {
                    let (path, virt, source, size) =
                        &handles[rng.below(handles.len() as u64) as usize];
                    let len = match rng.below(10) {
                        0..=4 => 1 + rng.below(4096),
                        5..=7 => 1 + rng.below(64 << 10),
                        _ => 1 + rng.below(512 << 10),
                    } as usize;
                    // Some reads start past the end of the file.
                    let offset = rng.below(size + 8192);
                    a.resize(len, 0);
                    b.resize(len, 0);
                    let got = pread_full(virt, &mut a, offset).unwrap();
                    let want = pread_full(source, &mut b, offset).unwrap();
                    assert_eq!(got, want, "{}: length at {offset}+{len}", path.display());
                    assert!(
                        a[..got] == b[..want],
                        "{}: bytes at {offset}+{len}",
                        path.display()
                    );
                }
            });
        }
    });
}

#[test]
fn ten_thousand_open_handles_all_read_and_all_released() {
    const HANDLES: usize = 10_000;
    let limit = harness::raise_nofile_limit(HANDLES as u64 + 2048).unwrap();
    assert!(
        limit > HANDLES as u64 + 256,
        "RLIMIT_NOFILE hard limit too low: {limit}"
    );
    let fs = mount_library();
    let pairs: Vec<(PathBuf, Vec<u8>)> = virtual_to_source(&fs)
        .into_iter()
        .map(|(v, s)| {
            let mut head = std::fs::read(s).unwrap();
            head.truncate(4096);
            (v, head)
        })
        .collect();
    let baseline = harness::open_fd_count(fs.pid()).unwrap();

    let mut open = Vec::with_capacity(HANDLES);
    for i in 0..HANDLES {
        let (path, _) = &pairs[i % pairs.len()];
        let file = File::open(path)
            .unwrap_or_else(|e| panic!("open #{i} of {}: {e}\n{}", path.display(), fs.log()));
        open.push(file);
    }
    let mut buf = vec![0u8; 4096];
    for (i, file) in open.iter().enumerate() {
        let (path, head) = &pairs[i % pairs.len()];
        let n = pread_full(file, &mut buf, 0).unwrap();
        assert!(
            buf[..n] == head[..],
            "handle #{i} of {} reads other bytes",
            path.display()
        );
    }
    drop(open);

    // FUSE sends RELEASE asynchronously after close(2): give the daemon a deadline to
    // drop what it held per handle (a per-file cache of origin fds is allowed).
    let allowed = baseline + pairs.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held = harness::open_fd_count(fs.pid()).unwrap();
    while held > allowed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        held = harness::open_fd_count(fs.pid()).unwrap();
    }
    assert!(
        held <= allowed,
        "daemon still holds {held} fds after close (baseline {baseline})"
    );
    assert_eq!(walked_without_extras(&fs), fs.tree().unwrap());
}

/// The mount's walk less the extra entries album folders show beside their tracks (here
/// the fixture's `cover.jpg`, which is also the album's cover, and `notes.txt`), which
/// `musicfs tree` (the snapshot) does not list; both must be there.
fn walked_without_extras(fs: &MountedFs) -> Vec<PathBuf> {
    let walked = walk_tree(fs.mountpoint()).unwrap();
    let album = Path::new("Artist One/Album A (2001) [FLAC]");
    let extras = [album.join("cover.jpg"), album.join("notes.txt")];
    for e in &extras {
        assert!(
            walked.contains(e),
            "{} is not shown: {walked:?}",
            e.display()
        );
    }
    walked.into_iter().filter(|p| !extras.contains(p)).collect()
}

#[test]
fn with_skip_open_tracks_play_bit_exact_and_write_opens_are_still_refused() {
    let lib = library();
    let mut opts = MountOptions::new([lib.root.clone()]);
    opts.extra_args = ["--passthrough", "off", "--skip-open"]
        .map(std::ffi::OsString::from)
        .to_vec();
    let fs = MountedFs::start(opts).expect("mounting with --skip-open");
    let pairs = virtual_to_source(&fs);
    assert!(!pairs.is_empty());
    // Twice: the second pass reads the sources the daemon kept by inode.
    for _ in 0..2 {
        for (virt, source) in &pairs {
            let through = std::fs::read(virt).unwrap();
            assert!(
                through == std::fs::read(source).unwrap(),
                "{} differs from {}",
                virt.display(),
                source.display()
            );
        }
    }
    let good: BTreeSet<&PathBuf> = lib.good.iter().collect();
    let (virt, source) = pairs
        .iter()
        .find(|(_, s)| good.contains(s))
        .expect("a decodable track");
    assert_eq!(
        harness::audio_md5(virt).unwrap_or_else(|e| panic!("{e:#}")),
        harness::audio_md5(source).unwrap_or_else(|e| panic!("{e:#}")),
    );
    let c = cstr(virt);
    assert_eq!(open_outcome(&c, libc::O_WRONLY), Err(libc::EROFS));
    assert_eq!(open_outcome(&c, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(checksum_tree(&lib.root).unwrap(), lib.checksums);
}
