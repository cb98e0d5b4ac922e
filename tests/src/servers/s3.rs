//! An S3 server for tests: `s3s-fs`, serving a directory whose subdirectories are buckets,
//! with one access key, on a free 127.0.0.1 port.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::{find_binary, free_port, wait_for_port};

/// The access key id the server accepts.
pub const ACCESS_KEY: &str = "musicfs-test-key";
/// Its secret.
pub const SECRET_KEY: &str = "musicfs-test-secret-0123456789";
/// How `tools/run-tests.sh` installs the server.
pub const INSTALL: &str = "cargo install --locked s3s-fs --version 0.14.1 --features binary";

/// A running `s3s-fs`. Dropping it stops the server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    root: PathBuf,
    log: PathBuf,
}

impl S3Server {
    /// The `s3s-fs` binary, or an error saying how to install it.
    pub fn binary() -> Result<PathBuf> {
        find_binary("s3s-fs").ok_or_else(|| {
            anyhow!("s3s-fs is not installed (not on PATH nor in ~/.cargo/bin): run `{INSTALL}`")
        })
    }

    /// Serves `root` (each subdirectory a bucket; it must exist). The server's output goes
    /// to `log`.
    pub fn start(root: &Path, log: &Path) -> Result<S3Server> {
        let bin = Self::binary()?;
        let mut last = None;
        // A free port can be taken between our check and the server's bind: try again.
        for _ in 0..3 {
            let port = free_port()?;
            let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root)
                .env("RUST_LOG", "s3s_fs=warn,s3s=warn")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            match wait_for_port(port, &mut child, Duration::from_secs(30)) {
                Ok(()) => {
                    return Ok(S3Server {
                        child,
                        port,
                        root: root.to_path_buf(),
                        log: log.to_path_buf(),
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("s3s-fs did not start"))).with_context(|| {
            format!(
                "s3s-fs log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory it serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = crate::harness::send_signal(self.child.id(), libc::SIGTERM);
        match crate::harness::wait_child(&mut self.child, Duration::from_secs(5)) {
            Ok(Some(_)) => {}
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
