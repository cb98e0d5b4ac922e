//! The catalog check: every page of every database read once, in a child process.
//!
//! LMDB trusts the pages it maps. A branch or leaf page damaged on disk (a bad sector, a
//! stray write) is not an error it can report: a cursor walking into it reads garbage
//! offsets and the process dies (SIGSEGV, SIGBUS, or `abort()` on an assertion such as
//! `IS_LEAF(mp)` in `mdb_cursor_next`), and LMDB has no hook to turn that into an error
//! (`mdb_env_set_assert` is not exposed by heed, and a fault is not an assertion anyway).
//!
//! So the walk, [`walk`], is meant to run in a process of its own (`musicfsd
//! --check-catalog DIR`, `musicfs catalog check`), and [`run_check`] judges it by how that
//! process ended: exit 0 means every key and value of every database, the free list
//! included, could be read; anything else (an LMDB error, a signal, an abort) means the
//! catalog must not be touched. The daemon runs it after mounting and keeps the catalog
//! behind a [`CheckGate`] until the verdict is in.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};

use lmdb_master_sys as ffi;

use super::error::CatalogError;

/// The named databases the walk may open: more than the catalog creates, so a catalog
/// written by a newer build is walked whole too.
const MAX_DBS: ffi::MDB_dbi = 64;

/// What a sound catalog holds, as the walk counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkSummary {
    /// Named databases walked.
    pub databases: u64,
    /// Entries (key and value pairs) read, the free list's included.
    pub entries: u64,
    /// Key and value bytes read.
    pub bytes: u64,
}

/// Reads every key and value of every database of the catalog in `dir`, and its free list,
/// through a read-only environment.
///
/// A damaged page may kill the calling process instead of returning an error: run this in
/// a process of its own and judge it with [`run_check`].
pub fn walk(dir: &Path) -> Result<WalkSummary, CatalogError> {
    let env = RawEnv::open(dir)?;
    let txn = env.read_txn()?;
    let mut summary = WalkSummary::default();
    // dbi 0 is LMDB's free list, dbi 1 the main database, whose keys name the others.
    // The free list's keys are native integers: their order is not memcmp's.
    txn.walk(0, "the free list", false, &mut summary, |_, _| {})?;
    let mut names = Vec::new();
    txn.walk(1, "the main database", true, &mut summary, |key, _| {
        names.push(key.to_vec())
    })?;
    for name in names {
        let Ok(name) = CString::new(name) else {
            continue;
        };
        let dbi = txn.open_db(&name)?;
        summary.databases += 1;
        let what = format!("database {:?}", name.to_string_lossy());
        txn.walk(dbi, &what, true, &mut summary, |_, _| {})?;
    }
    Ok(summary)
}

/// How a catalog check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every page could be read.
    Sound(String),
    /// The check failed: what it said or how it died.
    Damaged(String),
}

/// Runs `check` (a command that walks the catalog with [`walk`] and exits 0 when it is
/// sound, non-zero with a message on stderr when LMDB reports an error) and judges how it
/// ended. Only an error running the command at all (it could not be started) is an `Err`.
pub fn run_check(mut check: Command) -> std::io::Result<Verdict> {
    let out = check
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    let stderr = said(&out.stderr);
    Ok(if out.status.success() {
        Verdict::Sound(said(&out.stdout))
    } else if let Some(signal) = out.status.signal() {
        let last = stderr.lines().last().unwrap_or_default();
        Verdict::Damaged(format!(
            "reading it killed the check (signal {signal}{}){}",
            signal_name(signal),
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        ))
    } else if stderr.is_empty() {
        Verdict::Damaged(format!("the check failed ({})", out.status))
    } else {
        Verdict::Damaged(stderr)
    })
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => ", SIGSEGV",
        libc::SIGBUS => ", SIGBUS",
        libc::SIGABRT => ", SIGABRT: an LMDB assertion",
        libc::SIGFPE => ", SIGFPE",
        libc::SIGILL => ", SIGILL",
        _ => "",
    }
}

/// Where a running daemon's catalog stands with its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckState {
    /// No check was asked for (tools and tests): the catalog is used as it is.
    Unchecked,
    /// The check runs: bulk work waits for it ([`CheckGate::wait`]).
    Checking,
    /// The check read every page.
    Sound,
    /// The check failed: the catalog is not read or written again by this process.
    Damaged(String),
}

impl CheckState {
    /// A short name for status reports: `unchecked`, `checking`, `sound`, `damaged`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckState::Unchecked => "unchecked",
            CheckState::Checking => "checking",
            CheckState::Sound => "sound",
            CheckState::Damaged(_) => "damaged",
        }
    }
}

/// The catalog's check state, with a wait for the verdict.
pub(crate) struct CheckGate {
    state: Mutex<CheckState>,
    settled: Condvar,
}

impl CheckGate {
    pub(crate) fn new() -> CheckGate {
        CheckGate {
            state: Mutex::new(CheckState::Unchecked),
            settled: Condvar::new(),
        }
    }

    pub(crate) fn state(&self) -> CheckState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, state: CheckState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        self.settled.notify_all();
    }

    /// Blocks while a check runs; then the state.
    pub(crate) fn wait(&self) -> CheckState {
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.settled
            .wait_while(guard, |s| *s == CheckState::Checking)
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The damage found, if the check found any.
    pub(crate) fn damage(&self) -> Option<String> {
        match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            CheckState::Damaged(why) => Some(why.clone()),
            _ => None,
        }
    }
}

/// A read-only LMDB environment opened through the C API: heed has no way to walk the
/// free list (dbi 0), and the walk needs no typed databases.
struct RawEnv {
    env: *mut ffi::MDB_env,
    dir: PathBuf,
}

impl RawEnv {
    fn open(dir: &Path) -> Result<RawEnv, CatalogError> {
        let data = dir.join("data.mdb");
        if !data.is_file() {
            return Err(CatalogError::Corrupt {
                path: dir.to_path_buf(),
                detail: "no data.mdb".into(),
            });
        }
        let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(|_| CatalogError::Corrupt {
            path: dir.to_path_buf(),
            detail: "the path holds a NUL byte".into(),
        })?;
        let mut env = std::ptr::null_mut();
        // SAFETY: mdb_env_create writes a new handle into `env`, which we own from here and
        // close in Drop (also when opening fails, as LMDB asks).
        let rc = unsafe { ffi::mdb_env_create(&mut env) };
        let raw = RawEnv {
            env,
            dir: dir.to_path_buf(),
        };
        raw.ok(rc, "create")?;
        // SAFETY: a live handle, not yet opened; the path is NUL-terminated.
        raw.ok(unsafe { ffi::mdb_env_set_maxdbs(env, MAX_DBS) }, "open")?;
        // The map must cover the whole file: LMDB takes the larger of this and the size
        // recorded in the meta page.
        let len = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
        let size = usize::try_from(len).unwrap_or(usize::MAX).max(1 << 20);
        // SAFETY: a live handle, not yet opened.
        raw.ok(unsafe { ffi::mdb_env_set_mapsize(env, size) }, "open")?;
        let flags = ffi::MDB_RDONLY | ffi::MDB_NOTLS;
        // SAFETY: a live handle and a NUL-terminated path; read-only, so the data file is
        // never written (only the lock file's reader table).
        raw.ok(
            unsafe { ffi::mdb_env_open(env, cdir.as_ptr(), flags, 0o600) },
            "open",
        )?;
        if let Some((len, needed)) = raw.cut_short(len) {
            return Err(CatalogError::Corrupt {
                path: dir.to_path_buf(),
                detail: format!("data.mdb holds {len} bytes, fewer than the {needed} committed"),
            });
        }
        Ok(raw)
    }

    /// The file length and the length the meta page says was committed, when shorter.
    fn cut_short(&self, len: u64) -> Option<(u64, u64)> {
        // SAFETY: zeroed plain C structs that LMDB fills; the handle is open.
        let mut info: ffi::MDB_envinfo = unsafe { std::mem::zeroed() };
        let mut stat: ffi::MDB_stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { ffi::mdb_env_info(self.env, &mut info) } != 0
            || unsafe { ffi::mdb_env_stat(self.env, &mut stat) } != 0
        {
            return None;
        }
        let needed = (info.me_last_pgno as u64 + 1).checked_mul(u64::from(stat.ms_psize))?;
        (len < needed).then_some((len, needed))
    }

    fn read_txn(&self) -> Result<RawTxn<'_>, CatalogError> {
        let mut txn = std::ptr::null_mut();
        // SAFETY: an open environment; a read-only transaction with no parent.
        let rc = unsafe {
            ffi::mdb_txn_begin(self.env, std::ptr::null_mut(), ffi::MDB_RDONLY, &mut txn)
        };
        self.ok(rc, "read")?;
        Ok(RawTxn { env: self, txn })
    }

    fn ok(&self, rc: libc::c_int, op: &'static str) -> Result<(), CatalogError> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: mdb_strerror returns a static NUL-terminated string for any code.
        let msg = unsafe { CStr::from_ptr(ffi::mdb_strerror(rc)) }.to_string_lossy();
        Err(CatalogError::Corrupt {
            path: self.dir.clone(),
            detail: format!("LMDB {op} failed: {msg} ({rc})"),
        })
    }
}

impl Drop for RawEnv {
    fn drop(&mut self) {
        // SAFETY: the handle came from mdb_env_create and every transaction borrowing it
        // has ended (RawTxn borrows the RawEnv).
        unsafe { ffi::mdb_env_close(self.env) };
    }
}

struct RawTxn<'e> {
    env: &'e RawEnv,
    txn: *mut ffi::MDB_txn,
}

impl RawTxn<'_> {
    fn open_db(&self, name: &CStr) -> Result<ffi::MDB_dbi, CatalogError> {
        let mut dbi = 0;
        // SAFETY: a live read transaction; a NUL-terminated name; no flags (open only).
        let rc = unsafe { ffi::mdb_dbi_open(self.txn, name.as_ptr(), 0, &mut dbi) };
        self.env.ok(rc, "database open")?;
        Ok(dbi)
    }

    /// Reads every entry of `dbi` in key order, touching every byte of each key and value.
    /// A damaged leaf LMDB walks through without noticing shows as keys out of order
    /// (`ordered`: the catalog's databases all sort keys as bytes) or as another number of
    /// entries than the database's record counts.
    fn walk(
        &self,
        dbi: ffi::MDB_dbi,
        what: &str,
        ordered: bool,
        summary: &mut WalkSummary,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), CatalogError> {
        // SAFETY: a zeroed plain C struct LMDB fills; a live transaction and dbi.
        let mut stat: ffi::MDB_stat = unsafe { std::mem::zeroed() };
        self.env
            .ok(unsafe { ffi::mdb_stat(self.txn, dbi, &mut stat) }, "stat")?;
        let mut seen: u64 = 0;
        let mut last: Option<Vec<u8>> = None;
        let damaged = |detail: String| CatalogError::Corrupt {
            path: self.env.dir.clone(),
            detail,
        };
        let mut cursor = std::ptr::null_mut();
        // SAFETY: a live transaction and a dbi it knows (0 and 1 always exist).
        let rc = unsafe { ffi::mdb_cursor_open(self.txn, dbi, &mut cursor) };
        self.env.ok(rc, "cursor open")?;
        let mut op = ffi::MDB_FIRST;
        let result = loop {
            let mut key = ffi::MDB_val {
                mv_size: 0,
                mv_data: std::ptr::null_mut(),
            };
            let mut val = key;
            // SAFETY: a live cursor; LMDB points key and val into the map, valid until
            // the transaction ends (it outlives this loop).
            let rc = unsafe { ffi::mdb_cursor_get(cursor, &mut key, &mut val, op) };
            if rc == ffi::MDB_NOTFOUND {
                break Ok(());
            }
            if let Err(e) = self.env.ok(rc, "walk") {
                break Err(e);
            }
            // SAFETY: as above; a zero size never dereferences the pointer.
            let (k, v) = unsafe { (bytes(&key), bytes(&val)) };
            if ordered && last.as_deref().is_some_and(|l| l >= k) {
                break Err(damaged(format!(
                    "{what}: keys out of order after entry {seen}"
                )));
            }
            if ordered {
                last = Some(k.to_vec());
            }
            seen += 1;
            summary.entries += 1;
            summary.bytes += (k.len() + v.len()) as u64;
            // Every byte read: a value on overflow pages is mapped only when touched.
            std::hint::black_box(k.iter().chain(v).fold(0u8, |a, b| a ^ b));
            each(k, v);
            op = ffi::MDB_NEXT;
        };
        // SAFETY: the cursor is ours and its transaction is still live.
        unsafe { ffi::mdb_cursor_close(cursor) };
        result?;
        let recorded = stat.ms_entries as u64;
        if seen != recorded {
            return Err(damaged(format!(
                "{what}: {seen} entries read, {recorded} recorded"
            )));
        }
        Ok(())
    }
}

impl Drop for RawTxn<'_> {
    fn drop(&mut self) {
        // SAFETY: the transaction is ours; every cursor on it was closed in `walk`.
        unsafe { ffi::mdb_txn_abort(self.txn) };
    }
}

/// The bytes an `MDB_val` points at.
///
/// # Safety
/// `val` must come from LMDB in a transaction still live for the returned lifetime.
unsafe fn bytes<'a>(val: &ffi::MDB_val) -> &'a [u8] {
    if val.mv_size == 0 {
        return &[];
    }
    // SAFETY: the caller's contract: LMDB's pointer and size into its live map.
    unsafe { std::slice::from_raw_parts(val.mv_data.cast::<u8>(), val.mv_size) }
}
