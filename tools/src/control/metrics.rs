//! Prometheus metrics (prometheus-client's text format), gathered at scrape time from the
//! counters the parts keep anyway: the dispatcher's per-operation histograms
//! (`musicfs_fusedev::opstats`), bytes read per origin, the chunk cache, refreshes and
//! the event path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use musicfs_fusedev::opstats::{OpStats, BUCKET_BOUNDS_NS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::events::WebhookQueue;
use super::server::Daemon;

/// Everything `/metrics` shows.
#[derive(Clone)]
pub struct Metrics {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// The dispatcher's counters.
    pub ops: Arc<OpStats>,
    /// The webhooks' queues.
    pub webhooks: Vec<Arc<WebhookQueue>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The text exposition of `metrics`.
pub fn render(metrics: &Metrics) -> String {
    let mut registry = Registry::with_prefix("musicfs");
    registry.register_collector(Box::new(metrics.clone()));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!("cannot encode the metrics: {e}");
    }
    out
}

/// One labelled value of a metric family: (label pairs, value).
type Row = (Vec<(&'static str, String)>, u64);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[Row],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.daemon;
        let ops = self.ops.snapshot();
        {
            let mut m = enc.encode_descriptor(
                "fuse_op_duration_seconds",
                "Time to answer a FUSE request, by operation",
                None,
                MetricType::Histogram,
            )?;
            for op in &ops {
                let buckets: Vec<(f64, u64)> = BUCKET_BOUNDS_NS
                    .iter()
                    .map(|ns| *ns as f64 / 1e9)
                    .chain(std::iter::once(f64::MAX))
                    .zip(op.buckets.iter().copied())
                    .collect();
                m.encode_family(&[("op", op.op)])?
                    .encode_histogram::<NoLabelSet>(
                        op.sum_ns as f64 / 1e9,
                        op.count,
                        &buckets,
                        None,
                    )?;
            }
        }
        let by_op = |f: fn(&musicfs_fusedev::opstats::OpSnapshot) -> u64| {
            ops.iter()
                .map(|o| (vec![("op", o.op.to_string())], f(o)))
                .collect::<Vec<_>>()
        };
        let errors = by_op(|o| o.errors);
        counter(
            &mut enc,
            "fuse_op_errors",
            "FUSE requests answered with an error, by operation",
            &errors,
        )?;
        let snap = d.shared.load();
        let bytes: Vec<Row> = self
            .ops
            .origin_bytes()
            .into_iter()
            .map(|(id, b)| {
                let origin = snap
                    .origin_root(id)
                    .map_or_else(|| format!("#{id}"), |p| p.display().to_string());
                (vec![("origin", origin)], b)
            })
            .collect();
        counter(
            &mut enc,
            "origin_read_bytes",
            "Bytes the daemon read for FUSE reads, by origin (passthrough reads are the kernel's)",
            &bytes,
        )?;
        gauge(
            &mut enc,
            "snapshot_generation",
            "Generation of the tree served",
            snap.generation() as i64,
        )?;
        gauge(
            &mut enc,
            "tracks",
            "Files in the tree served",
            snap.track_count() as i64,
        )?;
        gauge(
            &mut enc,
            "open_files",
            "File handles open",
            d.model.open_handles().0 as i64,
        )?;
        let offline = d
            .live_origins()
            .iter()
            .filter(|o| {
                snap.origins()
                    .find(|(_, r)| *r == o.key)
                    .is_some_and(|(id, _)| d.health.is_offline(id))
            })
            .count();
        gauge(
            &mut enc,
            "origins_offline",
            "Origins offline",
            offline as i64,
        )?;
        if let Some(cas) = d.cas.get() {
            counter(
                &mut enc,
                "cache_evicted_chunks",
                "Chunks the cache evicted (budget, clear)",
                &[(Vec::new(), cas.evicted_total())],
            )?;
            gauge(
                &mut enc,
                "cache_budget_bytes",
                "The cache's byte budget",
                cas.budget() as i64,
            )?;
        }
        type Pick = fn(&musicfs_storage::origin::CacheCounters) -> &std::sync::atomic::AtomicU64;
        let per_origin: [(&str, &str, Pick); 5] = [
            (
                "cache_hits",
                "Read windows found in the chunk cache, by origin",
                |c| &c.hits,
            ),
            (
                "cache_misses",
                "Read windows fetched from the origin, by origin",
                |c| &c.misses,
            ),
            (
                "cache_prefetched",
                "Of the misses, windows fetched by prefetch, by origin",
                |c| &c.prefetched,
            ),
            (
                "cache_tier_hits",
                "Windows the cache lacked that the shared tier answered, by origin",
                |c| &c.tier_hits,
            ),
            (
                "cache_tier_bad",
                "Windows the shared tier answered wrongly (fetched from the origin), by origin",
                |c| &c.tier_bad,
            ),
        ];
        for (name, help, pick) in per_origin {
            let rows: Vec<Row> = d
                .cache_counters
                .iter()
                .map(|(spec, c)| {
                    (
                        vec![("origin", spec.clone())],
                        pick(c).load(Ordering::Relaxed),
                    )
                })
                .collect();
            counter(&mut enc, name, help, &rows)?;
        }
        let c = &d.hub.counters;
        let (running, progress, _) = d.refresh.status();
        gauge(
            &mut enc,
            "refresh_running",
            "1 while a refresh runs",
            i64::from(running),
        )?;
        gauge(
            &mut enc,
            "scan_files_seen",
            "Files seen by the running scan",
            progress.map_or(0, |p| p.seen as i64),
        )?;
        counter(
            &mut enc,
            "publishes",
            "Trees published",
            &[(Vec::new(), c.publishes.load(Ordering::Relaxed))],
        )?;
        let changes: Vec<Row> = [
            ("added", &c.added),
            ("changed", &c.changed),
            ("removed", &c.removed),
        ]
        .into_iter()
        .map(|(k, v)| (vec![("change", k.to_string())], v.load(Ordering::Relaxed)))
        .collect();
        counter(
            &mut enc,
            "library_track_changes",
            "Tracks added, changed, removed by scans",
            &changes,
        )?;
        counter(
            &mut enc,
            "events",
            "Events taken by the hub",
            &[(Vec::new(), c.emitted.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut enc,
            "events_dropped",
            "Events dropped because the hub's queue was full",
            &[(Vec::new(), c.dropped.load(Ordering::Relaxed))],
        )?;
        for (name, help, pick) in [
            ("webhook_delivered", "Events a webhook accepted", 0),
            ("webhook_failed", "Events given up on after every retry", 1),
            (
                "webhook_dropped",
                "Events dropped from a full webhook queue",
                2,
            ),
        ] {
            let rows: Vec<Row> = self
                .webhooks
                .iter()
                .map(|w| {
                    let v = match pick {
                        0 => &w.delivered,
                        1 => &w.failed,
                        _ => &w.dropped,
                    };
                    (
                        vec![("url", w.config.url.clone())],
                        v.load(Ordering::Relaxed),
                    )
                })
                .collect();
            counter(&mut enc, name, help, &rows)?;
        }
        Ok(())
    }
}
