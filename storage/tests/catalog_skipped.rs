//! The `skipped` table: files the scanner could not catalog, remembered so an unchanged
//! broken file is not opened again, and written in the same transaction as track changes.

use std::collections::HashMap;
use std::path::Path;

use musicfs_core::meta::{Format, OriginId, ScanState, TrackMeta};
use musicfs_storage::{Batch, Catalog, CatalogError, SkipRecord, Upsert};

fn scan(size: u64) -> ScanState {
    ScanState {
        size,
        mtime_ns: 1_700_000_000_000_000_000 + size as i64,
        ino: size + 100,
        ctime_ns: 42,
        perm: None,
    }
}

fn skip(origin: OriginId, rel_path: &[u8], reason: &str) -> SkipRecord {
    SkipRecord {
        origin,
        rel_path: rel_path.to_vec(),
        scan: scan(rel_path.len() as u64),
        reason: reason.to_owned(),
    }
}

fn upsert(origin: OriginId, rel_path: &[u8]) -> Upsert {
    Upsert {
        origin,
        rel_path: rel_path.to_vec(),
        format: Format::Mp3,
        scan: scan(rel_path.len() as u64 + 1),
        meta: TrackMeta {
            title: Some("t".to_owned()),
            ..TrackMeta::default()
        },
    }
}

fn skips(records: &[SkipRecord]) -> Batch {
    Batch {
        skipped: records.to_vec(),
        ..Batch::default()
    }
}

fn expected(records: &[&SkipRecord]) -> HashMap<Vec<u8>, (ScanState, String)> {
    records
        .iter()
        .map(|r| (r.rel_path.clone(), (r.scan, r.reason.clone())))
        .collect()
}

#[test]
fn skips_round_trip_per_origin_with_long_and_non_utf8_paths_without_touching_tracks() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let one = catalog.origin_id(Path::new("/mnt/one")).unwrap();
    let two = catalog.origin_id(Path::new("/mnt/two")).unwrap();
    catalog.apply(&[upsert(one, b"good.mp3")], &[]).unwrap();
    let counter = catalog.change_counter().unwrap();

    let long = [b"deep/".repeat(300), b"x.flac".to_vec()].concat();
    let empty = skip(one, b"broken/empty.flac", "empty file (0 bytes)");
    let latin1 = skip(one, b"broken/caf\xe9.mp3", "truncated file");
    let hashed = skip(one, &long, "not a recognised audio file");
    let other = skip(two, b"broken/empty.flac", "other origin");
    let ids = catalog
        .apply_batch(&skips(&[
            empty.clone(),
            latin1.clone(),
            hashed.clone(),
            other.clone(),
        ]))
        .unwrap();

    assert!(ids.is_empty());
    assert_eq!(
        catalog.skipped_states(one).unwrap(),
        expected(&[&empty, &latin1, &hashed])
    );
    assert_eq!(catalog.skipped_states(two).unwrap(), expected(&[&other]));
    assert_eq!(catalog.len().unwrap(), 1);
    assert_eq!(
        catalog.scan_states(one).unwrap().keys().collect::<Vec<_>>(),
        vec![&b"good.mp3".to_vec()]
    );
    assert_eq!(
        catalog.change_counter().unwrap(),
        counter,
        "the tree does not show skipped files"
    );
}

#[test]
fn recording_a_skip_again_replaces_its_reason_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/mnt/music")).unwrap();
    catalog
        .apply_batch(&skips(&[skip(origin, b"a.mp3", "empty")]))
        .unwrap();
    let newer = SkipRecord {
        scan: scan(999),
        ..skip(origin, b"a.mp3", "truncated")
    };

    catalog
        .apply_batch(&skips(std::slice::from_ref(&newer)))
        .unwrap();

    assert_eq!(catalog.skipped_states(origin).unwrap(), expected(&[&newer]));
}

#[test]
fn upserting_a_skipped_path_forgets_the_skip() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/mnt/music")).unwrap();
    let long = vec![b'y'; 1500];
    let stays = skip(origin, b"still broken.mp3", "empty");
    catalog
        .apply_batch(&skips(&[
            skip(origin, b"fixed.mp3", "truncated"),
            skip(origin, &long, "truncated"),
            stays.clone(),
        ]))
        .unwrap();

    catalog
        .apply(&[upsert(origin, b"fixed.mp3"), upsert(origin, &long)], &[])
        .unwrap();

    assert_eq!(catalog.skipped_states(origin).unwrap(), expected(&[&stays]));
    assert!(catalog.find(origin, b"fixed.mp3").unwrap().is_some());
    assert!(catalog.find(origin, &long).unwrap().is_some());
}

#[test]
fn skipping_a_tracked_path_removes_its_track_in_the_same_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/mnt/music")).unwrap();
    let ids = catalog
        .apply(
            &[upsert(origin, b"turns bad.mp3"), upsert(origin, b"ok.mp3")],
            &[],
        )
        .unwrap();
    let counter = catalog.change_counter().unwrap();
    let broken = skip(origin, b"turns bad.mp3", "truncated file");

    catalog
        .apply_batch(&skips(std::slice::from_ref(&broken)))
        .unwrap();

    assert!(catalog.get(ids[0]).unwrap().is_none());
    assert!(catalog.find(origin, b"turns bad.mp3").unwrap().is_none());
    assert!(catalog.get(ids[1]).unwrap().is_some());
    assert_eq!(
        catalog.skipped_states(origin).unwrap(),
        expected(&[&broken])
    );
    assert!(
        catalog.change_counter().unwrap() > counter,
        "a track left the tree"
    );
}

#[test]
fn unskipping_forgets_only_the_named_paths_and_ignores_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let one = catalog.origin_id(Path::new("/mnt/one")).unwrap();
    let two = catalog.origin_id(Path::new("/mnt/two")).unwrap();
    let long = vec![b'z'; 900];
    let kept = skip(two, b"gone.mp3", "empty");
    catalog
        .apply_batch(&skips(&[
            skip(one, b"gone.mp3", "empty"),
            skip(one, &long, "empty"),
            kept.clone(),
        ]))
        .unwrap();
    let counter = catalog.change_counter().unwrap();

    catalog
        .apply_batch(&Batch {
            unskipped: vec![
                (one, b"gone.mp3".to_vec()),
                (one, long.clone()),
                (one, b"never skipped.mp3".to_vec()),
            ],
            ..Batch::default()
        })
        .unwrap();

    assert!(catalog.skipped_states(one).unwrap().is_empty());
    assert_eq!(catalog.skipped_states(two).unwrap(), expected(&[&kept]));
    assert_eq!(catalog.change_counter().unwrap(), counter);
}

#[test]
fn a_track_removed_and_skipped_in_one_batch_with_other_upserts_commits_together() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/mnt/music")).unwrap();
    let id = catalog.apply(&[upsert(origin, b"bad.mp3")], &[]).unwrap()[0];
    let broken = skip(origin, b"bad.mp3", "malformed");

    let ids = catalog
        .apply_batch(&Batch {
            upserts: vec![upsert(origin, b"new.mp3")],
            removals: vec![id],
            skipped: vec![broken.clone()],
            ..Batch::default()
        })
        .unwrap();

    assert_eq!(ids.len(), 1);
    assert!(catalog.get(id).unwrap().is_none());
    assert_eq!(catalog.len().unwrap(), 1);
    assert_eq!(
        catalog.skipped_states(origin).unwrap(),
        expected(&[&broken])
    );
}

#[test]
fn a_skip_in_an_unregistered_origin_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/mnt/music")).unwrap();
    let stranger = OriginId(origin.0 + 1);

    let err = catalog
        .apply_batch(&skips(&[
            skip(origin, b"a.mp3", "empty"),
            skip(stranger, b"b.mp3", "empty"),
        ]))
        .unwrap_err();

    assert!(
        matches!(err, CatalogError::UnknownOrigin { origin, .. } if origin == stranger),
        "{err:?}"
    );
    assert!(catalog.skipped_states(origin).unwrap().is_empty());
}

#[test]
fn skips_survive_reopening_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let long = vec![b'q'; 4000];
    let (origin, before) = {
        let catalog = Catalog::open(dir.path()).unwrap();
        let origin = catalog.origin_id(Path::new("/mnt/music")).unwrap();
        catalog
            .apply_batch(&skips(&[
                skip(origin, b"a.opus", "no audio track in the file"),
                skip(origin, &long, "empty"),
            ]))
            .unwrap();
        (origin, catalog.skipped_states(origin).unwrap())
    };

    let catalog = Catalog::open(dir.path()).unwrap();

    assert_eq!(before.len(), 2);
    assert_eq!(catalog.skipped_states(origin).unwrap(), before);
}

/// Writes the layout of a schema-1 catalog from before the `skipped` table existed: the
/// four older databases, the schema version and one registered origin.
fn write_catalog_without_skipped_table(dir: &Path) {
    use heed::byteorder::BE;
    use heed::types::{Bytes, Str, U32, U64};
    // SAFETY: the test owns this fresh directory and no Catalog has it open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(4).open(dir) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let (origins, meta) = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            let _: heed::Database<U64<BE>, Bytes> = opener.create_database(wtxn, Some("tracks"))?;
            let _: heed::Database<Bytes, Bytes> = opener.create_database(wtxn, Some("paths"))?;
            let origins: heed::Database<U32<BE>, Bytes> =
                opener.create_database(wtxn, Some("origins"))?;
            let meta: heed::Database<Str, Bytes> = opener.create_database(wtxn, Some("meta"))?;
            Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit((origins, meta)))
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, "schema_version", &1u32.to_be_bytes())
        .unwrap();
    meta.put(&mut wtxn, "next_origin_id", &1u32.to_be_bytes())
        .unwrap();
    origins.put(&mut wtxn, &0, b"/mnt/old").unwrap();
    wtxn.commit().unwrap();
}

#[test]
fn a_catalog_written_before_the_skipped_table_existed_opens_and_gains_it() {
    let dir = tempfile::tempdir().unwrap();
    write_catalog_without_skipped_table(dir.path());

    let origin = {
        let catalog = Catalog::open(dir.path()).unwrap();
        let origin = catalog.origin_id(Path::new("/mnt/old")).unwrap();
        assert_eq!(origin, OriginId(0), "the old origin is found, not re-added");
        assert!(catalog.skipped_states(origin).unwrap().is_empty());
        catalog
            .apply_batch(&skips(&[skip(origin, b"x.flac", "empty")]))
            .unwrap();
        origin
    };

    let catalog = Catalog::open(dir.path()).unwrap();
    assert_eq!(
        catalog
            .skipped_states(origin)
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![&b"x.flac".to_vec()]
    );
}
