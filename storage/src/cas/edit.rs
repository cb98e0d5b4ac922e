//! One write transaction on the CAS index, with the bookkeeping every change must keep:
//! refcounts (= `users` entries), the LRU order, pack accounting and the stored-bytes
//! total. Space freed here is only given back (hole punching, pack deletion) after the
//! transaction commits, so a crash never leaves the index pointing at punched bytes.

use std::collections::HashSet;
use std::path::Path;

use heed::RwTxn;

use super::schema::{
    self, decode_manifest, encode_manifest, hash_key, lru_key, pack_key, user_key, ChunkEntry, Dbs,
    ManifestEntry, PackEntry, KEY_CLOCK, KEY_STORED,
};
use super::CasError;

/// Bytes to give back after commit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freed {
    pub(crate) pack: u32,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

pub(crate) struct Edit<'a, 'e> {
    pub(crate) txn: &'a mut RwTxn<'e>,
    pub(crate) dbs: Dbs<'static>,
    pub(crate) dir: &'a Path,
    /// The pack being appended to: never deleted, even when empty.
    pub(crate) current_pack: Option<u32>,
    pub(crate) freed: Vec<Freed>,
    pub(crate) dead_packs: Vec<u32>,
}

impl<'a> Edit<'a, '_> {
    pub(crate) fn lmdb(&self, op: &'static str) -> impl Fn(heed::Error) -> CasError + 'a {
        let dir = self.dir;
        move |source| lmdb(dir, op, source)
    }

    fn format(&self, what: impl Into<String>) -> CasError {
        CasError::Format {
            path: self.dir.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn chunk(&self, hash: u128) -> Result<Option<ChunkEntry>, CasError> {
        let Some(b) = self
            .dbs
            .chunks
            .get(self.txn, &hash_key(hash))
            .map_err(self.lmdb("chunk lookup"))?
        else {
            return Ok(None);
        };
        ChunkEntry::decode(b)
            .map(Some)
            .ok_or_else(|| self.format(format!("chunk entry {hash:032x}")))
    }

    fn put_chunk(&mut self, hash: u128, e: &ChunkEntry) -> Result<(), CasError> {
        self.dbs
            .chunks
            .put(self.txn, &hash_key(hash), &e.encode())
            .map_err(|source| CasError::Lmdb {
                path: self.dir.to_path_buf(),
                op: "chunk update",
                source,
            })
    }

    pub(crate) fn pack(&self, id: u32) -> Result<PackEntry, CasError> {
        match self
            .dbs
            .packs
            .get(self.txn, &pack_key(id))
            .map_err(self.lmdb("pack lookup"))?
        {
            None => Ok(PackEntry::default()),
            Some(b) => PackEntry::decode(b).ok_or_else(|| self.format(format!("pack {id}"))),
        }
    }

    pub(crate) fn put_pack(&mut self, id: u32, e: &PackEntry) -> Result<(), CasError> {
        let dir = self.dir;
        self.dbs
            .packs
            .put(self.txn, &pack_key(id), &e.encode())
            .map_err(|source| lmdb(dir, "pack update", source))
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, CasError> {
        let v = self
            .dbs
            .meta
            .get(self.txn, key)
            .map_err(self.lmdb("meta lookup"))?;
        Ok(schema::u64_value(v).unwrap_or(0))
    }

    fn put_meta_u64(&mut self, key: &[u8], v: u64) -> Result<(), CasError> {
        let dir = self.dir;
        self.dbs
            .meta
            .put(self.txn, key, &v.to_le_bytes())
            .map_err(|source| lmdb(dir, "meta update", source))
    }

    pub(crate) fn stored(&self) -> Result<u64, CasError> {
        self.meta_u64(KEY_STORED)
    }

    pub(crate) fn set_clock(&mut self, clock: u64) -> Result<(), CasError> {
        if clock > self.meta_u64(KEY_CLOCK)? {
            self.put_meta_u64(KEY_CLOCK, clock)?;
        }
        Ok(())
    }

    /// Records a use of `hash` at `at` (a read seen since the last write).
    pub(crate) fn touch(&mut self, hash: u128, at: u64) -> Result<(), CasError> {
        let Some(mut e) = self.chunk(hash)? else {
            return Ok(());
        };
        if e.last_use >= at {
            return Ok(());
        }
        let dir = self.dir;
        let lru = self.dbs.lru;
        lru.delete(self.txn, &lru_key(e.last_use, hash))
            .map_err(|source| lmdb(dir, "lru update", source))?;
        lru.put(self.txn, &lru_key(at, hash), &[])
            .map_err(|source| lmdb(dir, "lru update", source))?;
        e.last_use = at;
        self.put_chunk(hash, &e)
    }

    /// Adds a chunk whose bytes were just appended (and synced) to `pack`.
    pub(crate) fn add_chunk(&mut self, hash: u128, e: ChunkEntry) -> Result<(), CasError> {
        let dir = self.dir;
        self.put_chunk(hash, &e)?;
        self.dbs
            .lru
            .put(self.txn, &lru_key(e.last_use, hash), &[])
            .map_err(|source| lmdb(dir, "lru update", source))?;
        let mut p = self.pack(e.pack)?;
        p.live_bytes += u64::from(e.len);
        p.live_chunks += 1;
        p.len = p.len.max(e.offset + u64::from(e.len));
        self.put_pack(e.pack, &p)?;
        let stored = self.stored()? + u64::from(e.len);
        self.put_meta_u64(KEY_STORED, stored)
    }

    /// Removes a chunk from the index and queues its bytes to be given back.
    fn free_chunk(&mut self, hash: u128, e: ChunkEntry) -> Result<(), CasError> {
        let dir = self.dir;
        self.dbs
            .chunks
            .delete(self.txn, &hash_key(hash))
            .map_err(|source| lmdb(dir, "chunk removal", source))?;
        self.dbs
            .lru
            .delete(self.txn, &lru_key(e.last_use, hash))
            .map_err(|source| lmdb(dir, "lru update", source))?;
        let mut p = self.pack(e.pack)?;
        p.live_bytes = p.live_bytes.saturating_sub(u64::from(e.len));
        p.live_chunks = p.live_chunks.saturating_sub(1);
        if p.live_chunks == 0 && self.current_pack != Some(e.pack) {
            self.dbs
                .packs
                .delete(self.txn, &pack_key(e.pack))
                .map_err(|source| lmdb(dir, "pack removal", source))?;
            self.dead_packs.push(e.pack);
        } else {
            self.put_pack(e.pack, &p)?;
            self.freed.push(Freed {
                pack: e.pack,
                offset: e.offset,
                len: u64::from(e.len),
            });
        }
        let stored = self.stored()?.saturating_sub(u64::from(e.len));
        self.put_meta_u64(KEY_STORED, stored)
    }

    pub(crate) fn manifest(&self, key: &[u8]) -> Result<Vec<ManifestEntry>, CasError> {
        match self
            .dbs
            .manifests
            .get(self.txn, key)
            .map_err(self.lmdb("manifest lookup"))?
        {
            None => Ok(Vec::new()),
            Some(b) => decode_manifest(b).ok_or_else(|| self.format("a manifest")),
        }
    }

    /// Replaces the manifest of `key` with `entries` (empty: removes it), adjusting the
    /// refcounts of the chunks that came or went; chunks nobody lists any more are freed.
    pub(crate) fn set_manifest(
        &mut self,
        key: &[u8],
        entries: &[ManifestEntry],
    ) -> Result<(), CasError> {
        let dir = self.dir;
        let before: HashSet<u128> = self.manifest(key)?.iter().map(|e| e.hash).collect();
        let after: HashSet<u128> = entries.iter().map(|e| e.hash).collect();
        if entries.is_empty() {
            self.dbs
                .manifests
                .delete(self.txn, key)
                .map_err(|source| lmdb(dir, "manifest removal", source))?;
        } else {
            self.dbs
                .manifests
                .put(self.txn, key, &encode_manifest(entries))
                .map_err(|source| lmdb(dir, "manifest update", source))?;
        }
        for &h in after.difference(&before) {
            let mut e = self.chunk(h)?.ok_or_else(|| {
                self.format(format!("manifest lists a chunk not stored: {h:032x}"))
            })?;
            e.refs = e.refs.saturating_add(1);
            self.put_chunk(h, &e)?;
            self.dbs
                .users
                .put(self.txn, &user_key(h, key), &[])
                .map_err(|source| lmdb(dir, "users update", source))?;
        }
        for &h in before.difference(&after) {
            self.dbs
                .users
                .delete(self.txn, &user_key(h, key))
                .map_err(|source| lmdb(dir, "users update", source))?;
            let Some(mut e) = self.chunk(h)? else {
                continue;
            };
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 {
                self.free_chunk(h, e)?;
            } else {
                self.put_chunk(h, &e)?;
            }
        }
        Ok(())
    }

    /// Adds `new` to the manifest of `key`: existing entries that overlap a new one give
    /// way (the same layout cuts the same chunks, so that only happens when the caller
    /// reused a version key for changed bytes).
    pub(crate) fn merge_manifest(
        &mut self,
        key: &[u8],
        new: &[ManifestEntry],
    ) -> Result<(), CasError> {
        let mut entries = self.manifest(key)?;
        entries.retain(|old| {
            !new.iter()
                .any(|n| n.offset < old.end() && old.offset < n.end() && n != old)
        });
        for n in new {
            if !entries.contains(n) {
                entries.push(*n);
            }
        }
        entries.sort_unstable_by_key(|e| e.offset);
        self.set_manifest(key, &entries)
    }

    /// The version keys whose manifests list `hash`.
    pub(crate) fn users(&self, hash: u128) -> Result<Vec<Vec<u8>>, CasError> {
        let iter = self
            .dbs
            .users
            .prefix_iter(self.txn, &hash_key(hash))
            .map_err(self.lmdb("users lookup"))?;
        let mut out = Vec::new();
        for item in iter {
            let (k, _) = item.map_err(self.lmdb("users lookup"))?;
            out.push(k[16..].to_vec());
        }
        Ok(out)
    }

    /// Drops a chunk whatever its refcount: it leaves every manifest that listed it (those
    /// files become partly cached) and its bytes are given back.
    pub(crate) fn evict(&mut self, hash: u128) -> Result<Option<ChunkEntry>, CasError> {
        let Some(e) = self.chunk(hash)? else {
            return Ok(None);
        };
        let dir = self.dir;
        for key in self.users(hash)? {
            let mut m = self.manifest(&key)?;
            m.retain(|x| x.hash != hash);
            if m.is_empty() {
                self.dbs.manifests.delete(self.txn, &key).map(drop)
            } else {
                self.dbs.manifests.put(self.txn, &key, &encode_manifest(&m))
            }
            .map_err(|source| lmdb(dir, "manifest update", source))?;
            self.dbs
                .users
                .delete(self.txn, &user_key(hash, &key))
                .map_err(|source| lmdb(dir, "users update", source))?;
        }
        self.free_chunk(hash, e)?;
        Ok(Some(e))
    }

    /// Least recently used chunks first, at most `limit`.
    pub(crate) fn oldest(&self, limit: usize) -> Result<Vec<u128>, CasError> {
        let iter = self.dbs.lru.iter(self.txn).map_err(self.lmdb("lru scan"))?;
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, _) = item.map_err(self.lmdb("lru scan"))?;
            let h = k
                .get(8..)
                .and_then(schema::hash_of_key)
                .ok_or_else(|| self.format("an lru key"))?;
            out.push(h);
        }
        Ok(out)
    }
}

pub(crate) fn lmdb(dir: &Path, op: &'static str, source: heed::Error) -> CasError {
    CasError::Lmdb {
        path: dir.to_path_buf(),
        op,
        source,
    }
}
