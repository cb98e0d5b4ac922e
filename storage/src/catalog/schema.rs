//! The catalog's on-disk layout: databases, key encodings, stored values, the schema
//! version and its migrations.
//!
//! Values are bincode (through heed's `SerdeBincode`), which is positional: adding,
//! removing or reordering a field of a stored type (including `TrackMeta` and `ScanState`
//! from `musicfs-core`) changes the format. Such a change must bump
//! [`SCHEMA_VERSION`] and add a step to [`upgrade`].

use std::path::Path;

use heed::byteorder::BE;
use heed::types::{Bytes, SerdeBincode, Str, Unit, U32, U64};
use heed::{CommitToken, Database, DatabaseOpener, OnCommit, RoTxn, RwTxn};
use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use super::error::CatalogError;

/// Version of the on-disk layout this build reads and writes.
///
/// 1: the first. 2: `ScanState` carries the file's owner and permission bits (`perm`).
pub const SCHEMA_VERSION: u32 = 2;

/// The longest `paths` key. Fixed at LMDB's default key limit rather than taken from the
/// environment, because it decides which keys are hashed and so is part of the format.
pub(crate) const MAX_PATH_KEY: usize = 511;

/// Bytes of the hash that ends a hashed `paths` key.
const PATH_HASH_LEN: usize = 16;

/// The first id handed to a track; 0 stays free as a sentinel for other layers.
const FIRST_TRACK_ID: u64 = 1;

const KEY_SCHEMA: &str = "schema_version";
const KEY_NEXT_TRACK: &str = "next_track_id";
const KEY_NEXT_ORIGIN: &str = "next_origin_id";
const KEY_CHANGES: &str = "change_counter";
const KEY_EXTRAS: &str = "extras_counter";
const KEY_PLAYS: &str = "plays_counter";

/// Track id (u64 big-endian, so keys sort by id) to track.
pub(crate) type TracksDb<'t> = Database<'t, U64<BE>, SerdeBincode<TrackValue>>;
/// Path key (see [`path_key`]) to the track's id and scan state.
pub(crate) type PathsDb<'t> = Database<'t, Bytes, SerdeBincode<PathEntry>>;
/// Path key (see [`path_key`]) of a file the scanner could not catalog, to the reason and
/// the file's scan state at the time.
pub(crate) type SkippedDb<'t> = Database<'t, Bytes, SerdeBincode<SkipValue>>;
/// Origin id (u32 big-endian) to the origin's root path bytes.
pub(crate) type OriginsDb<'t> = Database<'t, U32<BE>, Bytes>;
/// Counters and the schema version, big-endian integers under string keys.
pub(crate) type MetaDb<'t> = Database<'t, Str, Bytes>;
/// Extra-file key (see [`extra_key`]) to a non-audio file found beside tracks.
pub(crate) type ExtrasDb<'t> = Database<'t, Bytes, SerdeBincode<ExtraValue>>;
/// Path key (see [`path_key`]) of a track to its embedded cover art.
pub(crate) type ArtDb<'t> = Database<'t, Bytes, SerdeBincode<ArtRef>>;
/// Track id (u64 big-endian) to its plays.
pub(crate) type PlaysDb<'t> = Database<'t, U64<BE>, SerdeBincode<super::plays::Plays>>;
/// Track id (u64 big-endian) to its identity.
pub(crate) type IdentitiesDb<'t> =
    Database<'t, U64<BE>, SerdeBincode<super::identity::StoredIdentity>>;
/// Audio identity then track id (see `identity::audio_key`), no value: the copies of a
/// track.
pub(crate) type ByAudioDb<'t> = Database<'t, Bytes, Unit>;
/// Override key (see `overrides::OverrideKey`) to a track's tag edits.
pub(crate) type OverridesDb<'t> =
    Database<'t, Bytes, SerdeBincode<musicfs_core::overlay::Override>>;
/// Track id (u64 big-endian) to the rendition that serves its edited tags.
pub(crate) type RenditionsDb<'t> =
    Database<'t, U64<BE>, SerdeBincode<musicfs_core::overlay::Rendition>>;

/// The catalog's named databases. `'t` is `'static` once the transaction that opened them
/// has committed.
#[derive(Clone, Copy)]
pub(crate) struct Dbs<'t> {
    pub(crate) tracks: TracksDb<'t>,
    pub(crate) paths: PathsDb<'t>,
    pub(crate) skipped: SkippedDb<'t>,
    pub(crate) origins: OriginsDb<'t>,
    pub(crate) meta: MetaDb<'t>,
    pub(crate) extras: ExtrasDb<'t>,
    pub(crate) art: ArtDb<'t>,
    pub(crate) plays: PlaysDb<'t>,
    pub(crate) identities: IdentitiesDb<'t>,
    pub(crate) by_audio: ByAudioDb<'t>,
    pub(crate) overrides: OverridesDb<'t>,
    pub(crate) renditions: RenditionsDb<'t>,
}

impl<'t> Dbs<'t> {
    /// Creates the databases that do not exist yet and opens all of them. A catalog
    /// written before `skipped` existed gets it here, empty: that is its correct content,
    /// as the files it would list are simply opened once more by the next scan.
    pub(crate) fn create<T>(
        opener: &DatabaseOpener<'t, T>,
        txn: &mut RwTxn<'t>,
    ) -> heed::Result<Dbs<'t>> {
        Ok(Dbs {
            tracks: opener.create_database(txn, Some("tracks"))?,
            paths: opener.create_database(txn, Some("paths"))?,
            skipped: opener.create_database(txn, Some("skipped"))?,
            origins: opener.create_database(txn, Some("origins"))?,
            meta: opener.create_database(txn, Some("meta"))?,
            extras: opener.create_database(txn, Some("extras"))?,
            art: opener.create_database(txn, Some("art"))?,
            plays: opener.create_database(txn, Some("plays"))?,
            identities: opener.create_database(txn, Some("identities"))?,
            by_audio: opener.create_database(txn, Some("by_audio"))?,
            overrides: opener.create_database(txn, Some("overrides"))?,
            renditions: opener.create_database(txn, Some("renditions"))?,
        })
    }

    pub(crate) fn meta<'a>(&self, dir: &'a Path) -> Meta<'a>
    where
        't: 'a,
    {
        Meta { dir, db: self.meta }
    }
}

impl OnCommit for Dbs<'_> {
    type Committed = Dbs<'static>;

    fn on_commit(self, token: &CommitToken) -> Dbs<'static> {
        Dbs {
            tracks: self.tracks.on_commit(token),
            paths: self.paths.on_commit(token),
            skipped: self.skipped.on_commit(token),
            origins: self.origins.on_commit(token),
            meta: self.meta.on_commit(token),
            extras: self.extras.on_commit(token),
            art: self.art.on_commit(token),
            plays: self.plays.on_commit(token),
            identities: self.identities.on_commit(token),
            by_audio: self.by_audio.on_commit(token),
            overrides: self.overrides.on_commit(token),
            renditions: self.renditions.on_commit(token),
        }
    }
}

/// A track as stored under its id (the id is the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TrackValue {
    pub(crate) origin: OriginId,
    pub(crate) rel_path: Vec<u8>,
    pub(crate) format: Format,
    pub(crate) scan: ScanState,
    pub(crate) meta: TrackMeta,
}

impl TrackValue {
    pub(crate) fn into_record(self, id: TrackId) -> TrackRecord {
        TrackRecord {
            id,
            origin: self.origin,
            rel_path: self.rel_path,
            format: self.format,
            scan: self.scan,
            meta: self.meta,
        }
    }
}

/// What the path index holds: enough for an incremental scan without reading the (large)
/// track values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PathEntry {
    pub(crate) id: TrackId,
    pub(crate) scan: ScanState,
}

/// A file the scanner found but could not catalog, as stored under its path key.
///
/// The path is kept in full because a hashed key does not spell it out and, unlike a
/// `paths` entry, there is no track to read it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SkipValue {
    pub(crate) rel_path: Vec<u8>,
    pub(crate) scan: ScanState,
    pub(crate) reason: String,
}

/// A non-audio file beside tracks, as stored under its [`extra_key`]: the key hashes the
/// directory, so the value spells the path out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExtraValue {
    pub(crate) dir: Vec<u8>,
    pub(crate) name: Vec<u8>,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
}

/// Embedded cover art of a track: the picture's content hash (xxh3-128 of its bytes, the
/// name it is stored under in the state dir) and whether it is a PNG (else JPEG or
/// another type shown as `.jpg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtRef {
    /// xxh3-128 of the picture's bytes.
    pub hash: u128,
    /// The picture is a PNG.
    pub png: bool,
}

/// The key prefix of the extra files of directory `dir` (relative, no trailing slash) of
/// `origin`: origin id (u32 big-endian) then the xxh3-128 of the directory's bytes, so a
/// directory's files are one prefix whatever its path's length.
pub(crate) fn extras_dir_prefix(origin: OriginId, dir: &[u8]) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&origin_prefix(origin));
    key[4..].copy_from_slice(&xxh3_128(dir).to_be_bytes());
    key
}

/// The `extras` key of file `name` in directory `dir` of `origin`: the directory's prefix
/// then the name (at most 255 bytes on Linux; a longer one is cut, the value has it all).
pub(crate) fn extra_key(origin: OriginId, dir: &[u8], name: &[u8]) -> Vec<u8> {
    let prefix = extras_dir_prefix(origin, dir);
    let name = &name[..name.len().min(MAX_PATH_KEY - prefix.len())];
    let mut key = Vec::with_capacity(prefix.len() + name.len());
    key.extend_from_slice(&prefix);
    key.extend_from_slice(name);
    key
}

/// The `paths` (and `skipped`) key prefix of every file of `origin`.
pub(crate) fn origin_prefix(origin: OriginId) -> [u8; 4] {
    origin.0.to_be_bytes()
}

/// The `paths` key of a file: origin id (u32 big-endian) then the relative path bytes.
///
/// LMDB keys are bounded, paths are not: a key that would reach [`MAX_PATH_KEY`] keeps as
/// much of the path as fits and ends with the path's 128-bit xxh3, making it exactly
/// `MAX_PATH_KEY` long. Plain keys are always shorter, so the two forms never collide.
pub(crate) fn path_key(origin: OriginId, rel_path: &[u8]) -> Vec<u8> {
    let prefix = origin_prefix(origin);
    let mut key = Vec::with_capacity((prefix.len() + rel_path.len()).min(MAX_PATH_KEY));
    key.extend_from_slice(&prefix);
    if prefix.len() + rel_path.len() < MAX_PATH_KEY {
        key.extend_from_slice(rel_path);
    } else {
        let keep = MAX_PATH_KEY - prefix.len() - PATH_HASH_LEN;
        key.extend_from_slice(&rel_path[..keep]);
        key.extend_from_slice(&xxh3_128(rel_path).to_be_bytes());
    }
    key
}

/// The leading bytes every `paths` key of a path of `origin` starting with `prefix` shares:
/// the whole prefix, or as much of it as a hashed key keeps.
pub(crate) fn path_key_prefix(origin: OriginId, prefix: &[u8]) -> Vec<u8> {
    let keep = MAX_PATH_KEY - 4 - PATH_HASH_LEN;
    let mut key = origin_prefix(origin).to_vec();
    key.extend_from_slice(&prefix[..prefix.len().min(keep)]);
    key
}

/// The relative path spelled out in a `paths` key, or `None` when the key is hashed and
/// the path must be read from the track.
pub(crate) fn rel_path_in_key(key: &[u8]) -> Option<&[u8]> {
    (key.len() < MAX_PATH_KEY).then(|| key.get(4..).unwrap_or_default())
}

fn read_be<const N: usize>(
    dir: &Path,
    meta: MetaDb<'_>,
    txn: &RoTxn<'_>,
    key: &'static str,
) -> Result<Option<[u8; N]>, CatalogError> {
    let lmdb = |source| CatalogError::Lmdb {
        path: dir.to_path_buf(),
        op: "meta read",
        source,
    };
    match meta.get(txn, key).map_err(lmdb)? {
        None => Ok(None),
        Some(bytes) => bytes
            .try_into()
            .map(Some)
            .map_err(|_| CatalogError::Corrupt {
                path: dir.to_path_buf(),
                detail: format!("meta value {key:?} has {} bytes, expected {N}", bytes.len()),
            }),
    }
}

fn write_meta(
    dir: &Path,
    meta: MetaDb<'_>,
    txn: &mut RwTxn<'_>,
    key: &'static str,
    bytes: &[u8],
) -> Result<(), CatalogError> {
    meta.put(txn, key, bytes)
        .map_err(|source| CatalogError::Lmdb {
            path: dir.to_path_buf(),
            op: "meta write",
            source,
        })
}

/// The change counters kept in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Bumped by every write that changed a track (what the snapshot is checked against).
    Changes,
    /// Bumped by every write that changed extra files or cover art.
    Extras,
    /// Bumped by every write that recorded a play.
    Plays,
}

impl Counter {
    fn key(self) -> &'static str {
        match self {
            Counter::Changes => KEY_CHANGES,
            Counter::Extras => KEY_EXTRAS,
            Counter::Plays => KEY_PLAYS,
        }
    }
}

/// Typed access to the counters in `meta`.
pub(crate) struct Meta<'a> {
    dir: &'a Path,
    db: MetaDb<'a>,
}

impl Meta<'_> {
    /// The id the next new track gets.
    pub(crate) fn next_track_id(&self, txn: &RoTxn<'_>) -> Result<u64, CatalogError> {
        let raw = read_be::<8>(self.dir, self.db, txn, KEY_NEXT_TRACK)?;
        Ok(raw.map_or(FIRST_TRACK_ID, u64::from_be_bytes))
    }

    pub(crate) fn set_next_track_id(
        &self,
        txn: &mut RwTxn<'_>,
        next: u64,
    ) -> Result<(), CatalogError> {
        write_meta(self.dir, self.db, txn, KEY_NEXT_TRACK, &next.to_be_bytes())
    }

    /// The id the next new origin gets.
    pub(crate) fn next_origin_id(&self, txn: &RoTxn<'_>) -> Result<u32, CatalogError> {
        let raw = read_be::<4>(self.dir, self.db, txn, KEY_NEXT_ORIGIN)?;
        Ok(raw.map_or(0, u32::from_be_bytes))
    }

    pub(crate) fn set_next_origin_id(
        &self,
        txn: &mut RwTxn<'_>,
        next: u32,
    ) -> Result<(), CatalogError> {
        write_meta(self.dir, self.db, txn, KEY_NEXT_ORIGIN, &next.to_be_bytes())
    }

    /// The value of `counter` (0 until first bumped).
    pub(crate) fn counter(&self, txn: &RoTxn<'_>, counter: Counter) -> Result<u64, CatalogError> {
        let raw = read_be::<8>(self.dir, self.db, txn, counter.key())?;
        Ok(raw.map_or(0, u64::from_be_bytes))
    }

    /// Adds one to `counter`.
    pub(crate) fn bump(&self, txn: &mut RwTxn<'_>, counter: Counter) -> Result<(), CatalogError> {
        let next = self.counter(txn, counter)?.wrapping_add(1);
        write_meta(self.dir, self.db, txn, counter.key(), &next.to_be_bytes())
    }

    /// The stored schema version, if any.
    pub(crate) fn schema_version(&self, txn: &RoTxn<'_>) -> Result<Option<u32>, CatalogError> {
        Ok(read_be::<4>(self.dir, self.db, txn, KEY_SCHEMA)?.map(u32::from_be_bytes))
    }

    pub(crate) fn set_schema_version(
        &self,
        txn: &mut RwTxn<'_>,
        version: u32,
    ) -> Result<(), CatalogError> {
        write_meta(self.dir, self.db, txn, KEY_SCHEMA, &version.to_be_bytes())
    }
}

/// Brings a freshly opened catalog to [`SCHEMA_VERSION`]: stamps a new one, migrates an
/// older one, refuses a newer one. Runs in the transaction that opens the databases, so a
/// refusal leaves the files untouched.
pub(crate) fn ensure_schema(
    dir: &Path,
    dbs: Dbs<'_>,
    txn: &mut RwTxn<'_>,
) -> Result<(), CatalogError> {
    let meta = dbs.meta(dir);
    match meta.schema_version(txn)? {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(found) if found > SCHEMA_VERSION => Err(CatalogError::SchemaTooNew {
            path: dir.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
        Some(found) => {
            upgrade(dir, dbs, txn, found)?;
            meta.set_schema_version(txn, SCHEMA_VERSION)
        }
        None => {
            let lmdb = |source| CatalogError::Lmdb {
                path: dir.to_path_buf(),
                op: "open",
                source,
            };
            let has_data = !dbs.tracks.is_empty(txn).map_err(lmdb)?
                || !dbs.paths.is_empty(txn).map_err(lmdb)?
                || !dbs.skipped.is_empty(txn).map_err(lmdb)?
                || !dbs.origins.is_empty(txn).map_err(lmdb)?;
            if has_data {
                return Err(CatalogError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: "it holds tracks or origins but no schema version".to_owned(),
                });
            }
            meta.set_schema_version(txn, SCHEMA_VERSION)
        }
    }
}

/// Rewrites the data of schema `from` into the current layout, one version at a time.
fn upgrade(dir: &Path, dbs: Dbs<'_>, txn: &mut RwTxn<'_>, from: u32) -> Result<(), CatalogError> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        version = upgrade_step(dir, dbs, txn, version)?;
    }
    Ok(())
}

/// Migrates the data of schema `version` to the next version and returns it. Each new
/// schema version adds the arm that migrates from its predecessor; version 1 is the first
/// there ever was, so nothing older can be migrated.
fn upgrade_step(
    dir: &Path,
    dbs: Dbs<'_>,
    txn: &mut RwTxn<'_>,
    version: u32,
) -> Result<u32, CatalogError> {
    match version {
        current if current >= SCHEMA_VERSION => Ok(current),
        1 => {
            v1::migrate(dir, dbs, txn)?;
            Ok(2)
        }
        found => Err(CatalogError::SchemaUnsupported {
            path: dir.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

/// The values of schema version 1, read only to migrate them to version 2: a `ScanState`
/// without `perm`. Migrated records get `perm: None` (unknown: the tree shows the mount's
/// default owner and modes); the next scan sees every file's ctime-bearing state differ
/// from the stored one and re-records it with its owner and mode.
pub(crate) mod v1 {
    use std::path::Path;

    use heed::types::{Bytes, SerdeBincode};
    use heed::{Database, RwTxn};
    use musicfs_core::meta::{Format, OriginId, TrackId, TrackMeta};
    use serde::{Deserialize, Serialize};

    use super::{CatalogError, Dbs, PathEntry, SkipValue, TrackValue};

    /// `ScanState` as schema 1 stored it.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub(crate) struct ScanState {
        pub(crate) size: u64,
        pub(crate) mtime_ns: i64,
        pub(crate) ino: u64,
        pub(crate) ctime_ns: i64,
    }

    impl From<ScanState> for musicfs_core::ScanState {
        fn from(old: ScanState) -> Self {
            musicfs_core::ScanState {
                size: old.size,
                mtime_ns: old.mtime_ns,
                ino: old.ino,
                ctime_ns: old.ctime_ns,
                perm: None,
            }
        }
    }

    /// `TrackValue` as schema 1 stored it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct TrackValue1 {
        pub(crate) origin: OriginId,
        pub(crate) rel_path: Vec<u8>,
        pub(crate) format: Format,
        pub(crate) scan: ScanState,
        pub(crate) meta: TrackMeta,
    }

    /// `PathEntry` as schema 1 stored it.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub(crate) struct PathEntry1 {
        pub(crate) id: TrackId,
        pub(crate) scan: ScanState,
    }

    /// `SkipValue` as schema 1 stored it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct SkipValue1 {
        pub(crate) rel_path: Vec<u8>,
        pub(crate) scan: ScanState,
        pub(crate) reason: String,
    }

    /// Rewrites every track, path entry and skipped file in the version 2 layout. The
    /// whole catalog is rewritten in the opening transaction, so a crash leaves it at
    /// version 1, to be migrated again.
    pub(crate) fn migrate(
        dir: &Path,
        dbs: Dbs<'_>,
        txn: &mut RwTxn<'_>,
    ) -> Result<(), CatalogError> {
        let lmdb = |source| CatalogError::Lmdb {
            path: dir.to_path_buf(),
            op: "schema upgrade 1 to 2",
            source,
        };
        let tracks = dbs.tracks.remap_data_type::<SerdeBincode<TrackValue1>>();
        let rows = tracks
            .iter(txn)
            .map_err(lmdb)?
            .collect::<heed::Result<Vec<_>>>()
            .map_err(lmdb)?;
        for (id, old) in rows {
            let new = TrackValue {
                origin: old.origin,
                rel_path: old.rel_path,
                format: old.format,
                scan: old.scan.into(),
                meta: old.meta,
            };
            dbs.tracks.put(txn, &id, &new).map_err(lmdb)?;
        }
        rewrite_bytes_keyed(dbs.paths, txn, &lmdb, |old: PathEntry1| PathEntry {
            id: old.id,
            scan: old.scan.into(),
        })?;
        rewrite_bytes_keyed(dbs.skipped, txn, &lmdb, |old: SkipValue1| SkipValue {
            rel_path: old.rel_path,
            scan: old.scan.into(),
            reason: old.reason,
        })?;
        Ok(())
    }

    /// Rewrites every value of a byte-keyed table from its schema 1 form `Old` with `to`.
    fn rewrite_bytes_keyed<Old, New>(
        db: Database<'_, Bytes, SerdeBincode<New>>,
        txn: &mut RwTxn<'_>,
        lmdb: &dyn Fn(heed::Error) -> CatalogError,
        to: impl Fn(Old) -> New,
    ) -> Result<(), CatalogError>
    where
        Old: serde::de::DeserializeOwned + 'static,
        New: Serialize + 'static,
    {
        let old = db.remap_data_type::<SerdeBincode<Old>>();
        let rows = old
            .iter(txn)
            .map_err(lmdb)?
            .map(|r| r.map(|(k, v)| (k.to_vec(), v)))
            .collect::<heed::Result<Vec<_>>>()
            .map_err(lmdb)?;
        for (key, value) in rows {
            db.put(txn, &key, &to(value)).map_err(lmdb)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths_are_spelled_out_in_their_key() {
        let key = path_key(OriginId(7), b"a/b.flac");
        assert_eq!(&key[..4], &[0, 0, 0, 7]);
        assert_eq!(rel_path_in_key(&key), Some(&b"a/b.flac"[..]));
    }

    #[test]
    fn long_paths_get_a_hashed_key_of_the_maximum_length() {
        let long = vec![b'x'; 2000];
        let key = path_key(OriginId(1), &long);
        assert_eq!(key.len(), MAX_PATH_KEY);
        assert_eq!(rel_path_in_key(&key), None);
        let mut other = long.clone();
        other[1999] = b'y';
        assert_ne!(key, path_key(OriginId(1), &other));
    }

    #[test]
    fn a_path_one_byte_short_of_the_limit_is_hashed_so_plain_keys_stay_shorter() {
        let exact = vec![b'x'; MAX_PATH_KEY - 4];
        assert_eq!(rel_path_in_key(&path_key(OriginId(0), &exact)), None);
        let fits = vec![b'x'; MAX_PATH_KEY - 5];
        assert_eq!(
            rel_path_in_key(&path_key(OriginId(0), &fits)),
            Some(&fits[..])
        );
    }
}
