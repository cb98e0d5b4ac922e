#![cfg(feature = "e2e")]
//! Search and collections on a real mount: `/.search/<query>/` and `/.collections/<name>/`
//! list symlinks into the tree, best first, with known answers on a small library whose
//! tags each test sets; a tag changed at the origin shows in both; `musicfs search` prints
//! what the mount shows.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use musicfs_tests::harness::{
    self, flac_with_comments, run_ok, wait_for_log_line, xxh3_file, MountOptions, MountedFs,
};

/// How long the index may take to catch up (a failure bound, not a speed target).
const CAUGHT_UP: Duration = Duration::from_secs(30);
const INDEXED: &[&str] = &["search index updated", "cannot update the search index"];

/// (file, title, artist, album, genre, date)
const SONGS: [(&str, &str, &str, &str, &str, &str); 7] = [
    (
        "a.flac",
        "So What",
        "Miles Davis",
        "Kind of Blue",
        "Jazz",
        "1959",
    ),
    (
        "b.flac",
        "A Love Supreme",
        "John Coltrane",
        "A Love Supreme",
        "Jazz",
        "1965",
    ),
    ("c.flac", "Jóga", "Björk", "Homogenic", "Electronic", "1997"),
    (
        "d.flac",
        "Come Together",
        "The Beatles",
        "Abbey Road",
        "Rock",
        "1969",
    ),
    (
        "e.flac",
        "Take Five",
        "Dave Brubeck",
        "Time Out",
        "Jazz",
        "1959",
    ),
    (
        "f.flac",
        "Something",
        "The Beatles",
        "Abbey Road",
        "Rock",
        "1969",
    ),
    (
        "g.flac",
        "Maiden Voyage",
        "Herbie Hancock",
        "Maiden Voyage",
        "Jazz",
        "1965",
    ),
];

fn write_song(dir: &Path, song: &(&str, &str, &str, &str, &str, &str), track: usize) {
    let (file, title, artist, album, genre, date) = *song;
    let n = track.to_string();
    let bytes = flac_with_comments(
        harness::one_second_flac(),
        &[
            ("TITLE", title),
            ("ARTIST", artist),
            ("ALBUM", album),
            ("GENRE", genre),
            ("DATE", date),
            ("TRACKNUMBER", &n),
        ],
    )
    .unwrap();
    // Written aside and renamed: the daemon never sees half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, dir.join(file)).unwrap();
}

struct Rig {
    _origin: tempfile::TempDir,
    origin: PathBuf,
    _state: tempfile::TempDir,
    fs: MountedFs,
}

fn rig() -> Rig {
    rig_with("")
}

/// [`rig`] with `top` (top-level keys) at the head of its config.
fn rig_with(top: &str) -> Rig {
    let origin_dir = tempfile::tempdir().unwrap();
    let origin = origin_dir.path().canonicalize().unwrap();
    for (i, s) in SONGS.iter().enumerate() {
        write_song(&origin, s, i + 1);
    }
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("musicfs.toml");
    fs::write(
        &config,
        top.to_string()
            + "[collections.jazz60s]\n\
         query = \"genre:jazz year:[1960 TO 1969]\"\n\
         sort = \"title\"\n\
         [collections.oldest]\n\
         query = \"*\"\n\
         sort = \"year\"\n\
         limit = 2\n",
    )
    .unwrap();
    let mut opts = MountOptions::live(&origin, &state.path().join("state"));
    opts.config = Some(config);
    opts.log_level = Some("info,musicfs_index::refresh=debug".into());
    let fs = MountedFs::start(opts).unwrap();
    // The index fills in the background after the mount is up.
    wait_for_log_line(fs.log_path(), 0, INDEXED, CAUGHT_UP)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", fs.log()));
    assert!(
        !fs.log().contains("cannot update the search index"),
        "{}",
        fs.log()
    );
    Rig {
        _origin: origin_dir,
        origin,
        _state: state,
        fs,
    }
}

impl Rig {
    /// The entries of `dir` under the mount, sorted, each with the origin file its symlink
    /// resolves to (by content: the bytes read through the link are the origin file's).
    fn listing(&self, dir: &str) -> Vec<(String, String)> {
        let path = self.fs.mountpoint().join(dir);
        let mut out: Vec<(String, String)> = fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("listing {}: {e}\n{}", path.display(), self.fs.log()))
            .map(|e| {
                let e = e.unwrap();
                let meta = fs::symlink_metadata(e.path()).unwrap();
                assert!(
                    meta.file_type().is_symlink(),
                    "{:?} is not a symlink",
                    e.path()
                );
                let name = e.file_name().to_string_lossy().into_owned();
                (name, self.source_of(&e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// The origin file whose bytes `link` reads.
    fn source_of(&self, link: &Path) -> String {
        let sum = xxh3_file(link).unwrap_or_else(|e| panic!("reading {link:?}: {e:#}"));
        SONGS
            .iter()
            .map(|s| s.0)
            .find(|f| xxh3_file(&self.origin.join(f)).unwrap() == sum)
            .unwrap_or_else(|| panic!("{link:?} reads no origin file"))
            .to_string()
    }

    /// The origin files `/.search/<query>/` resolves to, in rank order.
    fn search(&self, query: &str) -> Vec<String> {
        self.listing(&format!(".search/{query}"))
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    fn search_set(&self, query: &str) -> BTreeSet<String> {
        self.search(query).into_iter().collect()
    }
}

fn set(files: &[&str]) -> BTreeSet<String> {
    files.iter().map(|f| f.to_string()).collect()
}

#[test]
fn search_directories_answer_queries_with_links_into_the_tree() {
    let r = rig();
    let before = harness::checksum_tree(&r.origin).unwrap();
    assert_eq!(r.search_set("beatles"), set(&["d.flac", "f.flac"]));
    assert_eq!(
        r.search_set("genre:jazz"),
        set(&["a.flac", "b.flac", "e.flac", "g.flac"])
    );
    assert_eq!(r.search_set("\"abbey road\""), set(&["d.flac", "f.flac"]));
    assert!(r.search_set("\"road abbey\"").is_empty());
    assert_eq!(r.search_set("coltrain~"), set(&["b.flac"]), "fuzzy");
    assert!(r.search_set("coltrain").is_empty());
    assert_eq!(
        r.search_set("year:[1960 TO 1969]"),
        set(&["b.flac", "d.flac", "f.flac", "g.flac"])
    );
    assert_eq!(
        r.search_set("genre:jazz AND NOT year:1959"),
        set(&["b.flac", "g.flac"])
    );
    assert_eq!(r.search_set("davis OR hancock"), set(&["a.flac", "g.flac"]));
    for q in ["bjork", "BJÖRK", "joga"] {
        assert_eq!(r.search_set(q), set(&["c.flac"]), "{q}");
    }
    // Best first: the title match ranks above matches of the album alone.
    let ranked = r.listing(".search/title:supreme OR supreme");
    assert_eq!(ranked[0].1, "b.flac");
    assert!(
        ranked[0]
            .0
            .starts_with("001 - John Coltrane - A Love Supreme.flac"),
        "{ranked:?}"
    );

    // A link points into the tree, relative, so it resolves wherever the mount is.
    let link =
        r.fs.mountpoint()
            .join(".search/bjork/001 - Björk - Jóga.flac");
    let target = fs::read_link(&link).unwrap_or_else(|e| panic!("{e}\n{}", r.fs.log()));
    assert!(target.starts_with("../../Björk/"), "{target:?}");
    assert_eq!(
        fs::read(&link).unwrap(),
        fs::read(r.origin.join("c.flac")).unwrap(),
        "bit-exact through the link"
    );

    // A query that does not parse: no such directory, and one log line saying why.
    let bad = r.fs.mountpoint().join(".search/year:[1960 1969]");
    assert_eq!(fs::metadata(&bad).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(r.fs.log().contains("no such search"), "{}", r.fs.log());

    // `/.search` lists the recent queries; the root does not list `/.search`.
    let recent: BTreeSet<String> = fs::read_dir(r.fs.mountpoint().join(".search"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        recent.contains("beatles") && recent.contains("genre:jazz"),
        "{recent:?}"
    );
    let root: Vec<String> = fs::read_dir(r.fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root.iter().any(|n| n.starts_with('.')), "{root:?}");

    // `musicfs search` prints what the mount shows.
    let out = run_ok(
        std::process::Command::new(harness::binary("musicfs").unwrap())
            .arg("--state-dir")
            .arg(r.fs.state_dir())
            .args(["search", "--json", "genre:jazz year:[1960 TO 1969]"]),
    )
    .unwrap();
    let printed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = printed
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mut shown: Vec<String> = r
        .listing(".search/genre:jazz year:[1960 TO 1969]")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    shown.sort();
    assert_eq!(names, shown);
    assert_eq!(
        harness::checksum_tree(&r.origin).unwrap(),
        before,
        "origin untouched"
    );
}

#[test]
fn collections_list_their_tracks_and_follow_tag_changes() {
    let r = rig();
    let names: BTreeSet<String> = fs::read_dir(r.fs.mountpoint().join(".collections"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        set(&[
            "Most Played",
            "Recently Added",
            "Recently Played",
            "jazz60s",
            "oldest"
        ])
    );
    let jazz = r.listing(".collections/jazz60s");
    assert_eq!(
        jazz.iter()
            .map(|(n, f)| (n.as_str(), f.as_str()))
            .collect::<Vec<_>>(),
        [
            ("001 - John Coltrane - A Love Supreme.flac", "b.flac"),
            ("002 - Herbie Hancock - Maiden Voyage.flac", "g.flac"),
        ],
        "sorted by title"
    );
    let oldest: BTreeSet<String> = r
        .listing(".collections/oldest")
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(oldest, set(&["a.flac", "e.flac"]), "limit 2, by year");
    assert_eq!(r.listing(".collections/Recently Added").len(), SONGS.len());
    assert_eq!(
        fs::metadata(r.fs.mountpoint().join(".collections/nope"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    // Retag "Something" as 1960s jazz at the origin: it joins the collection and the
    // search, and leaves "rock".
    let from = fs::read(r.fs.log_path()).unwrap().len();
    let mut song = SONGS[5];
    song.4 = "Jazz";
    song.5 = "1968";
    write_song(&r.origin, &song, 6);
    wait_for_log_line(r.fs.log_path(), from, INDEXED, CAUGHT_UP)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", r.fs.log()));
    let jazz: Vec<String> = r
        .listing(".collections/jazz60s")
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(jazz, ["b.flac", "g.flac", "f.flac"], "{}", r.fs.log());
    assert_eq!(r.search_set("genre:rock"), set(&["d.flac"]));
    assert!(r.search_set("genre:jazz").contains("f.flac"));
}

/// The titles a collection lists, in its order (from the names alone: reading through the
/// links would be plays too).
fn titles(r: &Rig, collection: &str) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(r.fs.mountpoint().join(".collections").join(collection))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            let stem = n.rsplit_once('.').map_or(n.as_str(), |(s, _)| s);
            stem.rsplit(" - ").next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn plays_fill_recently_played_and_most_played() {
    // Every open counts as a play here; the default asks for 10 s held open.
    let r = rig_with("play_after_secs = 0\n");
    assert!(titles(&r, "Recently Played").is_empty());
    let track = |title: &str| {
        let files = harness::walk_files(r.fs.mountpoint()).unwrap();
        let rel = files
            .iter()
            .find(|p| p.to_string_lossy().contains(title))
            .unwrap_or_else(|| panic!("no {title} in {files:?}"));
        r.fs.mountpoint().join(rel)
    };
    let (so_what, supreme, joga) = (track("So What"), track("A Love Supreme"), track("Jóga"));
    // A play is counted when the kernel releases the file, which it does after close
    // returns, on any worker: each play is waited for before the next, so their order is
    // the one played (the recorder writes in the background).
    let play_and_wait = |p: &Path, shown: &dyn Fn() -> bool| {
        fs::read(p).unwrap();
        let deadline = std::time::Instant::now() + CAUGHT_UP;
        while !shown() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}\n{}",
                titles(&r, "Recently Played"),
                r.fs.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first_of = |collection: &str, title: &str| {
        titles(&r, collection).first().map(String::as_str) == Some(title)
    };
    // Each wait only passes once its own play is recorded (the title moves to the front).
    play_and_wait(&so_what, &|| first_of("Recently Played", "So What"));
    play_and_wait(&supreme, &|| first_of("Recently Played", "A Love Supreme"));
    play_and_wait(&so_what, &|| first_of("Recently Played", "So What"));
    play_and_wait(&joga, &|| first_of("Recently Played", "Jóga"));
    assert_eq!(
        titles(&r, "Recently Played"),
        ["Jóga", "So What", "A Love Supreme"]
    );
    assert_eq!(
        titles(&r, "Most Played"),
        ["So What", "Jóga", "A Love Supreme"],
        "ties: the more recent first"
    );
}
