//! The S3 driver: a bucket (and key prefix) of an S3-compatible object store as an origin.
//!
//! Requests are made with object_store's S3 client (signing, XML, paging) over an HTTP
//! layer of ours (module `http`: ranged GETs answered `200`, retryable statuses, traffic),
//! and every one of them goes through the origin's [`Remote::call`]: on the origin runtime,
//! with the origin's deadline, retries and concurrency limit (object_store's own retries
//! are off). The driver only ever sends `GET`, `HEAD` and list requests: there is no code
//! here that could write to or delete from the bucket. (The shared chunk tier, [`tier`],
//! uses the same client set-up and is the one writer, to its own bucket.)
//!
//! - [`Origin::list`]: one delimiter listing (`PREFIX/DIR/`, page by page): common prefixes
//!   are directories, objects are files with their size, last-modified time as mtime, and
//!   [`ChangeToken::ETag`].
//! - [`Origin::stat`]: `HEAD` of the key; failing that, a key prefix with anything under it
//!   is a directory.
//! - [`Origin::open`]: a [`Source`] whose [`Source::read_at`] is a ranged `GET` of exactly
//!   the asked bytes (repeated until filled or at the end of the object).
//! - [`Origin::probe`]: a listing of at most one key.

mod creds;
mod http;
pub mod tier;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as Key;
use object_store::{BackoffConfig, GetOptions, GetRange, ListResult, ObjectStore, RetryConfig};

use super::remote::{Attempt, Remote};
use super::{
    check_rel, ChangeDetection, ChangeToken, Entry, EntryKind, Health, Listed, Offline, Origin,
    OriginError, OriginSettings, OriginSpec, RootIdentity, S3Spec, Source, Stat,
};

/// Keys per listing page (S3's largest).
const PAGE: usize = 1000;

/// An S3 bucket, or the part of it under a key prefix. See the module documentation.
pub struct S3Origin {
    spec: OriginSpec,
    key: OsString,
    /// The display form (no credentials), for messages.
    shown: String,
    /// The key prefix, with its trailing `/` (empty for the whole bucket).
    prefix: String,
    store: AmazonS3,
    remote: Arc<Remote>,
    shared: Arc<http::Shared>,
}

impl std::fmt::Debug for S3Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The store holds the credentials: it is left out.
        f.debug_struct("S3Origin")
            .field("spec", &self.shown)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl S3Origin {
    /// Opens the S3 origin `spec` names, without contacting the server. Fails on a bad
    /// endpoint and when no credentials can be found (see module `creds`).
    pub fn open(spec: &OriginSpec, settings: &OriginSettings) -> Result<S3Origin, OriginError> {
        let Connected {
            store,
            remote,
            shared,
            prefix,
            shown,
        } = connect(spec, settings)?;
        Ok(S3Origin {
            spec: spec.clone(),
            key: spec.key(),
            shown,
            prefix,
            store,
            remote,
            shared,
        })
    }
}

/// A client of the bucket an `s3://` spec names.
struct Connected {
    store: AmazonS3,
    remote: Arc<Remote>,
    shared: Arc<http::Shared>,
    /// The key prefix, with its trailing `/` (empty for the whole bucket).
    prefix: String,
    /// The display form (no credentials).
    shown: String,
}

/// Sets up a client of the bucket `spec` names, without contacting the server.
fn connect(spec: &OriginSpec, settings: &OriginSettings) -> Result<Connected, OriginError> {
    {
        let shown = spec.to_string();
        let OriginSpec::S3(s3) = spec else {
            return Err(OriginError::BadSpec {
                spec: shown,
                reason: "not an s3:// origin".into(),
            });
        };
        let bad = |reason: String| OriginError::BadSpec {
            spec: shown.clone(),
            reason,
        };
        let endpoint = s3
            .endpoint
            .as_deref()
            .map(parse_endpoint)
            .transpose()
            .map_err(&bad)?;
        let creds = creds::resolve(s3, settings, &creds::Env::process()).map_err(|reason| {
            OriginError::Io {
                origin: shown.clone(),
                op: "find credentials for",
                rel: PathBuf::new(),
                source: io::Error::new(io::ErrorKind::PermissionDenied, reason),
            }
        })?;
        tracing::debug!(origin = %shown, from = %creds.from, "S3 credentials");
        let remote = Arc::new(Remote::new(settings.remote));
        let shared = Arc::new(http::Shared {
            origin: shown.clone(),
            remote: remote.clone(),
            warned: AtomicBool::new(false),
        });
        let store = build_store(s3, endpoint, &creds, &shared).map_err(&bad)?;
        let prefix = match s3.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(Connected {
            store,
            remote,
            shared,
            prefix,
            shown,
        })
    }
}

impl S3Origin {
    /// Whether the server was found ignoring `Range` (and the warning given).
    pub fn ignores_range(&self) -> bool {
        self.shared
            .warned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The origin's calling discipline and traffic counters.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The object key of `rel` (relative, checked).
    fn key_of(&self, rel: &Path) -> Result<String, OriginError> {
        check_rel(self, rel)?;
        let mut key = self.prefix.clone();
        let mut first = true;
        for c in rel.components() {
            let Component::Normal(part) = c else { continue };
            let Some(part) = part.to_str() else {
                // Object keys are UTF-8: no such object can exist.
                return Err(self.vanished(rel, io::Error::from_raw_os_error(libc::ENOENT)));
            };
            if !first {
                key.push('/');
            }
            key.push_str(part);
            first = false;
        }
        Ok(key)
    }

    fn vanished(&self, rel: &Path, source: io::Error) -> OriginError {
        OriginError::Vanished {
            origin: self.shown.clone(),
            rel: rel.to_path_buf(),
            source,
        }
    }

    fn failed(&self, op: &'static str, rel: &Path, e: io::Error) -> OriginError {
        if e.raw_os_error() == Some(libc::ENOENT) {
            return self.vanished(rel, e);
        }
        OriginError::Io {
            origin: self.shown.clone(),
            op,
            rel: rel.to_path_buf(),
            source: e,
        }
    }

    /// One page of the delimiter listing of `prefix` (ending in `/`, or empty).
    fn list_page(
        &self,
        prefix: &str,
        max_keys: usize,
        page_token: Option<String>,
    ) -> io::Result<(ListResult, Option<String>)> {
        let what = format!("LIST {}/{prefix}", self.bucket());
        self.remote.call(&what, || {
            let opts = PaginatedListOptions {
                delimiter: Some("/".into()),
                max_keys: Some(max_keys),
                page_token: page_token.clone(),
                ..Default::default()
            };
            let prefix = (!prefix.is_empty()).then_some(prefix);
            async move {
                let page = self
                    .store
                    .list_paginated(prefix, opts)
                    .await
                    .map_err(classify)?;
                Ok((page.result, page.page_token))
            }
        })
    }

    fn bucket(&self) -> &str {
        match &self.spec {
            OriginSpec::S3(s3) => &s3.bucket,
            _ => "",
        }
    }

    /// `HEAD` of `key`: its stat, or `ENOENT`.
    fn head(&self, key: &str) -> io::Result<Stat> {
        let path = object_key(key)?;
        let meta = self
            .remote
            .call(&format!("HEAD {}/{key}", self.bucket()), || async {
                let head = GetOptions::new().with_head(true);
                let got = self.store.get_opts(&path, head).await.map_err(classify)?;
                Ok(got.meta)
            })?;
        Ok(file_stat(&meta))
    }
}

fn parse_endpoint(endpoint: &str) -> Result<::http::Uri, String> {
    let uri: ::http::Uri = endpoint
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "endpoint {endpoint:?} must start with http:// or https://"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("endpoint {endpoint:?} names no host"));
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "endpoint {endpoint:?} must be scheme://host[:port] without a path"
        ));
    }
    Ok(uri)
}

fn build_store(
    s3: &S3Spec,
    endpoint: Option<::http::Uri>,
    creds: &creds::Credentials,
    shared: &Arc<http::Shared>,
) -> Result<AmazonS3, String> {
    // reqwest is built without a default TLS crypto provider; this process uses ring's.
    // Another part of the process may have installed one first: that one is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = shared.remote.options().timeout;
    let client = reqwest::Client::builder()
        .connect_timeout(timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
        .with_access_key_id(creds.key_id.expose())
        .with_secret_access_key(creds.secret.expose())
        .with_virtual_hosted_style_request(!s3.path_style)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: timeout,
        })
        .with_http_connector(http::Connector {
            client,
            shared: shared.clone(),
        });
    if let Some(token) = &creds.token {
        builder = builder.with_token(token.expose());
    }
    if let Some(uri) = endpoint {
        let scheme = uri.scheme_str().unwrap_or("https");
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        // object_store takes a virtual-hosted endpoint with the bucket already in it.
        let endpoint = match s3.path_style {
            true => format!("{scheme}://{authority}"),
            false => format!("{scheme}://{}.{authority}", s3.bucket),
        };
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(scheme == "http");
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the S3 client: {e}"))
}

/// The object_store key of a full object key. Keys object_store cannot name (empty
/// segments, `.` or `..` segments, control characters) are treated as absent.
fn object_key(key: &str) -> io::Result<Key> {
    Key::parse(key).map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))
}

fn file_stat(meta: &object_store::ObjectMeta) -> Stat {
    Stat {
        kind: EntryKind::File,
        size: meta.size,
        mtime_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
        mode: None,
        uid: None,
        gid: None,
        token: ChangeToken::ETag(meta.e_tag.clone().unwrap_or_default()),
    }
}

fn dir_stat() -> Stat {
    Stat {
        kind: EntryKind::Dir,
        size: 0,
        mtime_ns: 0,
        mode: None,
        uid: None,
        gid: None,
        token: ChangeToken::ETag(String::new()),
    }
}

/// How a failed request is judged: gone (`ENOENT`), worth retrying (connection trouble,
/// a 5xx or throttling), or final (any other 4xx, an answer that does not parse).
fn classify(e: object_store::Error) -> Attempt {
    use object_store::Error as E;
    match &e {
        E::NotFound { .. } => return Attempt::Fatal(io::Error::from_raw_os_error(libc::ENOENT)),
        // `If-Match` refused: the object was replaced since it was opened.
        E::Precondition { .. } => {
            return Attempt::Fatal(io::Error::new(
                io::ErrorKind::StaleNetworkFileHandle,
                e.to_string(),
            ))
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            return Attempt::Fatal(io::Error::new(
                io::ErrorKind::PermissionDenied,
                e.to_string(),
            ))
        }
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if err.is::<http::ServerBusy>() {
            return Attempt::Retry(io::Error::other(e.to_string()));
        }
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return match h.kind() {
                HttpErrorKind::Decode => Attempt::Fatal(io::Error::other(e.to_string())),
                HttpErrorKind::Timeout => {
                    Attempt::Retry(io::Error::new(io::ErrorKind::TimedOut, e.to_string()))
                }
                _ => Attempt::Retry(io::Error::other(e.to_string())),
            };
        }
        source = err.source();
    }
    Attempt::Fatal(io::Error::other(e.to_string()))
}

impl Origin for S3Origin {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    fn remote(&self) -> Option<&Remote> {
        Some(&self.remote)
    }

    fn key(&self) -> &OsStr {
        &self.key
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        let key = self.key_of(dir)?;
        let prefix = match key.is_empty() {
            true => String::new(),
            false if key.ends_with('/') => key,
            false => format!("{key}/"),
        };
        let mut token = None;
        let mut any = false;
        loop {
            let (page, next) = self
                .list_page(&prefix, PAGE, token.take())
                .map_err(|e| self.failed("list", dir, e))?;
            for p in &page.common_prefixes {
                if let Some(name) = p.filename() {
                    any = true;
                    each(Listed::Entry(Entry {
                        name: name.into(),
                        via_symlink: false,
                        stat: dir_stat(),
                    }));
                }
            }
            for meta in &page.objects {
                let full = meta.location.as_ref();
                // A "directory marker" object (`dir/`) names the listed directory itself.
                let Some(name) = full.strip_prefix(prefix.as_str()).filter(|n| !n.is_empty())
                else {
                    any = true;
                    continue;
                };
                any = true;
                each(Listed::Entry(Entry {
                    name: name.into(),
                    via_symlink: false,
                    stat: file_stat(meta),
                }));
            }
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        // S3 has no directories: an empty listing below the root means nothing is there.
        if !any && !dir.as_os_str().is_empty() {
            return Err(self.vanished(dir, io::Error::from_raw_os_error(libc::ENOENT)));
        }
        Ok(())
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        let key = self.key_of(rel)?;
        if rel.as_os_str().is_empty() {
            return Ok(dir_stat());
        }
        match self.head(&key) {
            Ok(stat) => return Ok(stat),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(self.failed("stat", rel, e)),
        }
        let (page, _) = self
            .list_page(&format!("{key}/"), 1, None)
            .map_err(|e| self.failed("stat", rel, e))?;
        if page.common_prefixes.is_empty() && page.objects.is_empty() {
            return Err(self.vanished(rel, io::Error::from_raw_os_error(libc::ENOENT)));
        }
        Ok(dir_stat())
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        let key = self.key_of(rel)?;
        let stat = self.stat(rel)?;
        if stat.kind != EntryKind::File {
            return Err(OriginError::NotAFile {
                origin: self.shown.clone(),
                rel: rel.to_path_buf(),
            });
        }
        let path = object_key(&key).map_err(|e| self.vanished(rel, e))?;
        Ok(Arc::new(S3Source {
            store: self.store.clone(),
            remote: self.remote.clone(),
            what: format!("GET {}/{key}", self.bucket()),
            path,
            len: stat.size,
            mtime_ns: stat.mtime_ns,
            etag: match stat.token {
                ChangeToken::ETag(tag) if !tag.is_empty() => Some(tag),
                _ => None,
            },
        }))
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, _recorded: Option<&RootIdentity>) -> Health {
        match self.list_page(&self.prefix, 1, None) {
            Ok(_) => Health::Up,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Health::Offline(Offline::Unresponsive {
                    waited: self.remote.options().timeout,
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Health::Offline(Offline::Missing),
            Err(e) => Health::Offline(Offline::Unreadable {
                reason: e.to_string(),
            }),
        }
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        None
    }
}

/// An object of an S3 origin, read by ranged `GET`s.
pub struct S3Source {
    store: AmazonS3,
    remote: Arc<Remote>,
    /// `GET bucket/key`, naming the request in errors.
    what: String,
    path: Key,
    len: u64,
    mtime_ns: i64,
    /// The object's ETag when opened: every read asks for that version (`If-Match`), so a
    /// source never mixes the bytes of two versions of an object replaced meanwhile.
    etag: Option<String>,
}

impl std::fmt::Debug for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source")
            .field("object", &self.what)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl S3Source {
    /// Whether an answer is of the version this source was opened at.
    fn same_version(&self, got: &object_store::ObjectMeta) -> io::Result<()> {
        let etag_differs = match (&self.etag, &got.e_tag) {
            (Some(pinned), Some(answered)) => bare_etag(pinned) != bare_etag(answered),
            _ => false,
        };
        if got.size == self.len && !etag_differs {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::StaleNetworkFileHandle,
            format!(
                "{}: the origin answered with another version of the object ({} bytes, ETag \
                 {}) than the one opened ({} bytes, ETag {}); it will be read after the next \
                 refresh",
                self.what,
                got.size,
                got.e_tag.as_deref().unwrap_or("none"),
                self.len,
                self.etag.as_deref().unwrap_or("none"),
            ),
        ))
    }
}

/// An ETag without its quotes and weakness mark: servers differ in how they spell one.
fn bare_etag(tag: &str) -> &str {
    tag.trim_start_matches("W/").trim_matches('"')
}

impl Source for S3Source {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.len);
        let mut filled = 0usize;
        while offset + (filled as u64) < end {
            let from = offset + filled as u64;
            let bytes = self.remote.call(&self.what, || async move {
                let mut opts = GetOptions::new().with_range(Some(GetRange::Bounded(from..end)));
                opts.if_match = self.etag.clone();
                let got = self
                    .store
                    .get_opts(&self.path, opts)
                    .await
                    .map_err(classify)?;
                // `If-Match` is a request, not a promise: a server may ignore it (s3s-fs
                // does) and answer with another version's bytes. The answer names its
                // version (its ETag, and its whole size in `Content-Range`): another one
                // is refused rather than mixed into this one.
                self.same_version(&got.meta).map_err(Attempt::Fatal)?;
                got.bytes().await.map_err(classify)
            })?;
            if bytes.is_empty() {
                // The object shrank since it was opened: its end is here.
                break;
            }
            let n = bytes.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&bytes[..n]);
            filled += n;
        }
        Ok(filled)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn token(&self) -> Option<ChangeToken> {
        self.etag.clone().map(ChangeToken::ETag)
    }

    fn mtime_ns(&self) -> Option<i64> {
        Some(self.mtime_ns)
    }
}

#[cfg(test)]
mod tests;
