#![cfg(feature = "e2e")]
//! The live library under abuse: a daemon SIGKILLed again and again in the middle of its
//! scans and publishes, and an inotify queue overflowing under a burst of changes. Either
//! way the served tree must end equal to a clean scan of the same origin.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use musicfs_tests::harness::{
    clean_scan_shape, first_shape_difference, generated_track_path as track_path, spawn_musicfsd,
    tree_shape, wait_child, wait_for_log_line, wait_unmounted, walk_tree, MountOptions, MountedFs,
    SplitMix64, EXIT_DEADLINE,
};
use tempfile::TempDir;

/// The overflow test lowers a system-wide limit: no other test of this file runs meanwhile
/// (and the kill loop's timing is not disturbed).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Track `i` (version `v`) of the generated library.
fn track_bytes(i: u64, v: u32) -> Vec<u8> {
    musicfs_tests::harness::generated_track(i, v).expect("a generated track")
}

/// A temp dir holding `origin/` and `state/`.
struct Work {
    _dir: TempDir,
    origin: PathBuf,
    state: PathBuf,
    root: PathBuf,
}

impl Work {
    fn new(tracks: u64) -> Work {
        let dir = tempfile::Builder::new()
            .prefix("musicfs-live-crash-")
            .tempdir()
            .unwrap();
        let root = dir.path().canonicalize().unwrap();
        let origin = root.join("origin");
        let state = root.join("state");
        fs::create_dir_all(&state).unwrap();
        for d in 0..30 {
            fs::create_dir_all(origin.join(format!("d{d:02}"))).unwrap();
        }
        for i in 0..tracks {
            fs::write(track_path(&origin, i), track_bytes(i, 0)).unwrap();
        }
        Work {
            _dir: dir,
            origin,
            state,
            root,
        }
    }

    fn options(&self) -> MountOptions {
        MountOptions::live(&self.origin, &self.state)
    }

    /// Starts a daemon on the state dir and returns once it has finished a full refresh,
    /// which also means its watches are in place (see [`MountedFs::start_watching`]).
    fn start_reconciled(&self) -> MountedFs {
        let (fs, line) = MountedFs::start_watching(self.options(), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            !line.contains("refresh failed"),
            "{line}\nlog:\n{}",
            fs.log()
        );
        fs
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // A failed kill-loop iteration may leave a dead mount, which would stop the temp
        // dir from being removed.
        let _ = musicfs_tests::harness::force_unmount(&self.root.join("mnt"));
    }
}

/// One round of changes: touches, rewrites (new title), additions and deletions of a
/// random subset of the library.
struct Mutator {
    rng: SplitMix64,
    live: Vec<u64>,
    next: u64,
    version: u32,
}

impl Mutator {
    fn new(seed: u64, tracks: u64) -> Mutator {
        Mutator {
            rng: SplitMix64::new(seed),
            live: (0..tracks).collect(),
            next: tracks,
            version: 0,
        }
    }

    fn pick(&mut self) -> u64 {
        let k = self.rng.below(self.live.len() as u64) as usize;
        self.live[k]
    }

    fn round(&mut self, origin: &Path) -> String {
        self.version += 1;
        let (touch, edit, add, del) = (
            self.rng.below(20),
            self.rng.below(20),
            self.rng.below(20),
            self.rng.below(20),
        );
        for _ in 0..touch {
            let i = self.pick();
            let f = fs::File::options()
                .write(true)
                .open(track_path(origin, i))
                .unwrap();
            f.set_modified(SystemTime::now()).unwrap();
        }
        for _ in 0..edit {
            let i = self.pick();
            let path = track_path(origin, i);
            if self.rng.below(2) == 0 {
                fs::write(&path, track_bytes(i, self.version)).unwrap();
            } else {
                let tmp = path.with_extension("part");
                fs::write(&tmp, track_bytes(i, self.version)).unwrap();
                fs::rename(&tmp, &path).unwrap();
            }
        }
        for _ in 0..add {
            let i = self.next;
            self.next += 1;
            fs::write(track_path(origin, i), track_bytes(i, 0)).unwrap();
            self.live.push(i);
        }
        for _ in 0..del {
            let k = self.rng.below(self.live.len() as u64) as usize;
            let i = self.live.swap_remove(k);
            fs::remove_file(track_path(origin, i)).unwrap();
        }
        format!("{touch} touched, {edit} rewritten, {add} added, {del} deleted")
    }
}

#[test]
fn a_daemon_killed_twenty_times_mid_refresh_ends_with_the_clean_scan_tree() {
    let _serial = serial();
    let started = Instant::now();
    const TRACKS: u64 = 1500;
    let work = Work::new(TRACKS);
    let mut mutator = Mutator::new(0x5eed_1e55, TRACKS);
    let mut rng = SplitMix64::new(42);
    let mountpoint = work.root.join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let opts = work.options();
    let mut history = Vec::new();
    // 20 in CI; tools/soak-kill-loop.sh runs many more.
    let iterations: u32 = std::env::var("MUSICFS_KILL_LOOP_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);

    for iter in 0..iterations {
        let log = work.root.join(format!("musicfsd-{iter:02}.log"));
        // The first start scans the whole library before mounting: kill it early, inside
        // that scan; later ones at any moment of the 400 ms after the start or SIGHUP.
        let delay = Duration::from_millis(if iter == 0 {
            30 + rng.below(121)
        } else {
            rng.below(401)
        });
        let hup = iter % 2 == 1;
        let changes;
        let mut child = if hup {
            // Changes under a running daemon, then SIGHUP: killed during the refresh the
            // watches and the signal started.
            let mut child = spawn_musicfsd(&opts, &work.state, &mountpoint, &log).unwrap();
            let started = wait_for_log_line(
                &log,
                0,
                &["musicfsd: mounted", DEAD_MOUNT],
                Duration::from_secs(60),
            );
            if !matches!(&started, Ok((line, _)) if !line.contains(DEAD_MOUNT)) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "iteration {iter}: the daemon did not mount: {started:?}\nhistory:\n{}",
                    history.join("\n")
                );
            }
            changes = mutator.round(&work.origin);
            harness_signal(child.id(), libc::SIGHUP);
            child
        } else {
            // Changes while stopped, then a start: killed during the start-up scan or
            // publish, or the start-up reconcile.
            changes = mutator.round(&work.origin);
            spawn_musicfsd(&opts, &work.state, &mountpoint, &log).unwrap()
        };
        std::thread::sleep(delay);
        harness_signal(child.id(), libc::SIGKILL);
        let status = wait_child(&mut child, EXIT_DEADLINE).unwrap();
        let text = fs::read_to_string(&log).unwrap_or_default();
        let last = text.lines().last().unwrap_or("").to_string();
        history.push(format!(
            "#{iter} {} {changes}; killed after {delay:?} ({status:?}); last log line: {last}",
            if hup { "SIGHUP" } else { "start" }
        ));
        assert!(
            !text.contains(DEAD_MOUNT),
            "iteration {iter}: a dead mount from the daemon killed before was still there: \
             auto-unmount did not remove it\nhistory:\n{}",
            history.join("\n")
        );
        // A kill during the mount leaves fusermount3 to finish mounting and then, seeing
        // the daemon gone, unmount: wait for it before checking the mount table.
        wait_no_fusermount(&mountpoint, Duration::from_secs(10));
        if let Err(e) = wait_unmounted(&mountpoint, Duration::from_secs(10)) {
            panic!(
                "iteration {iter}: a SIGKILLed daemon left its mount behind (dead, with no \
                 fusermount3 auto-unmount helper left to remove it): {e:#}\nhistory:\n{}\n\
                 log of this iteration:\n{text}",
                history.join("\n")
            );
        }
    }

    let fs = work.start_reconciled();
    fs::metadata(fs.mountpoint()).unwrap_or_else(|e| panic!("stat of the mount root: {e}"));
    let want = clean_scan_shape(std::slice::from_ref(&work.origin)).unwrap();
    let got = tree_shape(&work.state).unwrap();
    if let Some(diff) = first_shape_difference(&got, &want) {
        panic!(
            "after {iterations} kills the reconciled tree differs from a clean scan: {diff}\nhistory:\n{}\nlog:\n{}",
            history.join("\n"),
            fs.log()
        );
    }
    let mounted: Vec<PathBuf> = walk_tree(fs.mountpoint()).unwrap();
    let listed: Vec<PathBuf> = got.iter().map(|(p, _, _)| p.clone()).collect();
    assert_eq!(
        mounted.len(),
        listed.len(),
        "the mount and the snapshot disagree"
    );
    assert!(mounted == listed, "the mount and the snapshot disagree");
    let leftovers: Vec<_> = fs::read_dir(&work.state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left in the state dir: {leftovers:?}\nhistory:\n{}",
        history.join("\n")
    );
    eprintln!(
        "kill loop: {} tracks at the end, {:.1} s\n{}",
        want.len(),
        started.elapsed().as_secs_f64(),
        history.join("\n")
    );
}

/// Waits until no `fusermount3` process names `mountpoint` (its auto-unmount helper lives
/// as long as the mount it watches).
fn wait_no_fusermount(mountpoint: &Path, timeout: Duration) {
    let needle = mountpoint.as_os_str().as_encoded_bytes();
    let start = Instant::now();
    loop {
        let helpers: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"fusermount3")) && args.contains(&needle)
            })
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .collect();
        if helpers.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "fusermount3 still running for {} after {timeout:?}: {helpers:?}",
            mountpoint.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the daemon says when it finds a dead FUSE mount on its mountpoint.
const DEAD_MOUNT: &str = "is a dead FUSE mount";

fn harness_signal(pid: u32, sig: libc::c_int) {
    // The daemon may have exited on its own already (a failed start): not this test's
    // concern, its log says why.
    let _ = musicfs_tests::harness::send_signal(pid, sig);
}

/// Sets a sysctl under `/proc/sys` for the life of the guard.
struct Sysctl {
    path: PathBuf,
    old: String,
    restored: bool,
}

impl Sysctl {
    fn set(path: &str, value: &str) -> Sysctl {
        let path = PathBuf::from(path);
        let old = fs::read_to_string(&path).unwrap().trim().to_string();
        fs::write(&path, value).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        Sysctl {
            path,
            old,
            restored: false,
        }
    }

    fn restore(&mut self) {
        if !self.restored {
            fs::write(&self.path, &self.old).unwrap();
            self.restored = true;
        }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if !self.restored {
            let _ = fs::write(&self.path, &self.old);
        }
    }
}

#[test]
fn an_inotify_queue_overflow_ends_with_the_clean_scan_tree_and_new_dirs_watched() {
    let _serial = serial();
    let work = Work::new(60);
    // The queue length is fixed when an inotify instance is created: lower it only while
    // the daemon creates its watches, so other processes keep the normal limit.
    let mut limit = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "32");
    let fs = work.start_reconciled();
    // Made under the same limit and never read during the burst: shows the burst overflows
    // a queue of that length.
    let probe = OverflowProbe::new(&work.origin);
    limit.restore();

    // 2000 new files as fast as we can write them: 1000 into the existing directories,
    // then 1000 into 20 new ones, created once the queue is long full.
    let started = Instant::now();
    for i in 0..1000u64 {
        fs::write(
            track_path(&work.origin, 10_000 + i),
            track_bytes(10_000 + i, 0),
        )
        .unwrap();
    }
    for i in 0..1000u64 {
        let dir = work.origin.join(format!("burst{:02}", i % 20));
        if i < 20 {
            fs::create_dir(&dir).unwrap();
        }
        fs::write(
            dir.join(format!("b{i:05}.flac")),
            track_bytes(20_000 + i, 0),
        )
        .unwrap();
    }
    assert!(
        probe.overflowed(),
        "the burst did not overflow a 32-event inotify queue"
    );
    let want = clean_scan_shape(std::slice::from_ref(&work.origin)).unwrap();
    let deadline = Duration::from_secs(30);
    loop {
        let got = tree_shape(&work.state).unwrap();
        let Some(diff) = first_shape_difference(&got, &want) else {
            break;
        };
        assert!(
            started.elapsed() < deadline,
            "{deadline:?} after the burst the tree still differs from a clean scan: {diff}\nlog:\n{}",
            fs.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "overflow: {} entries converged {:.2} s after the burst began",
        want.len(),
        started.elapsed().as_secs_f64()
    );

    // Directories created during the overflow must be watched like any other.
    let late = work.origin.join("burst07/late.flac");
    fs::write(&late, track_bytes(30_000, 0)).unwrap();
    let want = clean_scan_shape(std::slice::from_ref(&work.origin)).unwrap();
    let since = Instant::now();
    loop {
        let got = tree_shape(&work.state).unwrap();
        if first_shape_difference(&got, &want).is_none() {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "a file added to a directory created during the overflow did not show within 2 s \
             (is that directory watched?): {:?}\nlog:\n{}",
            first_shape_difference(&got, &want),
            fs.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw inotify instance watching every directory under a root for writes, to check that a burst
/// overflows its queue.
struct OverflowProbe {
    fd: std::os::fd::OwnedFd,
}

impl OverflowProbe {
    fn new(dir: &Path) -> OverflowProbe {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        for entry in walkdir::WalkDir::new(dir) {
            let entry = entry.unwrap();
            if !entry.file_type().is_dir() {
                continue;
            }
            let c = std::ffi::CString::new(entry.path().as_os_str().as_bytes()).unwrap();
            let mask = libc::IN_CREATE | libc::IN_MODIFY | libc::IN_CLOSE_WRITE;
            // SAFETY: `c` is NUL-terminated and outlives the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
            assert!(
                wd >= 0,
                "inotify_add_watch: {}",
                std::io::Error::last_os_error()
            );
        }
        OverflowProbe { fd }
    }

    /// Whether the queue holds an `IN_Q_OVERFLOW` event.
    fn overflowed(&self) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let mut overflow = false;
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return overflow;
            }
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut pos = 0;
            while pos + head <= n as usize {
                // SAFETY: the kernel wrote a whole event header at `pos`; read unaligned
                // from the byte buffer.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[pos..].as_ptr().cast()) };
                overflow |= ev.mask & libc::IN_Q_OVERFLOW != 0;
                pos += head + ev.len as usize;
            }
        }
    }
}
