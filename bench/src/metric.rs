//! One reported figure: a latency distribution (hdrhistogram) or a single value, plus its
//! ratio to the native figure of the same run.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

/// Records `d` (saturating at the histogram's top).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = (d.as_nanos() as u64).clamp(1, h.high());
    h.saturating_record(ns);
}

/// One metric of one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metric {
    /// Unit of `value`, or "ns" for latency fields.
    pub unit: String,
    /// Median latency (ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<u64>,
    /// 99th percentile (ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<u64>,
    /// 99.9th percentile (ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999: Option<u64>,
    /// Maximum (ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// Samples recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A throughput or size (GB/s, IOPS, ms, MB, files/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Entries in the directory read (readdir only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// p50 divided by native's p50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p50: Option<f64>,
    /// p99 divided by native's p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p99: Option<f64>,
    /// value divided by native's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_value: Option<f64>,
    /// Why the figure is missing, when the operation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Metric {
    /// A latency metric from a histogram.
    pub fn latency(h: &Histogram<u64>) -> Metric {
        Metric {
            unit: "ns".into(),
            p50: Some(h.value_at_quantile(0.5)),
            p99: Some(h.value_at_quantile(0.99)),
            p999: Some(h.value_at_quantile(0.999)),
            max: Some(h.max()),
            count: Some(h.len()),
            ..Metric::default()
        }
    }

    /// A single value.
    pub fn value(v: f64, unit: &str) -> Metric {
        Metric {
            unit: unit.into(),
            value: Some(v),
            ..Metric::default()
        }
    }

    /// A latency metric that also carries a throughput.
    pub fn with_value(mut self, v: f64, unit: &str) -> Metric {
        self.value = Some(v);
        self.unit = unit.into();
        self
    }

    /// A failed measurement.
    pub fn failed(reason: impl Into<String>) -> Metric {
        Metric {
            unit: String::new(),
            error: Some(reason.into()),
            ..Metric::default()
        }
    }

    /// Fills the ratios against the native figure of the same metric.
    pub fn set_ratios(&mut self, native: &Metric) {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        self.ratio_p50 = ratio(self.p50.map(|v| v as f64), native.p50.map(|v| v as f64));
        self.ratio_p99 = ratio(self.p99.map(|v| v as f64), native.p99.map(|v| v as f64));
        self.ratio_value = ratio(self.value, native.value);
    }
}
