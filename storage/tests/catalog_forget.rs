//! Forgetting an origin (the explicit `musicfs origin forget`) and the recorded root device.

use musicfs_core::meta::{Format, OriginId, ScanState, TrackMeta};
use musicfs_storage::{Batch, Catalog, Forgotten, OriginDevice, SkipRecord, Upsert};

fn upsert(origin: OriginId, rel: &str) -> Upsert {
    Upsert {
        origin,
        rel_path: rel.as_bytes().to_vec(),
        format: Format::Flac,
        scan: ScanState {
            size: rel.len() as u64,
            mtime_ns: 1,
            ino: 2,
            ctime_ns: 3,
            perm: None,
        },
        meta: TrackMeta {
            title: Some(rel.to_owned()),
            ..TrackMeta::default()
        },
    }
}

#[test]
fn forgetting_an_origin_removes_its_rows_only_and_bumps_the_change_counter() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let a = catalog.origin_id("/music/a".as_ref()).unwrap();
    let b = catalog.origin_id("/music/b".as_ref()).unwrap();
    let batch = Batch {
        upserts: vec![
            upsert(a, "1.flac"),
            upsert(a, "2.flac"),
            upsert(b, "3.flac"),
        ],
        skipped: vec![SkipRecord {
            origin: a,
            rel_path: b"broken.mp3".to_vec(),
            scan: ScanState::default(),
            reason: "empty".into(),
        }],
        ..Batch::default()
    };
    catalog.apply_batch(&batch).unwrap();
    catalog
        .set_origin_device(
            a,
            OriginDevice {
                dev: 42,
                mount_point: true,
            },
        )
        .unwrap();
    let before = catalog.change_counter().unwrap();

    let done = catalog.forget_origin(a).unwrap();
    assert_eq!(
        done,
        Forgotten {
            tracks: 2,
            skipped: 1
        }
    );
    assert!(catalog.change_counter().unwrap() > before);
    assert_eq!(catalog.len().unwrap(), 1);
    assert!(catalog.scan_states(a).unwrap().is_empty());
    assert!(catalog.skipped_states(a).unwrap().is_empty());
    assert_eq!(catalog.origin_device(a).unwrap(), None);
    let origins: Vec<OriginId> = catalog
        .origins()
        .unwrap()
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(origins, vec![b]);
    assert_eq!(
        catalog.scan_states(b).unwrap().len(),
        1,
        "the other origin is untouched"
    );

    let again = catalog.origin_id("/music/a".as_ref()).unwrap();
    assert_ne!(again, a, "a forgotten root comes back under a new id");
    assert_eq!(
        catalog.forget_origin(OriginId(999)).unwrap(),
        Forgotten::default()
    );
}

#[test]
fn the_recorded_device_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let dev = OriginDevice {
        dev: 0x0803,
        mount_point: false,
    };
    let id = {
        let catalog = Catalog::open(dir.path()).unwrap();
        let id = catalog.origin_id("/music".as_ref()).unwrap();
        assert_eq!(catalog.origin_device(id).unwrap(), None);
        catalog.set_origin_device(id, dev).unwrap();
        id
    };
    let catalog = Catalog::open(dir.path()).unwrap();
    assert_eq!(catalog.origin_device(id).unwrap(), Some(dev));
}
