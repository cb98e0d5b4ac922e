//! Behaviour of the catalog through its public API: round trips, id stability, the path
//! index, persistence, schema refusal and damaged environments.

use std::path::Path;

use musicfs_core::meta::{Format, OriginId, Perm, ScanState, TrackId, TrackMeta, TrackRecord};
use musicfs_storage::{Catalog, CatalogError, Upsert, SCHEMA_VERSION};

fn scan(size: u64) -> ScanState {
    ScanState {
        size,
        mtime_ns: 1_700_000_000_123_456_789,
        ino: size * 7 + 1,
        ctime_ns: -5,
        perm: Some(Perm {
            mode: 0o640,
            uid: 1000,
            gid: 100,
        }),
    }
}

fn upsert(origin: OriginId, rel_path: &[u8], title: &str) -> Upsert {
    Upsert {
        origin,
        rel_path: rel_path.to_vec(),
        format: Format::Flac,
        scan: scan(rel_path.len() as u64),
        meta: TrackMeta {
            title: Some(title.to_owned()),
            ..TrackMeta::default()
        },
    }
}

fn rich_upsert(origin: OriginId) -> Upsert {
    Upsert {
        origin,
        // Latin-1 "é" and a lone continuation byte: not UTF-8.
        rel_path: b"Bj\xe9rk/Homog\x80nic/01 - J\xf3ga.mp3".to_vec(),
        format: Format::Mp3,
        scan: scan(8_388_608),
        meta: TrackMeta {
            title: Some("Jóga — 夜の歌 🎵".to_owned()),
            artist: vec!["Björk".to_owned(), "Ensemble Ω".to_owned()],
            album: Some("Homogenic".to_owned()),
            album_artist: vec!["Björk".to_owned()],
            genre: vec!["Electronic".to_owned(), "Art pop".to_owned()],
            date: Some("1997-09-22".to_owned()),
            track: Some("A1".to_owned()),
            track_total: Some(10),
            disc: Some("1".to_owned()),
            disc_total: Some(2),
            composer: vec!["Sjón".to_owned()],
            lyrics: Some("Emotional landscapes ✨\n".repeat(4_500)),
            duration_ms: Some(305_000),
            bitrate: Some(320_000),
            sample_rate: Some(44_100),
            channels: Some(2),
            has_art: true,
        },
    }
}

fn record_of(id: TrackId, up: &Upsert) -> TrackRecord {
    TrackRecord {
        id,
        origin: up.origin,
        rel_path: up.rel_path.clone(),
        format: up.format,
        scan: up.scan,
        meta: up.meta.clone(),
    }
}

fn all_tracks(catalog: &Catalog) -> Vec<TrackRecord> {
    let mut out = Vec::new();
    catalog.for_each(|record| out.push(record)).unwrap();
    out
}

#[test]
fn records_round_trip_with_non_utf8_paths_unicode_tags_and_big_lyrics() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let up = rich_upsert(origin);
    assert!(up.meta.lyrics.as_ref().unwrap().len() > 100_000);

    let ids = catalog.apply(std::slice::from_ref(&up), &[]).unwrap();
    let expected = record_of(ids[0], &up);

    assert_eq!(catalog.get(ids[0]).unwrap(), Some(expected.clone()));
    assert_eq!(
        catalog.find(origin, &up.rel_path).unwrap(),
        Some(expected.clone())
    );
    assert_eq!(all_tracks(&catalog), vec![expected]);
    let states = catalog.scan_states(origin).unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[&up.rel_path], (ids[0], up.scan));
}

#[test]
fn paths_longer_than_an_lmdb_key_are_indexed_and_listed_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let mut long_a = b"deep/".repeat(300);
    long_a.extend_from_slice(b"a.flac");
    let mut long_b = b"deep/".repeat(300);
    long_b.extend_from_slice(b"b.flac");
    let ups = [upsert(origin, &long_a, "A"), upsert(origin, &long_b, "B")];

    let ids = catalog.apply(&ups, &[]).unwrap();
    assert_ne!(ids[0], ids[1]);

    assert_eq!(catalog.find(origin, &long_a).unwrap().unwrap().id, ids[0]);
    assert_eq!(catalog.find(origin, &long_b).unwrap().unwrap().id, ids[1]);
    let states = catalog.scan_states(origin).unwrap();
    assert_eq!(states[&long_a].0, ids[0]);
    assert_eq!(states[&long_b].0, ids[1]);
    assert_eq!(catalog.apply(&ups[..1], &[]).unwrap(), vec![ids[0]]);
    catalog.apply(&[], &[ids[0]]).unwrap();
    assert_eq!(catalog.find(origin, &long_a).unwrap(), None);
    assert_eq!(catalog.scan_states(origin).unwrap().len(), 1);
}

#[test]
fn ids_are_stable_across_upserts_and_never_reused_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let catalog = Catalog::open(dir.path()).unwrap();
        let origin = catalog.origin_id(Path::new("/music")).unwrap();
        let ids = catalog
            .apply(
                &[
                    upsert(origin, b"a.flac", "A"),
                    upsert(origin, b"b.flac", "B"),
                ],
                &[],
            )
            .unwrap();
        let (a, b) = (ids[0], ids[1]);
        assert_ne!(a, b);

        let again = catalog
            .apply(&[upsert(origin, b"a.flac", "A, retagged")], &[b])
            .unwrap();
        assert_eq!(again, vec![a]);
        assert_eq!(catalog.get(b).unwrap(), None);
        assert_eq!(
            catalog.get(a).unwrap().unwrap().meta.title.as_deref(),
            Some("A, retagged")
        );

        let c = catalog
            .apply(&[upsert(origin, b"c.flac", "C")], &[])
            .unwrap()[0];
        assert!(c > b, "new id {c:?} must not reuse removed {b:?}");
        (a, b)
    };

    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let back = catalog
        .apply(&[upsert(origin, b"b.flac", "B is back")], &[])
        .unwrap()[0];
    assert!(back > b, "a re-added path gets a fresh id, not {b:?}");
    assert_eq!(catalog.find(origin, b"a.flac").unwrap().unwrap().id, a);
}

#[test]
fn removing_and_upserting_the_same_path_in_one_apply_gives_it_a_fresh_id() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let old = catalog
        .apply(&[upsert(origin, b"x.flac", "X")], &[])
        .unwrap()[0];

    let new = catalog
        .apply(&[upsert(origin, b"x.flac", "X")], &[old])
        .unwrap()[0];

    assert!(new > old);
    assert_eq!(catalog.get(old).unwrap(), None);
    assert_eq!(catalog.find(origin, b"x.flac").unwrap().unwrap().id, new);
    assert_eq!(catalog.len().unwrap(), 1);
}

#[test]
fn removing_every_file_of_one_origin_leaves_the_other_origins_index_intact() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let first = catalog.origin_id(Path::new("/mnt/one")).unwrap();
    let second = catalog.origin_id(Path::new("/mnt/two")).unwrap();
    let paths: [&[u8]; 3] = [b"a.flac", b"dir/b.mp3", b"dir/c.ogg"];
    let mut ups: Vec<Upsert> = paths.iter().map(|p| upsert(first, p, "1")).collect();
    ups.extend(paths.iter().map(|p| upsert(second, p, "2")));
    let ids = catalog.apply(&ups, &[]).unwrap();

    let first_ids: Vec<TrackId> = catalog
        .scan_states(first)
        .unwrap()
        .values()
        .map(|v| v.0)
        .collect();
    catalog.apply(&[], &first_ids).unwrap();

    assert!(catalog.scan_states(first).unwrap().is_empty());
    for path in paths {
        assert_eq!(catalog.find(first, path).unwrap(), None);
        assert_eq!(
            catalog
                .find(second, path)
                .unwrap()
                .unwrap()
                .meta
                .title
                .as_deref(),
            Some("2")
        );
    }
    let second_states = catalog.scan_states(second).unwrap();
    assert_eq!(second_states.len(), 3);
    assert_eq!(catalog.len().unwrap(), 3);
    assert!(ids[3..]
        .iter()
        .all(|id| catalog.get(*id).unwrap().is_some()));
}

#[test]
fn origins_are_registered_once_and_listed_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let one = catalog.origin_id(Path::new("/mnt/one")).unwrap();
    let two = catalog.origin_id(Path::new("/mnt/tw\u{f6}")).unwrap();
    assert_ne!(one, two);
    assert_eq!(catalog.origin_id(Path::new("/mnt/one")).unwrap(), one);

    let listed = catalog.origins().unwrap();
    assert_eq!(
        listed,
        vec![(one, "/mnt/one".into()), (two, "/mnt/tw\u{f6}".into())]
    );
}

#[test]
fn an_upsert_into_an_unregistered_origin_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let known = catalog.origin_id(Path::new("/music")).unwrap();
    let ups = [
        upsert(known, b"ok.flac", "ok"),
        upsert(OriginId(42), b"x.flac", "x"),
    ];

    let err = catalog.apply(&ups, &[]).unwrap_err();

    assert!(
        matches!(
            err,
            CatalogError::UnknownOrigin {
                origin: OriginId(42),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        catalog.is_empty().unwrap(),
        "the whole transaction must be rolled back"
    );
}

#[test]
fn the_change_counter_moves_only_when_an_apply_changes_something() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let start = catalog.change_counter().unwrap();

    let id = catalog
        .apply(&[upsert(origin, b"a.flac", "A")], &[])
        .unwrap()[0];
    let after_insert = catalog.change_counter().unwrap();
    assert!(after_insert > start);

    catalog
        .apply(&[upsert(origin, b"a.flac", "A")], &[TrackId(9_999)])
        .unwrap();
    catalog.apply(&[], &[]).unwrap();
    assert_eq!(catalog.change_counter().unwrap(), after_insert);

    let mut rescanned = upsert(origin, b"a.flac", "A");
    rescanned.scan.mtime_ns += 1;
    catalog.apply(&[rescanned], &[]).unwrap();
    let after_touch = catalog.change_counter().unwrap();
    assert!(after_touch > after_insert);

    catalog.apply(&[], &[id]).unwrap();
    assert!(catalog.change_counter().unwrap() > after_touch);
}

#[test]
fn reopening_a_catalog_restores_tracks_origins_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let (before, counter, origins) = {
        let catalog = Catalog::open(dir.path()).unwrap();
        let one = catalog.origin_id(Path::new("/mnt/one")).unwrap();
        let two = catalog.origin_id(Path::new("/mnt/two")).unwrap();
        let ids = catalog
            .apply(
                &[
                    rich_upsert(one),
                    upsert(two, b"x.flac", "X"),
                    upsert(two, b"y.flac", "Y"),
                ],
                &[],
            )
            .unwrap();
        catalog.apply(&[], &[ids[1]]).unwrap();
        (
            all_tracks(&catalog),
            catalog.change_counter().unwrap(),
            catalog.origins().unwrap(),
        )
    };

    let catalog = Catalog::open(dir.path()).unwrap();

    assert_eq!(all_tracks(&catalog), before);
    assert_eq!(catalog.change_counter().unwrap(), counter);
    assert_eq!(catalog.origins().unwrap(), origins);
    assert_eq!(catalog.len().unwrap(), 2);
    let two = catalog.origin_id(Path::new("/mnt/two")).unwrap();
    assert_eq!(two, origins[1].0);
    let states = catalog.scan_states(two).unwrap();
    assert_eq!(states.keys().collect::<Vec<_>>(), vec![&b"y.flac".to_vec()]);
    let three = catalog.origin_id(Path::new("/mnt/three")).unwrap();
    assert!(three > two, "origin ids continue after reopen");
    let next = catalog.apply(&[upsert(two, b"z.flac", "Z")], &[]).unwrap()[0];
    assert!(
        before.iter().all(|r| r.id < next),
        "track ids continue after reopen"
    );
}

/// Stamps another schema version into a closed catalog, as a different MusicFS build would.
fn stamp_schema_version(dir: &Path, version: u32) {
    use heed::types::{Bytes, Str};
    // SAFETY: the test owns this fresh directory and no Catalog has it open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(4).open(dir) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let meta: heed::Database<Str, Bytes> = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database(wtxn, Some("meta"))
                .map(heed::CommitOrAbort::<_, ()>::Commit)
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, "schema_version", &version.to_be_bytes())
        .unwrap();
    wtxn.commit().unwrap();
}

#[test]
fn a_catalog_with_a_newer_schema_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(Catalog::open(dir.path()).unwrap());
    let newer = SCHEMA_VERSION + 1;
    stamp_schema_version(dir.path(), newer);

    for _ in 0..2 {
        let err = Catalog::open(dir.path())
            .err()
            .expect("a newer schema must be refused");
        assert!(
            matches!(err, CatalogError::SchemaTooNew { found, supported, .. } if found == newer && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("schema version {newer}")), "{msg}");
        assert!(msg.contains(&format!("version {SCHEMA_VERSION} ")), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}

#[test]
fn a_catalog_with_an_unknown_older_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Catalog::open(dir.path()).unwrap());
    stamp_schema_version(dir.path(), 0);

    let err = Catalog::open(dir.path())
        .err()
        .expect("schema 0 never existed");

    assert!(
        matches!(err, CatalogError::SchemaUnsupported { found: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn a_directory_holding_a_non_lmdb_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.mdb"), vec![0xA5u8; 64 * 1024]).unwrap();

    let err = Catalog::open(dir.path())
        .err()
        .expect("garbage must not open");

    assert!(matches!(err, CatalogError::NotACatalog { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn a_data_file_cut_shorter_than_committed_is_a_clear_error_not_a_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    {
        let catalog = Catalog::open(dir.path()).unwrap();
        let origin = catalog.origin_id(Path::new("/music")).unwrap();
        let upserts: Vec<Upsert> = (0..400)
            .map(|i| {
                upsert(
                    origin,
                    format!("a/{i:04}.flac").as_bytes(),
                    &"t".repeat(200),
                )
            })
            .collect();
        catalog.apply(&upserts, &[]).unwrap();
    }
    let data = dir.path().join("data.mdb");
    let len = std::fs::metadata(&data).unwrap().len();
    assert!(len > 8 * 4096, "{len}");
    // Two pages: the meta pages survive, every other page is gone. LMDB alone would map
    // the file and fault on the first page past its end.
    for keep in [len / 2, 2 * 4096] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .unwrap()
            .set_len(keep)
            .unwrap();

        let err = Catalog::open(dir.path())
            .err()
            .expect("a cut catalog must not open");

        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}

#[test]
fn a_catalog_path_that_is_a_regular_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog");
    std::fs::write(&file, b"not a directory").unwrap();

    let err = Catalog::open(&file)
        .err()
        .expect("a file is not a catalog directory");

    assert!(
        matches!(
            err,
            CatalogError::CreateDir { .. } | CatalogError::Open { .. }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn opening_the_same_catalog_twice_in_one_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Catalog::open(dir.path()).unwrap();

    let err = Catalog::open(dir.path())
        .err()
        .expect("one handle per process");

    assert!(matches!(err, CatalogError::AlreadyOpen { .. }), "{err:?}");
}

#[test]
fn a_catalog_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Catalog>();
    assert_send_sync::<CatalogError>();
}

/// `ScanState`, `TrackValue` and `PathEntry` as schema 1 wrote them (bincode, positional).
#[derive(serde::Serialize)]
struct ScanStateV1 {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    ctime_ns: i64,
}

#[derive(serde::Serialize)]
struct TrackValueV1 {
    origin: OriginId,
    rel_path: Vec<u8>,
    format: Format,
    scan: ScanStateV1,
    meta: TrackMeta,
}

#[derive(serde::Serialize)]
struct PathEntryV1 {
    id: TrackId,
    scan: ScanStateV1,
}

/// Rewrites a closed catalog holding one track (`id`, at `key` in `paths`) as schema 1
/// stored it.
fn rewrite_as_schema_1(dir: &Path, id: TrackId, key: &[u8], up: &Upsert) {
    use heed::byteorder::BE;
    use heed::types::{Bytes, SerdeBincode, Str, U64};
    let v1 = || ScanStateV1 {
        size: up.scan.size,
        mtime_ns: up.scan.mtime_ns,
        ino: up.scan.ino,
        ctime_ns: up.scan.ctime_ns,
    };
    // SAFETY: the test owns this directory and no Catalog has it open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).open(dir) }.unwrap();
    type Tracks = heed::Database<'static, U64<BE>, SerdeBincode<TrackValueV1>>;
    type Paths = heed::Database<'static, Bytes, SerdeBincode<PathEntryV1>>;
    type Meta = heed::Database<'static, Str, Bytes>;
    let (tracks, paths, meta): (Tracks, Paths, Meta) = env
        .create_databases_and_commit(env.write_txn().unwrap(), |opener, wtxn| {
            let tracks = opener.create_database(wtxn, Some("tracks"))?;
            let paths = opener.create_database(wtxn, Some("paths"))?;
            let meta = opener.create_database(wtxn, Some("meta"))?;
            Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit((tracks, paths, meta)))
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    let track = TrackValueV1 {
        origin: up.origin,
        rel_path: up.rel_path.clone(),
        format: up.format,
        scan: v1(),
        meta: up.meta.clone(),
    };
    tracks.put(&mut wtxn, &id.0, &track).unwrap();
    paths
        .put(&mut wtxn, key, &PathEntryV1 { id, scan: v1() })
        .unwrap();
    meta.put(&mut wtxn, "schema_version", &1u32.to_be_bytes())
        .unwrap();
    wtxn.commit().unwrap();
}

#[test]
fn a_schema_1_catalog_opens_with_its_tracks_and_unknown_owner_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let up = upsert(OriginId(0), b"a.flac", "A");
    let id = {
        let catalog = Catalog::open(dir.path()).unwrap();
        let origin = catalog.origin_id(Path::new("/music")).unwrap();
        assert_eq!(origin, OriginId(0));
        catalog.apply(std::slice::from_ref(&up), &[]).unwrap()[0]
    };
    let mut key = 0u32.to_be_bytes().to_vec();
    key.extend_from_slice(&up.rel_path);
    rewrite_as_schema_1(dir.path(), id, &key, &up);

    let catalog = Catalog::open(dir.path()).unwrap();

    let mut expected = record_of(id, &up);
    expected.scan.perm = None;
    assert_eq!(catalog.get(id).unwrap(), Some(expected.clone()));
    assert_eq!(
        catalog.scan_states(OriginId(0)).unwrap()[&up.rel_path],
        (id, expected.scan)
    );
    drop(catalog);
    let reopened = Catalog::open(dir.path()).unwrap();
    assert_eq!(reopened.get(id).unwrap(), Some(expected));
}

#[test]
fn scan_states_under_a_prefix_list_that_directory_only_long_paths_included() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let other = catalog.origin_id(Path::new("/other")).unwrap();
    let mut long_dir = b"deep/".repeat(120);
    long_dir.extend_from_slice(b"end/");
    let mut long_a = long_dir.clone();
    long_a.extend_from_slice(b"a.flac");
    let mut long_b = b"deep/".repeat(120);
    long_b.extend_from_slice(b"elsewhere/b.flac");
    catalog
        .apply(
            &[
                upsert(origin, b"A/x/1.flac", "1"),
                upsert(origin, b"A/x/sub/2.flac", "2"),
                upsert(origin, b"A/xy/3.flac", "3"),
                upsert(origin, &long_a, "long a"),
                upsert(origin, &long_b, "long b"),
                upsert(other, b"A/x/4.flac", "4"),
            ],
            &[],
        )
        .unwrap();
    let under = |prefix: &[u8]| {
        let mut got = Vec::new();
        catalog
            .for_each_scan_state_under(origin, prefix, |rel, _, _| got.push(rel.to_vec()))
            .unwrap();
        got
    };
    assert_eq!(
        under(b"A/x/"),
        vec![b"A/x/1.flac".to_vec(), b"A/x/sub/2.flac".to_vec()]
    );
    assert_eq!(under(&long_dir), vec![long_a.clone()], "hashed keys too");
    assert_eq!(under(b"").len(), 5, "the empty prefix is the whole origin");
}

#[test]
fn a_catalog_reads_the_same_after_letting_go_of_its_mapped_pages() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    // More tracks than `for_each` reads between two releases of its pages.
    let ups: Vec<Upsert> = (0..20_000)
        .map(|i| {
            upsert(
                origin,
                format!("a/{i:05}.flac").as_bytes(),
                &format!("t{i}"),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for chunk in ups.chunks(5_000) {
        let ids = catalog.apply(chunk, &[]).unwrap();
        catalog.release_mapped_pages();
        expected.extend(ids.iter().zip(chunk).map(|(id, up)| record_of(*id, up)));
    }
    assert_eq!(all_tracks(&catalog), expected);
    catalog.release_mapped_pages();
    assert_eq!(
        catalog.get(expected[123].id).unwrap(),
        Some(expected[123].clone())
    );
}
