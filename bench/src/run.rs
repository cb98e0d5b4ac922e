//! `musicfs-bench run`: scans, mounts every peer over the same library in turn, measures
//! the same operations on the same files, and writes the report.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::gen::{self, ManifestEntry, Rng, BIG_FILE};
use crate::metric::Metric;
use crate::ops;
use crate::peers::{self, Bins, PathMap, Peer};
use crate::report::{PeerReport, Report};
use crate::scanners::{self, ScanResult};

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Library root (generated).
    pub library: PathBuf,
    /// Peers to run.
    pub peers: Vec<Peer>,
    /// Operations to measure.
    pub ops: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Quick mode.
    pub quick: bool,
    /// Where musicfsd/musicfs are.
    pub bin_dir: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

struct Sizes {
    sample: usize,
    readdir_warm: [usize; 3],
    readdir_cold: [usize; 3],
    randread: usize,
    seq_passes: usize,
    per_reader: usize,
}

const DIR_CLASSES: [(&str, usize); 3] = [("10", 10), ("1000", 1000), ("100k", 100_000)];
const READERS: [usize; 3] = [1, 8, 64];

/// The files and directories every peer is measured on, as source paths.
struct Workload {
    sample: Vec<String>,
    dirs: Vec<(&'static str, String, Vec<String>)>,
    albums: Vec<Vec<String>>,
}

struct Maps {
    musicfs: Option<PathMap>,
    musefs: Option<PathMap>,
}

impl Maps {
    fn path(&self, peer: Peer, src: &str) -> Option<PathBuf> {
        match peer {
            p if p.is_musicfs() => self.musicfs.as_ref()?.get(src).map(PathBuf::from),
            Peer::Musefs => self.musefs.as_ref()?.get(src).map(PathBuf::from),
            _ => Some(PathBuf::from(src)),
        }
    }

    fn all(&self, src: &str) -> bool {
        self.musicfs.as_ref().is_none_or(|m| m.get(src).is_some())
            && self.musefs.as_ref().is_none_or(|m| m.get(src).is_some())
    }

    /// The peer directory of a source directory, when all its files land in one place.
    fn dir(&self, peer: Peer, files: &[String]) -> Option<PathBuf> {
        let mut parent: Option<PathBuf> = None;
        for f in files {
            let p = self.path(peer, f)?.parent()?.to_path_buf();
            match &parent {
                Some(q) if *q != p => return None,
                _ => parent = Some(p),
            }
        }
        parent
    }
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            sample: 100,
            readdir_warm: [20, 10, 2],
            readdir_cold: [3, 2, 1],
            randread: 1000,
            seq_passes: 2,
            per_reader: 1,
        }
    } else {
        Sizes {
            sample: 2000,
            readdir_warm: [200, 50, 5],
            readdir_cold: [20, 10, 3],
            randread: 20_000,
            seq_passes: 5,
            per_reader: 4,
        }
    }
}

fn workload(entries: &[ManifestEntry], maps: &Maps, quick: bool) -> Workload {
    let s = sizes(quick);
    let usable: Vec<&ManifestEntry> = entries.iter().filter(|e| maps.all(&e.rel_path)).collect();
    let mut rng = Rng::new(42);
    let mut sample = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let want = s.sample.min(usable.len());
    while sample.len() < want {
        let i = rng.below(usable.len() as u64) as usize;
        if seen.insert(i) {
            sample.push(usable[i].rel_path.clone());
        }
    }
    let mut by_dir: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in entries {
        if let Some((d, _)) = e.rel_path.rsplit_once('/') {
            by_dir.entry(d).or_default().push(e.rel_path.clone());
        }
    }
    let consistent = |files: &[String]| {
        [Peer::Musicfs, Peer::Musefs].iter().all(|p| {
            let has_map = match p {
                Peer::Musicfs => maps.musicfs.is_some(),
                _ => maps.musefs.is_some(),
            };
            !has_map || maps.dir(*p, files).is_some()
        })
    };
    let mut dirs = Vec::new();
    for (label, target) in DIR_CLASSES {
        let best = by_dir
            .iter()
            .filter(|(_, f)| f.len() * 2 >= target && f.len() <= target * 2)
            .filter(|(_, f)| consistent(f))
            .min_by_key(|(_, f)| f.len().abs_diff(target));
        if let Some((d, f)) = best {
            dirs.push((label, d.to_string(), f.clone()));
        }
    }
    let albums: Vec<Vec<String>> = by_dir
        .values()
        .filter(|f| (8..=16).contains(&f.len()) && consistent(f))
        .take(READERS[2] * s.per_reader)
        .cloned()
        .collect();
    Workload {
        sample,
        dirs,
        albums,
    }
}

pub(crate) fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cpu".into(), format!("{cpu} ({cores} cores)"));
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    m.insert("memory".into(), mem);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    m.insert("kernel".into(), kernel.trim().to_string());
    m
}

fn ensure_tool(bin: &str, pkg: &str, quick: bool) -> Option<String> {
    if peers::which(bin).is_some() {
        return None;
    }
    if quick {
        return Some(format!(
            "not installed (quick mode skips it): apt-get install {pkg}"
        ));
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", pkg])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if ok && peers::which(bin).is_some() {
        None
    } else {
        Some(format!("not installed and apt-get install {pkg} failed"))
    }
}

/// Runs the benchmark and writes `report.json` and `report.md` to `opts.out`.
pub fn run(opts: &RunOpts) -> Result<Report> {
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    peers::install_interrupt_cleanup(out.join("mnt"))?;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let lib = opts
        .library
        .canonicalize()
        .with_context(|| format!("library {} missing", opts.library.display()))?;
    let entries = gen::read_manifest(&lib)?;
    let has = |op: &str| opts.ops.iter().any(|o| o == op);
    let bins = peers::find_bins(opts.bin_dir.as_deref());
    let state = out.join("state");
    std::fs::create_dir_all(&state)?;
    let files = entries.len() as u64 + 1;
    let mut report = Report {
        command: opts.command.clone(),
        machine: machine(),
        quick: opts.quick,
        loadavg,
        not_built: not_built(),
        ..Report::default()
    };
    report
        .library
        .insert("path".into(), lib.display().to_string());
    report.library.insert("tracks".into(), files.to_string());

    // Scans come first: musicfs's scan is also what its mount serves.
    let mut skip: HashMap<Peer, String> = HashMap::new();
    let mut scans = Vec::new();
    let wants = |p: Peer| {
        if p == Peer::Musicfs {
            opts.peers.iter().any(|q| q.is_musicfs())
        } else {
            opts.peers.contains(&p)
        }
    };
    let musicfs_state = state.join("musicfs");
    let musefs_state = state.join("musefs");
    match &bins {
        Err(e) => {
            skip.insert(Peer::Musicfs, e.to_string());
            scans.push(ScanResult::skipped("musicfs", e.to_string()));
        }
        Ok(b) if wants(Peer::Musicfs) || has("scan") => {
            match scanners::musicfs(b, &lib, &musicfs_state, files) {
                Ok(r) => scans.push(r),
                Err(e) => {
                    skip.insert(Peer::Musicfs, format!("scan failed: {e:#}"));
                    scans.push(ScanResult::skipped("musicfs", format!("{e:#}")));
                }
            }
        }
        Ok(_) => {}
    }
    if wants(Peer::Musefs) || has("scan") {
        let r = match &bins {
            Ok(b) if b.musefs.is_some() => scanners::musefs(b, &lib, &musefs_state, files),
            _ => Err(anyhow::anyhow!("not installed: run cargo install musefs")),
        };
        match r {
            Ok(r) => scans.push(r),
            Err(e) => {
                skip.insert(Peer::Musefs, format!("{e:#}"));
                scans.push(ScanResult::skipped("musefs", format!("{e:#}")));
            }
        }
    }
    if has("scan") {
        for (name, bin, pkg) in [("beets", "beet", "beets"), ("mpd", "mpc", "mpc")] {
            let missing = ensure_tool(bin, pkg, opts.quick).or_else(|| {
                (name == "mpd")
                    .then(|| ensure_tool("mpd", "mpd", opts.quick))
                    .flatten()
            });
            let r = match missing {
                Some(reason) => ScanResult::skipped(name, reason),
                None => {
                    let res = if name == "beets" {
                        scanners::beets(&lib, &state, files)
                    } else {
                        scanners::mpd(&lib, &state, files)
                    };
                    res.unwrap_or_else(|e| ScanResult::skipped(name, format!("{e:#}")))
                }
            };
            scans.push(r);
        }
    }
    report.scanners = scans
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();

    let mut maps = Maps {
        musicfs: None,
        musefs: None,
    };
    if let (Ok(b), true) = (
        &bins,
        wants(Peer::Musicfs) && !skip.contains_key(&Peer::Musicfs),
    ) {
        match peers::musicfs_map(b, &musicfs_state, &lib) {
            Ok(m) => maps.musicfs = Some(m),
            Err(e) => {
                skip.insert(Peer::Musicfs, format!("{e:#}"));
            }
        }
    }
    if wants(Peer::Musefs) && !skip.contains_key(&Peer::Musefs) {
        let mut with_big = entries.clone();
        with_big.push(ManifestEntry {
            rel_path: BIG_FILE.into(),
            ext: "flac".into(),
            album_artist: "Bench Big".into(),
            album: "Huge Album".into(),
            title: "Huge".into(),
        });
        maps.musefs = Some(peers::musefs_map(&with_big));
    }
    for (tool, peer, pkg) in [
        ("bindfs", Peer::Bindfs, "bindfs"),
        ("mergerfs", Peer::Mergerfs, "mergerfs"),
        ("rclone", Peer::Rclone, "rclone"),
    ] {
        if wants(peer) {
            if let Some(reason) = ensure_tool(tool, pkg, opts.quick) {
                skip.insert(peer, reason);
            }
        }
    }
    let work = workload(&entries, &maps, opts.quick);
    report
        .library
        .insert("sample_files".into(), work.sample.len().to_string());
    for (label, d, n) in &work.dirs {
        report.library.insert(
            format!("readdir_{label}_dir"),
            format!("{d} ({} files)", n.len()),
        );
    }

    for &peer in &opts.peers {
        let mut pr = PeerReport {
            name: peer.name().into(),
            cold: peer.cold_meaning().into(),
            ..PeerReport::default()
        };
        pr.expected = expected(peer, opts, &work);
        let skipped = skip.get(&peer).or_else(|| {
            peer.is_musicfs()
                .then(|| skip.get(&Peer::Musicfs))
                .flatten()
        });
        // Held while musicfs-uring runs: musicfsd flips the fuse module parameter, which
        // is put back right after (and by the interrupt handler on Ctrl-C).
        let _uring = (peer == Peer::MusicfsUring).then(peers::UringParamGuard::save);
        let outcome = match (&bins, skipped) {
            (_, Some(reason)) => Err(anyhow::anyhow!("{reason}")),
            (Err(e), _) if peer.is_musicfs() => Err(anyhow::anyhow!("{e}")),
            (b, None) => {
                let dummy = Bins {
                    musicfsd: PathBuf::new(),
                    musicfs: PathBuf::new(),
                    musefs: peers::which("musefs"),
                };
                let b = b.as_ref().unwrap_or(&dummy);
                let st = if peer == Peer::Musefs {
                    &musefs_state
                } else {
                    &musicfs_state
                };
                measure_peer(peer, &lib, &out, b, st, &maps, &work, opts, &mut pr)
            }
        };
        match outcome {
            Ok(()) => pr.status = "ok".into(),
            Err(e) => {
                pr.status = "skipped".into();
                pr.reason = Some(format!("{e:#}"));
                pr.metrics.clear();
            }
        }
        drop(_uring);
        tracing::info!(peer = peer.name(), status = %pr.status, "peer done");
        report.peers.push(pr);
    }
    report.compute_ratios();
    report.seconds = start.elapsed().as_secs_f64();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("report.md"), report.markdown())?;
    Ok(report)
}

fn expected(peer: Peer, opts: &RunOpts, work: &Workload) -> Vec<String> {
    let has = |op: &str| opts.ops.iter().any(|o| o == op);
    let mut v = Vec::new();
    for op in ["stat", "lookup", "open"] {
        if has(op) {
            v.push(format!("{op}_warm"));
            v.push(format!("{op}_cold"));
        }
    }
    if has("readdir") {
        for (label, _, _) in &work.dirs {
            v.push(format!("readdir_{label}_warm"));
            v.push(format!("readdir_{label}_cold"));
        }
    }
    if has("read") {
        v.push("read_files".into());
    }
    if has("seqread") {
        v.push("seqread".into());
    }
    if has("randread") {
        v.push("randread".into());
    }
    if has("concurrent") {
        v.extend(READERS.iter().map(|n| format!("concurrent_{n}")));
    }
    if has("mpd") {
        v.push("mpd_update".into());
    }
    if peer != Peer::Native {
        if has("mount") {
            v.push("mount".into());
            if peer.is_virtual() {
                v.push("restart".into());
            }
            if peer.is_musicfs() {
                v.push("restart_current".into());
            }
        }
        if has("rss") {
            v.extend(
                [
                    "rss_idle_mb",
                    "rss_idle_anon_mb",
                    "rss_load_mb",
                    "rss_load_anon_mb",
                ]
                .map(String::from),
            );
        }
    }
    v
}

fn mapped(maps: &Maps, peer: Peer, root: &Path, srcs: &[String]) -> Vec<PathBuf> {
    srcs.iter()
        .filter_map(|s| maps.path(peer, s).map(|p| root.join(p)))
        .collect()
}

fn put(pr: &mut PeerReport, name: &str, r: Result<Metric>) {
    let m = r.unwrap_or_else(|e| Metric::failed(format!("{e:#}")));
    pr.metrics.insert(name.to_string(), m);
}

/// One mount of a peer and what to measure on it.
struct Pass<'a> {
    peer: Peer,
    maps: &'a Maps,
    work: &'a Workload,
    root: &'a Path,
    sample: &'a [PathBuf],
}

impl Pass<'_> {
    /// stat, lookup, readdir and open + 4 KiB, named `<op>_warm` or `<op>_cold`. Cold: the
    /// kernel's dentry and inode caches are dropped before each op (readdir drops the page
    /// cache before each iteration itself); `readdir_iters` per readdir class.
    fn latency_ops(
        &self,
        pr: &mut PeerReport,
        has: &dyn Fn(&str) -> bool,
        cold: bool,
        readdir_iters: &[usize; 3],
    ) {
        let (tag, warm) = if cold {
            ("cold", false)
        } else {
            ("warm", true)
        };
        let fresh = || if cold { ops::drop_caches(2) } else { Ok(()) };
        let sample = self.sample;
        if has("stat") {
            put(
                pr,
                &format!("stat_{tag}"),
                fresh().and_then(|_| ops::stat(sample, warm)),
            );
        }
        if has("lookup") {
            let r = fresh().and_then(|_| ops::lookup(sample, warm));
            put(pr, &format!("lookup_{tag}"), r);
        }
        if has("readdir") {
            for (i, (label, dir, files)) in self.work.dirs.iter().enumerate() {
                let r = dir_of(self.maps, self.peer, self.root, files, dir)
                    .and_then(|d| ops::readdir(&d, readdir_iters[i], warm));
                put(pr, &format!("readdir_{label}_{tag}"), r);
            }
        }
        if has("open") {
            let r = fresh().and_then(|_| ops::open_first_block(sample, warm));
            put(pr, &format!("open_{tag}"), r);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_peer(
    peer: Peer,
    lib: &Path,
    out: &Path,
    bins: &Bins,
    state: &Path,
    maps: &Maps,
    work: &Workload,
    opts: &RunOpts,
    pr: &mut PeerReport,
) -> Result<()> {
    let s = sizes(opts.quick);
    let has = |op: &str| opts.ops.iter().any(|o| o == op);
    let mnt_root = out.join("mnt");
    let probe = maps
        .path(peer, &work.sample[0])
        .context("sample file not shown by this peer")?;
    let timeout = Duration::from_secs(if opts.quick { 30 } else { 300 });
    let launch_env = |cold: bool, env: &[(&str, &str)]| -> Result<peers::Mount> {
        let tag = if cold { "cold" } else { "warm" };
        let mnt = mnt_root.join(format!("{}-{tag}", peer.name()));
        let mut l = peers::launch(peer, lib, &mnt, cold, bins, state)?;
        if let Some(c) = l.cmd.as_mut() {
            c.envs(env.iter().copied());
        }
        peers::start(
            l,
            &probe,
            timeout,
            &out.join(format!("{}-{tag}.log", peer.name())),
        )
    };
    // A musicfs daemon reconciles with its origins right after mounting (a stat walk of the
    // whole library on every core, ~200 ms at 100k tracks): measuring during it measures
    // the walk. Wait for its end, as a user whose daemon has been up a while would see it.
    let launch = |cold: bool| -> Result<peers::Mount> {
        if !peer.is_musicfs() {
            return launch_env(cold, &[]);
        }
        let m = launch_env(cold, RECONCILE_LOG)?;
        m.wait_for_log(
            &[RECONCILE_NOTHING_NEW, RECONCILE_SWAPPED, RECONCILE_FAILED],
            timeout,
        )?;
        Ok(m)
    };

    let warm = launch(false)?;
    let root = warm.root.clone();
    let sample = mapped(maps, peer, &root, &work.sample);
    pr.sample_files = sample.len() as u64;
    if peer != Peer::Native && has("mount") {
        pr.metrics.insert(
            "mount".into(),
            Metric::value(warm.ready.as_secs_f64() * 1e3, "ms"),
        );
    }
    if peer.is_musicfs() {
        pr.mode = peers::musicfs_status(&root);
    }
    let pid = warm.pid();
    if let (Some(pid), true) = (pid, has("rss")) {
        let (r, a) = ops::rss(pid)?;
        pr.metrics
            .insert("rss_idle_mb".into(), Metric::value(r as f64 / 1e6, "MB"));
        pr.metrics.insert(
            "rss_idle_anon_mb".into(),
            Metric::value(a as f64 / 1e6, "MB"),
        );
    }
    let pass = Pass {
        peer,
        maps,
        work,
        root: &root,
        sample: &sample,
    };
    pass.latency_ops(pr, &has, false, &s.readdir_warm);
    if has("read") {
        put(pr, "read_files", ops::read_files(&sample));
    }
    let big = maps.path(peer, BIG_FILE).map(|p| root.join(p));
    if has("seqread") {
        let r = big
            .as_deref()
            .context("big file not shown")
            .and_then(|b| ops::seqread(b, s.seq_passes));
        put(pr, "seqread", r);
    }
    if has("randread") {
        let r = big
            .as_deref()
            .context("big file not shown")
            .and_then(|b| ops::randread(b, s.randread, 7));
        put(pr, "randread", r);
    }
    if has("concurrent") {
        let albums: Vec<Vec<PathBuf>> = work
            .albums
            .iter()
            .map(|a| mapped(maps, peer, &root, a))
            .collect();
        for n in READERS {
            let sampler = (n == READERS[2])
                .then_some(pid)
                .flatten()
                .map(ops::RssSampler::start);
            put(
                pr,
                &format!("concurrent_{n}"),
                ops::concurrent(&albums, n, s.per_reader),
            );
            if let (Some(sm), true) = (sampler, has("rss")) {
                let (r, a) = sm.finish();
                pr.metrics
                    .insert("rss_load_mb".into(), Metric::value(r as f64 / 1e6, "MB"));
                pr.metrics.insert(
                    "rss_load_anon_mb".into(),
                    Metric::value(a as f64 / 1e6, "MB"),
                );
            }
        }
        let p99 = |n: usize| {
            pr.metrics
                .get(&format!("concurrent_{n}"))
                .and_then(|m| m.p99)
        };
        if let (Some(one), Some(many)) = (p99(READERS[0]), p99(READERS[2])) {
            pr.metrics.insert(
                format!("concurrent_p99_{}_over_{}", READERS[2], READERS[0]),
                Metric::value(many as f64 / one.max(1) as f64, "×"),
            );
        }
    }
    if has("mpd") {
        // A media server's full rescan through this peer's mount (mpd opens every file and
        // reads its tags): what a user of Navidrome/mpd on top of the mount waits for.
        let r = scanners::mpd(&root, &out.join(format!("{}-mpd", peer.name())), 0)
            .map(|s| Metric::value(s.seconds * 1e3, "ms"));
        put(pr, "mpd_update", r);
    }
    if has("rss") && pid.is_some() && !pr.metrics.contains_key("rss_load_mb") {
        // Without the concurrent op, load is the warm stat pass repeated.
        let sm = ops::RssSampler::start(pid.unwrap_or(0));
        let _ = ops::read_files(&sample);
        let (r, a) = sm.finish();
        pr.metrics
            .insert("rss_load_mb".into(), Metric::value(r as f64 / 1e6, "MB"));
        pr.metrics.insert(
            "rss_load_anon_mb".into(),
            Metric::value(a as f64 / 1e6, "MB"),
        );
    }
    warm.stop();

    if peer.is_virtual() && has("mount") {
        let snap = state.join("tree.snap");
        let before = file_identity(&snap);
        let env: &[(&str, &str)] = if peer.is_musicfs() {
            RECONCILE_LOG
        } else {
            &[]
        };
        let again = launch_env(false, env)?;
        pr.metrics.insert(
            "restart".into(),
            Metric::value(again.ready.as_secs_f64() * 1e3, "ms"),
        );
        if peer.is_musicfs() {
            let current = again
                .wait_for_log(
                    &[RECONCILE_NOTHING_NEW, RECONCILE_SWAPPED, RECONCILE_FAILED],
                    Duration::from_secs(if opts.quick { 30 } else { 300 }),
                )
                .and_then(|(d, line)| {
                    if line.contains(RECONCILE_NOTHING_NEW) {
                        Ok(Metric::value(d.as_secs_f64() * 1e3, "ms"))
                    } else {
                        Err(anyhow::anyhow!(
                            "start-up reconcile did not find the library unchanged: {line}"
                        ))
                    }
                });
            put(pr, "restart_current", current);
        }
        again.stop();
        let after = file_identity(&snap);
        if peer.is_musicfs() {
            let verdict = match (before, after) {
                (Some(b), Some(a)) if a == b => {
                    format!(
                        "not written (tree.snap ino {} mtime_ns {} unchanged)",
                        b.0, b.1
                    )
                }
                (Some(b), Some(a)) => format!(
                    "REWRITTEN (tree.snap ino {} mtime_ns {} -> ino {} mtime_ns {})",
                    b.0, b.1, a.0, a.1
                ),
                _ => "tree.snap missing".into(),
            };
            pr.notes.insert("restart_snapshot".into(), verdict);
        }
    }

    if ["stat", "lookup", "open", "readdir"].iter().any(|o| has(o)) {
        let cold = launch(true)?;
        let root = cold.root.clone();
        let sample = mapped(maps, peer, &root, &work.sample);
        let pass = Pass {
            peer,
            maps,
            work,
            root: &root,
            sample: &sample,
        };
        pass.latency_ops(pr, &has, true, &s.readdir_cold);
        cold.stop();
    }
    Ok(())
}

/// The log filter that shows the end of musicfsd's start-up reconcile, which
/// musicfs_index::refresh logs at debug level only (musicfs_tools::live: where builds before
/// the refresh library moved logged it, so an older --bin-dir can be measured beside this).
pub(crate) const RECONCILE_LOG: &[(&str, &str)] = &[(
    "RUST_LOG",
    "musicfs_index::refresh=debug,musicfs_tools::live=debug,info",
)];

/// What musicfsd logs when its start-up reconcile ends (see musicfs_index::refresh).
pub(crate) const RECONCILE_NOTHING_NEW: &str = "refresh found nothing new";
pub(crate) const RECONCILE_SWAPPED: &str = "swapped in the new tree";
pub(crate) const RECONCILE_FAILED: &str = "refresh failed";

/// (inode, mtime in ns) of a file, to tell whether it was rewritten.
fn file_identity(p: &Path) -> Option<(u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.ino(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    ))
}

/// BENCH.md metrics with nothing to measure yet.
fn not_built() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "search".into(),
        "not built: the daemon has no search index yet".into(),
    );
    m.insert(
        "tag_edit".into(),
        "not in `run` (local origins re-read nothing): the bytes a tag edit costs a remote origin are measured by `musicfs-bench remote`"
            .into(),
    );
    m
}

fn dir_of(
    maps: &Maps,
    peer: Peer,
    root: &Path,
    files: &[String],
    src_dir: &str,
) -> Result<PathBuf> {
    if !peer.is_virtual() {
        return Ok(root.join(src_dir));
    }
    let d = maps
        .dir(peer, files)
        .with_context(|| format!("{src_dir}: files not in one directory of this peer"))?;
    Ok(root.join(d))
}
