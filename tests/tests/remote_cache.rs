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
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::fixtures::ffmpeg_available;
use musicfs_tests::harness::{
    binary, checksum_tree, run_ok, walk_files, xxh3_file, MountOptions, MountedFs,
};
use musicfs_tests::servers::proxy::CountingProxy;
use musicfs_tests::servers::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "music";
const BIG: &str = "Noise Artist/Big Album/01 - Noise.flac";
const UNREAD: &str = "Tone Artist/Later/01 - Later.mp3";

fn generate(dir: &Path) -> Result<()> {
    let tracks: [(&str, &str, &[&str], &str); 4] = [
        (
            BIG,
            "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=340",
            &["-c:a", "flac", "-sample_fmt", "s16"],
            "Noise",
        ),
        (
            "Tone Artist/Album/01 - One.mp3",
            "sine=frequency=440:sample_rate=44100:duration=60",
            &["-c:a", "libmp3lame", "-b:a", "192k"],
            "One",
        ),
        (
            "Tone Artist/Album/02 - Two.flac",
            "sine=frequency=550:sample_rate=44100:duration=40",
            &["-c:a", "flac"],
            "Two",
        ),
        (
            UNREAD,
            "sine=frequency=660:sample_rate=44100:duration=60",
            &["-c:a", "libmp3lame", "-b:a", "128k"],
            "Later",
        ),
    ];
    for (rel, input, codec, title) in tracks {
        let out = dir.join(rel);
        fs::create_dir_all(out.parent().context("no parent")?)?;
        let artist = rel.split('/').next().unwrap_or("Artist");
        let album = rel.split('/').nth(1).unwrap_or("Album");
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", input])
            .args(["-ac", "2"])
            .args(codec)
            .args(["-metadata", &format!("title={title}")])
            .args(["-metadata", &format!("artist={artist}")])
            .args([
                "-metadata",
                &format!("album={album}"),
                "-metadata",
                "track=1",
            ])
            .arg(&out);
        run_ok(&mut cmd).with_context(|| format!("generating {rel}"))?;
    }
    Ok(())
}

/// Where a FLAC file's metadata blocks end.
fn flac_tag_region(bytes: &[u8]) -> Result<u64> {
    ensure!(bytes.starts_with(b"fLaC"), "not a FLAC file");
    let mut at = 4usize;
    loop {
        let h = bytes.get(at..at + 4).context("truncated FLAC metadata")?;
        let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        at += 4 + len;
        if h[0] & 0x80 != 0 {
            return Ok(at as u64);
        }
    }
}

/// Rewrites the value of the `title` comment (ASCII case ignored in the key) from `from`
/// to `to` (same length) in the file's first `limit` bytes, in place: a tagger's in-place
/// edit of a Vorbis comment.
fn retitle_in_place(path: &Path, from: &str, to: &str, limit: u64) -> Result<()> {
    ensure!(from.len() == to.len());
    let mut bytes = fs::read(path)?;
    let needle = format!("title={from}");
    let head = &bytes[..(limit as usize).min(bytes.len())];
    let at = head
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        .with_context(|| format!("{needle:?} not in the tag region"))?;
    let value = at + "title=".len();
    bytes[value..value + to.len()].copy_from_slice(to.as_bytes());
    fs::write(path, bytes)?;
    Ok(())
}

fn scan(spec: &str, state: &Path) -> Result<()> {
    let mut cmd = Command::new(binary("musicfs")?);
    cmd.args(["scan", "--origin", spec, "--state-dir"])
        .arg(state);
    run_ok(&mut cmd)?;
    Ok(())
}

/// The mount's file whose name holds `title`.
fn served(mount: &MountedFs, title: &str) -> Result<PathBuf> {
    walk_files(mount.mountpoint())?
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(title))
        })
        .with_context(|| format!("no {title} in the mount"))
}

/// Waits until nothing crossed `proxy` for 1.5 s (at most a minute).
fn quiet(proxy: &CountingProxy) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (proxy.moved(), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = proxy.moved();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(1500) {
            return Ok(());
        }
    }
    bail!("the daemon kept talking to the server for a minute")
}

fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn remote_files_play_from_the_cache_a_tag_edit_costs_its_tag_region_and_offline_is_clean(
) -> Result<()> {
    ensure!(
        ffmpeg_available(),
        "ffmpeg is missing: install it (tools/run-tests.sh does)"
    );
    S3Server::binary()?;
    let work = tempfile::tempdir()?;
    let root = work.path().join("s3");
    let library = root.join(BUCKET).join("lib");
    generate(&library)?;
    let server = S3Server::start(&root, &work.path().join("s3s-fs.log"))?;
    let proxy = CountingProxy::start(server.port())?;
    let spec = format!(
        "s3://{BUCKET}/lib?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true",
        proxy.port()
    );
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let state = work.path().join("state");
    scan(&spec, &state)?;

    // 1. Every track but one read through the mount: the same bytes as the bucket's.
    let mut opts = MountOptions::new([PathBuf::from(&spec)]);
    opts.state_dir = Some(state.clone());
    opts.log_level = Some("info,musicfs_index::refresh=debug".into());
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    for title in ["Noise", "One", "Two"] {
        let src = walk_files(&library)?
            .into_iter()
            .find(|p| p.to_string_lossy().contains(title))
            .context("source")?;
        ensure!(
            xxh3_file(&served(&mount, title)?)? == xxh3_file(&src)?,
            "{title} differs through the mount; log:\n{}",
            mount.log()
        );
    }
    drop(mount);

    // 2. A tag edit upstream (same length, in place: the padding keeps the size).
    let big = library.join(BIG);
    let old = fs::read(&big)?;
    let tag_region = flac_tag_region(&old)?;
    retitle_in_place(&big, "Noise", "Nuise", tag_region)?;
    let edited = fs::read(&big)?;
    scan(&spec, &state)?;
    let (mount, _) = MountedFs::start_watching(opts.clone(), Duration::from_secs(120))?;
    // The start-up reconcile and the refresh asked for may overlap the measurement
    // (listings): wait until nothing has moved for a while.
    let path = served(&mount, "Nuise")?;
    quiet(&proxy)?;
    let before = proxy.moved().down;
    let got = read_all(&path)?;
    let cost = proxy.moved().down - before;
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
    proxy.set_down(true);
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
    proxy.set_down(false);
    let want = fs::read(library.join(UNREAD))?;
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
    let mut verify = Command::new(binary("musicfs")?);
    verify.args(["cache", "verify", "--state-dir"]).arg(&state);
    run_ok(&mut verify).context("musicfs cache verify")?;
    let sums = checksum_tree(&library)?;
    drop(proxy);
    drop(server);
    ensure!(sums == checksum_tree(&library)?, "the bucket changed");
    ensure!(fs::read(&big)? == edited, "the bucket's FLAC changed");
    Ok(())
}
