//! The MusicFS plugin API, version 1: what a native plugin (a shared library in the
//! daemon's `plugin_dir`) exports, as a C ABI so that a plugin built by another compiler
//! version, or in another language, loads.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`] (`musicfs_plugin_v1`), a function taking
//! nothing and returning a pointer to a static [`PluginV1`]. The daemon checks
//! [`PluginV1::api_major`] against [`API_MAJOR`] and refuses another major with a message
//! naming both; a newer minor of the same major only adds fields after the ones a daemon
//! knows (the struct's `size` says how much there is).
//!
//! Kinds, each an optional table in [`PluginV1`]:
//! - **metadata** ([`MetadataV1`]): given a track's tags, suggest tags. The daemon stores
//!   suggestions as proposals that `musicfs tag apply` turns into edits: nothing changes
//!   silently.
//! - **origin** ([`OriginV1`]): serves files the daemon lists, stats and reads, as an
//!   origin named `plugin://NAME/ROOT` (ROOT is the plugin's: an archive's path, a URL).
//! - **enricher** ([`EnrichV1`], since 1.1): the metadata kind with the host's services
//!   ([`HostV1`]: HTTP GET to the hosts the operator granted it, rate limited, and its
//!   settings), given the track's Chromaprint fingerprint; its suggestions are proposals too.
//! - **format** ([`FormatV1`], since 1.1): the extensions of a container the daemon's own
//!   reader does not know, and a tag reader for it; the daemon scans such files with it
//!   and serves their bytes unchanged.
//!
//! Strings cross the boundary as [`Str`] (pointer + length, UTF-8, borrowed for the call);
//! a plugin hands results back through the host's `emit` callback, so no allocation ever
//! crosses it. Calls must not unwind: [`export_plugin!`] catches a panic and reports it as
//! an error code.
//!
//! Writing one in Rust: implement [`Metadata`], [`Origin`] or [`Format`] and call
//! [`export_plugin!`].

use std::ffi::c_void;

/// The API's major version: a plugin built for another one is refused.
pub const API_MAJOR: u32 = 1;
/// The API's minor version: additions that older daemons ignore.
pub const API_MINOR: u32 = 1;
/// The symbol a plugin exports.
pub const ENTRY_SYMBOL: &[u8] = b"musicfs_plugin_v1\0";

/// A borrowed UTF-8 string.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Str {
    /// Its bytes (may be dangling when `len` is 0).
    pub ptr: *const u8,
    /// How many.
    pub len: usize,
}

impl Str {
    /// `s`, borrowed.
    pub fn new(s: &str) -> Str {
        Str {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// The string, when it is UTF-8.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_str<'a>(&self) -> Option<&'a str> {
        if self.len == 0 {
            return Some("");
        }
        // SAFETY: the caller vouches for ptr/len.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        std::str::from_utf8(bytes).ok()
    }
}

/// One tag: a field name (`title`, `artist`, `albumartist`, `album`, `genre`, `composer`,
/// `date`, `year`, `track`, `disc`, ...) and its value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Tag {
    /// The field.
    pub key: Str,
    /// Its value.
    pub value: Str,
}

/// The host's callback for a result: called once per suggested tag.
pub type Emit = unsafe extern "C" fn(ctx: *mut c_void, tag: Tag);

/// Call result: success.
pub const OK: i32 = 0;
/// Call result: the plugin failed (bad input it refuses, an internal error).
pub const FAILED: i32 = 1;
/// Call result: the plugin panicked (caught at the boundary).
pub const PANICKED: i32 = 2;

/// The metadata kind.
#[repr(C)]
pub struct MetadataV1 {
    /// Suggests tags for a track whose tags are `tags[..n]`: calls `emit(ctx, tag)` for
    /// each suggestion (a field and the value it should have). Returns [`OK`] or an error
    /// code.
    pub suggest:
        unsafe extern "C" fn(tags: *const Tag, n: usize, emit: Emit, ctx: *mut c_void) -> i32,
}

/// What a plugin is (see the crate documentation).
#[repr(C)]
pub struct PluginV1 {
    /// `size_of::<PluginV1>()` as the plugin was built: fields past it are absent.
    pub size: usize,
    /// [`API_MAJOR`] the plugin was built against.
    pub api_major: u32,
    /// [`API_MINOR`] the plugin was built against.
    pub api_minor: u32,
    /// Its name (static).
    pub name: Str,
    /// Its version (static).
    pub version: Str,
    /// The metadata kind, or null.
    pub metadata: *const MetadataV1,
    /// The origin kind, or null.
    pub origin: *const OriginV1,
    /// The format kind, or null (API 1.1; a 1.0 plugin has null here).
    pub format: *const FormatV1,
    /// The enricher kind, or null (API 1.1: absent from a 1.0 plugin's shorter record).
    pub enrich: *const EnrichV1,
}

/// The size of API 1.0's [`PluginV1`] (up to and including `format`): the shortest record
/// a daemon of this major accepts.
pub const PLUGIN_V1_0_SIZE: usize = std::mem::offset_of!(PluginV1, enrich);

/// The host's callback for bytes (an HTTP response's body).
pub type EmitBytes = unsafe extern "C" fn(ctx: *mut c_void, bytes: *const u8, len: usize);

/// `http_get`'s answer when the plugin's grants do not name the URL's host.
pub const HOST_DENIED: i32 = -1;
/// `http_get`'s answer when the request failed (no connection, timeout, too large).
pub const HOST_FAILED: i32 = -2;

/// What the host offers a plugin during a call (API 1.1). Network access is granted per
/// plugin by the operator (`[plugin_grants.NAME] hosts = [...]`); the host enforces the
/// grant, the rate limit and the User-Agent, whatever the plugin asks.
#[repr(C)]
pub struct HostV1 {
    /// `size_of::<HostV1>()` as the host was built.
    pub size: usize,
    /// The host's context for the calls below.
    pub ctx: *mut c_void,
    /// GETs `url` (http or https): the body goes to `body(body_ctx, ..)` once; returns the
    /// HTTP status, [`HOST_DENIED`] or [`HOST_FAILED`].
    pub http_get: unsafe extern "C" fn(
        ctx: *mut c_void,
        url: Str,
        body: EmitBytes,
        body_ctx: *mut c_void,
    ) -> i32,
    /// The plugin's setting `key` (`[plugin_settings.NAME]`) through `value(value_ctx, ..)`;
    /// returns 1 when it is set, 0 when not.
    pub setting: unsafe extern "C" fn(
        ctx: *mut c_void,
        key: Str,
        value: EmitStr,
        value_ctx: *mut c_void,
    ) -> i32,
}

/// The enricher kind (API 1.1).
#[repr(C)]
pub struct EnrichV1 {
    /// As [`MetadataV1::suggest`], with the host's services. Beside the shown tags, `tags`
    /// carries `fingerprint` (Chromaprint, compressed and base64url-encoded as AcoustID
    /// takes it) and `duration_s` when the host could compute them.
    pub suggest: unsafe extern "C" fn(
        tags: *const Tag,
        n: usize,
        host: *const HostV1,
        emit: Emit,
        ctx: *mut c_void,
    ) -> i32,
}

/// The host's services, as an enricher written in Rust uses them.
pub struct Host<'a> {
    raw: &'a HostV1,
}

unsafe extern "C" fn collect_bytes(ctx: *mut c_void, bytes: *const u8, len: usize) {
    // SAFETY: ctx is the Vec `Host::get` passed; the host's bytes live for the call.
    let out = unsafe { &mut *(ctx as *mut Vec<u8>) };
    if len > 0 {
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(bytes, len) });
    }
}

unsafe extern "C" fn collect_str(ctx: *mut c_void, s: Str) {
    // SAFETY: ctx is the Option `Host::setting` passed; the host's string lives for the call.
    let out = unsafe { &mut *(ctx as *mut Option<String>) };
    *out = unsafe { s.as_str() }.map(str::to_string);
}

impl Host<'_> {
    /// GETs `url`: the status and body, or why not (not granted, failed).
    pub fn get(&self, url: &str) -> Result<(u16, Vec<u8>), String> {
        let mut body: Vec<u8> = Vec::new();
        // SAFETY: the host's callback and context; `body` outlives the call.
        let rc = unsafe {
            (self.raw.http_get)(
                self.raw.ctx,
                Str::new(url),
                collect_bytes,
                &mut body as *mut Vec<u8> as *mut c_void,
            )
        };
        match rc {
            HOST_DENIED => Err(format!("not granted: {url}")),
            rc if rc < 0 => Err(format!("request failed: {url}")),
            rc => Ok((rc as u16, body)),
        }
    }

    /// The plugin's setting `key`, when the operator set one.
    pub fn setting(&self, key: &str) -> Option<String> {
        let mut out: Option<String> = None;
        // SAFETY: as in `get`.
        let rc = unsafe {
            (self.raw.setting)(
                self.raw.ctx,
                Str::new(key),
                collect_str,
                &mut out as *mut Option<String> as *mut c_void,
            )
        };
        if rc == 1 {
            out
        } else {
            None
        }
    }
}

/// An enricher, written in Rust.
pub trait Enricher {
    /// Suggested tags for a track with `tags` (see [`EnrichV1::suggest`]), using `host`.
    fn suggest(tags: &[(&str, &str)], host: &Host<'_>) -> Result<Vec<(String, String)>, String>;
}

/// Runs [`Enricher::suggest`] of `E` for the C ABI (what [`export_plugin!`] exports).
///
/// # Safety
/// As [`run_suggest`]; `host` must point to a valid [`HostV1`] for the call.
pub unsafe fn run_enrich<E: Enricher>(
    tags: *const Tag,
    n: usize,
    host: *const HostV1,
    emit: Emit,
    ctx: *mut c_void,
) -> i32 {
    std::panic::catch_unwind(|| {
        // SAFETY: the host passes n valid tags and a valid host table.
        let (tags, host) = unsafe {
            (
                if n == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(tags, n)
                },
                &*host,
            )
        };
        let Some(pairs) = tag_pairs(tags) else {
            return FAILED;
        };
        match E::suggest(&pairs, &Host { raw: host }) {
            Ok(out) => {
                emit_tags(emit, ctx, &out);
                OK
            }
            Err(_) => FAILED,
        }
    })
    .unwrap_or(PANICKED)
}

/// The tags as string pairs, or `None` when one is not UTF-8.
fn tag_pairs(tags: &[Tag]) -> Option<Vec<(&str, &str)>> {
    tags.iter()
        // SAFETY: the host's strings live for the call.
        .map(|t| unsafe { Some((t.key.as_str()?, t.value.as_str()?)) })
        .collect()
}

/// Hands `out` to the host, one tag at a time.
fn emit_tags(emit: Emit, ctx: *mut c_void, out: &[(String, String)]) {
    for (k, v) in out {
        let tag = Tag {
            key: Str::new(k),
            value: Str::new(v),
        };
        // SAFETY: the host's callback, with its context.
        unsafe { emit(ctx, tag) };
    }
}

/// The host's callback that reads the file being scanned: up to `len` bytes at `offset`
/// into `buf`, the count into `got` (short only at the end of the file). Returns [`OK`] or
/// [`FAILED`].
pub type ReadAt = unsafe extern "C" fn(
    ctx: *mut c_void,
    offset: u64,
    buf: *mut u8,
    len: usize,
    got: *mut usize,
) -> i32;

/// The format kind (API 1.1).
#[repr(C)]
pub struct FormatV1 {
    /// The extensions it reads, without dots, comma-separated (`wv,wvc`; static).
    pub extensions: Str,
    /// Reads the tags of a file of `len` bytes through `read(ctx, ..)`, calling
    /// `emit(ctx, tag)` per tag: names as in Vorbis comments (`title`, `artist`,
    /// `albumartist`, `album`, `date`, `tracknumber`, `discnumber`, `genre`, `composer`)
    /// and the stream facts `duration_ms`, `sample_rate`, `channels`, `bitrate`.
    /// Returns [`OK`] or an error code (a file it cannot read: [`FAILED`]).
    pub read: unsafe extern "C" fn(read: ReadAt, len: u64, emit: Emit, ctx: *mut c_void) -> i32,
}

// SAFETY: a PluginV1 is static, immutable data (pointers to static strings and tables).
unsafe impl Sync for PluginV1 {}
// SAFETY: as above.
unsafe impl Sync for MetadataV1 {}
// SAFETY: as above.
unsafe impl Sync for OriginV1 {}
// SAFETY: as above.
unsafe impl Sync for FormatV1 {}
// SAFETY: as above.
unsafe impl Sync for EnrichV1 {}

/// The file a [`Format`] plugin is asked to read.
pub struct File {
    read: ReadAt,
    ctx: *mut c_void,
    len: u64,
}

impl File {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads into `buf` at `offset`: how many bytes (short only at the end of the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        let mut got = 0usize;
        // SAFETY: the host's callback with its context; `buf` is writable for its length.
        let rc = unsafe { (self.read)(self.ctx, offset, buf.as_mut_ptr(), buf.len(), &mut got) };
        if rc == OK {
            Ok(got.min(buf.len()))
        } else {
            Err(format!("the host could not read at {offset}"))
        }
    }

    /// Exactly `n` bytes at `offset`, or an error when the file ends first.
    pub fn read_exact_at(&self, offset: u64, n: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; n];
        let got = self.read_at(offset, &mut buf)?;
        if got < n {
            return Err(format!(
                "the file ends at {} (wanted {n} bytes at {offset})",
                offset + got as u64
            ));
        }
        Ok(buf)
    }
}

/// A format plugin, written in Rust.
pub trait Format {
    /// The extensions it reads, without dots, comma-separated (`wv` or `wv,wvc`).
    const EXTENSIONS: &'static str;
    /// The tags and stream facts of `file` (see [`FormatV1::read`] for the names).
    fn read(file: &File) -> Result<Vec<(String, String)>, String>;
}

/// Runs format plugin `F` over `bytes` held in memory, through the C ABI as the daemon
/// calls it: the return code and the tags it emitted. For a plugin's own tests (and
/// fuzzing).
pub fn read_format_bytes<F: Format>(bytes: &[u8]) -> (i32, Vec<(String, String)>) {
    struct Memory<'a> {
        bytes: &'a [u8],
        out: Vec<(String, String)>,
    }
    unsafe extern "C" fn read(
        ctx: *mut c_void,
        offset: u64,
        buf: *mut u8,
        len: usize,
        got: *mut usize,
    ) -> i32 {
        // SAFETY: ctx is the Memory below, alive for the call; buf holds len bytes.
        let m = unsafe { &*(ctx as *const Memory<'_>) };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(m.bytes.len());
        let n = len.min(m.bytes.len() - start);
        // SAFETY: n bytes fit in both.
        unsafe {
            std::ptr::copy_nonoverlapping(m.bytes[start..].as_ptr(), buf, n);
            *got = n;
        }
        OK
    }
    unsafe extern "C" fn emit(ctx: *mut c_void, tag: Tag) {
        // SAFETY: as above; the plugin's strings live for the call.
        let m = unsafe { &mut *(ctx as *mut Memory<'_>) };
        if let (Some(k), Some(v)) = unsafe { (tag.key.as_str(), tag.value.as_str()) } {
            m.out.push((k.to_string(), v.to_string()));
        }
    }
    let mut m = Memory {
        bytes,
        out: Vec::new(),
    };
    let len = bytes.len() as u64;
    // SAFETY: the callbacks above with `m` as their context, alive for the call.
    let rc = unsafe { run_format::<F>(read, len, emit, &mut m as *mut Memory<'_> as *mut c_void) };
    (rc, m.out)
}

/// Runs [`Format::read`] of `F` for the C ABI (what [`export_plugin!`] exports).
///
/// # Safety
/// `read` and `emit` must be safe to call with `ctx` for the call's duration.
pub unsafe fn run_format<F: Format>(read: ReadAt, len: u64, emit: Emit, ctx: *mut c_void) -> i32 {
    std::panic::catch_unwind(|| {
        let file = File { read, ctx, len };
        match F::read(&file) {
            Ok(tags) => {
                emit_tags(emit, ctx, &tags);
                OK
            }
            Err(_) => FAILED,
        }
    })
    .unwrap_or(PANICKED)
}

/// Call result: no such file or directory.
pub const NOT_FOUND: i32 = 3;

/// One name of an origin's directory, or a stat.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The name (in a listing) or the path (in a stat).
    pub name: Str,
    /// 1 for a directory.
    pub is_dir: u8,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// What changes when the file does (a hash, a version): the daemon's change token.
    pub token: Str,
}

/// The host's callback for an entry.
pub type EmitEntry = unsafe extern "C" fn(ctx: *mut c_void, entry: Entry);
/// The host's callback for a message (an error's text).
pub type EmitStr = unsafe extern "C" fn(ctx: *mut c_void, text: Str);

/// The origin kind: an opened origin is an opaque handle the plugin made.
#[repr(C)]
pub struct OriginV1 {
    /// Opens the origin at `root`: a handle, or null with the reason through `err`.
    pub open: unsafe extern "C" fn(root: Str, err: EmitStr, ctx: *mut c_void) -> *mut c_void,
    /// Closes a handle.
    pub close: unsafe extern "C" fn(handle: *mut c_void),
    /// Lists directory `dir` (relative, `/`-separated, empty for the root): `emit` per name.
    pub list: unsafe extern "C" fn(
        handle: *mut c_void,
        dir: Str,
        emit: EmitEntry,
        ctx: *mut c_void,
    ) -> i32,
    /// Stats `path`: `emit` once. [`NOT_FOUND`] when there is nothing.
    pub stat: unsafe extern "C" fn(
        handle: *mut c_void,
        path: Str,
        emit: EmitEntry,
        ctx: *mut c_void,
    ) -> i32,
    /// Reads up to `len` bytes of file `path` at `offset` into `buf`, the count into
    /// `got` (short only at the end of the file).
    pub read: unsafe extern "C" fn(
        handle: *mut c_void,
        path: Str,
        offset: u64,
        buf: *mut u8,
        len: usize,
        got: *mut usize,
    ) -> i32,
}

/// An entry, as an origin plugin written in Rust returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The name (in a listing) or the path (in a stat).
    pub name: String,
    /// A directory.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Changes when the file does.
    pub token: String,
}

/// Why an origin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginError {
    /// No such file or directory.
    NotFound,
    /// Anything else.
    Failed(String),
}

/// An origin plugin, written in Rust.
pub trait Origin: Sized + Send + Sync {
    /// Opens the origin at `root`.
    fn open(root: &str) -> Result<Self, String>;
    /// The names in directory `dir` (empty: the root).
    fn list(&self, dir: &str) -> Result<Vec<EntryInfo>, OriginError>;
    /// `path`'s entry.
    fn stat(&self, path: &str) -> Result<EntryInfo, OriginError>;
    /// Reads file `path` at `offset` into `buf`; how much (short only at its end).
    fn read(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, OriginError>;
}

fn code(e: &OriginError) -> i32 {
    match e {
        OriginError::NotFound => NOT_FOUND,
        OriginError::Failed(_) => FAILED,
    }
}

fn emit_entry(emit: EmitEntry, ctx: *mut c_void, e: &EntryInfo) {
    let entry = Entry {
        name: Str::new(&e.name),
        is_dir: u8::from(e.is_dir),
        size: e.size,
        mtime_ns: e.mtime_ns,
        token: Str::new(&e.token),
    };
    // SAFETY: the host's callback with its context; the strings live for the call.
    unsafe { emit(ctx, entry) };
}

/// [`Origin::open`] for the C ABI.
///
/// # Safety
/// `root` must be valid for the call; `err` safe to call with `ctx`.
pub unsafe fn run_open<O: Origin>(root: Str, err: EmitStr, ctx: *mut c_void) -> *mut c_void {
    let opened = std::panic::catch_unwind(|| {
        // SAFETY: the host's string lives for the call.
        let root = unsafe { root.as_str() }.ok_or_else(|| "root is not UTF-8".to_string())?;
        O::open(root)
    });
    match opened {
        Ok(Ok(o)) => Box::into_raw(Box::new(o)).cast(),
        Ok(Err(why)) => {
            // SAFETY: the host's callback.
            unsafe { err(ctx, Str::new(&why)) };
            std::ptr::null_mut()
        }
        Err(_) => {
            // SAFETY: the host's callback.
            unsafe { err(ctx, Str::new("the plugin panicked")) };
            std::ptr::null_mut()
        }
    }
}

/// [`Origin`]'s handle dropped, for the C ABI.
///
/// # Safety
/// `h` must come from [`run_open`] with the same `O`, and not be used after.
pub unsafe fn run_close<O: Origin>(h: *mut c_void) {
    if !h.is_null() {
        // SAFETY: made by Box::into_raw in run_open.
        drop(unsafe { Box::from_raw(h.cast::<O>()) });
    }
}

/// [`Origin::list`] for the C ABI.
///
/// # Safety
/// `h` from [`run_open`] with `O`; `dir` valid for the call; `emit` safe with `ctx`.
pub unsafe fn run_list<O: Origin>(
    h: *mut c_void,
    dir: Str,
    emit: EmitEntry,
    ctx: *mut c_void,
) -> i32 {
    std::panic::catch_unwind(|| {
        // SAFETY: a live handle of O; the host's string.
        let (o, dir) = unsafe { (&*h.cast::<O>(), dir.as_str()) };
        let Some(dir) = dir else { return FAILED };
        match o.list(dir) {
            Ok(entries) => {
                for e in &entries {
                    emit_entry(emit, ctx, e);
                }
                OK
            }
            Err(e) => code(&e),
        }
    })
    .unwrap_or(PANICKED)
}

/// [`Origin::stat`] for the C ABI.
///
/// # Safety
/// As [`run_list`].
pub unsafe fn run_stat<O: Origin>(
    h: *mut c_void,
    path: Str,
    emit: EmitEntry,
    ctx: *mut c_void,
) -> i32 {
    std::panic::catch_unwind(|| {
        // SAFETY: a live handle of O; the host's string.
        let (o, path) = unsafe { (&*h.cast::<O>(), path.as_str()) };
        let Some(path) = path else { return FAILED };
        match o.stat(path) {
            Ok(e) => {
                emit_entry(emit, ctx, &e);
                OK
            }
            Err(e) => code(&e),
        }
    })
    .unwrap_or(PANICKED)
}

/// [`Origin::read`] for the C ABI.
///
/// # Safety
/// As [`run_list`]; `buf` must hold `len` writable bytes and `got` be writable.
pub unsafe fn run_read<O: Origin>(
    h: *mut c_void,
    path: Str,
    offset: u64,
    buf: *mut u8,
    len: usize,
    got: *mut usize,
) -> i32 {
    std::panic::catch_unwind(|| {
        // SAFETY: a live handle of O; the host's string and buffer.
        let (o, path) = unsafe { (&*h.cast::<O>(), path.as_str()) };
        let Some(path) = path else { return FAILED };
        let buf = if len == 0 {
            &mut [][..]
        } else {
            // SAFETY: the host passes len writable bytes.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        match o.read(path, offset, buf) {
            Ok(n) => {
                // SAFETY: the host's out parameter.
                unsafe { *got = n.min(len) };
                OK
            }
            Err(e) => code(&e),
        }
    })
    .unwrap_or(PANICKED)
}

/// A metadata plugin, written in Rust.
pub trait Metadata {
    /// Suggested tags (field, value) for a track with `tags`. Suggest only what should
    /// change; the host drops suggestions equal to what is shown.
    fn suggest(tags: &[(&str, &str)]) -> Result<Vec<(String, String)>, String>;
}

/// Runs [`Metadata::suggest`] of `M` for the C ABI (what [`export_plugin!`] exports).
///
/// # Safety
/// `tags` must point to `n` valid [`Tag`]s whose strings live for the call; `emit` must be
/// safe to call with `ctx`.
pub unsafe fn run_suggest<M: Metadata>(
    tags: *const Tag,
    n: usize,
    emit: Emit,
    ctx: *mut c_void,
) -> i32 {
    let outcome = std::panic::catch_unwind(|| {
        let tags = if n == 0 {
            &[][..]
        } else {
            // SAFETY: the host passes n valid tags.
            unsafe { std::slice::from_raw_parts(tags, n) }
        };
        let Some(pairs) = tag_pairs(tags) else {
            return FAILED;
        };
        match M::suggest(&pairs) {
            Ok(out) => {
                emit_tags(emit, ctx, &out);
                OK
            }
            Err(_) => FAILED,
        }
    });
    outcome.unwrap_or(PANICKED)
}

/// Exports a plugin: `export_plugin!(name = "titlecase", version = "1.0.0", metadata = T);`
/// where `T: Metadata`, `export_plugin!(name = "tar", version = "1.0.0", origin = T);`
/// where `T: Origin`, or `export_plugin!(name = "wavpack", version = "1.0.0", format = T);`
/// where `T: Format`.
#[macro_export]
macro_rules! export_plugin {
    (name = $name:literal, version = $version:literal, origin = $origin:ty) => {
        unsafe extern "C" fn __musicfs_open(
            root: $crate::Str,
            err: $crate::EmitStr,
            ctx: *mut ::std::ffi::c_void,
        ) -> *mut ::std::ffi::c_void {
            // SAFETY: forwarded from the host.
            unsafe { $crate::run_open::<$origin>(root, err, ctx) }
        }
        unsafe extern "C" fn __musicfs_close(h: *mut ::std::ffi::c_void) {
            // SAFETY: forwarded from the host.
            unsafe { $crate::run_close::<$origin>(h) }
        }
        unsafe extern "C" fn __musicfs_list(
            h: *mut ::std::ffi::c_void,
            dir: $crate::Str,
            emit: $crate::EmitEntry,
            ctx: *mut ::std::ffi::c_void,
        ) -> i32 {
            // SAFETY: forwarded from the host.
            unsafe { $crate::run_list::<$origin>(h, dir, emit, ctx) }
        }
        unsafe extern "C" fn __musicfs_stat(
            h: *mut ::std::ffi::c_void,
            path: $crate::Str,
            emit: $crate::EmitEntry,
            ctx: *mut ::std::ffi::c_void,
        ) -> i32 {
            // SAFETY: forwarded from the host.
            unsafe { $crate::run_stat::<$origin>(h, path, emit, ctx) }
        }
        unsafe extern "C" fn __musicfs_read(
            h: *mut ::std::ffi::c_void,
            path: $crate::Str,
            offset: u64,
            buf: *mut u8,
            len: usize,
            got: *mut usize,
        ) -> i32 {
            // SAFETY: forwarded from the host.
            unsafe { $crate::run_read::<$origin>(h, path, offset, buf, len, got) }
        }
        static __MUSICFS_ORIGIN: $crate::OriginV1 = $crate::OriginV1 {
            open: __musicfs_open,
            close: __musicfs_close,
            list: __musicfs_list,
            stat: __musicfs_stat,
            read: __musicfs_read,
        };
        $crate::export_plugin!(@record $name, $version, ::std::ptr::null(), &__MUSICFS_ORIGIN, ::std::ptr::null(), ::std::ptr::null());
    };
    (name = $name:literal, version = $version:literal, format = $format:ty) => {
        unsafe extern "C" fn __musicfs_read_format(
            read: $crate::ReadAt,
            len: u64,
            emit: $crate::Emit,
            ctx: *mut ::std::ffi::c_void,
        ) -> i32 {
            // SAFETY: forwarded from the host, which upholds run_format's contract.
            unsafe { $crate::run_format::<$format>(read, len, emit, ctx) }
        }
        const __MUSICFS_EXT: &str = <$format as $crate::Format>::EXTENSIONS;
        static __MUSICFS_FORMAT: $crate::FormatV1 = $crate::FormatV1 {
            extensions: $crate::Str {
                ptr: __MUSICFS_EXT.as_ptr(),
                len: __MUSICFS_EXT.len(),
            },
            read: __musicfs_read_format,
        };
        $crate::export_plugin!(@record $name, $version, ::std::ptr::null(), ::std::ptr::null(), &__MUSICFS_FORMAT, ::std::ptr::null());
    };
    (name = $name:literal, version = $version:literal, metadata = $meta:ty) => {
        unsafe extern "C" fn __musicfs_suggest(
            tags: *const $crate::Tag,
            n: usize,
            emit: $crate::Emit,
            ctx: *mut ::std::ffi::c_void,
        ) -> i32 {
            // SAFETY: forwarded from the host, which upholds run_suggest's contract.
            unsafe { $crate::run_suggest::<$meta>(tags, n, emit, ctx) }
        }
        static __MUSICFS_METADATA: $crate::MetadataV1 = $crate::MetadataV1 {
            suggest: __musicfs_suggest,
        };
        $crate::export_plugin!(@record $name, $version, &__MUSICFS_METADATA, ::std::ptr::null(), ::std::ptr::null(), ::std::ptr::null());
    };
    (name = $name:literal, version = $version:literal, enricher = $enricher:ty) => {
        unsafe extern "C" fn __musicfs_enrich(
            tags: *const $crate::Tag,
            n: usize,
            host: *const $crate::HostV1,
            emit: $crate::Emit,
            ctx: *mut ::std::ffi::c_void,
        ) -> i32 {
            // SAFETY: forwarded from the host, which upholds run_enrich's contract.
            unsafe { $crate::run_enrich::<$enricher>(tags, n, host, emit, ctx) }
        }
        static __MUSICFS_ENRICH: $crate::EnrichV1 = $crate::EnrichV1 {
            suggest: __musicfs_enrich,
        };
        $crate::export_plugin!(@record $name, $version, ::std::ptr::null(), ::std::ptr::null(), ::std::ptr::null(), &__MUSICFS_ENRICH);
    };
    (@record $name:literal, $version:literal, $metadata:expr, $origin:expr, $format:expr, $enrich:expr) => {
        static __MUSICFS_PLUGIN: $crate::PluginV1 = $crate::PluginV1 {
            size: ::std::mem::size_of::<$crate::PluginV1>(),
            api_major: $crate::API_MAJOR,
            api_minor: $crate::API_MINOR,
            name: $crate::Str {
                ptr: $name.as_ptr(),
                len: $name.len(),
            },
            version: $crate::Str {
                ptr: $version.as_ptr(),
                len: $version.len(),
            },
            metadata: $metadata,
            origin: $origin,
            format: $format,
            enrich: $enrich,
        };
        /// The plugin's entry point.
        #[no_mangle]
        pub extern "C" fn musicfs_plugin_v1() -> *const $crate::PluginV1 {
            &__MUSICFS_PLUGIN
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper;
    impl Metadata for Upper {
        fn suggest(tags: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
            if tags.iter().any(|(k, _)| *k == "boom") {
                panic!("asked to");
            }
            Ok(tags
                .iter()
                .filter(|(k, _)| *k == "title")
                .map(|(k, v)| (k.to_string(), v.to_uppercase()))
                .collect())
        }
    }

    unsafe extern "C" fn collect(ctx: *mut c_void, tag: Tag) {
        // SAFETY: ctx is the Vec below; the strings live for the call.
        let out = unsafe { &mut *(ctx as *mut Vec<(String, String)>) };
        let (k, v) = unsafe { (tag.key.as_str().unwrap(), tag.value.as_str().unwrap()) };
        out.push((k.into(), v.into()));
    }

    #[test]
    fn suggestions_cross_the_c_abi_and_panics_do_not() {
        let tags = [
            Tag {
                key: Str::new("title"),
                value: Str::new("so what"),
            },
            Tag {
                key: Str::new("artist"),
                value: Str::new("Davis"),
            },
        ];
        let mut out: Vec<(String, String)> = Vec::new();
        let rc = unsafe {
            run_suggest::<Upper>(
                tags.as_ptr(),
                tags.len(),
                collect,
                &mut out as *mut _ as *mut c_void,
            )
        };
        assert_eq!(rc, OK);
        assert_eq!(out, [("title".to_string(), "SO WHAT".to_string())]);
        let boom = [Tag {
            key: Str::new("boom"),
            value: Str::new(""),
        }];
        let rc = unsafe {
            run_suggest::<Upper>(boom.as_ptr(), 1, collect, &mut out as *mut _ as *mut c_void)
        };
        assert_eq!(rc, PANICKED);
    }
}
