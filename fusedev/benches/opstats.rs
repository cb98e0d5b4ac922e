//! What counting and timing one FUSE request costs the dispatcher: an `OpTimer` guard
//! started and dropped (two clock reads, three relaxed atomic adds), alone and with two
//! threads recording the same operation (shared counters).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use musicfs_fusedev::abi;
use musicfs_fusedev::opstats::OpStats;

fn guard(c: &mut Criterion) {
    let stats = OpStats::default();
    c.bench_function("op_timer_lookup", |b| {
        b.iter(|| drop(black_box(stats.start(black_box(abi::FUSE_LOOKUP)))))
    });
    c.bench_function("op_timer_unlisted_opcode", |b| {
        b.iter(|| drop(black_box(stats.start(black_box(9999)))))
    });
    let shared = Arc::new(OpStats::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(shared.start(abi::FUSE_LOOKUP));
            }
        })
    };
    c.bench_function("op_timer_lookup_contended", |b| {
        b.iter(|| drop(black_box(shared.start(black_box(abi::FUSE_LOOKUP)))))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = other.join();
}

criterion_group!(benches, guard);
criterion_main!(benches);
