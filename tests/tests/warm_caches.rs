#![cfg(feature = "e2e")]
//! Warm caches (issue 18), end to end, with `s3s-fs` buckets behind counting proxies:
//! - **prefetch**: once a track of an album has been read, the starts of the next two
//!   tracks and the whole next one are in the cache (no byte from the origin when the
//!   player gets there); a track further on is not; the album's last track has the next
//!   album's first tracks fetched; with `--prefetch-tracks 0` nothing is fetched ahead;
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
const TRACKS: [Track<'static>; 7] = [
    track("Band/Album/A First.flac", "A First"),
    track("Band/Album/B Second.flac", "B Second"),
    track("Band/Album/C Third.flac", "C Third"),
    track("Band/Album/D Fourth.flac", "D Fourth"),
    track("Other/Record/E Opening.flac", "E Opening"),
    track("Other/Record/F Middle.flac", "F Middle"),
    track("Other/Record/G Closing.flac", "G Closing"),
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
    let first = served(&mount, "A First")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&first)?))?;
    ensure!(
        got == fs::read(lib.source("A First")?)?,
        "A First: wrong bytes"
    );
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
    let second = served(&mount, "B Second")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&second)?))?;
    ensure!(
        got == fs::read(lib.source("B Second")?)?,
        "B Second: wrong bytes"
    );
    ensure!(
        cost == 0,
        "the next track, prefetched whole, moved {cost} bytes; log:\n{}",
        mount.log()
    );
    drop(mount);

    // A new daemon (order forgotten); the album's last track played: the next album's
    // first two tracks are fetched (the player is taken to go on album after album).
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    let last = served(&mount, "D Fourth")?;
    wire_cost(&lib.proxy, || Ok(read_all(&last)?))?;
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
    let middle = served(&mount, "F Middle")?;
    wire_cost(&lib.proxy, || Ok(read_all(&middle)?))?;
    let cost = start_cost(&lib, &mount, "G Closing")?;
    ensure!(
        cost > 0,
        "with prefetch off the next track was cached anyway"
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
    let state_two = lib.work_dir().join("state-two");
    let mut scan = Command::new(binary("musicfs")?);
    scan.args(["scan", "--origin", &lib.spec, "--state-dir"])
        .arg(&state_two);
    run_ok(&mut scan)?;
    let mut two = lib.mount_options();
    two.state_dir = Some(state_two);
    two.config = Some(tier.config(lib.work_dir(), "two", &lib.spec)?);
    let (mount, _) = MountedFs::start_watching(two, Duration::from_secs(120))?;
    let first = served(&mount, "A First")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&first)?))?;
    ensure!(
        got == fs::read(lib.source("A First")?)?,
        "A First: wrong bytes"
    );
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
    let first = served(&mount, "A First")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&first)?))?;
    ensure!(
        got == fs::read(lib.source("A First")?)?,
        "A First: wrong bytes"
    );
    ensure!(
        cost == 0,
        "{cost} bytes from the origin for a track the tier holds"
    );
    drop(mount);

    // A forged window record (not signed with the site's key) is ignored: a third daemon
    // reading C Third, which no daemon read, gets it from the origin, bit-exact, and no
    // record under the forger's name is trusted.
    let state_three = lib.work_dir().join("state-three");
    let mut scan = Command::new(binary("musicfs")?);
    scan.args(["scan", "--origin", &lib.spec, "--state-dir"])
        .arg(&state_three);
    run_ok(&mut scan)?;
    for w in tier.objects("w")? {
        let mut rec = fs::read(&w)?;
        let last = rec.len() - 1;
        rec[last] ^= 1;
        fs::write(&w, rec)?;
    }
    let mut three = lib.mount_options();
    three.state_dir = Some(state_three);
    three.config = Some(tier.config(lib.work_dir(), "three", &lib.spec)?);
    let (mount, _) = MountedFs::start_watching(three, Duration::from_secs(120))?;
    let first = served(&mount, "A First")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&first)?))?;
    ensure!(
        got == fs::read(lib.source("A First")?)?,
        "A First: wrong bytes"
    );
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
