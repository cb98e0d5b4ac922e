//! The out-of-process catalog check: a sound catalog passes, a damaged page is reported
//! (as an LMDB error, or as the check process dying) and never takes the caller down.
//!
//! The check runs in a child: this test binary run again on the one test
//! `walk_the_catalog_named_in_the_environment`, which walks the catalog named by
//! `MUSICFS_CHECK_DIR` and exits 0 when it is sound.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use musicfs_core::meta::{Format, ScanState, TrackMeta};
use musicfs_storage::catalog::{run_check, walk, Verdict};
use musicfs_storage::{Catalog, Upsert};

const PAGE: u64 = 4096;
const DIR_VAR: &str = "MUSICFS_CHECK_DIR";

/// The child's side: a no-op in a normal run.
#[test]
fn walk_the_catalog_named_in_the_environment() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    match walk(Path::new(&dir)) {
        Ok(summary) => {
            println!("{summary:?}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn check(dir: &Path) -> Verdict {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "walk_the_catalog_named_in_the_environment",
        "--test-threads=1",
        "--nocapture",
    ])
    .env(DIR_VAR, dir);
    run_check(cmd).unwrap()
}

/// A catalog of `n` tracks, big enough for branch pages.
fn catalog_of(dir: &Path, n: usize) -> u64 {
    let catalog = Catalog::open(dir).unwrap();
    let origin = catalog.origin_id(Path::new("/music")).unwrap();
    let ups: Vec<Upsert> = (0..n)
        .map(|i| Upsert {
            origin,
            rel_path: format!("Artist {}/Album/{i:05} - a title long enough.flac", i % 13)
                .into_bytes(),
            format: Format::Flac,
            scan: ScanState {
                size: i as u64,
                mtime_ns: 1,
                ino: i as u64,
                ctime_ns: 1,
                perm: None,
            },
            meta: TrackMeta {
                title: Some(format!("Song {i}")),
                ..TrackMeta::default()
            },
        })
        .collect();
    catalog.apply(&ups, &[]).unwrap();
    drop(catalog);
    std::fs::metadata(dir.join("data.mdb")).unwrap().len() / PAGE
}

fn overwrite_page(file: &Path, page: u64, fill: u8) {
    let f = OpenOptions::new().write(true).open(file).unwrap();
    let bytes: Vec<u8> = (0..PAGE as usize)
        .map(|i| fill.wrapping_add((i * 97) as u8))
        .collect();
    f.write_all_at(&bytes, page * PAGE).unwrap();
}

#[test]
fn a_sound_catalog_passes_the_check_and_its_walk_reads_every_database() {
    let dir = tempfile::tempdir().unwrap();
    catalog_of(dir.path(), 500);
    assert!(
        matches!(check(dir.path()), Verdict::Sound(_)),
        "{:?}",
        check(dir.path())
    );
    let summary = walk(dir.path()).unwrap();
    assert!(summary.databases >= 5, "{summary:?}");
    assert!(summary.entries >= 1000, "{summary:?}");
}

#[test]
fn damaged_pages_are_reported_by_the_check_without_harming_the_caller() {
    let good = tempfile::tempdir().unwrap();
    let pages = catalog_of(good.path(), 2000);
    assert!(pages > 20, "{pages} pages");
    let mut damaged = 0;
    let mut undetected = Vec::new();
    // Every data page in turn (the meta pages 0 and 1 are refused at open already).
    for page in 2..pages {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(good.path().join("data.mdb"), dir.path().join("data.mdb")).unwrap();
        overwrite_page(&dir.path().join("data.mdb"), page, page as u8);
        match check(dir.path()) {
            Verdict::Sound(_) => undetected.push(page),
            Verdict::Damaged(why) => {
                assert!(!why.is_empty());
                damaged += 1;
            }
        }
    }
    // Free pages (the few the first transactions left behind) may be overwritten
    // unnoticed; the pages in use may not.
    assert!(
        undetected.len() <= 8,
        "{damaged} of {} damaged pages found; not {undetected:?}",
        pages - 2
    );
}

#[test]
fn a_catalog_marked_damaged_refuses_every_operation_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    catalog_of(dir.path(), 10);
    let catalog = Catalog::open(dir.path()).unwrap();
    catalog.begin_check();
    catalog.set_verdict(&Verdict::Damaged("a test".into()));
    let err = catalog.len().unwrap_err().to_string();
    assert!(err.contains("damaged") && err.contains("move"), "{err}");
    assert!(catalog.wait_for_check().is_err());
    assert!(catalog.record_plays(&[]).is_err());
}
