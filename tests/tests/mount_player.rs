#![cfg(feature = "e2e")]
//! A real player on the mount: mpd indexes the fixture library through MusicFS and plays
//! a track from it.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use musicfs_tests::harness::{self, library, MountOptions, MountedFs};
use musicfs_tests::player::{Mpd, MPD_DEADLINE};

#[test]
fn mpd_indexes_every_good_track_and_plays_one() {
    let fs = MountedFs::start(MountOptions::new([library().root.clone()])).unwrap();
    let good: BTreeSet<&PathBuf> = library().good.iter().collect();
    let good_virtual: BTreeSet<String> = fs
        .track_sources(&[library().root.clone()])
        .unwrap()
        .into_iter()
        .filter(|(_, source)| good.contains(source))
        .map(|(virt, _)| {
            virt.strip_prefix(fs.mountpoint())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // A symlink to another good track is that track, shown once.
    assert_eq!(good_virtual.len(), distinct_good());

    let mpd = Mpd::start(fs.mountpoint());
    mpd.mpc(&["update", "--wait"]);
    let listed: BTreeSet<String> = mpd.mpc(&["listall"]).lines().map(str::to_string).collect();
    let missing: Vec<&String> = good_virtual.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "mpd did not index {missing:?}; it lists {listed:?}\n{}",
        mpd.log()
    );

    let track = good_virtual.iter().next().unwrap();
    plays(&mpd, track);
    mpd.mpc(&["stop"]);
    drop(mpd);
    assert!(
        fs.mount_entry().unwrap().is_some(),
        "daemon log:\n{}",
        fs.log()
    );
}

/// Has mpd play `track` (a path it indexed) and waits until its elapsed time advances.
fn plays(mpd: &Mpd, track: &str) {
    mpd.mpc(&["clear"]);
    mpd.mpc(&["add", track]);
    // Repeat the one track so a short fixture cannot end before we look.
    mpd.mpc(&["repeat", "on"]);
    mpd.mpc(&["single", "on"]);
    mpd.mpc(&["play"]);
    assert!(mpd.mpc(&["status"]).contains("[playing]"), "{}", mpd.log());

    let deadline = Instant::now() + MPD_DEADLINE;
    loop {
        let status = mpd.command("status");
        let get = |k: &str| {
            status
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let state = get("state").unwrap_or_default();
        let elapsed: f64 = get("elapsed").and_then(|e| e.parse().ok()).unwrap_or(0.0);
        assert_ne!(state, "stop", "playback stopped: {status:?}\n{}", mpd.log());
        if state == "play" && elapsed > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "elapsed never advanced: {status:?}\n{}",
            mpd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mpd_lists_a_collection_through_its_symlinks_and_plays_one() {
    let fs = MountedFs::start(MountOptions::new([library().root.clone()])).unwrap();
    // The search index fills in the background once the mount is up.
    harness::wait_for_log_line(
        fs.log_path(),
        0,
        &["search index updated", "cannot update the search index"],
        MPD_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fs.log()));
    let collection = fs.mountpoint().join(".collections/Recently Added");
    let links: BTreeSet<String> = fs::read_dir(&collection)
        .unwrap_or_else(|e| panic!("{e}\n{}", fs.log()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), distinct_good(), "{links:?}");

    // mpd skips dot-names inside its music directory, not the directory itself.
    let mpd = Mpd::start(&fs.mountpoint().join(".collections"));
    mpd.mpc(&["update", "--wait"]);
    let listed: BTreeSet<String> = mpd.mpc(&["listall"]).lines().map(str::to_string).collect();
    let expected: BTreeSet<String> = links
        .iter()
        .map(|l| format!("Recently Added/{l}"))
        .collect();
    let missing: Vec<&String> = expected.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "mpd did not index {missing:?}; it lists {listed:?}\n{}",
        mpd.log()
    );
    plays(&mpd, expected.iter().next().unwrap());
    mpd.mpc(&["stop"]);
}

/// The good tracks of the fixture library as the mount shows them: a symlink to another
/// of them is the same track.
fn distinct_good() -> usize {
    library()
        .good
        .iter()
        .filter(|p| !fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        .count()
}
