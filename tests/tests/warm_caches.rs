#![cfg(feature = "e2e")]
//! Warm caches (issue 18), end to end, with `s3s-fs` buckets behind counting proxies:
//! - **prefetch**: once a track of an album has been read, the starts of the next two
//!   tracks and the whole next one are in the cache (no byte from the origin when the
//!   player gets there); a track further on is not; the album's last track has the next
//!   album's first tracks fetched; with `--prefetch-tracks 0` nothing is fetched ahead;
//!   `/.prefetch/<path>` fetches a folder when listed and a track when looked up;
//! - **shared tier**: a second daemon (own state dir) reads a track the first one read
//!   with no byte from the origin; a damaged chunk in the tier is refetched from the origin
//!   and the file still reads bit-exact; a forged window record is ignored.
//!
//! Needs `s3s-fs` and ffmpeg (`tools/run-tests.sh` installs them): without them it fails
//! saying so.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::harness::{binary, run_ok, walk_files, MountedFs};
use musicfs_tests::remote::{generate, read_all, served, wire_cost, S3Library, Track};
use musicfs_tests::servers::s3::S3Server;

const NOISE: &str = "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=12";
const FLAC: &[&str] = &["-c:a", "flac", "-sample_fmt", "s16"];

const fn track(rel: &'static str, title: &'static str) -> Track<'static> {
    Track {
        rel,
        input: NOISE,
        codec: FLAC,
        title,
    }
}

/// Two albums of noise FLACs (about 2 MB each); titles sort in album order.
const TRACKS: [Track<'static>; 10] = [
    track("Band/Album/A First.flac", "A First"),
    track("Band/Album/B Second.flac", "B Second"),
    track("Band/Album/C Third.flac", "C Third"),
    track("Band/Album/D Fourth.flac", "D Fourth"),
    track("Other/Record/E Opening.flac", "E Opening"),
    track("Other/Record/F Middle.flac", "F Middle"),
    track("Other/Record/G Closing.flac", "G Closing"),
    track("Solo/Single/H Lone.flac", "H Lone"),
    track("Solo/Single/I Also.flac", "I Also"),
    track("Third/Way/J Apart.flac", "J Apart"),
];

/// The first 64 KiB of `p` (the kernel may read ahead of that).
fn read_start(p: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    fs::File::open(p)?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Bytes the origin's server sent while the first 64 KiB of the track titled `title`
/// were read through `mount` (after the daemon had gone quiet).
fn start_cost(lib: &S3Library, mount: &MountedFs, title: &str) -> Result<u64> {
    let path = served(mount, title)?;
    let want = fs::read(lib.source(title)?)?;
    let (got, cost) = wire_cost(&lib.proxy, || read_start(&path))?;
    ensure!(got[..] == want[..got.len()], "{title}: wrong bytes");
    Ok(cost)
}

/// Reads the track titled `title` whole through `mount` once the daemon is quiet; checks
/// its bytes against the bucket's and returns what the origin's server sent meanwhile.
fn read_whole(lib: &S3Library, mount: &MountedFs, title: &str) -> Result<u64> {
    let path = served(mount, title)?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&path)?))?;
    ensure!(got == fs::read(lib.source(title)?)?, "{title}: wrong bytes");
    Ok(cost)
}

#[test]
fn prefetch_fetches_the_next_tracks_of_an_album_being_played() -> Result<()> {
    let lib = S3Library::start(|dir| generate(dir, &TRACKS))?;
    let sums = lib.bucket_sums()?;
    let mut opts = lib.mount_options();
    opts.log_level =
        Some("info,musicfs_index::refresh=debug,musicfs_fusedev::prefetch=debug".into());
    opts.extra_args = vec!["--probe-interval".into(), "0".into()];
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;

    // The player plays the first track of the album.
    let cost = read_whole(&lib, &mount, "A First")?;
    ensure!(cost > 0, "the first track came from nowhere");

    // Prefetch has fetched ahead (wire_cost waits until the daemon is quiet): the fourth
    // track (three on) was not, the next two were, and the next one whole.
    let fourth = start_cost(&lib, &mount, "D Fourth")?;
    ensure!(
        fourth > 0,
        "D Fourth is beyond the two tracks prefetched, yet its start moved no byte"
    );
    for title in ["B Second", "C Third"] {
        let cost = start_cost(&lib, &mount, title)?;
        ensure!(
            cost == 0,
            "the start of {title} moved {cost} bytes from the origin after prefetch; log:\n{}",
            mount.log()
        );
    }
    let cost = read_whole(&lib, &mount, "B Second")?;
    ensure!(
        cost == 0,
        "the next track, prefetched whole, moved {cost} bytes; log:\n{}",
        mount.log()
    );
    drop(mount);

    // A new daemon (order forgotten); the album's last track played: the next album's
    // first two tracks are fetched (the player is taken to go on album after album).
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    read_whole(&lib, &mount, "D Fourth")?;
    // Waits for the prefetch to end.
    wire_cost(&lib.proxy, || Ok(()))?;
    drop(mount);

    // Prefetch off (and the daemon restarted over its cache): what was prefetched is
    // there, the next track's start comes from the origin.
    let mut off = opts.clone();
    off.extra_args
        .extend(["--prefetch-tracks".into(), "0".into()]);
    let (mount, _) = MountedFs::start_watching(off, Duration::from_secs(120))?;
    let cost = start_cost(&lib, &mount, "F Middle")?;
    ensure!(
        cost == 0,
        "F Middle, second track of the album after the one played, was not prefetched \
         ({cost} bytes); log:\n{}",
        mount.log()
    );
    read_whole(&lib, &mount, "F Middle")?;
    let cost = start_cost(&lib, &mount, "G Closing")?;
    ensure!(
        cost > 0,
        "with prefetch off the next track was cached anyway"
    );

    // By hand, through `/.prefetch/<path-in-tree>` (there with prefetch off too, and not
    // listed in the root): listing a folder there fetches its tracks, looking up a track
    // (`stat`, `touch`) fetches it.
    let root = mount.mountpoint();
    ensure!(
        !fs::read_dir(root)?.any(|e| e.is_ok_and(|e| e.file_name() == ".prefetch")),
        "/.prefetch is listed in the root"
    );
    let hint = |title: &str| -> Result<PathBuf> {
        let path = served(&mount, title)?;
        Ok(root.join(".prefetch").join(path.strip_prefix(root)?))
    };
    let folder = hint("H Lone")?.parent().context("no folder")?.to_path_buf();
    ensure!(
        fs::read_dir(&folder)?.count() == 0,
        "a folder under /.prefetch lists nothing"
    );
    for title in ["H Lone", "I Also"] {
        let cost = read_whole(&lib, &mount, title)?;
        ensure!(
            cost == 0,
            "{title} was not fetched by listing its folder under /.prefetch ({cost} bytes); log:\n{}",
            mount.log()
        );
    }
    let apart = hint("J Apart")?;
    ensure!(
        fs::metadata(&apart)?.len() == 0,
        "a /.prefetch file is empty"
    );
    let cost = read_whole(&lib, &mount, "J Apart")?;
    ensure!(
        cost == 0,
        "J Apart was not fetched by a stat under /.prefetch ({cost} bytes); log:\n{}",
        mount.log()
    );
    ensure!(
        fs::metadata(root.join(".prefetch/No Such Artist")).is_err(),
        "a name the tree lacks is found under /.prefetch"
    );
    drop(mount);
    ensure!(lib.bucket_sums()? == sums, "the bucket changed");
    Ok(())
}

/// A second `s3s-fs` serving the shared tier's bucket.
struct Tier {
    server: S3Server,
    /// The bucket's directory on disk (objects are files under it).
    dir: PathBuf,
    key_file: PathBuf,
}

impl Tier {
    fn start(work: &Path) -> Result<Tier> {
        let root = work.join("tier-s3");
        let dir = root.join("tier");
        fs::create_dir_all(&dir)?;
        let server = S3Server::start(&root, &work.join("tier-s3s-fs.log"))?;
        let key_file = work.join("tier.key");
        fs::write(&key_file, "the site's tier key, 32+ bytes long\n")?;
        Ok(Tier {
            server,
            dir,
            key_file,
        })
    }

    /// A configuration file that serves `origin` and shares this tier.
    fn config(&self, work: &Path, name: &str, origin: &str) -> Result<PathBuf> {
        let path = work.join(format!("{name}.toml"));
        fs::write(
            &path,
            format!(
                "shared_tier = \"s3://tier/site?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true\"\n\
                 shared_tier_key_file = {:?}\nprobe_interval_secs = 0\nprefetch_tracks = 0\n\
                 [[origin]]\npath = {origin:?}\n",
                self.server.port(),
                self.key_file
            ),
        )?;
        Ok(path)
    }

    /// A daemon named `name` over `lib` sharing this tier, with a state dir of its own
    /// (scanned first, so the start-up reconcile has nothing to do).
    fn daemon(&self, lib: &S3Library, name: &str) -> Result<MountedFs> {
        let state = lib.work_dir().join(format!("state-{name}"));
        let mut scan = Command::new(binary("musicfs")?);
        scan.args(["scan", "--origin", &lib.spec, "--state-dir"])
            .arg(&state);
        run_ok(&mut scan)?;
        let mut opts = lib.mount_options();
        opts.state_dir = Some(state);
        opts.config = Some(self.config(lib.work_dir(), name, &lib.spec)?);
        Ok(MountedFs::start_watching(opts, Duration::from_secs(120))?.0)
    }

    /// The tier's objects under `kind` (`c`, `w`, `v`).
    fn objects(&self, kind: &str) -> Result<Vec<PathBuf>> {
        let dir = self.dir.join("site").join(kind);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        walk_files(&dir)
    }

    /// Waits until the tier holds a version record and its object count has not moved
    /// for a second (the daemon writes in the background).
    fn wait_written(&self) -> Result<usize> {
        let started = Instant::now();
        let mut last = (usize::MAX, Instant::now());
        loop {
            let n = ["c", "w", "v"]
                .iter()
                .map(|k| self.objects(k).map(|v| v.len()))
                .sum::<Result<usize>>()?;
            if n != last.0 {
                last = (n, Instant::now());
            } else if !self.objects("v")?.is_empty() && last.1.elapsed() > Duration::from_secs(1) {
                return Ok(n);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the shared tier was not written (objects: {n}); server log:\n{}",
                    self.server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_second_daemon_reads_from_the_shared_tier_and_never_trusts_it_blindly() -> Result<()> {
    let lib = S3Library::start(|dir| generate(dir, &TRACKS[..3]))?;
    let sums = lib.bucket_sums()?;
    let tier = Tier::start(lib.work_dir())?;

    // Daemon one reads two tracks whole: they go to its cache and to the tier.
    let mut one = lib.mount_options();
    one.config = Some(tier.config(lib.work_dir(), "one", &lib.spec)?);
    let (mount, _) = MountedFs::start_watching(one, Duration::from_secs(120))?;
    for title in ["A First", "B Second"] {
        let got = read_all(&served(&mount, title)?)?;
        ensure!(got == fs::read(lib.source(title)?)?, "{title}: wrong bytes");
    }
    let objects = tier.wait_written()?;
    drop(mount);
    ensure!(objects > 2, "the tier holds {objects} objects");

    // Daemon two: its own state dir (scanned on its own), the same tier.
    let mount = tier.daemon(&lib, "two")?;
    let cost = read_whole(&lib, &mount, "A First")?;
    ensure!(
        cost == 0,
        "the second daemon moved {cost} bytes from the origin for a track the tier holds; log:\n{}",
        mount.log()
    );

    // A chunk of the other track damaged in the tier: found out, fetched from the origin,
    // the file still reads right.
    let chunks = tier.objects("c")?;
    ensure!(!chunks.is_empty(), "no chunks in the tier");
    let second_bytes = fs::read(lib.source("B Second")?)?;
    // The biggest chunk object that belongs to B Second (its bytes occur in the file).
    let mut damaged = None;
    for c in &chunks {
        let bytes = fs::read(c)?;
        if bytes.len() > 4096
            && second_bytes
                .windows(bytes.len().min(4096))
                .any(|w| w == &bytes[..bytes.len().min(4096)])
        {
            damaged = Some((c.clone(), bytes));
            break;
        }
    }
    let (path, mut bytes) = damaged.context("no chunk of B Second found in the tier")?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, &bytes)?;
    let second = served(&mount, "B Second")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&second)?))?;
    ensure!(
        got == second_bytes,
        "B Second read wrong with a damaged tier chunk"
    );
    ensure!(
        cost > 0,
        "a damaged chunk in the tier must be fetched from the origin"
    );
    ensure!(
        cost < second_bytes.len() as u64,
        "one damaged chunk cost {cost} bytes, the whole file is {}",
        second_bytes.len()
    );
    drop(mount);

    // One scan, many mounts: daemon one's library shared; a daemon with an empty state
    // dir starts from it and serves at once (no scan before the mount), reading from the
    // tier.
    let mut push = Command::new(binary("musicfs")?);
    push.args(["share", "push", "--state-dir"])
        .arg(&lib.state)
        .arg("--config")
        .arg(tier.config(lib.work_dir(), "push", &lib.spec)?);
    let out = run_ok(&mut push)?;
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let mut four = lib.mount_options();
    four.state_dir = Some(lib.work_dir().join("state-four"));
    four.config = Some(tier.config(lib.work_dir(), "four", &lib.spec)?);
    four.extra_args.push("--from-shared".into());
    let started = Instant::now();
    let mount = MountedFs::start(four)?;
    let ready = started.elapsed();
    let log = mount.log();
    ensure!(
        log.contains("started from the shared library"),
        "the daemon did not start from the shared library; log:\n{log}"
    );
    let head = log.split(" mounted").next().unwrap_or_default();
    ensure!(
        !head.contains("no snapshot yet") && !head.contains("scanning origins"),
        "the daemon scanned before mounting; log:\n{log}"
    );
    println!("a daemon started from the shared library was mounted {ready:?} after its start");
    let shown: Vec<String> = walk_files(mount.mountpoint())?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".flac"))
        .collect();
    ensure!(shown.len() == 3, "the shared tree shows {shown:?}");
    let cost = read_whole(&lib, &mount, "A First")?;
    ensure!(
        cost == 0,
        "{cost} bytes from the origin for a track the tier holds"
    );
    drop(mount);

    // Forged window records (not signed with the site's key) are ignored: a third daemon
    // reading A First, whose records in the tier are all tampered with, gets it from the
    // origin, bit-exact, and says why.
    for w in tier.objects("w")? {
        let mut rec = fs::read(&w)?;
        let last = rec.len() - 1;
        rec[last] ^= 1;
        fs::write(&w, rec)?;
    }
    let mount = tier.daemon(&lib, "three")?;
    let cost = read_whole(&lib, &mount, "A First")?;
    ensure!(
        cost > 0,
        "window records that fail their signature were trusted"
    );
    ensure!(
        mount.log().contains("not signed with this site's key"),
        "no warning about the forged records; log:\n{}",
        mount.log()
    );
    drop(mount);
    ensure!(lib.bucket_sums()? == sums, "the origin's bucket changed");
    Ok(())
}
