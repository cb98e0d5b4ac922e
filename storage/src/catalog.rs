//! The catalog: every track MusicFS knows, in an LMDB environment (through heed).
//!
//! Layout (see `catalog/schema.rs`): `tracks` maps a [`TrackId`] (u64 big-endian) to
//! the track; `paths` maps (origin id as u32 big-endian, relative path bytes) to the
//! track's id and [`ScanState`], so an incremental scan never reads tags; `skipped` maps
//! the same keys to the files the scanner could not catalog (broken audio), with the
//! reason and scan state, so an unchanged broken file is not opened again; `origins` maps
//! an [`OriginId`] to its root path; `meta` holds the schema version, the persistent
//! counters and each origin's recorded root device ([`OriginDevice`]). Only
//! [`Catalog::forget_origin`] removes an origin with its tracks. A path is in at most one of `paths` and `skipped`.
//!
//! Ids are never reused: new tracks take the next value of a persistent counter, and a
//! file that is upserted again keeps its id. Every write is one transaction; when the map
//! is full it grows (doubling) and the transaction runs again.
//!
//! A catalog directory may be open once per process (LMDB's rule): share the [`Catalog`]
//! (it is `Send + Sync`; reads run concurrently with each other and with a write). It must
//! live on a local filesystem.
//!
//! LMDB trusts its pages: a damaged one can kill the process reading it. [`walk`] reads
//! every page, to be run in a child process and judged by [`run_check`]; a daemon marks
//! the catalog being checked ([`Catalog::begin_check`]), waits for the verdict before work
//! that reads it whole ([`Catalog::wait_for_check`]), and after a damaged verdict every
//! call fails with [`CatalogError::Damaged`] without reading a page.

mod check;
mod error;
mod extras;
mod identity;
mod origin_facts;
mod overrides;
mod plays;
mod schema;
mod skipped;
mod store;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use heed::{CommitOrAbort, RoTxn, RwTxn};
use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};

pub use self::check::{run_check, walk, CheckState, Verdict, WalkSummary};
pub use self::error::CatalogError;
pub use self::extras::{ArtSet, DirExtras, ExtraFile, ExtrasChanged};
pub use self::identity::IdentitySet;
pub use self::origin_facts::{Forgotten, OriginDevice};
pub use self::overrides::OverrideKey;
pub use self::plays::Plays;
use self::schema::{path_key, rel_path_in_key, Counter, Dbs, PathEntry, TrackValue};
pub use self::schema::{ArtRef, SCHEMA_VERSION};
pub use self::skipped::SkipRecord;
pub(crate) use self::store::cut_short;
use self::store::Store;

/// The map size a catalog starts with; it grows on demand.
const DEFAULT_MAP_SIZE: usize = 256 << 20;

/// One new or changed file for [`Catalog::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert {
    /// The origin holding the file, from [`Catalog::origin_id`].
    pub origin: OriginId,
    /// Path relative to the origin root, raw bytes.
    pub rel_path: Vec<u8>,
    /// Container format.
    pub format: Format,
    /// File facts at this scan.
    pub scan: ScanState,
    /// Tags and stream facts.
    pub meta: TrackMeta,
}

/// Everything one scan step changes, for [`Catalog::apply_batch`]: written in one
/// transaction, in the order removals, unskipped, skipped, upserts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// New or changed files; each also leaves `skipped`.
    pub upserts: Vec<Upsert>,
    /// Tracks to drop, by id; unknown ids are ignored.
    pub removals: Vec<TrackId>,
    /// Files to remember as not catalogable; a track at the same path is removed.
    pub skipped: Vec<SkipRecord>,
    /// Files to forget as skipped (they vanished, or must be retried next scan); unknown
    /// paths are ignored.
    pub unskipped: Vec<(OriginId, Vec<u8>)>,
    /// Cover art found (or found gone) by reading tracks; applied after the upserts.
    pub art: Vec<ArtSet>,
    /// Identities found by reading tracks; applied after the upserts.
    pub identities: Vec<IdentitySet>,
}

/// [`Catalog::for_each`] lets go of the pages it read after this many tracks.
const RELEASE_EVERY: usize = 16384;

/// The track catalog of one MusicFS instance. See the [module docs](self).
pub struct Catalog {
    store: Store,
    dbs: Dbs<'static>,
}

impl Catalog {
    /// Writes a compacted, consistent copy of the catalog to the file `dest` (a new
    /// file, named `data.mdb` to be opened as a catalog directory), e.g. to share it.
    pub fn copy_to(&self, dest: &Path) -> Result<(), CatalogError> {
        self.store.copy_to(dest)
    }

    /// Where this catalog stands with its out-of-process check (see [`walk`]).
    pub fn check_state(&self) -> CheckState {
        self.store.check.state()
    }

    /// Marks the check begun: [`Catalog::wait_for_check`] blocks until
    /// [`Catalog::set_verdict`].
    pub fn begin_check(&self) {
        self.store.check.set(CheckState::Checking);
    }

    /// Records the check's verdict. After [`Verdict::Damaged`] every operation fails with
    /// [`CatalogError::Damaged`] without reading a page.
    pub fn set_verdict(&self, verdict: &Verdict) {
        self.store.check.set(match verdict {
            Verdict::Sound(_) => CheckState::Sound,
            Verdict::Damaged(why) => CheckState::Damaged(why.clone()),
        });
    }

    /// Waits for a running check's verdict (at once when none runs); fails with
    /// [`CatalogError::Damaged`] when it found damage. Work that reads many rows (a
    /// reconcile, a refresh, a rebuild) calls this first.
    pub fn wait_for_check(&self) -> Result<(), CatalogError> {
        self.store.check.wait();
        self.store.refuse_if_damaged()
    }

    /// Opens the catalog in `dir`, creating the directory and an empty catalog if missing.
    /// Refuses a catalog written with a newer schema and migrates an older one.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        Self::open_with_map_size(dir, DEFAULT_MAP_SIZE)
    }

    /// [`Catalog::open`] with a chosen initial map size (rounded up to 64 KiB), so tests
    /// can exercise map growth without writing hundreds of megabytes.
    #[doc(hidden)]
    pub fn open_with_map_size(dir: &Path, map_size: usize) -> Result<Catalog, CatalogError> {
        let store = Store::open(dir, map_size)?;
        let dbs = store.with_env_retrying("open", |env| {
            let wtxn = env.write_txn().map_err(|e| store.lmdb("open", e))?;
            let outcome = env
                .create_databases_and_commit(wtxn, |opener, wtxn| {
                    let dbs = Dbs::create(opener, wtxn)?;
                    Ok::<_, heed::Error>(match schema::ensure_schema(store.dir(), dbs, wtxn) {
                        Ok(()) => CommitOrAbort::Commit(dbs),
                        Err(refused) => CommitOrAbort::Abort(refused),
                    })
                })
                .map_err(|e| store.lmdb("open", e))?;
            match outcome {
                CommitOrAbort::Commit(dbs) => Ok(dbs),
                CommitOrAbort::Abort(refused) => Err(refused),
            }
        })?;
        tracing::debug!(catalog = %store.dir().display(), "catalog open");
        Ok(Catalog { store, dbs })
    }

    /// The id of the origin rooted at `root`, registering it if it is new. Roots compare
    /// as raw bytes, so the caller passes a canonical path.
    pub fn origin_id(&self, root: &Path) -> Result<OriginId, CatalogError> {
        let root = root.as_os_str().as_bytes();
        if let Some(id) = self
            .store
            .read("origin lookup", |txn| self.find_origin(txn, root))?
        {
            return Ok(id);
        }
        self.store.write("origin registration", |txn| {
            if let Some(id) = self.find_origin(txn, root)? {
                return Ok(id);
            }
            let meta = self.dbs.meta(self.store.dir());
            let id = meta.next_origin_id(txn)?;
            let next = id.checked_add(1).ok_or_else(|| self.exhausted("origin"))?;
            self.dbs
                .origins
                .put(txn, &id, root)
                .map_err(|e| self.store.lmdb("origin registration", e))?;
            meta.set_next_origin_id(txn, next)?;
            Ok(OriginId(id))
        })
    }

    /// Every registered origin with its root, in id order.
    pub fn origins(&self) -> Result<Vec<(OriginId, PathBuf)>, CatalogError> {
        let lmdb = |e| self.store.lmdb("origins", e);
        self.store.read("origins", |txn| {
            let mut out = Vec::new();
            for entry in self.dbs.origins.iter(txn).map_err(lmdb)? {
                let (id, root) = entry.map_err(lmdb)?;
                out.push((OriginId(id), PathBuf::from(OsStr::from_bytes(root))));
            }
            Ok(out)
        })
    }

    /// The track with id `id`, if it exists.
    pub fn get(&self, id: TrackId) -> Result<Option<TrackRecord>, CatalogError> {
        self.store.read("get", |txn| {
            Ok(self.track(txn, id)?.map(|value| value.into_record(id)))
        })
    }

    /// [`Catalog::get`] of each of `ids`, in one read transaction (naming a page of search
    /// results costs one transaction, not one per result).
    pub fn get_many(&self, ids: &[TrackId]) -> Result<Vec<Option<TrackRecord>>, CatalogError> {
        self.store.read("get many", |txn| {
            ids.iter()
                .map(|&id| Ok(self.track(txn, id)?.map(|value| value.into_record(id))))
                .collect()
        })
    }

    /// The track at `rel_path` in `origin`, if there is one.
    pub fn find(
        &self,
        origin: OriginId,
        rel_path: &[u8],
    ) -> Result<Option<TrackRecord>, CatalogError> {
        self.store.read("find", |txn| {
            let key = path_key(origin, rel_path);
            let Some(entry) = self.path_entry(txn, &key)? else {
                return Ok(None);
            };
            let value = self.indexed_track(txn, &key, entry.id)?;
            self.check_same_path(&value, entry.id, origin, rel_path)?;
            Ok(Some(value.into_record(entry.id)))
        })
    }

    /// The scan states of one origin: rel path -> (id, scan state).
    pub fn scan_states(
        &self,
        origin: OriginId,
    ) -> Result<HashMap<Vec<u8>, (TrackId, ScanState)>, CatalogError> {
        let mut out = HashMap::new();
        self.for_each_scan_state(origin, |rel, id, state| {
            out.insert(rel.to_vec(), (id, state));
        })?;
        Ok(out)
    }

    /// Calls `f(rel path, id, scan state)` for every track of one origin, in one read
    /// transaction, without copying the paths, letting go of the pages it read every few
    /// thousand tracks and at the end (see [`Catalog::release_mapped_pages`]).
    pub fn for_each_scan_state(
        &self,
        origin: OriginId,
        f: impl FnMut(&[u8], TrackId, ScanState),
    ) -> Result<(), CatalogError> {
        self.for_each_scan_state_under(origin, b"", f)
    }

    /// Calls `f(rel path, id, scan state)` for every track of `origin` whose relative path
    /// starts with `prefix` (bytes, e.g. `b"Artist/Album/"`; empty for the whole origin), in
    /// path order, in one read transaction. Hashed keys keep the leading bytes of their
    /// path, so a prefix longer than the part they keep is checked against the full path.
    pub fn for_each_scan_state_under(
        &self,
        origin: OriginId,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], TrackId, ScanState),
    ) -> Result<(), CatalogError> {
        let lmdb = |e| self.store.lmdb("scan states", e);
        self.store.read("scan states", |txn| {
            let key_prefix = schema::path_key_prefix(origin, prefix);
            let items = self.dbs.paths.prefix_iter(txn, &key_prefix).map_err(lmdb)?;
            for (n, item) in items.enumerate() {
                if n % RELEASE_EVERY == RELEASE_EVERY - 1 {
                    self.store.drop_mapped_pages();
                }
                let (key, entry) = item.map_err(lmdb)?;
                match rel_path_in_key(key) {
                    Some(rel_path) => {
                        if rel_path.starts_with(prefix) {
                            f(rel_path, entry.id, entry.scan);
                        }
                    }
                    None => {
                        let track = self.indexed_track(txn, key, entry.id)?;
                        if track.rel_path.starts_with(prefix) {
                            f(&track.rel_path, entry.id, entry.scan);
                        }
                    }
                }
            }
            self.store.drop_mapped_pages();
            Ok(())
        })
    }

    /// One write transaction: upserts (new (origin, rel_path) get a fresh id from a
    /// persistent counter, ids are never reused; existing keep their id) and removals by
    /// id. Returns the ids of the upserts in order.
    ///
    /// Removals run first, so a batch that removes a track and upserts its path gives the
    /// path a fresh id. Removing an unknown id is not an error. An upsert identical to the
    /// stored track writes nothing. An upsert forgets the skip recorded for its path (see
    /// [`apply_batch`](Catalog::apply_batch)).
    pub fn apply(
        &self,
        upserts: &[Upsert],
        removals: &[TrackId],
    ) -> Result<Vec<TrackId>, CatalogError> {
        self.apply_parts(upserts, removals, &[], &[], &[], &[])
    }

    /// [`apply`](Catalog::apply) plus the `skipped` changes of [`Batch`], all in one
    /// transaction. Returns the ids of the upserts in order.
    ///
    /// Only track changes bump the [change counter](Catalog::change_counter): the tree
    /// does not show skipped files. Recording a skip for a path that holds a track removes
    /// that track, which does count.
    pub fn apply_batch(&self, batch: &Batch) -> Result<Vec<TrackId>, CatalogError> {
        self.apply_parts(
            &batch.upserts,
            &batch.removals,
            &batch.skipped,
            &batch.unskipped,
            &batch.art,
            &batch.identities,
        )
    }

    /// Lets go of the catalog pages this process has mapped in (they stay in the page
    /// cache): call it now and then during a long run of writes, such as a first scan, so
    /// the catalog's size does not add up in the resident set. [`Catalog::for_each`] does
    /// it by itself.
    pub fn release_mapped_pages(&self) {
        self.store.drop_mapped_pages();
    }

    /// Calls `f` for every track in id order (one read transaction), letting go of the
    /// catalog pages it read every few thousand tracks (see
    /// [`Catalog::release_mapped_pages`]).
    ///
    /// `f` must not call back into this catalog: a write that has to grow the map waits
    /// for this read to end, and blocks new reads meanwhile, so a nested call could wait
    /// forever. Collect what you need and act after `for_each` returns.
    pub fn for_each(&self, mut f: impl FnMut(TrackRecord)) -> Result<(), CatalogError> {
        let lmdb = |e| self.store.lmdb("for each", e);
        self.store.read("for each", |txn| {
            for (n, item) in self.dbs.tracks.iter(txn).map_err(lmdb)?.enumerate() {
                let (id, value) = item.map_err(lmdb)?;
                f(value.into_record(TrackId(id)));
                if n % RELEASE_EVERY == RELEASE_EVERY - 1 {
                    self.store.drop_mapped_pages();
                }
            }
            self.store.drop_mapped_pages();
            Ok(())
        })
    }

    /// The number of tracks.
    pub fn len(&self) -> Result<u64, CatalogError> {
        self.store.read("len", |txn| {
            self.dbs
                .tracks
                .len(txn)
                .map_err(|e| self.store.lmdb("len", e))
        })
    }

    /// True when the catalog holds no track.
    pub fn is_empty(&self) -> Result<bool, CatalogError> {
        Ok(self.len()? == 0)
    }

    /// A counter bumped by every [`apply`](Catalog::apply) that changed something (used
    /// to know whether the tree must be republished).
    pub fn change_counter(&self) -> Result<u64, CatalogError> {
        self.store.read("change counter", |txn| {
            self.dbs
                .meta(self.store.dir())
                .counter(txn, Counter::Changes)
        })
    }

    fn apply_parts(
        &self,
        upserts: &[Upsert],
        removals: &[TrackId],
        skipped: &[SkipRecord],
        unskipped: &[(OriginId, Vec<u8>)],
        art: &[ArtSet],
        identities: &[IdentitySet],
    ) -> Result<Vec<TrackId>, CatalogError> {
        let ids = self.store.write("apply", |txn| {
            let ids = self.apply_in(txn, upserts, removals, skipped, unskipped)?;
            if !art.is_empty() {
                self.art_in_txn(txn, art)?;
            }
            if !identities.is_empty() {
                self.identities_in_txn(txn, identities)?;
            }
            Ok(ids)
        })?;
        tracing::debug!(
            catalog = %self.store.dir().display(),
            upserts = upserts.len(),
            removals = removals.len(),
            skipped = skipped.len(),
            unskipped = unskipped.len(),
            "catalog changes applied"
        );
        Ok(ids)
    }

    fn apply_in(
        &self,
        txn: &mut RwTxn<'_>,
        upserts: &[Upsert],
        removals: &[TrackId],
        skipped: &[SkipRecord],
        unskipped: &[(OriginId, Vec<u8>)],
    ) -> Result<Vec<TrackId>, CatalogError> {
        let meta = self.dbs.meta(self.store.dir());
        let mut changed = false;
        for &id in removals {
            changed |= self.remove_in(txn, id)?;
        }
        for (origin, rel_path) in unskipped {
            self.unskip_in(txn, *origin, rel_path)?;
        }
        let mut known_origins = Vec::new();
        for skip in skipped {
            if !known_origins.contains(&skip.origin) {
                self.check_origin(txn, skip.origin)?;
                known_origins.push(skip.origin);
            }
            changed |= self.skip_in(txn, skip)?;
        }
        // Most batches come from a library without broken files: skip the per-upsert
        // lookup then.
        let any_skipped = !self
            .dbs
            .skipped
            .is_empty(txn)
            .map_err(|e| self.store.lmdb("apply", e))?;
        let first_new = meta.next_track_id(txn)?;
        let mut next_new = first_new;
        let mut ids = Vec::with_capacity(upserts.len());
        for upsert in upserts {
            if !known_origins.contains(&upsert.origin) {
                self.check_origin(txn, upsert.origin)?;
                known_origins.push(upsert.origin);
            }
            if any_skipped {
                self.unskip_in(txn, upsert.origin, &upsert.rel_path)?;
            }
            let (id, wrote) = self.upsert_in(txn, upsert, &mut next_new)?;
            changed |= wrote;
            ids.push(id);
        }
        if next_new != first_new {
            meta.set_next_track_id(txn, next_new)?;
        }
        if changed {
            meta.bump(txn, Counter::Changes)?;
        }
        Ok(ids)
    }

    /// Writes one upsert; returns its id and whether anything changed.
    fn upsert_in(
        &self,
        txn: &mut RwTxn<'_>,
        upsert: &Upsert,
        next_new: &mut u64,
    ) -> Result<(TrackId, bool), CatalogError> {
        let lmdb = |e| self.store.lmdb("apply", e);
        let key = path_key(upsert.origin, &upsert.rel_path);
        let value = TrackValue {
            origin: upsert.origin,
            rel_path: upsert.rel_path.clone(),
            format: upsert.format,
            scan: upsert.scan,
            meta: upsert.meta.clone(),
        };
        let id = match self.path_entry(txn, &key)? {
            Some(entry) => {
                match self.track(txn, entry.id)? {
                    Some(old) if old == value && entry.scan == value.scan => {
                        return Ok((entry.id, false));
                    }
                    Some(old) => {
                        self.check_same_path(&old, entry.id, upsert.origin, &upsert.rel_path)?
                    }
                    None => tracing::warn!(
                        catalog = %self.store.dir().display(),
                        id = entry.id.0,
                        "path index entry without its track; rewriting the track"
                    ),
                }
                entry.id
            }
            None => {
                let id = TrackId(*next_new);
                *next_new = next_new
                    .checked_add(1)
                    .ok_or_else(|| self.exhausted("track"))?;
                id
            }
        };
        self.dbs.tracks.put(txn, &id.0, &value).map_err(lmdb)?;
        let entry = PathEntry {
            id,
            scan: upsert.scan,
        };
        self.dbs.paths.put(txn, &key, &entry).map_err(lmdb)?;
        Ok((id, true))
    }

    /// Removes a track and its path entry; returns whether it existed.
    fn remove_in(&self, txn: &mut RwTxn<'_>, id: TrackId) -> Result<bool, CatalogError> {
        let lmdb = |e| self.store.lmdb("apply", e);
        let Some(old) = self.track(txn, id)? else {
            return Ok(false);
        };
        let key = path_key(old.origin, &old.rel_path);
        // Only drop the index entry if it is this track's: never unlink another track.
        if self
            .path_entry(txn, &key)?
            .is_some_and(|entry| entry.id == id)
        {
            self.dbs.paths.delete(txn, &key).map_err(lmdb)?;
            self.drop_art_in(txn, old.origin, &old.rel_path)?;
        }
        self.drop_plays_in(txn, id)?;
        self.set_identity_in(txn, id, None)?;
        self.dbs.tracks.delete(txn, &id.0).map_err(lmdb)?;
        Ok(true)
    }

    fn find_origin(&self, txn: &RoTxn<'_>, root: &[u8]) -> Result<Option<OriginId>, CatalogError> {
        // Origins are few; a scan avoids a second index keyed by unbounded paths.
        let lmdb = |e| self.store.lmdb("origin lookup", e);
        for entry in self.dbs.origins.iter(txn).map_err(lmdb)? {
            let (id, stored) = entry.map_err(lmdb)?;
            if stored == root {
                return Ok(Some(OriginId(id)));
            }
        }
        Ok(None)
    }

    fn check_origin(&self, txn: &RoTxn<'_>, origin: OriginId) -> Result<(), CatalogError> {
        let found = self
            .dbs
            .origins
            .get(txn, &origin.0)
            .map_err(|e| self.store.lmdb("apply", e))?;
        match found {
            Some(_) => Ok(()),
            None => Err(CatalogError::UnknownOrigin {
                path: self.store.dir().to_path_buf(),
                origin,
            }),
        }
    }

    fn track(&self, txn: &RoTxn<'_>, id: TrackId) -> Result<Option<TrackValue>, CatalogError> {
        self.dbs
            .tracks
            .get(txn, &id.0)
            .map_err(|e| self.store.lmdb("track read", e))
    }

    fn path_entry(&self, txn: &RoTxn<'_>, key: &[u8]) -> Result<Option<PathEntry>, CatalogError> {
        self.dbs
            .paths
            .get(txn, key)
            .map_err(|e| self.store.lmdb("path index read", e))
    }

    /// The track a path index entry points to, which must exist.
    fn indexed_track(
        &self,
        txn: &RoTxn<'_>,
        key: &[u8],
        id: TrackId,
    ) -> Result<TrackValue, CatalogError> {
        self.track(txn, id)?.ok_or_else(|| {
            self.corrupt(format!(
                "path index entry {} points to missing track {}",
                String::from_utf8_lossy(key.get(4..).unwrap_or_default()),
                id.0
            ))
        })
    }

    /// Guards against a path index entry pointing at another file's track (a damaged
    /// index, or two long paths whose hashed keys collide).
    fn check_same_path(
        &self,
        value: &TrackValue,
        id: TrackId,
        origin: OriginId,
        rel_path: &[u8],
    ) -> Result<(), CatalogError> {
        if value.origin == origin && value.rel_path == rel_path {
            return Ok(());
        }
        Err(self.corrupt(format!(
            "path index entry for {:?} in origin {} points to track {} at {:?} in origin {}",
            String::from_utf8_lossy(rel_path),
            origin.0,
            id.0,
            String::from_utf8_lossy(&value.rel_path),
            value.origin.0
        )))
    }

    fn corrupt(&self, detail: String) -> CatalogError {
        CatalogError::Corrupt {
            path: self.store.dir().to_path_buf(),
            detail,
        }
    }

    fn exhausted(&self, what: &'static str) -> CatalogError {
        CatalogError::IdsExhausted {
            path: self.store.dir().to_path_buf(),
            what,
        }
    }
}
