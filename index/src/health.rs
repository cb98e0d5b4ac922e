//! Whether an origin is there: the decision that keeps a library from being lost.
//!
//! A scan must never mistake "not there right now" for "deleted". An origin whose root is
//! missing, unreadable or not a directory, a mount point whose filesystem is not mounted
//! (the root now sits on its parent's device), a root that lists nothing where the catalog
//! has tracks, or a walk that would remove more than a configured share of the origin's
//! tracks at once is **offline**: the scan keeps its tracks and reports it
//! ([`OfflineReason`]). Only `musicfs scan --allow-mass-removal` (for the last two) or
//! `musicfs origin forget` removes them.
//!
//! The decisions are pure functions ([`classify_root`], [`classify_walk`]) over facts
//! gathered by [`probe_root`], so they are tested without touching a disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use musicfs_core::health::OriginHealth;
use musicfs_core::OriginId;

use crate::scan::OfflineOrigin;

/// The share of an origin's tracks that may vanish in one scan before the scan calls the
/// origin offline instead of removing them.
pub const DEFAULT_MASS_REMOVAL_THRESHOLD: f64 = 0.5;

/// How long a root may take to answer `stat` and a first directory read (a hung network
/// share never answers) before it counts as offline.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an origin is offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineReason {
    /// The root cannot be resolved (missing, or a dangling link).
    Missing(String),
    /// The root exists but is not a directory.
    NotADirectory,
    /// The root cannot be listed.
    Unreadable(String),
    /// The root did not answer within [`PROBE_TIMEOUT`].
    NotResponding,
    /// The root was a mount point and now sits on its parent's device: the filesystem
    /// that held the library is not mounted.
    NotMounted,
    /// The root lists nothing, or none of the cataloged tracks, where the catalog has some.
    Emptied {
        /// Tracks the catalog has for the origin.
        tracks: u64,
    },
    /// More than the threshold of the origin's tracks vanished in one scan.
    MassRemoval {
        /// Tracks not found.
        gone: u64,
        /// Tracks the catalog has for the origin.
        tracks: u64,
    },
    /// The root is on another device than recorded and most of its tracks are not there:
    /// another disk or share is mounted in its place.
    DeviceChanged {
        /// The device recorded at the last good scan.
        was: u64,
        /// The device now.
        now: u64,
    },
}

impl std::fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfflineReason::Missing(e) => write!(f, "root missing ({e})"),
            OfflineReason::NotADirectory => write!(f, "root is not a directory"),
            OfflineReason::Unreadable(e) => write!(f, "root unreadable ({e})"),
            OfflineReason::NotResponding => {
                write!(f, "root did not answer within {PROBE_TIMEOUT:?}")
            }
            OfflineReason::NotMounted => write!(f, "its filesystem is not mounted"),
            OfflineReason::Emptied { tracks } => {
                write!(f, "root is empty but the catalog has {tracks} tracks")
            }
            OfflineReason::MassRemoval { gone, tracks } => write!(
                f,
                "{gone} of its {tracks} tracks vanished at once (confirm with `musicfs scan --allow-mass-removal`)"
            ),
            OfflineReason::DeviceChanged { was, now } => write!(
                f,
                "root moved from device {was:#x} to {now:#x} and most tracks are not there"
            ),
        }
    }
}

/// What [`probe_root`] found about a reachable root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootFacts {
    /// `st_dev` of the root.
    pub dev: u64,
    /// `st_dev` of its parent (the root's own for `/`).
    pub parent_dev: u64,
    /// The root lists no entry at all.
    pub empty: bool,
}

impl RootFacts {
    /// Whether the root is a mount point (on another device than its parent).
    pub fn is_mount_point(&self) -> bool {
        self.dev != self.parent_dev
    }
}

/// What the catalog remembers of an origin, for [`classify_root`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// Tracks it has.
    pub tracks: u64,
    /// The root's device at the last good scan, and whether it was a mount point.
    pub device: Option<(u64, bool)>,
}

/// Resolves and stats `origin` and reads its first entry, giving up after `timeout` (the
/// probing thread is left behind when a hung share never answers).
pub fn probe_root(origin: &Path, timeout: Duration) -> Result<(PathBuf, RootFacts), OfflineReason> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let owned = origin.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("origin-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_now(&owned));
        });
    if spawned.is_err() {
        // No thread to spare: probe on this one rather than call the origin offline.
        return probe_now(origin);
    }
    rx.recv_timeout(timeout)
        .unwrap_or(Err(OfflineReason::NotResponding))
}

fn probe_now(origin: &Path) -> Result<(PathBuf, RootFacts), OfflineReason> {
    let root = origin
        .canonicalize()
        .map_err(|e| OfflineReason::Missing(e.to_string()))?;
    let md = std::fs::metadata(&root).map_err(|e| OfflineReason::Missing(e.to_string()))?;
    if !md.is_dir() {
        return Err(OfflineReason::NotADirectory);
    }
    let mut entries =
        std::fs::read_dir(&root).map_err(|e| OfflineReason::Unreadable(e.to_string()))?;
    let empty = match entries.next() {
        None => true,
        Some(Ok(_)) => false,
        Some(Err(e)) => return Err(OfflineReason::Unreadable(e.to_string())),
    };
    let parent_dev = match root.parent() {
        Some(parent) => std::fs::metadata(parent).map_or(md.dev(), |p| p.dev()),
        None => md.dev(),
    };
    Ok((
        root,
        RootFacts {
            dev: md.dev(),
            parent_dev,
            empty,
        },
    ))
}

/// The verdict before walking a reachable root. `allow_mass_removal` lets an emptied root
/// through (its walk then removes the tracks); an unmounted filesystem never is.
pub fn classify_root(
    facts: &RootFacts,
    recorded: &Recorded,
    allow_mass_removal: bool,
) -> Result<(), OfflineReason> {
    if let Some((_, true)) = recorded.device {
        if !facts.is_mount_point() {
            return Err(OfflineReason::NotMounted);
        }
    }
    if facts.empty && recorded.tracks > 0 && !allow_mass_removal {
        return Err(OfflineReason::Emptied {
            tracks: recorded.tracks,
        });
    }
    Ok(())
}

/// The verdict after the walk: `gone` of the origin's `tracks` were not found. More than
/// `threshold` of them gone is offline, unless `allow_mass_removal`. `moved` is (recorded,
/// current) device when the root changed device, which names the reason.
pub fn classify_walk(
    tracks: u64,
    gone: u64,
    threshold: f64,
    moved: Option<(u64, u64)>,
    allow_mass_removal: bool,
) -> Result<(), OfflineReason> {
    if allow_mass_removal || tracks == 0 || gone == 0 {
        return Ok(());
    }
    if gone >= tracks {
        return Err(OfflineReason::Emptied { tracks });
    }
    if (gone as f64) <= threshold * tracks as f64 {
        return Ok(());
    }
    Err(match moved {
        Some((was, now)) => OfflineReason::DeviceChanged { was, now },
        None => OfflineReason::MassRemoval { gone, tracks },
    })
}

/// Records the verdicts of one scan in `health` and logs each change of state once:
/// `scanned` are the origins the scan was given (as given, with their catalog id when the
/// catalog knows them), `offline` what it reported. Returns the positions in `scanned` of
/// the offline origins.
pub fn record_verdicts(
    health: &OriginHealth,
    scanned: &[(&Path, Option<OriginId>)],
    offline: &[OfflineOrigin],
) -> Vec<usize> {
    let mut down = Vec::new();
    for (k, (root, id)) in scanned.iter().enumerate() {
        let verdict = offline.iter().find(|o| o.origin == *root);
        if verdict.is_some() {
            down.push(k);
        }
        // An origin the catalog never saw has no tracks to keep or serve: the daemon warns
        // about it at start-up, and nothing is recorded.
        let Some(id) = id else { continue };
        match verdict {
            Some(o) => {
                let why = o.reason.to_string();
                if health.set_offline(id.0, &why) {
                    tracing::warn!(
                        origin = %root.display(),
                        reason = %why,
                        "origin offline: its tracks stay listed, reads of them fail with EIO"
                    );
                }
            }
            None => {
                if health.set_online(id.0) {
                    tracing::info!(origin = %root.display(), "origin online: serving it again");
                }
            }
        }
    }
    down
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dev: u64, parent_dev: u64, empty: bool) -> RootFacts {
        RootFacts {
            dev,
            parent_dev,
            empty,
        }
    }

    #[test]
    fn an_empty_root_with_cataloged_tracks_is_offline_unless_removal_is_allowed() {
        let rec = Recorded {
            tracks: 3,
            device: Some((1, false)),
        };
        let empty = facts(1, 1, true);
        assert_eq!(
            classify_root(&empty, &rec, false),
            Err(OfflineReason::Emptied { tracks: 3 })
        );
        assert_eq!(classify_root(&empty, &rec, true), Ok(()));
        let new_origin = Recorded::default();
        assert_eq!(classify_root(&empty, &new_origin, false), Ok(()));
    }

    #[test]
    fn a_mount_point_now_on_its_parents_device_is_not_mounted_even_when_allowed() {
        let rec = Recorded {
            tracks: 0,
            device: Some((7, true)),
        };
        assert_eq!(
            classify_root(&facts(1, 1, false), &rec, true),
            Err(OfflineReason::NotMounted)
        );
        assert_eq!(classify_root(&facts(9, 1, false), &rec, false), Ok(()));
    }

    #[test]
    fn removals_up_to_the_threshold_are_deletions_and_more_is_offline() {
        assert_eq!(classify_walk(10, 5, 0.5, None, false), Ok(()));
        assert_eq!(
            classify_walk(10, 6, 0.5, None, false),
            Err(OfflineReason::MassRemoval {
                gone: 6,
                tracks: 10
            })
        );
        assert_eq!(classify_walk(10, 6, 0.5, None, true), Ok(()));
        assert_eq!(classify_walk(10, 6, 0.7, None, false), Ok(()));
        assert_eq!(classify_walk(0, 0, 0.5, None, false), Ok(()));
    }

    #[test]
    fn every_track_gone_is_an_emptied_origin() {
        assert_eq!(
            classify_walk(4, 4, 0.9, None, false),
            Err(OfflineReason::Emptied { tracks: 4 })
        );
        assert_eq!(
            classify_walk(1, 1, 0.5, None, false),
            Err(OfflineReason::Emptied { tracks: 1 })
        );
    }

    #[test]
    fn a_device_change_is_accepted_when_the_tracks_are_found_and_named_when_not() {
        assert_eq!(classify_walk(10, 1, 0.5, Some((1, 2)), false), Ok(()));
        assert_eq!(
            classify_walk(10, 8, 0.5, Some((1, 2)), false),
            Err(OfflineReason::DeviceChanged { was: 1, now: 2 })
        );
    }

    #[test]
    fn verdicts_flip_the_shared_state_once_per_change() {
        let health = OriginHealth::default();
        let (a, b, c) = (Path::new("/a"), Path::new("/b"), Path::new("/never"));
        let scanned = [(a, Some(OriginId(0))), (b, Some(OriginId(1))), (c, None)];
        let down = |origin: &Path| OfflineOrigin {
            origin: origin.to_path_buf(),
            reason: OfflineReason::NotMounted,
        };
        let report = [down(b), down(c)];
        assert_eq!(record_verdicts(&health, &scanned, &report), vec![1, 2]);
        assert!(health.is_offline(1) && !health.is_offline(0));
        assert!(
            !health.set_offline(1, "again"),
            "already recorded as offline"
        );
        assert_eq!(record_verdicts(&health, &scanned, &[]), Vec::<usize>::new());
        assert!(!health.is_offline(1));
    }

    #[test]
    fn probing_a_missing_root_or_a_file_is_offline_and_a_directory_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        assert!(matches!(
            probe_root(&missing, PROBE_TIMEOUT),
            Err(OfflineReason::Missing(_))
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            probe_root(&file, PROBE_TIMEOUT),
            Err(OfflineReason::NotADirectory)
        );
        let (root, facts) = probe_root(dir.path(), PROBE_TIMEOUT).unwrap();
        assert_eq!(root, dir.path().canonicalize().unwrap());
        assert!(!facts.empty);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(probe_root(&sub, PROBE_TIMEOUT).unwrap().1.empty);
    }
}
