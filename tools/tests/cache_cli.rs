//! `musicfs cache verify` and `musicfs cache stats` on a cache filled through the library,
//! before and after a byte of a pack is damaged.

use std::path::Path;
use std::process::{Command, Output};

use musicfs_chunker::{chunk_file, Params};
use musicfs_storage::cas::{Cas, CasOptions};

fn musicfs(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_musicfs"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("MUSICFS_CONFIG")
        .env_remove("MUSICFS_STATE_DIR")
        .output()
        .expect("run musicfs")
}

fn fill(state: &Path) -> u64 {
    let data = musicfs_chunker::noise(3_000_000, 0x1234_5678_9abc_def1);
    let cas = Cas::open(&state.join("cas"), CasOptions::default()).expect("open cache");
    let chunks = chunk_file(&data, Params::AUDIO).1;
    for key in [&b"origin\0a.flac\0v1"[..], b"origin\0copy.flac\0v1"] {
        cas.put_chunks(key, 0, &data, &chunks).expect("put");
    }
    data.len() as u64
}

#[test]
fn cache_verify_passes_on_a_good_cache_and_reports_a_damaged_chunk() {
    let state = tempfile::tempdir().expect("tempdir");
    let len = fill(state.path());

    let ok = musicfs(state.path(), &["cache", "verify"]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains(&format!("({len} bytes)")) && out.ends_with("ok\n"),
        "{out}"
    );

    let stats = musicfs(state.path(), &["cache", "stats"]);
    let out = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success());
    assert!(out.contains(&format!("stored_bytes\t{len}\n")), "{out}");
    assert!(
        out.contains(&format!("logical_bytes\t{}\n", 2 * len)),
        "{out}"
    );
    assert!(out.contains("dedup_ratio\t2.000\n"), "{out}");

    let pack = state.path().join("cas/packs/00000001.pack");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    bytes[1_000_000] ^= 1;
    std::fs::write(&pack, &bytes).expect("damage pack");

    let bad = musicfs(state.path(), &["cache", "verify"]);
    let out = String::from_utf8_lossy(&bad.stdout);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("problem: chunk ") && out.contains("do not match"),
        "{out}"
    );
    assert!(err.contains("1 problem(s)"), "{err}");
}
