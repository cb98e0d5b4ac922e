//! `musicfs scan` + `musicfs tree` on the fixture library show exactly the expected paths:
//! the default template, unicode normalisation, compilations, `3/12` and vinyl track
//! numbers, missing tags and clashing names, written out by hand.

use std::process::Command;

use musicfs_tests::harness::{binary, library};

#[test]
fn musicfs_tree_shows_exactly_the_expected_paths() {
    let lib = library();
    let state = tempfile::tempdir().unwrap();
    let scan = Command::new(binary("musicfs").unwrap())
        .arg("--state-dir")
        .arg(state.path())
        .args(["scan", "--origin"])
        .arg(&lib.root)
        .output()
        .unwrap();
    assert!(
        scan.status.success(),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let tree = Command::new(binary("musicfs").unwrap())
        .arg("--state-dir")
        .arg(state.path())
        .arg("tree")
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let got = String::from_utf8(tree.stdout).unwrap();
    let got: Vec<&str> = got.lines().collect();
    // NFD and NFC "Beyoncé" are one artist; the mixed-format compilation and the Ogg/Opus
    // album each stay one folder; `3/12` renders 03, vinyl A1 stays; a file with no tags is
    // named from its stem under Unknown Artist/Unknown Album with no `()` or `NN - `; the
    // second track rendering to an existing path gets ` (2)`; two ARTIST values are joined;
    // the symlink to `03 - Flac Song.flac` is the same track, shown once.
    let want = [
        "Alpha; Beta",
        "Alpha; Beta/Duets (1975) [FLAC]",
        "Alpha; Beta/Duets (1975) [FLAC]/02 - Together.flac",
        "Artist One",
        "Artist One/Album A (2001) [FLAC]",
        "Artist One/Album A (2001) [FLAC]/03 - Flac Song.flac",
        "Beyoncé",
        "Beyoncé/I Am... Sasha Fierce (2008) [OGG+OPUS]",
        "Beyoncé/I Am... Sasha Fierce (2008) [OGG+OPUS]/02 - Halo (Opus).opus",
        "Beyoncé/I Am... Sasha Fierce (2008) [OGG+OPUS]/A1 - Halo.ogg",
        "Collide",
        "Collide/Same Album (2020) [FLAC]",
        "Collide/Same Album (2020) [FLAC]/01 - Same Song (2).flac",
        "Collide/Same Album (2020) [FLAC]/01 - Same Song.flac",
        "M4a Band",
        "M4a Band/M4a Album (2010) [M4A]",
        "M4a Band/M4a Album (2010) [M4A]/02 - Aac Song.m4a",
        "Mp3 Artist",
        "Mp3 Artist/Mp3 Album (1999) [MP3]",
        "Mp3 Artist/Mp3 Album (1999) [MP3]/05 - Version Two Three.mp3",
        "Unknown Artist",
        "Unknown Artist/Unknown Album [FLAC+OGG]",
        "Unknown Artist/Unknown Album [FLAC+OGG]/Lonely Title.ogg",
        "Unknown Artist/Unknown Album [FLAC+OGG]/No Tags Here.flac",
        "V1 Artist",
        "V1 Artist/V1 Album (1985) [MP3]",
        "V1 Artist/V1 Album (1985) [MP3]/04 - Old School.mp3",
        "Various Artists",
        "Various Artists/Hits Compilation (2005) [FLAC+MP3]",
        "Various Artists/Hits Compilation (2005) [FLAC+MP3]/01 - Hit by Singer X.flac",
        "Various Artists/Hits Compilation (2005) [FLAC+MP3]/02 - Hit by Singer Y.mp3",
        "Wav Artist",
        "Wav Artist/Wav Album (2015) [WAV]",
        "Wav Artist/Wav Album (2015) [WAV]/06 - Riff Song.wav",
        "坂本龍一",
        "坂本龍一/音楽図鑑 (1984) [MP3]",
        "坂本龍一/音楽図鑑 (1984) [MP3]/07 - 森の人.mp3",
    ];
    assert_eq!(got, want);
}

/// `musicfs --state-dir STATE ARGS...`: its stderr; fails unless it succeeds.
fn musicfs(state: &std::path::Path, args: &[&std::ffi::OsStr]) -> (String, String) {
    let out = Command::new(binary("musicfs").unwrap())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "musicfs {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// A rescan that finds a new artist publishes a delta on the previous
/// tree, and `musicfs tree` then shows exactly what a fresh scan of the changed library
/// shows.
#[test]
fn a_small_change_is_published_as_a_delta_that_shows_what_a_fresh_scan_shows() {
    let lib = library();
    let work = tempfile::tempdir().unwrap();
    let origin = work.path().join("origin");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&lib.root)
        .arg(&origin)
        .status()
        .unwrap();
    assert!(copied.success());
    let (state, fresh) = (work.path().join("state"), work.path().join("fresh"));
    let scan = |state: &std::path::Path| {
        musicfs(
            state,
            &["scan".as_ref(), "--origin".as_ref(), origin.as_os_str()],
        )
        .1
    };
    scan(&state);

    std::fs::create_dir_all(origin.join("Newcomer")).unwrap();
    let tags = [
        ("ARTIST", "Newcomer"),
        ("ALBUM", "Debut"),
        ("TITLE", "Hello"),
        ("DATE", "2024"),
        ("TRACKNUMBER", "1"),
    ];
    musicfs_tests::harness::encode_flac(&origin.join("Newcomer/01.flac"), 0.5, 440, false, &tags)
        .unwrap();
    let again = scan(&state);
    assert!(
        again.contains("as a delta on the previous tree"),
        "the rescan published a new base: {again}"
    );
    scan(&fresh);
    let tree = |state: &std::path::Path| musicfs(state, &["tree".as_ref()]).0;
    let (got, want) = (tree(&state), tree(&fresh));
    assert!(
        got.contains("Newcomer/Debut (2024) [FLAC]/01 - Hello.flac"),
        "{got}"
    );
    assert_eq!(got, want);
}
