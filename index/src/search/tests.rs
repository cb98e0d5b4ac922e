use std::path::Path;

use musicfs_core::{Format, ScanState, TrackMeta};
use musicfs_storage::catalog::{Catalog, Upsert};

use super::*;

struct Song<'a> {
    path: &'a str,
    title: &'a str,
    artist: &'a str,
    album: &'a str,
    genre: &'a str,
    date: &'a str,
}

const SONGS: [Song<'static>; 6] = [
    Song {
        path: "a.flac",
        title: "So What",
        artist: "Miles Davis",
        album: "Kind of Blue",
        genre: "Jazz",
        date: "1959-08-17",
    },
    Song {
        path: "b.flac",
        title: "A Love Supreme, Part I",
        artist: "John Coltrane",
        album: "A Love Supreme",
        genre: "Jazz",
        date: "1965",
    },
    Song {
        path: "c.mp3",
        title: "Jóga",
        artist: "Björk",
        album: "Homogenic",
        genre: "Electronic",
        date: "1997",
    },
    Song {
        path: "d.mp3",
        title: "Come Together",
        artist: "The Beatles",
        album: "Abbey Road",
        genre: "Rock",
        date: "1969",
    },
    Song {
        path: "e.flac",
        title: "Take Five",
        artist: "The Dave Brubeck Quartet",
        album: "Time Out",
        genre: "Jazz",
        date: "1959",
    },
    Song {
        path: "f.flac",
        title: "Something",
        artist: "The Beatles",
        album: "Abbey Road",
        genre: "Rock",
        date: "1969",
    },
];

fn upsert(catalog: &Catalog, s: &Song<'_>) -> TrackId {
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let format = if s.path.ends_with("mp3") {
        Format::Mp3
    } else {
        Format::Flac
    };
    let meta = TrackMeta {
        title: Some(s.title.into()),
        artist: vec![s.artist.into()],
        album: Some(s.album.into()),
        genre: vec![s.genre.into()],
        date: Some(s.date.into()),
        duration_ms: Some(300_000),
        ..TrackMeta::default()
    };
    let up = Upsert {
        origin,
        rel_path: s.path.as_bytes().to_vec(),
        format,
        scan: ScanState::default(),
        meta,
    };
    catalog.apply(&[up], &[]).unwrap()[0]
}

struct Rig {
    _dir: tempfile::TempDir,
    catalog: Catalog,
    index: SearchIndex,
    ids: Vec<TrackId>,
    index_dir: PathBuf,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let ids = SONGS.iter().map(|s| upsert(&catalog, s)).collect();
    let index_dir = dir.path().join("search");
    let index = SearchIndex::open(&index_dir).unwrap();
    index.sync(&catalog, None).unwrap();
    Rig {
        _dir: dir,
        catalog,
        index,
        ids,
        index_dir,
    }
}

impl Rig {
    /// The paths of the hits, best first.
    fn find(&self, q: &str) -> Vec<&'static str> {
        self.index
            .search(q, 100)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .into_iter()
            .map(|h| {
                let i = self.ids.iter().position(|id| *id == h.id).unwrap();
                SONGS[i].path
            })
            .collect()
    }

    fn find_sorted(&self, q: &str) -> Vec<&'static str> {
        let mut v = self.find(q);
        v.sort_unstable();
        v
    }
}

#[test]
fn words_fields_phrases_and_booleans_find_what_they_say() {
    let r = rig();
    assert_eq!(r.find_sorted("beatles"), ["d.mp3", "f.flac"]);
    assert_eq!(r.find_sorted("genre:jazz"), ["a.flac", "b.flac", "e.flac"]);
    assert_eq!(r.find_sorted("genre:jazz miles"), ["a.flac"], "words AND");
    assert_eq!(r.find_sorted("\"abbey road\""), ["d.mp3", "f.flac"]);
    assert_eq!(r.find_sorted("\"road abbey\""), Vec::<&str>::new());
    assert_eq!(r.find_sorted("title:\"come together\""), ["d.mp3"]);
    assert_eq!(r.find_sorted("coltrane OR brubeck"), ["b.flac", "e.flac"]);
    assert_eq!(
        r.find_sorted("genre:jazz AND NOT davis"),
        ["b.flac", "e.flac"]
    );
    assert_eq!(r.find_sorted("genre:jazz -davis -coltrane"), ["e.flac"]);
    assert_eq!(
        r.find_sorted("NOT genre:jazz"),
        ["c.mp3", "d.mp3", "f.flac"]
    );
    assert_eq!(r.find_sorted("(miles OR bjork) AND format:mp3"), ["c.mp3"]);
    assert_eq!(r.find_sorted("format:flac beatles"), ["f.flac"]);
}

#[test]
fn accents_and_case_fold_both_ways() {
    let r = rig();
    for q in ["bjork", "Björk", "BJÖRK", "artist:bjork", "joga", "JÓGA"] {
        assert_eq!(r.find(q), ["c.mp3"], "{q}");
    }
}

#[test]
fn fuzzy_words_forgive_typos_and_plain_words_do_not() {
    let r = rig();
    assert!(r.find("coltrain").is_empty());
    assert_eq!(r.find("coltrain~"), ["b.flac"]);
    assert_eq!(r.find("artist:brubek~1"), ["e.flac"]);
    assert!(r.find("brubxxk~1").is_empty(), "two edits, one allowed");
}

#[test]
fn numeric_ranges_and_values() {
    let r = rig();
    assert_eq!(
        r.find_sorted("year:[1960 TO 1969]"),
        ["b.flac", "d.mp3", "f.flac"]
    );
    assert_eq!(r.find_sorted("year:{1959 TO 1969}"), ["b.flac"]);
    assert_eq!(r.find_sorted("year:[1990 TO *]"), ["c.mp3"]);
    assert_eq!(r.find_sorted("year:1959"), ["a.flac", "e.flac"]);
    assert_eq!(r.find_sorted("genre:jazz year:[1960 TO 1969]"), ["b.flac"]);
    assert_eq!(r.find("duration:300").len(), 6);
    // Ranges alone (and with NOT) take the first matches without scoring: the same
    // tracks, and a limit cuts them to any that many of the matches.
    assert_eq!(
        r.find_sorted("year:[1960 TO 1969] NOT year:1969"),
        r.find_sorted("year:[1960 TO 1968]")
    );
    assert_eq!(r.find_sorted("*"), {
        let mut all: Vec<&str> = SONGS.iter().map(|s| s.path).collect();
        all.sort_unstable();
        all
    });
    let two = r.index.search("year:[1900 TO 2100]", 2).unwrap();
    assert_eq!(two.len(), 2);
    let all = r.find("year:[1900 TO 2100]");
    assert!(two.iter().all(|h| r.ids.contains(&h.id)) && all.len() > 2);
}

#[test]
fn a_query_that_does_not_parse_says_why() {
    let r = rig();
    for (q, says) in [
        ("", "empty"),
        ("(miles", "`)`"),
        ("\"abbey road", "unclosed"),
        ("colour:red", "unknown field `colour`"),
        ("title:[1 TO 2]", "numeric field"),
        ("year:[1960 1969]", "`TO`"),
        ("year:soon", "not a number"),
        ("miles~7", "fuzzy distance"),
        ("miles OR", "a word"),
        ("NOT", "a word"),
    ] {
        let e = r.index.search(q, 10).unwrap_err();
        assert!(
            matches!(e, SearchError::Query(_)) && e.to_string().contains(says),
            "{q:?}: {e}"
        );
    }
}

#[test]
fn a_changed_track_is_rewritten_alone_and_a_removed_one_leaves() {
    let r = rig();
    let since = r.catalog.change_counter().unwrap();
    // Retag "Something" as jazz.
    let mut s = upsert_song(5);
    s.genre = "Jazz";
    upsert(&r.catalog, &s);
    let touched = Touched {
        tracks: vec![(r.ids[5], None)],
        overflow: false,
    };
    let synced = r.index.sync(&r.catalog, Some((since, &touched))).unwrap();
    assert!(!synced.compared, "{synced:?}");
    assert_eq!(synced.written, 1);
    assert_eq!(
        r.find_sorted("genre:jazz"),
        ["a.flac", "b.flac", "e.flac", "f.flac"]
    );
    // A removal, found by comparing (no list given).
    r.catalog.apply(&[], &[r.ids[0]]).unwrap();
    let synced = r.index.sync(&r.catalog, None).unwrap();
    assert!(synced.compared);
    assert_eq!((synced.written, synced.deleted), (0, 1), "{synced:?}");
    assert_eq!(r.find_sorted("genre:jazz"), ["b.flac", "e.flac", "f.flac"]);
    assert_eq!(r.index.len(), 5);
    // Nothing changed: nothing written.
    assert_eq!(r.index.sync(&r.catalog, None).unwrap(), Synced::default());
}

fn upsert_song(i: usize) -> Song<'static> {
    let s = &SONGS[i];
    Song { ..*s }
}

#[test]
fn the_index_persists_and_a_damaged_one_is_rebuilt() {
    let r = rig();
    let Rig {
        _dir,
        catalog,
        index,
        index_dir,
        ..
    } = r;
    drop(index);
    let again = SearchIndex::open(&index_dir).unwrap();
    assert_eq!(again.len(), 6);
    assert_eq!(
        again.sync(&catalog, None).unwrap(),
        Synced::default(),
        "current on reopening"
    );
    drop(again);
    std::fs::write(index_dir.join("meta.json"), b"{ not json").unwrap();
    let rebuilt = SearchIndex::open(&index_dir).unwrap();
    assert_eq!(rebuilt.len(), 0);
    rebuilt.sync(&catalog, None).unwrap();
    assert_eq!(rebuilt.len(), 6);
    assert_eq!(rebuilt.search("bjork", 10).unwrap().len(), 1);
}

#[test]
fn collections_sort_limit_and_recently_added_is_built_in() {
    let r = rig();
    let mut configured = std::collections::BTreeMap::new();
    configured.insert(
        "jazz".to_string(),
        musicfs_core::config::CollectionConfig {
            query: "genre:jazz".into(),
            sort: Some("-year".into()),
            limit: Some(2),
        },
    );
    let all = Collection::from_config(&configured).unwrap();
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["jazz", collection::RECENTLY_ADDED]);
    let path_of = |id: TrackId| SONGS[r.ids.iter().position(|i| *i == id).unwrap()].path;
    let jazz: Vec<&str> = all[0]
        .tracks(&r.index, &r.catalog)
        .unwrap()
        .into_iter()
        .map(path_of)
        .collect();
    // 1965, then the 1959s by id: limit 2.
    assert_eq!(jazz, ["b.flac", "a.flac"]);
    let recent: Vec<&str> = all[1]
        .tracks(&r.index, &r.catalog)
        .unwrap()
        .into_iter()
        .map(path_of)
        .collect();
    assert_eq!(
        recent,
        ["f.flac", "e.flac", "d.mp3", "c.mp3", "b.flac", "a.flac"]
    );

    for (sort, query, says) in [
        (Some("loudness"), "genre:jazz", "unknown sort"),
        (None, "genre:(jazz", "query does not parse"),
    ] {
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(
            "bad".to_string(),
            musicfs_core::config::CollectionConfig {
                query: query.into(),
                sort: sort.map(Into::into),
                limit: None,
            },
        );
        let e = Collection::from_config(&bad).unwrap_err();
        assert!(e.contains("collection `bad`") && e.contains(says), "{e}");
    }
}
