//! Test servers for the remote origins, run on 127.0.0.1 by the tests themselves: started
//! on a free port, ready once the port accepts connections (polled, never a fixed sleep),
//! stopped on `Drop`. [`proxy::CountingProxy`] sits in front of any of them to measure the
//! bytes a protocol moved; [`faulty::FaultyHttpProxy`] in front of an HTTP one injects
//! faults.

pub mod faulty;
pub mod proxy;
pub mod s3;
pub mod sftp;
pub mod smb;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A port nothing listens on right now (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `127.0.0.1:port` accepts a connection, failing if `child` exits first or
/// `deadline` passes.
pub fn wait_for_port(port: u16, child: &mut Child, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited ({status}) before listening on port {port}");
        }
        if start.elapsed() > deadline {
            bail!("nothing listens on port {port} after {deadline:?}");
        }
        // The poll interval while the server starts (a refused connect returns at once).
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `name` on `PATH` or in `~/.cargo/bin` (where `cargo install` puts it).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
