//! A private Samba server for the SMB origin's tests: `smbd` in the foreground on
//! 127.0.0.1 and a free high port, with its configuration, password database, locks, state
//! and logs in a temp dir, serving one read-only share `[music]`. Ready once its port
//! accepts a connection; stopped (SIGTERM, then SIGKILL) when dropped.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::{free_port, wait_for_port};

/// How long `smbd` may take to listen.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// The share's name.
pub const SHARE: &str = "music";

/// A running `smbd`. See the module documentation.
#[derive(Debug)]
pub struct SmbServer {
    child: Child,
    dir: TempDir,
    port: u16,
    user: String,
    password: String,
}

/// Where `program` is: on `PATH`, or in the sbin dirs a non-login shell may lack.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The user the tests run as (the share is served as this user, who must exist in
/// `/etc/passwd` for Samba to map the login).
fn current_user() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .context("running id -un")?;
    let name = String::from_utf8(out.stdout).context("user name is not UTF-8")?;
    let name = name.trim();
    if !out.status.success() || name.is_empty() {
        bail!("cannot tell the current user name");
    }
    Ok(name.to_owned())
}

impl SmbServer {
    /// Starts `smbd` serving a fresh, empty share dir ([`SmbServer::share_dir`]); the
    /// caller fills it (Samba reads it afresh on every request). Fails with a clear
    /// message when Samba is not installed.
    pub fn start() -> Result<SmbServer> {
        let (Some(smbd), Some(smbpasswd)) = (find_program("smbd"), find_program("smbpasswd"))
        else {
            bail!(
                "smbd/smbpasswd not found: install Samba (apt-get install samba) to run the \
                 SMB origin tests (tools/run-tests.sh does)"
            );
        };
        let dir = tempfile::Builder::new().prefix("musicfs-smbd-").tempdir()?;
        let root = dir.path().canonicalize()?;
        for sub in [
            "share", "private", "lock", "state", "cache", "pid", "ncalrpc",
        ] {
            fs::create_dir(root.join(sub))?;
        }
        let port = free_port()?;
        let user = current_user()?;
        let password = format!("pw-{}-{port}", std::process::id());
        let conf = root.join("smb.conf");
        fs::write(&conf, config(&root, port))?;
        add_user(&smbpasswd, &conf, &user, &password)?;
        let log = fs::File::create(root.join("smbd.log"))?;
        // A process group of its own: smbd signals its whole group when it stops, which
        // must not be the test runner's.
        let child = Command::new(smbd)
            .process_group(0)
            .args(["--foreground", "--no-process-group", "--debug-stdout"])
            .arg("-s")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting smbd")?;
        let mut server = SmbServer {
            child,
            dir,
            port,
            user,
            password,
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> Result<()> {
        wait_for_port(self.port, &mut self.child, START_DEADLINE)
            .with_context(|| format!("smbd did not start; its log:\n{}", self.log()))
    }

    /// The shared directory (`[music]`).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// The port it listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user that may log in.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// That user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The origin spec of the share, without the password: `smb://USER@127.0.0.1:PORT/music`.
    pub fn spec(&self) -> String {
        format!("smb://{}@127.0.0.1:{}/{SHARE}", self.user, self.port)
    }

    /// What smbd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("smbd.log")).unwrap_or_default()
    }

    /// The temp dir holding everything (for files a test wants beside the share).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmbServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(root: &Path, port: u16) -> String {
    let r = root.display();
    format!(
        "[global]
  server role = standalone server
  smb ports = {port}
  bind interfaces only = yes
  interfaces = lo
  disable netbios = yes
  private dir = {r}/private
  lock directory = {r}/lock
  state directory = {r}/state
  cache directory = {r}/cache
  pid directory = {r}/pid
  ncalrpc dir = {r}/ncalrpc
  log file = {r}/smbd.log
  passdb backend = tdbsam:{r}/private/passdb.tdb
  map to guest = never
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_02

[{SHARE}]
  path = {r}/share
  read only = yes
  browseable = yes
"
    )
}

/// Adds `user` with `password` to the server's password database.
fn add_user(smbpasswd: &Path, conf: &Path, user: &str, password: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(smbpasswd)
        .arg("-c")
        .arg(conf)
        .args(["-a", "-s", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting smbpasswd")?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}\n{password}")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "smbpasswd -a {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
