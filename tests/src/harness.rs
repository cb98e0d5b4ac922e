//! Mounting `musicfsd` for real in a temp dir, and the checks end-to-end tests share.
//!
//! [`MountedFs::start`] spawns the daemon on a fresh mountpoint and state dir and returns
//! once `/proc/self/mountinfo` shows the FUSE mount and the daemon has said `READY=1` on
//! `$NOTIFY_SOCKET` (it waits on mount-table change notifications, the notify socket and a
//! pidfd, never on a fixed sleep). Dropping it stops the daemon and guarantees no mount is
//! left behind. [`library`] is the ffmpeg-generated fixture library, built once per test
//! process. The binaries are found in the workspace target dir;
//! building them is the test command's job (`cargo build --workspace`).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use xxhash_rust::xxh3::Xxh3;

/// How long a daemon may take to mount (it scans the origins first on a fresh state dir).
pub const MOUNT_DEADLINE: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after a signal or an unmount.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// The extended attribute through which the daemon names a virtual file's source.
pub const SOURCE_XATTR: &str = "user.musicfs.source";

/// The workspace root (the parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Locates a workspace binary (`musicfsd`, `musicfs`) built by `cargo build --workspace`.
///
/// Looks, in order, in `$MUSICFS_BIN_DIR`, next to the running test executable's profile
/// dir (`target/<profile>/deps/..`), then `$CARGO_TARGET_DIR` or `<workspace>/target`
/// under the current profile and the other one.
pub fn binary(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("MUSICFS_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            dirs.push(profile_dir.to_path_buf());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profiles = if cfg!(debug_assertions) {
        ["debug", "release"]
    } else {
        ["release", "debug"]
    };
    dirs.extend(profiles.iter().map(|p| target.join(p)));
    dirs.dedup();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "binary `{name}` not found in {dirs:?}; build it first with `cargo build --workspace`"
            )
        })
}

/// One line of `/proc/self/mountinfo`, the fields the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse` or `fuse.musicfs`.
    pub fstype: String,
    /// The mount source (fsname).
    pub source: String,
    /// Per-mount options, e.g. `ro,nosuid,nodev,relatime`.
    pub mount_options: String,
}

impl MountEntry {
    /// True when this is a FUSE mount (`fuse`, `fuse.<subtype>`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.") || self.fstype == "fuseblk"
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Every mount of this process's mount namespace, in table order.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 2 {
            continue;
        }
        entries.push(MountEntry {
            mount_point: unescape_mountinfo(left[4]),
            fstype: right[0].to_string(),
            source: unescape_mountinfo(right[1]).to_string_lossy().into_owned(),
            mount_options: left[5].to_string(),
        });
    }
    Ok(entries)
}

/// The topmost mount at exactly `path` (not canonicalised: pass a canonical path).
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    Ok(mount_table()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path))
}

/// A file descriptor that becomes ready when the mount table changes
/// (`/proc/self/mountinfo` reports `POLLPRI` on every mount or unmount).
struct MountTableWatch {
    file: File,
}

impl MountTableWatch {
    fn new() -> Result<Self> {
        let file = File::open("/proc/self/mountinfo").context("opening /proc/self/mountinfo")?;
        let watch = MountTableWatch { file };
        // The first poll records the current event count, so later polls report only changes
        // made after this point; callers re-read the table after creating the watch.
        poll_fds(&[(watch.file.as_raw_fd(), libc::POLLPRI)], Duration::ZERO)?;
        Ok(watch)
    }
}

/// `poll(2)` on `fds` until one is ready or `timeout` passes; returns whether any was ready.
fn poll_fds(fds: &[(RawFd, libc::c_short)], timeout: Duration) -> Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `pfds` is a live, correctly sized array of pollfd for the whole call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("poll");
        }
    }
}

/// A pidfd for `pid`: readable once the process has exited.
fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits for `child` to exit within `timeout`; `None` if it is still running then.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let pidfd = pidfd_open(child.id())?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        poll_fds(&[(pidfd.as_raw_fd(), libc::POLLIN)], left)?;
    }
}

/// Waits until `path` is no longer a mount point, or fails after `timeout`.
pub fn wait_unmounted(path: &Path, timeout: Duration) -> Result<()> {
    let watch = MountTableWatch::new()?;
    let deadline = Instant::now() + timeout;
    loop {
        if mount_at(path)?.is_none() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{} still mounted after {timeout:?}", path.display());
        }
        // Capped so a missed notification costs at most a short extra wait.
        poll_fds(
            &[(watch.file.as_raw_fd(), libc::POLLPRI)],
            left.min(Duration::from_millis(250)),
        )?;
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("kill({pid}, {signal})"));
    }
    Ok(())
}

/// Numeric user and group a daemon runs as (through `setpriv`, all supplementary groups
/// cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl RunAs {
    /// The conventional unprivileged account, `nobody:nogroup` (65534).
    pub fn nobody() -> Self {
        RunAs {
            uid: 65534,
            gid: 65534,
        }
    }

    /// A `setpriv` command that runs `program` with these credentials.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        cmd
    }
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// `--origin` dirs, in priority order.
    pub origins: Vec<PathBuf>,
    /// `--threads N`.
    pub threads: Option<usize>,
    /// `--template T`.
    pub template: Option<String>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// A state dir to reuse (restart tests); a fresh temp one when `None`.
    pub state_dir: Option<PathBuf>,
    /// `--log-level L`.
    pub log_level: Option<String>,
    /// Run the daemon as this user instead of the test's own.
    pub run_as: Option<RunAs>,
    /// Any further arguments, placed before the mountpoint.
    pub extra_args: Vec<OsString>,
    /// How long to wait for the mount to appear.
    pub mount_deadline: Duration,
    /// Also wait for the daemon's `READY=1` on `$NOTIFY_SOCKET` (sent once it has checked
    /// its mount and installed its signal handlers), not just for the mount-table entry.
    pub wait_ready: bool,
}

impl MountOptions {
    /// Options for a daemon that follows changes to `origin`: a state dir that outlives the
    /// mount, long kernel caches (only the daemon's invalidations can make a change show)
    /// and the refresh loop's debug lines, which tests wait for ([`REFRESH_DONE`]).
    pub fn live(origin: &Path, state: &Path) -> Self {
        let mut opts = MountOptions::new([origin.to_path_buf()]);
        opts.state_dir = Some(state.to_path_buf());
        opts.log_level = Some("info,musicfs_index::refresh=debug".into());
        opts.extra_args = ["--entry-timeout", "3600", "--attr-timeout", "3600"]
            .map(Into::into)
            .to_vec();
        opts
    }

    /// Options serving `origins` with every other setting left to the daemon.
    pub fn new<P: Into<PathBuf>>(origins: impl IntoIterator<Item = P>) -> Self {
        MountOptions {
            origins: origins.into_iter().map(Into::into).collect(),
            threads: None,
            template: None,
            config: None,
            state_dir: None,
            log_level: None,
            run_as: None,
            extra_args: Vec::new(),
            mount_deadline: MOUNT_DEADLINE,
            wait_ready: true,
        }
    }

    /// The daemon's arguments for `state_dir` and `mountpoint`.
    pub fn args(&self, state_dir: &Path, mountpoint: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        if let Some(n) = self.threads {
            push("--threads", n.to_string().into());
        }
        if let Some(config) = &self.config {
            push("--config", config.into());
        }
        for origin in &self.origins {
            push("--origin", origin.into());
        }
        if let Some(t) = &self.template {
            push("--template", t.into());
        }
        push("--state-dir", state_dir.into());
        if let Some(level) = &self.log_level {
            push("--log-level", level.into());
        }
        args.extend(self.extra_args.iter().cloned());
        args.extend(mode_args());
        args.push(mountpoint.into());
        args
    }
}

/// Extra daemon flags from `MUSICFS_E2E_DAEMON_ARGS` (whitespace-separated), so the same
/// suite runs under each transport and read mode (`--passthrough off`, `--transport uring
/// --enable-uring-param`, ...): `tools/run-tests.sh` does that.
pub fn mode_args() -> Vec<OsString> {
    std::env::var("MUSICFS_E2E_DAEMON_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(OsString::from)
        .collect()
}

/// A running `musicfsd` with its mount. Dropping it stops the daemon and removes the mount.
#[derive(Debug)]
pub struct MountedFs {
    child: Child,
    exit: Option<ExitStatus>,
    mountpoint: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    tmp: Option<TempDir>,
}

impl MountedFs {
    /// Spawns `musicfsd` and returns once its mount shows in `/proc/self/mountinfo`.
    ///
    /// Fails, with the daemon's stderr, if it exits first or does not mount in time.
    pub fn start(opts: MountOptions) -> Result<MountedFs> {
        let tmp = tempfile::Builder::new().prefix("musicfs-e2e-").tempdir()?;
        // Other users (the unprivileged daemon) must be able to reach the dirs inside.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
        let root = tmp.path().canonicalize()?;
        let mountpoint = root.join("mnt");
        fs::create_dir(&mountpoint)?;
        let state_dir = match &opts.state_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = root.join("state");
                fs::create_dir(&dir)?;
                dir
            }
        };
        if let Some(user) = opts.run_as {
            chown(&mountpoint, user)?;
            chown(&state_dir, user)?;
        }
        let log_path = root.join("musicfsd.log");
        let notify_path = root.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_nonblocking(true)?;
        // The daemon may run as another user: it needs write access to send.
        fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777))?;
        let args = opts.args(&state_dir, &mountpoint);
        let child = spawn_daemon(&args, opts.run_as, &log_path, Some(&notify_path))?;
        let mut fs = MountedFs {
            child,
            exit: None,
            mountpoint,
            state_dir,
            log_path,
            tmp: Some(tmp),
        };
        let ready = opts.wait_ready.then_some(&notify);
        fs.wait_mounted(opts.mount_deadline, ready)?;
        if opts.wait_ready {
            fs.check_mode(opts.run_as.is_none())?;
        }
        Ok(fs)
    }

    /// Checks that the daemon serves with the transport and read mode that
    /// `MUSICFS_E2E_DAEMON_ARGS` asks for (the root's `user.musicfs.*` xattrs), so a suite
    /// run "under io_uring" cannot silently run on a fallback. A mount of another user's
    /// daemon is closed to us (no allow_other): its log's `mounted` line says the same.
    fn check_mode(&self, readable: bool) -> Result<()> {
        let args: Vec<String> = mode_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for (flag, attr) in [
            ("--transport", "transport"),
            ("--passthrough", "passthrough"),
        ] {
            let Some(want) = args
                .windows(2)
                .find(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .filter(|v| *v != "auto")
            else {
                continue;
            };
            let got = if readable {
                get_xattr(&self.mountpoint, &format!("user.musicfs.{attr}"))?
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            } else {
                let log = self.log();
                let key = format!(" {attr}=\"");
                log.lines()
                    .filter(|l| l.contains("session: mounted"))
                    .find_map(|l| l.split_once(&key))
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(value, _)| value.to_string())
            };
            if got.as_deref() != Some(want) {
                bail!(
                    "asked for {flag} {want} but the mount reports {attr} {got:?}; stderr:\n{}",
                    self.log()
                );
            }
        }
        Ok(())
    }

    /// Waits for the FUSE mount in the mount table and, with `notify`, for `READY=1` on it.
    fn wait_mounted(&mut self, timeout: Duration, notify: Option<&UnixDatagram>) -> Result<()> {
        let watch = MountTableWatch::new()?;
        let pidfd = pidfd_open(self.child.id())?;
        let deadline = Instant::now() + timeout;
        let mut ready = notify.is_none();
        let mut mounted = false;
        loop {
            if let Some(sock) = notify {
                ready |= received_ready(sock)?;
            }
            if !mounted {
                mounted = mount_at(&self.mountpoint)?.is_some_and(|e| e.is_fuse());
            }
            if mounted && ready {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                self.exit = Some(status);
                bail!(
                    "musicfsd exited ({}) before mounting {}; stderr:\n{}",
                    describe_status(status),
                    self.mountpoint.display(),
                    self.log()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let what = if mounted {
                    "mounted but did not send READY=1 to $NOTIFY_SOCKET"
                } else {
                    "did not mount"
                };
                bail!(
                    "musicfsd {what} {} within {timeout:?}; stderr:\n{}",
                    self.mountpoint.display(),
                    self.log()
                );
            }
            let mut fds = vec![
                (watch.file.as_raw_fd(), libc::POLLPRI),
                (pidfd.as_raw_fd(), libc::POLLIN),
            ];
            fds.extend(notify.map(|n| (n.as_raw_fd(), libc::POLLIN)));
            poll_fds(&fds, left.min(Duration::from_millis(250)))?;
        }
    }

    /// The mountpoint (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `rel` inside the mount (`rel` may start with `/`).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        self.mountpoint.join(rel.strip_prefix("/").unwrap_or(rel))
    }

    /// The daemon's state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// The mount's current mountinfo entry, if mounted.
    pub fn mount_entry(&self) -> Result<Option<MountEntry>> {
        mount_at(&self.mountpoint)
    }

    /// Sends `signal` to the daemon.
    pub fn kill(&self, signal: libc::c_int) -> Result<()> {
        send_signal(self.pid(), signal)
    }

    /// Waits for the daemon to exit; fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        match wait_child(&mut self.child, timeout)? {
            Some(status) => {
                self.exit = Some(status);
                Ok(status)
            }
            None => bail!(
                "musicfsd (pid {}) still running after {timeout:?}",
                self.pid()
            ),
        }
    }

    /// Waits until the mount is gone; fails after `timeout`.
    pub fn wait_unmounted(&self, timeout: Duration) -> Result<()> {
        wait_unmounted(&self.mountpoint, timeout)
    }

    /// SIGTERM, then waits for the exit and the unmount; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if self.exit.is_none() {
            self.kill(libc::SIGTERM)?;
        }
        let status = self.wait_exit(EXIT_DEADLINE)?;
        self.wait_unmounted(EXIT_DEADLINE)?;
        Ok(status)
    }

    /// Runs `musicfs tree` on this daemon's state dir: every virtual path, one per entry.
    pub fn tree(&self) -> Result<Vec<PathBuf>> {
        musicfs_tree(&self.state_dir, false)
    }

    /// Runs `musicfs tree --long` on this daemon's state dir.
    pub fn tree_long(&self) -> Result<Vec<TreeEntry>> {
        musicfs_tree_long(&self.state_dir)
    }

    /// Every audio file in the mount with its origin file (see [`track_sources`]).
    pub fn track_sources(&self, origins: &[PathBuf]) -> Result<BTreeMap<PathBuf, PathBuf>> {
        track_sources(&self.mountpoint, origins, &self.tree_long()?)
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.kill(libc::SIGTERM);
            match wait_child(&mut self.child, EXIT_DEADLINE) {
                Ok(Some(status)) => self.exit = Some(status),
                _ => {
                    let _ = self.kill(libc::SIGKILL);
                    self.exit = self.child.wait().ok();
                }
            }
        }
        if force_unmount(&self.mountpoint).is_err() {
            // Removing the temp dir would walk into a live mount: leave it instead.
            if let Some(tmp) = self.tmp.take() {
                let kept = tmp.keep();
                eprintln!(
                    "musicfs harness: could not unmount; left {}",
                    kept.display()
                );
            }
        }
    }
}

/// Remounts the mount at `path` read-write (superblock and mount flags, keeping nosuid,
/// nodev, noatime), as an admin's `mount -o remount,rw` would. Needs CAP_SYS_ADMIN.
pub fn remount_writable(path: &Path) -> Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    let flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    // SAFETY: `cpath` is NUL-terminated; null source, type and data are allowed for a remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            cpath.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("remounting {} read-write", path.display()));
    }
    match mount_at(path)? {
        Some(entry) if entry.mount_options.split(',').any(|o| o == "rw") => Ok(()),
        other => bail!("{} not writable after remount: {other:?}", path.display()),
    }
}

/// Drains the notify socket; true if any datagram carried `READY=1`.
fn received_ready(sock: &UnixDatagram) -> Result<bool> {
    let mut buf = [0u8; 4096];
    let mut ready = false;
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => ready |= buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ready),
            Err(e) => return Err(e).context("reading the notify socket"),
        }
    }
}

/// Unmounts `path` if it is still mounted, lazily, by every means available.
pub fn force_unmount(path: &Path) -> Result<()> {
    if mount_at(path)?.is_none() {
        return Ok(());
    }
    let quiet = |cmd: &mut Command| {
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    quiet(Command::new("fusermount3").arg("-uz").arg(path));
    if mount_at(path)?.is_some() {
        quiet(Command::new("umount").arg("-l").arg(path));
    }
    wait_unmounted(path, Duration::from_secs(5))
}

fn chown(path: &Path, user: RunAs) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {} to {user:?}", path.display()))
}

/// Spawns `musicfsd args` with stdin closed, stdout+stderr appended to `log_path` and
/// `NOTIFY_SOCKET` set to `notify` (removed when `None`).
fn spawn_daemon(
    args: &[OsString],
    run_as: Option<RunAs>,
    log_path: &Path,
    notify: Option<&Path>,
) -> Result<Child> {
    let exe = binary("musicfsd")?;
    let mut cmd = match run_as {
        Some(user) => user.command(&exe),
        None => Command::new(&exe),
    };
    let log = File::create(log_path)?;
    match notify {
        Some(sock) => cmd.env("NOTIFY_SOCKET", sock),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; the closure
    // runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            // If the test process dies without running Drop, the daemon still goes away and
            // its auto-unmount removes the mount.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawning {}", exe.display()))
}

/// A `musicfsd` run that is expected to fail at startup.
#[derive(Debug)]
pub struct FailedStart {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Runs `musicfsd args` (as `run_as` if given) and waits up to `timeout` for it to exit by
/// itself.
///
/// If it is still running then (it mounted when it should not have), it is stopped, any
/// mount at `mountpoint` removed, and an error returned.
pub fn run_daemon_expecting_exit(
    args: &[OsString],
    run_as: Option<RunAs>,
    mountpoint: &Path,
    timeout: Duration,
) -> Result<FailedStart> {
    let tmp = tempfile::tempdir()?;
    let log_path = tmp.path().join("stderr.log");
    let mut child = spawn_daemon(args, run_as, &log_path, None)?;
    let status = match wait_child(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = send_signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            let _ = force_unmount(mountpoint);
            bail!(
                "musicfsd {args:?} kept running for {timeout:?}; stderr:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    };
    Ok(FailedStart {
        status,
        stderr: fs::read_to_string(&log_path)?,
    })
}

/// `exit code N` or `killed by signal N`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status:?}"),
    }
}

/// Runs `musicfs tree [--long] --state-dir STATE`; returns its lines as paths.
pub fn musicfs_tree(state_dir: &Path, long: bool) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new(binary("musicfs")?);
    cmd.arg("tree");
    if long {
        cmd.arg("--long");
    }
    cmd.arg("--state-dir").arg(state_dir);
    let out = run_ok(&mut cmd)?;
    Ok(split_lines(&out.stdout))
}

/// One line of `musicfs tree --long`: `ino TAB size TAB path TAB source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The inode number the mount reports.
    pub ino: u64,
    /// File size (0 for directories).
    pub size: u64,
    /// The virtual path, relative to the mount root.
    pub path: PathBuf,
    /// The origin file it is served from; `None` for directories.
    pub source: Option<PathBuf>,
    /// Other copies of the track: source path and whether it holds the same bytes.
    pub alternates: Vec<(PathBuf, bool)>,
}

/// Runs `musicfs tree --long --state-dir STATE` and parses it.
pub fn musicfs_tree_long(state_dir: &Path) -> Result<Vec<TreeEntry>> {
    let mut entries = Vec::new();
    for line in musicfs_tree(state_dir, true)? {
        let bytes = line.as_os_str().as_bytes();
        let fields: Vec<&[u8]> = bytes.split(|&b| b == b'\t').collect();
        let [ino, size, path, source, ref alts @ ..] = fields[..] else {
            bail!("`musicfs tree --long` line without 4 tab-separated fields: {line:?}");
        };
        let mut alternates = Vec::new();
        for alt in alts {
            let (at, same) = if let Some(p) = alt.strip_suffix(b" (same)") {
                (p, true)
            } else if let Some(p) = alt.strip_suffix(b" (retagged)") {
                (p, false)
            } else {
                bail!("`musicfs tree --long` alternate without (same)/(retagged): {line:?}");
            };
            alternates.push((PathBuf::from(OsStr::from_bytes(at)), same));
        }
        let number = |f: &[u8]| -> Result<u64> {
            std::str::from_utf8(f)?
                .parse()
                .with_context(|| format!("bad number in `musicfs tree --long` line {line:?}"))
        };
        entries.push(TreeEntry {
            ino: number(ino)?,
            size: number(size)?,
            path: PathBuf::from(OsStr::from_bytes(path)),
            source: (!source.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(source))),
            alternates,
        });
    }
    Ok(entries)
}

/// `musicfs ARGS --state-dir STATE`: its output, whatever its exit status.
pub fn musicfs_cmd(state: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary("musicfs")?)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(std::process::Stdio::null())
        .output()?)
}

/// `musicfs ARGS --state-dir STATE`, which must succeed: its stdout.
pub fn musicfs_cmd_ok(state: &Path, args: &[&str]) -> Result<String> {
    let out = musicfs_cmd(state, args)?;
    anyhow::ensure!(
        out.status.success(),
        "musicfs {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `musicfs scan --origin ... --state-dir STATE`.
pub fn musicfs_scan(origins: &[PathBuf], state_dir: &Path) -> Result<Output> {
    let mut cmd = Command::new(binary("musicfs")?);
    cmd.arg("scan");
    for origin in origins {
        cmd.arg("--origin").arg(origin);
    }
    cmd.arg("--state-dir").arg(state_dir);
    run_ok(&mut cmd)
}

/// Runs `cmd` to completion; fails with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}); stderr:\n{}",
            describe_status(out.status),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Non-empty lines of `bytes`, as paths (bytes kept as they are).
pub fn split_lines(bytes: &[u8]) -> Vec<PathBuf> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(OsStr::from_bytes(l)))
        .collect()
}

/// Sorts paths by their bytes, the order `musicfs tree` prints.
pub fn sort_bytewise(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
}

/// Every entry (files and directories) under `root`, relative, without following links,
/// sorted bytewise. `root` itself is not listed.
/// Whether `path` names an album folder's extra entry (cover art, or a file that sat beside
/// the tracks in the origin), which `musicfs tree` (the snapshot: tracks only) does not
/// list.
pub fn is_album_extra(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().as_encoded_bytes();
    musicfs_core::meta::is_extra(name)
        || musicfs_core::meta::COVER_NAMES
            .iter()
            .any(|c| c.as_bytes() == name)
}

/// `paths` without album folders' extra entries ([`is_album_extra`]).
pub fn without_album_extras(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.into_iter().filter(|p| !is_album_extra(p)).collect()
}

pub fn walk_tree(root: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        paths.push(entry.path().strip_prefix(root)?.to_path_buf());
    }
    sort_bytewise(&mut paths);
    Ok(paths)
}

/// The regular files under `root`, as absolute paths, sorted bytewise.
pub fn walk_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    sort_bytewise(&mut files);
    Ok(files)
}

/// What [`checksum_tree`] records per entry: the xxh3 of the content (of the link target
/// for a symlink, 0 for a directory) and the mtime.
pub type Checksum = (u64, SystemTime);

/// xxh3 and mtime of every entry under `dir`, by relative path. Comparing two of these
/// shows any write, creation, deletion or touch under an origin.
pub fn checksum_tree(dir: &Path) -> Result<BTreeMap<PathBuf, Checksum>> {
    let mut sums = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        let meta = entry.metadata()?;
        let kind = entry.file_type();
        let hash = if kind.is_file() {
            xxh3_file(entry.path())?
        } else if kind.is_symlink() {
            xxhash_rust::xxh3::xxh3_64(fs::read_link(entry.path())?.as_os_str().as_bytes())
        } else {
            0
        };
        let rel = entry.path().strip_prefix(dir)?.to_path_buf();
        sums.insert(rel, (hash, meta.modified()?));
    }
    Ok(sums)
}

/// xxh3-64 of a file's content, streamed.
pub fn xxh3_file(path: &Path) -> Result<u64> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.digest());
        }
        hasher.update(&buf[..n]);
    }
}

/// The value of extended attribute `name` on `path`; `None` if it has none by that name
/// (or the filesystem has no xattrs).
pub fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    let cname = CString::new(name)?;
    loop {
        // SAFETY: both strings are NUL-terminated and live; a null buffer of size 0 asks
        // only for the value's size.
        let size =
            unsafe { libc::getxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
                _ => Err(err).with_context(|| format!("getxattr {} {name}", path.display())),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` is writable for `buf.len()` bytes, the length we pass.
        let got = unsafe {
            libc::getxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(Some(buf));
        }
        // ERANGE: the value grew between the two calls; ask again.
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("getxattr {} {name}", path.display()));
        }
    }
}

/// The origin file behind a virtual file, from its [`SOURCE_XATTR`]: taken as is when
/// absolute, else looked up under each of `origins` in order.
pub fn source_of(virtual_file: &Path, origins: &[PathBuf]) -> Result<Option<PathBuf>> {
    let Some(value) = get_xattr(virtual_file, SOURCE_XATTR)? else {
        return Ok(None);
    };
    let value = PathBuf::from(OsString::from_vec(value));
    if value.is_absolute() {
        return Ok(Some(value));
    }
    Ok(origins.iter().map(|o| o.join(&value)).find(|p| p.is_file()))
}

/// Every audio file under the mount at `mount_root` (by extension), with the origin file it
/// is served from: its [`SOURCE_XATTR`] (see [`source_of`]), else its line in `long_tree`
/// (`musicfs tree --long`). Other files (cover art, ...) are left out.
pub fn track_sources(
    mount_root: &Path,
    origins: &[PathBuf],
    long_tree: &[TreeEntry],
) -> Result<BTreeMap<PathBuf, PathBuf>> {
    let by_path: BTreeMap<&Path, &TreeEntry> =
        long_tree.iter().map(|e| (e.path.as_path(), e)).collect();
    let mut map = BTreeMap::new();
    for virt in walk_files(mount_root)? {
        let is_audio = virt
            .extension()
            .and_then(OsStr::to_str)
            .and_then(musicfs_core::Format::from_ext)
            .is_some();
        if !is_audio {
            continue;
        }
        let listed = virt
            .strip_prefix(mount_root)
            .ok()
            .and_then(|rel| by_path.get(rel))
            .and_then(|e| e.source.clone());
        let source = source_of(&virt, origins)?.or(listed).ok_or_else(|| {
            anyhow!(
                "{} has no {SOURCE_XATTR} xattr and no source in `musicfs tree --long`",
                virt.display()
            )
        })?;
        map.insert(virt, source);
    }
    Ok(map)
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the hard limit,
/// and the hard limit too when privileged); returns the new soft limit.
pub fn raise_nofile_limit(want: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit");
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let wanted = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: `wanted` is a valid rlimit; failure is reported through errno.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return Ok(want);
    }
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
        return Err(io::Error::last_os_error()).context("setrlimit");
    }
    Ok(lim.rlim_max)
}

/// The number of open fds of process `pid` (from `/proc/<pid>/fd`).
pub fn open_fd_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// A small deterministic PRNG (splitmix64), so random-read tests replay exactly.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// The fixture library the tests mount, built once per test process.
#[derive(Debug)]
pub struct Library {
    /// The origin dir holding it.
    pub root: PathBuf,
    /// The well-formed tracks (absolute paths), which must all show and play.
    pub good: Vec<PathBuf>,
    /// The malformed files (absolute paths), which must not break anything.
    pub broken: Vec<PathBuf>,
    /// [`checksum_tree`] of `root` right after it was built.
    pub checksums: BTreeMap<PathBuf, Checksum>,
    /// Everything the generator says about it (expected tags, bad links, ...).
    pub fixture: crate::fixtures::Fixture,
}

/// Where the shared library lives, so an exit hook can remove it (statics never drop).
static LIBRARY_DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

extern "C" fn remove_library_dir() {
    if let Ok(mut dir) = LIBRARY_DIR.lock() {
        if let Some(dir) = dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The fixture library, generated with ffmpeg on first use; panics if it cannot be built
/// (every test that needs it would fail anyway, and this says why).
pub fn library() -> &'static Library {
    static LIBRARY: std::sync::OnceLock<Library> = std::sync::OnceLock::new();
    LIBRARY.get_or_init(|| {
        build_library().unwrap_or_else(|e| panic!("building the fixture library: {e:#}"))
    })
}

fn build_library() -> Result<Library> {
    let dir = tempfile::Builder::new()
        .prefix("musicfs-e2e-library-")
        .tempdir()?
        .keep();
    if let Ok(mut slot) = LIBRARY_DIR.lock() {
        *slot = Some(dir.clone());
        // SAFETY: registering a plain `extern "C" fn` that captures nothing.
        unsafe { libc::atexit(remove_library_dir) };
    }
    // An unprivileged daemon must be able to reach the origin.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let fixture = crate::fixtures::build_fixture_library(&dir)?;
    let root = fixture.root.clone();
    let good = fixture
        .tracks
        .iter()
        .map(|t| root.join(&t.rel_path))
        .collect();
    let broken = fixture
        .broken
        .iter()
        .map(|b| root.join(&b.rel_path))
        .collect();
    let checksums = checksum_tree(&root)?;
    Ok(Library {
        root,
        good,
        broken,
        checksums,
        fixture,
    })
}

/// MD5 of the decoded audio stream (`ffmpeg -map 0:a -f md5`), as ffmpeg prints it.
pub fn audio_md5(path: &Path) -> Result<String> {
    crate::fixtures::audio_md5(path)
}

// ---------------------------------------------------------------------------------------
// Live-library helpers (changing origins under a running daemon).
// ---------------------------------------------------------------------------------------

/// Spawns `musicfsd` with `opts` on `state_dir` and `mountpoint`, stderr appended to
/// `log_path`, and returns at once, without waiting for the mount (crash tests kill it at a
/// chosen moment of its start-up).
pub fn spawn_musicfsd(
    opts: &MountOptions,
    state_dir: &Path,
    mountpoint: &Path,
    log_path: &Path,
) -> Result<Child> {
    spawn_daemon(
        &opts.args(state_dir, mountpoint),
        opts.run_as,
        log_path,
        None,
    )
}

/// Encodes `seconds` of audio into the FLAC file `path` with ffmpeg: white noise when
/// `noise` (incompressible, so the file is about 88 KB per second), else a sine of `freq` Hz
/// (a few KB). `tags` are written as Vorbis comments.
pub fn encode_flac(
    path: &Path,
    seconds: f64,
    freq: u32,
    noise: bool,
    tags: &[(&str, &str)],
) -> Result<()> {
    let source = if noise {
        format!("anoisesrc=d={seconds}:c=white:seed={freq}:a=0.5")
    } else {
        format!("sine=frequency={freq}:duration={seconds}")
    };
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", &source,
    ])
    .args(["-ac", "1", "-ar", "44100", "-c:a", "flac"]);
    for (k, v) in tags {
        cmd.arg("-metadata").arg(format!("{k}={v}"));
    }
    cmd.args(["-f", "flac"]).arg(path);
    run_ok(&mut cmd)?;
    Ok(())
}

/// A one-second 440 Hz FLAC made once per test process with ffmpeg: tests write retagged
/// copies of it ([`flac_with_comments`]) instead of running ffmpeg per track.
pub fn one_second_flac() -> &'static [u8] {
    static T: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.flac");
        encode_flac(&path, 1.0, 440, false, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        fs::read(&path).expect("reading the template")
    })
}

/// Four short FLAC files with different audio, made once per test process with ffmpeg:
/// every track of [`generated_track`]'s libraries is one of them with its own comments.
pub fn generated_track_templates() -> &'static [Vec<u8>] {
    static T: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        [220, 330, 440, 550]
            .iter()
            .map(|&freq| {
                let path = dir.path().join(format!("{freq}.flac"));
                encode_flac(&path, 0.25, freq, false, &[]).unwrap_or_else(|e| panic!("{e:#}"));
                fs::read(&path).expect("reading a template")
            })
            .collect()
    })
}

/// Track `i` (version `v`) of a generated library: one of 25 artists, 100 albums, its own
/// title (a later version a new take of it).
pub fn generated_track(i: u64, v: u32) -> Result<Vec<u8>> {
    let t = generated_track_templates();
    let title = if v == 0 {
        format!("Song {i}")
    } else {
        format!("Song {i} (take {v})")
    };
    flac_with_comments(
        &t[(i % t.len() as u64) as usize],
        &[
            ("TITLE", &title),
            ("ARTIST", &format!("Artist {:02}", i % 25)),
            ("ALBUM", &format!("Album {:03}", i % 100)),
            ("DATE", &(1980 + i % 40).to_string()),
            ("TRACKNUMBER", &(i % 15 + 1).to_string()),
        ],
    )
}

/// Where track `i` of a generated library goes under `origin` (30 folders).
pub fn generated_track_path(origin: &Path, i: u64) -> PathBuf {
    origin.join(format!("d{:02}/t{i:05}.flac", i % 30))
}

/// `flac` (a whole FLAC file) with its Vorbis comment block replaced by `comments`; every
/// other block and the audio frames are kept byte for byte. Lets a test make thousands of
/// differently tagged files without running ffmpeg for each.
pub fn flac_with_comments(flac: &[u8], comments: &[(&str, &str)]) -> Result<Vec<u8>> {
    if flac.get(..4) != Some(b"fLaC".as_slice()) {
        bail!("not a FLAC stream");
    }
    let mut blocks: Vec<(u8, &[u8])> = Vec::new();
    let mut pos = 4;
    loop {
        let header = flac
            .get(pos..pos + 4)
            .context("truncated FLAC metadata block header")?;
        let last = header[0] & 0x80 != 0;
        let kind = header[0] & 0x7f;
        let len =
            usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
        let body = flac
            .get(pos + 4..pos + 4 + len)
            .context("truncated FLAC metadata block")?;
        if kind != 4 {
            blocks.push((kind, body));
        }
        pos += 4 + len;
        if last {
            break;
        }
    }
    let vendor = b"musicfs live tests";
    let mut vc = Vec::new();
    vc.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    vc.extend_from_slice(vendor);
    vc.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for (k, v) in comments {
        let c = format!("{k}={v}");
        vc.extend_from_slice(&(c.len() as u32).to_le_bytes());
        vc.extend_from_slice(c.as_bytes());
    }
    // STREAMINFO must stay first.
    blocks.insert(1.min(blocks.len()), (4, &vc));
    let mut out = b"fLaC".to_vec();
    let n = blocks.len();
    for (i, (kind, body)) in blocks.iter().enumerate() {
        let flag = if i + 1 == n { 0x80 } else { 0 };
        let len = body.len();
        out.extend_from_slice(&[flag | kind, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
        out.extend_from_slice(body);
    }
    out.extend_from_slice(&flac[pos..]);
    Ok(out)
}

/// A tree entry without its inode number: what two scans of the same origin must agree on
/// (inodes come from catalog ids, which depend on the order files were first seen).
pub type TreeShape = (PathBuf, u64, Option<PathBuf>);

/// `musicfs tree --long` of `state_dir` as (path, size, source), in tree order.
pub fn tree_shape(state_dir: &Path) -> Result<Vec<TreeShape>> {
    Ok(musicfs_tree_long(state_dir)?
        .into_iter()
        .map(|e| (e.path, e.size, e.source))
        .collect())
}

/// The tree a clean `musicfs scan` of `origins` into a fresh state dir publishes.
pub fn clean_scan_shape(origins: &[PathBuf]) -> Result<Vec<TreeShape>> {
    let state = tempfile::Builder::new()
        .prefix("musicfs-clean-scan-")
        .tempdir()?;
    musicfs_scan(origins, state.path())?;
    tree_shape(state.path())
}

/// The first difference between two tree shapes, for assertion messages.
pub fn first_shape_difference(got: &[TreeShape], want: &[TreeShape]) -> Option<String> {
    let got_set: std::collections::BTreeSet<&TreeShape> = got.iter().collect();
    let want_set: std::collections::BTreeSet<&TreeShape> = want.iter().collect();
    let extra: Vec<_> = got_set.difference(&want_set).take(5).collect();
    let missing: Vec<_> = want_set.difference(&got_set).take(5).collect();
    if extra.is_empty() && missing.is_empty() && got.len() == want.len() {
        return None;
    }
    Some(format!(
        "{} entries vs {} expected; unexpected: {extra:?}; missing: {missing:?}",
        got.len(),
        want.len()
    ))
}

/// Waits until the daemon's log, from byte `from` on, has a line containing one of
/// `needles`; returns that line and the log length after it. Fails after `timeout`.
pub fn wait_for_log_line(
    log_path: &Path,
    from: usize,
    needles: &[&str],
    timeout: Duration,
) -> Result<(String, usize)> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = fs::read(log_path).unwrap_or_default();
        let tail = log.get(from..).unwrap_or_default();
        let mut offset = from;
        for line in tail.split_inclusive(|&b| b == b'\n') {
            offset += line.len();
            if !line.ends_with(b"\n") {
                break;
            }
            let text = String::from_utf8_lossy(line);
            if needles.iter().any(|n| text.contains(n)) {
                return Ok((text.trim_end().to_string(), offset));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no log line with any of {needles:?} within {timeout:?}; log:\n{}",
                String::from_utf8_lossy(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl MountedFs {
    /// Starts the daemon, asks it for a rescan (SIGHUP) and returns once it has finished a
    /// refresh, with that refresh's last log line. `READY=1` comes before the start-up
    /// reconcile, which adds the inotify watches as it lists each directory; the first
    /// finished refresh (the reconcile, or the SIGHUP's rescan when the daemon scanned before
    /// mounting and had nothing to reconcile) proves they are in place.
    pub fn start_watching(opts: MountOptions, timeout: Duration) -> Result<(MountedFs, String)> {
        let fs = MountedFs::start(opts)?;
        fs.kill(libc::SIGHUP)?;
        let (line, _) = wait_for_log_line(fs.log_path(), 0, REFRESH_DONE, timeout)?;
        Ok((fs, line))
    }
}

/// Log lines that end one refresh of the daemon's refresh loop (`index/src/refresh/`).
pub const REFRESH_DONE: &[&str] = &[
    "refresh found nothing new",
    "swapped in the new tree",
    "refresh failed",
];

impl MountedFs {
    /// The path of the daemon's captured stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}
