//! [`OriginError`]: every way naming, opening or reading an origin can fail.
//!
//! Every message names the origin by its display form, which never holds credentials (see
//! [`crate::origin::OriginSpec`]); a spec that did not parse is shown redacted.

use std::io;
use std::path::PathBuf;

/// Every way naming, opening or reading an origin can fail.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The spec string is malformed (shown redacted: no userinfo, no query).
    #[error("origin spec {spec}: {reason}")]
    BadSpec {
        /// The spec as given, with anything that may be a credential removed.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local origin was given as a relative path: the caller resolves those (against
    /// the working directory, or the config file's directory) before parsing.
    #[error("origin {path:?} is a relative path; give an absolute path")]
    RelativePath {
        /// The path as given.
        path: String,
    },
    /// The spec's scheme is not one MusicFS knows.
    #[error("origin spec {spec}: unknown scheme {scheme:?} (known: file, s3, sftp, smb)")]
    UnknownScheme {
        /// The spec, redacted.
        spec: String,
        /// The scheme as given.
        scheme: String,
    },
    /// A driver was handed a spec of another scheme (a caller's mistake: `open_origin`
    /// picks the driver by scheme).
    #[error("origin {spec}: a {scheme} spec was handed to a driver for another scheme")]
    UnsupportedScheme {
        /// The spec's display form.
        spec: String,
        /// The spec's scheme.
        scheme: &'static str,
    },
    /// The origin's settings cannot be used: a key or password file that cannot be read,
    /// no user name to log in as.
    #[error("origin {origin}: {reason}")]
    Settings {
        /// The origin's display form.
        origin: String,
        /// What is wrong (names files, never their content).
        reason: String,
    },
    /// A path handed to an origin is not a plain relative path inside it.
    #[error("origin {origin}: {rel:?} is not a path inside the origin: {reason}")]
    BadRelPath {
        /// The origin's display form.
        origin: String,
        /// The path as given.
        rel: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file or directory is gone (ENOENT, ENOTDIR, or a stale NFS handle that stayed
    /// stale on a retry): the caller may mark the source vanished.
    #[error("origin {origin}: {rel:?} vanished: {source}")]
    Vanished {
        /// The origin's display form.
        origin: String,
        /// The path inside the origin.
        rel: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Only regular files are opened as sources (a FIFO would block the reader).
    #[error("origin {origin}: {rel:?} is not a regular file")]
    NotAFile {
        /// The origin's display form.
        origin: String,
        /// The path inside the origin.
        rel: PathBuf,
    },
    /// Any other failure of the origin's storage.
    #[error("origin {origin}: cannot {op} {rel:?}: {source}")]
    Io {
        /// The origin's display form.
        origin: String,
        /// What was being done: `open`, `stat`, `list`.
        op: &'static str,
        /// The path inside the origin.
        rel: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

impl OriginError {
    /// Whether the error says the file is gone (rather than the origin failing).
    pub fn is_vanished(&self) -> bool {
        matches!(self, OriginError::Vanished { .. })
    }
}

/// Whether an I/O error means the file is gone: ENOENT or ENOTDIR (a directory on its path
/// was removed or replaced) or ESTALE (an NFS handle to a deleted file). Also meant for
/// errors from [`crate::origin::Source::read_at`].
pub fn is_vanished_io(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ESTALE)
    )
}

impl OriginError {
    /// The error for `source`, met doing `op` on `rel` of `origin` (its display form): a
    /// file that is gone ([`is_vanished_io`]) is [`OriginError::Vanished`], anything else
    /// [`OriginError::Io`].
    pub fn from_io(
        origin: &str,
        op: &'static str,
        rel: &std::path::Path,
        source: io::Error,
    ) -> OriginError {
        let (origin, rel) = (origin.to_owned(), rel.to_path_buf());
        if is_vanished_io(&source) {
            OriginError::Vanished {
                origin,
                rel,
                source,
            }
        } else {
            OriginError::Io {
                origin,
                op,
                rel,
                source,
            }
        }
    }
}
