//! A small library on disk and its snapshot, for tests without a kernel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use musicfs_core::meta::{Format, OriginId, Perm, ScanState, TrackId, TrackMeta, TrackRecord};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::tree::TreeBuilder;

use crate::xattr::TagSource;

/// Tracks by id.
#[derive(Default)]
pub struct MapTags(pub HashMap<u64, TrackRecord>);

impl TagSource for MapTags {
    fn track(
        &self,
        id: u64,
    ) -> Result<Option<TrackRecord>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.get(&id).cloned())
    }
}

/// An origin directory, its tracks, and a snapshot of them.
pub struct Library {
    pub dir: tempfile::TempDir,
    pub origin: PathBuf,
    pub records: Vec<(TrackRecord, Vec<String>)>,
}

/// Content of track `id`: deterministic, `len` bytes.
pub fn content(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + id * 7) as u8).collect()
}

impl Library {
    pub fn new() -> Library {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).expect("origin");
        Library {
            dir,
            origin,
            records: Vec::new(),
        }
    }

    /// Adds a source file of `len` bytes shown at `path` (`/`-separated).
    pub fn add(&mut self, path: &str, len: usize, meta: TrackMeta) -> u64 {
        self.add_with_perm(path, len, meta, None)
    }

    /// [`Library::add`] of a source whose scan recorded owner and mode `perm`.
    pub fn add_with_perm(
        &mut self,
        path: &str,
        len: usize,
        meta: TrackMeta,
        perm: Option<Perm>,
    ) -> u64 {
        let id = self.records.len() as u64 + 1;
        let rel = format!("src/{id}.flac");
        let src = self.origin.join(&rel);
        std::fs::create_dir_all(src.parent().expect("parent")).expect("mkdir");
        std::fs::write(&src, content(id, len)).expect("write");
        let mtime_ns = 1_700_000_000_123_456_789 + id as i64;
        // The file carries the mtime its scan records, as a scanned source does.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64);
        std::fs::File::options()
            .write(true)
            .open(&src)
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
        let rec = TrackRecord {
            id: TrackId(id),
            origin: OriginId(0),
            rel_path: rel.into_bytes(),
            format: Format::Flac,
            scan: ScanState {
                size: len as u64,
                mtime_ns,
                ino: 0,
                ctime_ns: 0,
                perm,
            },
            meta,
        };
        let parts = path.split('/').map(str::to_string).collect();
        self.records.push((rec, parts));
        id
    }

    pub fn snapshot(&self, generation: u64) -> Snapshot {
        let mut b = TreeBuilder::new("$artist/$album/$title", vec![self.origin.clone()]);
        for (rec, parts) in &self.records {
            b.add(rec, parts);
        }
        let path = self.dir.path().join(format!("snap-{generation}"));
        Snapshot::write(&path, &b.build(), generation).expect("write snapshot");
        Snapshot::open(&path).expect("open snapshot")
    }

    pub fn shared(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::new(ArcSwap::from_pointee(self.snapshot(1)))
    }

    pub fn tags(&self) -> Arc<MapTags> {
        Arc::new(MapTags(
            self.records
                .iter()
                .map(|(r, _)| (r.id.0, r.clone()))
                .collect(),
        ))
    }

    pub fn source(&self, id: u64) -> PathBuf {
        self.origin.join(format!("src/{id}.flac"))
    }
}
