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

pub mod diff;

pub use crate::tree::ROOT_INO;
use crate::tree::{
    ArchivedNodeData, ArchivedTreeData, TreeData, ID_UNKNOWN, KIND_DIR, KIND_FILE, MODE_UNKNOWN,
};
pub use diff::{invalidate_changes, Invalidated, InvalidationSink};

const MAGIC: &[u8; 8] = b"MFSSNAP\0";
/// Version of the snapshot layout; a snapshot of another version is refused and rebuilt.
/// 3: nodes carry owner, group and permission bits.
pub const FORMAT_VERSION: u32 = 3;
const HEADER_LEN: usize = 64;

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

/// A published, validated tree, mapped read-only.
pub struct Snapshot {
    map: Mmap,
    generation: u64,
    origins: Vec<PathBuf>,
}

/// A node of the snapshot, borrowed from the map.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    snap: &'a ArchivedTreeData,
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
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
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
    pub fn verify(&self, path: &Path) -> Result<(), SnapshotError> {
        if xxhash_rust::xxh3::xxh3_64(&self.map[HEADER_LEN..]) != le_u64(&self.map, 32) {
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
        let generation = check_header(&map, path).map_err(|r| match r {
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
        Ok(Snapshot {
            map,
            generation,
            origins,
        })
    }

    fn tree(&self) -> &ArchivedTreeData {
        // SAFETY: `open` validated these exact bytes with `rkyv::access`, and the map is
        // immutable for the snapshot's lifetime.
        unsafe { rkyv::access_unchecked::<ArchivedTreeData>(&self.map[HEADER_LEN..]) }
    }

    /// The generation this snapshot was published as.
    pub fn generation(&self) -> u64 {
        self.generation
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

    /// The catalog change counter this tree was built from.
    pub fn catalog_version(&self) -> u64 {
        self.tree().catalog_version.to_native()
    }

    /// The path template the tree was rendered with.
    pub fn template(&self) -> &str {
        self.tree().template.as_str()
    }

    /// Number of files in the tree.
    pub fn track_count(&self) -> u64 {
        self.tree().track_count.to_native()
    }

    /// Sum of the sizes of all files.
    pub fn total_size(&self) -> u64 {
        self.tree().total_size.to_native()
    }

    /// Number of nodes, directories included.
    pub fn node_count(&self) -> usize {
        self.tree().nodes.len()
    }

    /// The root directory.
    pub fn root(&self) -> Node<'_> {
        Node {
            snap: self.tree(),
            raw: &self.tree().nodes[0],
        }
    }

    fn at(&self, idx: u32) -> Option<Node<'_>> {
        let snap = self.tree();
        snap.nodes.get(idx as usize).map(|raw| Node { snap, raw })
    }

    /// The node with inode `ino` (binary search).
    pub fn node(&self, ino: u64) -> Option<Node<'_>> {
        let index = &self.tree().by_ino;
        let pos = index
            .binary_search_by(|e| e.ino.to_native().cmp(&ino))
            .ok()?;
        self.at(index[pos].node.to_native())
    }

    /// The child of directory `parent_ino` named `name` (binary search).
    pub fn lookup(&self, parent_ino: u64, name: &[u8]) -> Option<Node<'_>> {
        let dir = self.node(parent_ino)?;
        let kids = dir.child_slice();
        let pos = kids
            .binary_search_by(|raw| {
                Node {
                    snap: dir.snap,
                    raw,
                }
                .name()
                .cmp(name)
            })
            .ok()?;
        Some(Node {
            snap: dir.snap,
            raw: &kids[pos],
        })
    }

    /// The children of directory `dir_ino` in name order, starting at child number `offset`;
    /// empty for a file or an unknown inode.
    pub fn children(&self, dir_ino: u64, offset: usize) -> impl Iterator<Item = Node<'_>> {
        let (snap, kids) = match self.node(dir_ino) {
            Some(dir) => (Some(dir.snap), dir.child_slice()),
            None => (None, &[][..]),
        };
        kids.get(offset..)
            .unwrap_or(&[])
            .iter()
            .filter_map(move |raw| snap.map(|snap| Node { snap, raw }))
    }

    /// Every node below the root with its path (components joined by `/`, no leading
    /// slash), depth first in name order: the order `musicfs tree` prints.
    pub fn walk(&self) -> Vec<(Vec<u8>, Node<'_>)> {
        let mut out = Vec::with_capacity(self.node_count());
        // A damaged snapshot could share children between directories: visit each once.
        let mut seen = vec![false; self.node_count()];
        let mut stack: Vec<(Vec<u8>, Node<'_>)> = vec![(Vec::new(), self.root())];
        while let Some((prefix, dir)) = stack.pop() {
            let mut subdirs = Vec::new();
            for child in dir.child_slice().iter().map(|raw| Node {
                snap: dir.snap,
                raw,
            }) {
                if std::mem::replace(&mut seen[child.index()], true) {
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
}

impl<'a> Node<'a> {
    /// This node's index in the node array.
    fn index(&self) -> usize {
        let base = self.snap.nodes.as_ptr() as usize;
        (self.raw as *const ArchivedNodeData as usize - base)
            / std::mem::size_of::<ArchivedNodeData>()
    }

    fn child_slice(&self) -> &'a [ArchivedNodeData] {
        if self.raw.kind.to_native() != KIND_DIR {
            return &[];
        }
        let first = self.raw.first_child.to_native() as usize;
        // Breadth-first layout puts children after their parent; a damaged snapshot that
        // points backwards could make a walk loop forever, so it gets no children.
        if first <= self.index() {
            return &[];
        }
        let end = first + self.raw.child_count.to_native() as usize;
        self.snap.nodes.get(first..end).unwrap_or(&[])
    }

    /// Inode number.
    pub fn ino(&self) -> u64 {
        self.raw.ino.to_native()
    }

    /// Inode of the parent directory (the root's is its own).
    pub fn parent_ino(&self) -> u64 {
        let parent = self.raw.parent.to_native() as usize;
        self.snap
            .nodes
            .get(parent)
            .map_or(ROOT_INO, |p| p.ino.to_native())
    }

    /// The name within its directory (empty for the root).
    pub fn name(&self) -> &'a [u8] {
        let off = self.raw.name_off.to_native() as usize;
        let len = self.raw.name_len.to_native() as usize;
        self.snap.names.get(off..off + len).unwrap_or(&[])
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
            rel_path: self.snap.paths.get(off..off + len)?,
        })
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
    let header = encode_header(generation, body.len, body.hash.digest());
    f.write_all_at(&header, 0)?;
    f.sync_all()?;
    Ok(())
}

fn encode_header(generation: u64, body_len: u64, body_hash: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
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
fn check_header(map: &[u8], _path: &Path) -> Result<u64, HeaderFault> {
    if map.len() < HEADER_LEN || &map[0..8] != MAGIC {
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
