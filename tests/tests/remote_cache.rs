#![cfg(feature = "e2e")]
//! Remote files read through the chunk cache, end to end, with an `s3s-fs` bucket behind a
//! counting proxy:
//! - a tag edit of a 30 MB FLAC upstream costs, on the next read through the mount, the
//!   tag region plus a 4 KiB sample on the wire (the audio is adopted from the cache);
//! - with the server cut off, 8 readers stream the cached files bit-exact with no error,
//!   an uncached file fails with EIO (not a hang), and once the server is back it reads
//!   without a restart;
//! - the cache then verifies (`musicfs cache verify`), and the bucket was never written.
//!
//! Needs `s3s-fs` (`tools/run-tests.sh` installs it) and ffmpeg: without them it fails
//! saying so.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::edit::{flac_tag_region, retitle_in_place};
use musicfs_tests::harness::{xxh3_file, MountedFs};
use musicfs_tests::remote::{
    cache_verify, evict_pages, generate, read_all, served, wire_cost, S3Library, Track,
};

const BIG: &str = "Noise Artist/Big Album/01 - Noise.flac";
const UNREAD: &str = "Tone Artist/Later/01 - Later.mp3";

const TRACKS: [Track<'static>; 4] = [
    Track {
        rel: BIG,
        input: "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=340",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "Noise",
    },
    Track {
        rel: "Tone Artist/Album/01 - One.mp3",
        input: "sine=frequency=440:sample_rate=44100:duration=60",
        codec: &["-c:a", "libmp3lame", "-b:a", "192k"],
        title: "One",
    },
    Track {
        rel: "Tone Artist/Album/02 - Two.flac",
        input: "sine=frequency=550:sample_rate=44100:duration=40",
        codec: &["-c:a", "flac"],
        title: "Two",
    },
    Track {
        rel: UNREAD,
        input: "sine=frequency=660:sample_rate=44100:duration=60",
        codec: &["-c:a", "libmp3lame", "-b:a", "128k"],
        title: "Later",
    },
];

#[test]
fn remote_files_play_from_the_cache_a_tag_edit_costs_its_tag_region_and_offline_is_clean(
) -> Result<()> {
    let lib = S3Library::start(|dir| generate(dir, &TRACKS))?;

    // 1. Every track but one read through the mount: the same bytes as the bucket's.
    let opts = lib.mount_options();
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    for title in ["Noise", "One", "Two"] {
        ensure!(
            xxh3_file(&served(&mount, title)?)? == xxh3_file(&lib.source(title)?)?,
            "{title} differs through the mount; log:\n{}",
            mount.log()
        );
    }
    drop(mount);

    // 2. A tag edit upstream (same length, in place: the padding keeps the size).
    let big = lib.library.join(BIG);
    let old = fs::read(&big)?;
    let tag_region = flac_tag_region(&old)?;
    retitle_in_place(&big, "Noise", "Nuise", tag_region)?;
    let edited = fs::read(&big)?;
    let sums = lib.bucket_sums()?;
    lib.scan()?;
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    // The start-up reconcile and the refresh asked for may overlap the measurement
    // (listings): `wire_cost` waits until nothing has moved for a while.
    let path = served(&mount, "Nuise")?;
    let (got, cost) = wire_cost(&lib.proxy, || Ok(read_all(&path)?))?;
    ensure!(got == edited, "the edited file read back wrong");
    // The payload allowed, plus HTTP headers of the few requests it takes (HEAD, the
    // head, the rest of the tag region, the sample).
    let allowed = tag_region + 4096;
    println!(
        "tag edit of a {} MB FLAC: {cost} bytes on the wire for a {tag_region}-byte tag region \
         (payload allowed {allowed} + headers)",
        edited.len() >> 20
    );
    ensure!(
        cost <= allowed + 4 * 1024,
        "the read after a tag edit moved {cost} bytes (tag region {tag_region}); log:\n{}",
        mount.log()
    );

    // A file the cache holds as the tree records it opens and reads without a word to
    // the server (its pages dropped from the mount, so the daemon serves the reads).
    evict_pages(&path)?;
    let (again, cost) = wire_cost(&lib.proxy, || Ok(read_all(&path)?))?;
    ensure!(again == edited, "the cached file read back wrong");
    ensure!(
        cost == 0,
        "opening and reading a cached file moved {cost} bytes; log:\n{}",
        mount.log()
    );

    // 3. The server cut off: 8 readers stream the cached files without an error.
    let cached: Vec<(PathBuf, Vec<u8>)> = ["Nuise", "One", "Two"]
        .iter()
        .map(|t| {
            let p = served(&mount, t)?;
            let bytes = read_all(&p)?;
            Ok((p, bytes))
        })
        .collect::<Result<_>>()?;
    let unread = served(&mount, "Later")?;
    lib.proxy.set_down(true);
    let cached = Arc::new(cached);
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let cached = Arc::clone(&cached);
            std::thread::spawn(move || -> Result<()> {
                for round in 0..3 {
                    for (path, want) in cached.iter().cycle().skip(i).take(cached.len()) {
                        let got = read_all(path)
                            .with_context(|| format!("reader {i} round {round}: {path:?}"))?;
                        ensure!(&got == want, "reader {i}: {path:?} differs offline");
                    }
                }
                Ok(())
            })
        })
        .collect();
    for r in readers {
        r.join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
    }
    // An uncached file fails (EIO), it does not hang.
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = unread.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read_all(&path));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
            println!(
                "uncached read with the server cut off: EIO after {} ms",
                started.elapsed().as_millis()
            );
        }
        Ok(other) => bail!("an uncached read offline gave {other:?}, not EIO"),
        Err(_) => bail!("an uncached read offline hung; log:\n{}", mount.log()),
    }
    ensure!(
        mount.mount_entry()?.is_some(),
        "the daemon went away; log:\n{}",
        mount.log()
    );

    // 4. The server back: the uncached file reads, without a restart.
    lib.proxy.set_down(false);
    let want = fs::read(lib.library.join(UNREAD))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match read_all(&unread) {
            Ok(got) => {
                ensure!(got == want, "the file read after reconnecting differs");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                // The origin's health probe has it offline until its next probe.
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => bail!(
                "still failing after the server came back: {e}; log:\n{}",
                mount.log()
            ),
        }
    }
    drop(mount);

    // 5. The cache verifies, and the bucket holds what the test put there.
    cache_verify(&lib.state)?;
    ensure!(sums == lib.bucket_sums()?, "the bucket changed");
    ensure!(fs::read(&big)? == edited, "the bucket's FLAC changed");
    Ok(())
}
