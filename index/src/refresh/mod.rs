//! Keeping the served tree current.
//!
//! [`Library`] ties the catalog, the template and the origins together: it publishes a
//! snapshot, decides at start-up whether the published one can be served as is, and
//! refreshes (stat-only scan, then a republish only when the catalog changed).
//! [`Refresher`] runs on its own thread in the daemon: it waits for triggers (inotify
//! changes, poll and refresh intervals, SIGHUP, the start-up reconcile), coalesces bursts,
//! refreshes, swaps the new snapshot in for the FUSE workers and invalidates exactly what
//! changed in the kernel's caches.
//!
//! The daemon wires it up: it opens the origins (`musicfs_storage::origin::open_origin`),
//! builds the [`Library`] (with a [`StateDir`]), the watches ([`plan_watches`],
//! [`watch_origins`]), the [`OriginTable`] the FUSE read path opens files through
//! ([`Library::origin_table`], kept current by the [`Refresher`]) and the kernel's
//! [`InvalidationSink`], and runs the [`Refresher`] on a thread of its own. Origins are
//! only ever used through the seam: the library knows them by their catalog key, never by
//! a path of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use musicfs_core::events::{Event, Events};
use musicfs_core::health::OriginHealth;
use musicfs_core::snapshot::{invalidate_changes, InvalidationSink, Snapshot, SnapshotError};
use musicfs_core::template::{AlbumFormats, Template};
use musicfs_core::tree::TreeBuilder;
use musicfs_core::OriginId;
use musicfs_storage::origin::{probe_within, Health, Origin, OriginTable};
use musicfs_storage::Catalog;
use tracing::{info, warn};

use crate::health::{record_verdicts, PROBE_TIMEOUT};
use crate::scan::{DirHook, Extent, ProgressFn, ScanOptions, ScanReport};
use crate::watch::Change;

mod burst;
mod control;
mod copies;
mod delta;
mod error;
mod overlay;
mod prober;
mod scanning;
mod state;
mod watches;

use burst::{backoff, collect_burst, Timers};

pub use control::{OriginChange, RefreshControl, RoundOutcome};
pub use error::{RefreshError, Result};
pub use overlay::{no_renditions, OverlayView};

pub use prober::{Prober, HEALTH_FILE};
pub use scanning::scan_summary;
pub use state::StateDir;
pub use watches::{plan_watches, watch_origins, Indexed, OriginWatches, Watched};

/// The catalog, the template and the origins of one library.
pub struct Library {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The path template.
    pub template: Template,
    /// The origins, opened, in configuration order (the catalog knows each by its key).
    pub origins: Vec<Arc<dyn Origin>>,
    /// The same origins as the FUSE read path opens them, when that differs (a remote
    /// origin read through the chunk cache, `musicfs_storage::origin::CachedOrigin`): by
    /// key; an origin not here is read as scanned.
    pub readers: Vec<Arc<dyn Origin>>,
    /// Where the snapshot is published.
    pub state: StateDir,
    /// Share of an origin's tracks that may vanish in one scan before it counts as offline.
    pub mass_removal_threshold: f64,
    /// Which origins are offline (shared with the FUSE workers).
    pub health: Arc<OriginHealth>,
    /// Told how a full scan ([`Library::scan`]) is going, e.g. to drive a progress bar.
    pub progress: Option<ProgressFn>,
    /// The renditions of tracks with tag edits that the FUSE read path serves (shared with
    /// it; [`no_renditions`] to start), updated by each publish.
    pub renditions: Arc<ArcSwap<musicfs_core::overlay::RenditionSet>>,
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct Published {
    /// Generation of the new snapshot.
    pub generation: u64,
    /// Files in the tree.
    pub tracks: u64,
    /// Time to build and write.
    pub elapsed: Duration,
    /// Published as a delta on the served snapshot (else as a new base).
    pub delta: bool,
}

impl Library {
    /// Renders every catalogued track of the library's origins and publishes the tree as a
    /// new snapshot generation (atomically replacing the old one).
    pub fn publish(&self) -> Result<Published> {
        let start = Instant::now();
        let path = self.state.snapshot_path();
        let version = self.catalog.change_counter()?;
        let mut roots: Vec<PathBuf> = Vec::new();
        let mut wanted: Vec<u32> = Vec::new();
        for (id, root) in self.catalog.origins()? {
            let idx = id.0 as usize;
            if roots.len() <= idx {
                roots.resize(idx + 1, PathBuf::new());
            }
            if self.origins.iter().any(|o| o.key() == root.as_os_str()) {
                wanted.push(id.0);
                roots[idx] = root;
            }
        }
        // Two passes: album-level facts ($format of a mixed-format album) first, so every
        // track of an album renders into the same folder; the first also sizes the tree,
        // so the builder allocates it once.
        let copies = self.copies(&wanted)?;
        let overlay = self.overlay()?;
        let mut albums = AlbumFormats::default();
        let (mut tracks, mut path_bytes) = (0usize, 0usize);
        self.catalog.for_each(|track| {
            if wanted.contains(&track.origin.0) && copies.hidden(track.id.0).is_none() {
                let track = overlay.apply(track);
                albums.add(&track);
                tracks += 1;
                path_bytes += track.rel_path.len();
            }
        })?;
        let mut builder = TreeBuilder::new(self.template.as_str(), roots);
        builder.set_catalog_version(version);
        builder.reserve(tracks, path_bytes);
        let mut hidden = Vec::new();
        self.catalog.for_each(|track| {
            if !wanted.contains(&track.origin.0) {
                return;
            }
            let track = overlay.apply(track);
            match copies.hidden(track.id.0) {
                Some((shown, rank, same)) => hidden.push((shown, rank, same, track)),
                None => builder.add(&track, &self.template.render_in(&track, &albums)),
            }
        })?;
        hidden.sort_by_key(|(shown, rank, ..)| (*shown, *rank));
        for (shown, _, same, track) in &hidden {
            builder.add_alternate(*shown, track, *same);
        }
        builder.set_albums(&albums);
        let tree = builder.build();
        let generation = match Snapshot::open(&path) {
            Ok(old) => old.generation() + 1,
            Err(_) => 1,
        };
        self.serve_renditions(&overlay);
        Snapshot::write(&path, &tree, generation)?;
        let tracks = tree.track_count;
        drop(tree);
        crate::memory::release_free_memory();
        Ok(Published {
            generation,
            tracks,
            elapsed: start.elapsed(),
            delta: false,
        })
    }

    /// Whether `snap` shows exactly this library: same template, same origins, built from
    /// the catalog as it is now.
    pub fn is_current(&self, snap: &Snapshot) -> Result<bool> {
        Ok(self.serves_same_origins(snap)?
            && snap.catalog_version() == self.catalog.change_counter()?)
    }

    /// The snapshot to serve at start-up.
    ///
    /// The published snapshot is served as is when it matches the configuration: start-up
    /// is O(1) and the caller reconciles in the background. A snapshot that is stale but
    /// whose origins the catalog knows is rebuilt from the catalog without touching the
    /// origins; only origins no published tree has shown (never seen, or a first scan cut
    /// short) are scanned first. A corrupt or incompatible snapshot is reported and rebuilt,
    /// never trusted.
    pub fn load_or_build(&self) -> Result<Snapshot> {
        let path = self.state.snapshot_path();
        // The served tree's tag edits read through the renditions its publish stored.
        let stored = self.catalog.renditions()?;
        if !stored.is_empty() {
            let set = stored
                .into_iter()
                .map(|(id, r)| (id.0, Arc::new(r)))
                .collect();
            self.renditions
                .store(Arc::new(self.renditions.load().next(set)));
        }
        match Snapshot::open(&path) {
            // Its tracks are named by catalog ids; a catalog that never saw its origins
            // (lost and started anew, moved away by the operator) cannot serve them, and
            // its change counter may even match the old one's by chance.
            Ok(snap) if !self.knows_origins_of(&snap)? => warn!(
                "the catalog does not know the origins the snapshot shows (a new or \
                 replaced catalog): rescanning them and rebuilding the tree"
            ),
            Ok(snap) if self.is_current(&snap)? => return Ok(snap),
            Ok(snap) if self.serves_same_origins(&snap)? => {
                // The catalog moved on (an interrupted publish): serve the old tree now,
                // the background reconcile publishes the new one.
                info!("snapshot is older than the catalog: serving it while reconciling");
                return Ok(snap);
            }
            Ok(_) => info!("configuration changed since the last snapshot: rebuilding"),
            Err(SnapshotError::Missing(_)) => info!("no snapshot yet"),
            Err(e) => warn!("{e}; rebuilding it"),
        }
        if self.origins.is_empty() {
            return Err(RefreshError::NoOrigin);
        }
        // Only an origin a published tree showed had a scan complete: the catalog registers
        // an origin when its first scan starts and commits the tracks in batches, so one it
        // knows but no tree showed may hold part of a scan a kill cut short.
        let published: Vec<PathBuf> = Snapshot::open(&path)
            .map(|snap| snap.origin_roots().map(Path::to_path_buf).collect())
            .unwrap_or_default();
        let known: Vec<PathBuf> = self
            .catalog
            .origins()?
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| published.contains(p))
            .collect();
        if self
            .origins
            .iter()
            .any(|o| !known.iter().any(|k| k.as_os_str() == o.key()))
        {
            info!("scanning origins no published tree has shown (new, or cut short)");
            let report = self.scan()?;
            info!("{}", scan_summary(&report));
            self.record_health(&(0..self.origins.len()).collect::<Vec<_>>(), &report)?;
        }
        let published = self.publish()?;
        info!(
            generation = published.generation,
            tracks = published.tracks,
            ms = published.elapsed.as_millis() as u64,
            "published snapshot"
        );
        Ok(Snapshot::open(&path)?)
    }

    /// Whether the catalog has registered every origin `snap` shows.
    fn knows_origins_of(&self, snap: &Snapshot) -> Result<bool> {
        let known = self.catalog.origins()?;
        Ok(snap
            .origin_roots()
            .all(|root| known.iter().any(|(_, k)| k == root)))
    }

    fn serves_same_origins(&self, snap: &Snapshot) -> Result<bool> {
        if snap.template() != self.template.as_str() {
            return Ok(false);
        }
        let roots: Vec<&Path> = snap.origin_roots().collect();
        let shown = self.shown_origins()?;
        Ok(roots.len() == shown.len() && shown.iter().all(|o| roots.contains(o)))
    }

    /// The configured origins a tree of this library lists: those the catalog knows, and
    /// any other that is there now (to be scanned). One the catalog never saw that is
    /// missing has nothing to show; counting it would make every tree look stale.
    fn shown_origins(&self) -> Result<Vec<&Path>> {
        let known = self.catalog.origins()?;
        Ok(self
            .origins
            .iter()
            .filter(|o| {
                known.iter().any(|(_, root)| root.as_os_str() == o.key())
                    || probe_within(o, None, PROBE_TIMEOUT) == Health::Up
            })
            .map(|o| Path::new(o.key()))
            .collect())
    }

    /// Catalog ids of the origins this library shows.
    fn shown_origin_ids(&self) -> Result<Vec<u32>> {
        Ok(self
            .catalog
            .origins()?
            .into_iter()
            .filter(|(_, root)| self.origins.iter().any(|o| o.key() == root.as_os_str()))
            .map(|(id, _)| id.0)
            .collect())
    }

    /// The library's origins by catalog id, for the FUSE read path (the same origin
    /// objects the scans use). An origin the catalog has not registered yet (never scanned:
    /// it has no tracks to read) is left out; [`Refresher`] rebuilds the table after a
    /// scan that registered one.
    pub fn origin_table(&self) -> Result<OriginTable> {
        let mut table = OriginTable::new();
        for (id, root) in self.catalog.origins()? {
            let reader = self.readers.iter().find(|o| o.key() == root.as_os_str());
            let scanned = || self.origins.iter().find(|o| o.key() == root.as_os_str());
            if let Some(o) = reader.or_else(scanned) {
                table.insert(id.0, o.clone());
            }
        }
        Ok(table)
    }

    /// Scans `which` origins (indices into [`Library::origins`], each with the part of it
    /// to scan: [`Extent::Dirs`] for the directories inotify events named; every origin,
    /// whole, when `which` is empty) and publishes a new snapshot when the catalog no longer
    /// matches `current`. `hook` runs on each directory before the scan lists it (see
    /// [`OriginWatches::hook`]).
    pub fn refresh(
        &self,
        which: &[(usize, Extent)],
        current: &Snapshot,
        hook: Option<DirHook>,
    ) -> Result<Refreshed> {
        let scanned: Vec<(usize, Extent)> = if which.is_empty() {
            (0..self.origins.len())
                .map(|i| (i, Extent::Whole))
                .collect()
        } else {
            which
                .iter()
                .filter(|(i, _)| *i < self.origins.len())
                .cloned()
                .collect()
        };
        // Origins the operator switched off are not touched.
        let known = self.catalog.origins()?;
        let scanned: Vec<(usize, Extent)> = scanned
            .into_iter()
            .filter(|(i, _)| {
                let key = Path::new(self.origins[*i].key());
                !known
                    .iter()
                    .any(|(id, root)| root == key && self.health.is_disabled(id.0))
            })
            .collect();
        let indices: Vec<usize> = scanned.iter().map(|(i, _)| *i).collect();
        let origins: Vec<(Arc<dyn Origin>, Extent)> = scanned
            .into_iter()
            .map(|(i, extent)| (self.origins[i].clone(), extent))
            .collect();
        let opts = ScanOptions {
            dir_hook: hook,
            ..self.scan_options()
        };
        let was_current = self.is_current(current)?;
        let report = crate::scan::scan_extents(&self.catalog, &origins, &opts)?;
        let offline = self.record_health(&indices, &report)?;
        if self.is_current(current)? {
            return Ok(Refreshed {
                report,
                snapshot: None,
                offline,
            });
        }
        let published = self.publish_change(current, &report.touched, was_current)?;
        let snapshot = Snapshot::open(&self.state.snapshot_path())?;
        info!(
            generation = published.generation,
            tracks = published.tracks,
            ms = published.elapsed.as_millis() as u64,
            delta = published.delta,
            "republished"
        );
        Ok(Refreshed {
            report,
            snapshot: Some(snapshot),
            offline,
        })
    }

    /// Scan options carrying this library's mass-removal threshold.
    pub fn scan_options(&self) -> ScanOptions {
        ScanOptions {
            mass_removal_threshold: self.mass_removal_threshold,
            art: Some(musicfs_storage::ArtStore::new(&self.state.art_dir())),
            ..ScanOptions::default()
        }
    }

    /// Records which of the scanned origins (`indices` into [`Library::origins`]) `report`
    /// found offline; returns those indices.
    fn record_health(&self, indices: &[usize], report: &ScanReport) -> Result<Vec<usize>> {
        let known = self.catalog.origins()?;
        let scanned: Vec<(&Path, Option<OriginId>)> = indices
            .iter()
            .map(|&i| {
                let key = Path::new(self.origins[i].key());
                let id = known.iter().find(|(_, r)| r == key).map(|(id, _)| *id);
                (key, id)
            })
            .collect();
        let down = record_verdicts(&self.health, &scanned, &report.offline);
        Ok(down.into_iter().map(|k| indices[k]).collect())
    }
}

/// The outcome of [`Library::refresh`].
pub struct Refreshed {
    /// What the scan found.
    pub report: ScanReport,
    /// The new snapshot, when anything changed.
    pub snapshot: Option<Snapshot>,
    /// The scanned origins (indices into [`Library::origins`]) found offline.
    pub offline: Vec<usize>,
}

/// A list of origins shared between the refresh loop and another thread (the prober).
pub type SharedOrigins = Arc<std::sync::RwLock<Vec<Arc<dyn Origin>>>>;

/// Why the refresher should look at the origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A watcher saw a change.
    Watch(Change),
    /// Rescan every origin (SIGHUP, start-up reconcile, control command), with the reason.
    Rescan(&'static str),
    /// Publish the tree again from the catalog as it is (an origin holding copies of
    /// tracks went offline or came back: which copy is shown may change), with the reason.
    Republish(&'static str),
    /// Settings changed in the [`RefreshControl`] (the refresh interval): take them.
    Settings,
    /// Tag edits were written to the catalog: publish the tracks they touch (as a delta
    /// when the served tree was current before them).
    Edited {
        /// Each edited track with its album key and format as shown before the edit.
        tracks: Vec<(musicfs_core::TrackId, Option<(u128, musicfs_core::Format)>)>,
        /// The catalog's change counter before the edits.
        catalog_before: u64,
        /// How many times the edits bumped it.
        bumps: u64,
    },
    /// Stop the refresher.
    Stop,
}

/// The longest wait before retrying a failed refresh.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The refresh loop of a running daemon.
pub struct Refresher {
    /// The library.
    pub library: Library,
    /// What the FUSE workers serve.
    pub shared: Arc<ArcSwap<Snapshot>>,
    /// Where kernel invalidations go (none when not mounted, e.g. in tests).
    pub sink: Option<Box<dyn InvalidationSink + Send>>,
    /// Seconds between full stat walks (0: never).
    pub refresh_interval: Option<Duration>,
    /// Origins polled (index, interval) because inotify cannot see their changes.
    pub polled: Vec<(usize, Duration)>,
    /// The inotify origins' watches, which every refresh extends as it lists directories.
    pub watches: Option<Arc<OriginWatches>>,
    /// The origins the FUSE read path opens files through (by catalog id): replaced with
    /// [`Library::origin_table`] after each republish, so an origin registered by a scan
    /// (first seen while serving) is read from too.
    pub origins: Option<Arc<ArcSwap<OriginTable>>>,
    /// The search index, kept in step with the catalog after each change (and compared
    /// with it once at start).
    pub search: Option<Arc<crate::search::SearchIndex>>,
    /// Refreshes the control plane waits for, and settings it changes.
    pub control: Option<Arc<RefreshControl>>,
    /// Where each published change is reported ([`Event::LibraryChanged`]).
    pub events: Option<Events>,
    /// The health prober's list of origins, kept in step with origins added and removed
    /// at run time.
    pub probed: Option<SharedOrigins>,
}

impl Refresher {
    /// Runs until a [`Trigger::Stop`] arrives or every sender is gone.
    pub fn run(mut self, rx: Receiver<Trigger>) {
        // Nothing here reads the catalog whole before its out-of-process check passed: a
        // damaged page would kill the daemon. Damaged, it is never read again (every
        // round is refused, saying why) and the published tree stays served.
        if self.library.catalog.wait_for_check().is_ok() {
            self.verify_served();
            self.sync_search(None);
        }
        let mut timers = Timers::new(self.refresh_interval, &self.polled);
        let mut unwatched: Vec<usize> = Vec::new();
        // Consecutive failed refreshes: each is retried, after 1 s, 2 s, ... at most 60 s.
        let mut failures = 0u32;
        // Consecutive refreshes that found some origin offline: it is looked at again on
        // the same backoff (its root may come back where no watch can see it).
        let mut offline_rounds = 0u32;
        loop {
            if let Some(interval) = self.control.as_ref().and_then(|c| c.take_interval()) {
                info!(?interval, "refresh interval changed");
                timers = Timers::new(interval, &self.polled);
            }
            while let Some(change) = self.control.as_ref().and_then(|c| c.take_origin_change()) {
                self.change_origin(change, &mut timers);
            }
            self.poll_unwatched(&mut unwatched, &mut timers);
            let (which, why) = match rx.recv_timeout(timers.until_next()) {
                Ok(Trigger::Republish(why)) => {
                    self.republish(why);
                    continue;
                }
                Ok(Trigger::Settings) => continue,
                Ok(Trigger::Edited {
                    tracks,
                    catalog_before,
                    bumps,
                }) => {
                    self.publish_edits(tracks, catalog_before, bumps);
                    continue;
                }
                Ok(first) => match collect_burst(first, &rx) {
                    Some(which) => (which, "change"),
                    None => return,
                },
                Err(RecvTimeoutError::Timeout) => {
                    let due = timers.take_due().into_iter();
                    (due.map(|i| (i, Extent::Whole)).collect(), "timer")
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match self.refresh_now(&which, why) {
                Some(offline) => {
                    failures = 0;
                    if !offline.is_empty() {
                        timers.once(offline, backoff(offline_rounds));
                        offline_rounds += 1;
                    } else if !self.library.health.any_offline() {
                        offline_rounds = 0;
                    }
                }
                None => {
                    // A change already seen by the failed scan sends no new event: retry it
                    // (its origins whole, empty still meaning all).
                    let origins = which.iter().map(|(i, _)| *i).collect();
                    timers.once(origins, backoff(failures));
                    failures += 1;
                }
            }
        }
    }

    /// Adds or removes an origin of the running library, then serves the result (a
    /// refresh round, which the control plane's tickets count).
    fn change_origin(&mut self, change: OriginChange, timers: &mut Timers) {
        match change {
            OriginChange::Add {
                origin,
                reader,
                poll,
            } => {
                let live = self.library.origins.iter().any(|o| o.key() == origin.key());
                if live {
                    info!(origin = %origin.spec(), "origin already served");
                    return;
                }
                let i = self.library.origins.len();
                info!(origin = %origin.spec(), "origin added: scanning it");
                if let Some(p) = &self.probed {
                    p.write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(origin.clone());
                }
                self.library.origins.push(origin);
                if let Some(r) = reader {
                    self.library.readers.push(r);
                }
                self.polled.push((i, poll));
                timers.add(&[(i, poll)]);
                let _ = self.refresh_now(&[(i, Extent::Whole)], "origin added");
            }
            OriginChange::Remove { key } => {
                let Some(i) = self
                    .library
                    .origins
                    .iter()
                    .position(|o| o.key() == key.as_os_str())
                else {
                    return;
                };
                let was = self.library.origins[i].clone();
                info!(origin = %was.spec(), "origin removed: its tracks leave the tree");
                self.library.origins[i] = Arc::new(control::Removed::new(was.as_ref(), i));
                self.library.readers.retain(|r| r.key() != key.as_os_str());
                if let Some(p) = &self.probed {
                    p.write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .retain(|o| o.key() != key.as_os_str());
                }
                self.polled.retain(|(p, _)| *p != i);
                let covers = self.control.as_ref().map(|c| c.begin());
                self.republish("origin removed");
                if let (Some(c), Some(covers)) = (&self.control, covers) {
                    let served = self.shared.load();
                    c.end(
                        covers,
                        RoundOutcome {
                            generation: served.generation(),
                            published: true,
                            added: 0,
                            changed: 0,
                            removed: 0,
                            error: None,
                        },
                    );
                }
            }
        }
    }

    /// The origins of `which` still served (an origin removed at run time is never
    /// scanned); `None` when `which` named only removed ones.
    fn live(&self, which: &[(usize, Extent)]) -> Option<Vec<(usize, Extent)>> {
        let removed = |i: usize| {
            self.library
                .origins
                .get(i)
                .is_none_or(|o| o.key().as_encoded_bytes().starts_with(b"\0removed/"))
        };
        if which.is_empty() {
            if !(0..self.library.origins.len()).any(removed) {
                return Some(Vec::new());
            }
            let all: Vec<(usize, Extent)> = (0..self.library.origins.len())
                .filter(|i| !removed(*i))
                .map(|i| (i, Extent::Whole))
                .collect();
            return (!all.is_empty()).then_some(all);
        }
        let kept: Vec<(usize, Extent)> = which
            .iter()
            .filter(|(i, _)| !removed(*i))
            .cloned()
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    /// Publishes the tree again from the catalog and serves it.
    fn republish(&self, why: &str) {
        let current = self.shared.load_full();
        let path = self.library.state.snapshot_path();
        match self
            .library
            .publish()
            .and_then(|_| Ok(Snapshot::open(&path)?))
        {
            Ok(next) => {
                info!(why, generation = next.generation(), "republished");
                let changed = Event::LibraryChanged {
                    generation: next.generation(),
                    added: 0,
                    changed: 0,
                    removed: 0,
                    tracks: next.track_count(),
                };
                self.swap_in(&current, next);
                self.emit(changed);
            }
            Err(e) => warn!(
                why,
                "cannot republish, still serving the previous tree: {e:#}"
            ),
        }
    }

    /// Publishes tag edits of `tracks` (see [`Trigger::Edited`]) and serves them, telling
    /// the control plane's waiters.
    fn publish_edits(
        &self,
        tracks: Vec<(musicfs_core::TrackId, Option<(u128, musicfs_core::Format)>)>,
        catalog_before: u64,
        bumps: u64,
    ) {
        let covers = self.control.as_ref().map(|c| c.begin());
        let current = self.shared.load_full();
        let n = tracks.len() as u64;
        let touched = crate::scan::Touched {
            tracks,
            overflow: false,
        };
        let published = self
            .library
            .publish_edits(&current, &touched, catalog_before, bumps)
            .and_then(|p| Ok((p, Snapshot::open(&self.library.state.snapshot_path())?)));
        let outcome = match published {
            Ok((p, next)) => {
                info!(
                    generation = p.generation,
                    delta = p.delta,
                    ms = p.elapsed.as_millis() as u64,
                    "tag edits published"
                );
                let changed = Event::LibraryChanged {
                    generation: next.generation(),
                    added: 0,
                    changed: n,
                    removed: 0,
                    tracks: next.track_count(),
                };
                let outcome = RoundOutcome {
                    generation: next.generation(),
                    published: true,
                    added: 0,
                    changed: n,
                    removed: 0,
                    error: None,
                };
                self.swap_in(&current, next);
                self.emit(changed);
                outcome
            }
            Err(e) => {
                warn!("cannot publish the tag edits, still serving the previous tree: {e:#}");
                RoundOutcome {
                    generation: current.generation(),
                    published: false,
                    added: 0,
                    changed: 0,
                    removed: 0,
                    error: Some(format!("{e:#}")),
                }
            }
        };
        if let (Some(c), Some(covers)) = (&self.control, covers) {
            c.end(covers, outcome);
        }
    }

    /// Start-up maps the snapshot after O(1) checks; its body checksum is verified here,
    /// in the background, and a damaged snapshot is rebuilt from the catalog and swapped in.
    fn verify_served(&self) {
        let current = self.shared.load_full();
        let path = self.library.state.snapshot_path();
        let Err(e) = current.verify(&path) else {
            return;
        };
        warn!("{e}; rebuilding it from the catalog");
        let rebuilt = self
            .library
            .publish()
            .and_then(|_| Ok(Snapshot::open_verified(&path)?));
        match rebuilt {
            Ok(next) => self.swap_in(&current, next),
            Err(e) => warn!("cannot rebuild the snapshot, still serving the damaged one: {e:#}"),
        }
    }

    /// Serves `next` from now on and tells the kernel what changed since `current`.
    fn swap_in(&self, current: &Snapshot, next: Snapshot) {
        if let Some(origins) = &self.origins {
            match self.library.origin_table() {
                Ok(table) => origins.store(Arc::new(table)),
                Err(e) => warn!("cannot update the origin table, keeping the old one: {e:#}"),
            }
        }
        let next = Arc::new(next);
        self.shared.store(next.clone());
        if let Some(sink) = &self.sink {
            let done = invalidate_changes(current, &next, sink.as_ref());
            info!(
                generation = next.generation(),
                entries = done.entries,
                inodes = done.inodes,
                "swapped in the new tree"
            );
        }
    }

    /// Tells the kernel to forget what it cached of the album folders showing the extra
    /// files of the origin folders in `changed` (their listings, and each name they had or
    /// have, the cover's included: a name looked up before it existed is cached as absent).
    fn forget_album_extras(&self, changed: &[musicfs_storage::ExtrasChanged]) {
        let Some(sink) = &self.sink else {
            return;
        };
        if changed.is_empty() {
            return;
        }
        let snap = self.shared.load();
        let mut all = std::collections::HashSet::new();
        for c in changed {
            let tracks = match self.library.catalog.tracks_in(c.origin, &c.dir) {
                Ok(t) => t,
                Err(e) => {
                    warn!("cannot tell which albums show changed extra files: {e}");
                    continue;
                }
            };
            let dirs: std::collections::HashSet<u64> = tracks
                .iter()
                .filter_map(|(_, id)| snap.node(id.0 + musicfs_core::tree::FILE_INO_BASE))
                .map(|n| n.parent_ino())
                .collect();
            let names = c.names.iter().map(Vec::as_slice);
            let covers = musicfs_core::meta::COVER_NAMES.iter().map(|n| n.as_bytes());
            for name in names.chain(covers) {
                for &dir in &dirs {
                    // ENOENT (nothing cached under that name) is the common answer.
                    let _ = sink.inval_entry(dir, name);
                }
            }
            all.extend(dirs);
        }
        for dir in &all {
            if let Err(e) = sink.inval_inode(*dir) {
                tracing::debug!(dir, "cannot invalidate an album folder: {e}");
            }
        }
        tracing::debug!(albums = all.len(), "album folders' extra files changed");
    }

    /// Polls the origins whose watches could not all be added (e.g. the inotify watch
    /// limit): `done` lists those already switched.
    fn poll_unwatched(&self, done: &mut Vec<usize>, timers: &mut Timers) {
        let Some(w) = &self.watches else {
            return;
        };
        for (i, why) in w.failed() {
            if !done.contains(&i) {
                warn!("{why}; polling that origin every 60 s as well");
                done.push(i);
                timers.add(&[(i, Duration::from_secs(60))]);
            }
        }
    }

    /// Refreshes `which` (all when empty); the origins found offline, or `None` when the
    /// refresh failed.
    /// Brings the search index to the catalog: `touched` is what changed since catalog
    /// counter `since`, when known. A failure is logged: search answers from the index as
    /// it was until the next change.
    fn sync_search(&self, touched: Option<(u64, &crate::scan::Touched)>) {
        let Some(search) = &self.search else {
            return;
        };
        let start = std::time::Instant::now();
        match search.sync(&self.library.catalog, touched) {
            Ok(s) if s.written + s.deleted > 0 => info!(
                written = s.written,
                deleted = s.deleted,
                compared = s.compared,
                ms = start.elapsed().as_millis() as u64,
                "search index updated"
            ),
            Ok(_) => {}
            Err(e) => warn!("cannot update the search index: {e}"),
        }
    }

    fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            events.emit(event);
        }
    }

    /// [`Refresher::refresh_round`], told to the control plane.
    fn refresh_now(&self, which: &[(usize, Extent)], why: &str) -> Option<Vec<usize>> {
        let covers = self.control.as_ref().map(|c| c.begin());
        let (offline, outcome) = match self.live(which) {
            Some(which) => self.refresh_round(&which, why),
            None => {
                let served = self.shared.load();
                let outcome = RoundOutcome {
                    generation: served.generation(),
                    published: false,
                    added: 0,
                    changed: 0,
                    removed: 0,
                    error: None,
                };
                (Some(Vec::new()), outcome)
            }
        };
        if let (Some(c), Some(covers)) = (&self.control, covers) {
            c.end(covers, outcome);
        }
        offline
    }

    fn refresh_round(
        &self,
        which: &[(usize, Extent)],
        why: &str,
    ) -> (Option<Vec<usize>>, RoundOutcome) {
        let current = self.shared.load_full();
        let mut outcome = RoundOutcome {
            generation: current.generation(),
            published: false,
            added: 0,
            changed: 0,
            removed: 0,
            error: None,
        };
        if let Err(e) = self.library.catalog.wait_for_check() {
            // Not retried: nothing changes until the catalog is replaced.
            tracing::debug!(why, "refresh refused: {e}");
            outcome.error = Some(format!("refresh refused: {e}"));
            return (Some(Vec::new()), outcome);
        }
        let since = self.library.catalog.change_counter().ok();
        let hook = self.watches.as_ref().map(OriginWatches::hook);
        let refreshed = self.library.refresh(which, &current, hook);
        // The scan's tables are freed by now (a republish already gave its memory back),
        // and the catalog pages it read are not needed until the next refresh: an idle
        // daemon must not sit on either.
        crate::memory::release_free_memory();
        self.library.catalog.release_mapped_pages();
        match refreshed {
            Ok(Refreshed {
                report,
                snapshot: Some(next),
                offline,
            }) => {
                info!(why, "{}", scan_summary(&report));
                outcome = RoundOutcome {
                    generation: next.generation(),
                    published: true,
                    added: report.added,
                    changed: report.changed,
                    removed: report.removed,
                    error: None,
                };
                let changed = Event::LibraryChanged {
                    generation: next.generation(),
                    added: report.added,
                    changed: report.changed,
                    removed: report.removed,
                    tracks: next.track_count(),
                };
                self.swap_in(&current, next);
                self.forget_album_extras(&report.extras_changed);
                self.sync_search(since.map(|s| (s, &report.touched)));
                self.emit(changed);
                (Some(offline), outcome)
            }
            Ok(Refreshed {
                report, offline, ..
            }) => {
                self.forget_album_extras(&report.extras_changed);
                tracing::debug!(why, seen = report.seen, "refresh found nothing new");
                (Some(offline), outcome)
            }
            Err(e) => {
                warn!(
                    why,
                    "refresh failed, still serving the previous tree (will retry): {e:#}"
                );
                outcome.error = Some(format!("{e:#}"));
                (None, outcome)
            }
        }
    }
}
