//! The prefetch hint: the files under a path of the tree are read once, in the
//! background, through the read path, so the chunk cache holds them (remote origins).
//! Local files are served from their origin directly and need no fetching.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use musicfs_core::snapshot::Snapshot;
use musicfs_storage::origin::{Origin, Seen};
use tonic::Status;
use tracing::{debug, info, warn};

use super::proto;
use super::server::Daemon;

/// A file to fetch.
struct Wanted {
    origin: Arc<dyn Origin>,
    rel: PathBuf,
    seen: Seen,
}

/// The node at `path` (`/`-separated, relative to the root; empty: the root).
fn resolve(snap: &Snapshot, path: &str) -> Option<u64> {
    let mut ino = snap.root().ino();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        ino = snap.lookup(ino, part.as_bytes())?.ino();
    }
    Some(ino)
}

/// Queues the files under `path` for fetching; replies how many there are and how many
/// were queued.
pub fn start(d: &Arc<Daemon>, path: &str) -> Result<proto::PrefetchReply, Status> {
    let snap = d.shared.load_full();
    let ino = resolve(&snap, path.trim_start_matches('/'))
        .ok_or_else(|| Status::not_found(format!("{path:?} is not in the tree")))?;
    let mut files = Vec::new();
    let mut stack = vec![ino];
    while let Some(ino) = stack.pop() {
        let Some(node) = snap.node(ino) else { continue };
        if node.is_dir() {
            stack.extend(snap.children(ino, 0).map(|c| c.ino()));
        } else if let Some(f) = node.file() {
            files.push((
                f.origin,
                PathBuf::from(OsStr::from_bytes(f.rel_path)),
                Seen {
                    size: node.size(),
                    mtime_ns: node.mtime_ns(),
                },
            ));
        }
    }
    let table = d.readers.load();
    let total = files.len() as u64;
    let wanted: Vec<Wanted> = files
        .into_iter()
        .filter_map(|(origin, rel, seen)| {
            let o = table.get(origin)?;
            o.as_local().is_none().then(|| Wanted {
                origin: o.clone(),
                rel,
                seen,
            })
        })
        .collect();
    let queued = wanted.len() as u64;
    if !wanted.is_empty() {
        let label = path.to_string();
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || fetch_all(&label, wanted))
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    Ok(proto::PrefetchReply {
        files: total,
        queued,
    })
}

fn fetch_all(label: &str, wanted: Vec<Wanted>) {
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut bytes) = (0u64, 0u64);
    for w in &wanted {
        match fetch(w, &mut buf) {
            Ok(n) => {
                done += 1;
                bytes += n;
            }
            Err(e) => warn!(file = %w.rel.display(), "prefetch failed: {e}"),
        }
    }
    info!(path = label, files = done, bytes, "prefetched");
}

fn fetch(w: &Wanted, buf: &mut [u8]) -> std::io::Result<u64> {
    let source = w
        .origin
        .open_seen(Path::new(&w.rel), w.seen)
        .map_err(std::io::Error::other)?;
    let mut off = 0u64;
    loop {
        let n = source.read_at(buf, off)?;
        off += n as u64;
        if n < buf.len() {
            debug!(file = %w.rel.display(), bytes = off, "prefetched a file");
            return Ok(off);
        }
    }
}
