//! The CAS as the chunk cache of the remote read path ([`ChunkCache`] for [`Cas`]).

use std::io;

use super::{Cas, CasError, ManifestEntry};
use crate::origin::{ChunkCache, ChunkRef};

fn io_err(e: CasError) -> io::Error {
    io::Error::other(e)
}

fn entry(c: &ChunkRef) -> ManifestEntry {
    ManifestEntry {
        offset: c.offset,
        len: c.len,
        hash: c.hash,
    }
}

impl ChunkCache for Cas {
    fn manifest(&self, version: &[u8]) -> io::Result<Vec<ChunkRef>> {
        Ok(Cas::manifest(self, version)
            .map_err(io_err)?
            .into_iter()
            .map(|e| ChunkRef {
                offset: e.offset,
                len: e.len,
                hash: e.hash,
            })
            .collect())
    }

    fn versions(&self, prefix: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        Cas::versions(self, prefix).map_err(io_err)
    }

    fn read(&self, c: &ChunkRef, buf: &mut Vec<u8>) -> io::Result<bool> {
        let hit = self.get(c.hash, buf).map_err(io_err)?;
        Ok(hit && buf.len() == c.len as usize)
    }

    fn put(&self, version: &[u8], chunks: &[ChunkRef], data: &[u8]) -> io::Result<()> {
        let Some(first) = chunks.first() else {
            return Ok(());
        };
        self.put_chunks(version, first.offset, data, chunks)
            .map(|_| ())
            .map_err(io_err)
    }

    fn adopt(&self, version: &[u8], chunks: &[ChunkRef]) -> io::Result<bool> {
        let entries: Vec<ManifestEntry> = chunks.iter().map(entry).collect();
        Cas::adopt(self, version, &entries).map_err(io_err)
    }

    fn forget(&self, version: &[u8]) -> io::Result<()> {
        Cas::forget(self, version).map_err(io_err)
    }

    fn pin(&self, version: &[u8]) -> Box<dyn Send + Sync> {
        Box::new(Cas::pin(self, version))
    }
}
