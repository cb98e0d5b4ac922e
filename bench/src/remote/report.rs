//! The `remote` report: one row per figure, one column per system and the ratio
//! musicfs ÷ rclone, as JSON and markdown, with the BENCH.md goals this scenario checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::System;
use crate::scale::{short, Figure};

/// The sequential-read goal of BENCH.md for a remote file read from the cache.
const SEQREAD_GOAL_MBPS: f64 = 3000.0;

/// One system's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemReport {
    /// System name.
    pub name: String,
    /// "ok", or why a step failed (the figures before it stand).
    pub status: String,
    /// Figures by name ([`FIGURES`]).
    pub figures: BTreeMap<String, Figure>,
    /// Facts that are not figures.
    pub notes: BTreeMap<String, String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteReport {
    /// The command line.
    pub command: String,
    /// Kernel, CPU, memory.
    pub machine: BTreeMap<String, String>,
    /// Load average (1, 5, 15 min) at the start and at the end.
    pub loadavg: [String; 2],
    /// Library facts.
    pub library: BTreeMap<String, String>,
    /// Per system, in run order.
    pub systems: Vec<SystemReport>,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// Every figure: name, unit, what it is.
pub const FIGURES: &[(&str, &str, &str)] = &[
    ("mount_ready", "ms", "exec → the mount root answers"),
    (
        "scan_bytes",
        "MB",
        "bytes down during `musicfs scan` of the bucket (rclone has no scan)",
    ),
    ("scan_ratio", "%", "scan_bytes ÷ library bytes"),
    (
        "listing_bytes",
        "KB",
        "bytes down while every entry of the fresh mount is listed and lstat'ed (`find`+stat)",
    ),
    (
        "miss_first_byte_p50",
        "ms",
        "open + 4 KiB read of a never-read file, p50 over the tone tracks",
    ),
    ("miss_first_byte_p99", "ms", "the same, p99"),
    (
        "first_read_ratio",
        "×",
        "bytes down to read every file once (misses included) ÷ library bytes",
    ),
    (
        "cached_open",
        "ms",
        "open(2) of the cached 30 MB FLAC (median of the seqread_fuse passes)",
    ),
    (
        "seqread_fuse",
        "MB/s",
        "1 MiB reads of that file, first read to EOF (open excluded), its mount pages dropped (fadvise) before each pass",
    ),
    (
        "seqread_dropped",
        "MB/s",
        "the same after drop_caches=3 before each pass (the cache's files read from disk)",
    ),
    (
        "seqread_origin_bytes",
        "KB",
        "bytes down during all those passes (0: served from the cache)",
    ),
    (
        "cache_logical",
        "MB",
        "file bytes the cache holds (musicfs: logical_bytes; rclone: apparent size)",
    ),
    (
        "cache_stored",
        "MB",
        "what it stores for them (musicfs: stored_bytes; rclone: allocated blocks)",
    ),
    ("dedup_ratio", "×", "cache_logical ÷ cache_stored"),
    (
        "rescan_bytes",
        "KB",
        "bytes down during the `musicfs scan` after the tag edit",
    ),
    (
        "tag_edit_bytes",
        "KB",
        "bytes down for the next full read of the FLAC whose title was edited upstream",
    ),
];

impl SystemReport {
    fn new(name: &str) -> SystemReport {
        SystemReport {
            name: name.into(),
            status: "ok".into(),
            ..SystemReport::default()
        }
    }

    pub(super) fn set(&mut self, name: &str, v: f64) {
        Figure::entry(&mut self.figures, FIGURES, name).push(v);
    }

    fn value(&self, name: &str) -> Option<f64> {
        self.figures.get(name).and_then(|f| f.value)
    }

    pub(super) fn failed(&mut self, step: &str, e: &anyhow::Error) {
        tracing::warn!(system = %self.name, step, error = %format!("{e:#}"), "a step failed");
        let msg = format!("{step} failed: {e:#}");
        self.status = if self.status == "ok" {
            msg
        } else {
            format!("{}; {msg}", self.status)
        };
    }
}

impl RemoteReport {
    pub(super) fn system(&mut self, s: System) -> &mut SystemReport {
        match self.systems.iter().position(|r| r.name == s.name()) {
            Some(i) => &mut self.systems[i],
            None => {
                self.systems.push(SystemReport::new(s.name()));
                self.systems.last_mut().unwrap_or_else(|| unreachable!())
            }
        }
    }

    /// The markdown rendering: one row per figure, one column per system, and the ratio
    /// musicfs ÷ rclone.
    pub fn markdown(&self) -> String {
        let mut s = crate::report::preamble(&self.command, &self.machine, &self.library);
        let _ = writeln!(
            s,
            "- load average at start: {}; at end: {}",
            self.loadavg[0], self.loadavg[1]
        );
        let _ = writeln!(s, "- run took {:.0} s\n", self.seconds);
        let get = |n: &str| self.systems.iter().find(|r| r.name == n);
        let (mfs, rcl) = (get("musicfs"), get("rclone"));
        let _ = writeln!(
            s,
            "| metric | what | musicfs | rclone | musicfs ÷ rclone |\n|---|---|---|---|---|"
        );
        for (name, _, what) in FIGURES {
            let f = |r| figure(r, name);
            if f(mfs).is_none() && f(rcl).is_none() {
                continue;
            }
            let ratio = match (f(mfs).and_then(|x| x.value), f(rcl).and_then(|x| x.value)) {
                (Some(a), Some(b)) if b > 0.0 => format!("×{}", ratio(a / b)),
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {name} | {what} | {} | {} | {ratio} |",
                cell(f(mfs)),
                cell(f(rcl))
            );
        }
        s.push('\n');
        for r in &self.systems {
            let _ = writeln!(s, "- {} status: {}", r.name, r.status);
            for (k, v) in &r.notes {
                let _ = writeln!(s, "- {} {k}: {v}", r.name);
            }
        }
        s
    }
}

fn figure<'a>(r: Option<&'a SystemReport>, name: &str) -> Option<&'a Figure> {
    r.and_then(|r| r.figures.get(name))
}

/// A ratio with two significant digits below 0.1 (a tag edit's bytes are ×0.0003 of a
/// whole-file fetch, not ×0.00).
fn ratio(r: f64) -> String {
    if r > 0.0 && r < 0.1 {
        let digits = (1.0 - r.log10().floor()) as usize;
        format!("{r:.digits$}")
    } else {
        short(r)
    }
}

/// "median unit (samples)" of a figure, or "n/a".
fn cell(f: Option<&Figure>) -> String {
    let Some(f) = f else {
        return "n/a".into();
    };
    let Some(v) = f.value else {
        return "n/a".into();
    };
    if f.samples.len() > 1 {
        let all: Vec<String> = f.samples.iter().map(|v| short(*v)).collect();
        format!("{} {} ({})", short(v), f.unit, all.join(", "))
    } else {
        format!("{} {}", short(v), f.unit)
    }
}

/// Notes whether MusicFS meets the goals of BENCH.md this scenario measures.
pub(super) fn goals(report: &mut RemoteReport, tag_region: Option<u64>) {
    let Some(r) = report.systems.iter_mut().find(|r| r.name == "musicfs") else {
        return;
    };
    if let Some(v) = r.value("seqread_fuse") {
        let met = if v >= SEQREAD_GOAL_MBPS {
            "met"
        } else {
            "NOT met"
        };
        r.notes.insert(
            "goal seqread ≥ 3 GB/s".into(),
            format!("{met} ({} MB/s)", short(v)),
        );
    }
    if let (Some(kb), Some(region)) = (r.value("tag_edit_bytes"), tag_region) {
        let allowed = region + 4096;
        let wire = (kb * 1e3).round() as u64;
        let verdict = if wire <= allowed {
            format!("met even counting HTTP headers ({wire} ≤ {allowed} bytes)")
        } else {
            format!(
                "{wire} bytes on the wire vs {allowed} allowed as payload: {} bytes over, HTTP response headers included",
                wire - allowed
            )
        };
        r.notes
            .insert("goal tag edit ≤ tag region + 4 KiB".into(), verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markdown_puts_systems_side_by_side_with_their_ratio() {
        let mut report = RemoteReport::default();
        report.system(System::Musicfs).set("tag_edit_bytes", 9.0);
        report
            .system(System::Rclone)
            .set("tag_edit_bytes", 30_000.0);
        report.system(System::Rclone).set("listing_bytes", 4.0);
        let md = report.markdown();
        let row = md
            .lines()
            .find(|l| l.starts_with("| tag_edit_bytes"))
            .expect("a tag_edit_bytes row");
        assert!(row.contains("| 9.00 KB | 30000 KB | ×0.00030 |"), "{row}");
        let listing = md
            .lines()
            .find(|l| l.starts_with("| listing_bytes"))
            .expect("a listing row");
        assert!(listing.contains("| n/a | 4.00 KB | — |"), "{listing}");
        assert!(
            !md.contains("| scan_bytes"),
            "rows nobody measured are left out"
        );
    }
}
