//! The read path of remote origins: bytes come from the chunk cache, and only what it lacks
//! from the origin.
//!
//! [`CachedOrigin`] wraps a network origin (S3, SFTP, SMB). Listing, stat and probe go to
//! the origin unchanged (the scanner uses the origin itself, not this wrapper); `open`
//! returns a [`CachedSource`] whose `read_at` works in **windows** of the file:
//!
//! - window 0 is the tag region (everything before the audio: FLAC metadata blocks, an
//!   ID3v2 tag, an MP4 `moov` before `mdat`, Ogg header pages), found from the file's head;
//! - the audio is cut into windows of [`Chunking::window`] bytes counted from the tag
//!   region's end, so a tag edit that changes the tag region's size shifts no audio window.
//!
//! A window is fetched whole with one ranged read, cut into content-defined chunks inside
//! it, and stored in the cache under the file version's manifest. Because the cuts depend
//! only on the window's bytes, a window fetched by any reader, in any order, yields the same
//! chunks, and the same audio under a new tag yields the same chunks as before.
//!
//! **Edited files** (a new version: another ETag or size or mtime): the first open fetches
//! the new tag region, then looks for an earlier version of the same path in the cache. If
//! its audio is as long as the new file's, the last [`SAMPLE`] bytes of the new file are
//! fetched and compared with the old version's (from the cache); when they match (and, for
//! FLAC, the STREAMINFO's audio MD5 is the same in both tag regions), the old audio chunks
//! are adopted, shifted, without fetching them. An edit of the tags then costs the tag
//! region plus 4 KiB on the wire.
//!
//! **Concurrency**: concurrent misses of one window are fetched once (the others wait for
//! it); a reader that reads sequentially has the next windows fetched ahead by the
//! prefetch threads. **Offline**: a version whose manifest covers the whole file is served
//! from the cache without the origin (open falls back to it when the origin cannot be
//! reached); any other read fails within the origin's deadline, never hangs.
//!
//! The cache itself is behind [`ChunkCache`] and the cutting behind [`Chunking`], so this
//! module knows neither LMDB nor FastCDC.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};

use super::{
    ChangeDetection, ChangeToken, Health, Listed, LocalOrigin, Origin, OriginError, OriginSpec,
    RootIdentity, Seen, Source, Stat,
};

/// Bytes at the end of an edited file compared with the earlier version's before its audio
/// chunks are reused.
pub const SAMPLE: u64 = 4096;

/// The most a tag region may span (a larger one is cached as ordinary windows).
const MAX_TAG_REGION: u64 = 64 << 20;

/// The first bytes fetched to find the tag region (more follow only as the format's
/// headers ask: a tag edit must cost little more than the tag region on the wire).
const HEAD: u64 = 4 << 10;

/// One chunk of a file version: where it is in the file, how long, and its hash
/// (the chunker's own chunk).
pub type ChunkRef = musicfs_chunker::Chunk;

/// What the read path needs of the chunk store. Versions are opaque byte keys; the chunks
/// of a version's manifest are kept sorted by offset and may cover only parts of the file.
pub trait ChunkCache: Send + Sync + fmt::Debug {
    /// The chunks recorded for `version` (empty when none).
    fn manifest(&self, version: &[u8]) -> io::Result<Vec<ChunkRef>>;

    /// The versions recorded whose key starts with `prefix`, most recently used first.
    fn versions(&self, prefix: &[u8]) -> io::Result<Vec<Vec<u8>>>;

    /// Reads chunk `c` whole into `buf` (resized to `c.len` bytes), verified against its
    /// hash. `Ok(false)`: not in the cache, or it was damaged (and is now dropped).
    fn read(&self, c: &ChunkRef, buf: &mut Vec<u8>) -> io::Result<bool>;

    /// Stores `chunks` of `version`, whose bytes are `data` (the chunks in order, back to
    /// back), and records them in its manifest.
    fn put(&self, version: &[u8], chunks: &[ChunkRef], data: &[u8]) -> io::Result<()>;

    /// Records `chunks`, which the cache already holds, in `version`'s manifest.
    /// `Ok(false)` when one of them is no longer there (nothing recorded then).
    fn adopt(&self, version: &[u8], chunks: &[ChunkRef]) -> io::Result<bool>;

    /// Drops `version`'s manifest (chunks other versions list stay).
    fn forget(&self, version: &[u8]) -> io::Result<()>;

    /// Keeps `version`'s chunks from eviction while the returned guard lives.
    fn pin(&self, version: &[u8]) -> Box<dyn Send + Sync>;
}

/// A second cache tier several daemons share (an S3 bucket): consulted on a local miss
/// before the origin, and given what was fetched from the origin. Everything it answers is
/// checked by the caller (each chunk against its hash; the tier checks its window records
/// against their signature), so a bad tier costs misses, never wrong bytes.
pub trait ChunkTier: Send + Sync + fmt::Debug {
    /// The chunks of the window of `version` that starts at `start`, as recorded by a
    /// daemon that fetched it (`None`: not there, or the record is not genuine).
    fn window(&self, version: &[u8], start: u64) -> Option<Vec<ChunkRef>>;

    /// Chunk `c`'s bytes as the tier holds them (unchecked; `None`: not there).
    fn chunk(&self, c: &ChunkRef) -> Option<Vec<u8>>;

    /// The whole version key of the file a tree records as `recorded` (a version key's
    /// path, length and mtime), as a daemon that fetched it recorded it: lets a file be
    /// opened from the tier without asking the origin which version it holds.
    fn version(&self, recorded: &[u8]) -> Option<Vec<u8>>;

    /// A window of `version` fetched from the origin: `chunks` cut from `data`. Stored in
    /// the background; may be dropped when the tier is slow or down. The first window
    /// (`start` 0) also records the version under its first `recorded` bytes.
    fn offer(&self, version: &[u8], recorded: usize, start: u64, chunks: &[ChunkRef], data: &[u8]);
}

/// Where a file's regions and chunks are cut.
pub trait Chunking: Send + Sync + fmt::Debug {
    /// Where the tag region of a file of `len` bytes ends, judged from its first bytes
    /// `head`: `Ok(0)` when the format has none or is not known, `Err(n)` when at least
    /// `n` bytes of head are needed to tell.
    fn tag_end(&self, head: &[u8], len: u64) -> Result<u64, u64>;

    /// The audio window holding `offset` (at or past `tag_end`) of a file of `len` bytes
    /// whose tag region ends at `tag_end`.
    fn window_at(&self, len: u64, tag_end: u64, offset: u64) -> Range<u64>;

    /// The chunks of `bytes`, which hold the file from `start` on: the whole tag region
    /// (`start` 0, `tag_end` bytes) or one whole audio window. Offsets are file offsets;
    /// the chunks cover `bytes` exactly, in order.
    fn cut(&self, len: u64, tag_end: u64, start: u64, bytes: &[u8]) -> Vec<ChunkRef>;

    /// Whether two tag regions say the audio after them is the same (e.g. FLAC's
    /// STREAMINFO MD5); `true` when the format does not say.
    fn same_audio(&self, old_head: &[u8], new_head: &[u8]) -> bool;
}

/// How a [`CachedOrigin`] reads ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// Windows fetched ahead of a sequential reader.
    pub readahead: u32,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { readahead: 2 }
    }
}

/// How often reads were served from the cache (hits: each stretch of a read copied from
/// cached chunks) and how often a window was fetched from the origin (misses; read-ahead
/// fetches included, a reader waiting on another's fetch not counted twice). Exported as
/// metrics by the daemon.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Windows found cached.
    pub hits: AtomicU64,
    /// Windows fetched from the origin.
    pub misses: AtomicU64,
    /// Of `misses`, windows fetched by prefetch ([`Origin::warm`]).
    pub prefetched: AtomicU64,
    /// Windows the cache lacked that the shared tier answered (nothing from the origin;
    /// not counted in `misses`).
    pub tier_hits: AtomicU64,
    /// Windows the shared tier had but answered wrongly (a chunk missing or not matching
    /// its hash): fetched from the origin instead.
    pub tier_bad: AtomicU64,
}

/// A network origin read through the chunk cache. See the module documentation.
pub struct CachedOrigin {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn Origin>,
    cache: Arc<dyn ChunkCache>,
    chunking: Arc<dyn Chunking>,
    opts: CacheOptions,
    tier: Option<Arc<dyn ChunkTier>>,
    counters: Arc<CacheCounters>,
    /// Windows being fetched: (version, window start) → the flight the others wait on.
    flights: Mutex<HashMap<FlightKey, Arc<Flight>>>,
    /// The head bytes fetched to find each open version's tag region, shared by its
    /// sources so concurrent opens fetch them once.
    heads: Mutex<HashMap<Arc<[u8]>, std::sync::Weak<Head>>>,
    /// Prefetch requests for the prefetch threads.
    ahead: crossbeam_channel::Sender<Prefetch>,
    /// Reads (and their read-ahead) waiting on the origin now: prefetch of other files
    /// waits while there are any.
    demand: AtomicUsize,
    /// Warned once that an offline version was served.
    warned_offline: AtomicBool,
    /// Until when (ms on [`Shared::clock`]) the origin is taken as unreachable after a
    /// failed open: opens of files cached whole go straight to the cache meanwhile,
    /// instead of each waiting out the origin's deadline.
    unreachable_until: AtomicU64,
    /// When (ms on [`Shared::clock`], plus one; 0 = never) the cache last refused a
    /// window (disk full, a damaged pack): reads are then served from what was fetched,
    /// readahead pauses, and the warning is logged at most once per [`STORE_QUIET_MS`].
    store_failed: AtomicU64,
    clock: std::time::Instant,
}

/// How long after the cache refused a window readahead stays off and the warning quiet.
const STORE_QUIET_MS: u64 = 60_000;

/// Copies what `bytes` (the file from `start` on) holds at `offset` into `buf`; how much.
fn copy_at(buf: &mut [u8], offset: u64, start: u64, bytes: &[u8]) -> usize {
    let Some(from) = offset
        .checked_sub(start)
        .and_then(|f| usize::try_from(f).ok())
        .filter(|&f| f < bytes.len())
    else {
        return 0;
    };
    let n = (bytes.len() - from).min(buf.len());
    buf[..n].copy_from_slice(&bytes[from..from + n]);
    n
}

/// The file length a version key records after its path prefix.
fn version_len(prefix: &[u8], version: &[u8]) -> Option<u64> {
    version
        .get(prefix.len()..prefix.len() + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// The start of every version key of the file a tree records as `seen` (under the path
/// key `prefix`): its length and mtime.
fn recorded_key(prefix: &[u8], seen: Seen) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&seen.size.to_be_bytes());
    key.extend_from_slice(&seen.mtime_ns.to_be_bytes());
    key
}

/// How long an origin that failed an open is taken as unreachable.
const UNREACHABLE_MS: u64 = 5_000;

impl Shared {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Takes the origin as unreachable for [`UNREACHABLE_MS`].
    fn mark_unreachable(&self) {
        self.unreachable_until
            .store(self.now_ms() + UNREACHABLE_MS, Ordering::Relaxed);
    }

    /// The manifest key of the file `source` opened: `prefix`, its length, its mtime (the
    /// tree's record when given) and its change token.
    fn version_of(
        &self,
        rel: &Path,
        prefix: &[u8],
        source: &dyn Source,
        seen_mtime: Option<i64>,
    ) -> Result<Vec<u8>, OriginError> {
        let (mtime, token) = match source.token() {
            Some(token) => (seen_mtime.or(source.mtime_ns()).unwrap_or(0), token),
            // A source that names no version: the origin's stat must (else an edit of the
            // same size would be served from the old version's chunks).
            None => {
                let stat = self.inner.stat(rel)?;
                (
                    seen_mtime.or(source.mtime_ns()).unwrap_or(stat.mtime_ns),
                    stat.token,
                )
            }
        };
        let mut version = prefix.to_vec();
        version.extend_from_slice(&source.len().to_be_bytes());
        version.extend_from_slice(&mtime.to_be_bytes());
        match token {
            ChangeToken::ETag(tag) => version.extend_from_slice(tag.as_bytes()),
            ChangeToken::Local { ino, ctime_ns, .. } => {
                version.extend_from_slice(&ino.to_be_bytes());
                version.extend_from_slice(&ctime_ns.to_be_bytes());
            }
        }
        Ok(version)
    }

    /// Whether the cache refused a window in the last [`STORE_QUIET_MS`].
    fn store_failing(&self) -> bool {
        match self.store_failed.load(Ordering::Relaxed) {
            0 => false,
            at => self.now_ms() + 1 < at + STORE_QUIET_MS,
        }
    }
}

impl fmt::Debug for CachedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedOrigin")
            .field("inner", &self.shared.inner)
            .finish_non_exhaustive()
    }
}

struct Prefetch {
    source: Weak<Inner>,
    window: Range<u64>,
}

/// A window of a version: (version key, window start).
type FlightKey = (Arc<[u8]>, u64);
/// A version's head bytes (see `Inner::head`).
type Head = Mutex<Vec<u8>>;

#[derive(Default)]
struct Flight {
    done: Mutex<Option<Result<(), String>>>,
    cv: Condvar,
}

/// Prefetch threads per cached origin.
const PREFETCHERS: usize = 2;

impl CachedOrigin {
    /// Its hit and miss counters.
    pub fn counters(&self) -> Arc<CacheCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// `inner` read through `cache`, cut by `chunking`.
    pub fn new(
        inner: Arc<dyn Origin>,
        cache: Arc<dyn ChunkCache>,
        chunking: Arc<dyn Chunking>,
        opts: CacheOptions,
    ) -> CachedOrigin {
        CachedOrigin::with_tier(inner, cache, chunking, opts, None)
    }

    /// [`CachedOrigin::new`] with a shared tier consulted before the origin.
    pub fn with_tier(
        inner: Arc<dyn Origin>,
        cache: Arc<dyn ChunkCache>,
        chunking: Arc<dyn Chunking>,
        opts: CacheOptions,
        tier: Option<Arc<dyn ChunkTier>>,
    ) -> CachedOrigin {
        let (tx, rx) = crossbeam_channel::bounded::<Prefetch>(64);
        let shared = Arc::new(Shared {
            inner,
            cache,
            chunking,
            opts,
            tier,
            counters: Arc::default(),
            flights: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            ahead: tx,
            demand: AtomicUsize::new(0),
            warned_offline: AtomicBool::new(false),
            unreachable_until: AtomicU64::new(0),
            store_failed: AtomicU64::new(0),
            clock: std::time::Instant::now(),
        });
        for i in 0..PREFETCHERS {
            let rx = rx.clone();
            let weak = Arc::downgrade(&shared);
            // A prefetcher that cannot start only costs read-ahead.
            let _ = std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .spawn(move || {
                    for job in rx {
                        let (Some(shared), Some(src)) = (weak.upgrade(), job.source.upgrade())
                        else {
                            continue;
                        };
                        // Read-ahead serves a stream being read: it is demand too.
                        let _busy = shared.busy();
                        if let Err(e) = shared.ensure(&src, job.window.clone()) {
                            tracing::debug!(error = %e, "read-ahead failed");
                        }
                    }
                });
        }
        CachedOrigin { shared }
    }

    /// The origin behind the cache.
    pub fn inner(&self) -> &Arc<dyn Origin> {
        &self.shared.inner
    }

    /// `rel` as the tree records it: a version the cache holds, else opened at the origin.
    fn open_inner(&self, rel: &Path, seen: Seen) -> Result<Arc<Inner>, OriginError> {
        if let Some(inner) = self
            .open_recorded(rel, seen)
            .or_else(|| self.open_from_tier(rel, seen))
        {
            return Ok(inner);
        }
        self.open_cached(rel, Some(seen.mtime_ns))
    }

    /// `rel` as the tree records it, from the shared tier: the version a daemon fetched
    /// it as, with its first window, opened without asking the origin (checked against
    /// it only if a part the tier lacks must be fetched).
    fn open_from_tier(&self, rel: &Path, seen: Seen) -> Option<Arc<Inner>> {
        let tier = self.shared.tier.as_ref()?;
        let prefix = self.path_key(rel);
        let recorded = recorded_key(&prefix, seen);
        let version = tier.version(&recorded)?;
        if !version.starts_with(&recorded) {
            return None;
        }
        let inner = self.open_lazy(rel, version, prefix, seen)?;
        inner.fill_from_tier(0).then_some(inner)
    }

    /// `version` of `rel` opened without the origin, which is opened (and checked to
    /// hold that version) on the first miss.
    fn open_lazy(
        &self,
        rel: &Path,
        version: Vec<u8>,
        prefix: Vec<u8>,
        seen: Seen,
    ) -> Option<Arc<Inner>> {
        Inner::new(
            &self.shared,
            rel,
            version,
            prefix,
            seen.size,
            Upstream::Lazy(Mutex::new(None)),
        )
        .ok()
    }

    /// The manifest key prefix of every version of `rel`.
    fn path_key(&self, rel: &Path) -> Vec<u8> {
        let mut key = self.shared.inner.key().as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(rel.as_os_str().as_bytes());
        key.push(0);
        key
    }

    /// Opens `rel` at the origin and reads it through the cache. `seen_mtime` (the tree's
    /// record) names the version when given, so that [`CachedOrigin::open_recorded`]
    /// finds it again.
    fn open_cached(&self, rel: &Path, seen_mtime: Option<i64>) -> Result<Arc<Inner>, OriginError> {
        let prefix = self.path_key(rel);
        let shared = &self.shared;
        if shared.now_ms() < shared.unreachable_until.load(Ordering::Relaxed) {
            if let Some(cached) = self.whole(rel, &prefix) {
                return Ok(cached);
            }
        }
        let source = match shared.inner.open(rel) {
            Ok(source) => source,
            Err(e @ (OriginError::Vanished { .. } | OriginError::NotAFile { .. })) => {
                return Err(e)
            }
            Err(e) => {
                shared.mark_unreachable();
                return self.open_offline(rel, &prefix, e);
            }
        };
        // The tree's mtime names the version (a listing's is finer than a HEAD's), unless
        // the origin's differs from it even to the second: then the object was replaced
        // since the listing, and its chunks must not be found again under the tree's
        // record of the old version (a same-size edit would read as that version).
        let secs = |ns: i64| ns.div_euclid(1_000_000_000);
        let seen_mtime = seen_mtime.filter(|seen| {
            source
                .mtime_ns()
                .is_none_or(|m| m == 0 || secs(m) == secs(*seen))
        });
        let version = shared.version_of(rel, &prefix, source.as_ref(), seen_mtime)?;
        let len = source.len();
        let inner = Inner::new(
            &self.shared,
            rel,
            version,
            prefix,
            len,
            Upstream::Open(source),
        )
        .map_err(|e| self.io_error(rel, e))?;
        Ok(inner)
    }

    /// A version of `rel` the cache holds (some of) that matches the tree's record,
    /// opened without asking the origin: the origin's file is opened, and checked to be
    /// that version, only if a part the cache lacks must be fetched.
    fn open_recorded(&self, rel: &Path, seen: Seen) -> Option<Arc<Inner>> {
        let prefix = self.path_key(rel);
        let versions = self
            .shared
            .cache
            .versions(&recorded_key(&prefix, seen))
            .ok()?;
        let version = versions.into_iter().next()?;
        let inner = self.open_lazy(rel, version, prefix, seen)?;
        // Nothing cached from the start on: no read would gain, open at the origin.
        inner.covered(0..1).then_some(inner)
    }

    /// The origin could not be reached: serve the newest version the cache holds whole.
    fn open_offline(
        &self,
        rel: &Path,
        prefix: &[u8],
        why: OriginError,
    ) -> Result<Arc<Inner>, OriginError> {
        match self.whole(rel, prefix) {
            Some(cached) => {
                if !self.shared.warned_offline.swap(true, Ordering::Relaxed) {
                    tracing::warn!(origin = %self.shared.inner.spec(), error = %why,
                        "origin unreachable: serving the versions its cache holds whole");
                }
                Ok(cached)
            }
            None => Err(why),
        }
    }

    /// The newest version of `rel` the cache holds whole, opened without the origin.
    fn whole(&self, rel: &Path, prefix: &[u8]) -> Option<Arc<Inner>> {
        let versions = self.shared.cache.versions(prefix).unwrap_or_default();
        for version in versions {
            let Some(len) = version_len(prefix, &version) else {
                continue;
            };
            let Ok(inner) = Inner::new(
                &self.shared,
                rel,
                version,
                prefix.to_vec(),
                len,
                Upstream::None,
            ) else {
                continue;
            };
            if inner.complete() {
                return Some(inner);
            }
        }
        None
    }

    /// Whether `rel` can be read with the origin unreachable (a version is cached whole).
    pub fn cached_whole(&self, rel: &Path) -> bool {
        let prefix = self.path_key(rel);
        let versions = self.shared.cache.versions(&prefix).unwrap_or_default();
        versions.into_iter().any(|version| {
            version_len(&prefix, &version).is_some_and(|len| {
                Inner::new(
                    &self.shared,
                    rel,
                    version,
                    prefix.clone(),
                    len,
                    Upstream::None,
                )
                .is_ok_and(|i| i.complete())
            })
        })
    }

    fn io_error(&self, rel: &Path, source: io::Error) -> OriginError {
        OriginError::Io {
            origin: self.shared.inner.spec().to_string(),
            op: "read",
            rel: rel.to_path_buf(),
            source,
        }
    }
}

impl Origin for CachedOrigin {
    fn spec(&self) -> &OriginSpec {
        self.shared.inner.spec()
    }

    fn remote(&self) -> Option<&super::remote::Remote> {
        self.shared.inner.remote()
    }

    fn key(&self) -> &OsStr {
        self.shared.inner.key()
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        self.shared.inner.list(dir, each)
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        self.shared.inner.stat(rel)
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        Ok(Arc::new(CachedSource(self.open_cached(rel, None)?)))
    }

    fn open_seen(&self, rel: &Path, seen: Seen) -> Result<Arc<dyn Source>, OriginError> {
        Ok(Arc::new(CachedSource(self.open_inner(rel, seen)?)))
    }

    fn warm(
        &self,
        rel: &Path,
        seen: Seen,
        bytes: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, OriginError> {
        let inner = self.open_inner(rel, seen)?;
        if matches!(inner.origin, Upstream::None) {
            // Served offline: nothing can be fetched now.
            return Ok(0);
        }
        let end = bytes.min(inner.len);
        let (mut at, mut fetched) = (0u64, 0u64);
        while at < end {
            if stop() {
                break;
            }
            self.shared.yield_to_demand();
            let w = inner.window_at(at).map_err(|e| self.io_error(rel, e))?;
            if !inner.covered(w.clone()) {
                let before = self.shared.counters.misses.load(Ordering::Relaxed);
                self.shared
                    .ensure(&inner, w.clone())
                    .map_err(|e| self.io_error(rel, e))?;
                if self.shared.counters.misses.load(Ordering::Relaxed) != before {
                    self.shared
                        .counters
                        .prefetched
                        .fetch_add(1, Ordering::Relaxed);
                }
                fetched += w.end - w.start;
            }
            at = w.end.max(at + 1);
        }
        Ok(fetched)
    }

    fn change_detection(&self) -> ChangeDetection {
        self.shared.inner.change_detection()
    }

    fn probe(&self, recorded: Option<&RootIdentity>) -> Health {
        self.shared.inner.probe(recorded)
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        self.shared.inner.root_identity()
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn as_local(&self) -> Option<&LocalOrigin> {
        None
    }

    fn readable_offline(&self, rel: &Path) -> bool {
        self.cached_whole(rel)
    }
}

/// An open file of a [`CachedOrigin`].
#[derive(Debug)]
pub struct CachedSource(Arc<Inner>);

struct Inner {
    shared: Arc<Shared>,
    rel: PathBuf,
    version: Arc<[u8]>,
    /// Every version of this path starts with it.
    prefix: Vec<u8>,
    len: u64,
    /// The origin's file.
    origin: Upstream,
    /// Where the tag region ends (`u64::MAX` until known).
    tag_end: AtomicU64,
    /// The manifest as far as known, by offset.
    chunks: RwLock<BTreeMap<u64, ChunkRef>>,
    /// The last chunk read (hash, bytes), kept for the next read of a sequential reader.
    last: Mutex<Option<(u128, Vec<u8>)>>,
    /// The file's first bytes as fetched to find the tag region, until window 0 is
    /// stored (so they cross the wire once); shared by every open source of the version.
    head: Arc<Head>,
    /// Where the previous read ended (to tell a sequential reader).
    next: AtomicU64,
    /// The last window the cache refused to store (start, bytes): readers are served from
    /// it rather than fetching it again.
    unstored: Mutex<Option<(u64, Vec<u8>)>>,
    _pin: Box<dyn Send + Sync>,
}

/// How an open file of a [`CachedOrigin`] reaches the origin's file.
enum Upstream {
    /// Opened with it.
    Open(Arc<dyn Source>),
    /// Opened from the tree's record: the origin's file is opened on the first miss.
    Lazy(Mutex<Option<Arc<dyn Source>>>),
    /// Opened offline: only the cache.
    None,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSource")
            .field("rel", &self.rel)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

const UNKNOWN: u64 = u64::MAX;

impl Inner {
    fn new(
        shared: &Arc<Shared>,
        rel: &Path,
        version: Vec<u8>,
        prefix: Vec<u8>,
        len: u64,
        origin: Upstream,
    ) -> io::Result<Arc<Inner>> {
        let pin = shared.cache.pin(&version);
        let chunks: BTreeMap<u64, ChunkRef> = shared
            .cache
            .manifest(&version)?
            .into_iter()
            .filter(|c| c.offset.saturating_add(u64::from(c.len)) <= len)
            .map(|c| (c.offset, c))
            .collect();
        let version: Arc<[u8]> = version.into();
        let head = {
            let mut heads = shared.heads.lock().unwrap_or_else(|p| p.into_inner());
            match heads.get(&version).and_then(std::sync::Weak::upgrade) {
                Some(h) => h,
                None => {
                    heads.retain(|_, h| h.strong_count() > 0);
                    let h = Arc::new(Mutex::new(Vec::new()));
                    heads.insert(Arc::clone(&version), Arc::downgrade(&h));
                    h
                }
            }
        };
        Ok(Arc::new(Inner {
            shared: Arc::clone(shared),
            rel: rel.to_path_buf(),
            version,
            prefix,
            len,
            origin,
            tag_end: AtomicU64::new(UNKNOWN),
            chunks: RwLock::new(chunks),
            last: Mutex::new(None),
            head,
            next: AtomicU64::new(0),
            unstored: Mutex::new(None),
            _pin: pin,
        }))
    }

    /// Whether the known chunks cover the whole file.
    fn complete(&self) -> bool {
        self.covered(0..self.len)
    }

    /// Whether the known chunks cover `range` without a gap.
    fn covered(&self, range: Range<u64>) -> bool {
        let chunks = self.chunks.read().unwrap_or_else(|p| p.into_inner());
        let mut at = range.start;
        if let Some((_, c)) = chunks.range(..=at).next_back() {
            at = at.max(c.offset + u64::from(c.len));
        }
        for (_, c) in chunks.range(range.start.saturating_add(1)..range.end) {
            if c.offset > at {
                return false;
            }
            at = at.max(c.offset + u64::from(c.len));
        }
        at >= range.end
    }

    /// The origin's file: opened at open, or now (once) for a version opened from the
    /// tree's record, checked to be that version.
    fn origin(&self) -> io::Result<Arc<dyn Source>> {
        let lazy = match &self.origin {
            Upstream::Open(source) => return Ok(Arc::clone(source)),
            Upstream::None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the origin is unreachable and this part of the file is not cached",
                ))
            }
            Upstream::Lazy(lazy) => lazy,
        };
        let mut slot = lazy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(source) = slot.as_ref() {
            return Ok(Arc::clone(source));
        }
        let shared = &self.shared;
        if shared.now_ms() < shared.unreachable_until.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the origin is unreachable and this part of the file is not cached",
            ));
        }
        let source = shared.inner.open(&self.rel).map_err(|e| {
            if !matches!(
                e,
                OriginError::Vanished { .. } | OriginError::NotAFile { .. }
            ) {
                shared.mark_unreachable();
            }
            io::Error::other(e)
        })?;
        let mtime = self
            .version
            .get(self.prefix.len() + 8..self.prefix.len() + 16)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_be_bytes);
        let now = shared
            .version_of(&self.rel, &self.prefix, source.as_ref(), mtime)
            .map_err(io::Error::other)?;
        if *now != *self.version {
            // Changed upstream since the tree recorded it: never mix two versions' bytes.
            // The next refresh publishes the new version and a new open reads it.
            return Err(io::Error::new(
                io::ErrorKind::StaleNetworkFileHandle,
                format!(
                    "{} changed at the origin since it was listed; it will be re-read after \
                     the next refresh",
                    self.rel.display()
                ),
            ));
        }
        *slot = Some(Arc::clone(&source));
        Ok(source)
    }

    /// Reads `range` from the origin, exactly.
    fn fetch(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let n = self.origin()?.read_at(&mut buf, range.start)?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the origin's file is shorter than recorded ({} bytes at {})",
                    n, range.start
                ),
            ));
        }
        Ok(buf)
    }

    /// Where the tag region ends, fetching (and caching) the head if needed.
    fn tag_end(&self) -> io::Result<u64> {
        let known = self.tag_end.load(Ordering::Acquire);
        if known != UNKNOWN {
            return Ok(known);
        }
        let mut want = HEAD.min(self.len);
        // What other sources of this version stored since this one opened counts too.
        self.reload()?;
        if self.cached_prefix() == 0 {
            // The file's first window from the shared tier, if a daemon recorded it: the
            // layout is then found without the origin.
            self.fill_from_tier(0);
        }
        let cached = self.cached_prefix().min(MAX_TAG_REGION);
        if cached > 0 {
            let head = self.read_plain(0..cached)?;
            match self.shared.chunking.tag_end(&head, self.len) {
                Ok(end) if end <= cached => {
                    self.tag_end.store(end, Ordering::Release);
                    return Ok(end);
                }
                Err(need) => want = want.max(need.min(self.len)),
                Ok(_) => {}
            }
        }
        let end = loop {
            let head = self.head_bytes(want)?;
            match self.shared.chunking.tag_end(&head, self.len) {
                Ok(end) if end <= self.len && end <= MAX_TAG_REGION => break end,
                Ok(_) => break 0,
                Err(need) if need > want && need <= self.len && need <= MAX_TAG_REGION => {
                    want = need
                }
                Err(_) => break 0,
            }
        };
        self.tag_end.store(end, Ordering::Release);
        Ok(end)
    }

    /// How many bytes from the start of the file the cache holds without a gap.
    fn cached_prefix(&self) -> u64 {
        let chunks = self.chunks.read().unwrap_or_else(|p| p.into_inner());
        let mut at = 0u64;
        for c in chunks.values() {
            if c.offset > at {
                break;
            }
            at = at.max(c.offset + u64::from(c.len));
        }
        at.min(self.len)
    }

    /// Learns the chunks other readers stored for this version since it was opened.
    fn reload(&self) -> io::Result<()> {
        let fresh = self.shared.cache.manifest(&self.version)?;
        let mut chunks = self.chunks.write().unwrap_or_else(|p| p.into_inner());
        for c in fresh {
            if c.offset.saturating_add(u64::from(c.len)) <= self.len {
                chunks.entry(c.offset).or_insert(c);
            }
        }
        Ok(())
    }

    /// The file's first `want` bytes: from the cache when it holds them, else fetched
    /// (only what was not fetched before) and kept for window 0.
    fn head_bytes(&self, want: u64) -> io::Result<Vec<u8>> {
        if self.covered(0..want) {
            return self.read_plain(0..want);
        }
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let have = head.len() as u64;
        if have == 0 {
            // Another source may have stored the head and let its copy go meanwhile.
            self.reload()?;
            if self.covered(0..want) {
                drop(head);
                return self.read_plain(0..want);
            }
        }
        if have < want {
            let more = self.fetch(have..want)?;
            head.extend_from_slice(&more);
        }
        Ok(head[..want as usize].to_vec())
    }

    /// Bytes of `range` from the cache when it holds them all, else from the origin
    /// (not stored: used to find the layout before any window can be cut).
    fn read_plain(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        if self.covered(range.clone()) {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            if self.copy_cached(&mut buf, range.start)? == buf.len() {
                return Ok(buf);
            }
        }
        self.fetch(range)
    }

    /// The window holding `offset`.
    fn window_at(&self, offset: u64) -> io::Result<Range<u64>> {
        let tag_end = self.tag_end()?;
        if offset < tag_end {
            return Ok(0..tag_end);
        }
        let w = self.shared.chunking.window_at(self.len, tag_end, offset);
        if w.start > offset || w.end <= offset || w.end > self.len {
            return Err(io::Error::other(format!(
                "the chunker placed offset {offset} in window {w:?} of a {}-byte file",
                self.len
            )));
        }
        Ok(w)
    }

    /// Copies what the cache holds from `offset` into `buf`; returns how much (stops at
    /// the first byte it lacks).
    fn copy_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let c = {
                let chunks = self.chunks.read().unwrap_or_else(|p| p.into_inner());
                match chunks.range(..=at).next_back() {
                    Some((_, c)) if at < c.offset + u64::from(c.len) => *c,
                    _ => break,
                }
            };
            let n = self.with_chunk(&c, |bytes| {
                let from = (at - c.offset) as usize;
                let n = (bytes.len() - from).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&bytes[from..from + n]);
                n
            })?;
            match n {
                Some(n) => done += n,
                None => {
                    // Gone or damaged in the cache: forget it here, fetch it again.
                    self.chunks
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&c.offset);
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Copies from bytes fetched but not in the cache: the window the cache refused, or
    /// the file's first bytes fetched to find the tag region (past a short tag region
    /// they answer the first read without waiting for the next window). Returns how much.
    fn copy_uncached(&self, buf: &mut [u8], offset: u64) -> usize {
        let unstored = self.unstored.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((start, bytes)) = unstored.as_ref() {
            let n = copy_at(buf, offset, *start, bytes);
            if n > 0 {
                return n;
            }
        }
        drop(unstored);
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        copy_at(buf, offset, 0, &head)
    }

    /// Runs `f` on chunk `c`'s bytes (from the last chunk read, or the cache); `None` when
    /// the cache no longer has it.
    fn with_chunk<R>(&self, c: &ChunkRef, f: impl FnOnce(&[u8]) -> R) -> io::Result<Option<R>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((hash, bytes)) = last.as_ref() {
            if *hash == c.hash && bytes.len() == c.len as usize {
                return Ok(Some(f(bytes)));
            }
        }
        let mut bytes = match last.take() {
            Some((_, v)) => v,
            None => Vec::with_capacity(c.len as usize),
        };
        if !self.shared.cache.read(c, &mut bytes)? || bytes.len() != c.len as usize {
            return Ok(None);
        }
        let out = f(&bytes);
        *last = Some((c.hash, bytes));
        Ok(Some(out))
    }

    /// Makes sure window `w` is in the cache: fetched once however many readers ask.
    fn ensure(self: &Arc<Self>, w: Range<u64>) -> io::Result<()> {
        self.shared.ensure(self, w)
    }

    /// The window of this version starting at `start` from the shared tier, each chunk
    /// checked against its hash, stored in the local cache. Whether it was.
    fn fill_from_tier(&self, start: u64) -> bool {
        let Some(tier) = &self.shared.tier else {
            return false;
        };
        let Some(refs) = tier.window(&self.version, start) else {
            return false;
        };
        let counters = &self.shared.counters;
        let mut at = start;
        let mut data = Vec::new();
        for c in &refs {
            if c.offset != at || c.len == 0 || c.end() > self.len {
                counters.tier_bad.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let good = tier
                .chunk(c)
                .filter(|b| b.len() == c.len as usize && musicfs_chunker::hash(b) == c.hash);
            let Some(bytes) = good else {
                tracing::debug!(rel = %self.rel.display(), offset = c.offset,
                    "the shared tier lacks a chunk or holds it damaged: fetched from the origin");
                counters.tier_bad.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            data.extend_from_slice(&bytes);
            at = c.end();
        }
        if refs.is_empty() || self.shared.cache.put(&self.version, &refs, &data).is_err() {
            return false;
        }
        let mut chunks = self.chunks.write().unwrap_or_else(|p| p.into_inner());
        for c in refs {
            chunks.insert(c.offset, c);
        }
        counters.tier_hits.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Fetches window `w`, cuts it and stores its chunks.
    fn fill(&self, w: Range<u64>) -> io::Result<()> {
        let tag_end = self.tag_end()?;
        if tag_end > 0 && w == (0..tag_end) {
            let head = self.head_window(tag_end)?;
            let fresh = self
                .chunks
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            self.store(0, &head)?;
            if fresh {
                self.try_adopt(tag_end, &head)?;
                self.forget_others();
            }
            let mut kept = self.head.lock().unwrap_or_else(|p| p.into_inner());
            if tag_end >= kept.len() as u64 {
                *kept = Vec::new();
            }
            return Ok(());
        }
        let bytes = self.fetch_window(w.clone())?;
        self.store(w.start, &bytes)?;
        // The head's bytes are in the cache now: the memory copy can go (only after the
        // store, so another source never finds neither).
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if w.start < head.len() as u64 && w.end >= head.len() as u64 {
            *head = Vec::new();
        }
        Ok(())
    }

    /// Fetches window `w`, using what finding the tag region fetched beyond it.
    fn fetch_window(&self, w: Range<u64>) -> io::Result<Vec<u8>> {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let have = head.len() as u64;
        if w.start >= have {
            drop(head);
            return self.fetch(w);
        }
        let bytes = head[w.start as usize..have.min(w.end) as usize].to_vec();
        drop(head);
        let mut bytes = bytes;
        let got = w.start + bytes.len() as u64;
        if got < w.end {
            bytes.extend_from_slice(&self.fetch(got..w.end)?);
        }
        Ok(bytes)
    }

    /// The tag region's bytes, `0..tag_end`: what finding it fetched, plus the rest.
    fn head_window(&self, tag_end: u64) -> io::Result<Vec<u8>> {
        self.fetch_window(0..tag_end)
    }

    /// Cuts `bytes` (a window starting at `start`) and stores its chunks.
    fn store(&self, start: u64, bytes: &[u8]) -> io::Result<()> {
        let tag_end = self.tag_end()?;
        let refs = self.shared.chunking.cut(self.len, tag_end, start, bytes);
        let mut at = start;
        for c in &refs {
            if c.offset != at || c.len == 0 {
                return Err(io::Error::other(format!(
                    "the chunker's cuts of {start}+{} do not tile it",
                    bytes.len()
                )));
            }
            at += u64::from(c.len);
        }
        if at != start + bytes.len() as u64 {
            return Err(io::Error::other(format!(
                "the chunker's cuts of {start}+{} do not cover it",
                bytes.len()
            )));
        }
        if let Some(tier) = &self.shared.tier {
            tier.offer(&self.version, self.prefix.len() + 16, start, &refs, bytes);
        }
        if let Err(e) = self.shared.cache.put(&self.version, &refs, bytes) {
            // A cache that cannot take the window (disk full, a damaged pack) must not
            // fail the read: the window is served from memory and the cache is tried
            // again on the next miss.
            let shared = &self.shared;
            let before = shared
                .store_failed
                .swap(shared.now_ms() + 1, Ordering::Relaxed);
            if before == 0 || shared.now_ms() + 1 >= before + STORE_QUIET_MS {
                tracing::warn!(origin = %shared.inner.spec(), rel = %self.rel.display(),
                    error = %e, "the chunk cache cannot store what was fetched: serving \
                    it uncached (readahead paused)");
            }
            *self.unstored.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((start, bytes.to_vec()));
            return Ok(());
        }
        let mut chunks = self.chunks.write().unwrap_or_else(|p| p.into_inner());
        for c in refs {
            chunks.insert(c.offset, c);
        }
        Ok(())
    }

    /// Once a new version of the file is being cached, its earlier versions are dropped
    /// (what they share with it stays): one version per path, so a file served offline is
    /// always the newest one read.
    fn forget_others(&self) {
        let versions = self.shared.cache.versions(&self.prefix).unwrap_or_default();
        for old in versions.iter().filter(|v| **v != *self.version) {
            if let Err(e) = self.shared.cache.forget(old) {
                tracing::debug!(rel = %self.rel.display(), error = %e, "an earlier version stays cached");
            }
        }
    }

    /// For a version seen for the first time, once its tag region (`new_head`, ending at
    /// `tag_end`) is stored: reuses an earlier version's audio chunks when that version's
    /// audio is the same (see the module documentation). Returns whether it did.
    fn try_adopt(&self, tag_end: u64, new_head: &[u8]) -> io::Result<bool> {
        let audio = self.len - tag_end;
        let versions = self.shared.cache.versions(&self.prefix).unwrap_or_default();
        for old in versions.iter().filter(|v| **v != *self.version) {
            let Some(old_len) = version_len(&self.prefix, old) else {
                continue;
            };
            if old_len < audio {
                continue;
            }
            let Ok(then) = Inner::new(
                &self.shared,
                &self.rel,
                old.clone(),
                self.prefix.clone(),
                old_len,
                Upstream::None,
            ) else {
                continue;
            };
            let Ok(old_tag_end) = then.tag_end() else {
                continue;
            };
            if old_len - old_tag_end != audio || !then.covered(old_tag_end..old_len) {
                continue;
            }
            let Ok(old_head) = then.read_plain(0..old_tag_end) else {
                continue;
            };
            if !self.shared.chunking.same_audio(&old_head, new_head) {
                continue;
            }
            let sample = SAMPLE.min(audio);
            if sample > 0 {
                let mine = self.fetch(self.len - sample..self.len)?;
                let Ok(theirs) = then.read_plain(old_len - sample..old_len) else {
                    continue;
                };
                if mine != theirs {
                    continue;
                }
            }
            let shift = |c: &ChunkRef| ChunkRef {
                offset: c.offset - old_tag_end + tag_end,
                ..*c
            };
            let moved: Vec<ChunkRef> = then
                .chunks
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .range(old_tag_end..)
                .map(|(_, c)| shift(c))
                .collect();
            if self.shared.cache.adopt(&self.version, &moved)? {
                tracing::debug!(rel = %self.rel.display(), chunks = moved.len(),
                    "an edited file's audio was found in the cache under its earlier version");
                let mut chunks = self.chunks.write().unwrap_or_else(|p| p.into_inner());
                for c in moved {
                    chunks.insert(c.offset, c);
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn read(self: &Arc<Self>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        let mut done = 0usize;
        while done < want {
            let at = offset + done as u64;
            let n = match self.copy_cached(&mut buf[done..want], at)? {
                0 => self.copy_uncached(&mut buf[done..want], at),
                n => {
                    self.shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                    n
                }
            };
            if n > 0 {
                done += n;
                continue;
            }
            // Another reader of this version may have stored it since.
            let _busy = self.shared.busy();
            self.reload()?;
            let n = self.copy_cached(&mut buf[done..want], at)?;
            if n > 0 {
                done += n;
                continue;
            }
            let w = self.window_at(at)?;
            self.ensure(w.clone())?;
            let n = match self.copy_cached(&mut buf[done..want], at)? {
                0 => self.copy_uncached(&mut buf[done..want], at),
                n => n,
            };
            if n == 0 {
                // Stored but not readable back (evicted at once, or a damaged disk):
                // serve from the origin rather than loop.
                let end = (at + (want - done) as u64).min(w.end.max(at + 1));
                let bytes = self.fetch(at..end)?;
                buf[done..done + bytes.len()].copy_from_slice(&bytes);
                done += bytes.len();
            } else {
                done += n;
            }
        }
        self.read_ahead(offset, offset + done as u64);
        Ok(done)
    }

    /// After a read of `range`: when it continued the previous one, queues the next
    /// windows the cache lacks.
    fn read_ahead(self: &Arc<Self>, start: u64, end: u64) {
        let sequential = self.next.swap(end, Ordering::Relaxed) == start;
        if !sequential
            || matches!(self.origin, Upstream::None)
            || self.shared.opts.readahead == 0
            || self.shared.store_failing()
        {
            return;
        }
        let mut at = end;
        for _ in 0..self.shared.opts.readahead {
            if at >= self.len {
                break;
            }
            let Ok(w) = self.window_at(at) else {
                return;
            };
            if !self.covered(w.clone()) && !self.shared.in_flight(&self.version, w.start) {
                let job = Prefetch {
                    source: Arc::downgrade(self),
                    window: w.clone(),
                };
                if self.shared.ahead.try_send(job).is_err() {
                    return;
                }
            }
            at = w.end;
        }
    }
}

/// A read waiting on the origin, counted in [`Shared::demand`] while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest prefetch waits for reads being served before it goes on anyway (a
/// stream reading without pause must not starve prefetch for good).
const YIELD_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl Shared {
    /// Counts a read waiting on the origin until the guard drops.
    fn busy(&self) -> Busy<'_> {
        self.demand.fetch_add(1, Ordering::Relaxed);
        Busy(&self.demand)
    }

    /// Waits (up to [`YIELD_MAX`]) until no read is waiting on the origin.
    fn yield_to_demand(&self) {
        let started = std::time::Instant::now();
        while self.demand.load(Ordering::Relaxed) > 0 && started.elapsed() < YIELD_MAX {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn in_flight(&self, version: &Arc<[u8]>, start: u64) -> bool {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(Arc::clone(version), start))
    }

    fn ensure(&self, src: &Arc<Inner>, w: Range<u64>) -> io::Result<()> {
        if src.covered(w.clone()) {
            return Ok(());
        }
        let key = (Arc::clone(&src.version), w.start);
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f = Arc::new(Flight::default());
                    flights.insert(key.clone(), Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if leader {
            // Another source of this version may have fetched the window and ended its
            // flight between this source's look at its own manifest and now: learn what
            // the cache holds before fetching again.
            let outcome = match src.reload() {
                Ok(()) if src.covered(w.clone()) => Ok(()),
                _ if src.fill_from_tier(w.start) && src.covered(w.clone()) => Ok(()),
                _ => {
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    src.fill(w.clone()).map_err(|e| e.to_string())
                }
            };
            self.flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let failed = outcome.as_ref().err().cloned();
            *flight.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            flight.cv.notify_all();
            return match failed {
                None => Ok(()),
                Some(e) => Err(io::Error::other(e)),
            };
        }
        let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
        while done.is_none() {
            done = flight.cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
        // The leader stored the window in the cache; this reader's own view of the
        // manifest learns the chunks from there.
        match done.as_ref() {
            Some(Err(e)) => Err(io::Error::other(e.clone())),
            _ => {
                drop(done);
                src.reload()
            }
        }
    }
}

impl Source for CachedSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read(buf, offset)
    }

    fn len(&self) -> u64 {
        self.0.len
    }

    /// The ETag of the version this source serves (its version key names it after the
    /// length and mtime): which may be newer than the version the tree shows, when the
    /// origin replaced the object since the listing (or an earlier open cached the newer
    /// one under the same size and listed mtime). The FUSE layer compares it with the
    /// tree's, so such a handle never shares the old version's cached pages.
    /// The origin's mtime of the version served, when this source opened it at the origin
    /// (a source served from the cache knows only the tree's).
    fn mtime_ns(&self) -> Option<i64> {
        match &self.0.origin {
            Upstream::Open(source) => source.mtime_ns(),
            _ => None,
        }
    }

    fn token(&self) -> Option<ChangeToken> {
        let tag = self.0.version.get(self.0.prefix.len() + 16..)?;
        match std::str::from_utf8(tag) {
            Ok(tag) if !tag.is_empty() => Some(ChangeToken::ETag(tag.to_string())),
            _ => None,
        }
    }
}
