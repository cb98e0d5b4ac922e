//! Building the virtual tree: rendered track paths in, a flat, name-sorted directory layout
//! out ([`TreeData`]), ready to be written as a snapshot.
//!
//! Layout: nodes in breadth-first order, node 0 the root, the children of every directory
//! contiguous and sorted by name bytes, so lookup is a binary search and readdir a slice.
//! Names and source paths live in two byte blobs, so the archive holds a handful of
//! pointers whatever the library size.
//!
//! Inodes are stable: a file takes its catalog id plus [`FILE_INO_BASE`]; a directory takes
//! the xxh3 of its virtual path with the top bit set, collisions resolved by probing in path
//! order. The same catalog gives the same inodes, build after build.
//!
//! Owner and mode: a file carries its source's owner, group and permission bits as the
//! scan recorded them ([`MODE_UNKNOWN`] / [`ID_UNKNOWN`] where the origin did not say).
//! A directory is derived from the files below it (at any depth): its mode is the union of
//! their read bits, each read bit granting read and search (`r` → `r-x`), so whoever may
//! read one of its files may list and cross it; its owner (group) is theirs when they all
//! share one, else unknown, which the mount shows as its default owner. A file of unknown
//! mode counts as `r--r--r--` of unknown owner. The mount masks write bits and applies its
//! own uid/gid/umask mapping when it shows them (docs/SEMANTICS.md, "Owners and modes").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rkyv::{Archive, Serialize};

use crate::meta::{Perm, TrackRecord};
use crate::template::{AlbumFormats, FormatCounts};

/// Inode of the root directory.
pub const ROOT_INO: u64 = 1;
/// Offset added to a track id to make its inode; inodes below it are reserved for the root
/// and virtual directories.
pub const FILE_INO_BASE: u64 = 16;
pub(crate) const DIR_INO_BIT: u64 = 1 << 63;
/// Longest file name the tree produces, in bytes (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Node kind flag: directory.
pub const KIND_DIR: u32 = 1;
/// Node kind flag: regular file.
pub const KIND_FILE: u32 = 2;

/// [`NodeData::mode`] of a node whose origin did not report permission bits.
pub const MODE_UNKNOWN: u32 = u32::MAX;
/// [`NodeData::uid`] / [`NodeData::gid`] of a node whose owner is not known, or, for a
/// directory, not shared by every file below it. `(uid_t)-1` is never a real id.
pub const ID_UNKNOWN: u32 = u32::MAX;

/// One node of the flat tree.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize)]
pub struct NodeData {
    /// Stable inode number.
    pub ino: u64,
    /// File size in bytes (0 for directories).
    pub size: u64,
    /// Modification time, ns since the epoch (directories: newest descendant).
    pub mtime_ns: i64,
    /// Catalog id (files only, else 0).
    pub track_id: u64,
    /// Content version of a file: changes whenever its source's (size, mtime, inode,
    /// ctime) change, so the kernel can tell a replaced file from the one it cached (FUSE
    /// entry generation). 0 for directories.
    pub generation: u64,
    /// Offset of the name in [`TreeData::names`].
    pub name_off: u64,
    /// Offset of the source path (relative to the origin root) in [`TreeData::paths`].
    pub path_off: u64,
    /// Length of the name in bytes.
    pub name_len: u32,
    /// Length of the source path in bytes.
    pub path_len: u32,
    /// Index of the parent node (the root is its own parent).
    pub parent: u32,
    /// Index of the first child (directories).
    pub first_child: u32,
    /// Number of children (directories).
    pub child_count: u32,
    /// Number of subdirectories (for nlink).
    pub subdirs: u32,
    /// Origin index (files).
    pub origin: u32,
    /// [`KIND_DIR`] or [`KIND_FILE`].
    pub kind: u32,
    /// Permission bits (`0o7777` at most) of the source (files) or derived from the files
    /// below (directories; see the module docs), or [`MODE_UNKNOWN`].
    pub mode: u32,
    /// Owner uid, or [`ID_UNKNOWN`].
    pub uid: u32,
    /// Owner gid, or [`ID_UNKNOWN`].
    pub gid: u32,
}

/// Inode to node index, sorted by inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize)]
pub struct InoEntry {
    /// Inode number.
    pub ino: u64,
    /// Node index.
    pub node: u32,
}

/// The whole tree, as archived in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize)]
pub struct TreeData {
    /// The path template the tree was rendered with.
    pub template: String,
    /// The catalog's change counter when the tree was built: a restart compares it with
    /// the catalog to know whether the snapshot is current.
    pub catalog_version: u64,
    /// Origin roots, indexed by origin id (absolute paths, as bytes).
    pub origins: Vec<Vec<u8>>,
    /// Number of files.
    pub track_count: u64,
    /// Sum of file sizes.
    pub total_size: u64,
    /// Nodes; index 0 is the root.
    pub nodes: Vec<NodeData>,
    /// Inode index, sorted by inode.
    pub by_ino: Vec<InoEntry>,
    /// Concatenated node names.
    pub names: Vec<u8>,
    /// Concatenated source paths.
    pub paths: Vec<u8>,
    /// Track counts per format of every album, sorted by key: what a small republish
    /// needs to render a changed track's folder without reading the whole library
    /// ([`crate::template::AlbumFormats`]).
    pub albums: Vec<AlbumCount>,
}

/// One album's track counts per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize)]
pub struct AlbumCount {
    /// The album's key ([`crate::template::album_key`]).
    pub key: u128,
    /// Its tracks per format ([`crate::template::FormatCounts`]).
    pub counts: FormatCounts,
}

/// The albums of `formats` as a sorted table, for [`TreeData::albums`].
pub fn album_table(formats: &AlbumFormats) -> Vec<AlbumCount> {
    let mut albums: Vec<AlbumCount> = formats
        .iter()
        .map(|(key, counts)| AlbumCount {
            key,
            counts: *counts,
        })
        .collect();
    albums.sort_unstable_by_key(|a| a.key);
    albums
}

struct PendingFile {
    name: String,
    track_id: u64,
    generation: u64,
    origin: u32,
    rel_path: Vec<u8>,
    size: u64,
    mtime_ns: i64,
    perm: Option<Perm>,
}

#[derive(Default)]
struct PendingDir {
    subdirs: BTreeMap<String, usize>,
    files: Vec<PendingFile>,
}

/// Collects rendered tracks and lays them out as a [`TreeData`].
pub struct TreeBuilder {
    template: String,
    catalog_version: u64,
    origins: Vec<Vec<u8>>,
    dirs: Vec<PendingDir>,
    albums: Vec<AlbumCount>,
}

impl TreeBuilder {
    /// A builder for a library whose origin roots are `origins`, indexed by origin id
    /// (an empty path for an origin not in this tree), rendered with `template`.
    pub fn new(template: &str, origins: Vec<PathBuf>) -> TreeBuilder {
        use std::os::unix::ffi::OsStringExt;
        TreeBuilder {
            template: template.to_string(),
            catalog_version: 0,
            origins: origins
                .into_iter()
                .map(|p| p.into_os_string().into_vec())
                .collect(),
            dirs: vec![PendingDir::default()],
            albums: Vec::new(),
        }
    }

    /// Records the catalog change counter the tree is built from.
    pub fn set_catalog_version(&mut self, version: u64) {
        self.catalog_version = version;
    }

    /// Records the album counts the tracks were rendered with.
    pub fn set_albums(&mut self, albums: &AlbumFormats) {
        self.albums = album_table(albums);
    }

    /// Adds a track under its rendered path (`components`: sanitised, the last one the file
    /// name). A track with no components is placed at the root under its file stem.
    pub fn add(&mut self, track: &TrackRecord, components: &[String]) {
        let (file_name, dir_parts) = match components.split_last() {
            Some((last, rest)) => (last.clone(), rest),
            None => (track.file_stem(), &[][..]),
        };
        let mut dir = 0usize;
        for part in dir_parts {
            dir = match self.dirs[dir].subdirs.get(part) {
                Some(&d) => d,
                None => {
                    let d = self.dirs.len();
                    self.dirs.push(PendingDir::default());
                    self.dirs[dir].subdirs.insert(part.clone(), d);
                    d
                }
            };
        }
        self.dirs[dir].files.push(PendingFile {
            name: file_name,
            track_id: track.id.0,
            generation: content_generation(&track.scan),
            origin: track.origin.0,
            rel_path: track.rel_path.clone(),
            size: track.scan.size,
            mtime_ns: track.scan.mtime_ns,
            perm: track.scan.perm,
        });
    }

    /// Resolves name clashes and lays the tree out breadth-first.
    pub fn build(mut self) -> TreeData {
        for dir in &mut self.dirs {
            resolve_clashes(dir);
        }
        let mut data = Layout::new(self.template, self.origins).run(self.dirs);
        data.catalog_version = self.catalog_version;
        data.albums = self.albums;
        data
    }
}

/// Makes every name in a directory unique. Files whose names collide with each other or with
/// a subdirectory get ` (2)`, ` (3)`, ... before the extension, in track-id order, so the
/// oldest track keeps the plain name and a rebuild gives the same names.
fn resolve_clashes(dir: &mut PendingDir) {
    dir.files
        .sort_by(|a, b| a.name.cmp(&b.name).then(a.track_id.cmp(&b.track_id)));
    let mut taken: HashSet<String> = dir.subdirs.keys().cloned().collect();
    let mut clashing = Vec::new();
    for (i, f) in dir.files.iter().enumerate() {
        if !taken.insert(f.name.clone()) {
            clashing.push(i);
        }
    }
    for i in clashing {
        let base = dir.files[i].name.clone();
        let mut n = 2u64;
        loop {
            let candidate = with_suffix(&base, n);
            if taken.insert(candidate.clone()) {
                dir.files[i].name = candidate;
                break;
            }
            n += 1;
        }
    }
}

/// `name` with ` (n)` inserted before its extension, cut to [`NAME_MAX`] bytes on a char
/// boundary of the stem.
pub fn with_suffix(name: &str, n: u64) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    let suffix = format!(" ({n})");
    let room = NAME_MAX.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

enum Child {
    Dir(usize),
    File(PendingFile),
}

struct Layout {
    data: TreeData,
    dir_inos: HashSet<u64>,
}

impl Layout {
    fn new(template: String, origins: Vec<Vec<u8>>) -> Layout {
        Layout {
            data: TreeData {
                template,
                catalog_version: 0,
                origins,
                track_count: 0,
                total_size: 0,
                nodes: Vec::new(),
                by_ino: Vec::new(),
                names: Vec::new(),
                paths: Vec::new(),
                albums: Vec::new(),
            },
            dir_inos: HashSet::new(),
        }
    }

    fn run(mut self, mut dirs: Vec<PendingDir>) -> TreeData {
        self.push_node(NodeData {
            ino: ROOT_INO,
            kind: KIND_DIR,
            ..empty_node()
        });
        self.dir_inos.insert(ROOT_INO);
        // Virtual path of each directory node, for its inode hash.
        let mut vpaths: HashMap<u32, String> = HashMap::from([(0, String::new())]);
        let mut queue = std::collections::VecDeque::from([(0usize, 0u32)]);
        while let Some((pending, node_idx)) = queue.pop_front() {
            let dir = std::mem::take(&mut dirs[pending]);
            let mut children: Vec<(String, Child)> = Vec::new();
            for (name, d) in dir.subdirs {
                children.push((name, Child::Dir(d)));
            }
            for f in dir.files {
                children.push((f.name.clone(), Child::File(f)));
            }
            children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let first = self.data.nodes.len() as u32;
            let parent_path = vpaths.get(&node_idx).cloned().unwrap_or_default();
            let mut subdirs = 0u32;
            for (name, child) in children {
                let idx = self.data.nodes.len() as u32;
                let (name_off, name_len) = push_blob(&mut self.data.names, name.as_bytes());
                let base = NodeData {
                    name_off,
                    name_len,
                    parent: node_idx,
                    ..empty_node()
                };
                match child {
                    Child::Dir(d) => {
                        subdirs += 1;
                        let vpath = format!("{parent_path}/{name}");
                        let ino = self.dir_ino(&vpath);
                        vpaths.insert(idx, vpath);
                        self.push_node(NodeData {
                            ino,
                            kind: KIND_DIR,
                            ..base
                        });
                        queue.push_back((d, idx));
                    }
                    Child::File(f) => {
                        let (path_off, path_len) = push_blob(&mut self.data.paths, &f.rel_path);
                        self.data.track_count += 1;
                        self.data.total_size += f.size;
                        let (mode, uid, gid) = match f.perm {
                            Some(p) => (p.mode & 0o7777, p.uid, p.gid),
                            None => (MODE_UNKNOWN, ID_UNKNOWN, ID_UNKNOWN),
                        };
                        self.push_node(NodeData {
                            mode,
                            uid,
                            gid,
                            ino: f.track_id + FILE_INO_BASE,
                            size: f.size,
                            mtime_ns: f.mtime_ns,
                            track_id: f.track_id,
                            generation: f.generation,
                            path_off,
                            path_len,
                            origin: f.origin,
                            kind: KIND_FILE,
                            ..base
                        });
                    }
                }
            }
            let count = self.data.nodes.len() as u32 - first;
            let node = &mut self.data.nodes[node_idx as usize];
            node.first_child = first;
            node.child_count = count;
            node.subdirs = subdirs;
        }
        self.propagate_dir_mtimes();
        self.derive_dir_perms();
        self.data.by_ino.sort_unstable_by_key(|e| e.ino);
        self.data
    }

    /// A directory's inode: the hash of its virtual path, probed past collisions. Directories
    /// are visited in breadth-first, name-sorted order, so probing is deterministic.
    fn dir_ino(&mut self, vpath: &str) -> u64 {
        let mut ino = xxhash_rust::xxh3::xxh3_64(vpath.as_bytes()) | DIR_INO_BIT;
        while !self.dir_inos.insert(ino) {
            ino = (ino.wrapping_add(1)) | DIR_INO_BIT;
        }
        ino
    }

    fn push_node(&mut self, node: NodeData) {
        self.data.by_ino.push(InoEntry {
            ino: node.ino,
            node: self.data.nodes.len() as u32,
        });
        self.data.nodes.push(node);
    }

    /// A directory's mtime is its newest descendant's, so `ls -lt` of artists is useful.
    /// Children always come after their parent in breadth-first order: one reverse pass.
    fn propagate_dir_mtimes(&mut self) {
        for i in (1..self.data.nodes.len()).rev() {
            let (m, p) = (
                self.data.nodes[i].mtime_ns,
                self.data.nodes[i].parent as usize,
            );
            if self.data.nodes[p].mtime_ns < m {
                self.data.nodes[p].mtime_ns = m;
            }
        }
    }
}

/// The owner (or group) the files below a directory share, as far as seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    /// No file seen yet.
    Nobody,
    /// Every file seen has this id.
    One(u32),
    /// Files with different (or unknown) ids.
    Mixed,
}

impl Shared {
    fn of(id: u32) -> Shared {
        if id == ID_UNKNOWN {
            Shared::Mixed
        } else {
            Shared::One(id)
        }
    }

    fn merge(self, other: Shared) -> Shared {
        match (self, other) {
            (Shared::Nobody, x) | (x, Shared::Nobody) => x,
            (Shared::One(a), Shared::One(b)) if a == b => Shared::One(a),
            _ => Shared::Mixed,
        }
    }

    fn id(self) -> u32 {
        match self {
            Shared::One(id) => id,
            Shared::Nobody | Shared::Mixed => ID_UNKNOWN,
        }
    }
}

/// What the files below a directory grant, gathered bottom-up.
#[derive(Debug, Clone, Copy)]
struct Below {
    read_bits: u32,
    files: bool,
    uid: Shared,
    gid: Shared,
}

impl Layout {
    /// Gives every directory the mode and owner derived from the files below it (module
    /// docs). Children come after their parent in breadth-first order: one reverse pass.
    fn derive_dir_perms(&mut self) {
        let nodes = &mut self.data.nodes;
        let mut below = vec![
            Below {
                read_bits: 0,
                files: false,
                uid: Shared::Nobody,
                gid: Shared::Nobody,
            };
            nodes.len()
        ];
        for i in (0..nodes.len()).rev() {
            let node = &mut nodes[i];
            let own = if node.kind == KIND_FILE {
                let read_bits = match node.mode {
                    MODE_UNKNOWN => 0o444,
                    mode => mode & 0o444,
                };
                Below {
                    read_bits,
                    files: true,
                    uid: Shared::of(node.uid),
                    gid: Shared::of(node.gid),
                }
            } else {
                let b = below[i];
                node.mode = if b.files {
                    b.read_bits | (b.read_bits >> 2)
                } else {
                    MODE_UNKNOWN
                };
                node.uid = b.uid.id();
                node.gid = b.gid.id();
                b
            };
            if i == 0 {
                break;
            }
            let parent = &mut below[node.parent as usize];
            parent.read_bits |= own.read_bits;
            parent.files |= own.files;
            parent.uid = parent.uid.merge(own.uid);
            parent.gid = parent.gid.merge(own.gid);
        }
    }
}

/// A file's content version, from what the scan saw of its source (never 0).
pub(crate) fn content_generation(scan: &crate::meta::ScanState) -> u64 {
    let mut bytes = [0u8; 32];
    bytes[0..8].copy_from_slice(&scan.size.to_le_bytes());
    bytes[8..16].copy_from_slice(&scan.mtime_ns.to_le_bytes());
    bytes[16..24].copy_from_slice(&scan.ino.to_le_bytes());
    bytes[24..32].copy_from_slice(&scan.ctime_ns.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes) | 1
}

fn empty_node() -> NodeData {
    NodeData {
        ino: 0,
        size: 0,
        mtime_ns: 0,
        track_id: 0,
        generation: 0,
        name_off: 0,
        path_off: 0,
        name_len: 0,
        path_len: 0,
        parent: 0,
        first_child: 0,
        child_count: 0,
        subdirs: 0,
        origin: 0,
        kind: 0,
        mode: MODE_UNKNOWN,
        uid: ID_UNKNOWN,
        gid: ID_UNKNOWN,
    }
}

fn push_blob(blob: &mut Vec<u8>, bytes: &[u8]) -> (u64, u32) {
    let off = blob.len() as u64;
    blob.extend_from_slice(bytes);
    (off, bytes.len() as u32)
}
