//! Track identities (`musicfs_core::meta::Identity`): what finds one track in several
//! places. Stored by track id, and indexed by audio identity so the copies of a track are
//! one range read away. A track's identity goes with it.

use heed::RwTxn;
use musicfs_core::meta::{Identity, OriginId, TrackId};

use super::schema::{path_key, Counter};
use super::{Catalog, CatalogError};

/// A track's identity as a scan found it, for [`super::Batch::identities`]: the track is
/// named by its path, as the batch's upserts name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySet {
    /// The origin holding the track.
    pub origin: OriginId,
    /// The track's path relative to the origin root.
    pub rel_path: Vec<u8>,
    /// Its identity; `None` when it could not be read (any earlier one is dropped).
    pub identity: Option<Identity>,
}

/// `by_audio` key: the audio identity, then the track id (both big-endian), so the copies
/// of one audio are adjacent and in id order.
fn audio_key(audio: u128, id: TrackId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&audio.to_be_bytes());
    key[16..].copy_from_slice(&id.0.to_be_bytes());
    key
}

fn split_key(key: &[u8]) -> Option<(u128, TrackId)> {
    let audio = u128::from_be_bytes(key.get(..16)?.try_into().ok()?);
    let id = u64::from_be_bytes(key.get(16..24)?.try_into().ok()?);
    Some((audio, TrackId(id)))
}

impl Catalog {
    /// Records the identities of a batch's tracks (after its upserts); a path with no
    /// track is ignored. Returns whether anything changed.
    pub(super) fn identities_in_txn(
        &self,
        txn: &mut RwTxn<'_>,
        sets: &[IdentitySet],
    ) -> Result<bool, CatalogError> {
        let mut changed = false;
        for s in sets {
            let key = path_key(s.origin, &s.rel_path);
            if let Some(entry) = self.path_entry(txn, &key)? {
                changed |= self.set_identity_in(txn, entry.id, s.identity)?;
            }
        }
        if changed {
            self.dbs
                .meta(self.store.dir())
                .bump(txn, Counter::Changes)?;
        }
        Ok(changed)
    }

    /// Sets (or with `None` drops) track `id`'s identity; whether it changed.
    pub(super) fn set_identity_in(
        &self,
        txn: &mut RwTxn<'_>,
        id: TrackId,
        new: Option<Identity>,
    ) -> Result<bool, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        let old = self.dbs.identities.get(txn, &id.0).map_err(lmdb)?;
        if old == new {
            return Ok(false);
        }
        if let Some(old) = old {
            self.dbs
                .by_audio
                .delete(txn, &audio_key(old.audio, id))
                .map_err(lmdb)?;
        }
        match new {
            Some(new) => {
                self.dbs.identities.put(txn, &id.0, &new).map_err(lmdb)?;
                self.dbs
                    .by_audio
                    .put(txn, &audio_key(new.audio, id), &())
                    .map_err(lmdb)?;
            }
            None => {
                self.dbs.identities.delete(txn, &id.0).map_err(lmdb)?;
            }
        }
        Ok(true)
    }

    /// Track `id`'s identity, if a scan recorded one.
    pub fn identity(&self, id: TrackId) -> Result<Option<Identity>, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        self.store.read("identity", |txn| {
            self.dbs.identities.get(txn, &id.0).map_err(lmdb)
        })
    }

    /// The tracks with the same audio as track `id` (itself included, in id order); empty
    /// when it has no identity.
    pub fn copies_of(&self, id: TrackId) -> Result<Vec<TrackId>, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        self.store.read("identity", |txn| {
            let Some(identity) = self.dbs.identities.get(txn, &id.0).map_err(lmdb)? else {
                return Ok(Vec::new());
            };
            let prefix = identity.audio.to_be_bytes();
            let mut out = Vec::new();
            for item in self.dbs.by_audio.prefix_iter(txn, &prefix).map_err(lmdb)? {
                let (key, ()) = item.map_err(lmdb)?;
                if let Some((_, copy)) = split_key(key) {
                    out.push(copy);
                }
            }
            Ok(out)
        })
    }

    /// Every group of two or more tracks with the same audio identity, each in id order
    /// (one pass over the index, in audio order).
    pub fn copy_groups(&self) -> Result<Vec<Vec<TrackId>>, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        self.store.read("identity", |txn| {
            let mut groups = Vec::new();
            let mut current: Option<u128> = None;
            let mut members: Vec<TrackId> = Vec::new();
            for item in self.dbs.by_audio.iter(txn).map_err(lmdb)? {
                let (key, ()) = item.map_err(lmdb)?;
                let Some((audio, id)) = split_key(key) else {
                    continue;
                };
                if current != Some(audio) {
                    if members.len() > 1 {
                        groups.push(std::mem::take(&mut members));
                    }
                    members.clear();
                    current = Some(audio);
                }
                members.push(id);
            }
            if members.len() > 1 {
                groups.push(members);
            }
            Ok(groups)
        })
    }
}
