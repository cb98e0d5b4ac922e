#![cfg(feature = "e2e")]
//! More of the remote read path end to end, each on a real mount of an `s3s-fs` bucket
//! behind a counting proxy (`remote_cache.rs` has the FLAC tag edit and offline reads):
//! - a tagger's edit of a 30 MB MP3 (ID3v2 with padding) and of a 30 MB faststart M4A
//!   (`moov` before `mdat`, a `free` atom as padding), picked up by a rescan of the running
//!   daemon, costs on the next read the tag region plus a 4 KiB sample on the wire; so does
//!   a second edit past the padding, which grows the tag region (and rewrites the M4A's
//!   chunk offsets) while the audio moves unchanged;
//! - a library more than twice the cache budget read whole, bit-exact, with the packs'
//!   allocated disk space sampled throughout: never above the budget plus one pack;
//! - the daemon SIGKILLed while a fetch is frozen mid-answer: the read in flight fails
//!   (ECONNABORTED/ENOTCONN, no hang), the mount goes, `musicfs cache verify` passes, and a
//!   fresh daemon serves the file bit-exact.
//!
//! Nothing but the tests' own edits writes the bucket: each compares its checksums at the end.
//! Needs `s3s-fs`, ffmpeg and, for the tag edits, `/usr/bin/python3` with mutagen (apt
//! `python3-mutagen`; `tools/run-tests.sh` installs all three): without one it fails
//! saying so.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_core::config::MIN_CACHE_BUDGET;
use musicfs_storage::CasOptions;
use musicfs_tests::harness::{force_unmount, run_ok, Checksum, MountedFs, EXIT_DEADLINE};
use musicfs_tests::remote::{
    cache_verify, generate, read_all, served, wire_cost, S3Library, Track,
};

/// Mono white noise upmixed to stereo, `secs` long: ~90 KB/s in FLAC or ALAC, 40 KB/s
/// in 320 kb/s MP3; each seed gives other audio (no chunk dedups across tracks).
fn noise(seed: u32, secs: u32) -> String {
    format!("anoisesrc=seed={seed}:amplitude=0.9:sample_rate=44100:duration={secs}")
}

/// The interpreter the mutagen edits run with (the system one: apt's python3-mutagen).
const PYTHON: &str = "/usr/bin/python3";

/// Sets the title (and a comment, if given) as a tagger does, through mutagen: `padding`
/// bytes of padding left after the tags (ID3v2 padding; a `free` atom in the MP4 `meta`),
/// or with `None` mutagen's own policy, which keeps the tag's size while the new tags fit
/// its padding and otherwise grows it (an MP4's `moov`, its chunk offsets updated). ID3
/// stays v2.3.
const RETITLE: &str = r#"
import sys
from mutagen.id3 import ID3, TIT2, COMM
from mutagen.mp4 import MP4
path, title, padding, comment = sys.argv[1:5]
pad = None if padding == "keep" else (lambda info: int(padding))
if path.endswith(".mp3"):
    tags = ID3(path)
    tags.setall("TIT2", [TIT2(encoding=3, text=[title])])
    if comment:
        tags.setall("COMM", [COMM(encoding=3, lang="eng", desc="", text=[comment])])
    tags.save(v2_version=3, padding=pad)
else:
    tags = MP4(path)
    tags["\xa9nam"] = [title]
    if comment:
        tags["\xa9cmt"] = [comment]
    tags.save(padding=pad)
"#;

fn retitle(path: &Path, title: &str, padding: Option<u32>, comment: &str) -> Result<()> {
    let padding = padding.map_or_else(|| "keep".to_string(), |p| p.to_string());
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", RETITLE])
        .arg(path)
        .args([title, &padding, comment]);
    run_ok(&mut cmd).with_context(|| format!("retitling {} with mutagen", path.display()))?;
    Ok(())
}

fn require_mutagen() -> Result<()> {
    let ok = Command::new(PYTHON)
        .args(["-c", "import mutagen"])
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(
        ok,
        "{PYTHON} cannot import mutagen: install python3-mutagen (tools/run-tests.sh does)"
    );
    Ok(())
}

/// Where an MP3's ID3v2 tag ends (header, synchsafe size, footer if flagged).
fn id3_tag_region(bytes: &[u8]) -> Result<u64> {
    let h = bytes.get(..10).context("no ID3v2 header")?;
    ensure!(h.starts_with(b"ID3"), "no ID3v2 tag");
    let size = h[6..10]
        .iter()
        .fold(0u64, |acc, b| (acc << 7) | u64::from(b & 0x7F));
    let footer = if h[3] == 4 && h[5] & 0x10 != 0 { 10 } else { 0 };
    Ok(10 + size + footer)
}

/// Where an MP4's tag region ends: the start of `mdat`'s payload, after a `moov`.
fn mp4_tag_region(bytes: &[u8]) -> Result<u64> {
    let mut at = 0usize;
    let mut moov = false;
    loop {
        let h = bytes.get(at..at + 16).context("no mdat in the MP4")?;
        let (size, header) = match u32::from_be_bytes([h[0], h[1], h[2], h[3]]) {
            1 => (u64::from_be_bytes(h[8..16].try_into()?), 16),
            n => (u64::from(n), 8),
        };
        match &h[4..8] {
            b"moov" => moov = true,
            b"mdat" => {
                ensure!(moov, "mdat before moov: not a faststart file");
                return Ok((at + header) as u64);
            }
            _ => {}
        }
        ensure!(size >= header as u64, "a bad MP4 atom size at {at}");
        at += usize::try_from(size)?;
    }
}

const MP3: &str = "Noise Artist/Tagged/01 - Hiss.mp3";
const M4A: &str = "Noise Artist/Tagged/02 - Rush.m4a";

#[test]
fn tag_edits_of_an_mp3_and_a_faststart_m4a_cost_their_tag_region_on_the_wire() -> Result<()> {
    require_mutagen()?;
    let (mp3_noise, m4a_noise) = (noise(1, 800), noise(2, 360));
    let tracks = [
        Track {
            rel: MP3,
            input: &mp3_noise,
            codec: &["-c:a", "libmp3lame", "-b:a", "320k", "-id3v2_version", "3"],
            title: "Hiss",
        },
        Track {
            rel: M4A,
            input: &m4a_noise,
            codec: &[
                "-c:a",
                "alac",
                "-sample_fmt",
                "s16p",
                "-movflags",
                "+faststart",
            ],
            title: "Rush",
        },
    ];
    // Tagged once by a tagger, which leaves padding for later edits.
    let lib = S3Library::start(|dir| {
        generate(dir, &tracks)?;
        for t in &tracks {
            retitle(&dir.join(t.rel), t.title, Some(2048), "")?;
        }
        Ok(())
    })?;

    // Read whole through the mount once: cached.
    let (mount, _) = MountedFs::start_watching(lib.mount_options(), Duration::from_secs(120))?;
    read_bit_exact(&lib, &mount, &tracks)?;

    // A longer title, written in place into the padding: same size, same tag region.
    edit_and_measure(&lib, &mount, &tracks, " (Remastered 2024)", "", false)?;
    // A long comment too: past the padding, the tag region grows (and, in the M4A, the
    // chunk offsets in `moov` change); the audio is the same bytes, later in the file.
    let comment = "liner notes ".repeat(700);
    let sums = edit_and_measure(&lib, &mount, &tracks, " (Deluxe)", &comment, true)?;
    drop(mount);
    ensure!(sums == lib.bucket_sums()?, "the bucket changed");
    Ok(())
}

/// Retitles every track upstream (`title` + `suffix`, with `comment`), checks the tag
/// region kept its size (or grew, when `grows`), lets the running daemon rescan, and reads
/// each file through the mount: bit-exact, for its tag region plus 4 KiB and the request
/// headers on the wire. Returns the bucket's checksums after the edit.
fn edit_and_measure(
    lib: &S3Library,
    mount: &MountedFs,
    tracks: &[Track],
    suffix: &str,
    comment: &str,
    grows: bool,
) -> Result<BTreeMap<PathBuf, Checksum>> {
    let mut edits = Vec::new();
    for (t, region) in tracks.iter().zip([id3_tag_region, mp4_tag_region]) {
        let path = lib.library.join(t.rel);
        let before = fs::read(&path)?;
        let title = format!("{}{suffix}", t.title);
        retitle(&path, &title, None, comment)?;
        let after = fs::read(&path)?;
        let (old, new) = (region(&before)?, region(&after)?);
        let kept = after.len() == before.len() && new == old;
        let grew = after.len() as u64 - new == before.len() as u64 - old && new > old;
        ensure!(
            if grows { grew } else { kept },
            "mutagen's edit of {}: {} -> {} bytes, tag region {old} -> {new} (grows: {grows})",
            t.rel,
            before.len(),
            after.len(),
        );
        edits.push((t.rel, title, new, after));
    }
    let sums = lib.bucket_sums()?;

    // A rescan of the running daemon (what its poll does) shows the new titles.
    mount.kill(libc::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while edits.iter().any(|e| served(mount, &e.1).is_err()) {
        if Instant::now() > deadline {
            bail!(
                "the edits did not show after a rescan; log:\n{}",
                mount.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    for (rel, title, tag_region, want) in &edits {
        let path = served(mount, title)?;
        let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&path)?))?;
        ensure!(
            xxhash_rust::xxh3::xxh3_128(&got) == xxhash_rust::xxh3::xxh3_128(want),
            "{rel} read back after the edit differs from the bucket's"
        );
        // Payload: the tag region and the 4 KiB sample; plus the headers of the few requests
        // it takes (HEAD, the head, the rest of the tag region, the sample).
        let allowed = tag_region + 4096;
        println!(
            "tag edit ({}) of a {:.1} MB {}: {cost} bytes on the wire for a {tag_region}-byte \
             tag region (payload allowed {allowed} + 4096 for headers)",
            if grows {
                "tag region grown"
            } else {
                "in the padding"
            },
            want.len() as f64 / 1e6,
            rel.rsplit('.').next().unwrap_or("file")
        );
        ensure!(
            cost <= allowed + 4096,
            "the read of {rel} after a tag edit moved {cost} bytes (tag region {tag_region}); \
             log:\n{}",
            mount.log()
        );
    }
    Ok(sums)
}

/// Reads each track through the mount and compares it with the bucket's file.
fn read_bit_exact<'a>(
    lib: &S3Library,
    mount: &MountedFs,
    tracks: impl IntoIterator<Item = &'a Track<'a>>,
) -> Result<()> {
    for t in tracks {
        let got = read_all(&served(mount, t.title)?)?;
        ensure!(
            got == fs::read(lib.library.join(t.rel))?,
            "{} differs through the mount; log:\n{}",
            t.rel,
            mount.log()
        );
    }
    Ok(())
}

/// Disk blocks allocated to the cache's packs (hole-punched space is not counted).
fn packs_on_disk(state: &Path) -> u64 {
    let Ok(dir) = fs::read_dir(state.join("cas/packs")) else {
        return 0;
    };
    // A pack may be deleted between the listing and the stat: it then holds nothing.
    dir.filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn a_library_twice_the_cache_budget_reads_bit_exact_within_the_budget_plus_one_pack() -> Result<()>
{
    let budget = MIN_CACHE_BUDGET;
    let pack = CasOptions::default().pack_size;
    let inputs: Vec<(String, String, String)> = (0..5)
        .map(|i| {
            (
                format!("Noise Artist/Budget/{:02} - Static {i}.flac", i + 1),
                noise(11 + i, 360),
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
    let lib = S3Library::start(|dir| generate(dir, &tracks))?;
    let total: u64 = tracks
        .iter()
        .map(|t| Ok(fs::metadata(lib.library.join(t.rel))?.len()))
        .sum::<Result<u64>>()?;
    ensure!(
        total > 2 * budget,
        "the library ({total} bytes) is not larger than twice the budget ({budget})"
    );
    let sums = lib.bucket_sums()?;
    let config = lib.work_dir().join("musicfs.toml");
    fs::write(&config, format!("cache_budget = {budget}\n"))?;
    let mut opts = lib.mount_options();
    opts.config = Some(config);
    let (mount, _) = MountedFs::start_watching(opts, Duration::from_secs(120))?;

    // The packs' disk use, sampled while every file is read (and once more at the end).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, state) = (Arc::clone(&stop), lib.state.clone());
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(packs_on_disk(&state));
                samples += 1;
                // The sampling period: the packs grow by at most a few windows in it.
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, samples)
        })
    };
    // The first file again at the end: evicted by then, it is fetched anew.
    let read = read_bit_exact(&lib, &mount, tracks.iter().chain(tracks.first()));
    stop.store(true, Ordering::SeqCst);
    let (peak, samples) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    read?;
    let after = packs_on_disk(&lib.state);
    let peak = peak.max(after);
    println!(
        "cache budget {} MiB, pack {} MiB, library {} MiB read + the first file again: packs \
         peaked at {:.1} MiB on disk over {samples} samples, {:.1} MiB at the end",
        budget >> 20,
        pack >> 20,
        total >> 20,
        peak as f64 / f64::from(1 << 20),
        after as f64 / f64::from(1 << 20),
    );
    ensure!(
        peak <= budget + pack,
        "the packs took {peak} bytes on disk, over the budget {budget} plus a pack {pack}"
    );
    ensure!(after > 0, "nothing was cached");
    drop(mount);
    cache_verify(&lib.state)?;
    ensure!(sums == lib.bucket_sums()?, "the bucket changed");
    Ok(())
}

const BIG: &str = "Noise Artist/Killed/01 - Cut Short.flac";
const SMALL: &str = "Tone Artist/Killed/02 - Whole.flac";

#[test]
fn a_daemon_killed_mid_fetch_leaves_a_cache_that_verifies_and_serves_bit_exact() -> Result<()> {
    let big_noise = noise(21, 360);
    let tracks = [
        Track {
            rel: BIG,
            input: &big_noise,
            codec: &["-c:a", "flac", "-sample_fmt", "s16"],
            title: "Cut Short",
        },
        Track {
            rel: SMALL,
            input: "sine=frequency=440:sample_rate=44100:duration=30",
            codec: &["-c:a", "flac"],
            title: "Whole",
        },
    ];
    let lib = S3Library::start(|dir| generate(dir, &tracks))?;
    let sums = lib.bucket_sums()?;
    let want = fs::read(lib.library.join(BIG))?;
    let opts = lib.mount_options();
    let (mut mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    // One file cached whole before the crash: committed chunks for verify to check.
    read_bit_exact(&lib, &mount, &tracks[1..])?;

    // The big file's fetch frozen 10 MiB in (windows part committed, part in flight).
    let path = served(&mount, "Cut Short")?;
    musicfs_tests::remote::quiet(&lib.proxy)?;
    let cap = lib.proxy.moved().down + (10 << 20);
    lib.proxy.cap_down(Some(cap));
    let (tx, rx) = mpsc::channel();
    let reading = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read_all(&reading));
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while lib.proxy.moved().down < cap {
        ensure!(
            Instant::now() < deadline,
            "the read fetched only {} of {cap} bytes; log:\n{}",
            lib.proxy.moved().down,
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    mount.kill(libc::SIGKILL)?;
    let status = mount.wait_exit(EXIT_DEADLINE)?;
    ensure!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL),
        "musicfsd ended with {status} after SIGKILL"
    );
    let errno = |r: &std::io::Result<_>| r.as_ref().err().and_then(|e| e.raw_os_error());
    let read = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the read through the mount still hangs after the daemon was killed")?;
    ensure!(
        matches!(errno(&read), Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "the interrupted read gave {:?}, not ENOTCONN/ECONNABORTED",
        read.map(|b| b.len())
    );
    // The daemon's fusermount3 helper unmounts a dead mount (auto-unmount); one left
    // behind all the same (ENOTCONN) is unmounted lazily.
    force_unmount(mount.mountpoint())?;
    ensure!(mount.mount_entry()?.is_none(), "the dead mount stayed");
    drop(mount);
    lib.proxy.cap_down(None);

    cache_verify(&lib.state)?;
    let mount = MountedFs::start(opts)?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&served(&mount, "Cut Short")?)?))?;
    println!(
        "after a SIGKILL 10 MiB into a {:.1} MB fetch: the cache verified, a fresh daemon read \
         the file bit-exact with {cost} bytes on the wire",
        want.len() as f64 / 1e6
    );
    ensure!(got == want, "{BIG} differs through the fresh daemon");
    drop(mount);
    cache_verify(&lib.state)?;
    ensure!(sums == lib.bucket_sums()?, "the bucket changed");
    Ok(())
}
