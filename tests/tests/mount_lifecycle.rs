#![cfg(feature = "e2e")]
//! How `musicfsd` starts, stops and refuses to start: signals, external unmounts, a killed
//! daemon, an unprivileged user, bad command lines, a corrupt snapshot.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use musicfs_tests::harness::{
    self, describe_status, library, run_daemon_expecting_exit, walk_tree, MountOptions, MountedFs,
    RunAs, EXIT_DEADLINE,
};

fn mount_library() -> MountedFs {
    MountedFs::start(MountOptions::new([library().root.clone()])).expect("mounting the library")
}

/// The daemon ended with status 0 (its log is shown otherwise).
fn assert_exited_zero(status: std::process::ExitStatus, fs: &MountedFs) {
    assert_eq!(
        status.code(),
        Some(0),
        "{}; log:\n{}",
        describe_status(status),
        fs.log()
    );
}

fn stop_with(signal: libc::c_int) {
    let mut fs = mount_library();
    assert!(!walk_tree(fs.mountpoint()).unwrap().is_empty());
    fs.kill(signal).unwrap();
    let status = fs.wait_exit(EXIT_DEADLINE).unwrap();
    assert_exited_zero(status, &fs);
    fs.wait_unmounted(EXIT_DEADLINE).unwrap();
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    stop_with(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    stop_with(libc::SIGINT);
}

#[test]
fn external_fusermount_unmount_makes_the_daemon_exit_zero() {
    let mut fs = mount_library();
    harness::run_ok(Command::new("fusermount3").arg("-u").arg(fs.mountpoint())).unwrap();
    let status = fs.wait_exit(EXIT_DEADLINE).unwrap();
    assert_exited_zero(status, &fs);
    assert!(fs.mount_entry().unwrap().is_none());
}

#[test]
fn sigkill_leaves_no_mount_behind() {
    let mut fs = mount_library();
    fs.kill(libc::SIGKILL).unwrap();
    let status = fs.wait_exit(EXIT_DEADLINE).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    fs.wait_unmounted(EXIT_DEADLINE)
        .expect("a SIGKILLed daemon left its mount behind (no auto-unmount)");
}

/// Why an unprivileged user cannot use FUSE here, if it cannot.
fn unprivileged_fuse_blocker(user: RunAs) -> Option<String> {
    let dev = match fs::metadata("/dev/fuse") {
        Ok(m) => m,
        Err(e) => return Some(format!("/dev/fuse: {e}")),
    };
    use std::os::unix::fs::MetadataExt;
    let mode = dev.mode();
    let rw_for_user = (dev.uid() == user.uid && mode & 0o600 == 0o600)
        || (dev.gid() == user.gid && mode & 0o060 == 0o060)
        || mode & 0o006 == 0o006;
    if !rw_for_user {
        return Some(format!(
            "/dev/fuse is mode {:o} owned by {}:{}, so uid {} cannot open it (distributions \
             ship it 0666; set MUSICFS_E2E_GRANT_DEV_FUSE=1 to let this test chmod it for its run)",
            mode & 0o7777,
            dev.uid(),
            dev.gid(),
            user.uid
        ));
    }
    match fs::metadata("/usr/bin/fusermount3") {
        Ok(m) if m.mode() & 0o4000 != 0 && m.uid() == 0 => None,
        Ok(_) => Some("/usr/bin/fusermount3 is not setuid root".into()),
        Err(e) => Some(format!("/usr/bin/fusermount3: {e}")),
    }
}

/// Restores `/dev/fuse`'s mode when dropped.
struct DevFuseMode(u32);

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

/// A private copy of the good tracks that `user` can read.
fn readable_copy(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let lib = library();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    lib.good
        .iter()
        .enumerate()
        .map(|(i, good)| {
            let name = format!("{i:03}-{}", good.file_name().unwrap().to_string_lossy());
            let copy = dir.join(name);
            fs::copy(good, &copy).unwrap();
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
            (good.clone(), copy)
        })
        .collect()
}

#[test]
fn unprivileged_user_mounts_and_reads() {
    let user = RunAs::nobody();
    let mut _restore = None;
    if let Some(reason) = unprivileged_fuse_blocker(user) {
        if std::env::var_os("MUSICFS_E2E_GRANT_DEV_FUSE").is_some_and(|v| v == "1") {
            let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
            _restore = Some(DevFuseMode(mode));
            fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        } else {
            // Not a skip: a test that cannot run here fails, saying why.
            panic!("unprivileged_user_mounts_and_reads cannot run here: {reason}");
        }
    }
    let origin = tempfile::tempdir().unwrap();
    let copies = readable_copy(origin.path());
    let mut opts = MountOptions::new([origin.path().to_path_buf()]);
    opts.run_as = Some(user);
    let mut fs = MountedFs::start(opts).expect("unprivileged mount");
    let entry = fs.mount_entry().unwrap().unwrap();
    assert!(entry.is_fuse(), "{entry:?}");

    let mut want: Vec<u64> = copies
        .iter()
        .map(|(_, c)| harness::xxh3_file(c).unwrap())
        .collect();
    let mut got: Vec<u64> = files_as(user, fs.mountpoint())
        .iter()
        .map(|virt| {
            let out = harness::run_ok(user.command("cat").arg(virt)).unwrap();
            xxhash_rust::xxh3::xxh3_64(&out.stdout)
        })
        .collect();
    want.sort_unstable();
    // Byte-identical copies (the fixture's symlink and its target, both copied) are one
    // track, shown once.
    want.dedup();
    got.sort_unstable();
    assert_eq!(
        got, want,
        "what the unprivileged user reads differs from the origin"
    );
    let status = fs.stop().unwrap();
    assert_exited_zero(status, &fs);
}

/// Regular files under `root` as `user` sees them (the mount is private to its owner).
fn files_as(user: RunAs, root: &Path) -> Vec<PathBuf> {
    let out = harness::run_ok(user.command("find").arg(root).args(["-type", "f"])).unwrap();
    harness::without_album_extras(harness::split_lines(&out.stdout))
}

/// Runs the daemon on a bad command line and checks it exits 2 with a message holding
/// every one of `needles` (case-insensitive).
fn assert_refused(args: Vec<OsString>, mountpoint: &Path, needles: &[&str]) {
    let failed = run_daemon_expecting_exit(&args, None, mountpoint, EXIT_DEADLINE).unwrap();
    assert_eq!(
        failed.status.code(),
        Some(2),
        "{args:?}: {}; stderr:\n{}",
        describe_status(failed.status),
        failed.stderr
    );
    let lower = failed.stderr.to_lowercase();
    let line = lower
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(&n.to_lowercase())));
    assert!(
        line.is_some(),
        "{args:?}: no stderr line names {needles:?}:\n{}",
        failed.stderr
    );
}

fn daemon_args(
    origin: &Path,
    state: &Path,
    extra: &[&OsString],
    mountpoint: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--origin".into(),
        origin.into(),
        "--state-dir".into(),
        state.into(),
    ];
    args.extend(extra.iter().map(|a| (*a).clone()));
    args.push(mountpoint.into());
    args
}

#[test]
fn missing_mountpoint_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("no-such-dir");
    let args = daemon_args(&library().root, &tmp.path().join("state"), &[], &mnt);
    assert_refused(args, &mnt, &[&mnt.to_string_lossy()]);
}

#[test]
fn mountpoint_that_is_a_file_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("a-file");
    fs::write(&mnt, b"not a dir").unwrap();
    let args = daemon_args(&library().root, &tmp.path().join("state"), &[], &mnt);
    assert_refused(args, &mnt, &[&mnt.to_string_lossy(), "director"]);
}

#[test]
fn mountpoint_already_mounted_exits_2_and_leaves_the_first_mount_serving() {
    let first = mount_library();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = first.mountpoint().to_path_buf();
    let args = daemon_args(&library().root, &tmp.path().join("state"), &[], &mnt);
    let failed = run_daemon_expecting_exit(&args, None, &mnt, EXIT_DEADLINE);
    // A second daemon mounting over the first would be removed by the helper above; the
    // first must still be mounted and serving either way.
    let failed = failed.unwrap();
    assert_eq!(failed.status.code(), Some(2), "stderr:\n{}", failed.stderr);
    assert!(
        failed.stderr.to_lowercase().contains("mount"),
        "stderr does not name the problem:\n{}",
        failed.stderr
    );
    assert!(first.mount_entry().unwrap().is_some());
    assert_eq!(
        harness::without_album_extras(walk_tree(first.mountpoint()).unwrap()),
        first.tree().unwrap()
    );
}

#[test]
fn missing_origin_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let origin = tmp.path().join("no-such-origin");
    let args = daemon_args(&origin, &tmp.path().join("state"), &[], &mnt);
    assert_refused(args, &mnt, &[&origin.to_string_lossy()]);
}

#[test]
fn an_origin_of_an_unknown_scheme_exits_2_naming_the_scheme_and_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let state = tmp.path().join("state");
    let secret = "NOT-TO-BE-SHOWN";
    let spec = format!("webdav://me:{secret}@nas/share");
    let args = daemon_args(Path::new(&spec), &state, &[], &mnt);
    assert_refused(args.clone(), &mnt, &["webdav", "unknown scheme"]);
    let failed = run_daemon_expecting_exit(&args, None, &mnt, EXIT_DEADLINE).unwrap();
    assert!(!failed.stderr.contains(secret), "{}", failed.stderr);

    let mut scan = Command::new(harness::binary("musicfs").unwrap());
    scan.arg("--state-dir")
        .arg(&state)
        .args(["scan", "--origin", &spec]);
    let out = scan.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "musicfs scan {spec}: {stderr}");
    assert!(
        stderr.contains("webdav") && stderr.contains("unknown scheme"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
}

#[test]
fn origin_unreadable_by_the_daemon_user_exits_2_naming_it() {
    let user = RunAs::nobody();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (mnt, state, origin) = (
        tmp.path().join("mnt"),
        tmp.path().join("state"),
        tmp.path().join("private"),
    );
    for dir in [&mnt, &state, &origin] {
        fs::create_dir(dir).unwrap();
    }
    for dir in [&mnt, &state] {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).unwrap();
    }
    fs::copy(&library().good[0], origin.join("track.flac")).unwrap();
    fs::set_permissions(&origin, fs::Permissions::from_mode(0o700)).unwrap();
    let args = daemon_args(&origin, &state, &[], &mnt);
    let failed = run_daemon_expecting_exit(&args, Some(user), &mnt, EXIT_DEADLINE).unwrap();
    assert_eq!(failed.status.code(), Some(2), "stderr:\n{}", failed.stderr);
    assert!(
        failed.stderr.contains(&*origin.to_string_lossy()),
        "stderr:\n{}",
        failed.stderr
    );
}

#[test]
fn unparseable_config_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let config = tmp.path().join("musicfs.toml");
    fs::write(&config, "this is = = not [toml\n").unwrap();
    let flag: OsString = "--config".into();
    let path: OsString = config.clone().into();
    let args = daemon_args(
        &library().root,
        &tmp.path().join("state"),
        &[&flag, &path],
        &mnt,
    );
    assert_refused(args, &mnt, &[&config.to_string_lossy()]);
}

#[test]
fn a_collection_whose_query_does_not_parse_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let config = tmp.path().join("musicfs.toml");
    fs::write(
        &config,
        "[collections.sixties]\nquery = \"year:[1960 1969]\"\n",
    )
    .unwrap();
    let flag: OsString = "--config".into();
    let path: OsString = config.into();
    let args = daemon_args(
        &library().root,
        &tmp.path().join("state"),
        &[&flag, &path],
        &mnt,
    );
    assert_refused(args, &mnt, &["collection `sixties`", "`TO`"]);
}

/// Serves the library, stops, damages `tree.snap` with `corrupt`, restarts: the daemon must
/// report the damage, rebuild, and serve the same tree.
fn survives_corrupt_snapshot(corrupt: impl Fn(&mut Vec<u8>)) {
    let state = tempfile::tempdir().unwrap();
    let mut opts = MountOptions::new([library().root.clone()]);
    opts.state_dir = Some(state.path().to_path_buf());
    let mut fs1 = MountedFs::start(opts.clone()).unwrap();
    let before = walk_tree(fs1.mountpoint()).unwrap();
    let status = fs1.stop().unwrap();
    assert_exited_zero(status, &fs1);
    drop(fs1);

    let snap = state.path().join("tree.snap");
    let mut bytes = fs::read(&snap).expect("the daemon left no tree.snap in its state dir");
    corrupt(&mut bytes);
    fs::write(&snap, &bytes).unwrap();

    let fs2 = MountedFs::start(opts).unwrap();
    // Damage the O(1) start-up checks catch is rebuilt before mounting; damage only the body
    // checksum finds is rebuilt in the background right after: wait for either.
    let reported = |log: &str| {
        log.lines().any(|l| {
            let l = l.to_lowercase();
            (l.contains("warn") || l.contains("error")) && l.contains("snapshot")
        })
    };
    let deadline = std::time::Instant::now() + EXIT_DEADLINE;
    loop {
        let log = fs2.log();
        if reported(&log) && walk_tree(fs2.mountpoint()).ok().as_ref() == Some(&before) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged snapshot was not reported and replaced:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = fs2.log();
    assert_eq!(walk_tree(fs2.mountpoint()).unwrap(), before, "log:\n{log}");
    assert_eq!(
        fs2.tree().unwrap(),
        harness::without_album_extras(before),
        "`musicfs tree` after the rebuild"
    );
    let sources = fs2.track_sources(&[library().root.clone()]).unwrap();
    for (virt, source) in sources.iter().take(3) {
        assert!(
            fs::read(virt).unwrap() == fs::read(source).unwrap(),
            "{}",
            virt.display()
        );
    }
}

#[test]
fn snapshot_with_a_corrupt_header_is_reported_rebuilt_and_serves_the_same_tree() {
    survives_corrupt_snapshot(|bytes| bytes.iter_mut().take(64).for_each(|b| *b ^= 0xA5));
}

#[test]
fn snapshot_with_corrupt_content_is_reported_rebuilt_and_serves_the_same_tree() {
    survives_corrupt_snapshot(|bytes| {
        let (start, len) = (bytes.len() / 2, bytes.len());
        bytes[start..(start + 256).min(len)]
            .iter_mut()
            .for_each(|b| *b ^= 0xA5);
    });
}

#[test]
fn truncated_snapshot_is_reported_rebuilt_and_serves_the_same_tree() {
    survives_corrupt_snapshot(|bytes| bytes.truncate(bytes.len() / 2));
}
