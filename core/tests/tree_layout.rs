//! The tree builder's exact output pinned for a fixture library: a change to how the
//! builder stores its pending tracks (issue 12: bounded memory) must not move a single
//! inode, node, name or source path. The digest below was taken from the builder before
//! that change; the byte blobs' internal order is free, so nodes are compared through
//! their names and paths, never through offsets.

use std::path::PathBuf;

use musicfs_core::tree::{TreeBuilder, TreeData};
use musicfs_core::{Format, OriginId, Perm, ScanState, TrackId, TrackMeta, TrackRecord};
use xxhash_rust::xxh3::Xxh3;

/// A small deterministic generator (no test may depend on a random seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() as usize) % from.len()]
    }
}

fn record(id: u64, rng: &mut Lcg) -> TrackRecord {
    let perm = match rng.next() % 4 {
        0 => None,
        1 => Some(Perm {
            mode: 0o640,
            uid: 1000,
            gid: 100,
        }),
        2 => Some(Perm {
            mode: 0o604,
            uid: 1001,
            gid: 100,
        }),
        _ => Some(Perm {
            mode: 0o4755,
            uid: 1000,
            gid: 1000,
        }),
    };
    TrackRecord {
        id: TrackId(id),
        origin: OriginId((id % 3) as u32),
        rel_path: format!("src/{}/{id}.flac", rng.next() % 50).into_bytes(),
        format: Format::Flac,
        scan: ScanState {
            size: 1000 + rng.next() % 100_000,
            mtime_ns: 1_700_000_000_000_000_000 + (rng.next() as i64) * 1000,
            ino: rng.next(),
            ctime_ns: rng.next() as i64,
            perm,
        },
        meta: TrackMeta::default(),
    }
}

/// Rendered paths with every kind of clash: equal file names in one directory, a file
/// named like a sibling directory, a file already named like a clash's first suffix,
/// non-ASCII names sorting by bytes, names at NAME_MAX, tracks with no components.
fn components(rng: &mut Lcg) -> Vec<String> {
    let artists = [
        "Abba",
        "abba",
        "Äbba",
        "Zed",
        "Björk",
        "坂本龍一",
        "The Band",
    ];
    let albums = ["One", "Two (1999)", "Three", "One.flac", "Ünicode"];
    let titles = [
        "01 - Intro.flac",
        "02 - Song.flac",
        "02 - Song (2).flac",
        "One.flac",
        "Two (1999)",
        ".hidden",
        "noext",
    ];
    match rng.next() % 20 {
        0 => Vec::new(),
        1 => vec![rng.pick(&artists).to_owned()],
        2 => vec![
            rng.pick(&artists).to_owned(),
            format!("{}.flac", "x".repeat(250)),
        ],
        3 => vec![
            rng.pick(&artists).to_owned(),
            rng.pick(&albums).to_owned(),
            "CD1".to_owned(),
            rng.pick(&titles).to_owned(),
        ],
        _ => vec![
            rng.pick(&artists).to_owned(),
            rng.pick(&albums).to_owned(),
            rng.pick(&titles).to_owned(),
        ],
    }
}

fn fixture_tree() -> TreeData {
    let mut rng = Lcg(12);
    let roots = vec![
        PathBuf::from("/music"),
        PathBuf::new(),
        PathBuf::from("/more"),
    ];
    let mut b = TreeBuilder::new("$artist/$album/$title", roots);
    b.set_catalog_version(42);
    // Catalog order is by id, but ids need not be dense.
    for id in (1..4000u64).map(|i| i * 3 + i % 7) {
        let track = record(id, &mut rng);
        let parts = components(&mut rng);
        b.add(&track, &parts);
    }
    b.build()
}

fn digest(tree: &TreeData) -> u64 {
    let mut h = Xxh3::new();
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(tree.template.as_bytes());
    put(&tree.catalog_version.to_le_bytes());
    for o in &tree.origins {
        put(o);
    }
    put(&tree.track_count.to_le_bytes());
    put(&tree.total_size.to_le_bytes());
    for n in &tree.nodes {
        let name = &tree.names[n.name_off as usize..][..n.name_len as usize];
        let path = &tree.paths[n.path_off as usize..][..n.path_len as usize];
        put(name);
        put(path);
        for v in [n.ino, n.size, n.mtime_ns as u64, n.track_id, n.generation] {
            put(&v.to_le_bytes());
        }
        let small = [
            n.parent,
            n.first_child,
            n.child_count,
            n.subdirs,
            n.origin,
            n.kind,
            n.mode,
            n.uid,
            n.gid,
        ];
        for v in small {
            put(&v.to_le_bytes());
        }
    }
    for e in &tree.by_ino {
        put(&e.ino.to_le_bytes());
        put(&e.node.to_le_bytes());
    }
    h.digest()
}

#[test]
fn the_builder_lays_out_the_fixture_library_exactly_as_before() {
    let tree = fixture_tree();
    assert_eq!(tree.track_count, 3999);
    let names: Vec<&[u8]> = tree
        .nodes
        .iter()
        .map(|n| &tree.names[n.name_off as usize..][..n.name_len as usize])
        .collect();
    let has = |s: &str| {
        names
            .iter()
            .filter(|n| n.windows(s.len()).any(|w| w == s.as_bytes()))
            .count()
    };
    // The fixture exercises what it claims to: suffixed clashes, second suffixes, long names.
    assert!(has(" (2)") > 0 && has(" (3)") > 0);
    assert!(names.iter().any(|n| n.len() == 255));
    assert_eq!(digest(&tree), 89645020918995696, "layout digest");
}

#[test]
fn the_layout_is_the_same_build_after_build() {
    assert_eq!(digest(&fixture_tree()), digest(&fixture_tree()));
}

#[test]
fn a_streamed_snapshot_holds_exactly_the_archive_of_the_tree() {
    let tree = fixture_tree();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree.snap");
    musicfs_core::snapshot::Snapshot::write(&path, &tree, 3).unwrap();
    let snap = musicfs_core::snapshot::Snapshot::open_verified(&path).unwrap();
    assert_eq!(snap.generation(), 3);
    assert_eq!(snap.track_count(), tree.track_count);
    let file = std::fs::read(&path).unwrap();
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&tree).unwrap();
    assert_eq!(&file[64..], &archive[..]);
}
