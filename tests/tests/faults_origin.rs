#![cfg(feature = "e2e")]
//! Fault injection at the origin (issue 20): an S3 bucket (`s3s-fs`) reached through a
//! faulty HTTP proxy that answers errors, short bodies under a matching length, bodies cut
//! mid-way, flipped ETags and late answers, at rates no real server reaches. Through a real
//! mount, with the chunk cache emptied between rounds so every read goes to the wire:
//! - every read either returns the origin's bytes or fails (EIO); none returns other bytes;
//! - a refresh during the faults loses no track;
//! - the daemon stays up, and once the faults stop every file reads bit-exact at once (no
//!   damaged answer was kept in the cache), the cache verifies, and the bucket is unchanged.
//!
//! `MUSICFS_FAULT_ROUNDS` sets the rounds (CI's short form: 3; `tools/faults.sh` runs the
//! full one) and `MUSICFS_FAULT_SEED` the faults' seed (printed, so a failure replays).
//! Needs `s3s-fs` and ffmpeg (`tools/run-tests.sh` installs them): without them it fails
//! saying so.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use musicfs_tests::harness::{musicfs_cmd_ok, MountedFs, SplitMix64};
use musicfs_tests::remote::{cache_verify, generate, read_all, served, S3Library, Track};
use musicfs_tests::servers::faulty::Faults;

const TRACKS: [Track<'static>; 4] = [
    Track {
        rel: "Noise Artist/Static/01 - Hiss.flac",
        input: "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=12",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "Hiss",
    },
    Track {
        rel: "Noise Artist/Static/02 - Crackle.flac",
        input: "aevalsrc=random(0)*1.2-0.6|random(1)*1.2-0.6:s=44100:d=8",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "Crackle",
    },
    Track {
        rel: "Tone Artist/Album/01 - Hum.mp3",
        input: "sine=frequency=440:sample_rate=44100:duration=30",
        codec: &["-c:a", "libmp3lame", "-b:a", "192k"],
        title: "Hum",
    },
    Track {
        rel: "Tone Artist/Album/02 - Drone.ogg",
        input: "sine=frequency=330:sample_rate=44100:duration=20",
        codec: &["-c:a", "libvorbis"],
        title: "Drone",
    },
];

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// Outcomes of reads through the mount.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn failed(&mut self, e: &std::io::Error) {
        self.failed += 1;
        *self.errors.entry(e.to_string()).or_default() += 1;
    }
}

#[test]
fn a_faulty_s3_origin_never_gets_wrong_bytes_served_and_the_daemon_recovers() -> Result<()> {
    let rounds = env_u64("MUSICFS_FAULT_ROUNDS", 3)?;
    let seed = env_u64("MUSICFS_FAULT_SEED", std::process::id() as u64)?;
    println!("faulty origin: {rounds} rounds, MUSICFS_FAULT_SEED={seed}");
    let lib = S3Library::start_faulty(|dir| generate(dir, &TRACKS), seed)?;
    let faulty = lib.faulty.as_ref().context("no faulty proxy")?;
    let sums = lib.bucket_sums()?;
    let mount = MountedFs::start(lib.mount_options())?;
    let state = mount.state_dir().to_path_buf();
    // Late answers fail a read in time rather than hold it: a short request deadline.
    let key = format!("origin.{}.timeout_secs", lib.spec);
    musicfs_cmd_ok(&state, &["config", "set", &key, "2"])?;
    let titles: Vec<&str> = TRACKS.iter().map(|t| t.title).collect();
    let files: Vec<(PathBuf, Vec<u8>)> = titles
        .iter()
        .map(|t| Ok((served(&mount, t)?, fs::read(lib.source(t)?)?)))
        .collect::<Result<_>>()?;

    faulty.set(Faults {
        error: 0.12,
        short: 0.15,
        cut: 0.08,
        etag_flip: 0.08,
        slow: 0.1,
        delay: Duration::from_millis(40),
    });
    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    let mut wrong = Vec::new();
    for round in 0..rounds {
        // Every read of the round goes to the wire.
        musicfs_cmd_ok(&state, &["cache", "clear"])?;
        for (path, want) in &files {
            // An open may ask the origin (EIO under the faults): counted like any read.
            if let Err(e) = musicfs_tests::remote::evict_pages(path) {
                let e = e.downcast::<std::io::Error>()?;
                tally.failed(&e);
                continue;
            }
            match read_all(path) {
                Ok(got) if got == *want => tally.ok += 1,
                Ok(got) => wrong.push(format!(
                    "round {round}: {} read whole: {} bytes, not the origin's {}",
                    path.display(),
                    got.len(),
                    want.len()
                )),
                Err(e) => tally.failed(&e),
            }
            // Random reads at random offsets, each checked against the origin's bytes.
            let f = match fs::File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    tally.failed(&e);
                    continue;
                }
            };
            for _ in 0..8 {
                let at = rng.below(want.len() as u64);
                let len = 1 + rng.below(256 * 1024) as usize;
                let mut buf = vec![0u8; len];
                match f.read_at(&mut buf, at) {
                    Ok(n) => {
                        let end = (at as usize + n).min(want.len());
                        if buf[..n] != want[at as usize..end] {
                            wrong.push(format!(
                                "round {round}: {} at {at}+{n}: bytes differ",
                                path.display()
                            ));
                        } else {
                            tally.ok += 1;
                        }
                    }
                    Err(e) => tally.failed(&e),
                }
            }
        }
        // A refresh under the faults: listings fail or succeed, no track may go.
        let _ = musicfs_tests::harness::musicfs_cmd(&state, &["refresh"])?;
        for t in &titles {
            served(&mount, t).with_context(|| format!("round {round}: {t} left the tree"))?;
        }
    }
    let injected = faulty.injected();
    println!("faults injected: {injected:?}; reads: {tally:?}");
    ensure!(
        wrong.is_empty(),
        "wrong bytes served under faults (seed {seed}):\n{}\nlog:\n{}",
        wrong.join("\n"),
        mount.log()
    );
    // The run is only worth something if every kind of fault happened and reads got
    // through between them.
    ensure!(
        injected.errors > 0
            && injected.shorts > 0
            && injected.cuts > 0
            && injected.etag_flips > 0
            && injected.slows > 0,
        "not every fault was injected (seed {seed}): {injected:?}"
    );
    ensure!(tally.ok > 0, "no read got through the faults: {tally:?}");

    // The faults stop: everything reads bit-exact at once, from a cold cache and from
    // whatever the cache kept during the faults.
    faulty.set(Faults::default());
    for pass in ["after the faults", "from the cache"] {
        for (path, want) in &files {
            musicfs_tests::remote::evict_pages(path)?;
            let got = read_all(path)
                .with_context(|| format!("{pass}: {}; log:\n{}", path.display(), mount.log()))?;
            ensure!(
                got == *want,
                "{pass}: {} reads wrong (seed {seed})",
                path.display()
            );
        }
    }
    ensure!(
        !mount.log().contains("panicked"),
        "the daemon panicked:\n{}",
        mount.log()
    );
    drop(mount);
    cache_verify(&state)?;
    ensure!(lib.bucket_sums()? == sums, "the bucket changed");
    Ok(())
}
