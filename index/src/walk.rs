//! The directory walks behind [`crate::scan()`].
//!
//! An origin with a local root ([`Origin::local_root`]) is walked by [`walk()`], in parallel
//! and without the origin's per-entry work: threads take directories from a shared stack,
//! call a hook on each directory *before* listing it (the live daemon adds its inotify
//! watch there, so a change is either seen by this listing or reported by the watch), list
//! it, and hand each directory's audio files to the caller in one batch. Regular files are
//! stat'ed relative to their directory (`fstatat` on the listing's fd), so the kernel does
//! not resolve the whole path again for every file, and directories and non-audio files
//! are not stat'ed at all. Any other origin is walked by [`walk_listed`] through
//! [`Origin::list`], one directory at a time.
//!
//! [`Origin::local_root`]: musicfs_storage::origin::Origin::local_root
//! [`Origin::list`]: musicfs_storage::origin::Origin::list
//!
//! Symlinks are followed when they stay inside the origin; one that points outside, dangles
//! or leads back to a directory being walked is reported as skipped. Directories that cannot
//! be listed are reported too, so the caller can keep what it knew under them.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::fsio::scan_state;
use musicfs_core::{Format, ScanState};
use musicfs_storage::ExtraFile;

mod listed;

pub(crate) use listed::{shown, walk_listed};

/// A path the scan did not catalog, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path as walked (under the origin root).
    pub path: PathBuf,
    /// Human-readable reason.
    pub reason: String,
}

/// An audio file (by extension) found by the walk.
pub(crate) struct Found {
    /// Its path relative to the origin root, as bytes (no full path is built here, since
    /// most files of a rescan are unchanged and need none).
    pub rel: Vec<u8>,
    /// The format its extension promises.
    pub format: Format,
    /// What the scan compares with the catalog (through a symlink when the file is one).
    pub state: ScanState,
}

/// What the listing of one directory found: its audio files and its extra files (the
/// non-audio files an album folder shows, [`musicfs_core::meta::is_extra`]). The walk hands
/// one over for every directory it lists, empty ones too.
pub(crate) struct DirListing {
    /// The directory, relative to the origin root.
    pub dir: Vec<u8>,
    /// Its audio files (by extension).
    pub audio: Vec<Found>,
    /// Its extra files, stat'ed.
    pub extras: Vec<ExtraFile>,
}

/// What the walk could not look into.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Paths skipped, with the reason.
    pub skipped: Vec<Skipped>,
    /// Directories (relative to the root) that could not be listed.
    pub unreadable: Vec<Vec<u8>>,
    /// The caller asked to stop before the walk ended.
    pub aborted: bool,
    /// Audio files stat'ed (directories and other files are not).
    pub statted: u64,
    /// Directories listed.
    pub listed: u64,
}

/// Where a walk starts: a directory relative to the root, listed with its audio files,
/// and whether every directory below it is walked too (`deep`) or only the subdirectories
/// the walk's `descend` callback picks (which are then walked deep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Start {
    pub rel: Vec<u8>,
    pub deep: bool,
}

/// A directory to list: its place in the walk and its ancestors, for loop detection.
struct Dir {
    path: PathBuf,
    rel: Vec<u8>,
    /// (device, inode), from the parent's listing (or a stat for symlinked directories).
    id: (u64, u64),
    parent: Option<Arc<Dir>>,
    /// Walk every subdirectory (else only those `descend` picks).
    deep: bool,
}

impl Dir {
    /// The walked directory (this one or an ancestor) that is `id`, if any.
    fn ancestor_with(self: &Arc<Dir>, id: (u64, u64)) -> Option<&Arc<Dir>> {
        let mut at = Some(self);
        while let Some(d) = at {
            if d.id == id {
                return Some(d);
            }
            at = d.parent.as_ref();
        }
        None
    }
}

/// The stack of directories still to list, shared by the walking threads.
struct Queue {
    state: Mutex<QueueState>,
    more: Condvar,
}

struct QueueState {
    dirs: Vec<Arc<Dir>>,
    /// Threads listing a directory right now (they may push more).
    busy: usize,
}

impl Queue {
    /// The next directory, or `None` when every directory has been listed.
    fn next(&self) -> Option<Arc<Dir>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(d) = st.dirs.pop() {
                st.busy += 1;
                return Some(d);
            }
            if st.busy == 0 {
                return None;
            }
            st = self.more.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Marks one directory done and queues its subdirectories.
    fn done(&self, subdirs: Vec<Arc<Dir>>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.busy -= 1;
        let woken = subdirs.len();
        st.dirs.extend(subdirs);
        let finished = st.busy == 0 && st.dirs.is_empty();
        drop(st);
        if finished || woken > 1 {
            self.more.notify_all();
        } else if woken == 1 {
            self.more.notify_one();
        }
    }
}

/// Marks a directory done and stops the walk if dropped, i.e. if listing it panicked.
struct Listing<'a> {
    queue: &'a Queue,
    stop: &'a AtomicBool,
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.done(Vec::new());
    }
}

/// Walks `root` (an origin's canonical local root) with `threads` threads. `before_list`
/// runs on each directory (relative to `root`) before it is listed; `files` gets each
/// directory's [`DirListing`] and returns `false` to stop the walk.
pub(crate) fn walk(
    root: &Path,
    threads: usize,
    before_list: &(dyn Fn(&Path) + Sync),
    files: &(dyn Fn(DirListing) -> bool + Sync),
) -> Outcome {
    let whole = [Start {
        rel: Vec::new(),
        deep: true,
    }];
    walk_from(root, &whole, threads, before_list, &|_| true, files)
}

/// [`walk`] from `starts` instead of the whole root: each start directory is listed, and
/// below a shallow one only the subdirectories (relative paths) for which `descend`
/// returns true, deep. `descend` sees every subdirectory a shallow start lists.
pub(crate) fn walk_from(
    root: &Path,
    starts: &[Start],
    threads: usize,
    before_list: &(dyn Fn(&Path) + Sync),
    descend: &(dyn Fn(&[u8]) -> bool + Sync),
    files: &(dyn Fn(DirListing) -> bool + Sync),
) -> Outcome {
    let queue = Queue {
        state: Mutex::new(QueueState {
            dirs: starts.iter().map(|s| start_dir(root, s)).collect(),
            busy: 0,
        }),
        more: Condvar::new(),
    };
    let stop = AtomicBool::new(false);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let (queue, stop) = (&queue, &stop);
                s.spawn(move || {
                    let mut out = Outcome::default();
                    while let Some(dir) = queue.next() {
                        // Should listing panic (a bug), the other threads must not wait
                        // for this directory forever: the guard stops the walk.
                        let guard = Listing { queue, stop };
                        let subdirs = if stop.load(Ordering::Relaxed) {
                            Vec::new()
                        } else {
                            before_list(Path::new(OsStr::from_bytes(&dir.rel)));
                            let mut subdirs = list(root, &dir, files, stop, &mut out);
                            if !dir.deep {
                                subdirs.retain(|d| descend(&d.rel));
                            }
                            subdirs
                        };
                        std::mem::forget(guard);
                        queue.done(subdirs);
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| Outcome {
                    skipped: vec![Skipped {
                        path: root.to_path_buf(),
                        reason: "directory walk aborted".into(),
                    }],
                    aborted: true,
                    ..Outcome::default()
                })
            })
            .collect()
    });
    let mut all = Outcome::default();
    for o in outcomes {
        all.skipped.extend(o.skipped);
        all.unreadable.extend(o.unreadable);
        all.aborted |= o.aborted;
        all.statted += o.statted;
        all.listed += o.listed;
    }
    all.aborted |= stop.load(Ordering::Relaxed);
    all
}

/// The queue entry of a start directory, with its ancestors up to the root (stat'ed once
/// each) so that a symlink leading back to one of them is a loop, as in a whole walk.
fn start_dir(root: &Path, start: &Start) -> Arc<Dir> {
    let id_of = |path: &Path| fs::metadata(path).map_or((0, 0), |m| (m.dev(), m.ino()));
    let (mut path, mut rel, mut parent) = (root.to_path_buf(), Vec::new(), None);
    let names = start.rel.split(|&b| b == b'/').filter(|n| !n.is_empty());
    for name in names.map(OsStr::from_bytes) {
        let above = Arc::new(Dir {
            id: id_of(&path),
            path: path.clone(),
            rel: rel.clone(),
            parent: parent.take(),
            deep: true,
        });
        path.push(name);
        rel = join_rel(&rel, name);
        parent = Some(above);
    }
    Arc::new(Dir {
        id: id_of(&path),
        path,
        rel,
        parent,
        deep: start.deep,
    })
}

/// Lists one directory: hands its audio files to `files` and returns its subdirectories.
fn list(
    root: &Path,
    dir: &Arc<Dir>,
    files: &(dyn Fn(DirListing) -> bool + Sync),
    stop: &AtomicBool,
    out: &mut Outcome,
) -> Vec<Arc<Dir>> {
    let entries = match fs::read_dir(&dir.path) {
        Ok(e) => e,
        // Removed since its parent was listed: gone, like what it held.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            out.unreadable.push(dir.rel.clone());
            out.skipped.push(Skipped {
                path: dir.path.clone(),
                reason: format!("cannot read: {e}"),
            });
            return Vec::new();
        }
    };
    out.listed += 1;
    let mut subdirs = Vec::new();
    let mut found = Vec::new();
    let mut extras = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.skipped.push(Skipped {
                    path: dir.path.clone(),
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let name = entry.file_name();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            subdirs.push(Arc::new(Dir {
                path: dir.path.join(&name),
                rel: join_rel(&dir.rel, &name),
                id: (dir.id.0, entry.ino()),
                parent: Some(dir.clone()),
                deep: true,
            }));
        } else if kind.is_file() {
            let Some(format) = audio_format(Path::new(&name)) else {
                if musicfs_core::meta::is_extra(name.as_bytes()) {
                    out.statted += 1;
                    if let Ok(md) = entry.metadata() {
                        let state = scan_state(&md);
                        extras.push(ExtraFile {
                            name: name.as_bytes().to_vec(),
                            size: state.size,
                            mtime_ns: state.mtime_ns,
                        });
                    }
                }
                continue;
            };
            // fstatat on the directory's fd, without following (it is not a symlink).
            out.statted += 1;
            match entry.metadata() {
                Ok(md) => found.push(Found {
                    rel: join_rel(&dir.rel, &name),
                    format,
                    state: scan_state(&md),
                }),
                Err(e) => out.skipped.push(Skipped {
                    path: dir.path.join(&name),
                    reason: format!("cannot stat: {e}"),
                }),
            }
        } else if kind.is_symlink() {
            let (path, rel) = (dir.path.join(&name), join_rel(&dir.rel, &name));
            follow(root, dir, path, rel, &mut subdirs, &mut found, out);
        }
    }
    let listing = DirListing {
        dir: dir.rel.clone(),
        audio: found,
        extras,
    };
    if !files(listing) {
        stop.store(true, Ordering::Relaxed);
    }
    subdirs
}

/// Follows the symlink `path`: a directory inside the origin is walked (unless it leads
/// back to one being walked), an audio file is found; anything else is skipped.
fn follow(
    root: &Path,
    dir: &Arc<Dir>,
    path: PathBuf,
    rel: Vec<u8>,
    subdirs: &mut Vec<Arc<Dir>>,
    found: &mut Vec<Found>,
    out: &mut Outcome,
) {
    let skip = |out: &mut Outcome, path: PathBuf, reason: String| {
        out.skipped.push(Skipped { path, reason });
    };
    let target = match path.canonicalize() {
        Ok(t) if t.starts_with(root) => t,
        Ok(t) => {
            let reason = format!("symlink points outside the origin (to {})", t.display());
            return skip(out, path, reason);
        }
        Err(_) => {
            // Dangling, or a loop of symlinks the kernel gave up on.
            let to = fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return skip(out, path, format!("dangling symlink (to {to})"));
        }
    };
    out.statted += 1;
    let md = match fs::metadata(&target) {
        Ok(md) => md,
        Err(e) => return skip(out, path, format!("cannot stat: {e}")),
    };
    if md.is_dir() {
        let id = (md.dev(), md.ino());
        if let Some(ancestor) = dir.ancestor_with(id) {
            let reason = format!("symlink loop (back to {})", ancestor.path.display());
            return skip(out, path, reason);
        }
        subdirs.push(Arc::new(Dir {
            path,
            rel,
            id,
            parent: Some(dir.clone()),
            deep: true,
        }));
    } else if md.is_file() {
        if let Some(format) = audio_format(&path) {
            let state = scan_state(&md);
            found.push(Found { rel, format, state });
        }
    }
}

fn join_rel(dir: &[u8], name: &OsStr) -> Vec<u8> {
    let name = name.as_bytes();
    let mut rel = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        rel.extend_from_slice(dir);
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// The format an audio file's extension promises (case-insensitive), if any:
/// [`Format::Other`] for an extension a format plugin reads.
pub(crate) fn audio_format(path: &Path) -> Option<Format> {
    let ext = path.extension().and_then(OsStr::to_str)?;
    Format::from_ext(ext).or_else(|| crate::formats::reader_for(ext).map(|_| Format::Other))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::symlink;

    use super::*;

    /// What a walk of `root` found: the audio files (checked to be files under `root`),
    /// its outcome, and the directories hooked. `run` is the walk, given the two callbacks.
    pub(crate) fn collect(
        root: &Path,
        run: impl FnOnce(&(dyn Fn(&Path) + Sync), &(dyn Fn(DirListing) -> bool + Sync)) -> Outcome,
    ) -> (BTreeSet<String>, Outcome, BTreeSet<String>) {
        let files = Mutex::new(BTreeSet::new());
        let dirs = Mutex::new(BTreeSet::new());
        let out = run(
            &|d| {
                dirs.lock().unwrap().insert(d.display().to_string());
            },
            &|batch| {
                let mut f = files.lock().unwrap();
                for x in batch.audio {
                    assert!(root.join(OsStr::from_bytes(&x.rel)).is_file());
                    f.insert(String::from_utf8(x.rel).unwrap());
                }
                true
            },
        );
        (files.into_inner().unwrap(), out, dirs.into_inner().unwrap())
    }

    fn walk_all(root: &Path, threads: usize) -> (BTreeSet<String>, Outcome, BTreeSet<String>) {
        collect(root, |hook, files| walk(root, threads, hook, files))
    }

    #[test]
    fn every_audio_file_is_found_once_and_every_directory_hooked_before_listing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let mut want = BTreeSet::new();
        for a in 0..5 {
            for b in 0..4 {
                let d = root.join(format!("a{a}/b{b}"));
                fs::create_dir_all(&d).unwrap();
                for f in 0..3 {
                    fs::write(d.join(format!("{f}.flac")), b"x").unwrap();
                    want.insert(format!("a{a}/b{b}/{f}.flac"));
                }
                fs::write(d.join("cover.jpg"), b"x").unwrap();
            }
        }
        fs::write(root.join("top.MP3"), b"x").unwrap();
        want.insert("top.MP3".into());
        for threads in [1, 2, 4] {
            let (files, out, dirs) = walk_all(&root, threads);
            assert_eq!(files, want, "threads {threads}");
            assert!(out.skipped.is_empty() && !out.aborted);
            assert_eq!(dirs.len(), 1 + 5 + 20, "root, a*, a*/b*");
        }
    }

    /// Symlinks inside the origin are followed, loops, dangling links and links out of the
    /// origin skipped with a reason: what every walk of an origin must do.
    pub(crate) fn check_symlinks(
        walk_all: impl Fn(&Path) -> (BTreeSet<String>, Outcome, BTreeSet<String>),
    ) {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("o.flac"), b"x").unwrap();
        let root = t.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("real/deep")).unwrap();
        fs::write(root.join("real/deep/t.flac"), b"x").unwrap();
        symlink(root.join("real"), root.join("alias")).unwrap();
        symlink(&root, root.join("real/deep/up")).unwrap();
        symlink(root.join("nowhere.flac"), root.join("dangling.flac")).unwrap();
        symlink(outside.path().join("o.flac"), root.join("out.flac")).unwrap();
        symlink(root.join("real/deep/t.flac"), root.join("link.flac")).unwrap();
        let (files, out, _) = walk_all(&root);
        let want: BTreeSet<String> = ["real/deep/t.flac", "alias/deep/t.flac", "link.flac"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(files, want);
        let reason = |p: &str| {
            out.skipped
                .iter()
                .filter(|s| s.path.ends_with(p))
                .map(|s| s.reason.clone())
                .collect::<Vec<_>>()
        };
        assert!(reason("dangling.flac")[0].contains("dangling"));
        assert!(reason("out.flac")[0].contains("outside"));
        // Reached twice (through real/ and alias/), a loop both times.
        let loops = reason("deep/up");
        assert_eq!(loops.len(), 2, "{loops:?}");
        assert!(loops.iter().all(|r| r.contains("loop")), "{loops:?}");
    }

    #[test]
    fn symlinks_are_followed_inside_the_origin_and_skipped_with_a_reason_otherwise() {
        check_symlinks(|root| walk_all(root, 2));
    }

    #[test]
    fn an_unreadable_directory_is_reported_and_the_caller_can_stop_the_walk() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        for d in ["x", "y", "z"] {
            fs::create_dir(root.join(d)).unwrap();
            fs::write(root.join(d).join("1.flac"), b"x").unwrap();
        }
        // Between being found and being listed, one directory vanishes (its files are
        // gone: not an error) and one is replaced by a file (it cannot be listed: what
        // the catalog knew under it must be kept).
        let (gone, replaced) = (root.join("y"), root.join("z"));
        let out = walk(
            &root,
            1,
            &|d| {
                if d == Path::new("y") {
                    fs::remove_dir_all(&gone).unwrap();
                } else if d == Path::new("z") {
                    fs::remove_dir_all(&replaced).unwrap();
                    fs::write(&replaced, b"not a directory").unwrap();
                }
            },
            &|_| true,
        );
        assert_eq!(out.unreadable, vec![b"z".to_vec()]);
        assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
        assert!(out.skipped[0].reason.starts_with("cannot read"));
        let out = walk(&root, 2, &|_| {}, &|_| false);
        assert!(out.aborted);
    }

    #[test]
    fn a_panicking_callback_ends_the_walk_instead_of_hanging_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        for d in 0..8 {
            fs::create_dir(root.join(format!("d{d}"))).unwrap();
            fs::write(root.join(format!("d{d}/1.flac")), b"x").unwrap();
        }
        let out = walk(&root, 2, &|_| {}, &|_| panic!("callback bug"));
        assert!(out.aborted);
        assert!(out.skipped.iter().any(|s| s.reason.contains("aborted")));
    }
}
