//! The delta segment: a small change published without rewriting the base snapshot.
//!
//! A 1M-track base snapshot takes seconds to render and write; a tag edit changes a
//! handful of nodes. So a small change is published as a *delta*: a second, small rkyv
//! archive beside the base (`<snapshot>.delta`) holding the records of every node that
//! differs from the base (changed, added) and a tombstone for every base node that is
//! gone. Lookups go to the delta first, then to the base ([`Snapshot::node`]): still two
//! binary searches at most, no allocation, no lock. Each publish rewrites the whole delta
//! (it is small), atomically (temp file, fsync, rename); when it has grown past a share of
//! the base, the publisher renders a new base instead, which removes the delta.
//!
//! Layout (a [`DeltaData`], same node records as the base):
//! - a directory whose set of children changed lists *all* its children in the delta, as
//!   one contiguous name-sorted block (its `first_child` carries [`IN_DELTA`]); children
//!   copied there unchanged are plain copies of their base records;
//! - a directory whose children did not change (e.g. an ancestor whose newest mtime
//!   moved) keeps pointing at its base listing; a child of it that changed is found by
//!   inode in the delta when listed (the base listing never holds a removed child, since
//!   removing one changes the set);
//! - a record's `parent` is an index into the delta when it carries [`IN_DELTA`], else
//!   into the base;
//! - `by_ino` maps every inode the delta knows to its record, or to [`REMOVED`];
//! - `albums` holds the album format counts that changed (all zero: the album is gone).
//!
//! The delta names its base by generation and body checksum: a delta left beside a newer
//! base (a crash between the base's rename and the delta's removal) is ignored. Kill -9 at
//! any point therefore serves the last good state. The delta is small, so its body
//! checksum is verified on every open.
//!
//! [`DeltaBuilder`] computes a new delta from the served snapshot and a list of file
//! removals and additions, with the same results a full render would give: the same
//! inodes (directories by virtual path hash), the same names, the same derived directory
//! attributes. What it cannot reproduce exactly, it refuses ([`NeedsFull`]) and the caller
//! renders a new base: a name clash (a full render settles clashes across the whole
//! directory in track-id order) and an album whose folder name depends on its formats
//! changing that set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;
use rkyv::{Archive, Serialize};

use super::{
    check_header, delta_path, encode_header, find_ino, le_u64, remove_stale_temps, sync_dir,
    temp_path, Node, Snapshot, SnapshotError, HEADER_LEN,
};
use crate::meta::{Format, TrackRecord};
use crate::template::{album_key, is_mixed, AlbumFormats, FormatCounts, Template};
use crate::tree::{
    content_generation, AlbumCount, ArchivedTreeData, InoEntry, NodeData, TreeData, DIR_INO_BIT,
    FILE_INO_BASE, ID_UNKNOWN, KIND_DIR, KIND_FILE, MODE_UNKNOWN, ROOT_INO,
};

const DELTA_MAGIC: &[u8; 8] = b"MFSDELT\0";

/// Flag on a delta record's `first_child` / `parent`: the index is into the delta's nodes.
pub const IN_DELTA: u32 = 1 << 31;
/// `by_ino` node index of an inode the delta removed.
pub const REMOVED: u32 = u32::MAX;

/// The archived delta segment.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize)]
pub struct DeltaData {
    /// Generation of the base this delta applies to.
    pub base_generation: u64,
    /// Body checksum of that base.
    pub base_checksum: u64,
    /// The changed records (see the module docs); `catalog_version`, `track_count` and
    /// `total_size` are the whole tree's; `template` and `origins` are the base's.
    pub tree: TreeData,
}

/// Opens the delta beside the snapshot at `path` when it applies to the base
/// (`base_generation`, `base_checksum`); returns its map and generation. A missing delta
/// is normal; a stale one is ignored; a damaged one is reported and ignored (the caller
/// serves the base, whose older catalog version makes the daemon republish).
pub(super) fn open(path: &Path, base_generation: u64, base_checksum: u64) -> Option<(Mmap, u64)> {
    let dpath = delta_path(path);
    let file = match File::open(&dpath) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "cannot open {}: {e}; serving the base snapshot",
                dpath.display()
            );
            return None;
        }
    };
    // SAFETY: deltas are only ever replaced by rename, never written in place.
    let map = match unsafe { Mmap::map(&file) } {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(
                "cannot map {}: {e}; serving the base snapshot",
                dpath.display()
            );
            return None;
        }
    };
    let problem = match check_header(&map, DELTA_MAGIC) {
        Err(_) => Some("bad header".to_string()),
        Ok(_) if xxhash_rust::xxh3::xxh3_64(&map[HEADER_LEN..]) != le_u64(&map, 32) => {
            Some("body checksum mismatch".to_string())
        }
        Ok(_) => rkyv::access::<ArchivedDeltaData, rkyv::rancor::Error>(&map[HEADER_LEN..])
            .err()
            .map(|e| format!("archive does not validate: {e}")),
    };
    if let Some(why) = problem {
        tracing::warn!(
            "delta {} is corrupt ({why}); serving the base snapshot",
            dpath.display()
        );
        return None;
    }
    let generation = le_u64(&map, 16);
    let data = tree_data(&map);
    if data.base_generation.to_native() != base_generation
        || data.base_checksum.to_native() != base_checksum
    {
        tracing::debug!("delta {} belongs to another base: ignored", dpath.display());
        return None;
    }
    Some((map, generation))
}

fn tree_data(map: &Mmap) -> &ArchivedDeltaData {
    // SAFETY: only called on maps `open` validated with `rkyv::access`; maps are immutable.
    unsafe { rkyv::access_unchecked::<ArchivedDeltaData>(&map[HEADER_LEN..]) }
}

/// The records of a delta `open` returned.
pub(super) fn tree_of(map: &Mmap) -> &ArchivedTreeData {
    &tree_data(map).tree
}

/// Publishes `delta` as generation `generation` beside the snapshot at `path`, atomically.
pub fn write(path: &Path, delta: &DeltaData, generation: u64) -> Result<(), SnapshotError> {
    let dpath = delta_path(path);
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(delta)
        .map_err(|e| SnapshotError::Serialise(e.to_string()))?;
    let header = encode_header(
        DELTA_MAGIC,
        generation,
        body.len() as u64,
        xxhash_rust::xxh3::xxh3_64(&body),
    );
    remove_stale_temps(&dpath);
    let tmp = temp_path(&dpath);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&header)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, &dpath)?;
        sync_dir(&dpath)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        SnapshotError::Io {
            path: dpath.clone(),
            source,
        }
    })
}

/// Why [`DeltaBuilder`] cannot express a change exactly: render a new base instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeedsFull {
    /// A name in the directory clashes (or clashed) with another one.
    #[error("name clash at {0}")]
    Clash(String),
    /// The tree does not hold what the change expects (e.g. a file where a folder goes).
    #[error("tree does not match the change: {0}")]
    Mismatch(String),
    /// An album's folder name changes with its set of formats.
    #[error("the formats of an album changed")]
    AlbumFormats,
}

/// Why a directory's attributes must be derived again.
#[derive(Debug, Clone)]
enum Dirt {
    /// From all its children (one went away, or changed in a way a join cannot express).
    Full,
    /// By joining these children (inode, newly linked) into what it shows now: each only
    /// gained (a newer mtime, more read bits, an owner no longer shared), so a newer file
    /// deep in the tree costs O(depth), not O(width) at every level up to the root.
    Join(Vec<(u64, bool)>),
}

/// How a directory's children are held while building.
#[derive(Debug, Clone)]
enum Kids {
    /// Unchanged: the base's listing (`first_child`, `child_count` of the base record).
    Base(u32, u32),
    /// Changed: every child, name to inode.
    Own(BTreeMap<Vec<u8>, u64>),
}

/// A node being built: an owned copy of a record.
#[derive(Debug, Clone)]
struct MNode {
    data: NodeData,
    parent: u64,
    name: Vec<u8>,
    rel_path: Vec<u8>,
    kids: Kids,
}

/// Computes the delta of a change against a served snapshot (module docs).
pub struct DeltaBuilder<'s> {
    snap: &'s Snapshot,
    nodes: HashMap<u64, MNode>,
    removed: HashSet<u64>,
    albums: HashMap<u128, FormatCounts>,
    dirty: HashMap<u64, Dirt>,
    track_count: u64,
    total_size: u64,
}

impl<'s> DeltaBuilder<'s> {
    /// Starts from what `snap` serves (its delta included).
    pub fn new(snap: &'s Snapshot) -> DeltaBuilder<'s> {
        let mut b = DeltaBuilder {
            snap,
            nodes: HashMap::new(),
            removed: HashSet::new(),
            albums: HashMap::new(),
            dirty: HashMap::new(),
            track_count: snap.track_count(),
            total_size: snap.total_size(),
        };
        if let Some(delta) = snap.delta() {
            for e in delta.by_ino.iter() {
                let ino = e.ino.to_native();
                match snap.node(ino) {
                    Some(node) => {
                        let m = b.copy(&node);
                        b.nodes.insert(ino, m);
                    }
                    None => {
                        b.removed.insert(ino);
                    }
                }
            }
            for a in delta.albums.iter() {
                b.albums
                    .insert(a.key.to_native(), a.counts.map(|n| n.to_native()));
            }
        }
        b
    }

    /// An owned copy of a served node (a changed listing read from the delta block).
    fn copy(&self, node: &Node<'_>) -> MNode {
        let raw = node.raw;
        let kids = if !node.is_dir() {
            Kids::Base(0, 0)
        } else if node.in_delta() && raw.first_child.to_native() & IN_DELTA != 0 {
            let (layer, kids) = node.kids();
            Kids::Own(
                kids.iter()
                    .map(|k| (super::name_in(layer, k).to_vec(), k.ino.to_native()))
                    .collect(),
            )
        } else {
            Kids::Base(raw.first_child.to_native(), raw.child_count.to_native())
        };
        MNode {
            data: NodeData {
                ino: raw.ino.to_native(),
                size: raw.size.to_native(),
                mtime_ns: raw.mtime_ns.to_native(),
                track_id: raw.track_id.to_native(),
                generation: raw.generation.to_native(),
                name_off: 0,
                path_off: 0,
                name_len: 0,
                path_len: 0,
                parent: 0,
                first_child: 0,
                child_count: raw.child_count.to_native(),
                subdirs: raw.subdirs.to_native(),
                origin: raw.origin.to_native(),
                kind: raw.kind.to_native(),
                mode: raw.mode.to_native(),
                uid: raw.uid.to_native(),
                gid: raw.gid.to_native(),
            },
            parent: node.parent_ino(),
            name: node.name().to_vec(),
            rel_path: node.file().map(|f| f.rel_path.to_vec()).unwrap_or_default(),
            kids,
        }
    }

    /// The current state of `ino`: built, else served; `None` when removed or unknown.
    fn get(&self, ino: u64) -> Option<MNode> {
        if self.removed.contains(&ino) {
            return None;
        }
        match self.nodes.get(&ino) {
            Some(m) => Some(m.clone()),
            None => self.snap.node(ino).map(|n| self.copy(&n)),
        }
    }

    /// The current attributes and parent of `ino`, without its name or listing.
    fn data(&self, ino: u64) -> Option<(NodeData, u64)> {
        if self.removed.contains(&ino) {
            return None;
        }
        if let Some(m) = self.nodes.get(&ino) {
            return Some((m.data.clone(), m.parent));
        }
        let n = self.snap.node(ino)?;
        let raw = n.raw;
        Some((
            NodeData {
                ino,
                size: raw.size.to_native(),
                mtime_ns: raw.mtime_ns.to_native(),
                kind: raw.kind.to_native(),
                mode: raw.mode.to_native(),
                uid: raw.uid.to_native(),
                gid: raw.gid.to_native(),
                child_count: raw.child_count.to_native(),
                subdirs: raw.subdirs.to_native(),
                ..blank(ino)
            },
            n.parent_ino(),
        ))
    }

    fn exists(&self, ino: u64) -> bool {
        !self.removed.contains(&ino)
            && (self.nodes.contains_key(&ino) || self.snap.node(ino).is_some())
    }

    /// `ino`'s record, taken into the delta (with its listing when `listing`).
    fn take(&mut self, ino: u64, listing: bool) -> Result<&mut MNode, NeedsFull> {
        if !self.nodes.contains_key(&ino) {
            let m = self
                .get(ino)
                .ok_or_else(|| NeedsFull::Mismatch(format!("inode {ino} is not in the tree")))?;
            self.nodes.insert(ino, m);
        }
        let snap = self.snap;
        let m = self
            .nodes
            .get_mut(&ino)
            .ok_or(NeedsFull::Mismatch(String::new()))?;
        if listing {
            if let Kids::Base(..) = m.kids {
                let own = snap
                    .children(ino, 0)
                    .map(|k| (k.name().to_vec(), k.ino()))
                    .collect();
                m.kids = Kids::Own(own);
            }
        }
        Ok(m)
    }

    /// The inode of `dir`'s child `name`, if any.
    fn child(&self, dir: u64, name: &[u8]) -> Option<u64> {
        match self.nodes.get(&dir).map(|m| &m.kids) {
            Some(Kids::Own(kids)) => kids.get(name).copied(),
            _ => self.snap.lookup(dir, name).map(|n| n.ino()),
        }
    }

    /// Fails when a name of `dir` other than `except` could clash with `name` in a full
    /// render (same name once clash suffixes are stripped). Only files are ever renamed,
    /// so two folders never clash.
    fn check_clash(
        &mut self,
        dir: u64,
        name: &[u8],
        except: u64,
        is_file: bool,
    ) -> Result<(), NeedsFull> {
        let key = clash_key(name);
        let Kids::Own(kids) = &self.take(dir, true)?.kids else {
            return Ok(());
        };
        let same: Vec<u64> = kids
            .iter()
            .filter(|(n, &ino)| ino != except && clash_key(n) == key)
            .map(|(_, &ino)| ino)
            .collect();
        let clash = same
            .into_iter()
            .any(|ino| is_file || self.data(ino).is_some_and(|(d, _)| d.kind == KIND_FILE));
        if clash {
            return Err(NeedsFull::Clash(String::from_utf8_lossy(name).into_owned()));
        }
        Ok(())
    }

    /// Removes the file of track `id` from the tree, and the folders it leaves empty.
    /// Removing a track the tree does not show is a no-op.
    pub fn remove_track(&mut self, id: u64) -> Result<(), NeedsFull> {
        let ino = id + FILE_INO_BASE;
        let Some(node) = self.get(ino) else {
            return Ok(());
        };
        if node.data.kind != KIND_FILE {
            return Err(NeedsFull::Mismatch(format!("inode {ino} is not a file")));
        }
        self.unlink(node.parent, &node.name, ino)?;
        self.track_count = self.track_count.saturating_sub(1);
        self.total_size = self.total_size.saturating_sub(node.data.size);
        Ok(())
    }

    /// Takes `name` (inode `ino`) out of `dir`; an emptied folder goes too.
    fn unlink(&mut self, dir: u64, name: &[u8], ino: u64) -> Result<(), NeedsFull> {
        let is_file = self.data(ino).is_some_and(|(d, _)| d.kind == KIND_FILE);
        self.check_clash(dir, name, ino, is_file)?;
        let Kids::Own(kids) = &mut self.take(dir, true)?.kids else {
            return Err(NeedsFull::Mismatch("listing".into()));
        };
        kids.remove(name);
        let emptied = kids.is_empty();
        self.nodes.remove(&ino);
        self.removed.insert(ino);
        self.dirty.remove(&ino);
        self.dirty.insert(dir, Dirt::Full);
        if emptied && dir != ROOT_INO {
            let d = self.get(dir).ok_or(NeedsFull::Mismatch("parent".into()))?;
            self.unlink(d.parent, &d.name, dir)?;
            self.dirty.remove(&dir);
        }
        Ok(())
    }

    /// Adds track `track` at its rendered path `components` (the last one its file name),
    /// creating folders as needed.
    pub fn add_track(
        &mut self,
        track: &TrackRecord,
        components: &[String],
    ) -> Result<(), NeedsFull> {
        let (file_name, dir_parts) = match components.split_last() {
            Some((last, rest)) => (last.clone(), rest),
            None => (track.file_stem(), &[][..]),
        };
        let mut dir = ROOT_INO;
        let mut vpath = String::new();
        for part in dir_parts {
            vpath.push('/');
            vpath.push_str(part);
            dir = match self.child(dir, part.as_bytes()) {
                Some(ino) if self.data(ino).is_some_and(|(d, _)| d.kind == KIND_DIR) => ino,
                Some(_) => return Err(NeedsFull::Clash(vpath)),
                None => self.mkdir(dir, part, &vpath)?,
            };
        }
        let ino = track.id.0 + FILE_INO_BASE;
        if self.exists(ino) {
            return Err(NeedsFull::Mismatch(format!(
                "track {} shown twice",
                track.id.0
            )));
        }
        self.check_clash(dir, file_name.as_bytes(), ino, true)?;
        let (mode, uid, gid) = match track.scan.perm {
            Some(p) => (p.mode & 0o7777, p.uid, p.gid),
            None => (MODE_UNKNOWN, ID_UNKNOWN, ID_UNKNOWN),
        };
        let node = MNode {
            data: NodeData {
                ino,
                size: track.scan.size,
                mtime_ns: track.scan.mtime_ns,
                track_id: track.id.0,
                generation: content_generation(&track.scan),
                origin: track.origin.0,
                kind: KIND_FILE,
                mode,
                uid,
                gid,
                ..blank(ino)
            },
            parent: dir,
            name: file_name.clone().into_bytes(),
            rel_path: track.rel_path.clone(),
            kids: Kids::Base(0, 0),
        };
        self.link(dir, node)?;
        self.track_count += 1;
        self.total_size += track.scan.size;
        Ok(())
    }

    fn mkdir(&mut self, parent: u64, name: &str, vpath: &str) -> Result<u64, NeedsFull> {
        self.check_clash(parent, name.as_bytes(), 0, false)?;
        let mut ino = xxhash_rust::xxh3::xxh3_64(vpath.as_bytes()) | DIR_INO_BIT;
        while self.exists(ino) {
            ino = ino.wrapping_add(1) | DIR_INO_BIT;
        }
        let node = MNode {
            data: NodeData {
                kind: KIND_DIR,
                ..blank(ino)
            },
            parent,
            name: name.as_bytes().to_vec(),
            rel_path: Vec::new(),
            kids: Kids::Own(BTreeMap::new()),
        };
        self.link(parent, node)?;
        Ok(ino)
    }

    fn link(&mut self, dir: u64, node: MNode) -> Result<(), NeedsFull> {
        let ino = node.data.ino;
        let Kids::Own(kids) = &mut self.take(dir, true)?.kids else {
            return Err(NeedsFull::Mismatch("listing".into()));
        };
        kids.insert(node.name.clone(), ino);
        self.removed.remove(&ino);
        if node.data.kind == KIND_DIR {
            self.dirty.insert(ino, Dirt::Full);
        }
        self.nodes.insert(ino, node);
        self.dirty_join(dir, ino, true);
        Ok(())
    }

    /// Marks `dir` to join its child `kid` (`new`: just linked) when settling.
    fn dirty_join(&mut self, dir: u64, kid: u64, new: bool) {
        match self
            .dirty
            .entry(dir)
            .or_insert_with(|| Dirt::Join(Vec::new()))
        {
            Dirt::Full => {}
            Dirt::Join(kids) => kids.push((kid, new)),
        }
    }

    /// Moves album `key`'s counts by `delta` tracks of format index `format`, starting from
    /// what the snapshot recorded.
    pub fn count_album(&mut self, key: u128, format: usize, delta: i64) {
        let snap = self.snap;
        let counts = self
            .albums
            .entry(key)
            .or_insert_with(|| snap.album_counts(key).unwrap_or_default());
        if let Some(n) = counts.get_mut(format) {
            *n = (*n as i64 + delta).clamp(0, u32::MAX as i64) as u32;
        }
    }

    /// The counts of album `key` as changed so far.
    pub fn album(&self, key: u128) -> Option<FormatCounts> {
        match self.albums.get(&key) {
            Some(c) => Some(*c).filter(|c| c.iter().any(|&n| n > 0)),
            None => self.snap.album_counts(key),
        }
    }

    /// Records in the delta so far (a guide for when to render a new base instead).
    pub fn len(&self) -> usize {
        self.nodes.len() + self.removed.len()
    }

    /// Whether nothing changed yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.removed.is_empty()
    }

    /// Derives the attributes of every directory the change touched (bottom up), and
    /// lays the delta out.
    pub fn finish(mut self, catalog_version: u64) -> Result<DeltaData, NeedsFull> {
        self.settle_dirs()?;
        let (base_generation, base_checksum) = self.snap.base_id();
        let mut tree = TreeData {
            template: String::new(),
            catalog_version,
            origins: Vec::new(),
            track_count: self.track_count,
            total_size: self.total_size,
            nodes: Vec::new(),
            by_ino: Vec::new(),
            names: Vec::new(),
            paths: Vec::new(),
            albums: Vec::new(),
            alternates: Vec::new(),
        };
        self.lay_out(&mut tree)?;
        let mut albums: Vec<AlbumCount> = self
            .albums
            .iter()
            .map(|(&key, &counts)| AlbumCount { key, counts })
            .collect();
        albums.sort_unstable_by_key(|a| a.key);
        tree.albums = albums;
        Ok(DeltaData {
            base_generation,
            base_checksum,
            tree,
        })
    }

    /// Derives each dirty directory again, deepest first; one whose attributes changed
    /// dirties its parent (to join it when it only gained, else in full).
    fn settle_dirs(&mut self) -> Result<(), NeedsFull> {
        let mut queue: Vec<(usize, u64)> = Vec::new();
        let dirty: Vec<u64> = self.dirty.keys().copied().collect();
        for ino in dirty {
            if self.exists(ino) {
                queue.push((self.depth(ino), ino));
            } else {
                self.dirty.remove(&ino);
            }
        }
        while let Some(pos) = (0..queue.len()).max_by_key(|&i| queue[i].0) {
            let (_, ino) = queue.swap_remove(pos);
            let Some(dirt) = self.dirty.remove(&ino) else {
                continue;
            };
            let (old, parent) = self.data(ino).ok_or(NeedsFull::Mismatch("folder".into()))?;
            let derived = match dirt {
                Dirt::Join(kids) if old.mode != MODE_UNKNOWN && self.snap.node(ino).is_some() => {
                    self.join(&old, &kids)?
                }
                _ => self.derive(ino)?,
            };
            let m = self.take(ino, false)?;
            m.data.mtime_ns = derived.mtime_ns;
            m.data.mode = derived.mode;
            m.data.uid = derived.uid;
            m.data.gid = derived.gid;
            m.data.subdirs = derived.subdirs;
            m.data.child_count = derived.child_count;
            let before = (old.mtime_ns, old.mode, old.uid, old.gid);
            let after = (derived.mtime_ns, derived.mode, derived.uid, derived.gid);
            if before == after || ino == ROOT_INO {
                continue;
            }
            if !self.dirty.contains_key(&parent) {
                queue.push((self.depth(parent), parent));
            }
            if only_gained(&old, &derived) {
                self.dirty_join(parent, ino, false);
            } else {
                self.dirty.insert(parent, Dirt::Full);
            }
        }
        Ok(())
    }

    /// `dir`'s attributes (now `cur`) with `kids` joined in (see [`Dirt::Join`]).
    fn join(&self, cur: &NodeData, kids: &[(u64, bool)]) -> Result<NodeData, NeedsFull> {
        let mut out = cur.clone();
        let mut bits = cur.mode & 0o444;
        let (mut uid, mut gid) = (Shared::of(cur.uid), Shared::of(cur.gid));
        for &(ino, new) in kids {
            let (k, _) = self.data(ino).ok_or(NeedsFull::Mismatch("child".into()))?;
            out.mtime_ns = out.mtime_ns.max(k.mtime_ns);
            if new {
                out.child_count += 1;
                if k.kind == KIND_DIR {
                    out.subdirs += 1;
                }
            }
            bits |= match (k.kind, k.mode) {
                (KIND_DIR, MODE_UNKNOWN) => continue,
                (KIND_FILE, MODE_UNKNOWN) => 0o444,
                (_, mode) => mode & 0o444,
            };
            uid = uid.merge(Shared::of(k.uid));
            gid = gid.merge(Shared::of(k.gid));
        }
        out.mode = bits | (bits >> 2);
        out.uid = uid.id();
        out.gid = gid.id();
        Ok(out)
    }

    fn depth(&self, mut ino: u64) -> usize {
        let mut depth = 0;
        while ino != ROOT_INO && depth < 4096 {
            ino = self.data(ino).map_or(ROOT_INO, |(_, parent)| parent);
            depth += 1;
        }
        depth
    }

    /// A directory's attributes from its children, as a full render derives them
    /// (`crate::tree`): newest mtime, union of read bits, shared owner.
    fn derive(&self, dir: u64) -> Result<NodeData, NeedsFull> {
        let kid_inos: Vec<u64> = match self.nodes.get(&dir).map(|m| &m.kids) {
            Some(Kids::Own(kids)) => kids.values().copied().collect(),
            _ => self.snap.children(dir, 0).map(|k| k.ino()).collect(),
        };
        let mut out = NodeData {
            child_count: kid_inos.len() as u32,
            ..blank(dir)
        };
        let (mut bits, mut files) = (0u32, false);
        let (mut uid, mut gid) = (Shared::Nobody, Shared::Nobody);
        for ino in kid_inos {
            let (k, _) = self.data(ino).ok_or(NeedsFull::Mismatch("child".into()))?;
            out.mtime_ns = out.mtime_ns.max(k.mtime_ns);
            if k.kind == KIND_DIR {
                out.subdirs += 1;
            }
            let read = match (k.kind, k.mode) {
                (KIND_DIR, MODE_UNKNOWN) => continue,
                (KIND_FILE, MODE_UNKNOWN) => 0o444,
                (_, mode) => mode & 0o444,
            };
            bits |= read;
            files = true;
            uid = uid.merge(Shared::of(k.uid));
            gid = gid.merge(Shared::of(k.gid));
        }
        out.mode = if files {
            bits | (bits >> 2)
        } else {
            MODE_UNKNOWN
        };
        out.uid = uid.id();
        out.gid = gid.id();
        Ok(out)
    }

    /// Places every record: those whose parent keeps its base listing first, then each
    /// changed listing as a block after its directory, breadth first.
    fn lay_out(&self, tree: &mut TreeData) -> Result<(), NeedsFull> {
        let listed = |m: &MNode| matches!(m.kids, Kids::Own(_));
        let mut placed: HashMap<u64, u32> = HashMap::new();
        let mut queue = std::collections::VecDeque::new();
        let mut loose: Vec<&MNode> = self
            .nodes
            .values()
            .filter(|m| m.data.ino == ROOT_INO || !self.nodes.get(&m.parent).is_some_and(listed))
            .collect();
        loose.sort_unstable_by_key(|m| m.data.ino);
        let mut loose_parents = Vec::with_capacity(loose.len());
        for m in loose {
            let idx = push(tree, m, 0);
            loose_parents.push((idx, m.parent));
            placed.insert(m.data.ino, idx);
            if listed(m) {
                queue.push_back(m.data.ino);
            }
        }
        while let Some(dir) = queue.pop_front() {
            let Some(Kids::Own(kids)) = self.nodes.get(&dir).map(|m| &m.kids) else {
                continue;
            };
            let parent_idx = placed[&dir];
            let first = tree.nodes.len() as u32;
            for &ino in kids.values() {
                let m = self
                    .get(ino)
                    .ok_or(NeedsFull::Mismatch("listed child".into()))?;
                if placed.contains_key(&ino) {
                    return Err(NeedsFull::Mismatch(format!("inode {ino} listed twice")));
                }
                let idx = push(tree, &m, parent_idx | IN_DELTA);
                placed.insert(ino, idx);
                if listed(&m) {
                    queue.push_back(ino);
                }
            }
            let node = &mut tree.nodes[parent_idx as usize];
            node.first_child = first | IN_DELTA;
            node.child_count = kids.len() as u32;
        }
        // Loose records' parents: in the delta (placed by now) or in the base.
        for (idx, parent) in loose_parents {
            let parent = match placed.get(&parent) {
                Some(&p) => p | IN_DELTA,
                None => find_ino(self.snap.tree(), parent)
                    .flatten()
                    .ok_or_else(|| NeedsFull::Mismatch(format!("parent {parent} not found")))?,
            };
            tree.nodes[idx as usize].parent = parent;
        }
        tree.by_ino = placed
            .iter()
            .map(|(&ino, &node)| InoEntry { ino, node })
            .chain(
                self.removed
                    .iter()
                    .filter(|ino| !placed.contains_key(ino))
                    .map(|&ino| InoEntry { ino, node: REMOVED }),
            )
            .collect();
        tree.by_ino.sort_unstable_by_key(|e| e.ino);
        Ok(())
    }
}

/// One track's change, for [`delta_for`].
#[derive(Debug, Clone)]
pub struct TrackChange {
    /// The track.
    pub id: u64,
    /// Its album ([`crate::template::album_key`]) and format before the change; `None`
    /// when it is new.
    pub before: Option<(u128, Format)>,
    /// The track now, as the tree should show it; `None` when it is gone (or no longer
    /// shown).
    pub after: Option<TrackRecord>,
}

/// The delta that makes `snap` show `changes` (rendered with `template`), or why only a
/// full render can.
pub fn delta_for(
    snap: &Snapshot,
    template: &Template,
    changes: &[TrackChange],
    catalog_version: u64,
) -> Result<DeltaData, NeedsFull> {
    let mut b = DeltaBuilder::new(snap);
    let mut keys: Vec<u128> = Vec::new();
    for c in changes {
        if let Some((key, format)) = c.before {
            b.count_album(key, format as usize, -1);
            keys.push(key);
        }
        if let Some(rec) = &c.after {
            let key = album_key(rec);
            b.count_album(key, rec.format as usize, 1);
            keys.push(key);
        }
    }
    keys.sort_unstable();
    keys.dedup();
    let mut albums = AlbumFormats::default();
    for &key in &keys {
        let before = snap.album_counts(key).unwrap_or_default();
        let after = b.album(key).unwrap_or_default();
        let present = |c: &FormatCounts| c.map(|n| n > 0);
        if template.folders_show_album_formats()
            && present(&before) != present(&after)
            && (is_mixed(&before) || is_mixed(&after))
        {
            return Err(NeedsFull::AlbumFormats);
        }
        albums.insert(key, after);
    }
    for c in changes {
        b.remove_track(c.id)?;
    }
    for c in changes {
        if let Some(rec) = &c.after {
            b.add_track(rec, &template.render_in(rec, &albums))?;
        }
    }
    b.finish(catalog_version)
}

/// Whether a directory's attributes went from `old` to `new` only by gaining: a newer
/// mtime, more read bits, an owner or group no longer shared. Joining `new` into its
/// parent then gives what deriving the parent in full would.
fn only_gained(old: &NodeData, new: &NodeData) -> bool {
    let kept = |was: u32, now: u32| was == now || now == ID_UNKNOWN;
    new.mtime_ns >= old.mtime_ns
        && old.mode != MODE_UNKNOWN
        && new.mode != MODE_UNKNOWN
        && new.mode & old.mode == old.mode
        && kept(old.uid, new.uid)
        && kept(old.gid, new.gid)
}

/// Appends `m` to `tree` with parent index `parent`; returns its index.
fn push(tree: &mut TreeData, m: &MNode, parent: u32) -> u32 {
    let idx = tree.nodes.len() as u32;
    let name_off = tree.names.len() as u64;
    tree.names.extend_from_slice(&m.name);
    let path_off = tree.paths.len() as u64;
    tree.paths.extend_from_slice(&m.rel_path);
    let (first_child, child_count) = match m.kids {
        Kids::Base(first, count) => (first, count),
        Kids::Own(_) => (0, 0),
    };
    tree.nodes.push(NodeData {
        name_off,
        name_len: m.name.len() as u32,
        path_off,
        path_len: m.rel_path.len() as u32,
        parent,
        first_child,
        child_count,
        ..m.data.clone()
    });
    idx
}

fn blank(ino: u64) -> NodeData {
    NodeData {
        ino,
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

/// A name with a clash suffix (` (2)` before the extension) taken off: names with the
/// same key may be renamed against each other by a full render.
fn clash_key(name: &[u8]) -> Vec<u8> {
    let dot = name.iter().rposition(|&b| b == b'.').filter(|&d| d > 0);
    let (stem, ext) = name.split_at(dot.unwrap_or(name.len()));
    let mut stem = stem;
    if let Some(open) = stem.windows(2).rposition(|w| w == b" (") {
        let inner = &stem[open + 2..];
        if inner.len() > 1
            && inner.ends_with(b")")
            && inner[..inner.len() - 1].iter().all(u8::is_ascii_digit)
        {
            stem = &stem[..open];
        }
    }
    let mut key = stem.to_vec();
    key.extend_from_slice(ext);
    key
}

/// The owner (or group) the files below a directory share (as `crate::tree` derives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    Nobody,
    One(u32),
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

#[cfg(test)]
mod tests;
