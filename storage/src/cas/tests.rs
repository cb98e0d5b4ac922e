use std::io::Write;

use musicfs_chunker::{chunk_file, Chunk, Params, Sizes};

use super::*;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    musicfs_chunker::noise(len, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn params() -> Params {
    Params {
        tag: Sizes::new(256, 1024, 4096).unwrap(),
        audio: Sizes::new(1024, 4096, 16384).unwrap(),
        window: 64 << 10,
    }
}

fn chunks_of(data: &[u8]) -> Vec<Chunk> {
    chunk_file(data, params()).1
}

fn opts() -> CasOptions {
    CasOptions {
        pack_size: 256 << 10,
        map_size: 64 << 20,
        ..CasOptions::default()
    }
}

fn put_file(cas: &Cas, key: &[u8], data: &[u8]) -> PutReport {
    cas.put_chunks(key, 0, data, &chunks_of(data)).unwrap()
}

fn read_all(cas: &Cas, key: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    let n = cas.read_at(key, 0, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn put_then_read_back_every_byte_and_verify() {
    for uring in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(
            dir.path(),
            CasOptions {
                io_uring: uring,
                ..opts()
            },
        )
        .unwrap();
        let data = noise(300_000, 1);
        let r = put_file(&cas, b"v1", &data);
        assert_eq!(r.new_bytes, data.len() as u64);
        assert_eq!(read_all(&cas, b"v1", data.len()), data);
        let mut mid = vec![0; 1000];
        assert_eq!(cas.read_at(b"v1", 123_456, &mut mid).unwrap(), 1000);
        assert_eq!(mid, &data[123_456..124_456]);
        let m = cas.manifest(b"v1").unwrap();
        assert_eq!(m.last().unwrap().end(), data.len() as u64);
        let mut buf = Vec::new();
        assert!(cas.get(m[0].hash, &mut buf).unwrap());
        assert!(!cas.get(12345, &mut buf).unwrap());
        let report = cas.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.bytes, data.len() as u64);
    }
}

#[test]
fn a_partly_cached_file_reads_up_to_its_first_gap() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(dir.path(), opts()).unwrap();
    let data = noise(200_000, 2);
    let (layout, _) = chunk_file(&data, params());
    let w = layout.align(0..1);
    let first = layout
        .chunk_range(w.start, &data[w.start as usize..w.end as usize])
        .unwrap();
    cas.put_chunks(b"v", 0, &data[..w.end as usize], &first)
        .unwrap();
    assert_eq!(read_all(&cas, b"v", data.len()).len() as u64, w.end);
    let mut tail = vec![0; 10];
    assert_eq!(cas.read_at(b"v", w.end + 5, &mut tail).unwrap(), 0);
}

#[test]
fn identical_chunks_are_stored_once_and_counted_as_shared() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(dir.path(), opts()).unwrap();
    let data = noise(250_000, 3);
    put_file(&cas, b"a", &data);
    let again = put_file(&cas, b"b", &data);
    assert_eq!(again.new_chunks, 0);
    let s = cas.stats().unwrap();
    assert_eq!(s.stored_bytes, data.len() as u64);
    assert_eq!(s.logical_bytes, 2 * data.len() as u64);
    assert_eq!(s.shared_chunks, s.chunks);
    assert!((s.dedup_ratio() - 2.0).abs() < 1e-9);
    cas.forget(b"a").unwrap();
    assert_eq!(cas.stats().unwrap().stored_bytes, data.len() as u64);
    cas.forget(b"b").unwrap();
    let s = cas.stats().unwrap();
    assert_eq!((s.chunks, s.stored_bytes, s.manifests), (0, 0, 0));
    assert!(cas.verify().unwrap().is_ok());
}

#[test]
fn a_corrupt_chunk_is_a_miss_and_leaves_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(100_000, 4);
    let victim;
    {
        let cas = Cas::open(dir.path(), opts()).unwrap();
        put_file(&cas, b"v", &data);
        victim = cas.manifest(b"v").unwrap()[1];
    }
    // The chunk was the second one written to the first pack.
    let pack = dir.path().join("packs/00000001.pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = victim.offset as usize + 10;
    bytes[at] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();

    let cas = Cas::open(dir.path(), opts()).unwrap();
    let report = cas.verify().unwrap();
    assert!(matches!(report.problems[..], [Problem::BadChunk { hash, .. }] if hash == victim.hash));
    let mut buf = Vec::new();
    assert!(!cas.get(victim.hash, &mut buf).unwrap());
    assert!(buf.is_empty());
    assert!(cas
        .manifest(b"v")
        .unwrap()
        .iter()
        .all(|e| e.hash != victim.hash));
    assert_eq!(read_all(&cas, b"v", data.len()).len() as u64, victim.offset);
    let report = cas.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn eviction_keeps_the_budget_and_pinned_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 400_000;
    let cas = Cas::open(dir.path(), CasOptions { budget, ..opts() }).unwrap();
    let pinned_data = noise(150_000, 100);
    put_file(&cas, b"pinned", &pinned_data);
    let _pin = cas.pin(b"pinned");
    for i in 0..10u64 {
        put_file(&cas, format!("f{i}").as_bytes(), &noise(150_000, i + 1));
        let s = cas.stats().unwrap();
        assert!(s.stored_bytes <= budget, "{} > {budget}", s.stored_bytes);
        // Disk use: the budget plus at most one pack.
        assert!(
            s.disk_bytes <= budget + opts().pack_size + (64 << 10),
            "{s:?}"
        );
    }
    assert_eq!(read_all(&cas, b"pinned", pinned_data.len()), pinned_data);
    assert!(cas.manifest(b"f0").unwrap().is_empty());
    let f9 = noise(150_000, 10);
    assert_eq!(read_all(&cas, b"f9", f9.len()), f9);
    let report = cas.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    // The pack holding pinned chunks stays; the next one emptied and was deleted.
    assert!(dir.path().join("packs/00000001.pack").exists());
    assert!(!dir.path().join("packs/00000002.pack").exists());
}

#[test]
fn reads_refresh_the_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(
        dir.path(),
        CasOptions {
            budget: 320_000,
            ..opts()
        },
    )
    .unwrap();
    let a = noise(150_000, 1);
    put_file(&cas, b"a", &a);
    put_file(&cas, b"b", &noise(150_000, 2));
    assert_eq!(read_all(&cas, b"a", a.len()), a);
    put_file(&cas, b"c", &noise(150_000, 3));
    assert_eq!(read_all(&cas, b"a", a.len()), a);
    assert!(read_all(&cas, b"b", 150_000).len() < 150_000);
}

#[test]
fn reopening_cuts_a_torn_append_and_deletes_unknown_packs() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(120_000, 5);
    {
        let cas = Cas::open(dir.path(), opts()).unwrap();
        put_file(&cas, b"v", &data);
    }
    let pack = dir.path().join("packs/00000001.pack");
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&pack)
        .unwrap()
        .write_all(&noise(5000, 9))
        .unwrap();
    std::fs::write(dir.path().join("packs/00000007.pack"), b"half a chunk").unwrap();
    {
        let cas = Cas::open(dir.path(), opts()).unwrap();
        assert_eq!(std::fs::metadata(&pack).unwrap().len(), len);
        assert!(!dir.path().join("packs/00000007.pack").exists());
        let report = cas.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(read_all(&cas, b"v", data.len()), data);
        // Appending goes on after the committed bytes.
        put_file(&cas, b"w", &noise(50_000, 6));
        assert!(cas.verify().unwrap().is_ok());
    }
}

#[test]
fn a_second_open_is_refused_while_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _cas = Cas::open(dir.path(), opts()).unwrap();
    assert!(matches!(
        Cas::open(dir.path(), opts()),
        Err(CasError::Locked { .. })
    ));
}

#[test]
fn chunks_that_do_not_match_their_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(dir.path(), opts()).unwrap();
    let data = noise(10_000, 7);
    let mut chunks = chunks_of(&data);
    chunks[0].hash ^= 1;
    assert!(matches!(
        cas.put_chunks(b"v", 0, &data, &chunks),
        Err(CasError::BadInput(_))
    ));
    let outside = [Chunk {
        offset: 9_000,
        len: 2_000,
        hash: 0,
    }];
    assert!(matches!(
        cas.put_chunks(b"v", 0, &data, &outside),
        Err(CasError::BadInput(_))
    ));
    assert!(cas.verify().unwrap().is_ok());
}

#[test]
fn a_lowered_budget_and_a_clear_take_effect_at_once_sparing_pinned_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(dir.path(), opts()).unwrap();
    put_file(&cas, b"a", &noise(200_000, 3));
    put_file(&cas, b"b", &noise(200_000, 4));
    let before = cas.stats().unwrap();
    assert!(before.stored_bytes >= 400_000);
    let evicted = cas.set_budget(250_000).unwrap();
    assert!(evicted > 0);
    assert_eq!(cas.budget(), 250_000);
    let after = cas.stats().unwrap();
    assert!(after.stored_bytes <= 250_000, "{after:?}");
    assert_eq!(after.budget, 250_000);
    let pinned = cas.pin(b"b");
    let kept = cas.stats().unwrap().chunks;
    cas.clear().unwrap();
    let cleared = cas.stats().unwrap();
    assert!(cleared.chunks > 0 && cleared.chunks <= kept);
    assert_eq!(read_all(&cas, b"a", 10), Vec::<u8>::new());
    drop(pinned);
    cas.clear().unwrap();
    assert_eq!(cas.stats().unwrap().chunks, 0);
    assert!(cas.evicted_total() >= evicted + cleared.chunks);
}

#[test]
fn an_index_cut_shorter_than_committed_is_refused_not_a_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cas = Cas::open(dir.path(), opts()).unwrap();
        for i in 0..8 {
            put_file(&cas, format!("v{i}").as_bytes(), &noise(400_000, i));
        }
    }
    let data = dir.path().join("index").join("data.mdb");
    let len = std::fs::metadata(&data).unwrap().len();
    assert!(len > 4 * 4096, "{len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let Err(err) = Cas::open(dir.path(), opts()) else {
        panic!("a cut index must not open");
    };

    assert!(matches!(err, CasError::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("cut short"), "{err}");
}
