#![cfg(feature = "e2e")]
//! The control plane on a real mount: every `musicfs` command against a running daemon
//! (with its effect checked), the same events in the same order over gRPC, Server-Sent
//! Events, the access log and a webhook (HMAC checked), Prometheus `/metrics` parsed,
//! `/health`, a drain, a socket that refuses another user, the chunk cache cleared through
//! the daemon, and the systemd notify protocol (READY, WATCHDOG, STOPPING) with the unit
//! files checked by `systemd-analyze verify`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hmac::{Hmac, Mac};
use musicfs_tests::harness::{
    binary, checksum_tree, flac_with_comments, force_unmount, one_second_flac, wait_child,
    MountOptions, MountedFs, RunAs,
};
use musicfs_tests::harness::{musicfs_cmd as musicfs, musicfs_cmd_ok as musicfs_ok};
use serde_json::Value;

/// The failure bound for something to happen (not a speed target).
const WITHIN: Duration = Duration::from_secs(30);
const SECRET: &str = "webhook-secret-for-tests";
/// The kinds the scripted session produces.
const SESSION_KINDS: [&str; 5] = [
    "file.opened",
    "file.read",
    "file.closed",
    "library.changed",
    "origin.health",
];

fn wait_until(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + WITHIN;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `musicfs --json ARGS`, parsed.
fn musicfs_json(state: &Path, args: &[&str]) -> Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = musicfs_ok(state, &all)?;
    serde_json::from_str(&text).with_context(|| format!("musicfs {args:?} printed {text}"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(WITHIN))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:.200}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Events as one consumer saw them, in order.
type Seen = Arc<Mutex<Vec<Value>>>;

/// Reads `/events` (Server-Sent Events) into a list, on a thread.
fn sse_reader(port: u16) -> Result<Seen> {
    let seen: Seen = Arc::default();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let out = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    out.lock().unwrap().push(v);
                }
            }
        }
    });
    Ok(seen)
}

/// A webhook receiver: keeps each POST's body after checking its HMAC (a bad or missing
/// signature is recorded as an error).
struct Receiver {
    port: u16,
    seen: Seen,
    bad: Arc<Mutex<Vec<String>>>,
}

fn webhook_receiver() -> Result<Receiver> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let seen: Seen = Arc::default();
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s2, b2) = (seen.clone(), bad.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (s3, b3) = (s2.clone(), b2.clone());
            std::thread::spawn(move || serve_hooks(conn, &s3, &b3));
        }
    });
    Ok(Receiver { port, seen, bad })
}

fn serve_hooks(conn: TcpStream, seen: &Seen, bad: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    let mut w = conn;
    loop {
        let mut headers = BTreeMap::new();
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(&body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match headers.get("x-musicfs-signature") {
            Some(sig) if *sig == format!("sha256={want}") => {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    seen.lock().unwrap().push(v);
                }
            }
            other => bad.lock().unwrap().push(format!(
                "signature {other:?} for {}",
                String::from_utf8_lossy(&body)
            )),
        }
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// A small origin of `n` one-second tracks of one album.
fn origin_with(dir: &Path, n: usize) -> Result<()> {
    fs::create_dir_all(dir)?;
    for i in 1..=n {
        add_track(dir, i, &format!("Song {i}"))?;
    }
    Ok(())
}

fn add_track(dir: &Path, i: usize, title: &str) -> Result<()> {
    let track = i.to_string();
    let bytes = flac_with_comments(
        one_second_flac(),
        &[
            ("ARTIST", "Control Artist"),
            ("ALBUM", "Control Album"),
            ("DATE", "2020"),
            ("TRACKNUMBER", &track),
            ("TITLE", title),
        ],
    )?;
    fs::write(dir.join(format!("t{i:02}.flac")), bytes)?;
    Ok(())
}

/// A daemon serving `origin` (watched by nobody: only refreshes see changes) with the
/// HTTP listener on `http`, health probes every 0.2 s and, when given, a webhook.
fn start(
    work: &Path,
    origin: &Path,
    http: u16,
    hook: Option<u16>,
    extra: &str,
) -> Result<MountedFs> {
    let secret = work.join("hook.secret");
    fs::write(&secret, format!("{SECRET}\n"))?;
    let mut config = format!(
        "metrics_listen = \"127.0.0.1:{http}\"\nprobe_interval_secs = 0.2\n\
         refresh_interval_secs = 0\n{extra}\n[[origin]]\npath = \"{}\"\nwatch = \"none\"\n",
        origin.display()
    );
    if let Some(port) = hook {
        config.push_str(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\n\
             events = [\"file.\", \"library.changed\", \"origin.health\"]\n",
            secret.display()
        ));
    }
    let path = work.join("musicfs.toml");
    fs::write(&path, config)?;
    let mut opts = MountOptions::new(Vec::<PathBuf>::new());
    opts.config = Some(path);
    opts.state_dir = Some(work.join("state"));
    MountedFs::start(opts)
}

fn album(mount: &MountedFs) -> PathBuf {
    mount.path("Control Artist/Control Album (2020) [FLAC]")
}

#[test]
fn every_command_drives_a_running_daemon() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    origin_with(&origin, 3)?;
    let before = checksum_tree(&origin)?;
    let http = free_port()?;
    let mut mount = start(work.path(), &origin, http, None, "")?;
    let state = mount.state_dir().to_path_buf();

    // A refresh waits for its own round: after it, the start-up reconcile is over.
    musicfs_ok(&state, &["refresh"])?;
    // status
    let s = musicfs_json(&state, &["status"])?;
    ensure!(s["tracks"] == 3, "{s}");
    ensure!(s["pid"] == mount.pid(), "{s}");
    ensure!(s["origins"][0]["state"] == "up", "{s}");
    ensure!(s["origins"][0]["tracks"] == 3, "{s}");
    let generation = s["generation"].as_u64().context("generation")?;
    let human = musicfs_ok(&state, &["status"])?;
    ensure!(human.contains("tracks\t3"), "{human}");

    // refresh: a track added to an origin nobody watches shows after it, and only then.
    add_track(&origin, 4, "Song 4")?;
    ensure!(!album(&mount).join("04 - Song 4.flac").exists());
    let r = musicfs_json(&state, &["refresh"])?;
    ensure!(r["published"] == true && r["added"] == 1, "{r}");
    ensure!(r["generation"].as_u64() > Some(generation), "{r}");
    ensure!(album(&mount).join("04 - Song 4.flac").exists());
    let r = musicfs_json(
        &state,
        &["refresh", "--origin", &origin.display().to_string()],
    )?;
    ensure!(r["published"] == false && r["error"] == "", "{r}");
    let bad = musicfs(&state, &["refresh", "--origin", "/no/such/origin"])?;
    ensure!(!bad.status.success());
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("no origin"));
    let p = musicfs_json(&state, &["progress"])?;
    ensure!(p["running"] == false && p["last_error"] == "", "{p}");

    // search, through the daemon
    let hits = musicfs_json(&state, &["search", "title:song"])?;
    ensure!(hits.as_array().map(Vec::len) == Some(4), "{hits}");
    ensure!(musicfs_ok(&state, &["search", "Song 4"])?.contains("04 - Song 4.flac"));

    // config: show, then runtime changes that take effect without a restart.
    let shown = musicfs_ok(&state, &["config", "show"])?;
    ensure!(shown.contains("refresh_interval_secs = 0"), "{shown}");
    let set = musicfs_json(&state, &["config", "set", "refresh_interval_secs", "0.3"])?;
    ensure!(set["previous"] == "0", "{set}");
    add_track(&origin, 5, "Song 5")?;
    wait_until("the periodic refresh to pick up Song 5", || {
        Ok(album(&mount).join("05 - Song 5.flac").exists())
    })?;
    ensure!(musicfs_ok(&state, &["config", "show"])?.contains("refresh_interval_secs = 0.3"));
    musicfs_ok(&state, &["config", "set", "refresh_interval_secs", "0"])?;
    musicfs_ok(
        &state,
        &["config", "set", "log_level", "info,musicfs_index=debug"],
    )?;
    musicfs_ok(&state, &["refresh"])?;
    ensure!(
        mount.log().contains("DEBUG"),
        "a debug line after log_level changed; log:\n{}",
        mount.log()
    );
    let refused = musicfs(&state, &["config", "set", "threads", "4"])?;
    ensure!(!refused.status.success());
    ensure!(String::from_utf8_lossy(&refused.stderr).contains("restart"));
    let refused = musicfs(&state, &["config", "set", "log_level", "[["])?;
    ensure!(!refused.status.success());
    let timeout = format!("origin.{}.timeout_secs", origin.display());
    let refused = musicfs(&state, &["config", "set", &timeout, "2"])?;
    ensure!(String::from_utf8_lossy(&refused.stderr).contains("local"));

    // An origin switched off: offline at once, its files fail; back on, they read.
    let spec = origin.display().to_string();
    let key = format!("origin.{spec}.enabled");
    musicfs_ok(&state, &["config", "set", &key, "false"])?;
    let s = musicfs_json(&state, &["status"])?;
    ensure!(s["origins"][0]["state"] == "offline", "{s}");
    ensure!(
        s["origins"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("disabled")),
        "{s}"
    );
    let song1 = album(&mount).join("01 - Song 1.flac");
    ensure!(fs::read(&song1).is_err(), "a disabled origin's file read");
    musicfs_ok(&state, &["config", "set", &key, "true"])?;
    wait_until("the origin to be up again", || {
        Ok(musicfs_json(&state, &["status"])?["origins"][0]["state"] == "up")
    })?;
    ensure!(fs::read(&song1)? == fs::read(origin.join("t01.flac"))?);

    // An origin added and removed at run time.
    let second = work.path().join("second");
    fs::create_dir_all(&second)?;
    let other = flac_with_comments(
        one_second_flac(),
        &[
            ("ARTIST", "Second Artist"),
            ("ALBUM", "Elsewhere"),
            ("TRACKNUMBER", "1"),
            ("TITLE", "Far"),
        ],
    )?;
    fs::write(second.join("far.flac"), other)?;
    let far = mount.path("Second Artist/Elsewhere [FLAC]/01 - Far.flac");
    let spec2 = second.display().to_string();
    let added = musicfs_json(&state, &["origin", "add", &spec2, "--name", "second"])?;
    ensure!(added["published"] == true && added["added"] == 1, "{added}");
    ensure!(fs::read(&far)? == fs::read(second.join("far.flac"))?);
    let s = musicfs_json(&state, &["status"])?;
    ensure!(s["origins"].as_array().map(Vec::len) == Some(2), "{s}");
    let again = musicfs(&state, &["origin", "add", &spec2])?;
    ensure!(String::from_utf8_lossy(&again.stderr).contains("already"));
    let missing = musicfs(&state, &["origin", "add", "/no/such/dir"])?;
    ensure!(!missing.status.success());
    let removed = musicfs_json(&state, &["origin", "remove", "second"])?;
    ensure!(removed["published"] == true, "{removed}");
    ensure!(!far.exists(), "a removed origin's track still shows");
    ensure!(song1.exists());
    let s = musicfs_json(&state, &["status"])?;
    ensure!(s["origins"].as_array().map(Vec::len) == Some(1), "{s}");
    // Back: its tracks were kept in the catalog.
    let back = musicfs_json(&state, &["origin", "add", &spec2])?;
    ensure!(back["published"] == true && back["added"] == 0, "{back}");
    ensure!(far.exists());
    musicfs_ok(&state, &["origin", "remove", &spec2])?;

    // prefetch (local files need none), cache (none without a remote origin)
    let pf = musicfs_json(&state, &["prefetch", "Control Artist"])?;
    ensure!(pf["files"] == 5 && pf["queued"] == 0, "{pf}");
    ensure!(!musicfs(&state, &["prefetch", "No Such Artist"])?
        .status
        .success());
    let cs = musicfs_json(&state, &["cache", "stats"])?;
    ensure!(cs["enabled"] == false, "{cs}");

    // /metrics: parsed, and the lookup histogram moves when lookups run.
    let lookups = |body: &str| -> Result<f64> {
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines)?;
        Ok(scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == "musicfs_fuse_op_duration_seconds"
                    && s.labels.get("op") == Some("lookup")
            })
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                _ => 0.0,
            })
            .sum())
    };
    let (code, body) = http_get(http, "/metrics")?;
    ensure!(code == 200, "{code} {body}");
    let first = lookups(&body)?;
    ensure!(body.contains("musicfs_snapshot_generation"), "{body}");
    for i in 0..20 {
        let _ = fs::metadata(album(&mount).join(format!("no such file {i}")));
    }
    let (_, body) = http_get(http, "/metrics")?;
    let second = lookups(&body)?;
    ensure!(
        second >= first + 20.0,
        "lookups counted {first} then {second}:\n{body}"
    );
    let (code, body) = http_get(http, "/health")?;
    ensure!(code == 200, "{code} {body}");

    // Drain: an open file keeps reading, new opens fail with EBUSY, /health says 503,
    // and the daemon stops once the file is closed.
    let mut held = fs::File::open(&song1)?;
    let mut head = [0u8; 4];
    held.read_exact(&mut head)?;
    musicfs_ok(&state, &["shutdown", "--drain-timeout", "120", "--no-wait"])?;
    let refused = fs::File::open(album(&mount).join("02 - Song 2.flac"));
    ensure!(
        refused.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EBUSY),
        "an open while draining: {refused:?}"
    );
    let (code, body) = http_get(http, "/health")?;
    ensure!(code == 503 && body.contains("draining"), "{code} {body}");
    let mut rest = Vec::new();
    held.read_to_end(&mut rest)?;
    ensure!(rest.len() + 4 == fs::metadata(origin.join("t01.flac"))?.len() as usize);
    drop(held);
    let status = mount.wait_exit(WITHIN)?;
    ensure!(status.success(), "exit {status:?}; log:\n{}", mount.log());
    mount.wait_unmounted(WITHIN)?;
    ensure!(!state.join("control.sock").exists());
    // The daemon wrote nothing: every origin file the test did not write is as it was.
    let now = checksum_tree(&origin)?;
    for (file, sum) in before.iter().filter(|(f, _)| !f.as_os_str().is_empty()) {
        ensure!(now.get(file) == Some(sum), "{} changed", file.display());
    }
    // Offline again: tree and search answer without a daemon.
    let offline = musicfs_ok(&state, &["search", "Song 4"])?;
    ensure!(offline.contains("04 - Song 4.flac"), "{offline}");
    Ok(())
}

/// The events of `seen` that the session produced (the marker file's left out): (seq,
/// kind).
fn session(seen: &[Value]) -> Vec<(u64, String)> {
    seen.iter()
        .filter(|v| SESSION_KINDS.contains(&v["kind"].as_str().unwrap_or("")))
        .filter(|v| {
            !v["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("02 - Song 2.flac"))
        })
        .map(|v| {
            (
                v["seq"].as_u64().unwrap_or(0),
                v["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_scripted_session_gives_the_same_events_in_order_everywhere() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    origin_with(&origin, 2)?;
    let http = free_port()?;
    let hook = webhook_receiver()?;
    let mount = start(work.path(), &origin, http, Some(hook.port), "")?;
    let state = mount.state_dir().to_path_buf();
    // After this refresh the start-up reconcile is over: it cannot take the tag change
    // below for itself.
    musicfs_ok(&state, &["refresh"])?;
    let read_mode = musicfs_json(&state, &["status"])?["read_mode"].clone();

    // Subscribers first: gRPC (the CLI) and SSE.
    let grpc = Command::new(binary("musicfs")?)
        .args([
            "events",
            "--kinds",
            "file.,library.changed,origin.health",
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut grpc = scopeguard(grpc);
    let sse = sse_reader(http)?;
    let grpc_seen: Seen = Arc::default();
    {
        let out = grpc.0.stdout.take().context("stdout")?;
        let seen = grpc_seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    seen.lock().unwrap().push(v);
                }
            }
        });
    }
    // The subscribers are connected once they see a marker: reads of another file, whose
    // events are left out below.
    let song1 = album(&mount).join("01 - Song 1.flac");
    let marker = album(&mount).join("02 - Song 2.flac");
    wait_until("both subscribers to see an event", || {
        let _ = fs::read(&marker)?;
        Ok(!grpc_seen.lock().unwrap().is_empty() && !sse.lock().unwrap().is_empty())
    })?;

    // The session: open, read, close; a tag change; the origin stopped.
    let mut f = fs::File::open(&song1)?;
    let mut all = Vec::new();
    f.read_to_end(&mut all)?;
    drop(f);
    add_track(&origin, 2, "Song Two Retitled")?;
    let r = musicfs_json(&state, &["refresh"])?;
    ensure!(r["changed"] == 1, "{r}; log:\n{}", mount.log());
    let moved = work.path().join("origin-stopped");
    fs::rename(&origin, &moved)?;
    let offline = |seen: &Seen| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|v| v["kind"] == "origin.health" && v["state"] == "offline")
    };
    let log_path = state.join("access.log");
    let from_log = || -> Result<Vec<Value>> {
        Ok(fs::read_to_string(&log_path)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    };
    wait_until("every consumer to see the origin go offline", || {
        let log: Seen = Arc::new(Mutex::new(from_log()?));
        Ok(offline(&grpc_seen) && offline(&sse) && offline(&hook.seen) && offline(&log))
    })?;
    fs::rename(&moved, &origin)?;

    let after = |seen: &[Value]| -> Vec<(u64, String)> { session(seen) };
    let grpc_events = after(&grpc_seen.lock().unwrap());
    let sse_events = after(&sse.lock().unwrap());
    let hook_events = after(&hook.seen.lock().unwrap());
    let log_events = after(&from_log()?);
    // Each consumer got the same events in the same order (up to the last one the
    // slowest has seen: all of them have the offline event).
    let upto = |v: &[(u64, String)]| -> Vec<(u64, String)> {
        let end = v
            .iter()
            .position(|(_, k)| k == "origin.health")
            .map_or(v.len(), |i| i + 1);
        v[..end].to_vec()
    };
    let reference = upto(&log_events);
    for (name, got) in [
        ("gRPC", &grpc_events),
        ("SSE", &sse_events),
        ("webhook", &hook_events),
    ] {
        ensure!(
            upto(got) == reference,
            "{name} saw {got:?}\nthe access log {reference:?}"
        );
    }
    ensure!(
        hook.bad.lock().unwrap().is_empty(),
        "{:?}",
        hook.bad.lock().unwrap()
    );
    // The order the session made them in.
    let kinds: Vec<&str> = reference.iter().map(|(_, k)| k.as_str()).collect();
    let mut expected = vec!["file.opened"];
    if read_mode == "daemon" {
        expected.extend(["file.read"; 4]);
    }
    expected.extend(["file.closed", "library.changed", "origin.health"]);
    ensure!(
        kinds == expected,
        "events {kinds:?}, expected {expected:?} (read mode {read_mode})"
    );
    let seqs: Vec<u64> = reference.iter().map(|(s, _)| *s).collect();
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // What they say.
    let log = from_log()?;
    let get = |kind: &str| {
        log.iter()
            .find(|v| v["kind"] == kind && session(std::slice::from_ref(v)).len() == 1)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let opened = get("file.opened");
    ensure!(
        opened["path"] == "Control Artist/Control Album (2020) [FLAC]/01 - Song 1.flac",
        "{opened}"
    );
    ensure!(
        opened["source"] == origin.join("t01.flac").display().to_string(),
        "{opened}"
    );
    let changed = get("library.changed");
    ensure!(
        changed["changed"] == 1 && changed["added"] == 0,
        "{changed}"
    );
    let health = get("origin.health");
    ensure!(health["origin"] == origin.display().to_string(), "{health}");
    drop(mount);
    Ok(())
}

/// Kills the child when dropped.
struct Guard(std::process::Child);

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_control_socket_refuses_another_user() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    origin_with(&origin, 1)?;
    let mount = start(work.path(), &origin, free_port()?, None, "")?;
    let socket = mount.state_dir().join("control.sock");
    let mode = fs::metadata(&socket)?.permissions();
    use std::os::unix::fs::PermissionsExt;
    ensure!(
        mode.mode() & 0o777 == 0o600,
        "socket mode {:o}",
        mode.mode()
    );
    // The state dir is reachable by others (0755 in the test): only the socket's mode and
    // the daemon's caller check keep another user out.
    let out = RunAs::nobody()
        .command(binary("musicfs")?)
        .args(["status", "--socket"])
        .arg(&socket)
        .output()?;
    ensure!(!out.status.success(), "nobody could call the daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("ermission denied"), "nobody's error: {err}");
    // The owner still can.
    musicfs_ok(mount.state_dir(), &["status"])?;
    // A second daemon on the same state directory stops before mounting, saying why.
    let other = work.path().join("mnt2");
    fs::create_dir(&other)?;
    let args: Vec<std::ffi::OsString> = vec![
        "--origin".into(),
        origin.clone().into(),
        "--state-dir".into(),
        mount.state_dir().into(),
        other.clone().into(),
    ];
    let failed = musicfs_tests::harness::run_daemon_expecting_exit(&args, None, &other, WITHIN)?;
    ensure!(!failed.status.success(), "{}", failed.stderr);
    ensure!(
        failed.stderr.contains("answered by another daemon"),
        "{}",
        failed.stderr
    );
    ensure!(musicfs_tests::harness::mount_at(&other)?.is_none());
    musicfs_ok(mount.state_dir(), &["status"])?;
    Ok(())
}

#[test]
fn cache_clear_through_the_daemon_empties_the_remote_cache() -> Result<()> {
    use musicfs_tests::remote::{generate, served, S3Library, Track};
    let tracks = [Track {
        rel: "Tone Artist/Album/01 - One.mp3",
        input: "sine=frequency=440:sample_rate=44100:duration=20",
        codec: &["-c:a", "libmp3lame", "-b:a", "192k"],
        title: "One",
    }];
    let lib = S3Library::start(|dir| generate(dir, &tracks))?;
    let http = free_port()?;
    let config = lib.work_dir().join("metrics.toml");
    fs::write(&config, format!("metrics_listen = \"127.0.0.1:{http}\"\n"))?;
    let mut opts = lib.mount_options();
    opts.config = Some(config);
    let mount = MountedFs::start(opts)?;
    let state = lib.state.clone();
    let file = served(&mount, "One")?;
    ensure!(fs::read(&file)? == fs::read(lib.source("One")?)?);
    // The first read fetched windows (misses); a second finds them cached (hits).
    let counted = |name: &str| -> Result<f64> {
        let (_, body) = http_get(http, "/metrics")?;
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))?;
        Ok(scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum())
    };
    ensure!(counted("musicfs_cache_misses_total")? > 0.0);
    let hits = counted("musicfs_cache_hits_total")?;
    ensure!(fs::read(&file)? == fs::read(lib.source("One")?)?);
    // Page-cache hits never reach the daemon: drop them first.
    musicfs_tests::remote::evict_pages(&file)?;
    ensure!(fs::read(&file)? == fs::read(lib.source("One")?)?);
    ensure!(
        counted("musicfs_cache_hits_total")? > hits,
        "no cache hit counted; log:\n{}",
        mount.log()
    );
    let stats = musicfs_json(&state, &["cache", "stats"])?;
    ensure!(
        stats["enabled"] == true && stats["chunks"].as_u64() > Some(0),
        "{stats}"
    );
    musicfs_ok(&state, &["cache", "verify"])?;
    let cleared = musicfs_json(&state, &["cache", "clear"])?;
    ensure!(cleared["chunks_left"] == 0, "{cleared}");
    let stats = musicfs_json(&state, &["cache", "stats"])?;
    ensure!(
        stats["chunks"] == 0 && stats["stored_bytes"] == 0,
        "{stats}"
    );
    // Still served (fetched again), and the budget changes at run time.
    ensure!(fs::read(&file)? == fs::read(lib.source("One")?)?);
    musicfs_ok(&state, &["config", "set", "cache_budget", "64M"])?;
    // The remote origin's request timeout, changed at run time.
    let key = format!("origin.{}.timeout_secs", lib.spec);
    let set = musicfs_json(&state, &["config", "set", &key, "2.5"])?;
    ensure!(set["previous"] == "5", "{set}");
    ensure!(fs::read(&file)? == fs::read(lib.source("One")?)?);
    ensure!(musicfs_json(&state, &["cache", "stats"])?["budget_bytes"] == 64u64 << 20);
    // A prefetch of the album fetches its remote file into the emptied cache.
    musicfs_ok(&state, &["cache", "clear"])?;
    ensure!(musicfs_json(&state, &["cache", "stats"])?["chunks"] == 0);
    let pf = musicfs_json(&state, &["prefetch", "Tone Artist"])?;
    ensure!(pf["queued"] == 1, "{pf}");
    wait_until("the prefetch to fill the cache", || {
        let s = musicfs_json(&state, &["cache", "stats"])?;
        Ok(s["logical_bytes"].as_u64() >= Some(fs::metadata(lib.source("One")?)?.len()))
    })?;
    Ok(())
}

#[test]
fn the_daemon_speaks_the_systemd_notify_protocol_and_the_units_verify() -> Result<()> {
    use std::os::unix::net::UnixDatagram;
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    origin_with(&origin, 1)?;
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let notify = work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(WITHIN))?;
    let log = fs::File::create(work.path().join("daemon.log"))?;
    let mut child = Command::new(binary("musicfsd")?)
        .arg("--origin")
        .arg(&origin)
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = (|| -> Result<Vec<String>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let mut recv = |got: &mut Vec<String>| -> Result<()> {
            let n = sock.recv(&mut buf).context("no notification in time")?;
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            Ok(())
        };
        while !got.iter().any(|m| m == "WATCHDOG=1") {
            recv(&mut got)?;
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        while !got.iter().any(|m| m == "STOPPING=1") {
            recv(&mut got)?;
        }
        ensure!(got[0] == "READY=1", "READY=1 must come first: {got:?}");
        Ok(got)
    })();
    // Whatever happened above, the daemon is stopped and waited for within a deadline: a
    // failed check must fail the test, not leave it waiting on a daemon that runs on.
    if result.is_err() {
        let _ = child.kill();
    }
    let status = match wait_child(&mut child, WITHIN)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = force_unmount(&mnt);
            bail!(
                "musicfsd did not exit within {WITHIN:?} of SIGTERM ({result:?}); log:\n{}",
                fs::read_to_string(work.path().join("daemon.log")).unwrap_or_default()
            );
        }
    };
    if result.is_err() {
        let _ = force_unmount(&mnt);
    }
    let got = result
        .with_context(|| fs::read_to_string(work.path().join("daemon.log")).unwrap_or_default())?;
    ensure!(status.success(), "{status:?} after {got:?}");

    // The unit files parse without a warning (systemd-analyze checks keys and values; it
    // also wants ExecStart to exist, so it is pointed at the built binary).
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/systemd");
    let daemon = binary("musicfsd")?;
    for (file, verify_as) in [
        ("musicfsd.service", "musicfsd.service"),
        ("musicfsd@.service", "musicfsd@jazz.service"),
    ] {
        let text = fs::read_to_string(units.join(file))?
            .replace("/usr/local/bin/musicfsd", &daemon.display().to_string());
        let dir = work.path().join("units");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(file), text)?;
        // Bounded: a systemd-analyze that hangs (no service manager to ask) fails the test.
        let out = Command::new("timeout")
            .args(["120", "systemd-analyze", "verify"])
            .arg(dir.join(verify_as))
            .output()
            .context("systemd-analyze (package systemd) is needed to check the unit files")?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && err.trim().is_empty(),
            "{file}: {err}"
        );
    }
    Ok(())
}

#[test]
fn completions_and_man_pages_are_generated_from_the_command_line_definitions() -> Result<()> {
    let work = tempfile::tempdir()?;
    let state = work.path().join("state");
    let bash = musicfs_ok(&state, &["completions", "bash"])?;
    ensure!(
        bash.contains("musicfs") && bash.contains("shutdown"),
        "{bash:.300}"
    );
    musicfs_ok(&state, &["completions", "zsh"])?;
    let dir = work.path().join("man");
    musicfs_ok(&state, &["manpages", &dir.display().to_string()])?;
    for page in [
        "musicfs.1",
        "musicfsd.1",
        "musicfs-status.1",
        "musicfs-shutdown.1",
    ] {
        let text = fs::read_to_string(dir.join(page)).with_context(|| page.to_string())?;
        ensure!(text.contains(".TH"), "{page} is not a man page");
    }
    let daemon = fs::read_to_string(dir.join("musicfsd.1"))?;
    ensure!(
        daemon.contains("passthrough"),
        "musicfsd.1 lacks its options"
    );
    Ok(())
}
