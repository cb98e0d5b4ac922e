//! Native plugins (`musicfs-plugin-api`): shared libraries loaded from the configured
//! `plugin_dir`, listed, loaded, unloaded and reloaded at run time, and the proposals
//! their metadata suggestions become.
//!
//! **Loading is code execution**, so a plugin is only loaded from `plugin_dir`: the file
//! must resolve (symlinks followed) inside it, be a regular file owned by the daemon's user
//! (or root) and writable by no one else, in a directory writable by no one else. Its
//! entry point must speak [`API_MAJOR`]; another major is refused with both versions
//! named. A call holds the plugin (an `Arc`), so an unload waits for no one: the library
//! is closed when the last call ends.
//!
//! **Proposals**: what metadata plugins suggest for a track (fields whose suggested value
//! differs from the one shown) is kept in `<state>/proposals.json` until
//! `musicfs tag apply` turns it into tag edits or `musicfs tag clear` drops it: a plugin
//! never changes the library by itself.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, ensure, Context, Result};
use musicfs_plugin_api::{
    Emit, HostV1, MetadataV1, PluginV1, Str, Tag, API_MAJOR, ENTRY_SYMBOL, OK, PLUGIN_V1_0_SIZE,
};
use serde::{Deserialize, Serialize};

pub mod fingerprint;
pub mod host;
pub mod origin;
pub mod wasm;

/// One loaded plugin.
pub struct Loaded {
    /// Its name (from the plugin).
    pub name: String,
    /// Its version (from the plugin).
    pub version: String,
    /// The API version it was built against.
    pub api: (u32, u32),
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Its kinds (`metadata`, `origin`).
    pub kinds: Vec<&'static str>,
    /// Its origin table (native plugins with the origin kind); points into the library.
    origin: Option<&'static musicfs_plugin_api::OriginV1>,
    /// Its format table (native plugins with the format kind, API 1.1).
    format: Option<&'static musicfs_plugin_api::FormatV1>,
    code: Code,
}

/// An enricher's entry point.
type Enrich = unsafe extern "C" fn(*const Tag, usize, *const HostV1, Emit, *mut c_void) -> i32;

/// How a plugin runs.
enum Code {
    /// A shared library; `suggest` points into it.
    Native {
        suggest: Option<unsafe extern "C" fn(*const Tag, usize, Emit, *mut c_void) -> i32>,
        enrich: Option<Enrich>,
        // Last: dropped (dlclose) after everything that points into it.
        _lib: libloading::Library,
    },
    /// A WebAssembly module, sandboxed.
    Wasm(wasm::WasmPlugin),
}

impl Loaded {
    /// Whether it suggests tags (the metadata kind, or an enricher).
    pub fn suggests(&self) -> bool {
        self.kinds
            .iter()
            .any(|k| *k == "metadata" || *k == "enricher")
    }

    /// Its suggestions for a track with `tags` (`enriched`: the tags plus the fingerprint,
    /// for enrichers).
    fn suggest(
        &self,
        tags: &[(String, String)],
        raw: &[Tag],
        enriched: &dyn Fn() -> Vec<(String, String)>,
        grants: &Arc<host::Grants>,
    ) -> Result<Vec<(String, String)>> {
        match &self.code {
            Code::Native {
                enrich: Some(enrich),
                ..
            } => {
                let input = enriched();
                let name = self.name.as_str();
                let enrich = *enrich;
                // A thread with no async runtime: the host's HTTP client blocks.
                let (rc, got) = std::thread::scope(|s| {
                    s.spawn(move || {
                        let raw: Vec<Tag> = input
                            .iter()
                            .map(|(k, v)| Tag {
                                key: Str::new(k),
                                value: Str::new(v),
                            })
                            .collect();
                        let call = host::CallHost {
                            grants: grants.as_ref(),
                            plugin: name,
                        };
                        let table = call.table();
                        let mut got: Vec<(String, String)> = Vec::new();
                        // SAFETY: `raw` borrows `input`, `table` points at `call`, and
                        // `collect` is called with `got`: all outlive the call.
                        let rc = unsafe {
                            enrich(
                                raw.as_ptr(),
                                raw.len(),
                                &table,
                                collect,
                                &mut got as *mut Vec<(String, String)> as *mut c_void,
                            )
                        };
                        (rc, got)
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("the plugin call panicked"))
                })?;
                ensure!(rc == OK, "it failed (code {rc})");
                Ok(got)
            }
            Code::Native { suggest: None, .. } => Ok(Vec::new()),
            Code::Native {
                suggest: Some(suggest),
                ..
            } => {
                let mut got: Vec<(String, String)> = Vec::new();
                // SAFETY: `raw` borrows `tags` for the call; `collect` is called with `got`.
                let rc = unsafe {
                    suggest(
                        raw.as_ptr(),
                        raw.len(),
                        collect,
                        &mut got as *mut Vec<(String, String)> as *mut c_void,
                    )
                };
                ensure!(rc == OK, "it failed (code {rc})");
                Ok(got)
            }
            // On a thread of its own at idle priority: a plugin burning its fuel takes only
            // CPU time nothing else wants (the FUSE workers go first).
            // A WASM plugin that may reach the network is an enricher: it gets the
            // fingerprint too (computed only for such plugins).
            Code::Wasm(w) => std::thread::scope(|s| {
                let input = if w.networked() {
                    enriched()
                } else {
                    tags.to_vec()
                };
                s.spawn(move || {
                    wasm::idle_priority();
                    w.suggest(&input, grants, &self.name)
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the plugin call panicked")))
            }),
        }
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The plugins of one process. See the module documentation.
#[derive(Debug, Default)]
pub struct Plugins {
    dir: Option<PathBuf>,
    loaded: RwLock<Vec<Arc<Loaded>>>,
    disabled: RwLock<Vec<(String, String)>>,
    /// Where a stopped plugin is reported (the daemon's event hub).
    events: RwLock<Option<musicfs_core::events::Events>>,
    /// What the operator granted each plugin, and its settings.
    grants: Arc<host::Grants>,
}

/// A file's name for plugin `name`: `name` itself when it names a file, else the usual
/// library name of a crate called `name` or `musicfs-plugin-name`.
fn candidates(name: &str) -> Vec<String> {
    let snake = name.replace('-', "_");
    vec![
        name.to_string(),
        format!("{name}.wasm"),
        format!("{name}.wat"),
        format!("lib{snake}.so"),
        format!("libmusicfs_plugin_{snake}.so"),
    ]
}

/// Refuses what anyone but the daemon's user (or root) could have written.
fn check_owner(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    ensure!(
        meta.uid() == me || meta.uid() == 0,
        "{what} {} belongs to uid {}, not to the daemon's user ({me}) or root: not loaded",
        path.display(),
        meta.uid()
    );
    ensure!(
        meta.permissions().mode() & 0o022 == 0,
        "{what} {} is writable by others (mode {:o}): not loaded",
        path.display(),
        meta.permissions().mode() & 0o7777
    );
    Ok(())
}

impl Plugins {
    /// Plugins loaded from `dir` (none can be without one), granted nothing.
    pub fn new(dir: Option<PathBuf>) -> Plugins {
        Plugins {
            dir,
            loaded: RwLock::default(),
            disabled: RwLock::default(),
            events: RwLock::default(),
            grants: Arc::default(),
        }
    }

    /// Plugins as `cfg` sets them up: its `plugin_dir`, `plugin_grants` and
    /// `plugin_settings` (nothing is loaded yet).
    pub fn configured(cfg: &musicfs_core::config::Config) -> Plugins {
        Plugins {
            grants: Arc::new(host::Grants::new(
                cfg.plugin_grants.clone(),
                cfg.plugin_settings.clone(),
            )),
            ..Plugins::new(Some(cfg.plugin_dir()))
        }
    }

    /// Reports plugins stopped for misbehaving to `events` from now on.
    pub fn report_to(&self, events: musicfs_core::events::Events) {
        *self.events.write().unwrap_or_else(|p| p.into_inner()) = Some(events);
    }

    /// The loaded plugins.
    pub fn list(&self) -> Vec<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where plugin `name` (a file name in the plugin dir, or a plugin's crate name) is.
    fn find(&self, name: &str) -> Result<PathBuf> {
        let dir = self
            .dir
            .as_ref()
            .context("no plugin_dir configured: plugins cannot be loaded")?;
        ensure!(
            !name.contains('/') && !name.starts_with('.'),
            "{name:?}: a plugin is named by its file name in plugin_dir"
        );
        let dir = dir
            .canonicalize()
            .with_context(|| format!("plugin_dir {}", dir.display()))?;
        check_owner(&dir, "plugin_dir")?;
        for c in candidates(name) {
            let path = dir.join(&c);
            if let Ok(real) = path.canonicalize() {
                ensure!(
                    real.parent() == Some(dir.as_path()),
                    "{} resolves outside plugin_dir: not loaded",
                    path.display()
                );
                ensure!(real.is_file(), "{} is not a file", real.display());
                check_owner(&real, "plugin")?;
                return Ok(real);
            }
        }
        bail!("no plugin {name:?} in {}", dir.display())
    }

    /// Loads plugin `name` (see [`Plugins::find`]); a plugin of the same name loaded
    /// before is replaced.
    pub fn load(&self, name: &str) -> Result<Arc<Loaded>> {
        let path = self.find(name)?;
        let loaded = if path.extension().is_some_and(|e| e == "wasm" || e == "wat") {
            let plugin = wasm::WasmPlugin::load(&path)?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Arc::new(Loaded {
                name: stem,
                version: "wasm".into(),
                api: (API_MAJOR, 0),
                path: path.clone(),
                kinds: vec![if plugin.networked() {
                    "enricher"
                } else {
                    "metadata"
                }],
                origin: None,
                format: None,
                code: Code::Wasm(plugin),
            })
        } else {
            self.load_native(&path)?
        };
        let mut all = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        all.retain(|p| p.name != loaded.name);
        musicfs_index::formats::unregister(&loaded.name);
        if let Some(table) = loaded.format {
            // SAFETY: the plugin's static string.
            let exts = unsafe { table.extensions.as_str() }.unwrap_or("");
            let exts: Vec<&str> = exts.split(',').collect();
            let took = musicfs_index::formats::register(
                &exts,
                Arc::new(PluginFormat {
                    plugin: loaded.clone(),
                    table,
                }),
            );
            tracing::info!(plugin = %loaded.name, extensions = ?took, "format plugin reads these files");
        }
        all.push(loaded.clone());
        tracing::info!(plugin = %loaded.name, version = %loaded.version, path = %path.display(), "plugin loaded");
        Ok(loaded)
    }

    /// The native plugin at `path`.
    fn load_native(&self, path: &Path) -> Result<Arc<Loaded>> {
        // SAFETY: loading runs the library's initialisers: only files that passed the
        // ownership checks above, from the directory the operator configured, get here.
        let lib = unsafe { libloading::Library::new(path) }
            .with_context(|| format!("cannot load {}", path.display()))?;
        // SAFETY: the symbol's type is the one the API defines for it.
        let entry: libloading::Symbol<extern "C" fn() -> *const PluginV1> =
            unsafe { lib.get(ENTRY_SYMBOL) }.with_context(|| {
                format!(
                    "{} is not a MusicFS plugin (no musicfs_plugin_v1)",
                    path.display()
                )
            })?;
        let info = entry();
        ensure!(
            !info.is_null(),
            "{}: the plugin returned nothing",
            path.display()
        );
        // SAFETY: the plugin returns a pointer to its static PluginV1.
        let info = unsafe { &*info };
        ensure!(
            info.api_major == API_MAJOR,
            "{} speaks plugin API {}.{}; this daemon speaks {API_MAJOR}.x: not loaded",
            path.display(),
            info.api_major,
            info.api_minor
        );
        ensure!(
            info.size >= PLUGIN_V1_0_SIZE,
            "{}: its plugin record is shorter than API 1.0's",
            path.display()
        );
        // SAFETY: static strings of the plugin.
        let text = |s: Str| unsafe { s.as_str() }.unwrap_or("?").to_string();
        let name_in = text(info.name);
        let metadata: Option<&MetadataV1> = (!info.metadata.is_null()).then(|| {
            // SAFETY: non-null: the plugin's static table.
            unsafe { &*info.metadata }
        });
        let suggest = metadata.map(|m| m.suggest);
        let origin: Option<&'static musicfs_plugin_api::OriginV1> =
            (!info.origin.is_null()).then(|| {
                // SAFETY: non-null: the plugin's static table, valid while the library is
                // loaded, which every user of it keeps (they hold the Loaded).
                unsafe { &*info.origin }
            });
        // The format table exists from API 1.1 on (1.0 plugins leave the field null).
        let format: Option<&'static musicfs_plugin_api::FormatV1> =
            (info.api_minor >= 1 && !info.format.is_null()).then(|| {
                // SAFETY: non-null: the plugin's static table, valid while the library is
                // loaded (the registered reader holds the Loaded).
                unsafe { &*info.format }
            });
        // So is the enricher table, past the end of a 1.0 record.
        let enrich: Option<Enrich> = (info.api_minor >= 1
            && info.size >= std::mem::size_of::<PluginV1>()
            && !info.enrich.is_null())
        .then(|| {
            // SAFETY: non-null, inside the record the plugin says it has: its static table.
            unsafe { (*info.enrich).suggest }
        });
        let mut kinds: Vec<&'static str> = metadata.iter().map(|_| "metadata").collect();
        kinds.extend(enrich.iter().map(|_| "enricher"));
        kinds.extend(origin.iter().map(|_| "origin"));
        kinds.extend(format.iter().map(|_| "format"));
        Ok(Arc::new(Loaded {
            name: name_in,
            version: text(info.version),
            api: (info.api_major, info.api_minor),
            path: path.to_path_buf(),
            kinds,
            origin,
            format,
            code: Code::Native {
                suggest,
                enrich,
                _lib: lib,
            },
        }))
    }

    /// Unloads plugin `name`.
    pub fn unload(&self, name: &str) -> Result<()> {
        let mut all = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        let before = all.len();
        all.retain(|p| p.name != name);
        ensure!(all.len() < before, "no plugin {name:?} is loaded");
        musicfs_index::formats::unregister(name);
        tracing::info!(plugin = name, "plugin unloaded");
        Ok(())
    }

    /// Loads plugin `name` again from its file (a new build).
    pub fn reload(&self, name: &str) -> Result<Arc<Loaded>> {
        let file = self
            .list()
            .into_iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no plugin {name:?} is loaded"))?
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .context("plugin path without a name")?;
        self.unload(name)?;
        self.load(&file)
    }

    /// What the metadata plugins and enrichers suggest for a track with `tags`: (plugin,
    /// field, value), each plugin's in its order. `fingerprint` (asked at most once, and
    /// only when an enricher is loaded) gives the track's Chromaprint fingerprint and
    /// duration in seconds. A native plugin that fails is logged and skipped; a WASM plugin
    /// that fails (trapped, out of fuel or memory) is stopped and unloaded.
    pub fn suggest(
        &self,
        tags: &[(String, String)],
        fingerprint: &dyn Fn() -> Option<(String, u64)>,
    ) -> Vec<(String, String, String)> {
        let printed = std::sync::OnceLock::new();
        let enriched = || {
            let mut all = tags.to_vec();
            if let Some((fp, secs)) = printed.get_or_init(fingerprint) {
                all.push(("fingerprint".to_string(), fp.clone()));
                all.push(("duration_s".to_string(), secs.to_string()));
            }
            all
        };
        let raw: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag {
                key: Str::new(k),
                value: Str::new(v),
            })
            .collect();
        let mut out = Vec::new();
        for p in self.list() {
            match p.suggest(tags, &raw, &enriched, &self.grants) {
                Ok(got) => out.extend(got.into_iter().map(|(k, v)| (p.name.clone(), k, v))),
                Err(e) if matches!(p.code, Code::Wasm(_)) => {
                    tracing::error!(plugin = %p.name, error = %format!("{e:#}"),
                        "WASM plugin stopped (trap, fuel or memory limit): disabled");
                    let mut all = self.loaded.write().unwrap_or_else(|p| p.into_inner());
                    all.retain(|l| !Arc::ptr_eq(l, &p));
                    self.disabled
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((p.name.clone(), format!("{e:#}")));
                    if let Some(events) = &*self.events.read().unwrap_or_else(|p| p.into_inner()) {
                        events.emit(musicfs_core::events::Event::PluginStopped {
                            name: p.name.clone(),
                            reason: format!("{e:#}"),
                        });
                    }
                }
                Err(e) => tracing::warn!(plugin = %p.name, error = %format!("{e:#}"),
                    "metadata plugin failed on a track"),
            }
        }
        out
    }

    /// Opens origin `spec` (`plugin://NAME/ROOT`) with loaded plugin NAME.
    pub fn open_origin(
        &self,
        spec: &musicfs_storage::origin::PluginSpec,
    ) -> std::result::Result<
        Arc<dyn musicfs_storage::origin::Origin>,
        musicfs_storage::origin::OriginError,
    > {
        let whole = musicfs_storage::origin::OriginSpec::Plugin(spec.clone());
        let plugin = self
            .list()
            .into_iter()
            .find(|p| p.name == spec.name)
            .ok_or_else(|| musicfs_storage::origin::OriginError::BadSpec {
                spec: whole.to_string(),
                reason: format!(
                    "no plugin {:?} is loaded (add it to `plugins` in the configuration)",
                    spec.name
                ),
            })?;
        Ok(Arc::new(origin::PluginOrigin::open(&whole, plugin)?))
    }

    /// Plugins stopped for misbehaving since start, with why (newest last).
    pub fn disabled(&self) -> Vec<(String, String)> {
        self.disabled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A format plugin as the scanner's reader (see `musicfs_index::formats`).
struct PluginFormat {
    plugin: Arc<Loaded>,
    table: &'static musicfs_plugin_api::FormatV1,
}

/// What a format plugin's call reads from and writes to.
struct FormatCall<'a> {
    source: &'a dyn musicfs_storage::origin::Source,
    out: Vec<(String, String)>,
    failed: Option<std::io::Error>,
}

/// The host's `read` for a format plugin: a read of the source behind `ctx`.
unsafe extern "C" fn format_read(
    ctx: *mut c_void,
    offset: u64,
    buf: *mut u8,
    len: usize,
    got: *mut usize,
) -> i32 {
    // SAFETY: `ctx` is the FormatCall `PluginFormat::read` passed, alive for the call.
    let call = unsafe { &mut *(ctx as *mut FormatCall<'_>) };
    let buf = if len == 0 {
        &mut [][..]
    } else {
        // SAFETY: the plugin passes `len` writable bytes.
        unsafe { std::slice::from_raw_parts_mut(buf, len) }
    };
    match call.source.read_at(buf, offset) {
        Ok(n) => {
            // SAFETY: the plugin's out parameter.
            unsafe { *got = n };
            OK
        }
        Err(e) => {
            call.failed = Some(e);
            musicfs_plugin_api::FAILED
        }
    }
}

/// The host's `emit` for a format plugin.
unsafe extern "C" fn format_emit(ctx: *mut c_void, tag: Tag) {
    // SAFETY: as in `format_read`.
    let call = unsafe { &mut *(ctx as *mut FormatCall<'_>) };
    // SAFETY: the plugin's strings live for the call.
    if let (Some(k), Some(v)) = unsafe { (tag.key.as_str(), tag.value.as_str()) } {
        call.out.push((k.to_string(), v.to_string()));
    }
}

impl musicfs_index::formats::FormatReader for PluginFormat {
    fn name(&self) -> &str {
        &self.plugin.name
    }

    fn read(
        &self,
        source: &dyn musicfs_storage::origin::Source,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        let mut call = FormatCall {
            source,
            out: Vec::new(),
            failed: None,
        };
        // SAFETY: the table points into the library `self.plugin` keeps loaded; `call`
        // outlives the call and is what both callbacks expect behind `ctx`.
        let rc = unsafe {
            (self.table.read)(
                format_read,
                source.len(),
                format_emit,
                &mut call as *mut FormatCall<'_> as *mut c_void,
            )
        };
        match (rc, call.failed) {
            (OK, _) => Ok(call.out),
            (_, Some(e)) => Err(format!("reading the file failed: {e}")),
            (musicfs_plugin_api::PANICKED, None) => Err("the plugin panicked".into()),
            (rc, None) => Err(format!("the plugin cannot read this file (code {rc})")),
        }
    }
}

/// The host's `emit`: appends to the `Vec<(String, String)>` behind `ctx`.
unsafe extern "C" fn collect(ctx: *mut c_void, tag: Tag) {
    // SAFETY: `ctx` is the Vec `Plugins::suggest` passed; the strings live for the call.
    let out = unsafe { &mut *(ctx as *mut Vec<(String, String)>) };
    if let (Some(k), Some(v)) = unsafe { (tag.key.as_str(), tag.value.as_str()) } {
        out.push((k.to_string(), v.to_string()));
    }
}

/// One track's proposal: `field=value` assignments and the plugins they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// `field=value`, as `musicfs tag set` takes them.
    pub set: Vec<String>,
    /// The plugins that proposed them.
    pub plugins: Vec<String>,
}

/// The proposals of a state dir (`proposals.json`), by track id.
#[derive(Debug)]
pub struct Proposals {
    path: PathBuf,
}

impl Proposals {
    /// The proposals kept in the state dir `state`.
    pub fn at(state: &Path) -> Proposals {
        Proposals {
            path: state.join("proposals.json"),
        }
    }

    /// Every proposal.
    pub fn load(&self) -> Result<BTreeMap<u64, Proposal>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Replaces every proposal (written whole, atomically).
    pub fn store(&self, all: &BTreeMap<u64, Proposal>) -> Result<()> {
        let tmp = self
            .path
            .with_extension(format!("json.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(all)?)?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_are_found_only_inside_plugin_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Plugins::new(Some(dir.path().to_path_buf()));
        assert!(p.find("../x").is_err());
        assert!(p.find(".hidden").is_err());
        let err = p.find("absent").unwrap_err().to_string();
        assert!(err.contains("no plugin"), "{err}");
        // A file others may write is refused.
        let f = dir.path().join("libopen.so");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = format!("{:#}", p.find("open").unwrap_err());
        assert!(err.contains("writable by others"), "{err}");
        // A symlink out of the directory is refused.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("libx.so");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("libout.so")).unwrap();
        let err = format!("{:#}", p.find("out").unwrap_err());
        assert!(err.contains("outside plugin_dir"), "{err}");
        // Not an ELF library: a clear error, no crash.
        let junk = dir.path().join("libjunk.so");
        std::fs::write(&junk, b"not a library").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(p.load("junk").is_err());
        // No plugin_dir: nothing loads.
        assert!(Plugins::new(None).load("x").is_err());
    }

    #[test]
    fn proposals_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = Proposals::at(dir.path());
        assert!(p.load().unwrap().is_empty());
        let mut all = BTreeMap::new();
        all.insert(
            7,
            Proposal {
                set: vec!["title=So What".into()],
                plugins: vec!["titlecase".into()],
            },
        );
        p.store(&all).unwrap();
        assert_eq!(p.load().unwrap(), all);
        std::fs::write(dir.path().join("proposals.json"), b"{").unwrap();
        assert!(p.load().is_err());
    }
}
