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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rkyv::{Archive, Serialize};

use crate::meta::TrackRecord;
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
    /// Other copies of tracks shown once (the same audio in another place), sorted by the
    /// shown track's id, then by preference. Only a base snapshot has them: a delta never
    /// touches a track with copies (such a change is published as a new base).
    pub alternates: Vec<Alternate>,
}

/// Another copy of a shown track: where it is, and whether it holds the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize)]
pub struct Alternate {
    /// Catalog id of the track shown.
    pub shown: u64,
    /// Catalog id of this copy.
    pub track_id: u64,
    /// The copy's size.
    pub size: u64,
    /// The copy's modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Offset of its source path in [`TreeData::paths`].
    pub path_off: u64,
    /// Length of its source path.
    pub path_len: u32,
    /// Its origin.
    pub origin: u32,
    /// 1 when its bytes are the shown track's (same file identity): a read can move to it
    /// at the same offset. 0 for a copy with other tags.
    pub same_bytes: u32,
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

/// A directory the builder has seen (index 0: the root, nameless).
struct PendingDir {
    /// Index of the parent pending directory (the root is its own parent).
    parent: u32,
    name_off: u64,
    name_len: u32,
}

/// Collects rendered tracks and lays them out as a [`TreeData`].
///
/// Memory: a file is held as the [`NodeData`] it becomes (its `parent` the pending
/// directory's index until the layout), its name and source path appended to two byte
/// blobs that the tree keeps; a directory is its parent and name, found by a hash of
/// (parent, name). The layout sorts indices, moves the nodes into breadth-first order in
/// place and appends no copy of them, so building a tree of N tracks peaks at about the
/// size of the tree itself plus 8 bytes per node.
pub struct TreeBuilder {
    template: String,
    catalog_version: u64,
    origins: Vec<Vec<u8>>,
    dirs: Vec<PendingDir>,
    /// (parent pending directory, xxh3-128 of the name) -> pending directory.
    dir_index: HashMap<(u32, u128), u32>,
    files: Vec<NodeData>,
    names: Vec<u8>,
    paths: Vec<u8>,
    albums: Vec<AlbumCount>,
    alternates: Vec<Alternate>,
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
            dirs: vec![PendingDir {
                parent: 0,
                name_off: 0,
                name_len: 0,
            }],
            dir_index: HashMap::new(),
            files: Vec::new(),
            names: Vec::new(),
            paths: Vec::new(),
            albums: Vec::new(),
            alternates: Vec::new(),
        }
    }

    /// Records `copy` as another copy of the shown track `shown` (`same_bytes` when the two
    /// files are byte for byte the same). Copies are kept in the order added, which is
    /// the order they are preferred in.
    pub fn add_alternate(&mut self, shown: u64, copy: &TrackRecord, same_bytes: bool) {
        let (path_off, path_len) = push_blob(&mut self.paths, &copy.rel_path);
        self.alternates.push(Alternate {
            shown,
            track_id: copy.id.0,
            size: copy.scan.size,
            mtime_ns: copy.scan.mtime_ns,
            path_off,
            path_len,
            origin: copy.origin.0,
            same_bytes: u32::from(same_bytes),
        });
    }

    /// Records the album counts the tracks were rendered with.
    pub fn set_albums(&mut self, albums: &AlbumFormats) {
        self.albums = album_table(albums);
    }

    /// Records the catalog change counter the tree is built from.
    pub fn set_catalog_version(&mut self, version: u64) {
        self.catalog_version = version;
    }

    /// Makes room for `tracks` more tracks whose source paths total `path_bytes`, so that
    /// the node array and the path blob are allocated once instead of regrown (a regrowth
    /// holds the old and the new copy at once). Room for directory nodes (half as many
    /// again) is reserved too; memory reserved and never written is not resident.
    pub fn reserve(&mut self, tracks: usize, path_bytes: usize) {
        self.files.reserve_exact(tracks.saturating_add(tracks / 2));
        self.paths.reserve_exact(path_bytes);
    }

    /// Adds a track under its rendered path (`components`: sanitised, the last one the file
    /// name). A track with no components is placed at the root under its file stem.
    pub fn add(&mut self, track: &TrackRecord, components: &[String]) {
        let stem;
        let (file_name, dir_parts) = match components.split_last() {
            Some((last, rest)) => (last.as_str(), rest),
            None => {
                stem = track.file_stem();
                (stem.as_str(), &[][..])
            }
        };
        let mut dir = 0u32;
        for part in dir_parts {
            dir = self.subdir(dir, part);
        }
        let (name_off, name_len) = push_blob(&mut self.names, file_name.as_bytes());
        let (path_off, path_len) = push_blob(&mut self.paths, &track.rel_path);
        let (mode, uid, gid) = match track.scan.perm {
            Some(p) => (p.mode & 0o7777, p.uid, p.gid),
            None => (MODE_UNKNOWN, ID_UNKNOWN, ID_UNKNOWN),
        };
        self.files.push(NodeData {
            ino: track.id.0 + FILE_INO_BASE,
            size: track.scan.size,
            mtime_ns: track.scan.mtime_ns,
            track_id: track.id.0,
            generation: content_generation(&track.scan),
            name_off,
            name_len,
            path_off,
            path_len,
            parent: dir,
            origin: track.origin.0,
            kind: KIND_FILE,
            mode,
            uid,
            gid,
            ..empty_node()
        });
    }

    /// The pending directory `name` under `parent`, created when new.
    fn subdir(&mut self, parent: u32, name: &str) -> u32 {
        let key = (parent, xxhash_rust::xxh3::xxh3_128(name.as_bytes()));
        if let Some(&d) = self.dir_index.get(&key) {
            return d;
        }
        let d = self.dirs.len() as u32;
        let (name_off, name_len) = push_blob(&mut self.names, name.as_bytes());
        self.dirs.push(PendingDir {
            parent,
            name_off,
            name_len,
        });
        self.dir_index.insert(key, d);
        d
    }

    /// Resolves name clashes and lays the tree out breadth-first.
    pub fn build(mut self) -> TreeData {
        self.dir_index = HashMap::new();
        let subdirs = self.children_dirs();
        let mut files = self.files_by_dir();
        for d in 0..self.dirs.len() {
            let (lo, hi) = (files.start[d] as usize, files.start[d + 1] as usize);
            let (slo, shi) = (subdirs.start[d] as usize, subdirs.start[d + 1] as usize);
            self.resolve_clashes(&mut files.order[lo..hi], &subdirs.order[slo..shi]);
        }
        let layout = self.breadth_first(&subdirs, &files);
        drop((subdirs, files));
        self.assemble(layout)
    }

    fn file_name(&self, f: u32) -> &[u8] {
        let n = &self.files[f as usize];
        &self.names[n.name_off as usize..][..n.name_len as usize]
    }

    fn dir_name(&self, d: u32) -> &[u8] {
        let n = &self.dirs[d as usize];
        &self.names[n.name_off as usize..][..n.name_len as usize]
    }

    /// Subdirectories grouped by parent, each group sorted by name.
    fn children_dirs(&self) -> Groups {
        let mut order: Vec<u32> = (1..self.dirs.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (pa, pb) = (self.dirs[a as usize].parent, self.dirs[b as usize].parent);
            pa.cmp(&pb)
                .then_with(|| self.dir_name(a).cmp(self.dir_name(b)))
        });
        Groups::new(order, self.dirs.len(), |d| self.dirs[d as usize].parent)
    }

    /// Files grouped by directory, each group sorted by name, then by track id.
    fn files_by_dir(&self) -> Groups {
        let mut order: Vec<u32> = (0..self.files.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (fa, fb) = (&self.files[a as usize], &self.files[b as usize]);
            fa.parent
                .cmp(&fb.parent)
                .then_with(|| self.file_name(a).cmp(self.file_name(b)))
                .then(fa.track_id.cmp(&fb.track_id))
        });
        Groups::new(order, self.dirs.len(), |f| self.files[f as usize].parent)
    }

    /// Makes every name in a directory unique: `files` (sorted by name, then track id) and
    /// `subdirs` (sorted by name) of one directory. Files whose names collide with each
    /// other or with a subdirectory get ` (2)`, ` (3)`, ... before the extension, in
    /// track-id order, so the oldest track keeps the plain name and a rebuild gives the same
    /// names. Leaves `files` sorted by (the new) name.
    fn resolve_clashes(&mut self, files: &mut [u32], subdirs: &[u32]) {
        if !self.has_clash(files, subdirs) {
            return;
        }
        let mut taken: HashSet<Vec<u8>> =
            subdirs.iter().map(|&d| self.dir_name(d).to_vec()).collect();
        let mut clashing = Vec::new();
        for &f in files.iter() {
            if !taken.insert(self.file_name(f).to_vec()) {
                clashing.push(f);
            }
        }
        for f in clashing {
            let base = String::from_utf8_lossy(self.file_name(f)).into_owned();
            let mut n = 2u64;
            loop {
                let candidate = with_suffix(&base, n);
                if taken.insert(candidate.clone().into_bytes()) {
                    let (off, len) = push_blob(&mut self.names, candidate.as_bytes());
                    let node = &mut self.files[f as usize];
                    (node.name_off, node.name_len) = (off, len);
                    break;
                }
                n += 1;
            }
        }
        files.sort_unstable_by(|&a, &b| self.file_name(a).cmp(self.file_name(b)));
    }

    /// Whether two files of a directory share a name, or a file is named like a
    /// subdirectory (both lists sorted by name).
    fn has_clash(&self, files: &[u32], subdirs: &[u32]) -> bool {
        if files
            .windows(2)
            .any(|w| self.file_name(w[0]) == self.file_name(w[1]))
        {
            return true;
        }
        let (mut i, mut j) = (0, 0);
        while i < files.len() && j < subdirs.len() {
            match self.file_name(files[i]).cmp(self.dir_name(subdirs[j])) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The final node order: each directory's children contiguous and sorted by name,
    /// directories expanded in the order they are placed (breadth-first).
    fn breadth_first(&self, subdirs: &Groups, files: &Groups) -> Layout {
        let n_files = self.files.len() as u32;
        let total = self.files.len() + self.dirs.len();
        let mut source: Vec<u32> = Vec::with_capacity(total);
        let mut dir_node = vec![0u32; self.dirs.len()];
        let mut spans = vec![(0u32, 0u32, 0u32); self.dirs.len()];
        source.push(n_files);
        let mut head = 0;
        while head < source.len() {
            let Some(d) = source[head].checked_sub(n_files) else {
                head += 1;
                continue;
            };
            let d = d as usize;
            let first = source.len() as u32;
            let ds = &subdirs.order[subdirs.start[d] as usize..subdirs.start[d + 1] as usize];
            let fs = &files.order[files.start[d] as usize..files.start[d + 1] as usize];
            let (mut i, mut j) = (0, 0);
            while i < ds.len() || j < fs.len() {
                let dir_first =
                    j == fs.len() || (i < ds.len() && self.dir_name(ds[i]) < self.file_name(fs[j]));
                if dir_first {
                    dir_node[ds[i] as usize] = source.len() as u32;
                    source.push(n_files + ds[i]);
                    i += 1;
                } else {
                    source.push(fs[j]);
                    j += 1;
                }
            }
            spans[d] = (first, source.len() as u32 - first, ds.len() as u32);
            head += 1;
        }
        Layout {
            source,
            dir_node,
            spans,
        }
    }

    /// Moves the nodes into their final order and fills in what the layout decides.
    fn assemble(self, layout: Layout) -> TreeData {
        let TreeBuilder {
            template,
            catalog_version,
            origins,
            dirs,
            mut files,
            names,
            paths,
            albums,
            mut alternates,
            ..
        } = self;
        // Stable: copies of one track stay in the order they are preferred in.
        alternates.sort_by_key(|a| a.shown);
        let mut nodes = std::mem::take(&mut files);
        nodes.reserve_exact(dirs.len());
        for (d, dir) in dirs.iter().enumerate() {
            let (first_child, child_count, subdirs) = layout.spans[d];
            nodes.push(NodeData {
                ino: if d == 0 { ROOT_INO } else { 0 },
                name_off: dir.name_off,
                name_len: dir.name_len,
                parent: dir.parent,
                first_child,
                child_count,
                subdirs,
                kind: KIND_DIR,
                ..empty_node()
            });
        }
        drop(dirs);
        permute(&mut nodes, &layout.source);
        drop(layout.source);
        for node in &mut nodes {
            node.parent = layout.dir_node[node.parent as usize];
        }
        let mut data = TreeData {
            template,
            catalog_version,
            origins,
            track_count: 0,
            total_size: 0,
            nodes,
            by_ino: Vec::new(),
            names,
            paths,
            albums,
            alternates,
        };
        assign_dir_inos(&mut data);
        for n in data.nodes.iter().filter(|n| n.kind == KIND_FILE) {
            data.track_count += 1;
            data.total_size += n.size;
        }
        data.by_ino = data
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| InoEntry {
                ino: n.ino,
                node: i as u32,
            })
            .collect();
        propagate_dir_mtimes(&mut data.nodes);
        derive_dir_perms(&mut data.nodes);
        data.by_ino.sort_unstable_by_key(|e| e.ino);
        data
    }
}

/// Items (directories or files) grouped by their pending directory: the items of directory
/// `d` are `order[start[d]..start[d + 1]]`.
struct Groups {
    order: Vec<u32>,
    start: Vec<u32>,
}

impl Groups {
    /// `order` sorted by parent (`parent_of` an item) among `dirs` directories.
    fn new(order: Vec<u32>, dirs: usize, parent_of: impl Fn(u32) -> u32) -> Groups {
        let mut start = vec![0u32; dirs + 1];
        for &item in &order {
            start[parent_of(item) as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        Groups { order, start }
    }
}

/// The result of [`TreeBuilder::breadth_first`].
struct Layout {
    /// Final node index -> what goes there: a file index, or the number of files plus a
    /// pending directory index.
    source: Vec<u32>,
    /// Pending directory -> its final node index.
    dir_node: Vec<u32>,
    /// Pending directory -> (first child, child count, subdirectory count).
    spans: Vec<(u32, u32, u32)>,
}

/// Reorders `nodes` in place so that the node at `i` is the one that was at `source[i]`
/// (`source` a permutation), following each cycle once.
fn permute(nodes: &mut [NodeData], source: &[u32]) {
    let mut done = vec![0u64; source.len().div_ceil(64)];
    for start in 0..source.len() {
        if done[start / 64] & (1 << (start % 64)) != 0 {
            continue;
        }
        let held = nodes[start].clone();
        let mut i = start;
        loop {
            done[i / 64] |= 1 << (i % 64);
            let from = source[i] as usize;
            if from == start {
                nodes[i] = held;
                break;
            }
            nodes[i] = nodes[from].clone();
            i = from;
        }
    }
}

/// Gives every directory but the root its inode: the hash of its virtual path, probed past
/// collisions. Directories are visited in breadth-first, name-sorted order, so probing is
/// deterministic.
fn assign_dir_inos(data: &mut TreeData) {
    let mut taken: HashSet<u64> = HashSet::from([ROOT_INO]);
    let mut vpath: Vec<u8> = Vec::new();
    let mut chain: Vec<u32> = Vec::new();
    for i in 1..data.nodes.len() {
        if data.nodes[i].kind != KIND_DIR {
            continue;
        }
        chain.clear();
        let mut at = i as u32;
        while at != 0 {
            chain.push(at);
            at = data.nodes[at as usize].parent;
        }
        vpath.clear();
        for &n in chain.iter().rev() {
            let node = &data.nodes[n as usize];
            vpath.push(b'/');
            vpath
                .extend_from_slice(&data.names[node.name_off as usize..][..node.name_len as usize]);
        }
        let mut ino = xxhash_rust::xxh3::xxh3_64(&vpath) | DIR_INO_BIT;
        while !taken.insert(ino) {
            ino = (ino.wrapping_add(1)) | DIR_INO_BIT;
        }
        data.nodes[i].ino = ino;
    }
}

/// A directory's mtime is its newest descendant's, so `ls -lt` of artists is useful.
/// Children always come after their parent in breadth-first order: one reverse pass.
fn propagate_dir_mtimes(nodes: &mut [NodeData]) {
    for i in (1..nodes.len()).rev() {
        let (m, p) = (nodes[i].mtime_ns, nodes[i].parent as usize);
        if nodes[p].mtime_ns < m {
            nodes[p].mtime_ns = m;
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

/// Gives every directory the mode and owner derived from the files below it (module
/// docs). Children come after their parent in breadth-first order: one reverse pass.
fn derive_dir_perms(nodes: &mut [NodeData]) {
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

/// A file's content version, from what the scan saw of its source (never 0): its FUSE
/// generation, and what tells an opened source's version from the one the tree shows.
pub fn content_generation(scan: &crate::meta::ScanState) -> u64 {
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
