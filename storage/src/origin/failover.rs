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
use std::time::Duration;

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

/// A copy whose origin failed a read this recently is passed over while another copy is
/// usable: a stalled server costs one timeout, not one per request in flight.
const AVOID_FAILED_FOR: Duration = Duration::from_secs(10);

impl Copy {
    /// Whether the copy may be read: its origin not offline (or the file readable offline)
    /// and, when `strict`, no read of its origin failed lately.
    fn usable(&self, health: &OriginHealth, strict: bool) -> bool {
        (!health.is_offline(self.origin_id) || self.origin.readable_offline(&self.rel))
            && !(strict && health.failed_recently(self.origin_id, AVOID_FAILED_FOR))
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
        let mut tried = vec![false; copies.len()];
        // First the copies of origins that answer, then any other copy not offline.
        let order = [true, false]
            .into_iter()
            .flat_map(|strict| (0..copies.len()).map(move |i| (strict, i)));
        for (strict, i) in order {
            let copy = &copies[i];
            if tried[i] || !copy.usable(&health, strict) {
                continue;
            }
            tried[i] = true;
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

    /// After copy `failed` failed a read at `offset` (or is known to be failing): the
    /// next copy that opens and reads it, made current, with what it read; `error` when
    /// none does.
    fn fail_over(
        &self,
        failed: usize,
        buf: &mut [u8],
        offset: u64,
        error: io::Error,
    ) -> io::Result<usize> {
        let from = &self.copies[failed];
        for (i, copy) in self.copies.iter().enumerate().skip(failed + 1) {
            if !copy.usable(&self.health, false) {
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
        let origin = self.copies[index].origin_id;
        // Another reader just saw this origin fail: go to the next copy without waiting
        // for a timeout of our own (staying here when no other copy is usable).
        if index + 1 < self.copies.len()
            && self.health.failed_recently(origin, AVOID_FAILED_FOR)
            && self.copies[index + 1..]
                .iter()
                .any(|c| c.usable(&self.health, true))
        {
            let avoided = io::Error::other("a read of this origin failed moments ago");
            if let Ok(n) = self.fail_over(index, buf, offset, avoided) {
                return Ok(n);
            }
        }
        match source.read_at(buf, offset) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.health.note_read_error(origin);
                self.fail_over(index, buf, offset, e)
            }
        }
    }

    fn len(&self) -> u64 {
        self.len
    }
}
