//! Full scans of a library's origins, with progress reports, and their one-line summary.

use super::{Library, Result};
use crate::scan::{Progress, ScanOptions, ScanReport};

impl Library {
    /// Scans every origin of the library into the catalog. [`Library::progress`], when
    /// set, hears once with all-zero totals as the scan starts (a CLI shows its progress bar
    /// then), then the scan's running totals, the last with `done` set.
    pub fn scan(&self) -> Result<ScanReport> {
        self.scan_with(self.scan_options())
    }

    /// [`Library::scan`] with `opts` (e.g. allowing a mass removal); the library's progress
    /// callback replaces any in `opts`.
    pub fn scan_with(&self, opts: ScanOptions) -> Result<ScanReport> {
        let opts = ScanOptions {
            progress: self.progress.clone(),
            ..opts
        };
        if let Some(progress) = &self.progress {
            progress(Progress::default());
        }
        Ok(crate::scan::scan(&self.catalog, &self.origins, &opts)?)
    }
}

/// One line (plus one per skipped file) describing a scan.
pub fn scan_summary(r: &ScanReport) -> String {
    let mut s = format!(
        "scanned {} files in {:.2}s ({:.0} files/s): {} added, {} changed, {} removed, {} unchanged, {} opened, {} skipped; {} stat'ed in {} directories listed",
        r.seen,
        r.elapsed.as_secs_f64(),
        r.files_per_sec(),
        r.added,
        r.changed,
        r.removed,
        r.unchanged,
        r.opened,
        r.skipped.len(),
        r.statted,
        r.listed
    );
    for o in &r.offline {
        s.push_str(&format!(
            "\n  origin {} offline, its tracks kept: {}",
            o.origin.display(),
            o.reason
        ));
    }
    for skip in &r.skipped {
        s.push_str(&format!(
            "\n  skipped {}: {}",
            skip.path.display(),
            skip.reason
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use musicfs_core::template::{Template, DEFAULT_TEMPLATE};

    use super::*;
    use crate::refresh::StateDir;
    use crate::scan::Skipped;
    use crate::testorigin::wav;

    #[test]
    fn the_summary_names_each_skipped_file_on_a_line_of_its_own() {
        let report = ScanReport {
            seen: 3,
            added: 1,
            unchanged: 1,
            opened: 2,
            statted: 3,
            listed: 1,
            skipped: vec![Skipped {
                path: PathBuf::from("/music/a.flac"),
                reason: "empty file (0 bytes)".into(),
            }],
            elapsed: Duration::from_secs(1),
            ..ScanReport::default()
        };
        let summary = scan_summary(&report);
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines.len(), 2, "{summary}");
        assert!(lines[0].starts_with("scanned 3 files in 1.00s (3 files/s): 1 added"));
        assert!(
            lines[0].ends_with("1 skipped; 3 stat'ed in 1 directories listed"),
            "{summary}"
        );
        assert_eq!(lines[1], "  skipped /music/a.flac: empty file (0 bytes)");
    }

    #[test]
    fn a_full_scan_reports_its_start_with_zero_totals_and_ends_with_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).expect("origin");
        std::fs::write(origin.join("cover.jpg"), b"not audio").expect("write");
        let state = StateDir::create(&dir.path().join("state")).expect("state dir");
        let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let record = seen.clone();
        let library = Library {
            catalog: Arc::new(state.open_catalog().expect("catalog")),
            template: Template::parse(DEFAULT_TEMPLATE).expect("template"),
            origins: vec![crate::testorigin::local(&origin)],
            readers: Vec::new(),
            state,
            progress: Some(Arc::new(move |p| record.lock().expect("lock").push(p))),
            renditions: crate::refresh::no_renditions(),
            mass_removal_threshold: 0.5,
            health: Arc::default(),
        };
        library.scan().expect("scan");
        let seen = seen.lock().expect("lock");
        let first = seen.first().expect("a start report");
        assert_eq!((first.seen, first.opened, first.done), (0, 0, false));
        assert!(seen.last().expect("an end report").done);
    }

    #[test]
    fn a_first_scan_cut_short_is_finished_before_the_first_tree_is_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).expect("origin");
        for i in 0..3 {
            std::fs::write(origin.join(format!("{i}.wav")), wav(800 * (i + 1))).expect("write");
        }
        let state = StateDir::create(&dir.path().join("state")).expect("state dir");
        let library = Library {
            catalog: Arc::new(state.open_catalog().expect("catalog")),
            template: Template::parse(DEFAULT_TEMPLATE).expect("template"),
            origins: vec![crate::testorigin::local(&origin)],
            readers: Vec::new(),
            state,
            progress: None,
            renditions: crate::refresh::no_renditions(),
            mass_removal_threshold: 0.5,
            health: Arc::default(),
        };
        // What a daemon killed early in its first scan leaves: the origin registered, none
        // of its tracks committed, no tree.
        library.catalog.origin_id(&origin).expect("register");
        let snap = library.load_or_build().expect("load or build");
        assert_eq!(snap.track_count(), 3, "the first tree lacks tracks");
    }

    #[test]
    fn the_origin_table_holds_the_scanned_origins_by_catalog_id_as_the_same_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (here, missing) = (dir.path().join("here"), dir.path().join("missing"));
        std::fs::create_dir(&here).expect("origin");
        let state = StateDir::create(&dir.path().join("state")).expect("state dir");
        let origins = vec![
            crate::testorigin::local(&missing),
            crate::testorigin::local(&here),
        ];
        let library = Library {
            catalog: Arc::new(state.open_catalog().expect("catalog")),
            template: Template::parse(DEFAULT_TEMPLATE).expect("template"),
            origins: origins.clone(),
            readers: Vec::new(),
            state,
            progress: None,
            renditions: crate::refresh::no_renditions(),
            mass_removal_threshold: 0.5,
            health: Arc::default(),
        };
        assert!(library.origin_table().expect("table").is_empty());
        let report = library.scan().expect("scan");
        assert_eq!(report.offline.len(), 1, "{report:?}");
        let table = library.origin_table().expect("table");
        assert_eq!(
            table.len(),
            1,
            "a missing origin never seen is not registered"
        );
        let id = library.catalog.origin_id(&here).expect("id");
        let served = table.get(id.0).expect("the scanned origin");
        assert!(Arc::ptr_eq(served, &origins[1]));
    }
}
