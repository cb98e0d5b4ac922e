//! Test helpers: local origins, plain or forced through the generic (listing) code paths.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use musicfs_storage::origin::{
    open_origin, ChangeDetection, ChangeToken, EntryKind, Health, Listed, Origin, OriginError,
    OriginSpec, RootIdentity, Source, Stat,
};
use xxhash_rust::xxh3::xxh3_128;

/// A valid 16-bit mono 8 kHz PCM WAV of `frames` silent frames.
pub(crate) fn wav(frames: u32) -> Vec<u8> {
    let data = frames * 2;
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&8000u32.to_le_bytes());
    v.extend_from_slice(&16000u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data.to_le_bytes());
    v.resize(v.len() + data as usize, 0);
    v
}

/// The local origin rooted at `root`.
pub(crate) fn local(root: &Path) -> Arc<dyn Origin> {
    open_origin(&OriginSpec::local(root)).expect("open a local origin")
}

/// The local origin rooted at `root`, hiding that it is local: no local root, no local
/// driver, so the scan walks it with `Origin::list` and reads it with `Origin::open`, as
/// it will a remote origin.
pub(crate) fn listed(root: &Path) -> Arc<dyn Origin> {
    Arc::new(Opaque(local(root)))
}

/// Opens an origin at a root.
pub(crate) type Opener = fn(&Path) -> Arc<dyn Origin>;

/// Both kinds, for tests that must hold for either walk.
pub(crate) const KINDS: [(&str, Opener); 2] = [("local", local), ("listed", listed)];

#[derive(Debug)]
struct Opaque(Arc<dyn Origin>);

impl Origin for Opaque {
    fn spec(&self) -> &OriginSpec {
        self.0.spec()
    }

    fn key(&self) -> &OsStr {
        self.0.key()
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        self.0.list(dir, each)
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        self.0.stat(rel)
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        self.0.open(rel)
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, recorded: Option<&RootIdentity>) -> Health {
        self.0.probe(recorded)
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        self.0.root_identity()
    }
}

/// The local origin at `root` seen as an object store: walked with `Origin::list`, with
/// [`ChangeToken::ETag`] tokens (a hash of the content, as S3 gives an MD5) and sources
/// without a file descriptor (read by offset only, through the tag reader's blocks).
/// `read` counts the bytes its sources gave.
pub(crate) fn etagged(root: &Path, read: Arc<AtomicU64>) -> Arc<dyn Origin> {
    Arc::new(ETagged {
        inner: local(root),
        root: root.to_path_buf(),
        read,
    })
}

#[derive(Debug)]
struct ETagged {
    inner: Arc<dyn Origin>,
    root: PathBuf,
    read: Arc<AtomicU64>,
}

impl ETagged {
    fn etagged(&self, rel: &Path, mut stat: Stat) -> Stat {
        if stat.kind == EntryKind::File {
            let bytes = std::fs::read(self.root.join(rel)).unwrap_or_default();
            stat.token = ChangeToken::ETag(format!("{:032x}", xxh3_128(&bytes)));
            (stat.mode, stat.uid, stat.gid) = (None, None, None);
        }
        stat
    }
}

impl Origin for ETagged {
    fn spec(&self) -> &OriginSpec {
        self.inner.spec()
    }

    fn key(&self) -> &OsStr {
        self.inner.key()
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        self.inner.list(dir, &mut |listed| match listed {
            Listed::Entry(mut e) => {
                e.stat = self.etagged(&dir.join(&e.name), e.stat);
                each(Listed::Entry(e))
            }
            other => each(other),
        })
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        Ok(self.etagged(rel, self.inner.stat(rel)?))
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        Ok(Arc::new(NoFd {
            inner: self.inner.open(rel)?,
            read: self.read.clone(),
        }))
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, recorded: Option<&RootIdentity>) -> Health {
        self.inner.probe(recorded)
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        None
    }
}

#[derive(Debug)]
struct NoFd {
    inner: Arc<dyn Source>,
    read: Arc<AtomicU64>,
}

impl Source for NoFd {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}
