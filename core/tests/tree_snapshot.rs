//! The tree builder and the snapshot format, checked against a simple reference model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use musicfs_core::snapshot::{Snapshot, SnapshotError, ROOT_INO};
use musicfs_core::template::Template;
use musicfs_core::tree::{TreeBuilder, TreeData, FILE_INO_BASE};
use musicfs_core::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
use proptest::prelude::*;

fn track(id: u64, artist: &str, album: &str, title: &str, track: Option<&str>) -> TrackRecord {
    TrackRecord {
        id: TrackId(id),
        origin: OriginId(0),
        rel_path: format!("src/{id}.flac").into_bytes(),
        format: Format::Flac,
        scan: ScanState {
            size: 1000 + id,
            mtime_ns: 1_700_000_000_000_000_000 + id as i64,
            ino: id,
            ctime_ns: 0,
            perm: None,
        },
        meta: TrackMeta {
            title: Some(title.to_string()),
            artist: vec![artist.to_string()],
            album: Some(album.to_string()),
            track: track.map(str::to_string),
            date: Some("1969".to_string()),
            ..TrackMeta::default()
        },
    }
}

fn build(tracks: &[TrackRecord]) -> TreeData {
    let t = Template::parse(musicfs_core::template::DEFAULT_TEMPLATE).unwrap();
    let mut b = TreeBuilder::new(
        musicfs_core::template::DEFAULT_TEMPLATE,
        vec![PathBuf::from("/music")],
    );
    for tr in tracks {
        b.add(tr, &t.render(tr));
    }
    b.build()
}

fn publish(tree: &TreeData) -> (tempfile::TempDir, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree.snap");
    Snapshot::write(&path, tree, 7).unwrap();
    let snap = Snapshot::open(&path).unwrap();
    (dir, snap)
}

/// (path, ino, is_dir, size, source) of one node.
type Row = (String, u64, bool, u64, Option<Vec<u8>>);

/// Every node of the snapshot.
fn listing(snap: &Snapshot) -> Vec<Row> {
    snap.walk()
        .into_iter()
        .map(|(p, n)| {
            (
                String::from_utf8(p).unwrap(),
                n.ino(),
                n.is_dir(),
                n.size(),
                n.file().map(|f| f.rel_path.to_vec()),
            )
        })
        .collect()
}

#[test]
fn snapshot_serves_what_the_template_rendered() {
    let tracks = vec![
        track(1, "Miles Davis", "Kind of Blue", "So What", Some("1")),
        track(
            2,
            "Miles Davis",
            "Kind of Blue",
            "Freddie Freeloader",
            Some("2"),
        ),
        track(3, "Nina Simone", "Pastel Blues", "Sinnerman", Some("10")),
    ];
    let (_d, snap) = publish(&build(&tracks));
    assert_eq!(snap.generation(), 7);
    assert_eq!(snap.track_count(), 3);
    assert_eq!(snap.total_size(), 3000 + 6);
    let paths: Vec<String> = listing(&snap).into_iter().map(|l| l.0).collect();
    assert_eq!(
        paths,
        vec![
            "Miles Davis",
            "Miles Davis/Kind of Blue (1969) [FLAC]",
            "Miles Davis/Kind of Blue (1969) [FLAC]/01 - So What.flac",
            "Miles Davis/Kind of Blue (1969) [FLAC]/02 - Freddie Freeloader.flac",
            "Nina Simone",
            "Nina Simone/Pastel Blues (1969) [FLAC]",
            "Nina Simone/Pastel Blues (1969) [FLAC]/10 - Sinnerman.flac",
        ]
    );
    let artist = snap.lookup(ROOT_INO, b"Miles Davis").unwrap();
    assert!(artist.is_dir());
    assert_eq!(artist.nlink(), 3);
    assert_eq!(artist.parent_ino(), ROOT_INO);
    let album = snap
        .lookup(artist.ino(), b"Kind of Blue (1969) [FLAC]")
        .unwrap();
    let song = snap.lookup(album.ino(), b"01 - So What.flac").unwrap();
    assert_eq!(song.ino(), 1 + FILE_INO_BASE);
    assert_eq!(song.size(), 1001);
    assert_eq!(song.file().unwrap().rel_path, b"src/1.flac");
    assert_eq!(snap.origin_root(0).unwrap(), std::path::Path::new("/music"));
    assert!(snap.lookup(album.ino(), b"nope").is_none());
    assert!(
        snap.lookup(song.ino(), b"x").is_none(),
        "a file has no children"
    );
    // Directory mtime is the newest descendant's.
    assert_eq!(artist.mtime_ns(), 1_700_000_000_000_000_002);
}

#[test]
fn readdir_pages_from_any_offset() {
    let tracks: Vec<_> = (1..=50)
        .map(|i| track(i, "A", "B", &format!("t{i:03}"), None))
        .collect();
    let (_d, snap) = publish(&build(&tracks));
    let album = snap
        .lookup(
            snap.lookup(ROOT_INO, b"A").unwrap().ino(),
            b"B (1969) [FLAC]",
        )
        .unwrap();
    let all: Vec<Vec<u8>> = snap
        .children(album.ino(), 0)
        .map(|n| n.name().to_vec())
        .collect();
    assert_eq!(all.len(), 50);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    for off in [0, 1, 17, 49, 50, 51, 1000] {
        let page: Vec<Vec<u8>> = snap
            .children(album.ino(), off)
            .map(|n| n.name().to_vec())
            .collect();
        assert_eq!(page, all.get(off..).unwrap_or(&[]).to_vec(), "offset {off}");
    }
}

#[test]
fn readdir_lists_every_track_once_when_titles_collide() {
    let tracks: Vec<_> = (1..=4)
        .map(|i| track(10 - i, "Same", "Same", "Same", Some("1")))
        .collect();
    let (_d, snap) = publish(&build(&tracks));
    let names: Vec<String> = listing(&snap)
        .into_iter()
        .filter(|l| !l.2)
        .map(|l| l.0)
        .collect();
    assert_eq!(
        names,
        vec![
            "Same/Same (1969) [FLAC]/01 - Same (2).flac",
            "Same/Same (1969) [FLAC]/01 - Same (3).flac",
            "Same/Same (1969) [FLAC]/01 - Same (4).flac",
            "Same/Same (1969) [FLAC]/01 - Same.flac",
        ]
    );
    // The oldest track (lowest id) keeps the plain name.
    let plain = listing(&snap)
        .into_iter()
        .find(|l| l.0.ends_with("01 - Same.flac"))
        .unwrap();
    assert_eq!(plain.1, 6 + FILE_INO_BASE);
}

#[test]
fn corrupt_snapshots_are_refused_never_trusted() {
    let (dir, _snap) = publish(&build(&[track(1, "a", "b", "c", None)]));
    let path = dir.path().join("tree.snap");
    let good = std::fs::read(&path).unwrap();

    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(
        Snapshot::open(&path),
        Err(SnapshotError::Corrupt { .. })
    ));

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(
        Snapshot::open(&path),
        Err(SnapshotError::Corrupt { .. })
    ));

    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        Snapshot::open(&path),
        Err(SnapshotError::Corrupt { .. })
    ));

    std::fs::write(&path, vec![0xA5; 4096]).unwrap();
    assert!(matches!(
        Snapshot::open(&path),
        Err(SnapshotError::Corrupt { .. })
    ));

    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Snapshot::open(&path),
        Err(SnapshotError::Missing(_))
    ));
}

#[test]
fn interrupted_publish_leaves_the_old_snapshot_and_no_temp_file() {
    let (dir, _snap) = publish(&build(&[track(1, "a", "b", "c", None)]));
    // An old-style temp file, and one of a process that is gone (above any pid_max).
    let old_style = dir.path().join("tree.snap.tmp");
    let dead = dir.path().join("tree.snap.tmp.2147483647.0");
    // One of a live process (ours) that may be renamed into place at any moment.
    let live = dir
        .path()
        .join(format!("tree.snap.tmp.{}.99", std::process::id()));
    for tmp in [&old_style, &dead, &live] {
        std::fs::write(tmp, b"half a snapshot").unwrap();
    }
    let snap = Snapshot::open(&dir.path().join("tree.snap")).unwrap();
    assert_eq!(snap.track_count(), 1);
    assert!(!old_style.exists() && !dead.exists());
    assert!(live.exists(), "a live publisher's temp file was removed");
}

fn arb_tracks() -> impl Strategy<Value = Vec<TrackRecord>> {
    // Few distinct names so clashes are frequent; unicode and hostile characters included.
    let name = prop::sample::select(vec![
        "A",
        "B",
        "AC/DC",
        "Beyonce\u{301}",
        "Beyonc\u{e9}",
        "..",
        "",
        " x ",
        "\u{0}nul",
        "日本",
    ]);
    let one = (name.clone(), name.clone(), name, prop::option::of(1u32..30));
    prop::collection::vec(one, 1..60).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (ar, al, ti, tr))| {
                let tn = tr.map(|n| n.to_string());
                track(i as u64 * 3 + 1, ar, al, ti, tn.as_deref())
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_track_appears_exactly_once_with_a_unique_path(tracks in arb_tracks()) {
        let (_d, snap) = publish(&build(&tracks));
        let list = listing(&snap);
        let files: Vec<_> = list.iter().filter(|l| !l.2).collect();
        prop_assert_eq!(files.len(), tracks.len());
        let paths: BTreeSet<&String> = list.iter().map(|l| &l.0).collect();
        prop_assert_eq!(paths.len(), list.len(), "paths are unique");
        let inos: BTreeSet<u64> = list.iter().map(|l| l.1).collect();
        prop_assert_eq!(inos.len(), list.len(), "inodes are unique");
        let ids: BTreeSet<u64> = files.iter().map(|l| l.1 - FILE_INO_BASE).collect();
        let want: BTreeSet<u64> = tracks.iter().map(|t| t.id.0).collect();
        prop_assert_eq!(ids, want);
        for (path, ino, _, _, _) in &list {
            prop_assert_eq!(snap.node(*ino).unwrap().ino(), *ino);
            for c in path.split('/') {
                prop_assert!(!c.is_empty() && c != "." && c != ".." && c.len() <= 255);
                prop_assert!(!c.contains('\0'));
            }
        }
    }

    #[test]
    fn snapshot_round_trip_equals_the_in_memory_tree(tracks in arb_tracks()) {
        let tree = build(&tracks);
        let (_d, snap) = publish(&tree);
        prop_assert_eq!(snap.node_count(), tree.nodes.len());
        for (i, n) in tree.nodes.iter().enumerate() {
            let s = snap.node(n.ino).unwrap();
            prop_assert_eq!(s.size(), n.size);
            prop_assert_eq!(s.mtime_ns(), n.mtime_ns);
            prop_assert_eq!(s.is_dir(), n.kind == musicfs_core::tree::KIND_DIR);
            let name = &tree.names[n.name_off as usize..(n.name_off + n.name_len as u64) as usize];
            prop_assert_eq!(s.name(), name);
            prop_assert_eq!(s.parent_ino(), tree.nodes[n.parent as usize].ino);
            if i > 0 {
                let parent = tree.nodes[n.parent as usize].ino;
                prop_assert_eq!(snap.lookup(parent, name).unwrap().ino(), n.ino);
            }
        }
    }

    #[test]
    fn a_damaged_snapshot_never_panics_or_loops(
        tracks in arb_tracks(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let (dir, _snap) = publish(&build(&tracks));
        let path = dir.path().join("tree.snap");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, mask) in flips {
            let i = 64 + at.index(bytes.len() - 64);
            bytes[i] ^= mask;
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(snap) = Snapshot::open(&path) {
            for (p, n) in snap.walk() {
                let _ = (snap.node(n.ino()), n.file(), n.nlink(), n.parent_ino());
                let _ = snap.lookup(n.parent_ino(), p.rsplit(|b| *b == b'/').next().unwrap());
                let _ = snap.children(n.ino(), 1).count();
            }
        }
    }

    #[test]
    fn inodes_are_equal_across_two_builds_of_the_same_catalog(tracks in arb_tracks()) {
        let mut reversed = tracks.clone();
        reversed.reverse();
        let (_a, one) = publish(&build(&tracks));
        let (_b, two) = publish(&build(&reversed));
        let a: BTreeMap<String, u64> = listing(&one).into_iter().map(|l| (l.0, l.1)).collect();
        let b: BTreeMap<String, u64> = listing(&two).into_iter().map(|l| (l.0, l.1)).collect();
        prop_assert_eq!(a, b);
    }
}

fn owned(id: u64, artist: &str, album: &str, mode: u32, uid: u32, gid: u32) -> TrackRecord {
    let mut t = track(id, artist, album, &format!("T{id}"), None);
    t.scan.perm = Some(musicfs_core::Perm { mode, uid, gid });
    t
}

#[test]
fn files_carry_their_sources_owner_and_mode_into_the_snapshot() {
    let tracks = vec![
        owned(1, "Ann", "One", 0o4750, 10, 20),
        track(2, "Bob", "Two", "T2", None),
    ];
    let (_dir, snap) = publish(&build(&tracks));

    let ann = snap.node(FILE_INO_BASE + 1).unwrap();
    assert_eq!(
        (ann.perm_bits(), ann.uid(), ann.gid()),
        (Some(0o4750), Some(10), Some(20))
    );
    let bob = snap.node(FILE_INO_BASE + 2).unwrap();
    assert_eq!((bob.perm_bits(), bob.uid(), bob.gid()), (None, None, None));
}

#[test]
fn a_directory_grants_search_with_the_read_bits_of_the_files_below_and_their_shared_owner() {
    let tracks = vec![
        owned(1, "Ann", "One", 0o600, 10, 20),
        owned(2, "Ann", "Two", 0o640, 10, 21),
        owned(3, "Cy", "Three", 0o000, 30, 30),
    ];
    let (_dir, snap) = publish(&build(&tracks));

    let ann = snap.lookup(ROOT_INO, b"Ann").unwrap();
    assert_eq!(
        ann.perm_bits(),
        Some(0o550),
        "r from 0600 and 0640 → r-xr-x---"
    );
    assert_eq!(ann.uid(), Some(10), "both files are uid 10");
    assert_eq!(ann.gid(), None, "gids 20 and 21 differ");
    let one = snap.lookup(ann.ino(), b"One (1969) [FLAC]").unwrap();
    assert_eq!((one.perm_bits(), one.gid()), (Some(0o500), Some(20)));
    let cy = snap.lookup(ROOT_INO, b"Cy").unwrap();
    assert_eq!((cy.perm_bits(), cy.uid()), (Some(0), Some(30)));
    let root = snap.root();
    assert_eq!((root.perm_bits(), root.uid()), (Some(0o550), None));
}

#[test]
fn a_directory_over_a_file_of_unknown_mode_is_readable_by_all_and_of_unknown_owner() {
    let tracks = vec![
        owned(1, "Ann", "One", 0o600, 10, 20),
        track(2, "Ann", "Two", "T2", None),
    ];
    let (_dir, snap) = publish(&build(&tracks));

    let ann = snap.lookup(ROOT_INO, b"Ann").unwrap();
    assert_eq!((ann.perm_bits(), ann.uid()), (Some(0o555), None));
}

#[test]
fn an_empty_trees_root_has_unknown_mode_and_owner() {
    let (_dir, snap) = publish(&build(&[]));
    let root = snap.root();
    assert_eq!(
        (root.perm_bits(), root.uid(), root.gid()),
        (None, None, None)
    );
}
