//! The daemon's [`Finder`]: `/.search` and `/.collections` answered from the search index.

use std::sync::Arc;

use anyhow::{Context, Result};
use musicfs_core::config::Config;
use musicfs_fusedev::virt::Finder;
use musicfs_index::refresh::StateDir;
use musicfs_index::search::{Collection, SearchIndex};
use musicfs_storage::catalog::Catalog;

/// Search and collections over one library's index.
pub struct LibraryFinder {
    index: Arc<SearchIndex>,
    catalog: Arc<Catalog>,
    collections: Vec<Collection>,
    limit: usize,
}

impl std::fmt::Debug for LibraryFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibraryFinder")
            .field("collections", &self.collections.len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl LibraryFinder {
    /// Opens the search index of `state` (rebuilding it when damaged: it fills in the
    /// background as the refresh thread syncs it) with the collections `cfg` configures.
    /// A collection whose query or sort is bad is a configuration error.
    pub fn open(cfg: &Config, state: &StateDir, catalog: Arc<Catalog>) -> Result<LibraryFinder> {
        let index = Arc::new(
            SearchIndex::open(&state.search_dir()).context("cannot open the search index")?,
        );
        let collections = check_collections(cfg)?;
        Ok(LibraryFinder {
            index,
            catalog,
            collections,
            limit: cfg.search_limit,
        })
    }

    /// The index, for the refresh thread to keep in step.
    pub fn index(&self) -> &Arc<SearchIndex> {
        &self.index
    }
}

/// The collections `cfg` configures, checked (name, sort, query), with the built-ins: a
/// bad one is a configuration error naming it.
pub fn check_collections(cfg: &Config) -> Result<Vec<Collection>> {
    Collection::from_config(&cfg.collections).map_err(|e| anyhow::anyhow!("bad config: {e}"))
}

impl Finder for LibraryFinder {
    fn search(&self, query: &str) -> Result<Vec<u64>, String> {
        self.index
            .search(query, self.limit)
            .map(|hits| hits.into_iter().map(|h| h.id.0).collect())
            .map_err(|e| e.to_string())
    }

    fn collections(&self) -> Vec<String> {
        self.collections.iter().map(|c| c.name.clone()).collect()
    }

    fn collection(&self, name: &str) -> Option<Result<Vec<u64>, String>> {
        let c = self.collections.iter().find(|c| c.name == name)?;
        Some(
            c.tracks(&self.index, &self.catalog)
                .map(|ids| ids.into_iter().map(|id| id.0).collect())
                .map_err(|e| e.to_string()),
        )
    }

    fn version(&self) -> u64 {
        self.index.version()
    }
}
