//! A delta must show exactly what a full render of the changed library shows.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::meta::{OriginId, Perm, ScanState, TrackId, TrackMeta};
use crate::template::{AlbumFormats, Template, DEFAULT_TEMPLATE};
use crate::tree::TreeBuilder;

fn record(id: u64, artist: u8, album: u8, title: u16, mp3: bool, mode: u32) -> TrackRecord {
    TrackRecord {
        id: TrackId(id),
        origin: OriginId(0),
        rel_path: format!("src/{id}.{}", if mp3 { "mp3" } else { "flac" }).into_bytes(),
        format: if mp3 { Format::Mp3 } else { Format::Flac },
        scan: ScanState {
            size: 1000 + id * 7,
            mtime_ns: 1_700_000_000_000_000_000 + (id as i64 * 7919) % 100_003,
            ino: id,
            ctime_ns: id as i64,
            perm: Some(Perm {
                mode,
                uid: 1000 + (mode & 1),
                gid: 100,
            }),
        },
        meta: TrackMeta {
            title: Some(format!("Title {title}")),
            artist: vec![format!("Artist {artist}")],
            album: Some(format!("Album {album}")),
            track: Some(format!("{}", title % 20 + 1)),
            date: Some("1999".into()),
            ..TrackMeta::default()
        },
    }
}

/// Renders `tracks` as `Library::publish` does and publishes them at `path`.
fn full(path: &Path, template: &Template, tracks: &BTreeMap<u64, TrackRecord>, version: u64) {
    let mut albums = AlbumFormats::default();
    for t in tracks.values() {
        albums.add(t);
    }
    let mut b = TreeBuilder::new(template.as_str(), vec![PathBuf::from("/music")]);
    b.set_catalog_version(version);
    b.set_albums(&albums);
    for t in tracks.values() {
        b.add(t, &template.render_in(t, &albums));
    }
    Snapshot::write(path, &b.build(), version).expect("write base");
}

/// Everything the mount shows of a node, with its path.
type Row = (
    String,
    u64,
    bool,
    u64,
    i64,
    u64,
    u32,
    u32,
    Option<u32>,
    Option<u32>,
    Option<Vec<u8>>,
    u64,
);

fn rows(snap: &Snapshot) -> Vec<Row> {
    let mut out = Vec::new();
    for (path, n) in std::iter::once((Vec::new(), snap.root())).chain(snap.walk()) {
        // Every node is found again by inode and by name, and knows its parent.
        let again = snap.node(n.ino()).expect("node by inode");
        assert_eq!(again.name(), n.name());
        if n.ino() != ROOT_INO {
            let by_name = snap.lookup(n.parent_ino(), n.name()).expect("lookup");
            assert_eq!(by_name.ino(), n.ino());
        }
        let kids: Vec<u64> = snap.children(n.ino(), 0).map(|k| k.ino()).collect();
        assert_eq!(
            kids.len() as u32,
            n.child_count(),
            "{}",
            String::from_utf8_lossy(&path)
        );
        for k in &kids {
            assert_eq!(snap.node(*k).expect("child").parent_ino(), n.ino());
        }
        out.push((
            String::from_utf8(path).expect("utf-8"),
            n.ino(),
            n.is_dir(),
            n.size(),
            n.mtime_ns(),
            n.generation(),
            n.nlink(),
            n.child_count(),
            n.perm_bits(),
            n.uid(),
            n.file().map(|f| f.rel_path.to_vec()),
            snap.track_count() * 1_000_000 + snap.total_size(),
        ));
    }
    out
}

/// Names (parent, name) and inodes a kernel is told to forget.
type Notices = (Vec<(u64, Vec<u8>)>, Vec<u64>);

#[derive(Default)]
struct Recorder(std::cell::RefCell<Notices>);

impl crate::snapshot::InvalidationSink for Recorder {
    fn inval_entry(&self, parent: u64, name: &[u8]) -> std::io::Result<()> {
        self.0.borrow_mut().0.push((parent, name.to_vec()));
        Ok(())
    }
    fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
        self.0.borrow_mut().1.push(ino);
        Ok(())
    }
}

/// The notices a kernel serving `old` gets when `new` is swapped in, sorted.
fn invalidations(old: &Snapshot, new: &Snapshot) -> Notices {
    let rec = Recorder::default();
    crate::snapshot::invalidate_changes(old, new, &rec);
    let (mut entries, mut inodes) = rec.0.into_inner();
    entries.sort();
    inodes.sort_unstable();
    (entries, inodes)
}

/// What happens to the library in one round.
#[derive(Debug, Clone)]
enum Op {
    Remove(usize),
    Retag(usize, u8, u8, u16),
    Chmod(usize, u32),
    Add(u8, u8, u16, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..1000).prop_map(Op::Remove),
        (0usize..1000, 0u8..4, 0u8..3, 0u16..500).prop_map(|(i, a, b, t)| Op::Retag(i, a, b, t)),
        (
            0usize..1000,
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o640)]
        )
            .prop_map(|(i, m)| Op::Chmod(i, m)),
        (0u8..5, 0u8..3, 0u16..500, proptest::bool::weighted(0.15))
            .prop_map(|(a, b, t, mp3)| Op::Add(a, b, t, mp3)),
    ]
}

/// Applies `ops` to `tracks`, returning the changes the way a scan reports them.
fn apply(tracks: &mut BTreeMap<u64, TrackRecord>, ops: &[Op]) -> Vec<TrackChange> {
    let mut changes: BTreeMap<u64, TrackChange> = BTreeMap::new();
    let mut next = tracks.keys().last().map_or(1, |k| k + 1);
    for op in ops {
        let ids: Vec<u64> = tracks.keys().copied().collect();
        let pick = |i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
        let (id, after) = match op {
            Op::Remove(i) => match pick(*i) {
                Some(id) => (id, None),
                None => continue,
            },
            Op::Retag(i, a, b, t) => match pick(*i) {
                Some(id) => {
                    let mut r = tracks[&id].clone();
                    r.meta.artist = vec![format!("Artist {a}")];
                    r.meta.album = Some(format!("Album {b}"));
                    r.meta.title = Some(format!("Title {t}"));
                    r.scan.mtime_ns += 1;
                    (id, Some(r))
                }
                None => continue,
            },
            Op::Chmod(i, mode) => match pick(*i) {
                Some(id) => {
                    let mut r = tracks[&id].clone();
                    r.scan.perm = Some(Perm {
                        mode: *mode,
                        uid: 1000 + (*mode & 1),
                        gid: 100,
                    });
                    (id, Some(r))
                }
                None => continue,
            },
            Op::Add(a, b, t, mp3) => {
                next += 1;
                (next, Some(record(next, *a, *b, *t, *mp3, 0o644)))
            }
        };
        let before = tracks.get(&id).map(|r| (album_key(r), r.format));
        let entry = changes.entry(id).or_insert(TrackChange {
            id,
            before,
            after: None,
        });
        entry.after = after.clone();
        match after {
            Some(r) => tracks.insert(id, r),
            None => tracks.remove(&id),
        };
    }
    changes.into_values().collect()
}

fn library(seed: &[(u8, u8, u16, bool)]) -> BTreeMap<u64, TrackRecord> {
    seed.iter()
        .enumerate()
        .map(|(i, &(a, b, t, mp3))| {
            let id = i as u64 + 1;
            (id, record(id, a, b, t, mp3, 0o644))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_delta_shows_what_a_full_render_shows(
        seed in proptest::collection::vec((0u8..4, 0u8..3, 0u16..500, proptest::bool::weighted(0.1)), 1..60),
        rounds in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..4),
    ) {
        let template = Template::parse(DEFAULT_TEMPLATE).expect("template");
        let dir = tempfile::tempdir().expect("tempdir");
        let (base, want) = (dir.path().join("tree.snap"), dir.path().join("want.snap"));
        let mut tracks = library(&seed);
        full(&base, &template, &tracks, 1);
        for (round, ops) in rounds.iter().enumerate() {
            let version = round as u64 + 2;
            let changes = apply(&mut tracks, ops);
            let served = Snapshot::open(&base).expect("open");
            // The served tree as a separate base, so the diff must walk everything.
            let copy = dir.path().join("copy.snap");
            std::fs::copy(&base, &copy).expect("copy base");
            if delta_path(&base).exists() {
                std::fs::copy(delta_path(&base), delta_path(&copy)).expect("copy delta");
            }
            match delta_for(&served, &template, &changes, version) {
                Ok(delta) => {
                    write(&base, &delta, served.generation() + 1).expect("write delta");
                }
                Err(_) => full(&base, &template, &tracks, version),
            }
            let got = Snapshot::open(&base).expect("open");
            prop_assert_eq!(got.catalog_version(), version);
            full(&want, &template, &tracks, version);
            let want_snap = Snapshot::open(&want).expect("open want");
            prop_assert_eq!(rows(&got), rows(&want_snap));
            // The O(change) diff (same base) tells the kernel what the full diff does.
            let served_copy = Snapshot::open(&copy).expect("open copy");
            prop_assert_eq!(invalidations(&served, &got), invalidations(&served_copy, &want_snap));
        }
    }
}

#[test]
fn a_small_change_is_published_as_a_delta_that_names_its_base() {
    let template = Template::parse(DEFAULT_TEMPLATE).expect("template");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("tree.snap");
    let mut tracks = library(&[(0, 0, 1, false), (0, 0, 2, false), (1, 1, 3, false)]);
    full(&base, &template, &tracks, 1);
    let served = Snapshot::open(&base).expect("open");
    let changes = apply(&mut tracks, &[Op::Add(2, 0, 9, false)]);
    let delta = delta_for(&served, &template, &changes, 2).expect("a delta");
    write(&base, &delta, 2).expect("write");
    let snap = Snapshot::open(&base).expect("open");
    assert_eq!((snap.generation(), snap.catalog_version()), (2, 2));
    assert!(snap.delta_len() > 0);
    assert_eq!(snap.base_id(), served.base_id());
    // A new base makes the delta go away.
    full(&base, &template, &tracks, 3);
    assert!(!delta_path(&base).exists());
    assert_eq!(Snapshot::open(&base).expect("open").delta_len(), 0);
}

#[test]
fn a_delta_for_another_base_or_a_damaged_one_is_ignored() {
    let template = Template::parse(DEFAULT_TEMPLATE).expect("template");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("tree.snap");
    let mut tracks = library(&[(0, 0, 1, false)]);
    full(&base, &template, &tracks, 1);
    let served = Snapshot::open(&base).expect("open");
    let changes = apply(&mut tracks, &[Op::Add(1, 1, 2, false)]);
    let delta = delta_for(&served, &template, &changes, 2).expect("a delta");
    write(&base, &delta, 2).expect("write");
    let bytes = std::fs::read(delta_path(&base)).expect("read delta");
    // Another base (as after a crash between a full publish and the delta's removal).
    full(&base, &template, &library(&[(3, 0, 1, false)]), 5);
    std::fs::write(delta_path(&base), &bytes).expect("put the old delta back");
    let snap = Snapshot::open(&base).expect("open");
    assert_eq!((snap.delta_len(), snap.catalog_version()), (0, 5));
    // A flipped byte in the delta's body.
    full(&base, &template, &library(&[(0, 0, 1, false)]), 1);
    let served = Snapshot::open(&base).expect("open");
    write(
        &base,
        &delta_for(&served, &template, &changes, 2).expect("delta"),
        2,
    )
    .expect("write");
    let mut bytes = std::fs::read(delta_path(&base)).expect("read delta");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(delta_path(&base), &bytes).expect("damage");
    let snap = Snapshot::open(&base).expect("open");
    assert_eq!((snap.delta_len(), snap.catalog_version()), (0, 1));
}

#[test]
fn clash_suffixes_are_recognised() {
    assert_eq!(clash_key(b"01 - a (2).flac"), b"01 - a.flac");
    assert_eq!(clash_key(b"01 - a (12).mp3"), b"01 - a.mp3");
    assert_eq!(clash_key(b"01 - a (x).flac"), b"01 - a (x).flac");
    assert_eq!(clash_key(b"Album (1999)"), b"Album");
    assert_eq!(clash_key(b".hidden"), b".hidden");
}
