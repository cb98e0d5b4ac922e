//! [`OriginSpec`]: the URL-like string that names an origin, parsed into its parts.
//!
//! Accepted forms:
//! - `/music` (an absolute local path, taken verbatim: it may hold `:`, `?`, `%` or `@`),
//!   or `file:///music` / `file://localhost/music` (a URL: `%XX` escapes are decoded).
//!   Relative paths are refused: the caller resolves them first.
//! - `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=true&access_key_id=…&secret_access_key=…&session_token=…]`
//! - `sftp://[USER[:PASSWORD]@]HOST[:PORT][/PATH]`
//! - `smb://[USER[:PASSWORD]@]HOST[:PORT]/SHARE[/PATH]`
//!
//! Parsing never panics (a property test feeds it arbitrary strings). Credentials (a
//! userinfo password, the S3 key id, secret and session token) are kept in [`Secret`]s:
//! neither `Display` nor `Debug` shows them, nor does [`OriginSpec::key`], and an error
//! about a malformed spec shows the spec without its userinfo and query. So the display form
//! is safe to log, and `parse(display(spec))` gives the spec back minus its credentials.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::escape::{escaped, percent_decode, Part};
use super::OriginError;

/// A credential taken from a spec. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A credential read from elsewhere (a password file).
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The credential itself, for a driver to authenticate with (never to log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A parsed origin spec. See the module documentation for the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSpec {
    /// A local (or locally mounted) directory.
    Local(LocalSpec),
    /// An S3-compatible bucket.
    S3(S3Spec),
    /// A directory on an SFTP server.
    Sftp(SftpSpec),
    /// A directory in an SMB share.
    Smb(SmbSpec),
    /// An origin a plugin serves: `plugin://NAME/ROOT` (ROOT is the plugin's to read, e.g.
    /// an archive's path).
    Plugin(PluginSpec),
}

/// An origin served by a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The plugin's name.
    pub name: String,
    /// What the plugin is given to open (everything after `plugin://NAME/`).
    pub root: String,
}

/// A local origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSpec {
    /// The root directory as given (absolute, not yet canonicalised).
    pub root: PathBuf,
}

/// An S3 origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix the library lives under, without leading or trailing `/` (may be
    /// empty: the whole bucket).
    pub prefix: String,
    /// A non-AWS endpoint (MinIO, Garage, Ceph RGW), e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Address the bucket in the path rather than the host name.
    pub path_style: bool,
    /// Access key id (otherwise taken from the environment by the driver).
    pub access_key_id: Option<Secret>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
}

/// Where a remote server is, and whom to log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The user name, if given.
    pub user: Option<String>,
    /// The password, if given in the spec.
    pub password: Option<Secret>,
    /// Host name or address (an IPv6 address keeps its brackets).
    pub host: String,
    /// The port, if given (else the protocol's default).
    pub port: Option<u16>,
}

/// An SFTP origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpSpec {
    /// The server.
    pub server: Server,
    /// The root directory on the server, starting with `/`.
    pub path: String,
}

/// An SMB origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbSpec {
    /// The server.
    pub server: Server,
    /// The share name.
    pub share: String,
    /// The root directory inside the share, without leading or trailing `/` (may be empty).
    pub path: String,
}

impl OriginSpec {
    /// Parses a spec given as a string.
    pub fn parse(s: &str) -> Result<OriginSpec, OriginError> {
        if s.is_empty() {
            return Err(bad(s, "empty origin spec"));
        }
        if s.contains('\0') {
            return Err(bad(s, "contains a NUL byte"));
        }
        if s.starts_with('/') {
            return Ok(OriginSpec::Local(LocalSpec { root: s.into() }));
        }
        let Some((scheme, rest)) = split_scheme(s) else {
            // An scp-style `user:password@host:/path` lands here too: hide its userinfo.
            let path = match s.rfind('@') {
                Some(at) => format!("…@{}", &s[at + 1..]),
                None => s.to_owned(),
            };
            return Err(OriginError::RelativePath { path });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => parse_file(s, rest),
            "s3" => parse_s3(s, rest),
            "sftp" => parse_sftp(s, rest),
            "smb" => parse_smb(s, rest),
            "plugin" => {
                let (name, root) = rest.split_once('/').unwrap_or((rest, ""));
                if name.is_empty() {
                    return Err(bad(s, "no plugin name: plugin://NAME/ROOT"));
                }
                Ok(OriginSpec::Plugin(PluginSpec {
                    name: name.to_owned(),
                    root: root.to_owned(),
                }))
            }
            _ => Err(OriginError::UnknownScheme {
                spec: redact_raw(s),
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// Parses a spec given as an OS string (a command-line argument): an absolute path
    /// need not be UTF-8; anything else must be.
    pub fn parse_os(s: &OsStr) -> Result<OriginSpec, OriginError> {
        let bytes = s.as_bytes();
        if bytes.first() == Some(&b'/') && !bytes.contains(&0) {
            return Ok(OriginSpec::Local(LocalSpec { root: s.into() }));
        }
        match s.to_str() {
            Some(s) => OriginSpec::parse(s),
            None => Err(bad(
                &s.to_string_lossy(),
                "not UTF-8 (only an absolute local path may be)",
            )),
        }
    }

    /// A local origin rooted at `root` (which the caller has made absolute).
    pub fn local(root: impl Into<PathBuf>) -> OriginSpec {
        OriginSpec::Local(LocalSpec { root: root.into() })
    }

    /// `file`, `s3`, `sftp`, `smb` or `plugin`.
    pub fn scheme(&self) -> &'static str {
        match self {
            OriginSpec::Local(_) => "file",
            OriginSpec::S3(_) => "s3",
            OriginSpec::Sftp(_) => "sftp",
            OriginSpec::Smb(_) => "smb",
            OriginSpec::Plugin(_) => "plugin",
        }
    }

    /// The key the catalog registers this origin under (`Catalog::origin_id` takes it as a
    /// path). For a local origin it is the canonical root, exactly what catalogs keyed by
    /// path already hold; when the root cannot be resolved now (missing, unmounted) it is
    /// the given root with `.`, empty components and trailing `/` removed. For a remote
    /// origin it is the display form, which holds no credentials, without the S3 settings
    /// that do not change which objects are meant (region, path style), so adding one
    /// later does not make the bucket a new origin. Touches the file system for local
    /// origins.
    pub fn key(&self) -> OsString {
        match self {
            OriginSpec::Local(l) => l
                .root
                .canonicalize()
                .unwrap_or_else(|_| lexical_normal(&l.root))
                .into_os_string(),
            OriginSpec::S3(s3) => {
                let mut s3 = s3.clone();
                (s3.region, s3.path_style) = (None, false);
                OriginSpec::S3(s3).to_string().into()
            }
            remote => remote.to_string().into(),
        }
    }
}

impl FromStr for OriginSpec {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<OriginSpec, OriginError> {
        OriginSpec::parse(s)
    }
}

/// `root` without `.` or empty components (no `..` resolution: that needs the file
/// system, which could not resolve this root).
fn lexical_normal(root: &Path) -> PathBuf {
    root.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn bad(spec: &str, reason: impl Into<String>) -> OriginError {
    OriginError::BadSpec {
        spec: redact_raw(spec),
        reason: reason.into(),
    }
}

/// A spec that may not parse, with what could be a credential removed: everything up to
/// the last `@` of the part before any `?`, and the query.
fn redact_raw(s: &str) -> String {
    let Some((scheme, rest)) = split_scheme(s) else {
        return s.to_owned();
    };
    let before_query = rest.split(['?', '#']).next().unwrap_or("");
    let query = if before_query.len() < rest.len() {
        "?…"
    } else {
        ""
    };
    match before_query.rfind('@') {
        Some(at) => format!("{scheme}://…@{}{query}", &before_query[at + 1..]),
        None => format!("{scheme}://{before_query}{query}"),
    }
}

/// `(scheme, rest)` if `s` is `scheme://rest` with a well-formed scheme.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

fn parse_file(s: &str, rest: &str) -> Result<OriginSpec, OriginError> {
    if rest.contains(['?', '#']) {
        return Err(bad(
            s,
            "a file URL takes no query or fragment (write ? as %3F, # as %23)",
        ));
    }
    let Some(slash) = rest.find('/') else {
        return Err(bad(s, "a file URL needs an absolute path: file:///PATH"));
    };
    let host = &rest[..slash];
    if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
        return Err(bad(s, "a file URL names no host other than localhost"));
    }
    let path = percent_decode(&rest[slash..]).map_err(|r| bad(s, r))?;
    if path.contains(&0) {
        return Err(bad(s, "contains a NUL byte"));
    }
    Ok(OriginSpec::Local(LocalSpec {
        root: OsString::from_vec(path).into(),
    }))
}

/// A remote spec cut into authority, path (with its leading `/`, or empty) and query.
struct Parts<'a> {
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
}

fn split_parts<'a>(s: &str, rest: &'a str) -> Result<Parts<'a>, OriginError> {
    if rest.contains('#') {
        return Err(bad(s, "an origin spec takes no fragment (write # as %23)"));
    }
    let (before, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before.find('/') {
        Some(i) => before.split_at(i),
        None => (before, ""),
    };
    Ok(Parts {
        authority,
        path,
        query,
    })
}

fn parse_s3(s: &str, rest: &str) -> Result<OriginSpec, OriginError> {
    let parts = split_parts(s, rest)?;
    let bucket = parts.authority;
    if bucket.contains('@') {
        return Err(bad(s, "S3 credentials go in the query (access_key_id=, secret_access_key=) or the environment"));
    }
    let bucket_ok = !bucket.is_empty()
        && bucket.len() <= 255
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !bucket_ok {
        return Err(bad(
            s,
            "the bucket name must be letters, digits, '.', '-' or '_'",
        ));
    }
    let mut spec = S3Spec {
        bucket: bucket.to_owned(),
        prefix: trim_slashes(&decode_utf8(s, parts.path)?).to_owned(),
        endpoint: None,
        region: None,
        path_style: false,
        access_key_id: None,
        secret_access_key: None,
        session_token: None,
    };
    for (key, value) in query_pairs(s, parts.query)? {
        let dup = match key.as_str() {
            "endpoint" => spec.endpoint.replace(value).is_some(),
            "region" => spec.region.replace(value).is_some(),
            "path_style" => {
                spec.path_style = parse_bool(s, &value)?;
                false
            }
            "access_key_id" => spec.access_key_id.replace(Secret(value)).is_some(),
            "secret_access_key" => spec.secret_access_key.replace(Secret(value)).is_some(),
            "session_token" => spec.session_token.replace(Secret(value)).is_some(),
            other => {
                let known =
                    "endpoint, region, path_style, access_key_id, secret_access_key, session_token";
                return Err(bad(
                    s,
                    format!("unknown S3 parameter {other:?} (known: {known})"),
                ));
            }
        };
        if dup {
            return Err(bad(s, format!("S3 parameter {key:?} given twice")));
        }
    }
    Ok(OriginSpec::S3(spec))
}

fn parse_bool(s: &str, v: &str) -> Result<bool, OriginError> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad(s, "path_style is true or false")),
    }
}

/// The decoded `key=value` pairs of a query (empty pairs, as in `a=1&&b=2`, are ignored).
fn query_pairs(s: &str, query: Option<&str>) -> Result<Vec<(String, String)>, OriginError> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(bad(s, "a query parameter is KEY=VALUE"));
        };
        pairs.push((decode_utf8(s, k)?, decode_utf8(s, v)?));
    }
    Ok(pairs)
}

fn parse_sftp(s: &str, rest: &str) -> Result<OriginSpec, OriginError> {
    let parts = split_parts(s, rest)?;
    if parts.query.is_some() {
        return Err(bad(s, "sftp origins take no parameters"));
    }
    let server = parse_server(s, parts.authority)?;
    let path = decode_utf8(s, parts.path)?;
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Ok(OriginSpec::Sftp(SftpSpec { server, path }))
}

fn parse_smb(s: &str, rest: &str) -> Result<OriginSpec, OriginError> {
    let parts = split_parts(s, rest)?;
    if parts.query.is_some() {
        return Err(bad(s, "smb origins take no parameters"));
    }
    let server = parse_server(s, parts.authority)?;
    let path = parts.path.strip_prefix('/').unwrap_or(parts.path);
    let (share, inner) = path.split_once('/').unwrap_or((path, ""));
    let share = decode_utf8(s, share)?;
    if share.is_empty() {
        return Err(bad(
            s,
            "an smb origin names a share: smb://HOST/SHARE[/PATH]",
        ));
    }
    let path = trim_slashes(&decode_utf8(s, inner)?).to_owned();
    Ok(OriginSpec::Smb(SmbSpec {
        server,
        share,
        path,
    }))
}

/// `[USER[:PASSWORD]@]HOST[:PORT]`.
fn parse_server(s: &str, authority: &str) -> Result<Server, OriginError> {
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = decode_utf8(s, u)?;
            if user.is_empty() {
                return Err(bad(s, "empty user name before '@'"));
            }
            let password = p.map(|p| decode_utf8(s, p).map(Secret)).transpose()?;
            (Some(user), password)
        }
    };
    let (host, port) = split_host_port(s, hostport)?;
    Ok(Server {
        user,
        password,
        host: host.to_owned(),
        port,
    })
}

fn split_host_port<'a>(s: &str, hostport: &'a str) -> Result<(&'a str, Option<u16>), OriginError> {
    let (host, port) = if hostport.starts_with('[') {
        let Some(end) = hostport.find(']') else {
            return Err(bad(s, "unclosed '[' in the host"));
        };
        let (host, after) = hostport.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad(s, "a bracketed host is an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(bad(s, "unexpected text after the IPv6 address")),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if !host_ok {
        return Err(bad(
            s,
            "the host must be a name, an IPv4 address or a bracketed IPv6 address",
        ));
    }
    let port = match port {
        None => None,
        Some(p) => {
            let n = (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
                .filter(|&n| n != 0);
            Some(n.ok_or_else(|| bad(s, "the port must be a number from 1 to 65535"))?)
        }
    };
    Ok((host, port))
}

fn trim_slashes(p: &str) -> &str {
    p.trim_matches('/')
}

fn decode_utf8(s: &str, part: &str) -> Result<String, OriginError> {
    let bytes = percent_decode(part).map_err(|r| bad(s, r))?;
    let text =
        String::from_utf8(bytes).map_err(|_| bad(s, "a %-escape decodes to invalid UTF-8"))?;
    if text.contains('\0') {
        return Err(bad(s, "contains a NUL byte"));
    }
    Ok(text)
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            escaped(f, user, Part::User)?;
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl fmt::Display for OriginSpec {
    /// The spec without credentials; a local root shows as its path (lossily when it is not
    /// UTF-8).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginSpec::Local(l) => write!(f, "{}", l.root.display()),
            OriginSpec::S3(s3) => {
                write!(f, "s3://{}", s3.bucket)?;
                if !s3.prefix.is_empty() {
                    f.write_str("/")?;
                    escaped(f, &s3.prefix, Part::Path)?;
                }
                let mut sep = '?';
                for (key, value) in [("endpoint", &s3.endpoint), ("region", &s3.region)] {
                    if let Some(v) = value {
                        write!(f, "{sep}{key}=")?;
                        escaped(f, v, Part::Query)?;
                        sep = '&';
                    }
                }
                if s3.path_style {
                    write!(f, "{sep}path_style=true")?;
                }
                Ok(())
            }
            OriginSpec::Sftp(sftp) => {
                write!(f, "sftp://{}", sftp.server)?;
                escaped(f, &sftp.path, Part::Path)
            }
            OriginSpec::Plugin(p) => write!(f, "plugin://{}/{}", p.name, p.root),
            OriginSpec::Smb(smb) => {
                write!(f, "smb://{}/", smb.server)?;
                escaped(f, &smb.share, Part::Segment)?;
                if !smb.path.is_empty() {
                    f.write_str("/")?;
                    escaped(f, &smb.path, Part::Path)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
