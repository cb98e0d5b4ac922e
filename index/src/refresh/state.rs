//! The state directory: where the catalog and the published snapshot live.

use std::path::{Path, PathBuf};

use musicfs_storage::Catalog;

use super::{RefreshError, Result};

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root`, created if missing.
    pub fn create(root: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(root).map_err(|source| RefreshError::StateDir {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The LMDB catalog directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.root.join("catalog")
    }

    /// The search index (`musicfs_index::search`).
    pub fn search_dir(&self) -> PathBuf {
        self.root.join("search")
    }

    /// Embedded cover art, one file per distinct picture ([`musicfs_storage::ArtStore`]).
    pub fn art_dir(&self) -> PathBuf {
        self.root.join("art")
    }

    /// The published tree snapshot.
    pub fn snapshot_path(&self) -> PathBuf {
        self.root.join("tree.snap")
    }

    /// Opens (or creates) the catalog.
    pub fn open_catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.catalog_dir()).map_err(RefreshError::OpenCatalog)
    }
}
