//! The `search` scenario (issue 15): a catalog of N generated tracks, its search index built
//! from scratch (time and size), query latency p50/p99 per kind of query, and the cost of
//! bringing the index up to date after one track changed.
//!
//! The catalog is written straight into LMDB (no audio files: search never reads them), with
//! tags drawn from small vocabularies so that queries have many matches, as in a real
//! library where "love" or "genre:rock" match thousands of tracks.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;
use musicfs_core::{Format, ScanState, TrackMeta};
use musicfs_index::scan::Touched;
use musicfs_index::search::SearchIndex;
use musicfs_storage::catalog::{Catalog, Upsert};
use serde::Serialize;

const WORDS: [&str; 40] = [
    "love", "night", "blue", "heart", "road", "fire", "rain", "dream", "light", "river", "summer",
    "moon", "home", "time", "gold", "city", "dance", "shadow", "ocean", "wild", "winter", "angel",
    "stone", "silver", "morning", "train", "garden", "storm", "sweet", "lonely", "electric",
    "velvet", "paper", "broken", "crystal", "midnight", "highway", "echo", "sugar", "thunder",
];
const GENRES: [&str; 12] = [
    "Rock",
    "Jazz",
    "Pop",
    "Blues",
    "Electronic",
    "Classical",
    "Folk",
    "Hip-Hop",
    "Soul",
    "Metal",
    "Reggae",
    "Country",
];
const NAMES: [&str; 16] = [
    "Björk", "Davis", "Coltrane", "Simone", "Bowie", "Hancock", "Mitchell", "Cohen", "Waits",
    "Parker", "Monk", "Holiday", "Young", "Reed", "Smith", "Jones",
];

/// The queries timed, by kind.
const QUERIES: [(&str, &str); 8] = [
    ("word", "midnight"),
    ("two words", "love train"),
    ("field", "genre:jazz"),
    ("phrase", "\"velvet morning\""),
    ("fuzzy", "thundr~"),
    ("range", "year:[1960 TO 1969]"),
    (
        "boolean",
        "genre:rock AND NOT year:[1970 TO 1979] OR artist:bjork",
    ),
    ("accent", "bjork dream"),
];

/// One query kind's latencies.
#[derive(Debug, Serialize)]
pub struct QueryFigure {
    /// The kind.
    pub kind: String,
    /// The query.
    pub query: String,
    /// Results (up to the limit).
    pub hits: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// The scenario's figures at one size.
#[derive(Debug, Serialize)]
pub struct SearchReport {
    /// Tracks in the catalog.
    pub tracks: u64,
    /// Seconds to build the index from an empty one.
    pub build_s: f64,
    /// Index size on disk, bytes.
    pub index_bytes: u64,
    /// Opening the built index (what the daemon's start-up pays), median of 5, ms.
    pub open_ms: f64,
    /// Per query kind.
    pub queries: Vec<QueryFigure>,
    /// All queries together: median, ms.
    pub all_p50_ms: f64,
    /// All queries together: 99th percentile, ms.
    pub all_p99_ms: f64,
    /// Bringing the index up to date after one track changed (the refresh loop's path,
    /// with the changed id known): median of the runs, ms.
    pub one_change_ms: f64,
    /// The same found by comparing the whole catalog (a restart after a change), ms.
    pub compare_ms: f64,
}

fn meta(i: u64) -> TrackMeta {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let artist_no = i / 120;
    let title = format!(
        "{} {} {}",
        WORDS[next(40)],
        WORDS[next(40)],
        WORDS[next(40)]
    );
    TrackMeta {
        title: Some(title),
        artist: vec![format!(
            "{} {}",
            NAMES[(artist_no % 16) as usize],
            artist_no
        )],
        album: Some(format!("{} {}", WORDS[next(40)], WORDS[next(40)])),
        genre: vec![GENRES[(artist_no % 12) as usize].to_string()],
        date: Some(format!("{}", 1950 + (i / 12) % 70)),
        track: Some(format!("{}", i % 12 + 1)),
        duration_ms: Some(120_000 + next(300) as u64 * 1000),
        bitrate: Some(320_000),
        sample_rate: Some(44_100),
        channels: Some(2),
        ..TrackMeta::default()
    }
}

fn upsert(origin: musicfs_core::OriginId, i: u64) -> Upsert {
    Upsert {
        origin,
        rel_path: format!("a{}/b{}/{i}.flac", i / 120, i / 12).into_bytes(),
        format: Format::Flac,
        scan: ScanState {
            size: 1,
            mtime_ns: i as i64,
            ..ScanState::default()
        },
        meta: meta(i),
    }
}

/// Runs the scenario with `tracks` tracks in `dir` (made empty first), each query timed
/// `rounds` times.
pub fn measure(dir: &Path, tracks: u64, rounds: usize) -> Result<SearchReport> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let catalog = Catalog::open(&dir.join("catalog"))?;
    let origin = catalog.origin_id(Path::new("/bench"))?;
    let batch = 50_000u64;
    let mut at = 0;
    while at < tracks {
        let ups: Vec<Upsert> = (at..(at + batch).min(tracks))
            .map(|i| upsert(origin, i))
            .collect();
        catalog.apply(&ups, &[])?;
        at += batch;
    }
    tracing::info!(tracks, "catalog written");

    let index = SearchIndex::open(&dir.join("search"))?;
    let start = Instant::now();
    index.sync(&catalog, None)?;
    let build_s = start.elapsed().as_secs_f64();
    let index_bytes = index.disk_bytes();
    tracing::info!(build_s, index_bytes, "index built");
    drop(index);
    let mut opens = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let again = SearchIndex::open(&dir.join("search"))?;
        opens.push(t.elapsed().as_secs_f64() * 1e3);
        drop(again);
    }
    opens.sort_by(f64::total_cmp);
    let open_ms = opens[opens.len() / 2];
    let index = SearchIndex::open(&dir.join("search"))?;

    let mut all = Histogram::<u64>::new(3)?;
    let mut queries = Vec::new();
    for (kind, q) in QUERIES {
        let mut h = Histogram::<u64>::new(3)?;
        let mut hits = 0;
        // One untimed run: the first touches the index's pages.
        index.search(q, 200)?;
        for _ in 0..rounds {
            let t = Instant::now();
            hits = index.search(q, 200)?.len();
            let ns = t.elapsed().as_nanos() as u64;
            h.record(ns)?;
            all.record(ns)?;
        }
        queries.push(QueryFigure {
            kind: kind.into(),
            query: q.into(),
            hits,
            p50_ms: h.value_at_quantile(0.5) as f64 / 1e6,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1e6,
        });
    }

    let mut changes = Vec::new();
    for n in 0..5u64 {
        let since = catalog.change_counter()?;
        let mut up = upsert(origin, n);
        up.meta.genre = vec![format!("Changed{n}")];
        let id = catalog.apply(&[up], &[])?[0];
        let touched = Touched {
            tracks: vec![(id, None)],
            overflow: false,
        };
        let t = Instant::now();
        index.sync(&catalog, Some((since, &touched)))?;
        changes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    changes.sort_by(f64::total_cmp);
    let mut up = upsert(origin, 7);
    up.meta.genre = vec!["Compared".into()];
    catalog.apply(&[up], &[])?;
    let t = Instant::now();
    index.sync(&catalog, None)?;
    let compare_ms = t.elapsed().as_secs_f64() * 1e3;

    Ok(SearchReport {
        tracks,
        build_s,
        index_bytes,
        open_ms,
        queries,
        all_p50_ms: all.value_at_quantile(0.5) as f64 / 1e6,
        all_p99_ms: all.value_at_quantile(0.99) as f64 / 1e6,
        one_change_ms: changes[changes.len() / 2],
        compare_ms,
    })
}

/// The reports as a markdown table, one column per size.
pub fn markdown(reports: &[SearchReport]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = write!(s, "| figure |");
    for r in reports {
        let _ = write!(s, " {} tracks |", r.tracks);
    }
    let _ = write!(s, "\n|---|");
    for _ in reports {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let mut row = |name: &str, f: &dyn Fn(&SearchReport) -> String| {
        let _ = write!(s, "| {name} |");
        for r in reports {
            let _ = write!(s, " {} |", f(r));
        }
        s.push('\n');
    };
    row("index build (s)", &|r| format!("{:.1}", r.build_s));
    row("index size (MB)", &|r| {
        format!("{:.1}", r.index_bytes as f64 / 1e6)
    });
    row("index open (ms)", &|r| format!("{:.1}", r.open_ms));
    row("all queries p50 / p99 (ms)", &|r| {
        format!("{:.2} / {:.2}", r.all_p50_ms, r.all_p99_ms)
    });
    for (i, (kind, q)) in QUERIES.iter().enumerate() {
        row(&format!("{kind} `{q}` p50 / p99 (ms), hits"), &|r| {
            let f = &r.queries[i];
            format!("{:.2} / {:.2}, {}", f.p50_ms, f.p99_ms, f.hits)
        });
    }
    row("one change, id known (ms)", &|r| {
        format!("{:.1}", r.one_change_ms)
    });
    row("one change, catalog compared (ms)", &|r| {
        format!("{:.0}", r.compare_ms)
    });
    s
}

/// The queries timed through the mount, in the vocabulary of `gen` libraries.
const MOUNT_QUERIES: [(&str, &str); 8] = [
    ("word", "night"),
    ("two words", "love river"),
    ("field", "genre:jazz"),
    ("phrase", "\"blue night\""),
    ("fuzzy", "velvt~"),
    ("range", "year:[1960 TO 1969]"),
    (
        "boolean",
        "genre:rock AND NOT year:[1970 TO 1979] OR artist:crue",
    ),
    ("accent", "ambar"),
];

/// One query kind through the mount.
#[derive(Debug, Serialize)]
pub struct MountQuery {
    /// The kind.
    pub kind: String,
    /// The query.
    pub query: String,
    /// Entries `/.search/<query>/` listed.
    pub entries: usize,
    /// `ls /.search/<query>/` (lookup, opendir, readdir) of a query not asked before:
    /// median, ms.
    pub mount_p50_ms: f64,
    /// ... 99th percentile, ms.
    pub mount_p99_ms: f64,
    /// The same query against the index in-process (no FUSE, no naming): median, ms.
    pub index_p50_ms: f64,
}

/// The scenario on a real library, as a user runs it.
#[derive(Debug, Serialize)]
pub struct MountReport {
    /// The library.
    pub library: String,
    /// Tracks in the catalog.
    pub tracks: u64,
    /// `musicfs scan` of the library into an empty state dir (tags, tree and search index).
    pub scan_s: f64,
    /// Index size on disk, bytes.
    pub index_bytes: u64,
    /// Per query kind.
    pub queries: Vec<MountQuery>,
}

/// Scans `library` with `musicfs scan`, mounts it with musicfsd, waits for the start-up
/// reconcile, then lists `/.search/<query>/` for queries not asked before (each made
/// distinct by an `OR` of a word no track has, so the daemon runs the search every time),
/// `rounds` times per kind.
pub fn measure_mount(
    library: &Path,
    out: &Path,
    bins: &crate::peers::Bins,
    rounds: usize,
) -> Result<MountReport> {
    use std::process::Command;
    use std::time::Duration;
    let state = out.join("state");
    let mnt = out.join("mnt");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    std::fs::create_dir_all(&mnt)?;
    let start = Instant::now();
    let scan = Command::new(&bins.musicfs)
        .arg("--state-dir")
        .arg(&state)
        .args(["scan", "--origin"])
        .arg(library)
        .output()?;
    anyhow::ensure!(
        scan.status.success(),
        "musicfs scan failed: {}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let scan_s = start.elapsed().as_secs_f64();
    let mut launch = crate::peers::launch(
        crate::peers::Peer::Musicfs,
        library,
        &mnt,
        false,
        bins,
        &state,
    )?;
    if let Some(cmd) = launch.cmd.as_mut() {
        cmd.env("RUST_LOG", "info,tantivy=warn,musicfs_index::refresh=debug");
    }
    let root = mnt.clone();
    let mount = crate::peers::start_when(
        launch,
        move || crate::peers::root_answers(&root),
        Duration::from_secs(120),
        &out.join("musicfsd.log"),
    )?;
    // Start-up work first: the reconcile walk (and the index check before it).
    mount.wait_for_log(
        &["refresh found nothing new", "swapped in the new tree"],
        Duration::from_secs(600),
    )?;
    let index = SearchIndex::open(&state.join("search"))?;
    let mut queries = Vec::new();
    // Names stay under NAME_MAX (255) with up to 199 spaces before the longest query.
    let rounds = rounds.min(200);
    for (kind, q) in MOUNT_QUERIES.iter() {
        let mut h = Histogram::<u64>::new(3)?;
        let mut entries = 0;
        for r in 0..rounds {
            // A name not listed before (so not answered from the listing cache) for the
            // same query: `r` leading spaces, which the parser skips. (A unique term
            // `OR`ed in would change the query: a range would lose its constant score.)
            let dir = mnt.join(".search").join(format!("{}{q}", " ".repeat(r)));
            let t = Instant::now();
            entries = std::fs::read_dir(&dir)?.count();
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        let mut ih = Histogram::<u64>::new(3)?;
        for _ in 0..rounds {
            let t = Instant::now();
            index.search(q, 200)?;
            ih.record(t.elapsed().as_nanos() as u64)?;
        }
        queries.push(MountQuery {
            kind: (*kind).into(),
            query: (*q).into(),
            entries,
            mount_p50_ms: h.value_at_quantile(0.5) as f64 / 1e6,
            mount_p99_ms: h.value_at_quantile(0.99) as f64 / 1e6,
            index_p50_ms: ih.value_at_quantile(0.5) as f64 / 1e6,
        });
    }
    let tracks = index.len();
    let index_bytes = index.disk_bytes();
    mount.stop();
    Ok(MountReport {
        library: library.display().to_string(),
        tracks,
        scan_s,
        index_bytes,
        queries,
    })
}

/// The mount report as markdown.
pub fn mount_markdown(r: &MountReport) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "Library {} ({} tracks): `musicfs scan` {:.1} s, index {:.1} MB.\n\n\
         | kind | query | entries | ls via mount p50 / p99 (ms) | index alone p50 (ms) |\n\
         |---|---|---|---|---|\n",
        r.library,
        r.tracks,
        r.scan_s,
        r.index_bytes as f64 / 1e6
    );
    for q in &r.queries {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {:.2} / {:.2} | {:.2} |",
            q.kind, q.query, q.entries, q.mount_p50_ms, q.mount_p99_ms, q.index_p50_ms
        );
    }
    s
}
