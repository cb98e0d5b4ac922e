//! The catalog's map grows on demand, also while other threads read.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use musicfs_core::meta::{Format, OriginId, ScanState, TrackMeta, TrackRecord};
use musicfs_storage::{Catalog, Upsert};

const TINY_MAP: usize = 64 * 1024;

/// A track whose content is derived from `n`, so a reader can check it is whole.
fn track(origin: OriginId, n: u64, lyrics_len: usize) -> Upsert {
    Upsert {
        origin,
        rel_path: format!("album {}/track {n:05}.flac", n / 10).into_bytes(),
        format: Format::Flac,
        scan: ScanState {
            size: n,
            mtime_ns: n as i64,
            ino: n,
            ctime_ns: n as i64,
            perm: None,
        },
        meta: TrackMeta {
            title: Some(format!("Track {n}")),
            lyrics: Some(format!("{n:08}").repeat(lyrics_len / 8)),
            ..TrackMeta::default()
        },
    }
}

fn assert_whole(record: &TrackRecord) {
    let n = record.scan.size;
    assert_eq!(record.meta.title, Some(format!("Track {n}")));
    let lyrics = record.meta.lyrics.as_deref().unwrap_or_default();
    assert!(lyrics.starts_with(&format!("{n:08}")), "torn record {n}");
    assert_eq!(
        record.rel_path,
        format!("album {}/track {n:05}.flac", n / 10).into_bytes()
    );
}

#[test]
fn the_map_grows_when_a_write_does_not_fit_and_the_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let count = 120u64;
    {
        let catalog = Catalog::open_with_map_size(dir.path(), TINY_MAP).unwrap();
        let origin = catalog.origin_id(Path::new("/music")).unwrap();
        // One big transaction (several MiB) and then many small ones.
        let first: Vec<Upsert> = (0..40).map(|n| track(origin, n, 100_000)).collect();
        catalog.apply(&first, &[]).unwrap();
        for n in 40..count {
            catalog.apply(&[track(origin, n, 100_000)], &[]).unwrap();
        }
        assert_eq!(catalog.len().unwrap(), count);
    }
    let file_len = std::fs::metadata(dir.path().join("data.mdb"))
        .unwrap()
        .len();
    assert!(
        file_len > 64 * TINY_MAP as u64,
        "{file_len} bytes: the data cannot fit the initial map, so it must have grown"
    );

    let catalog = Catalog::open_with_map_size(dir.path(), TINY_MAP).unwrap();
    let mut seen = 0;
    catalog
        .for_each(|record| {
            assert_whole(&record);
            seen += 1;
        })
        .unwrap();
    assert_eq!(seen, count);
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    catalog
        .apply(&[track(origin, count, 200_000)], &[])
        .unwrap();
    assert_eq!(catalog.len().unwrap(), count + 1);
}

#[test]
fn readers_see_whole_consistent_records_while_a_writer_grows_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::open_with_map_size(dir.path(), TINY_MAP).unwrap());
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let catalog = Arc::clone(&catalog);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut last_len = 0;
                let mut rounds = 0u64;
                // At least one round after the writer finished, so the end state is read too.
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let len = catalog.len().unwrap();
                    assert!(len >= last_len, "tracks disappeared: {last_len} -> {len}");
                    last_len = len;
                    match reader {
                        0 => catalog.for_each(|record| assert_whole(&record)).unwrap(),
                        1 => {
                            for (path, (id, state)) in catalog.scan_states(origin).unwrap() {
                                let record = catalog.get(id).unwrap().expect("indexed track");
                                assert_eq!(record.rel_path, path);
                                assert_eq!(record.scan, state);
                                assert_whole(&record);
                            }
                        }
                        _ => {
                            let n = rounds % 200;
                            let path = format!("album {}/track {n:05}.flac", n / 10);
                            if let Some(record) = catalog.find(origin, path.as_bytes()).unwrap() {
                                assert_whole(&record);
                            }
                        }
                    }
                    rounds += 1;
                    if finished {
                        return (rounds, last_len);
                    }
                }
            })
        })
        .collect();

    for batch in 0..20u64 {
        let ups: Vec<Upsert> = (batch * 10..batch * 10 + 10)
            .map(|n| track(origin, n, 60_000))
            .collect();
        catalog.apply(&ups, &[]).unwrap();
    }
    done.store(true, Ordering::Release);

    for reader in readers {
        let (rounds, last_len) = reader.join().expect("reader panicked");
        assert!(rounds >= 1);
        assert_eq!(last_len, 200);
    }
}
