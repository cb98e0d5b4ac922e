//! The cached read path against an in-memory origin that counts what it serves, an
//! in-memory chunk cache and a toy format (`TAGS` + u32 length + tag bytes, then audio).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cached::*;
use super::*;

/// A file's bytes and ETag.
type Stored = (Arc<Vec<u8>>, String);

#[derive(Debug, Default)]
struct Files {
    files: Mutex<HashMap<String, Stored>>,
    served: AtomicU64,
    down: AtomicBool,
    /// Files opened at the origin.
    opens: AtomicU64,
}

#[derive(Debug)]
struct MemOrigin {
    spec: OriginSpec,
    files: Arc<Files>,
}

#[derive(Debug)]
struct MemSource {
    bytes: Arc<Vec<u8>>,
    etag: String,
    files: Arc<Files>,
}

fn offline() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "server down")
}

impl Source for MemSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.files.down.load(Ordering::SeqCst) {
            return Err(offline());
        }
        let start = (offset as usize).min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        self.files.served.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn token(&self) -> Option<ChangeToken> {
        Some(ChangeToken::ETag(self.etag.clone()))
    }
}

impl Origin for MemOrigin {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }
    fn key(&self) -> &OsStr {
        OsStr::new("mem://test")
    }
    fn list(&self, _: &Path, _: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        Ok(())
    }
    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        Err(OriginError::Vanished {
            origin: "mem".into(),
            rel: rel.into(),
            source: io::ErrorKind::NotFound.into(),
        })
    }
    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        if self.files.down.load(Ordering::SeqCst) {
            return Err(OriginError::Io {
                origin: "mem".into(),
                op: "open",
                rel: rel.into(),
                source: offline(),
            });
        }
        self.files.opens.fetch_add(1, Ordering::SeqCst);
        let files = self.files.files.lock().unwrap();
        let (bytes, etag) =
            files
                .get(rel.to_str().unwrap())
                .cloned()
                .ok_or_else(|| OriginError::Vanished {
                    origin: "mem".into(),
                    rel: rel.into(),
                    source: io::ErrorKind::NotFound.into(),
                })?;
        Ok(Arc::new(MemSource {
            bytes,
            etag,
            files: Arc::clone(&self.files),
        }))
    }
    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }
    fn probe(&self, _: Option<&RootIdentity>) -> Health {
        Health::Up
    }
    fn root_identity(&self) -> Option<RootIdentity> {
        None
    }
}

#[derive(Debug, Default)]
struct MemCache {
    chunks: Mutex<HashMap<u128, Vec<u8>>>,
    manifests: Mutex<BTreeMap<Vec<u8>, BTreeMap<u64, ChunkRef>>>,
    used: Mutex<HashMap<Vec<u8>, u64>>,
    clock: AtomicU64,
    puts: AtomicU64,
    /// Refuse every put (a full disk).
    full: AtomicBool,
}

impl MemCache {
    fn touch(&self, version: &[u8]) {
        let t = self.clock.fetch_add(1, Ordering::SeqCst);
        self.used.lock().unwrap().insert(version.to_vec(), t);
    }
}

impl ChunkCache for MemCache {
    fn manifest(&self, version: &[u8]) -> io::Result<Vec<ChunkRef>> {
        self.touch(version);
        Ok(self
            .manifests
            .lock()
            .unwrap()
            .get(version)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default())
    }
    fn versions(&self, prefix: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let used = self.used.lock().unwrap();
        let mut v: Vec<Vec<u8>> = self
            .manifests
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        v.sort_by_key(|k| std::cmp::Reverse(used.get(k).copied().unwrap_or(0)));
        Ok(v)
    }
    fn read(&self, c: &ChunkRef, buf: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunks = self.chunks.lock().unwrap();
        match chunks.get(&c.hash) {
            Some(b) if xxhash_rust::xxh3::xxh3_128(b) == c.hash => {
                buf.clear();
                buf.extend_from_slice(b);
                Ok(true)
            }
            Some(_) => {
                chunks.remove(&c.hash);
                Ok(false)
            }
            None => Ok(false),
        }
    }
    fn put(&self, version: &[u8], refs: &[ChunkRef], data: &[u8]) -> io::Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut at = 0;
        let mut chunks = self.chunks.lock().unwrap();
        let mut manifests = self.manifests.lock().unwrap();
        let m = manifests.entry(version.to_vec()).or_default();
        for c in refs {
            chunks.insert(c.hash, data[at..at + c.len as usize].to_vec());
            at += c.len as usize;
            m.insert(c.offset, *c);
        }
        Ok(())
    }
    fn adopt(&self, version: &[u8], refs: &[ChunkRef]) -> io::Result<bool> {
        let chunks = self.chunks.lock().unwrap();
        if refs.iter().any(|c| !chunks.contains_key(&c.hash)) {
            return Ok(false);
        }
        let mut manifests = self.manifests.lock().unwrap();
        let m = manifests.entry(version.to_vec()).or_default();
        for c in refs {
            m.insert(c.offset, *c);
        }
        Ok(true)
    }
    fn forget(&self, version: &[u8]) -> io::Result<()> {
        self.manifests.lock().unwrap().remove(version);
        Ok(())
    }
    fn pin(&self, _: &[u8]) -> Box<dyn Send + Sync> {
        Box::new(())
    }
}

#[derive(Debug)]
struct Toy;

impl Chunking for Toy {
    fn tag_end(&self, head: &[u8], len: u64) -> Result<u64, u64> {
        if head.len() < 8 {
            return if len < 8 { Ok(0) } else { Err(8) };
        }
        if &head[..4] != b"TAGS" {
            return Ok(0);
        }
        Ok(8 + u64::from(u32::from_le_bytes(head[4..8].try_into().unwrap())))
    }
    fn window_at(&self, len: u64, tag_end: u64, offset: u64) -> std::ops::Range<u64> {
        let w = 16 << 10;
        let start = tag_end + (offset - tag_end) / w * w;
        start..(start + w).min(len)
    }
    fn cut(&self, _: u64, _: u64, start: u64, bytes: &[u8]) -> Vec<ChunkRef> {
        let mut at = start;
        bytes
            .chunks(1000)
            .map(|c| {
                let r = ChunkRef {
                    offset: at,
                    len: c.len() as u32,
                    hash: xxhash_rust::xxh3::xxh3_128(c),
                };
                at += c.len() as u64;
                r
            })
            .collect()
    }
    fn same_audio(&self, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

fn toy_file(tag: &[u8], audio_seed: u64, audio_len: usize) -> Vec<u8> {
    let mut f = b"TAGS".to_vec();
    f.extend_from_slice(&(tag.len() as u32).to_le_bytes());
    f.extend_from_slice(tag);
    let mut x = audio_seed | 1;
    for _ in 0..audio_len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f
}

struct Rig {
    files: Arc<Files>,
    cache: Arc<MemCache>,
    origin: CachedOrigin,
}

fn rig(readahead: u32) -> Rig {
    let files = Arc::new(Files::default());
    let cache = Arc::new(MemCache::default());
    let inner = Arc::new(MemOrigin {
        spec: OriginSpec::parse("s3://bucket/music").unwrap(),
        files: Arc::clone(&files),
    });
    let origin = CachedOrigin::new(
        inner,
        cache.clone(),
        Arc::new(Toy),
        CacheOptions { readahead },
    );
    Rig {
        files,
        cache,
        origin,
    }
}

impl Rig {
    fn put(&self, name: &str, bytes: Vec<u8>, etag: &str) {
        self.files
            .files
            .lock()
            .unwrap()
            .insert(name.into(), (Arc::new(bytes), etag.into()));
    }
    fn served(&self) -> u64 {
        self.files.served.load(Ordering::SeqCst)
    }
    fn read_all(&self, name: &str, piece: usize) -> io::Result<Vec<u8>> {
        let src = self
            .origin
            .open(Path::new(name))
            .map_err(io::Error::other)?;
        read_whole(src.as_ref(), piece)
    }
}

/// Every byte of `src`, read in pieces of `piece` bytes.
fn read_whole(src: &dyn Source, piece: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; src.len() as usize];
    let mut at = 0;
    while at < out.len() {
        let end = at.saturating_add(piece).min(out.len());
        let n = src.read_at(&mut out[at..end], at as u64)?;
        assert!(n > 0, "short read at {at}");
        at += n;
    }
    Ok(out)
}

#[test]
fn reads_are_exact_and_a_second_read_costs_nothing() {
    let r = rig(0);
    let f = toy_file(&[7u8; 3000], 1, 100_000);
    r.put("a.toy", f.clone(), "e1");
    assert_eq!(r.read_all("a.toy", 4096).unwrap(), f);
    let first = r.served();
    assert_eq!(first, f.len() as u64, "each byte fetched once");
    // Odd offsets and lengths, across windows and chunks.
    let src = r.origin.open(Path::new("a.toy")).unwrap();
    for (off, len) in [
        (0usize, 1usize),
        (3007, 20_000),
        (99_000, 9_008),
        (50_001, 1),
    ] {
        let mut buf = vec![0u8; len];
        let n = src.read_at(&mut buf, off as u64).unwrap();
        let end = (off + len).min(f.len());
        assert_eq!(&buf[..n], &f[off..end]);
    }
    assert_eq!(r.served(), first, "served from the cache");
}

#[test]
fn a_tag_edit_costs_the_tag_region_and_a_sample() {
    let r = rig(0);
    let old = toy_file(&[1u8; 6000], 9, 200_000);
    r.put("t.toy", old.clone(), "v1");
    assert_eq!(r.read_all("t.toy", 65536).unwrap(), old);
    for (tag, etag) in [(vec![2u8; 6000], "v2"), (vec![3u8; 7321], "v3")] {
        let new = toy_file(&tag, 9, 200_000);
        r.put("t.toy", new.clone(), etag);
        let before = r.served();
        assert_eq!(r.read_all("t.toy", 65536).unwrap(), new);
        let cost = r.served() - before;
        let tag_region = 8 + tag.len() as u64;
        assert!(
            cost <= tag_region + SAMPLE,
            "{cost} bytes for a tag region of {tag_region}"
        );
    }
    assert_eq!(
        r.cache.manifests.lock().unwrap().len(),
        1,
        "earlier versions are dropped once a new one is cached"
    );
}

#[test]
fn changed_audio_of_the_same_length_is_fetched_again() {
    let r = rig(0);
    let old = toy_file(&[1u8; 6000], 9, 50_000);
    r.put("c.toy", old.clone(), "v1");
    r.read_all("c.toy", 65536).unwrap();
    let new = toy_file(&[2u8; 6000], 10, 50_000);
    r.put("c.toy", new.clone(), "v2");
    let before = r.served();
    assert_eq!(r.read_all("c.toy", 65536).unwrap(), new);
    assert!(r.served() - before >= 50_000);
}

#[test]
fn a_cached_file_plays_offline_and_an_uncached_one_fails_fast() {
    let r = rig(0);
    let f = toy_file(b"x", 3, 40_000);
    r.put("here.toy", f.clone(), "1");
    r.put("never.toy", toy_file(b"y", 4, 40_000), "1");
    let open_before = r.origin.open(Path::new("here.toy")).unwrap();
    r.read_all("here.toy", 10_000).unwrap();
    assert!(r.origin.readable_offline(Path::new("here.toy")));
    assert!(!r.origin.readable_offline(Path::new("never.toy")));
    r.files.down.store(true, Ordering::SeqCst);
    assert_eq!(r.read_all("here.toy", 10_000).unwrap(), f);
    let mut buf = vec![0u8; 5000];
    assert_eq!(open_before.read_at(&mut buf, 30_000).unwrap(), 5000);
    assert_eq!(&buf[..], &f[30_000..35_000]);
    assert!(r.origin.open(Path::new("never.toy")).is_err());
    r.files.down.store(false, Ordering::SeqCst);
    assert!(r.read_all("never.toy", 10_000).is_ok(), "back online");
}

#[test]
fn an_open_file_whose_origin_went_away_fails_its_uncached_reads() {
    let r = rig(0);
    r.put("p.toy", toy_file(b"tag", 5, 80_000), "1");
    let src = r.origin.open(Path::new("p.toy")).unwrap();
    let mut buf = vec![0u8; 1000];
    src.read_at(&mut buf, 0).unwrap();
    r.files.down.store(true, Ordering::SeqCst);
    assert!(src.read_at(&mut buf, 70_000).is_err());
}

#[test]
fn concurrent_misses_of_one_window_are_fetched_once() {
    let r = Arc::new(rig(0));
    let f = toy_file(&[0u8; 100], 11, 16_000);
    r.put("m.toy", f.clone(), "1");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || r.read_all("m.toy", 777).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), f);
    }
    assert_eq!(r.served(), f.len() as u64);
}

#[test]
fn a_cache_that_cannot_store_still_serves_every_byte_fetched_once() {
    let r = rig(4);
    r.cache.full.store(true, Ordering::SeqCst);
    let f = toy_file(&[5u8; 2000], 13, 120_000);
    r.put("full.toy", f.clone(), "1");
    assert_eq!(r.read_all("full.toy", 4096).unwrap(), f);
    // Each window crosses the wire once for its readers, and readahead paused.
    assert_eq!(r.served(), f.len() as u64);
    // Room again: the next read stores.
    r.cache.full.store(false, Ordering::SeqCst);
    assert_eq!(r.read_all("full.toy", 4096).unwrap(), f);
    let before = r.served();
    assert_eq!(r.read_all("full.toy", 4096).unwrap(), f);
    assert_eq!(r.served(), before, "stored once the cache had room");
}

/// What the tree would record for `bytes` (the mtime is the test's own).
fn seen(bytes: &[u8], mtime_ns: i64) -> Seen {
    Seen {
        size: bytes.len() as u64,
        mtime_ns,
    }
}

fn read_seen(r: &Rig, name: &str, seen: Seen) -> io::Result<Vec<u8>> {
    let src = r
        .origin
        .open_seen(Path::new(name), seen)
        .map_err(io::Error::other)?;
    read_whole(src.as_ref(), usize::MAX)
}

#[test]
fn a_file_cached_as_the_tree_records_it_opens_without_asking_the_origin() {
    let r = rig(0);
    let f = toy_file(&[3u8; 2500], 21, 90_000);
    r.put("s.toy", f.clone(), "e1");
    assert_eq!(read_seen(&r, "s.toy", seen(&f, 7)).unwrap(), f);
    let opens = r.files.opens.load(Ordering::SeqCst);
    let served = r.served();
    for _ in 0..3 {
        assert_eq!(read_seen(&r, "s.toy", seen(&f, 7)).unwrap(), f);
    }
    assert_eq!(
        r.files.opens.load(Ordering::SeqCst),
        opens,
        "no origin open"
    );
    assert_eq!(r.served(), served);
    // Another record (a later mtime) is another version: asked at the origin.
    assert_eq!(read_seen(&r, "s.toy", seen(&f, 8)).unwrap(), f);
    assert_eq!(r.files.opens.load(Ordering::SeqCst), opens + 1);
}

/// Caches the first 3000 bytes of `name` only, opened as the tree records it.
fn cache_start(r: &Rig, name: &str, seen: Seen) {
    let src = r.origin.open_seen(Path::new(name), seen).unwrap();
    let mut buf = vec![0u8; 3000];
    src.read_at(&mut buf, 0).unwrap();
}

#[test]
fn a_partly_cached_file_checks_the_origin_on_a_miss_and_never_mixes_versions() {
    let r = rig(0);
    let old = toy_file(&[4u8; 2500], 22, 120_000);
    r.put("p.toy", old.clone(), "e1");
    cache_start(&r, "p.toy", seen(&old, 5));
    // The same version upstream: the rest is fetched after one origin open.
    let opens = r.files.opens.load(Ordering::SeqCst);
    assert_eq!(read_seen(&r, "p.toy", seen(&old, 5)).unwrap(), old);
    assert_eq!(r.files.opens.load(Ordering::SeqCst), opens + 1);

    // Changed upstream (same size) while the tree still records the old file: a miss
    // fails as stale rather than serving a mix of both.
    let r = rig(0);
    r.put("p.toy", old.clone(), "e1");
    cache_start(&r, "p.toy", seen(&old, 5));
    let new = toy_file(&[4u8; 2500], 23, 120_000);
    r.put("p.toy", new.clone(), "e2");
    let err = read_seen(&r, "p.toy", seen(&old, 5)).unwrap_err();
    assert!(err.to_string().contains("changed at the origin"), "{err}");
    // Once the tree records the new file, it reads whole and exact.
    assert_eq!(read_seen(&r, "p.toy", seen(&new, 6)).unwrap(), new);
}

#[test]
fn a_first_read_past_a_short_tag_region_is_answered_from_the_head_fetch() {
    let r = rig(0);
    let f = toy_file(&[9u8; 100], 31, 60_000);
    r.put("h.toy", f.clone(), "1");
    let src = r.origin.open(Path::new("h.toy")).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(src.read_at(&mut buf, 0).unwrap(), 4096);
    assert_eq!(buf, f[..4096]);
    assert_eq!(
        r.served(),
        4096,
        "the head fetch alone, no audio window yet"
    );
    // The next read fetches the window, reusing the head's bytes.
    let mut rest = vec![0u8; 8192];
    assert_eq!(src.read_at(&mut rest, 4096).unwrap(), 8192);
    assert_eq!(rest, f[4096..12_288]);
    assert_eq!(r.served(), 108 + (16 << 10), "each byte once");
}

#[test]
fn a_damaged_chunk_is_fetched_again_not_served() {
    let r = rig(0);
    let f = toy_file(b"t", 12, 30_000);
    r.put("d.toy", f.clone(), "1");
    r.read_all("d.toy", 30_000).unwrap();
    for bytes in r.cache.chunks.lock().unwrap().values_mut() {
        bytes[0] ^= 0xff;
    }
    assert_eq!(r.read_all("d.toy", 30_000).unwrap(), f);
}

#[test]
fn a_sequential_reader_has_the_next_windows_fetched_ahead() {
    let r = rig(2);
    let f = toy_file(b"t", 13, 200_000);
    r.put("s.toy", f.clone(), "1");
    let src = r.origin.open(Path::new("s.toy")).unwrap();
    let mut buf = vec![0u8; 4096];
    src.read_at(&mut buf, 0).unwrap();
    src.read_at(&mut buf, 4096).unwrap();
    // The prefetchers fill the next windows; wait until the cache has them (bounded).
    let want: HashSet<u64> = [9u64, 9 + 16384].into_iter().collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = r.cache.manifests.lock().unwrap();
        let offsets: HashSet<u64> = m.values().flat_map(|m| m.keys().copied()).collect();
        if want.is_subset(&offsets) {
            break;
        }
        drop(m);
        assert!(std::time::Instant::now() < deadline, "no read-ahead");
        std::thread::yield_now();
    }
}

/// A FLAC-shaped file: marker, STREAMINFO, a Vorbis comment of `comment`, padding, then
/// `audio` pseudo-random bytes.
fn flac_like(comment: &[u8], padding: usize, seed: u64, audio: usize) -> Vec<u8> {
    let mut f = b"fLaC".to_vec();
    let block = |f: &mut Vec<u8>, kind: u8, body: &[u8]| {
        let n = body.len() as u32;
        f.extend_from_slice(&[kind, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        f.extend_from_slice(body);
    };
    block(&mut f, 0, &[9u8; 34]);
    block(&mut f, 4, comment);
    block(&mut f, 0x80 | 1, &vec![0u8; padding]);
    let tail = toy_file(b"", seed, audio);
    f.extend_from_slice(&tail[8..]);
    f
}

#[test]
fn through_the_real_cas_and_chunker_a_tag_edit_costs_the_tag_region_and_a_sample() {
    let dir = tempfile::tempdir().unwrap();
    let cas =
        Arc::new(crate::cas::Cas::open(dir.path(), crate::cas::CasOptions::default()).unwrap());
    let files = Arc::new(Files::default());
    let inner = Arc::new(MemOrigin {
        spec: OriginSpec::parse("s3://bucket/music").unwrap(),
        files: Arc::clone(&files),
    });
    let origin = CachedOrigin::new(
        inner,
        cas.clone(),
        Arc::new(AudioChunking::default()),
        CacheOptions { readahead: 0 },
    );
    let r = Rig {
        files,
        cache: Arc::new(MemCache::default()),
        origin,
    };
    let old = flac_like(&[b'a'; 700], 8192, 21, 9 << 20);
    r.put("big.flac", old.clone(), "v1");
    assert_eq!(r.read_all("big.flac", 128 << 10).unwrap(), old);
    assert_eq!(r.served(), old.len() as u64);
    let new = flac_like(&[b'b'; 700], 8192, 21, 9 << 20);
    r.put("big.flac", new.clone(), "v2");
    let before = r.served();
    assert_eq!(r.read_all("big.flac", 128 << 10).unwrap(), new);
    let tag_region = 4 + 38 + 704 + 8196;
    let cost = r.served() - before;
    assert!(
        cost <= tag_region + SAMPLE,
        "{cost} bytes for a {tag_region}-byte tag region"
    );
    let report = cas.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Two in-memory origins holding the same file, for the failover source.
fn mirrors(bytes: &[u8]) -> (Vec<Arc<Files>>, Vec<super::Copy>) {
    let mut all = Vec::new();
    let mut copies = Vec::new();
    for (id, spec) in [(0u32, "s3://a/music"), (1, "s3://b/music")] {
        let files = Arc::new(Files::default());
        files.files.lock().unwrap().insert(
            "t.flac".to_owned(),
            (Arc::new(bytes.to_vec()), "e1".to_owned()),
        );
        let origin: Arc<dyn Origin> = Arc::new(MemOrigin {
            spec: OriginSpec::parse(spec).unwrap(),
            files: Arc::clone(&files),
        });
        copies.push(super::Copy {
            origin_id: id,
            origin,
            rel: "t.flac".into(),
            seen: Seen {
                size: bytes.len() as u64,
                mtime_ns: 0,
            },
        });
        all.push(files);
    }
    (all, copies)
}

#[test]
fn a_read_that_fails_continues_on_the_next_copy_at_the_same_offset() {
    let bytes = musicfs_chunker::noise(300_000, 7);
    let (files, copies) = mirrors(&bytes);
    let health = Arc::new(musicfs_core::health::OriginHealth::default());
    let source = FailoverSource::open(copies.clone(), health.clone()).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    while out.len() < bytes.len() {
        if out.len() >= 100_000 {
            files[0].down.store(true, Ordering::SeqCst);
        }
        let n = source.read_at(&mut buf, out.len() as u64).unwrap();
        assert!(n > 0);
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, bytes, "bit-exact across the switch");
    assert_eq!(source.current_origin(), 1);
    assert!(files[1].served.load(Ordering::SeqCst) >= 190_000);
    assert_eq!(health.take_read_errors(0), 1, "one failed read counted");

    // A new open while the first origin is known to fail starts at the second copy; once
    // it is back and the failure is old news, the first is used again.
    let again = FailoverSource::open(copies.clone(), health.clone()).unwrap();
    assert_eq!(again.current_origin(), 1);
    files[0].down.store(false, Ordering::SeqCst);
    health.set_offline(1, "gone");
    let back = FailoverSource::open(copies, health).unwrap();
    assert_eq!(back.current_origin(), 0, "the only usable copy");
}

#[test]
fn every_copy_down_is_an_error_not_a_hang_or_panic() {
    let (files, copies) = mirrors(b"0123456789");
    let health = Arc::new(musicfs_core::health::OriginHealth::default());
    let source = FailoverSource::open(copies.clone(), health.clone()).unwrap();
    for f in &files {
        f.down.store(true, Ordering::SeqCst);
    }
    let mut buf = [0u8; 4];
    assert!(source.read_at(&mut buf, 0).is_err());
    assert!(FailoverSource::open(copies, health).is_err());
}
