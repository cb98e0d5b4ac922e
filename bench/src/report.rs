//! The run report: JSON for machines, a markdown table for people, with every figure also
//! as a ratio to native.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metric::Metric;

/// One peer's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerReport {
    /// Peer name.
    pub name: String,
    /// "ok" or "skipped".
    pub status: String,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What its cold figures mean.
    pub cold: String,
    /// Files the measured samples cover (after path mapping).
    pub sample_files: u64,
    /// Metrics by name.
    pub metrics: BTreeMap<String, Metric>,
    /// Metrics this peer was expected to produce (checked by tests).
    pub expected: Vec<String>,
    /// What the mount said it really does (musicfs root xattrs: transport, passthrough).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mode: BTreeMap<String, String>,
    /// Facts that are not figures (e.g. whether a restart rewrote the snapshot).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// Kernel, CPU, memory.
    pub machine: BTreeMap<String, String>,
    /// Library facts.
    pub library: BTreeMap<String, String>,
    /// Quick mode.
    pub quick: bool,
    /// Per peer.
    pub peers: Vec<PeerReport>,
    /// Scanners.
    pub scanners: Vec<serde_json::Value>,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// Load average (1, 5, 15 min) when the run started.
    #[serde(default)]
    pub loadavg: String,
    /// Metrics of BENCH.md that cannot be measured yet, with why.
    #[serde(default)]
    pub not_built: BTreeMap<String, String>,
}

impl Report {
    /// Fills every metric's ratio to native's.
    pub fn compute_ratios(&mut self) {
        let Some(native) = self.peers.iter().find(|p| p.name == "native").cloned() else {
            return;
        };
        for p in &mut self.peers {
            for (k, m) in &mut p.metrics {
                if let Some(n) = native.metrics.get(k) {
                    m.set_ratios(n);
                }
            }
        }
    }

    /// The markdown rendering.
    pub fn markdown(&self) -> String {
        let mut s = preamble(&self.command, &self.machine, &self.library);
        if !self.loadavg.is_empty() {
            let _ = writeln!(s, "- load average at start: {}", self.loadavg);
        }
        let _ = writeln!(s, "\nLatency cells: p50 / p99 (×ratio to native p50 / p99); throughput cells: value (×ratio).\n");
        let peers: Vec<&PeerReport> = self.peers.iter().collect();
        let _ = write!(s, "| metric |");
        for p in &peers {
            let _ = write!(s, " {} |", p.name);
        }
        let _ = write!(s, "\n|---|");
        for _ in &peers {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        let mut names: Vec<&String> = peers.iter().flat_map(|p| p.metrics.keys()).collect();
        names.sort_by_key(|n| metric_order(n));
        names.dedup();
        for n in names {
            let _ = write!(s, "| {n} |");
            for p in &peers {
                let cell = match p.metrics.get(n.as_str()) {
                    Some(m) => cell(m),
                    None if p.status != "ok" => "—".into(),
                    None => "n/a".into(),
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        let moded: Vec<&&PeerReport> = peers.iter().filter(|p| !p.mode.is_empty()).collect();
        if !moded.is_empty() {
            let _ = writeln!(
                s,
                "\nMode reported by the mount (root xattrs `user.musicfs.*`):"
            );
            for p in moded {
                let kv: Vec<String> = p.mode.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(s, "- {}: {}", p.name, kv.join(", "));
            }
        }
        for p in &peers {
            for (k, v) in &p.notes {
                let _ = writeln!(s, "- {} {k}: {v}", p.name);
            }
        }
        if !self.not_built.is_empty() {
            let _ = writeln!(s, "\nNot measured (not built yet):");
            for (k, v) in &self.not_built {
                let _ = writeln!(s, "- {k}: {v}");
            }
        }
        let _ = writeln!(s, "\nPeers not run:");
        for p in peers.iter().filter(|p| p.status != "ok") {
            let _ = writeln!(s, "- {}: {}", p.name, p.reason.as_deref().unwrap_or("?"));
        }
        let _ = writeln!(s, "\nCold means:");
        for p in &peers {
            let _ = writeln!(s, "- {}: {}", p.name, p.cold);
        }
        let _ = writeln!(
            s,
            "\n| scanner | status | files | seconds | files/s |\n|---|---|---|---|---|"
        );
        for sc in &self.scanners {
            let g = |k: &str| sc.get(k).cloned().unwrap_or_default();
            let status = g("status").as_str().unwrap_or("").to_string();
            let status = match g("reason").as_str() {
                Some(r) => format!("{status}: {r}"),
                None => status,
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.0} |",
                g("name").as_str().unwrap_or(""),
                status,
                g("files"),
                g("seconds").as_f64().unwrap_or(0.0),
                g("files_per_sec").as_f64().unwrap_or(0.0),
            );
        }
        s
    }
}

/// A report's opening lines: the command, the machine, the library.
pub fn preamble(
    command: &str,
    machine: &BTreeMap<String, String>,
    library: &BTreeMap<String, String>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Command: `{command}`\n");
    for (k, v) in machine {
        let _ = writeln!(s, "- {k}: {v}");
    }
    for (k, v) in library {
        let _ = writeln!(s, "- library {k}: {v}");
    }
    s
}

fn metric_order(n: &str) -> (usize, String) {
    const ORDER: &[&str] = &[
        "stat",
        "lookup",
        "readdir",
        "open",
        "read_files",
        "seqread",
        "randread",
        "concurrent",
        "mpd",
        "mount",
        "restart",
        "rss",
    ];
    let i = ORDER
        .iter()
        .position(|o| n.starts_with(o))
        .unwrap_or(ORDER.len());
    (i, n.to_string())
}

fn ns(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.0} ms", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.0} µs", v as f64 / 1e3)
    } else {
        format!("{:.1} µs", v as f64 / 1e3)
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

fn cell(m: &Metric) -> String {
    if let Some(e) = &m.error {
        let short: String = e.chars().take(60).collect();
        return format!("error: {short}");
    }
    match (m.value, m.p50, m.p99) {
        (Some(v), _, _) if m.unit != "ns" => {
            let r = m
                .ratio_value
                .map(|r| format!(" (×{r:.2})"))
                .unwrap_or_default();
            let extra = match (m.unit.as_str(), m.p99) {
                ("IOPS" | "MB/s", Some(p99)) => format!(", p99 {}", ns(p99)),
                _ => String::new(),
            };
            format!("{v:.2} {}{r}{extra}", m.unit)
        }
        (_, Some(p50), Some(p99)) => {
            let entries = m.entries.map(|e| format!(" [{e}]")).unwrap_or_default();
            format!(
                "{} / {} (×{} / ×{}){entries}",
                ns(p50),
                ns(p99),
                ratio(m.ratio_p50),
                ratio(m.ratio_p99)
            )
        }
        _ => "-".into(),
    }
}
