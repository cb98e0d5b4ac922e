//! A throwaway SFTP server for end-to-end tests: the system's OpenSSH `sshd` on
//! 127.0.0.1 and a free high port, with a host key and a user key made by `ssh-keygen` in a
//! temp dir, the `internal-sftp` subsystem, and a known_hosts file holding its host key.
//! [`SftpServer::start`] returns once the port accepts connections; dropping the server
//! kills sshd and removes the temp dir.
//!
//! Tests run as root: sshd is configured with `PermitRootLogin yes`, `StrictModes no` and
//! its authorized keys in the temp dir, so nothing outside it (no `~/.ssh`) is touched
//! except `/run/sshd`, sshd's privilege separation directory, made if missing.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// Where Debian's openssh-server puts the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running sshd serving SFTP. See the module documentation.
#[derive(Debug)]
pub struct SftpServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl SftpServer {
    /// Starts sshd; fails (saying what to install) when there is no sshd or ssh-keygen.
    pub fn start() -> Result<SftpServer> {
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} not found: install openssh-server (tools/run-tests.sh does) to run the SFTP tests");
        }
        let dir = tempfile::Builder::new().prefix("musicfs-sshd-").tempdir()?;
        let d = dir.path();
        for key in ["host_key", "user_key", "other_host_key"] {
            keygen(&d.join(key))?;
        }
        fs::copy(d.join("user_key.pub"), d.join("authorized_keys"))?;
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let port = free_port()?;
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {dir}/host_key\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             PermitRootLogin yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             MaxStartups 64\n\
             MaxSessions 64\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            dir = d.display()
        );
        fs::write(d.join("sshd_config"), config)?;
        let log = fs::File::create(d.join("sshd.log"))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        let mut server = SftpServer { child, port, dir };
        server.wait_listening()?;
        let line = server.known_hosts_line(port, "host_key.pub")?;
        fs::write(server.known_hosts(), line)?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("sshd exited at start ({status}); its log:\n{}", self.log());
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                bail!(
                    "sshd did not listen on port {} within {START_DEADLINE:?}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::yield_now();
        }
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key root logs in with (no passphrase).
    pub fn identity_file(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// A known_hosts file holding the server's key for `[127.0.0.1]:PORT`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The known_hosts line for the server's real key (`which = "host_key.pub"`) or another
    /// key it does not hold (`"other_host_key.pub"`), as reached on `port` (a proxy's port
    /// shows under its own name).
    pub fn known_hosts_line(&self, port: u16, which: &str) -> Result<String> {
        let public = fs::read_to_string(self.dir.path().join(which))?;
        let mut parts = public.split_whitespace();
        let (Some(kind), Some(key)) = (parts.next(), parts.next()) else {
            bail!("unexpected public key file {which}: {public:?}");
        };
        Ok(format!("[127.0.0.1]:{port} {kind} {key}\n"))
    }

    /// The SHA256 fingerprint of the server's host key, as `ssh-keygen -l` prints it.
    pub fn host_key_fingerprint(&self) -> Result<String> {
        let out = crate::harness::run_ok(
            Command::new("ssh-keygen")
                .args(["-l", "-E", "sha256", "-f"])
                .arg(self.dir.path().join("host_key.pub")),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("unexpected ssh-keygen -l output {text:?}"))
    }

    /// The origin spec for directory `dir` on this server as reached on `port`.
    pub fn spec(&self, port: u16, dir: &Path) -> String {
        format!("sftp://root@127.0.0.1:{port}{}", dir.display())
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A temp dir of the server's own, for files a test writes beside its keys.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> Result<()> {
    crate::harness::run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "musicfs-test", "-f"])
            .arg(path),
    )
    .context("ssh-keygen (install openssh-client)")?;
    Ok(())
}

/// A port nobody listens on now (the kernel's pick, released at once for sshd to take).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
