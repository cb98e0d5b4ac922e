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
use std::sync::Arc;

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
    /// Ask the loaded metadata plugins for suggestions, kept as proposals.
    Suggest,
    /// Turn proposals into edits.
    Apply,
}

/// What `apply` may need beside the catalog: the plugins (for `suggest`) and where
/// proposals are kept.
pub struct TagContext<'a> {
    /// The loaded plugins.
    pub plugins: Option<&'a crate::plugins::Plugins>,
    /// The state dir's proposals.
    pub proposals: &'a crate::plugins::Proposals,
    /// Opens a track's source file (for an enricher's fingerprint), where the origins
    /// are at hand.
    pub open: Option<&'a dyn Fn(TrackId) -> Option<Arc<dyn musicfs_storage::origin::Source>>>,
}

impl Action {
    /// The action named `s` (as in the control API).
    pub fn parse(s: &str) -> Result<Action> {
        Ok(match s {
            "set" => Action::Set,
            "clear" => Action::Clear,
            "get" => Action::Get,
            "diff" => Action::Diff,
            "suggest" => Action::Suggest,
            "apply" => Action::Apply,
            other => bail!("unknown tag action {other:?} (set, clear, get, diff, suggest, apply)"),
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

/// Adds `edits` to track `id`'s; whether they changed.
fn merge_edits(
    catalog: &Catalog,
    id: TrackId,
    edits: &musicfs_core::overlay::Edits,
    now: i64,
) -> Result<bool> {
    let key = catalog.override_key(id)?;
    let mut ov = catalog.override_of(id)?.unwrap_or_default();
    let before = ov.edits.clone();
    ov.edits.extend(edits.clone());
    if ov.edits == before {
        return Ok(false);
    }
    ov.changed_ns = now;
    Ok(catalog.set_override(key, Some(&ov))?)
}

/// Track `id`'s tags as shown (edits applied), one (field, values joined by "; ") each.
fn shown_tags(catalog: &Catalog, id: TrackId) -> Result<Vec<(String, String)>> {
    let Some(rec) = catalog.get(id)? else {
        return Ok(Vec::new());
    };
    let shown = catalog
        .override_of(id)?
        .unwrap_or_default()
        .apply(&rec.meta);
    Ok(TagField::ALL
        .iter()
        .filter_map(|f| {
            let v = f.values(&shown);
            (!v.is_empty()).then(|| (f.name().to_string(), v.join("; ")))
        })
        .collect())
}

/// Applies `action` with `args` to `ids`; returns how many tracks' edits changed.
pub fn apply(
    catalog: &Catalog,
    ids: &[TrackId],
    action: Action,
    args: &[String],
    ctx: &TagContext<'_>,
) -> Result<u64> {
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
                changed += u64::from(merge_edits(catalog, id, &edits, now)?);
            }
        }
        Action::Suggest => {
            let plugins = ctx
                .plugins
                .filter(|p| p.list().iter().any(|l| l.suggests()))
                .context("no metadata plugin is loaded (`musicfs plugin load NAME`)")?;
            let mut all = ctx.proposals.load()?;
            for &id in ids {
                let tags = shown_tags(catalog, id)?;
                let mut proposal = crate::plugins::Proposal::default();
                let fingerprint = || {
                    let source = ctx.open.and_then(|open| open(id))?;
                    match crate::plugins::fingerprint::fingerprint(source) {
                        Ok(fp) => Some(fp),
                        Err(e) => {
                            tracing::warn!(track = id.0, error = %format!("{e:#}"),
                                "cannot fingerprint the track");
                            None
                        }
                    }
                };
                for (plugin, field, value) in plugins.suggest(&tags, &fingerprint) {
                    let same = tags.iter().any(|(k, v)| *k == field && *v == value);
                    let assignment = format!("{field}={value}");
                    // Only fields tag set takes, with values it accepts.
                    if same || parse_assignments(std::slice::from_ref(&assignment)).is_err() {
                        continue;
                    }
                    proposal.set.push(assignment);
                    if !proposal.plugins.contains(&plugin) {
                        proposal.plugins.push(plugin);
                    }
                }
                if proposal.set.is_empty() {
                    all.remove(&id.0);
                } else {
                    all.insert(id.0, proposal);
                }
            }
            ctx.proposals.store(&all)?;
        }
        Action::Apply => {
            let mut all = ctx.proposals.load()?;
            let now = now_ns();
            for &id in ids {
                let Some(p) = all.remove(&id.0) else {
                    continue;
                };
                let edits = parse_assignments(&p.set)?;
                changed += u64::from(merge_edits(catalog, id, &edits, now)?);
            }
            ctx.proposals.store(&all)?;
        }
        Action::Clear => {
            if args.is_empty() {
                let mut all = ctx.proposals.load()?;
                let before = all.len();
                for id in ids {
                    all.remove(&id.0);
                }
                if all.len() != before {
                    ctx.proposals.store(&all)?;
                }
            }
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
    proposals: &crate::plugins::Proposals,
) -> Result<Vec<proto::TagTrack>> {
    let mut out = Vec::new();
    let roots = catalog.origins()?;
    let proposed = proposals.load()?;
    for &id in ids {
        let Some(rec) = catalog.get(id)? else {
            continue;
        };
        let ov = catalog.override_of(id)?.unwrap_or_default();
        let shown = ov.apply(&rec.meta);
        let mut fields = Vec::new();
        let proposal = proposed.get(&id.0);
        for f in TagField::ALL {
            let edited = ov.edits.contains_key(&f);
            let file = f.values(&rec.meta);
            let now = f.values(&shown);
            let prop: Vec<String> = proposal
                .into_iter()
                .flat_map(|p| &p.set)
                .filter_map(|a| a.split_once('='))
                .filter(|(k, _)| TagField::parse(k) == Some(f))
                .map(|(_, v)| v.to_string())
                .collect();
            if edited || !prop.is_empty() || (all_fields && !(file.is_empty() && now.is_empty())) {
                fields.push(proto::TagField {
                    field: f.name().into(),
                    file,
                    shown: now,
                    edited,
                    proposed: prop,
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
                        "proposed": f.proposed,
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
    if matches!(action, Action::Set | Action::Clear | Action::Apply) {
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
            if !f.proposed.is_empty() {
                println!(
                    "  ?{}\t{}\t(proposed; shown: {shown})",
                    f.field,
                    f.proposed.join("; ")
                );
            } else if f.edited {
                println!("  *{}\t{}\t(was: {})", f.field, shown, f.file.join("; "));
            } else {
                println!("   {}\t{}", f.field, shown);
            }
        }
    }
    Ok(())
}
