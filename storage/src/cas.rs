//! The content-addressed chunk store (CAS): the local cache remote files are read through.
//!
//! A file version (named by a caller-built *version key*: origin key, relative path, size
//! and ETag/mtime, so a changed file is a new version) is cut into chunks by
//! `musicfs-chunker`; each chunk is stored once, under its xxh3-128, whatever file and
//! version it came from. A *manifest* lists, per version, the chunks of it that are cached
//! (offset, length, hash): a file may be cached in part.
//!
//! On disk, under the CAS directory (`<state>/cas/`):
//! - `index/`: an LMDB environment (through heed) holding the chunk index (hash -> pack,
//!   offset, length, refcount, last use), the manifests, the LRU order, and per-pack
//!   accounting (layout in `cas/schema.rs`);
//! - `packs/NNNNNNNN.pack`: chunk bytes, appended; a pack rolls over at
//!   [`CasOptions::pack_size`];
//! - `lock`: an exclusive `flock`, one process at a time (the daemon, or a CLI command).
//!
//! **Crash safety.** A write appends the chunk bytes to a pack, `fdatasync`s it, and only
//! then commits the LMDB transaction that points at them (LMDB's commit is durable). So
//! the index never names bytes that are not on disk. Bytes appended but not committed (a
//! kill between the two) lie past the pack's committed length and are cut off by
//! [`Cas::open`]; packs the index does not know are deleted there. Space is given back
//! (hole punching, pack deletion) only after the transaction that stopped naming it
//! commits. A kill -9 at any point leaves a store that [`Cas::verify`] accepts
//! (`storage/tests/cas_crash.rs` checks this).
//!
//! **Reads verify.** Every [`Cas::get`] hashes what it read; a chunk whose bytes do not
//! match (bit rot, a damaged pack) is dropped from the index and reported as a miss, never
//! served. Reads go through io_uring (one ring per thread) and fall back to `pread`.
//!
//! **Eviction.** After each write, least recently used chunks are dropped until the stored
//! bytes fit [`CasOptions::budget`]; chunks listed by a pinned version ([`Cas::pin`]) are
//! kept. Dropped bytes are hole-punched and empty packs deleted, so disk use stays within
//! the budget plus the pack being written. Reads record their use in memory; the next
//! write transaction folds them into the LRU order (reads never take the write lock).
//!
//! **How the read path uses it** (remote origins): through
//! `crate::origin::CachedOrigin`, for which `Cas` is the `ChunkCache` (`cas/readpath.rs`).
//! On open it builds the version key (origin key, path, size, ETag) and pins it for the
//! life of the handle; a miss fetches one chunking window from the origin, cuts it with
//! the chunker's layout and [`Cas::put_chunks`] it. An edited file's new version adopts
//! the old version's audio chunks ([`Cas::adopt`]) when they are the same bytes; old
//! versions are left to eviction rather than forgotten, so a file served offline can be
//! its last cached version ([`Cas::versions`] lists them).
//!
//! Thread safety: `Cas` is `Send + Sync`; reads run concurrently, writes one at a time.

mod edit;
mod error;
mod pack;
mod reader;
mod readpath;
mod schema;
mod verify;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use heed::{CommitOrAbort, Env, EnvOpenOptions, WithoutTls};
use musicfs_chunker::Chunk;

use self::edit::{lmdb, Edit, Freed};
pub use self::error::CasError;
use self::pack::Packs;
pub use self::schema::ManifestEntry;
use self::schema::{hash_key, ChunkEntry, Dbs, PackEntry, KEY_CLOCK, KEY_SCHEMA, SCHEMA_VERSION};
pub use self::verify::{Problem, VerifyReport};

/// The default byte budget: 10 GiB.
pub const DEFAULT_BUDGET: u64 = 10 << 30;

/// How a [`Cas`] is run.
#[derive(Debug, Clone)]
pub struct CasOptions {
    /// Chunk bytes kept at most (eviction target).
    pub budget: u64,
    /// A pack is closed and a new one started past this many bytes.
    pub pack_size: u64,
    /// Read chunks through io_uring when the kernel allows it (else `pread`).
    pub io_uring: bool,
    /// LMDB map size (address space reserved for the index; the file grows as needed).
    pub map_size: usize,
}

impl Default for CasOptions {
    fn default() -> CasOptions {
        CasOptions {
            budget: DEFAULT_BUDGET,
            pack_size: 64 << 20,
            io_uring: true,
            map_size: 16 << 30,
        }
    }
}

/// What [`Cas::put_chunks`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutReport {
    /// Chunks written to a pack.
    pub new_chunks: u64,
    /// Their bytes.
    pub new_bytes: u64,
    /// Chunks already stored (deduplicated).
    pub known_chunks: u64,
    /// Chunks evicted afterwards to keep the budget.
    pub evicted_chunks: u64,
}

/// Dedup and space statistics ([`Cas::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CasStats {
    /// Chunks stored.
    pub chunks: u64,
    /// Their bytes (what the budget limits).
    pub stored_bytes: u64,
    /// File versions with a manifest.
    pub manifests: u64,
    /// Bytes the manifests cover (what readers see).
    pub logical_bytes: u64,
    /// Chunks listed by more than one version.
    pub shared_chunks: u64,
    /// Pack files.
    pub packs: u64,
    /// Disk blocks the packs occupy.
    pub disk_bytes: u64,
    /// The byte budget.
    pub budget: u64,
}

impl CasStats {
    /// Logical over stored bytes (1.0 without dedup).
    pub fn dedup_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            return 1.0;
        }
        self.logical_bytes as f64 / self.stored_bytes as f64
    }
}

/// Keeps one version's chunks from eviction while it lives ([`Cas::pin`]).
pub struct PinGuard {
    pins: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    key: Vec<u8>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = pins.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.key);
            }
        }
    }
}

/// The pack being appended to.
struct Current {
    id: u32,
    file: File,
    /// Length the index has committed.
    committed: u64,
}

struct Writer {
    current: Option<Current>,
    next_id: u32,
    /// Packs the write in progress rolled away from, with their committed lengths: cut
    /// back to those if the write fails.
    retired: Vec<(u32, u64)>,
}

/// The chunk store. See the [module docs](self).
pub struct Cas {
    dir: PathBuf,
    index_dir: PathBuf,
    env: Env<WithoutTls>,
    dbs: Dbs<'static>,
    packs: Packs,
    opts: CasOptions,
    writer: Mutex<Writer>,
    pins: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    touches: Mutex<HashMap<u128, u64>>,
    clock: AtomicU64,
    /// The byte budget in force (starts as `opts.budget`; [`Cas::set_budget`] moves it).
    budget: AtomicU64,
    /// Chunks evicted since open.
    evicted: AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for Cas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cas").field("dir", &self.dir).finish()
    }
}

impl Cas {
    /// Opens (creating if needed) the store in `dir`, recovering from a crash: pack tails
    /// past the committed length are cut and packs the index does not know are deleted.
    pub fn open(dir: &Path, opts: CasOptions) -> Result<Cas, CasError> {
        let io = |op, source| CasError::Io {
            path: dir.to_path_buf(),
            op,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory", e))?;
        let lock = lock_dir(dir)?;
        let index_dir = dir.join("index");
        std::fs::create_dir_all(&index_dir).map_err(|e| io("create the index directory", e))?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(opts.map_size).max_dbs(schema::MAX_DBS);
        // SAFETY: the index directory belongs to the CAS and is written only through LMDB;
        // LMDB's own locking stays on, and the `lock` file keeps other MusicFS processes
        // out. heed refuses a second handle on the same environment in this process.
        let env = unsafe { options.open(&index_dir) }.map_err(|e| lmdb(&index_dir, "open", e))?;
        if let Some((len, needed)) = crate::catalog::cut_short(&index_dir, &env) {
            return Err(CasError::Format {
                path: index_dir,
                what: format!(
                    "data.mdb holds {len} bytes, fewer than the {needed} its last transaction \
                     committed (the file was cut short); remove {} to start an empty cache",
                    dir.display()
                ),
            });
        }
        let dbs = open_dbs(&env, &index_dir)?;
        let packs = Packs::open(dir.join("packs"), opts.io_uring)?;
        let budget = opts.budget;
        let cas = Cas {
            dir: dir.to_path_buf(),
            index_dir,
            env,
            dbs,
            packs,
            opts,
            writer: Mutex::new(Writer {
                current: None,
                next_id: 1,
                retired: Vec::new(),
            }),
            pins: Arc::default(),
            touches: Mutex::default(),
            clock: AtomicU64::new(0),
            budget: AtomicU64::new(budget),
            evicted: AtomicU64::new(0),
            _lock: lock,
        };
        cas.recover()?;
        Ok(cas)
    }

    /// The CAS directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it runs with.
    pub fn options(&self) -> &CasOptions {
        &self.opts
    }

    fn lmdb(&self, op: &'static str) -> impl Fn(heed::Error) -> CasError + '_ {
        move |source| lmdb(&self.index_dir, op, source)
    }

    /// Cuts torn tails, deletes unknown packs, and picks up the clock and the pack to
    /// append to.
    fn recover(&self) -> Result<(), CasError> {
        let known = self.pack_entries()?;
        for (id, len) in self.packs.list()? {
            match known.iter().find(|(k, _)| *k == id) {
                None => {
                    tracing::info!(pack = id, "deleting a pack the chunk index does not know");
                    self.packs.delete(id)?;
                }
                Some((_, e)) if len > e.len => {
                    tracing::info!(
                        pack = id,
                        committed = e.len,
                        found = len,
                        "cutting a torn pack tail"
                    );
                    self.packs.trim(id, e.len)?;
                }
                Some(_) => {}
            }
        }
        let rtxn = self.env.read_txn().map_err(self.lmdb("open"))?;
        let clock = schema::u64_value(
            self.dbs
                .meta
                .get(&rtxn, KEY_CLOCK)
                .map_err(self.lmdb("open"))?,
        );
        drop(rtxn);
        self.clock.store(clock.unwrap_or(0) + 1, Ordering::Relaxed);
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, e)) = known.last() {
            w.next_id = id.saturating_add(1);
            if e.len < self.opts.pack_size && self.packs.path(*id).exists() {
                w.current = Some(Current {
                    id: *id,
                    file: self.packs.open_for_append(*id, false)?,
                    committed: e.len,
                });
            }
        }
        let evicted = self.evict_locked(&w)?;
        if evicted > 0 {
            tracing::info!(
                chunks = evicted,
                budget = self.budget(),
                "evicted down to the cache budget"
            );
        }
        Ok(())
    }

    fn pack_entries(&self) -> Result<Vec<(u32, PackEntry)>, CasError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("pack scan"))?;
        let mut out = Vec::new();
        for item in self.dbs.packs.iter(&rtxn).map_err(self.lmdb("pack scan"))? {
            let (k, v) = item.map_err(self.lmdb("pack scan"))?;
            let (Some(id), Some(e)) = (schema::pack_of_key(k), PackEntry::decode(v)) else {
                return Err(self.format("a pack entry"));
            };
            out.push((id, e));
        }
        Ok(out)
    }

    fn format(&self, what: &str) -> CasError {
        CasError::Format {
            path: self.index_dir.clone(),
            what: what.to_string(),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Keeps every chunk of `version_key` from eviction until the guard drops (for open
    /// files). Pins nest.
    pub fn pin(&self, version_key: &[u8]) -> PinGuard {
        *self
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(version_key.to_vec())
            .or_insert(0) += 1;
        PinGuard {
            pins: Arc::clone(&self.pins),
            key: version_key.to_vec(),
        }
    }

    /// The cached chunks of `version_key`, sorted by offset (empty: nothing cached).
    pub fn manifest(&self, version_key: &[u8]) -> Result<Vec<ManifestEntry>, CasError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("manifest lookup"))?;
        match self
            .dbs
            .manifests
            .get(&rtxn, version_key)
            .map_err(self.lmdb("manifest lookup"))?
        {
            None => Ok(Vec::new()),
            Some(b) => schema::decode_manifest(b).ok_or_else(|| self.format("a manifest")),
        }
    }

    /// The version keys with a manifest that start with `prefix` (every cached version of
    /// one file, when the caller's keys start with the file's name).
    pub fn versions(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, CasError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("manifest listing"))?;
        let iter = self
            .dbs
            .manifests
            .prefix_iter(&rtxn, prefix)
            .map_err(self.lmdb("manifest listing"))?;
        let mut out = Vec::new();
        for item in iter {
            let (key, _) = item.map_err(self.lmdb("manifest listing"))?;
            out.push(key.to_vec());
        }
        Ok(out)
    }

    /// Adds `entries`, chunks the store already holds (another version's), to the
    /// manifest of `version_key` without writing any bytes. `Ok(false)`, and nothing
    /// recorded, when one of them is no longer stored.
    pub fn adopt(&self, version_key: &[u8], entries: &[ManifestEntry]) -> Result<bool, CasError> {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = w.current.as_ref().map(|c| c.id);
        let tick = self.tick();
        let adopted = self.write(current, |edit| {
            for e in entries {
                match edit.chunk(e.hash)? {
                    Some(c) if c.len == e.len => {}
                    _ => return Ok(false),
                }
            }
            for e in entries {
                edit.touch(e.hash, tick)?;
            }
            edit.merge_manifest(version_key, entries)?;
            Ok(true)
        });
        drop(w);
        adopted
    }

    /// Reads chunk `hash` into `buf` (resized to the chunk). `Ok(false)` is a miss: not
    /// stored, or stored but damaged (then it is dropped, and `buf` is emptied).
    pub fn get(&self, hash: u128, buf: &mut Vec<u8>) -> Result<bool, CasError> {
        let entry = {
            let rtxn = self.env.read_txn().map_err(self.lmdb("chunk lookup"))?;
            let got = self
                .dbs
                .chunks
                .get(&rtxn, &hash_key(hash))
                .map_err(self.lmdb("chunk lookup"))?;
            match got.map(ChunkEntry::decode) {
                None => return Ok(false),
                Some(None) => return Err(self.format("a chunk entry")),
                Some(Some(e)) => e,
            }
        };
        let read = self
            .packs
            .read(entry.pack, entry.offset, entry.len as usize, buf);
        let why = match read {
            Ok(()) if musicfs_chunker::hash(buf) == hash => {
                self.touches
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(hash, self.tick());
                return Ok(true);
            }
            Ok(()) => "its bytes do not match its hash".to_string(),
            Err(e) => format!("its bytes cannot be read: {e}"),
        };
        buf.clear();
        self.drop_bad(hash, entry, &why)?;
        Ok(false)
    }

    /// Drops a chunk found damaged, unless a writer replaced or removed it meanwhile.
    fn drop_bad(&self, hash: u128, seen: ChunkEntry, why: &str) -> Result<(), CasError> {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = w.current.as_ref().map(|c| c.id);
        let dropped = self.write(current, |edit| match edit.chunk(hash)? {
            Some(e) if e.pack == seen.pack && e.offset == seen.offset => {
                edit.evict(hash)?;
                Ok(true)
            }
            _ => Ok(false),
        })?;
        drop(w);
        if dropped {
            tracing::warn!(chunk = %format!("{hash:032x}"), pack = seen.pack, offset = seen.offset, reason = why, "damaged chunk dropped from the cache");
        }
        Ok(())
    }

    /// Copies into `out` the cached bytes of `version_key` from `offset` on, as far as
    /// they are cached contiguously; returns how many (0: a miss at `offset`).
    pub fn read_at(
        &self,
        version_key: &[u8],
        offset: u64,
        out: &mut [u8],
    ) -> Result<usize, CasError> {
        let manifest = self.manifest(version_key)?;
        let mut i = manifest.partition_point(|e| e.end() <= offset);
        let mut filled = 0usize;
        let mut at = offset;
        let mut buf = Vec::new();
        while filled < out.len() {
            let Some(e) = manifest.get(i).filter(|e| e.offset <= at && at < e.end()) else {
                break;
            };
            if !self.get(e.hash, &mut buf)? {
                break;
            }
            let from = (at - e.offset) as usize;
            let n = (buf.len() - from).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&buf[from..from + n]);
            filled += n;
            at += n as u64;
            i += 1;
        }
        Ok(filled)
    }

    /// Stores the chunks of `bytes`, which hold the file `version_key` from `offset` on,
    /// and adds them to its manifest. Each chunk must lie within `bytes` and carry the
    /// xxh3-128 of its bytes (as `Layout::chunk_range` returns them); chunks already stored
    /// are not written again. Then evicts down to the budget.
    pub fn put_chunks(
        &self,
        version_key: &[u8],
        offset: u64,
        bytes: &[u8],
        chunks: &[Chunk],
    ) -> Result<PutReport, CasError> {
        let slices = chunk_slices(offset, bytes, chunks)?;
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let known: HashSet<u128> = {
            let rtxn = self.env.read_txn().map_err(self.lmdb("chunk lookup"))?;
            let mut known = HashSet::new();
            for c in chunks {
                if self
                    .dbs
                    .chunks
                    .get(&rtxn, &hash_key(c.hash))
                    .map_err(self.lmdb("chunk lookup"))?
                    .is_some()
                {
                    known.insert(c.hash);
                }
            }
            known
        };
        let mut report = PutReport::default();
        let placed = match self.append(&mut w, chunks, &slices, &known, &mut report) {
            Ok(p) => p,
            Err(e) => {
                self.rewind(&mut w);
                return Err(e);
            }
        };
        let tick = self.tick();
        let current = w.current.as_ref().map(|c| c.id);
        let entries: Vec<ManifestEntry> = chunks
            .iter()
            .map(|c| ManifestEntry {
                offset: c.offset,
                len: c.len,
                hash: c.hash,
            })
            .collect();
        let pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        let committed = self.write(current, |edit| {
            for (hash, pack, at, len) in &placed {
                edit.add_chunk(
                    *hash,
                    ChunkEntry {
                        pack: *pack,
                        offset: *at,
                        len: *len,
                        refs: 0,
                        last_use: tick,
                    },
                )?;
            }
            for c in chunks.iter().filter(|c| known.contains(&c.hash)) {
                edit.touch(c.hash, tick)?;
            }
            edit.merge_manifest(version_key, &entries)?;
            // In the same transaction, so the budget holds at every commit.
            evict_in(edit, &pins, self.budget())
        });
        drop(pins);
        let evicted = match committed {
            Ok(n) => n,
            Err(e) => {
                self.rewind(&mut w);
                return Err(e);
            }
        };
        if let Some(c) = w.current.as_mut() {
            c.committed = placed
                .iter()
                .filter(|p| p.1 == c.id)
                .map(|p| p.2 + u64::from(p.3))
                .max()
                .unwrap_or(c.committed)
                .max(c.committed);
        }
        w.retired.clear();
        report.known_chunks = known.len() as u64;
        report.evicted_chunks = evicted;
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        Ok(report)
    }

    /// Appends the chunks not `known` to packs and syncs them; returns where each went.
    fn append(
        &self,
        w: &mut Writer,
        chunks: &[Chunk],
        slices: &[&[u8]],
        known: &HashSet<u128>,
        report: &mut PutReport,
    ) -> Result<Vec<(u128, u32, u64, u32)>, CasError> {
        let mut placed: Vec<(u128, u32, u64, u32)> = Vec::new();
        let mut end = w.current.as_ref().map_or(0, |c| c.committed);
        let mut written: Vec<u32> = Vec::new();
        let mut seen = HashSet::new();
        for (c, bytes) in chunks.iter().zip(slices) {
            if known.contains(&c.hash) || !seen.insert(c.hash) {
                continue;
            }
            let roll = match &w.current {
                None => true,
                Some(_) => end > 0 && end + bytes.len() as u64 > self.opts.pack_size,
            };
            if roll {
                if let Some(cur) = &w.current {
                    w.retired.push((cur.id, cur.committed));
                    if written.contains(&cur.id) {
                        self.packs.sync(cur.id, &cur.file)?;
                    }
                }
                let id = w.next_id;
                w.next_id = w.next_id.saturating_add(1);
                let file = self.packs.open_for_append(id, true)?;
                w.current = Some(Current {
                    id,
                    file,
                    committed: 0,
                });
                end = 0;
            }
            let Some(cur) = &w.current else {
                continue;
            };
            self.packs.write_at(cur.id, &cur.file, bytes, end)?;
            if !written.contains(&cur.id) {
                written.push(cur.id);
            }
            placed.push((c.hash, cur.id, end, c.len));
            end += bytes.len() as u64;
            report.new_chunks += 1;
            report.new_bytes += bytes.len() as u64;
        }
        if let Some(cur) = &w.current {
            if written.contains(&cur.id) {
                self.packs.sync(cur.id, &cur.file)?;
            }
        }
        Ok(placed)
    }

    /// After a failed write: cut the current pack back to what the index committed.
    fn rewind(&self, w: &mut Writer) {
        let current = w.current.as_ref().map(|c| (c.id, c.committed));
        for (id, committed) in w.retired.drain(..).chain(current) {
            if let Err(e) = self.packs.trim(id, committed) {
                tracing::warn!(error = %e, "cannot cut an uncommitted pack tail; the next open will");
            }
        }
    }

    /// Runs `f` in one write transaction (folding in the reads seen since the last one),
    /// commits, then gives freed space back.
    fn write<R>(
        &self,
        current: Option<u32>,
        f: impl FnOnce(&mut Edit<'_, '_>) -> Result<R, CasError>,
    ) -> Result<R, CasError> {
        let touches =
            std::mem::take(&mut *self.touches.lock().unwrap_or_else(PoisonError::into_inner));
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("write"))?;
        let mut edit = Edit {
            txn: &mut wtxn,
            dbs: self.dbs,
            dir: &self.index_dir,
            current_pack: current,
            freed: Vec::new(),
            dead_packs: Vec::new(),
        };
        for (hash, at) in touches {
            edit.touch(hash, at)?;
        }
        let out = f(&mut edit)?;
        edit.set_clock(self.clock.load(Ordering::Relaxed))?;
        let (freed, dead) = (
            std::mem::take(&mut edit.freed),
            std::mem::take(&mut edit.dead_packs),
        );
        wtxn.commit().map_err(self.lmdb("commit"))?;
        for Freed { pack, offset, len } in freed {
            if !dead.contains(&pack) {
                self.packs.punch(pack, offset, len);
            }
        }
        for pack in dead {
            self.packs.delete(pack)?;
        }
        Ok(out)
    }

    /// Evicts least recently used, unpinned chunks until the stored bytes fit the budget.
    /// Returns how many went.
    fn evict_locked(&self, w: &Writer) -> Result<u64, CasError> {
        self.evict_to(w, self.budget())
    }

    fn evict_to(&self, w: &Writer, budget: u64) -> Result<u64, CasError> {
        let pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        let current = w.current.as_ref().map(|c| c.id);
        let evicted = self.write(current, |edit| evict_in(edit, &pins, budget))?;
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        Ok(evicted)
    }

    /// The byte budget in force.
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Sets the byte budget from now on (a running daemon's `cache_budget` change) and
    /// evicts down to it at once; returns how many chunks went.
    pub fn set_budget(&self, budget: u64) -> Result<u64, CasError> {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.budget.store(budget, Ordering::Relaxed);
        self.evict_locked(&w)
    }

    /// Evicts every chunk no open file pins (those go when their readers close and the
    /// next write evicts); returns how many went.
    pub fn clear(&self) -> Result<u64, CasError> {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.evict_to(&w, 0)
    }

    /// Chunks evicted since the store was opened (budget, [`Cas::clear`]).
    pub fn evicted_total(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Removes the manifest of `version_key` (the file changed or went away); chunks no
    /// other version lists are freed.
    pub fn forget(&self, version_key: &[u8]) -> Result<(), CasError> {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = w.current.as_ref().map(|c| c.id);
        self.write(current, |edit| edit.set_manifest(version_key, &[]))
    }

    /// Dedup and space statistics (one pass over the index).
    pub fn stats(&self) -> Result<CasStats, CasError> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("stats"))?;
        let mut s = CasStats {
            budget: self.budget(),
            ..CasStats::default()
        };
        for item in self.dbs.chunks.iter(&rtxn).map_err(self.lmdb("stats"))? {
            let (_, v) = item.map_err(self.lmdb("stats"))?;
            let e = ChunkEntry::decode(v).ok_or_else(|| self.format("a chunk entry"))?;
            s.chunks += 1;
            s.stored_bytes += u64::from(e.len);
            if e.refs > 1 {
                s.shared_chunks += 1;
            }
        }
        for item in self.dbs.manifests.iter(&rtxn).map_err(self.lmdb("stats"))? {
            let (_, v) = item.map_err(self.lmdb("stats"))?;
            let m = schema::decode_manifest(v).ok_or_else(|| self.format("a manifest"))?;
            s.manifests += 1;
            s.logical_bytes += m.iter().map(|e| u64::from(e.len)).sum::<u64>();
        }
        for item in self.dbs.packs.iter(&rtxn).map_err(self.lmdb("stats"))? {
            let (k, _) = item.map_err(self.lmdb("stats"))?;
            s.packs += 1;
            if let Some(id) = schema::pack_of_key(k) {
                s.disk_bytes += self.packs.allocated(id);
            }
        }
        Ok(s)
    }

    /// Checks every chunk's bytes against its hash and the index against the packs. Read
    /// only: nothing is dropped (a damaged chunk is dropped by the read that meets it).
    pub fn verify(&self) -> Result<VerifyReport, CasError> {
        verify::run(self)
    }
}

/// Evicts inside `edit` until the stored bytes fit `budget`, skipping chunks of pinned
/// versions. Returns how many chunks went.
fn evict_in(
    edit: &mut Edit<'_, '_>,
    pins: &HashMap<Vec<u8>, usize>,
    budget: u64,
) -> Result<u64, CasError> {
    let mut evicted = 0;
    let mut skipped = 0usize;
    while edit.stored()? > budget {
        let batch = edit.oldest(skipped + 64)?;
        let candidates = &batch[skipped.min(batch.len())..];
        if candidates.is_empty() {
            break;
        }
        for &h in candidates {
            if edit.stored()? <= budget {
                break;
            }
            if edit.users(h)?.iter().any(|k| pins.contains_key(k)) {
                skipped += 1;
            } else if edit.evict(h)?.is_some() {
                evicted += 1;
            }
        }
    }
    Ok(evicted)
}

/// The bytes of each chunk, checked to lie within `bytes` and to match its hash.
fn chunk_slices<'b>(
    offset: u64,
    bytes: &'b [u8],
    chunks: &[Chunk],
) -> Result<Vec<&'b [u8]>, CasError> {
    chunks
        .iter()
        .map(|c| {
            let from = c
                .offset
                .checked_sub(offset)
                .and_then(|f| usize::try_from(f).ok());
            let slice = from.and_then(|f| bytes.get(f..f.checked_add(c.len as usize)?));
            match slice {
                Some(s) if c.len > 0 && musicfs_chunker::hash(s) == c.hash => Ok(s),
                Some(_) => Err(CasError::BadInput(format!(
                    "chunk at {} ({} bytes) does not match its hash",
                    c.offset, c.len
                ))),
                None => Err(CasError::BadInput(format!(
                    "chunk at {} ({} bytes) lies outside the bytes given ({} at {offset})",
                    c.offset,
                    c.len,
                    bytes.len()
                ))),
            }
        })
        .collect()
}

/// Takes the directory's exclusive lock, or says who has it.
fn lock_dir(dir: &Path) -> Result<File, CasError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| CasError::Io {
            path: path.clone(),
            op: "open the lock file",
            source,
        })?;
    // SAFETY: flock on an fd we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(CasError::Locked {
            path: dir.to_path_buf(),
        });
    }
    Ok(file)
}

/// Creates or opens the databases and checks the schema version.
fn open_dbs(env: &Env<WithoutTls>, index_dir: &Path) -> Result<Dbs<'static>, CasError> {
    let wtxn = env.write_txn().map_err(|e| lmdb(index_dir, "open", e))?;
    let outcome = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            let dbs = Dbs::create(opener, wtxn)?;
            let found = dbs.meta.get(wtxn, KEY_SCHEMA)?.map(|b| b.to_vec());
            match found {
                None => {
                    dbs.meta
                        .put(wtxn, KEY_SCHEMA, &SCHEMA_VERSION.to_le_bytes())?;
                    Ok::<_, heed::Error>(CommitOrAbort::Commit(dbs))
                }
                Some(b) if b == SCHEMA_VERSION.to_le_bytes() => Ok(CommitOrAbort::Commit(dbs)),
                Some(b) => Ok(CommitOrAbort::Abort(b)),
            }
        })
        .map_err(|e| lmdb(index_dir, "open", e))?;
    match outcome {
        CommitOrAbort::Commit(dbs) => Ok(dbs),
        CommitOrAbort::Abort(found) => Err(CasError::Format {
            path: index_dir.to_path_buf(),
            what: format!("schema version {found:?}, this build knows {SCHEMA_VERSION}"),
        }),
    }
}

#[cfg(test)]
mod tests;
