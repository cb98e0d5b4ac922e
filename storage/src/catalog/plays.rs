//! The access log behind the `Recently Played` and `Most Played` collections: per track,
//! how often it was played and when last. A play is what the mount counts as one (see
//! `musicfs_fusedev::fs::FsModel::with_play_log`); a track's plays go with it.

use heed::RwTxn;
use musicfs_core::meta::TrackId;
use serde::{Deserialize, Serialize};

use super::schema::Counter;
use super::{Catalog, CatalogError};

/// A track's plays, as stored under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plays {
    /// How many times it was played.
    pub count: u64,
    /// When it was last played, ns since the epoch.
    pub last_ns: i64,
}

impl Catalog {
    /// Records one play of each track in `plays` (id, when), in one transaction. Unknown
    /// ids (a track removed meanwhile) are ignored.
    pub fn record_plays(&self, plays: &[(TrackId, i64)]) -> Result<(), CatalogError> {
        let lmdb = |e| self.store.lmdb("plays", e);
        self.store.write("plays", |txn| {
            let mut any = false;
            for &(id, at) in plays {
                if self.dbs.tracks.get(txn, &id.0).map_err(lmdb)?.is_none() {
                    continue;
                }
                let old = self.dbs.plays.get(txn, &id.0).map_err(lmdb)?;
                let new = Plays {
                    count: old.map_or(0, |p| p.count) + 1,
                    last_ns: old.map_or(at, |p| p.last_ns.max(at)),
                };
                self.dbs.plays.put(txn, &id.0, &new).map_err(lmdb)?;
                any = true;
            }
            if any {
                self.dbs.meta(self.store.dir()).bump(txn, Counter::Plays)?;
            }
            Ok(())
        })
    }

    /// Merges imported plays (another player's counts): each track keeps the larger count
    /// and the later last play. Unknown ids are ignored.
    pub fn merge_plays(&self, plays: &[(TrackId, Plays)]) -> Result<(), CatalogError> {
        let lmdb = |e| self.store.lmdb("plays", e);
        self.store.write("plays", |txn| {
            let mut any = false;
            for &(id, p) in plays {
                if self.dbs.tracks.get(txn, &id.0).map_err(lmdb)?.is_none() {
                    continue;
                }
                let old = self.dbs.plays.get(txn, &id.0).map_err(lmdb)?;
                let new = Plays {
                    count: old.map_or(0, |o| o.count).max(p.count),
                    last_ns: old.map_or(p.last_ns, |o| o.last_ns.max(p.last_ns)),
                };
                if old != Some(new) {
                    self.dbs.plays.put(txn, &id.0, &new).map_err(lmdb)?;
                    any = true;
                }
            }
            if any {
                self.dbs.meta(self.store.dir()).bump(txn, Counter::Plays)?;
            }
            Ok(())
        })
    }

    /// Every played track with its plays, in id order.
    pub fn plays(&self) -> Result<Vec<(TrackId, Plays)>, CatalogError> {
        let lmdb = |e| self.store.lmdb("plays", e);
        self.store.read("plays", |txn| {
            let mut out = Vec::new();
            for item in self.dbs.plays.iter(txn).map_err(lmdb)? {
                let (id, p) = item.map_err(lmdb)?;
                out.push((TrackId(id), p));
            }
            Ok(out)
        })
    }

    /// A counter bumped by every write that recorded a play.
    pub fn plays_counter(&self) -> Result<u64, CatalogError> {
        self.store.read("plays counter", |txn| {
            self.dbs.meta(self.store.dir()).counter(txn, Counter::Plays)
        })
    }

    /// Drops a removed track's plays.
    pub(super) fn drop_plays_in(
        &self,
        txn: &mut RwTxn<'_>,
        id: TrackId,
    ) -> Result<(), CatalogError> {
        self.dbs
            .plays
            .delete(txn, &id.0)
            .map_err(|e| self.store.lmdb("apply", e))?;
        Ok(())
    }
}
