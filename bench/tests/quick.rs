//! `musicfs-bench run --quick` end to end: every peer that started reports every metric
//! it was expected to (never a timing threshold). Needs root and /dev/fuse, so it only
//! runs with the `e2e` feature.
#![cfg(feature = "e2e")]

use std::process::Command;

#[test]
fn quick_run_reports_every_metric_for_every_started_peer() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && std::path::Path::new("/dev/fuse").exists(),
        "e2e needs root and /dev/fuse"
    );
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("out");
    let status = Command::new(env!("CARGO_BIN_EXE_musicfs-bench"))
        .args(["run", "--quick", "--library"])
        .arg(work.path().join("lib"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run musicfs-bench");
    assert!(status.success(), "musicfs-bench run --quick failed");
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let report: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let peers = report["peers"].as_array().expect("peers array");
    let names: Vec<&str> = peers.iter().filter_map(|p| p["name"].as_str()).collect();
    for want in [
        "native",
        "musicfs",
        "musicfs-plain",
        "musicfs-uring",
        "bindfs",
        "mergerfs",
        "rclone",
        "musefs",
    ] {
        assert!(
            names.contains(&want),
            "peer {want} missing from the report (skips must be reported)"
        );
    }
    for p in peers {
        let name = p["name"].as_str().unwrap_or("?");
        if p["status"] != "ok" {
            assert!(
                p["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{name} skipped without a reason"
            );
            continue;
        }
        let expected = p["expected"].as_array().expect("expected list");
        assert!(!expected.is_empty(), "{name} expected no metric");
        for m in expected {
            let m = m.as_str().expect("metric name");
            let got = &p["metrics"][m];
            assert!(got.is_object(), "{name}: metric {m} missing");
            assert!(
                got.get("error").is_none(),
                "{name}: metric {m} failed: {}",
                got["error"]
            );
            assert!(
                got.get("p50").is_some() || got.get("value").is_some(),
                "{name}: metric {m} has no figure"
            );
        }
    }
    let native = peers
        .iter()
        .find(|p| p["name"] == "native")
        .expect("native");
    assert_eq!(native["status"], "ok", "native must always run");
    let musicfs = peers
        .iter()
        .find(|p| p["name"] == "musicfs")
        .expect("musicfs");
    assert_eq!(
        musicfs["status"], "ok",
        "musicfs did not start: {}",
        musicfs["reason"]
    );
    assert!(
        musicfs["metrics"]["stat_warm"]["ratio_p50"].is_number(),
        "ratios to native missing"
    );
    let transport = musicfs["mode"]["transport"].as_str().unwrap_or("");
    assert!(
        !transport.is_empty() && transport != "(absent)",
        "musicfs mode (root xattr user.musicfs.transport) not recorded: {}",
        musicfs["mode"]
    );
    assert!(
        report["not_built"]["search"].is_string(),
        "search must be listed as not built"
    );
    let scanners = report["scanners"].as_array().expect("scanners");
    assert!(scanners
        .iter()
        .any(|s| s["name"] == "musicfs" && s["status"] == "ok"));
}
