//! `musicfsd`: mounts the MusicFS tree and serves it until unmounted or signalled.
//!
//! Start-up is O(1) when a snapshot matching the configuration exists: it is mapped and
//! served at once. Without one (first run, new origin or template, corrupt snapshot) the
//! catalog is brought up to date and a snapshot published before mounting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use clap::Parser;
use musicfs_core::config::Config;
use musicfs_core::health::OriginHealth;
use musicfs_core::snapshot::Snapshot;
use musicfs_core::template::Template;
use musicfs_fusedev::opstats::OpStats;
use musicfs_fusedev::MountOptions;
use musicfs_index::health::PROBE_TIMEOUT;
use musicfs_index::refresh::RefreshControl;
use musicfs_index::refresh::{
    plan_watches, watch_origins, Library, Prober, Refresher, StateDir, Trigger,
};
use musicfs_storage::origin::Origin;
use musicfs_tools::control::events::{AccessLog, Hub, WebhookQueue};
use musicfs_tools::control::server::{Daemon, OriginInfo};
use musicfs_tools::control::{Bound, ControlPlane};
use musicfs_tools::daemon_cli::DaemonCli as Cli;
use musicfs_tools::finder::LibraryFinder;
use musicfs_tools::{init_logging, progress_bar, read_path, resolve_origins, sd_notify, ReadPath};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad usage, configuration or environment (mountpoint, origins).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    if let Some(code) = musicfs_tools::catalog_check::run_if_asked() {
        return code;
    }
    musicfs_tools::disable_transparent_huge_pages();
    musicfs_tools::release_memory_after_big_jobs();
    let cli = Cli::parse();
    let cfg = match merge_config(&cli) {
        Ok(cfg) => cfg,
        Err(e) => return usage_error(e),
    };
    init_logging(&cfg.log_level);
    if let Err(e) = check_mountpoint(&cli.mountpoint) {
        return usage_error(e.into());
    }
    // Before the origins: a plugin may serve one.
    let plugins = match musicfs_tools::start_plugins(&cfg) {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    let origins = match usable_origins(&cfg) {
        Ok(o) => o,
        Err(e) => return usage_error(e),
    };
    match run(&cli, &cfg, &origins, plugins) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("musicfsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The mountpoint checks, clearing first a dead mount a killed MusicFS daemon left there.
fn check_mountpoint(mp: &std::path::Path) -> Result<(), musicfs_fusedev::FuseError> {
    use musicfs_fusedev::session;
    match session::check_mountpoint(mp) {
        Err(musicfs_fusedev::FuseError::DeadMount(_)) if session::clear_dead_mount(mp)? => {
            session::check_mountpoint(mp).map(drop)
        }
        other => other.map(drop),
    }
}

/// The origins to serve, opened. One that cannot be read now (missing, unmounted) is
/// served from the catalog and the snapshot, offline, until it comes back; only when no
/// origin can be read and there is no snapshot to serve is there nothing to start with.
fn usable_origins(cfg: &Config) -> Result<Vec<Arc<dyn Origin>>> {
    let resolved = resolve_origins(&cfg.origins)?;
    for (origin, reason) in &resolved.unusable {
        warn!(%origin, %reason, "origin unusable at start-up: serving its cataloged tracks offline until it is back");
    }
    if !resolved.unusable.is_empty() && !resolved.any_usable() {
        let snapshot = StateDir::create(&cfg.state_dir())?.snapshot_path();
        if let Err(e) = Snapshot::open(&snapshot) {
            anyhow::bail!(
                "no origin can be read ({}) and there is no snapshot to serve: {e}",
                resolved
                    .unusable
                    .iter()
                    .map(|(origin, why)| format!("{origin}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    Ok(resolved.origins)
}

fn usage_error(e: anyhow::Error) -> ExitCode {
    eprintln!("musicfsd: {e:#}");
    ExitCode::from(EXIT_USAGE)
}

fn merge_config(cli: &Cli) -> Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(t) = cli.threads {
        cfg.threads = t;
    }
    if !cli.origins.is_empty() {
        // An origin named on the command line keeps its table's settings (credentials,
        // identity, polling) when the configuration has one for the same spec.
        cfg.origins = cli
            .origins
            .iter()
            .map(|p| {
                cfg.origins
                    .iter()
                    .find(|o| o.path == *p)
                    .cloned()
                    .unwrap_or_else(|| musicfs_core::config::OriginConfig::local(p.clone()))
            })
            .collect();
    }
    if let Some(t) = &cli.template {
        cfg.template = t.clone();
    }
    if let Some(d) = &cli.state_dir {
        cfg.state_dir = Some(d.clone());
    }
    cfg.allow_other |= cli.allow_other;
    cfg.uid = cli.uid.or(cfg.uid);
    cfg.gid = cli.gid.or(cfg.gid);
    if let Some(u) = cli.umask {
        cfg.umask = u;
    }
    if let Some(t) = cli.entry_timeout {
        cfg.entry_timeout_secs = t;
    }
    if let Some(t) = cli.attr_timeout {
        cfg.attr_timeout_secs = t;
    }
    if let Some(t) = cli.negative_timeout {
        cfg.negative_timeout_secs = Some(t);
    }
    if let Some(kb) = cli.readahead_kb {
        cfg.readahead_kb = kb;
    }
    if let Some(s) = cli.probe_interval {
        cfg.probe_interval_secs = s;
    }
    if let Some(n) = cli.prefetch_tracks {
        cfg.prefetch_tracks = n;
    }
    cfg.skip_open |= cli.skip_open;
    if let Some(l) = &cli.log_level {
        cfg.log_level = l.clone();
    }
    if let Some(p) = cli.passthrough {
        cfg.passthrough = p;
    }
    if let Some(t) = cli.transport {
        cfg.transport = t;
    }
    cfg.enable_uring_param |= cli.enable_uring_param;
    cfg.validate()?;
    musicfs_tools::finder::check_collections(&cfg)?;
    Ok(cfg)
}

fn run(
    cli: &Cli,
    cfg: &Config,
    origins: &[Arc<dyn Origin>],
    plugins: Arc<musicfs_tools::plugins::Plugins>,
) -> Result<()> {
    // Registered before anything slow so an early SIGTERM is queued, not fatal: it unmounts
    // as soon as the mount is up.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let state = StateDir::create(&cfg.state_dir())?;
    let ReadPath {
        readers,
        cas,
        counters: cache_counters,
        tier,
    } = read_path(cfg, origins)?;
    if cli.from_shared {
        let tier = match &tier {
            Some(t) => t.clone(),
            // No remote origin, so the read path opened none: the library still can be.
            None => musicfs_tools::open_tier(cfg)?
                .context("--from-shared needs shared_tier in the configuration")?,
        };
        let name = musicfs_tools::share::bundle_name(cfg, origins.iter().map(|o| o.key()));
        musicfs_tools::share::pull(&tier, &name, &cfg.state_dir())?;
    }
    // Events: the FUSE workers, the refresh loop and origin health changes report here.
    let hub = Arc::new(Hub::new());
    plugins.report_to(hub.clone());
    let webhooks = cfg
        .webhooks
        .iter()
        .map(|w| WebhookQueue::new(w.clone()).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let access_log = match cfg.access_log_path() {
        Some(p) => Some(
            AccessLog::open(&p, cfg.access_log_max_bytes.0, cfg.access_log_keep)
                .with_context(|| format!("cannot open the access log {}", p.display()))?,
        ),
        None => None,
    };
    let refresh_control = Arc::new(RefreshControl::default());
    let health = Arc::new(OriginHealth::default());
    health.report_to(hub.clone());
    let library = Library {
        catalog: Arc::new(state.open_catalog()?),
        template: Template::parse(&cfg.template)?,
        origins: origins.to_vec(),
        readers,
        state,
        mass_removal_threshold: cfg.mass_removal_threshold,
        health,
        progress: Some(scan_progress(refresh_control.clone())),
        renditions: musicfs_index::refresh::no_renditions(),
    };
    let snapshot = library.load_or_build()?;
    let finder = Arc::new(LibraryFinder::open(
        cfg,
        &library.state,
        library.catalog.clone(),
    )?);
    // The read path opens local files through the same origin objects the scans use, and
    // remote ones through the chunk cache.
    let origin_table = Arc::new(ArcSwap::from_pointee(library.origin_table()?));
    info!(
        generation = snapshot.generation(),
        tracks = snapshot.track_count(),
        "serving snapshot"
    );
    // Bound before the mount: a second daemon on this state directory, or a bad
    // metrics_listen, stops the start-up with nothing mounted.
    let bound = Bound::bind(cfg)?;
    let op_stats = Arc::new(OpStats::default());
    let opts = MountOptions {
        threads: cfg.worker_threads(),
        entry_timeout: cfg.entry_timeout(),
        attr_timeout: cfg.attr_timeout(),
        negative_timeout: cfg.negative_timeout(),
        readahead_kb: Some(cfg.readahead_kb),
        skip_open: cfg.skip_open,
        allow_other: cfg.allow_other,
        uid: cfg.uid,
        gid: cfg.gid,
        umask: cfg.umask,
        passthrough: cfg.passthrough,
        transport: cfg.transport,
        enable_uring_param: cfg.enable_uring_param,
        origin_health: library.health.clone(),
        origins: Some(origin_table.clone()),
        finder: Some(finder.clone() as Arc<dyn musicfs_fusedev::virt::Finder>),
        play_log: Some((
            Arc::new(musicfs_tools::finder::PlayRecorder::start(
                library.catalog.clone(),
            )?),
            std::time::Duration::from_secs(cfg.play_after_secs),
        )),
        album_extras: Some(Arc::new(musicfs_tools::albums::LibraryAlbums::new(
            library.catalog.clone(),
            &library.state.art_dir(),
            origin_table.clone(),
        ))),
        events: Some(hub.clone()),
        renditions: Some(library.renditions.clone()),
        prefetch: Some(musicfs_fusedev::prefetch::PrefetchConfig {
            tracks: cfg.prefetch_tracks,
            after_bytes: cfg.prefetch_after.0,
            head_bytes: cfg.prefetch_head.0.max(1),
            whole_next: cfg.prefetch_whole_next,
        }),
        op_stats: (!cli.no_op_metrics).then(|| op_stats.clone()),
        ..MountOptions::default()
    };
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let catalog = library.catalog.clone();
    let mounted =
        match musicfs_fusedev::mount(&cli.mountpoint, shared.clone(), Some(catalog), &opts) {
            Ok(m) => m,
            // Unmounted from outside between mount(2) and our first stat of it: a clean stop.
            Err(musicfs_fusedev::FuseError::NotAnswering { .. })
                if std::fs::canonicalize(&cli.mountpoint)
                    .and_then(|mp| musicfs_fusedev::session::is_mountpoint(&mp))
                    .is_ok_and(|mounted| !mounted) =>
            {
                info!("unmounted during start-up");
                return Ok(());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot mount {}", cli.mountpoint.display()))
            }
        };
    info!(mountpoint = %cli.mountpoint.display(), "mounted");
    // Served from the snapshot already; the catalog is walked in a child process before
    // anything reads it whole (a damaged page kills the reader, see catalog_check).
    if let Err(e) = musicfs_tools::catalog_check::check_in_background(
        library.catalog.clone(),
        &library.state.catalog_dir(),
    ) {
        warn!("cannot start the catalog check, using the catalog unchecked: {e}");
    }
    let _events_thread = hub.start(shared.clone(), access_log, webhooks.clone())?;

    // Serve first; then catch up with what changed while we were down: the start-up
    // reconcile is a stat walk that adds each directory's inotify watch just before listing
    // it, on the refresh thread, off the start-up path.
    let (tx, rx) = crossbeam_channel::unbounded();
    let (inotify, mut polled) = plan_watches(cfg, origins);
    let watches = watch_origins(&inotify, &tx);
    if watches.is_none() {
        polled.extend(inotify.iter().map(|(i, _)| (*i, Duration::from_secs(60))));
    }
    let _ = tx.send(Trigger::Rescan("start-up reconcile"));
    let sink = match mounted.notifier() {
        Ok(n) => Some(Box::new(n) as Box<_>),
        Err(e) => {
            warn!("no kernel invalidation, changes show after the cache timeouts: {e}");
            None
        }
    };
    // The health prober: its own thread, so a slow probe never holds up a refresh.
    let (stop_probes, probes_stopped) = crossbeam_channel::bounded::<()>(1);
    let probed = Arc::new(std::sync::RwLock::new(library.origins.clone()));
    let prober = (cfg.probe_interval_secs > 0.0).then(|| Prober {
        origins: probed.clone(),
        catalog: library.catalog.clone(),
        health: library.health.clone(),
        interval: Duration::from_secs_f64(cfg.probe_interval_secs),
        timeout: PROBE_TIMEOUT,
        degraded_after: Duration::from_millis(cfg.degraded_after_ms),
        state_dir: cfg.state_dir(),
        shared: shared.clone(),
        refresh: tx.clone(),
    });
    let probe_thread = match prober {
        Some(p) => Some(
            std::thread::Builder::new()
                .name("health-probe".into())
                .spawn(move || p.run(probes_stopped))
                .context("cannot start the health-probe thread")?,
        ),
        None => None,
    };
    let daemon = Arc::new(Daemon {
        started: std::time::Instant::now(),
        mountpoint: std::fs::canonicalize(&cli.mountpoint)
            .unwrap_or_else(|_| cli.mountpoint.clone()),
        shared: shared.clone(),
        model: mounted.model().clone(),
        queues: mounted.threads(),
        health: library.health.clone(),
        catalog: library.catalog.clone(),
        origins: std::sync::RwLock::new(
            cfg.origins
                .iter()
                .zip(&library.origins)
                .map(|(c, o)| OriginInfo {
                    spec: c.path.display().to_string(),
                    name: c.name.clone(),
                    key: PathBuf::from(o.key()),
                    removed: false,
                })
                .collect(),
        ),
        cas: cas.map(std::sync::OnceLock::from).unwrap_or_default(),
        tier,
        plugins: plugins.clone(),
        proposals: musicfs_tools::plugins::Proposals::at(&cfg.state_dir()),
        readers: origin_table.clone(),
        refresh: refresh_control.clone(),
        trigger: tx.clone(),
        finder: finder.clone(),
        config: std::sync::Mutex::new(cfg.clone()),
        unmounter: mounted.unmounter(),
        hub: hub.clone(),
        stopping: std::sync::atomic::AtomicBool::new(false),
        cache_counters,
    });
    let control = ControlPlane::start(bound, daemon.clone(), op_stats, webhooks)?;
    // READY before the first watchdog ping: a service manager (and the test that plays
    // one) sees the start finish before any keep-alive.
    sd_notify("READY=1");
    let _watchdog = musicfs_tools::systemd_watchdog(daemon.clone());
    let refresher = Refresher {
        library,
        shared,
        sink,
        refresh_interval: (cfg.refresh_interval_secs > 0.0)
            .then(|| Duration::from_secs_f64(cfg.refresh_interval_secs)),
        polled,
        watches,
        origins: Some(origin_table),
        search: Some(finder.index().clone()),
        control: Some(refresh_control),
        events: Some(hub.clone()),
        probed: Some(probed),
    };
    let refresh_thread = std::thread::Builder::new()
        .name("refresh".into())
        .spawn(move || refresher.run(rx))
        .context("cannot start the refresh thread")?;

    let unmounter = mounted.unmounter();
    let signal_handle = signals.handle();
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    info!("SIGHUP: rescanning the origins");
                    let _ = signal_tx.send(Trigger::Rescan("SIGHUP"));
                    continue;
                }
                info!(signal = sig, "unmounting on signal");
                sd_notify("STOPPING=1");
                if let Err(e) = unmounter.unmount() {
                    error!("unmount on signal failed: {e}");
                }
                return;
            }
        })
        .context("cannot start the signal thread")?;
    let result = mounted.wait();
    drop(control);
    signal_handle.close();
    let _ = tx.send(Trigger::Stop);
    let _ = stop_probes.send(());
    if let Some(t) = probe_thread {
        if t.join().is_err() {
            error!("the health-probe thread panicked");
        }
    }
    if refresh_thread.join().is_err() {
        error!("the refresh thread panicked");
    }
    info!("unmounted");
    result.context("FUSE session failed")
}

/// The scan progress callback: the running totals go to the control plane (`musicfs
/// status`, the scan-progress call) and to a spinner on a terminal.
fn scan_progress(control: Arc<RefreshControl>) -> musicfs_index::scan::ProgressFn {
    let bar = progress_bar();
    Arc::new(move |p| {
        control.set_progress(p);
        if let Some(bar) = &bar {
            bar(p);
        }
    })
}
