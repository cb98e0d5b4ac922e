//! `musicfs-bench remote`: MusicFS and `rclone mount --vfs-cache-mode full` over **one**
//! S3 bucket in one run (issue 13). One `s3s-fs` on 127.0.0.1 serves a generated library
//! ([`library`]) through one [`CountingProxy`], so "bytes" below are the server's bytes to
//! the client as they crossed the proxy, HTTP headers included. The systems run one after
//! the other (never mounted together, so every byte counted is the measured system's):
//!
//! 1. MusicFS: `musicfs scan` of the bucket (scan bytes), then `musicfsd` mounted; rclone:
//!    mounted with a fresh VFS cache dir.
//! 2. A full listing of the mount (every entry `lstat`ed): bytes.
//! 3. Cache misses: open + 4 KiB read of each never-read tone track, the proxy quiet
//!    before each: p50 / p99.
//! 4. Every file read whole once: bytes ÷ library bytes.
//! 5. Sequential 1 MiB reads of a cached 30 MB FLAC, `--passes` timed passes, each after
//!    `posix_fadvise(DONTNEED)` of the file on the mount (the kernel's copy of the FUSE
//!    file is dropped, so every byte comes through the daemon; the cache's own files stay
//!    in the host page cache), then as many after `drop_caches=3` (the cache read from
//!    disk too). Median MB/s from the first read to EOF; the open is timed apart
//!    (`cached_open`), as it may ask the origin whether the file changed.
//! 6. Unmounted: the cache's logical ÷ stored bytes (`musicfs cache stats`; rclone: the
//!    apparent ÷ allocated bytes of its VFS cache files).
//!
//! Then a tag edit upstream: the title of a 30 MB FLAC rewritten in place (same length, the
//! padding keeps the size), and for each system (MusicFS after a `musicfs scan`; both
//! restarted over their caches) the bytes of the next full read of that file, which must
//! read back as the edited bytes.
//!
//! `library.rs` makes the library, `probe.rs` holds the timed operations, `report.rs` the
//! figures, their rendering and the goals checked; this file runs the steps in order.

mod library;
pub(crate) mod probe;
mod report;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::edit::{flac_tag_region, retitle_in_place};
use musicfs_tests::harness::{run_ok, walk_files};
use musicfs_tests::servers::proxy::CountingProxy;
use musicfs_tests::servers::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

use crate::ops;
use crate::peers::{self, Bins, Launch, Mount, Peer};
use crate::scale::{loadavg, short};

use probe::{evict, first_block, list_all, percentile, server_head_ms, timed_read};
use report::goals;
pub use report::{RemoteReport, SystemReport};

/// The bucket and the prefix the library is under.
const BUCKET: &str = "music";
const PREFIX: &str = "lib";
/// The rclone remote's name (configured through `RCLONE_CONFIG_<NAME>_*`).
const RCLONE_REMOTE: &str = "mfsbench";
/// How long nothing must cross the proxy before a byte count starts or ends.
const QUIET: Duration = Duration::from_millis(1500);
/// The same between two cache misses (a miss's read-ahead has ended by then).
const QUIET_MISS: Duration = Duration::from_millis(300);
/// The longest wait for the proxy to fall quiet, or a mount to answer.
const PATIENCE: Duration = Duration::from_secs(120);

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// `musicfs scan` + `musicfsd` over the S3 origin (chunk cache in the state dir).
    Musicfs,
    /// `rclone mount --vfs-cache-mode full` of the same bucket prefix.
    Rclone,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 2] = [System::Musicfs, System::Rclone];

    /// Name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            System::Musicfs => "musicfs",
            System::Rclone => "rclone",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<System> {
        System::ALL.into_iter().find(|x| x.name() == s.trim())
    }
}

/// Options of a remote run.
#[derive(Debug, Clone)]
pub struct RemoteOpts {
    /// Where the generated library is kept (made when missing).
    pub library: PathBuf,
    /// Output directory (bucket copy, state, caches, logs, mounts, report).
    pub out: PathBuf,
    /// Systems to measure.
    pub systems: Vec<System>,
    /// Timed sequential-read passes per variant.
    pub passes: usize,
    /// Where musicfsd/musicfs are.
    pub bin_dir: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// What every step needs.
struct Ctx {
    bins: Bins,
    out: PathBuf,
    /// The bucket's library directory (what s3s-fs serves under `BUCKET/PREFIX`).
    bucket: PathBuf,
    /// The library's files, relative to `bucket`, with their sizes.
    files: Vec<(String, u64)>,
    library_bytes: u64,
    proxy: CountingProxy,
    spec: String,
    passes: usize,
}

impl Ctx {
    fn state(&self) -> PathBuf {
        self.out.join("musicfs-state")
    }

    fn mnt(&self, s: System) -> PathBuf {
        self.out.join("mnt").join(s.name())
    }

    fn log(&self, s: System) -> PathBuf {
        self.out.join(format!("{}.log", s.name()))
    }

    fn rclone_cache(&self) -> PathBuf {
        self.out.join("rclone-cache")
    }

    /// Bytes down once the proxy has been quiet for `still`.
    fn quiet_down(&self, still: Duration) -> Result<u64> {
        Ok(self.proxy.wait_quiet(still, PATIENCE)?.down)
    }
}

/// Runs the scenario and writes `remote.json` and `remote.md` to `opts.out`.
pub fn run(opts: &RemoteOpts) -> Result<RemoteReport> {
    let start = Instant::now();
    fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    peers::install_interrupt_cleanup(out.join("mnt"))?;
    let bins = peers::find_bins(opts.bin_dir.as_deref())?;
    S3Server::binary()?;
    let reused = library::ensure(&opts.library)?;
    let root = out.join("s3");
    let bucket = root.join(BUCKET).join(PREFIX);
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    copy_library(&opts.library, &bucket)?;
    // Both caches start empty: every run measures first reads.
    for d in ["musicfs-state", "rclone-cache"] {
        if out.join(d).is_dir() {
            fs::remove_dir_all(out.join(d))?;
        }
    }
    let files = relative_files(&bucket)?;
    let library_bytes = files.iter().map(|(_, n)| n).sum();
    let mut report = RemoteReport {
        command: opts.command.clone(),
        machine: crate::run::machine(),
        loadavg: [loadavg(), String::new()],
        ..RemoteReport::default()
    };
    report.library.insert(
        "files".into(),
        format!(
            "{} ({} MB; generated with ffmpeg{}: 4 white-noise FLACs of ~30 MB, one of them again on a compilation with other tags, 24 MP3 and 6 FLAC tone tracks)",
            files.len(),
            library_bytes / 1_000_000,
            if reused { ", reused" } else { "" }
        ),
    );
    let server = S3Server::start(&root, &out.join("s3s-fs.log"))?;
    let proxy = CountingProxy::start(server.port())?;
    report.library.insert(
        "served by".into(),
        format!(
            "s3s-fs on 127.0.0.1:{} behind a counting proxy on :{} (bytes = server → client through it, HTTP headers included)",
            server.port(),
            proxy.port()
        ),
    );
    report.library.insert(
        "server's own HEAD time".into(),
        match server_head_ms(server.port(), library::SEQREAD) {
            Ok(ms) => format!(
                "{} ms for the 30 MB FLAC (`curl --aws-sigv4 -I` straight to s3s-fs, median of 3), which computes the object's MD5 for every HEAD and GET",
                short(ms)
            ),
            Err(e) => format!("not measured: {e:#}"),
        },
    );
    let spec = format!(
        "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true",
        proxy.port()
    );
    let ctx = Ctx {
        bins,
        out: out.clone(),
        bucket,
        files,
        library_bytes,
        proxy,
        spec,
        passes: opts.passes,
    };
    for &s in &opts.systems {
        if let Err(e) = measure(&ctx, s, report.system(s)) {
            report.system(s).failed("measuring", &e);
        }
    }
    let mut tag_region = None;
    match edit_upstream(&ctx) {
        Ok((region, edited)) => {
            tag_region = Some(region);
            for &s in &opts.systems {
                let r = report.system(s);
                r.notes.insert(
                    "tag edit".into(),
                    format!(
                        "`{}` retitled in place; tag region {region} bytes; goal ≤ tag region + 4 KiB = {} bytes of payload",
                        library::EDITED,
                        region + 4096
                    ),
                );
                if let Err(e) = after_edit(&ctx, s, &edited, r) {
                    r.failed("the read after the tag edit", &e);
                }
            }
        }
        Err(e) => {
            for &s in &opts.systems {
                report.system(s).failed("the tag edit upstream", &e);
            }
        }
    }
    goals(&mut report, tag_region);
    drop(ctx);
    drop(server);
    report.loadavg[1] = loadavg();
    report.seconds = start.elapsed().as_secs_f64();
    fs::write(
        out.join("remote.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    fs::write(out.join("remote.md"), report.markdown())?;
    Ok(report)
}

/// Copies the generated library (without its marker) into the bucket.
fn copy_library(from: &Path, to: &Path) -> Result<()> {
    for f in walk_files(from)? {
        let rel = f.strip_prefix(from)?;
        if rel == Path::new(library::MARKER) {
            continue;
        }
        let dst = to.join(rel);
        fs::create_dir_all(dst.parent().context("a file has a parent")?)?;
        fs::copy(&f, &dst).with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(())
}

fn relative_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    walk_files(dir)?
        .into_iter()
        .map(|f| {
            let n = fs::metadata(&f)?.len();
            let rel = f.strip_prefix(dir)?.to_string_lossy().into_owned();
            Ok((rel, n))
        })
        .collect()
}

/// Where each library file shows on a system's mount (MusicFS: by `musicfs tree --long`,
/// whose source column ends with the bucket-relative path).
fn paths(ctx: &Ctx, s: System) -> Result<BTreeMap<String, PathBuf>> {
    let mnt = ctx.mnt(s);
    if s == System::Rclone {
        return Ok(ctx
            .files
            .iter()
            .map(|(rel, _)| (rel.clone(), mnt.join(PREFIX).join(rel)))
            .collect());
    }
    let out = run_ok(
        Command::new(&ctx.bins.musicfs)
            .arg("--state-dir")
            .arg(ctx.state())
            .args(["tree", "--long"]),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(virt), Some(src)) = (f.get(2), f.get(3)) else {
            continue;
        };
        if let Some((rel, _)) = ctx
            .files
            .iter()
            .find(|(rel, _)| src.ends_with(&format!("/{rel}")))
        {
            map.insert(rel.clone(), mnt.join(virt.trim_start_matches('/')));
        }
    }
    ensure!(
        map.len() == ctx.files.len(),
        "musicfs shows {} of the {} library files",
        map.len(),
        ctx.files.len()
    );
    Ok(map)
}

fn path_of<'a>(map: &'a BTreeMap<String, PathBuf>, rel: &str) -> Result<&'a Path> {
    map.get(rel)
        .map(PathBuf::as_path)
        .with_context(|| format!("{rel} is not on the mount"))
}

/// `musicfs scan` of the bucket into the state dir; the bytes it moved.
fn scan(ctx: &Ctx) -> Result<u64> {
    let before = ctx.quiet_down(QUIET)?;
    let mut cmd = Command::new(&ctx.bins.musicfs);
    cmd.args(["scan", "--origin", &ctx.spec, "--state-dir"])
        .arg(ctx.state());
    with_credentials(&mut cmd);
    run_ok(&mut cmd).context("musicfs scan")?;
    Ok(ctx.quiet_down(QUIET)? - before)
}

/// The test server's credentials for `cmd`, and no others.
pub(crate) fn with_credentials(cmd: &mut Command) {
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE");
}

/// Mounts system `s` and waits until its root answers (checked, not slept).
fn mount(ctx: &Ctx, s: System) -> Result<Mount> {
    let mnt = ctx.mnt(s);
    let cmd = match s {
        System::Musicfs => {
            let mut c = Command::new(&ctx.bins.musicfsd);
            c.arg("--state-dir")
                .arg(ctx.state())
                .args(["--origin", &ctx.spec])
                .arg(&mnt);
            with_credentials(&mut c);
            c
        }
        System::Rclone => rclone_command(ctx, &mnt)?,
    };
    let launch = Launch {
        peer: match s {
            System::Musicfs => Peer::Musicfs,
            System::Rclone => Peer::Rclone,
        },
        cmd: Some(cmd),
        root: mnt.clone(),
    };
    peers::start_when(
        launch,
        move || peers::root_answers(&mnt),
        PATIENCE,
        &ctx.log(s),
    )
}

/// `rclone mount` of the bucket prefix, configured by environment variables (an empty
/// config file, so no user configuration leaks in), VFS cache in the output dir.
fn rclone_command(ctx: &Ctx, mnt: &Path) -> Result<Command> {
    let rclone =
        peers::which("rclone").context("rclone is not installed: apt-get install -y rclone")?;
    let conf = ctx.out.join("rclone.conf");
    fs::write(&conf, "")?;
    let mut c = Command::new(rclone);
    let var = |k: &str| format!("RCLONE_CONFIG_{}_{k}", RCLONE_REMOTE.to_uppercase());
    // rclone 1.60's AWS SDK refuses to start when AWS_CA_BUNDLE is set ("unsupported
    // transport"); the endpoint is plain HTTP on 127.0.0.1, so no CA is involved.
    c.env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env(var("TYPE"), "s3")
        .env(var("PROVIDER"), "Other")
        .env(
            var("ENDPOINT"),
            format!("http://127.0.0.1:{}", ctx.proxy.port()),
        )
        .env(var("REGION"), "us-east-1")
        .env(var("FORCE_PATH_STYLE"), "true")
        .env(var("ACCESS_KEY_ID"), ACCESS_KEY)
        .env(var("SECRET_ACCESS_KEY"), SECRET_KEY)
        .arg("mount")
        // The bucket, not the prefix: rclone first HEADs a prefix to see whether it is a
        // file, which s3s-fs answers with a 500 (not a 404), and rclone retries that for
        // about 90 s before mounting.
        .arg(format!("{RCLONE_REMOTE}:{BUCKET}"))
        .arg(mnt)
        .arg("--config")
        .arg(&conf)
        .args(["--read-only", "--vfs-cache-mode", "full", "--cache-dir"])
        .arg(ctx.rclone_cache());
    Ok(c)
}

/// Steps 1–6 of the module documentation for one system.
fn measure(ctx: &Ctx, s: System, r: &mut SystemReport) -> Result<()> {
    if s == System::Musicfs {
        let bytes = scan(ctx)?;
        r.set("scan_bytes", bytes as f64 / 1e6);
        r.set(
            "scan_ratio",
            bytes as f64 / ctx.library_bytes as f64 * 100.0,
        );
    }
    let map = paths(ctx, s)?;
    let m = mount(ctx, s)?;
    r.set("mount_ready", m.ready.as_secs_f64() * 1e3);
    let root = match s {
        System::Musicfs => ctx.mnt(s),
        System::Rclone => ctx.mnt(s).join(PREFIX),
    };
    let outcome = measure_mounted(ctx, &root, &map, r);
    m.stop();
    outcome?;
    cache_figures(ctx, s, r)
}

fn measure_mounted(
    ctx: &Ctx,
    root: &Path,
    map: &BTreeMap<String, PathBuf>,
    r: &mut SystemReport,
) -> Result<()> {
    let before = ctx.quiet_down(QUIET)?;
    let entries = list_all(root)?;
    let listed = ctx.quiet_down(QUIET)?;
    r.set("listing_bytes", (listed - before) as f64 / 1e3);
    r.notes.insert("entries listed".into(), entries.to_string());

    let misses: Vec<&Path> = map
        .iter()
        .filter(|(rel, _)| rel.contains("Tone"))
        .map(|(_, p)| p.as_path())
        .collect();
    let mut lat = Vec::new();
    for p in &misses {
        ctx.quiet_down(QUIET_MISS)?;
        lat.push(first_block(p)?.as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    r.set("miss_first_byte_p50", percentile(&lat, 0.50));
    r.set("miss_first_byte_p99", percentile(&lat, 0.99));
    r.notes.insert(
        "cache misses".into(),
        format!(
            "{} files, max {} ms",
            lat.len(),
            short(lat.last().copied().unwrap_or(0.0))
        ),
    );

    let mut buf = vec![0u8; 1 << 20];
    for p in map.values() {
        ops::read_whole(p, &mut buf)?;
    }
    let read = ctx.quiet_down(QUIET)?;
    r.set(
        "first_read_ratio",
        (read - listed) as f64 / ctx.library_bytes as f64,
    );

    let big = path_of(map, library::SEQREAD)?;
    for _ in 0..ctx.passes {
        evict(big)?;
        let (open, mbps) = timed_read(big, &mut buf)?;
        r.set("cached_open", open);
        r.set("seqread_fuse", mbps);
    }
    for _ in 0..ctx.passes {
        ops::drop_caches(3)?;
        r.set("seqread_dropped", timed_read(big, &mut buf)?.1);
    }
    let after = ctx.quiet_down(QUIET)?;
    r.set("seqread_origin_bytes", (after - read) as f64 / 1e3);
    Ok(())
}

/// The cache's logical and stored bytes, with the system unmounted.
fn cache_figures(ctx: &Ctx, s: System, r: &mut SystemReport) -> Result<()> {
    let (logical, stored) = match s {
        System::Musicfs => {
            let out = run_ok(
                Command::new(&ctx.bins.musicfs)
                    .arg("--state-dir")
                    .arg(ctx.state())
                    .args(["cache", "stats"]),
            )?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let field = |k: &str| -> Result<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('\t'))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("no {k} in `musicfs cache stats`:\n{text}"))
            };
            r.notes.insert(
                "cache stats".into(),
                text.lines()
                    .filter(|l| !l.starts_with("directory"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    .replace('\t', "="),
            );
            (field("logical_bytes")?, field("stored_bytes")?)
        }
        System::Rclone => {
            use std::os::unix::fs::MetadataExt;
            let vfs = ctx.rclone_cache().join("vfs");
            let mut sums = (0, 0);
            for f in walk_files(&vfs)? {
                let m = fs::metadata(&f)?;
                sums = (sums.0 + m.len(), sums.1 + m.blocks() * 512);
            }
            (sums.0, sums.1)
        }
    };
    r.set("cache_logical", logical as f64 / 1e6);
    r.set("cache_stored", stored as f64 / 1e6);
    if stored > 0 {
        r.set("dedup_ratio", logical as f64 / stored as f64);
    }
    Ok(())
}

/// Retitles [`library::EDITED`] in the bucket in place; its tag region and new bytes.
fn edit_upstream(ctx: &Ctx) -> Result<(u64, Vec<u8>)> {
    let file = ctx.bucket.join(library::EDITED);
    let region = flac_tag_region(&fs::read(&file)?)?;
    retitle_in_place(&file, library::EDITED_FROM, library::EDITED_TITLE, region)?;
    Ok((region, fs::read(&file)?))
}

/// The next full read of the edited file through system `s` (restarted over its cache;
/// MusicFS rescanned first): its bytes, which must be the edited file's.
fn after_edit(ctx: &Ctx, s: System, edited: &[u8], r: &mut SystemReport) -> Result<()> {
    if s == System::Musicfs {
        let bytes = scan(ctx)?;
        r.set("rescan_bytes", bytes as f64 / 1e3);
    }
    let map = paths(ctx, s)?;
    let path = path_of(&map, library::EDITED)?.to_path_buf();
    let m = mount(ctx, s)?;
    let outcome = (|| -> Result<u64> {
        fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let before = ctx.quiet_down(QUIET)?;
        let got = fs::read(&path)?;
        let after = ctx.quiet_down(QUIET)?;
        if got != edited {
            bail!("the edited file read back differently from the bucket's");
        }
        Ok(after - before)
    })();
    m.stop();
    let bytes = outcome?;
    r.set("tag_edit_bytes", bytes as f64 / 1e3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_names_round_trip() {
        for s in System::ALL {
            assert_eq!(System::from_name(s.name()), Some(s));
        }
        assert_eq!(System::from_name("nfs"), None);
    }
}
