//! `musicfs-bench scale`: what the user of a large library waits for, measured on a real
//! generated library with the real `musicfs` CLI and `musicfsd` daemon (issue 12):
//!
//! - the first scan (`musicfs scan` into a fresh state dir): wall time and peak RSS (the
//!   child's `ru_maxrss` from `wait4(2)`);
//! - restarts with the catalog and snapshot in place: mount-ready (exec → the first
//!   `stat(2)` of the mount root answered through FUSE), restart-to-current (exec → the
//!   start-up reconcile's end in the log) and the idle anonymous RSS after it;
//! - one track added while the daemon was down: exec → visible through the mount;
//! - while serving: one add, one re-tag and one delete, each timed from the change in the
//!   origin to what the mount shows (the album's virtual directory listed every ~1 ms),
//!   and the daemon's peak RSS (VmHWM, reset first) across them.
//!
//! The change tests add their own track (a re-titled copy of a track of one album) and
//! delete it again, so the library ends as it began (only that album directory's mtime
//! moves). An exclusive `flock(2)` on the library keeps two scale runs apart; files added
//! are also removed on Ctrl-C.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lofty::config::WriteOptions;
use lofty::file::TaggedFileExt;
use lofty::tag::{Accessor, TagExt};
use serde::{Deserialize, Serialize};

use crate::gen::{self, ManifestEntry};
use crate::ops;
use crate::peers::{self, Bins, Mount, Peer};
use crate::run::{RECONCILE_FAILED, RECONCILE_LOG, RECONCILE_NOTHING_NEW, RECONCILE_SWAPPED};

/// Options of a scale run.
#[derive(Debug, Clone)]
pub struct ScaleOpts {
    /// Library root (made by `gen`).
    pub library: PathBuf,
    /// Output directory (state, logs, mount, report).
    pub out: PathBuf,
    /// Counted restarts with nothing changed.
    pub restarts: usize,
    /// Add / re-tag / delete cycles while serving.
    pub repeats: usize,
    /// Longest wait for one thing to happen (scan excepted).
    pub timeout: Duration,
    /// Where musicfsd/musicfs are.
    pub bin_dir: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// One figure: the median of its samples, or why it is missing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figure {
    /// Unit of `value` and `samples`.
    pub unit: String,
    /// Median of the samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Every sample, in the order taken.
    pub samples: Vec<f64>,
    /// Why (some of) the samples are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Figure {
    pub(crate) fn new(unit: &str) -> Figure {
        Figure {
            unit: unit.into(),
            ..Figure::default()
        }
    }

    /// The figure `name` in `figures`, added with its unit from `table` (a `FIGURES`
    /// list: name, unit, what) when it is not there yet.
    pub(crate) fn entry<'a>(
        figures: &'a mut BTreeMap<String, Figure>,
        table: &[(&str, &str, &str)],
        name: &str,
    ) -> &'a mut Figure {
        let unit = table
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or("", |(_, u, _)| *u);
        figures
            .entry(name.to_string())
            .or_insert_with(|| Figure::new(unit))
    }

    pub(crate) fn push(&mut self, v: f64) {
        self.samples.push(v);
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        self.value = s.get(s.len() / 2).copied();
    }

    pub(crate) fn fail(&mut self, e: &anyhow::Error) {
        let msg = format!("{e:#}");
        tracing::warn!(error = %msg, "a measurement failed");
        self.error = Some(match self.error.take() {
            Some(prev) => format!("{prev}; {msg}"),
            None => msg,
        });
    }
}

/// The whole scale run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleReport {
    /// The command line.
    pub command: String,
    /// Kernel, CPU, memory.
    pub machine: BTreeMap<String, String>,
    /// Library root.
    pub library: String,
    /// Files in the library (tracks and the big file).
    pub files: u64,
    /// Load average (1, 5, 15 min) at the start and at the end.
    pub loadavg: [String; 2],
    /// Figures by name, in [`FIGURES`] order.
    pub figures: BTreeMap<String, Figure>,
    /// Facts that are not figures (which album the changes went to, reconcile outcomes).
    pub notes: BTreeMap<String, String>,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// Every figure: name, unit, what it is (the markdown's second column).
pub const FIGURES: &[(&str, &str, &str)] = &[
    ("first_scan", "s", "`musicfs scan` into a fresh state dir"),
    ("first_scan_rate", "files/s", "files / first_scan"),
    (
        "first_scan_peak_rss",
        "MB",
        "peak RSS of that scan (ru_maxrss)",
    ),
    (
        "mount_ready",
        "ms",
        "exec of musicfsd → stat of the mount root answered",
    ),
    (
        "restart_current",
        "ms",
        "exec → start-up reconcile ended, nothing changed",
    ),
    ("idle_rss_anon", "MB", "RssAnon 2 s after that reconcile"),
    ("idle_rss", "MB", "VmRSS at the same time"),
    (
        "restart_one_added",
        "ms",
        "exec → a track added while down visible",
    ),
    (
        "add_visible",
        "ms",
        "new track written → listed in its album",
    ),
    (
        "retag_visible",
        "ms",
        "title rewritten → new name listed, old gone",
    ),
    (
        "delete_visible",
        "ms",
        "track deleted → gone from its album",
    ),
    (
        "serving_peak_rss",
        "MB",
        "VmHWM across the serving changes (reset first)",
    ),
];

impl ScaleReport {
    fn figure(&mut self, name: &str) -> &mut Figure {
        Figure::entry(&mut self.figures, FIGURES, name)
    }

    /// The markdown rendering: one row per figure, median and samples.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        for (k, v) in &self.machine {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(s, "- library: {} ({} files)", self.library, self.files);
        let _ = writeln!(
            s,
            "- load average at start: {}; at end: {}",
            self.loadavg[0], self.loadavg[1]
        );
        let _ = writeln!(s, "- run took {:.0} s\n", self.seconds);
        let _ = writeln!(s, "| metric | what | p50 | samples |\n|---|---|---|---|");
        for (name, _, what) in FIGURES {
            let Some(f) = self.figures.get(*name) else {
                continue;
            };
            let value = f
                .value
                .map_or_else(|| "—".to_string(), |v| format!("{} {}", short(v), f.unit));
            let mut samples: Vec<String> = f.samples.iter().map(|v| short(*v)).collect();
            if let Some(e) = &f.error {
                samples.push(format!(
                    "error: {}",
                    e.chars().take(120).collect::<String>()
                ));
            }
            let _ = writeln!(s, "| {name} | {what} | {value} | {} |", samples.join(", "));
        }
        s.push('\n');
        for (k, v) in &self.notes {
            let _ = writeln!(s, "- {k}: {v}");
        }
        s
    }
}

/// Several scale reports side by side (e.g. before and after, 100k and 1M): one row per
/// figure, one column per report (headed by its directory's name and file count), medians
/// with the samples' range, and each report's load average.
pub fn side_by_side(reports: &[(String, ScaleReport)]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| metric | what |");
    for (label, r) in reports {
        let _ = write!(s, " {label} ({} files) |", r.files);
    }
    let _ = write!(s, "\n|---|---|");
    for _ in reports {
        s.push_str("---|");
    }
    s.push('\n');
    for (name, _, what) in FIGURES {
        if reports.iter().all(|(_, r)| !r.figures.contains_key(*name)) {
            continue;
        }
        let _ = write!(s, "| {name} | {what} |");
        for (_, r) in reports {
            let _ = write!(
                s,
                " {} |",
                r.figures.get(*name).map_or("—".into(), range_cell)
            );
        }
        s.push('\n');
    }
    let _ = write!(s, "| load average | start; end |");
    for (_, r) in reports {
        let _ = write!(s, " {}; {} |", r.loadavg[0], r.loadavg[1]);
    }
    s.push('\n');
    s
}

/// "median unit (min–max)", or the error.
fn range_cell(f: &Figure) -> String {
    let Some(v) = f.value else {
        return format!("error: {}", f.error.as_deref().unwrap_or("no sample"));
    };
    let min = f.samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = f.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spread = if f.samples.len() > 1 {
        format!(" ({}–{})", short(min), short(max))
    } else {
        String::new()
    };
    let failed = if f.error.is_some() {
        " (some failed)"
    } else {
        ""
    };
    format!("{} {}{spread}{failed}", short(v), f.unit)
}

/// Reads the `scale.json` of each directory in `dirs`, labelled by the directory's name.
pub fn load_reports(dirs: &[PathBuf]) -> Result<Vec<(String, ScaleReport)>> {
    dirs.iter()
        .map(|d| {
            let path = d.join("scale.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let r: ScaleReport = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a scale report", path.display()))?;
            let label = d.file_name().map_or_else(
                || d.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            Ok((label, r))
        })
        .collect()
}

/// A value with about three significant digits.
pub(crate) fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the scale measurements and writes `scale.json` and `scale.md` to `opts.out`.
pub fn run(opts: &ScaleOpts) -> Result<ScaleReport> {
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    let lib = opts
        .library
        .canonicalize()
        .with_context(|| format!("library {} missing", opts.library.display()))?;
    let _lock = lock_library(&lib)?;
    peers::install_interrupt_cleanup(out.join("mnt"))?;
    let bins = peers::find_bins(opts.bin_dir.as_deref())?;
    let entries = gen::read_manifest(&lib)?;
    let album = pick_album(&entries)?;
    let mut report = ScaleReport {
        command: opts.command.clone(),
        machine: crate::run::machine(),
        library: lib.display().to_string(),
        files: entries.len() as u64 + 1,
        loadavg: [loadavg(), String::new()],
        ..ScaleReport::default()
    };
    report.notes.insert(
        "changes go to".into(),
        format!("{}/ (copies of {})", album.dir, album.sibling),
    );
    let ctx = Ctx {
        bins,
        lib,
        state: out.join("state"),
        mnt: out.join("mnt").join("musicfs"),
        log: out.join("musicfsd.log"),
        timeout: opts.timeout,
    };
    let outcome = measure_all(&ctx, &out, &album, opts, &mut report);
    peers::remove_scratch_files();
    report.loadavg[1] = loadavg();
    report.seconds = start.elapsed().as_secs_f64();
    std::fs::write(
        out.join("scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("scale.md"), report.markdown())?;
    outcome?;
    Ok(report)
}

/// What every step needs.
struct Ctx {
    bins: Bins,
    lib: PathBuf,
    state: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    timeout: Duration,
}

fn measure_all(
    ctx: &Ctx,
    out: &Path,
    album: &Album,
    opts: &ScaleOpts,
    report: &mut ScaleReport,
) -> Result<()> {
    first_scan(ctx, out, report)?;
    let vdir = virtual_dir(ctx, &album.sibling)?;
    report
        .notes
        .insert("album through the mount".into(), vdir.display().to_string());
    let changes = Changes::new(ctx, album, &vdir)?;
    // An untimed start first: the scan just wrote the state, and its page cache is warm
    // for the counted starts alike.
    let warm = start_daemon(ctx)?;
    let (d, line) = warm.wait_for_log(RECONCILE_END, ctx.timeout)?;
    report.notes.insert(
        "warm-up start after the scan".into(),
        format!(
            "reconcile ended after {:.0} ms: {}",
            d.as_secs_f64() * 1e3,
            tail(&line)
        ),
    );
    warm.stop();
    for _ in 0..opts.restarts {
        if let Err(e) = restart_unchanged(ctx, report) {
            report.figure("restart_current").fail(&e);
        }
    }
    let serving = restart_with_one_added(ctx, &changes, report)?;
    serve_changes(ctx, &serving, &changes, opts.repeats, report);
    serving.stop();
    Ok(())
}

/// The log lines that end musicfsd's start-up reconcile.
const RECONCILE_END: &[&str] = &[RECONCILE_NOTHING_NEW, RECONCILE_SWAPPED, RECONCILE_FAILED];

/// The message part of a log line (after the target), for notes.
fn tail(line: &str) -> String {
    line.rsplit_once(": ")
        .map_or(line, |(_, m)| m)
        .chars()
        .take(160)
        .collect()
}

/// Takes an exclusive `flock(2)` on the library directory (released when the file drops).
fn lock_library(lib: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let f = File::open(lib).with_context(|| format!("cannot open {}", lib.display()))?;
    // SAFETY: flock(2) on a descriptor we own, open for the duration of the call.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "{} is locked by another `musicfs-bench scale` run ({})",
            lib.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

/// The album directory the change tests use and the track they copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Album {
    /// Source directory relative to the library root.
    pub dir: String,
    /// Source path of the track copied (relative to the library root).
    pub sibling: String,
    /// Its extension.
    pub ext: String,
}

/// A typical album (8–16 tracks, every track with album artist, album and title) in the
/// middle of the library's sorted directories: deterministic for a given library.
pub fn pick_album(entries: &[ManifestEntry]) -> Result<Album> {
    let mut by_dir: BTreeMap<&str, Vec<&ManifestEntry>> = BTreeMap::new();
    for e in entries {
        if let Some((d, _)) = e.rel_path.rsplit_once('/') {
            by_dir.entry(d).or_default().push(e);
        }
    }
    let tagged = |e: &&ManifestEntry| {
        !e.album_artist.is_empty() && !e.album.is_empty() && !e.title.is_empty()
    };
    let candidates: Vec<(&str, Vec<&ManifestEntry>)> = by_dir
        .into_iter()
        .filter(|(_, v)| (8..=16).contains(&v.len()) && v.iter().all(tagged))
        .collect();
    let (dir, tracks) = candidates
        .get(candidates.len() / 2)
        .context("the library has no album of 8 to 16 fully tagged tracks")?;
    let first = tracks
        .iter()
        .min_by(|a, b| a.rel_path.cmp(&b.rel_path))
        .context("empty album")?;
    Ok(Album {
        dir: dir.to_string(),
        sibling: first.rel_path.clone(),
        ext: first.ext.clone(),
    })
}

/// `musicfs scan` into a fresh state dir: wall time and the child's peak RSS.
fn first_scan(ctx: &Ctx, out: &Path, report: &mut ScaleReport) -> Result<()> {
    if ctx.state.exists() {
        std::fs::remove_dir_all(&ctx.state)?;
    }
    let log = File::create(out.join("scan.log"))?;
    let mut cmd = Command::new(&ctx.bins.musicfs);
    cmd.arg("--state-dir")
        .arg(&ctx.state)
        .arg("scan")
        .arg("--origin")
        .arg(&ctx.lib)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let (secs, status, max_rss_kb) = run_measured(&mut cmd)?;
    if !status.success() {
        bail!(
            "musicfs scan failed ({status}): see {}",
            out.join("scan.log").display()
        );
    }
    let files = report.files as f64;
    report.figure("first_scan").push(secs);
    report
        .figure("first_scan_rate")
        .push(files / secs.max(1e-9));
    report
        .figure("first_scan_peak_rss")
        .push(max_rss_kb as f64 * 1024.0 / 1e6);
    tracing::info!(secs, max_rss_kb, "first scan done");
    Ok(())
}

/// Runs `cmd` to its end: wall seconds, exit status and peak RSS in KiB (`ru_maxrss` of
/// `wait4(2)`, which covers the child only).
fn run_measured(cmd: &mut Command) -> Result<(f64, std::process::ExitStatus, i64)> {
    use std::os::unix::process::ExitStatusExt;
    let t = Instant::now();
    let child = cmd.spawn().context("cannot start the command")?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        // SAFETY: waits for our own child; `status` and `usage` are writable. The `Child`
        // is not waited on afterwards (dropping it does not wait).
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break rc;
        }
    };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    drop(child);
    Ok((
        t.elapsed().as_secs_f64(),
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss,
    ))
}

/// The virtual directory (relative to the mount root) of the track at source path `rel`,
/// from `musicfs tree --long` (`ino\tsize\tvirtual\tsource`), read as a stream.
fn virtual_dir(ctx: &Ctx, rel: &str) -> Result<PathBuf> {
    let want = ctx.lib.join(rel);
    let mut child = Command::new(&ctx.bins.musicfs)
        .arg("--state-dir")
        .arg(&ctx.state)
        .args(["tree", "--long"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run musicfs tree")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut found = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 4 && Path::new(f[3]) == want {
            found = Some(PathBuf::from(f[2].trim_start_matches('/')));
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let path = found.with_context(|| format!("musicfs tree does not list {}", want.display()))?;
    Ok(path
        .parent()
        .context("track at the mount root")?
        .to_path_buf())
}

/// Starts musicfsd (reconcile logged) and waits until its mount root answers.
fn start_daemon(ctx: &Ctx) -> Result<Mount> {
    let mut l = peers::launch(
        Peer::Musicfs,
        &ctx.lib,
        &ctx.mnt,
        false,
        &ctx.bins,
        &ctx.state,
    )?;
    if let Some(c) = l.cmd.as_mut() {
        c.envs(RECONCILE_LOG.iter().copied());
    }
    let root = ctx.mnt.clone();
    peers::start_when(l, move || peers::root_answers(&root), ctx.timeout, &ctx.log)
}

/// One restart with nothing changed: mount-ready, restart-to-current, idle RSS.
fn restart_unchanged(ctx: &Ctx, report: &mut ScaleReport) -> Result<()> {
    let m = start_daemon(ctx)?;
    report
        .figure("mount_ready")
        .push(m.ready.as_secs_f64() * 1e3);
    let (d, line) = m.wait_for_log(RECONCILE_END, ctx.timeout)?;
    if !line.contains(RECONCILE_NOTHING_NEW) {
        bail!(
            "the start-up reconcile did not find the library unchanged: {}",
            tail(&line)
        );
    }
    report.figure("restart_current").push(d.as_secs_f64() * 1e3);
    std::thread::sleep(IDLE_SETTLE);
    let pid = m.pid().context("daemon has no pid")?;
    let (rss, anon) = ops::rss(pid)?;
    report.figure("idle_rss_anon").push(anon as f64 / 1e6);
    report.figure("idle_rss").push(rss as f64 / 1e6);
    m.stop();
    Ok(())
}

/// How long the daemon is left alone after its reconcile before its idle RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Pause between two changes, so each meets an idle daemon.
const BETWEEN_CHANGES: Duration = Duration::from_secs(1);

/// Adds a track while the daemon is down, starts it, and times exec → the track visible.
/// Returns the daemon, still serving, once its reconcile has ended.
fn restart_with_one_added(ctx: &Ctx, changes: &Changes, report: &mut ScaleReport) -> Result<Mount> {
    let added = changes.write("restart-add", 0)?;
    let m = start_daemon(ctx)?;
    match changes.wait(&[&added.marker], &[], m.started, ctx.timeout) {
        Ok(d) => report
            .figure("restart_one_added")
            .push(d.as_secs_f64() * 1e3),
        Err(e) => report.figure("restart_one_added").fail(&e),
    }
    let (_, line) = m.wait_for_log(RECONCILE_END, ctx.timeout)?;
    report.notes.insert(
        "reconcile after the restart with one added".into(),
        tail(&line),
    );
    changes.remove(&added)?;
    changes.wait(&[], &[&added.marker], Instant::now(), ctx.timeout)?;
    Ok(m)
}

/// `repeats` add → re-tag → delete cycles on a serving daemon, and its peak RSS meanwhile.
fn serve_changes(
    ctx: &Ctx,
    m: &Mount,
    changes: &Changes,
    repeats: usize,
    report: &mut ScaleReport,
) {
    let pid = m.pid().unwrap_or(0);
    // Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5)).
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    for i in 0..repeats {
        one_cycle(ctx, changes, i, report);
    }
    match (reset, hwm(pid)) {
        (Ok(()), Ok(kb)) => report
            .figure("serving_peak_rss")
            .push(kb as f64 * 1024.0 / 1e6),
        (Err(e), _) => report.figure("serving_peak_rss").fail(&e.into()),
        (_, Err(e)) => report.figure("serving_peak_rss").fail(&e),
    }
}

/// VmHWM of a process, in KiB.
fn hwm(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// One add → re-tag → delete cycle; a step that fails is reported under its own figure
/// and ends the cycle (its scratch file is removed at the end of the run).
fn one_cycle(ctx: &Ctx, changes: &Changes, i: usize, report: &mut ScaleReport) {
    let timeout = ctx.timeout;
    let add = timed(report, "add_visible", || {
        let t = Instant::now();
        let added = changes.write("add", i)?;
        Ok((changes.wait(&[&added.marker], &[], t, timeout)?, added))
    });
    let Some(added) = add else { return };
    let retag = timed(report, "retag_visible", || {
        let t = Instant::now();
        let retagged = changes.write("retag", i)?;
        let d = changes.wait(&[&retagged.marker], &[&added.marker], t, timeout)?;
        Ok((d, retagged))
    });
    let Some(retagged) = retag else { return };
    timed(report, "delete_visible", || {
        let t = Instant::now();
        changes.remove(&retagged)?;
        Ok((changes.wait(&[], &[&retagged.marker], t, timeout)?, ()))
    });
}

/// After a pause (so the change meets an idle daemon), runs `step` and records the time it
/// returns under `name`, or its error; gives back what the step made.
fn timed<T>(
    report: &mut ScaleReport,
    name: &str,
    step: impl FnOnce() -> Result<(Duration, T)>,
) -> Option<T> {
    std::thread::sleep(BETWEEN_CHANGES);
    match step() {
        Ok((d, made)) => {
            report.figure(name).push(d.as_secs_f64() * 1e3);
            Some(made)
        }
        Err(e) => {
            report.figure(name).fail(&e);
            None
        }
    }
}

/// Writes, re-tags and removes scratch tracks in one album, and watches its virtual
/// directory for them.
struct Changes {
    /// The copied track's bytes.
    bytes: Vec<u8>,
    /// Source album directory (absolute).
    src_dir: PathBuf,
    /// Its extension.
    ext: String,
    /// The album's directory through the mount (absolute).
    vdir: PathBuf,
}

/// A scratch track: where it is and the title marker its virtual name holds.
struct Scratch {
    path: PathBuf,
    marker: String,
}

impl Changes {
    fn new(ctx: &Ctx, album: &Album, vdir: &Path) -> Result<Changes> {
        let src = ctx.lib.join(&album.sibling);
        let bytes =
            std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        Ok(Changes {
            bytes,
            src_dir: ctx.lib.join(&album.dir),
            ext: album.ext.clone(),
            vdir: ctx.mnt.join(vdir),
        })
    }

    /// Writes scratch track `i` (one source file per `i`, so a re-tag rewrites the file an
    /// add wrote) titled with `kind`'s marker; the clock of the caller starts before this.
    fn write(&self, kind: &str, i: usize) -> Result<Scratch> {
        let marker = format!("mfsbench-{kind}-{i:03}");
        let path = self.src_dir.join(format!(
            "zz-mfsbench-{}-{i:03}.{}",
            if kind == "restart-add" { "r" } else { "s" },
            self.ext
        ));
        let bytes = retitled(&self.bytes, &marker)?;
        peers::register_scratch_file(&path);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Scratch { path, marker })
    }

    fn remove(&self, s: &Scratch) -> Result<()> {
        std::fs::remove_file(&s.path)
            .with_context(|| format!("cannot remove {}", s.path.display()))?;
        peers::forget_scratch_file(&s.path);
        Ok(())
    }

    /// Polls the album's virtual directory (~1 ms) until an entry naming each of
    /// `present` resolves and none names any of `absent`; returns the time since `since`.
    fn wait(
        &self,
        present: &[&str],
        absent: &[&str],
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        loop {
            if self.shows(present, absent) {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                bail!(
                    "{} did not show {present:?} without {absent:?} within {timeout:?}",
                    self.vdir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn shows(&self, present: &[&str], absent: &[&str]) -> bool {
        let Ok(rd) = std::fs::read_dir(&self.vdir) else {
            return false;
        };
        let names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let resolves = |m: &str| {
            names
                .iter()
                .find(|n| n.contains(m))
                .is_some_and(|n| std::fs::metadata(self.vdir.join(n)).is_ok())
        };
        present.iter().all(|m| resolves(m))
            && !absent.iter().any(|m| names.iter().any(|n| n.contains(m)))
    }
}

/// `bytes` (an audio file) with its primary tag's title set to `title`, all else kept.
pub fn retitled(bytes: &[u8], title: &str) -> Result<Vec<u8>> {
    let tagged = lofty::probe::Probe::new(Cursor::new(bytes))
        .guess_file_type()?
        .read()
        .context("cannot read the copied track's tags")?;
    let mut tag = tagged
        .primary_tag()
        .cloned()
        .context("the copied track has no tag")?;
    tag.set_title(title.to_string());
    let mut cur = Cursor::new(bytes.to_vec());
    tag.save_to(&mut cur, WriteOptions::default())
        .context("cannot write the new title")?;
    Ok(cur.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{TrackPlan, TrackSize};
    use musicfs_core::Format;

    fn entry(rel_path: &str, title: &str) -> ManifestEntry {
        ManifestEntry {
            rel_path: rel_path.into(),
            ext: "flac".into(),
            album_artist: "AA".into(),
            album: "Al".into(),
            title: title.into(),
        }
    }

    #[test]
    fn the_album_picked_is_a_fully_tagged_directory_of_8_to_16_tracks() {
        let mut entries = Vec::new();
        for i in 0..20 {
            entries.push(entry(&format!("Big/{i:02}.flac"), "t"));
        }
        for i in 0..10 {
            let title = if i == 3 { "" } else { "t" };
            entries.push(entry(&format!("Untitled/{i:02}.flac"), title));
        }
        for i in (0..9).rev() {
            entries.push(entry(&format!("Good/{i:02}.flac"), "t"));
        }
        let a = pick_album(&entries).unwrap();
        assert_eq!(a.dir, "Good");
        assert_eq!(a.sibling, "Good/00.flac");
        assert_eq!(a.ext, "flac");
    }

    #[test]
    fn a_library_without_a_typical_album_is_refused() {
        let entries: Vec<ManifestEntry> =
            (0..3).map(|i| entry(&format!("S/{i}.flac"), "t")).collect();
        assert!(pick_album(&entries).is_err());
    }

    #[test]
    fn retitling_a_track_changes_its_title_and_keeps_its_other_tags() {
        let plan = TrackPlan {
            rel_path: "A/01.mp3".into(),
            format: Format::Mp3,
            title: Some("Old".into()),
            artists: vec!["Ar".into()],
            album_artist: Some("AA".into()),
            album: Some("Al".into()),
            date: Some("1999".into()),
            track: Some(4),
            track_total: Some(10),
            disc: None,
            genre: Some("Rock".into()),
        };
        let template = gen::template(Format::Mp3, TrackSize::Tiny).unwrap();
        let bytes = gen::tagged_bytes(&template, &plan, TrackSize::Tiny).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.mp3");
        std::fs::write(&path, retitled(&bytes, "mfsbench-add-007").unwrap()).unwrap();
        let (format, meta) = musicfs_index::tags::read_tags(&path).unwrap();
        assert_eq!(format, Format::Mp3);
        assert_eq!(meta.title.as_deref(), Some("mfsbench-add-007"));
        assert_eq!(meta.album.as_deref(), Some("Al"));
        assert_eq!(meta.album_artist, vec!["AA".to_string()]);
        assert_eq!(meta.track.as_deref(), Some("4"));
    }

    #[test]
    fn a_figure_reports_the_median_of_its_samples_and_keeps_them_in_order() {
        let mut f = Figure::new("ms");
        for v in [30.0, 10.0, 20.0] {
            f.push(v);
        }
        assert_eq!(f.value, Some(20.0));
        assert_eq!(f.samples, vec![30.0, 10.0, 20.0]);
    }

    #[test]
    fn the_markdown_lists_each_figure_with_its_samples_and_errors() {
        let mut r = ScaleReport::default();
        r.figure("add_visible").push(12.5);
        r.figure("delete_visible")
            .fail(&anyhow::anyhow!("timed out"));
        let md = r.markdown();
        assert!(md.contains(
            "| add_visible | new track written → listed in its album | 12.5 ms | 12.5 |"
        ));
        assert!(md.contains("| delete_visible |"));
        assert!(md.contains("error: timed out"));
        assert!(!md.contains("| mount_ready |"));
    }

    #[test]
    fn reports_side_by_side_show_medians_ranges_and_errors_per_column() {
        let mut before = ScaleReport {
            files: 1001,
            loadavg: ["1.0 1.0 1.0".into(), "2.0 2.0 2.0".into()],
            ..ScaleReport::default()
        };
        for v in [900.0, 1000.0, 950.0] {
            before.figure("add_visible").push(v);
        }
        let mut after = ScaleReport {
            files: 1001,
            ..ScaleReport::default()
        };
        after
            .figure("add_visible")
            .fail(&anyhow::anyhow!("timed out"));
        let json = serde_json::to_string(&before).unwrap();
        let before: ScaleReport = serde_json::from_str(&json).unwrap();
        let md = side_by_side(&[("b".into(), before), ("a".into(), after)]);
        assert!(md.contains("| metric | what | b (1001 files) | a (1001 files) |"));
        assert!(
            md.contains("| 950 ms (900–1000) | error: timed out |"),
            "{md}"
        );
        assert!(md.contains("| load average | start; end | 1.0 1.0 1.0; 2.0 2.0 2.0 |"));
        assert!(!md.contains("| mount_ready |"));
    }
}
