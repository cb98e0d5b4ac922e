//! The SFTP driver: a directory on an SSH server as an origin (`sftp://USER@HOST[:PORT]/PATH`).
//!
//! One SSH connection (with one SFTP channel) per origin, opened on first use and again,
//! lazily, on the next request after it failed. Every request goes through
//! [`Remote::call`]: on the origin runtime, with a deadline, retries and the origin's
//! concurrency limit. A request that fails because the connection is in doubt (reset,
//! timeout, channel closed) drops the connection and is retried on a fresh one; an answer
//! of the server (no such file, permission denied) is final.
//!
//! The server's host key must be in known_hosts (`known_hosts` setting, else
//! `~/.ssh/known_hosts`; `[host]:port` for a port other than 22): an unknown or changed
//! key is refused, and the error names the host and the key's fingerprint. Login is by
//! `identity_file`, else the ssh agent; a password (`password_file`, or the spec) is tried
//! after them. No secret is ever logged or shown by `Debug`.
//!
//! Read-only by construction: files are opened with the READ flag only, and no request
//! that writes, removes, renames or sets attributes exists in this driver. SFTP (v3) has
//! no ETag and whole-second mtimes: the change token is size and mtime. A symlink that
//! resolves inside the root is listed as what it points to (a directory that is its own
//! ancestor is skipped as a loop); one outside, or dangling, is skipped. Paths are UTF-8
//! (the SFTP library speaks strings): a file whose name is not UTF-8 cannot be listed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use super::remote::{self, Attempt, Remote, Traffic};
use super::{
    check_rel, is_vanished_io, ChangeDetection, ChangeToken, Entry, EntryKind, Health, Listed,
    Offline, Origin, OriginError, OriginSettings, OriginSpec, RootIdentity, Secret, SkipReason,
    Source, Stat,
};

#[path = "sftp_session.rs"]
mod session;

use session::{classify, Conn, Login, Target};

/// The most one SFTP read request asks for (OpenSSH's sftp-server answers up to 255 KiB;
/// larger reads are split and sent together).
const READ_CHUNK: usize = 128 * 1024;

/// A directory on an SFTP server as an origin. See the module documentation.
#[derive(Debug)]
pub struct SftpOrigin {
    spec: OriginSpec,
    key: OsString,
    inner: Arc<Inner>,
}

/// What the origin and its open sources share.
struct Inner {
    /// The spec's display form, for errors and logs.
    name: String,
    /// The root directory on the server, as the spec gives it.
    root: String,
    /// The root with symlinks resolved by the server, learned on first need.
    real_root: OnceLock<String>,
    target: Target,
    login: Login,
    remote: Remote,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpOrigin")
            .field("name", &self.name)
            .field("login", &self.login)
            .field("known_hosts", &self.target.known_hosts)
            .field("traffic", self.remote.traffic())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.remote.traffic().log(&self.name, "sftp");
    }
}

impl SftpOrigin {
    /// Opens the SFTP origin `spec` names, without contacting the server. Fails when a
    /// configured secret (key file, password file) cannot be read, or no user is known.
    pub fn open(spec: &OriginSpec, settings: &OriginSettings) -> Result<SftpOrigin, OriginError> {
        let OriginSpec::Sftp(sftp) = spec else {
            return Err(OriginError::UnsupportedScheme {
                spec: spec.to_string(),
                scheme: spec.scheme(),
            });
        };
        let name = spec.to_string();
        let setup = |reason: String| OriginError::Settings {
            origin: name.clone(),
            reason,
        };
        let user = sftp
            .server
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .ok_or_else(|| setup("no user name: give sftp://USER@HOST/PATH".into()))?;
        let known_hosts = match &settings.known_hosts {
            Some(path) => path.clone(),
            None => std::env::home_dir()
                .map(|home| home.join(".ssh/known_hosts"))
                .ok_or_else(|| setup("no known_hosts setting and no home directory".into()))?,
        };
        let password = match &settings.password_file {
            Some(path) => Some(read_password(path).map_err(setup)?),
            None => sftp.server.password.clone(),
        };
        let key = match &settings.identity_file {
            Some(path) => {
                let key = session::load_key(path, password.as_ref()).map_err(setup)?;
                Some((Arc::new(key), path.clone()))
            }
            None => None,
        };
        let agent = key.is_none() && std::env::var_os("SSH_AUTH_SOCK").is_some();
        let inner = Inner {
            root: sftp.path.clone(),
            real_root: OnceLock::new(),
            target: Target {
                host: sftp.server.host.clone(),
                port: sftp.server.port.unwrap_or(22),
                known_hosts,
            },
            login: Login {
                user,
                key,
                agent,
                password,
            },
            remote: Remote::new(settings.remote),
            conn: tokio::sync::Mutex::new(None),
            name,
        };
        Ok(SftpOrigin {
            key: spec.key(),
            spec: spec.clone(),
            inner: Arc::new(inner),
        })
    }

    /// What crossed the wire so far (file bytes received, requests, retries).
    pub fn traffic(&self) -> &Traffic {
        self.inner.remote.traffic()
    }

    fn fail(&self, op: &'static str, rel: &Path, source: io::Error) -> OriginError {
        OriginError::from_io(&self.inner.name, op, rel, source)
    }

    /// The server path of `rel`.
    fn path_of(&self, rel: &Path) -> Result<String, OriginError> {
        check_rel(self, rel)?;
        let rel_str = rel.to_str().ok_or_else(|| OriginError::BadRelPath {
            origin: self.inner.name.clone(),
            rel: rel.to_path_buf(),
            reason: "it is not UTF-8 (SFTP paths are)",
        })?;
        Ok(join(&self.inner.root, rel_str))
    }

    /// The entry for `name` in `dir` (server path `dir_path`) from its listed attributes.
    fn listed(
        &self,
        dir_path: &str,
        real_dir: &mut Option<String>,
        name: String,
        attrs: &FileAttributes,
    ) -> Option<Listed> {
        let name_os = OsString::from(name.clone());
        if file_type(attrs) != FileKind::Symlink {
            return Some(Listed::Entry(Entry {
                name: name_os,
                via_symlink: false,
                stat: stat_of(attrs),
            }));
        }
        let skipped = |reason| Listed::Skipped {
            name: name_os.clone(),
            reason,
        };
        match self.follow(dir_path, real_dir, &name) {
            Ok(stat) => Some(Listed::Entry(Entry {
                name: name_os.clone(),
                via_symlink: true,
                stat,
            })),
            Err(reason) => Some(skipped(reason)),
        }
    }

    /// The stat of what symlink `name` in `dir_path` points to, if it stays inside the root
    /// and is not an ancestor of the directory it is in.
    fn follow(
        &self,
        dir_path: &str,
        real_dir: &mut Option<String>,
        name: &str,
    ) -> Result<Stat, SkipReason> {
        let link = join(dir_path, name);
        let real_root = self.real_root().map_err(SkipReason::Unreadable)?;
        let target = match self.inner.realpath(&link) {
            Ok(t) => t,
            Err(e) if is_vanished_io(&e) => {
                return Err(SkipReason::Dangling {
                    target: self.inner.readlink(&link).unwrap_or_default().into(),
                })
            }
            Err(e) => return Err(SkipReason::Unreadable(e)),
        };
        if !inside(&real_root, &target) {
            return Err(SkipReason::OutsideOrigin {
                target: target.into(),
            });
        }
        let attrs = match self.inner.stat(&target) {
            Ok(a) => a,
            Err(e) if is_vanished_io(&e) => {
                return Err(SkipReason::Dangling {
                    target: target.into(),
                })
            }
            Err(e) => return Err(SkipReason::Unreadable(e)),
        };
        if file_type(&attrs) == FileKind::Dir {
            let real_dir = match real_dir {
                Some(d) => d.clone(),
                None => {
                    let d = self
                        .inner
                        .realpath(dir_path)
                        .map_err(SkipReason::Unreadable)?;
                    real_dir.insert(d).clone()
                }
            };
            if inside(&target, &real_dir) {
                return Err(SkipReason::Unreadable(io::Error::other(format!(
                    "symlink loop (back to {target})"
                ))));
            }
        }
        Ok(stat_of(&attrs))
    }

    fn real_root(&self) -> io::Result<String> {
        if let Some(r) = self.inner.real_root.get() {
            return Ok(r.clone());
        }
        let real = self.inner.realpath(&self.inner.root)?;
        Ok(self.inner.real_root.get_or_init(|| real).clone())
    }
}

impl Inner {
    /// The live connection, connecting first if there is none or it was closed.
    async fn conn(&self) -> Result<Arc<Conn>, Attempt> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(conn.clone());
        }
        let generation = self.remote.traffic().connected();
        if generation > 1 {
            tracing::info!(origin = %self.name, generation, "reconnecting to the sftp server");
        }
        let secs = self.remote.timeout().as_secs().max(1);
        let conn = Arc::new(session::connect(&self.target, &self.login, generation, secs).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops connection `generation` (if it is still the current one): the next request
    /// connects again.
    async fn forget(&self, generation: u64) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }

    /// Runs `op` on the connection through [`Remote::call`]; a failure that puts the
    /// connection in doubt drops it before the retry.
    fn call<T, F, Fut>(&self, what: &str, op: F) -> io::Result<T>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        self.remote.call(what, || async {
            let conn = self.conn().await?;
            let generation = conn.generation;
            match op(conn).await {
                Err(Attempt::Retry(e)) => {
                    self.forget(generation).await;
                    Err(Attempt::Retry(e))
                }
                other => other,
            }
        })
    }

    fn stat(&self, path: &str) -> io::Result<FileAttributes> {
        self.call(&format!("STAT {path}"), |conn| async move {
            conn.sftp
                .stat(path)
                .await
                .map(|a| a.attrs)
                .map_err(|e| classify(e, "stat"))
        })
    }

    fn realpath(&self, path: &str) -> io::Result<String> {
        self.call(&format!("REALPATH {path}"), |conn| async move {
            let name = conn
                .sftp
                .realpath(path)
                .await
                .map_err(|e| classify(e, "realpath"))?;
            match name.files.into_iter().next() {
                Some(f) => Ok(f.filename),
                None => Err(Attempt::Fatal(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "realpath answered no name",
                ))),
            }
        })
    }

    fn readlink(&self, path: &str) -> io::Result<String> {
        self.call(&format!("READLINK {path}"), |conn| async move {
            let name = conn
                .sftp
                .readlink(path)
                .await
                .map_err(|e| classify(e, "readlink"))?;
            Ok(name
                .files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .unwrap_or_default())
        })
    }

    /// Every name in directory `path` with its attributes (as lstat gives them).
    fn read_dir(&self, path: &str) -> io::Result<Vec<(String, FileAttributes)>> {
        self.call(&format!("LIST {path}"), |conn| async move {
            let handle = conn
                .sftp
                .opendir(path)
                .await
                .map_err(|e| classify(e, "opendir"))?
                .handle;
            let mut all = Vec::new();
            let outcome = loop {
                match conn.sftp.readdir(handle.as_str()).await {
                    Ok(name) => all.extend(name.files.into_iter().map(|f| (f.filename, f.attrs))),
                    Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(()),
                    Err(e) => break Err(classify(e, "readdir")),
                }
            };
            // A failed close leaks one handle on a server we may be reconnecting to anyway.
            let _ = conn.sftp.close(handle).await;
            outcome.map(|()| all)
        })
    }
}

impl Origin for SftpOrigin {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    fn remote(&self) -> Option<&Remote> {
        Some(&self.inner.remote)
    }

    fn key(&self) -> &OsStr {
        &self.key
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        let path = self.path_of(dir)?;
        let names = self
            .inner
            .read_dir(&path)
            .map_err(|e| self.fail("list", dir, e))?;
        let mut real_dir = None;
        for (name, attrs) in names {
            if name == "." || name == ".." {
                continue;
            }
            if let Some(listed) = self.listed(&path, &mut real_dir, name, &attrs) {
                each(listed);
            }
        }
        Ok(())
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        let path = self.path_of(rel)?;
        self.inner
            .stat(&path)
            .map(|a| stat_of(&a))
            .map_err(|e| self.fail("stat", rel, e))
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        let path = self.path_of(rel)?;
        // Stat first: opening a FIFO would block the server's reader.
        let attrs = self
            .inner
            .stat(&path)
            .map_err(|e| self.fail("open", rel, e))?;
        if file_type(&attrs) != FileKind::File {
            return Err(OriginError::NotAFile {
                origin: self.inner.name.clone(),
                rel: rel.to_path_buf(),
            });
        }
        let source = SftpSource {
            inner: self.inner.clone(),
            path,
            len: attrs.size.unwrap_or(0),
            stat: stat_of(&attrs),
            handle: tokio::sync::Mutex::new(None),
        };
        source
            .inner
            .call(&format!("OPEN {}", source.path), |conn| {
                source.handle_on(conn)
            })
            .map_err(|e| self.fail("open", rel, e))?;
        Ok(Arc::new(source))
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, _recorded: Option<&RootIdentity>) -> Health {
        let root = self.inner.root.as_str();
        let probed = self
            .inner
            .call(&format!("PROBE {root}"), |conn| async move {
                let attrs = conn
                    .sftp
                    .stat(root)
                    .await
                    .map_err(|e| classify(e, "stat"))?
                    .attrs;
                if file_type(&attrs) != FileKind::Dir {
                    return Ok(false);
                }
                // Opening the directory proves it can be listed (a stat needs no permission).
                let handle = conn
                    .sftp
                    .opendir(root)
                    .await
                    .map_err(|e| classify(e, "opendir"))?;
                let _ = conn.sftp.close(handle.handle).await;
                Ok(true)
            });
        match probed {
            Ok(true) => Health::Up,
            Ok(false) => Health::Offline(Offline::NotADirectory),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Health::Offline(Offline::Missing),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Health::Offline(Offline::Unresponsive {
                    waited: self.inner.remote.options().timeout,
                })
            }
            Err(e) => Health::Offline(Offline::Unreadable {
                reason: e.to_string(),
            }),
        }
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        None
    }
}

/// An open file on the server, read by ranges. Its SFTP handle belongs to one connection:
/// after a reconnect the file is opened again on the new one. The handle is closed when
/// the source is dropped.
pub struct SftpSource {
    inner: Arc<Inner>,
    path: String,
    len: u64,
    /// The file's stat when opened (its change token names the version for the cache).
    stat: Stat,
    /// The handle with the connection it was opened on.
    handle: tokio::sync::Mutex<Option<OpenHandle>>,
}

struct OpenHandle {
    generation: u64,
    sftp: Weak<RawSftpSession>,
    handle: String,
}

impl fmt::Debug for SftpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpSource")
            .field("origin", &self.inner.name)
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl SftpSource {
    /// The file's handle on `conn`, opening the file (read-only) if it has none there.
    async fn handle_on(&self, conn: Arc<Conn>) -> Result<String, Attempt> {
        let mut slot = self.handle.lock().await;
        if let Some(h) = slot.as_ref().filter(|h| h.generation == conn.generation) {
            return Ok(h.handle.clone());
        }
        let handle = conn
            .sftp
            .open(self.path.as_str(), OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| classify(e, "open"))?
            .handle;
        *slot = Some(OpenHandle {
            generation: conn.generation,
            sftp: Arc::downgrade(&conn.sftp),
            handle: handle.clone(),
        });
        Ok(handle)
    }
}

impl Source for SftpSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len();
        let data = self
            .inner
            .call(&format!("READ {}", self.path), |conn| async move {
                let handle = self.handle_on(conn.clone()).await?;
                read_range(&conn.sftp, &handle, offset, want).await
            })?;
        let n = data.len().min(want);
        buf[..n].copy_from_slice(&data[..n]);
        self.inner.remote.traffic().received(n as u64);
        Ok(n)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn token(&self) -> Option<ChangeToken> {
        Some(self.stat.token.clone())
    }

    fn mtime_ns(&self) -> Option<i64> {
        Some(self.stat.mtime_ns)
    }
}

impl Drop for SftpSource {
    fn drop(&mut self) {
        let Some(open) = self.handle.get_mut().take() else {
            return;
        };
        if let Some(sftp) = open.sftp.upgrade() {
            // Closing needs the runtime; nobody waits for the answer.
            remote::runtime().spawn(async move {
                let _ = sftp.close(open.handle).await;
            });
        }
    }
}

/// Reads `len` bytes at `offset` (fewer only at end of file): requests of at most
/// [`READ_CHUNK`] sent together, each completed if the server answers short.
async fn read_range(
    sftp: &Arc<RawSftpSession>,
    handle: &str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, Attempt> {
    if len <= READ_CHUNK {
        return read_chunk(sftp.clone(), handle.to_owned(), offset, len).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut at = 0;
    while at < len {
        let n = READ_CHUNK.min(len - at);
        let (sftp, handle) = (sftp.clone(), handle.to_owned());
        let index = at / READ_CHUNK;
        tasks.spawn(async move { (index, read_chunk(sftp, handle, offset + at as u64, n).await) });
        at += n;
    }
    let mut chunks: Vec<Option<Vec<u8>>> = vec![None; len.div_ceil(READ_CHUNK)];
    while let Some(joined) = tasks.join_next().await {
        let (index, chunk) = joined.map_err(|e| Attempt::Retry(io::Error::other(e)))?;
        if let Some(slot) = chunks.get_mut(index) {
            *slot = Some(chunk?);
        }
    }
    let mut out = Vec::with_capacity(len);
    for chunk in chunks.into_iter().flatten() {
        let full = chunk.len() == READ_CHUNK;
        out.extend_from_slice(&chunk);
        // A short chunk is the end of the file: what follows it is empty.
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Reads `len` bytes at `offset`, asking again after a short answer, until the file ends.
async fn read_chunk(
    sftp: Arc<RawSftpSession>,
    handle: String,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, Attempt> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let ask = u32::try_from(len - out.len()).unwrap_or(u32::MAX);
        match sftp
            .read(handle.as_str(), offset + out.len() as u64, ask)
            .await
        {
            Ok(data) if data.data.is_empty() => break,
            Ok(data) => {
                let room = len - out.len();
                out.extend_from_slice(&data.data[..data.data.len().min(room)]);
            }
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
            Err(e) => return Err(classify(e, "read")),
        }
    }
    Ok(out)
}

/// The first line of `path`, the password (the error names the file, never its content).
fn read_password(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    Ok(Secret::new(line))
}

/// `dir/name` on the server.
fn join(dir: &str, name: &str) -> String {
    if name.is_empty() {
        dir.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether server path `path` is `dir` or below it.
fn inside(dir: &str, path: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir
        || dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

fn file_type(attrs: &FileAttributes) -> FileKind {
    match attrs.permissions.map(|p| p & libc::S_IFMT) {
        Some(libc::S_IFREG) => FileKind::File,
        Some(libc::S_IFDIR) => FileKind::Dir,
        Some(libc::S_IFLNK) => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// The stat of a file from its SFTP attributes; the change token is its size and mtime
/// (SFTP has nothing finer).
fn stat_of(attrs: &FileAttributes) -> Stat {
    let kind = match file_type(attrs) {
        FileKind::File => EntryKind::File,
        FileKind::Dir => EntryKind::Dir,
        FileKind::Symlink | FileKind::Other => EntryKind::Other,
    };
    let size = attrs.size.unwrap_or(0);
    let mtime = attrs.mtime.unwrap_or(0);
    Stat {
        kind,
        size,
        mtime_ns: i64::from(mtime).saturating_mul(1_000_000_000),
        mode: attrs.permissions.map(|p| p & 0o7777),
        uid: attrs.uid,
        gid: attrs.gid,
        token: ChangeToken::ETag(format!("sftp:{size}:{mtime}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn server_paths_join_and_nest() {
        assert_eq!(join("/music", ""), "/music");
        assert_eq!(join("/music", "a/b.flac"), "/music/a/b.flac");
        assert_eq!(join("/", "a"), "/a");
        assert!(inside("/music", "/music/a"));
        assert!(inside("/music/", "/music"));
        assert!(!inside("/music", "/musicals/a"));
        assert!(inside("/", "/anything"));
    }

    #[test]
    fn stat_token_is_size_and_mtime() {
        let attrs = FileAttributes {
            size: Some(10),
            mtime: Some(7),
            permissions: Some(libc::S_IFREG | 0o644),
            uid: Some(1),
            gid: Some(2),
            ..FileAttributes::empty()
        };
        let stat = stat_of(&attrs);
        assert_eq!(stat.kind, EntryKind::File);
        assert_eq!(stat.mtime_ns, 7_000_000_000);
        assert_eq!(stat.mode, Some(0o644));
        assert_eq!(stat.token, ChangeToken::ETag("sftp:10:7".into()));
    }

    #[test]
    fn known_hosts_names_non_default_ports_in_brackets() {
        let t = |host: &str, port| Target {
            host: host.into(),
            port,
            known_hosts: PathBuf::new(),
        };
        assert_eq!(t("h", 22).known_hosts_name(), "h");
        assert_eq!(t("127.0.0.1", 2222).known_hosts_name(), "[127.0.0.1]:2222");
        assert_eq!(t("[::1]", 2222).known_hosts_name(), "[::1]:2222");
    }

    #[test]
    fn opens_without_the_server_and_probes_an_unreachable_one_offline() {
        let spec = OriginSpec::parse("sftp://u@127.0.0.1:1/music").unwrap();
        let settings = OriginSettings {
            remote: remote::RemoteOptions {
                timeout: std::time::Duration::from_millis(500),
                ..remote::RemoteOptions::default()
            },
            ..OriginSettings::default()
        };
        let origin = SftpOrigin::open(&spec, &settings).unwrap();
        assert_eq!(origin.change_detection(), ChangeDetection::Poll);
        assert!(origin.root_identity().is_none());
        match origin.probe(None) {
            Health::Offline(Offline::Unreadable { reason }) => {
                assert!(reason.contains("127.0.0.1"), "{reason}")
            }
            Health::Offline(Offline::Unresponsive { .. }) => {}
            other => panic!("{other:?}"),
        }
        let missing = OriginSettings {
            identity_file: Some("/nonexistent/key".into()),
            ..OriginSettings::default()
        };
        let e = SftpOrigin::open(&spec, &missing).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key"), "{e}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let login = Login {
            user: "u".into(),
            key: None,
            agent: false,
            password: Some(Secret::new("hunter2")),
        };
        let shown = format!("{login:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
