//! The health prober: every origin is probed on a timer (`probe_interval_secs`), its state
//! (up, degraded, offline) kept in the shared [`OriginHealth`] the read path consults, each
//! change logged once, and the states written to `<state>/origins.health` for `musicfs
//! stats`.
//!
//! - **Offline**: the probe failed or did not answer in time. New opens of its files go to
//!   a copy in another origin; its own files fail fast with EIO.
//! - **Degraded**: the probe answered, but slower than `degraded_after`, or reads of its
//!   files failed since the last probe (reads that failed over to another copy count).
//! - **Up** otherwise.
//!
//! The prober only brings back online an origin it took offline itself: an origin the
//! scan found emptied or unmounted stays offline until a scan says otherwise. When an
//! origin goes offline or comes back and the tree shows tracks with copies, the refresher
//! republishes, so a track whose preferred copy is unreachable is named by a copy that is
//! there (and named by the preferred one again once it is back).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use musicfs_core::health::{OriginHealth, OriginState};
use musicfs_core::snapshot::Snapshot;
use musicfs_storage::origin::{probe_within, Health};
use musicfs_storage::Catalog;
use tracing::{debug, info, warn};

use super::Trigger;

/// The file the prober writes the origins' states to, in the state dir.
pub const HEALTH_FILE: &str = "origins.health";

/// Probes the origins of a running daemon. See the module docs.
pub struct Prober {
    /// The origins, as the library scans them (shared with the refresh loop, which adds
    /// and removes origins at run time).
    pub origins: super::SharedOrigins,
    /// The catalog (origin keys to ids).
    pub catalog: Arc<Catalog>,
    /// The shared states.
    pub health: Arc<OriginHealth>,
    /// Time between rounds.
    pub interval: Duration,
    /// The longest a probe may take before the origin counts as offline.
    pub timeout: Duration,
    /// A probe slower than this makes the origin degraded.
    pub degraded_after: Duration,
    /// Where the states are written ([`HEALTH_FILE`]).
    pub state_dir: PathBuf,
    /// The tree served, to know whether any track has copies.
    pub shared: Arc<ArcSwap<Snapshot>>,
    /// The refresher's triggers (a republish when an origin with copies changes state).
    pub refresh: Sender<Trigger>,
}

/// One origin's last probe, for the health file.
struct Probed {
    root: String,
    state: OriginState,
    probe_us: u128,
}

impl Prober {
    /// Probes every `interval` until `stop` says so (or is dropped).
    pub fn run(self, stop: Receiver<()>) {
        let mut mine: HashSet<u32> = HashSet::new();
        loop {
            self.round(&mut mine);
            match stop.recv_timeout(self.interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                _ => return,
            }
        }
    }

    /// One probe of every origin; `mine`: the origins this prober took offline.
    fn round(&self, mine: &mut HashSet<u32>) {
        // Not before the catalog's check; a damaged catalog is not read again, and the
        // served tree names the origins too.
        let known = match self
            .catalog
            .wait_for_check()
            .and_then(|()| self.catalog.origins())
        {
            Ok(k) => k,
            Err(musicfs_storage::CatalogError::Damaged { .. }) => self
                .shared
                .load()
                .origins()
                .map(|(id, root)| (musicfs_core::meta::OriginId(id), root.to_path_buf()))
                .collect(),
            Err(e) => {
                warn!("health probe: cannot read the catalog's origins: {e}");
                return;
            }
        };
        let mut flipped = false;
        let mut probed = Vec::new();
        let origins = self
            .origins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for origin in &origins {
            let Some((id, root)) = known.iter().find(|(_, r)| r.as_os_str() == origin.key()) else {
                continue;
            };
            let id = id.0;
            if self.health.is_disabled(id) {
                continue;
            }
            let start = Instant::now();
            let health = probe_within(origin, None, self.timeout);
            let took = start.elapsed();
            debug!(origin = %root.display(), ms = took.as_millis() as u64, "health probe");
            match health {
                Health::Offline(why) => {
                    if !self.health.is_offline(id) {
                        let why = format!("probe: {why}");
                        self.health.set_offline(id, &why);
                        warn!(origin = %root.display(), reason = %why, "origin offline");
                        mine.insert(id);
                        flipped = true;
                    }
                }
                Health::Up => {
                    if mine.remove(&id) && self.health.set_online(id) {
                        info!(origin = %root.display(), "origin online");
                        flipped = true;
                    }
                    let errors = self.health.take_read_errors(id);
                    let why = if errors > 0 {
                        Some(format!("{errors} failed reads since the last probe"))
                    } else if took > self.degraded_after {
                        Some(format!("probe took {} ms", took.as_millis()))
                    } else {
                        None
                    };
                    if self.health.set_degraded(id, why.as_deref()) {
                        match &why {
                            Some(why) => {
                                warn!(origin = %root.display(), reason = %why, "origin degraded")
                            }
                            None => info!(origin = %root.display(), "origin up"),
                        }
                    }
                }
            }
            probed.push(Probed {
                root: root.display().to_string(),
                state: self.health.state(id),
                probe_us: took.as_micros(),
            });
        }
        if flipped && self.shared.load().alternate_count() > 0 {
            let _ = self
                .refresh
                .send(Trigger::Republish("an origin with copies changed state"));
        }
        if let Err(e) = self.write_states(&probed) {
            debug!("cannot write {HEALTH_FILE}: {e}");
        }
    }

    /// Writes the states atomically: `ROOT<TAB>STATE<TAB>PROBE_US<TAB>WHY` per line (the
    /// last probe's time in microseconds).
    fn write_states(&self, probed: &[Probed]) -> std::io::Result<()> {
        let mut text = Vec::new();
        for p in probed {
            let (state, why) = match &p.state {
                OriginState::Up => ("up", ""),
                OriginState::Degraded(w) => ("degraded", w.as_str()),
                OriginState::Offline(w) => ("offline", w.as_str()),
            };
            writeln!(text, "{}\t{state}\t{}\t{why}", p.root, p.probe_us)?;
        }
        let path = self.state_dir.join(HEALTH_FILE);
        let tmp = self.state_dir.join(format!("{HEALTH_FILE}.tmp"));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)
    }
}
