//! Which origins are offline right now: the refresh loop decides (see `musicfs-index`'s
//! `health` module), the FUSE read path asks, so an open of a track whose origin is offline
//! answers EIO at once instead of touching a share that may hang or a directory that
//! holds something else.
//!
//! Origins are named by their catalog id (what the snapshot's file nodes carry). Asking is
//! one atomic load while every origin is online, the usual case; a lock is only taken
//! while some origin is offline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock};

use crate::events::{Event, Events};
use std::time::{Duration, Instant};

/// The offline origins, shared (behind an `Arc`) by the refresh loop and the FUSE workers.
#[derive(Debug, Default)]
pub struct OriginHealth {
    /// How many origins are offline; zero lets readers skip the lock.
    offline_count: AtomicUsize,
    /// (origin id, why), at most one entry per id.
    offline: RwLock<Vec<(u32, String)>>,
    /// Origins that answer but slowly or with errors: (origin id, why).
    degraded: RwLock<Vec<(u32, String)>>,
    /// Failed reads per origin; `failures` is its length, so asking whether an origin
    /// failed lately costs one atomic load until some read ever failed.
    failed: RwLock<Vec<ReadFailures>>,
    failures: AtomicUsize,
    /// Told of every change of state (set once, by the daemon).
    events: OnceLock<Events>,
    /// Origins the operator switched off: offline, not scanned or probed, until switched
    /// back on.
    disabled: RwLock<Vec<u32>>,
}

/// One origin's failed reads.
#[derive(Debug, Clone, Copy)]
struct ReadFailures {
    origin: u32,
    /// Counted since the prober last took them.
    count: u64,
    /// When the last one happened.
    last: Instant,
}

/// An origin's state as the mount shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginState {
    /// Answering in time, no failed reads.
    Up,
    /// Answering, but slowly or with failed reads (why).
    Degraded(String),
    /// Not answering, or not there (why): its files are not read (a copy elsewhere is).
    Offline(String),
}

impl OriginHealth {
    /// Reports each change of an origin's state to `events` from now on (an
    /// [`Event::OriginHealth`]); false when a sink was set already.
    pub fn report_to(&self, events: Events) -> bool {
        self.events.set(events).is_ok()
    }

    fn changed(&self, id: u32) {
        let Some(events) = self.events.get() else {
            return;
        };
        let (state, reason) = match self.state(id) {
            OriginState::Up => ("up", String::new()),
            OriginState::Degraded(why) => ("degraded", why),
            OriginState::Offline(why) => ("offline", why),
        };
        events.emit(Event::OriginHealth {
            origin: id,
            state,
            reason,
        });
    }

    /// Whether origin `id` is offline.
    pub fn is_offline(&self, id: u32) -> bool {
        if self.offline_count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let offline = self.offline.read().unwrap_or_else(PoisonError::into_inner);
        offline.iter().any(|(o, _)| *o == id)
    }

    /// Marks origin `id` offline for `reason`; true when it was online until now (a state
    /// change worth logging), false when only the reason changed.
    pub fn set_offline(&self, id: u32, reason: &str) -> bool {
        let mut offline = self.offline.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = offline.iter_mut().find(|(o, _)| *o == id) {
            reason.clone_into(&mut entry.1);
            return false;
        }
        offline.push((id, reason.to_owned()));
        self.offline_count.store(offline.len(), Ordering::Release);
        drop(offline);
        self.changed(id);
        true
    }

    /// Switches origin `id` off (offline for `reason`, and kept so: scans and probes
    /// leave it alone) or back on (online; the next scan or probe judges it again).
    pub fn set_disabled(&self, id: u32, disabled: bool, reason: &str) {
        {
            let mut d = self
                .disabled
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            d.retain(|o| *o != id);
            if disabled {
                d.push(id);
            }
        }
        if disabled {
            self.set_offline(id, reason);
        } else {
            self.set_online(id);
        }
    }

    /// Whether the operator switched origin `id` off.
    pub fn is_disabled(&self, id: u32) -> bool {
        let d = self.disabled.read().unwrap_or_else(PoisonError::into_inner);
        d.contains(&id)
    }

    /// Marks origin `id` online (not while it is disabled); true when it was offline
    /// until now. Failed reads seen before are forgotten with the state: new opens use it
    /// again.
    pub fn set_online(&self, id: u32) -> bool {
        if self.is_disabled(id) {
            return false;
        }
        let mut offline = self.offline.write().unwrap_or_else(PoisonError::into_inner);
        let before = offline.len();
        offline.retain(|(o, _)| *o != id);
        self.offline_count.store(offline.len(), Ordering::Release);
        let changed = offline.len() != before;
        drop(offline);
        if changed {
            let mut failed = self.failed.write().unwrap_or_else(PoisonError::into_inner);
            failed.retain(|f| f.origin != id);
            self.failures.store(failed.len(), Ordering::Release);
            drop(failed);
            self.changed(id);
        }
        changed
    }

    /// Whether any origin is offline.
    pub fn any_offline(&self) -> bool {
        self.offline_count.load(Ordering::Acquire) != 0
    }

    /// Origin `id`'s state.
    pub fn state(&self, id: u32) -> OriginState {
        if let Some(why) = self.reason(id) {
            return OriginState::Offline(why);
        }
        let degraded = self.degraded.read().unwrap_or_else(PoisonError::into_inner);
        match degraded.iter().find(|(o, _)| *o == id) {
            Some((_, why)) => OriginState::Degraded(why.clone()),
            None => OriginState::Up,
        }
    }

    /// Marks origin `id` degraded for `reason` (`None`: not degraded); true when that
    /// changed whether it is degraded.
    pub fn set_degraded(&self, id: u32, reason: Option<&str>) -> bool {
        let mut degraded = self
            .degraded
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let found = degraded.iter().position(|(o, _)| *o == id);
        let changed = match (found, reason) {
            (Some(i), Some(why)) => {
                why.clone_into(&mut degraded[i].1);
                false
            }
            (None, Some(why)) => {
                degraded.push((id, why.to_owned()));
                true
            }
            (Some(i), None) => {
                degraded.swap_remove(i);
                true
            }
            (None, None) => false,
        };
        drop(degraded);
        if changed {
            self.changed(id);
        }
        changed
    }

    /// Counts a failed read of a file of origin `id` (the read moved to another copy, or
    /// failed).
    pub fn note_read_error(&self, id: u32) {
        let now = Instant::now();
        let mut failed = self.failed.write().unwrap_or_else(PoisonError::into_inner);
        match failed.iter_mut().find(|f| f.origin == id) {
            Some(f) => {
                f.count += 1;
                f.last = now;
            }
            None => failed.push(ReadFailures {
                origin: id,
                count: 1,
                last: now,
            }),
        }
        self.failures.store(failed.len(), Ordering::Release);
    }

    /// Whether a read of origin `id` failed less than `within` ago: a reader with a copy
    /// elsewhere goes there first instead of waiting for this origin to time out too.
    pub fn failed_recently(&self, id: u32, within: Duration) -> bool {
        if self.failures.load(Ordering::Acquire) == 0 {
            return false;
        }
        let failed = self.failed.read().unwrap_or_else(PoisonError::into_inner);
        failed
            .iter()
            .any(|f| f.origin == id && f.last.elapsed() < within)
    }

    /// The failed reads of origin `id` counted since the last call.
    pub fn take_read_errors(&self, id: u32) -> u64 {
        let mut failed = self.failed.write().unwrap_or_else(PoisonError::into_inner);
        failed
            .iter_mut()
            .find(|f| f.origin == id)
            .map_or(0, |f| std::mem::take(&mut f.count))
    }

    /// Why origin `id` is offline, `None` when it is online.
    pub fn reason(&self, id: u32) -> Option<String> {
        if self.offline_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let offline = self.offline.read().unwrap_or_else(PoisonError::into_inner);
        offline
            .iter()
            .find(|(o, _)| *o == id)
            .map(|(_, why)| why.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_reported_once_and_reasons_follow_the_latest() {
        let h = OriginHealth::default();
        assert!(!h.is_offline(3));
        assert!(h.set_offline(3, "root missing"));
        assert!(h.any_offline());
        assert!(!h.set_offline(3, "root is empty"), "same state: no change");
        assert!(h.is_offline(3));
        assert!(!h.is_offline(4));
        assert_eq!(h.reason(3).as_deref(), Some("root is empty"));
        assert!(h.set_online(3));
        assert!(!h.set_online(3));
        assert!(!h.is_offline(3));
        assert_eq!(h.reason(3), None);
        assert!(!h.any_offline());
    }

    #[test]
    fn degraded_and_read_errors_are_per_origin() {
        let h = OriginHealth::default();
        assert_eq!(h.state(1), OriginState::Up);
        assert!(h.set_degraded(1, Some("slow")));
        assert!(!h.set_degraded(1, Some("slower")));
        assert_eq!(h.state(1), OriginState::Degraded("slower".into()));
        assert_eq!(h.state(2), OriginState::Up);
        h.set_offline(1, "gone");
        assert_eq!(h.state(1), OriginState::Offline("gone".into()));
        h.set_online(1);
        assert!(h.set_degraded(1, None));
        assert_eq!(h.state(1), OriginState::Up);
        h.note_read_error(2);
        h.note_read_error(2);
        assert_eq!(h.take_read_errors(2), 2);
        assert_eq!(h.take_read_errors(2), 0);
        assert_eq!(h.take_read_errors(1), 0);
        assert!(h.failed_recently(2, Duration::from_secs(60)));
        assert!(!h.failed_recently(2, Duration::ZERO));
        assert!(!h.failed_recently(1, Duration::from_secs(60)));
        h.set_offline(2, "probe failed");
        h.set_online(2);
        assert!(
            !h.failed_recently(2, Duration::from_secs(60)),
            "back online: forgotten"
        );
    }
}
