//! Full scans of a library's origins, with progress reports, and their one-line summary.

use anyhow::Result;

use super::Library;
use crate::scan::{Progress, ScanOptions, ScanReport};

impl Library {
    /// Scans every origin of the library into the catalog. [`Library::progress`], when
    /// set, hears once with all-zero totals as the scan starts (a CLI shows its progress bar
    /// then), then the scan's running totals, the last with `done` set.
    pub fn scan(&self) -> Result<ScanReport> {
        let opts = ScanOptions {
            progress: self.progress.clone(),
            ..ScanOptions::default()
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
        "scanned {} files in {:.2}s ({:.0} files/s): {} added, {} changed, {} removed, {} unchanged, {} opened, {} skipped",
        r.seen,
        r.elapsed.as_secs_f64(),
        r.files_per_sec(),
        r.added,
        r.changed,
        r.removed,
        r.unchanged,
        r.opened,
        r.skipped.len()
    );
    for skip in &r.skipped {
        s.push_str(&format!(
            "\n  skipped {}: {}",
            skip.path.display(),
            skip.reason
        ));
    }
    s
}
