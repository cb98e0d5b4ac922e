#![cfg(feature = "e2e")]
//! Faults in the state directory, end to end on real mounts:
//! - the state dir on a small tmpfs filled to ENOSPC, a track added at the origin: the
//!   refresh fails (first writing the catalog; then, room made a page at a time, writing
//!   the new tree while the catalog already took the track), the daemon stays up, serves
//!   the last good tree bit-exact, says why (the `musicfs refresh` answer, `musicfs
//!   progress`, its log), starts again on the full disk serving that tree, and once there
//!   is room the new track shows and is still there after a restart;
//! - the chunk cache filling that tmpfs while remote files are read: every byte read is
//!   right, the daemon says it serves uncached, and the cache verifies afterwards;
//! - pack files with flipped bytes, then cut short: `musicfs cache verify` names the damage,
//!   a restarted daemon reads every file bit-exact (damaged chunks fetched again, never
//!   served) and the cache verifies after; the cache's index cut short is refused with a
//!   clear error, not a SIGBUS;
//! - the catalog's meta and first pages overwritten, its file cut short or emptied, the
//!   catalog removed, and the tree snapshot damaged: the daemon either refuses to start
//!   with a clear error and an exit code (never killed by a signal), after which moving the
//!   catalog away as the message says brings it up, or it serves every track bit-exact.
//!   Every page damaged in turn (branches and leaves too): the daemon is
//!   never killed; it refuses to start, or serves every track, and when its catalog check
//!   found the damage it says so (`musicfs status`, its log) and moving the catalog away as
//!   it says brings everything back.
//!
//! Origins are never written: each test compares their checksums before and after. Needs
//! root (to mount the tmpfs), ffmpeg and, for the remote cases, `s3s-fs`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::harness::{
    checksum_tree, describe_status, flac_with_comments, force_unmount, mount_at, musicfs_cmd,
    musicfs_cmd_ok, musicfs_scan, musicfs_tree_long, one_second_flac, send_signal, spawn_musicfsd,
    track_sources, wait_child, walk_files, MountOptions, MountedFs, SplitMix64, EXIT_DEADLINE,
    MOUNT_DEADLINE,
};
use musicfs_tests::remote::{
    cache_verify, evict_pages, generate, quiet, read_all, S3Library, Track,
};
use tempfile::TempDir;

/// LMDB's page size (the OS page size) on the x86-64 machines these tests run on.
const PAGE: u64 = 4096;

/// How long a refresh asked for may take.
const REFRESH_WITHIN: &str = "120";

// ---------------------------------------------------------------------------------------
// A tmpfs of a chosen size.
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted on a temp dir; unmounted (lazily) and removed on drop.
struct Tmpfs {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Result<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("musicfs-e2e-tmpfs-")
            .tempdir()?;
        let path = dir.path().canonicalize()?;
        let target = CString::new(path.as_os_str().as_bytes())?;
        let data = CString::new(format!("size={bytes},mode=0755"))?;
        // SAFETY: every pointer is a live NUL-terminated string for the whole call.
        let rc = unsafe {
            libc::mount(
                c"musicfs-e2e".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .context("mounting a tmpfs (these tests need root)");
        }
        Ok(Tmpfs {
            dir: Some(dir),
            path,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: a live NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if mount_at(&self.path).is_ok_and(|m| m.is_some()) {
            // Still mounted: removing the dir would empty the tmpfs, not remove it.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// Bytes an unprivileged writer may still put on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let cpath = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(cpath.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error()).context("statvfs");
    }
    Ok(st.f_bavail * st.f_frsize)
}

/// Writes a filler file into `dir` until the filesystem says ENOSPC; returns its path.
fn fill_up(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("filler");
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5au8; 1 << 16];
    for size in [1 << 16, 4096, 512, 1] {
        loop {
            match f.write(&block[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("writing the filler"),
            }
        }
    }
    f.sync_all().ok();
    ensure!(
        free_bytes(dir)? == 0,
        "{} bytes still free after filling",
        free_bytes(dir)?
    );
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// Local origins and what a mount must serve of them.
// ---------------------------------------------------------------------------------------

/// Writes tracks `from..=to` of one album (one-second FLACs, each with its own tags) into
/// `origin`.
fn add_tracks(origin: &Path, album: &str, from: usize, to: usize) -> Result<()> {
    let dir = origin.join(album);
    fs::create_dir_all(&dir)?;
    for i in from..=to {
        let track = i.to_string();
        let title = format!("{album} song {i} with a title long enough to fill the pages");
        let bytes = flac_with_comments(
            one_second_flac(),
            &[
                ("ARTIST", "Fault Artist"),
                ("ALBUM", album),
                ("DATE", "2021"),
                ("TRACKNUMBER", &track),
                ("TITLE", &title),
            ],
        )?;
        fs::write(dir.join(format!("t{i:03}.flac")), bytes)?;
    }
    Ok(())
}

/// A configuration serving `origin` without watches or timers: only a refresh asked for
/// (or the daemon's retry of a failed one) looks at it.
fn quiet_config(work: &Path, origin: &Path) -> Result<PathBuf> {
    let path = work.join("musicfs.toml");
    fs::write(
        &path,
        format!(
            "refresh_interval_secs = 0\n[[origin]]\npath = \"{}\"\nwatch = \"none\"\n",
            origin.display()
        ),
    )?;
    Ok(path)
}

fn local_options(config: &Path, state: &Path) -> MountOptions {
    let mut opts = MountOptions::new(Vec::<PathBuf>::new());
    opts.config = Some(config.to_path_buf());
    opts.state_dir = Some(state.to_path_buf());
    opts.log_level = Some("info,musicfs_index::refresh=debug".into());
    opts
}

/// Checks that the mount at `root` shows every file of `origin` once and reads each
/// bit-exact; returns how many it checked.
fn assert_serves(root: &Path, state: &Path, origin: &Path, log: &str) -> Result<usize> {
    let sources = track_sources(root, &[origin.to_path_buf()], &musicfs_tree_long(state)?)?;
    let shown: BTreeSet<&PathBuf> = sources.values().collect();
    let want = walk_files(origin)?;
    let want_set: BTreeSet<&PathBuf> = want.iter().collect();
    ensure!(
        shown == want_set && sources.len() == want.len(),
        "the mount shows {} files for {} origin files; missing {:?}, extra {:?}; log:\n{log}",
        sources.len(),
        want.len(),
        want_set.difference(&shown).take(5).collect::<Vec<_>>(),
        shown.difference(&want_set).take(5).collect::<Vec<_>>()
    );
    for (virt, source) in &sources {
        let got = read_all(virt).with_context(|| format!("reading {}", virt.display()))?;
        ensure!(
            got == fs::read(source)?,
            "{} reads other bytes than {}; log:\n{log}",
            virt.display(),
            source.display()
        );
    }
    Ok(sources.len())
}

/// `musicfs refresh` on the daemon of `state`, which must succeed.
fn refresh_ok(state: &Path) -> Result<String> {
    musicfs_cmd_ok(state, &["refresh", "--timeout", REFRESH_WITHIN])
}

// ---------------------------------------------------------------------------------------
// 1. Disk full while a refresh publishes.
// ---------------------------------------------------------------------------------------

#[test]
fn a_full_state_disk_fails_scans_and_publishes_cleanly_and_the_last_good_tree_stays_served(
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    // Enough tracks that a new tree takes many pages, so there is a free-space window
    // where the catalog's few new pages fit and the tree does not.
    add_tracks(&origin, "First", 1, 300)?;
    let config = quiet_config(work.path(), &origin)?;
    let tmpfs = Tmpfs::mount(16 << 20)?;
    let state = tmpfs.path().join("state");
    let opts = local_options(&config, &state);

    let mut mount = MountedFs::start(opts.clone())?;
    // Waits for its own round: the start-up reconcile is over after it.
    refresh_ok(&state)?;
    assert_serves(mount.mountpoint(), &state, &origin, &mount.log())?;
    let generation = status_generation(&state)?;
    let old = walk_files(&origin)?;

    // 1. The disk full, a new track at the origin: the refresh fails, saying why.
    let filler = fill_up(tmpfs.path())?;
    add_tracks(&origin, "Second", 1, 1)?;
    let sums = checksum_tree(&origin)?;
    let first = refresh_fails(&state, &mount)?;
    ensure!(
        first.contains("No space left on device"),
        "the failure does not say the disk is full: {first}"
    );
    let progress: serde_json::Value =
        serde_json::from_str(&musicfs_cmd_ok(&state, &["--json", "progress"])?)?;
    ensure!(
        progress["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "`musicfs progress` does not show the failure: {progress}"
    );
    ensure!(
        mount
            .log()
            .contains("refresh failed, still serving the previous tree"),
        "the log does not say the refresh failed; log:\n{}",
        mount.log()
    );
    ensure!(
        status_generation(&state)? == generation,
        "the generation served moved though nothing could be published"
    );
    assert_old_tree(&mount, &state, &origin, &old)?;

    // 2. Room made a page at a time until a refresh goes through. On the way the catalog
    // takes the new track while its tree cannot be written: a publish failure.
    let mut failures = vec![first];
    let mut published = false;
    for _ in 0..4096 {
        let len = fs::metadata(&filler)?.len();
        OpenOptions::new()
            .write(true)
            .open(&filler)?
            .set_len(len.saturating_sub(PAGE))?;
        let out = musicfs_cmd(&state, &["refresh", "--timeout", REFRESH_WITHIN])?;
        ensure!(mount.mount_entry()?.is_some(), "the daemon went away");
        if out.status.success() {
            published = true;
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let in_publish = !err.contains("catalog");
        if in_publish && !failures.iter().any(|f| !f.contains("catalog")) {
            // The catalog is ahead of the tree now: what is served is the last good tree,
            // and a daemon started again on the full disk serves it too.
            assert_old_tree(&mount, &state, &origin, &old)?;
            let status = mount.stop()?;
            ensure!(
                status.success(),
                "the daemon stopped with {} on a full disk; log:\n{}",
                describe_status(status),
                mount.log()
            );
            mount = MountedFs::start(opts.clone())
                .context("the daemon did not start again on the full state disk")?;
            assert_old_tree(&mount, &state, &origin, &old)?;
        }
        if !failures.contains(&err) {
            failures.push(err);
        }
    }
    for f in &failures {
        println!("refresh on a full state disk: {f}");
    }
    ensure!(published, "no refresh went through; log:\n{}", mount.log());
    ensure!(
        failures.iter().any(|f| !f.contains("catalog")),
        "no publish failed for want of space, only catalog writes: {failures:?}"
    );
    let n = assert_serves(mount.mountpoint(), &state, &origin, &mount.log())?;
    ensure!(n == 301, "{n} tracks served once the refresh went through");
    fs::remove_file(&filler)?;
    mount.stop()?;

    // 3. After a restart every track is still there (no catalog row lost).
    let mount = MountedFs::start(opts)?;
    refresh_ok(&state)?;
    let n = assert_serves(mount.mountpoint(), &state, &origin, &mount.log())?;
    ensure!(n == 301, "{n} tracks served after a restart");
    drop(mount);
    ensure!(sums == checksum_tree(&origin)?, "the origin changed");
    Ok(())
}

/// `musicfs refresh`, which must fail while the daemon stays up: its error message.
fn refresh_fails(state: &Path, mount: &MountedFs) -> Result<String> {
    let out = musicfs_cmd(state, &["refresh", "--timeout", REFRESH_WITHIN])?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    ensure!(
        !out.status.success() && stderr.contains("refresh failed"),
        "a refresh on a full disk did not fail: {stderr}\nstdout: {}; log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        mount.log()
    );
    ensure!(mount.mount_entry()?.is_some(), "the daemon went away");
    Ok(stderr)
}

/// The generation `musicfs status` says the daemon serves.
fn status_generation(state: &Path) -> Result<u64> {
    let status: serde_json::Value =
        serde_json::from_str(&musicfs_cmd_ok(state, &["--json", "status"])?)?;
    status["generation"]
        .as_u64()
        .with_context(|| format!("no generation in {status}"))
}

/// The mount shows exactly the origin files in `old`, each bit-exact.
fn assert_old_tree(mount: &MountedFs, state: &Path, origin: &Path, old: &[PathBuf]) -> Result<()> {
    let sources = track_sources(
        mount.mountpoint(),
        &[origin.to_path_buf()],
        &musicfs_tree_long(state)?,
    )?;
    let shown: BTreeSet<&PathBuf> = sources.values().collect();
    ensure!(
        shown == old.iter().collect::<BTreeSet<_>>(),
        "the mount no longer shows the last good tree: {shown:?}; log:\n{}",
        mount.log()
    );
    for (virt, source) in &sources {
        ensure!(
            read_all(virt)? == fs::read(source)?,
            "{} reads wrong",
            virt.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. Disk full while chunks are written.
// ---------------------------------------------------------------------------------------

const NOISE_TRACKS: [Track<'static>; 4] = [
    Track {
        rel: "Noise/One/01 - A.flac",
        input: "anoisesrc=seed=1:amplitude=0.9:sample_rate=44100:duration=60",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "A",
    },
    Track {
        rel: "Noise/One/02 - B.flac",
        input: "anoisesrc=seed=2:amplitude=0.9:sample_rate=44100:duration=60",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "B",
    },
    Track {
        rel: "Noise/Two/01 - C.flac",
        input: "anoisesrc=seed=3:amplitude=0.9:sample_rate=44100:duration=60",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "C",
    },
    Track {
        rel: "Noise/Two/02 - D.flac",
        input: "anoisesrc=seed=4:amplitude=0.9:sample_rate=44100:duration=60",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "D",
    },
];

/// The first `n` tracks of [`NOISE_TRACKS`]: each file of the mount at `root` with its
/// bucket file.
fn bucket_pairs(root: &Path, lib: &S3Library, n: usize) -> Result<Vec<(PathBuf, PathBuf)>> {
    let bucket = walk_files(&lib.library)?;
    let served = walk_files(root)?;
    let mut pairs = Vec::new();
    for t in &NOISE_TRACKS[..n] {
        let source = bucket
            .iter()
            .find(|b| b.ends_with(t.rel))
            .with_context(|| format!("{} not in the bucket", t.rel))?;
        let virt = served
            .iter()
            .find(|v| {
                v.file_name()
                    .is_some_and(|f| f.to_string_lossy().contains(&format!("- {}.", t.title)))
            })
            .with_context(|| format!("{} not in the mount: {served:?}", t.rel))?;
        pairs.push((virt.clone(), source.clone()));
    }
    Ok(pairs)
}

#[test]
fn a_chunk_cache_that_fills_its_disk_still_serves_every_byte_right() -> Result<()> {
    let lib = S3Library::start(|dir| generate(dir, &NOISE_TRACKS))?;
    let sums = lib.bucket_sums()?;
    let total: u64 = walk_files(&lib.library)?
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()))
        .sum::<io::Result<u64>>()?;
    // Room for the catalog, the tree and about half the library's chunks.
    let tmpfs = Tmpfs::mount(total / 2)?;
    let state = tmpfs.path().join("state");
    let mut opts = lib.mount_options();
    opts.state_dir = Some(state.clone());
    let mut mount = MountedFs::start(opts.clone())?;
    musicfs_cmd_ok(&state, &["refresh", "--timeout", REFRESH_WITHIN])?;
    println!(
        "library {total} bytes, {} bytes free on the state disk before reading",
        free_bytes(tmpfs.path())?
    );
    ensure!(
        free_bytes(tmpfs.path())? < total,
        "the state disk has room for the whole library"
    );

    // Two passes: the first fills the disk, the second reads what it cached and what it
    // could not (the mount's pages dropped, so the daemon serves every read again).
    let pairs = bucket_pairs(mount.mountpoint(), &lib, NOISE_TRACKS.len())?;
    for pass in 0..2 {
        for (virt, source) in &pairs {
            evict_pages(virt)?;
            let got = read_all(virt).with_context(|| format!("pass {pass}: {virt:?}"))?;
            ensure!(
                got == fs::read(source)?,
                "pass {pass}: {} reads wrong; log:\n{}",
                virt.display(),
                mount.log()
            );
        }
    }
    ensure!(
        free_bytes(tmpfs.path())? < 1 << 20,
        "the cache never filled the disk ({} bytes free)",
        free_bytes(tmpfs.path())?
    );
    ensure!(
        mount
            .log()
            .contains("the chunk cache cannot store what was fetched"),
        "the daemon did not say it served uncached; log:\n{}",
        mount.log()
    );
    ensure!(mount.mount_entry()?.is_some(), "the daemon went away");
    quiet(&lib.proxy)?;
    let status = mount.stop()?;
    ensure!(status.success(), "the daemon stopped with {status:?}");

    cache_verify(&state)?;
    // A fresh daemon on the same full disk reads every file right too.
    let mount = MountedFs::start(opts)?;
    for (virt, source) in bucket_pairs(mount.mountpoint(), &lib, NOISE_TRACKS.len())? {
        ensure!(
            read_all(&virt)? == fs::read(&source)?,
            "after a restart {} reads wrong",
            virt.display()
        );
    }
    drop(mount);
    cache_verify(&state)?;
    ensure!(sums == lib.bucket_sums()?, "the bucket changed");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Damaged pack files.
// ---------------------------------------------------------------------------------------

/// The pack files of the chunk cache in `state`.
fn packs(state: &Path) -> Result<Vec<PathBuf>> {
    let dir = state.join("cas").join("packs");
    let mut packs: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    packs.retain(|p| p.extension().is_some_and(|e| e == "pack"));
    packs.sort();
    ensure!(!packs.is_empty(), "no pack in {}", dir.display());
    Ok(packs)
}

/// `musicfs cache verify` on `state`, which must fail: what it printed.
fn verify_fails(state: &Path) -> Result<String> {
    let out = musicfs_cmd(state, &["cache", "verify"])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "cache verify passed a damaged cache:\n{text}"
    );
    ensure!(
        out.status.signal().is_none(),
        "cache verify was killed: {}",
        describe_status(out.status)
    );
    Ok(text)
}

/// Reads every track through a fresh daemon on `state`: each bit-exact, and at least
/// `min_fetched` bytes fetched again from the bucket.
fn reads_right_after_damage(lib: &S3Library, opts: &MountOptions, what: &str) -> Result<u64> {
    let mount = MountedFs::start(opts.clone())?;
    let pairs = bucket_pairs(mount.mountpoint(), lib, 3)?;
    quiet(&lib.proxy)?;
    let before = lib.proxy.moved().down;
    for (virt, source) in &pairs {
        let got = read_all(virt).with_context(|| format!("{what}: reading {virt:?}"))?;
        ensure!(
            got == fs::read(source)?,
            "{what}: {} reads wrong; log:\n{}",
            virt.display(),
            mount.log()
        );
    }
    let fetched = lib.proxy.moved().down - before;
    ensure!(
        mount.mount_entry()?.is_some(),
        "{what}: the daemon went away"
    );
    drop(mount);
    Ok(fetched)
}

#[test]
fn damaged_pack_files_are_caught_never_served_and_fetched_again() -> Result<()> {
    let lib = S3Library::start(|dir| generate(dir, &NOISE_TRACKS[..3]))?;
    let sums = lib.bucket_sums()?;
    let opts = lib.mount_options();

    // Everything read once: the cache holds it all.
    let mount = MountedFs::start(opts.clone())?;
    for (virt, source) in bucket_pairs(mount.mountpoint(), &lib, 3)? {
        ensure!(
            read_all(&virt)? == fs::read(&source)?,
            "{virt:?} reads wrong"
        );
    }
    quiet(&lib.proxy)?;
    drop(mount);
    cache_verify(&lib.state)?;

    // 1. Bytes flipped every 256 KiB of every pack.
    let mut flipped = 0;
    for pack in packs(&lib.state)? {
        let f = OpenOptions::new().read(true).write(true).open(&pack)?;
        let len = f.metadata()?.len();
        let mut at = 1000;
        while at < len {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, at)?;
            for x in &mut b {
                *x ^= 0xff;
            }
            f.write_all_at(&b, at)?;
            flipped += 1;
            at += 256 << 10;
        }
    }
    let report = verify_fails(&lib.state)?;
    let bad = report
        .lines()
        .filter(|l| l.contains("problem: chunk"))
        .count();
    println!("{flipped} places flipped; verify found {bad} bad chunks");
    ensure!(bad > 0, "verify named no damaged chunk:\n{report}");
    let fetched = reads_right_after_damage(&lib, &opts, "flipped bytes")?;
    ensure!(
        fetched > 0,
        "nothing was fetched again, yet {bad} chunks were damaged"
    );
    cache_verify(&lib.state).context("the cache after the damaged chunks were read")?;

    // 2. The pack cut to half its length.
    let pack = packs(&lib.state)?.remove(0);
    let len = fs::metadata(&pack)?.len();
    OpenOptions::new()
        .write(true)
        .open(&pack)?
        .set_len(len / 2)?;
    let report = verify_fails(&lib.state)?;
    ensure!(
        report.contains("problem:"),
        "verify named no problem for a cut pack:\n{report}"
    );
    println!(
        "pack cut from {len} to {} bytes; verify:\n{report}",
        len / 2
    );
    let fetched = reads_right_after_damage(&lib, &opts, "cut pack")?;
    ensure!(
        fetched > 0,
        "nothing was fetched again after the pack was cut"
    );
    cache_verify(&lib.state).context("the cache after the cut pack was read")?;

    // 3. The cache's index cut short: a clean refusal naming the cache (then, the cache
    // removed, every file reads right), or every file read right; never a crash.
    let index = lib.state.join("cas").join("index").join("data.mdb");
    let len = fs::metadata(&index)?.len();
    OpenOptions::new()
        .write(true)
        .open(&index)?
        .set_len(len / 2)?;
    match Spawned::start(&opts, &lib.state)? {
        Start::Exited(status, log) => {
            ensure!(
                status.signal().is_none() && !status.success(),
                "a cut cache index: the daemon ended with {}; log:\n{log}",
                describe_status(status)
            );
            ensure!(
                log.contains("chunk store") || log.contains("chunk cache"),
                "a cut cache index: the error does not name the cache; log:\n{log}"
            );
            println!("cache index cut from {len} bytes: refused: {}", log.trim());
            fs::remove_dir_all(lib.state.join("cas"))?;
            reads_right_after_damage(&lib, &opts, "cache removed")?;
        }
        Start::Mounted(mut daemon) => {
            for (virt, source) in bucket_pairs(&daemon.mountpoint, &lib, 3)? {
                ensure!(
                    read_all(&virt)? == fs::read(&source)?,
                    "a cut cache index: {} reads wrong",
                    virt.display()
                );
            }
            let status = daemon.stop()?;
            ensure!(
                status.signal().is_none(),
                "a cut cache index: the daemon ended with {}; log:\n{}",
                describe_status(status),
                daemon.log()
            );
            println!("cache index cut from {len} bytes: served every file right");
        }
    }

    ensure!(sums == lib.bucket_sums()?, "the bucket changed");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. A damaged catalog or tree snapshot.
// ---------------------------------------------------------------------------------------

/// A daemon spawned on its own mountpoint, which either mounts or exits.
struct Spawned {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

enum Start {
    Mounted(Spawned),
    Exited(ExitStatus, String),
}

impl Spawned {
    fn start(opts: &MountOptions, state: &Path) -> Result<Start> {
        let dir = tempfile::Builder::new().prefix("musicfs-e2e-").tempdir()?;
        let root = dir.path().canonicalize()?;
        let mountpoint = root.join("mnt");
        fs::create_dir(&mountpoint)?;
        let log = root.join("musicfsd.log");
        let mut child = spawn_musicfsd(opts, state, &mountpoint, &log)?;
        let deadline = Instant::now() + MOUNT_DEADLINE;
        loop {
            if mount_at(&mountpoint)?.is_some_and(|m| m.is_fuse()) {
                return Ok(Start::Mounted(Spawned {
                    child,
                    mountpoint,
                    log,
                    _dir: dir,
                }));
            }
            // Waits on the daemon's pidfd: wakes at once when it exits.
            if let Some(status) = wait_child(&mut child, Duration::from_millis(50))? {
                let _ = force_unmount(&mountpoint);
                return Ok(Start::Exited(
                    status,
                    fs::read_to_string(&log).unwrap_or_default(),
                ));
            }
            if Instant::now() > deadline {
                let _ = send_signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                let _ = force_unmount(&mountpoint);
                bail!(
                    "the daemon neither mounted nor exited; log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the daemon is still running (it has not died since).
    fn alive(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        send_signal(self.child.id(), libc::SIGTERM)?;
        match wait_child(&mut self.child, EXIT_DEADLINE)? {
            Some(status) => Ok(status),
            None => bail!("the daemon did not stop; log:\n{}", self.log()),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = send_signal(self.child.id(), libc::SIGTERM);
            if !matches!(wait_child(&mut self.child, EXIT_DEADLINE), Ok(Some(_))) {
                let _ = send_signal(self.child.id(), libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
        let _ = force_unmount(&self.mountpoint);
    }
}

/// Copies the regular files and dirs of `from` into a new dir `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry?;
        let dest = to.join(entry.path().strip_prefix(from)?);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&dest)?;
        } else if entry.file_type().is_file() {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// What a damaged state dir must lead to: a clean refusal, or a daemon serving every track
/// of `origin` bit-exact (after a full refresh, which reads the whole catalog). Returns a
/// line saying which.
fn refuses_or_serves(
    opts: &MountOptions,
    state: &Path,
    origin: &Path,
    what: &str,
) -> Result<String> {
    match Spawned::start(opts, state)? {
        Start::Exited(status, log) => {
            ensure!(
                status.signal().is_none(),
                "{what}: the daemon was killed by signal {:?} (a crash, not a refusal); log:\n{log}",
                status.signal()
            );
            ensure!(
                !status.success(),
                "{what}: the daemon exited 0 without mounting; log:\n{log}"
            );
            let said = log
                .lines()
                .find(|l| l.starts_with("musicfsd: "))
                .with_context(|| format!("{what}: no error message; log:\n{log}"))?;
            ensure!(
                said.contains("catalog") || said.contains("snapshot"),
                "{what}: the error does not name what is damaged: {said}"
            );
            // Done as the message says (the catalog moved away), the daemon starts anew
            // from the origins and serves everything.
            let catalog = state.join("catalog");
            fs::rename(&catalog, state.join("catalog.damaged"))?;
            let served = serves_after_refresh(opts, state, origin, what)
                .with_context(|| format!("{what}: with the damaged catalog moved away"))?;
            Ok(format!(
                "refused ({}): {said}; with it moved away: {served}",
                describe_status(status)
            ))
        }
        Start::Mounted(daemon) => serves(daemon, opts, state, origin, what),
    }
}

/// A daemon on `state` mounts and [`serves`] every track.
fn serves_after_refresh(
    opts: &MountOptions,
    state: &Path,
    origin: &Path,
    what: &str,
) -> Result<String> {
    match Spawned::start(opts, state)? {
        Start::Exited(status, log) => bail!(
            "{what}: the daemon exited ({}); log:\n{log}",
            describe_status(status)
        ),
        Start::Mounted(daemon) => serves(daemon, opts, state, origin, what),
    }
}

/// After a full refresh (which reads the whole catalog) the daemon is alive and serves
/// every track of `origin` bit-exact; then it stops without a signal. When its catalog
/// check found damage, `musicfs status` and the log say so and what to do, and done as
/// they say (the catalog moved away), a daemon started again serves every track.
fn serves(
    mut daemon: Spawned,
    opts: &MountOptions,
    state: &Path,
    origin: &Path,
    what: &str,
) -> Result<String> {
    let refreshed = musicfs_cmd(state, &["refresh", "--timeout", REFRESH_WITHIN])?;
    if let Some(status) = daemon.alive()? {
        bail!(
            "{what}: the daemon died ({}) while refreshing; log:\n{}",
            describe_status(status),
            daemon.log()
        );
    }
    let n = assert_serves(&daemon.mountpoint, state, origin, &daemon.log()).with_context(|| {
        format!(
            "{what}: refresh said {}{}",
            String::from_utf8_lossy(&refreshed.stdout),
            String::from_utf8_lossy(&refreshed.stderr)
        )
    })?;
    // The refresh waited for the catalog check's verdict.
    let status: serde_json::Value =
        serde_json::from_str(&musicfs_cmd_ok(state, &["--json", "status"])?)?;
    let catalog = status["catalog"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let problem = status["catalog"]["problem"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log = daemon.log();
    let stopped = daemon.stop()?;
    ensure!(
        stopped.signal().is_none(),
        "{what}: the daemon was killed ({}) on stopping; log:\n{}",
        describe_status(stopped),
        daemon.log()
    );
    if catalog != "damaged" {
        ensure!(
            catalog == "sound",
            "{what}: `musicfs status` says the catalog is {catalog:?}: {status}"
        );
        return Ok(format!("served all {n} tracks"));
    }
    // Served from the last good tree; the damage reported, with what to do, which works.
    ensure!(
        problem.contains("move") && log.contains("catalog damaged"),
        "{what}: the damage is not reported with what to do: status {status}; log:\n{log}"
    );
    ensure!(
        !refreshed.status.success(),
        "{what}: a refresh on a damaged catalog said it succeeded"
    );
    ensure!(
        stopped.success(),
        "{what}: the daemon stopped with {}; log:\n{}",
        describe_status(stopped),
        daemon.log()
    );
    fs::rename(state.join("catalog"), state.join("catalog.damaged"))?;
    let served = serves_after_refresh(opts, state, origin, what)
        .with_context(|| format!("{what}: with the damaged catalog moved away"))?;
    Ok(format!(
        "served all {n} tracks; the check found damage ({problem}); with it moved away: {served}"
    ))
}

/// Overwrites page `page` of `file` with `fill` (a pattern repeated over the page).
fn overwrite_page(file: &Path, page: u64, fill: &[u8]) -> Result<()> {
    let f = OpenOptions::new().write(true).open(file)?;
    let bytes: Vec<u8> = fill.iter().copied().cycle().take(PAGE as usize).collect();
    f.write_all_at(&bytes, page * PAGE)?;
    Ok(())
}

/// An origin of 200 tracks scanned into `work/good`: the origin, the pristine state dir, the
/// configuration and the catalog's page count.
fn scanned_library(work: &Path) -> Result<(PathBuf, PathBuf, PathBuf, u64)> {
    let origin = work.join("origin");
    for album in 0..8 {
        add_tracks(&origin, &format!("Album {album}"), 1, 25)?;
    }
    let config = quiet_config(work, &origin)?;
    let good = work.join("good");
    musicfs_scan(std::slice::from_ref(&origin), &good)?;
    let pages = fs::metadata(good.join(CATALOG_DATA))?.len() / PAGE;
    ensure!(pages > 8, "the catalog is too small: {pages} pages");
    Ok((origin, good, config, pages))
}

/// The catalog's data file, relative to the state dir.
const CATALOG_DATA: &str = "catalog/data.mdb";

type Damage = Box<dyn Fn(&Path) -> Result<()>>;

/// Each of `pages` overwritten with garbage, then with zeros.
fn page_damage(pages: impl IntoIterator<Item = u64>, of: u64) -> Vec<(String, Damage)> {
    let garbage: Vec<u8> = (0..251u32).map(|i| (i * 97 + 13) as u8).collect();
    let mut cases: Vec<(String, Damage)> = Vec::new();
    for page in pages {
        for (name, fill) in [("garbage", garbage.clone()), ("zeros", vec![0u8])] {
            cases.push((
                format!("catalog page {page} of {of} overwritten with {name}"),
                Box::new(move |s: &Path| overwrite_page(&s.join(CATALOG_DATA), page, &fill)),
            ));
        }
    }
    cases
}

/// Runs every case on a fresh copy of `good`: each must be refused cleanly or served right.
fn run_damage_cases(
    work: &Path,
    good: &Path,
    config: &Path,
    origin: &Path,
    cases: &[(String, Damage)],
) -> Result<()> {
    let mut failures = Vec::new();
    for (i, (what, damage)) in cases.iter().enumerate() {
        let state = work.join(format!("state-{i}"));
        copy_dir(good, &state)?;
        damage(&state)?;
        let opts = local_options(config, &state);
        match refuses_or_serves(&opts, &state, origin, what) {
            Ok(line) => println!("{what}: {line}"),
            Err(e) => failures.push(format!("{e:#}")),
        }
        let _ = fs::remove_dir_all(&state);
    }
    ensure!(
        failures.is_empty(),
        "{} of {} damaged catalogs went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    Ok(())
}

#[test]
fn a_damaged_or_cut_catalog_is_refused_with_a_clear_error_or_rebuilt_from_the_origin() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let (origin, good, config, pages) = scanned_library(work.path())?;
    let sums = checksum_tree(&origin)?;
    // The two meta pages and the first pages LMDB wrote (the databases' roots and the
    // catalog's own records, which opening reads).
    let mut cases = page_damage(0..4, pages);
    for keep in [pages / 2, 2, 1, 0] {
        cases.push((
            format!("catalog cut to {keep} of {pages} pages"),
            Box::new(move |s: &Path| {
                Ok(OpenOptions::new()
                    .write(true)
                    .open(s.join(CATALOG_DATA))?
                    .set_len(keep * PAGE)?)
            }),
        ));
    }
    cases.push((
        "catalog gone (the snapshot left)".into(),
        Box::new(|s: &Path| Ok(fs::remove_dir_all(s.join("catalog"))?)),
    ));
    run_damage_cases(work.path(), &good, &config, &origin, &cases)?;
    ensure!(sums == checksum_tree(&origin)?, "the origin changed");
    Ok(())
}

/// Pages damaged per run: every page (about 46, twice each: 20 s), or a seeded sample of
/// `MUSICFS_FAULT_ITERATIONS` pages when that is set and smaller.
fn pages_to_damage() -> u64 {
    std::env::var("MUSICFS_FAULT_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Catalog pages damaged in turn (all, or a seeded sample), the B-tree's branches and
/// leaves included. LMDB trusts the pages it maps: a damaged branch or leaf a cursor walks
/// into kills the process reading it (SIGSEGV, SIGBUS, or abort() on `IS_LEAF(mp)` in
/// `mdb_cursor_next`). The daemon walks the catalog in a child process after mounting, and
/// nothing reads it whole before that check passed; on damage it keeps serving the last
/// good tree and says what to do. `MUSICFS_FAULT_SEED` replays a sample.
#[test]
fn any_damaged_catalog_page_is_refused_or_served_right_never_a_crash() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (origin, good, config, pages) = scanned_library(work.path())?;
    let sums = checksum_tree(&origin)?;
    let want = pages_to_damage();
    let chosen: Vec<u64> = if want == 0 || want >= pages {
        (0..pages).collect()
    } else {
        let seed = std::env::var("MUSICFS_FAULT_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("damaging {want} of {pages} pages; MUSICFS_FAULT_SEED={seed} replays them");
        let mut rng = SplitMix64::new(seed);
        let mut chosen = BTreeSet::new();
        // The data pages: the meta pages 0 and 1 have their own test above.
        while (chosen.len() as u64) < want.min(pages - 2) {
            chosen.insert(2 + rng.below(pages - 2));
        }
        chosen.into_iter().collect()
    };
    let cases = page_damage(chosen, pages);
    run_damage_cases(work.path(), &good, &config, &origin, &cases)?;
    ensure!(sums == checksum_tree(&origin)?, "the origin changed");
    Ok(())
}

#[test]
fn a_damaged_tree_snapshot_is_rebuilt_and_the_right_tree_served() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    for album in 0..3 {
        add_tracks(&origin, &format!("Album {album}"), 1, 10)?;
    }
    let sums = checksum_tree(&origin)?;
    let config = quiet_config(work.path(), &origin)?;
    let good = work.path().join("good");
    musicfs_scan(std::slice::from_ref(&origin), &good)?;
    let snap = good.join("tree.snap");
    let len = fs::metadata(&snap)?.len();

    let flip = |at: u64| {
        move |s: &Path| -> Result<()> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(s.join("tree.snap"))?;
            let mut b = [0u8; 16];
            f.read_exact_at(&mut b, at)?;
            for x in &mut b {
                *x ^= 0xa5;
            }
            f.write_all_at(&b, at)?;
            Ok(())
        }
    };
    let cases: Vec<(String, Damage)> = vec![
        ("header bytes flipped".into(), Box::new(flip(8))),
        (
            "bytes flipped in the middle".into(),
            Box::new(flip(len / 2)),
        ),
        (
            "bytes flipped near the end".into(),
            Box::new(flip(len - 32)),
        ),
        (
            "cut to half".into(),
            Box::new(move |s: &Path| {
                Ok(OpenOptions::new()
                    .write(true)
                    .open(s.join("tree.snap"))?
                    .set_len(len / 2)?)
            }),
        ),
        (
            "emptied".into(),
            Box::new(|s: &Path| Ok(fs::write(s.join("tree.snap"), b"")?)),
        ),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let state = work.path().join(format!("state-{i}"));
        copy_dir(&good, &state)?;
        damage(&state)?;
        let opts = local_options(&config, &state);
        let mut mount = MountedFs::start(opts)
            .with_context(|| format!("snapshot {what}: the daemon did not start"))?;
        // The snapshot's checksum is checked after mounting (start-up stays O(1)); a refresh
        // asked for runs after that check and its rebuild.
        refresh_ok(&state)?;
        let n = assert_serves(mount.mountpoint(), &state, &origin, &mount.log())
            .with_context(|| format!("snapshot {what}"))?;
        ensure!(n == 30, "snapshot {what}: {n} tracks served");
        let status = mount.stop()?;
        ensure!(status.success(), "snapshot {what}: stopped with {status:?}");
        println!("snapshot {what}: served all {n} tracks");
        let _ = fs::remove_dir_all(&state);
    }
    ensure!(sums == checksum_tree(&origin)?, "the origin changed");
    Ok(())
}
