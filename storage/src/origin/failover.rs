//! Reading a file that exists in several origins: a source that moves to the next copy
//! when a read fails, at the same offset, so the reader never sees the failure.
//!
//! Only copies with the same bytes qualify (the tree knows which: equal file identity).
//! The copies come in order of preference; an open starts at the first usable one (its
//! origin not offline, or the file readable offline from the cache), so when the preferred
//! origin is back, new opens use it again. A read that fails is counted against its origin
//! (the prober turns failed reads into a "degraded" state) and the source moves on for
//! good: the copy that failed is not retried by this handle.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use musicfs_core::health::OriginHealth;

use super::{Origin, OriginError, Seen, Source};

/// One place a file can be read from.
#[derive(Clone)]
pub struct Copy {
    /// The origin's id (what the tree's nodes carry; the health table's key).
    pub origin_id: u32,
    /// The origin, as the read path opens it.
    pub origin: Arc<dyn Origin>,
    /// The file, relative to the origin's root.
    pub rel: PathBuf,
    /// Its size and mtime as the tree shows them.
    pub seen: Seen,
}

impl fmt::Debug for Copy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Copy")
            .field("origin_id", &self.origin_id)
            .field("rel", &self.rel)
            .finish()
    }
}

impl Copy {
    fn usable(&self, health: &OriginHealth) -> bool {
        !health.is_offline(self.origin_id) || self.origin.readable_offline(&self.rel)
    }

    fn open(&self) -> Result<Arc<dyn Source>, OriginError> {
        match self.origin.as_local() {
            Some(local) => Ok(Arc::new(local.open_file(&self.rel)?)),
            None => self.origin.open_seen(&self.rel, self.seen),
        }
    }
}

/// A source over several copies of one file. See the module docs.
pub struct FailoverSource {
    copies: Vec<Copy>,
    health: Arc<OriginHealth>,
    /// The copy being read (index into `copies`) and its open source.
    current: RwLock<(usize, Arc<dyn Source>)>,
    len: u64,
}

impl fmt::Debug for FailoverSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverSource")
            .field("copies", &self.copies)
            .field("current", &self.current_index())
            .finish()
    }
}

impl FailoverSource {
    /// Opens the first usable copy of `copies` (in order of preference). Fails with the
    /// last copy's error when none opens, or an I/O error saying so when every copy's
    /// origin is offline.
    pub fn open(
        copies: Vec<Copy>,
        health: Arc<OriginHealth>,
    ) -> Result<FailoverSource, OriginError> {
        let mut last = None;
        for (i, copy) in copies.iter().enumerate() {
            if !copy.usable(&health) {
                continue;
            }
            match copy.open() {
                Ok(source) => {
                    let len = source.len();
                    return Ok(FailoverSource {
                        current: RwLock::new((i, source)),
                        copies,
                        health,
                        len,
                    });
                }
                Err(e) => {
                    health.note_read_error(copy.origin_id);
                    tracing::debug!(origin = copy.origin_id, rel = %copy.rel.display(), error = %e, "copy does not open; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| OriginError::Io {
            origin: "every origin holding it".to_owned(),
            op: "open",
            rel: copies.first().map(|c| c.rel.clone()).unwrap_or_default(),
            source: io::Error::other("offline"),
        }))
    }

    /// The copy being read now (index in the list given to [`FailoverSource::open`]).
    pub fn current_index(&self) -> usize {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// The origin id of the copy being read now.
    pub fn current_origin(&self) -> u32 {
        self.copies[self.current_index()].origin_id
    }

    /// After copy `failed` failed a read at `offset`: the next copy that opens and reads
    /// it, made current, with what it read.
    fn fail_over(
        &self,
        failed: usize,
        buf: &mut [u8],
        offset: u64,
        error: io::Error,
    ) -> io::Result<usize> {
        let from = &self.copies[failed];
        self.health.note_read_error(from.origin_id);
        for (i, copy) in self.copies.iter().enumerate().skip(failed + 1) {
            if !copy.usable(&self.health) {
                continue;
            }
            let source = match copy.open() {
                Ok(s) if s.len() == self.len => s,
                Ok(_) => continue,
                Err(e) => {
                    self.health.note_read_error(copy.origin_id);
                    tracing::debug!(origin = copy.origin_id, error = %e, "copy does not open");
                    continue;
                }
            };
            match source.read_at(buf, offset) {
                Ok(n) => {
                    tracing::info!(
                        from = from.origin_id,
                        to = copy.origin_id,
                        rel = %copy.rel.display(),
                        offset,
                        error = %error,
                        "read failed over to another copy"
                    );
                    let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                    // Another reader of this handle may have moved on already.
                    if current.0 < i {
                        *current = (i, source);
                    }
                    return Ok(n);
                }
                Err(e) => {
                    self.health.note_read_error(copy.origin_id);
                    tracing::debug!(origin = copy.origin_id, error = %e, "copy failed the read too");
                }
            }
        }
        Err(error)
    }
}

impl Source for FailoverSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let (index, source) = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            (current.0, current.1.clone())
        };
        match source.read_at(buf, offset) {
            Ok(n) => Ok(n),
            Err(e) => self.fail_over(index, buf, offset, e),
        }
    }

    fn len(&self) -> u64 {
        self.len
    }
}
