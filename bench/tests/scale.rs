//! `musicfs-bench scale` end to end on a small tiny library: every figure has a sample
//! and no error, and the library ends as it began (never a timing threshold). Needs root
//! and /dev/fuse, so it only runs with the `e2e` feature.
#![cfg(feature = "e2e")]

use std::path::Path;
use std::process::Command;

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn scale_measures_every_figure_and_leaves_the_library_as_it_found_it() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/dev/fuse").exists(),
        "e2e needs root and /dev/fuse"
    );
    let work = tempfile::tempdir().expect("temp dir");
    let lib = work.path().join("lib");
    let bench = env!("CARGO_BIN_EXE_musicfs-bench");
    let status = Command::new(bench)
        .args(["gen", "--tracks", "400", "--tiny", "--big-mib", "1"])
        .arg(&lib)
        .status()
        .expect("run musicfs-bench gen");
    assert!(status.success(), "gen --tiny failed");
    let before = listing(&lib);
    let out = work.path().join("out");
    let status = Command::new(bench)
        .args([
            "scale",
            "--restarts",
            "1",
            "--repeats",
            "1",
            "--timeout-s",
            "60",
        ])
        .arg("--library")
        .arg(&lib)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run musicfs-bench scale");
    assert!(status.success(), "musicfs-bench scale failed");
    let text = std::fs::read_to_string(out.join("scale.json")).expect("scale.json");
    let report: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    for name in [
        "first_scan",
        "first_scan_rate",
        "first_scan_peak_rss",
        "mount_ready",
        "restart_current",
        "idle_rss_anon",
        "idle_rss",
        "restart_one_added",
        "add_visible",
        "retag_visible",
        "delete_visible",
        "serving_peak_rss",
    ] {
        let f = &report["figures"][name];
        assert!(f.is_object(), "figure {name} missing");
        assert!(f.get("error").is_none(), "{name} failed: {}", f["error"]);
        assert!(
            f["samples"].as_array().is_some_and(|s| !s.is_empty()),
            "{name} has no sample"
        );
    }
    assert_eq!(listing(&lib), before, "scale left the library changed");
}
