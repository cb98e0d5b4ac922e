//! WASM plugins: a core WebAssembly module (`.wasm`, or `.wat` text) run by an interpreter
//! (wasmi) in a sandbox — no filesystem or clock, and the network only as the host grants
//! it (the two imports below; a module importing anything else is refused) — with a
//! fuel budget per call (the time limit: an endless loop runs out of fuel), a memory limit
//! (growing past it traps) and a fresh instance per call (nothing leaks from one track to
//! the next). A plugin that traps, runs out of fuel or exceeds its memory is stopped; the
//! host then unloads it (see `Plugins::suggest`).
//!
//! ABI, version 1 (core module exports):
//! - `memory`: its linear memory;
//! - `musicfs_api_major() -> i32`: 1;
//! - `musicfs_alloc(len: i32) -> i32`: room for `len` bytes of input;
//! - `musicfs_suggest(ptr: i32, len: i32) -> i64`: the track's tags at `ptr` as lines
//!   `field<TAB>value<LF>` (UTF-8; tabs and line feeds in values become spaces); returns
//!   `(out_ptr << 32) | out_len` of its suggestions in the same format, or a negative
//!   number on failure.
//!
//! Imports a plugin may use (module `musicfs`):
//! - `setting(key_ptr, key_len, out_ptr, out_cap: i32) -> i32`: the plugin's setting
//!   (`[plugin_settings.NAME]`) written at `out_ptr`: its length, -1 when unset, -3 when it
//!   does not fit;
//! - `http_get(url_ptr, url_len, out_ptr, out_cap: i32) -> i64`: GETs the URL through the
//!   host (only hosts `[plugin_grants.NAME]` names, paced, the daemon's User-Agent), the
//!   body written at `out_ptr`: `(status << 32) | length`, or -1 (not granted), -2 (failed),
//!   -3 (the body does not fit).
//!
//! Rust here has no wasm32 target, so the module ABI is core WebAssembly rather than the
//! component model; a plugin in any language that compiles to it loads.

use std::path::Path;

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use wasmi::{
    Caller, Config, Engine, Extern, Linker, Module, Store, StoreLimits, StoreLimitsBuilder,
};

use super::host::Grants;

/// What an import answers when the output does not fit the plugin's buffer.
const TOO_SMALL: i32 = -3;

/// Fuel per call (about one per instruction executed).
pub const FUEL: u64 = 200_000_000;
/// The most linear memory a plugin may grow to.
pub const MEMORY: usize = 64 << 20;
/// The most input or output one call moves.
const MAX_IO: usize = 1 << 20;

/// Puts the calling thread in `SCHED_IDLE` (best effort: a plugin call then never takes
/// a core from the FUSE workers).
pub fn idle_priority() {
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid parameter.
    let param = libc::sched_param { sched_priority: 0 };
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "plugin thread keeps its priority");
    }
}

/// A loaded WASM plugin.
pub struct WasmPlugin {
    engine: Engine,
    module: Module,
}

struct Host {
    limits: StoreLimits,
    /// The grants, and the plugin's name (for its grant and settings).
    grants: Arc<Grants>,
    name: String,
}

/// `len` bytes of the caller's memory at `ptr`.
fn read_mem(caller: &Caller<'_, Host>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = caller.get_export("memory").and_then(Extern::into_memory)?;
    let len = usize::try_from(len).ok().filter(|l| *l <= MAX_IO)?;
    let mut buf = vec![0u8; len];
    memory.read(caller, ptr as u32 as usize, &mut buf).ok()?;
    Some(buf)
}

/// Writes `data` at `ptr` of the caller's memory, if it fits in `cap`.
fn write_mem(caller: &mut Caller<'_, Host>, ptr: i32, cap: i32, data: &[u8]) -> bool {
    let Some(memory) = caller.get_export("memory").and_then(Extern::into_memory) else {
        return false;
    };
    usize::try_from(cap).is_ok_and(|c| data.len() <= c)
        && memory.write(caller, ptr as u32 as usize, data).is_ok()
}

/// The host functions a plugin may import.
fn linker(engine: &Engine) -> Result<Linker<Host>> {
    let mut linker = Linker::<Host>::new(engine);
    linker.func_wrap(
        "musicfs",
        "setting",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32, op: i32, oc: i32| -> i32 {
            let Some(key) = read_mem(&caller, kp, kl) else {
                return -1;
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let (grants, name) = (caller.data().grants.clone(), caller.data().name.clone());
            match grants.setting(&name, &key) {
                Some(v) if write_mem(&mut caller, op, oc, v.as_bytes()) => v.len() as i32,
                Some(_) => TOO_SMALL,
                None => -1,
            }
        },
    )?;
    linker.func_wrap(
        "musicfs",
        "http_get",
        |mut caller: Caller<'_, Host>, up: i32, ul: i32, op: i32, oc: i32| -> i64 {
            let Some(url) = read_mem(&caller, up, ul) else {
                return i64::from(musicfs_plugin_api::HOST_FAILED);
            };
            let url = String::from_utf8_lossy(&url).into_owned();
            let (grants, name) = (caller.data().grants.clone(), caller.data().name.clone());
            match grants.get(&name, &url) {
                Ok((status, body)) if write_mem(&mut caller, op, oc, &body) => {
                    (i64::from(status) << 32) | body.len() as i64
                }
                Ok(_) => i64::from(TOO_SMALL),
                Err(code) => i64::from(code),
            }
        },
    )?;
    Ok(linker)
}

impl WasmPlugin {
    /// Whether it imports `musicfs.http_get` (an enricher: it is given the track's
    /// fingerprint as well).
    pub fn networked(&self) -> bool {
        self.module
            .imports()
            .any(|i| i.module() == "musicfs" && i.name() == "http_get")
    }

    /// Compiles the module at `path` and checks its exports.
    pub fn load(path: &Path) -> Result<WasmPlugin> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let wasm = if path.extension().is_some_and(|e| e == "wat") {
            wat::parse_bytes(&bytes)
                .with_context(|| format!("{} is not valid WebAssembly text", path.display()))?
                .into_owned()
        } else {
            bytes
        };
        let mut config = Config::default();
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, &wasm[..])
            .with_context(|| format!("{} is not a valid WebAssembly module", path.display()))?;
        if let Some(other) = module
            .imports()
            .find(|i| i.module() != "musicfs" || !matches!(i.name(), "setting" | "http_get"))
        {
            bail!(
                "{}: imports {}.{}; a plugin may import only musicfs.setting and \
                 musicfs.http_get (it runs sandboxed)",
                path.display(),
                other.module(),
                other.name()
            );
        }
        let plugin = WasmPlugin { engine, module };
        let major = plugin
            .with_instance(&Arc::default(), "", |store, instance| {
                let f = instance
                    .get_typed_func::<(), i32>(&*store, "musicfs_api_major")
                    .context("no musicfs_api_major export")?;
                Ok(f.call(&mut *store, ())?)
            })
            .with_context(|| format!("{} is not a MusicFS plugin", path.display()))?;
        ensure!(
            major == musicfs_plugin_api::API_MAJOR as i32,
            "{} speaks plugin API {major}; this daemon speaks {}.x: not loaded",
            path.display(),
            musicfs_plugin_api::API_MAJOR
        );
        Ok(plugin)
    }

    /// Runs `f` on a fresh instance, with the limits, as plugin `name` with `grants`.
    fn with_instance<R>(
        &self,
        grants: &Arc<Grants>,
        name: &str,
        f: impl FnOnce(&mut Store<Host>, &wasmi::Instance) -> Result<R>,
    ) -> Result<R> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(MEMORY)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let host = Host {
            limits,
            grants: grants.clone(),
            name: name.to_string(),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_fuel(FUEL)?;
        let linker = linker(&self.engine)?;
        let instance = linker.instantiate_and_start(&mut store, &self.module)?;
        f(&mut store, &instance)
    }

    /// What the plugin (named `name`, with `grants`) suggests for `tags` (field, value).
    pub fn suggest(
        &self,
        tags: &[(String, String)],
        grants: &Arc<Grants>,
        name: &str,
    ) -> Result<Vec<(String, String)>> {
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let input: String = tags
            .iter()
            .map(|(k, v)| format!("{}\t{}\n", clean(k), clean(v)))
            .collect();
        ensure!(
            input.len() <= MAX_IO,
            "a track's tags are too large for a plugin call"
        );
        let output = self.with_instance(grants, name, |store, instance| {
            let memory = instance
                .get_memory(&*store, "memory")
                .context("the plugin exports no memory")?;
            let alloc = instance.get_typed_func::<i32, i32>(&*store, "musicfs_alloc")?;
            let suggest = instance.get_typed_func::<(i32, i32), i64>(&*store, "musicfs_suggest")?;
            let ptr = alloc.call(&mut *store, input.len() as i32)?;
            memory
                .write(&mut *store, ptr as u32 as usize, input.as_bytes())
                .context("the plugin's input buffer is out of its memory")?;
            let packed = suggest.call(&mut *store, (ptr, input.len() as i32))?;
            if packed < 0 {
                bail!("the plugin failed (code {packed})");
            }
            let (out, len) = ((packed >> 32) as u32 as usize, packed as u32 as usize);
            ensure!(
                len <= MAX_IO,
                "the plugin's answer is too large ({len} bytes)"
            );
            let mut buf = vec![0u8; len];
            memory
                .read(&*store, out, &mut buf)
                .context("the plugin's answer is out of its memory")?;
            Ok(buf)
        })?;
        let text = String::from_utf8(output).context("the plugin's answer is not UTF-8")?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}
