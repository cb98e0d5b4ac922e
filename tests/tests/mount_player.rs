#![cfg(feature = "e2e")]
//! A real player on the mount: mpd indexes the fixture library through MusicFS and plays
//! a track from it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use musicfs_tests::harness::{self, library, run_ok, MountOptions, MountedFs};

const MPD_DEADLINE: Duration = Duration::from_secs(30);

/// An `mpd --no-daemon` serving `music_dir` on a free localhost port; killed on drop.
struct Mpd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mpd {
    fn start(music_dir: &Path) -> Mpd {
        let dir = tempfile::tempdir().unwrap();
        // Port 0 asks the kernel for a free port; mpd binds it right after we let it go.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path();
        let conf = format!(
            "music_directory \"{music}\"\n\
             db_file \"{db}\"\n\
             state_file \"{state}\"\n\
             log_file \"{log}\"\n\
             bind_to_address \"127.0.0.1\"\n\
             port \"{port}\"\n\
             auto_update \"no\"\n\
             zeroconf_enabled \"no\"\n\
             audio_output {{\n  type \"null\"\n  name \"null\"\n}}\n",
            music = music_dir.display(),
            db = d.join("db").display(),
            state = d.join("state").display(),
            log = d.join("mpd.log").display(),
        );
        let conf_path = d.join("mpd.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new("mpd")
            .arg("--no-daemon")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("mpd.stderr")).unwrap())
            .spawn()
            .expect("spawning mpd");
        let mut mpd = Mpd { child, port, dir };
        mpd.wait_ready();
        mpd
    }

    fn log(&self) -> String {
        let read = |name| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("mpd.stderr"), read("mpd.log"))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + MPD_DEADLINE;
        loop {
            if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                let mut greeting = String::new();
                if BufReader::new(stream).read_line(&mut greeting).is_ok()
                    && greeting.starts_with("OK MPD")
                {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("mpd exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mpd not listening within {MPD_DEADLINE:?}:\n{}",
                self.log()
            );
            // Nothing to wait on for "port bound" but the port itself: retry shortly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn mpc(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("mpc")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
        )
        .unwrap_or_else(|e| panic!("{e:#}\nmpd log:\n{}", self.log()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one protocol command and returns its `key: value` lines.
    fn command(&self, cmd: &str) -> Vec<(String, String)> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        writeln!(stream, "{cmd}").unwrap();
        let mut pairs = Vec::new();
        loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "mpd closed the connection"
            );
            let line = line.trim_end();
            if line == "OK" {
                return pairs;
            }
            assert!(!line.starts_with("ACK"), "mpd refused {cmd:?}: {line}");
            if let Some((k, v)) = line.split_once(": ") {
                pairs.push((k.to_string(), v.to_string()));
            }
        }
    }
}

impl Drop for Mpd {
    fn drop(&mut self) {
        let _ = harness::send_signal(self.child.id(), libc::SIGTERM);
        if !matches!(
            harness::wait_child(&mut self.child, Duration::from_secs(10)),
            Ok(Some(_))
        ) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn mpd_indexes_every_good_track_and_plays_one() {
    let fs = MountedFs::start(MountOptions::new([library().root.clone()])).unwrap();
    let good: BTreeSet<&PathBuf> = library().good.iter().collect();
    let good_virtual: BTreeSet<String> = fs
        .track_sources(&[library().root.clone()])
        .unwrap()
        .into_iter()
        .filter(|(_, source)| good.contains(source))
        .map(|(virt, _)| {
            virt.strip_prefix(fs.mountpoint())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // A symlink to another good track is that track, shown once.
    assert_eq!(good_virtual.len(), distinct_good());

    let mpd = Mpd::start(fs.mountpoint());
    mpd.mpc(&["update", "--wait"]);
    let listed: BTreeSet<String> = mpd.mpc(&["listall"]).lines().map(str::to_string).collect();
    let missing: Vec<&String> = good_virtual.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "mpd did not index {missing:?}; it lists {listed:?}\n{}",
        mpd.log()
    );

    let track = good_virtual.iter().next().unwrap();
    plays(&mpd, track);
    mpd.mpc(&["stop"]);
    drop(mpd);
    assert!(
        fs.mount_entry().unwrap().is_some(),
        "daemon log:\n{}",
        fs.log()
    );
}

/// Has mpd play `track` (a path it indexed) and waits until its elapsed time advances.
fn plays(mpd: &Mpd, track: &str) {
    mpd.mpc(&["clear"]);
    mpd.mpc(&["add", track]);
    // Repeat the one track so a short fixture cannot end before we look.
    mpd.mpc(&["repeat", "on"]);
    mpd.mpc(&["single", "on"]);
    mpd.mpc(&["play"]);
    assert!(mpd.mpc(&["status"]).contains("[playing]"), "{}", mpd.log());

    let deadline = Instant::now() + MPD_DEADLINE;
    loop {
        let status = mpd.command("status");
        let get = |k: &str| {
            status
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let state = get("state").unwrap_or_default();
        let elapsed: f64 = get("elapsed").and_then(|e| e.parse().ok()).unwrap_or(0.0);
        assert_ne!(state, "stop", "playback stopped: {status:?}\n{}", mpd.log());
        if state == "play" && elapsed > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "elapsed never advanced: {status:?}\n{}",
            mpd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mpd_lists_a_collection_through_its_symlinks_and_plays_one() {
    let fs = MountedFs::start(MountOptions::new([library().root.clone()])).unwrap();
    // The search index fills in the background once the mount is up.
    harness::wait_for_log_line(
        fs.log_path(),
        0,
        &["search index updated", "cannot update the search index"],
        MPD_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fs.log()));
    let collection = fs.mountpoint().join(".collections/Recently Added");
    let links: BTreeSet<String> = fs::read_dir(&collection)
        .unwrap_or_else(|e| panic!("{e}\n{}", fs.log()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), distinct_good(), "{links:?}");

    // mpd skips dot-names inside its music directory, not the directory itself.
    let mpd = Mpd::start(&fs.mountpoint().join(".collections"));
    mpd.mpc(&["update", "--wait"]);
    let listed: BTreeSet<String> = mpd.mpc(&["listall"]).lines().map(str::to_string).collect();
    let expected: BTreeSet<String> = links
        .iter()
        .map(|l| format!("Recently Added/{l}"))
        .collect();
    let missing: Vec<&String> = expected.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "mpd did not index {missing:?}; it lists {listed:?}\n{}",
        mpd.log()
    );
    plays(&mpd, expected.iter().next().unwrap());
    mpd.mpc(&["stop"]);
}

/// The good tracks of the fixture library as the mount shows them: a symlink to another
/// of them is the same track.
fn distinct_good() -> usize {
    library()
        .good
        .iter()
        .filter(|p| !fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        .count()
}
