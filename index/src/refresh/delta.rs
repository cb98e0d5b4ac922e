//! Publishing a small change as a delta on the served snapshot (see
//! `musicfs_core::snapshot::delta`), so a one-file change costs O(change), not a render
//! and rewrite of the whole library.

use std::time::Instant;

use musicfs_core::snapshot::delta::{self, delta_for, TrackChange};
use musicfs_core::snapshot::Snapshot;
use tracing::{debug, info};

use super::{Library, Published, Result};
use crate::scan::Touched;

/// A delta holding more records than this (plus a share of the base) is merged into a new
/// base instead: lookups stay two binary searches either way, but each publish rewrites
/// the whole delta, and a full render resets that cost.
const DELTA_MAX_RECORDS: usize = 65_536;
/// ... plus one record per this many base nodes.
const DELTA_BASE_SHARE: usize = 8;

impl Library {
    /// Publishes what a scan changed (`touched`) on top of `current`, the snapshot being
    /// served: as a delta when `current` showed the catalog as it was before the scan
    /// (`was_current`) and the change can be expressed exactly, else as a full publish.
    pub fn publish_change(
        &self,
        current: &Snapshot,
        touched: &Touched,
        was_current: bool,
    ) -> Result<Published> {
        match self.try_delta(current, touched, was_current, false)? {
            Some(published) => Ok(published),
            None => self.publish(),
        }
    }

    /// Publishes tag edits of `touched` (album keys as shown before the edits) on top of
    /// `current`: as a delta when `current` showed the catalog as it was just before them
    /// (its version `catalog_before`, and the edits its only `bumps` since), else in full.
    pub fn publish_edits(
        &self,
        current: &Snapshot,
        touched: &Touched,
        catalog_before: u64,
        bumps: u64,
    ) -> Result<Published> {
        let was_current = current.catalog_version() == catalog_before
            && self.catalog.change_counter()? == catalog_before + bumps;
        match self.try_delta(current, touched, was_current, true)? {
            Some(published) => Ok(published),
            None => self.publish(),
        }
    }

    fn try_delta(
        &self,
        current: &Snapshot,
        touched: &Touched,
        was_current: bool,
        edits: bool,
    ) -> Result<Option<Published>> {
        let start = Instant::now();
        let path = self.state.snapshot_path();
        let why_not = if touched.overflow {
            Some("many tracks changed")
        } else if !was_current {
            Some("the served tree was behind the catalog")
        } else if !self.serves_same_origins(current)? {
            Some("the template or the origins changed")
        } else if Snapshot::open(&path).map(|s| s.generation()).ok() != Some(current.generation()) {
            Some("the published snapshot is not the one served")
        } else {
            None
        };
        if let Some(why) = why_not {
            debug!("full publish: {why}");
            return Ok(None);
        }
        let wanted = self.shown_origin_ids()?;
        let overlay =
            if edits || self.catalog.has_overrides()? || !self.renditions.load().is_empty() {
                self.overlay()?
            } else {
                super::OverlayView::default()
            };
        // A scan knows a changed track's album only as its file says: one showing edited
        // tags is rendered by a full publish. Edits come with the album they showed.
        if !edits && touched.tracks.iter().any(|(id, _)| overlay.covers(*id)) {
            debug!("full publish: a track with tag edits changed");
            return Ok(None);
        }
        for &(id, _) in &touched.tracks {
            if current.has_copies(id.0) || self.has_agreeing_copy(id)? {
                debug!("full publish: a track with copies changed");
                return Ok(None);
            }
        }
        let mut changes: Vec<TrackChange> = Vec::with_capacity(touched.tracks.len());
        for &(id, before) in &touched.tracks {
            if changes.iter().any(|c| c.id == id.0) {
                continue;
            }
            let after = self
                .catalog
                .get(id)?
                .filter(|t| wanted.contains(&t.origin.0))
                .map(|t| overlay.apply(t));
            changes.push(TrackChange {
                id: id.0,
                before,
                after,
            });
        }
        let version = self.catalog.change_counter()?;
        let delta = match delta_for(current, &self.template, &changes, version) {
            Ok(delta) => delta,
            Err(why) => {
                info!("publishing a new base: {why}");
                return Ok(None);
            }
        };
        let records = delta.tree.nodes.len() + delta.tree.by_ino.len();
        if records > DELTA_MAX_RECORDS + current.node_count() / DELTA_BASE_SHARE {
            info!(records, "the delta has grown: merging it into a new base");
            return Ok(None);
        }
        let generation = current.generation() + 1;
        self.serve_renditions(&overlay);
        delta::write(&path, &delta, generation)?;
        Ok(Some(Published {
            generation,
            tracks: delta.tree.track_count,
            elapsed: start.elapsed(),
            delta: true,
        }))
    }
}
