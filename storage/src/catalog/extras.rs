//! What an album folder shows besides its tracks: the non-audio files found beside tracks
//! in the origin (sidecars: booklets, cue sheets, logs, lyrics, folder images) and each
//! track's embedded cover art.
//!
//! Extra files are recorded per origin directory, as the last listing of that directory
//! found them: a scan hands over the whole set of every directory it listed
//! ([`DirExtras`], [`Catalog::set_extras`]), which replaces what was recorded. Art is recorded per track path
//! ([`ArtSet`]). Neither moves the [change counter](Catalog::change_counter) (the tree
//! does not hold them); both move the [extras counter](Catalog::extras_counter).

use heed::RwTxn;
use musicfs_core::meta::{OriginId, TrackId};

use super::schema::{self, extra_key, extras_dir_prefix, path_key, ArtRef, Counter, ExtraValue};
use super::{Catalog, CatalogError};

/// A non-audio file found in an origin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// File name (no directory), raw bytes.
    pub name: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// Every extra file of one origin directory, as a listing just found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirExtras {
    /// The origin holding the directory.
    pub origin: OriginId,
    /// The directory relative to the origin root (empty for the root), no trailing slash.
    pub dir: Vec<u8>,
    /// Its extra files; empty clears what was recorded.
    pub files: Vec<ExtraFile>,
}

/// A directory whose extra files changed, with the names it had or has (what a kernel
/// may have cached about it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtrasChanged {
    /// The origin holding the directory.
    pub origin: OriginId,
    /// The directory relative to the origin root.
    pub dir: Vec<u8>,
    /// Names of the files it had or has.
    pub names: Vec<Vec<u8>>,
}

/// A track's embedded cover art, set (or cleared) with its scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtSet {
    /// The origin holding the track.
    pub origin: OriginId,
    /// The track's path relative to the origin root.
    pub rel_path: Vec<u8>,
    /// Its front cover, or `None` when it has none (any earlier record is dropped).
    pub art: Option<ArtRef>,
}

impl Catalog {
    /// The extra files recorded for directory `dir` of `origin`, in name order.
    pub fn extras_in(&self, origin: OriginId, dir: &[u8]) -> Result<Vec<ExtraFile>, CatalogError> {
        let lmdb = |e| self.store.lmdb("extras", e);
        self.store.read("extras", |txn| {
            let prefix = extras_dir_prefix(origin, dir);
            let mut out = Vec::new();
            for item in self.dbs.extras.prefix_iter(txn, &prefix).map_err(lmdb)? {
                let (_, v) = item.map_err(lmdb)?;
                // The prefix is a hash: check the directory it stands for.
                if v.dir == dir {
                    out.push(ExtraFile {
                        name: v.name,
                        size: v.size,
                        mtime_ns: v.mtime_ns,
                    });
                }
            }
            Ok(out)
        })
    }

    /// The cover art recorded for the track at `rel_path` of `origin`.
    pub fn art_of(
        &self,
        origin: OriginId,
        rel_path: &[u8],
    ) -> Result<Option<ArtRef>, CatalogError> {
        let lmdb = |e| self.store.lmdb("art", e);
        self.store.read("art", |txn| {
            self.dbs
                .art
                .get(txn, &path_key(origin, rel_path))
                .map_err(lmdb)
        })
    }

    /// The tracks directly in directory `dir` of `origin` (not in its subdirectories):
    /// file name and id, in name order.
    pub fn tracks_in(
        &self,
        origin: OriginId,
        dir: &[u8],
    ) -> Result<Vec<(Vec<u8>, TrackId)>, CatalogError> {
        let mut prefix = dir.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let mut out = Vec::new();
        self.for_each_scan_state_under(origin, &prefix, |rel, id, _| {
            let name = &rel[prefix.len()..];
            if !name.contains(&b'/') {
                out.push((name.to_vec(), id));
            }
        })?;
        Ok(out)
    }

    /// A counter bumped by every write that changed extra files or cover art (what a
    /// server of album folders compares to know its answers are current).
    pub fn extras_counter(&self) -> Result<u64, CatalogError> {
        self.store.read("extras counter", |txn| {
            self.dbs
                .meta(self.store.dir())
                .counter(txn, Counter::Extras)
        })
    }

    /// Drops the extra files recorded for every directory of `origin` for which `keep`
    /// returns false (a full scan keeps the directories it listed and those it could not;
    /// a scoped one drops those under directories that vanished). Returns what changed.
    pub fn retain_extras(
        &self,
        origin: OriginId,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<ExtrasChanged>, CatalogError> {
        let lmdb = |e| self.store.lmdb("extras", e);
        self.store.write("extras", |txn| {
            let mut drop = Vec::new();
            let mut changed: Vec<ExtrasChanged> = Vec::new();
            let prefix = schema::origin_prefix(origin);
            for item in self.dbs.extras.prefix_iter(txn, &prefix).map_err(lmdb)? {
                let (key, v) = item.map_err(lmdb)?;
                if !keep(&v.dir) {
                    drop.push(key.to_vec());
                    match changed.iter_mut().find(|c| c.dir == v.dir) {
                        Some(c) => c.names.push(v.name),
                        None => changed.push(ExtrasChanged {
                            origin,
                            dir: v.dir,
                            names: vec![v.name],
                        }),
                    }
                }
            }
            for key in &drop {
                self.dbs.extras.delete(txn, key).map_err(lmdb)?;
            }
            if !drop.is_empty() {
                self.dbs.meta(self.store.dir()).bump(txn, Counter::Extras)?;
            }
            Ok(changed)
        })
    }

    /// Replaces the extra files of each directory in `dirs` (one transaction); returns the
    /// directories whose files changed.
    pub fn set_extras(&self, dirs: &[DirExtras]) -> Result<Vec<ExtrasChanged>, CatalogError> {
        let lmdb = |e| self.store.lmdb("extras", e);
        self.store.write("extras", |txn| {
            let mut changed = Vec::new();
            for d in dirs {
                let prefix = extras_dir_prefix(d.origin, &d.dir);
                let mut old: Vec<(Vec<u8>, ExtraValue)> = Vec::new();
                for item in self.dbs.extras.prefix_iter(txn, &prefix).map_err(lmdb)? {
                    let (key, v) = item.map_err(lmdb)?;
                    if v.dir == d.dir {
                        old.push((key.to_vec(), v));
                    }
                }
                let same = old.len() == d.files.len()
                    && old.iter().all(|(_, v)| {
                        d.files.iter().any(|f| {
                            f.name == v.name && f.size == v.size && f.mtime_ns == v.mtime_ns
                        })
                    });
                if same {
                    continue;
                }
                let mut names: Vec<Vec<u8>> = d.files.iter().map(|f| f.name.clone()).collect();
                for (key, v) in old {
                    self.dbs.extras.delete(txn, &key).map_err(lmdb)?;
                    if !names.contains(&v.name) {
                        names.push(v.name);
                    }
                }
                for f in &d.files {
                    let value = ExtraValue {
                        dir: d.dir.clone(),
                        name: f.name.clone(),
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                    };
                    let key = extra_key(d.origin, &d.dir, &f.name);
                    self.dbs.extras.put(txn, &key, &value).map_err(lmdb)?;
                }
                changed.push(ExtrasChanged {
                    origin: d.origin,
                    dir: d.dir.clone(),
                    names,
                });
            }
            if !changed.is_empty() {
                self.dbs.meta(self.store.dir()).bump(txn, Counter::Extras)?;
            }
            Ok(changed)
        })
    }

    /// Sets or clears the art of each track in `art`, in `txn`.
    pub(super) fn art_in_txn(
        &self,
        txn: &mut RwTxn<'_>,
        art: &[ArtSet],
    ) -> Result<(), CatalogError> {
        let lmdb = |e| self.store.lmdb("apply", e);
        let mut changed = false;
        for a in art {
            let key = path_key(a.origin, &a.rel_path);
            let old = self.dbs.art.get(txn, &key).map_err(lmdb)?;
            if old == a.art {
                continue;
            }
            changed = true;
            match &a.art {
                Some(art) => self.dbs.art.put(txn, &key, art).map_err(lmdb)?,
                None => {
                    self.dbs.art.delete(txn, &key).map_err(lmdb)?;
                }
            }
        }
        if changed {
            self.dbs.meta(self.store.dir()).bump(txn, Counter::Extras)?;
        }
        Ok(())
    }

    /// Drops the art recorded for a removed track's path.
    pub(super) fn drop_art_in(
        &self,
        txn: &mut RwTxn<'_>,
        origin: OriginId,
        rel_path: &[u8],
    ) -> Result<(), CatalogError> {
        let key = path_key(origin, rel_path);
        self.dbs
            .art
            .delete(txn, &key)
            .map_err(|e| self.store.lmdb("apply", e))?;
        Ok(())
    }
}
