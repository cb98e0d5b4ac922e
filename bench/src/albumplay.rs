//! `musicfs-bench albumplay`: a player going through whole albums on a remote origin with
//! a round trip of latency, with prefetch off and on in one run (issue 18, FR-19).
//!
//! One `s3s-fs` on 127.0.0.1 serves a generated library of albums (white-noise FLACs of
//! 12 s, about 1 MB each) behind a [`CountingProxy`] that holds every request `--rtt-ms` before
//! the server sees it. For each mode (`--prefetch-tracks 0`, then the default) a fresh
//! state dir is scanned and `musicfsd` mounted; then every album is played in order, every
//! track as a player does: open, read the first 4 KiB (the **track-start first byte**),
//! then the rest in 64 KiB reads paced so that the track lasts `--track-ms` (a player
//! reading ahead of playback at many times real time), then close.
//!
//! A track start is a **cache miss** when its first byte waited on the origin: it took at
//! least half the injected round trip (a start served from the cache takes a fraction of
//! a millisecond; anything fetched takes at least the round trip). Reported per mode:
//! misses at track starts, first-byte p50/p99/max, and the running stream's read p50/p99
//! (every read after a track's first), so that prefetch's cost to the stream shows.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use musicfs_tests::harness::run_ok;
use musicfs_tests::remote::{generate, Track};
use musicfs_tests::servers::proxy::CountingProxy;
use musicfs_tests::servers::s3::S3Server;
use serde::Serialize;

use crate::peers::{self, Launch, Peer};
use crate::remote::with_credentials;
use crate::scale::{loadavg, short};

const BUCKET: &str = "music";
const PREFIX: &str = "lib";
const PATIENCE: Duration = Duration::from_secs(120);

/// The scenario's knobs.
#[derive(Debug, Clone)]
pub struct AlbumPlayOpts {
    /// Output directory (report, bucket, state dirs, logs, mounts).
    pub out: PathBuf,
    /// Albums in the library.
    pub albums: usize,
    /// Tracks per album.
    pub tracks: usize,
    /// Injected round trip to the origin.
    pub rtt: Duration,
    /// How long each track is read for.
    pub track_time: Duration,
    /// Where musicfsd/musicfs are.
    pub bin_dir: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// One mode's figures.
#[derive(Debug, Default, Serialize)]
pub struct ModeReport {
    /// `off` or `on`.
    pub prefetch: String,
    /// Track starts measured.
    pub starts: usize,
    /// Of them, cache misses.
    pub misses: usize,
    /// First-byte times, ms.
    pub first_byte_p50: f64,
    /// See `first_byte_p50`.
    pub first_byte_p99: f64,
    /// See `first_byte_p50`.
    pub first_byte_max: f64,
    /// Stream reads (each track's reads after its first), ms.
    pub stream_p50: f64,
    /// See `stream_p50`.
    pub stream_p99: f64,
    /// Bytes from the server during the play.
    pub bytes: u64,
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct AlbumPlayReport {
    /// How it was run.
    pub command: String,
    /// Load averages before and after.
    pub loadavg: [String; 2],
    /// Library description.
    pub library: String,
    /// Injected round trip, ms.
    pub rtt_ms: u64,
    /// Prefetch off, then on.
    pub modes: Vec<ModeReport>,
}

impl AlbumPlayReport {
    /// The report as a markdown table, prefetch off and on side by side.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## Album play over a remote origin ({} ms round trip)\n\n`{}`\n\n{}; load {} → {}\n\n",
            self.rtt_ms, self.command, self.library, self.loadavg[0], self.loadavg[1]
        );
        s.push_str("| prefetch | track starts | misses | first byte p50 / p99 / max (ms) | stream read p50 / p99 (ms) | bytes from origin |\n|---|---|---|---|---|---|\n");
        for m in &self.modes {
            s.push_str(&format!(
                "| {} | {} | {} ({:.0} %) | {} / {} / {} | {} / {} | {} |\n",
                m.prefetch,
                m.starts,
                m.misses,
                100.0 * m.misses as f64 / m.starts.max(1) as f64,
                short(m.first_byte_p50),
                short(m.first_byte_p99),
                short(m.first_byte_max),
                short(m.stream_p50),
                short(m.stream_p99),
                m.bytes
            ));
        }
        if let [off, on] = &self.modes[..] {
            s.push_str(&format!(
                "\nMisses at track starts cut by {:.0} % (goal > 50 %); first-byte p99 with prefetch {} ms (goal < 50 ms); stream read p99 on/off ×{:.2}.\n",
                100.0 * (1.0 - on.misses as f64 / off.misses.max(1) as f64),
                short(on.first_byte_p99),
                on.stream_p99 / off.stream_p99.max(1e-9)
            ));
        }
        s
    }
}

/// Nearest-rank percentile of `v` (sorted here), ms.
fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::remote::probe::percentile(v, q)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Writes the albums into `dir` (skipped when already there).
fn library(dir: &Path, albums: usize, tracks: usize) -> Result<()> {
    let marker = dir.join(format!(".albumplay-{albums}x{tracks}"));
    if marker.exists() {
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let noise = "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=12";
    let names: Vec<(String, String)> = (0..albums)
        .flat_map(|a| {
            (0..tracks).map(move |t| {
                (
                    format!("Artist {a}/Album {a}/{:02} Track.flac", t + 1),
                    format!("Track {t:03}"),
                )
            })
        })
        .collect();
    let list: Vec<Track> = names
        .iter()
        .map(|(rel, title)| Track {
            rel,
            input: noise,
            codec: &["-c:a", "flac", "-sample_fmt", "s16"],
            title,
        })
        .collect();
    generate(dir, &list)?;
    fs::write(marker, "")?;
    Ok(())
}

/// The album folders of the mount, in order, each with its tracks in order.
fn albums(root: &Path) -> Result<Vec<Vec<PathBuf>>> {
    let mut out = Vec::new();
    let mut artists: Vec<PathBuf> = fs::read_dir(root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    artists.retain(|p| {
        p.is_dir()
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    });
    artists.sort();
    for artist in artists {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&artist)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        dirs.sort();
        for d in dirs.into_iter().filter(|d| d.is_dir()) {
            let mut tracks: Vec<PathBuf> = fs::read_dir(&d)?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            tracks.retain(|t| t.extension().is_some_and(|e| e == "flac"));
            tracks.sort();
            out.push(tracks);
        }
    }
    Ok(out)
}

/// Plays `track` as the module documentation says: first-byte time, stream read times.
fn play(track: &Path, lasts: Duration, stream: &mut Vec<f64>) -> Result<f64> {
    let started = Instant::now();
    let mut f = fs::File::open(track)?;
    let mut head = [0u8; 4096];
    f.read_exact(&mut head)?;
    let first = ms(started.elapsed());
    let size = f.metadata()?.len();
    let reads = size.div_ceil(64 << 10).max(1);
    let gap = lasts / reads as u32;
    let mut buf = vec![0u8; 64 << 10];
    let mut next = Instant::now();
    loop {
        let t = Instant::now();
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.push(ms(t.elapsed()));
        next += gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(first)
}

/// Runs the scenario and writes `albumplay.json` and `albumplay.md` to `opts.out`.
pub fn run(opts: &AlbumPlayOpts) -> Result<AlbumPlayReport> {
    fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    peers::install_interrupt_cleanup(out.join("mnt"))?;
    let bins = peers::find_bins(opts.bin_dir.as_deref())?;
    S3Server::binary()?;
    let root = out.join("s3");
    let lib = root.join(BUCKET).join(PREFIX);
    library(&lib, opts.albums, opts.tracks)?;
    let server = S3Server::start(&root, &out.join("s3s-fs.log"))?;
    let proxy = CountingProxy::start(server.port())?;
    let spec = format!(
        "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true",
        proxy.port()
    );
    let mut report = AlbumPlayReport {
        command: opts.command.clone(),
        loadavg: [loadavg(), String::new()],
        library: format!(
            "{} albums × {} white-noise FLACs of 12 s (~1 MB), each track read in {} ms",
            opts.albums,
            opts.tracks,
            opts.track_time.as_millis()
        ),
        rtt_ms: opts.rtt.as_millis() as u64,
        ..AlbumPlayReport::default()
    };
    let miss_at = ms(opts.rtt) / 2.0;
    for (name, tracks) in [("off", "0"), ("on", "2")] {
        let state = out.join(format!("state-{name}"));
        if state.exists() {
            fs::remove_dir_all(&state)?;
        }
        proxy.set_latency(Duration::ZERO);
        let mut scan = Command::new(&bins.musicfs);
        scan.args(["scan", "--origin", &spec, "--state-dir"])
            .arg(&state);
        with_credentials(&mut scan);
        run_ok(&mut scan).context("musicfs scan")?;
        let mnt = out.join("mnt").join(name);
        fs::create_dir_all(&mnt)?;
        let mut cmd = Command::new(&bins.musicfsd);
        cmd.arg("--state-dir")
            .arg(&state)
            .args([
                "--origin",
                &spec,
                "--probe-interval",
                "0",
                "--prefetch-tracks",
                tracks,
            ])
            .arg(&mnt);
        with_credentials(&mut cmd);
        let probe = mnt.clone();
        let mount = peers::start_when(
            Launch {
                peer: Peer::Musicfs,
                cmd: Some(cmd),
                root: mnt.clone(),
            },
            move || peers::root_answers(&probe),
            PATIENCE,
            &out.join(format!("musicfsd-{name}.log")),
        )?;
        let albums = albums(&mnt)?;
        ensure!(
            albums.len() == opts.albums && albums.iter().all(|a| a.len() == opts.tracks),
            "the mount shows {:?} tracks per album",
            albums.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // The start-up reconcile lists the bucket: let it end before the clock starts.
        proxy.wait_quiet(Duration::from_millis(1500), PATIENCE)?;
        proxy.set_latency(opts.rtt);
        let before = proxy.moved().down;
        let (mut firsts, mut stream) = (Vec::new(), Vec::new());
        for album in &albums {
            for t in album {
                firsts.push(play(t, opts.track_time, &mut stream)?);
            }
        }
        let bytes = proxy.moved().down - before;
        drop(mount);
        let misses = firsts.iter().filter(|&&f| f >= miss_at).count();
        report.modes.push(ModeReport {
            prefetch: name.into(),
            starts: firsts.len(),
            misses,
            first_byte_p50: pct(&mut firsts, 0.50),
            first_byte_p99: pct(&mut firsts, 0.99),
            first_byte_max: pct(&mut firsts, 1.0),
            stream_p50: pct(&mut stream, 0.50),
            stream_p99: pct(&mut stream, 0.99),
            bytes,
        });
    }
    drop(proxy);
    drop(server);
    report.loadavg[1] = loadavg();
    fs::write(
        out.join("albumplay.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    fs::write(out.join("albumplay.md"), report.markdown())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(pct(&mut v, 0.5), 3.0);
        assert_eq!(pct(&mut v, 0.99), 5.0);
        assert_eq!(pct(&mut [], 0.5), 0.0);
    }
}
