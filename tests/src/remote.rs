//! What the end-to-end tests of the remote read path share: a bucket of ffmpeg-generated
//! tracks served by `s3s-fs` behind a [`CountingProxy`] and scanned into a state dir
//! ([`S3Library`]), and the helpers that read through a mount and measure the wire.
//!
//! Every tool it needs is checked first: a missing one fails the test saying how to get it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tempfile::TempDir;

use crate::fixtures::ffmpeg_available;
use crate::harness::{
    binary, checksum_tree, run_ok, walk_files, Checksum, MountOptions, MountedFs,
};
use crate::servers::faulty::FaultyHttpProxy;
use crate::servers::proxy::CountingProxy;
use crate::servers::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

/// The bucket the library is served from.
pub const BUCKET: &str = "music";

/// One track to generate with ffmpeg.
#[derive(Debug, Clone, Copy)]
pub struct Track<'a> {
    /// Where it goes, relative to the library root: `Artist/Album/file.ext`.
    pub rel: &'a str,
    /// The lavfi source (`anoisesrc=...`, `sine=...`).
    pub input: &'a str,
    /// Codec and muxer arguments.
    pub codec: &'a [&'a str],
    /// Its title tag (the artist and album come from the path).
    pub title: &'a str,
}

/// Generates `tracks` under `dir`, stereo, tagged with title, artist, album and track 1.
pub fn generate(dir: &Path, tracks: &[Track]) -> Result<()> {
    ensure!(
        ffmpeg_available(),
        "ffmpeg is missing: install it (tools/run-tests.sh does)"
    );
    for t in tracks {
        let out = dir.join(t.rel);
        fs::create_dir_all(out.parent().context("no parent")?)?;
        let artist = t.rel.split('/').next().unwrap_or("Artist");
        let album = t.rel.split('/').nth(1).unwrap_or("Album");
        let mut cmd = Command::new("ffmpeg");
        cmd.args([
            "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", t.input,
        ])
        .args(["-ac", "2"])
        .args(t.codec)
        .args(["-metadata", &format!("title={}", t.title)])
        .args(["-metadata", &format!("artist={artist}")])
        .args(["-metadata", &format!("album={album}")])
        .args(["-metadata", "track=1"])
        .arg(&out);
        run_ok(&mut cmd).with_context(|| format!("generating {}", t.rel))?;
    }
    Ok(())
}

/// A library in an S3 bucket, served through a counting proxy, scanned into `state`.
/// Dropping it stops the proxy, then the server, then removes every file.
#[derive(Debug)]
pub struct S3Library {
    /// Counts the daemon's S3 traffic.
    pub proxy: CountingProxy,
    /// Injects faults between the daemon and the counting proxy (`start_faulty`).
    pub faulty: Option<FaultyHttpProxy>,
    server: S3Server,
    /// The origin spec reaching the bucket through the proxy.
    pub spec: String,
    /// The library root inside the bucket's directory (what the origin serves).
    pub library: PathBuf,
    /// The state dir the library was scanned into.
    pub state: PathBuf,
    work: TempDir,
}

impl S3Library {
    /// Lets `fill` write the library (a fresh dir), serves it and scans it.
    pub fn start(fill: impl FnOnce(&Path) -> Result<()>) -> Result<S3Library> {
        Self::start_with(fill, None)
    }

    /// [`S3Library::start`] with a [`FaultyHttpProxy`] (its draws seeded by `seed`) in front
    /// of the counting proxy: the spec reaches the bucket through both. It injects nothing
    /// until the test sets faults, so the scan here is clean.
    pub fn start_faulty(fill: impl FnOnce(&Path) -> Result<()>, seed: u64) -> Result<S3Library> {
        Self::start_with(fill, Some(seed))
    }

    fn start_with(
        fill: impl FnOnce(&Path) -> Result<()>,
        faulty: Option<u64>,
    ) -> Result<S3Library> {
        S3Server::binary()?;
        let work = tempfile::tempdir()?;
        let root = work.path().join("s3");
        let library = root.join(BUCKET).join("lib");
        fs::create_dir_all(&library)?;
        fill(&library)?;
        let server = S3Server::start(&root, &work.path().join("s3s-fs.log"))?;
        let proxy = CountingProxy::start(server.port())?;
        let faulty = faulty
            .map(|seed| FaultyHttpProxy::start(proxy.port(), seed))
            .transpose()?;
        let front = faulty.as_ref().map_or(proxy.port(), |f| f.port());
        let spec = format!(
            "s3://{BUCKET}/lib?endpoint=http://127.0.0.1:{front}&region=us-east-1&path_style=true"
        );
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        let lib = S3Library {
            proxy,
            faulty,
            server,
            spec,
            library,
            state: work.path().join("state"),
            work,
        };
        lib.scan()?;
        Ok(lib)
    }

    /// A scratch dir that lives as long as the library (configs, logs).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Runs `musicfs scan` of the bucket into the state dir.
    pub fn scan(&self) -> Result<()> {
        let mut cmd = Command::new(binary("musicfs")?);
        cmd.args(["scan", "--origin", &self.spec, "--state-dir"])
            .arg(&self.state);
        run_ok(&mut cmd)?;
        Ok(())
    }

    /// Options for a daemon serving the bucket from the state dir, logging its refreshes.
    pub fn mount_options(&self) -> MountOptions {
        let mut opts = MountOptions::new([PathBuf::from(&self.spec)]);
        opts.state_dir = Some(self.state.clone());
        opts.log_level = Some("info,musicfs_index::refresh=debug".into());
        opts
    }

    /// The library file whose path holds `title`.
    pub fn source(&self, title: &str) -> Result<PathBuf> {
        walk_files(&self.library)?
            .into_iter()
            .find(|p| p.to_string_lossy().contains(title))
            .with_context(|| format!("no {title} in the bucket"))
    }

    /// Checksums of every file in the bucket: equal before and after shows nothing wrote.
    pub fn bucket_sums(&self) -> Result<BTreeMap<PathBuf, Checksum>> {
        checksum_tree(&self.library)
    }

    /// Everything the server logged.
    pub fn server_log(&self) -> String {
        self.server.log()
    }
}

/// Runs `musicfs cache verify` on `state`.
pub fn cache_verify(state: &Path) -> Result<()> {
    let mut verify = Command::new(binary("musicfs")?);
    verify.args(["cache", "verify", "--state-dir"]).arg(state);
    run_ok(&mut verify).context("musicfs cache verify")?;
    Ok(())
}

/// The mount's file whose name holds `title`.
pub fn served(mount: &MountedFs, title: &str) -> Result<PathBuf> {
    walk_files(mount.mountpoint())?
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(title))
        })
        .with_context(|| format!("no {title} in the mount"))
}

/// Waits until nothing crossed `proxy` for 1.5 s (at most a minute).
pub fn quiet(proxy: &CountingProxy) -> Result<()> {
    proxy
        .wait_quiet(Duration::from_millis(1500), Duration::from_secs(60))
        .context("the daemon kept talking to the server")?;
    Ok(())
}

/// Drops the kernel's cached pages of `p` (on a FUSE mount: the mount's copy, so the next
/// read goes to the daemon).
pub fn evict_pages(p: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(p)?;
    // SAFETY: posix_fadvise on a descriptor we own, open for the duration of the call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    ensure!(
        rc == 0,
        "posix_fadvise: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    Ok(())
}

/// The whole file, read with `read(2)` calls (through the mount: the daemon's read path).
pub fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

/// The bytes down from the server while `f` ran, once the daemon has gone quiet before it
/// (a start-up reconcile or refresh may still be listing).
pub fn wire_cost<T>(proxy: &CountingProxy, f: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
    quiet(proxy)?;
    let before = proxy.moved().down;
    let out = f()?;
    Ok((out, proxy.moved().down - before))
}
