//! Mount-ready time at 1k to 1M tracks: a catalog and snapshot are synthesised straight
//! from the generator's plan (no audio files written), then `musicfsd` is timed from
//! process start to the first successful stat of a file through the mount.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::template::{Template, DEFAULT_TEMPLATE};
use musicfs_core::tree::TreeBuilder;
use musicfs_core::{Format, ScanState, TrackMeta, TrackRecord};
use musicfs_storage::{Catalog, Upsert};
use serde::Serialize;

use crate::gen::{self, TrackPlan};
use crate::ops;
use crate::peers::{self, Bins, Peer};

/// Mount-ready figures at one library size.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyResult {
    /// Tracks in the synthesised catalog.
    pub tracks: u64,
    /// Time to synthesise catalog and snapshot (not part of the mount).
    pub synth_seconds: f64,
    /// Snapshot size in bytes.
    pub snapshot_bytes: u64,
    /// The untimed warm-up start (page cache, first open of the snapshot), in ms.
    pub warmup_ms: f64,
    /// Process start to first stat, per counted start (after the warm-up), in ms.
    pub ready_ms: Vec<f64>,
    /// Median of `ready_ms`.
    pub ready_ms_median: f64,
    /// VmRSS after the first stat of the last start, MB.
    pub rss_idle_mb: f64,
    /// RssAnon after the first stat of the last start, MB.
    pub rss_idle_anon_mb: f64,
}

fn meta(p: &TrackPlan) -> TrackMeta {
    TrackMeta {
        title: p.title.clone(),
        artist: p.artists.clone(),
        album: p.album.clone(),
        album_artist: p.album_artist.iter().cloned().collect(),
        genre: p.genre.iter().cloned().collect(),
        date: p.date.clone(),
        track: p.track.map(|n| n.to_string()),
        track_total: p.track_total,
        disc: p.disc.map(|n| n.to_string()),
        duration_ms: Some(500),
        sample_rate: Some(44_100),
        channels: Some(2),
        ..TrackMeta::default()
    }
}

/// Writes a catalog and a published snapshot for `tracks` planned tracks into `state`,
/// with `origin` as the (empty) origin root. Returns the virtual path of one file.
pub fn synthesise(state: &Path, origin: &Path, tracks: u64, seed: u64) -> Result<PathBuf> {
    if state.exists() {
        std::fs::remove_dir_all(state)?;
    }
    std::fs::create_dir_all(state)?;
    let plans = gen::plan(
        tracks,
        seed,
        &[
            Format::Flac,
            Format::Mp3,
            Format::M4a,
            Format::Ogg,
            Format::Opus,
        ],
    );
    let catalog = Catalog::open(&state.join("catalog"))?;
    let oid = catalog.origin_id(origin)?;
    let template = Template::parse(DEFAULT_TEMPLATE)?;
    let mut roots = vec![PathBuf::new(); oid.0 as usize + 1];
    roots[oid.0 as usize] = origin.to_path_buf();
    let mut builder = TreeBuilder::new(template.as_str(), roots);
    let mut probe = None;
    for chunk in plans.chunks(20_000) {
        let ups: Vec<Upsert> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| Upsert {
                origin: oid,
                rel_path: p.rel_path.clone().into_bytes(),
                format: p.format,
                scan: ScanState {
                    size: 8_000 + i as u64,
                    mtime_ns: 1_700_000_000_000_000_000,
                    ino: i as u64 + 1,
                    ctime_ns: 1_700_000_000_000_000_000,
                    perm: None,
                },
                meta: meta(p),
            })
            .collect();
        let ids = catalog.apply(&ups, &[])?;
        for (u, id) in ups.into_iter().zip(ids) {
            let rec = TrackRecord {
                id,
                origin: u.origin,
                rel_path: u.rel_path,
                format: u.format,
                scan: u.scan,
                meta: u.meta,
            };
            let comps = template.render(&rec);
            if probe.is_none() {
                probe = Some(comps.iter().collect::<PathBuf>());
            }
            builder.add(&rec, &comps);
        }
    }
    let tree = builder.build();
    Snapshot::write(&state.join("tree.snap"), &tree, 1)?;
    probe.context("no track planned")
}

/// Mount-ready time of musicfsd at each size in `sizes`: one warm-up start, then `starts`
/// counted starts.
pub fn measure(bins: &Bins, work: &Path, sizes: &[u64], starts: usize) -> Result<Vec<ReadyResult>> {
    let mut out = Vec::new();
    for &n in sizes {
        let dir = work.join(format!("ready-{n}"));
        let origin = dir.join("origin");
        std::fs::create_dir_all(&origin)?;
        let origin = origin.canonicalize()?;
        let state = dir.join("state");
        let t = Instant::now();
        let probe = synthesise(&state, &origin, n, 1)?;
        let synth_seconds = t.elapsed().as_secs_f64();
        let snapshot_bytes = std::fs::metadata(state.join("tree.snap"))?.len();
        // The origin is empty, so each daemon's start-up reconcile rightly empties the
        // catalog and republishes: every start gets a fresh copy of the synthesised state.
        let pristine = dir.join("state.pristine");
        copy_dir(&state, &pristine)?;
        let mut ready_ms = Vec::new();
        let mut warmup_ms = 0.0;
        let (mut rss, mut anon) = (0, 0);
        for i in 0..=starts.max(1) {
            copy_dir(&pristine, &state)?;
            let l = peers::launch(
                Peer::Musicfs,
                &origin,
                &dir.join("mnt"),
                false,
                bins,
                &state,
            )?;
            let m = peers::start(
                l,
                &probe,
                Duration::from_secs(120),
                &dir.join("musicfsd.log"),
            )
            .with_context(|| format!("musicfsd at {n} tracks"))?;
            let ms = m.ready.as_secs_f64() * 1e3;
            if i == 0 {
                warmup_ms = ms;
            } else {
                ready_ms.push(ms);
            }
            if i == starts.max(1) {
                if let Some(pid) = m.pid() {
                    (rss, anon) = ops::rss(pid)?;
                }
            }
            m.stop();
        }
        let mut sorted = ready_ms.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        out.push(ReadyResult {
            tracks: n,
            synth_seconds,
            snapshot_bytes,
            ready_ms_median: sorted[sorted.len() / 2],
            warmup_ms,
            ready_ms,
            rss_idle_mb: rss as f64 / 1e6,
            rss_idle_anon_mb: anon as f64 / 1e6,
        });
        tracing::info!(tracks = n, "mount-ready measured");
    }
    Ok(out)
}

/// Replaces `to` with a copy of `from` (`cp -a`, keeping the LMDB file sparse).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .context("cannot run cp")?;
    anyhow::ensure!(
        status.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
    Ok(())
}
