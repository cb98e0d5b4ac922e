//! The origins a served tree reads from, by the index its snapshot gives each track's
//! origin (the catalog's origin id).
//!
//! The daemon builds one table from its configuration and hands it to the FUSE read path;
//! a table can also be made from a snapshot's recorded origin keys, for a mount without a
//! daemon. (Whether an origin is online is `musicfs_core::health::OriginHealth`'s, shared
//! by the refresh loop and the read path.)

use std::ffi::OsStr;
use std::sync::Arc;

use super::{open_origin, Origin, OriginError, OriginSpec};

/// Origins by index. Indexes with no origin are holes.
#[derive(Debug, Default)]
pub struct OriginTable {
    slots: Vec<Option<Arc<dyn Origin>>>,
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
        self.slots[i] = Some(origin);
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
    pub fn get(&self, index: u32) -> Option<&Arc<dyn Origin>> {
        self.slots.get(index as usize)?.as_ref()
    }

    /// Every origin with its index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Arc<dyn Origin>)> {
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
        let origin = table.get(2).expect("slot 2");
        assert!(origin.as_local().is_some());
        assert_eq!(errors.len(), 1);
        assert_eq!(table.iter().map(|(i, _)| i).collect::<Vec<_>>(), [2]);
    }
}
