//! Copies of one track shown once: which copy the tree names, and which are kept behind it
//! as alternates (`user.musicfs.alternates`; a read fails over to them).
//!
//! Copies are tracks with the same audio identity (see `crate::identity`): the same file
//! in two origins, a symlink to another file of the library, a copy with other tags. The
//! shown copy is the preferred one: first a copy whose origin is not offline, then the
//! origin's priority (its place in the configuration), then the lower track id, so the
//! choice is the same build after build.

use std::collections::HashMap;

use musicfs_core::meta::{Identity, TrackId};

use super::{Library, Result};

/// What a full publish needs to know about copies.
#[derive(Debug, Default)]
pub(super) struct Copies {
    /// Hidden copy -> (shown track, preference rank among the copies, same bytes).
    pub(super) hidden: HashMap<u64, (u64, usize, bool)>,
}

impl Copies {
    /// The shown track, preference rank and same-bytes flag of a hidden copy; `None` for a
    /// track the tree shows.
    pub(super) fn hidden(&self, id: u64) -> Option<(u64, usize, bool)> {
        self.hidden.get(&id).copied()
    }
}

/// One copy, as ranked.
struct Member {
    id: TrackId,
    offline: bool,
    rank: usize,
    identity: Identity,
}

impl Library {
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
                members.push(Member {
                    id,
                    offline: self.health.is_offline(track.origin.0),
                    rank,
                    identity,
                });
            }
            if members.len() < 2 {
                continue;
            }
            members.sort_by_key(|m| (m.offline, m.rank, m.id));
            let shown = &members[0];
            for (pos, m) in members.iter().enumerate().skip(1) {
                copies.hidden.insert(
                    m.id.0,
                    (shown.id.0, pos, m.identity.file == shown.identity.file),
                );
            }
        }
        Ok(copies)
    }
}
