//! The soak (issue 20): a daemon under readers and a changing origin for a given time.
//!
//! 64 readers stream and seek through the mount's tracks and check every byte they read
//! against the versions the origin has held of that file; a writer adds, re-tags (a new
//! file renamed over the old, as tag editors do), deletes and renames origin files; a
//! refresh is requested now and then. The daemon's RSS, open fds, threads and state dir
//! size are sampled. The run fails when a read is wrong or when one of those keeps growing:
//! the mean of the last quarter of the samples against the second quarter (the first is
//! warm-up), beyond a margin.
//!
//! With `remote`, the origin is a bucket directory served by `s3s-fs` on 127.0.0.1 (the
//! writer keeps writing into that directory; the server serves what is on disk) through a
//! gating proxy that makes it atomic as S3 is (s3s-fs reads an object's bytes and its
//! ETag in two steps: a file replaced in between would be answered with one version's
//! bytes under another's ETag; the writer changes files only between answers), mounted as
//! an `s3://` origin read through a chunk cache of the smallest budget, and the FLAC tracks
//! carry an APPLICATION block of incompressible filler so the library is several times the
//! budget: reading it cycles the cache and evictions run all along. The cache's disk use is
//! sampled too, and must stay within the budget plus one pack; a run without evictions
//! fails (it would prove nothing).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_core::Format;
use musicfs_tests::servers::faulty::FaultyHttpProxy;
use musicfs_tests::servers::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use serde::Serialize;

use crate::gen::{self, Rng, TrackPlan, TrackSize};

/// What the soak is asked for.
#[derive(Debug, Clone)]
pub struct SoakOpts {
    /// How long.
    pub duration: Duration,
    /// Reader threads.
    pub readers: usize,
    /// Tracks the origin starts with.
    pub tracks: usize,
    /// Work dir (origin, state, mount, log, soak.json).
    pub out: PathBuf,
    /// Where musicfsd and musicfs are.
    pub bin_dir: Option<PathBuf>,
    /// More arguments for musicfsd (`--passthrough off`, ...).
    pub daemon_args: Vec<String>,
    /// Serve the origin over S3 (`s3s-fs`) through a chunk cache that must evict.
    pub remote: bool,
}

/// The remote form's bucket and prefix (the origin dir is `OUT/s3/BUCKET/PREFIX`).
const BUCKET: &str = "soak";
const PREFIX: &str = "lib";
/// The remote form's chunk cache budget: the smallest allowed (docs/CONFIG.md).
const CACHE_BUDGET: u64 = 64 << 20;
/// What the cache may hold beyond its budget: one pack file (docs/CONFIG.md).
const PACK: u64 = 64 << 20;
/// Filler per FLAC track in the remote form, and how many distinct fillers there are (the
/// library's unique bytes stay bounded, about 2-3 times the budget, however many tracks
/// the writer adds; tracks sharing a filler share its chunks).
const FILLER: usize = 2 << 20;
const FILLERS: u64 = 128;

/// One sample of the daemon.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub at_s: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// Bytes the state dir takes on disk (allocated blocks: the packs are sparse once
    /// evicted chunks are punched out, and their apparent size says nothing of the disk).
    pub state_bytes: u64,
    /// The chunk cache's bytes on disk (`musicfs cache stats`: `disk_bytes`; remote form).
    pub cache_bytes: u64,
    /// Chunks evicted since the cache was opened (`evicted_total`; remote form).
    pub evicted: u64,
}

/// What a soak found.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// Seconds it ran.
    pub seconds: f64,
    /// Files read whole and checked.
    pub files_checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Of those, files read while the tree still showed an older version's size.
    pub stale_size: u64,
    /// Reads whose bytes matched no version of their source.
    pub wrong_reads: u64,
    /// Opens or reads that failed because the writer had moved the file (expected).
    pub vanished: u64,
    /// Opens or reads that failed with EIO because the origin replaced the version they
    /// had reached (a re-tag) and the tree moved on: the kernel retires the old inode
    /// (docs/SEMANTICS.md, "Generation numbers"). Expected; counted apart.
    pub retired: u64,
    /// Remote form: reads that failed with EIO because the daemon's version of the file
    /// (pinned by ETag at the last listing) had been replaced in the bucket since, and no
    /// refresh had caught up yet: the tree still shows the older title. Expected; counted
    /// apart.
    pub superseded: u64,
    /// Other read errors.
    pub read_errors: u64,
    /// Origin changes made (adds, re-tags, deletes, renames).
    pub changes: u64,
    /// Refreshes requested.
    pub refreshes: u64,
    /// Whether the origin was remote (S3) with a small chunk cache.
    pub remote: bool,
    /// Remote form: the chunk cache budget, bytes.
    pub cache_budget: u64,
    /// Remote form: chunks evicted during the run (the last sample's `evicted_total`).
    pub evictions: u64,
    /// Remote form: the most the cache held on disk, bytes.
    pub cache_max_bytes: u64,
    /// The samples.
    pub samples: Vec<Sample>,
    /// What grew without bound (empty: nothing).
    pub growth: Vec<String>,
    /// The first wrong reads, described.
    pub wrong: Vec<String>,
    /// The kinds of the other errors (the first of each).
    pub errors: Vec<String>,
}

impl SoakReport {
    /// A markdown summary.
    pub fn markdown(&self) -> String {
        let first = self.samples.get(self.samples.len() / 4);
        let last = self.samples.last();
        let row = |s: Option<&Sample>| {
            s.map_or("-".to_string(), |s| {
                format!(
                    "{:.0} s: RSS {} MiB, {} fds, {} threads, state {} MiB",
                    s.at_s,
                    s.rss_kib / 1024,
                    s.fds,
                    s.threads,
                    s.state_bytes >> 20
                )
            })
        };
        let remote = if self.remote {
            format!(
                "- remote origin (s3s-fs): {} reads of a superseded version (EIO before the \
                 refresh); chunk cache budget {} MiB, at most {} MiB on disk, {} chunks \
                 evicted\n",
                self.superseded,
                self.cache_budget >> 20,
                self.cache_max_bytes >> 20,
                self.evictions
            )
        } else {
            String::new()
        };
        format!(
            "Soak {:.0} s: {} files read whole and checked ({} MiB; {} while the tree showed an \
             older size), {} wrong, {} vanished under the reader, {} retired versions, {} other \
             errors; {} origin \
             changes, {} refreshes.\n\n\
             - after warm-up: {}\n- at the end: {}\n- grew without bound: {}\n{remote}",
            self.seconds,
            self.files_checked,
            self.bytes_read >> 20,
            self.stale_size,
            self.wrong_reads,
            self.vanished,
            self.retired,
            self.read_errors,
            self.changes,
            self.refreshes,
            row(first),
            row(last),
            if self.growth.is_empty() {
                "nothing".to_string()
            } else {
                self.growth.join("; ")
            }
        )
    }
}

/// One version of an origin file: its bytes, as parts (a filler is shared between
/// versions and files), and its title.
#[derive(Debug)]
struct Version {
    parts: Vec<Arc<Vec<u8>>>,
    title: Option<String>,
}

impl Version {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// Where `got` first differs from this version, within the shorter of the two.
    fn first_diff(&self, got: &[u8]) -> Option<usize> {
        let mut at = 0;
        for p in &self.parts {
            let rest = got.get(at..)?;
            let n = p.len().min(rest.len());
            if let Some(i) = p[..n].iter().zip(&rest[..n]).position(|(a, b)| a != b) {
                return Some(at + i);
            }
            at += n;
            if n < p.len() {
                return None;
            }
        }
        None
    }

    fn is(&self, got: &[u8]) -> bool {
        self.len() == got.len() && self.first_diff(got).is_none()
    }
}

/// Every version each origin file (by its path) has had.
type Versions = Arc<Mutex<HashMap<PathBuf, Vec<Arc<Version>>>>>;

/// Every version the origin file `path` has had, oldest first (none for an unknown path).
fn versions_of(versions: &Versions, path: &Path) -> Vec<Arc<Version>> {
    versions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(path)
        .cloned()
        .unwrap_or_default()
}

/// How a `user.musicfs.source` maps to the origin file on disk.
#[derive(Debug, Clone)]
struct SourceMap {
    /// Remote form: what precedes the key in a source (`...127.0.0.1:PORT/`), and the
    /// bucket prefix's directory.
    remote: Option<(String, PathBuf)>,
}

impl SourceMap {
    /// The origin file a source names. A remote source is
    /// `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:PORT/KEY` (the spec, then the key
    /// under the prefix); one not of that form is returned as it is (and matches nothing).
    fn path(&self, source: PathBuf) -> PathBuf {
        let Some((marker, dir)) = &self.remote else {
            return source;
        };
        let text = source.to_string_lossy();
        match text.find(marker.as_str()) {
            Some(i) if text.starts_with("s3://") => dir.join(&text[i + marker.len()..]),
            _ => source,
        }
    }
}

/// The S3 server of the remote form, stopped on drop (after the daemon).
struct Remote {
    /// In front of the server (the endpoint the daemon is given); dropped first.
    proxy: FaultyHttpProxy,
    _server: S3Server,
    config: PathBuf,
}

/// The daemon, unmounted and stopped on drop.
struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// Runs the soak.
pub fn run(opts: &SoakOpts) -> Result<SoakReport> {
    let bins = crate::peers::find_bins(opts.bin_dir.as_deref())?;
    let out = &opts.out;
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let origin = match opts.remote {
        true => out.join("s3").join(BUCKET).join(PREFIX),
        false => out.join("origin"),
    };
    let (state, mnt) = (out.join("state"), out.join("mnt"));
    for d in [&origin, &state, &mnt] {
        fs::create_dir_all(d)?;
    }
    let mnt = mnt.canonicalize()?;
    let origin = origin.canonicalize()?;
    let versions: Versions = Arc::default();
    let mut plans = gen::plan(opts.tracks as u64, 7, &[Format::Flac, Format::Mp3]);
    let templates = Templates::load(opts.remote)?;
    for p in &mut plans {
        write_track(&origin, p, &templates, &versions)?;
    }
    // The remote form: s3s-fs over the bucket dir, and a config naming the s3:// origin and
    // the smallest cache budget (there is no flag for either); a request deadline of 30 s,
    // not 5: the soak checks bytes and bounds, not latency, and a loaded CI machine with 64
    // readers on a debug daemon can stall a GET past 5 s (an EIO that proves nothing).
    // Held by the writer while it changes the origin, and by the remote form's proxy while
    // the server answers a request.
    let gate = Arc::new(RwLock::new(()));
    let remote = match opts.remote {
        false => None,
        true => {
            let server = S3Server::start(&out.join("s3"), &out.join("s3s-fs.log"))?;
            // No faults: the proxy only makes the server's answers atomic (module docs).
            let proxy = FaultyHttpProxy::start_gated(server.port(), 0, gate.clone())?;
            let spec = format!(
                "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true",
                proxy.port()
            );
            let config = out.join("musicfsd.toml");
            fs::write(
                &config,
                format!(
                    "cache_budget = \"{}M\"\n\n[[origin]]\npath = \"{spec}\"\npoll_interval_secs = 15\n\
                     timeout_secs = 30\n",
                    CACHE_BUDGET >> 20
                ),
            )?;
            Some(Remote {
                proxy,
                _server: server,
                config,
            })
        }
    };
    let map = SourceMap {
        remote: remote.as_ref().map(|r| {
            let port = r.proxy.port();
            (format!("127.0.0.1:{port}/"), origin.clone())
        }),
    };
    let log = fs::File::create(out.join("musicfsd.log"))?;
    let mut cmd = Command::new(&bins.musicfsd);
    cmd.arg("--state-dir").arg(&state);
    match &remote {
        Some(r) => cmd
            .arg("--config")
            .arg(&r.config)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        None => cmd.arg("--origin").arg(&origin),
    };
    let child = cmd
        .args(&opts.daemon_args)
        .arg(&mnt)
        // MUSICFS_SOAK_LOG: the daemon's log filter, for a closer look at a run.
        .env(
            "RUST_LOG",
            std::env::var("MUSICFS_SOAK_LOG").unwrap_or_else(|_| "info,tantivy=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start musicfsd")?;
    let mut daemon = Daemon {
        child,
        mnt: mnt.clone(),
    };
    let up = Instant::now();
    while !is_mounted(&mnt) {
        if let Some(status) = daemon.child.try_wait()? {
            bail!(
                "musicfsd exited ({status}) before mounting; see its log in {}",
                out.display()
            );
        }
        // The first scan comes before the mount; a remote one on a loaded 2-core machine
        // (a debug daemon probing every object over HTTP) has taken over a minute.
        ensure!(
            up.elapsed() < Duration::from_secs(300),
            "musicfsd did not mount in 300 s; see its log in {}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = daemon.child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let mut threads = Vec::new();
    for i in 0..opts.readers {
        let (stop, counters, wrong, errors, versions, mnt, map) = (
            stop.clone(),
            counters.clone(),
            wrong.clone(),
            errors.clone(),
            versions.clone(),
            mnt.clone(),
            map.clone(),
        );
        threads.push(std::thread::spawn(move || {
            reader(
                i as u64,
                (&mnt, &map),
                &versions,
                &counters,
                (&wrong, &errors),
                &stop,
            )
        }));
    }
    let remote_form = opts.remote;
    let writer = {
        let (stop, counters, versions, origin, gate) = (
            stop.clone(),
            counters.clone(),
            versions.clone(),
            origin.clone(),
            gate.clone(),
        );
        std::thread::spawn(move || {
            let shared = (&versions, &*counters, &*gate);
            writer(&origin, plans, &templates, shared, remote_form, &stop)
        })
    };
    let mut samples = Vec::new();
    let mut last_refresh = Instant::now();
    while started.elapsed() < opts.duration {
        std::thread::sleep(Duration::from_secs(1).min(opts.duration / 20));
        samples.push(sample(
            pid,
            &state,
            started,
            opts.remote.then_some(&bins.musicfs),
        )?);
        if last_refresh.elapsed() > Duration::from_secs(10) {
            let status = Command::new(&bins.musicfs)
                .args(["refresh", "--no-wait", "--state-dir"])
                .arg(&state)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                counters.refreshes.fetch_add(1, Ordering::Relaxed);
            }
            last_refresh = Instant::now();
        }
        if let Some(status) = daemon.child.try_wait()? {
            bail!(
                "musicfsd exited during the soak ({status}); see {}",
                out.display()
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let seconds = started.elapsed().as_secs_f64();
    drop(daemon);
    drop(remote);
    let mut growth = growth(&samples);
    let cache_max_bytes = samples.iter().map(|s| s.cache_bytes).max().unwrap_or(0);
    // The cache keeps the chunks of open files beyond its budget (docs/CONFIG.md): each
    // reader holds one file open at a time.
    let open_bytes = opts.readers as u64 * (FILLER as u64 + (256 << 10));
    if opts.remote && cache_max_bytes > CACHE_BUDGET + PACK + open_bytes {
        growth.push(format!(
            "chunk cache: {} MiB on disk, over the budget ({} MiB), a pack and the files open \
             ({} MiB)",
            cache_max_bytes >> 20,
            CACHE_BUDGET >> 20,
            open_bytes >> 20
        ));
    }
    let report = SoakReport {
        seconds,
        files_checked: counters.files.load(Ordering::Relaxed),
        stale_size: counters.stale.load(Ordering::Relaxed),
        bytes_read: counters.bytes.load(Ordering::Relaxed),
        wrong_reads: counters.wrong.load(Ordering::Relaxed),
        vanished: counters.vanished.load(Ordering::Relaxed),
        retired: counters.retired.load(Ordering::Relaxed),
        superseded: counters.superseded.load(Ordering::Relaxed),
        read_errors: counters.errors.load(Ordering::Relaxed),
        changes: counters.changes.load(Ordering::Relaxed),
        refreshes: counters.refreshes.load(Ordering::Relaxed),
        remote: opts.remote,
        cache_budget: if opts.remote { CACHE_BUDGET } else { 0 },
        evictions: samples.last().map_or(0, |s| s.evicted),
        cache_max_bytes,
        growth,
        samples,
        wrong: wrong.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        errors: errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    fs::write(out.join("soak.json"), serde_json::to_vec_pretty(&report)?)?;
    fs::write(out.join("soak.md"), report.markdown())?;
    Ok(report)
}

#[derive(Debug, Default)]
struct Counters {
    files: AtomicU64,
    stale: AtomicU64,
    bytes: AtomicU64,
    wrong: AtomicU64,
    vanished: AtomicU64,
    retired: AtomicU64,
    superseded: AtomicU64,
    errors: AtomicU64,
    changes: AtomicU64,
    refreshes: AtomicU64,
}

/// The generator's template bytes per format, and (remote form) the FLAC fillers.
struct Templates {
    bytes: HashMap<Format, Vec<u8>>,
    /// Whether FLAC tracks get a filler.
    pad: bool,
    fillers: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl Templates {
    fn load(pad: bool) -> Result<Templates> {
        let mut m = HashMap::new();
        for f in [Format::Flac, Format::Mp3] {
            m.insert(f, gen::template(f, TrackSize::Normal)?);
        }
        Ok(Templates {
            bytes: m,
            pad,
            fillers: Mutex::default(),
        })
    }

    /// The filler of a track at `rel_path`: one of [`FILLERS`], incompressible, chosen by
    /// the path (a re-tag keeps it, as a tag editor keeps the audio).
    fn filler(&self, rel_path: &str) -> Arc<Vec<u8>> {
        let slot = rel_path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }) % FILLERS;
        let mut fillers = self.fillers.lock().unwrap_or_else(|p| p.into_inner());
        fillers
            .entry(slot)
            .or_insert_with(|| {
                let mut rng = Rng::new(0xf111 + slot);
                let mut v = vec![0u8; FILLER];
                for c in v.chunks_mut(8) {
                    c.copy_from_slice(&rng.next_u64().to_le_bytes()[..c.len()]);
                }
                Arc::new(v)
            })
            .clone()
    }
}

/// `flac` with an APPLICATION metadata block holding `filler` after its last metadata
/// block (the tags stay at the head), as parts: head, filler, audio frames.
fn pad_flac(flac: Vec<u8>, filler: Arc<Vec<u8>>) -> Result<Vec<Arc<Vec<u8>>>> {
    ensure!(
        flac.len() >= 42 && &flac[..4] == b"fLaC",
        "not a FLAC stream"
    );
    let mut pos = 4usize;
    let last = loop {
        let hdr = flac
            .get(pos..pos + 4)
            .context("FLAC metadata is truncated")?;
        if hdr[0] & 0x80 != 0 {
            break pos;
        }
        pos += 4 + u32::from_be_bytes([0, hdr[1], hdr[2], hdr[3]]) as usize;
    };
    let hdr = &flac[last..last + 4];
    let audio = last + 4 + u32::from_be_bytes([0, hdr[1], hdr[2], hdr[3]]) as usize;
    ensure!(audio <= flac.len(), "FLAC metadata runs past the end");
    let mut head = flac[..audio].to_vec();
    head[last] &= 0x7f;
    // The last block now: type 2 (APPLICATION), its length, an application id.
    head.push(0x80 | 2);
    head.extend_from_slice(&((filler.len() + 4) as u32).to_be_bytes()[1..]);
    head.extend_from_slice(b"mfsS");
    Ok(vec![
        Arc::new(head),
        filler,
        Arc::new(flac[audio..].to_vec()),
    ])
}

/// Writes `plan`'s file (a new file renamed into place) and records the version.
fn write_track(
    origin: &Path,
    plan: &TrackPlan,
    templates: &Templates,
    versions: &Versions,
) -> Result<()> {
    let template = templates.bytes.get(&plan.format).context("no template")?;
    let bytes = gen::tagged_bytes(template, plan, TrackSize::Normal)?;
    let parts = match templates.pad && plan.format == Format::Flac {
        true => pad_flac(bytes, templates.filler(&plan.rel_path))?,
        false => vec![Arc::new(bytes)],
    };
    let path = origin.join(&plan.rel_path);
    fs::create_dir_all(path.parent().context("no parent")?)?;
    let tmp = path.with_extension("part");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(fs::File::create(&tmp)?);
        for p in &parts {
            f.write_all(p)?;
        }
        f.into_inner().map_err(|e| e.into_error())?;
    }
    // Recorded before it can be seen.
    versions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(path.clone())
        .or_default()
        .push(Arc::new(Version {
            parts,
            title: plan.title.clone(),
        }));
    fs::rename(&tmp, &path)?;
    Ok(())
}

/// `remote`: the origin is served by s3s-fs, whose listings carry no ETag and whose times
/// are to the second; two versions of one size written within the same second would be
/// the same version to any client's metadata (S3's listings carry ETags, which the daemon
/// compares). A file is not re-tagged again within 1.1 s there.
fn writer(
    origin: &Path,
    mut plans: Vec<TrackPlan>,
    templates: &Templates,
    (versions, counters, gate): (&Versions, &Counters, &RwLock<()>),
    remote: bool,
    stop: &AtomicBool,
) -> Result<()> {
    let mut rng = Rng::new(99);
    let mut next = plans.len() as u64;
    // When each path was last written (remote form).
    let mut written: HashMap<String, Instant> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(150));
        // No server answer is under way while the origin changes (module docs).
        let _changing = gate.write().unwrap_or_else(|p| p.into_inner());
        let i = rng.below(plans.len() as u64) as usize;
        let op = rng.below(4);
        let recent = written
            .get(&plans[i].rel_path)
            .is_some_and(|at| at.elapsed() < Duration::from_millis(1100));
        if remote && op == 1 && recent {
            continue;
        }
        match op {
            // Add a track.
            0 => {
                let mut p = plans[i].clone();
                next += 1;
                p.title = Some(format!("Added {next}"));
                p.rel_path = format!("added/{next}.{}", p.format.ext());
                write_track(origin, &p, templates, versions)?;
                written.insert(p.rel_path.clone(), Instant::now());
                plans.push(p);
            }
            // Re-tag.
            1 => {
                let p = &mut plans[i];
                p.title = Some(format!("Retagged {}", rng.below(1_000_000)));
                write_track(origin, p, templates, versions)?;
                written.insert(p.rel_path.clone(), Instant::now());
            }
            // Delete (keep a few).
            2 if plans.len() > 8 => {
                let p = plans.swap_remove(i);
                let _ = fs::remove_file(origin.join(&p.rel_path));
            }
            // Rename within the origin.
            _ => {
                let p = &mut plans[i];
                let from = origin.join(&p.rel_path);
                next += 1;
                let to_rel = format!("moved/{next}.{}", p.format.ext());
                let to = origin.join(&to_rel);
                fs::create_dir_all(to.parent().context("no parent")?)?;
                let bytes = versions_of(versions, &from);
                versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(to.clone())
                    .or_default()
                    .extend(bytes);
                fs::rename(&from, &to)?;
                if let Some(at) = written.remove(&p.rel_path) {
                    written.insert(to_rel.clone(), at);
                }
                p.rel_path = to_rel;
            }
        }
        counters.changes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The audio files under `dir`.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

fn reader(
    seed: u64,
    (mnt, map): (&Path, &SourceMap),
    versions: &Versions,
    counters: &Counters,
    (wrong, errors): (&Mutex<Vec<String>>, &Mutex<Vec<String>>),
    stop: &AtomicBool,
) {
    let mut rng = Rng::new(1000 + seed);
    let mut files = Vec::new();
    let mut listed = Instant::now() - Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) {
        if listed.elapsed() > Duration::from_secs(3) || files.is_empty() {
            files.clear();
            files_under(mnt, &mut files);
            listed = Instant::now();
            if files.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let path = &files[rng.below(files.len() as u64) as usize];
        match check_one(path, &mut rng, versions, map) {
            Ok(Check::Good(n)) => {
                counters.files.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Check::Stale(n)) => {
                counters.files.fetch_add(1, Ordering::Relaxed);
                counters.stale.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Check::Vanished) => {
                counters.vanished.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Check::Retired) => {
                counters.retired.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Check::Superseded) => {
                counters.superseded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Check::Wrong(why)) => {
                counters.wrong.fetch_add(1, Ordering::Relaxed);
                let mut w = wrong.lock().unwrap_or_else(|p| p.into_inner());
                if w.len() < 20 {
                    w.push(why);
                }
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                let mut w = errors.lock().unwrap_or_else(|p| p.into_inner());
                let text = e.to_string();
                if w.len() < 20 && !w.contains(&text) {
                    w.push(text);
                }
            }
        }
    }
}

enum Check {
    Good(u64),
    /// Right bytes of a version whose size the tree did not show yet.
    Stale(u64),
    Vanished,
    /// EIO on a version the origin replaced (its source file is another one now).
    Retired,
    /// Remote form: EIO on a version the bucket replaced before the tree caught up.
    Superseded,
    Wrong(String),
}

/// An origin file's identity: a re-tag writes a new file and renames it over the old one,
/// so a new version has a new inode number.
fn identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

fn eio(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESTALE))
}

/// Reads `path` whole, in chunks of random sizes, from a random offset to its end and then
/// from its start (a seek, then streaming), and checks it against its source's versions.
///
/// The size the tree shows can lag the origin by a refresh (a file re-tagged a moment ago
/// still has its old size): the file's end is where a read returns nothing, and bytes that
/// are a whole version, or a version cut at the size shown, are right (the latter counted
/// as stale). Anything else is wrong.
fn check_one(
    path: &Path,
    rng: &mut Rng,
    versions: &Versions,
    map: &SourceMap,
) -> std::io::Result<Check> {
    // The source the daemon would open (asked before, and again after a failure: a
    // refresh may come between).
    let before = xattr_source(path, None, map).ok();
    let before_id = before.as_deref().and_then(identity);
    // An EIO is expected when the version reached was replaced since (the tree moved on
    // and the kernel retired its inode): the source is another file now.
    // The tree's attributes of the name (the version the kernel inode stands for): when
    // they change, a refresh published another version under it and the kernel retires the
    // inode the open or the handle had reached, failing its I/O with EIO.
    let shown_attrs = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec()))
    };
    let tree_before = shown_attrs(path);
    let moved_on = || shown_attrs(path) != tree_before;
    let replaced = |now: Option<&Path>| now.and_then(identity) != before_id || moved_on();
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(Check::Vanished),
        // A name the tree still shows whose source the writer removed or moved: the
        // daemon answers EIO (docs/SEMANTICS.md) until the refresh drops the name. Only
        // an EIO while the source is there, before and after, is an error.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            let after = xattr_source(path, None, map).ok();
            let there = |s: &Option<PathBuf>| s.as_ref().is_some_and(|s| s.exists());
            return if !(there(&before) && there(&after)) {
                Ok(Check::Vanished)
            } else if replaced(after.as_deref()) {
                Ok(Check::Retired)
            } else if after
                .as_deref()
                .is_some_and(|s| superseded(path, None, s, versions, map))
            {
                Ok(Check::Superseded)
            } else {
                Err(e)
            };
        }
        Err(e) => return Err(e),
    };
    // The source of the track this handle opened (asked through the handle: a name can
    // pass to another track when a refresh moves the one that had it).
    let source = match xattr_source(path, Some(&file), map) {
        Ok(s) => s,
        Err(e) if gone(&e) || e.raw_os_error() == Some(libc::ENODATA) => {
            return Ok(Check::Vanished)
        }
        Err(e) => return Err(e),
    };
    // The identity of the version this handle reached, to tell a retired one by.
    let open_id = match before.as_deref() == Some(source.as_path()) {
        true => before_id,
        false => identity(&source),
    };
    let retired = |e: &std::io::Error| eio(e) && (identity(&source) != open_id || moved_on());
    // Remote form: a handle does not keep a deleted or moved object readable as an open
    // local file does; an EIO once the source is gone from the bucket is the writer's doing.
    let removed = |e: &std::io::Error| eio(e) && map.remote.is_some() && !source.exists();
    let superseded =
        |e: &std::io::Error| eio(e) && superseded(path, Some(&file), &source, versions, map);
    // An unexpected read error, with what the checker knew.
    let explain = |e: std::io::Error| {
        let title = xattr(path, Some(&file), c"user.musicfs.title")
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        let known = versions_of(versions, &source);
        std::io::Error::new(
            e.kind(),
            format!(
                "{e}: {} (source {}, there: {}, replaced since the open: {}; {} versions, \
                 the newest titled {:?}; the tree's title {title:?})",
                path.display(),
                source.display(),
                source.exists(),
                identity(&source) != open_id,
                known.len(),
                known.last().and_then(|v| v.title.clone()),
            ),
        )
    };
    let shown = file.metadata()?.len() as usize;
    let start = if shown == 0 {
        0
    } else {
        rng.below(shown as u64) as usize
    };
    // Past the size shown: a longer file is read whole, within reason.
    let mut got = vec![0u8; shown + (256 << 10)];
    let read_span = |got: &mut [u8], from: usize, to: usize, rng: &mut Rng| {
        let mut at = from;
        while at < to {
            let n = (1 + rng.below(64 << 10) as usize).min(to - at);
            match file.read_at(&mut got[at..at + n], at as u64) {
                Ok(0) => return Ok(at),
                Ok(r) => at += r,
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    };
    let mut end = match read_span(&mut got, start, shown + (256 << 10), rng) {
        Ok(end) => end,
        Err(e) if gone(&e) || removed(&e) => return Ok(Check::Vanished),
        Err(e) if retired(&e) => return Ok(Check::Retired),
        Err(e) if superseded(&e) => return Ok(Check::Superseded),
        Err(e) => return Err(explain(e)),
    };
    // Nothing at `start`: the file (a newer, shorter version) ends before it; read it from
    // its start instead.
    if end == start && start > 0 {
        end = match read_span(&mut got, 0, shown + (256 << 10), rng) {
            Ok(end) => end,
            Err(e) if gone(&e) || removed(&e) => return Ok(Check::Vanished),
            Err(e) if retired(&e) => return Ok(Check::Retired),
            Err(e) if superseded(&e) => return Ok(Check::Superseded),
            Err(e) => return Err(explain(e)),
        };
    }
    match read_span(&mut got, 0, start.min(end), rng) {
        Ok(_) => {}
        Err(e) if gone(&e) || removed(&e) => return Ok(Check::Vanished),
        Err(e) if retired(&e) => return Ok(Check::Retired),
        Err(e) if superseded(&e) => return Ok(Check::Superseded),
        Err(e) => return Err(explain(e)),
    }
    let got = &got[..end];
    let known = versions_of(versions, &source);
    if known.iter().any(|v| v.is(got)) {
        return Ok(if end == shown {
            Check::Good(end as u64)
        } else {
            Check::Stale(end as u64)
        });
    }
    if end == shown
        && known
            .iter()
            .any(|v| v.len() > end && v.first_diff(got).is_none())
    {
        return Ok(Check::Stale(end as u64));
    }
    let differs: Vec<String> = known
        .iter()
        .map(|v| {
            let at = v.first_diff(got);
            format!("{} bytes, first difference at {at:?}", v.len())
        })
        .collect();
    // Where the bytes that differ from the version read furthest come from, if from one.
    let origin_of = known
        .iter()
        .filter_map(|v| v.first_diff(got))
        .max()
        .map(|at| {
            let probe = &got[at..(at + 64).min(got.len())];
            let found: Vec<String> = known
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let whole: Vec<u8> = v.parts.iter().flat_map(|p| p.iter().copied()).collect();
                    whole
                        .windows(probe.len())
                        .position(|w| w == probe)
                        .map(|o| format!("version {i} at {o}"))
                })
                .collect();
            format!(
                "; the bytes at {at} are {}",
                match found.is_empty() {
                    true => "in no version".to_string(),
                    false => found.join(", "),
                }
            )
        });
    Ok(Check::Wrong(format!(
        "{} (source {}): {end} bytes (shown {shown}, read from {start}) match none of its {} \
         versions ({}){}",
        path.display(),
        source.display(),
        known.len(),
        differs.join("; "),
        origin_of.unwrap_or_default()
    )))
}

/// Remote form: whether an EIO on `path` (through `file` when open) is the daemon refusing
/// a version the bucket has replaced since the tree was built — the ranged GET is pinned
/// to the ETag the listing saw (docs/SEMANTICS.md) — and no refresh has caught up yet: the
/// title the tree shows is not the title of the source's newest version. A version whose
/// title the tree does show is the current one, and an EIO on it stays an error.
fn superseded(
    path: &Path,
    file: Option<&fs::File>,
    source: &Path,
    versions: &Versions,
    map: &SourceMap,
) -> bool {
    if map.remote.is_none() {
        return false;
    }
    let shown = match xattr(path, file, c"user.musicfs.title") {
        Ok(t) => Some(String::from_utf8_lossy(&t).into_owned()),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => None,
        Err(_) => return false,
    };
    let newest = versions_of(versions, source).pop();
    newest.is_some_and(|v| v.title != shown)
}

/// `user.musicfs.source` of the open `file`, or of `path` when there is none, as the
/// origin file it names.
fn xattr_source(path: &Path, file: Option<&fs::File>, map: &SourceMap) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let buf = xattr(path, file, c"user.musicfs.source")?;
    Ok(map.path(PathBuf::from(std::ffi::OsStr::from_bytes(&buf))))
}

/// The attribute `name` of the open `file`, or of `path` when there is none.
fn xattr(path: &Path, file: Option<&fs::File>, name: &std::ffi::CStr) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings, an open descriptor, and a buffer of the length given.
    let n = unsafe {
        match file {
            Some(f) => libc::fgetxattr(
                f.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
            None => libc::getxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
        }
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// `musicfs cache stats --json`: (`disk_bytes`, `evicted_total`).
fn cache_stats(musicfs: &Path, state: &Path) -> Result<(u64, u64)> {
    let out = Command::new(musicfs)
        .args(["cache", "stats", "--json", "--state-dir"])
        .arg(state)
        .stderr(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "musicfs cache stats failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Ok((field("disk_bytes"), field("evicted_total")))
}

fn sample(pid: u32, state: &Path, started: Instant, musicfs: Option<&PathBuf>) -> Result<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let (cache_bytes, evicted) = match musicfs {
        Some(m) => cache_stats(m, state)?,
        None => (0, 0),
    };
    Ok(Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        state_bytes: dir_bytes(state),
        cache_bytes,
        evicted,
    })
}

/// What grew from the second quarter of the samples to the last, beyond a margin.
fn growth(samples: &[Sample]) -> Vec<String> {
    let n = samples.len();
    if n < 8 {
        return Vec::new();
    }
    let mean = |part: &[Sample], f: fn(&Sample) -> u64| {
        part.iter().map(f).sum::<u64>() as f64 / part.len().max(1) as f64
    };
    let (early, late) = (&samples[n / 4..n / 2], &samples[n * 3 / 4..]);
    let mut out = Vec::new();
    // (what, its value, the ratio and the absolute rise that together count as growth)
    type Check = (&'static str, fn(&Sample) -> u64, f64, f64);
    let checks: [Check; 5] = [
        ("RSS (KiB)", |s| s.rss_kib, 1.5, 64.0 * 1024.0),
        ("open fds", |s| s.fds, 1.2, 32.0),
        ("threads", |s| s.threads, 1.2, 8.0),
        (
            "state dir (bytes)",
            |s| s.state_bytes,
            2.0,
            256.0 * 1024.0 * 1024.0,
        ),
        // Remote form (0 otherwise): bounded above too, in `run`.
        (
            "chunk cache (bytes)",
            |s| s.cache_bytes,
            2.0,
            128.0 * 1024.0 * 1024.0,
        ),
    ];
    for (name, f, ratio, slack) in checks {
        let (a, b) = (mean(early, f), mean(late, f));
        if b > a * ratio && b - a > slack {
            out.push(format!("{name}: {a:.0} -> {b:.0}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: f64, rss: u64, fds: u64) -> Sample {
        Sample {
            at_s: at,
            rss_kib: rss,
            fds,
            threads: 10,
            state_bytes: 1 << 20,
            cache_bytes: 0,
            evicted: 0,
        }
    }

    #[test]
    fn flat_series_pass_and_growing_ones_fail() {
        let flat: Vec<Sample> = (0..40).map(|i| s(i as f64, 100_000 + i % 3, 30)).collect();
        assert!(growth(&flat).is_empty());
        let leak: Vec<Sample> = (0..40)
            .map(|i| s(i as f64, 100_000 + i * 10_000, 30 + i * 3))
            .collect();
        let g = growth(&leak);
        assert_eq!(g.len(), 2, "{g:?}");
    }
}
