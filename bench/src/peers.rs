//! Starting and stopping the filesystems under test, and mapping source paths to the
//! paths each one shows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The filesystems the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The library directory itself.
    Native,
    /// musicfsd with its defaults (transport auto, passthrough auto).
    Musicfs,
    /// musicfsd `--passthrough off`: every read goes through the daemon.
    MusicfsPlain,
    /// musicfsd `--transport uring --enable-uring-param`: FUSE over io_uring.
    MusicfsUring,
    /// musicfsd `--no-op-metrics`: requests neither counted nor timed (the cost of metrics).
    MusicfsNoMetrics,
    /// bindfs -r.
    Bindfs,
    /// mergerfs -o ro.
    Mergerfs,
    /// rclone mount of a local path.
    Rclone,
    /// musefs mount.
    Musefs,
}

impl Peer {
    /// Every peer, in report order.
    pub const ALL: [Peer; 9] = [
        Peer::Native,
        Peer::Musicfs,
        Peer::MusicfsPlain,
        Peer::MusicfsUring,
        Peer::MusicfsNoMetrics,
        Peer::Bindfs,
        Peer::Mergerfs,
        Peer::Rclone,
        Peer::Musefs,
    ];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Native => "native",
            Peer::Musicfs => "musicfs",
            Peer::MusicfsPlain => "musicfs-plain",
            Peer::MusicfsUring => "musicfs-uring",
            Peer::MusicfsNoMetrics => "musicfs-nometrics",
            Peer::Bindfs => "bindfs",
            Peer::Mergerfs => "mergerfs",
            Peer::Rclone => "rclone",
            Peer::Musefs => "musefs",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == s.trim())
    }

    /// Whether it is one of the musicfsd variants (same catalog, same tree).
    pub fn is_musicfs(self) -> bool {
        matches!(
            self,
            Peer::Musicfs | Peer::MusicfsPlain | Peer::MusicfsUring | Peer::MusicfsNoMetrics
        )
    }

    /// Whether it shows a tag-organised tree (paths need mapping).
    pub fn is_virtual(self) -> bool {
        self.is_musicfs() || self == Peer::Musefs
    }

    /// What "cold" means for this peer, for the report.
    pub fn cold_meaning(self) -> &'static str {
        match self {
            Peer::Native => "dentry/inode caches dropped (drop_caches=2) before the pass; page cache too (3) before each readdir",
            Peer::Musicfs | Peer::MusicfsPlain | Peer::MusicfsUring | Peer::MusicfsNoMetrics => {
                "--entry-timeout 0 --attr-timeout 0, plus the same cache drops"
            }
            Peer::Bindfs => "-o entry_timeout=0,attr_timeout=0,negative_timeout=0, plus the same cache drops",
            Peer::Mergerfs => "-o cache.entry=0,cache.attr=0,cache.negative_entry=0, plus the same cache drops",
            Peer::Rclone => "--attr-timeout 0 --dir-cache-time 1ms, plus the same cache drops",
            Peer::Musefs => "--attr-ttl-ms 0, plus the same cache drops",
        }
    }
}

/// Where the helper binaries live.
#[derive(Debug, Clone)]
pub struct Bins {
    /// musicfsd.
    pub musicfsd: PathBuf,
    /// musicfs (CLI).
    pub musicfs: PathBuf,
    /// musefs, when installed.
    pub musefs: Option<PathBuf>,
}

/// `name` on PATH or in ~/.cargo/bin.
pub fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Finds musicfsd/musicfs: `bin_dir`, else next to this executable, else the workspace's
/// target/release then target/debug, else PATH.
pub fn find_bins(bin_dir: Option<&Path>) -> Result<Bins> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = bin_dir {
        candidates.push(d.to_path_buf());
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(d.clone());
        if let Some(up) = d.parent() {
            candidates.push(up.to_path_buf());
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    candidates.push(ws.join("release"));
    candidates.push(ws.join("debug"));
    let dir = candidates
        .into_iter()
        .find(|d| d.join("musicfsd").is_file() && d.join("musicfs").is_file());
    let (musicfsd, musicfs) = match dir {
        Some(d) => (d.join("musicfsd"), d.join("musicfs")),
        None => match (which("musicfsd"), which("musicfs")) {
            (Some(a), Some(b)) => (a, b),
            _ => bail!("musicfsd/musicfs not built: run cargo build --release --bins"),
        },
    };
    Ok(Bins {
        musicfsd,
        musicfs,
        musefs: which("musefs"),
    })
}

/// Whether `mnt` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(mnt: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// A running peer mount.
pub struct Mount {
    /// Peer.
    pub peer: Peer,
    /// Root under which source (or virtual) paths resolve.
    pub root: PathBuf,
    /// The serving process.
    pub child: Option<Child>,
    /// Process start to first successful stat of the probe file.
    pub ready: Duration,
    /// When the serving process was spawned.
    pub started: Instant,
    /// Its log file and the log's length before the spawn (this start's lines follow it).
    pub log: Option<(PathBuf, u64)>,
}

impl Mount {
    /// Waits (at most `timeout` from process start) for a line holding one of `needles` in
    /// this start's log; returns the time from process start to when it was seen, and the
    /// line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<(Duration, String)> {
        let (path, offset) = self.log.as_ref().context("no log for this peer")?;
        loop {
            let text = std::fs::read(path).unwrap_or_default();
            let mine = String::from_utf8_lossy(text.get(*offset as usize..).unwrap_or_default());
            if let Some(line) = mine.lines().find(|l| needles.iter().any(|n| l.contains(n))) {
                return Ok((self.started.elapsed(), line.to_string()));
            }
            if self.started.elapsed() > timeout {
                let tail: String = mine.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                bail!("none of {needles:?} logged within {timeout:?}; last lines: {tail}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pid of the serving process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the process (SIGTERM) and makes sure nothing stays mounted.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        if self.peer != Peer::Native && is_mounted(&self.root) {
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How to start a peer: the prepared command and where it mounts.
pub struct Launch {
    /// Peer.
    pub peer: Peer,
    /// Command (None for native).
    pub cmd: Option<Command>,
    /// Mount point (or the library for native).
    pub root: PathBuf,
}

/// The launch of `peer` over `lib` at `mnt`; `cold` turns off its kernel caches.
pub fn launch(
    peer: Peer,
    lib: &Path,
    mnt: &Path,
    cold: bool,
    bins: &Bins,
    state: &Path,
) -> Result<Launch> {
    let cmd = match peer {
        Peer::Native => {
            return Ok(Launch {
                peer,
                cmd: None,
                root: lib.to_path_buf(),
            })
        }
        Peer::Musicfs | Peer::MusicfsPlain | Peer::MusicfsUring | Peer::MusicfsNoMetrics => {
            let mut c = Command::new(&bins.musicfsd);
            c.arg("--state-dir").arg(state).arg("--origin").arg(lib);
            match peer {
                Peer::MusicfsPlain => {
                    c.args(["--passthrough", "off"]);
                }
                Peer::MusicfsUring => {
                    c.args(["--transport", "uring", "--enable-uring-param"]);
                }
                Peer::MusicfsNoMetrics => {
                    c.arg("--no-op-metrics");
                }
                _ => {}
            }
            if cold {
                c.args(["--entry-timeout", "0", "--attr-timeout", "0"]);
            }
            c.arg(mnt);
            c
        }
        Peer::Bindfs => {
            let mut c = Command::new("bindfs");
            c.args(["-f", "-r"]);
            if cold {
                c.args(["-o", "entry_timeout=0,attr_timeout=0,negative_timeout=0"]);
            }
            c.arg(lib).arg(mnt);
            c
        }
        Peer::Mergerfs => {
            let mut c = Command::new("mergerfs");
            let mut opts = "ro".to_string();
            if cold {
                opts.push_str(",cache.entry=0,cache.attr=0,cache.negative_entry=0");
            }
            c.args(["-f", "-o", &opts]).arg(lib).arg(mnt);
            c
        }
        Peer::Rclone => {
            let mut c = Command::new("rclone");
            c.arg("mount").arg(lib).arg(mnt).arg("--read-only");
            if cold {
                c.args(["--attr-timeout", "0s", "--dir-cache-time", "1ms"]);
            }
            c
        }
        Peer::Musefs => {
            let bin = bins
                .musefs
                .clone()
                .context("not installed: run cargo install musefs")?;
            let mut c = Command::new(bin);
            c.arg("mount")
                .arg(mnt)
                .arg("--db")
                .arg(state.join("musefs.db"));
            c.args(["--template", MUSEFS_TEMPLATE]);
            if cold {
                c.args(["--attr-ttl-ms", "0"]);
            }
            c
        }
    };
    Ok(Launch {
        peer,
        cmd: Some(cmd),
        root: mnt.to_path_buf(),
    })
}

/// The template musefs is mounted with; [`musefs_path`] renders it.
pub const MUSEFS_TEMPLATE: &str = "$albumartist/$album/$title";

/// Starts a launch and waits (at most `timeout`) until `probe` (relative to the root)
/// can be stat'ed through it.
pub fn start(l: Launch, probe: &Path, timeout: Duration, log: &Path) -> Result<Mount> {
    let target = l.root.join(probe);
    start_when(
        l,
        move || std::fs::symlink_metadata(&target).is_ok(),
        timeout,
        log,
    )
}

/// Whether `root` is the root of a mount that answers: `stat(2)` of it succeeds and shows
/// another device than its parent's (before the mount, it shows the parent's).
pub fn root_answers(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = root.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(root), std::fs::metadata(parent)) {
        (Ok(r), Ok(p)) => r.dev() != p.dev(),
        _ => false,
    }
}

/// Starts a launch and waits (at most `timeout`) until `ready` (polled every 200 µs on a
/// thread of its own) returns true.
pub fn start_when(
    l: Launch,
    ready: impl Fn() -> bool + Send + 'static,
    timeout: Duration,
    log: &Path,
) -> Result<Mount> {
    let Some(mut cmd) = l.cmd else {
        return Ok(Mount {
            peer: l.peer,
            root: l.root,
            child: None,
            ready: Duration::ZERO,
            started: Instant::now(),
            log: None,
        });
    };
    std::fs::create_dir_all(&l.root)?;
    if is_mounted(&l.root) {
        let _ = Command::new("umount").arg("-l").arg(&l.root).status();
    }
    // Appended, so a start that misbehaves is still in the log after later starts.
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let log_offset = logf.metadata()?.len();
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("cannot start {}", l.peer.name()))?;
    let mut m = Mount {
        peer: l.peer,
        root: l.root,
        child: Some(child),
        ready: Duration::ZERO,
        started: t,
        log: Some((log.to_path_buf(), log_offset)),
    };
    // The probe runs on its own thread: a daemon that mounts but never answers leaves a
    // stat blocked in the kernel, and only killing the daemon (which aborts the FUSE
    // connection) releases it.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child = m.child.take();
    std::thread::spawn(move || loop {
        if ready() {
            let _ = tx.send(t.elapsed());
            return;
        }
        if tx.send(Duration::ZERO).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    });
    let outcome = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(d) if !d.is_zero() => break Ok(d),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!("probe thread ended"))
            }
        }
        if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            break Err(anyhow::anyhow!(
                "exited with {status} before serving: {tail}"
            ));
        }
        if t.elapsed() > timeout {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
            }
            break Err(anyhow::anyhow!(
                "probe stat not answered after {timeout:?} (daemon killed)"
            ));
        }
    };
    m.child = child;
    m.ready = outcome?;
    Ok(m)
}

/// Maps source paths to the paths a tag-organised peer shows.
#[derive(Debug, Default)]
pub struct PathMap {
    map: HashMap<String, String>,
}

impl PathMap {
    /// The peer path of a source path (None: the peer does not show it).
    pub fn get(&self, src_rel: &str) -> Option<&str> {
        self.map.get(src_rel).map(String::as_str)
    }
}

/// Reads `musicfs tree --long` (`ino\tsize\tvirtual\tsource`) into a map from source
/// paths relative to `lib` to virtual paths relative to the mount.
pub fn musicfs_map(bins: &Bins, state: &Path, lib: &Path) -> Result<PathMap> {
    let out = Command::new(&bins.musicfs)
        .arg("--state-dir")
        .arg(state)
        .args(["tree", "--long"])
        .output()
        .context("cannot run musicfs tree")?;
    if !out.status.success() {
        bail!(
            "musicfs tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let prefix = format!("{}/", lib.display());
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 || f[3].is_empty() {
            continue;
        }
        if let Some(src) = f[3].strip_prefix(&prefix) {
            map.insert(src.to_string(), f[2].trim_start_matches('/').to_string());
        }
    }
    if map.is_empty() {
        bail!("musicfs tree listed no file under {}", lib.display());
    }
    Ok(PathMap { map })
}

/// musefs's path for a manifest entry under [`MUSEFS_TEMPLATE`], for entries whose
/// fields are all present and plain (so the rendering is unambiguous).
pub fn musefs_map(entries: &[crate::gen::ManifestEntry]) -> PathMap {
    let plain = |s: &str| !s.is_empty() && !s.contains('/') && !s.starts_with('.') && s.trim() == s;
    let mut count: HashMap<String, u32> = HashMap::new();
    let rendered: Vec<(String, String)> = entries
        .iter()
        .filter(|e| plain(&e.album_artist) && plain(&e.album) && plain(&e.title))
        .map(|e| {
            // musefs names Ogg Vorbis files by codec.
            let ext = if e.ext == "ogg" {
                "vorbis"
            } else {
                e.ext.as_str()
            };
            let v = format!("{}/{}/{}.{ext}", e.album_artist, e.album, e.title);
            *count.entry(v.clone()).or_default() += 1;
            (e.rel_path.clone(), v)
        })
        .collect();
    let map = rendered
        .into_iter()
        .filter(|(_, v)| count.get(v) == Some(&1))
        .collect();
    PathMap { map }
}

/// The status attributes musicfsd exposes on its root directory.
pub const STATUS_XATTRS: [&str; 3] = [
    "user.musicfs.transport",
    "user.musicfs.passthrough",
    "user.musicfs.origin_reads",
];

/// The value of extended attribute `name` of `path` (None when absent or unreadable).
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let len = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
        )
    };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(String::from_utf8_lossy(&buf).trim().to_string())
}

/// The status attributes of a musicfs mount root, by short name (`transport`, ...).
pub fn musicfs_status(root: &Path) -> std::collections::BTreeMap<String, String> {
    STATUS_XATTRS
        .iter()
        .map(|name| {
            let short = name.trim_start_matches("user.musicfs.").to_string();
            let v = xattr(root, name).unwrap_or_else(|| "(absent)".into());
            (short, v)
        })
        .collect()
}

/// The fuse module parameter musicfs-uring turns on.
pub const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The value of [`URING_PARAM`] before this run changed it, restored on drop and by the
/// run's signal handler ([`restore_uring_param`]).
static SAVED_URING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Restores [`URING_PARAM`] to the value saved by [`UringParamGuard::save`], if any.
pub fn restore_uring_param() {
    let saved = SAVED_URING.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(v) = saved {
        match std::fs::write(URING_PARAM, format!("{v}\n")) {
            Ok(()) => tracing::info!(value = %v, "restored {URING_PARAM}"),
            Err(e) => tracing::warn!("cannot restore {URING_PARAM} to {v}: {e}"),
        }
    }
}

/// Remembers [`URING_PARAM`] while a peer may change it; puts it back when dropped.
pub struct UringParamGuard(());

impl UringParamGuard {
    /// Saves the current value (nothing to restore when the parameter does not exist).
    pub fn save() -> UringParamGuard {
        if let Ok(v) = std::fs::read_to_string(URING_PARAM) {
            let mut saved = SAVED_URING.lock().unwrap_or_else(|p| p.into_inner());
            if saved.is_none() {
                *saved = Some(v.trim().to_string());
            }
        }
        UringParamGuard(())
    }
}

impl Drop for UringParamGuard {
    fn drop(&mut self) {
        restore_uring_param();
    }
}

/// Files a run put into a library for a while (`scale`'s change tests), removed by the
/// interrupt handler when the run is cut short.
static SCRATCH_FILES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Remembers `path` as a file this run added to a library (see [`forget_scratch_file`]).
pub fn register_scratch_file(path: &Path) {
    let mut v = SCRATCH_FILES.lock().unwrap_or_else(|p| p.into_inner());
    if !v.iter().any(|p| p == path) {
        v.push(path.to_path_buf());
    }
}

/// Forgets `path` (the run removed it itself).
pub fn forget_scratch_file(path: &Path) {
    SCRATCH_FILES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| p != path);
}

/// Removes every registered scratch file.
pub fn remove_scratch_files() {
    let files = std::mem::take(&mut *SCRATCH_FILES.lock().unwrap_or_else(|p| p.into_inner()));
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => tracing::info!(file = %f.display(), "removed a scratch file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %f.display(), "cannot remove a scratch file: {e}"),
        }
    }
}

/// On SIGINT/SIGTERM: restores [`URING_PARAM`], removes the scratch files, lazily unmounts
/// everything under `mnt_root`, and exits 130, so an interrupted run leaves the machine as
/// it found it.
pub fn install_interrupt_cleanup(mnt_root: PathBuf) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::warn!(sig, "interrupted: restoring state and unmounting");
            restore_uring_param();
            remove_scratch_files();
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let prefix = mnt_root.to_string_lossy().replace(' ', "\\040");
            for m in info.lines().filter_map(|l| l.split(' ').nth(4)) {
                if m.starts_with(prefix.as_str()) {
                    let _ = Command::new("umount")
                        .arg("-l")
                        .arg(m.replace("\\040", " "))
                        .status();
                }
            }
            std::process::exit(130);
        }
    });
    Ok(())
}
