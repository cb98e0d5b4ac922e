//! The LMDB environment behind the catalog, and the lock that makes growing its map safe.
//!
//! LMDB's map has a fixed size; a write that does not fit fails with `MDB_MAP_FULL`.
//! Growing it (`mdb_env_set_mapsize`) is only allowed while this process has no
//! transaction open. Every transaction here therefore runs while holding a shared guard on
//! `gate`, and a resize takes the exclusive guard: it waits for running transactions to
//! end and keeps new ones from starting.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use heed::{Env, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

use super::check::CheckGate;
use super::error::CatalogError;

/// Maps are sized in multiples of this, which is a multiple of every page size LMDB runs
/// with (4 KiB, 16 KiB, 64 KiB).
const MAP_GRANULE: usize = 64 << 10;

/// Upper bound of the map: far beyond any music catalog, but a bound, so a transaction
/// that can never fit ends in an error instead of doubling forever.
const MAX_MAP_SIZE: u64 = 1 << 40;

/// Named databases the catalog opens (`tracks`, `paths`, `skipped`, `origins`, `meta`).
const MAX_DBS: u32 = 16;

/// An open LMDB environment plus the resize gate.
pub(crate) struct Store {
    env: Env<WithoutTls>,
    gate: RwLock<()>,
    dir: PathBuf,
    /// The out-of-process check's verdict: once it found damage, no transaction starts.
    pub(crate) check: CheckGate,
}

impl Store {
    /// Writes a compacted copy of the environment (a consistent view: LMDB copies under a
    /// read transaction) to the file `dest`, which must not exist.
    pub(crate) fn copy_to(&self, dest: &Path) -> Result<(), CatalogError> {
        self.refuse_if_damaged()?;
        let _shared = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        self.env
            .copy_to_path(dest, heed::CompactionOption::Enabled)
            .map(drop)
            .map_err(|source| CatalogError::Copy {
                path: dest.to_path_buf(),
                source,
            })
    }

    /// Opens (creating if needed) the environment in `dir` with an initial map of at least
    /// `map_size` bytes. A catalog that already holds more data keeps its larger size.
    pub(crate) fn open(dir: &Path, map_size: usize) -> Result<Store, CatalogError> {
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let map_size = round_up_to_granule(map_size).ok_or_else(|| CatalogError::MapFull {
            path: dir.to_path_buf(),
            max: MAX_MAP_SIZE,
        })?;
        // Without thread-local reader slots a thread may hold more than one read
        // transaction (a lookup made while iterating), which LMDB otherwise rejects.
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(MAX_DBS);
        // SAFETY: the map stays valid as long as the files are only changed through LMDB.
        // The catalog directory belongs to MusicFS and is written only through LMDB; we
        // keep LMDB's lock file and locking (no NO_LOCK or other unsafe flags), so other
        // processes opening the same catalog coordinate through it. heed refuses a second
        // handle on the same environment in this process (EnvAlreadyOpened).
        let env = unsafe { options.open(dir) }.map_err(|source| open_error(dir, source))?;
        if let Some((len, needed)) = cut_short(dir, &env) {
            return Err(CatalogError::Corrupt {
                path: dir.to_path_buf(),
                detail: format!(
                    "data.mdb holds {len} bytes, fewer than the {needed} its last transaction \
                     committed (the file was cut short); move the directory away to start a \
                     new catalog"
                ),
            });
        }
        Ok(Store {
            env,
            gate: RwLock::new(()),
            dir: dir.to_path_buf(),
            check: CheckGate::new(),
        })
    }

    /// The catalog directory, for error messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmaps this process's view of the catalog's pages (`MADV_DONTNEED` on the read-only
    /// shared map): the pages stay in the page cache and fault back in on the next read,
    /// unchanged (LMDB never rewrites a page a reader can see), but stop counting in the
    /// process's resident set. A full pass over a million tracks otherwise left the whole
    /// catalog (about 580 MB) resident. Best effort: without `/proc` nothing happens.
    pub(crate) fn drop_mapped_pages(&self) {
        let Ok(data) = std::fs::canonicalize(self.dir.join("data.mdb")) else {
            return;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let Some(data) = data.to_str() else {
            return;
        };
        for line in maps.lines().filter(|l| l.ends_with(data)) {
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if perms.starts_with("r-") && end > start {
                // SAFETY: the range is LMDB's read-only shared file map (no write bit), as
                // the kernel lists it; dropping its page-table entries only makes the next
                // access fault the same file page back in from the page cache, so no
                // reference into the map sees different bytes.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
    }

    /// The damaged-catalog error, once the check found damage: from then on no page of
    /// the catalog is read, as a damaged one could kill the process.
    pub(crate) fn refuse_if_damaged(&self) -> Result<(), CatalogError> {
        match self.check.damage() {
            Some(detail) => Err(CatalogError::Damaged {
                path: self.dir.clone(),
                detail,
            }),
            None => Ok(()),
        }
    }

    /// Wraps a heed error with the catalog's path and the operation that failed.
    pub(crate) fn lmdb(&self, op: &'static str, source: heed::Error) -> CatalogError {
        CatalogError::Lmdb {
            path: self.dir.clone(),
            op,
            source,
        }
    }

    /// Runs `f` in one read transaction.
    ///
    /// `f` must not start another transaction on this store: a pending resize blocks new
    /// transactions until this one ends, so a nested one could wait forever.
    pub(crate) fn read<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&RoTxn<'_, WithoutTls>) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        self.refuse_if_damaged()?;
        loop {
            let shared = self.gate.read().unwrap_or_else(PoisonError::into_inner);
            match self.env.read_txn() {
                Ok(rtxn) => return f(&rtxn),
                Err(heed::Error::Mdb(MdbError::MapResized)) => {}
                Err(source) => return Err(self.lmdb(op, source)),
            }
            drop(shared);
            self.adopt_foreign_resize(op)?;
        }
    }

    /// Runs `f` in one write transaction and commits it. When the map is full, the
    /// transaction is aborted, the map doubled and `f` run again from the start, so `f`
    /// must derive everything it writes from what it reads in the transaction.
    pub(crate) fn write<R>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut RwTxn<'_>) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        self.with_env_retrying(op, |env| {
            let mut wtxn = env.write_txn().map_err(|e| self.lmdb(op, e))?;
            let out = f(&mut wtxn)?;
            wtxn.commit().map_err(|e| self.lmdb(op, e))?;
            Ok(out)
        })
    }

    /// Runs `f`, which opens, uses and ends its own transactions on the environment, and
    /// grows the map and runs it again when it fails with a full map. `f` must not let a
    /// transaction outlive its call.
    pub(crate) fn with_env_retrying<R>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&Env<WithoutTls>) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        self.refuse_if_damaged()?;
        loop {
            let full_at = {
                let _shared = self.gate.read().unwrap_or_else(PoisonError::into_inner);
                // Read under the shared guard: the size cannot change until we release it.
                let size = self.env.info().map_size;
                match f(&self.env) {
                    Ok(out) => return Ok(out),
                    Err(CatalogError::Lmdb {
                        source: heed::Error::Mdb(MdbError::MapResized),
                        ..
                    }) => None,
                    Err(e) if e.is_map_full() => Some(size),
                    Err(e) => return Err(e),
                }
            };
            match full_at {
                Some(size) => self.grow(op, size)?,
                None => self.adopt_foreign_resize(op)?,
            }
        }
    }

    /// Doubles the map, unless another thread already grew it past `full_at`.
    fn grow(&self, op: &'static str, full_at: usize) -> Result<(), CatalogError> {
        let _exclusive = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let current = self.env.info().map_size;
        if current > full_at {
            return Ok(());
        }
        let new_size = current
            .checked_mul(2)
            .and_then(round_up_to_granule)
            .ok_or_else(|| CatalogError::MapFull {
                path: self.dir.clone(),
                max: MAX_MAP_SIZE,
            })?;
        // SAFETY: LMDB allows mdb_env_set_mapsize while the process has no transaction
        // open in this environment. We hold the gate exclusively; every transaction of
        // this module is begun and ended while a shared guard is held (`read`,
        // `with_env_retrying`), no transaction is handed out of those closures, and the
        // Env is never cloned or exposed, so none is open now.
        unsafe { self.env.resize(new_size) }.map_err(|e| self.lmdb(op, e))?;
        tracing::info!(
            catalog = %self.dir.display(),
            old_bytes = current,
            new_bytes = new_size,
            "catalog map grown"
        );
        Ok(())
    }

    /// Adopts the larger map another process set (LMDB reports `MDB_MAP_RESIZED` when a
    /// transaction starts after that).
    fn adopt_foreign_resize(&self, op: &'static str) -> Result<(), CatalogError> {
        let _exclusive = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: as in `grow`: the exclusive gate guarantees no transaction of this
        // process is open. Size 0 asks LMDB to take the size recorded in the file.
        unsafe { self.env.resize(0) }.map_err(|e| self.lmdb(op, e))?;
        tracing::debug!(catalog = %self.dir.display(), "catalog map resized by another process");
        Ok(())
    }
}

/// The data file's length and the length its meta page says was committed, when the file
/// is shorter: LMDB maps the file and trusts the meta page, so reading a page past the end
/// of a cut file would fault (SIGBUS) instead of failing. Only the meta pages, which
/// opening has already read and checked, are looked at.
pub(crate) fn cut_short(dir: &Path, env: &Env<WithoutTls>) -> Option<(u64, u64)> {
    let len = std::fs::metadata(dir.join("data.mdb")).ok()?.len();
    let pages = u64::try_from(env.info().last_page_number)
        .ok()?
        .checked_add(1)?;
    let needed = pages.checked_mul(u64::from(env.unnamed_database_stat().page_size))?;
    (len < needed).then_some((len, needed))
}

/// Rounds up to a whole number of granules, within the bound.
fn round_up_to_granule(size: usize) -> Option<usize> {
    let granules = size.max(1).div_ceil(MAP_GRANULE);
    let rounded = granules.checked_mul(MAP_GRANULE)?;
    (u64::try_from(rounded).ok()? <= MAX_MAP_SIZE).then_some(rounded)
}

/// Sorts an environment-open failure into "this is not a catalog" and everything else.
fn open_error(dir: &Path, source: heed::Error) -> CatalogError {
    let path = dir.to_path_buf();
    match source {
        heed::Error::EnvAlreadyOpened => CatalogError::AlreadyOpen { path },
        heed::Error::Mdb(
            MdbError::Invalid
            | MdbError::Corrupted
            | MdbError::VersionMismatch
            | MdbError::Incompatible
            | MdbError::PageNotFound
            | MdbError::Panic,
        ) => CatalogError::NotACatalog { path, source },
        source => CatalogError::Open { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_sizes_round_up_to_whole_granules_within_the_bound() {
        assert_eq!(round_up_to_granule(0), Some(MAP_GRANULE));
        assert_eq!(round_up_to_granule(1), Some(MAP_GRANULE));
        assert_eq!(round_up_to_granule(MAP_GRANULE), Some(MAP_GRANULE));
        assert_eq!(round_up_to_granule(MAP_GRANULE + 1), Some(2 * MAP_GRANULE));
        assert_eq!(round_up_to_granule(usize::MAX), None);
    }
}
