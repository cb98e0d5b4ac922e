use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::sync::mpsc;
use std::sync::Mutex;

use super::*;

fn local(root: &Path) -> LocalOrigin {
    LocalOrigin::open(&OriginSpec::local(root)).unwrap()
}

/// Lists `dir`: entries by name, and skipped names with their reason.
fn list_all(origin: &dyn Origin, dir: &str) -> (BTreeMap<String, Entry>, BTreeMap<String, String>) {
    let (mut entries, mut skipped) = (BTreeMap::new(), BTreeMap::new());
    origin
        .list(Path::new(dir), &mut |l| match l {
            Listed::Entry(e) => {
                entries.insert(e.name.to_string_lossy().into_owned(), e);
            }
            Listed::Skipped { name, reason } => {
                skipped.insert(name.to_string_lossy().into_owned(), reason.to_string());
            }
        })
        .unwrap();
    (entries, skipped)
}

#[test]
fn listing_gives_files_and_directories_and_follows_only_symlinks_inside_the_origin() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("o.flac"), b"out").unwrap();
    let root = t.path().canonicalize().unwrap();
    fs::create_dir(root.join("album")).unwrap();
    fs::write(root.join("album/1.flac"), b"12345").unwrap();
    symlink(root.join("album/1.flac"), root.join("link.flac")).unwrap();
    symlink(root.join("album"), root.join("alias")).unwrap();
    symlink(root.join("nowhere"), root.join("dangling.flac")).unwrap();
    symlink(outside.path().join("o.flac"), root.join("out.flac")).unwrap();
    let origin = local(&root);

    let (entries, skipped) = list_all(&origin, "");
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(names, ["album", "alias", "link.flac"]);
    assert_eq!(entries["album"].stat.kind, EntryKind::Dir);
    assert!(!entries["album"].via_symlink);
    assert_eq!(entries["alias"].stat.kind, EntryKind::Dir);
    assert!(entries["alias"].via_symlink);
    let link = &entries["link.flac"];
    assert!(link.via_symlink && link.stat.kind == EntryKind::File && link.stat.size == 5);
    assert!(skipped["dangling.flac"].contains("dangling"), "{skipped:?}");
    assert!(skipped["out.flac"].contains("outside"), "{skipped:?}");
    assert_eq!(skipped.len(), 2);

    let (inner, _) = list_all(&origin, "alias");
    assert_eq!(
        inner["1.flac"].stat, link.stat,
        "a symlink's entry is its target's stat"
    );
}

#[test]
fn stat_reports_size_mtime_mode_owner_and_a_token_that_matches_the_scanners_state() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("a.flac");
    fs::write(&file, b"abc").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let origin = local(t.path());
    let stat = origin.stat(Path::new("a.flac")).unwrap();
    let md = fs::metadata(&file).unwrap();
    assert_eq!(stat.kind, EntryKind::File);
    assert_eq!(stat.size, 3);
    assert_eq!(stat.mode, Some(0o640));
    assert_eq!((stat.uid, stat.gid), (Some(md.uid()), Some(md.gid())));
    assert_eq!(
        stat.token,
        ChangeToken::Local {
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        }
    );
    let state = stat.scan_state();
    assert_eq!(state.mtime_ns, md.mtime() * 1_000_000_000 + md.mtime_nsec());
    assert_eq!((state.size, state.ino), (3, md.ino()));
    assert_eq!(Stat::from_metadata(&md), stat);
    assert_eq!(origin.stat(Path::new("")).unwrap().kind, EntryKind::Dir);
}

#[test]
fn read_at_fills_the_buffer_at_any_offset_and_is_short_only_at_end_of_file() {
    let t = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(t.path().join("big.flac"), &data).unwrap();
    let source = local(t.path()).open(Path::new("big.flac")).unwrap();
    assert_eq!(source.len(), data.len() as u64);
    assert!(!source.is_empty());
    for (offset, len) in [
        (0, 4096),
        (1, 70_000),
        (99_000, 1000),
        (99_990, 64),
        (100_000, 8),
    ] {
        let mut buf = vec![0u8; len];
        let n = source.read_at(&mut buf, offset as u64).unwrap();
        let want = &data[offset.min(data.len())..(offset + len).min(data.len())];
        assert_eq!(n, want.len(), "offset {offset} len {len}");
        assert_eq!(&buf[..n], want);
    }
    assert_eq!(source.read_at(&mut [], 10).unwrap(), 0);
}

#[test]
fn a_source_is_opened_read_only_with_its_fd_exposed_and_the_origin_left_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("t.flac");
    fs::write(&path, b"original bytes").unwrap();
    let before = fs::read(&path).unwrap();
    let origin = local(t.path());
    let source = origin.open(Path::new("t.flac")).unwrap();
    let fd = source.raw_fd().expect("a local source exposes its fd");
    // SAFETY: `fd` is open for the life of `source`; F_GETFL has no pointer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    assert_eq!(
        flags & libc::O_NONBLOCK,
        0,
        "O_NONBLOCK must be cleared after open"
    );
    // SAFETY: writing from a valid buffer to an fd we keep open; the call must fail.
    let wrote = unsafe { libc::write(fd, b"X".as_ptr().cast(), 1) };
    assert_eq!(wrote, -1);
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
    // SAFETY: as above, with pwrite.
    let wrote = unsafe { libc::pwrite(fd, b"X".as_ptr().cast(), 1, 0) };
    assert_eq!(wrote, -1);
    let mut buf = [0u8; 64];
    let n = source.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"original bytes");
    drop(source);
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn opening_a_missing_file_is_vanished_and_a_fifo_or_directory_is_not_a_file() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("dir")).unwrap();
    let fifo = CString::new(t.path().join("pipe.flac").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let origin = local(t.path());
    let err = origin.open(Path::new("gone.flac")).unwrap_err();
    assert!(err.is_vanished(), "{err}");
    let err = origin.open(Path::new("dir/sub/gone.flac")).unwrap_err();
    assert!(err.is_vanished(), "{err}");
    // Opening a FIFO with no writer would block a reader forever; it must fail at once.
    let err = origin.open(Path::new("pipe.flac")).unwrap_err();
    assert!(matches!(err, OriginError::NotAFile { .. }), "{err}");
    let err = origin.open(Path::new("dir")).unwrap_err();
    assert!(matches!(err, OriginError::NotAFile { .. }), "{err}");
    assert!(origin
        .stat(Path::new("gone.flac"))
        .unwrap_err()
        .is_vanished());
    let err = origin.list(Path::new("nodir"), &mut |_| {}).unwrap_err();
    assert!(err.is_vanished(), "{err}");
    assert!(is_vanished_io(&io::Error::from_raw_os_error(libc::ESTALE)));
}

#[test]
fn paths_that_leave_the_origin_are_refused() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("in")).unwrap();
    fs::write(t.path().join("secret"), b"x").unwrap();
    let origin = local(&t.path().join("in"));
    for rel in ["../secret", "a/../../secret", "/etc/passwd"] {
        let err = origin.open(Path::new(rel)).unwrap_err();
        assert!(
            matches!(err, OriginError::BadRelPath { .. }),
            "{rel}: {err}"
        );
        assert!(origin.stat(Path::new(rel)).is_err());
    }
}

#[test]
fn the_probe_reports_a_missing_root_a_file_root_and_a_good_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("lib");
    fs::create_dir(&root).unwrap();
    let origin = local(&root);
    let recorded = origin.root_identity().unwrap();
    assert!(!recorded.mount_root);
    assert_eq!(origin.probe(Some(&recorded)), Health::Up);
    assert_eq!(origin.probe(None), Health::Up);
    assert_eq!(origin.change_detection(), ChangeDetection::Inotify);
    assert_eq!(
        origin.local_root(),
        Some(root.canonicalize().unwrap().as_path())
    );

    fs::remove_dir(&root).unwrap();
    assert_eq!(
        origin.probe(Some(&recorded)),
        Health::Offline(Offline::Missing)
    );
    assert_eq!(origin.probe(None), Health::Offline(Offline::Missing));
    assert_eq!(origin.root_identity(), None);
    assert_eq!(origin.change_detection(), ChangeDetection::Poll);
    fs::write(&root, b"not a directory").unwrap();
    assert_eq!(origin.probe(None), Health::Offline(Offline::NotADirectory));
    fs::remove_file(&root).unwrap();
    fs::create_dir(&root).unwrap();
    assert_eq!(origin.probe(Some(&recorded)), Health::Up, "back again: up");
}

#[test]
fn a_root_missing_at_open_still_opens_and_probes_offline() {
    let origin = open_origin(&OriginSpec::local("/no/such/musicfs/origin")).unwrap();
    assert_eq!(origin.key(), OsStr::new("/no/such/musicfs/origin"));
    assert_eq!(origin.probe(None), Health::Offline(Offline::Missing));
    assert!(origin.open(Path::new("a.flac")).unwrap_err().is_vanished());
}

/// A mount made for a test, unmounted when dropped (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    /// `mount(source, target, fstype, flags)`; panics with a clear message if the test
    /// cannot mount (these tests need root, as the rest of the suite does).
    fn new(source: &str, target: &Path, fstype: Option<&str>, flags: libc::c_ulong) -> Mount {
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (src, dst) = (c(source.as_bytes()), c(target.as_os_str().as_bytes()));
        let fstype = fstype.map(|f| c(f.as_bytes()));
        let fs_ptr = fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr());
        // SAFETY: NUL-terminated strings that outlive the call; no mount data.
        let rc =
            unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs_ptr, flags, std::ptr::null()) };
        assert_eq!(
            rc,
            0,
            "cannot mount {source} on {} (this test needs root and mount(2)): {}",
            target.display(),
            io::Error::last_os_error()
        );
        Mount(target.to_path_buf())
    }

    fn unmount(self) {
        drop(self)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let dst = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH so a failing test cannot leave it busy.
        let rc = unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 && !std::thread::panicking() {
            panic!(
                "cannot unmount {}: {}",
                self.0.display(),
                io::Error::last_os_error()
            );
        }
    }
}

#[test]
fn the_probe_says_not_mounted_when_a_recorded_mount_point_shows_the_directory_below() {
    let share = tempfile::tempdir().unwrap();
    fs::write(share.path().join("1.flac"), b"x").unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = Mount::new(
        share.path().to_str().unwrap(),
        mnt.path(),
        None,
        libc::MS_BIND,
    );
    let origin = local(mnt.path());
    let recorded = origin.root_identity().unwrap();
    assert!(recorded.mount_root, "a bind mount's root is a mount root");
    assert_eq!(origin.probe(Some(&recorded)), Health::Up);

    mount.unmount();
    assert!(
        fs::read_dir(mnt.path()).unwrap().next().is_none(),
        "empty below"
    );
    assert_eq!(
        origin.probe(Some(&recorded)),
        Health::Offline(Offline::NotMounted)
    );
    let shown = Offline::NotMounted.to_string();
    assert!(shown.contains("mount"), "{shown}");

    let _again = Mount::new(
        share.path().to_str().unwrap(),
        mnt.path(),
        None,
        libc::MS_BIND,
    );
    assert_eq!(
        origin.probe(Some(&recorded)),
        Health::Up,
        "mounted again: up"
    );
}

#[test]
fn the_probe_says_device_changed_when_another_file_system_covers_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let origin = local(dir.path());
    let recorded = origin.root_identity().unwrap();
    let _tmpfs = Mount::new("musicfs-test", dir.path(), Some("tmpfs"), 0);
    match origin.probe(Some(&recorded)) {
        Health::Offline(Offline::DeviceChanged {
            recorded: was,
            found,
        }) => {
            assert_eq!(was, recorded.dev);
            assert_ne!(found, recorded.dev);
        }
        other => panic!("expected DeviceChanged, got {other:?}"),
    }
    assert_eq!(
        origin.probe(None),
        Health::Up,
        "without a record there is nothing to compare"
    );
}

#[test]
fn a_spec_handed_to_another_driver_is_refused_naming_its_scheme() {
    let s = "smb://u:pw@h/share";
    let spec = OriginSpec::parse(s).unwrap();
    match LocalOrigin::open(&spec) {
        Err(e @ OriginError::UnsupportedScheme { scheme: "smb", .. }) => {
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        other => panic!("{s}: {other:?}"),
    }
}

/// An origin whose probe blocks until told to answer, like a hung NFS mount.
#[derive(Debug)]
struct Hung {
    spec: OriginSpec,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Origin for Hung {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }
    fn key(&self) -> &OsStr {
        OsStr::new("hung")
    }
    fn list(&self, _: &Path, _: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        Ok(())
    }
    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        Err(OriginError::NotAFile {
            origin: "hung".into(),
            rel: rel.into(),
        })
    }
    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        Err(OriginError::NotAFile {
            origin: "hung".into(),
            rel: rel.into(),
        })
    }
    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::None
    }
    fn probe(&self, _: Option<&RootIdentity>) -> Health {
        let _ = self.release.lock().unwrap().recv();
        Health::Up
    }
    fn root_identity(&self) -> Option<RootIdentity> {
        None
    }
}

#[test]
fn a_probe_that_hangs_is_reported_unresponsive_in_time() {
    let (tx, rx) = mpsc::channel();
    let origin: Arc<dyn Origin> = Arc::new(Hung {
        spec: OriginSpec::local("/hung"),
        release: Mutex::new(rx),
    });
    let waited = Duration::from_millis(50);
    let started = std::time::Instant::now();
    let health = probe_within(&origin, None, waited);
    assert_eq!(health, Health::Offline(Offline::Unresponsive { waited }));
    assert!(started.elapsed() < Duration::from_secs(5));
    tx.send(()).unwrap();
    tx.send(()).unwrap();
    assert_eq!(
        probe_within(&origin, None, Duration::from_secs(30)),
        Health::Up
    );
    let local: Arc<dyn Origin> = Arc::new(local(Path::new("/")));
    assert_eq!(
        probe_within(&local, None, Duration::from_secs(30)),
        Health::Up
    );
}
