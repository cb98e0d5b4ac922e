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
            uid: Some(1234),
            gid: Some(5678),
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

fn perm(mode: u32, uid: u32, gid: u32) -> Option<musicfs_core::Perm> {
    Some(musicfs_core::Perm { mode, uid, gid })
}

/// Ann's files are uid 10 (0640 gid 20, 0750 gid 21); Bob's is 0600 root.
fn owned_lib() -> Library {
    let mut l = Library::new();
    l.add_with_perm("Ann/A/1.flac", 3, meta("1"), perm(0o640, 10, 20));
    l.add_with_perm("Ann/A/2.flac", 3, meta("2"), perm(0o6750, 10, 21));
    l.add_with_perm("Bob/B/3.flac", 3, meta("3"), perm(0o600, 0, 0));
    l
}

fn mapped(l: &Library, cfg: FsConfig) -> FsModel {
    FsModel::new(l.shared(), None, cfg)
}

fn unmapped() -> FsConfig {
    FsConfig {
        default_uid: 77,
        default_gid: 88,
        ..FsConfig::default()
    }
}

#[test]
fn files_show_their_sources_owner_and_read_execute_bits_never_write() {
    let l = owned_lib();
    let m = mapped(&l, unmapped());

    let one = m.getattr(path_ino(&m, "Ann/A/1.flac")).expect("1");
    assert_eq!(one.mode(), libc::S_IFREG | 0o440);
    assert_eq!((one.uid, one.gid), (10, 20));
    let two = m.getattr(path_ino(&m, "Ann/A/2.flac")).expect("2");
    assert_eq!(
        two.mode(),
        libc::S_IFREG | 0o550,
        "no setuid, setgid or write"
    );
    let three = m.getattr(path_ino(&m, "Bob/B/3.flac")).expect("3");
    assert_eq!(
        (three.mode(), three.uid, three.gid),
        (libc::S_IFREG | 0o400, 0, 0)
    );
}

#[test]
fn directories_show_search_for_the_files_below_and_the_default_owner_when_mixed() {
    let l = owned_lib();
    let m = mapped(&l, unmapped());

    let ann = m.lookup(ROOT_INO, b"Ann").expect("Ann");
    assert_eq!(ann.mode(), libc::S_IFDIR | 0o550);
    assert_eq!((ann.uid, ann.gid), (10, 88), "gids 20 and 21 differ");
    let bob = m.lookup(ROOT_INO, b"Bob").expect("Bob");
    assert_eq!(
        (bob.mode(), bob.uid, bob.gid),
        (libc::S_IFDIR | 0o500, 0, 0)
    );
    let root = m.getattr(ROOT_INO).expect("root");
    assert_eq!(
        (root.mode(), root.uid, root.gid),
        (libc::S_IFDIR | 0o550, 77, 88)
    );
}

#[test]
fn uid_gid_override_and_umask_apply_to_every_node() {
    let l = owned_lib();
    let m = mapped(
        &l,
        FsConfig {
            uid: Some(5),
            gid: Some(6),
            umask: 0o027,
            ..unmapped()
        },
    );

    let two = m.getattr(path_ino(&m, "Ann/A/2.flac")).expect("2");
    assert_eq!(
        (two.mode(), two.uid, two.gid),
        (libc::S_IFREG | 0o550, 5, 6)
    );
    let one = m.getattr(path_ino(&m, "Ann/A/1.flac")).expect("1");
    assert_eq!(one.mode(), libc::S_IFREG | 0o440);
    let ann = m.lookup(ROOT_INO, b"Ann").expect("Ann");
    assert_eq!(
        (ann.mode(), ann.uid, ann.gid),
        (libc::S_IFDIR | 0o550, 5, 6)
    );

    let strict = mapped(
        &l,
        FsConfig {
            umask: 0o077,
            ..unmapped()
        },
    );
    let one = strict
        .getattr(path_ino(&strict, "Ann/A/1.flac"))
        .expect("1");
    assert_eq!((one.mode(), one.uid), (libc::S_IFREG | 0o400, 10));
}

#[test]
fn sources_of_unknown_mode_show_the_default_modes_through_the_umask() {
    let l = lib();
    let m = mapped(
        &l,
        FsConfig {
            umask: 0o022,
            ..unmapped()
        },
    );
    let f = m
        .getattr(path_ino(&m, "Ann/First (2001)/02 - Two.flac"))
        .expect("file");
    assert_eq!((f.mode(), f.uid, f.gid), (libc::S_IFREG | 0o444, 77, 88));
    let root = m.getattr(ROOT_INO).expect("root");
    assert_eq!(root.mode(), libc::S_IFDIR | 0o555);
}

#[test]
fn readdir_entries_carry_the_same_owner_and_mode_as_lookup() {
    let l = owned_lib();
    let m = mapped(&l, unmapped());
    let dir = path_ino(&m, "Ann/A");
    let fh = m.opendir(dir).expect("opendir");
    let mut seen = Vec::new();
    m.readdir(fh, dir, 0, &mut |it| {
        if let Some(a) = it.attr {
            seen.push((it.name.to_vec(), a));
        }
        true
    })
    .expect("readdir");
    m.releasedir(fh).expect("releasedir");
    assert_eq!(seen.len(), 2);
    for (name, attr) in seen {
        assert_eq!(m.lookup(dir, &name).expect("lookup"), attr);
    }
}

#[test]
fn access_allows_execute_on_a_file_someone_may_execute() {
    let l = owned_lib();
    let m = mapped(&l, unmapped());
    let two = path_ino(&m, "Ann/A/2.flac");
    assert!(m.access(two, libc::X_OK as u32).is_ok());
    let one = path_ino(&m, "Ann/A/1.flac");
    let err = m.access(one, libc::X_OK as u32).unwrap_err();
    assert_eq!(err.to_errno(), libc::EACCES);
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
fn open_of_a_vanished_source_is_eio() {
    let l = lib();
    let m = model(&l);
    std::fs::remove_file(l.source(2)).expect("remove");
    let file = path_ino(&m, "Ann/First (2001)/02 - Two.flac");
    assert_eq!(m.open(file, 0).unwrap_err().to_errno(), libc::EIO);
}

#[test]
fn open_of_a_track_of_an_offline_origin_is_eio_until_it_is_back() {
    let l = lib();
    let health = Arc::new(musicfs_core::health::OriginHealth::default());
    let m = FsModel::new(
        l.shared(),
        None,
        FsConfig {
            origin_health: health.clone(),
            ..FsConfig::default()
        },
    );
    let file = path_ino(&m, "Ann/First (2001)/02 - Two.flac");
    // The test library has one origin, id 0.
    let origin = 0;
    health.set_offline(origin, "root missing");
    let err = m.open(file, 0).unwrap_err();
    assert!(matches!(err, FsError::OriginOffline { .. }), "{err}");
    assert_eq!(err.to_errno(), libc::EIO);
    let listed = m
        .getxattr(ROOT_INO, b"user.musicfs.origins", 4096)
        .expect("xattr");
    let XattrReply::Data(text) = listed else {
        panic!("no data: {listed:?}");
    };
    assert!(
        String::from_utf8_lossy(&text).contains("\toffline\troot missing"),
        "{text:?}"
    );
    health.set_online(origin);
    let fh = m.open(file, 0).expect("open once back");
    m.release(fh).expect("release");
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
    let list = b"user.musicfs.transport\0user.musicfs.passthrough\0user.musicfs.origin_reads\0\
user.musicfs.origins\0";
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

/// A finder with fixed answers: any query whose text is a track id list (`1,3`) finds
/// those; `bad` does not parse; one collection, `all`, holds every track newest first.
#[derive(Debug)]
struct FixedFinder {
    version: std::sync::atomic::AtomicU64,
}

impl crate::virt::Finder for FixedFinder {
    fn search(&self, query: &str) -> Result<Vec<u64>, String> {
        query
            .split(',')
            .map(|n| n.parse().map_err(|_| format!("`{n}` is not an id")))
            .collect()
    }
    fn collections(&self) -> Vec<String> {
        vec!["all".into()]
    }
    fn collection(&self, name: &str) -> Option<Result<Vec<u64>, String>> {
        (name == "all").then(|| Ok(vec![3, 2, 1]))
    }
    fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn finder_model(l: &Library) -> (FsModel, Arc<FixedFinder>) {
    let finder = Arc::new(FixedFinder { version: 1.into() });
    (model(l).with_finder(finder.clone()), finder)
}

#[test]
fn search_and_collection_directories_hold_ranked_symlinks_into_the_tree() {
    let l = lib();
    let (m, finder) = finder_model(&l);
    let search = m.lookup(ROOT_INO, b".search").unwrap();
    assert_eq!(search.kind, Kind::Dir);
    let q = m.lookup(search.ino, b"2,1").unwrap();
    assert_eq!(q.kind, Kind::Dir);
    let names: Vec<Vec<u8>> = list(&m, q.ino, 0).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(
        names,
        [
            b".".to_vec(),
            b"..".to_vec(),
            b"001 - Ann; Bob - Two.flac".to_vec(),
            b"002 - Ann; Bob - One.flac".to_vec(),
        ]
    );
    let link = m.lookup(q.ino, b"001 - Ann; Bob - Two.flac").unwrap();
    assert_eq!(link.kind, Kind::Symlink);
    assert_eq!(
        m.readlink(link.ino).unwrap(),
        b"../../Ann/First (2001)/02 - Two.flac"
    );
    assert_eq!(m.getattr(link.ino).unwrap().size, link.size);
    // A track without artist or title keeps the tree's name.
    let solo = m.lookup(search.ino, b"3").unwrap();
    assert_eq!(list(&m, solo.ino, 0)[2].0, b"001 - 01 - Alone.flac");

    // Asked again (the lock is not held across remaking it), and after the index moved
    // on: the same inode, remade.
    assert_eq!(m.lookup(search.ino, b"2,1").unwrap().ino, q.ino);
    finder.version.store(2, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(m.lookup(search.ino, b"2,1").unwrap().ino, q.ino);
    assert_eq!(
        m.readlink(link.ino).unwrap(),
        b"../../Ann/First (2001)/02 - Two.flac"
    );

    // A query that does not parse, an unknown collection: ENOENT. `/.search` lists the
    // queries made; the root lists neither directory.
    assert!(matches!(
        m.lookup(search.ino, b"bad"),
        Err(FsError::NotFound { .. })
    ));
    let top: Vec<Vec<u8>> = list(&m, search.ino, 2)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(top, [b"2,1".to_vec(), b"3".to_vec()]);
    let root: Vec<Vec<u8>> = list(&m, ROOT_INO, 2)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert!(root.iter().all(|n| !n.starts_with(b".")), "{root:?}");
    let colls = m.lookup(ROOT_INO, b".collections").unwrap();
    assert!(matches!(
        m.lookup(colls.ino, b"nope"),
        Err(FsError::NotFound { .. })
    ));
    let all = m.lookup(colls.ino, b"all").unwrap();
    assert_eq!(list(&m, all.ino, 0).len(), 2 + 3);
    // Results are symlinks, not directories; nothing virtual has xattrs or opens as a file.
    assert!(matches!(
        m.opendir(link.ino),
        Err(FsError::NotADirectory(_))
    ));
    assert!(matches!(m.readlink(all.ino), Err(FsError::NotASymlink(_))));
    assert!(matches!(
        m.getxattr(link.ino, b"user.musicfs.title", 0),
        Err(FsError::NoAttribute(_))
    ));
}

#[test]
fn without_a_finder_there_are_no_virtual_directories() {
    let l = lib();
    let m = model(&l);
    assert!(matches!(
        m.lookup(ROOT_INO, b".search"),
        Err(FsError::NotFound { .. })
    ));
    assert!(matches!(
        m.getattr(crate::virt::SEARCH_INO),
        Err(FsError::StaleInode(_))
    ));
}

/// Extras with fixed answers: every directory holding files shows `booklet.pdf` and
/// `cover.jpg`, both stored files.
#[derive(Debug)]
struct FixedExtras {
    dir: tempfile::TempDir,
}

impl crate::album::AlbumExtras for FixedExtras {
    fn extras(&self, snap: &Snapshot, dir: u64) -> Vec<crate::album::Extra> {
        if !snap.children(dir, 0).any(|c| c.file().is_some()) {
            return Vec::new();
        }
        ["booklet.pdf", "cover.jpg"]
            .into_iter()
            .map(|name| {
                let path = self.dir.path().join(name);
                crate::album::Extra {
                    name: name.as_bytes().to_vec(),
                    size: std::fs::metadata(&path).unwrap().len(),
                    mtime_ns: 7,
                    source: crate::album::ExtraSource::Stored(path),
                }
            })
            .collect()
    }
    fn version(&self) -> u64 {
        1
    }
}

#[test]
fn album_folders_list_their_extras_after_the_tracks_and_read_them() {
    let l = lib();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("booklet.pdf"), b"%PDF booklet").unwrap();
    std::fs::write(dir.path().join("cover.jpg"), b"jpeg").unwrap();
    let m = model(&l).with_album_extras(Arc::new(FixedExtras { dir }));
    let album = path_ino(&m, "Ann/First (2001)");
    let all = list(&m, album, 0);
    let names: Vec<&[u8]> = all.iter().map(|(n, _, _)| n.as_slice()).collect();
    assert_eq!(
        names,
        [
            b".".as_slice(),
            b"..",
            b"01 - One.flac",
            b"02 - Two.flac",
            b"booklet.pdf",
            b"cover.jpg"
        ]
    );
    // Offsets run on from the tracks': resuming after the booklet gives the cover only.
    let after_booklet = all[4].2;
    let rest = list(&m, album, after_booklet);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, b"cover.jpg");

    let booklet = m.lookup(album, b"booklet.pdf").unwrap();
    assert!(crate::album::is_extra(booklet.ino));
    assert_eq!(
        (booklet.kind, booklet.size, booklet.perm),
        (Kind::File, 12, 0o444)
    );
    assert_eq!(m.getattr(booklet.ino).unwrap(), booklet);
    assert_eq!(
        booklet.ino, all[4].1,
        "readdir and lookup agree on the inode"
    );
    let fh = m.open(booklet.ino, libc::O_RDONLY as u32).unwrap();
    let mut buf = [0u8; 64];
    let n = m.read(fh, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"%PDF booklet");
    m.release(fh).unwrap();
    assert!(matches!(
        m.open(booklet.ino, libc::O_WRONLY as u32),
        Err(FsError::ReadOnly(_))
    ));
    assert!(matches!(
        m.opendir(booklet.ino),
        Err(FsError::NotADirectory(_))
    ));
    assert!(matches!(
        m.getxattr(booklet.ino, b"user.musicfs.title", 0),
        Err(FsError::NoAttribute(_))
    ));

    // A folder without tracks shows nothing more; a name nobody has is still ENOENT.
    let artist = m.lookup(ROOT_INO, b"Ann").unwrap();
    assert_eq!(list(&m, artist.ino, 0).len(), 3);
    assert!(matches!(
        m.lookup(album, b"nope.txt"),
        Err(FsError::NotFound { .. })
    ));
}
