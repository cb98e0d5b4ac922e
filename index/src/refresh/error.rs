//! Why publishing, loading or refreshing a library failed.

use std::path::PathBuf;

use musicfs_core::snapshot::SnapshotError;
use musicfs_storage::CatalogError;

use crate::scan::ScanError;

/// Why a [`Library`](super::Library) operation failed. Catalog, scan and snapshot errors
/// pass through with their own message.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The state directory could not be created.
    #[error("cannot create state dir {}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The catalog could not be opened.
    #[error("cannot open the catalog")]
    OpenCatalog(#[source] CatalogError),
    /// No origin is configured and there is no snapshot to serve.
    #[error("no origin: give --origin DIR or [[origin]] in the config")]
    NoOrigin,
    /// A catalog read or write failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A scan could not run.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A snapshot could not be written or opened.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// The result of a [`Library`](super::Library) operation.
pub type Result<T> = std::result::Result<T, RefreshError>;
