//! Files the scanner found but could not catalog, remembered with their scan state so an
//! unchanged broken file is not opened again on every scan.

use std::collections::HashMap;

use heed::RwTxn;
use musicfs_core::meta::{OriginId, ScanState};

use super::schema::{self, path_key, SkipValue};
use super::{Catalog, CatalogError};

/// One file to remember as not catalogable, for [`Batch::skipped`](super::Batch::skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipRecord {
    /// The origin holding the file, from [`Catalog::origin_id`].
    pub origin: OriginId,
    /// Path relative to the origin root, raw bytes.
    pub rel_path: Vec<u8>,
    /// File facts when it was found broken; a later scan retries it once they change.
    pub scan: ScanState,
    /// Human-readable reason, reported again while the file stays unchanged.
    pub reason: String,
}

impl Catalog {
    /// The skipped files of one origin: rel path -> (scan state, reason).
    pub fn skipped_states(
        &self,
        origin: OriginId,
    ) -> Result<HashMap<Vec<u8>, (ScanState, String)>, CatalogError> {
        let lmdb = |e| self.store.lmdb("skipped states", e);
        self.store.read("skipped states", |txn| {
            let mut out = HashMap::new();
            let prefix = schema::origin_prefix(origin);
            for item in self.dbs.skipped.prefix_iter(txn, &prefix).map_err(lmdb)? {
                let (_, value) = item.map_err(lmdb)?;
                out.insert(value.rel_path, (value.scan, value.reason));
            }
            Ok(out)
        })
    }

    /// Records one skip, first removing the track at its path if there is one; returns
    /// whether a track was removed.
    pub(super) fn skip_in(
        &self,
        txn: &mut RwTxn<'_>,
        skip: &SkipRecord,
    ) -> Result<bool, CatalogError> {
        let lmdb = |e| self.store.lmdb("apply", e);
        let key = path_key(skip.origin, &skip.rel_path);
        let mut removed = false;
        if let Some(entry) = self.path_entry(txn, &key)? {
            match self.track(txn, entry.id)? {
                Some(old) => {
                    self.check_same_path(&old, entry.id, skip.origin, &skip.rel_path)?;
                    removed = self.remove_in(txn, entry.id)?;
                }
                None => {
                    tracing::warn!(
                        catalog = %self.store.dir().display(),
                        id = entry.id.0,
                        "path index entry without its track; dropping it"
                    );
                    self.dbs.paths.delete(txn, &key).map_err(lmdb)?;
                }
            }
        }
        let value = SkipValue {
            rel_path: skip.rel_path.clone(),
            scan: skip.scan,
            reason: skip.reason.clone(),
        };
        self.dbs.skipped.put(txn, &key, &value).map_err(lmdb)?;
        Ok(removed)
    }

    /// Forgets the skip recorded for a path, if any.
    pub(super) fn unskip_in(
        &self,
        txn: &mut RwTxn<'_>,
        origin: OriginId,
        rel_path: &[u8],
    ) -> Result<(), CatalogError> {
        let lmdb = |e| self.store.lmdb("apply", e);
        let key = path_key(origin, rel_path);
        // A hashed key could in theory be another long path's: only drop our own entry.
        let ours = self
            .dbs
            .skipped
            .get(txn, &key)
            .map_err(lmdb)?
            .is_some_and(|value| value.rel_path == rel_path);
        if ours {
            self.dbs.skipped.delete(txn, &key).map_err(lmdb)?;
        }
        Ok(())
    }
}
