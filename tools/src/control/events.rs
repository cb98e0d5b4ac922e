//! The daemon's event sink and where events go from it.
//!
//! Producers call [`Hub::emit`] (the FUSE workers among them): one `try_send` into a
//! bounded queue, nothing else; a full queue drops the event and counts it. One thread
//! ([`Hub::start`]) takes them in order, numbers them, renders each once as a JSON object
//! (adding what the producer did not know: the file's path in the tree, the origin's
//! spec) and hands that to every consumer: API and SSE subscribers (a broadcast channel: a
//! subscriber that falls behind loses the oldest), the access log (JSON lines, rotated by
//! size) and each webhook's queue (bounded, oldest dropped and counted while the receiver
//! is down; delivered by its own task with retries and an HMAC-SHA256 signature).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use musicfs_core::config::WebhookConfig;
use musicfs_core::events::{Event, EventSink};
use musicfs_core::snapshot::Snapshot;
use serde_json::{json, Value};
use tracing::{debug, warn};

/// Events waiting for the fan-out thread at most (the buffer is allocated whole: about
/// 1 MiB; a burst of opens larger than this while the thread is busy drops events, counted).
const QUEUE: usize = 1 << 14;

/// One event as every consumer gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its number: consecutive from 1 in the order the hub took events.
    pub seq: u64,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// `file.opened`, `library.changed`, ...
    pub kind: &'static str,
    /// The whole event as a JSON object (seq, time_ms and kind included).
    pub json: String,
}

/// Whether `kind` is selected by `filters` (each a kind or a prefix ending in `.`; empty
/// selects everything).
pub fn selected(filters: &[String], kind: &str) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f == kind || (f.ends_with('.') && kind.starts_with(f.as_str())))
}

/// Counters of the event path (exported as metrics).
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Events taken by the hub.
    pub emitted: AtomicU64,
    /// Events dropped because the hub's queue was full.
    pub dropped: AtomicU64,
    /// Publishes seen, and the tracks they added, changed and removed.
    pub publishes: AtomicU64,
    /// See `publishes`.
    pub added: AtomicU64,
    /// See `publishes`.
    pub changed: AtomicU64,
    /// See `publishes`.
    pub removed: AtomicU64,
}

/// The daemon's [`EventSink`].
#[derive(Debug)]
pub struct Hub {
    tx: Sender<(Event, SystemTime)>,
    rx: Mutex<Option<Receiver<(Event, SystemTime)>>>,
    broadcast: tokio::sync::broadcast::Sender<Arc<Delivered>>,
    /// How many went where.
    pub counters: EventCounters,
}

impl EventSink for Hub {
    fn emit(&self, event: Event) {
        match self.tx.try_send((event, SystemTime::now())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// A hub; events queue up until [`Hub::start`].
    pub fn new() -> Hub {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        Hub {
            tx,
            rx: Mutex::new(Some(rx)),
            broadcast: tokio::sync::broadcast::channel(4096).0,
            counters: EventCounters::default(),
        }
    }

    /// A stream of every event from now on (a receiver that lags loses the oldest).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Delivered>> {
        self.broadcast.subscribe()
    }

    /// Starts the fan-out thread: events are rendered against `shared` (paths in the
    /// tree, origins' specs) and written to `log` and `webhooks` as well as to subscribers.
    /// It ends when every sender is gone.
    pub fn start(
        self: &Arc<Hub>,
        shared: Arc<ArcSwap<Snapshot>>,
        log: Option<AccessLog>,
        webhooks: Vec<Arc<WebhookQueue>>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| std::io::Error::other("the event hub runs already"))?;
        let hub = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || fan_out(hub, rx, shared, log, webhooks))
    }
}

fn fan_out(
    hub: std::sync::Weak<Hub>,
    rx: Receiver<(Event, SystemTime)>,
    shared: Arc<ArcSwap<Snapshot>>,
    mut log: Option<AccessLog>,
    webhooks: Vec<Arc<WebhookQueue>>,
) {
    let mut seq = 0u64;
    // Ends when the hub (which holds the only sender) is dropped, or after a second of
    // quiet once it is gone.
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => e,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if hub.strong_count() == 0 {
                    return;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let Some(h) = hub.upgrade() else {
            return;
        };
        for (event, at) in std::iter::once(first).chain(rx.try_iter()) {
            seq += 1;
            h.counters.emitted.fetch_add(1, Ordering::Relaxed);
            if let Event::LibraryChanged {
                added,
                changed,
                removed,
                ..
            } = &event
            {
                h.counters.publishes.fetch_add(1, Ordering::Relaxed);
                h.counters.added.fetch_add(*added, Ordering::Relaxed);
                h.counters.changed.fetch_add(*changed, Ordering::Relaxed);
                h.counters.removed.fetch_add(*removed, Ordering::Relaxed);
            }
            let d = Arc::new(render(seq, at, &event, &shared.load()));
            if let Some(l) = log.as_mut() {
                l.write(&d.json);
            }
            for w in &webhooks {
                if selected(&w.config.events, d.kind) {
                    w.push(d.clone());
                }
            }
            // No subscriber is not an error.
            let _ = h.broadcast.send(d);
        }
        if let Some(l) = log.as_mut() {
            l.flush();
        }
    }
}

/// The path of node `ino` in the tree, `/`-separated, without a leading slash.
fn tree_path(snap: &Snapshot, ino: u64) -> Option<String> {
    let mut parts = Vec::new();
    let mut node = snap.node(ino)?;
    // The root is its own parent; a depth limit guards against a damaged tree.
    for _ in 0..256 {
        if node.ino() == node.parent_ino() {
            parts.reverse();
            return Some(parts.join("/"));
        }
        parts.push(String::from_utf8_lossy(node.name()).into_owned());
        node = snap.node(node.parent_ino())?;
    }
    None
}

/// `event` as consumers see it.
pub fn render(seq: u64, at: SystemTime, event: &Event, snap: &Snapshot) -> Delivered {
    let time_ms = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let kind = event.kind();
    let mut v = json!({ "seq": seq, "time_ms": time_ms, "kind": kind });
    let file = |fh: u64, ino: u64, track_id: u64| {
        let source = snap.node(ino).and_then(|n| n.file()).and_then(|f| {
            let root = snap.origin_root(f.origin)?;
            Some(
                root.join(std::ffi::OsStr::from_bytes(f.rel_path))
                    .display()
                    .to_string(),
            )
        });
        json!({
            "fh": fh,
            "ino": ino,
            "track_id": track_id,
            "path": tree_path(snap, ino),
            "source": source,
        })
    };
    let extra = match event {
        Event::FileOpened { fh, ino, track_id } => file(*fh, *ino, *track_id),
        Event::FileRead {
            fh,
            ino,
            track_id,
            percent,
        } => {
            let mut f = file(*fh, *ino, *track_id);
            f["percent"] = json!(percent);
            f
        }
        Event::FileClosed {
            fh,
            ino,
            track_id,
            held_ms,
        } => {
            let mut f = file(*fh, *ino, *track_id);
            f["held_ms"] = json!(held_ms);
            f
        }
        Event::LibraryChanged {
            generation,
            added,
            changed,
            removed,
            tracks,
        } => json!({
            "generation": generation,
            "added": added,
            "changed": changed,
            "removed": removed,
            "tracks": tracks,
        }),
        Event::OriginHealth {
            origin,
            state,
            reason,
        } => json!({
            "origin_id": origin,
            "origin": snap.origin_root(*origin).map(|p| p.display().to_string()),
            "state": state,
            "reason": reason,
        }),
        Event::CacheEvicted {
            chunks,
            cached_chunks,
        } => json!({ "chunks": chunks, "cached_chunks": cached_chunks }),
        Event::PluginStopped { name, reason } => json!({ "plugin": name, "reason": reason }),
    };
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    Delivered {
        seq,
        time_ms,
        kind,
        json: v.to_string(),
    }
}

use std::os::unix::ffi::OsStrExt;

/// The access log: one JSON object per line, rotated past a size (`access.log.1` the
/// newest of the old ones). A write that fails is logged once and the log is off until
/// the daemon restarts: the events still reach every other consumer.
#[derive(Debug)]
pub struct AccessLog {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    size: u64,
    max: u64,
    keep: usize,
}

impl AccessLog {
    /// Opens (appends to) `path`.
    pub fn open(path: &Path, max: u64, keep: usize) -> std::io::Result<AccessLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(AccessLog {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
            size,
            max: max.max(4096),
            keep,
        })
    }

    fn write(&mut self, line: &str) {
        if self.size + line.len() as u64 + 1 > self.max {
            if let Err(e) = self.rotate() {
                warn!(path = %self.path.display(), "cannot rotate the access log, it is off: {e}");
                self.out = None;
            }
        }
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let written = out
            .write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => self.size += line.len() as u64 + 1,
            Err(e) => {
                warn!(path = %self.path.display(), "cannot write the access log, it is off: {e}");
                self.out = None;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                warn!(path = %self.path.display(), "cannot write the access log, it is off: {e}");
                self.out = None;
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        let numbered = |i: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.keep).rev() {
                let from = numbered(i);
                if from.exists() {
                    std::fs::rename(&from, numbered(i + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.out = Some(BufWriter::new(open_append(&self.path)?));
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// One webhook's bounded queue and its counters.
#[derive(Debug)]
pub struct WebhookQueue {
    /// Its configuration.
    pub config: WebhookConfig,
    secret: Option<Vec<u8>>,
    queue: Mutex<VecDeque<Arc<Delivered>>>,
    wake: tokio::sync::Notify,
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Events given up on after every retry.
    pub failed: AtomicU64,
    /// Events dropped from a full queue (the oldest go first).
    pub dropped: AtomicU64,
}

impl WebhookQueue {
    /// A queue for `config`, its secret read now (a secret file that cannot be read is an
    /// error naming it, never showing its content).
    pub fn new(config: WebhookConfig) -> anyhow::Result<WebhookQueue> {
        use anyhow::Context;
        let secret = match (&config.secret_file, &config.secret) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f).with_context(|| {
                    format!(
                        "webhook {}: cannot read secret_file {}",
                        config.url,
                        f.display()
                    )
                })?;
                Some(text.lines().next().unwrap_or("").trim().as_bytes().to_vec())
            }
            (None, Some(s)) => Some(s.as_bytes().to_vec()),
            (None, None) => None,
        };
        anyhow::ensure!(
            config.url.starts_with("http://") || config.url.starts_with("https://"),
            "webhook {:?}: the URL must start with http:// or https://",
            config.url
        );
        Ok(WebhookQueue {
            config,
            secret,
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn push(&self, d: Arc<Delivered>) {
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while q.len() >= self.config.queue.max(1) {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(d);
        }
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Arc<Delivered>> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Events waiting.
    pub fn waiting(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The `X-MusicFS-Signature` value for `body`: `sha256=` and the hex HMAC-SHA256.
    pub fn signature(&self, body: &[u8]) -> Option<String> {
        use hmac::{Hmac, Mac};
        let key = self.secret.as_ref()?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
        mac.update(body);
        let sum = mac.finalize().into_bytes();
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("sha256={hex}"))
    }

    /// Delivers queued events one by one, forever (run it on the control runtime).
    pub async fn run(self: Arc<Self>) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("musicfsd/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(url = %self.config.url, "webhook disabled: {e}");
                return;
            }
        };
        loop {
            let Some(d) = self.pop() else {
                self.wake.notified().await;
                continue;
            };
            self.deliver(&client, &d).await;
        }
    }

    async fn deliver(&self, client: &reqwest::Client, d: &Delivered) {
        let mut wait = Duration::from_millis(500);
        for attempt in 0..=self.config.max_retries {
            let mut req = client
                .post(&self.config.url)
                .header("content-type", "application/json")
                .header("x-musicfs-event", d.kind)
                .header("x-musicfs-delivery", d.seq.to_string())
                .body(d.json.clone());
            if let Some(sig) = self.signature(d.json.as_bytes()) {
                req = req.header("x-musicfs-signature", sig);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(r) => {
                    debug!(url = %self.config.url, attempt, status = %r.status(), "webhook refused")
                }
                Err(e) => debug!(url = %self.config.url, attempt, "webhook unreachable: {e}"),
            }
            if attempt < self.config.max_retries {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        warn!(url = %self.config.url, seq = d.seq, kind = d.kind, "webhook delivery failed after every retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_kinds_and_prefixes() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(selected(&[], "file.opened"));
        assert!(selected(&f(&["file."]), "file.closed"));
        assert!(!selected(&f(&["file"]), "file.closed"));
        assert!(selected(&f(&["library.changed"]), "library.changed"));
        assert!(!selected(&f(&["library.changed"]), "origin.health"));
    }

    #[test]
    fn a_full_webhook_queue_drops_the_oldest_and_counts_them() {
        let q = WebhookQueue::new(WebhookConfig {
            url: "http://127.0.0.1:1/".into(),
            events: vec![],
            secret_file: None,
            secret: Some("k".into()),
            max_retries: 0,
            queue: 2,
        })
        .unwrap();
        for seq in 1..=5 {
            q.push(Arc::new(Delivered {
                seq,
                time_ms: 0,
                kind: "file.opened",
                json: "{}".into(),
            }));
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(q.pop().unwrap().seq, 4);
        // RFC 4231 test case 2.
        let q = WebhookQueue::new(WebhookConfig {
            secret: Some("Jefe".into()),
            ..q.config.clone()
        })
        .unwrap();
        assert_eq!(
            q.signature(b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_access_log_rotates_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = AccessLog::open(&path, 4096, 2).unwrap();
        let line = "x".repeat(1000);
        for _ in 0..20 {
            log.write(&line);
        }
        log.flush();
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(dir.path().join("access.log.1").exists());
        assert!(dir.path().join("access.log.2").exists());
        assert!(!dir.path().join("access.log.3").exists());
    }
}
