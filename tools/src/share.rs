//! One scan, many mounts: a library's catalog and published tree shared through the shared
//! tier. `musicfs share push` bundles a state dir's catalog (a compacted, consistent LMDB
//! copy), its tree snapshot (with its delta) and its cover art, and stores the bundle in
//! the tier signed with the site's key; `musicfsd --from-shared` on an empty state dir
//! unpacks it before opening the catalog, then serves the tree at once and reconciles it
//! with the origins in the background, as after any restart.
//!
//! A bundle is named after what makes two daemons' trees the same (the path template and
//! the origins' keys), so daemons configured alike find each other's, and others never do.
//! Bundle: `MFSB1`, then entries (name length u32, name, data length u64, data), big
//! endian; names are relative paths in the state dir (`catalog/data.mdb`, `tree.snap`,
//! `tree.snap.delta`, `art/FILE`), anything else is refused on unpacking.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{bail, ensure, Context, Result};
use musicfs_core::config::Config;
use musicfs_index::refresh::StateDir;
use musicfs_storage::origin::S3Tier;
use musicfs_storage::Catalog;

const MAGIC: &[u8; 5] = b"MFSB1";

/// The bundle name of a library served with `cfg`'s template from the origins whose
/// keys are `keys`.
pub fn bundle_name<'a>(cfg: &Config, keys: impl IntoIterator<Item = &'a OsStr>) -> String {
    let mut keys: Vec<&[u8]> = keys.into_iter().map(OsStr::as_bytes).collect();
    keys.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(cfg.template.as_bytes());
    for k in &keys {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k);
    }
    format!("library-{:032x}", h.digest128())
}

fn add(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(data);
}

/// The bundle of the state dir `state` whose catalog is `catalog`.
pub fn bundle(state: &StateDir, catalog: &Catalog) -> Result<Vec<u8>> {
    let tmp = tempfile::tempdir()?;
    let copy = tmp.path().join("data.mdb");
    catalog.copy_to(&copy)?;
    let mut out = MAGIC.to_vec();
    add(&mut out, "catalog/data.mdb", &fs::read(&copy)?);
    let snap = state.snapshot_path();
    let tree = fs::read(&snap).with_context(|| {
        format!(
            "no published tree at {} (run `musicfs scan` first)",
            snap.display()
        )
    })?;
    add(&mut out, "tree.snap", &tree);
    let delta = musicfs_core::snapshot::delta_path(&snap);
    if let Ok(bytes) = fs::read(&delta) {
        add(&mut out, "tree.snap.delta", &bytes);
    }
    if let Ok(dir) = fs::read_dir(state.art_dir()) {
        for e in dir {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if e.file_type()?.is_file() && !name.starts_with('.') {
                add(&mut out, &format!("art/{name}"), &fs::read(e.path())?);
            }
        }
    }
    Ok(out)
}

/// Whether `name` is one a bundle may hold.
fn allowed(name: &str) -> bool {
    let p = Path::new(name);
    let plain = p.components().all(|c| matches!(c, Component::Normal(_)));
    plain
        && (matches!(name, "catalog/data.mdb" | "tree.snap" | "tree.snap.delta")
            || (name.starts_with("art/") && p.components().count() == 2))
}

/// The entries of `bundle`, checked.
fn entries(bundle: &[u8]) -> Result<Vec<(&str, &[u8])>> {
    let mut rest = bundle
        .strip_prefix(MAGIC.as_slice())
        .context("not a MusicFS library bundle")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, r) = rest.split_first_chunk::<4>().context("bundle cut short")?;
        let len = u32::from_be_bytes(*len) as usize;
        ensure!(r.len() >= len, "bundle cut short");
        let (name, r) = r.split_at(len);
        let name = std::str::from_utf8(name).context("bundle entry name is not UTF-8")?;
        ensure!(
            allowed(name),
            "bundle entry {name:?} is not a state dir file"
        );
        let (len, r) = r.split_first_chunk::<8>().context("bundle cut short")?;
        let len = usize::try_from(u64::from_be_bytes(*len))?;
        ensure!(r.len() >= len, "bundle cut short");
        let (data, r) = r.split_at(len);
        out.push((name, data));
        rest = r;
    }
    ensure!(
        out.iter().any(|(n, _)| *n == "catalog/data.mdb")
            && out.iter().any(|(n, _)| *n == "tree.snap"),
        "the bundle lacks the catalog or the tree"
    );
    Ok(out)
}

/// Unpacks `bundle` into the state dir at `root`, which must hold no catalog.
pub fn unpack(root: &Path, bundle: &[u8]) -> Result<usize> {
    let entries = entries(bundle)?;
    let catalog = root.join("catalog").join("data.mdb");
    ensure!(
        !catalog.exists(),
        "{} already holds a catalog: a shared library is only unpacked into an empty state dir",
        root.display()
    );
    for (name, data) in &entries {
        let dest = root.join(name);
        let dir = dest.parent().context("entry without a directory")?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.part", std::process::id()));
        fs::write(&tmp, data)?;
        fs::rename(&tmp, &dest)?;
    }
    Ok(entries.len())
}

/// `musicfs share push`: stores the state dir's library in the tier; returns the bundle's
/// name and size.
pub fn push(
    tier: &S3Tier,
    name: &str,
    state: &StateDir,
    catalog: &Catalog,
) -> Result<(String, usize)> {
    let bundle = bundle(state, catalog)?;
    tier.put_blob(name, &bundle)
        .with_context(|| format!("cannot store {name} in the shared tier {}", tier.shown()))?;
    Ok((name.to_string(), bundle.len()))
}

/// `musicfsd --from-shared`: unpacks the tier's library into the state dir at `root`
/// when it holds no catalog yet. `Ok(false)` when there was nothing to do.
pub fn pull(tier: &S3Tier, name: &str, root: &Path) -> Result<bool> {
    if root.join("catalog").join("data.mdb").exists() {
        tracing::info!(
            state = %root.display(),
            "the state dir has a catalog: it is served, not the shared one"
        );
        return Ok(false);
    }
    let Some(bundle) = tier
        .get_blob(name)
        .with_context(|| format!("cannot fetch {name} from the shared tier {}", tier.shown()))?
    else {
        bail!(
            "the shared tier {} holds no library {name} (push one with `musicfs share push`)",
            tier.shown()
        );
    };
    fs::create_dir_all(root)?;
    let n = unpack(root, &bundle)?;
    tracing::info!(
        name,
        files = n,
        bytes = bundle.len(),
        "started from the shared library"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_refuse_paths_outside_the_state_dir() {
        for bad in [
            "../x",
            "/etc/passwd",
            "art/../../x",
            "catalog/lock.mdb",
            "art/a/b",
            "x",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
        for good in [
            "catalog/data.mdb",
            "tree.snap",
            "tree.snap.delta",
            "art/ab12.jpg",
        ] {
            assert!(allowed(good), "{good}");
        }
        let mut b = MAGIC.to_vec();
        add(&mut b, "catalog/data.mdb", b"c");
        add(&mut b, "tree.snap", b"t");
        assert_eq!(entries(&b).unwrap().len(), 2);
        let mut evil = b.clone();
        add(&mut evil, "../../etc/cron.d/x", b"boom");
        assert!(entries(&evil).is_err());
        assert!(entries(&b[..b.len() - 1]).is_err());
        assert!(entries(b"nope").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unpack(dir.path(), &b).unwrap(), 2);
        assert_eq!(fs::read(dir.path().join("tree.snap")).unwrap(), b"t");
        // Never over an existing catalog.
        assert!(unpack(dir.path(), &b).is_err());
    }
}
