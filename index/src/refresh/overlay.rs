//! The metadata overlay in publishing: which tracks show edited tags, and the renditions
//! that serve their bytes (built from the source when missing or stale, kept in the
//! catalog, handed to the FUSE read path).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use musicfs_core::meta::{TrackId, TrackRecord};
use musicfs_core::overlay::{Override, Rendition, RenditionSet};
use musicfs_storage::origin::Origin;
use tracing::warn;

use super::{Library, Result};

/// The tracks a publish shows with edited tags.
#[derive(Default)]
pub struct OverlayView {
    by_track: HashMap<u64, (Override, Arc<Rendition>)>,
}

impl OverlayView {
    /// `track` as the tree shows it: edited tags, the rendition's size and mtime.
    pub fn apply(&self, mut track: TrackRecord) -> TrackRecord {
        if let Some((ov, r)) = self.by_track.get(&track.id.0) {
            track.meta = ov.apply(&track.meta);
            track.scan.size = r.size;
            track.scan.mtime_ns = r.mtime_ns;
        }
        track
    }

    /// Whether track `id` shows edited tags.
    pub fn covers(&self, id: TrackId) -> bool {
        self.by_track.contains_key(&id.0)
    }

    /// The renditions, by track id.
    pub fn renditions(&self) -> HashMap<u64, Arc<Rendition>> {
        self.by_track
            .iter()
            .map(|(id, (_, r))| (*id, r.clone()))
            .collect()
    }
}

impl Library {
    /// The origin files of `origin_id` are read through (the chunk-cached reader of a
    /// remote origin when there is one).
    fn reader_of(&self, root: &Path) -> Option<Arc<dyn Origin>> {
        self.readers
            .iter()
            .chain(&self.origins)
            .find(|o| o.key() == root.as_os_str())
            .cloned()
    }

    /// The overlay as the catalog holds it now: every overridden track with a rendition
    /// that fits its source (built and stored when missing or stale). A track whose file
    /// cannot be rewritten is shown as it is, with one warning.
    pub fn overlay(&self) -> Result<OverlayView> {
        let overrides = self.catalog.overrides()?;
        let served_any = !self.renditions.load().is_empty();
        if overrides.is_empty() && !served_any && !self.catalog_has_renditions()? {
            return Ok(OverlayView::default());
        }
        let stored = self.catalog.renditions()?;
        let roots: HashMap<u32, std::path::PathBuf> = self
            .catalog
            .origins()?
            .into_iter()
            .map(|(id, p)| (id.0, p))
            .collect();
        let mut view = OverlayView::default();
        let mut put = Vec::new();
        for (_, ov, tracks) in overrides {
            let version = ov.version();
            for id in tracks {
                let Some(rec) = self.catalog.get(id)? else {
                    continue;
                };
                if let Some(r) = stored.get(&id) {
                    if r.fits(rec.scan.size, rec.scan.mtime_ns, version) {
                        view.by_track
                            .insert(id.0, (ov.clone(), Arc::new(r.clone())));
                        continue;
                    }
                }
                let Some(origin) = roots.get(&rec.origin.0).and_then(|r| self.reader_of(r)) else {
                    continue; // not an origin of this library
                };
                match build(&*origin, &rec, &ov, version) {
                    Ok(r) => {
                        put.push((id, r.clone()));
                        view.by_track.insert(id.0, (ov.clone(), Arc::new(r)));
                    }
                    Err(e) => warn!(
                        track = id.0,
                        path = %String::from_utf8_lossy(&rec.rel_path),
                        "cannot show the tag edits, serving the file as it is: {e}"
                    ),
                }
            }
        }
        let drop: Vec<TrackId> = stored
            .keys()
            .filter(|id| !view.by_track.contains_key(&id.0))
            .copied()
            .collect();
        self.catalog.update_renditions(&put, &drop)?;
        Ok(view)
    }

    fn catalog_has_renditions(&self) -> Result<bool> {
        Ok(!self.catalog.renditions()?.is_empty())
    }

    /// Hands the renditions of a published tree to the read path.
    pub(super) fn serve_renditions(&self, view: &OverlayView) {
        let next = self.renditions.load().next(view.renditions());
        self.renditions.store(Arc::new(next));
    }
}

/// Builds the rendition of `rec` with `ov`'s edits from its source.
fn build(
    origin: &dyn Origin,
    rec: &TrackRecord,
    ov: &Override,
    version: u64,
) -> std::result::Result<Rendition, String> {
    let rel = Path::new(OsStr::from_bytes(&rec.rel_path));
    let src = origin.open(rel).map_err(|e| e.to_string())?;
    if src.len() != rec.scan.size {
        return Err("the file changed since it was scanned".into());
    }
    let segments =
        crate::overlay::synthesise(rec.format, &*src, &ov.edits).map_err(|e| e.to_string())?;
    Ok(Rendition::new(
        segments.into_segments(),
        rec.scan.size,
        rec.scan.mtime_ns,
        version,
        ov.changed_ns,
    ))
}

/// A fresh, empty set for a [`Library`]'s `renditions`.
pub fn no_renditions() -> Arc<arc_swap::ArcSwap<RenditionSet>> {
    Arc::new(arc_swap::ArcSwap::from_pointee(RenditionSet::default()))
}
