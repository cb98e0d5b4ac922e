//! Wiring shared by the `musicfsd` daemon and the `musicfs` CLI: argument and
//! configuration checks, logging, a progress bar, and telling systemd we are ready.
//!
//! Nothing here holds logic of its own beyond putting the crates together: scanning and the
//! refresh loop (publishing, reconciling after a restart, watching origins, swapping
//! snapshots) live in `musicfs-index` (`musicfs_index::refresh`), the catalog in
//! `musicfs-storage`, templates, snapshots and the snapshot diff in `musicfs-core`, serving
//! and the kernel's invalidation sink in `musicfs-fusedev`.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use musicfs_core::config::Config;
use musicfs_index::health::{probe_root, OfflineReason, PROBE_TIMEOUT};
use musicfs_index::scan::{Progress, ProgressFn};

/// Opts this process out of transparent huge pages. Tag reading allocates and frees
/// buffers of tens to hundreds of KiB per file; mimalloc marks its arenas for huge pages
/// (`madvise`), so fresh memory was faulted in as 2 MiB pages, each zeroed whole: more than
/// half of a first scan's time (perf: `clear_page_erms` under `do_huge_pmd_anonymous_page`).
/// Without them a first scan of 10k generated tracks went from 6.3k to 27–40k files/s.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and affects only this
    // process (and its children).
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "PR_SET_THP_DISABLE");
    }
}

/// Sets up `tracing` to stderr: `RUST_LOG` wins, else `level` (symphonia only for errors:
/// its per-file warnings about recoverable oddities would flood the log of a big scan, and
/// files it cannot read are reported by the scan itself).
pub fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},symphonia=error,symphonia_core=error")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The origins as the scans and the catalog name them: the canonical root of each one that
/// answers, else the path as given made absolute (so a missing origin still matches the
/// root the catalog recorded), with why it is unusable. A missing origin is not an error
/// here: its tracks are kept and served from the snapshot, with reads failing (see
/// `musicfs_index::health`).
pub fn resolve_origins(origins: &[PathBuf]) -> Result<ResolvedOrigins> {
    let mut resolved = ResolvedOrigins::default();
    for o in origins {
        match probe_root(o, PROBE_TIMEOUT) {
            Ok((root, _)) => resolved.roots.push(root),
            Err(reason) => {
                let abs = std::path::absolute(o)
                    .with_context(|| format!("origin {} has no absolute path", o.display()))?;
                resolved.roots.push(abs.clone());
                resolved.unusable.push((abs, reason));
            }
        }
    }
    Ok(resolved)
}

/// What [`resolve_origins`] found.
#[derive(Debug, Default)]
pub struct ResolvedOrigins {
    /// Every origin, in the order given.
    pub roots: Vec<PathBuf>,
    /// The origins that cannot be scanned now, and why.
    pub unusable: Vec<(PathBuf, OfflineReason)>,
}

impl ResolvedOrigins {
    /// Whether at least one origin can be scanned.
    pub fn any_usable(&self) -> bool {
        self.unusable.len() < self.roots.len()
    }
}

/// The configured origins as paths.
pub fn origin_paths(cfg: &Config) -> Vec<PathBuf> {
    cfg.origins.iter().map(|o| o.path.clone()).collect()
}

/// A progress callback for [`Library::progress`](musicfs_index::refresh::Library::progress)
/// that shows a spinner with the scan's running totals on stderr when it is a terminal
/// (`None` otherwise). The spinner appears when a scan starts and is cleared when it ends.
pub fn progress_bar() -> Option<ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);
    Some(Arc::new(move |p: Progress| {
        let Ok(mut bar) = bar.lock() else {
            return;
        };
        if p.done {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
            return;
        }
        let bar = bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(format!(
            "scanning: {} files seen, {} read, {} unchanged",
            p.seen, p.opened, p.unchanged
        ));
    }))
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) about our state, e.g. `READY=1`.
pub fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = target.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(Path::new(&target)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state}: {e}");
    }
}
