//! Rendering cost of the default template: the tree builder renders every track once per
//! snapshot, so this bounds how fast a 1M-track library can be laid out.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use musicfs_core::template::Template;
use musicfs_core::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};

const TRACKS: usize = 10_000;

/// Deterministic xorshift so every run renders the same library.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const ARTISTS: &[&str] = &[
    "The Beatles",
    "AC/DC",
    "Beyonce\u{301}",
    "Bj\u{f6}rk",
    "\u{5742}\u{672c}\u{9f8d}\u{4e00}",
    "Sigur R\u{f3}s",
    "  Trailing Space  ",
    "Simon & Garfunkel",
];
const WORDS: &[&str] = &[
    "Love",
    "Night",
    "Blue",
    "Song",
    "Road",
    "\u{65e5}\u{672c}",
    "Caf\u{e9}",
    "Fire",
    "(Live)",
    "[Remix]",
    "Part 2",
    "Ni\u{f1}o",
];
const GENRES: &[&str] = &["Rock", "Jazz", "Electronic", "Classical", "Hip-Hop"];

fn words(rng: &mut Rng, max: usize) -> String {
    let n = 1 + rng.below(max);
    (0..n)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn library() -> Vec<TrackRecord> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..TRACKS)
        .map(|i| {
            let compilation = rng.below(10) == 0;
            let artist = rng.pick(ARTISTS).to_owned();
            let mut artists = vec![artist];
            if rng.below(8) == 0 {
                artists.push(rng.pick(ARTISTS).to_owned());
            }
            let total = 8 + rng.below(15) as u32;
            let track = match rng.below(20) {
                0 => None,
                1 => Some(format!("A{}", 1 + rng.below(6))),
                2 => Some(format!("0{}", 1 + rng.below(9))),
                _ => Some((1 + rng.below(total as usize)).to_string()),
            };
            let title = match rng.below(30) {
                0 => None,
                1 => Some(words(&mut rng, 60)),
                _ => Some(words(&mut rng, 5)),
            };
            let meta = TrackMeta {
                title,
                artist: artists,
                album: (rng.below(25) != 0).then(|| words(&mut rng, 4)),
                album_artist: if compilation {
                    vec!["Various Artists".to_owned()]
                } else {
                    Vec::new()
                },
                genre: vec![rng.pick(GENRES).to_owned()],
                date: (rng.below(6) != 0).then(|| format!("{}-05-01", 1950 + rng.below(75))),
                track,
                track_total: Some(total),
                ..TrackMeta::default()
            };
            TrackRecord {
                id: TrackId(i as u64),
                origin: OriginId(0),
                rel_path: format!("lib/{i:05} source.flac").into_bytes(),
                format: Format::ALL[rng.below(Format::ALL.len())],
                scan: ScanState::default(),
                meta,
            }
        })
        .collect()
}

fn render_default(c: &mut Criterion) {
    let template = Template::default();
    let records = library();
    let mut group = c.benchmark_group("template");
    group.throughput(Throughput::Elements(TRACKS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("render_default_10k", |b| {
        b.iter(|| {
            for r in &records {
                black_box(template.render(black_box(r)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, render_default);
criterion_main!(benches);
