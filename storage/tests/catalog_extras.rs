//! Extra files and cover art in the catalog: a directory's listing replaces what was
//! recorded for it, `retain_extras` drops gone directories, a track's art goes with it, and
//! only the extras counter (not the change counter) moves.

use std::path::Path;

use musicfs_core::meta::{Format, ScanState, TrackMeta};
use musicfs_storage::{ArtRef, ArtSet, Batch, Catalog, DirExtras, ExtraFile, Upsert};

fn file(name: &str, size: u64) -> ExtraFile {
    ExtraFile {
        name: name.as_bytes().to_vec(),
        size,
        mtime_ns: 7,
    }
}

fn names(files: &[ExtraFile]) -> Vec<String> {
    files
        .iter()
        .map(|f| String::from_utf8_lossy(&f.name).into_owned())
        .collect()
}

fn names_of(names: &[Vec<u8>]) -> Vec<String> {
    names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

#[test]
fn extras_are_replaced_per_directory_and_dropped_with_their_directory() {
    let t = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(t.path()).unwrap();
    let o = catalog.origin_id(Path::new("/music")).unwrap();
    let dirs = |d: &str, files: Vec<ExtraFile>| {
        vec![DirExtras {
            origin: o,
            dir: d.as_bytes().to_vec(),
            files,
        }]
    };
    let changes = catalog.change_counter().unwrap();
    let e0 = catalog.extras_counter().unwrap();
    catalog
        .set_extras(&dirs(
            "a",
            vec![file("cover.jpg", 1), file("booklet.pdf", 2)],
        ))
        .unwrap();
    catalog
        .set_extras(&dirs("a/b", vec![file("x.cue", 3)]))
        .unwrap();
    catalog
        .set_extras(&dirs("", vec![file("top.txt", 4)]))
        .unwrap();
    assert_eq!(
        names(&catalog.extras_in(o, b"a").unwrap()),
        ["booklet.pdf", "cover.jpg"]
    );
    assert_eq!(names(&catalog.extras_in(o, b"a/b").unwrap()), ["x.cue"]);
    assert_eq!(names(&catalog.extras_in(o, b"").unwrap()), ["top.txt"]);
    let e1 = catalog.extras_counter().unwrap();
    assert!(e1 > e0);

    // The same listing again changes nothing; a new one replaces the directory's set.
    let same = catalog
        .set_extras(&dirs(
            "a",
            vec![file("booklet.pdf", 2), file("cover.jpg", 1)],
        ))
        .unwrap();
    assert!(same.is_empty());
    assert_eq!(catalog.extras_counter().unwrap(), e1);
    let changed = catalog
        .set_extras(&dirs("a", vec![file("cover.jpg", 9)]))
        .unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(
        names_of(&changed[0].names),
        ["cover.jpg", "booklet.pdf"],
        "old and new names"
    );
    let a = catalog.extras_in(o, b"a").unwrap();
    assert_eq!((names(&a), a[0].size), (vec!["cover.jpg".to_string()], 9));

    // A directory gone: dropped with nothing else.
    let dropped = catalog.retain_extras(o, |d| d != b"a/b").unwrap();
    assert_eq!(
        (dropped.len(), dropped[0].dir.as_slice()),
        (1, b"a/b".as_slice())
    );
    assert!(catalog.extras_in(o, b"a/b").unwrap().is_empty());
    assert_eq!(catalog.extras_in(o, b"a").unwrap().len(), 1);
    assert_eq!(
        catalog.change_counter().unwrap(),
        changes,
        "the tree holds no extras"
    );
}

#[test]
fn a_tracks_art_is_set_cleared_and_dropped_with_the_track() {
    let t = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(t.path()).unwrap();
    let o = catalog.origin_id(Path::new("/music")).unwrap();
    let art = ArtRef {
        hash: 42,
        png: false,
    };
    let track = |art: Option<ArtRef>| Batch {
        upserts: vec![Upsert {
            origin: o,
            rel_path: b"a/1.flac".to_vec(),
            format: Format::Flac,
            scan: ScanState::default(),
            meta: TrackMeta::default(),
        }],
        art: vec![ArtSet {
            origin: o,
            rel_path: b"a/1.flac".to_vec(),
            art,
        }],
        ..Batch::default()
    };
    let ids = catalog.apply_batch(&track(Some(art))).unwrap();
    assert_eq!(catalog.art_of(o, b"a/1.flac").unwrap(), Some(art));
    assert_eq!(
        catalog.tracks_in(o, b"a").unwrap(),
        vec![(b"1.flac".to_vec(), ids[0])]
    );
    assert!(
        catalog.tracks_in(o, b"").unwrap().is_empty(),
        "only direct children"
    );
    catalog.apply_batch(&track(None)).unwrap();
    assert_eq!(catalog.art_of(o, b"a/1.flac").unwrap(), None);
    catalog.apply_batch(&track(Some(art))).unwrap();
    catalog.apply(&[], &ids).unwrap();
    assert_eq!(
        catalog.art_of(o, b"a/1.flac").unwrap(),
        None,
        "dropped with its track"
    );
}

#[test]
fn plays_count_up_skip_unknown_tracks_and_go_with_their_track() {
    let t = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(t.path()).unwrap();
    let o = catalog.origin_id(Path::new("/music")).unwrap();
    let up = Upsert {
        origin: o,
        rel_path: b"1.flac".to_vec(),
        format: Format::Flac,
        scan: ScanState::default(),
        meta: TrackMeta::default(),
    };
    let id = catalog.apply(&[up], &[]).unwrap()[0];
    let before = catalog.plays_counter().unwrap();
    catalog
        .record_plays(&[(id, 10), (id, 5), (musicfs_core::TrackId(999), 7)])
        .unwrap();
    let plays = catalog.plays().unwrap();
    assert_eq!(plays.len(), 1, "the unknown id is ignored");
    assert_eq!(
        (plays[0].0, plays[0].1.count, plays[0].1.last_ns),
        (id, 2, 10)
    );
    assert!(catalog.plays_counter().unwrap() > before);
    catalog.apply(&[], &[id]).unwrap();
    assert!(
        catalog.plays().unwrap().is_empty(),
        "dropped with its track"
    );
}
