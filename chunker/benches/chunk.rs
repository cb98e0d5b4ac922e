//! Chunking throughput: a 32 MiB FLAC-like file (metadata, then noise standing in for
//! compressed audio), chunked whole and one window at a time.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use musicfs_chunker::{chunk_file, Params};

fn file(len: usize) -> Vec<u8> {
    let mut f = b"fLaC\x80\x00\x10\x00".to_vec();
    f.extend(std::iter::repeat_n(b'm', 0x1000));
    f.extend(musicfs_chunker::noise(len, 0x9E37_79B9_7F4A_7C15));
    f
}

fn bench(c: &mut Criterion) {
    let data = file(32 << 20);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("file_32MiB", |b| {
        b.iter(|| {
            chunk_file(std::hint::black_box(&data), Params::AUDIO)
                .1
                .len()
        })
    });
    let (layout, _) = chunk_file(&data, Params::AUDIO);
    g.bench_function("window_by_window_32MiB", |b| {
        b.iter(|| {
            layout
                .windows()
                .map(|w| {
                    let bytes = &data[w.start as usize..w.end as usize];
                    layout.chunk_range(w.start, bytes).map_or(0, |c| c.len())
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
