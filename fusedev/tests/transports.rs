//! Every transport and read mode this kernel allows, on a real mount: `/dev/fuse` and
//! FUSE-over-io_uring, each with plain reads and with passthrough, plus the fallbacks when
//! the kernel refuses a feature. Files must read back bit-exactly (`cmp`, and `ffmpeg -f md5`
//! of a generated FLAC). Needs root and /dev/fuse; run with
//! `cargo test -p musicfs-fusedev --features e2e`. Tests that need io_uring set
//! `/sys/module/fuse/parameters/enable_uring` to Y and restore it afterwards.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use musicfs_core::config::{PassthroughSetting, TransportSetting};
use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::tree::TreeBuilder;
use musicfs_fusedev::session::{is_mountpoint, URING_PARAM};
use musicfs_fusedev::{mount_with_tags, FuseError, MountOptions, Mounted, TagSource};

/// The uring parameter is global: tests in this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct NoTags;

impl TagSource for NoTags {
    fn track(
        &self,
        _id: u64,
    ) -> Result<Option<TrackRecord>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(None)
    }
}

/// Sets the kernel's enable_uring parameter and puts the old value back on drop.
struct UringParam {
    old: Option<String>,
}

impl UringParam {
    fn set(on: bool) -> UringParam {
        let old = std::fs::read_to_string(URING_PARAM).ok();
        std::fs::write(URING_PARAM, if on { "Y" } else { "N" }).expect("write enable_uring");
        UringParam { old }
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(URING_PARAM, old.trim());
        }
    }
}

struct Lib {
    _dir: tempfile::TempDir,
    origin: PathBuf,
    mnt: PathBuf,
    snap: PathBuf,
    /// (virtual path under the mount, source path)
    files: Vec<(String, PathBuf)>,
    flac: (String, PathBuf),
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn library() -> Lib {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = dir.path().join("origin");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&origin).expect("origin");
    std::fs::create_dir(&mnt).expect("mnt");
    let mut sources = vec![
        ("a.flac".to_string(), 3 * 1024 * 1024 + 17),
        ("b.flac".to_string(), 4096),
        ("c.flac".to_string(), 0),
        ("d.flac".to_string(), 1),
    ];
    for (i, (name, len)) in sources.iter().enumerate() {
        std::fs::write(origin.join(name), pattern(*len, i as u64 + 1)).expect("write");
    }
    let tone = origin.join("tone.flac");
    let made = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("sine=frequency=440:duration=4")
        .args(["-c:a", "flac"])
        .arg(&tone)
        .status()
        .is_ok_and(|s| s.success());
    // Not a skip: without the tone the decoded-audio check would pass unchecked.
    assert!(
        made,
        "ffmpeg could not encode the FLAC tone the decoded-audio check needs (install ffmpeg)"
    );
    let len = std::fs::metadata(&tone).expect("tone").len() as usize;
    sources.push(("tone.flac".to_string(), len));
    let mut builder = TreeBuilder::new("$artist/$title", vec![origin.clone()]);
    let mut files = Vec::new();
    for (i, (name, len)) in sources.iter().enumerate() {
        let title = name.trim_end_matches(".flac").to_string();
        let rec = TrackRecord {
            id: TrackId(i as u64 + 1),
            origin: OriginId(0),
            rel_path: name.clone().into_bytes(),
            format: Format::Flac,
            scan: ScanState {
                size: *len as u64,
                mtime_ns: 1_600_000_000_000_000_000,
                ino: 0,
                ctime_ns: 0,
                perm: None,
            },
            meta: TrackMeta {
                title: Some(title.clone()),
                artist: vec!["Band".into()],
                ..TrackMeta::default()
            },
        };
        builder.add(&rec, &["Band".into(), format!("{title}.flac")]);
        files.push((format!("Band/{title}.flac"), origin.join(name)));
    }
    let flac = files.last().cloned().expect("the tone is the last file");
    let snap = dir.path().join("snapshot");
    Snapshot::write(&snap, &builder.build(), 1).expect("snapshot");
    Lib {
        _dir: dir,
        origin,
        mnt,
        snap,
        files,
        flac,
    }
}

fn mount(lib: &Lib, opts: &MountOptions) -> Result<Mounted, FuseError> {
    let snap = Arc::new(ArcSwap::from_pointee(
        Snapshot::open(&lib.snap).expect("open snapshot"),
    ));
    mount_with_tags(&lib.mnt, snap, Some(Arc::new(NoTags)), opts)
}

fn opts(transport: TransportSetting, passthrough: PassthroughSetting) -> MountOptions {
    MountOptions {
        threads: 2,
        transport,
        passthrough,
        ..MountOptions::default()
    }
}

fn root_attr(mp: &Path, name: &str) -> String {
    let p = std::ffi::CString::new(mp.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(format!("user.musicfs.{name}")).expect("name");
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings; the buffer length is passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        len >= 0,
        "getxattr {name}: {}",
        std::io::Error::last_os_error()
    );
    String::from_utf8_lossy(&buf[..len as usize]).into_owned()
}

fn ffmpeg_md5(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-i"])
        .arg(path)
        .args(["-f", "md5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "ffmpeg on {path:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file reads back exactly, by `cmp`, by a full read, and by reads at odd offsets;
/// the FLAC decodes to the same audio.
fn check_reads(mp: &Path, lib: &Lib) {
    for (virt, src) in &lib.files {
        let path = mp.join(virt);
        let status = Command::new("cmp")
            .arg(src)
            .arg(&path)
            .status()
            .expect("cmp");
        assert!(status.success(), "cmp {src:?} {path:?}");
        let want = std::fs::read(src).expect("source");
        let got = std::fs::read(&path).expect("mount read");
        assert!(got == want, "{virt}: {} bytes vs {}", got.len(), want.len());
        if want.len() > 100_000 {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&path).expect("open");
            let mut buf = vec![0u8; 70_001];
            for off in [1u64, 65_535, 1_000_003, want.len() as u64 - 5] {
                let n = f.read_at(&mut buf, off).expect("read_at");
                let o = off as usize;
                assert_eq!(
                    &buf[..n],
                    &want[o..(o + n).min(want.len())],
                    "{virt} @ {off}"
                );
            }
        }
    }
    let (virt, src) = &lib.flac;
    assert_eq!(
        ffmpeg_md5(&mp.join(virt)),
        ffmpeg_md5(src),
        "decoded audio differs"
    );
}

fn stop(mounted: Mounted) {
    let mp = mounted.mountpoint().to_path_buf();
    let unmounter = mounted.unmounter();
    let stopper = std::thread::spawn(move || unmounter.unmount());
    mounted.wait().expect("clean stop");
    stopper.join().expect("join").expect("unmount");
    assert!(!is_mountpoint(&mp).expect("mountinfo"));
}

/// Mounts with `o`, checks the reported mode and bit-exact reads, and whether opens really
/// got passthrough backing ids and requests really came over io_uring.
fn serve_and_check(lib: &Lib, o: &MountOptions, transport: &str, passthrough: &str) {
    let mounted = mount(lib, o).expect("mount");
    let mp = mounted.mountpoint().to_path_buf();
    assert_eq!(root_attr(&mp, "transport"), transport);
    assert_eq!(root_attr(&mp, "passthrough"), passthrough);
    assert_eq!(mounted.status().value("transport"), Some(transport));
    check_reads(&mp, lib);
    let big = std::fs::File::open(mp.join(&lib.files[0].0)).expect("open");
    let backed = mounted.passthrough_files();
    drop(big);
    if passthrough == "on" && !o.refuse_passthrough {
        assert!(backed >= 1, "an open file should have a backing id");
    } else {
        assert_eq!(backed, 0, "no backing ids on the plain path");
    }
    let via_uring = mounted.uring_requests();
    if transport == "uring" {
        assert!(via_uring > 0, "requests should arrive over io_uring");
    } else {
        assert_eq!(via_uring, 0);
    }
    stop(mounted);
    assert_eq!(
        std::fs::read_dir(&lib.origin).expect("origin").count(),
        lib.files.len()
    );
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn dev_transport_with_plain_reads_is_bit_exact() {
    let _s = serial();
    let lib = library();
    serve_and_check(
        &lib,
        &opts(TransportSetting::Dev, PassthroughSetting::Off),
        "dev",
        "off",
    );
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn dev_transport_with_passthrough_is_bit_exact() {
    let _s = serial();
    let lib = library();
    serve_and_check(
        &lib,
        &opts(TransportSetting::Dev, PassthroughSetting::On),
        "dev",
        "on",
    );
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn uring_transport_with_plain_reads_is_bit_exact() {
    let _s = serial();
    let _p = UringParam::set(true);
    let lib = library();
    serve_and_check(
        &lib,
        &opts(TransportSetting::Uring, PassthroughSetting::Off),
        "uring",
        "off",
    );
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn uring_transport_with_passthrough_is_bit_exact() {
    let _s = serial();
    let _p = UringParam::set(true);
    let lib = library();
    serve_and_check(
        &lib,
        &opts(TransportSetting::Uring, PassthroughSetting::On),
        "uring",
        "on",
    );
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn a_kernel_refusing_backing_files_gets_plain_reads() {
    let _s = serial();
    let lib = library();
    let o = MountOptions {
        refuse_passthrough: true,
        ..opts(TransportSetting::Dev, PassthroughSetting::Auto)
    };
    serve_and_check(&lib, &o, "dev", "on");
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn a_kernel_refusing_uring_queues_falls_back_to_dev() {
    let _s = serial();
    let _p = UringParam::set(true);
    let lib = library();
    let o = MountOptions {
        refuse_uring: true,
        ..opts(TransportSetting::Auto, PassthroughSetting::Auto)
    };
    serve_and_check(&lib, &o, "dev", "on");
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn with_the_uring_parameter_off_auto_serves_on_dev_and_uring_required_fails_cleanly() {
    let _s = serial();
    let _p = UringParam::set(false);
    let lib = library();
    serve_and_check(
        &lib,
        &opts(TransportSetting::Auto, PassthroughSetting::Off),
        "dev",
        "off",
    );
    let err = mount(
        &lib,
        &opts(TransportSetting::Uring, PassthroughSetting::Off),
    )
    .err()
    .expect("uring required but off");
    assert!(matches!(err, FuseError::Unavailable { .. }), "{err}");
    let canon = lib.mnt.canonicalize().expect("canon");
    assert!(!is_mountpoint(&canon).expect("mountinfo"));
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn uring_required_but_refused_fails_the_mount_without_leaving_it() {
    let _s = serial();
    let _p = UringParam::set(true);
    let lib = library();
    let o = MountOptions {
        refuse_uring: true,
        ..opts(TransportSetting::Uring, PassthroughSetting::Off)
    };
    let err = mount(&lib, &o).err().expect("refused");
    assert!(matches!(err, FuseError::Unavailable { .. }), "{err}");
    let canon = lib.mnt.canonicalize().expect("canon");
    assert!(!is_mountpoint(&canon).expect("mountinfo"));
}

/// Requests that arrive the moment the last io_uring queue registers are answered: the
/// kernel may hand one to a worker before it has finished checking its registrations, and
/// an early version dropped that completion (the caller then waited forever). Clients stat
/// in a loop on every CPU from before each mount, with no kernel caching, so some request
/// lands in that window; each must keep being answered.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and /dev/fuse; enable the e2e feature"
)]
fn requests_racing_the_uring_registration_are_answered() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let _s = serial();
    let _p = UringParam::set(true);
    let lib = library();
    let o = MountOptions {
        entry_timeout: Duration::ZERO,
        attr_timeout: Duration::ZERO,
        negative_timeout: Duration::ZERO,
        ..opts(TransportSetting::Uring, PassthroughSetting::Off)
    };
    let clients = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    for round in 0..20 {
        let done = Arc::new(AtomicBool::new(false));
        let counts: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| 0.into()).collect());
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let (done, counts) = (done.clone(), counts.clone());
                let target = lib.mnt.join(&lib.files[1].0);
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let _ = std::fs::metadata(&target);
                        counts[c].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mounted = mount(&lib, &o).expect("mount");
        let mp = mounted.mountpoint().to_path_buf();
        // Every client must get 100 answers after the mount. A hang guard, not a timing
        // assertion: a client stuck for 30 s on one stat lost its request.
        let start: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut last = start.clone();
        let mut moved = vec![Instant::now(); clients];
        while (0..clients).any(|c| last[c] < start[c] + 100) {
            std::thread::sleep(Duration::from_millis(1));
            for c in 0..clients {
                let now = counts[c].load(Ordering::Relaxed);
                if now != last[c] {
                    (last[c], moved[c]) = (now, Instant::now());
                } else if moved[c].elapsed() > Duration::from_secs(30) {
                    // Free the stuck client (and the daemon's shutdown) before failing.
                    abort_connection(&mp);
                    panic!("round {round}: client {c} waits for an answer that never comes");
                }
            }
        }
        let served = std::fs::metadata(mp.join(&lib.files[1].0)).expect("stat");
        assert_eq!(served.len(), 4096);
        done.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("client");
        }
        assert!(
            mounted.uring_requests() > 0,
            "round {round}: served on the ring"
        );
        stop(mounted);
    }
}

/// Aborts the FUSE connection mounted at `mp` through fusectl (its directory is named by
/// the mount's device number, read from mountinfo: a stat of the mount could block).
fn abort_connection(mp: &Path) {
    let _ = Command::new("mount")
        .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
        .status();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.canonicalize().unwrap_or_else(|_| mp.to_path_buf());
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && Path::new(f[4]) == want {
            if let Some((_, minor)) = f[2].split_once(':') {
                let abort = format!("/sys/fs/fuse/connections/{minor}/abort");
                let _ = std::fs::write(abort, "1");
            }
        }
    }
}
