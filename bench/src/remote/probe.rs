//! The timed operations of the `remote` scenario, on paths of a mount (or a server).

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use musicfs_tests::harness::run_ok;
use musicfs_tests::servers::s3::{ACCESS_KEY, SECRET_KEY};

use super::{BUCKET, PREFIX};

/// The server's own time for a HEAD of `rel` (curl signing with SigV4, straight to the
/// server, not through the proxy), median of three: what each HEAD costs any client.
pub(super) fn server_head_ms(port: u16, rel: &str) -> Result<f64> {
    let url = format!(
        "http://127.0.0.1:{port}/{BUCKET}/{PREFIX}/{}",
        rel.replace(' ', "%20")
    );
    let mut ms = Vec::new();
    for _ in 0..3 {
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}", "-I"])
                .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
                .arg(&url),
        )?;
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("curl's time_total")?;
        ms.push(secs * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(percentile(&ms, 0.5))
}

/// Lists every directory under `root` and `lstat`s every entry (`find ROOT -ls`); the
/// entries seen.
pub(super) fn list_all(root: &Path) -> Result<u64> {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            let meta = fs::symlink_metadata(&p)?;
            n += 1;
            if meta.is_dir() {
                dirs.push(p);
            }
        }
    }
    Ok(n)
}

/// open + read of the first 4 KiB + close.
pub(super) fn first_block(p: &Path) -> Result<Duration> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    let f = File::open(p).with_context(|| format!("open {}", p.display()))?;
    let n = f.read_at(&mut buf, 0)?;
    drop(f);
    let d = t.elapsed();
    ensure!(n > 0, "{} read empty", p.display());
    Ok(d)
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Drops the kernel's cached pages of `p` (see [`musicfs_tests::remote::evict_pages`]).
pub(super) fn evict(p: &Path) -> Result<()> {
    musicfs_tests::remote::evict_pages(p)
}

/// One timed whole-file read: the open's milliseconds, and MB/s from the first read to
/// EOF (the open is timed apart: for a cached remote file it may ask the origin whether
/// the file changed, a round trip that is no part of the throughput).
pub(super) fn timed_read(p: &Path, buf: &mut [u8]) -> Result<(f64, f64)> {
    use std::io::Read;
    let t = Instant::now();
    let mut f = File::open(p).with_context(|| format!("open {}", p.display()))?;
    let open = t.elapsed();
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        match f.read(buf)? {
            0 => break,
            k => n += k as u64,
        }
    }
    Ok((
        open.as_secs_f64() * 1e3,
        n as f64 / t.elapsed().as_secs_f64() / 1e6,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 15.0);
        assert_eq!(percentile(&v, 0.99), 30.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
