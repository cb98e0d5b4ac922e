//! The generic walk: any origin, through [`Origin::list`], one directory at a time.
//!
//! Used for origins without a local root, where the local walk's `fstatat` tricks do not
//! apply. It reports what the local walk reports: audio files by extension in one batch
//! per directory, skipped names with the origin's reason, directories that could not be
//! listed (so the caller keeps what it knew under them), and symlink loops, found by the
//! (device, inode) a local origin's change token carries (remote origins have no links).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use musicfs_storage::origin::{ChangeToken, Entry, EntryKind, Listed, Origin, OriginError};

use musicfs_storage::ExtraFile;

use super::{audio_format, join_rel, DirListing, Found, Outcome, Skipped};

/// A directory still to list, with its ancestors for loop detection.
struct Pending {
    rel: Vec<u8>,
    /// (device, inode) when the origin has them.
    id: Option<(u64, u64)>,
    parent: Option<Arc<Pending>>,
}

impl Pending {
    /// The directory (this one or an ancestor) that is `id`, if any.
    fn ancestor_with(self: &Arc<Pending>, id: (u64, u64)) -> Option<&Arc<Pending>> {
        let mut at = Some(self);
        while let Some(d) = at {
            if d.id == Some(id) {
                return Some(d);
            }
            at = d.parent.as_ref();
        }
        None
    }
}

/// Walks `origin` from its root. `before_list` runs on each directory (relative to the
/// root) before it is listed; `files` gets each directory's audio files and returns
/// `false` to stop the walk.
pub(crate) fn walk_listed(
    origin: &dyn Origin,
    before_list: &(dyn Fn(&Path) + Sync),
    files: &(dyn Fn(DirListing) -> bool + Sync),
) -> Outcome {
    let root_id = origin
        .stat(Path::new(""))
        .ok()
        .and_then(|s| id_of(&s.token));
    let mut stack = vec![Arc::new(Pending {
        rel: Vec::new(),
        id: root_id,
        parent: None,
    })];
    let mut out = Outcome::default();
    while let Some(dir) = stack.pop() {
        let rel = Path::new(OsStr::from_bytes(&dir.rel));
        before_list(rel);
        let mut found = Vec::new();
        let mut extras = Vec::new();
        let mut subdirs = Vec::new();
        let mut skipped = Vec::new();
        let listed = origin.list(rel, &mut |listed| match listed {
            // A server's or a plugin's listing may hold anything; a name that is not one
            // path component would leave the directory, or the origin, once joined.
            Listed::Entry(entry) if !is_component(&entry.name) => skipped.push(Skipped {
                path: shown(origin, &dir.rel),
                reason: format!(
                    "the origin listed an entry named {:?}, which is not a file name: left out",
                    entry.name
                ),
            }),
            Listed::Entry(entry) => {
                let mut sorted = Sorted {
                    found: &mut found,
                    extras: &mut extras,
                    subdirs: &mut subdirs,
                    skipped: &mut skipped,
                };
                sort_entry(origin, &dir, entry, &mut sorted)
            }
            Listed::Skipped { name, reason } => skipped.push(Skipped {
                path: shown(origin, &join_rel(&dir.rel, &name)),
                reason: reason.to_string(),
            }),
        });
        match listed {
            Ok(()) => {}
            // Removed since its parent was listed: gone, like what it held.
            Err(e) if removed(&e) => continue,
            // What was delivered is not the whole directory: keep what the catalog knew.
            Err(e) => {
                out.skipped.push(Skipped {
                    path: shown(origin, &dir.rel),
                    reason: format!("cannot read: {e}"),
                });
                out.unreadable.push(dir.rel.clone());
                continue;
            }
        }
        out.listed += 1;
        // `list` hands over each entry's stat with it.
        out.statted += found.len() as u64;
        out.skipped.extend(skipped);
        stack.extend(subdirs);
        let listing = DirListing {
            dir: dir.rel.clone(),
            audio: found,
            extras,
        };
        if !files(listing) {
            out.aborted = true;
            break;
        }
    }
    out
}

/// Where [`sort_entry`] files what a listing delivers.
struct Sorted<'a> {
    found: &'a mut Vec<Found>,
    extras: &'a mut Vec<ExtraFile>,
    subdirs: &'a mut Vec<Arc<Pending>>,
    skipped: &'a mut Vec<Skipped>,
}

/// Files `entry` of `dir` as an audio file, an extra file, a directory to walk, or a loop
/// to skip.
fn sort_entry(origin: &dyn Origin, dir: &Arc<Pending>, entry: Entry, to: &mut Sorted<'_>) {
    let rel = join_rel(&dir.rel, &entry.name);
    match entry.stat.kind {
        EntryKind::Dir => {
            let id = id_of(&entry.stat.token);
            if let Some(ancestor) = id.and_then(|id| dir.ancestor_with(id)) {
                let back = shown(origin, &ancestor.rel);
                to.skipped.push(Skipped {
                    path: shown(origin, &rel),
                    reason: format!("symlink loop (back to {})", back.display()),
                });
                return;
            }
            to.subdirs.push(Arc::new(Pending {
                rel,
                id,
                parent: Some(dir.clone()),
            }));
        }
        EntryKind::File => {
            let state = entry.stat.scan_state();
            if let Some(format) = audio_format(Path::new(&entry.name)) {
                to.found.push(Found { rel, format, state });
            } else if musicfs_core::meta::is_extra(entry.name.as_bytes()) {
                to.extras.push(ExtraFile {
                    name: entry.name.as_bytes().to_vec(),
                    size: state.size,
                    mtime_ns: state.mtime_ns,
                });
            }
        }
        EntryKind::Other => {}
    }
}

/// Whether `name` can be an entry of a directory: one normal path component (not empty,
/// `.` or `..`, without `/` or NUL).
pub(crate) fn is_component(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// Whether a listing failed because the directory was removed (ENOENT). A directory
/// replaced by a file (ENOTDIR) counts as unreadable, as in the local walk: its tracks are
/// kept rather than guessed gone.
fn removed(e: &OriginError) -> bool {
    matches!(e, OriginError::Vanished { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
}

fn id_of(token: &ChangeToken) -> Option<(u64, u64)> {
    match token {
        ChangeToken::Local { dev, ino, .. } => Some((*dev, *ino)),
        ChangeToken::ETag(_) => None,
    }
}

/// How a path inside `origin` is shown in reports: under its local root when it has one,
/// else under its key (which holds no credentials).
pub(crate) fn shown(origin: &dyn Origin, rel: &[u8]) -> PathBuf {
    let base = origin
        .local_root()
        .unwrap_or_else(|| Path::new(origin.key()));
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(OsStr::from_bytes(rel))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;

    use super::*;
    use crate::testorigin::listed;

    /// An origin whose listings are whatever the fuzzer gives: any bytes as names (`/`,
    /// `..`, NUL, empty included), files or directories, the same at every depth. What a
    /// hostile S3, SFTP or SMB server, or an origin plugin, could answer.
    #[derive(Debug)]
    struct Hostile {
        inner: Arc<dyn Origin>,
        entries: Vec<(Vec<u8>, bool)>,
    }

    impl Origin for Hostile {
        fn spec(&self) -> &musicfs_storage::origin::OriginSpec {
            self.inner.spec()
        }
        fn key(&self) -> &OsStr {
            self.inner.key()
        }
        fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
            // Deep enough to nest, bounded so the walk ends.
            if dir.components().count() >= 3 {
                return Ok(());
            }
            for (name, is_dir) in &self.entries {
                let mut stat = self.inner.stat(Path::new(""))?;
                if !is_dir {
                    stat.kind = EntryKind::File;
                    stat.token = ChangeToken::ETag("x".into());
                }
                each(Listed::Entry(Entry {
                    name: OsStr::from_bytes(name).to_os_string(),
                    via_symlink: false,
                    stat,
                }));
            }
            Ok(())
        }
        fn stat(&self, rel: &Path) -> Result<musicfs_storage::origin::Stat, OriginError> {
            self.inner.stat(rel)
        }
        fn open(
            &self,
            rel: &Path,
        ) -> Result<Arc<dyn musicfs_storage::origin::Source>, OriginError> {
            self.inner.open(rel)
        }
        fn change_detection(&self) -> musicfs_storage::origin::ChangeDetection {
            musicfs_storage::origin::ChangeDetection::Poll
        }
        fn probe(
            &self,
            recorded: Option<&musicfs_storage::origin::RootIdentity>,
        ) -> musicfs_storage::origin::Health {
            self.inner.probe(recorded)
        }
        fn root_identity(&self) -> Option<musicfs_storage::origin::RootIdentity> {
            None
        }
    }

    proptest::proptest! {
        /// Origin listings (issue 20's fuzz target for S3, SFTP and plugin listings, at the
        /// seam they all pass through): any names a listing holds, the walk ends, panics
        /// never, and every path it files or descends into is made of normal components.
        #[test]
        fn fuzz_hostile_listings(
            entries in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                        proptest::sample::select(vec![
                            b"..".to_vec(), b".".to_vec(), b"../x.flac".to_vec(),
                            b"a/b.flac".to_vec(), b"/abs.mp3".to_vec(), b"x\0y.flac".to_vec(),
                            b"ok.flac".to_vec(), b"dir".to_vec(), Vec::new(),
                        ]),
                    ],
                    proptest::bool::ANY,
                ),
                0..6,
            )
        ) {
            let t = tempfile::tempdir().unwrap();
            let origin = Hostile { inner: listed(t.path()), entries };
            let paths = std::sync::Mutex::new(Vec::new());
            let out = walk_listed(
                &origin,
                &|rel| paths.lock().unwrap().push(rel.as_os_str().as_bytes().to_vec()),
                &|listing| {
                    let mut p = paths.lock().unwrap();
                    p.extend(listing.audio.iter().map(|f| f.rel.clone()));
                    true
                },
            );
            proptest::prop_assert!(!out.aborted);
            for p in paths.into_inner().unwrap() {
                if p.is_empty() {
                    continue; // the root itself
                }
                for c in p.split(|&b| b == b'/') {
                    proptest::prop_assert!(
                        !c.is_empty() && c != b"." && c != b".." && !c.contains(&0),
                        "walked into {:?}",
                        String::from_utf8_lossy(&p)
                    );
                }
            }
        }
    }

    fn walk_all(root: &Path) -> (BTreeSet<String>, Outcome, BTreeSet<String>) {
        let origin = listed(root);
        crate::walk::tests::collect(root, |hook, files| {
            walk_listed(origin.as_ref(), hook, files)
        })
    }

    #[test]
    fn every_audio_file_is_found_once_and_every_directory_hooked_before_listing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let mut want = BTreeSet::new();
        for a in 0..3 {
            for b in 0..2 {
                let d = root.join(format!("a{a}/b{b}"));
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("1.flac"), b"x").unwrap();
                fs::write(d.join("cover.jpg"), b"x").unwrap();
                want.insert(format!("a{a}/b{b}/1.flac"));
            }
        }
        fs::write(root.join("top.MP3"), b"x").unwrap();
        want.insert("top.MP3".into());
        let (files, out, dirs) = walk_all(&root);
        assert_eq!(files, want);
        assert!(out.skipped.is_empty() && !out.aborted && out.unreadable.is_empty());
        assert_eq!(dirs.len(), 1 + 3 + 6, "root, a*, a*/b*");
        assert!(dirs.contains(""), "the root is hooked as the empty path");
    }

    #[test]
    fn symlinks_are_followed_inside_the_origin_and_loops_and_strays_skipped() {
        crate::walk::tests::check_symlinks(walk_all);
    }

    #[test]
    fn a_directory_replaced_by_a_file_is_unreadable_a_removed_one_is_gone_and_the_caller_can_stop()
    {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        for d in ["x", "y", "z"] {
            fs::create_dir(root.join(d)).unwrap();
            fs::write(root.join(d).join("1.flac"), b"x").unwrap();
        }
        let origin = listed(&root);
        let out = walk_listed(
            origin.as_ref(),
            &|d| {
                if d == Path::new("y") {
                    fs::remove_dir_all(root.join("y")).unwrap();
                } else if d == Path::new("z") {
                    fs::remove_dir_all(root.join("z")).unwrap();
                    fs::write(root.join("z"), b"not a directory").unwrap();
                }
            },
            &|_| true,
        );
        assert_eq!(out.unreadable, vec![b"z".to_vec()]);
        assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
        assert!(out.skipped[0].reason.starts_with("cannot read"));
        assert!(out.skipped[0].path.ends_with("z"));
        let out = walk_listed(origin.as_ref(), &|_| {}, &|_| false);
        assert!(out.aborted);
    }
}
