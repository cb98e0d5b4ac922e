//! The filesystem model: every operation as a plain function over the current snapshot,
//! with no FUSE types, so tests drive it without a kernel. [`crate::fuse`] only decodes,
//! calls one of these and encodes.
//!
//! The lookup/getattr/readdir path borrows from the mmapped snapshot and allocates nothing;
//! the read path takes one shard lock to clone the handle's `Arc<File>` and then `pread`s.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use musicfs_core::snapshot::{Node, Snapshot, ROOT_INO};

use crate::handles::HandleTable;
use crate::status::{ServeStatus, STATUS_FIELDS};
use crate::xattr::{self, TagSource, XattrReply};
use crate::FsError;

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
    /// Owner of every node.
    pub uid: u32,
    /// Group of every node.
    pub gid: u32,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig {
            entry_timeout: Duration::from_secs(3600),
            attr_timeout: Duration::from_secs(3600),
            negative_timeout: Duration::from_secs(3600),
            uid,
            gid,
        }
    }
}

/// Kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory, mode 0555.
    Dir,
    /// A regular file, mode 0444.
    File,
}

/// Attributes of a node, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Directory or file.
    pub kind: Kind,
    /// Bytes readable (0 for directories).
    pub size: u64,
    /// Modification time (also used for atime and ctime), ns since the epoch.
    pub mtime_ns: i64,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Attr {
    /// `st_mode`: type bits plus r-xr-xr-x for directories, r--r--r-- for files.
    pub fn mode(&self) -> u32 {
        match self.kind {
            Kind::Dir => libc::S_IFDIR | 0o555,
            Kind::File => libc::S_IFREG | 0o444,
        }
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
    tags: Option<Arc<dyn TagSource>>,
    cfg: FsConfig,
    files: HandleTable<Arc<File>>,
    dirs: HandleTable<Arc<Snapshot>>,
    status: ServeStatus,
}

/// Directory offsets: 1 and 2 follow `.` and `..`; child `i` is followed by `i + 3`.
const FIRST_CHILD_OFFSET: u64 = 2;

impl FsModel {
    /// A model serving `snapshot` (republished by swapping it), with tags from `tags`.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tags: Option<Arc<dyn TagSource>>,
        cfg: FsConfig,
    ) -> FsModel {
        FsModel {
            snapshot,
            tags,
            cfg,
            files: HandleTable::new(),
            dirs: HandleTable::new(),
            status: ServeStatus::default(),
        }
    }

    /// How the mount is being served (the root's status attributes read this).
    pub fn status(&self) -> &ServeStatus {
        &self.status
    }

    /// The configuration.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    fn attr_of(&self, node: &Node<'_>) -> Attr {
        Attr {
            ino: node.ino(),
            kind: if node.is_dir() { Kind::Dir } else { Kind::File },
            size: node.size(),
            mtime_ns: node.mtime_ns(),
            nlink: node.nlink(),
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    /// The attributes of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let snap = self.snapshot.load();
        if let Some(node) = snap.lookup(parent, name) {
            return Ok(self.attr_of(&node));
        }
        Err(match snap.node(parent) {
            None => FsError::StaleInode(parent),
            Some(dir) if !dir.is_dir() => FsError::NotADirectory(parent),
            Some(_) => FsError::NotFound {
                parent,
                name: String::from_utf8_lossy(name).into_owned(),
            },
        })
    }

    /// The attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let snap = self.snapshot.load();
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        Ok(self.attr_of(&node))
    }

    /// Opens directory `ino`, pinning the current snapshot so its listing stays consistent
    /// across a republish.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let snap = self.snapshot.load_full();
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
        let snap = self.dirs.get(fh).ok_or(FsError::BadHandle(fh))?;
        let dir = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        if !dir.is_dir() {
            return Err(FsError::NotADirectory(ino));
        }
        let dots = [(b".".as_slice(), ino), (b"..".as_slice(), dir.parent_ino())];
        for (i, (name, dot_ino)) in dots.iter().enumerate().skip(offset as usize) {
            let item = DirItem {
                ino: *dot_ino,
                next_offset: i as u64 + 1,
                kind: Kind::Dir,
                name,
                attr: None,
            };
            if !emit(item) {
                return Ok(());
            }
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
            };
            if !emit(item) {
                break;
            }
        }
        Ok(())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) -> Result<(), FsError> {
        self.dirs.remove(fh).map(drop).ok_or(FsError::BadHandle(fh))
    }

    /// The absolute source path of file `ino`.
    pub fn source_path(&self, ino: u64) -> Result<PathBuf, FsError> {
        let snap = self.snapshot.load();
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        Self::source_of(&snap, &node)
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
        let path = self.source_path(ino)?;
        let file = open_source(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                FsError::SourceVanished { ino, path }
            } else {
                FsError::SourceIo { path, source }
            }
        })?;
        Ok(self.files.insert(Arc::new(file)))
    }

    /// Runs `f` on the source file behind handle `fh` (the read path: one shard lock to
    /// clone the `Arc`, then the caller's `pread`s run unlocked).
    pub fn with_file<R>(
        &self,
        fh: u64,
        f: impl FnOnce(&File) -> io::Result<R>,
    ) -> Result<R, FsError> {
        let file = self.files.get(fh).ok_or(FsError::BadHandle(fh))?;
        f(&file).map_err(|source| match source.raw_os_error() {
            Some(libc::EFAULT) | Some(libc::ENOSPC) | Some(libc::EOVERFLOW) => {
                FsError::Reply(source)
            }
            _ => FsError::SourceIo {
                path: PathBuf::new(),
                source,
            },
        })
    }

    /// Reads up to `buf.len()` bytes at `offset` from handle `fh` into `buf` (short only at
    /// end of file).
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.with_file(fh, |file| {
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(done)
        })
    }

    /// Closes a file handle.
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        self.files
            .remove(fh)
            .map(drop)
            .ok_or(FsError::BadHandle(fh))
    }

    /// Number of open file and directory handles.
    pub fn open_handles(&self) -> (usize, usize) {
        (self.files.len(), self.dirs.len())
    }

    /// Drops every handle (after unmount).
    pub fn close_all(&self) {
        self.files.clear();
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

    /// `access(2)`: write is EROFS, execute on a file EACCES, anything else allowed.
    pub fn access(&self, ino: u64, mask: u32) -> Result<(), FsError> {
        let attr = self.getattr(ino)?;
        let mask_i = mask as i32;
        if mask_i & libc::W_OK != 0 {
            return Err(FsError::ReadOnly("access for writing"));
        }
        if mask_i & libc::X_OK != 0 && attr.kind == Kind::File {
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
        let node = snap.node(ino).ok_or(FsError::StaleInode(ino))?;
        if ino == ROOT_INO {
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
        } else if ino == ROOT_INO {
            for field in STATUS_FIELDS {
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

/// Opens a source read-only, without updating its atime where the kernel lets us.
fn open_source(path: &std::path::Path) -> io::Result<File> {
    let open = |extra: i32| OpenOptions::new().read(true).custom_flags(extra).open(path);
    match open(libc::O_NOATIME) {
        // O_NOATIME needs ownership of the file or CAP_FOWNER.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod testlib {
    //! A small library on disk and its snapshot, for tests without a kernel.

    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
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
            let id = self.records.len() as u64 + 1;
            let rel = format!("src/{id}.flac");
            let src = self.origin.join(&rel);
            std::fs::create_dir_all(src.parent().expect("parent")).expect("mkdir");
            std::fs::write(&src, content(id, len)).expect("write");
            let rec = TrackRecord {
                id: TrackId(id),
                origin: OriginId(0),
                rel_path: rel.into_bytes(),
                format: Format::Flac,
                scan: ScanState {
                    size: len as u64,
                    mtime_ns: 1_700_000_000_123_456_789 + id as i64,
                    ino: 0,
                    ctime_ns: 0,
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
}

#[cfg(test)]
mod tests {
    use super::testlib::{content, Library};
    use super::*;
    use musicfs_core::meta::TrackMeta;
    use musicfs_core::snapshot::ROOT_INO;

    fn meta(title: &str) -> TrackMeta {
        TrackMeta {
            title: Some(title.into()),
            artist: vec!["Ann".into(), "Bob".into()],
            duration_ms: Some(61_000),
            ..TrackMeta::default()
        }
    }

    fn lib() -> Library {
        let mut l = Library::new();
        l.add("Ann/First (2001)/01 - One.flac", 10_000, meta("One"));
        l.add("Ann/First (2001)/02 - Two.flac", 5, meta("Two"));
        l.add("Bob/Solo/01 - Alone.flac", 0, TrackMeta::default());
        l
    }

    fn model(l: &Library) -> FsModel {
        let tags: Arc<dyn TagSource> = l.tags();
        FsModel::new(
            l.shared(),
            Some(tags),
            FsConfig {
                uid: 1234,
                gid: 5678,
                ..FsConfig::default()
            },
        )
    }

    fn path_ino(m: &FsModel, path: &str) -> u64 {
        path.split('/').fold(ROOT_INO, |dir, name| {
            m.lookup(dir, name.as_bytes()).expect("lookup").ino
        })
    }

    fn list(m: &FsModel, ino: u64, offset: u64) -> Vec<(Vec<u8>, u64, u64)> {
        let fh = m.opendir(ino).expect("opendir");
        let mut out = Vec::new();
        m.readdir(fh, ino, offset, &mut |it| {
            out.push((it.name.to_vec(), it.ino, it.next_offset));
            true
        })
        .expect("readdir");
        m.releasedir(fh).expect("releasedir");
        out
    }

    #[test]
    fn lookup_walks_the_tree_and_misses_are_enoent() {
        let l = lib();
        let m = model(&l);
        let artist = m.lookup(ROOT_INO, b"Ann").expect("Ann");
        assert_eq!(artist.kind, Kind::Dir);
        let file = path_ino(&m, "Ann/First (2001)/01 - One.flac");
        assert_eq!(m.getattr(file).expect("getattr").size, 10_000);
        let miss = m.lookup(artist.ino, b"Nobody").unwrap_err();
        assert_eq!(miss.to_errno(), libc::ENOENT);
        assert_eq!(
            m.lookup(ROOT_INO, b"ann").unwrap_err().to_errno(),
            libc::ENOENT
        );
    }

    #[test]
    fn lookup_under_a_file_is_enotdir_and_under_an_unknown_inode_estale() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Bob/Solo/01 - Alone.flac");
        assert_eq!(m.lookup(file, b"x").unwrap_err().to_errno(), libc::ENOTDIR);
        assert_eq!(
            m.lookup(999_999, b"x").unwrap_err().to_errno(),
            libc::ESTALE
        );
        assert_eq!(m.getattr(999_999).unwrap_err().to_errno(), libc::ESTALE);
    }

    #[test]
    fn getattr_shows_read_only_modes_owner_size_and_mtime() {
        let l = lib();
        let m = model(&l);
        let root = m.getattr(ROOT_INO).expect("root");
        assert_eq!(root.mode(), libc::S_IFDIR | 0o555);
        assert_eq!(root.nlink, 2 + 2);
        let f = m
            .getattr(path_ino(&m, "Ann/First (2001)/02 - Two.flac"))
            .expect("file");
        assert_eq!(f.mode(), libc::S_IFREG | 0o444);
        assert_eq!((f.uid, f.gid, f.size, f.nlink), (1234, 5678, 5, 1));
        assert_eq!(f.mtime_ns, 1_700_000_000_123_456_789 + 2);
        assert_eq!(f.blocks(), 1);
    }

    #[test]
    fn readdir_from_any_offset_continues_the_full_listing() {
        let mut l = Library::new();
        for i in 0..40 {
            l.add(&format!("Many/track {i:02}.flac"), 1, TrackMeta::default());
        }
        let m = model(&l);
        let dir = m.lookup(ROOT_INO, b"Many").expect("Many").ino;
        let full = list(&m, dir, 0);
        assert_eq!(full.len(), 42);
        assert_eq!(full[0].0, b".");
        assert_eq!(full[1].0, b"..");
        assert_eq!(full[1].1, ROOT_INO);
        assert_eq!(full[2].0, b"track 00.flac");
        for offset in 0..=full.len() as u64 + 3 {
            let tail = list(&m, dir, offset);
            let expect: Vec<_> = full.iter().skip(offset as usize).cloned().collect();
            assert_eq!(tail, expect, "offset {offset}");
        }
        // Each entry's next offset resumes right after it.
        for (i, (_, _, next)) in full.iter().enumerate() {
            assert_eq!(*next, i as u64 + 1);
        }
    }

    #[test]
    fn readdir_stops_when_the_reply_is_full_and_resumes_without_gaps() {
        let mut l = Library::new();
        for i in 0..25 {
            l.add(&format!("D/{i:02}.flac"), 1, TrackMeta::default());
        }
        let m = model(&l);
        let dir = m.lookup(ROOT_INO, b"D").expect("D").ino;
        let fh = m.opendir(dir).expect("opendir");
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let mut page = Vec::new();
            m.readdir(fh, dir, offset, &mut |it| {
                if page.len() == 4 {
                    return false;
                }
                page.push((it.name.to_vec(), it.next_offset));
                true
            })
            .expect("readdir");
            let Some(last) = page.last() else { break };
            offset = last.1;
            names.extend(page.into_iter().map(|(n, _)| n));
        }
        assert_eq!(names.len(), 27);
        let mut sorted = names[2..].to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 25);
    }

    #[test]
    fn readdir_of_an_open_dir_keeps_its_snapshot_after_a_republish() {
        let mut l = lib();
        let shared = l.shared();
        let m = FsModel::new(shared.clone(), None, FsConfig::default());
        let fh = m.opendir(ROOT_INO).expect("opendir");
        l.add("Zed/Z/z.flac", 1, TrackMeta::default());
        shared.store(Arc::new(l.snapshot(2)));
        let mut names = Vec::new();
        m.readdir(fh, ROOT_INO, 2, &mut |it| {
            names.push(it.name.to_vec());
            true
        })
        .expect("readdir");
        assert_eq!(names, vec![b"Ann".to_vec(), b"Bob".to_vec()]);
        assert!(m.lookup(ROOT_INO, b"Zed").is_ok());
    }

    #[test]
    fn readdir_on_a_file_or_bad_handle_fails_cleanly() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Bob/Solo/01 - Alone.flac");
        assert_eq!(m.opendir(file).unwrap_err().to_errno(), libc::ENOTDIR);
        let err = m.readdir(77, ROOT_INO, 0, &mut |_| true).unwrap_err();
        assert_eq!(err.to_errno(), libc::EBADF);
        assert_eq!(m.releasedir(77).unwrap_err().to_errno(), libc::EBADF);
    }

    #[test]
    fn open_with_any_write_intent_is_erofs() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Ann/First (2001)/01 - One.flac");
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_RDONLY | libc::O_CREAT,
            libc::O_WRONLY | libc::O_APPEND,
        ] {
            let err = m.open(file, flags as u32).unwrap_err();
            assert_eq!(err.to_errno(), libc::EROFS, "flags {flags:#o}");
        }
        assert_eq!(m.open_handles(), (0, 0));
        let fh = m
            .open(file, (libc::O_RDONLY | libc::O_NONBLOCK) as u32)
            .expect("read-only open");
        m.release(fh).expect("release");
    }

    #[test]
    fn open_of_a_directory_is_eisdir() {
        let l = lib();
        let m = model(&l);
        assert_eq!(m.open(ROOT_INO, 0).unwrap_err().to_errno(), libc::EISDIR);
    }

    #[test]
    fn read_returns_the_source_bytes_at_any_offset_and_short_at_eof() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Ann/First (2001)/01 - One.flac");
        let fh = m.open(file, 0).expect("open");
        let want = content(1, 10_000);
        for (offset, len) in [(0usize, 100usize), (4095, 4097), (9_990, 100), (10_000, 10)] {
            let mut buf = vec![0u8; len];
            let n = m.read(fh, offset as u64, &mut buf).expect("read");
            let end = (offset + len).min(want.len());
            assert_eq!(&buf[..n], &want[offset..end], "offset {offset}");
        }
        m.release(fh).expect("release");
        assert_eq!(m.release(fh).unwrap_err().to_errno(), libc::EBADF);
        let mut buf = [0u8; 4];
        assert_eq!(m.read(fh, 0, &mut buf).unwrap_err().to_errno(), libc::EBADF);
    }

    #[test]
    fn open_of_a_vanished_source_is_estale() {
        let l = lib();
        let m = model(&l);
        std::fs::remove_file(l.source(2)).expect("remove");
        let file = path_ino(&m, "Ann/First (2001)/02 - Two.flac");
        assert_eq!(m.open(file, 0).unwrap_err().to_errno(), libc::ESTALE);
    }

    #[test]
    fn an_open_handle_survives_its_source_being_removed() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Ann/First (2001)/02 - Two.flac");
        let fh = m.open(file, 0).expect("open");
        std::fs::remove_file(l.source(2)).expect("remove");
        let mut buf = [0u8; 5];
        assert_eq!(m.read(fh, 0, &mut buf).expect("read"), 5);
        assert_eq!(buf.to_vec(), content(2, 5));
    }

    #[test]
    fn statfs_counts_tracks_and_blocks_of_the_library() {
        let l = lib();
        let m = model(&l);
        let s = m.statfs();
        assert_eq!(s.files, 3);
        assert_eq!(s.blocks, 10_005u64.div_ceil(4096));
        assert_eq!(s.block_size, 4096);
        assert_eq!(s.name_max, 255);
    }

    #[test]
    fn access_refuses_write_and_execute_on_files() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Bob/Solo/01 - Alone.flac");
        let r = libc::R_OK as u32;
        let w = libc::W_OK as u32;
        let x = libc::X_OK as u32;
        assert!(m.access(file, r).is_ok());
        assert!(m.access(file, 0).is_ok());
        assert_eq!(m.access(file, w).unwrap_err().to_errno(), libc::EROFS);
        assert_eq!(m.access(file, x).unwrap_err().to_errno(), libc::EACCES);
        assert!(m.access(ROOT_INO, r | x).is_ok());
        assert_eq!(m.access(ROOT_INO, w).unwrap_err().to_errno(), libc::EROFS);
    }

    #[test]
    fn getxattr_probes_size_fills_exact_buffers_and_rejects_short_ones() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Ann/First (2001)/01 - One.flac");
        let name = b"user.musicfs.artist";
        assert_eq!(
            m.getxattr(file, name, 0).expect("probe"),
            XattrReply::Size(8)
        );
        assert_eq!(
            m.getxattr(file, name, 8).expect("exact"),
            XattrReply::Data(b"Ann; Bob".to_vec())
        );
        assert_eq!(
            m.getxattr(file, name, 100).expect("big"),
            XattrReply::Data(b"Ann; Bob".to_vec())
        );
        assert_eq!(
            m.getxattr(file, name, 7).unwrap_err().to_errno(),
            libc::ERANGE
        );
        assert_eq!(
            m.getxattr(file, b"user.musicfs.duration_ms", 64)
                .expect("dur"),
            XattrReply::Data(b"61000".to_vec())
        );
        assert_eq!(
            m.getxattr(file, b"user.musicfs.format", 64).expect("fmt"),
            XattrReply::Data(b"flac".to_vec())
        );
    }

    #[test]
    fn getxattr_of_absent_or_foreign_attributes_is_enodata() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Ann/First (2001)/01 - One.flac");
        for name in [
            &b"user.musicfs.genre"[..],
            b"user.musicfs.nonsense",
            b"user.other",
            b"security.capability",
            b"system.posix_acl_access",
        ] {
            let err = m.getxattr(file, name, 0).unwrap_err();
            assert_eq!(err.to_errno(), libc::ENODATA, "{name:?}");
        }
        let err = m.getxattr(ROOT_INO, b"user.musicfs.title", 0).unwrap_err();
        assert_eq!(err.to_errno(), libc::ENODATA);
    }

    #[test]
    fn source_xattr_is_the_absolute_origin_path_even_without_a_catalog() {
        let l = lib();
        let m = FsModel::new(l.shared(), None, FsConfig::default());
        let file = path_ino(&m, "Ann/First (2001)/02 - Two.flac");
        let want = l.source(2).into_os_string().into_encoded_bytes();
        assert_eq!(
            m.getxattr(file, b"user.musicfs.source", 4096)
                .expect("source"),
            XattrReply::Data(want)
        );
        assert_eq!(
            m.listxattr(file, 4096).expect("list"),
            XattrReply::Data(b"user.musicfs.source\0".to_vec())
        );
        assert_eq!(
            m.getxattr(file, b"user.musicfs.title", 0)
                .unwrap_err()
                .to_errno(),
            libc::ENODATA
        );
    }

    #[test]
    fn listxattr_names_present_tags_probes_and_ranges() {
        let l = lib();
        let m = model(&l);
        let file = path_ino(&m, "Ann/First (2001)/01 - One.flac");
        let want = b"user.musicfs.title\0user.musicfs.artist\0user.musicfs.duration_ms\0\
user.musicfs.format\0user.musicfs.source\0"
            .to_vec();
        assert_eq!(
            m.listxattr(file, 0).expect("probe"),
            XattrReply::Size(want.len() as u32)
        );
        assert_eq!(
            m.listxattr(file, want.len() as u32).expect("list"),
            XattrReply::Data(want.clone())
        );
        assert_eq!(
            m.listxattr(file, want.len() as u32 - 1)
                .unwrap_err()
                .to_errno(),
            libc::ERANGE
        );
        let dir = m.lookup(ROOT_INO, b"Ann").expect("Ann").ino;
        assert_eq!(m.listxattr(dir, 0).expect("dir"), XattrReply::Size(0));
    }

    #[test]
    fn the_root_reports_the_serving_mode_as_status_attributes() {
        let l = lib();
        let m = model(&l);
        let list = b"user.musicfs.transport\0user.musicfs.passthrough\0user.musicfs.origin_reads\0";
        assert_eq!(
            m.listxattr(ROOT_INO, 200).expect("list"),
            XattrReply::Data(list.to_vec())
        );
        assert_eq!(
            m.getxattr(ROOT_INO, b"user.musicfs.passthrough", 100)
                .expect("get"),
            XattrReply::Data(b"off".to_vec())
        );
        m.status().set_passthrough(true);
        assert_eq!(
            m.getxattr(ROOT_INO, b"user.musicfs.passthrough", 100)
                .expect("get"),
            XattrReply::Data(b"on".to_vec())
        );
        assert_eq!(
            m.getxattr(ROOT_INO, b"user.musicfs.title", 0)
                .unwrap_err()
                .to_errno(),
            libc::ENODATA
        );
    }
}
