//! Where an S3 origin's credentials come from, in order: the spec's query
//! (`access_key_id`, `secret_access_key`, `session_token`), the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the configured
//! credentials file ([`OriginSettings::credentials_file`]), then `~/.aws/credentials`.
//! A file is read in the AWS ini format, section by profile ([`OriginSettings::profile`],
//! else `AWS_PROFILE`, else `default`).
//!
//! No value read here ever reaches a message: errors name the file, the profile and the
//! key that is missing, never what was found.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::origin::{OriginSettings, S3Spec};

/// A credential value; its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Hidden(String);

impl Hidden {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A key pair, with the session token of temporary credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub key_id: Hidden,
    pub secret: Hidden,
    pub token: Option<Hidden>,
    /// Where they came from, for the log ("spec", "environment", a file and profile).
    pub from: String,
}

/// What the resolution may look at besides the spec and settings (the tests give their
/// own).
pub(crate) struct Env<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub home: Option<PathBuf>,
}

impl Env<'_> {
    pub(crate) fn process() -> Env<'static> {
        Env {
            var: &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }
}

/// The credentials for `spec`, or why there are none (a message without secrets).
pub(crate) fn resolve(
    spec: &S3Spec,
    settings: &OriginSettings,
    env: &Env<'_>,
) -> Result<Credentials, String> {
    match (&spec.access_key_id, &spec.secret_access_key) {
        (Some(id), Some(secret)) => {
            return Ok(Credentials {
                key_id: Hidden(id.expose().to_owned()),
                secret: Hidden(secret.expose().to_owned()),
                token: spec
                    .session_token
                    .as_ref()
                    .map(|t| Hidden(t.expose().to_owned())),
                from: "the origin spec".into(),
            })
        }
        (Some(_), None) => return Err("the spec has access_key_id but no secret_access_key".into()),
        (None, Some(_)) => return Err("the spec has secret_access_key but no access_key_id".into()),
        (None, None) => {}
    }
    match (
        (env.var)("AWS_ACCESS_KEY_ID"),
        (env.var)("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            return Ok(Credentials {
                key_id: Hidden(id),
                secret: Hidden(secret),
                token: (env.var)("AWS_SESSION_TOKEN").map(Hidden),
                from: "the environment".into(),
            })
        }
        (Some(_), None) => {
            return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
        }
        _ => {}
    }
    let profile = settings
        .profile
        .clone()
        .or_else(|| (env.var)("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    if let Some(file) = &settings.credentials_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read credentials file {}: {e}", file.display()))?;
        return from_ini(&text, &profile, file);
    }
    let default = env.home.as_ref().map(|h| h.join(".aws/credentials"));
    match default.as_deref().map(|f| (f, std::fs::read_to_string(f))) {
        Some((file, Ok(text))) => from_ini(&text, &profile, file),
        Some((file, Err(e))) if e.kind() != std::io::ErrorKind::NotFound => Err(format!(
            "cannot read credentials file {}: {e}",
            file.display()
        )),
        _ => Err(
            "no S3 credentials: give access_key_id/secret_access_key in the spec, \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a credentials_file, or ~/.aws/credentials"
                .into(),
        ),
    }
}

/// The credentials of `profile` in an AWS-format ini file (`[profile]` or
/// `[profile NAME]` sections, `key = value` lines, `#` and `;` comments).
pub(crate) fn from_ini(text: &str, profile: &str, file: &Path) -> Result<Credentials, String> {
    let mut in_profile = false;
    let mut found_section = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let name = section.strip_suffix(']').unwrap_or(section).trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            in_profile = name == profile;
            found_section |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = Hidden(value.trim().to_owned());
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    let shown = file.display();
    if !found_section {
        return Err(format!(
            "credentials file {shown} has no profile [{profile}]"
        ));
    }
    match (id, secret) {
        (Some(key_id), Some(secret)) if !key_id.0.is_empty() && !secret.0.is_empty() => {
            Ok(Credentials {
                key_id,
                secret,
                token: token.filter(|t| !t.0.is_empty()),
                from: format!("{shown} [{profile}]"),
            })
        }
        _ => Err(format!(
            "profile [{profile}] of credentials file {shown} needs aws_access_key_id and \
             aws_secret_access_key"
        )),
    }
}
