//! Which origins are offline right now: the refresh loop decides (see `musicfs-index`'s
//! `health` module), the FUSE read path asks, so an open of a track whose origin is offline
//! answers EIO at once instead of touching a share that may hang or a directory that
//! holds something else.
//!
//! Origins are named by their catalog id (what the snapshot's file nodes carry). Asking is
//! one atomic load while every origin is online, the usual case; a lock is only taken
//! while some origin is offline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

/// The offline origins, shared (behind an `Arc`) by the refresh loop and the FUSE workers.
#[derive(Debug, Default)]
pub struct OriginHealth {
    /// How many origins are offline; zero lets readers skip the lock.
    offline_count: AtomicUsize,
    /// (origin id, why), at most one entry per id.
    offline: RwLock<Vec<(u32, String)>>,
}

impl OriginHealth {
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
        true
    }

    /// Marks origin `id` online; true when it was offline until now.
    pub fn set_online(&self, id: u32) -> bool {
        let mut offline = self.offline.write().unwrap_or_else(PoisonError::into_inner);
        let before = offline.len();
        offline.retain(|(o, _)| *o != id);
        self.offline_count.store(offline.len(), Ordering::Release);
        offline.len() != before
    }

    /// Whether any origin is offline.
    pub fn any_offline(&self) -> bool {
        self.offline_count.load(Ordering::Acquire) != 0
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
}
