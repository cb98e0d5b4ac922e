//! Wiring shared by the `musicfsd` daemon and the `musicfs` CLI: the state directory,
//! configuration merging, logging, and publishing a snapshot from the catalog.
//!
//! [`live`] keeps the served tree current: publishing, reconciling after a restart,
//! watching origins and swapping snapshots with kernel invalidation.
//!
//! Nothing here holds logic of its own beyond putting the crates together: scanning lives in
//! `musicfs-index`, the catalog in `musicfs-storage`, templates and snapshots in
//! `musicfs-core`, serving in `musicfs-fusedev`.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use musicfs_core::config::Config;
use musicfs_index::health::{probe_root, OfflineReason, PROBE_TIMEOUT};
use musicfs_index::scan::{ScanOptions, ScanReport};
use musicfs_storage::Catalog;

pub mod live;

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root`, created if missing.
    pub fn create(root: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create state dir {}", root.display()))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The LMDB catalog directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.root.join("catalog")
    }

    /// The published tree snapshot.
    pub fn snapshot_path(&self) -> PathBuf {
        self.root.join("tree.snap")
    }

    /// Opens (or creates) the catalog.
    pub fn open_catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.catalog_dir()).context("cannot open the catalog")
    }
}

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

/// Scans `origins` into the catalog with `opts`, with a progress bar when stderr is a
/// terminal.
pub fn scan_with_progress(
    catalog: &Catalog,
    origins: &[PathBuf],
    mut opts: ScanOptions,
) -> Result<ScanReport> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    if let Some(bar) = bar.clone() {
        opts.progress = Some(Arc::new(move |p: musicfs_index::scan::Progress| {
            bar.set_message(format!(
                "scanning: {} files seen, {} read, {} unchanged",
                p.seen, p.opened, p.unchanged
            ));
        }));
    }
    let report = musicfs_index::scan::scan(catalog, origins, &opts)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report)
}

/// One line (plus one per skipped file) describing a scan.
pub fn scan_summary(r: &ScanReport) -> String {
    let mut s = format!(
        "scanned {} files in {:.2}s ({:.0} files/s): {} added, {} changed, {} removed, {} unchanged, {} opened, {} skipped",
        r.seen,
        r.elapsed.as_secs_f64(),
        r.files_per_sec(),
        r.added,
        r.changed,
        r.removed,
        r.unchanged,
        r.opened,
        r.skipped.len()
    );
    for o in &r.offline {
        s.push_str(&format!(
            "\n  origin {} offline, its tracks kept: {}",
            o.origin.display(),
            o.reason
        ));
    }
    for skip in &r.skipped {
        s.push_str(&format!(
            "\n  skipped {}: {}",
            skip.path.display(),
            skip.reason
        ));
    }
    s
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
