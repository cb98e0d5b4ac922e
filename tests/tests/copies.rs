#![cfg(feature = "e2e")]
//! Several origins as one library, on a real mount: the same track in two origins, a
//! symlink to another file of the library and an untagged copy of a tagged file each show
//! once, named and served from the preferred origin, the other copies listed in
//! `user.musicfs.alternates`, `musicfs tree --long` and `musicfs stats`; the same audio
//! under other tags (a single and its album) stays two tracks. When the preferred copy's
//! origin goes offline, a same-bytes copy elsewhere is read instead, bit-exact.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musicfs_tests::harness::{
    binary, checksum_tree, encode_flac, flac_with_comments, get_xattr, musicfs_tree_long,
    walk_files, without_album_extras, MountOptions, MountedFs,
};
use tempfile::TempDir;

/// The file's content hash (the bytes a reader gets).
fn sha(path: &Path) -> u64 {
    musicfs_tests::harness::xxh3_file(path).unwrap()
}

fn tags<'a>(title: &'a str, album: &'a str, n: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("TITLE", title),
        ("ARTIST", "Mirror Band"),
        ("ALBUM", album),
        ("TRACKNUMBER", n),
    ]
}

/// A preferred origin `a` and a second one `b`:
/// - `a/Album/0N.flac`: three tracks of distinct audio; `b/Album/` holds exact copies of
///   tracks 1 and 2 and an untagged copy of track 3 (same audio, no comments);
/// - `a/links/one.flac`: a symlink to `a/Album/01.flac`;
/// - `a/Single/01.flac`: track 1's audio tagged as a single (another album): its own track.
struct Library {
    _dir: TempDir,
    a: PathBuf,
    b: PathBuf,
    state: PathBuf,
}

fn library() -> Library {
    let dir = tempfile::Builder::new()
        .prefix("musicfs-copies-")
        .tempdir()
        .unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (a, b, state) = (root.join("a"), root.join("b"), root.join("state"));
    for d in [
        a.join("Album"),
        a.join("links"),
        a.join("Single"),
        b.join("Album"),
        state.clone(),
    ] {
        fs::create_dir_all(d).unwrap();
    }
    let raw = root.join("raw");
    fs::create_dir_all(&raw).unwrap();
    for (n, freq) in [(1, 330), (2, 440), (3, 550)] {
        let plain = raw.join(format!("{n}.flac"));
        encode_flac(&plain, 1.5, freq, true, &[]).unwrap();
        let audio = fs::read(&plain).unwrap();
        let num = n.to_string();
        let title = format!("Song {n}");
        let tagged = flac_with_comments(&audio, &tags(&title, "Mirrors", &num)).unwrap();
        fs::write(a.join(format!("Album/0{n}.flac")), &tagged).unwrap();
        if n < 3 {
            fs::write(b.join(format!("Album/0{n}.flac")), &tagged).unwrap();
        } else {
            let untagged = flac_with_comments(&audio, &[]).unwrap();
            fs::write(b.join("Album/03.flac"), untagged).unwrap();
        }
        if n == 1 {
            let single = flac_with_comments(&audio, &tags(&title, "Song 1 (Single)", "1")).unwrap();
            fs::write(a.join("Single/01.flac"), single).unwrap();
        }
    }
    std::os::unix::fs::symlink("../Album/01.flac", a.join("links/one.flac")).unwrap();
    Library {
        _dir: dir,
        a,
        b,
        state,
    }
}

fn alternates(path: &Path) -> Vec<String> {
    get_xattr(path, "user.musicfs.alternates")
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_track_shows_once_from_the_preferred_origin_and_reads_fail_over_to_a_copy() {
    let lib = library();
    let before = (
        checksum_tree(&lib.a).unwrap(),
        checksum_tree(&lib.b).unwrap(),
    );
    let mut opts = MountOptions::live(&lib.a, &lib.state);
    opts.origins = vec![lib.a.clone(), lib.b.clone()];
    opts.extra_args
        .extend(["--probe-interval", "1"].map(Into::into));
    let fs = MountedFs::start(opts).unwrap();

    let files = without_album_extras(walk_files(fs.mountpoint()).unwrap());
    let want: Vec<PathBuf> = [
        "Mirror Band/Mirrors [FLAC]/01 - Song 1.flac",
        "Mirror Band/Mirrors [FLAC]/02 - Song 2.flac",
        "Mirror Band/Mirrors [FLAC]/03 - Song 3.flac",
        "Mirror Band/Song 1 (Single) [FLAC]/01 - Song 1.flac",
    ]
    .iter()
    .map(|p| fs.path(p))
    .collect();
    assert_eq!(
        files, want,
        "each track once; the single stays its own track"
    );

    let album = fs.path("Mirror Band/Mirrors [FLAC]");
    for n in 1..=3 {
        let f = album.join(format!("0{n} - Song {n}.flac"));
        let source = get_xattr(&f, "user.musicfs.source").unwrap().unwrap();
        let source = PathBuf::from(String::from_utf8(source).unwrap());
        assert!(
            source.starts_with(&lib.a),
            "{n}: served from the preferred origin: {source:?}"
        );
        assert_eq!(
            sha(&f),
            sha(&lib.a.join(format!("Album/0{n}.flac"))),
            "{n}: bit-exact"
        );
    }
    // Track 1 is in three places: a/Album/01.flac, the symlink a/links/one.flac (the same
    // origin, so either may be the one shown) and b/Album/01.flac.
    let first = album.join("01 - Song 1.flac");
    let shown = get_xattr(&first, "user.musicfs.source").unwrap().unwrap();
    let shown = String::from_utf8(shown).unwrap();
    let mut places: Vec<String> = alternates(&first);
    places.push(format!("{shown}\tsame"));
    places.sort();
    let mut want_places = [
        lib.a.join("Album/01.flac"),
        lib.a.join("links/one.flac"),
        lib.b.join("Album/01.flac"),
    ]
    .map(|p| format!("{}\tsame", p.display()));
    want_places.sort();
    assert_eq!(places, want_places);
    assert!(!shown.starts_with(lib.b.to_str().unwrap()), "{shown}");
    let three = alternates(&album.join("03 - Song 3.flac"));
    assert_eq!(
        three,
        vec![format!(
            "{}\tretagged",
            lib.b.join("Album/03.flac").display()
        )]
    );
    assert!(alternates(&fs.path("Mirror Band/Song 1 (Single) [FLAC]/01 - Song 1.flac")).is_empty());

    let long = musicfs_tree_long(&lib.state).unwrap();
    let entry = long
        .iter()
        .find(|e| e.path == Path::new("Mirror Band/Mirrors [FLAC]/02 - Song 2.flac"))
        .unwrap();
    assert_eq!(entry.alternates, vec![(lib.b.join("Album/02.flac"), true)]);

    // The preferred origin goes away: the prober marks it offline, and the tracks whose
    // copies hold the same bytes are read from `b`.
    let hidden = lib.a.with_file_name("a-away");
    fs::rename(&lib.a, &hidden).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let offline = loop {
        let states = String::from_utf8(
            get_xattr(fs.mountpoint(), "user.musicfs.origins")
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        if states
            .lines()
            .any(|l| l.starts_with(lib.a.to_str().unwrap()) && l.contains("\toffline"))
        {
            break states;
        }
        assert!(
            Instant::now() < deadline,
            "origin a never went offline: {states}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        offline
            .lines()
            .any(|l| l.starts_with(lib.b.to_str().unwrap()) && l.contains("\tup")),
        "{offline}"
    );
    for n in 1..=2 {
        let f = album.join(format!("0{n} - Song {n}.flac"));
        assert_eq!(
            sha(&f),
            sha(&lib.b.join(format!("Album/0{n}.flac"))),
            "{n}: read from the copy"
        );
    }
    fs::rename(&hidden, &lib.a).unwrap();

    let stats = Command::new(binary("musicfs").unwrap())
        .arg("--state-dir")
        .arg(&lib.state)
        .arg("stats")
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats = String::from_utf8(stats.stdout).unwrap();
    let row = |root: &Path| -> Vec<String> {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("{}\t", root.display())))
            .unwrap_or_else(|| panic!("no row for {}: {stats}", root.display()))
            .split('\t')
            .map(str::to_owned)
            .collect()
    };
    // a: 5 tracks (3 album, link, single), 4 shown, 1 copy hidden (the link).
    let a = row(&lib.a);
    assert_eq!(&a[1..4], ["5", "4", "1"], "{stats}");
    // b: 3 tracks, none shown, all three hidden copies.
    let b = row(&lib.b);
    assert_eq!(&b[1..4], ["3", "0", "3"], "{stats}");
    assert!(
        stats
            .lines()
            .last()
            .unwrap()
            .starts_with("total\t8\t4\t4\t"),
        "{stats}"
    );

    drop(fs);
    assert_eq!(
        (
            checksum_tree(&lib.a).unwrap(),
            checksum_tree(&lib.b).unwrap()
        ),
        before,
        "origins are never written"
    );
}
