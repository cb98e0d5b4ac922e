//! Measures chunking on real files: `cargo run --release -p musicfs-chunker --example
//! measure -- BEFORE AFTER [BEFORE AFTER ...]`, each pair one file before and after a tag
//! edit. Prints, per parameter set, the chunk count and mean size, the index overhead
//! (100 bytes of LMDB per chunk, a fair figure for its three records), the bytes of AFTER
//! not found among BEFORE's chunks (what a tag edit re-fetches), and chunking speed.

use std::collections::HashSet;
use std::time::Instant;

use musicfs_chunker::{chunk_file, Params, Sizes};

/// Minimum, average and maximum chunk size, KiB.
type KiB3 = (u32, u32, u32);

fn sizes((min, avg, max): KiB3) -> Sizes {
    Sizes::new(min << 10, avg << 10, max << 10).expect("valid sizes")
}

/// The parameter sets compared: tag region and audio (min, average, max) in KiB.
const SETS: [(KiB3, KiB3); 5] = [
    ((1, 4, 16), (16, 64, 256)),
    ((1, 4, 16), (64, 256, 1024)),
    ((1, 4, 16), (256, 1024, 4096)),
    ((4, 16, 64), (64, 256, 1024)),
    ((16, 64, 256), (64, 256, 1024)),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [before, after] = pair else {
            eprintln!("give files in pairs: BEFORE AFTER");
            std::process::exit(2);
        };
        let a = std::fs::read(before).expect("read BEFORE");
        let b = std::fs::read(after).expect("read AFTER");
        println!("{before} ({} B) -> {after} ({} B)", a.len(), b.len());
        for (tag, audio) in SETS {
            let name = format!(
                "tag {}/{}/{}K, audio {}/{}/{}K",
                tag.0, tag.1, tag.2, audio.0, audio.1, audio.2
            );
            let p = Params {
                tag: sizes(tag),
                audio: sizes(audio),
                window: 4 << 20,
            };
            let start = Instant::now();
            let (la, ca) = chunk_file(&a, p);
            let secs = start.elapsed().as_secs_f64();
            let (lb, cb) = chunk_file(&b, p);
            let known: HashSet<u128> = ca.iter().map(|c| c.hash).collect();
            let fresh: u64 = cb
                .iter()
                .filter(|c| !known.contains(&c.hash))
                .map(|c| u64::from(c.len))
                .sum();
            let fresh_chunks = cb.iter().filter(|c| !known.contains(&c.hash)).count();
            println!(
                "  {name}: tag end {} -> {}, {} chunks (mean {} B), index {:.3}%, \
                 edit re-fetches {fresh} B in {fresh_chunks} chunks ({:.3}% saved), {:.0} MB/s",
                la.tag_end(),
                lb.tag_end(),
                ca.len(),
                a.len() / ca.len().max(1),
                100.0 * (ca.len() * 100) as f64 / a.len() as f64,
                100.0 * (1.0 - fresh as f64 / b.len() as f64),
                a.len() as f64 / secs / 1e6
            );
        }
    }
}
