//! CAS read throughput: stores 256 MiB of noise cut by the default parameters, then reads
//! every chunk back (verified) with io_uring and with pread, from the page cache.
//! `cargo run --release -p musicfs-storage --example cas_read`

use std::time::Instant;

use musicfs_chunker::{chunk_file, Params};
use musicfs_storage::cas::{Cas, CasOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = musicfs_chunker::noise(256 << 20, 0x9E37_79B9_7F4A_7C15);
    let dir = tempfile::tempdir()?;
    let start = Instant::now();
    let chunks = chunk_file(&data, Params::AUDIO).1;
    let chunked = start.elapsed().as_secs_f64();
    {
        let cas = Cas::open(dir.path(), CasOptions::default())?;
        let start = Instant::now();
        cas.put_chunks(b"file", 0, &data, &chunks)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "chunk {:.0} MB/s, put {:.0} MB/s ({} chunks)",
            data.len() as f64 / chunked / 1e6,
            data.len() as f64 / secs / 1e6,
            chunks.len()
        );
    }
    for uring in [true, false] {
        let cas = Cas::open(
            dir.path(),
            CasOptions {
                io_uring: uring,
                ..CasOptions::default()
            },
        )?;
        let mut buf = Vec::new();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            for c in &chunks {
                if !cas.get(c.hash, &mut buf)? {
                    return Err("miss".into());
                }
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "get ({}): {:.0} MB/s, {:.1} µs per chunk",
            if uring { "io_uring" } else { "pread" },
            data.len() as f64 / best / 1e6,
            best * 1e6 / chunks.len() as f64
        );
    }
    Ok(())
}
