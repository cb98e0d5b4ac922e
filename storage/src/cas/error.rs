//! The CAS error type.

use std::io;
use std::path::PathBuf;

/// Every way a [`Cas`](super::Cas) operation can fail. A damaged chunk is not an error:
/// it is dropped and reported as a miss.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A file or directory of the CAS could not be created, opened, written or synced.
    #[error("chunk store {path}: cannot {op}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// What the system said.
        source: io::Error,
    },

    /// LMDB failed (the index is damaged, the disk is full, the map is full, ...).
    #[error("chunk store index {path}: {op} failed: {source}")]
    Lmdb {
        /// The index directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// What LMDB said.
        source: heed::Error,
    },

    /// Another process (or another `Cas` in this one) has the store open.
    #[error("chunk store {path} is in use by another process (a running musicfsd?)")]
    Locked {
        /// The CAS directory.
        path: PathBuf,
    },

    /// The index holds a value this build cannot decode, or was written by a newer build.
    #[error("chunk store index {path} is damaged or from a newer MusicFS: {what}")]
    Format {
        /// The index directory.
        path: PathBuf,
        /// What did not decode.
        what: String,
    },

    /// The caller handed chunks that do not match the bytes given with them.
    #[error("bad chunks for the chunk store: {0}")]
    BadInput(String),
}
