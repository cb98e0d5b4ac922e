//! The on-disk tree snapshot: a small header, then an rkyv archive of [`TreeData`], written
//! atomically and read zero-copy from a memory map.
//!
//! Header (64 bytes, little endian): magic `MFSSNAP\0`, format version (u32), flags (u32),
//! generation (u64), body length (u64), xxh3 of the body (u64), xxh3 of the preceding 40
//! header bytes (u64), zero padding. The body starts at offset 64, so the page-aligned map
//! keeps the archive's 16-byte alignment.
//!
//! [`Snapshot::open`] is O(1) whatever the library size: it checks the header (magic,
//! version, length, header checksum) and validates the archive's structure with rkyv,
//! which for this flat layout (vectors of plain integers and byte blobs) touches only the
//! root. That is what memory safety rests on: every index read from the archive is
//! bounds-checked, so even a damaged body cannot cause an out-of-bounds read.
//! [`Snapshot::verify`] checks the body checksum, O(size): the daemon runs it in the
//! background right after mounting and rebuilds the snapshot if it fails, so bit rot is
//! caught without making start-up depend on the library size. [`Snapshot::open_verified`]
//! does both at once for tools that are not in a hurry.
//!
//! [`diff`] compares two snapshots and tells an [`InvalidationSink`] what a kernel that
//! served the old one must forget.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use thiserror::Error;

pub mod delta;
pub mod diff;

pub use crate::tree::ROOT_INO;
use crate::tree::{
    ArchivedNodeData, ArchivedTreeData, TreeData, ID_UNKNOWN, KIND_DIR, KIND_FILE, MODE_UNKNOWN,
};
pub use diff::{invalidate_changes, Invalidated, InvalidationSink};

const MAGIC: &[u8; 8] = b"MFSSNAP\0";
/// Version of the snapshot layout; a snapshot of another version is refused and rebuilt.
/// 3: nodes carry owner, group and permission bits. 4: album format counts; delta segments.
/// 6: a seventh format (plugin-read containers) in the album counts.
pub const FORMAT_VERSION: u32 = 6;
const HEADER_LEN: usize = 64;
/// Deepest level [`Snapshot::for_each_node`] visits: a path of single-byte names this deep
/// would already exceed PATH_MAX.
pub const MAX_DEPTH: usize = 2048;

/// Why a snapshot could not be written or loaded.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The snapshot path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No snapshot has been published yet.
    #[error("no snapshot at {0}")]
    Missing(PathBuf),
    /// The file is not a snapshot or is damaged.
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The snapshot path.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// The snapshot was written by a different layout version.
    #[error(
        "snapshot {path} has format version {found}, this build reads version {FORMAT_VERSION}"
    )]
    Incompatible {
        /// The snapshot path.
        path: PathBuf,
        /// The version found in the header.
        found: u32,
    },
    /// The tree could not be serialised.
    #[error("cannot serialise the tree: {0}")]
    Serialise(String),
}

/// A published, validated tree, mapped read-only: the base, and the delta segment on top
/// of it when there is one (see [`delta`]).
pub struct Snapshot {
    map: Mmap,
    generation: u64,
    origins: Vec<PathBuf>,
    delta: Option<Mmap>,
}

/// The two layers a lookup goes through: the delta's records win over the base's.
#[derive(Clone, Copy)]
struct View<'a> {
    base: &'a ArchivedTreeData,
    delta: Option<&'a ArchivedTreeData>,
}

/// A node of the snapshot, borrowed from the map.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    view: View<'a>,
    /// The layer `raw` lives in (its names, paths and node array).
    layer: &'a ArchivedTreeData,
    raw: &'a ArchivedNodeData,
}

/// The source of a file node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef<'a> {
    /// Catalog id of the track.
    pub track_id: u64,
    /// Origin index; [`Snapshot::origin_root`] gives its root.
    pub origin: u32,
    /// Path relative to the origin root.
    pub rel_path: &'a [u8],
}

/// Another copy of a shown track ([`Snapshot::alternates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AltRef<'a> {
    /// Catalog id of the copy.
    pub track_id: u64,
    /// Its origin index.
    pub origin: u32,
    /// Its path relative to the origin root.
    pub rel_path: &'a [u8],
    /// Its size.
    pub size: u64,
    /// Its modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Its bytes are the shown track's: a read may continue on it at the same offset.
    pub same_bytes: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Snapshot {
    /// Serialises `tree` as generation `generation` and publishes it at `path` atomically:
    /// temp file, fsync, rename, fsync of the directory. A crash leaves either the old or
    /// the new snapshot, plus at most a temp file that the next [`Snapshot::open`] or
    /// publish removes. Temp files are named by process (and publish), so a concurrent
    /// reader or writer of the same state dir (`musicfs tree` while the daemon republishes)
    /// never removes or overwrites another's.
    pub fn write(path: &Path, tree: &TreeData, generation: u64) -> Result<(), SnapshotError> {
        remove_stale_temps(path);
        let tmp = temp_path(path);
        let written = write_streaming(&tmp, tree, generation).and_then(|()| {
            fs::rename(&tmp, path)?;
            // The delta described the old base; a crash before this removal leaves one
            // that no longer matches the base, which `open` ignores.
            match fs::remove_file(delta_path(path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            sync_dir(path)?;
            Ok(())
        });
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            match e {
                WriteFault::Io(e) => io_err(path)(e),
                WriteFault::Serialise(e) => SnapshotError::Serialise(e),
            }
        })
    }

    /// [`Snapshot::open`] followed by [`Snapshot::verify`].
    pub fn open_verified(path: &Path) -> Result<Snapshot, SnapshotError> {
        let snap = Snapshot::open(path)?;
        snap.verify(path)?;
        Ok(snap)
    }

    /// Checks the body checksum (reads the whole file). `path` is only for the message.
    /// The pages the check mapped in are let go of afterwards: the served tree's resident
    /// pages are then the ones lookups touch, not the whole file.
    pub fn verify(&self, path: &Path) -> Result<(), SnapshotError> {
        let sum = xxhash_rust::xxh3::xxh3_64(&self.map[HEADER_LEN..]);
        // SAFETY: a read-only mapping of a file that is only ever replaced by rename, never
        // written in place: a dropped page is faulted back in from the file unchanged.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
        if sum != le_u64(&self.map, 32) {
            return Err(SnapshotError::Corrupt {
                path: path.to_path_buf(),
                reason: "body checksum mismatch".into(),
            });
        }
        Ok(())
    }

    /// Maps the snapshot at `path` and validates its header and structure in O(1) (see the
    /// module docs), removing temp files left by interrupted publishes (of processes that
    /// are gone).
    pub fn open(path: &Path) -> Result<Snapshot, SnapshotError> {
        remove_stale_temps(path);
        remove_stale_temps(&delta_path(path));
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing(path.to_path_buf()))
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        // SAFETY: the snapshot is only ever replaced by rename, never written in place, so
        // the mapped inode's bytes do not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let generation = check_header(&map, MAGIC).map_err(|r| match r {
            HeaderFault::Version(found) => SnapshotError::Incompatible {
                path: path.to_path_buf(),
                found,
            },
            HeaderFault::Bad(reason) => corrupt(reason),
        })?;
        let tree = rkyv::access::<ArchivedTreeData, rkyv::rancor::Error>(&map[HEADER_LEN..])
            .map_err(|e| corrupt(&format!("archive does not validate: {e}")))?;
        if tree.nodes.is_empty() || tree.nodes[0].kind.to_native() != KIND_DIR {
            return Err(corrupt("no root directory"));
        }
        let origins = tree
            .origins
            .iter()
            .map(|o| PathBuf::from(OsStr::from_bytes(o.as_slice())))
            .collect();
        let mut snap = Snapshot {
            map,
            generation,
            origins,
            delta: None,
        };
        let base_sum = le_u64(&snap.map, 32);
        if let Some((delta, generation)) = delta::open(path, generation, base_sum) {
            snap.delta = Some(delta);
            snap.generation = generation;
        }
        Ok(snap)
    }

    /// The base layer.
    fn tree(&self) -> &ArchivedTreeData {
        // SAFETY: `open` validated these exact bytes with `rkyv::access`, and the map is
        // immutable for the snapshot's lifetime.
        unsafe { rkyv::access_unchecked::<ArchivedTreeData>(&self.map[HEADER_LEN..]) }
    }

    /// The delta layer, if any.
    fn delta(&self) -> Option<&ArchivedTreeData> {
        self.delta.as_ref().map(delta::tree_of)
    }

    fn view(&self) -> View<'_> {
        View {
            base: self.tree(),
            delta: self.delta(),
        }
    }

    /// The layer holding the current totals and catalog version.
    fn top(&self) -> &ArchivedTreeData {
        self.delta().unwrap_or(self.tree())
    }

    /// The generation this snapshot was published as (its delta's, when it has one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records in the delta segment (0 without one): how far this snapshot has moved from
    /// its base since the last full publish.
    pub fn delta_len(&self) -> usize {
        self.delta().map_or(0, |d| d.nodes.len() + d.by_ino.len())
    }

    /// Identifies the base layer: (its generation, its body checksum). Two snapshots with
    /// the same base differ only by their deltas.
    pub fn base_id(&self) -> (u64, u64) {
        (
            check_header(&self.map, MAGIC).unwrap_or(0),
            le_u64(&self.map, 32),
        )
    }

    /// The track counts per format of album `key` ([`crate::template::album_key`]), as
    /// the tree was rendered with; `None` for an album with no track.
    pub fn album_counts(&self, key: u128) -> Option<crate::template::FormatCounts> {
        let find = |t: &ArchivedTreeData| {
            let pos = t
                .albums
                .binary_search_by(|a| a.key.to_native().cmp(&key))
                .ok()?;
            Some(t.albums[pos].counts.map(|n| n.to_native()))
        };
        match self.delta().and_then(find) {
            Some(counts) => Some(counts).filter(|c| c.iter().any(|&n| n > 0)),
            None => find(self.tree()),
        }
    }

    /// Root directory of origin `origin`.
    pub fn origin_root(&self, origin: u32) -> Option<&Path> {
        self.origins
            .get(origin as usize)
            .map(PathBuf::as_path)
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// Roots of the origins this tree was built from.
    pub fn origin_roots(&self) -> impl Iterator<Item = &Path> {
        self.origins
            .iter()
            .map(PathBuf::as_path)
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// Every origin of this tree with its id (what file nodes carry) and root.
    pub fn origins(&self) -> impl Iterator<Item = (u32, &Path)> {
        self.origins
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.as_os_str().is_empty())
            .map(|(i, p)| (i as u32, p.as_path()))
    }

    /// [`Snapshot::origins`] as the keys they were recorded under (a local origin's
    /// canonical root; see `musicfs_storage::origin::OriginSpec::key`).
    pub fn origin_keys(&self) -> impl Iterator<Item = (u32, &std::ffi::OsStr)> {
        self.origins().map(|(i, p)| (i, p.as_os_str()))
    }

    /// The other copies of track `track_id` (as shown in the tree), most preferred first;
    /// empty for a track with none.
    pub fn alternates(&self, track_id: u64) -> impl Iterator<Item = AltRef<'_>> + '_ {
        let tree = self.tree();
        let all = tree.alternates.as_slice();
        let start = all.partition_point(|a| a.shown.to_native() < track_id);
        all[start..]
            .iter()
            .take_while(move |a| a.shown.to_native() == track_id)
            .map(move |a| {
                let off = a.path_off.to_native() as usize;
                let len = a.path_len.to_native() as usize;
                AltRef {
                    track_id: a.track_id.to_native(),
                    origin: a.origin.to_native(),
                    rel_path: span(&tree.paths, off, len).unwrap_or_default(),
                    size: a.size.to_native(),
                    mtime_ns: a.mtime_ns.to_native(),
                    same_bytes: a.same_bytes.to_native() != 0,
                }
            })
    }

    /// How many copies are hidden behind shown tracks.
    pub fn alternate_count(&self) -> usize {
        self.tree().alternates.len()
    }

    /// Whether track `track_id` has copies or is one (shown or hidden): a change to it may
    /// change which copy is shown.
    pub fn has_copies(&self, track_id: u64) -> bool {
        self.tree()
            .alternates
            .iter()
            .any(|a| a.shown.to_native() == track_id || a.track_id.to_native() == track_id)
    }

    /// The catalog change counter this tree was built from.
    pub fn catalog_version(&self) -> u64 {
        self.top().catalog_version.to_native()
    }

    /// The path template the tree was rendered with.
    pub fn template(&self) -> &str {
        self.tree().template.as_str()
    }

    /// Number of files in the tree.
    pub fn track_count(&self) -> u64 {
        self.top().track_count.to_native()
    }

    /// Sum of the sizes of all files.
    pub fn total_size(&self) -> u64 {
        self.top().total_size.to_native()
    }

    /// Number of node records, directories included (those of the delta too).
    pub fn node_count(&self) -> usize {
        self.tree().nodes.len() + self.delta().map_or(0, |d| d.nodes.len())
    }

    /// The root directory.
    pub fn root(&self) -> Node<'_> {
        let view = self.view();
        view.node(ROOT_INO).unwrap_or(Node {
            view,
            layer: view.base,
            raw: &view.base.nodes[0],
        })
    }

    /// The node with inode `ino` (binary search).
    pub fn node(&self, ino: u64) -> Option<Node<'_>> {
        self.view().node(ino)
    }

    /// The child of directory `parent_ino` named `name` (binary search).
    pub fn lookup(&self, parent_ino: u64, name: &[u8]) -> Option<Node<'_>> {
        let dir = self.node(parent_ino)?;
        let (layer, kids) = dir.kids();
        let pos = kids
            .binary_search_by(|raw| name_in(layer, raw).cmp(name))
            .ok()?;
        dir.view.current(layer, &kids[pos])
    }

    /// The children of directory `dir_ino` in name order, starting at child number `offset`;
    /// empty for a file or an unknown inode.
    pub fn children(&self, dir_ino: u64, offset: usize) -> impl Iterator<Item = Node<'_>> {
        let view = self.view();
        let (layer, kids) = match self.node(dir_ino) {
            Some(dir) => dir.kids(),
            None => (view.base, &[][..]),
        };
        kids.get(offset..)
            .unwrap_or(&[])
            .iter()
            .filter_map(move |raw| view.current(layer, raw))
    }

    /// Every node below the root with its path (components joined by `/`, no leading
    /// slash), depth first in name order: the order `musicfs tree` prints.
    pub fn walk(&self) -> Vec<(Vec<u8>, Node<'_>)> {
        let mut out = Vec::with_capacity(self.node_count());
        // A damaged snapshot could share children between directories: visit each once.
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<(Vec<u8>, Node<'_>)> = vec![(Vec::new(), self.root())];
        while let Some((prefix, dir)) = stack.pop() {
            let mut subdirs = Vec::new();
            let (layer, kids) = dir.kids();
            for child in kids.iter().filter_map(|raw| dir.view.current(layer, raw)) {
                if !seen.insert(child.ino()) {
                    continue;
                }
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(child.name());
                if child.is_dir() {
                    subdirs.push((path.clone(), child));
                }
                out.push((path, child));
            }
            stack.extend(subdirs.into_iter().rev());
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Calls `f` on every node, the root first, then depth first: a walk that builds no
    /// paths (the full invalidation diff of a 1M-node tree). Descends at most
    /// [`MAX_DEPTH`] levels, so a damaged snapshot cannot make it loop.
    pub fn for_each_node(&self, mut f: impl FnMut(Node<'_>)) {
        let mut stack: Vec<(Node<'_>, usize)> = vec![(self.root(), 0)];
        while let Some((node, depth)) = stack.pop() {
            if depth < MAX_DEPTH && node.is_dir() {
                let (layer, kids) = node.kids();
                stack.extend(
                    kids.iter()
                        .filter_map(|raw| node.view.current(layer, raw))
                        .map(|kid| (kid, depth + 1)),
                );
            }
            f(node);
        }
    }

    /// The inodes the delta segment records (changed, added or removed since the base),
    /// in inode order; empty without a delta.
    pub fn delta_inos(&self) -> impl Iterator<Item = u64> + '_ {
        self.delta()
            .into_iter()
            .flat_map(|d| d.by_ino.iter().map(|e| e.ino.to_native()))
    }
}

/// The name of `raw`, a node of `layer`.
fn name_in<'a>(layer: &'a ArchivedTreeData, raw: &'a ArchivedNodeData) -> &'a [u8] {
    let off = raw.name_off.to_native() as usize;
    let len = raw.name_len.to_native() as usize;
    span(&layer.names, off, len).unwrap_or(&[])
}

/// `len` bytes of `bytes` from `off`; `None` when they are not all there (a damaged
/// snapshot's offsets can be anything, up to a sum past `usize::MAX`).
fn span(bytes: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    bytes.get(off..off.checked_add(len)?)
}

impl<'a> View<'a> {
    /// The current record of inode `ino`: the delta's when it has one (none when the delta
    /// removed it), else the base's.
    fn node(self, ino: u64) -> Option<Node<'a>> {
        if let Some(delta) = self.delta {
            if let Some(idx) = find_ino(delta, ino) {
                let raw = delta.nodes.get(idx? as usize)?;
                return Some(Node {
                    view: self,
                    layer: delta,
                    raw,
                });
            }
        }
        let idx = find_ino(self.base, ino)??;
        Some(Node {
            view: self,
            layer: self.base,
            raw: self.base.nodes.get(idx as usize)?,
        })
    }

    /// `raw` (a record of `layer`) as currently shown: a base record the delta replaced
    /// gives way to the delta's (directories whose listing changed list their children in
    /// the delta itself, so a removed child is never met here).
    fn current(self, layer: &'a ArchivedTreeData, raw: &'a ArchivedNodeData) -> Option<Node<'a>> {
        match self.delta {
            Some(delta) if std::ptr::eq(layer, self.base) => {
                match find_ino(delta, raw.ino.to_native()) {
                    Some(Some(idx)) => delta.nodes.get(idx as usize).map(|raw| Node {
                        view: self,
                        layer: delta,
                        raw,
                    }),
                    Some(None) => None,
                    None => Some(Node {
                        view: self,
                        layer,
                        raw,
                    }),
                }
            }
            _ => Some(Node {
                view: self,
                layer,
                raw,
            }),
        }
    }
}

/// Looks `ino` up in `layer`'s inode index: `None` when absent, `Some(None)` when the
/// layer (a delta) records it as removed, else its node index.
fn find_ino(layer: &ArchivedTreeData, ino: u64) -> Option<Option<u32>> {
    let index = &layer.by_ino;
    let pos = position_of(index.len(), |i| index[i].ino.to_native(), ino)?;
    let node = index[pos].node.to_native();
    Some((node != delta::REMOVED).then_some(node))
}

/// Where `ino` is among `n` distinct inodes sorted ascending (`key(i)` the i-th).
///
/// Distinct sorted integers bound a value's place from both ends: `key(i) >= key(0) + i`
/// and `key(i) <= key(n-1) - (n-1-i)`. Directory inodes count up from the root and file
/// inodes (track ids) are mostly dense up to the last, so one bound usually lands on the
/// inode or a few places from it: the search starts there and widens (exponential search)
/// before bisecting, a couple of cache misses where a plain binary search over a million
/// inodes takes twenty.
fn position_of(n: usize, key: impl Fn(usize) -> u64, ino: u64) -> Option<usize> {
    let last = n.checked_sub(1)?;
    let (lo, hi) = (key(0), key(last));
    if ino < lo || ino > hi {
        return None;
    }
    // The place is in [from_top, from_bottom].
    let from_bottom = usize::try_from(ino - lo).map_or(last, |d| d.min(last));
    let from_top = last - usize::try_from(hi - ino).map_or(last, |d| d.min(last));
    let (a, b) = (key(from_top), key(from_bottom));
    if a == ino {
        return Some(from_top);
    }
    if b == ino {
        return Some(from_bottom);
    }
    if a > ino || b < ino {
        // Not sorted and distinct after all (a damaged snapshot): the bounds do not hold,
        // and widening from them might never stop. Bisect the whole range instead; it
        // ends whatever the keys are.
        return bisect(0, last, &key, ino);
    }
    // Widen from the bound whose inode is nearer, then bisect the bracket found.
    let (left, right) = if ino - a <= b - ino {
        let mut step = 1usize;
        let mut prev = from_top;
        loop {
            let at = from_top.saturating_add(step).min(from_bottom);
            if key(at) >= ino {
                break (prev, at);
            }
            prev = at;
            step = step.saturating_mul(2);
        }
    } else {
        let mut step = 1usize;
        let mut prev = from_bottom;
        loop {
            let at = from_bottom.saturating_sub(step).max(from_top);
            if key(at) <= ino {
                break (at, prev);
            }
            prev = at;
            step = step.saturating_mul(2);
        }
    };
    // key(left) <= ino <= key(right).
    bisect(left, right, &key, ino)
}

/// Where `ino` is in `left..=right` of ascending keys, by bisection (ends on any keys).
fn bisect(
    mut left: usize,
    mut right: usize,
    key: &impl Fn(usize) -> u64,
    ino: u64,
) -> Option<usize> {
    while left < right {
        let mid = left + (right - left) / 2;
        match key(mid).cmp(&ino) {
            std::cmp::Ordering::Equal => return Some(mid),
            std::cmp::Ordering::Less => left = mid + 1,
            std::cmp::Ordering::Greater => right = mid,
        }
    }
    (key(left) == ino).then_some(left)
}

impl<'a> Node<'a> {
    /// This node's index in its layer's node array.
    fn index(&self) -> usize {
        let base = self.layer.nodes.as_ptr() as usize;
        (self.raw as *const ArchivedNodeData as usize - base)
            / std::mem::size_of::<ArchivedNodeData>()
    }

    fn in_delta(&self) -> bool {
        !std::ptr::eq(self.layer, self.view.base)
    }

    /// The layer holding this directory's children, and their records there (before the
    /// delta's replacements: see [`View::current`]).
    fn kids(&self) -> (&'a ArchivedTreeData, &'a [ArchivedNodeData]) {
        let base = self.view.base;
        if self.raw.kind.to_native() != KIND_DIR {
            return (base, &[]);
        }
        let first = self.raw.first_child.to_native();
        let count = self.raw.child_count.to_native() as usize;
        let (layer, first) = if self.in_delta() && first & delta::IN_DELTA != 0 {
            (self.layer, (first & !delta::IN_DELTA) as usize)
        } else {
            (base, first as usize)
        };
        // Both layouts put children after their parent; a damaged snapshot that points
        // backwards could make a walk loop forever, so it gets no children. (A delta
        // directory listed in the base is checked by the base record it copies.)
        if std::ptr::eq(layer, self.layer) && first <= self.index() {
            return (base, &[]);
        }
        (layer, layer.nodes.get(first..first + count).unwrap_or(&[]))
    }

    /// Inode number.
    pub fn ino(&self) -> u64 {
        self.raw.ino.to_native()
    }

    /// Inode of the parent directory (the root's is its own).
    pub fn parent_ino(&self) -> u64 {
        let parent = self.raw.parent.to_native();
        let (layer, idx) = if self.in_delta() && parent & delta::IN_DELTA != 0 {
            (self.layer, parent & !delta::IN_DELTA)
        } else {
            (self.view.base, parent)
        };
        layer
            .nodes
            .get(idx as usize)
            .map_or(ROOT_INO, |p| p.ino.to_native())
    }

    /// The name within its directory (empty for the root).
    pub fn name(&self) -> &'a [u8] {
        name_in(self.layer, self.raw)
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.raw.kind.to_native() == KIND_DIR
    }

    /// Size in bytes (files), 0 for directories.
    pub fn size(&self) -> u64 {
        self.raw.size.to_native()
    }

    /// Content version of a file (see [`NodeData::generation`](crate::tree::NodeData)),
    /// 0 for directories.
    pub fn generation(&self) -> u64 {
        self.raw.generation.to_native()
    }

    /// Modification time in ns since the epoch.
    pub fn mtime_ns(&self) -> i64 {
        self.raw.mtime_ns.to_native()
    }

    /// Permission bits (at most `0o7777`) as the origin reported them (files) or derived
    /// from the files below (directories, see [`crate::tree`]); `None` when unknown.
    pub fn perm_bits(&self) -> Option<u32> {
        match self.raw.mode.to_native() {
            MODE_UNKNOWN => None,
            mode => Some(mode & 0o7777),
        }
    }

    /// Owner uid (a directory's: the one every file below shares); `None` when unknown.
    pub fn uid(&self) -> Option<u32> {
        Some(self.raw.uid.to_native()).filter(|&id| id != ID_UNKNOWN)
    }

    /// Owner gid (a directory's: the one every file below shares); `None` when unknown.
    pub fn gid(&self) -> Option<u32> {
        Some(self.raw.gid.to_native()).filter(|&id| id != ID_UNKNOWN)
    }

    /// Link count: 1 for files, 2 + subdirectories for directories.
    pub fn nlink(&self) -> u32 {
        if self.is_dir() {
            2 + self.raw.subdirs.to_native()
        } else {
            1
        }
    }

    /// Number of entries in a directory (0 for files).
    pub fn child_count(&self) -> u32 {
        if self.is_dir() {
            self.raw.child_count.to_native()
        } else {
            0
        }
    }

    /// Where a file's bytes come from; `None` for directories.
    pub fn file(&self) -> Option<FileRef<'a>> {
        if self.raw.kind.to_native() != KIND_FILE {
            return None;
        }
        let off = self.raw.path_off.to_native() as usize;
        let len = self.raw.path_len.to_native() as usize;
        Some(FileRef {
            track_id: self.raw.track_id.to_native(),
            origin: self.raw.origin.to_native(),
            rel_path: span(&self.layer.paths, off, len)?,
        })
    }
}

/// Where the delta segment of the snapshot at `path` lives: beside it, `<name>.delta`.
pub fn delta_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".delta");
    path.with_file_name(name)
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// `<name>.tmp.<pid>.<n>`: unique to this process and publish.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// Removes the temp files of `path` whose publishing process is gone (or that carry no
/// process id: older versions named them `<name>.tmp`). A live process's temp file is left
/// alone: it may be renamed into place any moment.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = name.as_bytes().to_vec();
    prefix.extend_from_slice(b".tmp");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.as_bytes().strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let owner = rest
            .strip_prefix(b".")
            .and_then(|r| r.split(|b| *b == b'.').next())
            .and_then(|pid| std::str::from_utf8(pid).ok()?.parse::<i32>().ok());
        let stale = match owner {
            Some(pid) if pid > 0 => !process_alive(pid),
            Some(_) => false,
            None => rest.is_empty(),
        };
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; no signal is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Why [`write_streaming`] failed.
enum WriteFault {
    Io(std::io::Error),
    Serialise(String),
}

impl From<std::io::Error> for WriteFault {
    fn from(e: std::io::Error) -> Self {
        WriteFault::Io(e)
    }
}

/// Passes bytes through to `inner`, hashing and counting them; keeps the first write
/// error, which the serialiser only reports as text.
struct HashingWriter<W> {
    inner: W,
    hash: xxhash_rust::xxh3::Xxh3,
    len: u64,
    failed: Option<std::io::Error>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                let told = std::io::Error::new(e.kind(), e.to_string());
                self.failed.get_or_insert(e);
                Err(told)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the snapshot file `tmp` and syncs it: the header's place first, then the body
/// serialised straight into the file through a 1 MiB buffer (hashed on the way, so the
/// tree is never held twice in memory), then the header.
fn write_streaming(tmp: &Path, tree: &TreeData, generation: u64) -> Result<(), WriteFault> {
    use std::os::unix::fs::FileExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    f.write_all(&[0u8; HEADER_LEN])?;
    let mut body = HashingWriter {
        inner: &f,
        hash: xxhash_rust::xxh3::Xxh3::new(),
        len: 0,
        failed: None,
    };
    let serialised = {
        let buffered = std::io::BufWriter::with_capacity(1 << 20, &mut body);
        match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
            tree,
            rkyv::ser::writer::IoWriter::new(buffered),
        ) {
            Ok(w) => w
                .into_inner()
                .into_inner()
                .map(|_| ())
                .map_err(|e| WriteFault::Io(e.into_error())),
            Err(e) => Err(WriteFault::Serialise(e.to_string())),
        }
    };
    if let Err(e) = serialised {
        return Err(body.failed.take().map_or(e, WriteFault::Io));
    }
    let header = encode_header(MAGIC, generation, body.len, body.hash.digest());
    f.write_all_at(&header, 0)?;
    f.sync_all()?;
    Ok(())
}

fn encode_header(
    magic: &[u8; 8],
    generation: u64,
    body_len: u64,
    body_hash: u64,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&generation.to_le_bytes());
    h[24..32].copy_from_slice(&body_len.to_le_bytes());
    h[32..40].copy_from_slice(&body_hash.to_le_bytes());
    let own = xxhash_rust::xxh3::xxh3_64(&h[..40]);
    h[40..48].copy_from_slice(&own.to_le_bytes());
    h
}

enum HeaderFault {
    Version(u32),
    Bad(&'static str),
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Checks magic, header checksum, version and length; returns the generation.
fn check_header(map: &[u8], magic: &[u8; 8]) -> Result<u64, HeaderFault> {
    if map.len() < HEADER_LEN || &map[0..8] != magic {
        return Err(HeaderFault::Bad("not a MusicFS snapshot (bad magic)"));
    }
    if xxhash_rust::xxh3::xxh3_64(&map[..40]) != le_u64(map, 40) {
        return Err(HeaderFault::Bad("header checksum mismatch"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&map[8..12]);
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(HeaderFault::Version(version));
    }
    let body = &map[HEADER_LEN..];
    if le_u64(map, 24) != body.len() as u64 {
        return Err(HeaderFault::Bad("truncated or extended body"));
    }
    Ok(le_u64(map, 16))
}

#[cfg(test)]
mod position_tests {
    use super::position_of;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn finds_what_a_binary_search_finds(
            mut keys in prop::collection::vec(0u64..5_000, 0..300),
            dense in 0usize..400,
            probe in 0u64..6_000,
        ) {
            // Sparse small inodes, then a dense run at the top (as directories and tracks).
            keys.sort_unstable();
            keys.dedup();
            let top = keys.last().copied().unwrap_or(0) + 1000;
            keys.extend((0..dense as u64).map(|i| top + i));
            let key = |i: usize| keys[i];
            for ino in [probe, top + probe % 500, probe / 3] {
                prop_assert_eq!(position_of(keys.len(), key, ino), keys.binary_search(&ino).ok());
            }
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(position_of(keys.len(), key, *k), Some(i));
            }
        }

        /// A damaged snapshot's index need not be sorted: the search ends, without a panic
        /// (it overflowed once, found by the damaged-snapshot fuzz test).
        #[test]
        fn ends_on_unsorted_keys(
            keys in prop::collection::vec(0u64..1_000, 1..64),
            probe in 0u64..1_000,
        ) {
            let found = position_of(keys.len(), |i| keys[i], probe);
            prop_assert!(found.is_none_or(|i| keys[i] == probe));
        }
    }

    #[test]
    fn bounds_that_do_not_hold_fall_back_to_bisection() {
        // The bound from the top (place 2) holds 40, above the inode 30 it should not pass:
        // the widening subtracted past zero there.
        let keys = [10u64, 45, 40, 31];
        assert_eq!(position_of(keys.len(), |i| keys[i], 30), None);
        assert_eq!(position_of(keys.len(), |i| keys[i], 10), Some(0));
    }
}
