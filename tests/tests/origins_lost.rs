#![cfg(feature = "e2e")]
//! Origins are never lost, on a real mount: an origin emptied while served, missing at
//! start-up or losing most of its files at once is **offline**, not deleted. Its tracks stay
//! listed and in the catalog (same ids), reads of them fail with EIO rather than hang or
//! say ENOENT, the daemon logs the change of state once, and when the files are back they
//! are served again without a restart. Only an explicit command removes them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musicfs_tests::harness::{
    binary, checksum_tree, flac_with_comments, get_xattr, musicfs_scan, musicfs_tree_long,
    one_second_flac, run_daemon_expecting_exit, run_ok, wait_for_log_line, walk_files, Checksum,
    MountOptions, MountedFs, EXIT_DEADLINE,
};
use tempfile::TempDir;

/// How long a read may take before the test calls it a hang (EIO is expected at once).
const HANG_GUARD: Duration = Duration::from_secs(5);
/// How long the daemon may take to notice a change of state.
const NOTICE: Duration = Duration::from_secs(20);
const OFFLINE_LINE: &str = "origin offline";
const ONLINE_LINE: &str = "origin online";

/// Writes `count` tracks of album `album` under `origin/album/`.
fn write_album(origin: &Path, album: &str, count: usize) {
    let dir = origin.join(album);
    fs::create_dir_all(&dir).unwrap();
    for n in 1..=count {
        let (num, title) = (n.to_string(), format!("{album} {n}"));
        let tags = [
            ("TITLE", title.as_str()),
            ("ARTIST", "Keeper"),
            ("ALBUM", album),
            ("TRACKNUMBER", num.as_str()),
        ];
        let bytes = flac_with_comments(one_second_flac(), &tags).unwrap();
        fs::write(dir.join(format!("{n:02}.flac")), bytes).unwrap();
    }
}

/// A work dir holding origins and a state dir that outlives any one daemon.
struct Work {
    _dir: TempDir,
    root: PathBuf,
    state: PathBuf,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::Builder::new()
            .prefix("musicfs-lost-")
            .tempdir()
            .unwrap();
        let root = dir.path().canonicalize().unwrap();
        let state = root.join("state");
        fs::create_dir(&state).unwrap();
        Work {
            _dir: dir,
            root,
            state,
        }
    }

    fn origin(&self, name: &str) -> PathBuf {
        let o = self.root.join(name);
        fs::create_dir_all(&o).unwrap();
        o
    }

    /// Options for a daemon serving `origins` with long kernel caches and this state dir.
    fn options(&self, origins: &[PathBuf]) -> MountOptions {
        let mut opts = MountOptions::live(&origins[0], &self.state);
        opts.origins = origins.to_vec();
        opts
    }
}

/// The files of an origin (content hash and mtime): what the daemon must never change.
fn file_checksums(origin: &Path) -> BTreeMap<PathBuf, Checksum> {
    checksum_tree(origin)
        .unwrap()
        .into_iter()
        .filter(|(rel, _)| origin.join(rel).is_file())
        .collect()
}

/// Reads `path` whole on another thread; panics if that takes longer than [`HANG_GUARD`].
fn guarded_read(path: &Path) -> (io::Result<Vec<u8>>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(owned));
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(result) => (result, start.elapsed()),
        Err(_) => panic!("reading {} hung for {HANG_GUARD:?}", path.display()),
    }
}

/// Asserts every file in `files` reads as EIO (not ENOENT, not a hang); returns the slowest.
fn assert_all_eio(files: &[PathBuf], log: &MountedFs) -> Duration {
    let mut slowest = Duration::ZERO;
    for f in files {
        let (result, took) = guarded_read(f);
        slowest = slowest.max(took);
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
            other => panic!(
                "{}: expected EIO, got {:?}; log:\n{}",
                f.display(),
                other.map(|b| b.len()),
                log.log()
            ),
        }
    }
    slowest
}

/// Every file in the mount with its source (`user.musicfs.source`).
fn sources(fs: &MountedFs) -> BTreeMap<PathBuf, PathBuf> {
    try_sources(fs).unwrap()
}

/// [`sources`], or why not (a file listed may be gone by its getxattr while a republish
/// is under way).
fn try_sources(fs: &MountedFs) -> anyhow::Result<BTreeMap<PathBuf, PathBuf>> {
    walk_files(fs.mountpoint())?
        .into_iter()
        .map(|virt| {
            let src = get_xattr(&virt, "user.musicfs.source")?
                .ok_or_else(|| anyhow::anyhow!("{} names no source", virt.display()))?;
            let src = String::from_utf8(src)?;
            Ok((virt, PathBuf::from(src)))
        })
        .collect()
}

/// Catalog ids (inode numbers) of the published tree's files: equal sets mean no track
/// was removed and re-added, as ids are never reused.
fn track_ids(state: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = musicfs_tree_long(state)
        .unwrap()
        .into_iter()
        .filter(|e| e.source.is_some())
        .map(|e| e.ino)
        .collect();
    ids.sort_unstable();
    ids
}

/// `musicfs origin list`: root -> tracks in the catalog.
fn catalog_counts(state: &Path) -> BTreeMap<PathBuf, usize> {
    let mut cmd = Command::new(binary("musicfs").unwrap());
    cmd.args(["origin", "list", "--state-dir"]).arg(state);
    let out = run_ok(&mut cmd).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (root, n) = l.rsplit_once('\t').expect("root TAB count");
            (PathBuf::from(root), n.parse().unwrap())
        })
        .collect()
}

fn root_origins_xattr(fs: &MountedFs) -> String {
    let v = get_xattr(fs.mountpoint(), "user.musicfs.origins")
        .unwrap()
        .expect("the root lists its origins");
    String::from_utf8(v).unwrap()
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Moves every entry of `from` into `to` (which must exist).
fn move_entries(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::rename(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn an_origin_emptied_while_served_stays_listed_reads_eio_and_comes_back_without_a_restart() {
    let work = Work::new();
    let origin = work.origin("music");
    write_album(&origin, "Kept", 5);
    // A loose file at the root, a track of its own (another title: an exact copy of a
    // track would be shown once).
    let loose = flac_with_comments(
        one_second_flac(),
        &[("TITLE", "Loose"), ("ARTIST", "Keeper"), ("ALBUM", "Kept")],
    )
    .unwrap();
    fs::write(origin.join("loose.flac"), loose).unwrap();
    let checksums = file_checksums(&origin);
    let opts = work.options(std::slice::from_ref(&origin));
    let (fs, _) = MountedFs::start_watching(opts, NOTICE).unwrap_or_else(|e| panic!("{e:#}"));
    let served = sources(&fs);
    assert_eq!(served.len(), 6, "{served:?}");
    let files: Vec<PathBuf> = served.keys().cloned().collect();
    let ids = track_ids(&work.state);
    let from = fs.log().len();

    let away = work.origin("music.away");
    move_entries(&origin, &away);
    let slowest = assert_all_eio(&files, &fs);
    eprintln!("reads right after the move: EIO, slowest {slowest:?}");
    wait_for_log_line(fs.log_path(), from, &[OFFLINE_LINE], NOTICE).unwrap();
    let slowest = assert_all_eio(&files, &fs);
    eprintln!("reads of the offline origin: EIO, slowest {slowest:?}");
    assert_eq!(sources(&fs), served, "every track is still listed");
    let state = root_origins_xattr(&fs);
    assert!(state.contains("\toffline\t"), "{state}");
    assert_eq!(catalog_counts(&work.state)[&origin], 6);

    let back = fs.log().len();
    move_entries(&away, &origin);
    wait_for_log_line(fs.log_path(), back, &[ONLINE_LINE], NOTICE).unwrap();
    for (virt, src) in &served {
        let (got, _) = guarded_read(virt);
        let got = got.unwrap_or_else(|e| panic!("{}: {e}; log:\n{}", virt.display(), fs.log()));
        assert!(
            got == fs::read(src).unwrap(),
            "{} serves its source",
            virt.display()
        );
    }
    assert!(root_origins_xattr(&fs).contains("\tup"));
    assert_eq!(sources(&fs), served);
    assert_eq!(track_ids(&work.state), ids, "the catalog never lost a row");
    assert_eq!(catalog_counts(&work.state)[&origin], 6);
    let log = fs.log();
    assert_eq!(count_lines(&log, OFFLINE_LINE), 1, "logged once:\n{log}");
    assert_eq!(count_lines(&log, ONLINE_LINE), 1, "logged once:\n{log}");
    assert_eq!(
        file_checksums(&origin),
        checksums,
        "the origin is untouched"
    );
}

/// Also: nothing readable and no snapshot is exit 2, and `musicfs origin forget` is what
/// removes a missing origin's tracks.
#[test]
fn a_daemon_with_a_snapshot_serves_when_an_origin_is_missing_at_start_and_when_it_returns() {
    let work = Work::new();
    let (a, b) = (work.origin("a"), work.origin("b"));
    write_album(&a, "Here", 3);
    write_album(&b, "Gone", 3);
    let checksums = file_checksums(&a);
    musicfs_scan(&[a.clone(), b.clone()], &work.state).unwrap();
    let ids = track_ids(&work.state);
    fs::rename(&b, work.root.join("b.removed")).unwrap();

    let fs =
        MountedFs::start(work.options(&[a.clone(), b.clone()])).unwrap_or_else(|e| panic!("{e:#}"));
    wait_for_log_line(fs.log_path(), 0, &[OFFLINE_LINE], NOTICE).unwrap();
    let served = sources(&fs);
    assert_eq!(
        served.len(),
        6,
        "both origins' tracks are listed: {served:?}"
    );
    let (here, gone): (Vec<_>, Vec<_>) = served.iter().partition(|(_, src)| src.starts_with(&a));
    assert_eq!((here.len(), gone.len()), (3, 3));
    for (virt, src) in here {
        let (got, _) = guarded_read(virt);
        assert!(got.unwrap() == fs::read(src).unwrap(), "{}", virt.display());
    }
    let gone: Vec<PathBuf> = gone.into_iter().map(|(v, _)| v.clone()).collect();
    assert_all_eio(&gone, &fs);
    let state = root_origins_xattr(&fs);
    let b_line = state.lines().find(|l| l.starts_with(&*b.to_string_lossy()));
    assert!(b_line.is_some_and(|l| l.contains("\toffline\t")), "{state}");
    assert_eq!(track_ids(&work.state), ids, "no track was removed");

    // No watch can see a root reappear: the offline retry finds it.
    let back = fs.log().len();
    fs::rename(work.root.join("b.removed"), &b).unwrap();
    wait_for_log_line(fs.log_path(), back, &[ONLINE_LINE], NOTICE).unwrap();
    for (virt, src) in served.iter().filter(|(_, src)| src.starts_with(&b)) {
        let (got, _) = guarded_read(virt);
        let got = got.unwrap_or_else(|e| panic!("{}: {e}; log:\n{}", virt.display(), fs.log()));
        assert!(got == fs::read(src).unwrap(), "{}", virt.display());
    }
    assert_eq!(file_checksums(&a), checksums, "the origin is untouched");
    drop(fs);
    fs::rename(&b, work.root.join("b.removed")).unwrap();

    // Only the explicit command drops the missing origin's tracks.
    let mut forget = Command::new(binary("musicfs").unwrap());
    forget.args(["origin", "forget"]).arg(&b);
    forget.arg("--state-dir").arg(&work.state);
    run_ok(&mut forget).unwrap();
    let counts = catalog_counts(&work.state);
    assert_eq!(counts.keys().collect::<Vec<_>>(), vec![&a], "{counts:?}");
    let left = musicfs_tree_long(&work.state).unwrap();
    let sources: Vec<&PathBuf> = left.iter().filter_map(|e| e.source.as_ref()).collect();
    assert_eq!(sources.len(), 3, "{left:?}");
    assert!(sources.iter().all(|s| s.starts_with(&a)), "{left:?}");

    // Nothing readable and nothing to serve is still a usage error.
    let fresh = work.root.join("fresh-state");
    let mnt = work.origin("mnt");
    let mut args: Vec<std::ffi::OsString> = vec!["--origin".into(), b.clone().into()];
    args.extend(["--state-dir".into(), fresh.into(), mnt.clone().into()]);
    let failed = run_daemon_expecting_exit(&args, None, &mnt, EXIT_DEADLINE).unwrap();
    assert_eq!(failed.status.code(), Some(2), "stderr:\n{}", failed.stderr);
    assert!(
        failed.stderr.contains(&*b.to_string_lossy()),
        "{}",
        failed.stderr
    );
}

#[test]
fn a_mass_deletion_keeps_the_tracks_offline_until_confirmed() {
    let work = Work::new();
    let origin = work.origin("music");
    write_album(&origin, "Many", 10);
    let opts = work.options(std::slice::from_ref(&origin));
    let (fs, _) = MountedFs::start_watching(opts, NOTICE).unwrap_or_else(|e| panic!("{e:#}"));
    let served = sources(&fs);
    assert_eq!(served.len(), 10);
    let from = fs.log().len();

    let (deleted, kept): (Vec<_>, Vec<_>) = served
        .iter()
        .partition(|(_, src)| src.file_name().is_some_and(|n| n <= "06.flac"));
    assert_eq!(deleted.len(), 6, "60 % of the files");
    for (_, src) in &deleted {
        fs::remove_file(src).unwrap();
    }
    let kept_sums = file_checksums(&origin);
    let (line, _) = wait_for_log_line(fs.log_path(), from, &[OFFLINE_LINE], NOTICE).unwrap();
    assert!(line.contains("6 of its 10 tracks vanished"), "{line}");
    assert_eq!(sources(&fs), served, "every track is kept");
    assert!(root_origins_xattr(&fs).contains("\toffline\t"));

    // A plain scan keeps them too, and says so by failing.
    let mut plain = Command::new(binary("musicfs").unwrap());
    plain.arg("scan").arg("--origin").arg(&origin);
    plain.arg("--state-dir").arg(&work.state);
    let out = plain.output().unwrap();
    assert!(!out.status.success(), "a kept origin fails the scan");
    assert!(String::from_utf8_lossy(&out.stderr).contains("offline"));
    assert_eq!(catalog_counts(&work.state)[&origin], 10);

    let mut confirmed = Command::new(binary("musicfs").unwrap());
    confirmed.args(["scan", "--allow-mass-removal", "--origin"]);
    confirmed.arg(&origin).arg("--state-dir").arg(&work.state);
    run_ok(&mut confirmed).unwrap();
    assert_eq!(catalog_counts(&work.state)[&origin], 4);

    let back = fs.log().len();
    fs.kill(libc::SIGHUP).unwrap();
    wait_for_log_line(fs.log_path(), back, &[ONLINE_LINE], NOTICE).unwrap();
    let deadline = Instant::now() + NOTICE;
    let want: BTreeMap<PathBuf, PathBuf> = kept
        .into_iter()
        .map(|(v, s)| (v.clone(), s.clone()))
        .collect();
    loop {
        // While the republish lands a listed file may vanish before its getxattr.
        let now = try_sources(&fs);
        if now.as_ref().is_ok_and(|now| *now == want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted tracks should be gone: {now:?}\n{}",
            fs.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (virt, src) in &want {
        let (got, _) = guarded_read(virt);
        assert!(got.unwrap() == fs::read(src).unwrap(), "{}", virt.display());
    }
    assert_eq!(
        file_checksums(&origin),
        kept_sums,
        "the origin is untouched"
    );
}

#[test]
fn an_origin_never_seen_and_missing_neither_stops_the_daemon_nor_republishes_the_tree() {
    let work = Work::new();
    let (a, never) = (work.origin("a"), work.root.join("never-there"));
    write_album(&a, "Here", 2);
    let opts = work.options(&[a.clone(), never.clone()]);
    let (fs, line) = MountedFs::start_watching(opts, NOTICE).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        line.contains("refresh found nothing new"),
        "a refresh with the missing origin republished: {line}\n{}",
        fs.log()
    );
    assert_eq!(sources(&fs).len(), 2);
    assert!(
        fs.log().contains("origin unusable at start-up"),
        "{}",
        fs.log()
    );
}
