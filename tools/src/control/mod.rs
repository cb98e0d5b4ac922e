//! The control plane of a running daemon: the gRPC API on a Unix socket ([`server`]),
//! events fanned out to the API stream, Server-Sent Events, the access log and webhooks
//! ([`events`]), Prometheus metrics and a health check over HTTP ([`http`],
//! [`metrics`]), and the client the `musicfs` CLI speaks it with ([`client`]).
//!
//! Everything here runs on one small tokio runtime of its own ([`ControlPlane::start`]),
//! beside the FUSE workers: a slow client or webhook never holds up a request of the
//! mount, and the FUSE path only ever pushes events into a bounded queue.

pub mod cli;
pub mod client;
pub mod events;
pub mod http;
pub mod metrics;
pub mod prefetch;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use musicfs_core::events::{Event, EventSink};

use events::WebhookQueue;
use server::Daemon;

/// The generated protobuf types and gRPC stubs (`proto/musicfs_control_v1.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("musicfs.control.v1");
}

/// The cache's statistics as the API and the CLI show them.
pub fn cache_stats_reply(
    cas: &musicfs_storage::cas::Cas,
) -> Result<proto::CacheStatsReply, musicfs_storage::cas::CasError> {
    let s = cas.stats()?;
    Ok(proto::CacheStatsReply {
        enabled: true,
        chunks: s.chunks,
        stored_bytes: s.stored_bytes,
        manifests: s.manifests,
        logical_bytes: s.logical_bytes,
        shared_chunks: s.shared_chunks,
        packs: s.packs,
        disk_bytes: s.disk_bytes,
        budget: s.budget,
        evicted_total: cas.evicted_total(),
    })
}

/// Search results as the API and the CLI show them, best first.
pub fn search_hits(entries: &[musicfs_fusedev::virt::Entry]) -> Vec<proto::SearchHit> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| proto::SearchHit {
            rank: i as u32 + 1,
            name: String::from_utf8_lossy(&e.name).into_owned(),
            path: String::from_utf8_lossy(&e.path).into_owned(),
            track_id: e.id,
        })
        .collect()
}

/// The control plane's sockets, bound before the mount (a bad `metrics_listen` or a
/// second daemon on the same state directory fails the start-up before anything is
/// mounted), and its runtime. Dropped without being started, it removes the socket.
pub struct Bound(Option<Sockets>);

struct Sockets {
    rt: tokio::runtime::Runtime,
    socket: std::path::PathBuf,
    listener: tokio::net::UnixListener,
    http: Option<tokio::net::TcpListener>,
    listen: Option<String>,
}

impl Bound {
    /// Binds the control socket (and the HTTP listener when `metrics_listen` is set).
    pub fn bind(cfg: &musicfs_core::config::Config) -> anyhow::Result<Bound> {
        let socket = cfg.control_socket_path();
        let listen = cfg.metrics_listen.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("control")
            .enable_all()
            .build()
            .context("cannot start the control runtime")?;
        let _guard = rt.enter();
        let listener = server::bind(&socket)?;
        let http = match &listen {
            Some(addr) => {
                let bound = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("metrics_listen: cannot listen on {addr}"));
                let bound = match bound {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = std::fs::remove_file(&socket);
                        return Err(e);
                    }
                };
                bound.set_nonblocking(true)?;
                Some(tokio::net::TcpListener::from_std(bound)?)
            }
            None => None,
        };
        drop(_guard);
        Ok(Bound(Some(Sockets {
            rt,
            socket,
            listener,
            http,
            listen,
        })))
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let _ = std::fs::remove_file(&s.socket);
        }
    }
}

/// The running control plane; stops (and removes its socket) when dropped.
pub struct ControlPlane {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Serves on the sockets of `bound`, on a thread of its own.
    pub fn start(
        mut bound: Bound,
        daemon: Arc<Daemon>,
        ops: Arc<musicfs_fusedev::opstats::OpStats>,
        webhooks: Vec<Arc<WebhookQueue>>,
    ) -> anyhow::Result<ControlPlane> {
        let Sockets {
            rt,
            socket,
            listener,
            http,
            listen,
        } = bound
            .0
            .take()
            .context("the control plane was started twice")?;
        tracing::info!(socket = %socket.display(), metrics = ?listen, "control API listening");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                rt.block_on(async move {
                    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    for w in &webhooks {
                        tokio::spawn(w.clone().run());
                    }
                    if let Some(cas) = daemon.cas.get().cloned() {
                        tokio::spawn(watch_evictions(cas, daemon.hub.clone()));
                    }
                    if let Some(l) = http {
                        let m = metrics::Metrics {
                            daemon: daemon.clone(),
                            ops,
                            webhooks: webhooks.clone(),
                        };
                        tokio::spawn(http::serve(m, l, until(stopped.clone())));
                    }
                    let api = tokio::spawn(server::serve(daemon, listener, until(stopped.clone())));
                    until(stopped).await;
                    // Event streams never end by themselves: they get a moment, then go.
                    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
                });
                let _ = std::fs::remove_file(&socket);
                // Webhook deliveries and event streams in flight are abandoned with the
                // runtime.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("cannot start the control thread")?;
        Ok(ControlPlane {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reports the cache's evictions as events, once a second at most.
async fn watch_evictions(cas: Arc<musicfs_storage::cas::Cas>, hub: Arc<events::Hub>) {
    let mut seen = cas.evicted_total();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = cas.evicted_total();
        if now != seen {
            let cas2 = cas.clone();
            let left = tokio::task::spawn_blocking(move || cas2.stats().map(|s| s.chunks))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            hub.emit(Event::CacheEvicted {
                chunks: now - seen,
                cached_chunks: left,
            });
            seen = now;
        }
    }
}
