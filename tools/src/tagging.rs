//! `musicfs tag`: tag edits kept in the catalog (the metadata overlay), for a running
//! daemon (the control API's `Tag` call) and on a state directory when none runs.
//!
//! Paths name tracks as the user sees them: a path in the mount (absolute under the
//! mountpoint, or relative to the tree's root), or a source path in an origin; a folder of
//! the tree stands for every track below it. A search query selects more.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use musicfs_core::meta::TrackId;
use musicfs_core::overlay::{parse_assignments, Override, TagField};
use musicfs_core::snapshot::{Snapshot, ROOT_INO};
use musicfs_core::tree::FILE_INO_BASE;
use musicfs_index::search::SearchIndex;
use musicfs_storage::Catalog;

use crate::control::proto;

/// What `tag` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set fields.
    Set,
    /// Drop edits (of the named fields, or all).
    Clear,
    /// Show every field: the file's value and the one shown.
    Get,
    /// Show only edited fields.
    Diff,
}

impl Action {
    /// The action named `s` (as in the control API).
    pub fn parse(s: &str) -> Result<Action> {
        Ok(match s {
            "set" => Action::Set,
            "clear" => Action::Clear,
            "get" => Action::Get,
            "diff" => Action::Diff,
            other => bail!("unknown tag action {other:?} (set, clear, get, diff)"),
        })
    }
}

/// The tracks `paths` and `query` name, in order, each once.
pub fn resolve(
    snap: &Snapshot,
    catalog: &Catalog,
    search: Option<&SearchIndex>,
    mountpoint: Option<&Path>,
    paths: &[String],
    query: &str,
) -> Result<Vec<TrackId>> {
    let mut out: Vec<TrackId> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |id: TrackId, out: &mut Vec<TrackId>| {
        if seen.insert(id) {
            out.push(id);
        }
    };
    for p in paths {
        let ids = resolve_one(snap, catalog, mountpoint, p)?;
        if ids.is_empty() {
            bail!("{p}: no track there");
        }
        for id in ids {
            push(id, &mut out);
        }
    }
    if !query.is_empty() {
        let index = search.context("search is not available here")?;
        let hits = index
            .search(query, (snap.track_count() as usize).max(1))
            .with_context(|| format!("query {query:?}"))?;
        for h in hits {
            push(h.id, &mut out);
        }
    }
    if out.is_empty() {
        bail!("name at least one track (a path, or --query)");
    }
    Ok(out)
}

fn resolve_one(
    snap: &Snapshot,
    catalog: &Catalog,
    mountpoint: Option<&Path>,
    p: &str,
) -> Result<Vec<TrackId>> {
    let path = Path::new(p);
    let in_tree = match mountpoint {
        Some(mp) if path.is_absolute() => path.strip_prefix(mp).ok(),
        _ if path.is_relative() => Some(path),
        _ => None,
    };
    if let Some(rel) = in_tree {
        let mut ino = ROOT_INO;
        let mut found = true;
        for part in rel.components() {
            match snap.lookup(ino, part.as_os_str().as_bytes()) {
                Some(n) => ino = n.ino(),
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            let mut ids = Vec::new();
            files_below(snap, ino, &mut ids);
            return Ok(ids);
        }
    }
    if path.is_absolute() {
        for (origin, root) in catalog.origins()? {
            if let Ok(rel) = path.strip_prefix(&root) {
                if let Some(t) = catalog.find(origin, rel.as_os_str().as_bytes())? {
                    return Ok(vec![t.id]);
                }
            }
        }
    }
    Ok(Vec::new())
}

fn files_below(snap: &Snapshot, ino: u64, out: &mut Vec<TrackId>) {
    let Some(node) = snap.node(ino) else {
        return;
    };
    if let Some(f) = node.file() {
        out.push(TrackId(f.track_id));
        return;
    }
    let children: Vec<u64> = snap.children(ino, 0).map(|c| c.ino()).collect();
    for c in children {
        files_below(snap, c, out);
    }
}

/// A track with its album key and format as shown (`None`: not in the catalog).
pub type ShownAlbum = (TrackId, Option<(u128, musicfs_core::Format)>);

/// Each of `ids` with its album key and format as the tree shows it now (edits applied):
/// what publishing an edit of them as a delta needs.
pub fn shown_albums(catalog: &Catalog, ids: &[TrackId]) -> Result<Vec<ShownAlbum>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let before = match catalog.get(id)? {
            Some(mut rec) => {
                if let Some(ov) = catalog.override_of(id)? {
                    rec.meta = ov.apply(&rec.meta);
                }
                Some((musicfs_core::template::album_key(&rec), rec.format))
            }
            None => None,
        };
        out.push((id, before));
    }
    Ok(out)
}

/// Applies `action` with `args` to `ids`; returns how many tracks' edits changed.
pub fn apply(catalog: &Catalog, ids: &[TrackId], action: Action, args: &[String]) -> Result<u64> {
    let mut changed = 0;
    match action {
        Action::Get | Action::Diff => {}
        Action::Set => {
            let edits = parse_assignments(args)?;
            if edits.is_empty() {
                bail!("nothing to set: give field=value");
            }
            let now = now_ns();
            for &id in ids {
                let key = catalog.override_key(id)?;
                let mut ov = catalog.override_of(id)?.unwrap_or_default();
                let before = ov.edits.clone();
                ov.edits.extend(edits.clone());
                if ov.edits != before {
                    ov.changed_ns = now;
                    changed += u64::from(catalog.set_override(key, Some(&ov))?);
                }
            }
        }
        Action::Clear => {
            let mut fields = Vec::new();
            for a in args {
                fields
                    .push(TagField::parse(a).with_context(|| format!("unknown tag field {a:?}"))?);
            }
            let now = now_ns();
            for &id in ids {
                let Some(mut ov) = catalog.override_of(id)? else {
                    continue;
                };
                let key = catalog.override_key(id)?;
                if fields.is_empty() {
                    ov.edits.clear();
                } else {
                    for f in &fields {
                        ov.edits.remove(f);
                    }
                }
                // The served file changes again: its mtime moves on so players rescan it.
                ov.changed_ns = now;
                let value: Option<&Override> = (!ov.edits.is_empty()).then_some(&ov);
                changed += u64::from(catalog.set_override(key, value)?);
            }
        }
    }
    Ok(changed)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Each of `ids` with its fields: the file's values and the shown ones (every field for
/// `get`, edited ones for `diff` and the others).
pub fn report(
    catalog: &Catalog,
    snap: &Snapshot,
    ids: &[TrackId],
    all_fields: bool,
) -> Result<Vec<proto::TagTrack>> {
    let mut out = Vec::new();
    let roots = catalog.origins()?;
    for &id in ids {
        let Some(rec) = catalog.get(id)? else {
            continue;
        };
        let ov = catalog.override_of(id)?.unwrap_or_default();
        let shown = ov.apply(&rec.meta);
        let mut fields = Vec::new();
        for f in TagField::ALL {
            let edited = ov.edits.contains_key(&f);
            let file = f.values(&rec.meta);
            let now = f.values(&shown);
            if edited || (all_fields && !(file.is_empty() && now.is_empty())) {
                fields.push(proto::TagField {
                    field: f.name().into(),
                    file,
                    shown: now,
                    edited,
                });
            }
        }
        let path = musicfs_fusedev::virt::tree_path(snap, id.0 + FILE_INO_BASE)
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        let source = roots
            .iter()
            .find(|(o, _)| *o == rec.origin)
            .map(|(_, root)| {
                root.join(OsStr::from_bytes(&rec.rel_path))
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        out.push(proto::TagTrack {
            track_id: id.0,
            path,
            source,
            fields,
        });
    }
    Ok(out)
}

/// Prints a tag reply: per track, its path then `field<TAB>value` lines (edited fields
/// marked `*`, with the file's value after `was`), or JSON.
pub fn print(reply: &proto::TagReply, action: Action, as_json: bool) -> Result<()> {
    if as_json {
        let tracks: Vec<serde_json::Value> = reply
            .tracks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "track_id": t.track_id,
                    "path": t.path,
                    "source": t.source,
                    "fields": t.fields.iter().map(|f| serde_json::json!({
                        "field": f.field, "file": f.file, "shown": f.shown, "edited": f.edited,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "changed": reply.changed,
            "generation": reply.refresh.as_ref().map(|r| r.generation),
            "tracks": tracks,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if matches!(action, Action::Set | Action::Clear) {
        println!("{} track(s) changed", reply.changed);
        if let Some(r) = &reply.refresh {
            if r.waited {
                println!("served in generation {}", r.generation);
            }
        }
    }
    for t in &reply.tracks {
        println!(
            "{}",
            if t.path.is_empty() {
                &t.source
            } else {
                &t.path
            }
        );
        for f in &t.fields {
            let shown = f.shown.join("; ");
            if f.edited {
                println!("  *{}\t{}\t(was: {})", f.field, shown, f.file.join("; "));
            } else {
                println!("   {}\t{}", f.field, shown);
            }
        }
    }
    Ok(())
}
