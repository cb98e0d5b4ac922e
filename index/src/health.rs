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
//! gathered by [`probe_origin`], which asks the origin ([`Origin::probe`]) with the root
//! identity the catalog recorded at the last good scan, so they are tested without touching
//! a disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use musicfs_core::health::OriginHealth;
use musicfs_core::OriginId;
use musicfs_storage::origin::{Health, Offline, Origin, RootIdentity};

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
    /// The root was a mount point and is not one any more: the filesystem that held the
    /// library is not mounted.
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

impl From<Offline> for OfflineReason {
    fn from(o: Offline) -> OfflineReason {
        match o {
            Offline::Missing => OfflineReason::Missing("not found".into()),
            Offline::NotADirectory => OfflineReason::NotADirectory,
            Offline::Unreadable { reason } => OfflineReason::Unreadable(reason),
            Offline::NotMounted => OfflineReason::NotMounted,
            Offline::DeviceChanged { recorded, found } => OfflineReason::DeviceChanged {
                was: recorded,
                now: found,
            },
            Offline::Unresponsive { .. } => OfflineReason::NotResponding,
        }
    }
}

/// What [`probe_origin`] found about a reachable origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootFacts {
    /// The root's identity now ([`Origin::root_identity`]), to record after a good scan.
    pub identity: Option<RootIdentity>,
    /// `(recorded, current)` device when the root is on another device than recorded: a
    /// remounted share (NFS gets a new device number on every mount) or another disk in
    /// its place. The walk tells which, by how many of the tracks it finds.
    pub moved: Option<(u64, u64)>,
    /// The root lists no entry at all. Known before the walk for local roots only; for
    /// other origins the walk finding none of the tracks says the same.
    pub empty: bool,
}

/// What the catalog remembers of an origin, for [`classify_root`] and [`classify_walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// Tracks it has.
    pub tracks: u64,
    /// The root's identity at the last good scan.
    pub identity: Option<RootIdentity>,
}

/// Probes `origin` against the identity recorded at its last good scan, giving up after
/// `timeout` (the probing thread is left behind when a hung share never answers). A root
/// on another device than recorded is not offline yet: see [`RootFacts::moved`].
pub fn probe_origin(
    origin: &Arc<dyn Origin>,
    recorded: Option<RootIdentity>,
    timeout: Duration,
) -> Result<RootFacts, OfflineReason> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let owned = Arc::clone(origin);
    let spawned = std::thread::Builder::new()
        .name("origin-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_now(owned.as_ref(), recorded));
        });
    if spawned.is_err() {
        // No thread to spare: probe on this one rather than call the origin offline.
        return probe_now(origin.as_ref(), recorded);
    }
    rx.recv_timeout(timeout)
        .unwrap_or(Err(OfflineReason::NotResponding))
}

fn probe_now(
    origin: &dyn Origin,
    recorded: Option<RootIdentity>,
) -> Result<RootFacts, OfflineReason> {
    let moved = match origin.probe(recorded.as_ref()) {
        Health::Up => None,
        Health::Offline(Offline::DeviceChanged { recorded, found }) => {
            // Still check that the root is there and readable; the device alone is
            // decided by the walk.
            match origin.probe(None) {
                Health::Up => Some((recorded, found)),
                Health::Offline(o) => return Err(o.into()),
            }
        }
        Health::Offline(o) => return Err(o.into()),
    };
    let empty = match origin.local_root() {
        Some(root) => {
            let mut entries =
                std::fs::read_dir(root).map_err(|e| OfflineReason::Unreadable(e.to_string()))?;
            match entries.next() {
                None => true,
                Some(Ok(_)) => false,
                Some(Err(e)) => return Err(OfflineReason::Unreadable(e.to_string())),
            }
        }
        None => false,
    };
    Ok(RootFacts {
        identity: origin.root_identity(),
        moved,
        empty,
    })
}

/// The verdict before walking a reachable root (an unmounted filesystem was already
/// reported by the probe). `allow_mass_removal` lets an emptied root through (its walk then
/// removes the tracks).
pub fn classify_root(
    facts: &RootFacts,
    recorded: &Recorded,
    allow_mass_removal: bool,
) -> Result<(), OfflineReason> {
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
/// `scanned` are the origins the scan was given (by catalog key, [`Origin::key`], with
/// their catalog id when the catalog knows them), `offline` what it reported. Returns the positions in `scanned` of
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
    use musicfs_storage::origin::{open_origin, OriginSpec};

    use super::*;

    fn local(root: &Path) -> Arc<dyn Origin> {
        open_origin(&OriginSpec::local(root)).unwrap()
    }

    #[test]
    fn an_empty_root_with_cataloged_tracks_is_offline_unless_removal_is_allowed() {
        let rec = Recorded {
            tracks: 3,
            identity: None,
        };
        let empty = RootFacts {
            empty: true,
            ..RootFacts::default()
        };
        assert_eq!(
            classify_root(&empty, &rec, false),
            Err(OfflineReason::Emptied { tracks: 3 })
        );
        assert_eq!(classify_root(&empty, &rec, true), Ok(()));
        let new_origin = Recorded::default();
        assert_eq!(classify_root(&empty, &new_origin, false), Ok(()));
    }

    #[test]
    fn a_root_recorded_as_a_mount_that_no_longer_is_one_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let origin = local(dir.path());
        let now = origin.root_identity().unwrap();
        assert!(!now.mount_root, "a temp dir is no mount root");
        let was_mounted = RootIdentity {
            mount_root: true,
            ..now
        };
        assert_eq!(
            probe_origin(&origin, Some(was_mounted), PROBE_TIMEOUT),
            Err(OfflineReason::NotMounted)
        );
        let facts = probe_origin(&origin, Some(now), PROBE_TIMEOUT).unwrap();
        assert_eq!((facts.identity, facts.moved), (Some(now), None));
    }

    #[test]
    fn a_root_on_another_device_is_reachable_and_says_it_moved() {
        let dir = tempfile::tempdir().unwrap();
        let origin = local(dir.path());
        let now = origin.root_identity().unwrap();
        let elsewhere = RootIdentity {
            dev: now.dev + 1,
            ..now
        };
        let facts = probe_origin(&origin, Some(elsewhere), PROBE_TIMEOUT).unwrap();
        assert_eq!(facts.moved, Some((now.dev + 1, now.dev)));
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
            probe_origin(&local(&missing), None, PROBE_TIMEOUT),
            Err(OfflineReason::Missing(_))
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            probe_origin(&local(&file), None, PROBE_TIMEOUT),
            Err(OfflineReason::NotADirectory)
        );
        let facts = probe_origin(&local(dir.path()), None, PROBE_TIMEOUT).unwrap();
        assert!(!facts.empty && facts.identity.is_some());
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(
            probe_origin(&local(&sub), None, PROBE_TIMEOUT)
                .unwrap()
                .empty
        );
    }
}
