//! Prefetch of the next tracks (FR-19): when a track of a remote origin is read past
//! [`PrefetchConfig::after_bytes`], the first bytes of the next tracks of its album are
//! fetched into the chunk cache in the background, then the next track whole, so that a
//! player moving on to it starts from the cache.
//!
//! - **Album order** is the tree's listing order of the track's folder (names start with
//!   the disc and track number). A player that jumps around instead ([`Order`]: two track
//!   starts in a row that do not follow each other) is taken as shuffling and prefetch
//!   pauses, until two starts in a row follow each other again.
//! - **Never in the way.** The FUSE path only `try_send`s an inode number when a read
//!   crosses the threshold (no allocation, no wait; a full queue drops the hint). One
//!   thread does the rest; each fetch goes through the origin's [`Origin::warm`], which
//!   lets reads being served go first and stops when a newer hint arrives. What it stores
//!   is bounded by the chunk cache's budget like any other read.
//! - Local origins are read in place and are skipped.
//! - **By hand**: `/.prefetch/<path-in-tree>` ([`Mirror`]) — looking up a track there
//!   (`touch`, `stat`, `cat`) or listing a folder (`ls`) fetches that track, or every track
//!   below the folder, whole. Nodes there are cached by the kernel for no time, so every
//!   `touch` asks again.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use musicfs_core::health::OriginHealth;
use musicfs_core::overlay::RenditionSet;
use musicfs_core::snapshot::Snapshot;
use musicfs_storage::origin::{Origin, OriginTable, Seen};

/// What prefetch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// How many of the next tracks get their first bytes fetched (0: prefetch off).
    pub tracks: usize,
    /// How far into a track reads must get before the next ones are fetched.
    pub after_bytes: u64,
    /// How many of each next track's first bytes are fetched (whole chunk windows: the
    /// tag region and the audio windows that hold these bytes).
    pub head_bytes: u64,
    /// Whether the next track is then fetched whole.
    pub whole_next: bool,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            tracks: 2,
            after_bytes: 256 << 10,
            head_bytes: 1 << 20,
            whole_next: true,
        }
    }
}

/// Hints waiting for the prefetch thread (the newest count; older ones are skipped).
const QUEUE: usize = 64;

/// What the prefetch thread reads: the same shared state the file system serves from.
pub struct PrefetchSources {
    /// The served tree.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The origins as the read path opens them.
    pub origins: Arc<ArcSwap<OriginTable>>,
    /// Tag edits (an edited track's origin file is the one recorded under it).
    pub renditions: Arc<ArcSwap<RenditionSet>>,
    /// Which origins are offline (skipped).
    pub health: Arc<OriginHealth>,
}

/// What the prefetch thread is asked to do.
#[derive(Debug, Clone, Copy)]
enum Hint {
    /// Track `ino` is being played: fetch what follows it.
    Next(u64),
    /// Fetch the tracks under tree node `ino` (a track or a folder) whole: `/.prefetch`.
    Tree(u64),
}

/// The FUSE side of prefetch: hands hints to its thread. See the module documentation.
#[derive(Debug)]
pub struct Prefetcher {
    cfg: PrefetchConfig,
    tx: Sender<Hint>,
    /// `/.prefetch`'s nodes.
    mirror: Mirror,
}

impl Prefetcher {
    /// Starts the prefetch thread (`cfg.tracks` 0: only `/.prefetch` asks it for work).
    /// `None` when the thread cannot start (logged: reads work as before).
    pub fn start(cfg: PrefetchConfig, sources: PrefetchSources) -> Option<Prefetcher> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("prefetch-tracks".into())
            .spawn(move || run(cfg, &sources, &rx));
        match spawned {
            Ok(_) => Some(Prefetcher {
                cfg,
                tx,
                mirror: Mirror::default(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the prefetch thread: prefetch is off");
                None
            }
        }
    }

    /// A read of `n` bytes at `offset` of track `ino` (`size` bytes): hints the thread
    /// when it crosses the threshold. Never blocks.
    pub fn note_read(&self, ino: u64, offset: u64, n: usize, size: u64) {
        if self.cfg.tracks == 0 {
            return;
        }
        let mark = self.cfg.after_bytes.min(size / 2).max(1);
        if offset < mark && mark <= offset.saturating_add(n as u64) {
            self.send(Hint::Next(ino));
        }
    }

    /// Asks for the tracks after `ino` to be fetched.
    pub fn hint(&self, ino: u64) {
        self.send(Hint::Next(ino));
    }

    /// Asks for every track under tree node `ino` (a track or a folder) to be fetched
    /// whole.
    pub fn fetch_tree(&self, ino: u64) {
        self.send(Hint::Tree(ino));
    }

    fn send(&self, hint: Hint) {
        match self.tx.try_send(hint) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!(?hint, "prefetch queue full: hint dropped")
            }
        }
    }

    /// `/.prefetch`'s nodes.
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }
}

/// The name of `/.prefetch` in the root (found by name, not listed).
pub const HINT_NAME: &[u8] = b".prefetch";
/// Inode of `/.prefetch`. Its nodes take bit 60 and a number (bits 61-63 clear: not a
/// tree directory, a search or an album extra; track inodes stay far below).
pub const HINT_TOP: u64 = 1 << 60;

/// Whether `ino` is a node of `/.prefetch`.
pub fn is_hint(ino: u64) -> bool {
    ino >> 60 == 1
}

/// The most nodes `/.prefetch` remembers; past it they are forgotten (their inodes go
/// stale) and numbering goes on.
const MIRROR_MAX: usize = 1 << 16;

/// `/.prefetch/<path-in-tree>`: each name looked up under it is the tree node of the same
/// path, as an empty file or folder of its own. Looking up or opening such a file, or
/// listing such a folder, asks for the tree's track (or every track below the folder) to
/// be fetched into the cache; lookups of folders on the way fetch nothing.
#[derive(Debug, Default)]
pub struct Mirror {
    state: std::sync::Mutex<MirrorState>,
}

#[derive(Debug, Default)]
struct MirrorState {
    /// Tree inode → its node's inode here.
    by_tree: std::collections::HashMap<u64, u64>,
    /// Inode here → (tree inode, parent's inode here).
    nodes: std::collections::HashMap<u64, (u64, u64)>,
    next: u64,
}

impl Mirror {
    /// The tree node behind `ino` and the inode of its parent here (the top: the tree's
    /// root, and the mount's root as parent). `None` for an inode forgotten or not here.
    pub fn node(&self, ino: u64) -> Option<(u64, u64)> {
        if ino == HINT_TOP {
            return Some((
                musicfs_core::snapshot::ROOT_INO,
                musicfs_core::snapshot::ROOT_INO,
            ));
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.nodes.get(&ino).copied()
    }

    /// The inode here of tree node `tree`, found under `parent` (an inode here).
    pub fn child(&self, parent: u64, tree: u64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&ino) = state.by_tree.get(&tree) {
            return ino;
        }
        if state.nodes.len() >= MIRROR_MAX {
            state.nodes.clear();
            state.by_tree.clear();
        }
        state.next += 1;
        let ino = HINT_TOP | (state.next & (HINT_TOP - 1));
        state.by_tree.insert(tree, ino);
        state.nodes.insert(ino, (tree, parent));
        ino
    }
}

/// What a file under `/.prefetch` reads: nothing.
#[derive(Debug)]
pub struct NoBytes;

impl musicfs_storage::origin::Source for NoBytes {
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<usize> {
        Ok(0)
    }

    fn len(&self) -> u64 {
        0
    }
}

/// Tells album order from shuffle by the order tracks are started in.
#[derive(Debug, Default, Clone)]
pub struct Order {
    /// The folder and index (among its tracks) of the last track started.
    last: Option<(u64, usize)>,
    /// Starts in a row that did not follow the one before.
    jumps: u32,
    /// Starts in a row that did.
    follows: u32,
    shuffle: bool,
}

/// Starts in a row that turn prefetch off (jumps) or back on (follows).
const IN_A_ROW: u32 = 2;

impl Order {
    /// Track `index` of folder `dir` was started: whether to prefetch after it.
    pub fn started(&mut self, dir: u64, index: usize) -> bool {
        let follows = match self.last {
            None => true,
            Some((d, i)) if d == dir => index == i + 1 || index == i,
            // Another album from its start.
            Some(_) => index == 0,
        };
        if self.last == Some((dir, index)) {
            return !self.shuffle;
        }
        self.last = Some((dir, index));
        if follows {
            self.jumps = 0;
            self.follows += 1;
            if self.shuffle && self.follows >= IN_A_ROW {
                self.shuffle = false;
                tracing::info!("tracks are played in order again: prefetch resumes");
            }
        } else {
            self.follows = 0;
            self.jumps += 1;
            if !self.shuffle && self.jumps >= IN_A_ROW {
                self.shuffle = true;
                tracing::info!("tracks are played out of order (shuffle): prefetch pauses");
            }
        }
        !self.shuffle
    }
}

/// The folder of track `ino`, its index among the folder's tracks, and the tracks after
/// it (at most `n`) in the tree's order: the rest of its album, then (for a player going
/// through the library album after album) the first tracks of the albums that follow.
pub fn next_tracks(snap: &Snapshot, ino: u64, n: usize) -> Option<(u64, usize, Vec<u64>)> {
    let node = snap.node(ino)?;
    node.file()?;
    let dir = node.parent_ino();
    let index = snap
        .children(dir, 0)
        .filter(|c| c.file().is_some())
        .position(|c| c.ino() == ino)?;
    let mut next = Vec::new();
    // Up from the track: what follows it in each folder on the way to the root.
    let root = snap.root().ino();
    let mut at = ino;
    while next.len() < n && at != root {
        let Some(parent) = snap.node(at).map(|a| a.parent_ino()) else {
            break;
        };
        let mut after = false;
        for c in snap.children(parent, 0) {
            if after {
                first_tracks(snap, c.ino(), n, &mut next, DEPTH);
                if next.len() >= n {
                    break;
                }
            } else {
                after = c.ino() == at;
            }
        }
        at = parent;
    }
    Some((dir, index, next))
}

/// How deep [`first_tracks`] looks into folders (Artist/Album/Disc is three).
const DEPTH: u32 = 4;

/// Adds the first tracks under `ino` (the track itself, or a folder's in tree order)
/// until `out` holds `n`.
fn first_tracks(snap: &Snapshot, ino: u64, n: usize, out: &mut Vec<u64>, depth: u32) {
    let Some(node) = snap.node(ino) else { return };
    if node.file().is_some() {
        out.push(ino);
        return;
    }
    if !node.is_dir() || depth == 0 {
        return;
    }
    for c in snap.children(ino, 0) {
        if out.len() >= n {
            return;
        }
        first_tracks(snap, c.ino(), n, out, depth - 1);
    }
}

/// The origin file behind track `ino` as the tree records it.
fn target(sources: &PrefetchSources, snap: &Snapshot, ino: u64) -> Option<Target> {
    let node = snap.node(ino)?;
    let f = node.file()?;
    if sources.health.is_offline(f.origin) {
        return None;
    }
    let origin = sources.origins.load().get(f.origin)?.clone();
    if origin.as_local().is_some() {
        return None;
    }
    let seen = seen_of(
        &sources.renditions.load(),
        f.track_id,
        node.size(),
        node.mtime_ns(),
    );
    Some(Target {
        origin,
        rel: PathBuf::from(OsStr::from_bytes(f.rel_path)),
        seen,
    })
}

/// What the origin's file of a track shown with `size` and `mtime_ns` looks like: the
/// shown values, or for an edited track the file its rendition was made from.
pub fn seen_of(renditions: &RenditionSet, track_id: u64, size: u64, mtime_ns: i64) -> Seen {
    match (!renditions.is_empty())
        .then(|| renditions.find(track_id, size, mtime_ns))
        .flatten()
    {
        Some(r) => Seen {
            size: r.base_size,
            mtime_ns: r.base_mtime_ns,
        },
        None => Seen { size, mtime_ns },
    }
}

struct Target {
    origin: Arc<dyn Origin>,
    rel: PathBuf,
    seen: Seen,
}

impl Target {
    fn warm(&self, bytes: u64, stop: &dyn Fn() -> bool) {
        let started = std::time::Instant::now();
        match self.origin.warm(&self.rel, self.seen, bytes, stop) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rel = %self.rel.display(), bytes = n,
                ms = started.elapsed().as_millis() as u64, "prefetched"),
            Err(e) => tracing::debug!(rel = %self.rel.display(), error = %e, "prefetch failed"),
        }
    }
}

/// Most tracks one `/.prefetch` request fetches.
const TREE_MAX: usize = 100_000;

/// Fetches every track under tree node `ino` whole (a `/.prefetch` request).
fn fetch_tree(sources: &PrefetchSources, ino: u64) {
    let snap = sources.snapshot.load_full();
    let mut files = Vec::new();
    let mut stack = vec![ino];
    while let Some(at) = stack.pop() {
        let Some(node) = snap.node(at) else { continue };
        if node.file().is_some() {
            files.push(at);
        } else if node.is_dir() {
            // Reversed onto the stack: fetched in the tree's order.
            let children: Vec<u64> = snap.children(at, 0).map(|c| c.ino()).collect();
            stack.extend(children.into_iter().rev());
        }
        if files.len() >= TREE_MAX {
            tracing::warn!(
                ino,
                "prefetch request: only the first {TREE_MAX} tracks are fetched"
            );
            break;
        }
    }
    let (mut fetched, started) = (0u64, std::time::Instant::now());
    let targets: Vec<Target> = files
        .iter()
        .filter_map(|&t| target(sources, &snap, t))
        .collect();
    for t in &targets {
        match t.origin.warm(&t.rel, t.seen, u64::MAX, &|| false) {
            Ok(n) => fetched += n,
            Err(e) => tracing::warn!(rel = %t.rel.display(), error = %e, "prefetch failed"),
        }
    }
    tracing::info!(
        tracks = files.len(),
        remote = targets.len(),
        bytes = fetched,
        ms = started.elapsed().as_millis() as u64,
        "prefetch request done"
    );
}

fn run(cfg: PrefetchConfig, sources: &PrefetchSources, rx: &Receiver<Hint>) {
    let mut order = Order::default();
    let newer = || !rx.is_empty();
    while let Ok(hint) = rx.recv() {
        let mut ino = match hint {
            Hint::Tree(ino) => {
                fetch_tree(sources, ino);
                continue;
            }
            Hint::Next(ino) => ino,
        };
        // Only the newest track matters: the player has moved on from the others (a
        // `/.prefetch` request met on the way is done first).
        while let Ok(h) = rx.try_recv() {
            match h {
                Hint::Next(n) => ino = n,
                Hint::Tree(t) => fetch_tree(sources, t),
            }
        }
        let snap = sources.snapshot.load_full();
        let Some((dir, index, next)) = next_tracks(&snap, ino, cfg.tracks) else {
            continue;
        };
        let in_order = order.started(dir, index);
        tracing::debug!(ino, index, next = next.len(), in_order, "track started");
        if !in_order {
            continue;
        }
        let targets: Vec<Target> = next
            .iter()
            .filter_map(|&t| target(sources, &snap, t))
            .collect();
        for t in &targets {
            if newer() {
                break;
            }
            t.warm(cfg.head_bytes, &newer);
        }
        if cfg.whole_next {
            if let Some(t) = targets.first() {
                t.warm(u64::MAX, &newer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_nodes_are_numbered_once_and_forgotten_past_the_bound() {
        let m = Mirror::default();
        let a = m.child(HINT_TOP, 1 << 63 | 5);
        assert!(is_hint(a) && a != HINT_TOP);
        assert_eq!(m.child(HINT_TOP, 1 << 63 | 5), a);
        let b = m.child(a, 42);
        assert_eq!(m.node(b), Some((42, a)));
        assert_eq!(
            m.node(HINT_TOP).map(|n| n.0),
            Some(musicfs_core::snapshot::ROOT_INO)
        );
        assert!(!is_hint(1 << 63 | 5) && !is_hint(42) && !is_hint(1 << 61) && !is_hint(1 << 62));
        for t in 0..MIRROR_MAX as u64 {
            m.child(HINT_TOP, 1000 + t);
        }
        assert_eq!(m.node(a), None, "forgotten past the bound");
    }

    #[test]
    fn album_order_prefetches_and_shuffle_pauses_it() {
        let mut o = Order::default();
        assert!(o.started(10, 0));
        assert!(o.started(10, 1));
        assert!(o.started(10, 1), "the same track again changes nothing");
        assert!(o.started(10, 2));
        // Another album from its first track is in order.
        assert!(o.started(20, 0));
        // One jump (a track picked by hand) keeps prefetch on.
        assert!(o.started(20, 5));
        assert!(o.started(20, 6));
        // Two jumps in a row: shuffle.
        assert!(o.started(10, 7));
        assert!(!o.started(30, 3));
        assert!(!o.started(10, 2));
        // Back in order for two starts: on again.
        assert!(!o.started(10, 3));
        assert!(o.started(10, 4));
    }
}
