//! The filesystem model: every operation as a plain function over the current snapshot,
//! with no FUSE types, so tests drive it without a kernel. [`crate::dispatch`] only decodes,
//! calls one of these and encodes.
//!
//! The lookup/getattr/readdir path borrows from the mmapped snapshot and allocates nothing.
//! Files are opened through the origin seam (`musicfs_storage::origin`), never by path
//! here; the read path takes one shard lock to clone the handle's `Arc` (see
//! [`crate::sources`]) and then reads unlocked.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use musicfs_core::health::{OriginHealth, OriginState};
use musicfs_core::nodeid;
use musicfs_core::overlay::RenditionSet;
use musicfs_core::snapshot::{Node, Snapshot, ROOT_INO};
use musicfs_storage::origin::{Copy, FailoverSource, OriginTable, Seen};

use crate::album::{self, AlbumExtras, Albums, ExtraSource};
use crate::handles::HandleTable;
use crate::plays::{PlayLog, Plays};
use crate::sources::{HandlePool, InodeSources, OpenFile, Source};
use crate::status::{ServeStatus, STATUS_FIELDS};
use crate::virt::{self, Finder, Found, Missing, Virtual};
use crate::xattr::{self, TagSource, XattrReply};
use crate::FsError;
use musicfs_core::events::{Event, Events};

/// Block size reported by statfs and used for `st_blocks`.
pub const BLOCK_SIZE: u32 = 4096;
/// Preferred I/O size reported in `st_blksize`: large, so `cp` and stdio read in big chunks.
pub const IO_BLOCK_SIZE: u32 = 128 * 1024;

/// What the model needs to know besides the snapshot.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache a name → inode answer.
    pub entry_timeout: Duration,
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache "no such name"; zero disables negative caching.
    pub negative_timeout: Duration,
    /// Owner shown for every node, overriding the origin's (`--uid`).
    pub uid: Option<u32>,
    /// Group shown for every node, overriding the origin's (`--gid`).
    pub gid: Option<u32>,
    /// Owner shown where the origin does not say (remote origins, directories whose files
    /// have different owners, records from before owners were recorded).
    pub default_uid: u32,
    /// Group shown where the origin does not say.
    pub default_gid: u32,
    /// Permission bits cleared from every node's mode (`--umask`), after write bits.
    pub umask: u32,
    /// Which origins are offline: opens of their tracks answer EIO without touching them.
    pub origin_health: Arc<OriginHealth>,
    /// When reads go through the daemon (no passthrough), answer OPEN with ENOSYS so the
    /// kernel opens files without a round trip and sends READs without a handle.
    pub skip_open: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig {
            entry_timeout: Duration::from_secs(3600),
            attr_timeout: Duration::from_secs(3600),
            negative_timeout: Duration::from_secs(3600),
            uid: None,
            gid: None,
            default_uid: uid,
            default_gid: gid,
            umask: 0,
            origin_health: Arc::default(),
            skip_open: false,
        }
    }
}

/// The bits a read-only mount can show: read and execute for user, group and others.
pub const SHOWN_BITS: u32 = 0o555;
/// Mode of a file whose origin reports none (before the umask).
pub const DEFAULT_FILE_PERM: u32 = 0o444;
/// Mode of a directory whose files report none (before the umask).
pub const DEFAULT_DIR_PERM: u32 = 0o555;

/// Kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (a search or collection result).
    Symlink,
}

/// Attributes of a node, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// FUSE entry generation: a file's content version, so a replaced source is a new
    /// inode to the kernel (which then fails I/O on the old one rather than mix pages).
    pub generation: u64,
    /// Directory or file.
    pub kind: Kind,
    /// Bytes readable (0 for directories).
    pub size: u64,
    /// Modification time (also used for atime and ctime), ns since the epoch.
    pub mtime_ns: i64,
    /// Link count.
    pub nlink: u32,
    /// Permission bits shown (within [`SHOWN_BITS`]).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Attr {
    /// `st_mode`: type bits plus the permission bits shown.
    pub fn mode(&self) -> u32 {
        let kind = match self.kind {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
        };
        kind | (self.perm & SHOWN_BITS)
    }

    /// `st_blocks`, in 512-byte units.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// One entry produced by [`FsModel::readdir`].
#[derive(Debug, Clone, Copy)]
pub struct DirItem<'a> {
    /// Inode of the entry.
    pub ino: u64,
    /// The offset to resume after this entry.
    pub next_offset: u64,
    /// Directory or file.
    pub kind: Kind,
    /// Entry name.
    pub name: &'a [u8],
    /// Attributes; `None` for `.` and `..`, which the kernel resolves itself.
    pub attr: Option<Attr>,
    /// Listed from the snapshot being served; `false` when a listing that began before a
    /// republish is being continued from the tree it began in: the kernel must not cache
    /// such an entry (it may be gone or changed already).
    pub current: bool,
}

/// `statfs` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks holding the library.
    pub blocks: u64,
    /// Number of tracks.
    pub files: u64,
    /// Longest name.
    pub name_max: u32,
}

/// The filesystem over the current snapshot.
pub struct FsModel {
    snapshot: Arc<ArcSwap<Snapshot>>,
    origins: Arc<ArcSwap<OriginTable>>,
    tags: Option<Arc<dyn TagSource>>,
    cfg: FsConfig,
    files: HandleTable<Arc<OpenFile>>,
    /// Released file handles' allocations, reused by the next opens (so `open` allocates
    /// nothing once the pool has warmed up).
    pool: HandlePool,
    /// Sources read by inode when the kernel opens files without asking.
    by_inode: InodeSources,
    dirs: HandleTable<Arc<Snapshot>>,
    status: ServeStatus,
    /// `/.search` and `/.collections`, when a finder is configured.
    virt: Option<Virtual>,
    /// Album folders' extra entries (cover art, sidecars), when a provider is configured.
    albums: Option<Albums>,
    /// Open track handles, for plays counted in the access log and file events.
    plays: Plays,
    /// Refusing new opens (the daemon is draining before it unmounts).
    draining: std::sync::atomic::AtomicBool,
    /// Renditions of tracks with tag edits (kept current by the refresher).
    renditions: Arc<ArcSwap<RenditionSet>>,
    /// Fetches the next tracks of remote origins ahead of the player.
    prefetch: Option<crate::prefetch::Prefetcher>,
}

/// Directory offsets: 1 and 2 follow `.` and `..`; child `i` is followed by `i + 3`.
const FIRST_CHILD_OFFSET: u64 = 2;

impl FsModel {
    /// A model serving `snapshot` (republished by swapping it), with tags from `tags`,
    /// reading from the origins the snapshot records (opened here, each online).
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tags: Option<Arc<dyn TagSource>>,
        cfg: FsConfig,
    ) -> FsModel {
        let origins = Arc::new(ArcSwap::from_pointee(origins_of(&snapshot.load())));
        FsModel::with_origins(snapshot, origins, tags, cfg)
    }

    /// [`FsModel::new`] reading from `origins`, a table the daemon shares with its refresh
    /// loop (which marks origins offline and back).
    pub fn with_origins(
        snapshot: Arc<ArcSwap<Snapshot>>,
        origins: Arc<ArcSwap<OriginTable>>,
        tags: Option<Arc<dyn TagSource>>,
        cfg: FsConfig,
    ) -> FsModel {
        FsModel {
            snapshot,
            origins,
            tags,
            cfg,
            files: HandleTable::new(),
            pool: HandlePool::default(),
            by_inode: InodeSources::default(),
            dirs: HandleTable::new(),
            status: ServeStatus::default(),
            virt: None,
            albums: None,
            plays: Plays::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            renditions: Arc::new(ArcSwap::from_pointee(RenditionSet::default())),
            prefetch: None,
        }
    }

    /// Fetches the next tracks ahead of a player as `cfg` says (see [`crate::prefetch`]);
    /// call after [`FsModel::with_renditions`].
    pub fn with_prefetch(mut self, cfg: crate::prefetch::PrefetchConfig) -> FsModel {
        self.prefetch = crate::prefetch::Prefetcher::start(
            cfg,
            crate::prefetch::PrefetchSources {
                snapshot: self.snapshot.clone(),
                origins: self.origins.clone(),
                renditions: self.renditions.clone(),
                health: self.cfg.origin_health.clone(),
            },
        );
        self
    }

    /// Serves the tag edits of `renditions` (shared with the refresher, which replaces
    /// them with each publish): a track whose node matches a rendition reads through it.
    pub fn with_renditions(mut self, renditions: Arc<ArcSwap<RenditionSet>>) -> FsModel {
        self.renditions = renditions;
        self
    }

    /// Reports to `log` each track handle closed after staying open `after` or longer
    /// (see [`crate::plays`]).
    pub fn with_play_log(mut self, log: Arc<dyn PlayLog>, after: Duration) -> FsModel {
        self.plays.set_log(log, after);
        self
    }

    /// Reports track handles opened, read and closed to `events` (see
    /// [`musicfs_core::events`]).
    pub fn with_events(mut self, events: Events) -> FsModel {
        self.plays.set_events(events);
        self
    }

    /// While `on`, opens of files answer [`FsError::Draining`] (EBUSY); handles already
    /// open keep reading. The daemon drains before a graceful unmount.
    pub fn set_draining(&self, on: bool) {
        self.draining
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// Whether new opens are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Shows the extra entries `provider` tells in the tree's directories (see
    /// [`crate::album`]).
    pub fn with_album_extras(mut self, provider: Arc<dyn AlbumExtras>) -> FsModel {
        self.albums = Some(Albums::new(provider));
        self
    }

    /// The extra entry `ino`: its attributes and where its bytes are. `None` when `ino`
    /// is not an extra entry's.
    fn extra_node(
        &self,
        snap: &Snapshot,
        ino: u64,
    ) -> Option<Result<(Attr, ExtraSource), FsError>> {
        if !album::is_extra(ino) {
            return None;
        }
        let Some((d, i)) = self.albums.as_ref().and_then(|a| a.find(snap, ino)) else {
            return Some(Err(FsError::StaleInode(ino)));
        };
        Some(Ok((
            self.extra_attr(snap, &d, i),
            d.entries[i].source.clone(),
        )))
    }

    /// Attributes of extra entry `i` of a directory: read bits and owner of the directory
    /// (whoever may list the album may read what it shows).
    fn extra_attr(&self, snap: &Snapshot, d: &album::DirExtras, i: usize) -> Attr {
        let e = &d.entries[i];
        let dir = snap.node(d.dir);
        let dir_perm = dir
            .as_ref()
            .and_then(|n| n.perm_bits())
            .unwrap_or(DEFAULT_DIR_PERM);
        Attr {
            ino: d.inos[i],
            generation: 0,
            kind: Kind::File,
            size: e.size,
            mtime_ns: e.mtime_ns,
            nlink: 1,
            perm: dir_perm & 0o444 & !self.cfg.umask,
            uid: self
                .cfg
                .uid
                .or(dir.as_ref().and_then(|n| n.uid()))
                .unwrap_or(self.cfg.default_uid),
            gid: self
                .cfg
                .gid
                .or(dir.as_ref().and_then(|n| n.gid()))
                .unwrap_or(self.cfg.default_gid),
        }
    }

    /// Serves `/.search` and `/.collections` from `finder` (see [`crate::virt`]).
    pub fn with_finder(mut self, finder: Arc<dyn Finder>) -> FsModel {
        self.virt = Some(Virtual::new(finder, self.tags.clone()));
        self
    }

    /// The virtual directories' part of an operation on `ino`: `None` when `ino` is the
    /// tree's.
    fn virtual_node(&self, snap: &Snapshot, ino: u64) -> Option<Result<Found, FsError>> {
        let v = self.virt.as_ref()?;
        if !virt::is_virtual(ino) {
            return None;
        }
        Some(v.find(snap, ino).ok_or(FsError::StaleInode(ino)))
    }

    /// Attributes of a virtual node: directories `r-x`, results symlinks.
    fn virtual_attr(&self, snap: &Snapshot, found: &Found) -> Attr {
        let (ino, kind, size, mtime_ns) = match found {
            Found::Top(ino) => (*ino, Kind::Dir, 0, root_mtime(snap)),
            Found::Listing(l) => (l.ino, Kind::Dir, 0, root_mtime(snap)),
            Found::Result(l, i) => {
                let e = &l.entries[*i];
                (l.result_ino(*i), Kind::Symlink, e.target_len(), e.mtime_ns)
            }
        };
        Attr {
            ino,
            generation: 0,
            kind,
            size,
            mtime_ns,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            perm: DEFAULT_DIR_PERM & !self.cfg.umask,
            uid: self.cfg.uid.unwrap_or(self.cfg.default_uid),
            gid: self.cfg.gid.unwrap_or(self.cfg.default_gid),
        }
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let snap = self.snapshot.load();
        match self.virtual_node(&snap, ino) {
            Some(Ok(Found::Result(l, i))) => Ok(l.entries[i].target()),
            Some(Err(e)) => Err(e),
            _ if snap.node(ino).is_none()
                && !virt::is_virtual(ino)
                && !album::is_extra(ino)
                && !crate::prefetch::is_hint(ino) =>
            {
                Err(FsError::StaleInode(ino))
            }
            _ => Err(FsError::NotASymlink(ino)),
        }
    }

    /// How the mount is being served (the root's status attributes read this).
    pub fn status(&self) -> &ServeStatus {
        &self.status
    }

    /// The origins files are read from (shared with the daemon's refresh loop).
    pub fn origins(&self) -> &Arc<ArcSwap<OriginTable>> {
        &self.origins
    }

    /// The configuration.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// A node's attributes: its origin's owner and read/execute bits (docs/SEMANTICS.md,
    /// "Owners and modes"), through the configured mapping. Plain field reads, no
    /// allocation.
    fn attr_of(&self, node: &Node<'_>) -> Attr {
        let (kind, default_perm) = if node.is_dir() {
            (Kind::Dir, DEFAULT_DIR_PERM)
        } else {
            (Kind::File, DEFAULT_FILE_PERM)
        };
        let perm = node.perm_bits().unwrap_or(default_perm) & SHOWN_BITS & !self.cfg.umask;
        Attr {
            ino: node.ino(),
            generation: node.generation(),
            kind,
            size: node.size(),
            mtime_ns: node.mtime_ns(),
            nlink: node.nlink(),
            perm,
            uid: self.cfg.uid.or(node.uid()).unwrap_or(self.cfg.default_uid),
            gid: self.cfg.gid.or(node.gid()).unwrap_or(self.cfg.default_gid),
        }
    }

    /// `/.prefetch`, when prefetch runs.
    fn mirror(&self) -> Option<&crate::prefetch::Mirror> {
        self.prefetch.as_ref().map(|p| p.mirror())
    }

    /// The tree node and the parent of `/.prefetch` node `ino`; `None` when `ino` is not
    /// one.
    fn hint_node(&self, ino: u64) -> Option<Result<(u64, u64), FsError>> {
        if !crate::prefetch::is_hint(ino) {
            return None;
        }
        Some(
            self.mirror()
                .and_then(|m| m.node(ino))
                .ok_or(FsError::StaleInode(ino)),
        )
    }

    /// Attributes of `/.prefetch` node `ino`, which stands for tree node `tree`: an empty
    /// file or a folder with the tree node's owner and mode, so the kernel lets through
    /// `/.prefetch` exactly who may look there in the tree.
    fn hint_attr(&self, snap: &Snapshot, ino: u64, tree: u64) -> Result<Attr, FsError> {
        let node = snap.node(tree).ok_or(FsError::StaleInode(ino))?;
        let of_tree = self.attr_of(&node);
        Ok(Attr {
            ino,
            generation: 0,
            size: 0,
            mtime_ns: root_mtime(snap),
            ..of_tree
        })
    }

    /// Asks for the tracks under tree node `tree` to be fetched (`/.prefetch`).
    fn fetch_tree(&self, tree: u64) {
        if let Some(p) = &self.prefetch {
            p.fetch_tree(tree);
        }
    }

    /// The attributes of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let snap = self.snapshot.load();
        if parent == ROOT_INO && name == crate::prefetch::HINT_NAME && self.mirror().is_some() {
            return self.hint_attr(&snap, crate::prefetch::HINT_TOP, ROOT_INO);
        }
        if let Some(found) = self.hint_node(parent) {
            let (tree, _) = found?;
            let child = snap
                .lookup(tree, name)
                .ok_or(FsError::NotFound { parent })?;
            let mirror = self.mirror().ok_or(FsError::StaleInode(parent))?;
            let ino = mirror.child(parent, child.ino());
            if child.file().is_some() {
                // A track is never a step on the way to another name: looking it up here
                // (`touch`, `stat`, `cat`) asks for it.
                self.fetch_tree(child.ino());
            }
            return self.hint_attr(&snap, ino, child.ino());
        }
        if let Some(v) = &self.virt {
            if parent == ROOT_INO && name == virt::SEARCH_NAME {
                return Ok(self.virtual_attr(&snap, &Found::Top(virt::SEARCH_INO)));
            }
            if parent == ROOT_INO && name == virt::COLLECTIONS_NAME {
                return Ok(self.virtual_attr(&snap, &Found::Top(virt::COLLECTIONS_INO)));
            }
            if virt::is_virtual(parent) {
                return match v.lookup(&snap, parent, name) {
                    Ok(found) => Ok(self.virtual_attr(&snap, &found)),
                    Err(Missing::NotFound) => Err(FsError::NotFound { parent }),
                    Err(Missing::Stale) => Err(FsError::StaleInode(parent)),
                };
            }
        }
        if let Some(node) = snap.lookup(parent, name) {
            return Ok(self.attr_of(&node));
        }
        Err(match snap.node(parent) {
            None => FsError::StaleInode(parent),
            Some(dir) if !dir.is_dir() => FsError::NotADirectory(parent),
            Some(_) => {
                if let Some(albums) = &self.albums {
                    let d = albums.of_dir(&snap, parent);
                    if let Some(i) = d.find(name) {
                        return Ok(self.extra_attr(&snap, &d, i));
                    }
                }
                FsError::NotFound { parent }
            }
        })
    }

    /// The attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let snap = self.snapshot.load();
        if let Some(found) = self.hint_node(ino) {
            return self.hint_attr(&snap, ino, found?.0);
        }
        if let Some(found) = self.virtual_node(&snap, ino) {
            return Ok(self.virtual_attr(&snap, &found?));
        }
        if let Some(extra) = self.extra_node(&snap, ino) {
            return extra.map(|(attr, _)| attr);
        }
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        Ok(self.attr_of(&node))
    }

    /// Opens directory `ino`, pinning the current snapshot so its listing stays consistent
    /// across a republish.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let snap = self.snapshot.load_full();
        if let Some(found) = self.hint_node(ino) {
            let (tree, _) = found?;
            if !snap.node(tree).ok_or(FsError::StaleInode(ino))?.is_dir() {
                return Err(FsError::NotADirectory(ino));
            }
            // Listing a folder under `/.prefetch` fetches it (`/.prefetch` itself: nothing).
            if ino != crate::prefetch::HINT_TOP {
                self.fetch_tree(tree);
            }
            return Ok(self.dirs.insert(snap));
        }
        match self.virtual_node(&snap, ino) {
            Some(Ok(Found::Result(..))) => return Err(FsError::NotADirectory(ino)),
            Some(Ok(_)) => return Ok(self.dirs.insert(snap)),
            Some(Err(e)) => return Err(e),
            None => {}
        }
        if album::is_extra(ino) {
            return Err(FsError::NotADirectory(ino));
        }
        match snap.node(ino) {
            None => Err(FsError::StaleInode(ino)),
            Some(node) if !node.is_dir() => Err(FsError::NotADirectory(ino)),
            Some(_) => Ok(self.dirs.insert(snap)),
        }
    }

    /// Lists directory `ino` through handle `fh` from `offset` (0, or an offset a previous
    /// item carried), calling `emit` per entry until it returns `false` (reply full).
    pub fn readdir(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        emit: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), FsError> {
        let mut snap = self.dirs.get(fh).ok_or(FsError::BadHandle(fh))?;
        if let Some(found) = self.hint_node(ino) {
            // Empty: its names are found by lookup.
            emit_dots(ino, found?.1, offset, false, emit);
            return Ok(());
        }
        if self.virt.is_some() && virt::is_virtual(ino) {
            return self.readdir_virtual(ino, offset, emit);
        }
        let served = self.snapshot.load();
        if offset == 0 && !Arc::ptr_eq(&snap, &served) {
            // A listing (re)starts: from the tree served now. A handle opened before a
            // republish would otherwise list, and the kernel cache, what the
            // invalidation that followed the republish just dropped.
            snap = Arc::clone(&served);
            drop(self.dirs.replace(fh, Arc::clone(&served)));
        }
        let current = Arc::ptr_eq(&snap, &served);
        drop(served);
        let dir = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        if !dir.is_dir() {
            return Err(FsError::NotADirectory(ino));
        }
        if !emit_dots(ino, dir.parent_ino(), offset, current, emit) {
            return Ok(());
        }
        let first = offset.saturating_sub(FIRST_CHILD_OFFSET);
        let first = usize::try_from(first).unwrap_or(usize::MAX);
        for (i, child) in snap.children(ino, first).enumerate() {
            let attr = self.attr_of(&child);
            let item = DirItem {
                ino: attr.ino,
                next_offset: FIRST_CHILD_OFFSET + (first + i) as u64 + 1,
                kind: attr.kind,
                name: child.name(),
                attr: Some(attr),
                current,
            };
            if !emit(item) {
                return Ok(());
            }
        }
        let Some(albums) = &self.albums else {
            return Ok(());
        };
        // The extra entries follow the children, at offsets after theirs.
        let children = dir.child_count() as usize;
        let d = albums.of_dir(&snap, ino);
        for i in first.saturating_sub(children)..d.entries.len() {
            let attr = self.extra_attr(&snap, &d, i);
            let item = DirItem {
                ino: attr.ino,
                next_offset: FIRST_CHILD_OFFSET + (children + i) as u64 + 1,
                kind: Kind::File,
                name: &d.entries[i].name,
                attr: Some(attr),
                current,
            };
            if !emit(item) {
                break;
            }
        }
        Ok(())
    }

    /// [`FsModel::readdir`] of a virtual directory, from the tree served now; entries are
    /// marked not current so the kernel caches none of them.
    fn readdir_virtual(
        &self,
        ino: u64,
        offset: u64,
        emit: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), FsError> {
        let snap = self.snapshot.load_full();
        let found = self
            .virtual_node(&snap, ino)
            .unwrap_or(Err(FsError::StaleInode(ino)))?;
        let v = self
            .virt
            .as_ref()
            .expect("virtual inodes only with a finder");
        let (parent, names, listing) = match found {
            Found::Top(top) => (ROOT_INO, v.names(top), None),
            Found::Listing(l) => (l.parent, Vec::new(), Some(l)),
            Found::Result(..) => return Err(FsError::NotADirectory(ino)),
        };
        if !emit_dots(ino, parent, offset, false, emit) {
            return Ok(());
        }
        let first =
            usize::try_from(offset.saturating_sub(FIRST_CHILD_OFFSET)).unwrap_or(usize::MAX);
        let next = |i: usize| FIRST_CHILD_OFFSET + i as u64 + 1;
        match listing {
            Some(l) => {
                for (i, e) in l.entries.iter().enumerate().skip(first) {
                    let attr = self.virtual_attr(&snap, &Found::Result(l.clone(), i));
                    let item = DirItem {
                        ino: attr.ino,
                        next_offset: next(i),
                        kind: Kind::Symlink,
                        name: &e.name,
                        attr: Some(attr),
                        current: false,
                    };
                    if !emit(item) {
                        break;
                    }
                }
            }
            None => {
                // A name listed here is made on lookup; readdir gives no attributes for it
                // (so listing `/.collections` does not run every collection).
                for (i, name) in names.iter().enumerate().skip(first) {
                    let item = DirItem {
                        ino: u64::MAX,
                        next_offset: next(i),
                        kind: Kind::Dir,
                        name,
                        attr: None,
                        current: false,
                    };
                    if !emit(item) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) -> Result<(), FsError> {
        self.dirs.remove(fh).map(drop).ok_or(FsError::BadHandle(fh))
    }

    /// The root's `origins` attribute: one line per origin, `ROOT<TAB>up`,
    /// `ROOT<TAB>degraded<TAB>why` or `ROOT<TAB>offline<TAB>why`.
    fn origins_value(&self, snap: &Snapshot) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, root) in snap.origins() {
            out.extend_from_slice(root.as_os_str().as_bytes());
            let (state, why) = match self.cfg.origin_health.state(id) {
                OriginState::Up => ("up", None),
                OriginState::Degraded(why) => ("degraded", Some(why)),
                OriginState::Offline(why) => ("offline", Some(why)),
            };
            out.push(b'\t');
            out.extend_from_slice(state.as_bytes());
            if let Some(why) = why {
                out.push(b'\t');
                out.extend_from_slice(why.as_bytes());
            }
            out.push(b'\n');
        }
        out
    }

    /// The `alternates` attribute of track `track_id`: one line per other copy, its source
    /// path and `same` or `retagged`.
    fn alternates_value(snap: &Snapshot, track_id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for a in snap.alternates(track_id) {
            if let Some(root) = snap.origin_root(a.origin) {
                out.extend_from_slice(
                    root.join(OsStr::from_bytes(a.rel_path))
                        .as_os_str()
                        .as_bytes(),
                );
                out.extend_from_slice(if a.same_bytes {
                    b"\tsame\n"
                } else {
                    b"\tretagged\n"
                });
            }
        }
        out
    }

    fn source_of(snap: &Snapshot, node: &Node<'_>) -> Result<PathBuf, FsError> {
        let ino = node.ino();
        let file = node.file().ok_or(FsError::IsADirectory(ino))?;
        let root = snap
            .origin_root(file.origin)
            .ok_or(FsError::UnknownOrigin {
                ino,
                origin: file.origin,
            })?;
        Ok(root.join(OsStr::from_bytes(file.rel_path)))
    }

    /// Opens file `ino` for reading with the `open(2)` `flags`; any write intent is EROFS.
    pub fn open(&self, ino: u64, flags: u32) -> Result<u64, FsError> {
        let flags = flags as i32;
        if flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND) != 0
        {
            return Err(FsError::ReadOnly("open for writing"));
        }
        if self.is_draining() {
            return Err(FsError::Draining);
        }
        let source = self.open_source(ino)?;
        // The attributes of the version opened, for the kernel's questions about it once a
        // refresh has moved the name on to another version ([`FsModel::opened_attr`]).
        let shown = self.getattr(ino).ok();
        let fh = self.files.insert(self.pool.wrap(source, shown));
        if self.plays.active() {
            let snap = self.snapshot.load();
            if let Some(file) = snap.node(ino).and_then(|n| n.file()) {
                self.plays.opened(fh, ino, file.track_id);
            }
        }
        Ok(fh)
    }

    /// Opens the source of file `ino` through its origin (EIO at once when the origin is
    /// offline, unless the origin can serve the file without it: a remote file cached
    /// whole).
    fn open_source(&self, ino: u64) -> Result<Source, FsError> {
        let snap = self.snapshot.load();
        if let Some(found) = self.hint_node(ino) {
            // Opening a file under `/.prefetch` fetches its track; it reads as empty.
            let (tree, _) = found?;
            if snap.node(tree).ok_or(FsError::StaleInode(ino))?.is_dir() {
                return Err(FsError::IsADirectory(ino));
            }
            self.fetch_tree(tree);
            return Ok(Source::Other(Arc::new(crate::prefetch::NoBytes)));
        }
        if let Some(extra) = self.extra_node(&snap, ino) {
            let (attr, source) = extra?;
            return self.open_extra(ino, &attr, source);
        }
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        let f = node.file().ok_or(FsError::IsADirectory(ino))?;
        let origins = self.origins.load();
        let origin = origins.get(f.origin).ok_or(FsError::UnknownOrigin {
            ino,
            origin: f.origin,
        })?;
        let rel = Path::new(OsStr::from_bytes(f.rel_path));
        let offline = self.cfg.origin_health.is_offline(f.origin) && !origin.readable_offline(rel);
        let local = origin.as_local().is_some();
        let rendition = {
            let set = self.renditions.load();
            if set.is_empty() {
                None
            } else {
                set.find(f.track_id, node.size(), node.mtime_ns())
            }
        };
        let wrap = |inner: Source| match &rendition {
            Some(r) => Source::Rendered {
                rendition: r.clone(),
                inner: Box::new(inner),
            },
            None => inner,
        };
        let seen = match &rendition {
            Some(r) => Seen {
                size: r.base_size,
                mtime_ns: r.base_mtime_ns,
            },
            None => Seen {
                size: node.size(),
                mtime_ns: node.mtime_ns(),
            },
        };
        // A track with copies of the same bytes elsewhere is read through a source that
        // moves to the next copy when a read fails (a local preferred copy keeps
        // passthrough: the kernel reads it directly).
        let mut alternates = snap
            .alternates(f.track_id)
            .filter(|a| a.same_bytes)
            .peekable();
        if alternates.peek().is_some() && (offline || !local) {
            let mut copies = Vec::new();
            copies.push(Copy {
                origin_id: f.origin,
                origin: origin.clone(),
                rel: rel.to_path_buf(),
                seen,
            });
            for a in alternates {
                if let Some(o) = origins.get(a.origin) {
                    copies.push(Copy {
                        origin_id: a.origin,
                        origin: o.clone(),
                        rel: PathBuf::from(OsStr::from_bytes(a.rel_path)),
                        seen: Seen {
                            size: a.size,
                            mtime_ns: a.mtime_ns,
                        },
                    });
                }
            }
            return FailoverSource::open(copies, self.cfg.origin_health.clone())
                .map(|s| wrap(Source::Other(Arc::new(s))))
                .map_err(|source| FsError::Origin { ino, source });
        }
        if offline {
            return Err(FsError::OriginOffline {
                ino,
                origin: f.origin,
            });
        }
        let opened = match origin.as_local() {
            Some(local) => local.open_file(rel).map(Source::Local),
            None => origin.open_seen(rel, seen).map(Source::Other),
        };
        opened
            .map(wrap)
            .map_err(|source| FsError::Origin { ino, source })
    }

    /// Opens the bytes of extra entry `ino`: a stored file, or an origin's file (as a
    /// track's, offline rules included).
    fn open_extra(&self, ino: u64, attr: &Attr, source: ExtraSource) -> Result<Source, FsError> {
        let (origin_id, rel_path) = match source {
            ExtraSource::Stored(path) => {
                return musicfs_storage::origin::LocalSource::open_path(&path)
                    .map(Source::Local)
                    .map_err(|source| FsError::SourceIo { path, source });
            }
            ExtraSource::Origin { origin, rel_path } => (origin, rel_path),
        };
        let origins = self.origins.load();
        let origin = origins.get(origin_id).ok_or(FsError::UnknownOrigin {
            ino,
            origin: origin_id,
        })?;
        let rel = Path::new(OsStr::from_bytes(&rel_path));
        if self.cfg.origin_health.is_offline(origin_id) && !origin.readable_offline(rel) {
            return Err(FsError::OriginOffline {
                ino,
                origin: origin_id,
            });
        }
        let opened = match origin.as_local() {
            Some(local) => local.open_file(rel).map(Source::Local),
            None => {
                let seen = Seen {
                    size: attr.size,
                    mtime_ns: attr.mtime_ns,
                };
                origin.open_seen(rel, seen).map(Source::Other)
            }
        };
        opened.map_err(|source| FsError::Origin { ino, source })
    }

    /// Runs `f` on the source of file `nodeid` for a READ that carries no handle (the
    /// kernel opens files itself once OPEN answered ENOSYS): the source kept for the
    /// inode's current content generation, opened on first use. A republish that changes
    /// the content (new generation) opens the new source; a node id naming an older
    /// version ([`musicfs_core::nodeid`]) is stale, as there is no handle holding it.
    pub fn with_inode_source<R>(
        &self,
        nodeid: u64,
        f: impl FnOnce(&Source) -> io::Result<R>,
    ) -> Result<R, FsError> {
        let ino = nodeid::split(nodeid).0;
        let generation = {
            let snap = self.snapshot.load();
            if album::is_extra(ino) || crate::prefetch::is_hint(ino) {
                // Extra entries (and `/.prefetch` files) are not versioned: opened once
                // per inode, as named now.
                let h = match self.by_inode.get(ino, 0) {
                    Some(h) => h,
                    None => {
                        let h = self.pool.wrap(self.open_source(ino)?, None);
                        if let Some(old) = self.by_inode.insert(ino, 0, h.clone()) {
                            self.pool.recycle(old);
                        }
                        h
                    }
                };
                let source = h.source.as_ref().ok_or(FsError::BadHandle(0))?;
                return f(source).map_err(source_io);
            }
            let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
            let file = node.file().ok_or(FsError::IsADirectory(ino))?;
            if !nodeid::names_version(nodeid, ino, node.generation()) {
                return Err(FsError::StaleInode(ino));
            }
            if self.cfg.origin_health.is_offline(file.origin)
                && !snap.alternates(file.track_id).any(|a| a.same_bytes)
            {
                let rel = Path::new(OsStr::from_bytes(file.rel_path));
                let origins = self.origins.load();
                if !origins
                    .get(file.origin)
                    .is_some_and(|o| o.readable_offline(rel))
                {
                    return Err(FsError::OriginOffline {
                        ino,
                        origin: file.origin,
                    });
                }
            }
            node.generation()
        };
        let handle = match self.by_inode.get(ino, generation) {
            Some(h) => h,
            None => {
                let h = self.pool.wrap(self.open_source(ino)?, None);
                if let Some(old) = self.by_inode.insert(ino, generation, h.clone()) {
                    self.pool.recycle(old);
                }
                h
            }
        };
        let source = handle.source.as_ref().ok_or(FsError::BadHandle(0))?;
        f(source).map_err(source_io)
    }

    /// The attributes of the version handle `fh` opened.
    pub fn opened_attr(&self, fh: u64) -> Option<Attr> {
        self.files.get(fh)?.shown
    }

    /// The attributes of the file version the kernel knows as `nodeid` while a handle still
    /// reads it after a refresh moved its name on to a newer version (the kernel asks for
    /// them without naming the handle on `fstat`): `fh` first, when the kernel named one,
    /// else any open handle of that version. `None` when no handle holds it.
    pub fn attr_of_open_version(&self, nodeid: u64, fh: Option<u64>) -> Option<Attr> {
        let of_version = |a: &Attr| nodeid::kernel_id(a.ino, a.generation) == nodeid;
        if let Some(a) = fh.and_then(|fh| self.opened_attr(fh)) {
            if of_version(&a) {
                return Some(a);
            }
        }
        self.files
            .find_map(|h| h.shown.filter(|a| of_version(a) && h.source.is_some()))
    }

    /// Runs `f` on the source behind handle `fh` (the read path: one shard lock to clone
    /// the `Arc`, then the caller's reads run unlocked).
    pub fn with_source<R>(
        &self,
        fh: u64,
        f: impl FnOnce(&Source) -> io::Result<R>,
    ) -> Result<R, FsError> {
        let handle = self.files.get(fh).ok_or(FsError::BadHandle(fh))?;
        let source = handle.source.as_ref().ok_or(FsError::BadHandle(fh))?;
        f(source).map_err(source_io)
    }

    /// Reads up to `buf.len()` bytes at `offset` from handle `fh` into `buf` (short only at
    /// end of file).
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.with_source(fh, |source| match source.raw_fd() {
            Some(fd) => crate::ring::pread_full(fd, buf, offset),
            None => source.read_at(buf, offset),
        })
    }

    /// Closes a file handle. Its allocation goes back to the pool unless a read still
    /// holds it (the reader's drop then closes the file).
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let handle = self.files.remove(fh).ok_or(FsError::BadHandle(fh))?;
        self.pool.recycle(handle);
        if self.plays.active() {
            self.plays.released(fh);
        }
        Ok(())
    }

    /// Tells the event sink, if any, which read-progress marks a read of `n` bytes at
    /// `offset` of file `ino` through handle `fh` crossed.
    pub fn note_read(&self, fh: u64, ino: u64, offset: u64, n: usize) {
        let events = self.plays.events();
        if events.is_none() && self.prefetch.is_none() {
            return;
        }
        let snap = self.snapshot.load();
        let Some(node) = snap.node(ino) else {
            return;
        };
        let Some(file) = node.file() else {
            return;
        };
        if let Some(p) = &self.prefetch {
            p.note_read(ino, offset, n, node.size());
        }
        let Some(events) = events else {
            return;
        };
        for percent in musicfs_core::events::progress_marks(offset, n as u64, node.size()) {
            events.emit(Event::FileRead {
                fh,
                ino,
                track_id: file.track_id,
                percent,
            });
        }
    }

    /// The origin id of track `ino` (none for directories and extra entries).
    pub fn origin_of(&self, ino: u64) -> Option<u32> {
        let snap = self.snapshot.load();
        snap.node(ino).and_then(|n| n.file()).map(|f| f.origin)
    }

    /// Number of open file and directory handles.
    pub fn open_handles(&self) -> (usize, usize) {
        (self.files.len(), self.dirs.len())
    }

    /// Drops every handle (after unmount).
    pub fn close_all(&self) {
        self.files.clear();
        self.by_inode.clear();
        self.dirs.clear();
    }

    /// Filesystem statistics: one "file" per track, blocks from the library size.
    pub fn statfs(&self) -> FsStats {
        let snap = self.snapshot.load();
        FsStats {
            block_size: BLOCK_SIZE,
            blocks: snap.total_size().div_ceil(u64::from(BLOCK_SIZE)),
            files: snap.track_count(),
            name_max: musicfs_core::tree::NAME_MAX as u32,
        }
    }

    /// `access(2)`: write is EROFS, execute on a file that no one may execute EACCES,
    /// anything else allowed. The mount uses `default_permissions`, so the kernel checks
    /// the caller against owner and mode itself before any of this; the kernel does not
    /// send ACCESS then, but a request that comes anyway gets these caller-independent
    /// answers.
    pub fn access(&self, ino: u64, mask: u32) -> Result<(), FsError> {
        let attr = self.getattr(ino)?;
        let mask_i = mask as i32;
        if mask_i & libc::W_OK != 0 {
            return Err(FsError::ReadOnly("access for writing"));
        }
        if mask_i & libc::X_OK != 0 && attr.kind == Kind::File && attr.perm & 0o111 == 0 {
            return Err(FsError::AccessDenied { ino, mask });
        }
        Ok(())
    }

    /// `getxattr(2)` of `name` on `ino`: `size == 0` probes the length, a short buffer is
    /// ERANGE, an attribute the track lacks is ENODATA.
    pub fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> Result<XattrReply, FsError> {
        let missing = || FsError::NoAttribute(String::from_utf8_lossy(name).into_owned());
        let field = xattr::field_of(name).ok_or_else(missing)?;
        let snap = self.snapshot.load();
        if let Some(found) = self.virtual_node(&snap, ino) {
            found?;
            return Err(missing());
        }
        if let Some(found) = self.hint_node(ino) {
            found?;
            return Err(missing());
        }
        if let Some(extra) = self.extra_node(&snap, ino) {
            extra?;
            return Err(missing());
        }
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        if ino == ROOT_INO {
            if field == xattr::ORIGINS_FIELD {
                return xattr::sized_reply(self.origins_value(&snap), size);
            }
            let value = self.status.value(field).ok_or_else(missing)?;
            return xattr::sized_reply(value.as_bytes().to_vec(), size);
        }
        let Some(file) = node.file() else {
            return Err(missing());
        };
        let value = if field == xattr::SOURCE_FIELD {
            Self::source_of(&snap, &node)?
                .into_os_string()
                .into_encoded_bytes()
        } else if field == xattr::ALTERNATES_FIELD {
            let value = Self::alternates_value(&snap, file.track_id);
            if value.is_empty() {
                return Err(missing());
            }
            value
        } else {
            if !xattr::TAG_FIELDS.contains(&field) {
                return Err(missing());
            }
            let rec = self.record(file.track_id)?.ok_or_else(missing)?;
            let value = xattr::tag_value(&rec, field).ok_or_else(missing)?;
            value.as_bytes().to_vec()
        };
        xattr::sized_reply(value, size)
    }

    /// `listxattr(2)` on `ino`: the attributes this file has, NUL-separated.
    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply, FsError> {
        let snap = self.snapshot.load();
        if let Some(found) = self.virtual_node(&snap, ino) {
            found?;
            return xattr::sized_reply(Vec::new(), size);
        }
        if let Some(found) = self.hint_node(ino) {
            found?;
            return xattr::sized_reply(Vec::new(), size);
        }
        if let Some(extra) = self.extra_node(&snap, ino) {
            extra?;
            return xattr::sized_reply(Vec::new(), size);
        }
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        let mut names = Vec::new();
        if let Some(file) = node.file() {
            let mut push = |field: &str| {
                names.extend_from_slice(xattr::XATTR_PREFIX.as_bytes());
                names.extend_from_slice(field.as_bytes());
                names.push(0);
            };
            if let Some(rec) = self.record(file.track_id)? {
                for field in xattr::TAG_FIELDS {
                    if xattr::tag_value(&rec, field).is_some() {
                        push(field);
                    }
                }
            }
            push(xattr::SOURCE_FIELD);
            if snap.alternates(file.track_id).next().is_some() {
                push(xattr::ALTERNATES_FIELD);
            }
        } else if ino == ROOT_INO {
            for field in STATUS_FIELDS.into_iter().chain([xattr::ORIGINS_FIELD]) {
                names.extend_from_slice(xattr::XATTR_PREFIX.as_bytes());
                names.extend_from_slice(field.as_bytes());
                names.push(0);
            }
        }
        xattr::sized_reply(names, size)
    }

    fn record(&self, track_id: u64) -> Result<Option<musicfs_core::TrackRecord>, FsError> {
        match &self.tags {
            None => Ok(None),
            Some(tags) => tags
                .track(track_id)
                .map_err(|e| FsError::Catalog(e.to_string())),
        }
    }
}

/// Emits `.` and `..` of directory `ino` (whose parent is `parent`) from `offset`; `false`
/// when the reply filled up.
fn emit_dots(
    ino: u64,
    parent: u64,
    offset: u64,
    current: bool,
    emit: &mut dyn FnMut(DirItem<'_>) -> bool,
) -> bool {
    let dots = [(b".".as_slice(), ino), (b"..".as_slice(), parent)];
    for (i, (name, dot_ino)) in dots.iter().enumerate().skip(offset as usize) {
        let item = DirItem {
            ino: *dot_ino,
            next_offset: i as u64 + 1,
            kind: Kind::Dir,
            name,
            attr: None,
            current,
        };
        if !emit(item) {
            return false;
        }
    }
    true
}

/// The root's modification time, shown for the virtual directories.
fn root_mtime(snap: &Snapshot) -> i64 {
    snap.node(ROOT_INO).map_or(0, |n| n.mtime_ns())
}

/// An error reading a source: one the reply buffer caused stays a reply error; the rest
/// are the source's (EIO, ESTALE).
fn source_io(e: io::Error) -> FsError {
    match e.raw_os_error() {
        Some(libc::EFAULT) | Some(libc::ENOSPC) | Some(libc::EOVERFLOW) => FsError::Reply(e),
        _ => FsError::SourceIo {
            path: PathBuf::new(),
            source: e,
        },
    }
}

/// The origins `snap` records, opened; a recorded origin that cannot be opened is left out
/// (its files then answer EIO) and logged.
fn origins_of(snap: &Snapshot) -> OriginTable {
    let (table, errors) = OriginTable::from_keys(snap.origin_keys());
    for e in errors {
        tracing::warn!(error = %e, "origin recorded in the snapshot cannot be opened");
    }
    table
}

#[cfg(test)]
pub(crate) mod testlib;

#[cfg(test)]
mod tests;
