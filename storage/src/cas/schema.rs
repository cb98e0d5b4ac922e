//! The CAS index layout: databases and the fixed-width little-endian records in them.
//!
//! - `chunks`: hash (u128 big-endian) -> [`ChunkEntry`].
//! - `lru`: last use (u64 BE) ++ hash -> nothing: chunks in eviction order.
//! - `manifests`: version key -> [`ManifestEntry`] list, sorted by offset, disjoint.
//! - `users`: hash ++ version key -> nothing: which manifests hold a chunk (its refcount
//!   is the number of these), so eviction can take a chunk out of every manifest.
//! - `packs`: pack id (u32 BE) -> [`PackEntry`].
//! - `meta`: schema version, logical clock, stored bytes.

use heed::types::Bytes;
use heed::{CommitToken, Database, DatabaseOpener, OnCommit, RwTxn};

/// Version of the layout this build reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = 1;

pub(crate) const KEY_SCHEMA: &[u8] = b"schema_version";
pub(crate) const KEY_CLOCK: &[u8] = b"clock";
pub(crate) const KEY_STORED: &[u8] = b"stored_bytes";

pub(crate) type Db<'t> = Database<'t, Bytes, Bytes>;

/// The index's databases.
#[derive(Clone, Copy)]
pub(crate) struct Dbs<'t> {
    pub(crate) chunks: Db<'t>,
    pub(crate) lru: Db<'t>,
    pub(crate) manifests: Db<'t>,
    pub(crate) users: Db<'t>,
    pub(crate) packs: Db<'t>,
    pub(crate) meta: Db<'t>,
}

pub(crate) const MAX_DBS: u32 = 6;

impl<'t> Dbs<'t> {
    pub(crate) fn create<T>(
        opener: &DatabaseOpener<'t, T>,
        txn: &mut RwTxn<'t>,
    ) -> heed::Result<Dbs<'t>> {
        Ok(Dbs {
            chunks: opener.create_database(txn, Some("chunks"))?,
            lru: opener.create_database(txn, Some("lru"))?,
            manifests: opener.create_database(txn, Some("manifests"))?,
            users: opener.create_database(txn, Some("users"))?,
            packs: opener.create_database(txn, Some("packs"))?,
            meta: opener.create_database(txn, Some("meta"))?,
        })
    }
}

impl OnCommit for Dbs<'_> {
    type Committed = Dbs<'static>;

    fn on_commit(self, token: &CommitToken) -> Dbs<'static> {
        Dbs {
            chunks: self.chunks.on_commit(token),
            lru: self.lru.on_commit(token),
            manifests: self.manifests.on_commit(token),
            users: self.users.on_commit(token),
            packs: self.packs.on_commit(token),
            meta: self.meta.on_commit(token),
        }
    }
}

/// Where a chunk's bytes are and how it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkEntry {
    pub(crate) pack: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    /// Manifests listing the chunk.
    pub(crate) refs: u32,
    /// Logical clock value of the last read or write.
    pub(crate) last_use: u64,
}

const CHUNK_ENTRY_LEN: usize = 28;

impl ChunkEntry {
    pub(crate) fn encode(&self) -> [u8; CHUNK_ENTRY_LEN] {
        let mut b = [0; CHUNK_ENTRY_LEN];
        b[0..4].copy_from_slice(&self.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.refs.to_le_bytes());
        b[20..28].copy_from_slice(&self.last_use.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<ChunkEntry> {
        let b: &[u8; CHUNK_ENTRY_LEN] = b.try_into().ok()?;
        Some(ChunkEntry {
            pack: u32::from_le_bytes(b[0..4].try_into().ok()?),
            offset: u64::from_le_bytes(b[4..12].try_into().ok()?),
            len: u32::from_le_bytes(b[12..16].try_into().ok()?),
            refs: u32::from_le_bytes(b[16..20].try_into().ok()?),
            last_use: u64::from_le_bytes(b[20..28].try_into().ok()?),
        })
    }
}

/// A pack file's committed length and what lives in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PackEntry {
    /// Bytes of the file the index vouches for; anything past it is a torn append.
    pub(crate) len: u64,
    pub(crate) live_bytes: u64,
    pub(crate) live_chunks: u32,
}

const PACK_ENTRY_LEN: usize = 20;

impl PackEntry {
    pub(crate) fn encode(&self) -> [u8; PACK_ENTRY_LEN] {
        let mut b = [0; PACK_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.live_bytes.to_le_bytes());
        b[16..20].copy_from_slice(&self.live_chunks.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<PackEntry> {
        let b: &[u8; PACK_ENTRY_LEN] = b.try_into().ok()?;
        Some(PackEntry {
            len: u64::from_le_bytes(b[0..8].try_into().ok()?),
            live_bytes: u64::from_le_bytes(b[8..16].try_into().ok()?),
            live_chunks: u32::from_le_bytes(b[16..20].try_into().ok()?),
        })
    }
}

/// One chunk of a manifest: where it sits in the file and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManifestEntry {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// xxh3-128 of the bytes.
    pub hash: u128,
}

impl ManifestEntry {
    /// The offset just past the chunk.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.len))
    }
}

const MANIFEST_ENTRY_LEN: usize = 28;

pub(crate) fn encode_manifest(entries: &[ManifestEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * MANIFEST_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.hash.to_le_bytes());
    }
    out
}

/// The manifest stored in `b`, or `None` when it is not one: a length that is not a whole
/// number of entries, or entries that are out of order, overlap, or end past `u64::MAX` (a
/// damaged index). The read path's search and the edit path's overlap checks rely on it.
pub(crate) fn decode_manifest(b: &[u8]) -> Option<Vec<ManifestEntry>> {
    if !b.len().is_multiple_of(MANIFEST_ENTRY_LEN) {
        return None;
    }
    let entries: Vec<ManifestEntry> = b
        .chunks_exact(MANIFEST_ENTRY_LEN)
        .map(|e| {
            Some(ManifestEntry {
                offset: u64::from_le_bytes(e[0..8].try_into().ok()?),
                len: u32::from_le_bytes(e[8..12].try_into().ok()?),
                hash: u128::from_le_bytes(e[12..28].try_into().ok()?),
            })
        })
        .collect::<Option<_>>()?;
    let sound = entries
        .iter()
        .all(|e| e.offset.checked_add(u64::from(e.len)).is_some())
        && entries.windows(2).all(|w| w[0].end() <= w[1].offset);
    sound.then_some(entries)
}

pub(crate) fn hash_key(hash: u128) -> [u8; 16] {
    hash.to_be_bytes()
}

pub(crate) fn lru_key(last_use: u64, hash: u128) -> [u8; 24] {
    let mut k = [0; 24];
    k[..8].copy_from_slice(&last_use.to_be_bytes());
    k[8..].copy_from_slice(&hash.to_be_bytes());
    k
}

pub(crate) fn user_key(hash: u128, version_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + version_key.len());
    k.extend_from_slice(&hash.to_be_bytes());
    k.extend_from_slice(version_key);
    k
}

pub(crate) fn pack_key(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

pub(crate) fn u64_value(b: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_le_bytes(b?.try_into().ok()?))
}

pub(crate) fn hash_of_key(k: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(k.get(..16)?.try_into().ok()?))
}

pub(crate) fn pack_of_key(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_lengths_are_refused() {
        let c = ChunkEntry {
            pack: 7,
            offset: 1 << 40,
            len: 65536,
            refs: 3,
            last_use: 99,
        };
        assert_eq!(ChunkEntry::decode(&c.encode()), Some(c));
        assert_eq!(ChunkEntry::decode(&c.encode()[..27]), None);
        let p = PackEntry {
            len: 5,
            live_bytes: 4,
            live_chunks: 1,
        };
        assert_eq!(PackEntry::decode(&p.encode()), Some(p));
        let m = vec![ManifestEntry {
            offset: 10,
            len: 20,
            hash: u128::MAX - 5,
        }];
        assert_eq!(decode_manifest(&encode_manifest(&m)), Some(m));
        assert_eq!(decode_manifest(&[0; 27]), None);
    }

    proptest::proptest! {
        /// The chunk index's records and manifests (issue 20's fuzz target): any stored
        /// bytes decode to nothing or to a record that encodes back to the same bytes, and a
        /// manifest that decodes is in order, without overlaps or overflow.
        #[test]
        fn fuzz_chunk_index_records(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            seed in proptest::collection::vec((0u64..1 << 20, 0u32..1 << 16), 0..6),
            flip in proptest::option::of((0usize..200, proptest::num::u8::ANY)),
        ) {
            if let Some(c) = ChunkEntry::decode(&raw) {
                proptest::prop_assert_eq!(c.encode().to_vec(), raw.clone());
            }
            if let Some(p) = PackEntry::decode(&raw) {
                proptest::prop_assert_eq!(p.encode().to_vec(), raw.clone());
            }
            // A sound manifest (chunks tiling a file), then damaged by one byte.
            let mut at = 0u64;
            let tiled: Vec<ManifestEntry> = seed
                .iter()
                .map(|&(gap, len)| {
                    let e = ManifestEntry { offset: at + gap, len, hash: u128::from(len) };
                    at = e.end();
                    e
                })
                .collect();
            let mut bytes = encode_manifest(&tiled);
            proptest::prop_assert_eq!(decode_manifest(&bytes), Some(tiled));
            if let Some((i, b)) = flip.filter(|(i, _)| *i < bytes.len()) {
                bytes[i] ^= b;
            }
            for input in [&bytes, &raw] {
                if let Some(m) = decode_manifest(input) {
                    proptest::prop_assert_eq!(&encode_manifest(&m), input);
                    for w in m.windows(2) {
                        proptest::prop_assert!(w[0].end() <= w[1].offset);
                    }
                    for e in &m {
                        proptest::prop_assert!(e.offset.checked_add(u64::from(e.len)).is_some());
                    }
                }
            }
        }
    }
}
