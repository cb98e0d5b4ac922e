//! The origins a served tree reads from, by the index its snapshot gives each track's
//! origin (the catalog's origin id), with each one's online state.
//!
//! The daemon builds one table from its configuration and shares it between the refresh
//! loop (which marks origins offline and back online) and the FUSE read path (which fails
//! reads of an offline origin at once with EIO instead of trying its files). A table can
//! also be made from a snapshot's recorded origin keys, for a mount without a daemon.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{open_origin, Origin, OriginError, OriginSpec};

/// One origin of the table.
#[derive(Debug)]
pub struct OriginSlot {
    /// The origin.
    pub origin: Arc<dyn Origin>,
    offline: AtomicBool,
}

impl OriginSlot {
    /// A slot for `origin`, online.
    pub fn new(origin: Arc<dyn Origin>) -> OriginSlot {
        OriginSlot {
            origin,
            offline: AtomicBool::new(false),
        }
    }

    /// Whether the refresh loop has marked the origin offline.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    /// Marks the origin offline or back online; returns the previous state (offline?).
    pub fn set_offline(&self, offline: bool) -> bool {
        self.offline.swap(offline, Ordering::AcqRel)
    }
}

/// Origins by index. Indexes with no origin are holes.
#[derive(Debug, Default)]
pub struct OriginTable {
    slots: Vec<Option<OriginSlot>>,
}

impl OriginTable {
    /// An empty table.
    pub fn new() -> OriginTable {
        OriginTable::default()
    }

    /// Puts `origin` at `index` (replacing what was there).
    pub fn insert(&mut self, index: u32, origin: Arc<dyn Origin>) {
        let i = index as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(OriginSlot::new(origin));
    }

    /// A table from recorded origin keys (`(index, key)`, as a snapshot lists them). A key
    /// that does not parse or open is a hole, and its error is returned beside the table.
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = (u32, &'a OsStr)>,
    ) -> (OriginTable, Vec<OriginError>) {
        let mut table = OriginTable::new();
        let mut errors = Vec::new();
        for (index, key) in keys {
            match OriginSpec::parse_os(key).and_then(|spec| open_origin(&spec)) {
                Ok(origin) => table.insert(index, origin),
                Err(e) => errors.push(e),
            }
        }
        (table, errors)
    }

    /// The origin at `index`.
    pub fn get(&self, index: u32) -> Option<&OriginSlot> {
        self.slots.get(index as usize)?.as_ref()
    }

    /// Every origin with its index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &OriginSlot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether the table holds no origin.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_open_into_slots_by_index_and_bad_keys_are_holes_with_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().as_os_str();
        let (table, errors) = OriginTable::from_keys([(2, good), (0, OsStr::new("relative/path"))]);
        assert_eq!(table.len(), 1);
        assert!(table.get(0).is_none());
        assert!(table.get(1).is_none());
        let slot = table.get(2).expect("slot 2");
        assert!(slot.origin.as_local().is_some());
        assert_eq!(errors.len(), 1);
        assert!(!slot.is_offline());
        assert!(!slot.set_offline(true));
        assert!(slot.is_offline());
        assert_eq!(table.iter().map(|(i, _)| i).collect::<Vec<_>>(), [2]);
    }
}
