//! Scan throughput: `musicfs scan` on a cold catalog, `musefs scan`, `beet import -A` and
//! `mpc update --wait`, each on the same library with a throwaway state.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::peers::{which, Bins};

/// One scanner's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScanResult {
    /// Tool.
    pub name: String,
    /// "ok" or "skipped".
    pub status: String,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Files in the library.
    pub files: u64,
    /// Wall time.
    pub seconds: f64,
    /// files / seconds.
    pub files_per_sec: f64,
}

impl ScanResult {
    fn ok(name: &str, files: u64, d: Duration) -> ScanResult {
        ScanResult {
            name: name.into(),
            status: "ok".into(),
            reason: None,
            files,
            seconds: d.as_secs_f64(),
            files_per_sec: files as f64 / d.as_secs_f64().max(1e-9),
        }
    }

    /// A scanner that could not run.
    pub fn skipped(name: &str, reason: impl Into<String>) -> ScanResult {
        ScanResult {
            name: name.into(),
            status: "skipped".into(),
            reason: Some(reason.into()),
            files: 0,
            seconds: 0.0,
            files_per_sec: 0.0,
        }
    }
}

fn run_timed(cmd: &mut Command, what: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let d = t.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        bail!("{what} failed ({}): {tail}", out.status);
    }
    Ok(d)
}

/// `musicfs scan` into a fresh state dir (which the musicfs mount then serves).
pub fn musicfs(bins: &Bins, lib: &Path, state: &Path, files: u64) -> Result<ScanResult> {
    if state.exists() {
        std::fs::remove_dir_all(state)?;
    }
    let d = run_timed(
        Command::new(&bins.musicfs)
            .arg("--state-dir")
            .arg(state)
            .arg("scan")
            .arg("--origin")
            .arg(lib),
        "musicfs scan",
    )?;
    Ok(ScanResult::ok("musicfs", files, d))
}

/// `musefs scan` into a fresh database (which the musefs mount then serves).
pub fn musefs(bins: &Bins, lib: &Path, state: &Path, files: u64) -> Result<ScanResult> {
    let bin = bins
        .musefs
        .as_ref()
        .context("not installed: run cargo install musefs")?;
    let db = state.join("musefs.db");
    std::fs::create_dir_all(state)?;
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    // musefs exits 2 when some files were skipped (here: the non-audio manifest files, and
    // the big file whose audio starts past its 64 MiB probe window); the rest is ingested.
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("scan")
        .arg(lib)
        .arg("--db")
        .arg(&db)
        .arg("--quiet")
        .stdin(Stdio::null())
        .output()
        .context("cannot run musefs scan")?;
    let d = t.elapsed();
    match out.status.code() {
        Some(0) => Ok(ScanResult::ok("musefs", files, d)),
        Some(2) if db.exists() => {
            let mut r = ScanResult::ok("musefs", files, d);
            r.reason = Some("partial: musefs skipped some files (exit 2)".into());
            Ok(r)
        }
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            bail!("musefs scan failed ({}): {tail}", out.status)
        }
    }
}

/// `beet import -A -q` (no autotag, no copy, no write) with a throwaway config.
pub fn beets(lib: &Path, work: &Path, files: u64) -> Result<ScanResult> {
    which("beet").context("not installed: apt-get install beets")?;
    let dir = work.join("beets");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "directory: {}\nlibrary: {}\nplugins: []\nimport:\n  copy: no\n  move: no\n  write: no\n  autotag: no\n  log: {}\n",
            dir.join("music").display(),
            dir.join("library.db").display(),
            dir.join("import.log").display(),
        ),
    )?;
    let d = run_timed(
        Command::new("beet")
            .env("BEETSDIR", &dir)
            .arg("-c")
            .arg(&cfg)
            .args(["import", "-A", "-q"])
            .arg(lib),
        "beet import",
    )?;
    Ok(ScanResult::ok("beets", files, d))
}

/// A throwaway mpd on a unix socket, timed over `mpc update --wait`.
pub fn mpd(lib: &Path, work: &Path, files: u64) -> Result<ScanResult> {
    which("mpd").context("not installed: apt-get install mpd")?;
    which("mpc").context("not installed: apt-get install mpc")?;
    let dir = work.join("mpd");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("playlists"))?;
    let sock = dir.join("socket");
    let conf = dir.join("mpd.conf");
    std::fs::write(
        &conf,
        format!(
            "music_directory \"{}\"\nplaylist_directory \"{}\"\ndb_file \"{}\"\nstate_file \"{}\"\nlog_file \"{}\"\nbind_to_address \"{}\"\nauto_update \"no\"\naudio_output {{\n  type \"null\"\n  name \"null\"\n}}\n",
            lib.display(),
            dir.join("playlists").display(),
            dir.join("db").display(),
            dir.join("state").display(),
            dir.join("log").display(),
            sock.display(),
        ),
    )?;
    let mut child = Command::new("mpd")
        .arg("--no-daemon")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start mpd")?;
    let result = (|| {
        let t = Instant::now();
        while !sock.exists() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("mpd socket did not appear");
            }
            if let Ok(Some(s)) = child.try_wait() {
                bail!("mpd exited with {s}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let d = run_timed(
            Command::new("mpc")
                .arg("-h")
                .arg(&sock)
                .args(["update", "--wait"]),
            "mpc update",
        )?;
        Ok(ScanResult::ok("mpd", files, d))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
