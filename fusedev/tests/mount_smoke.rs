//! One real mount: browse, stat, read, xattrs, refused writes, unmount. Needs /dev/fuse and
//! the right to mount; run with `cargo test -p musicfs-fusedev --features e2e`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::tree::TreeBuilder;
use musicfs_fusedev::session::is_mountpoint;
use musicfs_fusedev::{mount_with_tags, MountOptions, TagSource};

struct Tags(Vec<TrackRecord>);

impl TagSource for Tags {
    fn track(
        &self,
        id: u64,
    ) -> Result<Option<TrackRecord>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.iter().find(|r| r.id.0 == id).cloned())
    }
}

fn bytes(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 13 + id) as u8).collect()
}

fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let p = CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated; the buffer length is passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(len as usize);
    Ok(buf)
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs /dev/fuse; enable the e2e feature"
)]
fn a_real_mount_serves_the_snapshot_read_only_and_unmounts_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = dir.path().join("origin");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(origin.join("src")).expect("origin");
    std::fs::create_dir(&mnt).expect("mnt");
    let mut builder = TreeBuilder::new("$artist/$title", vec![origin.clone()]);
    let mut records = Vec::new();
    for id in 1..=3u64 {
        let len = 300_000 * id as usize;
        let rel = format!("src/{id}.flac");
        std::fs::write(origin.join(&rel), bytes(id, len)).expect("write");
        let rec = TrackRecord {
            id: TrackId(id),
            origin: OriginId(0),
            rel_path: rel.into_bytes(),
            format: Format::Flac,
            scan: ScanState {
                size: len as u64,
                mtime_ns: 1_600_000_000_000_000_000,
                ino: 0,
                ctime_ns: 0,
                perm: None,
            },
            meta: TrackMeta {
                title: Some(format!("Song {id}")),
                artist: vec!["Band".into()],
                ..TrackMeta::default()
            },
        };
        builder.add(&rec, &["Band".into(), format!("Song {id}.flac")]);
        records.push(rec);
    }
    let snap_path = dir.path().join("snapshot");
    Snapshot::write(&snap_path, &builder.build(), 1).expect("snapshot");
    let snap = Arc::new(ArcSwap::from_pointee(
        Snapshot::open(&snap_path).expect("open"),
    ));
    let opts = MountOptions {
        threads: 2,
        ..MountOptions::default()
    };
    let mounted = mount_with_tags(&mnt, snap, Some(Arc::new(Tags(records))), &opts).expect("mount");
    let mp = mounted.mountpoint().to_path_buf();
    assert!(is_mountpoint(&mp).expect("mountinfo"));

    let mut names: Vec<_> = std::fs::read_dir(mp.join("Band"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["Song 1.flac", "Song 2.flac", "Song 3.flac"]);

    let song = mp.join("Band/Song 2.flac");
    let meta = std::fs::metadata(&song).expect("stat");
    assert_eq!(meta.mode(), libc::S_IFREG | 0o444);
    assert_eq!(meta.len(), 600_000);
    assert_eq!(
        std::fs::metadata(mp.join("Band")).expect("dir").mode(),
        libc::S_IFDIR | 0o555
    );
    assert_eq!(std::fs::read(&song).expect("read"), bytes(2, 600_000));

    assert_eq!(
        getxattr(&song, "user.musicfs.title"),
        Ok(b"Song 2".to_vec())
    );
    assert_eq!(getxattr(&song, "user.musicfs.genre"), Err(libc::ENODATA));
    let src = origin
        .join("src/2.flac")
        .into_os_string()
        .into_encoded_bytes();
    assert_eq!(getxattr(&song, "user.musicfs.source"), Ok(src));

    let erofs = |r: std::io::Result<()>| r.expect_err("write refused").raw_os_error();
    assert_eq!(erofs(std::fs::create_dir(mp.join("x"))), Some(libc::EROFS));
    assert_eq!(erofs(std::fs::remove_file(&song)), Some(libc::EROFS));
    assert_eq!(
        erofs(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&song)
                .map(drop)
        ),
        Some(libc::EROFS)
    );

    let unmounter = mounted.unmounter();
    let stopper = std::thread::spawn(move || unmounter.unmount());
    mounted.wait().expect("clean stop");
    stopper.join().expect("join").expect("unmount");
    assert!(!is_mountpoint(&mp).expect("mountinfo"));
}
