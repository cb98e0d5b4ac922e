//! The unprivileged auto-unmount watchdog.

use std::io;
use std::path::Path;

/// Unprivileged auto-unmount: a `sh` in its own session reading a pipe whose write end only
/// the daemon holds. A clean stop writes a line (the watchdog exits); if the daemon dies, the
/// read sees EOF and the watchdog runs `fusermount3 -u -z` on the mountpoint.
pub(super) struct Watchdog {
    child: std::process::Child,
}

impl Watchdog {
    pub(super) fn spawn(mp: &Path) -> io::Result<Watchdog> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"if read -r _; then exit 0; fi; exec fusermount3 -u -z -q -- "$0""#)
            .arg(mp)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe, as required between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        Ok(Watchdog {
            child: cmd.spawn()?,
        })
    }

    pub(super) fn disarm(mut self) {
        use std::io::Write;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
}
