//! One SSH connection with its SFTP channel: connecting, checking the host key against
//! known_hosts, logging in (key file, agent, password), and telling connection failures
//! (worth a reconnect and a retry) from answers of the server (not found, denied).
//!
//! Everything here runs on the origin runtime, inside [`crate::origin::remote::Remote::call`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::StatusCode;

use super::remote::Attempt;
use super::Secret;

/// How to log in. Its `Debug` shows which methods there are, never a secret.
pub(super) struct Login {
    pub user: String,
    /// A private key (from `identity_file`) and the file it came from.
    pub key: Option<(Arc<PrivateKey>, PathBuf)>,
    /// Try the agent at `SSH_AUTH_SOCK` (when no key file is given).
    pub agent: bool,
    /// A password (from `password_file` or the spec).
    pub password: Option<Secret>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("key_file", &self.key.as_ref().map(|(_, path)| path))
            .field("agent", &self.agent)
            .field("password", &self.password.is_some())
            .finish()
    }
}

/// Where the server is and how its key is checked.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The host as the spec gives it (an IPv6 address keeps its brackets).
    pub host: String,
    pub port: u16,
    pub known_hosts: PathBuf,
}

impl Target {
    /// The name known_hosts files it under: `host` for port 22, else `[host]:port`.
    pub fn known_hosts_name(&self) -> String {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        if self.port == 22 {
            bare.to_owned()
        } else {
            format!("[{bare}]:{}", self.port)
        }
    }
}

/// A live connection: the SSH session (kept so it stays open) and its SFTP channel.
pub(super) struct Conn {
    /// Counts connections of one origin: a file handle belongs to the one it was opened on.
    pub generation: u64,
    pub sftp: Arc<RawSftpSession>,
    ssh: client::Handle<HostCheck>,
}

impl Conn {
    /// Whether the connection is still usable (the server may have closed it).
    pub fn is_open(&self) -> bool {
        !self.ssh.is_closed()
    }
}

/// Checks the server's key against known_hosts; why it refused is left in `refused`
/// (russh only reports "unknown key").
struct HostCheck {
    target: Target,
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKey) -> Result<bool, Self::Error> {
        match verify_host_key(&self.target, server_key) {
            Ok(()) => Ok(true),
            Err(why) => {
                if let Ok(mut slot) = self.refused.lock() {
                    *slot = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// `Ok` if known_hosts holds `key` for the target; else why not, naming the host, the
/// key's type and fingerprint, and the file.
pub(super) fn verify_host_key(target: &Target, key: &PublicKey) -> Result<(), String> {
    let name = target.known_hosts_name();
    let file = target.known_hosts.display();
    let described = format!(
        "{} key {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    );
    if !target.known_hosts.exists() {
        return Err(format!(
            "host key of {name} ({described}) cannot be checked: known_hosts file {file} does not exist; refused"
        ));
    }
    let recorded = russh::keys::known_hosts::known_host_keys_path(
        &target.host_for_lookup(),
        target.port,
        &target.known_hosts,
    )
    .map_err(|e| format!("cannot read known_hosts file {file} to check {name}: {e}"))?;
    if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
        return Ok(());
    }
    let changed = recorded
        .iter()
        .find(|(_, k)| k.algorithm() == key.algorithm());
    Err(match changed {
        Some((line, _)) => format!(
            "host key of {name} CHANGED: the server shows {described}, {file} line {line} holds another; refused (possible man-in-the-middle)"
        ),
        None => format!("host key of {name} ({described}) is not in {file}; refused"),
    })
}

impl Target {
    /// The host as russh's known_hosts lookup wants it (it adds the brackets itself).
    fn host_for_lookup(&self) -> String {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }
}

/// Connects, checks the host key, logs in and starts the SFTP subsystem. A refused host
/// key or login is fatal (retrying cannot help); a network failure is worth a retry.
pub(super) async fn connect(
    target: &Target,
    login: &Login,
    generation: u64,
    request_timeout_secs: u64,
) -> Result<Conn, Attempt> {
    let config = Arc::new(client::Config {
        nodelay: true,
        ..client::Config::default()
    });
    let refused = Arc::new(Mutex::new(None));
    let check = HostCheck {
        target: target.clone(),
        refused: refused.clone(),
    };
    let addr = (target.host_for_lookup(), target.port);
    let mut ssh = match client::connect(config, addr, check).await {
        Ok(ssh) => ssh,
        Err(e) => {
            let why = refused.lock().ok().and_then(|mut r| r.take());
            return Err(match why {
                Some(why) => Attempt::Fatal(io::Error::new(io::ErrorKind::PermissionDenied, why)),
                None => Attempt::Retry(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("cannot connect to {}: {e}", target.known_hosts_name()),
                )),
            });
        }
    };
    authenticate(&mut ssh, target, login).await?;
    let lost = |what: &str, e: russh::Error| {
        Attempt::Retry(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("{what} on {}: {e}", target.known_hosts_name()),
        ))
    };
    let channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| lost("cannot open a session channel", e))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| lost("cannot start the sftp subsystem", e))?;
    let sftp = RawSftpSession::new(channel.into_stream());
    sftp.set_timeout(request_timeout_secs.max(1));
    sftp.init().await.map_err(|e| classify(e, "sftp init"))?;
    Ok(Conn {
        generation,
        sftp: Arc::new(sftp),
        ssh,
    })
}

/// Tries the key file, then the agent, then the password, as far as each is configured.
async fn authenticate(
    ssh: &mut client::Handle<HostCheck>,
    target: &Target,
    login: &Login,
) -> Result<(), Attempt> {
    let user = &login.user;
    let lost = |e: russh::Error| {
        Attempt::Retry(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("login to {} failed: {e}", target.known_hosts_name()),
        ))
    };
    let mut tried = Vec::new();
    if let Some((key, path)) = &login.key {
        let hash = if key.algorithm().is_rsa() {
            ssh.best_supported_rsa_hash().await.map_err(lost)?.flatten()
        } else {
            None
        };
        let with_hash = PrivateKeyWithHashAlg::new(key.clone(), hash);
        if ssh
            .authenticate_publickey(user, with_hash)
            .await
            .map_err(lost)?
            .success()
        {
            return Ok(());
        }
        tried.push(format!("key {}", path.display()));
    } else if login.agent {
        if by_agent(ssh, user).await? {
            return Ok(());
        }
        tried.push("the ssh agent".to_owned());
    }
    if let Some(password) = &login.password {
        if ssh
            .authenticate_password(user, password.expose())
            .await
            .map_err(lost)?
            .success()
        {
            return Ok(());
        }
        tried.push("password".to_owned());
    }
    let tried = if tried.is_empty() {
        "no method configured: give identity_file or password_file, or run an ssh agent".into()
    } else {
        format!("tried {}", tried.join(", "))
    };
    Err(Attempt::Fatal(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} refused the login of {user} ({tried})",
            target.known_hosts_name()
        ),
    )))
}

/// Logs in with each identity of the agent in turn; `Ok(false)` if none was accepted or
/// there is no agent to ask.
async fn by_agent(ssh: &mut client::Handle<HostCheck>, user: &str) -> Result<bool, Attempt> {
    let Ok(mut agent) = AgentClient::connect_env().await else {
        return Ok(false);
    };
    let Ok(identities) = agent.request_identities().await else {
        return Ok(false);
    };
    for key in identities {
        let hash = if key.algorithm().is_rsa() {
            Some(HashAlg::Sha256)
        } else {
            None
        };
        match ssh
            .authenticate_publickey_with(user, key, hash, &mut agent)
            .await
        {
            Ok(result) if result.success() => return Ok(true),
            Ok(_) => {}
            // The agent declined or failed for this key: try the next.
            Err(e) => tracing::debug!(error = %e, "ssh agent could not sign"),
        }
    }
    Ok(false)
}

/// Loads the private key in `path` (decrypting it with `passphrase` if it is encrypted).
pub(super) fn load_key(path: &Path, passphrase: Option<&Secret>) -> Result<PrivateKey, String> {
    russh::keys::load_secret_key(path, passphrase.map(Secret::expose)).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => format!(
            "identity file {} is encrypted: put its passphrase in password_file",
            path.display()
        ),
        // The error names neither the key nor the passphrase.
        other => format!("cannot load identity file {}: {other}", path.display()),
    })
}

/// How an SFTP request failed: a status the server answered is final (and mapped to the
/// errno the rest of MusicFS understands); anything else means the connection is in
/// doubt, so it is dropped and the request tried again on a fresh one.
pub(super) fn classify(e: SftpError, what: &str) -> Attempt {
    match e {
        SftpError::Status(status) => {
            let errno = match status.status_code {
                StatusCode::NoSuchFile => libc::ENOENT,
                StatusCode::PermissionDenied => libc::EACCES,
                StatusCode::OpUnsupported => libc::ENOTSUP,
                StatusCode::BadMessage => libc::EPROTO,
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    return Attempt::Retry(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("{what}: {}", status.status_code),
                    ))
                }
                _ => libc::EIO,
            };
            Attempt::Fatal(io::Error::from_raw_os_error(errno))
        }
        SftpError::Limited(msg) => Attempt::Fatal(io::Error::other(format!("{what}: {msg}"))),
        SftpError::Timeout => Attempt::Retry(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: the server did not answer"),
        )),
        other => Attempt::Retry(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("{what}: {other}"),
        )),
    }
}
