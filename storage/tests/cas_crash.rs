//! Kill -9 at random points while a child process writes to the chunk store; after each
//! kill the store must open and verify clean.
//!
//! The child is this test binary run again with `MUSICFS_CAS_CRASH_DIR` set, so it runs
//! `crash_child_writes_until_killed` (a no-op in a normal test run).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use musicfs_chunker::{chunk_file, Params, Sizes};
use musicfs_storage::cas::{Cas, CasOptions};

const DIR_VAR: &str = "MUSICFS_CAS_CRASH_DIR";

fn opts() -> CasOptions {
    CasOptions {
        budget: 2 << 20,
        pack_size: 512 << 10,
        map_size: 64 << 20,
        ..CasOptions::default()
    }
}

fn params() -> Params {
    Params {
        tag: Sizes::new(256, 1024, 4096).unwrap_or(Params::AUDIO.tag),
        audio: Sizes::new(1024, 8192, 32768).unwrap_or(Params::AUDIO.audio),
        window: 128 << 10,
    }
}

struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 24) as u8).collect()
    }
}

/// The child: writes, rewrites, forgets and reads files until it is killed.
#[test]
fn crash_child_writes_until_killed() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let cas = Cas::open(Path::new(&dir), opts()).expect("child open");
    let mut rng = Rng::seeded();
    let shared = rng.bytes(200_000);
    let mut buf = vec![0; 64 << 10];
    loop {
        let key = format!("file{}", rng.next() % 40);
        match rng.next() % 4 {
            0 => cas.forget(key.as_bytes()).expect("forget"),
            1 => {
                cas.read_at(key.as_bytes(), 0, &mut buf).expect("read");
            }
            _ => {
                let len = 1000 + (rng.next() % 300_000) as usize;
                let mut data = rng.bytes(len);
                data.extend_from_slice(&shared);
                let chunks = chunk_file(&data, params()).1;
                cas.put_chunks(key.as_bytes(), 0, &data, &chunks)
                    .expect("put");
            }
        }
    }
}

#[test]
fn the_store_verifies_after_a_kill_at_any_point() {
    if std::env::var_os(DIR_VAR).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = Rng::seeded();
    let mut written = 0;
    for round in 0..10 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child_writes_until_killed", "--nocapture"])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let wait = Duration::from_millis(30 + rng.next() % 400);
        let start = Instant::now();
        while start.elapsed() < wait {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("round {round}: the writer stopped by itself: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let cas = Cas::open(dir.path(), opts()).expect("open after the kill");
        let report = cas.verify().expect("verify");
        assert!(
            report.is_ok(),
            "round {round} (killed after {wait:?}): {:#?}",
            report.problems
        );
        let stats = cas.stats().expect("stats");
        assert!(stats.stored_bytes <= opts().budget);
        written = written.max(stats.chunks);
    }
    assert!(written > 0, "the writer never committed a chunk");
}
