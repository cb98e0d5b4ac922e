//! Copies of one track shown once: which copy the tree names, and which are kept behind it
//! as alternates (`user.musicfs.alternates`; a read fails over to them).
//!
//! Copies are tracks with the same audio identity (see `crate::identity`) whose tags do
//! not disagree: the same file in two origins, a symlink to another file of the library, an
//! untagged or retagged copy. Tags disagree when both copies have a title (artist, album,
//! track number) and they differ beyond case and surrounding blanks, or when their
//! durations differ by more than a second: the same recording released on a
//! single and on an album stays two tracks. The shown copy is the preferred one: first a
//! copy whose origin is not offline, then the origin's priority (its place in the
//! configuration), then a file over a symlink to it, then the lower track id, so the
//! choice is the same build after build;
//! each other copy joins the first shown track (in that order) whose tags it agrees with.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

use musicfs_core::meta::{CopyTags, TrackId};

use super::{Library, Result};

/// A group with more clusters than this matches a partly tagged copy only against the
/// first ones (a synthetic library of one audio under many tags must not be quadratic).
const SCAN_CLUSTERS: usize = 64;

/// What a full publish needs to know about copies.
#[derive(Debug, Default)]
pub(super) struct Copies {
    /// Hidden copy -> (shown track, preference rank among the copies, same bytes).
    hidden: HashMap<u64, (u64, usize, bool)>,
}

impl Copies {
    /// The shown track, preference rank and same-bytes flag of a hidden copy; `None` for a
    /// track the tree shows.
    pub(super) fn hidden(&self, id: u64) -> Option<(u64, usize, bool)> {
        self.hidden.get(&id).copied()
    }

    /// Groups `members` (one audio) into tracks and records the hidden copies.
    fn settle(&mut self, mut members: Vec<Member>) {
        members.sort_by_key(|m| (m.offline, m.rank, m.linked, m.id));
        // Clusters of copies, each headed by its shown track (the first, most preferred).
        let mut clusters: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<u64, Vec<usize>> = HashMap::new();
        for i in 0..members.len() {
            let key = &members[i].tags;
            let head_agrees = |c: usize| members[clusters[c][0]].tags.agrees(key);
            let mut found = key
                .complete()
                .and_then(|k| by_key.get(&k))
                .and_then(|cs| cs.iter().copied().find(|&c| head_agrees(c)));
            let limit = clusters
                .len()
                .min(SCAN_CLUSTERS)
                .min(found.unwrap_or(usize::MAX));
            if let Some(c) = (0..limit).find(|&c| head_agrees(c)) {
                found = Some(c);
            }
            match found {
                Some(c) => clusters[c].push(i),
                None => {
                    if let Some(k) = key.complete() {
                        by_key.entry(k).or_default().push(clusters.len());
                    }
                    clusters.push(vec![i]);
                }
            }
        }
        for cluster in clusters {
            let shown = &members[cluster[0]];
            for (pos, &j) in cluster.iter().enumerate().skip(1) {
                let m = &members[j];
                self.hidden
                    .insert(m.id.0, (shown.id.0, pos, m.file == shown.file));
            }
        }
    }
}

/// One copy, as ranked.
struct Member {
    id: TrackId,
    offline: bool,
    rank: usize,
    /// Reached through a symlink (a local file whose real path is another): its target,
    /// when also cataloged, is the one to show.
    linked: bool,
    file: u128,
    tags: CopyTags,
}

impl Library {
    /// Whether track `id` (as cataloged now) is a copy of another track: same audio, tags
    /// agreeing.
    pub(super) fn has_agreeing_copy(&self, id: TrackId) -> Result<bool> {
        let others = self.catalog.copy_candidates(id)?;
        if others.len() < 2 {
            return Ok(false);
        }
        let Some(track) = self.catalog.get(id)? else {
            return Ok(false);
        };
        let tags = CopyTags::of(&track.meta);
        for other in others.into_iter().filter(|&o| o != id) {
            if let Some(o) = self.catalog.get(other)? {
                if tags.agrees(&CopyTags::of(&o.meta)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The copies of the library's tracks (among the origins it shows, `wanted`), and which
    /// of each group the tree shows.
    pub(super) fn copies(&self, wanted: &[u32]) -> Result<Copies> {
        let mut copies = Copies::default();
        // Catalog origin id -> its place in the configuration (its priority).
        let rank_of: HashMap<u32, usize> = self
            .catalog
            .origins()?
            .into_iter()
            .filter_map(|(id, root)| {
                let rank = self
                    .origins
                    .iter()
                    .position(|o| o.key() == root.as_os_str())?;
                Some((id.0, rank))
            })
            .collect();
        for group in self.catalog.copy_groups()? {
            let mut members = Vec::with_capacity(group.len());
            for id in group {
                let (Some(track), Some(identity)) =
                    (self.catalog.get(id)?, self.catalog.identity(id)?)
                else {
                    continue;
                };
                if !wanted.contains(&track.origin.0) {
                    continue;
                }
                let rank = rank_of.get(&track.origin.0).copied().unwrap_or(usize::MAX);
                let linked = self
                    .origins
                    .get(rank)
                    .and_then(|o| o.local_root())
                    .is_some_and(|root| {
                        let path = root.join(std::ffi::OsStr::from_bytes(&track.rel_path));
                        std::fs::canonicalize(&path).is_ok_and(|real| real != path)
                    });
                members.push(Member {
                    id,
                    offline: self.health.is_offline(track.origin.0),
                    rank,
                    linked,
                    file: identity.file,
                    tags: CopyTags::of(&track.meta),
                });
            }
            if members.len() > 1 {
                copies.settle(members);
            }
        }
        Ok(copies)
    }
}
