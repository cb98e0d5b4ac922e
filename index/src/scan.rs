//! Incremental, parallel scan of origins into the catalog.
//!
//! Origins are [`Origin`]s of the storage seam, registered in the catalog under their
//! [`Origin::key`]. The walk (module `walk`: several threads over a local root, or
//! [`Origin::list`] for any other origin) lists each origin and compares every audio
//! file's stat with what the catalog remembers (module `known`); only new or changed files
//! go to the tag-reading workers, which open them through [`Origin::open`]. The calling
//! thread collects their results and writes them in batches, one catalog transaction per
//! batch, so an interrupted scan keeps what it already wrote and the next scan resumes from
//! there (the unchanged files are not opened again).
//!
//! Files that cannot be read as audio for a reason inherent to their bytes (empty,
//! truncated, not the format their extension says) are remembered in the catalog's
//! `skipped` table with their stat, so they too are not reopened until they change; they
//! are still reported in every [`ScanReport::skipped`]. Files that failed with an I/O
//! error are not remembered: the error may be gone by the next scan.
//!
//! An origin that is not there (missing, unmounted, emptied, or losing more than a share of
//! its tracks at once: see [`crate::health`]) removes nothing: its tracks are kept and it is
//! listed in [`ScanReport::offline`], while the other origins are scanned as usual.
//!
//! [`scan_extents`] scans only some directories of an origin ([`Extent`], module `scoped`):
//! what the live daemon does for an inotify event. Its root is probed first as for a whole
//! scan, and its removals obey the same mass-removal rule, against the origin's tracks.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use musicfs_core::{Format, OriginId, ScanState, TrackId};
use musicfs_storage::origin::{Origin, RootIdentity};
use musicfs_storage::{
    ArtSet, ArtStore, Batch, Catalog, CatalogError, DirExtras, ExtraFile, ExtrasChanged,
    IdentitySet, OriginDevice, SkipRecord, Upsert,
};

use crate::health::{
    classify_root, classify_walk, probe_origin, OfflineReason, Recorded, RootFacts,
    DEFAULT_MASS_REMOVAL_THRESHOLD, PROBE_TIMEOUT,
};
use crate::known::{state_hash, Known, KnownBuilder};
use crate::tags::{read_track_identity, TagError, TrackRead};
pub use crate::walk::Skipped;
use crate::walk::{self, shown};

mod scoped;

pub use scoped::Extent;
use scoped::Scope;

/// How many changes (upserts, removals, skips) go into one catalog transaction.
const BATCH: usize = 1000;
/// The collector lets go of the catalog pages it mapped in after this many batches.
const RELEASE_EVERY_BATCHES: u64 = 16;
/// The collector reports progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Why a scan could not run at all. Per-file problems are not errors: they end up in
/// [`ScanReport::skipped`]; an origin that is not there is not one either: it ends up in
/// [`ScanReport::offline`].
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The catalog refused a read or a write.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
}

/// A snapshot of a running scan, handed to [`ScanOptions::progress`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Audio files found so far.
    pub seen: u64,
    /// Files whose tags have been read so far.
    pub opened: u64,
    /// Files found unchanged so far.
    pub unchanged: u64,
    /// True for the last call, when the scan is complete.
    pub done: bool,
}

/// A progress callback. Called from the scan's threads (the walker and the collector): at
/// most every 100 ms while files are read, every 4096 files walked, and once at the end
/// with `done` set.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How to scan.
#[derive(Clone)]
pub struct ScanOptions {
    /// Tag-reading worker threads (at least 1).
    pub threads: usize,
    /// Called with running totals; lets a CLI drive a progress bar.
    pub progress: Option<ProgressFn>,
    /// Re-read every file's tags even when its stat is unchanged (repairs a catalog after a
    /// tag-reader fix, or after an edit that preserved size and times).
    pub verify: bool,
    /// Threads listing directories and stat'ing files (at least 1).
    pub walk_threads: usize,
    /// Called with (origin, directory relative to its root) before each directory is
    /// listed: the live daemon adds its inotify watch there, so a change is either seen by
    /// this scan or reported by the watch.
    pub dir_hook: Option<DirHook>,
    /// The share of an origin's tracks (0 to 1) that may vanish in one scan; more means
    /// the origin is offline, not that its files were deleted (see [`crate::health`]).
    pub mass_removal_threshold: f64,
    /// Remove the tracks of an origin that emptied or lost more than the threshold (the
    /// user confirmed the deletion).
    pub allow_mass_removal: bool,
    /// Where embedded cover art is stored ([`ArtStore`]); `None` records none.
    pub art: Option<ArtStore>,
}

/// See [`ScanOptions::dir_hook`].
pub type DirHook = Arc<dyn Fn(&dyn Origin, &Path) + Send + Sync>;

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: None,
            verify: false,
            walk_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            dir_hook: None,
            mass_removal_threshold: DEFAULT_MASS_REMOVAL_THRESHOLD,
            allow_mass_removal: false,
            art: None,
        }
    }
}

impl std::fmt::Debug for ScanOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("verify", &self.verify)
            .field("walk_threads", &self.walk_threads)
            .field("dir_hook", &self.dir_hook.is_some())
            .field("mass_removal_threshold", &self.mass_removal_threshold)
            .field("allow_mass_removal", &self.allow_mass_removal)
            .finish()
    }
}

/// What a scan did.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// Audio files (by extension) found in the origins.
    pub seen: u64,
    /// Files new to the catalog.
    pub added: u64,
    /// Files whose stat changed and whose tags were read again.
    pub changed: u64,
    /// Catalog entries removed: the file is gone, or no longer readable as audio.
    pub removed: u64,
    /// Files whose stat matched the catalog (tracks, and broken files it remembers as
    /// skipped); not opened.
    pub unchanged: u64,
    /// Files actually opened to read tags.
    pub opened: u64,
    /// Audio files whose stat the walk took (found, or failing to stat): what a rescan
    /// costs; a scan of one directory stats that directory's files only.
    pub statted: u64,
    /// Directories listed.
    pub listed: u64,
    /// Paths not cataloged, with the reason (broken files, dangling or looping symlinks,
    /// symlinks leaving the origin, unreadable directories). A broken file left unchanged
    /// since an earlier scan is listed with the reason recorded then, without being opened.
    pub skipped: Vec<Skipped>,
    /// Origins found offline (see [`crate::health`]): their tracks were kept as they were.
    pub offline: Vec<OfflineOrigin>,
    /// The tracks this scan added, changed or removed, with what the catalog held of each
    /// before (what a small republish needs: see `musicfs_core::snapshot::delta`).
    pub touched: Touched,
    /// Origin folders whose extra files changed (a mount tells the kernel to forget their
    /// albums' listings).
    pub extras_changed: Vec<ExtrasChanged>,
    /// Wall time of the whole scan.
    pub elapsed: Duration,
}

/// The tracks a scan touched ([`ScanReport::touched`]), up to [`TOUCHED_MAX`].
#[derive(Debug, Clone, Default)]
pub struct Touched {
    /// Each touched track with its album key (`musicfs_core::template::album_key`) and
    /// format before the scan (`None` for a new track), in the order they were written.
    pub tracks: Vec<(TrackId, Option<(u128, Format)>)>,
    /// More than [`TOUCHED_MAX`] tracks changed: `tracks` is incomplete (a full
    /// republish is due anyway).
    pub overflow: bool,
}

/// Touched tracks recorded one by one before a scan just says "many".
pub const TOUCHED_MAX: usize = 20_000;

impl Touched {
    /// Records a touched track `id`, looking up what the catalog holds of it now (call
    /// before the change is written).
    fn before_change(&mut self, catalog: &Catalog, id: TrackId) -> Result<(), CatalogError> {
        if self.full() {
            return Ok(());
        }
        let before = catalog
            .get(id)?
            .map(|t| (musicfs_core::template::album_key(&t), t.format));
        self.tracks.push((id, before));
        Ok(())
    }

    /// Records new tracks (ids the catalog just handed out).
    fn added(&mut self, ids: impl IntoIterator<Item = TrackId>) {
        for id in ids {
            if self.full() {
                return;
            }
            self.tracks.push((id, None));
        }
    }

    fn full(&mut self) -> bool {
        if self.tracks.len() >= TOUCHED_MAX {
            self.overflow = true;
            self.tracks = Vec::new();
        }
        self.overflow
    }

    /// Everything `other` touched, too.
    pub fn extend(&mut self, other: Touched) {
        self.overflow |= other.overflow;
        self.tracks.extend(other.tracks);
        self.full();
    }
}

/// An origin a scan found offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineOrigin {
    /// The origin's catalog key ([`Origin::key`]; for a local origin its root).
    pub origin: PathBuf,
    /// Why.
    pub reason: OfflineReason,
}

impl ScanReport {
    /// Audio files examined per second of wall time.
    pub fn files_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.seen as f64 / secs
        } else {
            0.0
        }
    }
}

/// A file that needs its tags read.
struct Job {
    path: PathBuf,
    rel: Vec<u8>,
    expected: Format,
    state: ScanState,
    known: Option<TrackId>,
}

struct Done {
    job: Job,
    result: Result<TrackRead, TagError>,
}

/// What the walker hands back once the origin is listed.
struct WalkOutcome {
    /// Catalog entries whose file was not found (those under `unreadable` directories
    /// included: the caller keeps them).
    gone: Vec<TrackId>,
    /// Remembered broken files that were not found (same exception), as rel paths.
    gone_broken: Vec<Vec<u8>>,
    skipped: Vec<Skipped>,
    /// Directories (relative) that could not be listed.
    unreadable: Vec<Vec<u8>>,
    /// Subdirectories holding tracks that a scoped scan found gone.
    vanished: Vec<Vec<u8>>,
    /// The extra files of the directories listed: every one a scoped scan listed, those
    /// holding any for a whole walk (which then drops the rest, see [`settle_extras`]).
    extras: Vec<(Vec<u8>, Vec<ExtraFile>)>,
    statted: u64,
    listed: u64,
}

impl WalkOutcome {
    /// The outcome of a walk that did not finish: nothing is gone.
    fn aborted(skipped: Vec<Skipped>) -> WalkOutcome {
        WalkOutcome {
            gone: Vec::new(),
            gone_broken: Vec::new(),
            skipped,
            unreadable: Vec::new(),
            vanished: Vec::new(),
            extras: Vec::new(),
            statted: 0,
            listed: 0,
        }
    }
}

/// What to do with one audio file the walker found.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// A cataloged track whose stat has not changed.
    Unchanged,
    /// A remembered broken file whose stat has not changed, with the stored reason.
    StillBroken(String),
    /// Read its tags; carries the id when the file is a cataloged track.
    Read(Option<TrackId>),
}

/// Scans `origins` into `catalog`: new and changed files are read and
/// upserted, vanished ones removed, unchanged ones left alone without being opened. An
/// origin that is not there ([`crate::health`]) keeps its tracks and is listed in
/// [`ScanReport::offline`]; the other origins are scanned all the same.
pub fn scan(
    catalog: &Catalog,
    origins: &[Arc<dyn Origin>],
    opts: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    let whole: Vec<(Arc<dyn Origin>, Extent)> =
        origins.iter().map(|o| (o.clone(), Extent::Whole)).collect();
    scan_extents(catalog, &whole, opts)
}

/// [`scan`] of part of each origin: the directories of an [`Extent::Dirs`] (an origin
/// without a local root, whose root moved to another device or lists nothing is scanned
/// whole instead). Tracks outside the extent are neither looked at nor removed.
pub fn scan_extents(
    catalog: &Catalog,
    origins: &[(Arc<dyn Origin>, Extent)],
    opts: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    let start = Instant::now();
    let mut report = ScanReport::default();
    for (origin, extent) in origins {
        scan_origin(catalog, origin, extent, opts, &mut report)?;
    }
    report.elapsed = start.elapsed();
    if let Some(cb) = &opts.progress {
        cb(Progress {
            seen: report.seen,
            opened: report.opened,
            unchanged: report.unchanged,
            done: true,
        });
    }
    tracing::info!(
        seen = report.seen,
        added = report.added,
        changed = report.changed,
        removed = report.removed,
        unchanged = report.unchanged,
        statted = report.statted,
        listed = report.listed,
        skipped = report.skipped.len(),
        offline = report.offline.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "scan finished"
    );
    Ok(report)
}

/// The root identity the catalog recorded for the origin keyed `key` at its last good
/// scan (none for an origin it never saw, which is not registered by looking).
fn recorded_identity(catalog: &Catalog, key: &OsStr) -> Result<Option<RootIdentity>, ScanError> {
    let Some((id, _)) = catalog
        .origins()?
        .into_iter()
        .find(|(_, root)| root.as_os_str() == key)
    else {
        return Ok(None);
    };
    Ok(catalog.origin_device(id)?.map(|d| RootIdentity {
        dev: d.dev,
        mount_root: d.mount_point,
    }))
}

/// Running totals shared by the walker and the collecting thread; they start from the
/// totals of the origins already scanned, so progress is cumulative.
struct Counters {
    seen: AtomicU64,
    unchanged: AtomicU64,
    opened: AtomicU64,
    progress: Option<ProgressFn>,
}

impl Counters {
    fn new(report: &ScanReport, progress: Option<ProgressFn>) -> Self {
        Counters {
            seen: AtomicU64::new(report.seen),
            unchanged: AtomicU64::new(report.unchanged),
            opened: AtomicU64::new(report.opened),
            progress,
        }
    }

    fn emit(&self) {
        if let Some(cb) = &self.progress {
            cb(Progress {
                seen: self.seen.load(Ordering::Relaxed),
                opened: self.opened.load(Ordering::Relaxed),
                unchanged: self.unchanged.load(Ordering::Relaxed),
                done: false,
            });
        }
    }
}

fn scan_origin(
    catalog: &Catalog,
    origin: &Arc<dyn Origin>,
    extent: &Extent,
    opts: &ScanOptions,
    report: &mut ScanReport,
) -> Result<(), ScanError> {
    let key = Path::new(origin.key());
    let offline = |report: &mut ScanReport, reason: OfflineReason| {
        report.offline.push(OfflineOrigin {
            origin: key.to_path_buf(),
            reason,
        });
    };
    // Probing first proves the root is there and readable now, rather than finding out
    // after the walk and mistaking an unreachable origin for an empty one.
    let identity = recorded_identity(catalog, origin.key())?;
    let facts = match probe_origin(origin, identity, PROBE_TIMEOUT) {
        Ok(facts) => facts,
        Err(reason) => {
            offline(report, reason);
            return Ok(());
        }
    };
    let probed = Instant::now();
    let origin_id = catalog.origin_id(key)?;
    let mut scope = match extent {
        // A moved or empty root is judged by how many of all its tracks a walk finds.
        Extent::Dirs(dirs)
            if origin.local_root().is_some() && facts.moved.is_none() && !facts.empty =>
        {
            Some(Scope::new(dirs))
        }
        _ => None,
    };
    let mut tracks = KnownBuilder::default();
    let mut recorded = match &mut scope {
        // The origin's track count is only needed, and counted, if tracks vanished.
        Some(scope) => {
            scope.load(catalog, origin_id, &mut tracks)?;
            Recorded {
                tracks: 0,
                identity,
            }
        }
        None => {
            catalog.for_each_scan_state(origin_id, |rel, id, state| {
                tracks.push(rel, id, &state);
            })?;
            let recorded = Recorded {
                tracks: tracks.len() as u64,
                identity,
            };
            if let Err(reason) = classify_root(&facts, &recorded, opts.allow_mass_removal) {
                offline(report, reason);
                return Ok(());
            }
            recorded
        }
    };
    let loaded = tracks.len();
    let known = tracks.finish(catalog.skipped_states(origin_id)?);
    tracing::debug!(
        origin = %key.display(),
        tracks = loaded,
        ms = probed.elapsed().as_millis() as u64,
        "catalog states loaded"
    );
    let threads = opts.threads.max(1);
    let counters = Counters::new(report, opts.progress.clone());
    let (job_tx, job_rx) = bounded::<Job>(threads * 64);
    let (done_tx, done_rx) = bounded::<Done>(threads * 64);

    let (walk, collected) = std::thread::scope(|s| {
        let walker = {
            let (counters, known, scope) = (&counters, &known, scope.as_ref());
            s.spawn(move || walk_origin(origin.as_ref(), known, scope, opts, counters, job_tx))
        };
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            s.spawn(move || read_worker(origin.as_ref(), rx, tx));
        }
        drop(job_rx);
        drop(done_tx);
        let collected = collect(
            catalog,
            (origin_id, opts.art.as_ref()),
            done_rx,
            &counters,
            report,
        );
        // The walker only fails by panicking, which would be a bug; report it as an empty
        // outcome rather than removing the origin's tracks.
        let walk = walker.join().unwrap_or_else(|_| {
            WalkOutcome::aborted(vec![Skipped {
                path: shown(origin.as_ref(), b""),
                reason: "directory walk aborted".into(),
            }])
        });
        (walk, collected)
    });
    collected?;
    report.statted += walk.statted;
    report.listed += walk.listed;
    let mut gone = walk.gone;
    if let Some(scope) = &scope {
        gone.extend(Scope::tracks_under(catalog, origin_id, &walk.vanished)?);
        // A track can be both in a start and under a vanished subdirectory of another.
        gone.sort_unstable();
        gone.dedup();
        recorded.tracks = tracks_for_removal(catalog, origin_id, scope, gone.len(), opts)?;
    }
    if !walk.unreadable.is_empty() {
        // Tracks under directories we could not list are kept: "unreadable right now" is
        // not "deleted".
        let mut kept = Vec::with_capacity(gone.len());
        for id in gone {
            let rel = catalog.get(id)?.map(|t| t.rel_path).unwrap_or_default();
            if !walk.unreadable.iter().any(|dir| is_under(&rel, dir)) {
                kept.push(id);
            }
        }
        gone = kept;
    }
    let found = Found {
        origin: origin_id,
        facts,
        recorded,
    };
    match settle_gone(
        catalog,
        &found,
        gone,
        walk.gone_broken,
        opts,
        &mut report.touched,
    )? {
        Ok(removed) => {
            report.removed += removed;
            let listed = WalkExtras {
                extras: walk.extras,
                unreadable: &walk.unreadable,
                vanished: &walk.vanished,
                scoped: scope.is_some(),
            };
            let changed = settle_extras(catalog, origin_id, listed)?;
            report.extras_changed.extend(changed);
        }
        Err(reason) => offline(report, reason),
    }
    report.seen = counters.seen.load(Ordering::Relaxed);
    report.unchanged = counters.unchanged.load(Ordering::Relaxed);
    report.skipped.extend(walk.skipped);
    Ok(())
}

/// The track count a scoped scan judges its removals against (see [`settle_gone`]): the
/// tracks it loaded when that already allows removing `gone` of them (the origin has at
/// least as many), else the origin's, counted.
fn tracks_for_removal(
    catalog: &Catalog,
    origin: OriginId,
    scope: &Scope,
    gone: usize,
    opts: &ScanOptions,
) -> Result<u64, ScanError> {
    let (gone, loaded) = (gone as u64, scope.loaded());
    if gone == 0 || (gone < loaded && gone as f64 <= opts.mass_removal_threshold * loaded as f64) {
        return Ok(loaded);
    }
    let mut tracks = 0;
    catalog.for_each_scan_state(origin, |_, _, _| tracks += 1)?;
    Ok(tracks)
}

/// A reachable origin as the walk found it, for [`settle_gone`].
struct Found {
    origin: OriginId,
    facts: RootFacts,
    recorded: Recorded,
}

/// Decides what the tracks the walk did not find mean: deletions (removed, with the
/// broken files not found, and the root's device recorded; returns how many tracks), or
/// an offline origin (nothing removed; returns why).
fn settle_gone(
    catalog: &Catalog,
    found: &Found,
    gone: Vec<TrackId>,
    gone_broken: Vec<Vec<u8>>,
    opts: &ScanOptions,
    touched: &mut Touched,
) -> Result<Result<u64, OfflineReason>, ScanError> {
    let (facts, recorded) = (&found.facts, &found.recorded);
    let verdict = classify_walk(
        recorded.tracks,
        gone.len() as u64,
        opts.mass_removal_threshold,
        facts.moved,
        opts.allow_mass_removal,
    );
    if let Err(reason) = verdict {
        return Ok(Err(reason));
    }
    let removed = gone.len() as u64;
    for &id in &gone {
        touched.before_change(catalog, id)?;
    }
    forget_gone(catalog, found.origin, gone, gone_broken)?;
    if let Some(now) = facts.identity.filter(|now| recorded.identity != Some(*now)) {
        let device = OriginDevice {
            dev: now.dev,
            mount_point: now.mount_root,
        };
        catalog.set_origin_device(found.origin, device)?;
    }
    Ok(Ok(removed))
}

/// The extra files a walk found, for [`settle_extras`].
struct WalkExtras<'a> {
    extras: Vec<(Vec<u8>, Vec<ExtraFile>)>,
    unreadable: &'a [Vec<u8>],
    vanished: &'a [Vec<u8>],
    scoped: bool,
}

/// Records the extra files of the directories the walk listed, and drops those of
/// directories it found gone: for a whole walk, every directory it did not list (unless it
/// could not be listed); for a scoped one, those under the subdirectories that vanished.
fn settle_extras(
    catalog: &Catalog,
    origin: OriginId,
    walk: WalkExtras<'_>,
) -> Result<Vec<ExtrasChanged>, CatalogError> {
    let listed: HashSet<Vec<u8>> = if walk.scoped {
        HashSet::new()
    } else {
        walk.extras.iter().map(|(dir, _)| dir.clone()).collect()
    };
    let mut dirs = walk
        .extras
        .into_iter()
        .map(|(dir, files)| DirExtras { origin, dir, files });
    let mut changed = Vec::new();
    loop {
        let chunk: Vec<DirExtras> = dirs.by_ref().take(BATCH).collect();
        if chunk.is_empty() {
            break;
        }
        changed.extend(catalog.set_extras(&chunk)?);
    }
    let kept = |dir: &[u8]| walk.unreadable.iter().any(|u| u == dir || is_under(dir, u));
    if walk.scoped {
        let gone = |dir: &[u8]| walk.vanished.iter().any(|v| v == dir || is_under(dir, v));
        if !walk.vanished.is_empty() {
            changed.extend(catalog.retain_extras(origin, |dir| !gone(dir) || kept(dir))?);
        }
    } else {
        changed.extend(catalog.retain_extras(origin, |dir| listed.contains(dir) || kept(dir))?);
    }
    Ok(changed)
}

/// Removes the tracks and forgets the broken files that were not found, in batches.
fn forget_gone(
    catalog: &Catalog,
    origin: OriginId,
    gone: Vec<TrackId>,
    gone_broken: Vec<Vec<u8>>,
) -> Result<(), CatalogError> {
    let mut removals = gone.into_iter();
    let mut unskipped = gone_broken.into_iter().map(|rel| (origin, rel));
    loop {
        let mut batch = Batch {
            removals: removals.by_ref().take(BATCH).collect(),
            ..Batch::default()
        };
        let room = BATCH - batch.removals.len();
        batch.unskipped = unskipped.by_ref().take(room).collect();
        if batch.removals.is_empty() && batch.unskipped.is_empty() {
            return Ok(());
        }
        catalog.apply_batch(&batch)?;
    }
}

fn read_worker(origin: &dyn Origin, jobs: Receiver<Job>, done: Sender<Done>) {
    for job in jobs {
        let result = origin
            .open(Path::new(OsStr::from_bytes(&job.rel)))
            .map_err(TagError::from)
            .and_then(|source| match job.expected {
                Format::Other => crate::tags::read_plugin_track(source, &job.rel),
                expected => read_track_identity(source, Some(expected)),
            });
        if done.send(Done { job, result }).is_err() {
            return;
        }
    }
}

/// Drains the workers' results into catalog batches. A known track that is no longer
/// readable audio is removed in the same transaction that records it as skipped.
fn collect(
    catalog: &Catalog,
    (origin, art): (OriginId, Option<&ArtStore>),
    done: Receiver<Done>,
    counters: &Counters,
    report: &mut ScanReport,
) -> Result<(), ScanError> {
    let mut batch = Batch::default();
    // Which upserts are new tracks (their ids come back from the write).
    let mut fresh: Vec<bool> = Vec::new();
    let mut written = 0u64;
    let mut last_progress = Instant::now();
    for Done { job, result } in done {
        report.opened += 1;
        counters.opened.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(TrackRead {
                format,
                meta,
                picture,
                identity,
            }) => {
                batch.identities.push(IdentitySet {
                    origin,
                    rel_path: job.rel.clone(),
                    identity,
                });
                if let Some(store) = art {
                    let stored = picture.and_then(|p| match store.put(&p.data, p.png) {
                        Ok(art) => Some(art),
                        Err(e) => {
                            tracing::warn!(path = %job.path.display(), error = %e, "cannot store cover art");
                            None
                        }
                    });
                    batch.art.push(ArtSet {
                        origin,
                        rel_path: job.rel.clone(),
                        art: stored,
                    });
                }
                if let Some(id) = job.known {
                    report.changed += 1;
                    report.touched.before_change(catalog, id)?;
                } else {
                    report.added += 1;
                }
                fresh.push(job.known.is_none());
                batch.upserts.push(Upsert {
                    origin,
                    rel_path: job.rel,
                    format,
                    scan: job.state,
                    meta,
                });
            }
            Err(e) => {
                tracing::debug!(path = %job.path.display(), error = %e, "skipping file");
                if let Some(id) = job.known {
                    report.touched.before_change(catalog, id)?;
                    batch.removals.push(id);
                    report.removed += 1;
                }
                let reason = e.to_string();
                if matches!(e, TagError::Io(_) | TagError::Open(_)) {
                    batch.unskipped.push((origin, job.rel));
                } else {
                    batch.skipped.push(SkipRecord {
                        origin,
                        rel_path: job.rel,
                        scan: job.state,
                        reason: reason.clone(),
                    });
                }
                report.skipped.push(Skipped {
                    path: job.path,
                    reason,
                });
            }
        }
        if batch_len(&batch) >= BATCH {
            write_batch(catalog, &mut batch, &mut fresh, &mut report.touched)?;
            written += 1;
            if written.is_multiple_of(RELEASE_EVERY_BATCHES) {
                // A first scan writes the whole catalog: its pages must not pile up in RSS.
                catalog.release_mapped_pages();
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            counters.emit();
        }
    }
    if batch_len(&batch) > 0 {
        write_batch(catalog, &mut batch, &mut fresh, &mut report.touched)?;
    }
    Ok(())
}

/// Writes `batch` (emptying it); the ids of its new tracks (`fresh`, per upsert) go to
/// `touched`.
fn write_batch(
    catalog: &Catalog,
    batch: &mut Batch,
    fresh: &mut Vec<bool>,
    touched: &mut Touched,
) -> Result<(), CatalogError> {
    let ids = catalog.apply_batch(batch)?;
    touched.added(
        ids.into_iter()
            .zip(fresh.iter())
            .filter(|(_, &new)| new)
            .map(|(id, _)| id),
    );
    *batch = Batch::default();
    fresh.clear();
    Ok(())
}

fn batch_len(batch: &Batch) -> usize {
    batch.upserts.len() + batch.removals.len() + batch.skipped.len() + batch.unskipped.len()
}

/// Compares a found file's stat with what the catalog remembers of its path, and marks the
/// path found in `known` so that whatever is left unmarked at the end was not found.
fn decide(known: &Known, rel: &[u8], state: ScanState, verify: bool) -> Decision {
    let broken = known.take_broken(rel);
    match known.find(rel) {
        Some(hit) if hit.state == state_hash(&state) && !verify => Decision::Unchanged,
        Some(hit) => Decision::Read(Some(hit.id)),
        None => match broken {
            Some((old, reason)) if old == state && !verify => Decision::StillBroken(reason),
            _ => Decision::Read(None),
        },
    }
}

fn walk_origin(
    origin: &dyn Origin,
    known: &Known,
    scope: Option<&Scope>,
    opts: &ScanOptions,
    counters: &Counters,
    jobs: Sender<Job>,
) -> WalkOutcome {
    let verify = opts.verify;
    let still_broken = Mutex::new(Vec::new());
    let hook = |dir: &Path| {
        if let Some(h) = &opts.dir_hook {
            h(origin, dir);
        }
    };
    let extras = Mutex::new(Vec::new());
    let handle = |listing: walk::DirListing| -> bool {
        if scope.is_some() || !listing.extras.is_empty() {
            let mut e = extras.lock().unwrap_or_else(|p| p.into_inner());
            e.push((listing.dir, listing.extras));
        }
        let mut read = Vec::new();
        {
            let (mut seen, mut unchanged) = (0, 0);
            for f in listing.audio {
                if scope.is_some_and(|s| !s.first_find(&f.rel)) {
                    continue;
                }
                seen += 1;
                let state = f.state;
                match decide(known, &f.rel, state, verify) {
                    Decision::Unchanged => unchanged += 1,
                    Decision::StillBroken(reason) => {
                        unchanged += 1;
                        let mut sb = still_broken.lock().unwrap_or_else(|p| p.into_inner());
                        sb.push(Skipped {
                            path: shown(origin, &f.rel),
                            reason,
                        });
                    }
                    Decision::Read(known_id) => read.push(Job {
                        path: shown(origin, &f.rel),
                        rel: f.rel,
                        expected: f.format,
                        state,
                        known: known_id,
                    }),
                }
            }
            // One update per directory: per-file atomics would bounce between the walkers.
            counters.unchanged.fetch_add(unchanged, Ordering::Relaxed);
            let before = counters.seen.fetch_add(seen, Ordering::Relaxed);
            if before / 4096 != (before + seen) / 4096 {
                // Unchanged files never reach the collector; report progress from here.
                counters.emit();
            }
        }
        // The collector stops taking jobs only when a catalog write failed; it reports it.
        read.into_iter().all(|job| jobs.send(job).is_ok())
    };
    let threads = opts.walk_threads.max(1);
    let outcome = match (origin.local_root(), scope) {
        (Some(root), Some(scope)) => {
            let descend = |sub: &[u8]| scope.descend(sub);
            walk::walk_from(root, scope.starts(), threads, &hook, &descend, &handle)
        }
        (Some(root), None) => walk::walk(root, threads, &hook, &handle),
        (None, _) => walk::walk_listed(origin, &hook, &handle),
    };
    let mut skipped = outcome.skipped;
    skipped.extend(still_broken.into_inner().unwrap_or_else(|p| p.into_inner()));
    if outcome.aborted {
        return WalkOutcome::aborted(skipped);
    }
    // Remembered broken files under directories we could not list are kept; a scoped scan
    // forgets only those it looked for.
    let unreadable = outcome.unreadable;
    let vanished = scope.map_or_else(Vec::new, |s| s.vanished(&unreadable));
    let gone_broken = known
        .unseen_broken()
        .into_iter()
        .filter(|rel| !unreadable.iter().any(|dir| is_under(rel, dir)))
        .filter(|rel| scope.is_none_or(|s| s.covers(rel, &vanished)))
        .collect();
    WalkOutcome {
        gone: known.unseen(),
        gone_broken,
        skipped,
        unreadable,
        vanished,
        extras: extras.into_inner().unwrap_or_else(|p| p.into_inner()),
        statted: outcome.statted,
        listed: outcome.listed,
    }
}

fn is_under(rel: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (rel.starts_with(dir) && rel.get(dir.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::testorigin::{wav, KINDS};

    #[test]
    fn is_under_matches_whole_path_components_only() {
        assert!(is_under(b"a/b/c.flac", b"a/b"));
        assert!(!is_under(b"a/bc/c.flac", b"a/b"));
        assert!(is_under(b"x.flac", b""));
    }

    fn state(size: u64) -> ScanState {
        ScanState {
            size,
            mtime_ns: 1,
            ino: 2,
            ctime_ns: 3,
            perm: None,
        }
    }

    fn known() -> Known {
        let mut tracks = KnownBuilder::default();
        tracks.push(b"good.flac", TrackId(7), &state(10));
        tracks.finish(HashMap::from([(
            b"bad.mp3".to_vec(),
            (state(0), "empty".to_owned()),
        )]))
    }

    #[test]
    fn an_unchanged_broken_file_keeps_its_reason_and_is_not_read() {
        let k = known();
        assert_eq!(
            decide(&k, b"bad.mp3", state(0), false),
            Decision::StillBroken("empty".to_owned())
        );
        assert!(
            k.unseen_broken().is_empty(),
            "found files are not forgotten as gone"
        );
        assert_eq!(k.unseen(), vec![TrackId(7)], "good.flac was not found");
    }

    #[test]
    fn found_tracks_are_not_gone() {
        let k = known();
        assert_eq!(
            decide(&k, b"good.flac", state(10), false),
            Decision::Unchanged
        );
        assert!(k.unseen().is_empty());
        assert_eq!(k.unseen_broken(), vec![b"bad.mp3".to_vec()]);
    }

    #[test]
    fn a_changed_or_verified_broken_file_is_read_as_new() {
        assert_eq!(
            decide(&known(), b"bad.mp3", state(5), false),
            Decision::Read(None)
        );
        assert_eq!(
            decide(&known(), b"bad.mp3", state(0), true),
            Decision::Read(None)
        );
    }

    #[test]
    fn tracks_are_read_again_only_when_changed_or_verified() {
        assert_eq!(
            decide(&known(), b"good.flac", state(10), false),
            Decision::Unchanged
        );
        assert_eq!(
            decide(&known(), b"good.flac", state(11), false),
            Decision::Read(Some(TrackId(7)))
        );
        assert_eq!(
            decide(&known(), b"new.ogg", state(1), false),
            Decision::Read(None)
        );
    }

    #[test]
    fn tracks_under_a_directory_that_cannot_be_listed_are_kept_and_the_rest_reconciled() {
        for (kind, open) in KINDS {
            let origin = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            let root = origin.path().canonicalize().unwrap();
            for d in ["kept", "other"] {
                std::fs::create_dir(root.join(d)).unwrap();
                for n in 0..3 {
                    std::fs::write(root.join(format!("{d}/{n}.wav")), wav(800)).unwrap();
                }
            }
            let catalog = Catalog::open(state.path()).unwrap();
            let origins = [open(&root)];
            let first = scan(&catalog, &origins, &ScanOptions::default()).unwrap();
            assert_eq!((first.added, first.skipped.len()), (6, 0), "{kind}");

            // "kept" turns into a file just before the rescan lists it; one file of "other"
            // is deleted.
            std::fs::remove_file(root.join("other/0.wav")).unwrap();
            let kept = root.join("kept");
            let hook: DirHook = Arc::new(move |_origin: &dyn Origin, dir: &Path| {
                if dir == Path::new("kept") {
                    std::fs::remove_dir_all(&kept).unwrap();
                    std::fs::write(&kept, b"x").unwrap();
                }
            });
            let opts = ScanOptions {
                dir_hook: Some(hook),
                ..ScanOptions::default()
            };
            let again = scan(&catalog, &origins, &opts).unwrap();
            assert_eq!(
                again.removed, 1,
                "{kind}: only the deleted file is gone: {again:?}"
            );
            assert!(
                again.skipped.iter().any(|s| s.path.ends_with("kept")),
                "{kind}"
            );
            let id = catalog.origin_id(&root).unwrap();
            let mut left: Vec<Vec<u8>> = catalog.scan_states(id).unwrap().into_keys().collect();
            left.sort();
            let want: Vec<Vec<u8>> = ["kept/0.wav", "kept/1.wav", "kept/2.wav"]
                .into_iter()
                .chain(["other/1.wav", "other/2.wav"])
                .map(|p| p.as_bytes().to_vec())
                .collect();
            assert_eq!(left, want, "{kind}");
        }
    }

    #[test]
    fn an_origin_without_a_local_root_is_walked_and_read_through_the_seam_alike() {
        let origin = tempfile::tempdir().unwrap();
        let root = origin.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/1.wav"), wav(800)).unwrap();
        std::fs::write(root.join("a/2.wav"), wav(1600)).unwrap();
        std::fs::write(root.join("a/cover.jpg"), b"not audio").unwrap();
        std::fs::write(root.join("broken.wav"), b"RIFF").unwrap();
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
        let mut seen = Vec::new();
        for (kind, open) in KINDS {
            let state = tempfile::tempdir().unwrap();
            let catalog = Catalog::open(state.path()).unwrap();
            let r = scan(&catalog, &[open(&root)], &ScanOptions::default()).unwrap();
            assert_eq!((r.added, r.opened), (2, 3), "{kind}: {r:?}");
            let mut reasons: Vec<String> = r.skipped.iter().map(|s| s.reason.clone()).collect();
            reasons.sort();
            let mut records = Vec::new();
            catalog
                .for_each(|t| records.push((t.rel_path, t.meta.duration_ms)))
                .unwrap();
            records.sort();
            // The same stats, modes and owners included, from `fstatat` and from `list`.
            let id = catalog.origin_id(&root).unwrap();
            let mut states: Vec<(Vec<u8>, ScanState)> = catalog
                .scan_states(id)
                .unwrap()
                .into_iter()
                .map(|(rel, (_, state))| (rel, state))
                .collect();
            states.sort_by(|x, y| x.0.cmp(&y.0));
            assert!(states.iter().all(|(_, s)| s.perm.is_some()), "{kind}");
            seen.push((records, states, reasons.len()));
            assert!(
                reasons.iter().any(|r| r.contains("loop")),
                "{kind}: {reasons:?}"
            );
            let unchanged = scan(&catalog, &[open(&root)], &ScanOptions::default()).unwrap();
            assert_eq!((unchanged.opened, unchanged.unchanged), (0, 3), "{kind}");
        }
        assert_eq!(seen[0], seen[1], "both walks catalog the same tracks");
    }

    #[test]
    fn an_etag_origin_reads_nothing_unchanged_and_sees_a_rewrite_that_kept_size_and_mtime() {
        let origin = tempfile::tempdir().unwrap();
        let root = origin.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        for n in 0..3 {
            std::fs::write(root.join(format!("a/{n}.wav")), wav(800)).unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(state.path()).unwrap();
        let read = Arc::new(AtomicU64::new(0));
        let origins = [crate::testorigin::etagged(&root, read.clone())];
        let first = scan(&catalog, &origins, &ScanOptions::default()).unwrap();
        assert_eq!((first.added, first.opened), (3, 3), "{first:?}");
        assert!(read.load(Ordering::Relaxed) > 0);

        read.store(0, Ordering::Relaxed);
        let again = scan(&catalog, &origins, &ScanOptions::default()).unwrap();
        assert_eq!((again.opened, again.unchanged), (0, 3), "{again:?}");
        assert_eq!(read.load(Ordering::Relaxed), 0, "nothing read");

        // Same size and mtime, other content: only the ETag tells.
        let path = root.join("a/1.wav");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut other = wav(800);
        let last = other.len() - 1;
        other[last] = 1;
        std::fs::write(&path, other).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let changed = scan(&catalog, &origins, &ScanOptions::default()).unwrap();
        assert_eq!(
            (changed.opened, changed.changed, changed.unchanged),
            (1, 1, 2),
            "{changed:?}"
        );
    }

    fn origin_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let origin = tempfile::tempdir().unwrap();
        let root = origin.path().canonicalize().unwrap();
        for i in 0..n {
            std::fs::write(root.join(format!("{i}.wav")), wav(800)).unwrap();
        }
        (origin, root)
    }

    fn tracks_of(catalog: &Catalog, root: &Path) -> usize {
        let id = catalog.origin_id(root).unwrap();
        catalog.scan_states(id).unwrap().len()
    }

    #[test]
    fn scan_keeps_tracks_when_the_origin_is_emptied_or_missing_and_scans_the_others() {
        for (kind, open) in KINDS {
            let (_a, a) = origin_with(3);
            let (_b, b) = origin_with(2);
            let state = tempfile::tempdir().unwrap();
            let catalog = Catalog::open(state.path()).unwrap();
            let both = [open(&a), open(&b)];
            scan(&catalog, &both, &ScanOptions::default()).unwrap();

            let away = a.with_extension("away");
            std::fs::create_dir(&away).unwrap();
            for i in 0..3 {
                std::fs::rename(a.join(format!("{i}.wav")), away.join(format!("{i}.wav"))).unwrap();
            }
            std::fs::write(b.join("new.wav"), wav(800)).unwrap();
            let r = scan(&catalog, &both, &ScanOptions::default()).unwrap();
            assert_eq!(
                r.offline,
                vec![OfflineOrigin {
                    origin: a.clone(),
                    reason: OfflineReason::Emptied { tracks: 3 }
                }],
                "{kind}"
            );
            assert_eq!((r.removed, r.added), (0, 1), "{kind}: {r:?}");
            assert_eq!(tracks_of(&catalog, &a), 3, "{kind}");

            std::fs::remove_dir(&a).unwrap();
            let r = scan(&catalog, &both, &ScanOptions::default()).unwrap();
            assert!(
                matches!(r.offline[0].reason, OfflineReason::Missing(_)),
                "{kind}"
            );
            assert_eq!(tracks_of(&catalog, &a), 3, "{kind}");

            std::fs::rename(&away, &a).unwrap();
            let r = scan(&catalog, &both, &ScanOptions::default()).unwrap();
            assert!(r.offline.is_empty(), "{kind}: {r:?}");
            assert_eq!((r.removed, tracks_of(&catalog, &a)), (0, 3), "{kind}");
        }
    }

    #[test]
    fn a_mass_removal_is_offline_until_allowed() {
        for (kind, open) in KINDS {
            let (_a, a) = origin_with(10);
            let state = tempfile::tempdir().unwrap();
            let catalog = Catalog::open(state.path()).unwrap();
            let one = [open(&a)];
            scan(&catalog, &one, &ScanOptions::default()).unwrap();
            for i in 0..6 {
                std::fs::remove_file(a.join(format!("{i}.wav"))).unwrap();
            }
            let r = scan(&catalog, &one, &ScanOptions::default()).unwrap();
            assert_eq!(
                r.offline[0].reason,
                OfflineReason::MassRemoval {
                    gone: 6,
                    tracks: 10
                },
                "{kind}"
            );
            assert_eq!((r.removed, tracks_of(&catalog, &a)), (0, 10), "{kind}");
            let loose = ScanOptions {
                mass_removal_threshold: 0.7,
                ..ScanOptions::default()
            };
            let r = scan(&catalog, &one, &loose).unwrap();
            assert!(r.offline.is_empty(), "{kind}: {r:?}");
            assert_eq!((r.removed, tracks_of(&catalog, &a)), (6, 4), "{kind}");

            for i in 6..9 {
                std::fs::remove_file(a.join(format!("{i}.wav"))).unwrap();
            }
            let r = scan(&catalog, &one, &ScanOptions::default()).unwrap();
            assert_eq!(
                r.offline.len(),
                1,
                "{kind}: 3 of 4 is a mass removal: {r:?}"
            );
            let allowed = ScanOptions {
                allow_mass_removal: true,
                ..ScanOptions::default()
            };
            let r = scan(&catalog, &one, &allowed).unwrap();
            assert!(r.offline.is_empty(), "{kind}: {r:?}");
            assert_eq!((r.removed, tracks_of(&catalog, &a)), (3, 1), "{kind}");
        }
    }

    /// An origin of `albums` directories `artist/albumN` of three tracks each, scanned
    /// into a fresh catalog.
    struct Tree {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        root: PathBuf,
        catalog: Catalog,
        origin: Arc<dyn Origin>,
    }

    impl Tree {
        fn new(albums: usize) -> Tree {
            let (o, st) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let root = o.path().canonicalize().unwrap();
            for a in 0..albums {
                let dir = root.join(format!("artist/album{a}"));
                std::fs::create_dir_all(&dir).unwrap();
                for n in 0..3 {
                    std::fs::write(dir.join(format!("{n}.wav")), wav(800)).unwrap();
                }
            }
            let catalog = Catalog::open(st.path()).unwrap();
            let origin = crate::testorigin::local(&root);
            let first = scan(
                &catalog,
                std::slice::from_ref(&origin),
                &ScanOptions::default(),
            )
            .unwrap();
            assert_eq!(first.added, 3 * albums as u64);
            Tree {
                _dirs: (o, st),
                root,
                catalog,
                origin,
            }
        }

        fn scan(&self, dirs: &[(&str, bool)]) -> ScanReport {
            let mut extent = Extent::Dirs(Default::default());
            for (d, deep) in dirs {
                extent.add_dir(d.as_bytes().to_vec(), *deep);
            }
            let which = [(self.origin.clone(), extent)];
            scan_extents(&self.catalog, &which, &ScanOptions::default()).unwrap()
        }

        fn paths(&self) -> Vec<String> {
            let id = self.catalog.origin_id(&self.root).unwrap();
            let mut p: Vec<String> = self
                .catalog
                .scan_states(id)
                .unwrap()
                .into_keys()
                .map(|k| String::from_utf8(k).unwrap())
                .collect();
            p.sort();
            p
        }
    }

    #[test]
    fn a_scan_of_one_directory_stats_its_files_only_and_sees_an_add_a_change_and_a_removal() {
        let t = Tree::new(20);
        let dir = t.root.join("artist/album7");
        std::fs::write(dir.join("new.wav"), wav(400)).unwrap();
        std::fs::write(dir.join("0.wav"), wav(1600)).unwrap();
        std::fs::remove_file(dir.join("1.wav")).unwrap();
        // Changes elsewhere are not looked at by this scan.
        std::fs::remove_file(t.root.join("artist/album3/0.wav")).unwrap();
        let r = t.scan(&[("artist/album7", false)]);
        assert_eq!(
            (r.added, r.changed, r.removed, r.unchanged),
            (1, 1, 1, 1),
            "{r:?}"
        );
        assert_eq!((r.statted, r.listed), (3, 1), "only album7's files: {r:?}");
        let paths = t.paths();
        assert!(paths.contains(&"artist/album7/new.wav".to_string()));
        assert!(!paths.contains(&"artist/album7/1.wav".to_string()));
        assert!(paths.contains(&"artist/album3/0.wav".to_string()));
        assert_eq!(paths.len(), 60);
    }

    #[test]
    fn a_new_subdirectory_is_walked_whole_and_a_vanished_one_loses_its_tracks() {
        let t = Tree::new(5);
        let new = t.root.join("artist/moved in/CD1");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("a.wav"), wav(400)).unwrap();
        std::fs::remove_dir_all(t.root.join("artist/album2")).unwrap();
        let r = t.scan(&[("artist", false)]);
        assert_eq!((r.added, r.removed), (1, 3), "{r:?}");
        assert_eq!(
            (r.statted, r.listed),
            (1, 3),
            "artist, moved in, CD1 listed; the known albums not: {r:?}"
        );
        let paths = t.paths();
        assert!(paths.contains(&"artist/moved in/CD1/a.wav".to_string()));
        assert!(!paths.iter().any(|p| p.starts_with("artist/album2/")));
        assert_eq!(paths.len(), 13);

        // A directory named as created is walked whole even when its parent is not listed.
        let deep = t.root.join("artist/album0/bonus");
        std::fs::create_dir(&deep).unwrap();
        std::fs::write(deep.join("b.wav"), wav(400)).unwrap();
        let r = t.scan(&[("artist/album0/bonus", true)]);
        assert_eq!((r.added, r.statted, r.listed), (1, 1, 1), "{r:?}");
        // Then removed: the listing of its parent no longer shows it.
        std::fs::remove_dir_all(&deep).unwrap();
        let r = t.scan(&[("artist/album0", false)]);
        assert_eq!((r.removed, r.unchanged), (1, 3), "{r:?}");
    }

    #[test]
    fn a_scoped_scan_of_an_offline_origin_removes_nothing() {
        let t = Tree::new(3);
        let away = t.root.with_extension("away");
        std::fs::rename(&t.root, &away).unwrap();
        let r = t.scan(&[("artist/album1", false), ("artist", false)]);
        assert!(
            matches!(
                r.offline[..],
                [OfflineOrigin {
                    reason: OfflineReason::Missing(_),
                    ..
                }]
            ),
            "{r:?}"
        );
        assert_eq!((r.removed, r.statted), (0, 0), "{r:?}");
        std::fs::rename(&away, &t.root).unwrap();
        assert_eq!(t.paths().len(), 9);
    }

    #[test]
    fn a_scoped_scan_keeps_the_mass_removal_rule_of_the_whole_origin() {
        let t = Tree::new(3);
        // Two of three albums vanish: most of the origin, judged against all its tracks.
        for a in [0, 1] {
            std::fs::remove_dir_all(t.root.join(format!("artist/album{a}"))).unwrap();
        }
        let r = t.scan(&[("artist", false)]);
        assert_eq!(
            r.offline[0].reason,
            OfflineReason::MassRemoval { gone: 6, tracks: 9 },
            "{r:?}"
        );
        assert_eq!(t.paths().len(), 9);
        // One album of many is a deletion, decided without walking the rest.
        let t = Tree::new(4);
        std::fs::remove_dir_all(t.root.join("artist/album1")).unwrap();
        let r = t.scan(&[("artist", false)]);
        assert!(r.offline.is_empty(), "{r:?}");
        assert_eq!((r.removed, t.paths().len()), (3, 9));
    }

    #[test]
    fn a_remembered_broken_file_elsewhere_is_not_forgotten_by_a_scoped_scan() {
        let t = Tree::new(2);
        std::fs::write(t.root.join("artist/album0/bad.wav"), b"RIFF").unwrap();
        let r = scan(
            &t.catalog,
            std::slice::from_ref(&t.origin),
            &ScanOptions::default(),
        )
        .unwrap();
        assert_eq!(r.skipped.len(), 1);
        let r = t.scan(&[("artist/album1", false)]);
        assert!(r.skipped.is_empty(), "{r:?}");
        let r = scan(
            &t.catalog,
            std::slice::from_ref(&t.origin),
            &ScanOptions::default(),
        )
        .unwrap();
        assert_eq!(
            (r.opened, r.skipped.len()),
            (0, 1),
            "still remembered: {r:?}"
        );
        let r = t.scan(&[("artist/album0", false)]);
        assert_eq!((r.opened, r.skipped.len()), (0, 1), "{r:?}");
    }

    #[test]
    fn audio_format_uses_the_extension_case_insensitively() {
        use crate::walk::audio_format;
        assert_eq!(audio_format(Path::new("a/B.FLAC")), Some(Format::Flac));
        assert_eq!(audio_format(Path::new("cover.jpg")), None);
        assert_eq!(audio_format(Path::new("noext")), None);
    }
}
