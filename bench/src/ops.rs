//! The measured operations. Each takes paths already mapped to the peer under test, so
//! every peer is timed on the same source files.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::gen::Rng;
use crate::metric::{histogram, record, Metric};

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path holds a NUL byte")
}

/// Drops the kernel's dentry and inode caches (`level` 2) or those and the page cache (3).
pub fn drop_caches(level: u8) -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", format!("{level}\n"))
        .context("cannot write /proc/sys/vm/drop_caches (root needed)")
}

fn stat_c(path: &CString) -> std::io::Result<()> {
    // SAFETY: an all-zero `struct stat` is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable stat buffer.
    let rc = unsafe { libc::stat(path.as_ptr(), &mut st) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `stat(2)` of each full path once (warm: after an untimed pass).
pub fn stat(paths: &[PathBuf], warm: bool) -> Result<Metric> {
    let cs: Vec<CString> = paths.iter().map(|p| cstring(p)).collect::<Result<_>>()?;
    if warm {
        for c in &cs {
            stat_c(c).with_context(|| format!("stat {:?}", c))?;
        }
    }
    let mut h = histogram();
    for c in &cs {
        let t = Instant::now();
        let r = stat_c(c);
        record(&mut h, t.elapsed());
        r.with_context(|| format!("stat {:?}", c))?;
    }
    Ok(Metric::latency(&h))
}

/// One-component lookup: `fstatat(parent_fd, name)` with the parent directory already
/// open, so only the last component's LOOKUP (and GETATTR) is timed.
pub fn lookup(paths: &[PathBuf], warm: bool) -> Result<Metric> {
    // One open fd per distinct parent: a FUSE peer may pin backing fds per open directory.
    let mut dirs: std::collections::HashMap<&Path, std::rc::Rc<File>> = Default::default();
    let mut items = Vec::new();
    for p in paths {
        let parent = p.parent().context("path without parent")?;
        let name = p.file_name().context("path without name")?;
        let dir = match dirs.get(parent) {
            Some(d) => d.clone(),
            None => {
                let d = std::rc::Rc::new(
                    File::open(parent).with_context(|| format!("open {}", parent.display()))?,
                );
                dirs.insert(parent, d.clone());
                d
            }
        };
        items.push((dir, CString::new(name.as_bytes())?));
    }
    let one = |dir: &File, name: &CString| -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero `struct stat` is a valid value for the kernel to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for the duration of the call, `name` is NUL-terminated
        // and `st` is writable.
        let rc = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    if warm {
        for (d, n) in &items {
            one(d, n).with_context(|| format!("lookup {n:?}"))?;
        }
    }
    let mut h = histogram();
    for (d, n) in &items {
        let t = Instant::now();
        let r = one(d, n);
        record(&mut h, t.elapsed());
        r.with_context(|| format!("lookup {n:?}"))?;
    }
    Ok(Metric::latency(&h))
}

/// Lists `dir` (names only, like `ls -f`), `iters` times; cold drops every cache first.
pub fn readdir(dir: &Path, iters: usize, warm: bool) -> Result<Metric> {
    let list = || -> Result<u64> {
        let mut n = 0;
        for e in std::fs::read_dir(dir).with_context(|| format!("readdir {}", dir.display()))? {
            e?;
            n += 1;
        }
        Ok(n)
    };
    let mut entries = 0;
    if warm {
        entries = list()?;
    }
    let mut h = histogram();
    for _ in 0..iters {
        if !warm {
            drop_caches(3)?;
        }
        let t = Instant::now();
        let n = list();
        record(&mut h, t.elapsed());
        entries = n?;
    }
    let mut m = Metric::latency(&h);
    m.entries = Some(entries);
    Ok(m)
}

/// open + read of the first 4 KiB + close.
pub fn open_first_block(paths: &[PathBuf], warm: bool) -> Result<Metric> {
    let mut buf = vec![0u8; 4096];
    let mut one = |p: &Path| -> Result<()> {
        let f = File::open(p).with_context(|| format!("open {}", p.display()))?;
        f.read_at(&mut buf, 0)?;
        Ok(())
    };
    if warm {
        for p in paths {
            one(p)?;
        }
    }
    let mut h = histogram();
    for p in paths {
        let t = Instant::now();
        let r = one(p);
        record(&mut h, t.elapsed());
        r?;
    }
    Ok(Metric::latency(&h))
}

/// open + read to the end with `buf`-sized reads + close; the bytes read.
pub fn read_whole(p: &Path, buf: &mut [u8]) -> Result<u64> {
    let mut f = File::open(p).with_context(|| format!("open {}", p.display()))?;
    let mut total = 0u64;
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Like [`read_whole`], recording the latency of each `read(2)` call in `h`.
fn read_whole_timed(p: &Path, buf: &mut [u8], h: &mut hdrhistogram::Histogram<u64>) -> Result<u64> {
    let mut f = File::open(p).with_context(|| format!("open {}", p.display()))?;
    let mut total = 0u64;
    loop {
        let t = Instant::now();
        let n = f.read(buf);
        record(h, t.elapsed());
        let n = n?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// open + read to the end + close of small track files.
pub fn read_files(paths: &[PathBuf]) -> Result<Metric> {
    let mut buf = vec![0u8; 128 << 10];
    for p in paths {
        read_whole(p, &mut buf)?;
    }
    let mut h = histogram();
    for p in paths {
        let t = Instant::now();
        let r = read_whole(p, &mut buf);
        record(&mut h, t.elapsed());
        r?;
    }
    Ok(Metric::latency(&h))
}

/// Sequential read of one large file with 1 MiB reads, after a warming pass: median of
/// `passes` in GB/s (latency fields: per-pass time).
pub fn seqread(path: &Path, passes: usize) -> Result<Metric> {
    let mut buf = vec![0u8; 1 << 20];
    read_whole(path, &mut buf)?;
    let mut rates = Vec::new();
    let mut h = histogram();
    for _ in 0..passes {
        let t = Instant::now();
        let n = read_whole(path, &mut buf)?;
        let el = t.elapsed();
        record(&mut h, el);
        rates.push(n as f64 / el.as_secs_f64() / 1e9);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    Ok(Metric::latency(&h).with_value(median, "GB/s"))
}

/// 4 KiB preads at random aligned offsets of one file (warm): latency and IOPS.
pub fn randread(path: &Path, count: usize, seed: u64) -> Result<Metric> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let blocks = f.metadata()?.len() / 4096;
    if blocks == 0 {
        bail!("{} is smaller than 4 KiB", path.display());
    }
    let mut buf = vec![0u8; 4096];
    let mut warm = vec![0u8; 1 << 20];
    read_whole(path, &mut warm)?;
    let mut rng = Rng::new(seed);
    let mut h = histogram();
    let start = Instant::now();
    for _ in 0..count {
        let off = rng.below(blocks) * 4096;
        let t = Instant::now();
        let r = f.read_at(&mut buf, off);
        record(&mut h, t.elapsed());
        r?;
    }
    let iops = count as f64 / start.elapsed().as_secs_f64();
    Ok(Metric::latency(&h).with_value(iops, "IOPS"))
}

/// `readers` threads each stream whole albums (every file, 128 KiB reads), after one
/// warming pass: latency of each `read(2)` call (so p99 is comparable across reader
/// counts) and aggregate MB/s.
pub fn concurrent(albums: &[Vec<PathBuf>], readers: usize, per_reader: usize) -> Result<Metric> {
    if albums.is_empty() {
        bail!("no album to stream");
    }
    let plan: Vec<Vec<&Vec<PathBuf>>> = (0..readers)
        .map(|r| {
            (0..per_reader)
                .map(|i| &albums[(r * per_reader + i) % albums.len()])
                .collect()
        })
        .collect();
    let mut buf = vec![0u8; 128 << 10];
    for album in plan.iter().flatten() {
        for p in album.iter() {
            read_whole(p, &mut buf)?;
        }
    }
    let merged = Mutex::new(histogram());
    let bytes = AtomicU64::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        let (merged, bytes, failed) = (&merged, &bytes, &failed);
        for mine in &plan {
            s.spawn(move || {
                let mut h = histogram();
                let mut buf = vec![0u8; 128 << 10];
                for album in mine {
                    for p in album.iter() {
                        match read_whole_timed(p, &mut buf, &mut h) {
                            Ok(n) => {
                                bytes.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                return;
                            }
                        }
                    }
                }
                let mut m = merged.lock().unwrap_or_else(|p| p.into_inner());
                // Both histograms share bounds, so adding cannot fail.
                let _ = m.add(&h);
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    let h = merged.into_inner().unwrap_or_else(|p| p.into_inner());
    let mbps = bytes.load(Ordering::Relaxed) as f64 / secs / 1e6;
    Ok(Metric::latency(&h).with_value(mbps, "MB/s"))
}

/// VmRSS and RssAnon of a process, in bytes.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

/// Samples a process's RSS until stopped; returns the peaks.
pub struct RssSampler {
    stop: std::sync::Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, u64)>,
}

impl RssSampler {
    /// Starts sampling `pid` every 5 ms.
    pub fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Ok((r, a)) = rss(pid) {
                    peak = (peak.0.max(r), peak.1.max(a));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    /// Stops and returns the peak (VmRSS, RssAnon).
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or((0, 0))
    }
}
