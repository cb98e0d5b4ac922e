//! The control API of a running daemon: tonic gRPC on a Unix socket (mode 0600, and every
//! call checks the caller's uid against the daemon's: root or the same user).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use futures_util::Stream;
use musicfs_core::config::{parse_byte_size, Config};
use musicfs_core::health::{OriginHealth, OriginState};
use musicfs_core::snapshot::Snapshot;
use musicfs_fusedev::{FsModel, Unmounter};
use musicfs_index::refresh::{OriginChange, RefreshControl, Trigger};
use musicfs_index::watch::Change;
use musicfs_storage::cas::Cas;
use musicfs_storage::origin::OriginTable;
use musicfs_storage::Catalog;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::events::{selected, Hub};
use super::proto;
use super::proto::control_server::{Control, ControlServer};
use crate::finder::LibraryFinder;

/// One origin as the control plane names it.
#[derive(Debug, Clone)]
pub struct OriginInfo {
    /// Its spec as configured (what `musicfs status` shows).
    pub spec: String,
    /// Its configured name, if any.
    pub name: Option<String>,
    /// Its catalog key (what the catalog and the snapshot record as its root).
    pub key: PathBuf,
    /// Removed at run time (its slot keeps the refresh loop's indices).
    pub removed: bool,
}

/// What the control API reads and drives in a running daemon.
pub struct Daemon {
    /// When the daemon started.
    pub started: Instant,
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// The tree served.
    pub shared: Arc<ArcSwap<Snapshot>>,
    /// The FUSE model (open handles, draining, serving mode).
    pub model: Arc<FsModel>,
    /// FUSE worker queues.
    pub queues: usize,
    /// Which origins are up.
    pub health: Arc<OriginHealth>,
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The origins, in the refresh loop's order (added at run time at the end, removed ones
    /// marked).
    pub origins: std::sync::RwLock<Vec<OriginInfo>>,
    /// The chunk cache, when some origin is remote.
    pub cas: std::sync::OnceLock<Arc<Cas>>,
    /// The shared chunk tier, when configured.
    pub tier: Option<Arc<musicfs_storage::origin::S3Tier>>,
    /// Native plugins.
    pub plugins: Arc<crate::plugins::Plugins>,
    /// Metadata plugins' proposals.
    pub proposals: crate::plugins::Proposals,
    /// The origins as the read path opens them (for prefetching).
    pub readers: Arc<ArcSwap<OriginTable>>,
    /// Refreshes to wait for, and the refresh interval.
    pub refresh: Arc<RefreshControl>,
    /// The refresh loop's triggers.
    pub trigger: Sender<Trigger>,
    /// Search and collections.
    pub finder: Arc<LibraryFinder>,
    /// The configuration in force, runtime changes applied.
    pub config: Mutex<Config>,
    /// Unmounts (ends the daemon).
    pub unmounter: Unmounter,
    /// Events.
    pub hub: Arc<Hub>,
    /// Set once a shutdown was asked for.
    pub stopping: AtomicBool,
    /// Each remote origin's cache hits and misses, by spec.
    pub cache_counters: Vec<(String, Arc<musicfs_storage::origin::CacheCounters>)>,
}

impl Daemon {
    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the mount serves, or why not (`/health`).
    pub fn serving(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) || self.model.is_draining() {
            return Err("draining: shutting down".into());
        }
        match musicfs_fusedev::session::is_mountpoint(&self.mountpoint) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} is not mounted", self.mountpoint.display())),
            Err(e) => Err(format!("cannot check {}: {e}", self.mountpoint.display())),
        }
    }

    /// The origins served now.
    pub fn live_origins(&self) -> Vec<OriginInfo> {
        let all = self.origins.read().unwrap_or_else(PoisonError::into_inner);
        all.iter().filter(|o| !o.removed).cloned().collect()
    }

    /// The origin named `which` (spec, name or catalog key): its index in the refresh
    /// loop, itself, and its catalog id.
    fn origin_named(&self, which: &str) -> Result<(usize, OriginInfo, Option<u32>), Status> {
        let all = self.origins.read().unwrap_or_else(PoisonError::into_inner);
        let i = all
            .iter()
            .position(|o| {
                !o.removed
                    && (o.spec == which
                        || o.name.as_deref() == Some(which)
                        || o.key.as_os_str() == which)
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no origin {which:?} (origins: {})",
                    all.iter()
                        .filter(|o| !o.removed)
                        .map(|o| o.spec.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let info = all[i].clone();
        let id = self
            .shared
            .load()
            .origins()
            .find(|(_, root)| *root == info.key)
            .map(|(id, _)| id);
        Ok((i, info, id))
    }

    /// Refuses new opens, waits up to `timeout` for open files to be closed, unmounts.
    fn drain_and_unmount(self: Arc<Self>, timeout: Duration) {
        self.model.set_draining(true);
        crate::sd_notify("STOPPING=1");
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.model.open_handles().0;
            if open == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(open, "drain timeout: unmounting with files still open");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        info!("drained: unmounting");
        if let Err(e) = self.unmounter.unmount() {
            warn!("unmount after drain failed: {e}");
        }
    }
}

/// The socket's owner and root may call; anyone else is refused (the socket's mode keeps
/// them out already; this holds even if it was loosened).
fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let peer = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    match peer {
        Some(uid) if uid == me || uid == 0 => Ok(()),
        Some(uid) => Err(Status::permission_denied(format!(
            "uid {uid} may not control this daemon"
        ))),
        None => Err(Status::permission_denied("unknown caller")),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The tonic service.
#[derive(Clone)]
pub struct Service(pub Arc<Daemon>);

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

#[tonic::async_trait]
impl Control for Service {
    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        authorize(&req)?;
        let d = self.0.clone();
        blocking(move || Ok(status_of(&d))).await.map(Response::new)
    }

    async fn refresh(
        &self,
        req: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::RefreshReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let d = self.0.clone();
        let trigger = if r.origin.is_empty() {
            Trigger::Rescan("control request")
        } else {
            Trigger::Watch(Change::Origin(d.origin_named(&r.origin)?.0))
        };
        let ticket = d.refresh.request();
        d.trigger
            .send(trigger)
            .map_err(|_| Status::unavailable("the refresh loop has stopped"))?;
        wait_for(d, ticket, r.no_wait, r.timeout_secs).await
    }

    async fn origin_add(
        &self,
        req: Request<proto::OriginAddRequest>,
    ) -> Result<Response<proto::RefreshReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let d = self.0.clone();
        let no_wait = r.no_wait;
        let ticket = blocking(move || add_origin(&d, &r.spec, &r.name)).await?;
        wait_for(self.0.clone(), ticket, no_wait, 0.0).await
    }

    async fn origin_remove(
        &self,
        req: Request<proto::OriginRemoveRequest>,
    ) -> Result<Response<proto::RefreshReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let d = self.0.clone();
        let (i, info, _) = d.origin_named(&r.origin)?;
        let ticket = d.refresh.change_origin(OriginChange::Remove {
            key: info.key.clone().into_os_string(),
        });
        d.trigger
            .send(Trigger::Settings)
            .map_err(|_| Status::unavailable("the refresh loop has stopped"))?;
        {
            let mut all = d.origins.write().unwrap_or_else(PoisonError::into_inner);
            all[i].removed = true;
        }
        d.config()
            .origins
            .retain(|o| o.path.display().to_string() != info.spec);
        info!(origin = %info.spec, "origin removed by the operator");
        wait_for(d, ticket, r.no_wait, 0.0).await
    }

    async fn scan_progress(
        &self,
        req: Request<proto::ScanProgressRequest>,
    ) -> Result<Response<proto::ScanProgressReply>, Status> {
        authorize(&req)?;
        let (running, progress, last) = self.0.refresh.status();
        let p = progress.unwrap_or_default();
        Ok(Response::new(proto::ScanProgressReply {
            running,
            seen: p.seen,
            opened: p.opened,
            unchanged: p.unchanged,
            last_generation: last.as_ref().map_or(0, |l| l.generation),
            last_error: last.and_then(|l| l.error).unwrap_or_default(),
        }))
    }

    async fn cache_stats(
        &self,
        req: Request<proto::CacheRequest>,
    ) -> Result<Response<proto::CacheStatsReply>, Status> {
        authorize(&req)?;
        let d = self.0.clone();
        blocking(move || {
            let Some(cas) = d.cas.get() else {
                return Ok(proto::CacheStatsReply::default());
            };
            super::cache_stats_reply(cas).map_err(internal)
        })
        .await
        .map(Response::new)
    }

    async fn cache_clear(
        &self,
        req: Request<proto::CacheRequest>,
    ) -> Result<Response<proto::CacheClearReply>, Status> {
        authorize(&req)?;
        let d = self.0.clone();
        blocking(move || {
            let cas = d.cas.get().ok_or_else(no_cache)?;
            let evicted = cas.clear().map_err(internal)?;
            let left = cas.stats().map_err(internal)?.chunks;
            info!(evicted, left, "chunk cache cleared on request");
            Ok(proto::CacheClearReply {
                evicted_chunks: evicted,
                chunks_left: left,
            })
        })
        .await
        .map(Response::new)
    }

    async fn cache_verify(
        &self,
        req: Request<proto::CacheRequest>,
    ) -> Result<Response<proto::CacheVerifyReply>, Status> {
        authorize(&req)?;
        let d = self.0.clone();
        blocking(move || {
            let cas = d.cas.get().ok_or_else(no_cache)?;
            let r = cas.verify().map_err(internal)?;
            Ok(proto::CacheVerifyReply {
                ok: r.is_ok(),
                chunks_checked: r.chunks,
                problems: r.problems.iter().map(|p| p.to_string()).collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn plugin(
        &self,
        req: Request<proto::PluginRequest>,
    ) -> Result<Response<proto::PluginReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let d = self.0.clone();
        blocking(move || {
            let p = &d.plugins;
            let reads_files =
                |l: &crate::plugins::Loaded| l.name == r.name && l.kinds.contains(&"format");
            let had_format = p.list().iter().any(|l| reads_files(l));
            let done = match r.action.as_str() {
                "list" => Ok(()),
                "load" => p.load(&r.name).map(drop),
                "unload" => p.unload(&r.name),
                "reload" => p.reload(&r.name).map(drop),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown plugin action {other:?} (list, load, unload, reload)"
                    )))
                }
            };
            done.map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
            // Files a format plugin reads appear (or leave) at the next walk: start one.
            if had_format || p.list().iter().any(|l| reads_files(l)) {
                let _ = d.trigger.send(Trigger::Rescan("format plugin changed"));
            }
            Ok(proto::PluginReply {
                plugins: p
                    .list()
                    .iter()
                    .map(|l| proto::PluginInfo {
                        name: l.name.clone(),
                        version: l.version.clone(),
                        api: format!("{}.{}", l.api.0, l.api.1),
                        path: l.path.display().to_string(),
                        kinds: l.kinds.iter().map(|k| k.to_string()).collect(),
                    })
                    .collect(),
                disabled: p
                    .disabled()
                    .into_iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn prefetch(
        &self,
        req: Request<proto::PrefetchRequest>,
    ) -> Result<Response<proto::PrefetchReply>, Status> {
        authorize(&req)?;
        let path = req.into_inner().path;
        let d = self.0.clone();
        blocking(move || super::prefetch::start(&d, &path))
            .await
            .map(Response::new)
    }

    async fn search(
        &self,
        req: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let d = self.0.clone();
        blocking(move || {
            let limit = if r.limit == 0 {
                d.config().search_limit
            } else {
                r.limit as usize
            };
            let hits = d
                .finder
                .index()
                .search(&r.query, limit)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let ids: Vec<u64> = hits.iter().map(|h| h.id.0).collect();
            let snap = d.shared.load();
            let tags: &dyn musicfs_fusedev::TagSource = d.catalog.as_ref();
            let entries = musicfs_fusedev::virt::entries(&snap, &ids, Some(tags));
            Ok(proto::SearchReply {
                hits: super::search_hits(&entries),
            })
        })
        .await
        .map(Response::new)
    }

    async fn tag(
        &self,
        req: Request<proto::TagRequest>,
    ) -> Result<Response<proto::TagReply>, Status> {
        use crate::tagging::{self, Action};
        authorize(&req)?;
        let r = req.into_inner();
        let action =
            Action::parse(&r.action).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let d = self.0.clone();
        let bad = |e: anyhow::Error| Status::invalid_argument(format!("{e:#}"));
        let (ids, changed, edited) = {
            let d = d.clone();
            let r = r.clone();
            blocking(move || {
                let snap = d.shared.load();
                let ids = tagging::resolve(
                    &snap,
                    &d.catalog,
                    Some(d.finder.index()),
                    Some(&d.mountpoint),
                    &r.paths,
                    &r.query,
                )
                .map_err(bad)?;
                let before = d.catalog.change_counter().map_err(|e| bad(e.into()))?;
                let shown = tagging::shown_albums(&d.catalog, &ids).map_err(bad)?;
                let table = d.readers.load();
                let open = |id: musicfs_core::meta::TrackId| {
                    let rec = d.catalog.get(id).ok().flatten()?;
                    use std::os::unix::ffi::OsStrExt as _;
                    let rel = std::ffi::OsStr::from_bytes(&rec.rel_path);
                    table
                        .get(rec.origin.0)?
                        .open(std::path::Path::new(rel))
                        .ok()
                };
                let ctx = tagging::TagContext {
                    plugins: Some(&d.plugins),
                    proposals: &d.proposals,
                    open: Some(&open),
                };
                let changed =
                    tagging::apply(&d.catalog, &ids, action, &r.args, &ctx).map_err(bad)?;
                Ok((ids, changed, (shown, before)))
            })
            .await?
        };
        // The refresh loop publishes the edited tracks (a delta when nothing else changed
        // meanwhile; renditions built on the way) and the ticket returns once served.
        let refresh = if changed > 0 {
            let ticket = d.refresh.request();
            let (tracks, catalog_before) = edited;
            d.trigger
                .send(Trigger::Edited {
                    tracks,
                    catalog_before,
                    bumps: changed,
                })
                .map_err(|_| Status::unavailable("the refresh loop has stopped"))?;
            Some(
                wait_for(d.clone(), ticket, r.no_wait, 0.0)
                    .await?
                    .into_inner(),
            )
        } else {
            None
        };
        let all = action == Action::Get;
        let tracks = blocking(move || {
            let snap = d.shared.load();
            tagging::report(&d.catalog, &snap, &ids, all, &d.proposals)
                .map_err(|e| Status::internal(format!("{e:#}")))
        })
        .await?;
        Ok(Response::new(proto::TagReply {
            tracks,
            changed,
            refresh,
        }))
    }

    async fn config_show(
        &self,
        req: Request<proto::ConfigShowRequest>,
    ) -> Result<Response<proto::ConfigShowReply>, Status> {
        authorize(&req)?;
        Ok(Response::new(proto::ConfigShowReply {
            toml: self.0.config().to_toml(),
        }))
    }

    async fn config_set(
        &self,
        req: Request<proto::ConfigSetRequest>,
    ) -> Result<Response<proto::ConfigSetReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let d = self.0.clone();
        blocking(move || set_config(&d, &r.key, &r.value))
            .await
            .map(Response::new)
    }

    async fn shutdown(
        &self,
        req: Request<proto::ShutdownRequest>,
    ) -> Result<Response<proto::ShutdownReply>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let secs = r.drain_timeout_secs;
        if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
            return Err(Status::invalid_argument(
                "drain_timeout_secs must be between 0 and 86400",
            ));
        }
        let d = self.0.clone();
        if d.stopping.swap(true, Ordering::AcqRel) {
            return Err(Status::failed_precondition("already shutting down"));
        }
        let open = d.model.open_handles().0 as u64;
        info!(open, drain_secs = secs, "shutdown requested: draining");
        let drainer = d.clone();
        std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || drainer.drain_and_unmount(Duration::from_secs_f64(secs)))
            .map_err(internal)?;
        Ok(Response::new(proto::ShutdownReply { open_files: open }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<proto::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        authorize(&req)?;
        let kinds = req.into_inner().kinds;
        let rx = self.0.hub.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
            let kinds = kinds.clone();
            async move {
                match item {
                    Ok(d) if selected(&kinds, d.kind) => Some(Ok(proto::Event {
                        seq: d.seq,
                        time_ms: d.time_ms,
                        kind: d.kind.to_string(),
                        json: d.json.clone(),
                    })),
                    Ok(_) => None,
                    // A subscriber that fell behind is told, and goes on.
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Ok(proto::Event {
                            seq: 0,
                            time_ms: 0,
                            kind: "events.lost".into(),
                            json: format!("{{\"kind\":\"events.lost\",\"count\":{n}}}"),
                        }))
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

use futures_util::StreamExt;

/// Waits (unless `no_wait`) until refresh ticket `ticket` is served, at most
/// `timeout_secs` (0: 600 s).
async fn wait_for(
    d: Arc<Daemon>,
    ticket: u64,
    no_wait: bool,
    timeout_secs: f64,
) -> Result<Response<proto::RefreshReply>, Status> {
    if no_wait {
        return Ok(Response::new(proto::RefreshReply::default()));
    }
    let limit = if timeout_secs > 0.0 && timeout_secs.is_finite() {
        Duration::from_secs_f64(timeout_secs.min(1e6))
    } else {
        Duration::from_secs(600)
    };
    let outcome = blocking(move || Ok(d.refresh.wait(ticket, limit))).await?;
    let o = outcome
        .ok_or_else(|| Status::deadline_exceeded("the refresh did not end in time (it goes on)"))?;
    Ok(Response::new(proto::RefreshReply {
        waited: true,
        generation: o.generation,
        published: o.published,
        added: o.added,
        changed: o.changed,
        removed: o.removed,
        error: o.error.unwrap_or_default(),
    }))
}

/// Opens origin `spec` and hands it to the refresh loop; the ticket to wait on.
fn add_origin(d: &Daemon, spec: &str, name: &str) -> Result<u64, Status> {
    use musicfs_core::config::OriginConfig;
    let given = PathBuf::from(spec);
    let mut oc = d
        .config()
        .origins
        .iter()
        .find(|o| o.path == given)
        .cloned()
        .unwrap_or_else(|| OriginConfig::local(given.clone()));
    if !name.is_empty() {
        oc.name = Some(name.to_string());
    }
    let resolved = crate::resolve_origins(std::slice::from_ref(&oc))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if let Some((shown, why)) = resolved.unusable.first() {
        return Err(Status::failed_precondition(format!(
            "origin {shown} cannot be read now: {why}"
        )));
    }
    let origin = resolved
        .origins
        .into_iter()
        .next()
        .ok_or_else(|| Status::internal("no origin opened"))?;
    let key = PathBuf::from(origin.key());
    if d.live_origins().iter().any(|o| o.key == key) {
        return Err(Status::already_exists(format!(
            "origin {spec} is served already"
        )));
    }
    // The first remote origin of a daemon that had only local ones opens the cache now.
    let cas = match (origin.local_root(), d.cas.get()) {
        (Some(_), _) => None,
        (None, Some(cas)) => Some(cas.clone()),
        (None, None) => {
            let cfg = d.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let opened = Arc::new(crate::open_cache(&cfg).map_err(|e| {
                Status::failed_precondition(format!("cannot open the chunk cache: {e:#}"))
            })?);
            info!("chunk cache opened for the first remote origin");
            Some(d.cas.get_or_init(|| opened).clone())
        }
    };
    let reader = cas.map(|cas| {
        Arc::new(musicfs_storage::origin::CachedOrigin::with_tier(
            origin.clone(),
            cas,
            Arc::new(musicfs_storage::origin::AudioChunking::default()),
            musicfs_storage::origin::CacheOptions::default(),
            d.tier
                .clone()
                .map(|t| t as Arc<dyn musicfs_storage::origin::ChunkTier>),
        )) as Arc<dyn musicfs_storage::origin::Origin>
    });
    let ticket = d.refresh.change_origin(OriginChange::Add {
        origin,
        reader,
        poll: Duration::from_secs_f64(oc.poll_interval_secs.max(1.0)),
    });
    d.trigger
        .send(Trigger::Settings)
        .map_err(|_| Status::unavailable("the refresh loop has stopped"))?;
    d.origins
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .push(OriginInfo {
            spec: oc.path.display().to_string(),
            name: oc.name.clone(),
            key,
            removed: false,
        });
    info!(origin = %oc.path.display(), "origin added by the operator");
    d.config().origins.push(oc);
    Ok(ticket)
}

fn no_cache() -> Status {
    Status::failed_precondition("no chunk cache: every origin is local")
}

fn status_of(d: &Daemon) -> proto::StatusReply {
    let snap = d.shared.load();
    let mut shown: std::collections::HashMap<u32, u64> = Default::default();
    snap.for_each_node(|n| {
        if let Some(f) = n.file() {
            *shown.entry(f.origin).or_default() += 1;
        }
    });
    let status = d.model.status();
    let transport = match status.transport() {
        musicfs_fusedev::Transport::Uring => "uring",
        musicfs_fusedev::Transport::Dev => "dev",
    };
    let origins = d
        .live_origins()
        .iter()
        .map(|o| {
            let id = snap
                .origins()
                .find(|(_, root)| *root == o.key)
                .map(|(id, _)| id);
            let (state, reason) = match id.map(|id| d.health.state(id)) {
                Some(OriginState::Up) => ("up", String::new()),
                Some(OriginState::Degraded(why)) => ("degraded", why),
                Some(OriginState::Offline(why)) => ("offline", why),
                None => ("unknown", "not scanned yet".to_string()),
            };
            proto::OriginStatus {
                id: id.unwrap_or(u32::MAX),
                spec: o.spec.clone(),
                state: state.into(),
                reason,
                tracks: id.and_then(|id| shown.get(&id).copied()).unwrap_or(0),
            }
        })
        .collect();
    let (cache_bytes, cache_budget) = match d.cas.get() {
        Some(cas) => (
            cas.stats().map(|s| s.stored_bytes).unwrap_or(0),
            cas.budget(),
        ),
        None => (0, 0),
    };
    let check = d.catalog.check_state();
    let catalog_problem = match &check {
        musicfs_storage::catalog::CheckState::Damaged(why) => d
            .catalog
            .len()
            .err()
            .map_or_else(|| why.clone(), |e| e.to_string()),
        _ => String::new(),
    };
    proto::StatusReply {
        catalog: check.name().into(),
        catalog_problem,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_ms: d.started.elapsed().as_millis() as u64,
        generation: snap.generation(),
        tracks: snap.track_count(),
        mountpoint: d.mountpoint.display().to_string(),
        read_mode: if status.passthrough() {
            "passthrough".into()
        } else {
            "daemon".into()
        },
        queues: (0..d.queues as u32)
            .map(|queue| proto::QueueStatus {
                queue,
                transport: transport.into(),
            })
            .collect(),
        origins,
        cache_enabled: d.cas.get().is_some(),
        cache_bytes,
        cache_budget,
        open_files: d.model.open_handles().0 as u64,
        draining: d.model.is_draining(),
        pid: std::process::id(),
    }
}

/// Applies one runtime setting; the reply names the value before.
fn set_config(d: &Daemon, key: &str, value: &str) -> Result<proto::ConfigSetReply, Status> {
    let bad = |why: String| Status::invalid_argument(format!("{key} = {value:?}: {why}"));
    let mut cfg = d.config();
    let previous = match key {
        "log_level" => {
            crate::set_log_level(value).map_err(bad)?;
            std::mem::replace(&mut cfg.log_level, value.to_string())
        }
        "refresh_interval_secs" => {
            let secs: f64 = value.parse().map_err(|e| bad(format!("{e}")))?;
            if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
                return Err(bad("must be between 0 and 1e9 seconds".into()));
            }
            d.refresh
                .set_interval((secs > 0.0).then(|| Duration::from_secs_f64(secs)));
            d.trigger
                .send(Trigger::Settings)
                .map_err(|_| Status::unavailable("the refresh loop has stopped"))?;
            std::mem::replace(&mut cfg.refresh_interval_secs, secs).to_string()
        }
        "cache_budget" => {
            let bytes = parse_byte_size(value).map_err(bad)?;
            if bytes < musicfs_core::config::MIN_CACHE_BUDGET {
                return Err(bad(format!(
                    "at least {} MiB",
                    musicfs_core::config::MIN_CACHE_BUDGET >> 20
                )));
            }
            if let Some(cas) = d.cas.get() {
                let evicted = cas.set_budget(bytes).map_err(internal)?;
                info!(bytes, evicted, "cache budget changed");
            }
            std::mem::replace(&mut cfg.cache_budget.0, bytes).to_string()
        }
        _ if key.starts_with("origin.") && key.ends_with(".enabled") => {
            let which = &key["origin.".len()..key.len() - ".enabled".len()];
            let on: bool = value.parse().map_err(|_| bad("true or false".into()))?;
            let (_, _, id) = d.origin_named(which)?;
            let id = id.ok_or_else(|| {
                Status::failed_precondition(format!("origin {which:?} has no tracks yet"))
            })?;
            let was = !d.health.is_disabled(id);
            d.health.set_disabled(id, !on, DISABLED);
            // Which copy of a track is shown may change; an origin back on is looked at.
            let _ = d.trigger.send(Trigger::Republish("origin switched"));
            if on {
                let _ = d
                    .trigger
                    .send(Trigger::Watch(Change::Origin(d.origin_named(which)?.0)));
            }
            info!(
                origin = which,
                enabled = on,
                "origin switched by the operator"
            );
            was.to_string()
        }
        _ if key.starts_with("origin.") && key.ends_with(".timeout_secs") => {
            let which = &key["origin.".len()..key.len() - ".timeout_secs".len()];
            let secs: f64 = value.parse().map_err(|e| bad(format!("{e}")))?;
            if !secs.is_finite() || !(0.001..=3600.0).contains(&secs) {
                return Err(bad("must be between 0.001 and 3600 seconds".into()));
            }
            let (_, info, _) = d.origin_named(which)?;
            let key_path = &info.key;
            let table = d.readers.load();
            let remote = table
                .iter()
                .map(|(_, o)| o)
                .find(|o| o.key() == key_path.as_os_str())
                .and_then(|o| o.remote())
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "origin {which:?} is local: it has no request timeout"
                    ))
                })?;
            let before = remote.timeout();
            remote.set_timeout(Duration::from_secs_f64(secs));
            if let Some(o) = cfg
                .origins
                .iter_mut()
                .find(|o| o.path.display().to_string() == info.spec)
            {
                o.timeout_secs = Some(secs);
            }
            info!(origin = which, secs, "origin timeout changed");
            before.as_secs_f64().to_string()
        }
        _ => {
            return Err(Status::invalid_argument(format!(
                "{key} cannot be changed at run time (settable: log_level, \
                 refresh_interval_secs, cache_budget, origin.NAME.enabled, \
                 origin.NAME.timeout_secs); others need a restart"
            )))
        }
    };
    Ok(proto::ConfigSetReply {
        key: key.to_string(),
        value: value.to_string(),
        previous,
    })
}

/// Why a disabled origin is offline.
pub const DISABLED: &str = "disabled by the operator";

/// Binds the control socket at `path`: created under a temporary name, made 0600, then
/// renamed into place, so it is never reachable with a looser mode. A socket left by a
/// daemon that died is replaced; one a live daemon answers on is an error.
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        // A daemon that is stopping (unmounted, its control plane not yet down) answers for
        // a moment: give it a few seconds to go before calling it a conflict.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(path).is_ok() {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} is answered by another daemon (is one running with this state \
                     directory? `musicfs --state-dir DIR status` tells)",
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove the stale socket {}", path.display()))
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    remove_dead_temps(path);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .with_context(|| format!("cannot bind the control socket {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the control socket to {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// Removes the temporary sockets (`NAME.tmpPID`, bound before the rename into place) that
/// daemons killed between the bind and the rename left beside `path`, when no process of
/// that pid is alive.
fn remove_dead_temps(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
        return;
    };
    let prefix = format!("{}.tmp", stem.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let socket = e.file_type().is_ok_and(|t| t.is_socket());
        // SAFETY: signal 0 only checks whether the process exists.
        let dead = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if socket && dead {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    info!(file = %e.path().display(), "removed a dead daemon's temporary socket")
                }
                Err(err) => {
                    warn!(file = %e.path().display(), "cannot remove a dead daemon's temporary socket: {err}")
                }
            }
        }
    }
}

/// Serves the API on `listener` until `stop` resolves and the calls in flight end.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::UnixListener,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(ControlServer::new(Service(daemon)))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = served {
        warn!("control API stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn temporary_sockets_of_dead_daemons_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_tmp = dir.path().join(format!("control.tmp{dead}"));
        let live_tmp = dir
            .path()
            .join(format!("control.tmp{}", std::process::id()));
        let _a = std::os::unix::net::UnixListener::bind(&dead_tmp).unwrap();
        let _b = std::os::unix::net::UnixListener::bind(&live_tmp).unwrap();
        let other = dir.path().join("control.tmpnotapid");
        std::fs::write(&other, b"").unwrap();
        super::remove_dead_temps(&dir.path().join("control.sock"));
        assert!(!dead_tmp.exists(), "a dead daemon's socket stayed");
        assert!(live_tmp.exists(), "a live daemon's socket was removed");
        assert!(
            other.exists(),
            "a file that is not a daemon's socket was removed"
        );
    }
}
