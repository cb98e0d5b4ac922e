#![cfg(feature = "e2e")]
//! The SMB origin end to end: a private `smbd` serves generated audio (a ~30 MB FLAC, small
//! FLAC, MP3, M4A and Ogg files); `musicfs scan` reads it through the SMB driver with the
//! password from a file named in the config's `[[origin]]` table; `musicfsd` mounts it and
//! every track reads back byte for byte. The share is left untouched, writes fail with
//! EROFS, and a wrong password is refused with a message that does not show it.
//!
//! Needs Samba (`smbd`, `smbpasswd`) and ffmpeg: without them these tests fail, saying so.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use musicfs_tests::fixtures::ffmpeg_available;
use musicfs_tests::harness::{
    audio_md5, binary, checksum_tree, encode_flac, run_ok, walk_files, without_album_extras,
    xxh3_file, MountOptions, MountedFs,
};
use musicfs_tests::servers::smb::SmbServer;

fn start_server() -> SmbServer {
    assert!(
        ffmpeg_available(),
        "ffmpeg is required for the SMB tests (apt-get install ffmpeg); refusing to pass silently"
    );
    SmbServer::start().unwrap_or_else(|e| panic!("cannot run the SMB origin tests: {e:#}"))
}

/// One small lossy track: `codec` args, written by ffmpeg to `path` with tags.
fn encode(path: &Path, codec: &[&str], artist: &str, title: &str, freq: u32) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency={freq}:duration=2"))
        .args(codec)
        .args(["-metadata", &format!("artist={artist}")])
        .args(["-metadata", &format!("title={title}")])
        .args(["-metadata", "album=SMB Album"])
        .arg(path);
    run_ok(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Fills the share; returns the audio files (relative paths).
fn fill_share(share: &Path) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let big = share.join("Noise Artist/Long Album/01 - Long Noise.flac");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    // White noise does not compress: ~88 KB per second of mono 44.1 kHz.
    encode_flac(
        &big,
        345.0,
        7,
        true,
        &[
            ("ARTIST", "Noise Artist"),
            ("ALBUM", "Long Album"),
            ("TITLE", "Long Noise"),
            ("TRACKNUMBER", "1"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    made.push(big);
    let small = share.join("Sine Artist/Sines/02 - Sine.flac");
    fs::create_dir_all(small.parent().unwrap()).unwrap();
    encode_flac(
        &small,
        2.0,
        440,
        false,
        &[
            ("ARTIST", "Sine Artist"),
            ("TITLE", "Sine"),
            ("ALBUM", "Sines"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    made.push(small);
    let lossy: [(&str, &[&str], &str, u32); 3] = [
        (
            "Mixed/03 - Mp3 Song.mp3",
            &["-c:a", "libmp3lame", "-b:a", "128k"],
            "Mp3 Song",
            523,
        ),
        (
            "Mixed/04 - M4a Song.m4a",
            &["-c:a", "aac", "-b:a", "96k"],
            "M4a Song",
            587,
        ),
        (
            "Mixed/sub dir/05 - Ogg Song.ogg",
            &["-c:a", "libvorbis", "-q:a", "2"],
            "Ogg Song",
            659,
        ),
    ];
    for (rel, codec, title, freq) in lossy {
        let path = share.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        encode(&path, codec, "Mixed Artist", title, freq);
        made.push(path);
    }
    fs::write(share.join("Mixed/notes.txt"), "not audio\n").unwrap();
    made
}

/// A config file with the share as its one origin, its password in a file beside it.
fn write_config(server: &SmbServer, name: &str, password: &str) -> PathBuf {
    let pw = server.dir().join(format!("{name}.pw"));
    fs::write(&pw, format!("{password}\n")).unwrap();
    let cfg = server.dir().join(format!("{name}.toml"));
    let text = format!(
        "[[origin]]\npath = \"{}\"\npassword_file = \"{}\"\ntimeout_secs = 30\n",
        server.spec(),
        pw.display()
    );
    fs::write(&cfg, text).unwrap();
    cfg
}

fn scan(config: &Path, state: &Path) -> Output {
    Command::new(binary("musicfs").unwrap())
        .arg("--config")
        .arg(config)
        .arg("scan")
        .arg("--state-dir")
        .arg(state)
        .arg("--log-level")
        .arg("info")
        .env_remove("MUSICFS_SMB_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running musicfs scan")
}

/// The payload bytes the SMB driver logged at the end of the scan.
fn scanned_bytes(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.contains("smb origin traffic"))
        .find_map(|l| {
            let at = l.find("bytes_in=")? + "bytes_in=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the scan logged no SMB traffic line:\n{stderr}"))
}

#[test]
fn an_smb_share_scans_mounts_and_reads_back_exactly() {
    let server = start_server();
    let share = server.share_dir();
    let audio = fill_share(&share);
    let before = checksum_tree(&share).unwrap();
    let library_bytes: u64 = audio.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let big = fs::metadata(&audio[0]).unwrap().len();
    assert!(big > 28 << 20, "the large FLAC is only {big} bytes");

    let config = write_config(&server, "good", server.password());
    let state = tempfile::tempdir().unwrap();
    let out = scan(&config, state.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "scan failed:\n{stderr}\nsmbd log:\n{}",
        server.log()
    );
    assert!(!stderr.contains(server.password()), "{stderr}");
    let read = scanned_bytes(&stderr);
    println!(
        "scan read {read} bytes over SMB for a library of {library_bytes} bytes: ratio {:.4}",
        read as f64 / library_bytes as f64
    );

    let mut opts = MountOptions::new(Vec::<PathBuf>::new());
    opts.config = Some(config.clone());
    opts.state_dir = Some(state.path().to_path_buf());
    let fs_ = MountedFs::start(opts).unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));

    // Every track through the mount has the bytes of exactly one source file.
    let by_hash: BTreeMap<u64, PathBuf> = audio
        .iter()
        .map(|p| (xxh3_file(p).unwrap(), p.clone()))
        .collect();
    // notes.txt beside the tracks shows in its album folder: not a track.
    let files = without_album_extras(walk_files(fs_.mountpoint()).unwrap());
    assert_eq!(
        files.len(),
        audio.len(),
        "the mount shows {files:?}; scan:\n{stderr}\ndaemon log:\n{}",
        fs_.log()
    );
    let mut matched = BTreeMap::new();
    for f in &files {
        let h = xxh3_file(f).unwrap_or_else(|e| panic!("{e:#}\n{}", fs_.log()));
        let src = by_hash
            .get(&h)
            .unwrap_or_else(|| panic!("{} reads back as no source file", f.display()));
        assert_eq!(
            fs::metadata(f).unwrap().len(),
            fs::metadata(src).unwrap().len()
        );
        matched.insert(src.clone(), f.clone());
    }
    assert_eq!(matched.len(), audio.len(), "some sources show twice");

    // Decoded audio is the same for the large FLAC and each lossy format.
    for src in [&audio[0], &audio[2], &audio[3], &audio[4]] {
        let shown = &matched[src];
        assert_eq!(
            audio_md5(shown).unwrap(),
            audio_md5(src).unwrap(),
            "{}",
            src.display()
        );
    }

    // Read-only: neither a new file nor a write to a track gets through.
    let erofs = |r: std::io::Result<fs::File>| match r {
        Ok(_) => panic!("a write was let through"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}"),
    };
    erofs(fs::File::create(fs_.mountpoint().join("new.txt")));
    erofs(fs::OpenOptions::new().write(true).open(&files[0]));
    drop(fs_);

    assert_eq!(
        checksum_tree(&share).unwrap(),
        before,
        "the share changed under a read-only origin"
    );
}

#[test]
fn a_wrong_password_is_refused_without_showing_it() {
    let server = start_server();
    fs::create_dir_all(server.share_dir().join("a")).unwrap();
    let wrong = "Wr0ng-Secret-Passw0rd";
    let config = write_config(&server, "bad", wrong);
    let state = tempfile::tempdir().unwrap();
    let out = scan(&config, state.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a wrong password scanned:\n{stderr}");
    assert!(
        stderr.contains("refused the login") && stderr.contains(server.user()),
        "the error does not say the login was refused:\n{stderr}"
    );
    assert!(!stderr.contains(wrong), "the password shows:\n{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(wrong));
}

/// Many listings at once on one origin all end, each with every entry. smb 0.12's
/// directory query stream could lose the wakeup that asks for its next batch, so a listing
/// hung until its deadline (14 of 75 here before the driver worked around it).
#[test]
fn parallel_listings_all_end_with_every_entry() {
    use musicfs_storage::origin::{open_origin_with, OriginSettings, OriginSpec};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    let server = SmbServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    let share = server.share_dir();
    for d in ["a/b", "a/c", "d"] {
        fs::create_dir_all(share.join(d)).unwrap();
        fs::write(share.join(d).join("x.txt"), "x").unwrap();
    }
    let pw = server.dir().join("list.pw");
    fs::write(&pw, format!("{}\n", server.password())).unwrap();
    let mut settings = OriginSettings {
        password_file: Some(pw),
        ..OriginSettings::default()
    };
    // A listing of a loopback share takes milliseconds: one that takes seconds has hung.
    settings.remote.timeout = Duration::from_secs(5);
    settings.remote.attempts = 1;
    let spec = OriginSpec::parse(&server.spec()).unwrap();
    let origin = open_origin_with(&spec, &settings).unwrap();
    let expected = [("", 2), ("a", 2), ("a/b", 1), ("d", 1)];
    let failures = AtomicU32::new(0);
    std::thread::scope(|scope| {
        for t in 0..3 {
            let (origin, failures) = (&origin, &failures);
            scope.spawn(move || {
                for i in 0..25 {
                    let (dir, want) = expected[(i + t) % expected.len()];
                    let mut n = 0;
                    match origin.list(Path::new(dir), &mut |_| n += 1) {
                        Ok(()) if n == want => {}
                        Ok(()) => {
                            eprintln!("list {dir:?}: {n} entries, not {want}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("list {dir:?}: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0, "some listings failed");
}
