//! A real player for end-to-end tests: an `mpd` on a free localhost port, driven with
//! `mpc` and its protocol.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, run_ok};

/// How long mpd may take to start listening (a failure bound, not a speed target).
pub const MPD_DEADLINE: Duration = Duration::from_secs(30);

/// An `mpd --no-daemon` serving `music_dir` on a free localhost port; killed on drop.
pub struct Mpd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mpd {
    pub fn start(music_dir: &Path) -> Mpd {
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

    pub fn log(&self) -> String {
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

    pub fn mpc(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("mpc")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
        )
        .unwrap_or_else(|e| panic!("{e:#}\nmpd log:\n{}", self.log()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one protocol command and returns its `key: value` lines.
    pub fn command(&self, cmd: &str) -> Vec<(String, String)> {
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
