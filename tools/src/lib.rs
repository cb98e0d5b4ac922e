//! Wiring shared by the `musicfsd` daemon and the `musicfs` CLI: argument and
//! configuration checks, logging, a progress bar, and telling systemd we are ready.
//!
//! Besides the wiring, the control plane lives here ([`control`]): the gRPC API a running
//! daemon answers on its Unix socket, the event fan-out, metrics and webhooks.
//!
//! Nothing else here holds logic of its own beyond putting the crates together: scanning and the
//! refresh loop (publishing, reconciling after a restart, watching origins, swapping
//! snapshots) live in `musicfs-index` (`musicfs_index::refresh`), the catalog in
//! `musicfs-storage`, templates, snapshots and the snapshot diff in `musicfs-core`, serving
//! and the kernel's invalidation sink in `musicfs-fusedev`.

pub mod albums;
pub mod catalog_check;
pub mod control;
pub mod daemon_cli;
pub mod finder;
pub mod library_io;
pub mod plugins;
pub mod share;
pub mod tagging;

pub use daemon_cli::daemon_command;

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use musicfs_core::config::{Config, OriginConfig};
use musicfs_index::health::{OfflineReason, PROBE_TIMEOUT};
use musicfs_index::scan::{Progress, ProgressFn};
use musicfs_storage::cas::{Cas, CasOptions};
use musicfs_storage::origin::remote::RemoteOptions;
use musicfs_storage::origin::{
    open_origin_with, probe_within, Health, Origin, OriginError, OriginSettings, OriginSpec,
};

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

// mimalloc's `void mi_collect(bool force)`, from the C library `libmimalloc-sys` links
// into every binary of this crate (its `extended` feature declares the same function).
extern "C" {
    fn mi_collect(force: bool);
}

/// Tells `musicfs-index` how to return freed memory to the operating system after a scan,
/// a publish or a reconcile (see `musicfs_index::memory`): a forced `mi_collect`, which
/// purges the pages mimalloc keeps for reuse. Call it from a binary whose global allocator
/// is mimalloc.
pub fn release_memory_after_big_jobs() {
    fn purge() {
        // SAFETY: mi_collect takes a plain bool, may be called from any thread at any time,
        // and only returns free pages; the global allocator is mimalloc, whose library
        // defines the symbol.
        unsafe { mi_collect(true) }
    }
    musicfs_index::memory::set_release_hook(purge);
}

/// Sets up `tracing` to stderr: `RUST_LOG` wins, else `level` (symphonia only for errors:
/// its per-file warnings about recoverable oddities would flood the log of a big scan, and
/// files it cannot read are reported by the scan itself; tantivy only for warnings: it logs
/// every commit of the search index at info, which the index's own line sums up). The
/// filter can be changed later with [`set_log_level`].
pub fn init_logging(level: &str) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| log_filter(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FILTER.set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
}

type FilterReload = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: std::sync::OnceLock<FilterReload> = std::sync::OnceLock::new();

fn log_filter(
    level: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::try_new(format!(
        "{level},symphonia=error,symphonia_core=error,tantivy=warn,h2=warn,hyper=warn,\
         hyper_util=warn,tower=warn,tonic=warn,reqwest=warn,rustls=warn"
    ))
}

/// Changes the log filter of a running process (the control API's `log_level`), with the
/// same rules as [`init_logging`]; an error names what does not parse.
pub fn set_log_level(level: &str) -> Result<(), String> {
    let filter = log_filter(level).map_err(|e| format!("bad log filter {level:?}: {e}"))?;
    let reload = LOG_FILTER
        .get()
        .ok_or_else(|| "logging was not set up by init_logging".to_string())?;
    reload(filter)
}

/// A bad origin spec on the command line, in `MUSICFS_ORIGINS` or in the configuration:
/// a usage error (the binaries exit 2), not a failure of the library.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadOrigin(#[from] pub OriginError);

/// Parses an origin spec as given (`/music`, `file:///music`, `s3://…`, …); a relative
/// local path is taken relative to the working directory.
pub fn parse_origin(given: &OsStr) -> Result<OriginSpec, BadOrigin> {
    match OriginSpec::parse_os(given) {
        Err(OriginError::RelativePath { path }) => {
            let abs = std::path::absolute(given).map_err(|e| OriginError::BadSpec {
                spec: path,
                reason: format!("cannot make it absolute: {e}"),
            })?;
            Ok(OriginSpec::parse_os(abs.as_os_str())?)
        }
        other => Ok(other?),
    }
}

/// Parses and opens every origin (see [`parse_origin`]), then probes each one. A spec that
/// does not parse, or names a kind of origin without a driver (`s3`, `sftp`, `smb` for now),
/// is a [`BadOrigin`]. A missing or unreachable origin is not an error here: it is listed
/// in [`ResolvedOrigins::unusable`], its tracks are kept and served from the snapshot, with
/// reads failing (see `musicfs_index::health`).
pub fn resolve_origins(given: &[OriginConfig]) -> Result<ResolvedOrigins, BadOrigin> {
    let mut resolved = ResolvedOrigins::default();
    for g in given {
        let origin = open_origin_with(&parse_origin(g.path.as_os_str())?, &settings_of(g))?;
        if let Health::Offline(why) = probe_within(&origin, None, PROBE_TIMEOUT) {
            resolved
                .unusable
                .push((origin.spec().to_string(), OfflineReason::from(why)));
        }
        resolved.origins.push(origin);
    }
    Ok(resolved)
}

/// What [`resolve_origins`] found.
#[derive(Debug, Default)]
pub struct ResolvedOrigins {
    /// Every origin, opened, in the order given.
    pub origins: Vec<Arc<dyn Origin>>,
    /// The origins that cannot be scanned now (by their display form), and why.
    pub unusable: Vec<(String, OfflineReason)>,
}

impl ResolvedOrigins {
    /// Whether at least one origin can be scanned.
    pub fn any_usable(&self) -> bool {
        self.unusable.len() < self.origins.len()
    }
}

/// The plugins `cfg` names, loaded from its plugin dir, with `plugin://` origins opened
/// through them (so every way of opening an origin knows them).
pub fn start_plugins(cfg: &Config) -> anyhow::Result<Arc<plugins::Plugins>> {
    use anyhow::Context;
    let loaded = Arc::new(plugins::Plugins::configured(cfg));
    for name in &cfg.plugins {
        loaded
            .load(name)
            .with_context(|| format!("plugin {name:?} (in `plugins`)"))?;
    }
    let opener = loaded.clone();
    musicfs_storage::origin::set_plugin_opener(Arc::new(move |spec| opener.open_origin(spec)));
    Ok(loaded)
}

/// Opens the state directory's chunk cache (`<state>/cas`) with the configured budget (a
/// smaller budget than before evicts down to it). One process holds it at a time.
pub fn open_cache(cfg: &Config) -> anyhow::Result<Cas> {
    use anyhow::Context;
    let dir = cfg.state_dir().join("cas");
    let opts = CasOptions {
        budget: cfg.cache_budget.0,
        ..CasOptions::default()
    };
    Cas::open(&dir, opts).with_context(|| format!("cannot open the chunk cache {}", dir.display()))
}

/// [`read_path`]'s answer.
pub struct ReadPath {
    /// The remote origins as the read path opens them (through the chunk cache).
    pub readers: Vec<Arc<dyn Origin>>,
    /// The chunk cache, when some origin is remote.
    pub cas: Option<Arc<Cas>>,
    /// Each remote origin's cache hits and misses, by its spec.
    pub counters: Vec<(String, Arc<musicfs_storage::origin::CacheCounters>)>,
    /// The shared chunk tier, when configured.
    pub tier: Option<Arc<musicfs_storage::origin::S3Tier>>,
}

/// The shared chunk tier the configuration names (`shared_tier`), opened without
/// contacting it; `None` when there is none.
pub fn open_tier(cfg: &Config) -> anyhow::Result<Option<Arc<musicfs_storage::origin::S3Tier>>> {
    use anyhow::Context;
    let Some(spec) = &cfg.shared_tier else {
        return Ok(None);
    };
    let parsed = musicfs_storage::origin::OriginSpec::parse(spec)
        .with_context(|| format!("shared_tier {spec:?}"))?;
    if !matches!(parsed, musicfs_storage::origin::OriginSpec::S3(_)) {
        anyhow::bail!("shared_tier {spec:?}: the shared tier must be an s3:// bucket");
    }
    let key_file = cfg
        .shared_tier_key_file
        .as_ref()
        .context("shared_tier needs shared_tier_key_file")?;
    let key = std::fs::read_to_string(key_file)
        .with_context(|| format!("cannot read shared_tier_key_file {}", key_file.display()))?;
    let key = key.lines().next().unwrap_or("").trim().as_bytes().to_vec();
    let tier = musicfs_storage::origin::S3Tier::open(&parsed, &Default::default(), key)
        .with_context(|| format!("shared_tier {spec:?}"))?;
    tracing::info!(tier = tier.shown(), "shared chunk tier");
    Ok(Some(tier))
}

/// The origins as the FUSE read path opens them: each remote one (no local root) through
/// the chunk cache, which is opened only when there is one. Local origins are read as
/// scanned (passthrough, io_uring), so they are not listed.
pub fn read_path(cfg: &Config, origins: &[Arc<dyn Origin>]) -> anyhow::Result<ReadPath> {
    use musicfs_storage::origin::{AudioChunking, CacheOptions, CachedOrigin};
    let remote: Vec<&Arc<dyn Origin>> = origins
        .iter()
        .filter(|o| o.local_root().is_none())
        .collect();
    if remote.is_empty() {
        return Ok(ReadPath {
            readers: Vec::new(),
            cas: None,
            counters: Vec::new(),
            tier: None,
        });
    }
    let cas = Arc::new(open_cache(cfg)?);
    let tier = open_tier(cfg)?;
    let chunking = Arc::new(AudioChunking::default());
    let mut counters = Vec::new();
    let readers = remote
        .into_iter()
        .map(|o| {
            let cached = CachedOrigin::with_tier(
                Arc::clone(o),
                cas.clone(),
                chunking.clone(),
                CacheOptions::default(),
                tier.clone()
                    .map(|t| t as Arc<dyn musicfs_storage::origin::ChunkTier>),
            );
            counters.push((o.spec().to_string(), cached.counters()));
            Arc::new(cached) as Arc<dyn Origin>
        })
        .collect();
    Ok(ReadPath {
        readers,
        cas: Some(cas),
        counters,
        tier,
    })
}

/// What the origin's table in the configuration says about opening and calling it.
pub fn settings_of(oc: &OriginConfig) -> OriginSettings {
    let mut remote = RemoteOptions::default();
    if let Some(t) = oc.timeout_secs {
        remote.timeout = std::time::Duration::from_secs_f64(t);
    }
    if let Some(n) = oc.concurrency {
        remote.concurrency = n;
    }
    remote.bandwidth = oc.bandwidth_limit.map(|b| b.0);
    OriginSettings {
        credentials_file: oc.credentials_file.clone(),
        profile: oc.profile.clone(),
        identity_file: oc.identity_file.clone(),
        known_hosts: oc.known_hosts.clone(),
        password_file: oc.password_file.clone(),
        remote,
    }
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

/// Sends systemd `WATCHDOG=1` at half the `WatchdogSec` interval (when the service sets
/// one: `WATCHDOG_USEC`, for this process per `WATCHDOG_PID`) while the mount answers; a
/// daemon whose mount stopped serving misses its pings and is restarted. The thread ends
/// when the daemon shuts down.
pub fn systemd_watchdog(
    daemon: Arc<control::server::Daemon>,
) -> Option<std::thread::JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    let weak = Arc::downgrade(&daemon);
    drop(daemon);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            let Some(d) = weak.upgrade() else { return };
            if d.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            match d.serving() {
                Ok(()) => sd_notify("WATCHDOG=1"),
                Err(why) => tracing::warn!("not pinging the systemd watchdog: {why}"),
            }
            drop(d);
            std::thread::sleep(every);
        })
        .ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_origin_is_taken_from_the_working_directory_and_a_url_is_not() {
        let spec = parse_origin(OsStr::new("music/./lib")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            spec,
            OriginSpec::local(std::path::absolute("music/./lib").unwrap())
        );
        assert!(spec.to_string().starts_with(&*cwd.to_string_lossy()));
        assert_eq!(
            parse_origin(OsStr::new("s3://bucket/music"))
                .unwrap()
                .scheme(),
            "s3"
        );
        assert!(parse_origin(OsStr::new("gopher://host/x")).is_err());
    }

    #[test]
    fn an_origin_of_an_unknown_scheme_is_a_bad_origin_naming_its_scheme() {
        let given = [OriginConfig::local("webdav://nas/share/music".into())];
        let e = resolve_origins(&given).unwrap_err();
        assert!(
            matches!(&e.0, OriginError::UnknownScheme { scheme, .. } if scheme == "webdav"),
            "{e}"
        );
        assert!(e.to_string().contains("webdav"), "{e}");
    }

    #[test]
    fn a_missing_origin_is_opened_and_listed_unusable() {
        let dir =
            std::env::temp_dir().join(format!("musicfs-no-such-origin-{}", std::process::id()));
        let resolved = resolve_origins(&[OriginConfig::local(dir.clone())]).unwrap();
        assert_eq!(resolved.origins.len(), 1);
        assert!(!resolved.any_usable());
        let (shown, why) = &resolved.unusable[0];
        assert_eq!(shown, &dir.display().to_string());
        assert!(matches!(why, OfflineReason::Missing(_)), "{why}");
    }
}
