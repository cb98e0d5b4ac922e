#![cfg(feature = "e2e")]
//! An S3 origin end to end: a library in an `s3s-fs` bucket, reached through a counting
//! proxy, is scanned by `musicfs scan` reading only what the tags need (a small share of
//! the library's bytes; nothing but listings when nothing changed), then served by
//! `musicfsd` byte for byte, read-only, and the bucket is left as it was.
//!
//! Needs `s3s-fs` (`tools/run-tests.sh` installs it) and ffmpeg: without them the test
//! fails saying so, it never passes without having run.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::fixtures::{audio_md5, ffmpeg_available};
use musicfs_tests::harness::{
    binary, checksum_tree, musicfs_tree, run_ok, walk_files, xxh3_file, MountOptions, MountedFs,
};
use musicfs_tests::remote::{generate, Track};
use musicfs_tests::servers::proxy::CountingProxy;
use musicfs_tests::servers::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "music";
const PREFIX: &str = "library";

const TRACKS: &[Track<'static>] = &[
    Track {
        // About 30 MB: noise barely compresses.
        rel: "Noise Artist/Big Album/01 - Noise.flac",
        input: "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=340",
        codec: &["-c:a", "flac", "-sample_fmt", "s16"],
        title: "Noise",
    },
    Track {
        rel: "Tone Artist/Mp3 Album/01 - First.mp3",
        input: "sine=frequency=440:sample_rate=44100:duration=150",
        codec: &[
            "-c:a",
            "libmp3lame",
            "-b:a",
            "192k",
            "-id3v2_version",
            "3",
            "-write_id3v1",
            "1",
        ],
        title: "First",
    },
    Track {
        rel: "Tone Artist/Mp3 Album/02 - Second.mp3",
        input: "sine=frequency=550:sample_rate=44100:duration=120",
        codec: &["-c:a", "libmp3lame", "-b:a", "160k", "-id3v2_version", "4"],
        title: "Second",
    },
    Track {
        // ffmpeg writes the moov box after the audio unless told otherwise: the tag
        // reader must fetch the tail, not the whole file.
        rel: "Tone Artist/M4a Album/01 - Moov At End.m4a",
        input: "sine=frequency=660:sample_rate=44100:duration=150",
        codec: &["-c:a", "aac", "-b:a", "160k"],
        title: "Moov At End",
    },
    Track {
        rel: "Tone Artist/Ogg Album/01 - Vorbis.ogg",
        input: "sine=frequency=330:sample_rate=44100:duration=150",
        codec: &["-c:a", "libvorbis", "-q:a", "5"],
        title: "Vorbis",
    },
];

/// `musicfs scan` of `spec` into `state` (credentials in the environment).
fn scan(spec: &str, state: &Path) -> Result<String> {
    let mut cmd = Command::new(binary("musicfs")?);
    cmd.args(["scan", "--origin", spec, "--state-dir"])
        .arg(state)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE");
    let out = run_ok(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// xxh3 of every file under `dir`, as a sorted list (the mount names files by template,
/// the bucket by path: contents are what must match).
fn contents(dir: &Path) -> Result<Vec<(u64, u64)>> {
    let mut sums = Vec::new();
    for f in walk_files(dir)? {
        sums.push((xxh3_file(&f)?, fs::metadata(&f)?.len()));
    }
    sums.sort_unstable();
    Ok(sums)
}

#[test]
fn an_s3_origin_is_scanned_cheaply_and_served_byte_for_byte_read_only() -> Result<()> {
    if !ffmpeg_available() {
        bail!("ffmpeg is not installed: the S3 test cannot generate its library");
    }
    S3Server::binary()?;
    let tmp = tempfile::Builder::new().prefix("musicfs-s3-").tempdir()?;
    let root = tmp.path().join("s3root");
    let library = root.join(BUCKET).join(PREFIX);
    fs::create_dir_all(&library)?;
    generate(&library, TRACKS)?;
    let total: u64 = walk_files(&library)?
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()))
        .sum::<io::Result<u64>>()?;
    let before: BTreeMap<PathBuf, _> = checksum_tree(&root.join(BUCKET))?;

    let server = S3Server::start(&root, &tmp.path().join("s3s-fs.log"))?;
    let proxy = CountingProxy::start(server.port())?;
    let spec = format!(
        "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true",
        proxy.port()
    );
    let state = tmp.path().join("state");
    fs::create_dir(&state)?;

    // First scan: every track read, a small share of its bytes.
    let log = scan(&spec, &state)?;
    let first = proxy.moved();
    let ratio = first.down as f64 / total as f64;
    println!(
        "first scan: {} bytes down, {} up, {} connections for {} files of {total} bytes: {:.3}%",
        first.down,
        first.up,
        first.connections,
        TRACKS.len(),
        ratio * 100.0
    );
    let tree = musicfs_tree(&state, false)?;
    for t in TRACKS {
        ensure!(
            tree.iter().any(|p| p.to_string_lossy().contains(t.title)),
            "{} is not in the tree {tree:?}; scan log:\n{log}",
            t.title
        );
    }
    ensure!(
        ratio < 0.01,
        "the scan moved {:.2}% of the library ({} of {total} bytes)",
        ratio * 100.0,
        first.down
    );

    // Second scan, nothing changed: listings only, no object read.
    scan(&spec, &state)?;
    let second = proxy.moved();
    let (down, up) = (second.down - first.down, second.up - first.up);
    println!("second scan: {down} bytes down, {up} up");
    // The tag reader's smallest fetch is 16 KiB: half of one per file means no object was
    // read (the listings of the few directories are a few KiB).
    let half_a_block_per_file = TRACKS.len() as u64 * 8 * 1024;
    ensure!(
        down < half_a_block_per_file,
        "an unchanged rescan moved {down} bytes: objects were read"
    );

    // Served through the mount: the same bytes, and the same audio.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let mut opts = MountOptions::new([PathBuf::from(&spec)]);
    opts.state_dir = Some(state.clone());
    let mount = MountedFs::start(opts)?;
    let served = contents(mount.mountpoint())?;
    ensure!(
        served == contents(&library)?,
        "the mount's files differ from the bucket's; daemon log:\n{}",
        mount.log()
    );
    for file in walk_files(mount.mountpoint())? {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "mp3" | "m4a" | "ogg") {
            continue;
        }
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let source = TRACKS
            .iter()
            .find(|t| name.contains(t.title))
            .with_context(|| format!("no source for {}", file.display()))?;
        ensure!(
            audio_md5(&file)? == audio_md5(&library.join(source.rel))?,
            "the audio of {} differs",
            file.display()
        );
    }

    // Read-only: writes fail with EROFS.
    let some = walk_files(mount.mountpoint())?
        .into_iter()
        .next()
        .context("the mount is empty")?;
    for attempt in [
        fs::OpenOptions::new().write(true).open(&some).map(drop),
        fs::write(mount.path("new.flac"), b"x"),
    ] {
        match attempt {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            other => bail!("a write through the mount gave {other:?}, not EROFS"),
        }
    }
    drop(mount);
    drop(proxy);
    drop(server);

    let after = checksum_tree(&root.join(BUCKET))?;
    ensure!(
        before == after,
        "the bucket changed: {before:?} -> {after:?}"
    );
    Ok(())
}
