//! The dispatcher driven with hand-built requests, as the kernel would send them, on both
//! request layouts (`/dev/fuse`: name after the per-op struct; io_uring: apart). No kernel.

use super::*;
use crate::fs::testlib::{content, Library};
use crate::fs::FsConfig;
use musicfs_core::meta::TrackMeta;
use musicfs_core::snapshot::ROOT_INO;

pub(crate) struct Rig {
    pub lib: Library,
    pub snap: Arc<arc_swap::ArcSwap<musicfs_core::snapshot::Snapshot>>,
    pub d: Dispatcher,
    pub io: WorkerIo,
    pub out: Vec<u8>,
    unique: u64,
}

pub(crate) fn meta(title: &str) -> TrackMeta {
    TrackMeta {
        title: Some(title.into()),
        artist: vec!["Ann".into()],
        ..TrackMeta::default()
    }
}

impl Rig {
    pub fn new(cfg: FsConfig) -> Rig {
        let mut lib = Library::new();
        lib.add("Ann/First/01 - One.flac", 10_000, meta("One"));
        lib.add("Ann/First/02 - Two.flac", 5, meta("Two"));
        lib.add("Bob/Solo/Alone.flac", 0, TrackMeta::default());
        let tags: Arc<dyn crate::xattr::TagSource> = lib.tags();
        let snap = lib.shared();
        let model = Arc::new(FsModel::new(snap.clone(), Some(tags), cfg));
        let d = Dispatcher::new(model, Wants::default(), false);
        Rig {
            lib,
            snap,
            d,
            io: WorkerIo {
                dev_fd: -1,
                ring: None,
            },
            out: vec![0u8; 1 << 20],
            unique: 0,
        }
    }

    pub fn standard() -> Rig {
        Rig::new(FsConfig {
            uid: Some(1234),
            gid: Some(5678),
            ..FsConfig::default()
        })
    }

    /// Sends `opcode` on `nodeid` laid out as `/dev/fuse` delivers it.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Outcome {
        self.call_split(opcode, nodeid, body, &[])
    }

    /// Sends `opcode` with the per-op struct and the payload apart (the io_uring layout).
    pub fn call_split(&mut self, opcode: u32, nodeid: u64, op: &[u8], data: &[u8]) -> Outcome {
        self.unique += 1;
        let h = abi::InHeader {
            len: (std::mem::size_of::<abi::InHeader>() + op.len() + data.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            ..abi::InHeader::default()
        };
        let req = Req { h, op, data };
        self.d.handle(&mut self.io, &req, &mut self.out)
    }

    pub fn reply<T: Pod>(&self, o: &Outcome) -> T {
        match o {
            Outcome::Reply(n) => {
                assert!(*n >= std::mem::size_of::<T>(), "reply of {n} bytes");
                T::read_from(&self.out[..*n]).expect("reply struct")
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Outcome {
        self.call(abi::FUSE_LOOKUP, parent, &cstr(name))
    }

    /// The node id the kernel would know `path` by (a track file's names its version).
    pub fn ino(&mut self, path: &str) -> u64 {
        path.split('/').fold(ROOT_INO, |dir, name| {
            let o = self.lookup(dir, name);
            self.reply::<abi::EntryOut>(&o).nodeid
        })
    }

    /// Opens directory `ino` and returns its handle.
    pub fn opendir(&mut self, ino: u64) -> u64 {
        let o = self.call(abi::FUSE_OPENDIR, ino, &[0u8; 8]);
        self.reply::<abi::OpenOut>(&o).fh
    }

    pub fn open(&mut self, ino: u64, flags: i32) -> Outcome {
        let o = abi::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        };
        self.call(abi::FUSE_OPEN, ino, o.as_bytes())
    }

    pub fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32, op: u32) -> Outcome {
        let r = abi::ReadIn {
            fh,
            offset,
            size,
            ..abi::ReadIn::default()
        };
        self.call(op, ino, r.as_bytes())
    }

    pub fn release(&mut self, ino: u64, fh: u64, op: u32) -> Outcome {
        let r = abi::ReleaseIn {
            fh,
            ..abi::ReleaseIn::default()
        };
        self.call(op, ino, r.as_bytes())
    }
}

pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn errno(o: Outcome) -> i32 {
    match o {
        Outcome::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Decodes a readdir(plus) reply: (name, ino, next offset, type, entry nodeid).
fn dirents(buf: &[u8], plus: bool) -> Vec<(String, u64, u64, u32, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let mut nodeid = 0;
        if plus {
            let e = abi::EntryOut::read_from(&buf[at..]).expect("entry");
            nodeid = e.nodeid;
            at += std::mem::size_of::<abi::EntryOut>();
        }
        let d = abi::Dirent::read_from(&buf[at..]).expect("dirent");
        let name_at = at + std::mem::size_of::<abi::Dirent>();
        let name = &buf[name_at..name_at + d.namelen as usize];
        out.push((
            String::from_utf8(name.to_vec()).expect("utf8"),
            d.ino,
            d.off,
            d.typ,
            nodeid,
        ));
        at += abi::dirent_size(d.namelen as usize);
    }
    out
}

#[test]
fn every_write_operation_answers_erofs() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let writes = [
        abi::FUSE_SETATTR,
        abi::FUSE_SYMLINK,
        abi::FUSE_MKNOD,
        abi::FUSE_MKDIR,
        abi::FUSE_UNLINK,
        abi::FUSE_RMDIR,
        abi::FUSE_RENAME,
        abi::FUSE_RENAME2,
        abi::FUSE_LINK,
        abi::FUSE_WRITE,
        abi::FUSE_SETXATTR,
        abi::FUSE_REMOVEXATTR,
        abi::FUSE_CREATE,
        abi::FUSE_TMPFILE,
        abi::FUSE_FALLOCATE,
        abi::FUSE_COPY_FILE_RANGE,
    ];
    for op in writes {
        assert_eq!(
            errno(r.call(op, file, &[0u8; 64])),
            libc::EROFS,
            "opcode {op}"
        );
    }
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
    ] {
        assert_eq!(errno(r.open(file, flags)), libc::EROFS, "open {flags:#o}");
    }
    let w = abi::AccessIn {
        mask: libc::W_OK as u32,
        padding: 0,
    };
    assert_eq!(
        errno(r.call(abi::FUSE_ACCESS, file, w.as_bytes())),
        libc::EROFS
    );
}

#[test]
fn lookup_answers_with_the_entry_and_its_timeouts() {
    let mut r = Rig::standard();
    let dir = r.ino("Ann/First");
    let o = r.lookup(dir, "02 - Two.flac");
    let e: abi::EntryOut = r.reply(&o);
    assert_ne!(e.nodeid, 0);
    assert_eq!((e.entry_valid, e.attr_valid), (3600, 3600));
    // A track file's node id is its inode number tagged with its content version.
    assert_eq!(
        nodeid::split(e.nodeid),
        (e.attr.ino, nodeid::version_tag(e.generation))
    );
    assert_ne!(e.nodeid, e.attr.ino);
    assert_eq!(e.attr.size, 5);
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!((e.attr.uid, e.attr.gid), (1234, 5678));
    assert_eq!(e.attr.blksize, crate::fs::IO_BLOCK_SIZE);
    let o = r.lookup(ROOT_INO, "Ann");
    let a: abi::EntryOut = r.reply(&o);
    assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn a_missing_name_is_a_negative_entry_cached_for_the_negative_timeout() {
    let mut r = Rig::new(FsConfig {
        negative_timeout: Duration::from_millis(2500),
        ..FsConfig::default()
    });
    let o = r.lookup(ROOT_INO, "Nobody");
    let e: abi::EntryOut = r.reply(&o);
    assert_eq!(e.nodeid, 0);
    assert_eq!((e.entry_valid, e.entry_valid_nsec), (2, 500_000_000));
}

#[test]
fn a_missing_name_is_enoent_when_negative_caching_is_off() {
    let mut r = Rig::new(FsConfig {
        negative_timeout: Duration::ZERO,
        ..FsConfig::default()
    });
    assert_eq!(errno(r.lookup(ROOT_INO, "Nobody")), libc::ENOENT);
}

#[test]
fn lookups_in_files_stale_parents_and_unterminated_names_are_refused() {
    let mut r = Rig::standard();
    let file = r.ino("Bob/Solo/Alone.flac");
    assert_eq!(errno(r.lookup(file, "x")), libc::ENOTDIR);
    assert_eq!(errno(r.lookup(987_654_321, "x")), libc::ESTALE);
    assert_eq!(
        errno(r.call(abi::FUSE_LOOKUP, ROOT_INO, b"no-nul")),
        libc::EINVAL
    );
}

#[test]
fn both_request_layouts_get_the_same_answer() {
    let mut r = Rig::standard();
    let dev = r.lookup(ROOT_INO, "Ann");
    let a: abi::EntryOut = r.reply(&dev);
    let split = r.call_split(abi::FUSE_LOOKUP, ROOT_INO, &[], &cstr("Ann"));
    let b: abi::EntryOut = r.reply(&split);
    assert_eq!(a.as_bytes(), b.as_bytes());
    let file = r.ino("Ann/First/01 - One.flac");
    let g = abi::GetxattrIn {
        size: 0,
        padding: 0,
    };
    let name = cstr("user.musicfs.title");
    let mut body = g.as_bytes().to_vec();
    body.extend_from_slice(&name);
    let dev = r.call(abi::FUSE_GETXATTR, file, &body);
    let split = r.call_split(abi::FUSE_GETXATTR, file, g.as_bytes(), &name);
    assert_eq!(dev, split);
    assert_eq!(r.reply::<abi::GetxattrOut>(&split).size, 3);
}

#[test]
fn getattr_answers_with_the_attr_timeout() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let o = r.call(abi::FUSE_GETATTR, file, &[0u8; 16]);
    let a: abi::AttrOut = r.reply(&o);
    assert_eq!(a.attr_valid, 3600);
    assert_eq!(a.attr.size, 10_000);
    assert_eq!(a.attr.blocks, 10_000u64.div_ceil(512));
    assert_eq!(errno(r.call(abi::FUSE_GETATTR, 424_242, &[])), libc::ESTALE);
}

#[test]
fn open_keeps_the_page_cache_and_opendir_caches_the_listing() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let o = r.open(file, libc::O_RDONLY);
    let open: abi::OpenOut = r.reply(&o);
    assert_eq!(open.open_flags, abi::FOPEN_KEEP_CACHE);
    assert_eq!(open.backing_id, 0);
    assert_eq!(
        r.release(file, open.fh, abi::FUSE_RELEASE),
        Outcome::Reply(0)
    );
    let o = r.call(abi::FUSE_OPENDIR, ROOT_INO, &[0u8; 8]);
    let dir: abi::OpenOut = r.reply(&o);
    assert_eq!(dir.open_flags, abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE);
    assert_eq!(
        r.release(ROOT_INO, dir.fh, abi::FUSE_RELEASEDIR),
        Outcome::Reply(0)
    );
    assert_eq!(
        errno(r.call(abi::FUSE_OPENDIR, file, &[0u8; 8])),
        libc::ENOTDIR
    );
    assert_eq!(errno(r.open(ROOT_INO, libc::O_RDONLY)), libc::EISDIR);
}

#[test]
fn read_returns_the_source_bytes_at_any_offset_and_short_at_the_end() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let o = r.open(file, libc::O_RDONLY);
    let fh = r.reply::<abi::OpenOut>(&o).fh;
    let want = content(1, 10_000);
    for (offset, size) in [(0u64, 4096u32), (4095, 3), (9_990, 4096), (10_000, 10)] {
        let o = r.read(file, fh, offset, size, abi::FUSE_READ);
        let Outcome::Reply(n) = o else {
            panic!("read failed: {o:?}")
        };
        let from = offset as usize;
        let to = (from + size as usize).min(want.len());
        assert_eq!(&r.out[..n], &want[from..to], "read {offset}+{size}");
    }
    assert_eq!(r.release(file, fh, abi::FUSE_RELEASE), Outcome::Reply(0));
    assert_eq!(errno(r.read(file, fh, 0, 10, abi::FUSE_READ)), libc::EBADF);
    assert_eq!(errno(r.release(file, fh, abi::FUSE_RELEASE)), libc::EBADF);
}

#[test]
fn a_vanished_source_fails_open_without_hanging() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    std::fs::remove_file(r.lib.source(1)).expect("remove source");
    assert_eq!(errno(r.open(file, libc::O_RDONLY)), libc::EIO);
}

#[test]
fn an_offline_origin_fails_opens_at_once_with_eio_and_recovers() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let health = r.d.model().config().origin_health.clone();
    health.set_offline(0, "emptied");
    assert_eq!(errno(r.open(file, libc::O_RDONLY)), libc::EIO);
    health.set_online(0);
    let o = r.open(file, libc::O_RDONLY);
    assert_ne!(r.reply::<abi::OpenOut>(&o).fh, 0);
}

#[test]
fn with_skip_open_the_kernel_opens_files_itself_and_reads_by_inode() {
    let mut r = Rig::new(FsConfig {
        skip_open: true,
        ..FsConfig::default()
    });
    let file = r.ino("Ann/First/01 - One.flac");
    assert_eq!(errno(r.open(file, libc::O_RDONLY)), libc::ENOSYS);
    let want = content(1, 10_000);
    for _ in 0..2 {
        let Outcome::Reply(n) = r.read(file, 0, 100, 50, abi::FUSE_READ) else {
            panic!("read by inode")
        };
        assert_eq!(&r.out[..n], &want[100..150]);
    }
    let dir = r.ino("Ann/First");
    assert_eq!(errno(r.read(dir, 0, 0, 10, abi::FUSE_READ)), libc::EISDIR);
    assert_eq!(
        errno(r.read(1 << 40, 0, 0, 10, abi::FUSE_READ)),
        libc::ESTALE
    );
    let health = r.d.model().config().origin_health.clone();
    health.set_offline(0, "emptied");
    assert_eq!(errno(r.read(file, 0, 0, 10, abi::FUSE_READ)), libc::EIO);
}

#[test]
fn a_read_by_inode_follows_a_republished_source() {
    let mut r = Rig::new(FsConfig {
        skip_open: true,
        ..FsConfig::default()
    });
    let file = r.ino("Ann/First/02 - Two.flac");
    assert_eq!(r.read(file, 0, 0, 64, abi::FUSE_READ), Outcome::Reply(5));
    // The source is replaced (new content, new scan state): the next snapshot gives the
    // file a new generation, so a new node id, and reads by inode open the new source.
    std::fs::write(r.lib.source(2), b"replaced!").expect("rewrite");
    r.lib.records[1].0.scan.size = 9;
    r.lib.records[1].0.scan.mtime_ns += 1;
    r.snap.store(Arc::new(r.lib.snapshot(2)));
    let now = r.ino("Ann/First/02 - Two.flac");
    assert_ne!(now, file);
    assert_eq!(nodeid::split(now).0, nodeid::split(file).0, "st_ino stays");
    assert_eq!(r.read(now, 0, 0, 64, abi::FUSE_READ), Outcome::Reply(9));
    assert_eq!(&r.out[..9], b"replaced!");
    // The old version's node id holds no handle to read it by: stale, never the new bytes.
    assert_eq!(errno(r.read(file, 0, 0, 64, abi::FUSE_READ)), libc::ESTALE);
}

#[test]
fn a_handle_keeps_reading_the_version_it_opened_after_a_refresh_replaces_it() {
    let mut r = Rig::standard();
    let old = r.ino("Ann/First/02 - Two.flac");
    let o = r.open(old, libc::O_RDONLY);
    let fh = r.reply::<abi::OpenOut>(&o).fh;
    let getattr = |r: &mut Rig, nodeid: u64, fh: Option<u64>| {
        let g = abi::GetattrIn {
            getattr_flags: fh.map_or(0, |_| abi::FUSE_GETATTR_FH),
            dummy: 0,
            fh: fh.unwrap_or(0),
        };
        let o = r.call(abi::FUSE_GETATTR, nodeid, g.as_bytes());
        match o {
            Outcome::Reply(_) => Ok(r.reply::<abi::AttrOut>(&o).attr),
            other => Err(errno(other)),
        }
    };
    let before = getattr(&mut r, old, None).expect("getattr");
    // A tag editor replaces the file (a new file renamed over the old), and a refresh
    // publishes the new version.
    let src = r.lib.source(2);
    std::fs::write(src.with_extension("part"), b"re-tagged!!").expect("write");
    std::fs::rename(src.with_extension("part"), &src).expect("rename");
    r.lib.records[1].0.scan.size = 11;
    r.lib.records[1].0.scan.mtime_ns += 1;
    r.snap.store(Arc::new(r.lib.snapshot(2)));
    let new = r.ino("Ann/First/02 - Two.flac");
    assert_ne!(new, old, "the new version is a new node");
    // The handle reads the version it opened, whole; the kernel's questions about that
    // node (fstat names no handle; a read near the end does) get that version's attributes.
    assert_eq!(r.read(old, fh, 0, 64, abi::FUSE_READ), Outcome::Reply(5));
    assert_eq!(&r.out[..5], content(2, 5).as_slice());
    assert_eq!(getattr(&mut r, old, None).map(|a| a.size), Ok(before.size));
    assert_eq!(
        getattr(&mut r, old, Some(fh)).map(|a| a.size),
        Ok(before.size)
    );
    assert_eq!(getattr(&mut r, new, None).map(|a| a.size), Ok(11));
    assert_eq!(getattr(&mut r, new, None).map(|a| a.ino), Ok(before.ino));
    // Opening the old node again is stale (the kernel then looks the name up again);
    // the new one opens the new version.
    assert_eq!(errno(r.open(old, libc::O_RDONLY)), libc::ESTALE);
    let o = r.open(new, libc::O_RDONLY);
    let fresh = r.reply::<abi::OpenOut>(&o).fh;
    assert_eq!(
        r.read(new, fresh, 0, 64, abi::FUSE_READ),
        Outcome::Reply(11)
    );
    assert_eq!(&r.out[..11], b"re-tagged!!");
    // Once no handle holds the old version, nothing answers for it.
    for h in [fh, fresh] {
        assert_eq!(r.release(old, h, abi::FUSE_RELEASE), Outcome::Reply(0));
    }
    assert_eq!(
        getattr(&mut r, old, None).map(|a| a.size),
        Err(libc::ESTALE)
    );
}

#[test]
fn readdir_encodes_dots_then_children_and_resumes_at_any_offset() {
    let mut r = Rig::standard();
    let dir = r.ino("Ann/First");
    let fh = r.opendir(dir);
    let Outcome::Reply(n) = r.read(dir, fh, 0, 4096, abi::FUSE_READDIR) else {
        panic!("readdir")
    };
    let all = dirents(&r.out[..n], false);
    let names: Vec<&str> = all.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, [".", "..", "01 - One.flac", "02 - Two.flac"]);
    assert_eq!(all[0].1, dir);
    assert_eq!(all[1].1, r.ino("Ann"));
    assert_eq!(all[0].3, u32::from(libc::DT_DIR));
    assert_eq!(all[2].3, u32::from(libc::DT_REG));
    assert_eq!(all[2].1, nodeid::split(r.ino("Ann/First/01 - One.flac")).0);
    for (i, e) in all.iter().enumerate() {
        let Outcome::Reply(n) = r.read(dir, fh, e.2, 4096, abi::FUSE_READDIR) else {
            panic!("readdir from {}", e.2)
        };
        let rest = dirents(&r.out[..n], false);
        assert_eq!(rest, all[i + 1..].to_vec(), "resuming after {}", e.0);
    }
    // A buffer with room for one entry gets exactly one.
    let one = abi::dirent_size(1) as u32;
    let Outcome::Reply(n) = r.read(dir, fh, 0, one, abi::FUSE_READDIR) else {
        panic!("readdir small")
    };
    assert_eq!(dirents(&r.out[..n], false).len(), 1);
}

#[test]
fn readdirplus_gives_every_child_its_entry_and_the_dots_none() {
    let mut r = Rig::standard();
    let dir = r.ino("Ann/First");
    let fh = r.opendir(dir);
    let Outcome::Reply(n) = r.read(dir, fh, 0, 8192, abi::FUSE_READDIRPLUS) else {
        panic!("readdirplus")
    };
    let all = dirents(&r.out[..n], true);
    assert_eq!(all.len(), 4);
    assert_eq!((all[0].4, all[1].4), (0, 0));
    assert_eq!(nodeid::split(all[2].4).0, all[2].1, "node id and st_ino");
    let first = abi::EntryOut::read_from(&r.out[..n]).expect("entry");
    assert_eq!(first.entry_valid, 0);
    let third_at =
        2 * std::mem::size_of::<abi::EntryOut>() + abi::dirent_size(1) + abi::dirent_size(2);
    let third = abi::EntryOut::read_from(&r.out[third_at..n]).expect("entry");
    assert_eq!(third.attr.size, 10_000);
    assert_eq!(third.entry_valid, 3600);
    assert_eq!(
        errno(r.read(dir, 999, 0, 4096, abi::FUSE_READDIRPLUS)),
        libc::EBADF
    );
}

#[test]
fn init_negotiates_readdirplus_parallel_dirops_and_big_reads_not_writeback() {
    let mut r = Rig::standard();
    let offered = !(abi::FUSE_PASSTHROUGH | abi::FUSE_OVER_IO_URING);
    let init = abi::InitIn {
        major: 7,
        minor: 42,
        max_readahead: 1 << 20,
        flags: offered as u32,
        flags2: (offered >> 32) as u32,
        ..abi::InitIn::default()
    };
    let o = r.call(abi::FUSE_INIT, 0, init.as_bytes());
    let out: abi::InitOut = r.reply(&o);
    let granted = u64::from(out.flags) | u64::from(out.flags2) << 32;
    for want in [
        abi::FUSE_DO_READDIRPLUS,
        abi::FUSE_PARALLEL_DIROPS,
        abi::FUSE_MAX_PAGES,
        abi::FUSE_ASYNC_READ,
    ] {
        assert_ne!(granted & want, 0, "flag {want:#x}");
    }
    assert_eq!(granted & abi::FUSE_WRITEBACK_CACHE, 0);
    assert_eq!(out.minor, 42);
    assert_eq!(r.d.negotiated().map(|n| n.minor), Some(42));
    let old = abi::InitIn { major: 6, ..init };
    assert_eq!(
        errno(r.call(abi::FUSE_INIT, 0, old.as_bytes())),
        libc::EPROTO
    );
}

#[test]
fn xattrs_probe_sizes_return_values_and_refuse_short_buffers() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let get = |r: &mut Rig, name: &str, size: u32| {
        let mut body = abi::GetxattrIn { size, padding: 0 }.as_bytes().to_vec();
        body.extend_from_slice(&cstr(name));
        r.call(abi::FUSE_GETXATTR, file, &body)
    };
    let o = get(&mut r, "user.musicfs.title", 0);
    assert_eq!(r.reply::<abi::GetxattrOut>(&o).size, 3);
    assert_eq!(get(&mut r, "user.musicfs.title", 64), Outcome::Reply(3));
    assert_eq!(&r.out[..3], b"One");
    assert_eq!(errno(get(&mut r, "user.musicfs.title", 2)), libc::ERANGE);
    assert_eq!(errno(get(&mut r, "user.other", 64)), libc::ENODATA);
    assert_eq!(errno(get(&mut r, "user.musicfs.genre", 64)), libc::ENODATA);
    let list = abi::GetxattrIn {
        size: 4096,
        padding: 0,
    };
    let Outcome::Reply(n) = r.call(abi::FUSE_LISTXATTR, file, list.as_bytes()) else {
        panic!("listxattr")
    };
    let names: Vec<&[u8]> = r.out[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    assert!(names.contains(&b"user.musicfs.title".as_slice()));
    assert!(names.contains(&b"user.musicfs.source".as_slice()));
    assert!(!names.contains(&b"user.musicfs.genre".as_slice()));
    let probe = abi::GetxattrIn {
        size: 0,
        padding: 0,
    };
    let o = r.call(abi::FUSE_LISTXATTR, file, probe.as_bytes());
    assert_eq!(r.reply::<abi::GetxattrOut>(&o).size as usize, n);
}

#[test]
fn flush_is_unsupported_so_close_skips_the_round_trip() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    assert_eq!(
        errno(r.call(abi::FUSE_FLUSH, file, &[0u8; 24])),
        libc::ENOSYS
    );
    assert_eq!(r.call(abi::FUSE_FSYNC, file, &[0u8; 16]), Outcome::Reply(0));
}

#[test]
fn forget_interrupt_get_no_reply_and_unknown_opcodes_enosys() {
    let mut r = Rig::standard();
    for op in [
        abi::FUSE_FORGET,
        abi::FUSE_BATCH_FORGET,
        abi::FUSE_INTERRUPT,
    ] {
        assert_eq!(r.call(op, 5, &[0u8; 16]), Outcome::Silent, "opcode {op}");
    }
    assert_eq!(errno(r.call(9999, ROOT_INO, &[])), libc::ENOSYS);
    assert_eq!(
        errno(r.call(abi::FUSE_READLINK, ROOT_INO, &[])),
        libc::EINVAL
    );
}

#[test]
fn short_or_empty_request_bodies_are_answered_not_panicking() {
    let mut r = Rig::standard();
    for op in 0..64 {
        if op == abi::FUSE_DESTROY {
            continue;
        }
        let _ = r.call(op, ROOT_INO, &[]);
        let _ = r.call(op, ROOT_INO, &[0xff; 3]);
        let _ = r.call_split(op, ROOT_INO, &[], &[]);
    }
}

#[test]
fn statfs_counts_tracks_and_blocks() {
    let mut r = Rig::standard();
    let o = r.call(abi::FUSE_STATFS, ROOT_INO, &[]);
    let s: abi::Kstatfs = r.reply(&o);
    assert_eq!(s.files, 3);
    assert_eq!(s.bsize, crate::fs::BLOCK_SIZE);
    assert_eq!(
        s.blocks,
        10_005u64.div_ceil(u64::from(crate::fs::BLOCK_SIZE))
    );
}

#[test]
fn access_allows_reading_and_refuses_executing_files() {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let mask = |m: i32| abi::AccessIn {
        mask: m as u32,
        padding: 0,
    };
    assert_eq!(
        r.call(abi::FUSE_ACCESS, file, mask(libc::R_OK).as_bytes()),
        Outcome::Reply(0)
    );
    assert_eq!(
        errno(r.call(abi::FUSE_ACCESS, file, mask(libc::X_OK).as_bytes())),
        libc::EACCES
    );
    assert_eq!(
        r.call(abi::FUSE_ACCESS, ROOT_INO, mask(libc::X_OK).as_bytes()),
        Outcome::Reply(0)
    );
}

#[test]
fn a_listing_restarted_after_a_republish_shows_the_new_tree_and_a_continued_one_is_not_cached() {
    let mut r = Rig::standard();
    let dir = r.ino("Ann/First");
    let fh = r.opendir(dir);
    // "02 - Two.flac" is deleted and the tree republished while the handle is open.
    r.lib.records.remove(1);
    r.snap.store(Arc::new(r.lib.snapshot(2)));

    // Continuing after `.`, `..` and the first child: the listing's own tree, uncached.
    let Outcome::Reply(n) = r.read(dir, fh, 3, 8192, abi::FUSE_READDIRPLUS) else {
        panic!("readdirplus")
    };
    let rest = dirents(&r.out[..n], true);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, "02 - Two.flac");
    let entry = abi::EntryOut::read_from(&r.out[..n]).expect("entry");
    assert_eq!((entry.entry_valid, entry.attr_valid), (0, 0));

    // Restarting: the tree served now, cached as usual.
    let Outcome::Reply(n) = r.read(dir, fh, 0, 8192, abi::FUSE_READDIRPLUS) else {
        panic!("readdirplus")
    };
    let all = dirents(&r.out[..n], true);
    let names: Vec<&str> = all.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(names, [".", "..", "01 - One.flac"]);
    let third_at =
        2 * std::mem::size_of::<abi::EntryOut>() + abi::dirent_size(1) + abi::dirent_size(2);
    let third = abi::EntryOut::read_from(&r.out[third_at..n]).expect("entry");
    assert_eq!(third.entry_valid, 3600);
}

mod fuzz {
    //! Requests as a hostile or buggy kernel could send them: any opcode on any inode with
    //! any bytes, in both layouts. The dispatcher must answer (an error is fine), never
    //! panic. Part of `tools/fuzz.sh` (named `fuzz_*`; `PROPTEST_CASES` sets the count).
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;

    thread_local! {
        static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
    }

    fn opcode() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => prop::sample::select(vec![
                abi::FUSE_LOOKUP, abi::FUSE_FORGET, abi::FUSE_GETATTR, abi::FUSE_SETATTR,
                abi::FUSE_READLINK, abi::FUSE_OPEN, abi::FUSE_READ, abi::FUSE_WRITE,
                abi::FUSE_STATFS, abi::FUSE_RELEASE, abi::FUSE_GETXATTR, abi::FUSE_LISTXATTR,
                abi::FUSE_SETXATTR, abi::FUSE_REMOVEXATTR, abi::FUSE_FLUSH, abi::FUSE_INIT,
                abi::FUSE_OPENDIR, abi::FUSE_READDIR, abi::FUSE_RELEASEDIR,
                abi::FUSE_ACCESS, abi::FUSE_CREATE, abi::FUSE_INTERRUPT,
                abi::FUSE_BATCH_FORGET, abi::FUSE_READDIRPLUS, abi::FUSE_MKDIR,
                abi::FUSE_UNLINK, abi::FUSE_RENAME, abi::FUSE_COPY_FILE_RANGE,
            ]),
            1 => any::<u32>(),
        ]
    }

    fn nodeid() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => prop::sample::select(vec![0u64, ROOT_INO, 2, 3, u64::MAX]),
            3 => (0u64..64).prop_map(|i| musicfs_core::tree::FILE_INO_BASE + i),
            1 => any::<u64>(),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_dispatcher_answers_any_request(
            op in opcode(),
            node in nodeid(),
            body in prop::collection::vec(any::<u8>(), 0..160),
            data in prop::collection::vec(any::<u8>(), 0..48),
            split in any::<bool>(),
        ) {
            RIG.with(|rig| {
                let mut rig = rig.borrow_mut();
                let rig = rig.get_or_insert_with(Rig::standard);
                let _ = if split {
                    rig.call_split(op, node, &body, &data)
                } else {
                    rig.call(op, node, &body)
                };
            });
        }
    }
}

#[test]
fn failure_warnings_are_capped_per_second() {
    let budget = super::WarnBudget::new();
    let admitted = (0..1000).filter(|_| budget.admit()).count() as u64;
    // All within one second (or, rarely, across one boundary).
    assert!(
        (super::WARNINGS_PER_SECOND..=2 * super::WARNINGS_PER_SECOND).contains(&admitted),
        "{admitted}"
    );
    assert!(budget.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
