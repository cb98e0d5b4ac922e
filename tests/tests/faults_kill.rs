#![cfg(feature = "e2e")]
//! Fault injection: the daemon SIGKILLed at random points of its kinds of work, and
//! what must hold after each kill and restart:
//! - the first scan of a library (the kill may land in the walk, the catalog writes, the
//!   publish or the mount): a restart on the same state dir ends with the tree a clean scan
//!   publishes, every file read bit-exact, and a snapshot left by any kill is whole;
//! - the publish of a refresh after the origin changed: the state dir holds the old tree
//!   or the new one, wholly; the restarted daemon's refresh brings the new one, no track
//!   lost;
//! - the daemon's probe of its own mount, right after INIT: the killed daemon exits (no
//!   thread left waiting, in D state, on an answer its dead workers will never give) and
//!   its mount goes;
//! - fetches from a remote origin (an `s3s-fs` bucket behind a proxy adding latency, so
//!   requests are in flight when the kill lands) and evictions from a cache at its
//!   smallest budget, read past it: every read that completes is bit-exact, `musicfs cache
//!   verify` passes, the tree keeps every track, the bucket is never written.
//!
//! Kill points come from a seeded RNG: the seed is printed, and named in every failure;
//! `MUSICFS_FAULT_SEED` replays a run. `MUSICFS_FAULT_ITERATIONS` sets the kills per case
//! (a few by default; the scheduled run uses 100). The S3 cases need `s3s-fs` and ffmpeg
//! (`tools/run-tests.sh` installs both): without them they fail saying so.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, ensure, Context, Result};
use musicfs_core::config::MIN_CACHE_BUDGET;
use musicfs_storage::CasOptions;
use musicfs_tests::harness::{
    clean_scan_shape, describe_status, first_shape_difference, force_unmount,
    generated_track as track_bytes, generated_track_path as track_path, musicfs_cmd_ok,
    musicfs_scan, send_signal, spawn_musicfsd, tree_shape, wait_child, wait_for_log_line,
    wait_unmounted, walk_files, walk_tree, MountOptions, MountedFs, SplitMix64, TreeShape,
    EXIT_DEADLINE, REFRESH_DONE,
};
use musicfs_tests::remote::{cache_verify, generate, read_all, S3Library, Track};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Seeds, iterations and the record a failure prints.
// ---------------------------------------------------------------------------------------

/// Kills per case: `MUSICFS_FAULT_ITERATIONS`, else a few (CI's short run).
fn iterations() -> u32 {
    std::env::var("MUSICFS_FAULT_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

/// The run's seed: `MUSICFS_FAULT_SEED` (decimal or 0x-hex), else the clock.
fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let given = std::env::var("MUSICFS_FAULT_SEED").ok().and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        });
        given.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
    })
}

/// What happened so far in one case: its seed and one line per kill, printed with any
/// failure so it can be replayed and read.
struct Trail {
    case: &'static str,
    rng: SplitMix64,
    lines: Vec<String>,
}

impl Trail {
    fn new(case: &'static str) -> Trail {
        let seed = base_seed();
        // Each case its own stream, all from the one printed seed.
        let mut mix = SplitMix64::new(seed ^ xxhash_rust::xxh3::xxh3_64(case.as_bytes()));
        eprintln!(
            "faults_kill {case}: seed {seed:#x} (MUSICFS_FAULT_SEED={seed:#x} replays it), \
             {} iterations",
            iterations()
        );
        Trail {
            case,
            rng: SplitMix64::new(mix.next_u64()),
            lines: Vec::new(),
        }
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.rng.below(bound)
    }

    fn note(&mut self, line: impl Display) {
        self.lines.push(line.to_string());
    }

    fn describe(&self) -> String {
        let seed = base_seed();
        format!(
            "case {}: seed {seed:#x} (rerun with MUSICFS_FAULT_SEED={seed:#x})\nhistory:\n{}",
            self.case,
            self.lines.join("\n")
        )
    }
}

/// Runs one case; any failure comes back with its seed and history.
fn run_case(case: &'static str, body: impl FnOnce(&mut Trail) -> Result<()>) -> Result<()> {
    let started = Instant::now();
    let mut trail = Trail::new(case);
    match body(&mut trail) {
        Ok(()) => {
            eprintln!(
                "faults_kill {case}: passed in {:.1} s\n{}",
                started.elapsed().as_secs_f64(),
                trail.lines.join("\n")
            );
            Ok(())
        }
        Err(e) => Err(anyhow!("{e:#}\n{}", trail.describe())),
    }
}

/// A random delay in `0..window` (the kill point), at least 1 ms of resolution.
fn random_delay(trail: &mut Trail, window: Duration) -> Duration {
    Duration::from_millis(trail.below(window.as_millis().max(1) as u64 + 1))
}

// ---------------------------------------------------------------------------------------
// A local library of generated FLAC tracks, and a daemon killed during its start-up.
// ---------------------------------------------------------------------------------------

/// A temp dir holding `origin/` (`tracks` generated tracks), a mountpoint `mnt/` for the
/// daemons killed during their start-up, and room for state dirs and logs.
struct Work {
    _dir: TempDir,
    root: PathBuf,
    origin: PathBuf,
    mountpoint: PathBuf,
}

impl Work {
    fn new(tracks: u64) -> Result<Work> {
        let dir = tempfile::Builder::new()
            .prefix("musicfs-faults-kill-")
            .tempdir()?;
        let root = dir.path().canonicalize()?;
        let origin = root.join("origin");
        for d in 0..30 {
            fs::create_dir_all(origin.join(format!("d{d:02}")))?;
        }
        for i in 0..tracks {
            fs::write(track_path(&origin, i), track_bytes(i, 0)?)?;
        }
        let mountpoint = root.join("mnt");
        fs::create_dir(&mountpoint)?;
        Ok(Work {
            _dir: dir,
            root,
            origin,
            mountpoint,
        })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // A failed iteration may leave a dead mount, which would stop the temp dir from
        // being removed.
        let _ = force_unmount(&self.mountpoint);
    }
}

/// Where a kill lands: `delay` after the daemon's start (or signal), or, with `after`,
/// `delay` after its log first shows that line.
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    after: Option<&'static str>,
    delay: Duration,
}

impl KillPoint {
    /// Waits for the point, then SIGKILLs `pid`; `log` from byte `from` is the daemon's.
    fn kill(&self, pid: u32, log: &Path, from: usize) -> Result<()> {
        if let Some(needle) = self.after {
            wait_log_tight(log, from, needle, pid)?;
        }
        std::thread::sleep(self.delay);
        // The daemon may have failed on its own already: its log says why, and the checks
        // after the kill catch what it left.
        let _ = send_signal(pid, libc::SIGKILL);
        Ok(())
    }
}

impl Display for KillPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.after {
            Some(line) => write!(f, "{:?} after \"{line}\"", self.delay),
            None => write!(f, "after {:?}", self.delay),
        }
    }
}

/// Waits until the log at `path`, from byte `from`, holds `needle`. Polls every
/// millisecond: the spans the kills aim at last a few. Fails if process `pid` is gone or a
/// minute passes first.
fn wait_log_tight(path: &Path, from: usize, needle: &str, pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = fs::read(path).unwrap_or_default();
        let tail = log.get(from..).unwrap_or_default();
        if tail.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return Ok(());
        }
        ensure!(
            Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline,
            "no log line with {needle:?}; log:\n{}",
            String::from_utf8_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Spawns a daemon on `state` at `work.mountpoint`, SIGKILLs it at `point`, and waits
/// until it is gone and its mount (if it got that far) removed. Returns a line for the
/// trail.
fn spawn_and_kill(
    work: &Work,
    opts: &MountOptions,
    state: &Path,
    log: &Path,
    point: KillPoint,
) -> Result<String> {
    let mut child = spawn_musicfsd(opts, state, &work.mountpoint, log)?;
    let aimed = point.kill(child.id(), log, 0);
    if aimed.is_err() {
        let _ = send_signal(child.id(), libc::SIGKILL);
    }
    let status =
        wait_child(&mut child, EXIT_DEADLINE)?.with_context(|| stuck_after_kill(child.id()))?;
    settle_mount(&work.mountpoint)?;
    aimed?;
    let text = fs::read_to_string(log).unwrap_or_default();
    let last = text.lines().last().unwrap_or("").to_string();
    Ok(format!(
        "killed {point} ({}); last log line: {last}",
        describe_status(status)
    ))
}

/// What a process that outlived a SIGKILL is doing: each thread's state and kernel stack
/// (a thread in D state waiting on a FUSE answer no one will give, typically).
fn stuck_after_kill(pid: u32) -> String {
    let mut out = format!("musicfsd (pid {pid}) still running {EXIT_DEADLINE:?} after SIGKILL");
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.filter_map(|t| t.ok()) {
        let read = |name: &str| fs::read_to_string(task.path().join(name)).unwrap_or_default();
        let state = read("stat")
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .to_string();
        out.push_str(&format!(
            "\nthread {:?} ({}) state {state}:\n{}",
            task.file_name(),
            read("comm").trim(),
            read("stack")
        ));
    }
    out
}

/// After a kill: waits for the fusermount3 auto-unmount helper of a daemon killed during
/// (or after) its mount to finish, then for the mountpoint to be free.
fn settle_mount(mountpoint: &Path) -> Result<()> {
    wait_no_fusermount(mountpoint, Duration::from_secs(10))?;
    wait_unmounted(mountpoint, Duration::from_secs(10)).context(
        "a SIGKILLed daemon left its mount behind (no fusermount3 auto-unmount helper left)",
    )
}

/// Waits until no `fusermount3` process names `mountpoint` (its auto-unmount helper lives
/// as long as the mount it watches).
fn wait_no_fusermount(mountpoint: &Path, timeout: Duration) -> Result<()> {
    let needle = mountpoint.as_os_str().as_encoded_bytes();
    let start = Instant::now();
    loop {
        let helpers: Vec<String> = fs::read_dir("/proc")?
            .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"fusermount3")) && args.contains(&needle)
            })
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .collect();
        if helpers.is_empty() {
            return Ok(());
        }
        ensure!(
            start.elapsed() < timeout,
            "fusermount3 still running for {} after {timeout:?}: {helpers:?}",
            mountpoint.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks a running daemon against `want` (a clean scan's tree): `musicfs tree --long` of
/// its state dir equals it, the mount lists exactly those paths, and every file in it reads
/// the same bytes as its origin file.
fn check_served(fs: &MountedFs, want: &[TreeShape]) -> Result<()> {
    let got = tree_shape(fs.state_dir())?;
    if let Some(diff) = first_shape_difference(&got, want) {
        bail!(
            "the tree differs from a clean scan's: {diff}\nlog:\n{}",
            fs.log()
        );
    }
    let mounted = walk_tree(fs.mountpoint())?;
    let listed: Vec<PathBuf> = got.iter().map(|(p, _, _)| p.clone()).collect();
    ensure!(
        mounted == listed,
        "the mount lists {} entries, the snapshot {}; first difference: {:?}",
        mounted.len(),
        listed.len(),
        mounted.iter().zip(&listed).find(|(a, b)| a != b)
    );
    for (path, size, source) in &got {
        let Some(source) = source else { continue };
        let served = fs::read(fs.path(path)).with_context(|| format!("reading {path:?}"))?;
        let origin = fs::read(source)?;
        ensure!(
            served.len() as u64 == *size && served == origin,
            "{} read {} bytes through the mount, not the {} bytes of {}",
            path.display(),
            served.len(),
            origin.len(),
            source.display()
        );
    }
    Ok(())
}

/// Temp files (of an interrupted publish) a restarted daemon should have removed.
fn temp_leftovers(state: &Path) -> Result<Vec<std::ffi::OsString>> {
    Ok(fs::read_dir(state)?
        .filter_map(|e| Some(e.ok()?.file_name()))
        .filter(|n| n.to_string_lossy().contains(".tmp"))
        .collect())
}

/// Time from a daemon's spawn on an empty state dir until it has mounted (the span of the
/// first scan and publish, where the kills of the first test land), and from its scan's end
/// until then (the publish).
fn first_scan_span(work: &Work, opts: &MountOptions) -> Result<(Duration, Duration)> {
    let state = work.root.join("state-calibration");
    fs::create_dir(&state)?;
    let log = work.root.join("calibration.log");
    let started = Instant::now();
    let mut child = spawn_musicfsd(opts, &state, &work.mountpoint, &log)?;
    let mounted = wait_for_log_line(
        &log,
        0,
        &["musicfsd: mounted", " ERROR "],
        Duration::from_secs(120),
    );
    let span = started.elapsed();
    let _ = send_signal(child.id(), libc::SIGTERM);
    wait_child(&mut child, EXIT_DEADLINE)?;
    settle_mount(&work.mountpoint)?;
    let (line, _) = mounted?;
    ensure!(
        line.contains("musicfsd: mounted"),
        "the first start failed: {line}"
    );
    let publish = log_span(&log, 0, SCAN_DONE, "musicfsd: mounted")?;
    fs::remove_dir_all(&state)?;
    Ok((span, publish))
}

/// Large enough that the first scan takes a good part of a second.
const SCAN_TRACKS: u64 = 2000;

#[test]
fn a_first_scan_killed_at_random_points_resumes_to_the_clean_scan_tree_read_bit_exact() -> Result<()>
{
    run_case("first-scan", |trail| {
        let work = Work::new(SCAN_TRACKS)?;
        let want = clean_scan_shape(std::slice::from_ref(&work.origin))?;
        let opts = MountOptions::live(&work.origin, &work.root.join("unused"));
        // A quarter more than measured: some kills land after the mount too.
        let (span, publish) = first_scan_span(&work, &opts)?;
        let window = (span + span / 4, publish + publish / 4);
        trail.note(format!(
            "{SCAN_TRACKS} tracks: a first start takes {span:?}, {publish:?} of it from the \
             scan's end to the mount; kills within {:?} of the start or {:?} of the scan's end",
            window.0, window.1
        ));
        for iter in 0..iterations() {
            let state = work.root.join(format!("state-{iter:03}"));
            fs::create_dir(&state)?;
            let kills = 1 + trail.below(3);
            for k in 0..kills {
                // Two kills in three anywhere in the start, one aimed at the publish.
                let point = if trail.below(3) < 2 {
                    KillPoint {
                        after: None,
                        delay: random_delay(trail, window.0),
                    }
                } else {
                    KillPoint {
                        after: Some(SCAN_DONE),
                        delay: random_delay(trail, window.1),
                    }
                };
                let log = work.root.join(format!("musicfsd-{iter:03}-{k}.log"));
                let line = spawn_and_kill(&work, &opts, &state, &log, point)
                    .with_context(|| format!("iteration {iter}, kill {k}"))?;
                trail.note(format!("#{iter}.{k} {line}"));
                // Whatever a kill left published is a whole tree: the origin did not change,
                // so the clean scan's.
                if state.join("tree.snap").exists() {
                    let got = tree_shape(&state).with_context(|| {
                        format!("iteration {iter}, kill {k}: the snapshot left is unusable")
                    })?;
                    if let Some(diff) = first_shape_difference(&got, &want) {
                        bail!("iteration {iter}, kill {k}: a partial tree was published: {diff}");
                    }
                }
            }
            let mut restart = opts.clone();
            restart.state_dir = Some(state.clone());
            let fs = MountedFs::start(restart).with_context(|| {
                format!("iteration {iter}: the restart after {kills} kills failed")
            })?;
            check_served(&fs, &want)
                .with_context(|| format!("iteration {iter}: after {kills} kills"))?;
            let leftovers = temp_leftovers(&state)?;
            ensure!(
                leftovers.is_empty(),
                "iteration {iter}: temp files left in the state dir: {leftovers:?}"
            );
            drop(fs);
            fs::remove_dir_all(&state)?;
        }
        Ok(())
    })
}

/// The FUSE connection (`/sys/fs/fuse/connections/N`) of the mount at `mountpoint`, from
/// the mount table (the device's minor number), without touching the mount itself.
fn fuse_connection(mountpoint: &Path) -> Result<Option<u32>> {
    let needle = format!(" {} ", mountpoint.display());
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .find(|l| l.contains(&needle) && l.contains(" - fuse"))
        .and_then(|l| l.split_whitespace().nth(2)?.split_once(':')?.1.parse().ok()))
}

/// Aborts FUSE connection `n` (what `fusectl` offers an admin for a hung mount), mounting
/// `fusectl` for the purpose if it is not; so a daemon stuck on its own dead mount can exit
/// and the test clean up after a failure.
fn abort_fuse_connection(n: u32) {
    let dir = Path::new("/sys/fs/fuse/connections");
    let mounted_here = !dir.join(n.to_string()).exists()
        && std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
    let _ = fs::write(dir.join(n.to_string()).join("abort"), "1");
    if mounted_here {
        let _ = std::process::Command::new("umount").arg(dir).status();
    }
}

/// Waits, without sleeping, until the log at `path` holds `needle`: the window the next
/// kill aims at lasts well under a millisecond.
fn spin_for_log(path: &Path, needle: &[u8], pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if fs::read(path)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return Ok(());
        }
        ensure!(
            Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline,
            "no log line with {:?}; log:\n{}",
            String::from_utf8_lossy(needle),
            fs::read_to_string(path).unwrap_or_default()
        );
    }
}

#[test]
fn a_daemon_killed_while_it_probes_its_own_mount_exits_and_its_mount_goes() -> Result<()> {
    run_case("mount-probe", |trail| {
        let work = Work::new(200)?;
        let state = work.root.join("state");
        musicfs_scan(std::slice::from_ref(&work.origin), &state)?;
        let opts = MountOptions::new([work.origin.clone()]);
        let (mut aimed, kills) = (0, 10 * iterations());
        for iter in 0..kills {
            // Once the kernel has INIT's answer, the daemon stats its own mount: the kill
            // lands within 0.6 ms of that, before, during or after the probe's requests.
            let log = work.root.join("musicfsd.log");
            let mut child = spawn_musicfsd(&opts, &state, &work.mountpoint, &log)?;
            let found = spin_for_log(&log, b"FUSE INIT", child.id());
            let connection = fuse_connection(&work.mountpoint)?;
            let delay = Duration::from_micros(trail.below(600));
            let spun = Instant::now();
            while spun.elapsed() < delay {
                std::hint::spin_loop();
            }
            let _ = send_signal(child.id(), libc::SIGKILL);
            let exited = wait_child(&mut child, EXIT_DEADLINE)?;
            if exited.is_none() {
                let why = stuck_after_kill(child.id());
                if let Some(n) = connection {
                    abort_fuse_connection(n);
                }
                let _ = wait_child(&mut child, EXIT_DEADLINE);
                bail!("kill {iter}, {delay:?} after FUSE INIT: {why}");
            }
            found.with_context(|| format!("kill {iter}"))?;
            settle_mount(&work.mountpoint).with_context(|| format!("kill {iter}"))?;
            let text = fs::read_to_string(&log)?;
            aimed += u32::from(!text.contains("musicfsd: mounted"));
        }
        trail.note(format!(
            "{kills} kills, {aimed} of them before the daemon had finished probing its mount"
        ));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Publishes.
// ---------------------------------------------------------------------------------------

/// Rounds of changes to the origin: touches, rewrites (new title), additions and deletions
/// of a random subset of the library.
struct Mutator {
    live: Vec<u64>,
    next: u64,
    version: u32,
}

impl Mutator {
    fn round(&mut self, rng: &mut Trail, origin: &Path) -> Result<String> {
        self.version += 1;
        let (touch, edit, add, del) = (rng.below(60), rng.below(60), rng.below(60), rng.below(60));
        for _ in 0..touch {
            let i = self.live[rng.below(self.live.len() as u64) as usize];
            let f = fs::File::options()
                .write(true)
                .open(track_path(origin, i))?;
            f.set_modified(SystemTime::now())?;
        }
        for _ in 0..edit {
            let i = self.live[rng.below(self.live.len() as u64) as usize];
            let path = track_path(origin, i);
            let tmp = path.with_extension("part");
            fs::write(&tmp, track_bytes(i, self.version)?)?;
            fs::rename(&tmp, &path)?;
        }
        for _ in 0..add {
            let i = self.next;
            self.next += 1;
            fs::write(track_path(origin, i), track_bytes(i, 0)?)?;
            self.live.push(i);
        }
        for _ in 0..del {
            let k = rng.below(self.live.len() as u64) as usize;
            let i = self.live.swap_remove(k);
            fs::remove_file(track_path(origin, i))?;
        }
        Ok(format!(
            "{touch} touched, {edit} rewritten, {add} added, {del} deleted"
        ))
    }
}

const PUBLISH_TRACKS: u64 = 1500;

/// What a refresh logs once its scan has committed the changes to the catalog: the publish
/// comes next.
const SCAN_DONE: &str = "scan finished";

/// The time from the first log line (from byte `from`) holding `a` to the next holding
/// `b`, by the lines' timestamps.
fn log_span(log: &Path, from: usize, a: &str, b: &str) -> Result<Duration> {
    let text = fs::read(log)?;
    let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned();
    let mut lines = text.lines();
    let first = lines
        .find(|l| l.contains(a))
        .with_context(|| format!("no {a:?} in the log:\n{text}"))?;
    let second = lines
        .find(|l| l.contains(b))
        .with_context(|| format!("no {b:?} after {a:?} in the log:\n{text}"))?;
    let (t0, t1) = (time_of_day(first)?, time_of_day(second)?);
    Ok(Duration::from_secs_f64((t1 - t0).max(0.0)))
}

/// Seconds since midnight of a log line's timestamp (`2026-01-01T12:34:56.789012Z ...`).
fn time_of_day(line: &str) -> Result<f64> {
    let time = line
        .split_once('T')
        .and_then(|(_, rest)| rest.split_once('Z'))
        .map(|(t, _)| t)
        .with_context(|| format!("no timestamp in {line:?}"))?;
    let mut secs = 0.0;
    for part in time.split(':') {
        secs = secs * 60.0
            + part
                .parse::<f64>()
                .with_context(|| format!("in {line:?}"))?;
    }
    Ok(secs)
}

/// The first line that ends a refresh which published, from byte `from` of the log.
fn wait_published(log: &Path, from: usize) -> Result<String> {
    let (line, _) = wait_for_log_line(log, from, REFRESH_DONE, Duration::from_secs(120))?;
    ensure!(
        line.contains("swapped in the new tree"),
        "the refresh after the changes did not publish: {line}"
    );
    Ok(line)
}

/// Starts a daemon and returns once its refreshes are done: the start-up reconcile and any
/// other queued before a `musicfs refresh`, which waits for a round of its own. Changes made
/// after it are seen only by the next SIGHUP.
fn start_idle(opts: &MountOptions) -> Result<MountedFs> {
    let fs = MountedFs::start(opts.clone())?;
    musicfs_cmd_ok(fs.state_dir(), &["refresh"]).with_context(|| format!("log:\n{}", fs.log()))?;
    Ok(fs)
}

/// How a publish is started: changes made while the daemon is stopped, published by its
/// start-up reconcile, or made under a running daemon and published on SIGHUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Start,
    Hup,
}

#[test]
fn a_publish_killed_at_random_points_leaves_the_old_or_the_new_tree_whole_and_loses_no_track(
) -> Result<()> {
    run_case("publish", |trail| {
        let work = Work::new(PUBLISH_TRACKS)?;
        let state = work.root.join("state");
        fs::create_dir(&state)?;
        // Unwatched, no periodic refresh: a publish happens only at the start-up reconcile
        // and on SIGHUP, when every change of the round is in place (so the tree after a
        // kill can only be the old or the new one).
        let config = work.root.join("musicfs.toml");
        fs::write(
            &config,
            format!(
                "refresh_interval_secs = 0\n[[origin]]\npath = \"{}\"\nwatch = \"none\"\n",
                work.origin.display()
            ),
        )?;
        let mut opts = MountOptions::live(&work.origin, &state);
        opts.config = Some(config);
        musicfs_scan(std::slice::from_ref(&work.origin), &state)?;
        let mut old = tree_shape(&state)?;
        let mut mutator = Mutator {
            live: (0..PUBLISH_TRACKS).collect(),
            next: PUBLISH_TRACKS,
            version: 0,
        };

        // One round of each trigger uninterrupted: how long its refresh takes and its
        // publish within it (the windows the kills land in), and that it publishes the
        // clean scan's tree.
        let mut windows = BTreeMap::new();
        for trigger in [Trigger::Start, Trigger::Hup] {
            let (fs, changes, new, span, from) = match trigger {
                Trigger::Start => {
                    let changes = mutator.round(trail, &work.origin)?;
                    let new = clean_scan_shape(std::slice::from_ref(&work.origin))?;
                    let log = work.root.join("calibration-start.log");
                    let started = Instant::now();
                    let mut child = spawn_musicfsd(&opts, &state, &work.mountpoint, &log)?;
                    let published = wait_published(&log, 0);
                    let span = started.elapsed();
                    let _ = send_signal(child.id(), libc::SIGTERM);
                    wait_child(&mut child, EXIT_DEADLINE)?;
                    settle_mount(&work.mountpoint)?;
                    published?;
                    let publish = log_span(&log, 0, SCAN_DONE, "swapped in the new tree")?;
                    (
                        MountedFs::start(opts.clone())?,
                        changes,
                        new,
                        (span, publish),
                        0,
                    )
                }
                Trigger::Hup => {
                    let fs = start_idle(&opts)?;
                    let changes = mutator.round(trail, &work.origin)?;
                    let new = clean_scan_shape(std::slice::from_ref(&work.origin))?;
                    let from = fs::metadata(fs.log_path())?.len() as usize;
                    let started = Instant::now();
                    fs.kill(libc::SIGHUP)?;
                    wait_published(fs.log_path(), from)?;
                    let span = started.elapsed();
                    (fs, changes, new, (span, Duration::ZERO), from)
                }
            };
            let (span, mut publish) = span;
            if trigger == Trigger::Hup {
                publish = log_span(fs.log_path(), from, SCAN_DONE, "swapped in the new tree")?;
            }
            check_served(&fs, &new)
                .with_context(|| format!("{trigger:?} calibration round ({changes})"))?;
            drop(fs);
            // A quarter more than measured: some kills land after the publish too.
            let window = (span + span / 4, publish + publish / 4);
            trail.note(format!(
                "calibration {trigger:?}: {changes}; refreshed in {span:?}, of which {publish:?} \
                 from the scan's end to the swap; kills within {:?} of the start, or {:?} of \
                 the scan's end",
                window.0, window.1
            ));
            windows.insert(trigger as u8, window);
            old = new;
        }

        for iter in 0..iterations() {
            let trigger = if trail.below(2) == 0 {
                Trigger::Start
            } else {
                Trigger::Hup
            };
            // Half the kills anywhere in the refresh, half aimed at its publish.
            let (whole, publish) = windows[&(trigger as u8)];
            let point = if trail.below(2) == 0 {
                KillPoint {
                    after: None,
                    delay: random_delay(trail, whole),
                }
            } else {
                KillPoint {
                    after: Some(SCAN_DONE),
                    delay: random_delay(trail, publish),
                }
            };
            let (changes, new, line) = match trigger {
                Trigger::Start => {
                    let changes = mutator.round(trail, &work.origin)?;
                    let new = clean_scan_shape(std::slice::from_ref(&work.origin))?;
                    let log = work.root.join(format!("musicfsd-{iter:03}.log"));
                    let line = spawn_and_kill(&work, &opts, &state, &log, point)?;
                    (changes, new, line)
                }
                Trigger::Hup => {
                    let mut fs =
                        start_idle(&opts).with_context(|| format!("iteration {iter}: start"))?;
                    check_served(&fs, &old)
                        .with_context(|| format!("iteration {iter}: before the changes"))?;
                    let changes = mutator.round(trail, &work.origin)?;
                    let new = clean_scan_shape(std::slice::from_ref(&work.origin))?;
                    let from = fs::metadata(fs.log_path())?.len() as usize;
                    fs.kill(libc::SIGHUP)?;
                    let aimed = point.kill(fs.pid(), fs.log_path(), from);
                    if aimed.is_err() {
                        fs.kill(libc::SIGKILL)?;
                    }
                    let status = fs.wait_exit(EXIT_DEADLINE)?;
                    settle_mount(fs.mountpoint())?;
                    aimed?;
                    let text = fs.log();
                    let last = text.lines().last().unwrap_or("").to_string();
                    drop(fs);
                    let line = format!(
                        "SIGHUP, killed {point} ({}); last log line: {last}",
                        describe_status(status)
                    );
                    (changes, new, line)
                }
            };
            trail.note(format!("#{iter} {trigger:?}: {changes}; {line}"));

            // What a restart serves at once: the old tree or the new one, whole.
            let left = tree_shape(&state)
                .with_context(|| format!("iteration {iter}: no usable snapshot after the kill"))?;
            let which = if first_shape_difference(&left, &old).is_none() {
                "old"
            } else if first_shape_difference(&left, &new).is_none() {
                "new"
            } else {
                bail!(
                    "iteration {iter}: the tree after the kill is neither the old one ({}) nor \
                     the new one ({})",
                    first_shape_difference(&left, &old).unwrap_or_default(),
                    first_shape_difference(&left, &new).unwrap_or_default()
                );
            };
            trail.note(format!("#{iter} left the {which} tree"));

            // The restarted daemon's refresh publishes the new tree: no track lost, even when
            // the catalog already had the changes the killed publish did not show.
            let (fs, line) = MountedFs::start_watching(opts.clone(), Duration::from_secs(60))
                .with_context(|| format!("iteration {iter}: the restart failed"))?;
            ensure!(
                !line.contains("refresh failed"),
                "iteration {iter}: {line}\nlog:\n{}",
                fs.log()
            );
            check_served(&fs, &new)
                .with_context(|| format!("iteration {iter}: after the restart's refresh"))?;
            let leftovers = temp_leftovers(&state)?;
            ensure!(
                leftovers.is_empty(),
                "iteration {iter}: temp files left in the state dir: {leftovers:?}"
            );
            drop(fs);
            old = new;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Fetches and evictions, from a bucket.
// ---------------------------------------------------------------------------------------

/// Mono white noise upmixed to stereo, `secs` long: ~90 KB/s in FLAC; each seed gives other
/// audio (no chunk dedups across tracks).
fn noise(seed: u32, secs: u32) -> String {
    format!("anoisesrc=seed={seed}:amplitude=0.9:sample_rate=44100:duration={secs}")
}

/// A bucket of `count` noise FLACs of `secs` seconds each (seeds from `seed`).
fn noise_library(count: u32, secs: u32, seed: u32) -> Result<S3Library> {
    let inputs: Vec<(String, String, String)> = (0..count)
        .map(|i| {
            (
                format!("Noise Artist/Faults/{:02} - Static {i}.flac", i + 1),
                noise(seed + i, secs),
                format!("Static {i}"),
            )
        })
        .collect();
    let tracks: Vec<Track> = inputs
        .iter()
        .map(|(rel, input, title)| Track {
            rel,
            input,
            codec: &["-c:a", "flac", "-sample_fmt", "s16"],
            title,
        })
        .collect();
    S3Library::start(|dir| generate(dir, &tracks))
}

/// One track of the bucket as a reader checks it.
#[derive(Debug, Clone)]
struct Expected {
    /// Relative to the mount root.
    virt: PathBuf,
    len: u64,
    hash: u128,
}

/// Every track of the bucket by where the tree shows it, with its bucket file's hash (the
/// file of the same name under `library`: the tracks' names are all different).
fn expected(shape: &[TreeShape], library: &Path) -> Result<Vec<Expected>> {
    let files = walk_files(library)?;
    shape
        .iter()
        .filter_map(|(path, _, source)| Some((path, source.as_ref()?)))
        .map(|(path, source)| {
            let name = source.file_name();
            let file = files
                .iter()
                .find(|f| f.file_name() == name)
                .with_context(|| format!("{} is not in the bucket", source.display()))?;
            let bytes = fs::read(file)?;
            Ok(Expected {
                virt: path.clone(),
                len: bytes.len() as u64,
                hash: xxhash_rust::xxh3::xxh3_128(&bytes),
            })
        })
        .collect()
}

/// Reads one file whole through the mount and checks its bytes.
fn read_checked(mount: &Path, e: &Expected) -> std::io::Result<std::result::Result<(), String>> {
    let got = read_all(&mount.join(&e.virt))?;
    let hash = xxhash_rust::xxh3::xxh3_128(&got);
    Ok(if got.len() as u64 == e.len && hash == e.hash {
        Ok(())
    } else {
        Err(format!(
            "WRONG BYTES: {} read {} bytes (xxh3-128 {hash:032x}), the bucket's file has {} \
             ({:032x})",
            e.virt.display(),
            got.len(),
            e.len,
            e.hash
        ))
    })
}

/// What one reader thread saw until the kill stopped it.
struct Reads {
    completed: u64,
    /// The file it was reading when its read failed (after the kill).
    cut: Option<usize>,
}

/// Reader threads reading random tracks whole, checking each, until the daemon is killed.
/// A failed read before `killed` is set, or any wrong bytes, is an error.
fn spawn_readers(
    mount: &Path,
    tracks: &Arc<Vec<Expected>>,
    killed: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
    seeds: [u64; 2],
) -> Vec<std::thread::JoinHandle<Result<Reads>>> {
    seeds
        .into_iter()
        .map(|seed| {
            let (mount, tracks) = (mount.to_path_buf(), tracks.clone());
            let (killed, done) = (killed.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(seed);
                let mut completed = 0;
                loop {
                    let k = rng.below(tracks.len() as u64) as usize;
                    match read_checked(&mount, &tracks[k]) {
                        Ok(Ok(())) => {
                            completed += 1;
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Err(wrong)) => bail!(wrong),
                        Err(_) if killed.load(Ordering::SeqCst) => {
                            return Ok(Reads {
                                completed,
                                cut: Some(k),
                            })
                        }
                        Err(e) => bail!(
                            "reading {} failed before the kill: {e}",
                            tracks[k].virt.display()
                        ),
                    }
                }
            })
        })
        .collect()
}

/// How a fetch-kill loop is run.
struct FetchLoop<'a> {
    lib: &'a S3Library,
    opts: MountOptions,
    /// `musicfs cache clear` before each start, so every start fetches anew.
    clear_each: bool,
}

impl FetchLoop<'_> {
    /// Per iteration: a daemon on the bucket, the file the last kill cut short read first
    /// (bit-exact), two readers reading random tracks, and a SIGKILL once a random number
    /// of bytes (up to the library's size) has come from the server; then the cache
    /// verifies and the tree keeps every track. Returns the bytes fetched in all.
    fn run(&self, trail: &mut Trail) -> Result<u64> {
        let lib = self.lib;
        let shape = tree_shape(&lib.state)?;
        let tracks = Arc::new(expected(&shape, &lib.library)?);
        let library_bytes: u64 = tracks.iter().map(|t| t.len).sum();
        let first = lib.proxy.moved().down;
        let mut cut: Option<usize> = None;
        for iter in 0..iterations() {
            if self.clear_each {
                musicfs_cmd_ok(&lib.state, &["cache", "clear"])?;
            }
            let mut mount = MountedFs::start(self.opts.clone())
                .with_context(|| format!("iteration {iter}: the restart failed"))?;
            if let Some(k) = cut {
                if let Err(wrong) = read_checked(mount.mountpoint(), &tracks[k])
                    .with_context(|| format!("iteration {iter}: reading the file cut short"))?
                {
                    bail!("iteration {iter}: the file the last kill cut short: {wrong}");
                }
            }
            let killed = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let readers = spawn_readers(
                mount.mountpoint(),
                &tracks,
                &killed,
                &done,
                [trail.rng.next_u64(), trail.rng.next_u64()],
            );
            // The kill point: a random share of the library fetched; or, should the cache
            // already hold what the readers ask for, a few rounds of reads (or a reader that
            // failed: its error is reported below).
            let start = lib.proxy.moved().down;
            let at = start + trail.below(library_bytes);
            let enough = 3 * tracks.len() as u64;
            while lib.proxy.moved().down < at
                && done.load(Ordering::SeqCst) < enough
                && !readers.iter().any(|r| r.is_finished())
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            killed.store(true, Ordering::SeqCst);
            mount.kill(libc::SIGKILL)?;
            let fetched = lib.proxy.moved().down - start;
            let status = mount.wait_exit(EXIT_DEADLINE)?;
            let mut completed = 0;
            cut = None;
            for r in readers {
                let reads = r
                    .join()
                    .map_err(|_| anyhow!("a reader panicked"))?
                    .with_context(|| format!("iteration {iter}; log:\n{}", mount.log()))?;
                completed += reads.completed;
                cut = cut.or(reads.cut);
            }
            force_unmount(mount.mountpoint())?;
            drop(mount);
            trail.note(format!(
                "#{iter} killed ({}) {} KiB into the fetches after {completed} whole reads; \
                 cut short: {:?}",
                describe_status(status),
                fetched >> 10,
                cut.map(|k| &tracks[k].virt)
            ));
            cache_verify(&lib.state).with_context(|| format!("iteration {iter}"))?;
            let now = tree_shape(&lib.state)?;
            if let Some(diff) = first_shape_difference(&now, &shape) {
                bail!("iteration {iter}: the tree changed after the kill: {diff}");
            }
        }
        // A last daemon reads everything, bit-exact.
        let mount = MountedFs::start(self.opts.clone())?;
        for t in tracks.iter() {
            if let Err(wrong) = read_checked(mount.mountpoint(), t)? {
                bail!("after the last kill: {wrong}");
            }
        }
        drop(mount);
        cache_verify(&lib.state)?;
        Ok(lib.proxy.moved().down - first)
    }
}

#[test]
fn fetches_killed_at_random_points_leave_a_cache_that_verifies_and_serves_bit_exact() -> Result<()>
{
    run_case("fetch", |trail| {
        let lib = noise_library(4, 40, 31)?;
        let sums = lib.bucket_sums()?;
        // Each request waits a round trip: fetches are in flight for most of a read.
        lib.proxy.set_latency(Duration::from_millis(20));
        let run = FetchLoop {
            lib: &lib,
            opts: lib.mount_options(),
            clear_each: true,
        };
        run.run(trail)?;
        ensure!(sums == lib.bucket_sums()?, "the bucket changed");
        Ok(())
    })
}

#[test]
fn evictions_killed_at_random_points_leave_a_cache_that_verifies_and_serves_bit_exact() -> Result<()>
{
    run_case("eviction", |trail| {
        let budget = MIN_CACHE_BUDGET;
        let lib = noise_library(5, 360, 41)?;
        let sums = lib.bucket_sums()?;
        let total: u64 = walk_files(&lib.library)?
            .iter()
            .map(|p| Ok(fs::metadata(p)?.len()))
            .sum::<Result<u64>>()?;
        // The last read of everything passes the whole library through the cache: more
        // than it may hold, the budget plus the pack being written.
        let pack = CasOptions::default().pack_size;
        ensure!(
            total > budget + pack,
            "the library ({total} bytes) fits the cache budget ({budget}) and a pack ({pack})"
        );
        let config = lib.work_dir().join("musicfs.toml");
        fs::write(&config, format!("cache_budget = {budget}\n"))?;
        let mut opts = lib.mount_options();
        opts.config = Some(config);
        let run = FetchLoop {
            lib: &lib,
            opts,
            clear_each: false,
        };
        let fetched = run.run(trail)?;
        // The cache kept to its budget (give or take the chunks of files still open at its
        // last write) with the whole library through it: the rest was evicted on the way.
        let stats: serde_json::Value =
            serde_json::from_str(&musicfs_cmd_ok(&lib.state, &["--json", "cache", "stats"])?)?;
        let stored = stats["stored_bytes"].as_u64().context("no stored_bytes")?;
        trail.note(format!(
            "{} MiB fetched in all through a {} MiB budget; {} MiB cached at the end",
            fetched >> 20,
            budget >> 20,
            stored >> 20
        ));
        ensure!(
            stored <= budget + pack,
            "the cache holds {stored} bytes, over its budget {budget} and a pack {pack}"
        );
        ensure!(sums == lib.bucket_sums()?, "the bucket changed");
        Ok(())
    })
}
