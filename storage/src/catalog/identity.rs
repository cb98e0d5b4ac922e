//! Track identities (`musicfs_core::meta::Identity`): what finds one track in several
//! places. Stored by track id, and indexed by audio identity then by the track's complete
//! copy tags (`musicfs_core::meta::CopyTags::complete`, 0 when partly tagged), so the
//! possible copies of a track are two range reads away. A track's identity goes with it.

use heed::RwTxn;
use musicfs_core::meta::{CopyTags, Identity, OriginId, TrackId};
use serde::{Deserialize, Serialize};

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

/// A track's identity as stored: with the copy-tags key it is indexed under, so a
/// re-tag moves its index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredIdentity {
    pub(crate) identity: Identity,
    pub(crate) tags: u64,
}

/// `by_audio` key: the audio identity, the copy-tags key, then the track id (all
/// big-endian), so the copies of one audio are adjacent.
fn audio_key(audio: u128, tags: u64, id: TrackId) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&audio.to_be_bytes());
    key[16..24].copy_from_slice(&tags.to_be_bytes());
    key[24..].copy_from_slice(&id.0.to_be_bytes());
    key
}

fn key_tags(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(16..24)?.try_into().ok()?))
}

pub(super) fn split_audio_key(key: &[u8]) -> Option<(u128, TrackId)> {
    let audio = u128::from_be_bytes(key.get(..16)?.try_into().ok()?);
    let id = u64::from_be_bytes(key.get(24..32)?.try_into().ok()?);
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
                let tags = match self.track(txn, entry.id)? {
                    Some(t) => CopyTags::of(&t.meta).complete().unwrap_or(0),
                    None => continue,
                };
                let stored = s.identity.map(|identity| StoredIdentity { identity, tags });
                changed |= self.set_identity_in(txn, entry.id, stored)?;
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
        new: Option<StoredIdentity>,
    ) -> Result<bool, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        let old = self.dbs.identities.get(txn, &id.0).map_err(lmdb)?;
        if old == new {
            return Ok(false);
        }
        if let Some(old) = old {
            self.dbs
                .by_audio
                .delete(txn, &audio_key(old.identity.audio, old.tags, id))
                .map_err(lmdb)?;
        }
        match new {
            Some(new) => {
                self.dbs.identities.put(txn, &id.0, &new).map_err(lmdb)?;
                self.dbs
                    .by_audio
                    .put(txn, &audio_key(new.identity.audio, new.tags, id), &())
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
            Ok(self
                .dbs
                .identities
                .get(txn, &id.0)
                .map_err(lmdb)?
                .map(|s| s.identity))
        })
    }

    /// The tracks that may be copies of track `id` (same audio, tags that may agree: the
    /// same complete copy tags, or partly tagged; every copy of the audio when `id` itself
    /// is partly tagged), itself included; empty when it has no identity.
    pub fn copy_candidates(&self, id: TrackId) -> Result<Vec<TrackId>, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        self.store.read("identity", |txn| {
            let Some(stored) = self.dbs.identities.get(txn, &id.0).map_err(lmdb)? else {
                return Ok(Vec::new());
            };
            let audio = stored.identity.audio.to_be_bytes();
            let mut prefixes: Vec<Vec<u8>> = Vec::new();
            if stored.tags == 0 {
                prefixes.push(audio.to_vec());
            } else {
                for tags in [0, stored.tags] {
                    let mut p = audio.to_vec();
                    p.extend_from_slice(&tags.to_be_bytes());
                    prefixes.push(p);
                }
            }
            let mut out = Vec::new();
            for prefix in &prefixes {
                for item in self.dbs.by_audio.prefix_iter(txn, prefix).map_err(lmdb)? {
                    let (key, ()) = item.map_err(lmdb)?;
                    if let Some((_, copy)) = split_audio_key(key) {
                        out.push(copy);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Every group of two or more tracks that may be copies of each other, each in id
    /// order (one pass over the index): the tracks of one audio with the same complete copy
    /// tags, or all the tracks of an audio when some of them are partly tagged (they may
    /// agree with any). A library of distinct recordings has none, whatever its size.
    pub fn copy_groups(&self) -> Result<Vec<Vec<TrackId>>, CatalogError> {
        let lmdb = |e| self.store.lmdb("identity", e);
        self.store.read("identity", |txn| {
            let mut groups = Vec::new();
            // The run being collected: (audio, tags key or None when the run is the
            // whole audio because of partly tagged members).
            let mut current: Option<(u128, Option<u64>)> = None;
            let mut members: Vec<TrackId> = Vec::new();
            let mut close = |members: &mut Vec<TrackId>| {
                if members.len() > 1 {
                    members.sort_unstable();
                    groups.push(std::mem::take(members));
                }
                members.clear();
            };
            for item in self.dbs.by_audio.iter(txn).map_err(lmdb)? {
                let (key, ()) = item.map_err(lmdb)?;
                let (Some((audio, id)), Some(tags)) = (split_audio_key(key), key_tags(key)) else {
                    continue;
                };
                let same_run = match current {
                    Some((a, None)) => a == audio,
                    Some((a, Some(t))) => a == audio && t == tags,
                    None => false,
                };
                if !same_run {
                    close(&mut members);
                    // Partly tagged members (key 0) sort first within their audio.
                    current = Some((audio, (tags != 0).then_some(tags)));
                }
                members.push(id);
            }
            close(&mut members);
            Ok(groups)
        })
    }
}
