//! The metadata overlay's tables: tag edits ([`Override`]) by the audio they belong to, and
//! the renditions built from them by track.
//!
//! An override is keyed by its track's audio identity, so it follows the audio when the
//! source moves, is copied or re-tagged; a track the scanner found no identity for is keyed
//! by its id instead (and loses the override when its source moves). Writing or clearing an
//! override bumps the change counter: the published tree no longer shows the catalog.

use std::collections::HashMap;

use heed::RoTxn;
use musicfs_core::meta::TrackId;
use musicfs_core::overlay::{Override, Rendition};

use super::identity::split_audio_key;
use super::schema::Counter;
use super::{Catalog, CatalogError};

/// What an override is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverrideKey {
    /// The audio identity of the tracks it belongs to.
    Audio(u128),
    /// A track without an identity.
    Track(TrackId),
}

impl OverrideKey {
    fn bytes(self) -> Vec<u8> {
        match self {
            OverrideKey::Audio(a) => {
                let mut k = vec![b'a'];
                k.extend_from_slice(&a.to_be_bytes());
                k
            }
            OverrideKey::Track(t) => {
                let mut k = vec![b't'];
                k.extend_from_slice(&t.0.to_be_bytes());
                k
            }
        }
    }

    fn parse(b: &[u8]) -> Option<OverrideKey> {
        match b.split_first()? {
            (b'a', rest) => Some(OverrideKey::Audio(u128::from_be_bytes(
                rest.try_into().ok()?,
            ))),
            (b't', rest) => Some(OverrideKey::Track(TrackId(u64::from_be_bytes(
                rest.try_into().ok()?,
            )))),
            _ => None,
        }
    }
}

impl Catalog {
    /// The key track `id`'s override is (or would be) stored under.
    pub fn override_key(&self, id: TrackId) -> Result<OverrideKey, CatalogError> {
        Ok(match self.identity(id)? {
            Some(i) => OverrideKey::Audio(i.audio),
            None => OverrideKey::Track(id),
        })
    }

    /// Track `id`'s override, if it has one.
    pub fn override_of(&self, id: TrackId) -> Result<Option<Override>, CatalogError> {
        let key = self.override_key(id)?.bytes();
        let lmdb = |e| self.store.lmdb("override", e);
        self.store.read("override", |txn| {
            self.dbs.overrides.get(txn, &key).map_err(lmdb)
        })
    }

    /// Stores (or with `None` removes) the override under `key`; whether it changed.
    pub fn set_override(
        &self,
        key: OverrideKey,
        value: Option<&Override>,
    ) -> Result<bool, CatalogError> {
        let k = key.bytes();
        let lmdb = |e| self.store.lmdb("set override", e);
        self.store.write("set override", |txn| {
            let old = self.dbs.overrides.get(txn, &k).map_err(lmdb)?;
            if old.as_ref() == value {
                return Ok(false);
            }
            match value {
                Some(v) if !v.edits.is_empty() => {
                    self.dbs.overrides.put(txn, &k, v).map_err(lmdb)?;
                }
                _ => {
                    self.dbs.overrides.delete(txn, &k).map_err(lmdb)?;
                }
            }
            self.dbs
                .meta(self.store.dir())
                .bump(txn, Counter::Changes)?;
            Ok(true)
        })
    }

    /// Every override with the tracks it applies to now (tracks of an audio identity, or
    /// the one track it was keyed by, if it still exists).
    pub fn overrides(&self) -> Result<Vec<(OverrideKey, Override, Vec<TrackId>)>, CatalogError> {
        let lmdb = |e| self.store.lmdb("overrides", e);
        self.store.read("overrides", |txn| {
            let mut out = Vec::new();
            for item in self.dbs.overrides.iter(txn).map_err(lmdb)? {
                let (k, v) = item.map_err(lmdb)?;
                let Some(key) = OverrideKey::parse(k) else {
                    continue;
                };
                let tracks = self.tracks_of_key(txn, key)?;
                out.push((key, v, tracks));
            }
            Ok(out)
        })
    }

    /// Whether any override is stored.
    pub fn has_overrides(&self) -> Result<bool, CatalogError> {
        let lmdb = |e| self.store.lmdb("overrides", e);
        self.store.read("overrides", |txn| {
            Ok(self.dbs.overrides.first(txn).map_err(lmdb)?.is_some())
        })
    }

    fn tracks_of_key(
        &self,
        txn: &RoTxn<'_>,
        key: OverrideKey,
    ) -> Result<Vec<TrackId>, CatalogError> {
        let lmdb = |e| self.store.lmdb("overrides", e);
        Ok(match key {
            OverrideKey::Track(id) => {
                if self.dbs.tracks.get(txn, &id.0).map_err(lmdb)?.is_some() {
                    vec![id]
                } else {
                    Vec::new()
                }
            }
            OverrideKey::Audio(audio) => {
                let prefix = audio.to_be_bytes();
                let mut ids = Vec::new();
                for item in self.dbs.by_audio.prefix_iter(txn, &prefix).map_err(lmdb)? {
                    let (k, ()) = item.map_err(lmdb)?;
                    if let Some((_, id)) = split_audio_key(k) {
                        ids.push(id);
                    }
                }
                ids
            }
        })
    }

    /// Every stored rendition, by track.
    pub fn renditions(&self) -> Result<HashMap<TrackId, Rendition>, CatalogError> {
        let lmdb = |e| self.store.lmdb("renditions", e);
        self.store.read("renditions", |txn| {
            let mut out = HashMap::new();
            for item in self.dbs.renditions.iter(txn).map_err(lmdb)? {
                let (id, r) = item.map_err(lmdb)?;
                out.insert(TrackId(id), r);
            }
            Ok(out)
        })
    }

    /// Stores the renditions in `put` and removes those of `drop`, in one transaction.
    pub fn update_renditions(
        &self,
        put: &[(TrackId, Rendition)],
        drop: &[TrackId],
    ) -> Result<(), CatalogError> {
        if put.is_empty() && drop.is_empty() {
            return Ok(());
        }
        let lmdb = |e| self.store.lmdb("renditions", e);
        self.store.write("renditions", |txn| {
            for (id, r) in put {
                self.dbs.renditions.put(txn, &id.0, r).map_err(lmdb)?;
            }
            for id in drop {
                self.dbs.renditions.delete(txn, &id.0).map_err(lmdb)?;
            }
            Ok(())
        })
    }
}
