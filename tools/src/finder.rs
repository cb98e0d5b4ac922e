//! The daemon's [`Finder`]: `/.search` and `/.collections` answered from the search index,
//! and the access log behind the `Recently Played` and `Most Played` collections
//! ([`PlayRecorder`] writes it).

use std::sync::Arc;

use anyhow::{Context, Result};
use musicfs_core::config::Config;
use musicfs_core::meta::TrackId;
use musicfs_fusedev::plays::PlayLog;
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

/// The built-in collection of the last tracks played, most recent first.
pub const RECENTLY_PLAYED: &str = "Recently Played";
/// The built-in collection of the tracks played most often.
pub const MOST_PLAYED: &str = "Most Played";
/// How many tracks each of them holds.
const PLAYED_LIMIT: usize = 200;

impl LibraryFinder {
    /// The played tracks, most often first when `most`, else most recent first (ties:
    /// the more recent, then the lower id).
    fn played(&self, most: bool) -> Result<Vec<u64>, musicfs_storage::CatalogError> {
        let mut plays = self.catalog.plays()?;
        plays.sort_by(|(a_id, a), (b_id, b)| {
            let by_count = if most {
                b.count.cmp(&a.count)
            } else {
                std::cmp::Ordering::Equal
            };
            by_count
                .then(b.last_ns.cmp(&a.last_ns))
                .then(a_id.cmp(b_id))
        });
        Ok(plays
            .into_iter()
            .take(PLAYED_LIMIT)
            .map(|(id, _)| id.0)
            .collect())
    }
}

/// Writes the plays the mount reports to the catalog, on a thread of its own (a FUSE
/// worker only queues them). Ends when the mount drops it.
#[derive(Debug)]
pub struct PlayRecorder {
    tx: crossbeam_channel::Sender<(TrackId, i64)>,
}

impl PlayRecorder {
    /// Starts the writer thread over `catalog`.
    pub fn start(catalog: Arc<Catalog>) -> Result<PlayRecorder> {
        let (tx, rx) = crossbeam_channel::bounded::<(TrackId, i64)>(4096);
        std::thread::Builder::new()
            .name("musicfs-plays".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    match catalog.record_plays(&batch) {
                        Ok(()) => {}
                        // Said once, by the catalog check: plays are not counted until the
                        // catalog is replaced.
                        Err(musicfs_storage::CatalogError::Damaged { .. }) => {
                            tracing::debug!(
                                "{} plays not recorded: the catalog is damaged",
                                batch.len()
                            );
                        }
                        Err(e) => tracing::warn!("cannot record {} plays: {e}", batch.len()),
                    }
                }
            })
            .context("cannot start the play recorder")?;
        Ok(PlayRecorder { tx })
    }
}

impl PlayLog for PlayRecorder {
    fn played(&self, track_id: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        if self.tx.try_send((TrackId(track_id), now)).is_err() {
            tracing::debug!(track_id, "play not recorded: the recorder is behind");
        }
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
        let mut names: Vec<String> = self.collections.iter().map(|c| c.name.clone()).collect();
        for played in [RECENTLY_PLAYED, MOST_PLAYED] {
            if !names.iter().any(|n| n == played) {
                names.push(played.to_string());
            }
        }
        names
    }

    fn collection(&self, name: &str) -> Option<Result<Vec<u64>, String>> {
        let Some(c) = self.collections.iter().find(|c| c.name == name) else {
            let most = match name {
                RECENTLY_PLAYED => false,
                MOST_PLAYED => true,
                _ => return None,
            };
            return Some(self.played(most).map_err(|e| e.to_string()));
        };
        Some(
            c.tracks(&self.index, &self.catalog)
                .map(|ids| ids.into_iter().map(|id| id.0).collect())
                .map_err(|e| e.to_string()),
        )
    }

    fn version(&self) -> u64 {
        // Both only grow: their sum moves whenever either does.
        self.index
            .version()
            .wrapping_add(self.catalog.plays_counter().unwrap_or(0))
    }
}
