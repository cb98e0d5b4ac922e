//! Snapshot costs at 100k tracks (`MUSICFS_BENCH_TRACKS=N` for another size): building
//! the tree and writing the snapshot (what a full publish pays), a lookup by (parent, name)
//! in the mmapped snapshot (what every uncached FUSE LOOKUP pays), and publishing one
//! change as a delta on it (what a refresh after a one-file change pays: delta, write,
//! reopen, invalidation diff), plus a lookup through base + delta.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use musicfs_core::snapshot::delta::{self, delta_for, TrackChange};
use musicfs_core::snapshot::{invalidate_changes, InvalidationSink, Snapshot, ROOT_INO};
use musicfs_core::template::{album_key, AlbumFormats, Template, DEFAULT_TEMPLATE};
use musicfs_core::tree::TreeBuilder;
use musicfs_core::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};

/// Tracks in the synthetic library: `MUSICFS_BENCH_TRACKS`, default 100k.
fn tracks() -> u64 {
    std::env::var("MUSICFS_BENCH_TRACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// `100k`, `1m`, `10m`, or the count: the size in a benchmark group's name.
fn label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

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
    (0..tracks())
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
    let mut albums = AlbumFormats::default();
    for r in recs {
        albums.add(r);
    }
    let mut b = TreeBuilder::new(template.as_str(), vec![PathBuf::from("/music")]);
    b.set_albums(&albums);
    for r in recs {
        b.add(r, &template.render_in(r, &albums));
    }
    b.build()
}

/// A kernel that is told nothing: the diff's cost without the syscalls.
struct NoKernel;

impl InvalidationSink for NoKernel {
    fn inval_entry(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn inval_inode(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// One change published the way the refresher does it: the delta on the served snapshot,
/// written, reopened, and the invalidation diff against the served one.
fn publish_delta(
    path: &std::path::Path,
    served: &Snapshot,
    template: &Template,
    change: &TrackChange,
) {
    let d = delta_for(served, template, std::slice::from_ref(change), 2)
        .unwrap_or_else(|e| panic!("delta: {e}"));
    delta::write(path, &d, served.generation() + 1).unwrap_or_else(|e| panic!("write: {e}"));
    let next = Snapshot::open(path).unwrap_or_else(|e| panic!("open: {e}"));
    black_box(invalidate_changes(served, &next, &NoKernel));
}

fn bench_delta(
    c: &mut Criterion,
    recs: &[TrackRecord],
    template: &Template,
    path: &std::path::Path,
) {
    let served = Snapshot::open(path).unwrap_or_else(|e| panic!("open: {e}"));
    let n = recs.len() as u64;
    let mut added = recs[4].clone();
    added.id = TrackId(n + 1);
    added.rel_path.extend_from_slice(b".new");
    added.meta.title = Some("A new song".into());
    let mut retagged = recs[5].clone();
    retagged.meta.title = Some("A retitled song".into());
    retagged.scan.mtime_ns += 1;
    let before = |r: &TrackRecord| Some((album_key(r), r.format));
    let changes = [
        (
            "one_add",
            TrackChange {
                id: n + 1,
                before: None,
                after: Some(added),
            },
        ),
        (
            "one_retag",
            TrackChange {
                id: 6,
                before: before(&recs[5]),
                after: Some(retagged),
            },
        ),
        (
            "one_delete",
            TrackChange {
                id: 7,
                before: before(&recs[6]),
                after: None,
            },
        ),
    ];
    let mut g = c.benchmark_group(format!("delta_publish_{}", label(n)));
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, change) in &changes {
        g.bench_function(*name, |b| {
            b.iter(|| publish_delta(path, &served, template, change))
        });
    }
    g.finish();

    // Lookups through base + delta: a name in the delta's block, and one only in the base.
    publish_delta(path, &served, template, &changes[0].1);
    let snap = Snapshot::open(path).unwrap_or_else(|e| panic!("open: {e}"));
    let new = snap
        .node(n + 1 + 16)
        .unwrap_or_else(|| panic!("the added track"));
    let in_delta = (new.parent_ino(), new.name().to_vec());
    let far = snap
        .node(recs[recs.len() / 2].id.0 + 16)
        .unwrap_or_else(|| panic!("a track"));
    let in_base = (far.parent_ino(), far.name().to_vec());
    let mut g = c.benchmark_group(format!("delta_lookup_{}", label(n)));
    g.throughput(Throughput::Elements(1));
    for (name, (parent, child)) in [("in_delta", &in_delta), ("in_base", &in_base)] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(snap.lookup(*parent, child).map(|n| n.ino())))
        });
    }
    g.finish();
    let _ = std::fs::remove_file(musicfs_core::snapshot::delta_path(path));
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let template = Template::parse(DEFAULT_TEMPLATE).unwrap_or_else(|e| panic!("template: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("tree.snap");

    let n = recs.len();
    let mut g = c.benchmark_group(format!("snapshot_{}", label(n as u64)));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("build_and_write", |b| {
        b.iter(|| {
            let tree = build(&recs, &template);
            Snapshot::write(&path, &tree, 1).unwrap_or_else(|e| panic!("write: {e}"));
        })
    });
    g.finish();

    let started = std::time::Instant::now();
    let tree = build(&recs, &template);
    Snapshot::write(&path, &tree, 1).unwrap_or_else(|e| panic!("write: {e}"));
    drop(tree);
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    eprintln!(
        "setup: {n} tracks rendered, built and written in {:.1} s ({} MB snapshot)",
        started.elapsed().as_secs_f64(),
        bytes >> 20
    );
    let snap = Snapshot::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
    // Every (parent, name) pair of the tree, looked up in a scrambled order; gathered only
    // when the lookup benchmark runs (a walk of a 10M-node tree is not free).
    let pairs_once: std::cell::OnceCell<Vec<(u64, Vec<u8>)>> = std::cell::OnceCell::new();
    let pairs = || {
        pairs_once.get_or_init(|| {
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
            pairs
        })
    };
    let mut g = c.benchmark_group(format!("snapshot_{}_lookup", label(n as u64)));
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup", |b| {
        let pairs = pairs();
        let len = pairs.len();
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
    drop(snap);
    bench_delta(c, &recs, &template, &path);
}

criterion_group!(benches, bench);
criterion_main!(benches);
