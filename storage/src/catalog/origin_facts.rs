//! What the catalog remembers of an origin besides its tracks (the root's device, so a
//! later scan can tell an unmounted share from a library), and the one way to forget an
//! origin: [`Catalog::forget_origin`], which an explicit user command calls.
//!
//! The device is kept in `meta` under a per-origin key rather than in a database of its
//! own: no schema change, and a build that does not know the key ignores it.

use heed::RwTxn;
use musicfs_core::meta::{OriginId, TrackId};

use super::schema::{self, Counter};
use super::{Catalog, CatalogError};

/// The device an origin's root was on at its last good scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginDevice {
    /// `st_dev` of the root.
    pub dev: u64,
    /// Whether the root was a mount point (on another device than its parent).
    pub mount_point: bool,
}

fn device_key(origin: OriginId) -> String {
    format!("origin_device/{}", origin.0)
}

/// What [`Catalog::forget_origin`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forgotten {
    /// Tracks removed.
    pub tracks: u64,
    /// Remembered broken files forgotten.
    pub skipped: u64,
}

impl Catalog {
    /// The device recorded for `origin`, if any.
    pub fn origin_device(&self, origin: OriginId) -> Result<Option<OriginDevice>, CatalogError> {
        let key = device_key(origin);
        self.store.read("origin device", |txn| {
            let raw = self
                .dbs
                .meta
                .get(txn, &key)
                .map_err(|e| self.store.lmdb("origin device", e))?;
            Ok(raw.and_then(|bytes| {
                let dev = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
                let mount_point = *bytes.get(8)? != 0;
                Some(OriginDevice { dev, mount_point })
            }))
        })
    }

    /// Records the device of `origin`'s root (after a scan found the origin online).
    pub fn set_origin_device(
        &self,
        origin: OriginId,
        device: OriginDevice,
    ) -> Result<(), CatalogError> {
        let key = device_key(origin);
        let mut value = device.dev.to_be_bytes().to_vec();
        value.push(u8::from(device.mount_point));
        self.store.write("origin device", |txn| {
            self.dbs
                .meta
                .put(txn, &key, &value)
                .map_err(|e| self.store.lmdb("origin device", e))
        })
    }

    /// Removes every track and remembered broken file of `origin`, its device and the
    /// origin itself, in one transaction. The next scan of the same root registers it
    /// again under a new id. Forgetting an unknown origin removes nothing.
    pub fn forget_origin(&self, origin: OriginId) -> Result<Forgotten, CatalogError> {
        let done = self
            .store
            .write("forget origin", |txn| self.forget_in(txn, origin))?;
        tracing::info!(
            catalog = %self.store.dir().display(),
            origin = origin.0,
            tracks = done.tracks,
            skipped = done.skipped,
            "origin forgotten"
        );
        Ok(done)
    }

    fn forget_in(&self, txn: &mut RwTxn<'_>, origin: OriginId) -> Result<Forgotten, CatalogError> {
        let lmdb = |e| self.store.lmdb("forget origin", e);
        let prefix = schema::origin_prefix(origin);
        let mut ids: Vec<TrackId> = Vec::new();
        for item in self.dbs.paths.prefix_iter(txn, &prefix).map_err(lmdb)? {
            ids.push(item.map_err(lmdb)?.1.id);
        }
        let mut done = Forgotten::default();
        for id in &ids {
            done.tracks += u64::from(self.remove_in(txn, *id)?);
        }
        let mut skipped: Vec<Vec<u8>> = Vec::new();
        for item in self.dbs.skipped.prefix_iter(txn, &prefix).map_err(lmdb)? {
            skipped.push(item.map_err(lmdb)?.0.to_vec());
        }
        for key in &skipped {
            done.skipped += u64::from(self.dbs.skipped.delete(txn, key).map_err(lmdb)?);
        }
        let known = self.dbs.origins.delete(txn, &origin.0).map_err(lmdb)?;
        self.dbs
            .meta
            .delete(txn, &device_key(origin))
            .map_err(lmdb)?;
        if known || done.tracks > 0 {
            self.dbs
                .meta(self.store.dir())
                .bump(txn, Counter::Changes)?;
        }
        Ok(done)
    }
}
