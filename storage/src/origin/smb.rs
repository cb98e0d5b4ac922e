//! The SMB driver: a directory in an SMB2/3 share, read with the pure-Rust `smb` client
//! (no kernel cifs mount, no C library).
//!
//! One origin holds one connection, one session and one tree connect ([`Link`]), made on
//! the first request and made again, lazily, on the request after one that found it broken
//! (a dropped socket, an expired session, a request that timed out). Every request runs
//! through [`Remote::call`] on the origin runtime, so it has a deadline, retries with
//! backoff and a concurrency limit. An open [`SmbSource`] keeps its file handle and the
//! generation of the link it was opened on: after a reconnect the handle is opened again.
//!
//! Read-only by construction: files and directories are opened with read access only and
//! no request here writes, renames, deletes or sets anything. SMB has no ETag: the
//! [`ChangeToken`] is `ETag("smb:<file id>:<size>:<mtime>")`, built from the server's file
//! id, size and last write time. SMB has no uid, gid or mode bits either: those are `None`.
//!
//! The password comes from the origin's `password_file` (first line), else
//! `MUSICFS_SMB_PASSWORD`, else the spec's userinfo. It lives in a [`Secret`] and appears
//! in no log, error or `Debug` output.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::smb::{
    Connection, ConnectionConfig, Directory, File, FileAccessMask, FileAllInformation,
    FileCreateArgs, FileIdFullDirectoryInformation, Guid, Resource, Session, Tree, UncPath,
};
use futures_util::StreamExt;

use super::remote::{runtime, Attempt, Remote};
use super::{
    check_rel, ChangeDetection, ChangeToken, Entry, EntryKind, Health, Listed, Offline, Origin,
    OriginError, OriginSettings, OriginSpec, RootIdentity, Secret, SmbSpec, Source, Stat,
};

/// The environment variable a password is taken from when no `password_file` is set.
pub const PASSWORD_ENV: &str = "MUSICFS_SMB_PASSWORD";

/// The largest read sent in one request (servers announce their own limit, usually 8 MiB).
const MAX_READ: u32 = 4 << 20;

/// Seconds between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET_SECS: i64 = 11_644_473_600;

/// NTSTATUS codes ([MS-ERREF] 2.3.1) this driver tells apart.
mod status {
    pub const ACCESS_DENIED: u32 = 0xC000_0022;
    pub const OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
    pub const OBJECT_NAME_INVALID: u32 = 0xC000_0033;
    pub const OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
    pub const NOT_A_DIRECTORY: u32 = 0xC000_0103;
    pub const DELETE_PENDING: u32 = 0xC000_0056;
    pub const LOGON_FAILURE: u32 = 0xC000_006D;
    pub const ACCOUNT_RESTRICTION: u32 = 0xC000_006E;
    pub const ACCOUNT_DISABLED: u32 = 0xC000_0072;
    pub const BAD_NETWORK_NAME: u32 = 0xC000_00CC;
    pub const NETWORK_NAME_DELETED: u32 = 0xC000_00C9;
    pub const FILE_CLOSED: u32 = 0xC000_0128;
    pub const INVALID_HANDLE: u32 = 0xC000_0008;
    pub const USER_SESSION_DELETED: u32 = 0xC000_0203;
    pub const NETWORK_SESSION_EXPIRED: u32 = 0xC000_035C;
    pub const INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;
    pub const SHARING_VIOLATION: u32 = 0xC000_0043;
}

/// A directory in an SMB share as an origin. See the module documentation.
pub struct SmbOrigin {
    spec: OriginSpec,
    key: OsString,
    shared: Arc<Shared>,
}

/// What the origin and its open sources share: where the share is, who logs in, the link.
struct Shared {
    /// The spec's display form, for errors and logs.
    name: String,
    host: String,
    port: u16,
    share: String,
    /// The origin's root inside the share, `\`-separated, empty for the share's root.
    root: String,
    user: String,
    password: Secret,
    remote: Remote,
    /// The live link, if any: `None` until the first request and after a failure.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

/// One connection, session and tree connect. The fields are dropped in order: the tree
/// before the session before the connection.
struct Link {
    generation: u64,
    tree: Tree,
    _session: Session,
    conn: Connection,
}

impl SmbOrigin {
    /// Opens the SMB origin `spec` names: finds its password (see the module documentation)
    /// but does not contact the server.
    pub fn open(spec: &OriginSpec, settings: &OriginSettings) -> Result<SmbOrigin, OriginError> {
        let OriginSpec::Smb(smb) = spec else {
            return Err(OriginError::UnsupportedScheme {
                spec: spec.to_string(),
                scheme: spec.scheme(),
            });
        };
        let name = spec.to_string();
        let Some(user) = smb.server.user.clone() else {
            return Err(OriginError::BadSpec {
                spec: name,
                reason: "an smb origin names its user: smb://USER@HOST/SHARE".into(),
            });
        };
        let password = password_of(&name, smb, settings)?;
        let host = smb.server.host.trim_matches(['[', ']']).to_owned();
        Ok(SmbOrigin {
            key: spec.key(),
            spec: spec.clone(),
            shared: Arc::new(Shared {
                name,
                host,
                port: smb.server.port.unwrap_or(445),
                share: smb.share.clone(),
                root: smb.path.replace('/', "\\"),
                user,
                password,
                remote: Remote::new(settings.remote),
                link: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The calling discipline and traffic counters of this origin.
    pub fn remote(&self) -> &Remote {
        &self.shared.remote
    }
}

/// The password: `password_file`'s first line, else [`PASSWORD_ENV`], else the spec's.
fn password_of(
    name: &str,
    smb: &SmbSpec,
    settings: &OriginSettings,
) -> Result<Secret, OriginError> {
    if let Some(file) = &settings.password_file {
        let text = std::fs::read_to_string(file).map_err(|source| OriginError::Io {
            origin: name.to_owned(),
            op: "read the password file",
            rel: file.clone(),
            source,
        })?;
        let first = text.lines().next().unwrap_or("");
        return Ok(Secret::new(first.to_owned()));
    }
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(Secret::new(p));
    }
    smb.server.password.clone().ok_or_else(|| OriginError::Io {
        origin: name.to_owned(),
        op: "find a password for",
        rel: PathBuf::new(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no password: set password_file in the origin's table, {PASSWORD_ENV}, \
                 or smb://USER:PASSWORD@HOST/SHARE"
            ),
        ),
    })
}

impl fmt::Debug for SmbOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmbOrigin")
            .field("spec", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.remote.traffic().log(&self.name, "smb");
        // The client's handles close themselves with tasks spawned on drop: they need the
        // runtime's context, which the thread dropping the last reference may not have.
        let _rt = runtime().enter();
        drop(self.link.get_mut().take());
    }
}

/// How a failed request is judged, and whether it broke the link.
struct Judged {
    attempt: Attempt,
    link_broken: bool,
}

fn judge(e: ::smb::Error, user: &str) -> Judged {
    use ::smb::Error as E;
    let status = match &e {
        E::ReceivedErrorMessage(s, _) | E::UnexpectedMessageStatus(s) => Some(*s),
        _ => None,
    };
    let fatal = |err| Judged {
        attempt: Attempt::Fatal(err),
        link_broken: false,
    };
    let text = e.to_string();
    let retry = |link_broken| Judged {
        attempt: Attempt::Retry(io::Error::other(text.clone())),
        link_broken,
    };
    match status {
        Some(status::OBJECT_NAME_NOT_FOUND | status::OBJECT_PATH_NOT_FOUND) => {
            fatal(io::Error::from_raw_os_error(libc::ENOENT))
        }
        Some(status::DELETE_PENDING) => fatal(io::Error::from_raw_os_error(libc::ENOENT)),
        Some(status::NOT_A_DIRECTORY) => fatal(io::Error::from_raw_os_error(libc::ENOTDIR)),
        Some(status::OBJECT_NAME_INVALID) => fatal(io::Error::from_raw_os_error(libc::EINVAL)),
        Some(status::ACCESS_DENIED) => fatal(io::Error::from_raw_os_error(libc::EACCES)),
        Some(status::LOGON_FAILURE | status::ACCOUNT_RESTRICTION | status::ACCOUNT_DISABLED) => {
            fatal(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the server refused the login of user {user:?} (wrong password or unknown user)"),
            ))
        }
        Some(status::BAD_NETWORK_NAME) => fatal(io::Error::new(
            io::ErrorKind::NotFound,
            "the server has no such share",
        )),
        Some(
            status::NETWORK_NAME_DELETED
            | status::USER_SESSION_DELETED
            | status::NETWORK_SESSION_EXPIRED
            | status::FILE_CLOSED
            | status::INVALID_HANDLE,
        ) => retry(true),
        Some(status::INSUFFICIENT_RESOURCES | status::SHARING_VIOLATION) => retry(false),
        Some(_) => fatal(io::Error::other(text.clone())),
        None => match e {
            E::IoError(_)
            | E::TransportError(_)
            | E::ConnectionStopped
            | E::OperationTimeout(..)
            | E::Cancelled(_)
            | E::SignatureVerificationFailed
            | E::InvalidState(_)
            | E::MessageProcessingError(_) => retry(true),
            _ => fatal(io::Error::other(text.clone())),
        },
    }
}

impl Shared {
    /// The live link, connecting (and logging in) if there is none.
    async fn link(&self) -> Result<Arc<Link>, Attempt> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref() {
            return Ok(Arc::clone(link));
        }
        let link = Arc::new(self.connect().await?);
        tracing::debug!(origin = %self.name, generation = link.generation, "smb connected");
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    async fn connect(&self) -> Result<Link, Attempt> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(Attempt::Retry)?
            .next()
            .ok_or_else(|| {
                Attempt::Fatal(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.host),
                ))
            })?;
        let config = ConnectionConfig {
            port: Some(self.port),
            timeout: Some(self.remote.options().timeout),
            ..ConnectionConfig::default()
        };
        let judged = |e| judge(e, &self.user).attempt;
        let conn = Connection::build(&self.host, addr, Guid::generate(), config).map_err(judged)?;
        conn.connect().await.map_err(judged)?;
        let username = sspi::Username::parse(&self.user).map_err(|_| {
            Attempt::Fatal(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:?} is not a valid SMB user name", self.user),
            ))
        })?;
        let identity = sspi::AuthIdentity {
            username,
            password: sspi::Secret::from(self.password.expose().to_owned()),
        };
        let session = conn.authenticate(identity).await.map_err(judged)?;
        let unc = UncPath::new(&self.host)
            .and_then(|u| u.with_share(&self.share))
            .map_err(judged)?;
        let tree = session.tree_connect(&unc).await.map_err(judged)?;
        Ok(Link {
            generation: self.remote.traffic().connected(),
            tree,
            _session: session,
            conn,
        })
    }

    /// Judges `e`, forgetting `link` when the failure broke it (the next attempt then
    /// connects again).
    async fn failed(&self, link: &Link, e: ::smb::Error) -> Attempt {
        let judged = judge(e, &self.user);
        if judged.link_broken {
            self.forget_link(link).await;
        }
        judged.attempt
    }

    /// Drops `link` if it is still the live one: the next request connects again.
    async fn forget_link(&self, link: &Link) {
        let mut slot = self.link.lock().await;
        if slot
            .as_ref()
            .is_some_and(|l| l.generation == link.generation)
        {
            tracing::debug!(origin = %self.name, "smb link broken; reconnecting on next call");
            *slot = None;
        }
    }

    /// `rel` as a path in the share (`\`-separated, under the root).
    fn path_in_share(&self, rel: &Path) -> io::Result<String> {
        let mut out = self.root.clone();
        for c in rel.components() {
            let Component::Normal(part) = c else { continue };
            let part = part.to_str().filter(|p| !p.contains('\\')).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an SMB path is UTF-8 without backslashes",
                )
            })?;
            if !out.is_empty() {
                out.push('\\');
            }
            out.push_str(part);
        }
        Ok(out)
    }

    /// Opens `path` (in the share) with `access` on `link`.
    async fn open_on(
        &self,
        link: &Link,
        path: &str,
        access: FileAccessMask,
    ) -> Result<Resource, Attempt> {
        let args = FileCreateArgs::make_open_existing(access);
        match link.tree.create(path, &args).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.failed(link, e).await),
        }
    }

    fn fail(&self, op: &'static str, rel: &Path, source: io::Error) -> OriginError {
        OriginError::from_io(&self.name, op, rel, source)
    }
}

/// Closes a handle the caller is done with. A failed close only leaks a handle the server
/// drops with the session: it is not worth failing the request for.
async fn close(resource: Resource) {
    let closed = match &resource {
        Resource::File(f) => f.close().await,
        Resource::Directory(d) => d.close().await,
        Resource::Pipe(p) => p.close().await,
    };
    if let Err(e) = closed {
        tracing::debug!(error = %e, "smb close failed");
    }
}

fn read_access() -> FileAccessMask {
    FileAccessMask::new().with_generic_read(true)
}

/// FILETIME (100 ns since 1601) as nanoseconds since the Unix epoch.
fn filetime_ns(ft: u64) -> i64 {
    let ns = i128::from(ft) * 100 - i128::from(FILETIME_UNIX_OFFSET_SECS) * 1_000_000_000;
    ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn stat_from(is_dir: bool, size: u64, last_write: u64, file_id: u64) -> Stat {
    let (kind, size) = if is_dir {
        (EntryKind::Dir, 0)
    } else {
        (EntryKind::File, size)
    };
    let mtime_ns = filetime_ns(last_write);
    Stat {
        kind,
        size,
        mtime_ns,
        mode: None,
        uid: None,
        gid: None,
        token: ChangeToken::ETag(format!("smb:{file_id:x}:{size}:{mtime_ns}")),
    }
}

impl Origin for SmbOrigin {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    fn remote(&self) -> Option<&Remote> {
        Some(&self.shared.remote)
    }

    fn key(&self) -> &OsStr {
        &self.key
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        check_rel(self, dir)?;
        let s = &*self.shared;
        let path = s.path_in_share(dir).map_err(|e| s.fail("list", dir, e))?;
        let (what, path) = (format!("LIST {}", dir.display()), path.as_str());
        let entries = s
            .remote
            .call(&what, || async move {
                let link = s.link().await?;
                let dir = match s.open_on(&link, path, read_access()).await? {
                    Resource::Directory(d) => Arc::new(d),
                    other => {
                        close(other).await;
                        return Err(Attempt::Fatal(io::Error::from_raw_os_error(libc::ENOTDIR)));
                    }
                };
                let listed = list_open(&dir, s.remote.options().timeout).await;
                if let Err(e) = dir.close().await {
                    tracing::debug!(error = %e, "smb close failed");
                }
                match listed {
                    Ok(v) => Ok(v),
                    Err(e) => Err(s.failed(&link, e).await),
                }
            })
            .map_err(|e| s.fail("list", dir, e))?;
        for info in entries {
            let name = info.file_name.to_string();
            if name == "." || name == ".." {
                continue;
            }
            let stat = stat_from(
                info.file_attributes.directory(),
                info.end_of_file,
                *info.last_write_time,
                info.file_id,
            );
            each(Listed::Entry(Entry {
                name: name.into(),
                via_symlink: false,
                stat,
            }));
        }
        Ok(())
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        check_rel(self, rel)?;
        let s = &*self.shared;
        let path = s.path_in_share(rel).map_err(|e| s.fail("stat", rel, e))?;
        let path = path.as_str();
        s.remote
            .call(&format!("STAT {}", rel.display()), || async move {
                let link = s.link().await?;
                let attrs = FileAccessMask::new().with_file_read_attributes(true);
                let res = s.open_on(&link, path, attrs).await?;
                let info = match &res {
                    Resource::File(f) => f.query_info::<FileAllInformation>().await,
                    Resource::Directory(d) => d.query_info::<FileAllInformation>().await,
                    Resource::Pipe(_) => Err(::smb::Error::InvalidArgument("a pipe".into())),
                };
                let is_dir = res.is_dir();
                close(res).await;
                match info {
                    Ok(all) => Ok(stat_from(
                        is_dir,
                        all.standard.end_of_file,
                        *all.basic.last_write_time,
                        all.internal.index_number,
                    )),
                    Err(e) => Err(s.failed(&link, e).await),
                }
            })
            .map_err(|e| s.fail("stat", rel, e))
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        check_rel(self, rel)?;
        let s = &self.shared;
        let path = s.path_in_share(rel).map_err(|e| s.fail("open", rel, e))?;
        let in_share = path.as_str();
        let opened = s
            .remote
            .call(&format!("OPEN {}", rel.display()), || async move {
                let link = s.link().await?;
                match s.open_on(&link, in_share, read_access()).await? {
                    Resource::File(f) => match f.query_info::<FileAllInformation>().await {
                        Ok(all) => {
                            let stat = stat_from(
                                false,
                                all.standard.end_of_file,
                                *all.basic.last_write_time,
                                all.internal.index_number,
                            );
                            Ok(Some((link.generation, Arc::new(f), stat)))
                        }
                        Err(e) => {
                            close(Resource::File(f)).await;
                            Err(s.failed(&link, e).await)
                        }
                    },
                    other => {
                        close(other).await;
                        Ok(None)
                    }
                }
            })
            .map_err(|e| s.fail("open", rel, e))?;
        let Some((generation, file, stat)) = opened else {
            return Err(OriginError::NotAFile {
                origin: s.name.clone(),
                rel: rel.to_path_buf(),
            });
        };
        Ok(Arc::new(SmbSource {
            shared: Arc::clone(s),
            rel: rel.to_path_buf(),
            path,
            stat,
            handle: Mutex::new(Some(Handle { generation, file })),
        }))
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, _recorded: Option<&RootIdentity>) -> Health {
        match self.stat(Path::new("")) {
            Ok(st) if st.kind == EntryKind::Dir => Health::Up,
            Ok(_) => Health::Offline(Offline::NotADirectory),
            Err(e) if e.is_vanished() => Health::Offline(Offline::Missing),
            Err(OriginError::Io { source, .. }) if source.kind() == io::ErrorKind::TimedOut => {
                Health::Offline(Offline::Unresponsive {
                    waited: self.shared.remote.options().timeout,
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

/// Every entry of an open directory, read within `limit`.
///
/// smb 0.12's [`Directory::query`] stream loses a wakeup. Its fetch task hands a batch of
/// entries over a channel, calls `Notify::notify_waiters` and only then starts waiting,
/// with `notified()`, for the reader to ask for the next batch; the reader asks, with
/// `notify_waiters` too (which keeps no permit), as soon as it has taken the batch's last
/// entry. On a multi-thread runtime the reader can take that entry on another thread before
/// the fetch task waits: the request is lost, the fetch task never sends the query that
/// would end the stream, and the listing hangs until the call's deadline. Which listings
/// hang depends on thread timing, so it shows under load (a parallel scan, a busy machine).
///
/// So the fetch task and the reader run here on one current-thread runtime, on a blocking
/// thread of the origin runtime: the fetch task runs from its last send to its wait without
/// yielding, so the reader cannot ask in between. The requests themselves still go through
/// the link's connection, whose workers run on the origin runtime.
async fn list_open(
    dir: &Arc<Directory>,
    limit: Duration,
) -> ::smb::Result<Vec<FileIdFullDirectoryInformation>> {
    let dir = Arc::clone(dir);
    let listed = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The deadline ends this thread too when the server stops answering (the caller
        // gave up by then).
        rt.block_on(async {
            tokio::time::timeout(limit, read_query(&dir))
                .await
                .unwrap_or(Err(::smb::Error::Cancelled(
                    "a directory listing past its deadline",
                )))
        })
    })
    .await;
    listed.unwrap_or_else(|e| Err(::smb::Error::IoError(io::Error::other(e))))
}

/// Reads a query of `dir` to its end.
async fn read_query(dir: &Arc<Directory>) -> ::smb::Result<Vec<FileIdFullDirectoryInformation>> {
    let mut stream = Directory::query::<FileIdFullDirectoryInformation>(dir, "*").await?;
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item?);
    }
    Ok(out)
}

/// An open file handle and the link generation it belongs to.
struct Handle {
    generation: u64,
    file: Arc<File>,
}

/// An open file of an SMB origin. See the module documentation.
pub struct SmbSource {
    shared: Arc<Shared>,
    rel: PathBuf,
    path: String,
    /// The file as opened: its length and version.
    stat: Stat,
    handle: Mutex<Option<Handle>>,
}

impl fmt::Debug for SmbSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmbSource")
            .field("origin", &self.shared.name)
            .field("rel", &self.rel)
            .field("len", &self.stat.size)
            .finish_non_exhaustive()
    }
}

impl SmbSource {
    /// The handle for `link`, opened again when the one held belongs to an older link.
    async fn file_on(&self, link: &Link) -> Result<Arc<File>, Attempt> {
        if let Some(h) = self.handle.lock().ok().and_then(|h| {
            h.as_ref()
                .filter(|h| h.generation == link.generation)
                .map(|h| Arc::clone(&h.file))
        }) {
            return Ok(h);
        }
        let file = match self.shared.open_on(link, &self.path, read_access()).await? {
            Resource::File(f) => Arc::new(f),
            other => {
                close(other).await;
                return Err(Attempt::Fatal(io::Error::from_raw_os_error(libc::EISDIR)));
            }
        };
        let stale = self.handle.lock().ok().and_then(|mut h| {
            h.replace(Handle {
                generation: link.generation,
                file: Arc::clone(&file),
            })
        });
        if let Some(old) = stale {
            close_file(old.file);
        }
        Ok(file)
    }

    /// Forgets the handle (after a failed read), so the next attempt opens it again.
    fn drop_handle(&self) {
        if let Some(old) = self.handle.lock().ok().and_then(|mut h| h.take()) {
            close_file(old.file);
        }
    }

    async fn read_range(&self, offset: u64, want: usize) -> Result<Vec<u8>, Attempt> {
        let s = &*self.shared;
        let link = s.link().await?;
        let file = self.file_on(&link).await?;
        let max = link
            .conn
            .conn_info()
            .map_or(64 << 10, |i| i.negotiation.max_read_size)
            .clamp(64 << 10, MAX_READ) as usize;
        let mut out = vec![0u8; want];
        let mut got = 0;
        // One request that never answers (seen under load: smb 0.12 can lose a response)
        // must not wedge the link for every later read: give each request half the call's
        // deadline, then drop the link so the retry connects afresh.
        let patience = s.remote.options().timeout / 2;
        while got < want {
            let end = want.min(got + max);
            let read = file.read_block(&mut out[got..end], offset + got as u64, None, false);
            match tokio::time::timeout(patience, read).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) => {
                    self.drop_handle();
                    return Err(Attempt::Retry(e));
                }
                Err(_) => {
                    tracing::debug!(origin = %s.name, rel = %self.rel.display(), ?patience,
                        "smb read got no answer; reconnecting");
                    self.drop_handle();
                    s.forget_link(&link).await;
                    return Err(Attempt::Retry(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer to a read within {patience:?}"),
                    )));
                }
            }
        }
        out.truncate(got);
        Ok(out)
    }
}

/// Closes `file` on the origin runtime (its last owner may be a thread without one).
fn close_file(file: Arc<File>) {
    runtime().spawn(async move {
        if let Err(e) = file.close().await {
            tracing::debug!(error = %e, "smb close failed");
        }
    });
}

impl Source for SmbSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some(left) = self.stat.size.checked_sub(offset).filter(|&l| l > 0) else {
            return Ok(0);
        };
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let what = format!("READ {} @{offset}+{want}", self.rel.display());
        let data = self
            .shared
            .remote
            .call(&what, || self.read_range(offset, want))?;
        self.shared.remote.traffic().received(data.len() as u64);
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    fn len(&self) -> u64 {
        self.stat.size
    }

    fn token(&self) -> Option<ChangeToken> {
        Some(self.stat.token.clone())
    }

    fn mtime_ns(&self) -> Option<i64> {
        Some(self.stat.mtime_ns)
    }
}

impl Drop for SmbSource {
    fn drop(&mut self) {
        if let Some(h) = self.handle.get_mut().ok().and_then(|h| h.take()) {
            close_file(h.file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::is_vanished_io;

    #[test]
    fn filetime_converts_to_unix_nanoseconds() {
        assert_eq!(filetime_ns(116_444_736_000_000_000), 0);
        assert_eq!(filetime_ns(116_444_736_000_000_001), 100);
        // 1601 is before what i64 nanoseconds since 1970 can hold: clamped.
        assert_eq!(filetime_ns(0), i64::MIN);
    }

    #[test]
    fn the_change_token_follows_size_mtime_and_file_id() {
        let t = 133_000_000_000_000_000; // a FILETIME in 2022
        let a = stat_from(false, 10, t, 7);
        assert_ne!(a.token, stat_from(false, 11, t, 7).token);
        assert_ne!(a.token, stat_from(false, 10, t + 1, 7).token);
        assert_ne!(a.token, stat_from(false, 10, t, 8).token);
        assert_eq!(a.token, stat_from(false, 10, t, 7).token);
        assert_eq!((a.mode, a.uid, a.gid), (None, None, None));
    }

    #[test]
    fn a_login_failure_is_fatal_and_names_no_password() {
        let e = ::smb::Error::UnexpectedMessageStatus(status::LOGON_FAILURE);
        let Judged { attempt, .. } = judge(e, "alice");
        let Attempt::Fatal(e) = attempt else {
            panic!("a refused login must not be retried");
        };
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("alice"), "{e}");
    }

    #[test]
    fn a_dropped_connection_is_retried_on_a_new_link() {
        let j = judge(::smb::Error::ConnectionStopped, "u");
        assert!(matches!(j.attempt, Attempt::Retry(_)) && j.link_broken);
        let j = judge(
            ::smb::Error::UnexpectedMessageStatus(status::OBJECT_NAME_NOT_FOUND),
            "u",
        );
        assert!(matches!(&j.attempt, Attempt::Fatal(e) if is_vanished_io(e)));
    }

    fn spec(s: &str) -> OriginSpec {
        OriginSpec::parse(s).expect("a valid spec")
    }

    #[test]
    fn the_password_file_wins_and_never_shows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cr3t-pw\nignored\n").expect("write");
        let settings = OriginSettings {
            password_file: Some(file),
            ..OriginSettings::default()
        };
        let o = SmbOrigin::open(&spec("smb://bob:inline@host/music/a"), &settings)
            .expect("opens without contacting the server");
        assert_eq!(o.shared.password.expose(), "s3cr3t-pw");
        assert_eq!(o.shared.root, "a");
        let shown = format!("{o:?} {}", o.spec());
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("inline"),
            "{shown}"
        );
    }

    #[test]
    fn an_unreadable_password_file_is_an_error_at_open() {
        let settings = OriginSettings {
            password_file: Some("/nonexistent/pw".into()),
            ..OriginSettings::default()
        };
        let e = SmbOrigin::open(&spec("smb://bob@host/music"), &settings).unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
    }

    #[test]
    fn paths_are_joined_under_the_root_with_backslashes() {
        let o = SmbOrigin::open(
            &spec("smb://bob:pw@host/music/lib/rock"),
            &OriginSettings::default(),
        );
        // MUSICFS_SMB_PASSWORD may be set in the environment: either way it opens.
        let o = o.expect("opens");
        let p = o
            .shared
            .path_in_share(Path::new("a b/c.flac"))
            .expect("utf-8");
        assert_eq!(p, "lib\\rock\\a b\\c.flac");
        assert_eq!(
            o.shared.path_in_share(Path::new("")).expect("root"),
            "lib\\rock"
        );
        assert!(o.shared.path_in_share(Path::new("a\\b")).is_err());
    }

    #[test]
    fn an_unreachable_server_probes_offline_without_panicking() {
        let o = SmbOrigin::open(
            &spec("smb://bob:pw@127.0.0.1:1/music"),
            &OriginSettings {
                remote: super::super::remote::RemoteOptions {
                    timeout: std::time::Duration::from_millis(500),
                    attempts: 2,
                    ..Default::default()
                },
                ..OriginSettings::default()
            },
        )
        .expect("opens");
        assert!(matches!(o.probe(None), Health::Offline(_)));
    }
}
