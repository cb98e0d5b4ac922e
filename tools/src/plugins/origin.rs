//! An origin served by a plugin (`plugin://NAME/ROOT`): the storage crate's `Origin` over
//! the plugin's [`OriginV1`] table. It is read like a network origin: polled for changes,
//! read through the chunk cache, change tokens from the plugin.

use std::ffi::{c_void, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use musicfs_plugin_api::{Entry, OriginV1, Str, NOT_FOUND, OK};
use musicfs_storage::origin::{
    ChangeDetection, ChangeToken, Entry as OriginEntry, EntryKind, Health, Listed, Offline, Origin,
    OriginError, OriginSpec, RootIdentity, Source, Stat,
};

use super::Loaded;

/// See the module documentation.
pub struct PluginOrigin {
    spec: OriginSpec,
    key: OsString,
    shown: String,
    opened: Arc<Opened>,
}

/// An origin the plugin opened: closed when the origin and its last open file are gone.
struct Opened {
    /// Points into the library `plugin` holds.
    table: &'static OriginV1,
    handle: Handle,
    plugin: Arc<Loaded>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: the handle `open` made, closed once, while the library is loaded.
        unsafe { (self.table.close)(self.handle.0) };
    }
}

/// The plugin's handle of an opened origin.
struct Handle(*mut c_void);
// SAFETY: the origin API is called from any thread (the plugin contract: its handle is
// Send + Sync, as `Origin` requires of a Rust plugin).
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl std::fmt::Debug for PluginOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginOrigin")
            .field("spec", &self.shown)
            .field("plugin", &self.opened.plugin.name)
            .finish_non_exhaustive()
    }
}

unsafe extern "C" fn push_text(ctx: *mut c_void, text: Str) {
    // SAFETY: ctx is the String `open` passed; the text lives for the call.
    let out = unsafe { &mut *(ctx as *mut String) };
    out.push_str(unsafe { text.as_str() }.unwrap_or("?"));
}

/// An entry as the host keeps it: (name, is_dir, size, mtime, token).
type Got = (Vec<u8>, bool, u64, i64, String);

unsafe extern "C" fn push_entry(ctx: *mut c_void, e: Entry) {
    // SAFETY: ctx is the Vec the call passed; the strings live for the call.
    let out = unsafe { &mut *(ctx as *mut Vec<Got>) };
    let name = if e.name.len == 0 {
        Vec::new()
    } else {
        // SAFETY: the plugin's string, valid for the call.
        unsafe { std::slice::from_raw_parts(e.name.ptr, e.name.len) }.to_vec()
    };
    let token = unsafe { e.token.as_str() }.unwrap_or("").to_string();
    out.push((name, e.is_dir != 0, e.size, e.mtime_ns, token));
}

fn stat_of(g: &Got) -> Stat {
    Stat {
        kind: if g.1 { EntryKind::Dir } else { EntryKind::File },
        size: g.2,
        mtime_ns: g.3,
        mode: None,
        uid: None,
        gid: None,
        token: ChangeToken::ETag(g.4.clone()),
    }
}

fn rel_str(rel: &Path) -> String {
    rel.to_string_lossy().trim_matches('/').to_string()
}

impl PluginOrigin {
    /// Opens `spec` (`plugin://NAME/ROOT`) with `plugin`, which has the origin kind.
    pub fn open(spec: &OriginSpec, plugin: Arc<Loaded>) -> Result<PluginOrigin, OriginError> {
        let shown = spec.to_string();
        let OriginSpec::Plugin(p) = spec else {
            return Err(OriginError::BadSpec {
                spec: shown,
                reason: "not a plugin:// origin".into(),
            });
        };
        let table = plugin.origin.ok_or_else(|| OriginError::BadSpec {
            spec: shown.clone(),
            reason: format!("plugin {} serves no origins", plugin.name),
        })?;
        let mut why = String::new();
        // SAFETY: the plugin's table; `root` lives for the call; push_text with `why`.
        let handle = unsafe {
            (table.open)(
                Str::new(&p.root),
                push_text,
                &mut why as *mut String as *mut c_void,
            )
        };
        if handle.is_null() {
            return Err(OriginError::BadSpec {
                spec: shown,
                reason: format!("plugin {} cannot open it: {why}", plugin.name),
            });
        }
        Ok(PluginOrigin {
            key: spec.key(),
            spec: spec.clone(),
            shown,
            opened: Arc::new(Opened {
                table,
                handle: Handle(handle),
                plugin,
            }),
        })
    }

    fn failed(&self, op: &'static str, rel: &Path, code: i32) -> OriginError {
        let source = if code == NOT_FOUND {
            io::Error::from_raw_os_error(libc::ENOENT)
        } else {
            io::Error::other(format!(
                "plugin {} failed (code {code})",
                self.opened.plugin.name
            ))
        };
        if code == NOT_FOUND {
            return OriginError::Vanished {
                origin: self.shown.clone(),
                rel: rel.to_path_buf(),
                source,
            };
        }
        OriginError::Io {
            origin: self.shown.clone(),
            op,
            rel: rel.to_path_buf(),
            source,
        }
    }

    fn call_entries(
        &self,
        rel: &Path,
        op: &'static str,
        f: unsafe extern "C" fn(
            *mut c_void,
            Str,
            musicfs_plugin_api::EmitEntry,
            *mut c_void,
        ) -> i32,
    ) -> Result<Vec<Got>, OriginError> {
        let path = rel_str(rel);
        let mut got: Vec<Got> = Vec::new();
        // SAFETY: our live handle; `path` lives for the call; push_entry with `got`.
        let rc = unsafe {
            f(
                self.opened.handle.0,
                Str::new(&path),
                push_entry,
                &mut got as *mut Vec<Got> as *mut c_void,
            )
        };
        if rc != OK {
            return Err(self.failed(op, rel, rc));
        }
        Ok(got)
    }
}

impl Origin for PluginOrigin {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    fn key(&self) -> &OsStr {
        &self.key
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        for g in self.call_entries(dir, "list", self.opened.table.list)? {
            each(Listed::Entry(OriginEntry {
                name: OsStr::from_bytes(&g.0).to_os_string(),
                via_symlink: false,
                stat: stat_of(&g),
            }));
        }
        Ok(())
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        let got = self.call_entries(rel, "stat", self.opened.table.stat)?;
        got.first()
            .map(stat_of)
            .ok_or_else(|| self.failed("stat", rel, NOT_FOUND))
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        let stat = self.stat(rel)?;
        if stat.kind != EntryKind::File {
            return Err(OriginError::NotAFile {
                origin: self.shown.clone(),
                rel: rel.to_path_buf(),
            });
        }
        Ok(Arc::new(PluginSource {
            opened: self.opened.clone(),
            path: rel_str(rel),
            len: stat.size,
            token: stat.token,
            mtime_ns: stat.mtime_ns,
        }))
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, _recorded: Option<&RootIdentity>) -> Health {
        match self.call_entries(Path::new(""), "list", self.opened.table.list) {
            Ok(_) => Health::Up,
            Err(e) => Health::Offline(Offline::Unreadable {
                reason: e.to_string(),
            }),
        }
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        None
    }
}

/// An open file of a [`PluginOrigin`] (it keeps the plugin's origin open).
pub struct PluginSource {
    opened: Arc<Opened>,
    path: String,
    len: u64,
    token: ChangeToken,
    mtime_ns: i64,
}

impl std::fmt::Debug for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSource")
            .field("path", &self.path)
            .field("plugin", &self.opened.plugin.name)
            .finish_non_exhaustive()
    }
}

impl Source for PluginSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let origin = &self.opened;
        let mut done = 0usize;
        while done < buf.len() {
            let mut got = 0usize;
            // SAFETY: our live handle, a buffer of the length given, `got` writable.
            let rc = unsafe {
                (origin.table.read)(
                    origin.handle.0,
                    Str::new(&self.path),
                    offset + done as u64,
                    buf[done..].as_mut_ptr(),
                    buf.len() - done,
                    &mut got,
                )
            };
            if rc != OK {
                return Err(io::Error::other(format!(
                    "plugin {} could not read {} (code {rc})",
                    origin.plugin.name, self.path
                )));
            }
            if got == 0 {
                break;
            }
            done += got;
        }
        Ok(done)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn token(&self) -> Option<ChangeToken> {
        Some(self.token.clone())
    }

    fn mtime_ns(&self) -> Option<i64> {
        Some(self.mtime_ns)
    }
}
