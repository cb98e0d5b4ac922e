//! Planning how each origin's changes are noticed, and the inotify watches of those that use
//! it.
//!
//! An origin is watched with inotify only when the configuration does not ask for polling,
//! it has a local root, and the origin says inotify sees its changes
//! ([`Origin::change_detection`]: not for NFS, SMB or FUSE mounts, nor for a root that is
//! unreachable at start-up). Otherwise it is polled, every `poll_interval_secs`. A remote
//! origin (no local root, changes seen only by polling: S3, SFTP, SMB) is always polled,
//! whatever `watch` says: nothing else would ever notice its changes.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use musicfs_core::config::{Config, OriginConfig, WatchMode};
use musicfs_storage::origin::{ChangeDetection, Origin};
use tracing::{info, warn};

use super::Trigger;
use crate::scan::DirHook;
use crate::watch::{Change, Watches};

/// A value for the origin at an index of [`Library::origins`](super::Library::origins).
pub type Indexed<T> = (usize, T);

/// An origin to watch with inotify, with its index.
pub type Watched = Indexed<Arc<dyn Origin>>;

/// Splits the origins by how their changes are noticed: `(inotify, polled)`, each with the
/// origin's index (`cfg.origins[i]` configures `origins[i]`). Cheap: nothing is watched yet.
pub fn plan_watches(
    cfg: &Config,
    origins: &[Arc<dyn Origin>],
) -> (Vec<Watched>, Vec<Indexed<Duration>>) {
    let mut inotify = Vec::new();
    let mut polled = Vec::new();
    for (i, origin) in origins.iter().enumerate() {
        let oc = cfg.origins.get(i);
        let every = || {
            let secs = oc.map_or(60.0, |o: &OriginConfig| o.poll_interval_secs);
            Duration::from_secs_f64(secs.max(0.1))
        };
        let remote =
            origin.local_root().is_none() && origin.change_detection() == ChangeDetection::Poll;
        if remote {
            polled.push((i, every()));
            continue;
        }
        match oc.map_or(WatchMode::Inotify, |o| o.watch) {
            WatchMode::Inotify => match origin.change_detection() {
                ChangeDetection::Inotify if origin.local_root().is_some() => {
                    inotify.push((i, origin.clone()))
                }
                ChangeDetection::None => {}
                _ => {
                    let every = every();
                    info!(
                        origin = %origin.spec(),
                        secs = every.as_secs_f64(),
                        "inotify cannot see this origin's changes: polling it"
                    );
                    polled.push((i, every));
                }
            },
            WatchMode::Poll => polled.push((i, every())),
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
    /// Key and index (into [`Library::origins`](super::Library::origins)) of each watched
    /// origin, in the order of their slots in `watches`.
    keys: Vec<(OsString, usize)>,
}

impl OriginWatches {
    /// A scan hook adding a watch on each directory listed in a watched origin.
    pub fn hook(self: &Arc<Self>) -> DirHook {
        let w = self.clone();
        Arc::new(move |origin: &dyn Origin, dir: &Path| {
            let Some(root) = origin.local_root() else {
                return;
            };
            if let Some(slot) = w.keys.iter().position(|(k, _)| k == origin.key()) {
                // inotify needs the local directory itself.
                let local = if dir.as_os_str().is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(dir)
                };
                // Failures are remembered by `Watches` and handled after the scan.
                let _ = w.watches.add_dir(slot, &local, dir);
            }
        })
    }

    /// Watched origins (index into [`Library::origins`](super::Library::origins)) missing some watches, and why.
    pub fn failed(&self) -> Vec<(usize, String)> {
        self.keys
            .iter()
            .enumerate()
            .filter_map(|(k, (_, origin))| self.watches.failed(k).map(|why| (*origin, why)))
            .collect()
    }
}

/// Starts inotify for the `inotify` origins (index, origin with a local root), forwarding their
/// changes to `tx` as [`Trigger::Watch`]. Cheap: no directory is watched until a scan lists
/// it. `None` (after a warning) when inotify cannot be set up: poll those origins instead.
pub fn watch_origins(inotify: &[Watched], tx: &Sender<Trigger>) -> Option<Arc<OriginWatches>> {
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
                    Change::Dir { origin, dir, deep } => Change::Dir {
                        origin: map[origin],
                        dir,
                        deep,
                    },
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
        keys: inotify
            .iter()
            .map(|(i, o)| (o.key().to_os_string(), *i))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use musicfs_core::config::OriginConfig;

    use super::*;
    use crate::testorigin::{listed, local};
    use crate::watch::Change;

    fn roots() -> (tempfile::TempDir, [PathBuf; 3]) {
        let dir = tempfile::tempdir().unwrap();
        let roots = ["a", "b", "c"].map(|n| dir.path().join(n));
        for r in &roots {
            std::fs::create_dir_all(r.join("sub")).unwrap();
        }
        (dir, roots)
    }

    #[test]
    fn inotify_is_planned_only_for_local_roots_it_sees_and_polling_when_configured_or_needed() {
        let (_dir, [a, b, c]) = roots();
        let origins = [local(&a), listed(&b), local(&c)];
        let cfg = Config {
            origins: vec![
                OriginConfig::local(a),
                OriginConfig::local(b),
                OriginConfig {
                    watch: WatchMode::Poll,
                    poll_interval_secs: 5.0,
                    ..OriginConfig::local(c)
                },
            ],
            ..Config::default()
        };
        let (inotify, polled) = plan_watches(&cfg, &origins);
        let watched: Vec<usize> = inotify.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            watched,
            [0],
            "the temp dir's file system is one inotify sees"
        );
        assert_eq!(
            polled,
            [(1, Duration::from_secs(60)), (2, Duration::from_secs(5))],
            "no local root: polled at its interval; watch = poll: polled"
        );
    }

    #[test]
    fn a_remote_origin_is_polled_at_its_interval_whatever_watch_says() {
        let (_dir, [a, b, _]) = roots();
        let origins = [listed(&a), listed(&b)];
        let cfg = Config {
            origins: vec![
                OriginConfig {
                    watch: WatchMode::None,
                    poll_interval_secs: 7.0,
                    ..OriginConfig::local(a)
                },
                OriginConfig {
                    watch: WatchMode::Inotify,
                    poll_interval_secs: 9.0,
                    ..OriginConfig::local(b)
                },
            ],
            ..Config::default()
        };
        let (inotify, polled) = plan_watches(&cfg, &origins);
        assert!(inotify.is_empty());
        assert_eq!(
            polled,
            [(0, Duration::from_secs(7)), (1, Duration::from_secs(9))]
        );
    }

    #[test]
    fn the_scan_hook_watches_each_listed_directory_of_a_watched_origin_only() {
        let (_dir, [a, b, _]) = roots();
        let (watched, other) = (local(&a), listed(&b));
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = watch_origins(&[(3, watched.clone())], &tx).expect("inotify");
        let hook = w.hook();
        hook(watched.as_ref(), Path::new("sub"));
        hook(other.as_ref(), Path::new("sub"));
        std::fs::write(b.join("sub/new.flac"), b"x").unwrap();
        std::fs::write(a.join("sub/new.flac"), b"x").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            got,
            Trigger::Watch(Change::Dir {
                origin: 3,
                dir: b"sub".to_vec(),
                deep: false
            }),
            "reported by its index and directory"
        );
        assert!(w.failed().is_empty());
    }
}
