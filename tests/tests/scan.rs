//! Scanning the ffmpeg-generated fixture library into a real catalog, no mount.
//!
//! Needs ffmpeg; without it these tests fail with a message saying so (CI installs it).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use musicfs_core::TrackRecord;
use musicfs_index::health::OfflineReason;
use musicfs_index::{scan, Progress, ScanOptions, ScanReport};
use musicfs_storage::origin::{open_origin, Origin, OriginSpec};
use musicfs_storage::Catalog;
use musicfs_tests::fixtures::{build_fixture_library, ffmpeg_available, Fixture};
use tempfile::TempDir;

struct Env {
    _dir: TempDir,
    fixture: Fixture,
    catalog: Catalog,
}

fn setup() -> Env {
    assert!(
        ffmpeg_available(),
        "ffmpeg is required for the scan tests (apt-get install ffmpeg); refusing to pass silently"
    );
    let dir = TempDir::new().expect("tempdir");
    let fixture = build_fixture_library(&dir.path().join("fx")).expect("build fixture library");
    let catalog = Catalog::open(&dir.path().join("catalog")).expect("open catalog");
    Env {
        _dir: dir,
        fixture,
        catalog,
    }
}

fn opts() -> ScanOptions {
    ScanOptions {
        threads: 4,
        ..ScanOptions::default()
    }
}

/// The local origin at `root`, as the daemon opens it.
fn origin(root: &Path) -> Arc<dyn Origin> {
    open_origin(&OriginSpec::local(root)).expect("open origin")
}

fn run_scan(env: &Env) -> ScanReport {
    scan(&env.catalog, &[origin(&env.fixture.root)], &opts()).expect("scan")
}

fn records(catalog: &Catalog) -> HashMap<PathBuf, TrackRecord> {
    let mut out = HashMap::new();
    catalog
        .for_each(|r| {
            let rel = PathBuf::from(String::from_utf8(r.rel_path.clone()).expect("utf-8 path"));
            out.insert(rel, r);
        })
        .expect("for_each");
    out
}

fn skipped_reason<'a>(report: &'a ScanReport, root: &Path, rel: &Path) -> Option<&'a str> {
    let full = root.join(rel);
    report
        .skipped
        .iter()
        .find(|s| s.path == full)
        .map(|s| s.reason.as_str())
}

#[test]
fn first_scan_reads_every_tag_and_skips_every_broken_file() {
    let env = setup();
    let fx = &env.fixture;
    let report = run_scan(&env);
    let recs = records(&env.catalog);

    for t in &fx.tracks {
        let rec = recs.get(&t.rel_path).unwrap_or_else(|| {
            panic!(
                "{} missing from catalog; report: {report:#?}",
                t.rel_path.display()
            )
        });
        let (got, want) = (&rec.meta, &t.meta);
        let name = t.rel_path.display();
        assert_eq!(rec.format, t.format, "{name}: format");
        assert_eq!(got.title, want.title, "{name}: title");
        assert_eq!(got.artist, want.artist, "{name}: artist");
        assert_eq!(got.album, want.album, "{name}: album");
        assert_eq!(got.album_artist, want.album_artist, "{name}: album artist");
        assert_eq!(got.genre, want.genre, "{name}: genre");
        assert_eq!(got.date, want.date, "{name}: date");
        assert_eq!(got.track, want.track, "{name}: track");
        assert_eq!(got.track_total, want.track_total, "{name}: track total");
        assert_eq!(got.disc, want.disc, "{name}: disc");
        assert_eq!(got.disc_total, want.disc_total, "{name}: disc total");
        assert_eq!(got.composer, want.composer, "{name}: composer");
        assert_eq!(got.lyrics, want.lyrics, "{name}: lyrics");
        assert_eq!(got.has_art, want.has_art, "{name}: embedded art");
        assert_eq!(got.sample_rate, want.sample_rate, "{name}: sample rate");
        assert_eq!(got.channels, want.channels, "{name}: channels");
        let ms = got
            .duration_ms
            .unwrap_or_else(|| panic!("{name}: no duration"));
        assert!(
            (900..=1150).contains(&ms),
            "{name}: duration {ms} ms, expected about 1000"
        );
        assert!(
            got.bitrate.is_some_and(|b| b > 1000),
            "{name}: bitrate {:?}",
            got.bitrate
        );
        assert_eq!(
            rec.scan.size,
            fs::metadata(fx.root.join(&t.rel_path)).unwrap().len()
        );
    }
    assert_eq!(
        recs.len(),
        fx.tracks.len(),
        "catalog holds exactly the good files: {:?}",
        recs.keys()
    );

    for b in &fx.broken {
        let reason = skipped_reason(&report, &fx.root, &b.rel_path).unwrap_or_else(|| {
            panic!(
                "broken file {} ({}) not reported: {:#?}",
                b.rel_path.display(),
                b.what,
                report.skipped
            )
        });
        assert!(!reason.is_empty(), "{}: empty reason", b.rel_path.display());
    }
    for l in &fx.bad_links {
        assert!(
            skipped_reason(&report, &fx.root, l).is_some(),
            "bad symlink {} not reported: {:#?}",
            l.display(),
            report.skipped
        );
    }
    let loop_reason = skipped_reason(&report, &fx.root, Path::new("links/loop")).unwrap();
    assert!(loop_reason.contains("loop"), "loop reason: {loop_reason}");
    let dangling = skipped_reason(&report, &fx.root, Path::new("links/dangling.mp3")).unwrap();
    assert!(dangling.contains("dangling"), "dangling reason: {dangling}");
    let outside = skipped_reason(&report, &fx.root, Path::new("links/outside.flac")).unwrap();
    assert!(outside.contains("outside"), "outside reason: {outside}");
    let mismatch =
        skipped_reason(&report, &fx.root, Path::new("broken/really a flac.mp3")).unwrap();
    assert!(mismatch.contains("FLAC"), "mismatch reason: {mismatch}");
    for i in &fx.ignored {
        assert!(
            skipped_reason(&report, &fx.root, i).is_none(),
            "{} should be ignored silently",
            i.display()
        );
    }
    assert_eq!(
        report.skipped.len(),
        fx.broken.len() + fx.bad_links.len(),
        "nothing else is skipped: {:#?}",
        report.skipped
    );

    assert_eq!(report.added as usize, fx.tracks.len());
    assert_eq!(report.opened as usize, fx.tracks.len() + fx.broken.len());
    assert_eq!(report.seen, report.opened);
    assert_eq!(
        (report.changed, report.removed, report.unchanged),
        (0, 0, 0)
    );
}

/// Moves a file's mtime forward without changing its bytes, as `touch` does.
fn touch(path: &Path) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

fn skipped_paths(report: &ScanReport) -> Vec<&Path> {
    let mut paths: Vec<&Path> = report.skipped.iter().map(|s| s.path.as_path()).collect();
    paths.sort();
    paths
}

#[test]
fn rescans_open_only_new_or_changed_files_even_with_broken_files_present() {
    let env = setup();
    let fx = &env.fixture;
    let first = run_scan(&env);
    assert_eq!(first.added as usize, fx.tracks.len());
    assert!(!fx.broken.is_empty());
    let audio_files = fx.tracks.len() + fx.broken.len();

    let again = run_scan(&env);
    assert_eq!(again.opened, 0, "{again:#?}");
    assert_eq!((again.added, again.changed, again.removed), (0, 0, 0));
    assert_eq!(again.unchanged as usize, audio_files);
    assert_eq!(skipped_paths(&again), skipped_paths(&first));
    for b in &fx.broken {
        assert_eq!(
            skipped_reason(&again, &fx.root, &b.rel_path),
            skipped_reason(&first, &fx.root, &b.rel_path),
            "{} keeps the reason found when it was read",
            b.rel_path.display()
        );
    }

    touch(&fx.root.join("m4a/Aac Song.m4a"));
    let after_touch = run_scan(&env);
    assert_eq!(after_touch.opened, 1, "{after_touch:#?}");
    assert_eq!(
        (after_touch.added, after_touch.changed, after_touch.removed),
        (0, 1, 0)
    );

    let broken = Path::new("broken/truncated.flac");
    touch(&fx.root.join(broken));
    let after_broken_touch = run_scan(&env);
    assert_eq!(after_broken_touch.opened, 1, "{after_broken_touch:#?}");
    assert_eq!(
        (
            after_broken_touch.added,
            after_broken_touch.changed,
            after_broken_touch.removed
        ),
        (0, 0, 0)
    );
    let reason = skipped_reason(&after_broken_touch, &fx.root, broken);
    assert!(
        reason.is_some_and(|r| !r.is_empty()),
        "{after_broken_touch:#?}"
    );
    assert_eq!(reason, skipped_reason(&first, &fx.root, broken));
    assert_eq!(skipped_paths(&after_broken_touch), skipped_paths(&first));
    assert_eq!(run_scan(&env).opened, 0, "the new stat was remembered");

    let before = records(&env.catalog);
    let gone = PathBuf::from("dup/take2.flac");
    fs::remove_file(fx.root.join(&gone)).unwrap();
    let after_delete = run_scan(&env);
    assert_eq!(after_delete.opened, 0);
    assert_eq!(after_delete.removed, 1);
    let after = records(&env.catalog);
    assert_eq!(after.len(), before.len() - 1);
    assert!(!after.contains_key(&gone));
    for (rel, rec) in &after {
        assert_eq!(
            before.get(rel).map(|r| r.id),
            Some(rec.id),
            "{} kept its id",
            rel.display()
        );
    }

    fs::remove_file(fx.root.join(broken)).unwrap();
    let after_broken_delete = run_scan(&env);
    assert_eq!(after_broken_delete.opened, 0);
    assert_eq!(after_broken_delete.removed, 0);
    assert_eq!(
        after_broken_delete.skipped.len(),
        first.skipped.len() - 1,
        "{after_broken_delete:#?}"
    );
    assert!(skipped_reason(&after_broken_delete, &fx.root, broken).is_none());
}

#[test]
fn a_repaired_file_is_cataloged_and_a_damaged_one_is_dropped_and_remembered() {
    let env = setup();
    let fx = &env.fixture;
    run_scan(&env);
    let repaired = Path::new("broken/truncated.flac");
    let damaged = Path::new("mp3/森の人.mp3");
    let good_flac = fs::read(fx.root.join("flac/Artist One/Album A/03 - Flac Song.flac")).unwrap();
    fs::write(fx.root.join(repaired), good_flac).unwrap();
    let mp3 = fs::read(fx.root.join(damaged)).unwrap();
    fs::write(fx.root.join(damaged), &mp3[..100]).unwrap();

    let report = run_scan(&env);

    assert_eq!(report.opened, 2, "{report:#?}");
    assert_eq!((report.added, report.removed), (1, 1));
    assert!(skipped_reason(&report, &fx.root, repaired).is_none());
    let reason = skipped_reason(&report, &fx.root, damaged).map(str::to_owned);
    assert!(reason.is_some(), "{report:#?}");
    let recs = records(&env.catalog);
    assert!(recs.contains_key(repaired));
    assert!(!recs.contains_key(damaged));

    let again = run_scan(&env);
    assert_eq!(again.opened, 0, "{again:#?}");
    assert_eq!(
        skipped_reason(&again, &fx.root, damaged),
        reason.as_deref(),
        "the damaged file stays skipped without being reopened"
    );
    assert!(skipped_reason(&again, &fx.root, repaired).is_none());
}

#[test]
fn verify_rereads_every_file_even_when_unchanged_and_reports_progress() {
    let env = setup();
    run_scan(&env);
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let report = scan(
        &env.catalog,
        &[origin(&env.fixture.root)],
        &ScanOptions {
            verify: true,
            progress: Some(Arc::new(move |p| sink.lock().unwrap().push(p))),
            ..opts()
        },
    )
    .unwrap();
    let n = env.fixture.tracks.len() + env.fixture.broken.len();
    assert_eq!(report.opened as usize, n);
    assert_eq!(report.changed as usize, env.fixture.tracks.len());
    assert_eq!(report.unchanged, 0);
    let calls = seen.lock().unwrap();
    let last = calls.last().expect("progress was reported");
    assert!(last.done);
    assert_eq!((last.seen, last.opened), (report.seen, report.opened));
}

#[test]
fn a_missing_origin_is_reported_offline_naming_the_path() {
    let dir = TempDir::new().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let missing = dir.path().join("no-such-origin");
    let report = scan(&catalog, &[origin(&missing)], &ScanOptions::default()).unwrap();
    let [offline] = &report.offline[..] else {
        panic!("expected one offline origin: {report:?}");
    };
    assert_eq!(offline.origin, missing);
    assert!(
        matches!(offline.reason, OfflineReason::Missing(_)),
        "{offline:?}"
    );
    assert!(catalog.origins().unwrap().is_empty(), "nothing registered");
}

#[test]
fn truncated_and_corrupted_copies_of_every_good_file_never_panic() {
    let env = setup();
    let scratch = TempDir::new().unwrap();
    for t in &env.fixture.tracks {
        let bytes = fs::read(env.fixture.root.join(&t.rel_path)).unwrap();
        let ext = t.rel_path.extension().unwrap();
        let len = bytes.len();
        let mut variants: Vec<Vec<u8>> = [1, 4, 11, 64, 100, 300, 1000, 4096, len / 2, len - 1]
            .into_iter()
            .filter(|n| *n < len)
            .map(|n| bytes[..n].to_vec())
            .collect();
        // Flip bytes throughout the headers, where parsers trust lengths and counts.
        for (i, pos) in (0..len.min(8192)).step_by(97).enumerate() {
            let mut c = bytes.clone();
            c[pos] ^= 0xFF - (i as u8 % 7);
            variants.push(c);
        }
        for (i, v) in variants.iter().enumerate() {
            let p = scratch.path().join(format!("v{i}")).with_extension(ext);
            fs::write(&p, v).unwrap();
            match musicfs_index::read_tags(&p) {
                Ok(_) => {}
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
}

#[test]
fn a_scan_records_each_files_owner_and_mode_and_a_chmod_alone_is_rescanned() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = setup();
    let fx = &env.fixture;
    let rel = Path::new("m4a/Aac Song.m4a");
    let src = fx.root.join(rel);
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
    std::os::unix::fs::chown(&src, Some(1234), Some(4321)).expect("chown");
    run_scan(&env);
    let perm = records(&env.catalog)[rel].scan.perm.expect("perm recorded");
    assert_eq!((perm.mode, perm.uid, perm.gid), (0o644, 1234, 4321));
    let mtime = fs::metadata(&src).expect("stat").mtime();

    fs::set_permissions(&src, fs::Permissions::from_mode(0o4600)).expect("chmod 4600");
    let after = run_scan(&env);

    assert_eq!(
        fs::metadata(&src).expect("stat").mtime(),
        mtime,
        "content untouched"
    );
    assert_eq!(
        (after.added, after.changed, after.removed),
        (0, 1, 0),
        "{after:#?}"
    );
    let perm = records(&env.catalog)[rel].scan.perm.expect("perm recorded");
    assert_eq!((perm.mode, perm.uid, perm.gid), (0o4600, 1234, 4321));
}
