//! Planning how each origin's changes are noticed, and the inotify watches of those that use
//! it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use musicfs_core::config::{Config, WatchMode};
use tracing::warn;

use super::Trigger;
use crate::scan::DirHook;
use crate::watch::{Change, Watches};

/// A value for the origin at an index of [`Library::origins`](super::Library::origins).
pub type Indexed<T> = (usize, T);

/// Splits the origins by how their changes are noticed: `(inotify, polled)`, each with the
/// origin's index. Cheap: nothing is watched yet.
pub fn plan_watches(
    cfg: &Config,
    origins: &[PathBuf],
) -> (Vec<Indexed<PathBuf>>, Vec<Indexed<Duration>>) {
    let mut inotify = Vec::new();
    let mut polled = Vec::new();
    for (i, root) in origins.iter().enumerate() {
        let oc = cfg.origins.get(i);
        match oc.map_or(WatchMode::Inotify, |o| o.watch) {
            WatchMode::Inotify => inotify.push((i, root.clone())),
            WatchMode::Poll => {
                let secs = oc.map_or(60.0, |o| o.poll_interval_secs);
                polled.push((i, Duration::from_secs_f64(secs.max(0.1))));
            }
            WatchMode::None => {}
        }
    }
    (inotify, polled)
}

/// The inotify watches of the origins that use them. Scans add them: [`OriginWatches::hook`]
/// watches each directory just before the scan lists it, so the start-up reconcile (and
/// every refresh after it, which also picks up new directories) sets up the watches in
/// the same walk that looks for changes, and nothing changed meanwhile is missed.
pub struct OriginWatches {
    watches: Watches,
    /// Canonical root and index (into [`Library::origins`](super::Library::origins)) of each watched origin, in the
    /// order of their slots in `watches`.
    roots: Vec<(PathBuf, usize)>,
}

impl OriginWatches {
    /// A scan hook adding a watch on each directory listed in a watched origin.
    pub fn hook(self: &Arc<Self>) -> DirHook {
        let w = self.clone();
        Arc::new(move |origin: &Path, dir: &Path| {
            if let Some(slot) = w.roots.iter().position(|(r, _)| r == origin) {
                // Failures are remembered by `Watches` and handled after the scan.
                let _ = w.watches.add_dir(slot, dir);
            }
        })
    }

    /// Watched origins (index into [`Library::origins`](super::Library::origins)) missing some watches, and why.
    pub fn failed(&self) -> Vec<(usize, String)> {
        self.roots
            .iter()
            .enumerate()
            .filter_map(|(k, (_, origin))| self.watches.failed(k).map(|why| (*origin, why)))
            .collect()
    }
}

/// Starts inotify for the `inotify` origins (index, canonical root), forwarding their
/// changes to `tx` as [`Trigger::Watch`]. Cheap: no directory is watched until a scan lists
/// it. `None` (after a warning) when inotify cannot be set up: poll those origins instead.
pub fn watch_origins(
    inotify: &[Indexed<PathBuf>],
    tx: &Sender<Trigger>,
) -> Option<Arc<OriginWatches>> {
    if inotify.is_empty() {
        return None;
    }
    let (wtx, wrx) = crossbeam_channel::unbounded::<Change>();
    let watches = match crate::watch::watch(inotify.len(), wtx) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch origins with inotify ({e}); polling every 60 s instead");
            return None;
        }
    };
    let map: Vec<usize> = inotify.iter().map(|(i, _)| *i).collect();
    let tx = tx.clone();
    let forward = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            for change in wrx {
                let change = match change {
                    Change::Origin(k) => Change::Origin(map[k]),
                    other => other,
                };
                if tx.send(Trigger::Watch(change)).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = forward {
        warn!("cannot start the watch thread, polling instead: {e}");
        return None;
    }
    Some(Arc::new(OriginWatches {
        watches,
        roots: inotify.iter().map(|(i, r)| (r.clone(), *i)).collect(),
    }))
}
