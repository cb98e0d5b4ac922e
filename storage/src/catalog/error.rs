//! The catalog's error type.

use std::io;
use std::path::PathBuf;

use heed::MdbError;
use musicfs_core::meta::OriginId;

/// Every way a [`Catalog`](super::Catalog) operation can fail. Each variant names the
/// catalog directory, so a message read in a log says which catalog was at fault.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog directory did not exist and could not be created.
    #[error("cannot create the catalog directory {path}: {source}")]
    CreateDir {
        /// The catalog directory.
        path: PathBuf,
        /// What the filesystem said.
        source: io::Error,
    },

    /// LMDB refused to open the environment for a reason other than the file's content
    /// (permissions, a full disk, too many open files, ...).
    #[error("cannot open the catalog at {path}: {source}")]
    Open {
        /// The catalog directory.
        path: PathBuf,
        /// What LMDB said.
        source: heed::Error,
    },

    /// The directory holds a file that is not an LMDB environment, a damaged one, or one
    /// written by an incompatible LMDB version.
    #[error(
        "{path} does not hold a readable MusicFS catalog (not an LMDB environment, damaged, \
         or written by an incompatible LMDB): {source}; move the directory away to start a \
         new catalog"
    )]
    NotACatalog {
        /// The catalog directory.
        path: PathBuf,
        /// What LMDB said.
        source: heed::Error,
    },

    /// A compacted copy of the catalog could not be written.
    #[error("cannot copy the catalog to {path}: {source}")]
    Copy {
        /// Where the copy was going.
        path: PathBuf,
        /// What LMDB said.
        source: heed::Error,
    },

    /// The catalog is already open in this process; LMDB allows one environment handle per
    /// file and process, so the existing [`Catalog`](super::Catalog) must be shared.
    #[error("the catalog at {path} is already open in this process; share the open Catalog")]
    AlreadyOpen {
        /// The catalog directory.
        path: PathBuf,
    },

    /// The catalog was written by a newer MusicFS with a schema this build does not know.
    #[error(
        "the catalog at {path} has schema version {found}, newer than version {supported} \
         that this build of MusicFS understands; upgrade MusicFS or use another catalog \
         directory"
    )]
    SchemaTooNew {
        /// The catalog directory.
        path: PathBuf,
        /// The version stored in the catalog.
        found: u32,
        /// [`SCHEMA_VERSION`](super::SCHEMA_VERSION) of this build.
        supported: u32,
    },

    /// The catalog has an older schema that no migration leads from.
    #[error(
        "the catalog at {path} has schema version {found}, which this build of MusicFS \
         cannot migrate to version {supported}"
    )]
    SchemaUnsupported {
        /// The catalog directory.
        path: PathBuf,
        /// The version stored in the catalog.
        found: u32,
        /// [`SCHEMA_VERSION`](super::SCHEMA_VERSION) of this build.
        supported: u32,
    },

    /// The catalog's content contradicts itself (an index entry without its record, a
    /// value of the wrong size, data without a schema version).
    #[error("the catalog at {path} is damaged: {detail}")]
    Corrupt {
        /// The catalog directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },

    /// The out-of-process check found a page it could not read: the catalog is no longer
    /// read or written by this process (a damaged page can kill it).
    #[error(
        "the catalog at {path} is damaged ({detail}); it is not read or written again until \
         the daemon restarts. Stop the daemon, move {path} away (it holds tag edits and play \
         counts that a rebuild from the origins does not bring back) and start it again: it \
         rescans the origins into a new catalog"
    )]
    Damaged {
        /// The catalog directory.
        path: PathBuf,
        /// How the check failed.
        detail: String,
    },

    /// An [`Upsert`](super::Upsert) names an origin that
    /// [`Catalog::origin_id`](super::Catalog::origin_id) never returned.
    #[error("origin {} is not registered in the catalog at {path}", origin.0)]
    UnknownOrigin {
        /// The catalog directory.
        path: PathBuf,
        /// The unknown origin.
        origin: OriginId,
    },

    /// A persistent id counter reached its maximum.
    #[error("the catalog at {path} has no {what} ids left")]
    IdsExhausted {
        /// The catalog directory.
        path: PathBuf,
        /// Which counter: `"track"` or `"origin"`.
        what: &'static str,
    },

    /// A transaction still did not fit after the map grew to its upper bound.
    #[error("the catalog at {path} needs more than the maximum map size of {max} bytes")]
    MapFull {
        /// The catalog directory.
        path: PathBuf,
        /// The upper bound of the map size, in bytes.
        max: u64,
    },

    /// An LMDB operation failed.
    #[error("catalog {op} failed at {path}: {source}")]
    Lmdb {
        /// The catalog directory.
        path: PathBuf,
        /// The catalog operation that failed (`"apply"`, `"get"`, ...).
        op: &'static str,
        /// What heed or LMDB said.
        source: heed::Error,
    },
}

impl CatalogError {
    /// True when LMDB ran out of map space, which the catalog answers by growing the map
    /// and retrying the transaction.
    pub(crate) fn is_map_full(&self) -> bool {
        matches!(
            self,
            CatalogError::Lmdb {
                source: heed::Error::Mdb(MdbError::MapFull),
                ..
            }
        )
    }
}
