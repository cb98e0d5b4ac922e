//! Snapshot costs at 100k tracks: building the tree and writing the snapshot (what every
//! publish pays), and a lookup by (parent, name) in the mmapped snapshot (what every
//! uncached FUSE LOOKUP pays).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use musicfs_core::snapshot::{Snapshot, ROOT_INO};
use musicfs_core::template::{Template, DEFAULT_TEMPLATE};
use musicfs_core::tree::TreeBuilder;
use musicfs_core::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};

const TRACKS: u64 = 100_000;

fn records() -> Vec<TrackRecord> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let formats = [
        Format::Flac,
        Format::Mp3,
        Format::M4a,
        Format::Ogg,
        Format::Opus,
    ];
    (0..TRACKS)
        .map(|i| {
            let artist = format!("Artist {}", i / 60);
            let album = format!("Album {}", i / 12);
            let r = next();
            TrackRecord {
                id: TrackId(i + 1),
                origin: OriginId(0),
                rel_path: format!("{artist}/{album}/{:02} Song {r:x}.flac", i % 12 + 1)
                    .into_bytes(),
                format: formats[(i / 12 % 5) as usize],
                scan: ScanState {
                    size: 4_000_000 + (r % 1_000_000),
                    mtime_ns: 1_700_000_000_000_000_000,
                    ino: i + 1,
                    ctime_ns: 1_700_000_000_000_000_000,
                    perm: None,
                },
                meta: TrackMeta {
                    title: Some(format!("Song {r:x}")),
                    artist: vec![artist.clone()],
                    album: Some(album),
                    album_artist: vec![artist],
                    date: Some(format!("{}", 1960 + r % 60)),
                    track: Some(format!("{}", i % 12 + 1)),
                    ..TrackMeta::default()
                },
            }
        })
        .collect()
}

fn build(recs: &[TrackRecord], template: &Template) -> musicfs_core::tree::TreeData {
    let mut b = TreeBuilder::new(template.as_str(), vec![PathBuf::from("/music")]);
    for r in recs {
        b.add(r, &template.render(r));
    }
    b.build()
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let template = Template::parse(DEFAULT_TEMPLATE).unwrap_or_else(|e| panic!("template: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("tree.snap");

    let mut g = c.benchmark_group("snapshot_100k");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(TRACKS));
    g.bench_function("build_and_write", |b| {
        b.iter(|| {
            let tree = build(&recs, &template);
            Snapshot::write(&path, &tree, 1).unwrap_or_else(|e| panic!("write: {e}"));
        })
    });
    g.finish();

    let tree = build(&recs, &template);
    Snapshot::write(&path, &tree, 1).unwrap_or_else(|e| panic!("write: {e}"));
    let snap = Snapshot::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
    // Every (parent, name) pair of the tree, looked up in a scrambled order.
    let mut pairs: Vec<(u64, Vec<u8>)> = snap
        .walk()
        .into_iter()
        .filter(|(_, n)| n.ino() != ROOT_INO)
        .map(|(_, n)| (n.parent_ino(), n.name().to_vec()))
        .collect();
    let len = pairs.len();
    for i in 0..len {
        pairs.swap(i, (i * 7919) % len);
    }
    let mut g = c.benchmark_group("snapshot_100k_lookup");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % len;
                &pairs[i]
            },
            |(parent, name)| black_box(snap.lookup(*parent, name).map(|n| n.ino())),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
