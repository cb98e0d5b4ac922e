//! The virtual directories beside the tree: `/.search/<query>/` and
//! `/.collections/<name>/`, each a directory of symlinks into the tree, best match first.
//!
//! What a query or collection matches comes from a [`Finder`] (the daemon's search index);
//! this module only names and serves the results. A result is a symlink named
//! `NNN - Artist - Title.ext` (the rank, zero-padded so names sort in rank order) whose
//! target is the track's path in the tree, relative (`../../Artist/Album/01 - T.flac`), so
//! it resolves through the same mount wherever that is. A track the served tree does not
//! show is left out.
//!
//! A listing is computed on first lookup and kept, with the tree generation and finder
//! version it was made from; when either has moved on, the next lookup or listing makes it
//! again, under the same inode. The kernel is told to cache none of it (zero timeouts, no
//! directory cache), so results follow the library without invalidations. `/.search` lists
//! the most recent queries (at most [`MAX_QUERIES`]; older ones are forgotten, and their
//! inodes go stale). Neither directory appears in the root's listing: they are found by
//! name.
//!
//! Inodes: `/.search` and `/.collections` take 2 and 3 (below the tree's first file
//! inode); a listing takes bit 62 plus its number; a result bit 62, bit 61, its listing's
//! number shifted by 24 and its index. The tree's directories have bit 63 and its files are
//! small, so none of these collide with the tree.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use musicfs_core::snapshot::{Snapshot, ROOT_INO};
use musicfs_core::tree::FILE_INO_BASE;

use crate::xattr::TagSource;

/// Inode of `/.search`.
pub const SEARCH_INO: u64 = 2;
/// Inode of `/.collections`.
pub const COLLECTIONS_INO: u64 = 3;
/// The name of `/.search` in the root.
pub const SEARCH_NAME: &[u8] = b".search";
/// The name of `/.collections` in the root.
pub const COLLECTIONS_NAME: &[u8] = b".collections";
/// Queries `/.search` remembers.
pub const MAX_QUERIES: usize = 64;

const LISTING_BIT: u64 = 1 << 62;
const RESULT_BIT: u64 = 1 << 61;
const INDEX_BITS: u32 = 24;
/// Most results one listing holds (the index part of a result inode).
pub const MAX_RESULTS: usize = (1 << INDEX_BITS) - 1;

/// Whether `ino` is one of this module's.
pub fn is_virtual(ino: u64) -> bool {
    ino == SEARCH_INO || ino == COLLECTIONS_INO || (ino & LISTING_BIT != 0 && ino >> 63 == 0)
}

/// What answers searches and collections: the daemon's search index.
pub trait Finder: Send + Sync + std::fmt::Debug {
    /// The catalog ids of the tracks matching `query`, best first; `Err` with the reason
    /// when the query does not parse.
    fn search(&self, query: &str) -> Result<Vec<u64>, String>;
    /// The names of the collections.
    fn collections(&self) -> Vec<String>;
    /// The tracks of collection `name`, in its order; `None` when there is no such
    /// collection.
    fn collection(&self, name: &str) -> Option<Result<Vec<u64>, String>>;
    /// Changes whenever an answer may have changed (the index was updated).
    fn version(&self) -> u64;
}

/// One result of a listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `NNN - Artist - Title.ext`.
    pub name: Vec<u8>,
    /// The track's path in the tree, from its root.
    pub path: Vec<u8>,
    /// The track's catalog id.
    pub id: u64,
    /// The track's modification time.
    pub mtime_ns: i64,
}

/// What a result symlink points to: from `/.search/<query>/` (or a collection) up to the
/// root, then the track's path.
const UP_TO_ROOT: &[u8] = b"../../";

impl Entry {
    /// The symlink's target.
    pub fn target(&self) -> Vec<u8> {
        [UP_TO_ROOT, &self.path].concat()
    }

    /// The target's length (the symlink's size).
    pub fn target_len(&self) -> u64 {
        (UP_TO_ROOT.len() + self.path.len()) as u64
    }
}

/// A query's or collection's results.
#[derive(Debug)]
pub struct Listing {
    /// Its inode.
    pub ino: u64,
    /// [`SEARCH_INO`] or [`COLLECTIONS_INO`].
    pub parent: u64,
    /// The query, or the collection's name.
    pub name: Vec<u8>,
    /// The results, sorted by name (= by rank).
    pub entries: Vec<Entry>,
    made_from: (u64, u64),
}

impl Listing {
    /// The result named `name`.
    pub fn entry(&self, name: &[u8]) -> Option<(u64, &Entry)> {
        let i = self
            .entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()?;
        Some((self.result_ino(i), &self.entries[i]))
    }

    /// The inode of result `i`.
    pub fn result_ino(&self, i: usize) -> u64 {
        LISTING_BIT | RESULT_BIT | ((self.ino & !LISTING_BIT) << INDEX_BITS) | i as u64
    }
}

/// What a virtual inode is.
pub enum Found {
    /// `/.search` or `/.collections`.
    Top(u64),
    /// A listing.
    Listing(Arc<Listing>),
    /// A result of a listing, by index.
    Result(Arc<Listing>, usize),
}

#[derive(Default)]
struct State {
    /// (parent, name) → listing number.
    by_name: HashMap<(u64, Vec<u8>), u64>,
    by_number: HashMap<u64, Arc<Listing>>,
    /// Search listings, oldest first.
    queries: VecDeque<u64>,
    next: u64,
}

/// The virtual directories of one mount.
pub struct Virtual {
    finder: Arc<dyn Finder>,
    tags: Option<Arc<dyn TagSource>>,
    state: Mutex<State>,
}

/// Why a lookup in a virtual directory found nothing.
pub enum Missing {
    /// No such name (or the query does not parse: logged).
    NotFound,
    /// The inode is not (or no longer) one of ours.
    Stale,
}

impl Virtual {
    /// Virtual directories answered by `finder`, naming results with `tags`.
    pub fn new(finder: Arc<dyn Finder>, tags: Option<Arc<dyn TagSource>>) -> Virtual {
        Virtual {
            finder,
            tags,
            state: Mutex::new(State {
                next: 1,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `ino` is, with its listing brought up to date with `snap`.
    pub fn find(&self, snap: &Snapshot, ino: u64) -> Option<Found> {
        if ino == SEARCH_INO || ino == COLLECTIONS_INO {
            return Some(Found::Top(ino));
        }
        if !is_virtual(ino) {
            return None;
        }
        let (number, index) = if ino & RESULT_BIT != 0 {
            let rest = ino & !(LISTING_BIT | RESULT_BIT);
            (
                rest >> INDEX_BITS,
                Some((rest & MAX_RESULTS as u64) as usize),
            )
        } else {
            (ino & !LISTING_BIT, None)
        };
        let listing = self.state().by_number.get(&number).cloned()?;
        let listing = self.current(snap, listing);
        match index {
            None => Some(Found::Listing(listing)),
            Some(i) if i < listing.entries.len() => Some(Found::Result(listing, i)),
            Some(_) => None,
        }
    }

    /// `name` in virtual directory `parent`.
    pub fn lookup(&self, snap: &Snapshot, parent: u64, name: &[u8]) -> Result<Found, Missing> {
        match self.find(snap, parent) {
            Some(Found::Top(top)) => self.listing(snap, top, name).map(Found::Listing),
            Some(Found::Listing(l)) => match l.entry(name) {
                Some((ino, _)) => {
                    let i = (ino & MAX_RESULTS as u64) as usize;
                    Ok(Found::Result(l, i))
                }
                None => Err(Missing::NotFound),
            },
            Some(Found::Result(..)) | None => Err(Missing::Stale),
        }
    }

    /// The names `/.search` (recent queries, oldest first) or `/.collections` lists.
    pub fn names(&self, top: u64) -> Vec<Vec<u8>> {
        if top == COLLECTIONS_INO {
            return self
                .finder
                .collections()
                .into_iter()
                .map(String::into_bytes)
                .collect();
        }
        let st = self.state();
        st.queries
            .iter()
            .filter_map(|n| st.by_number.get(n).map(|l| l.name.clone()))
            .collect()
    }

    /// The listing `name` under `top`, made (or remade) as needed.
    fn listing(&self, snap: &Snapshot, top: u64, name: &[u8]) -> Result<Arc<Listing>, Missing> {
        let known = {
            let st = self.state();
            st.by_name
                .get(&(top, name.to_vec()))
                .and_then(|n| st.by_number.get(n))
                .cloned()
        };
        // The lock is not held here: remaking a listing takes it again.
        if let Some(l) = known {
            return Ok(self.current(snap, l));
        }
        let text = std::str::from_utf8(name).map_err(|_| Missing::NotFound)?;
        let made_from = (snap.generation(), self.finder.version());
        let ids = if top == SEARCH_INO {
            self.finder.search(text)
        } else {
            self.finder.collection(text).ok_or(Missing::NotFound)?
        };
        let ids = ids.map_err(|why| {
            tracing::info!(query = text, "no such search: {why}");
            Missing::NotFound
        })?;
        let entries = entries(snap, &ids, self.tags.as_deref());
        let mut st = self.state();
        // Another thread may have made it meanwhile: keep one.
        if let Some(l) = st
            .by_name
            .get(&(top, name.to_vec()))
            .and_then(|n| st.by_number.get(n))
        {
            return Ok(l.clone());
        }
        let number = st.next;
        st.next += 1;
        let listing = Arc::new(Listing {
            ino: LISTING_BIT | number,
            parent: top,
            name: name.to_vec(),
            entries,
            made_from,
        });
        st.by_name.insert((top, name.to_vec()), number);
        st.by_number.insert(number, listing.clone());
        if top == SEARCH_INO {
            st.queries.push_back(number);
            while st.queries.len() > MAX_QUERIES {
                let old = st.queries.pop_front().expect("not empty");
                if let Some(l) = st.by_number.remove(&old) {
                    st.by_name.remove(&(l.parent, l.name.clone()));
                }
            }
        }
        Ok(listing)
    }

    /// `listing`, remade when the tree or the index moved on since it was made.
    fn current(&self, snap: &Snapshot, listing: Arc<Listing>) -> Arc<Listing> {
        let now = (snap.generation(), self.finder.version());
        if listing.made_from == now {
            return listing;
        }
        let text = String::from_utf8_lossy(&listing.name).into_owned();
        let ids = if listing.parent == SEARCH_INO {
            self.finder.search(&text)
        } else {
            self.finder
                .collection(&text)
                .unwrap_or_else(|| Ok(Vec::new()))
        };
        let entries = match ids {
            Ok(ids) => entries(snap, &ids, self.tags.as_deref()),
            Err(why) => {
                tracing::warn!(query = %text, "search no longer answers: {why}");
                Vec::new()
            }
        };
        let fresh = Arc::new(Listing {
            ino: listing.ino,
            parent: listing.parent,
            name: listing.name.clone(),
            entries,
            made_from: now,
        });
        let mut st = self.state();
        let number = listing.ino & !LISTING_BIT;
        if st.by_number.contains_key(&number) {
            st.by_number.insert(number, fresh.clone());
        }
        fresh
    }
}

/// The results for `ids` that the tree `snap` shows, in the order given, named by rank
/// (`NNN - Artist - Title.ext`, artist and title from `tags`).
pub fn entries(snap: &Snapshot, ids: &[u64], tags: Option<&dyn TagSource>) -> Vec<Entry> {
    let shown: Vec<(u64, Vec<u8>, i64, Vec<u8>)> = ids
        .iter()
        .filter_map(|&id| {
            let node = snap.node(id + FILE_INO_BASE)?;
            let path = tree_path(snap, id + FILE_INO_BASE)?;
            Some((id, node.name().to_vec(), node.mtime_ns(), path))
        })
        .take(MAX_RESULTS)
        .collect();
    let width = shown.len().to_string().len().max(3);
    let ids: Vec<u64> = shown.iter().map(|s| s.0).collect();
    let records = tags.and_then(|t| t.tracks(&ids).ok()).unwrap_or_default();
    shown
        .into_iter()
        .enumerate()
        .map(|(i, (id, file_name, mtime_ns, path))| Entry {
            name: result_name(
                records.get(i).and_then(Option::as_ref),
                i + 1,
                width,
                &file_name,
            ),
            path,
            id,
            mtime_ns,
        })
        .collect()
}

/// `NNN - Artist - Title.ext`, from the catalog record (the tree's file name when there
/// is none or it has no artist or title).
fn result_name(
    record: Option<&musicfs_core::TrackRecord>,
    rank: usize,
    width: usize,
    file_name: &[u8],
) -> Vec<u8> {
    let file_name = String::from_utf8_lossy(file_name);
    let (stem, ext) = match file_name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, ext),
        _ => (file_name.as_ref(), ""),
    };
    let label = match record {
        Some(r) if !r.meta.artist.is_empty() && r.meta.title.is_some() => format!(
            "{} - {}",
            r.meta.artist.join("; "),
            r.meta.title.as_deref().unwrap_or_default()
        ),
        _ => stem.to_string(),
    };
    let stem = format!("{rank:0width$} - {label}");
    musicfs_core::sanitize::file_name_owned(stem, ext).into_bytes()
}

/// The path of `ino` below the root, `/`-separated.
pub fn tree_path(snap: &Snapshot, ino: u64) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut at = snap.node(ino)?;
    while at.ino() != ROOT_INO {
        parts.push(at.name());
        at = snap.node(at.parent_ino())?;
        if parts.len() > musicfs_core::snapshot::MAX_DEPTH {
            return None;
        }
    }
    parts.reverse();
    Some(parts.join(&b'/'))
}
