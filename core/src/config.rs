//! Configuration: a TOML file, overridden by `MUSICFS_*` environment variables and command
//! line flags (the binaries apply those on top of [`Config::load`]). Every field has a
//! default, so an empty file is a valid configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A configuration problem, reported to the user with the file it came from.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("bad config {path}: {message}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("bad config value for `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why it is refused.
        message: String,
    },
}

/// FUSE passthrough for reads of local sources (`passthrough`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PassthroughSetting {
    /// When the kernel grants it and the daemon has CAP_SYS_ADMIN; plain reads otherwise.
    #[default]
    Auto,
    /// Required: the mount fails without it.
    On,
    /// Never.
    Off,
}

/// How FUSE requests reach the daemon (`transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportSetting {
    /// FUSE-over-io_uring when the kernel allows it, else /dev/fuse.
    #[default]
    Auto,
    /// FUSE-over-io_uring, required: the mount fails without it.
    Uring,
    /// Per-worker /dev/fuse fds only.
    Dev,
}

impl std::str::FromStr for PassthroughSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("{s:?} is not auto, on or off")),
        }
    }
}

impl std::str::FromStr for TransportSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" => Ok(Self::Uring),
            "dev" => Ok(Self::Dev),
            _ => Err(format!("{s:?} is not auto, uring or dev")),
        }
    }
}

/// How changes in an origin are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify: local filesystems; changes show within about a second.
    #[default]
    Inotify,
    /// A stat walk every `poll_interval_secs`: NFS/SMB paths, where inotify sees only
    /// local writes.
    Poll,
    /// Only the refresh interval, SIGHUP and restarts.
    None,
}

/// One origin: where tracks live.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// The origin spec: a directory (local, or a mounted NFS/SMB share), `s3://…`,
    /// `sftp://…`, `smb://…` (`spec` is the same key).
    #[serde(alias = "spec")]
    pub path: PathBuf,
    /// A name for logs and `musicfs stats` (default: the spec).
    #[serde(default)]
    pub name: Option<String>,
    /// Lower wins when a track is in several origins (default: the order given). Origins
    /// are used in this order.
    #[serde(default)]
    pub priority: Option<i64>,
    /// How changes are noticed.
    #[serde(default)]
    pub watch: WatchMode,
    /// Seconds between stat walks with `watch = "poll"` (remote origins are always polled).
    #[serde(default = "default_poll_secs")]
    pub poll_interval_secs: f64,
    /// S3: a credentials file in the AWS format (`[profile]` sections with
    /// `aws_access_key_id` / `aws_secret_access_key`), instead of the environment.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// S3: the profile to take from the credentials file (default: `default`, or
    /// `AWS_PROFILE`).
    #[serde(default)]
    pub profile: Option<String>,
    /// SFTP: the private key to log in with (default: the ssh agent).
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// SFTP: the known_hosts file the server's host key must be in (default:
    /// `~/.ssh/known_hosts`).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// SMB (or SFTP with a password): a file whose first line is the password (default:
    /// `MUSICFS_SMB_PASSWORD`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Remote origins: the most one request may take, retries included, in seconds
    /// (default 5). An uncached read of an unreachable origin fails (EIO) after it, or
    /// moves to a copy of the file in another origin. (`timeout` is the same key.)
    #[serde(default, alias = "timeout")]
    pub timeout_secs: Option<f64>,
    /// Remote origins: requests in flight at most (default 8; `max_concurrency` is the
    /// same key).
    #[serde(default, alias = "max_concurrency")]
    pub concurrency: Option<usize>,
    /// Remote origins: payload bytes per second at most, on average (`"2M"` is 2 MiB/s;
    /// same units as `cache_budget`); unset: no limit.
    #[serde(default)]
    pub bandwidth_limit: Option<ByteSize>,
}

fn default_poll_secs() -> f64 {
    60.0
}

impl OriginConfig {
    /// A local origin with default settings.
    pub fn local(path: PathBuf) -> OriginConfig {
        OriginConfig {
            path,
            name: None,
            priority: None,
            watch: WatchMode::Inotify,
            poll_interval_secs: default_poll_secs(),
            credentials_file: None,
            profile: None,
            identity_file: None,
            known_hosts: None,
            password_file: None,
            timeout_secs: None,
            concurrency: None,
            bandwidth_limit: None,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the catalog and the snapshot live.
    pub state_dir: Option<PathBuf>,
    /// The path template (see docs/TEMPLATES.md).
    pub template: String,
    /// Origins, in priority order (`[[origin]]` or `[[origins]]` tables; sorted by their
    /// `priority` keys when given).
    #[serde(rename = "origin", alias = "origins")]
    pub origins: Vec<OriginConfig>,
    /// FUSE worker threads; 0 means one per CPU.
    pub threads: usize,
    /// Kernel entry cache timeout, seconds.
    pub entry_timeout_secs: f64,
    /// Kernel attribute cache timeout, seconds.
    pub attr_timeout_secs: f64,
    /// How long the kernel may cache "no such name", seconds (0: not at all); unset
    /// follows `entry_timeout_secs`, so `entry_timeout_secs = 0` caches nothing.
    pub negative_timeout_secs: Option<f64>,
    /// Kernel readahead for the mount, KiB (root only; best effort).
    pub readahead_kb: u32,
    /// When reads go through the daemon (no passthrough), let the kernel open files without
    /// asking it (one round trip less per open).
    pub skip_open: bool,
    /// Seconds between full stat walks of every origin (0: never), on top of watching.
    pub refresh_interval_secs: f64,
    /// Let other users see the mount (needs `user_allow_other` when unprivileged).
    pub allow_other: bool,
    /// Owner shown for every node, overriding the origin's (default: each source file's
    /// owner; the daemon's user where the origin does not say).
    pub uid: Option<u32>,
    /// Group shown for every node, overriding the origin's (default: each source file's
    /// group; the daemon's group where the origin does not say).
    pub gid: Option<u32>,
    /// Permission bits cleared from every mode shown (`0o022`, `0o027`), on top of the
    /// origin's modes. At most `0o777`.
    pub umask: u32,
    /// Log filter (`info`, `debug`, `musicfs_fusedev=trace`, ...).
    pub log_level: String,
    /// FUSE passthrough for reads of local sources.
    pub passthrough: PassthroughSetting,
    /// FUSE request transport.
    pub transport: TransportSetting,
    /// Write Y to /sys/module/fuse/parameters/enable_uring at mount (root only).
    pub enable_uring_param: bool,
    /// The share (0 to 1) of an origin's tracks that may vanish in one scan; more marks
    /// the origin offline instead of removing them.
    pub mass_removal_threshold: f64,
    /// Bytes of remote file content the chunk cache keeps (least recently used chunks go
    /// first): a number of bytes or a string with a binary unit (`"10G"`, `"512MiB"`).
    pub cache_budget: ByteSize,
    /// Saved searches shown as `/.collections/NAME/` (docs/CONFIG.md, "Collections").
    pub collections: BTreeMap<String, CollectionConfig>,
    /// Most results a `/.search/QUERY/` directory (and `musicfs search`) shows.
    pub search_limit: usize,
    /// Seconds a track must stay open to count as played (`Recently Played`, `Most
    /// Played`); 0 counts every open.
    pub play_after_secs: u64,
    /// Seconds between health probes of each origin (0: never).
    pub probe_interval_secs: f64,
    /// A probe slower than this (milliseconds) makes its origin "degraded".
    pub degraded_after_ms: u64,
    /// The control API's Unix socket (default: `<state_dir>/control.sock`).
    pub control_socket: Option<PathBuf>,
    /// Where the HTTP listener for `/metrics`, `/health` and `/events` (Server-Sent
    /// Events) listens, e.g. `"127.0.0.1:9464"` (default: none).
    pub metrics_listen: Option<String>,
    /// The access log of events, JSON lines (default: `<state_dir>/access.log`; `"off"`:
    /// none).
    pub access_log: Option<PathBuf>,
    /// The access log is rotated past this size (same units as `cache_budget`).
    pub access_log_max_bytes: ByteSize,
    /// Rotated access logs kept (`access.log.1` is the newest).
    pub access_log_keep: usize,
    /// Where events are posted (`[[webhook]]` or `[[webhooks]]` tables).
    #[serde(rename = "webhook", alias = "webhooks")]
    pub webhooks: Vec<WebhookConfig>,
    /// Prefetch: how many of the next tracks of an album being played get their first
    /// bytes fetched into the chunk cache (remote origins; 0: prefetch off).
    pub prefetch_tracks: usize,
    /// Prefetch starts once a track has been read this far (same units as `cache_budget`).
    pub prefetch_after: ByteSize,
    /// How much of each next track's start is prefetched (whole chunk windows).
    pub prefetch_head: ByteSize,
    /// Then fetch the next track whole, while nothing else waits on its origin.
    pub prefetch_whole_next: bool,
    /// A second chunk cache tier in an S3-compatible bucket that several daemons share
    /// (`"s3://BUCKET/PREFIX?endpoint=http://host:port"`; credentials as for S3 origins):
    /// read on a local miss before the origin, written after a fetch from the origin.
    pub shared_tier: Option<String>,
    /// The file whose first line is the site's tier key (at least 16 bytes, the same on
    /// every daemon): window records in the tier are signed with it, and records that are
    /// not are ignored. Required with `shared_tier`.
    pub shared_tier_key_file: Option<PathBuf>,
    /// Where native plugins are loaded from (default: `<state_dir>/plugins`); only files
    /// there, owned by the daemon's user or root and writable by no one else, load.
    pub plugin_dir: Option<PathBuf>,
    /// Plugins loaded at start (file names in `plugin_dir`, or plugin crate names:
    /// `titlecase` finds `libmusicfs_plugin_titlecase.so`).
    pub plugins: Vec<String>,
    /// What each plugin may reach (`[plugin_grants.NAME]`, NAME as the plugin names
    /// itself): nothing unless granted here.
    pub plugin_grants: BTreeMap<String, PluginGrant>,
    /// Each plugin's settings (`[plugin_settings.NAME]`: strings it reads by key; an API
    /// key, a server's URL).
    pub plugin_settings: BTreeMap<String, BTreeMap<String, String>>,
}

/// One `[plugin_grants.NAME]` table: the network a plugin may reach through the host.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginGrant {
    /// Hosts it may GET from: `host` (any port) or `host:port`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Requests per second to any one host, at most (MusicBrainz asks for 1).
    #[serde(default = "default_plugin_rate")]
    pub requests_per_second: f64,
}

fn default_plugin_rate() -> f64 {
    1.0
}

/// One `[[webhook]]` table: events posted as JSON to a URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// Kinds sent (`file.opened`, `library.changed`, ..., or a prefix ending in `.` such
    /// as `file.`); empty: every kind.
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC-SHA256 key the `X-MusicFS-Signature` header is made with, read from this
    /// file's first line.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The key itself (prefer `secret_file`: it keeps the key out of the configuration).
    /// Never shown by `musicfs config show`.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// Retries of a failed delivery, waiting 0.5 s, 1 s, 2 s, ... between them.
    #[serde(default = "default_webhook_retries")]
    pub max_retries: u32,
    /// Events waiting for delivery at most; past it the oldest are dropped (and counted).
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
}

fn default_webhook_retries() -> u32 {
    5
}

fn default_webhook_queue() -> usize {
    1024
}

/// One `[collections.NAME]` table: a saved search.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The query (docs/SEARCH.md).
    pub query: String,
    /// The order: `relevance` (default), `added`, `year`, `artist`, `album` or `title`,
    /// each reversed by a leading `-`.
    pub sort: Option<String>,
    /// Most tracks shown (default 10000).
    pub limit: Option<usize>,
}

/// A byte count read from the config: an integer (bytes) or a string with an optional
/// binary unit: `K`, `M`, `G`, `T` (each 1024 times the one before; `KB`/`KiB` and the
/// like mean the same), decimals allowed (`"1.5G"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// The default `cache_budget`: 10 GiB.
pub const DEFAULT_CACHE_BUDGET: u64 = 10 << 30;

/// The smallest `cache_budget`: a few chunking windows.
pub const MIN_CACHE_BUDGET: u64 = 64 << 20;

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_byte_size(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `10G`, `512 MiB`, `1.5T`, `4096` (see [`ByteSize`]).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 10G or 512M"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Default of [`Config::search_limit`].
pub const DEFAULT_SEARCH_LIMIT: usize = 200;

/// Default of [`Config::play_after_secs`].
pub const DEFAULT_PLAY_AFTER_SECS: u64 = 10;

impl Default for Config {
    fn default() -> Config {
        Config {
            state_dir: None,
            template: crate::template::DEFAULT_TEMPLATE.to_string(),
            origins: Vec::new(),
            threads: 0,
            entry_timeout_secs: 3600.0,
            attr_timeout_secs: 3600.0,
            negative_timeout_secs: None,
            readahead_kb: 1024,
            skip_open: false,
            refresh_interval_secs: 3600.0,
            allow_other: false,
            uid: None,
            gid: None,
            umask: 0,
            log_level: "info".to_string(),
            passthrough: PassthroughSetting::Auto,
            transport: TransportSetting::Auto,
            enable_uring_param: false,
            mass_removal_threshold: 0.5,
            cache_budget: ByteSize(DEFAULT_CACHE_BUDGET),
            collections: BTreeMap::new(),
            search_limit: DEFAULT_SEARCH_LIMIT,
            play_after_secs: DEFAULT_PLAY_AFTER_SECS,
            probe_interval_secs: 30.0,
            degraded_after_ms: 1000,
            control_socket: None,
            metrics_listen: None,
            access_log: None,
            access_log_max_bytes: ByteSize(16 << 20),
            access_log_keep: 3,
            webhooks: Vec::new(),
            prefetch_tracks: 2,
            prefetch_after: ByteSize(256 << 10),
            prefetch_head: ByteSize(1 << 20),
            prefetch_whole_next: true,
            shared_tier: None,
            shared_tier_key_file: None,
            plugin_dir: None,
            plugins: Vec::new(),
            plugin_grants: BTreeMap::new(),
            plugin_settings: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        cfg.sort_origins();
        Ok(cfg)
    }

    /// Orders the origins by `priority` (an origin without one ranks by its place in the
    /// list; equal priorities keep their order).
    pub fn sort_origins(&mut self) {
        let mut ranked: Vec<(i64, OriginConfig)> = std::mem::take(&mut self.origins)
            .into_iter()
            .enumerate()
            .map(|(i, o)| (o.priority.unwrap_or(i as i64), o))
            .collect();
        ranked.sort_by_key(|(p, _)| *p);
        self.origins = ranked.into_iter().map(|(_, o)| o).collect();
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let polls = self.origins.iter().flat_map(|o| {
            [("poll_interval_secs", o.poll_interval_secs)]
                .into_iter()
                .chain(o.timeout_secs.map(|t| ("timeout_secs", t)))
        });
        if let Some(o) = self
            .origins
            .iter()
            .find(|o| o.bandwidth_limit == Some(ByteSize(0)))
        {
            return Err(ConfigError::Invalid {
                key: "bandwidth_limit",
                message: format!(
                    "origin {}: 0 bytes per second can read nothing (leave it unset for no limit)",
                    o.path.display()
                ),
            });
        }
        if let Some(o) = self.origins.iter().find(|o| o.concurrency == Some(0)) {
            return Err(ConfigError::Invalid {
                key: "concurrency",
                message: format!(
                    "origin {}: 0 requests in flight can read nothing",
                    o.path.display()
                ),
            });
        }
        for (key, v) in [
            ("entry_timeout_secs", self.entry_timeout_secs),
            ("attr_timeout_secs", self.attr_timeout_secs),
            ("negative_timeout_secs", self.negative_timeout_secs()),
            ("refresh_interval_secs", self.refresh_interval_secs),
            ("probe_interval_secs", self.probe_interval_secs),
        ]
        .into_iter()
        .chain(polls)
        {
            if !v.is_finite() || !(0.0..=1e9).contains(&v) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{v} is not a number of seconds between 0 and 1e9"),
                });
            }
        }
        if !(4..=1 << 20).contains(&self.readahead_kb) {
            return Err(ConfigError::Invalid {
                key: "readahead_kb",
                message: format!("{} is not between 4 and 1048576 KiB", self.readahead_kb),
            });
        }
        let share = self.mass_removal_threshold;
        if !share.is_finite() || !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::Invalid {
                key: "mass_removal_threshold",
                message: format!("{share} is not a share between 0 and 1"),
            });
        }
        if self.cache_budget.0 < MIN_CACHE_BUDGET {
            return Err(ConfigError::Invalid {
                key: "cache_budget",
                message: format!(
                    "{} bytes is less than the smallest budget, {} (64M)",
                    self.cache_budget.0, MIN_CACHE_BUDGET
                ),
            });
        }
        if self.shared_tier.is_some() && self.shared_tier_key_file.is_none() {
            return Err(ConfigError::Invalid {
                key: "shared_tier_key_file",
                message: "a shared tier needs a key file (the same key on every daemon that \
                          shares it), so that records another party wrote are never trusted"
                    .into(),
            });
        }
        for (name, g) in &self.plugin_grants {
            if !(g.requests_per_second > 0.0 && g.requests_per_second <= 100.0) {
                return Err(ConfigError::Invalid {
                    key: "plugin_grants",
                    message: format!(
                        "{name}: requests_per_second must be above 0 and at most 100, not {}",
                        g.requests_per_second
                    ),
                });
            }
            if let Some(bad) = g
                .hosts
                .iter()
                .find(|h| h.is_empty() || h.contains(['/', '@', '*', ' ']))
            {
                return Err(ConfigError::Invalid {
                    key: "plugin_grants",
                    message: format!("{name}: {bad:?} is not a host or host:port"),
                });
            }
        }
        if self.umask > 0o777 {
            return Err(ConfigError::Invalid {
                key: "umask",
                message: format!("{:#o} has bits beyond 0o777", self.umask),
            });
        }
        crate::template::Template::parse(&self.template).map_err(|e| ConfigError::Invalid {
            key: "template",
            message: e.to_string(),
        })?;
        Ok(())
    }

    /// The state directory: the configured one, else `$XDG_STATE_HOME/musicfs`, else
    /// `/var/lib/musicfs` for root and `~/.local/state/musicfs` for others.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        default_state_dir()
    }

    /// Where plugins load from: `plugin_dir`, else `<state_dir>/plugins`.
    pub fn plugin_dir(&self) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("plugins"))
    }

    /// The control socket: `control_socket`, else `<state_dir>/control.sock`.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.state_dir().join("control.sock"))
    }

    /// The access log, unless it is `"off"`: `access_log`, else `<state_dir>/access.log`.
    pub fn access_log_path(&self) -> Option<PathBuf> {
        match &self.access_log {
            Some(p) if p.as_os_str() == "off" => None,
            Some(p) => Some(p.clone()),
            None => Some(self.state_dir().join("access.log")),
        }
    }

    /// The configuration as TOML (what `musicfs config show` prints; webhook secrets
    /// given inline are left out).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }

    /// Entry timeout as a duration.
    pub fn entry_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.entry_timeout_secs)
    }

    /// Seconds the kernel may cache a missing name: the configured value, else the entry
    /// timeout.
    fn negative_timeout_secs(&self) -> f64 {
        self.negative_timeout_secs
            .unwrap_or(self.entry_timeout_secs)
    }

    /// Negative-entry timeout as a duration.
    pub fn negative_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.negative_timeout_secs())
    }

    /// Attribute timeout as a duration.
    pub fn attr_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.attr_timeout_secs)
    }

    /// Worker threads: the configured number, or one per CPU.
    pub fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Parses a umask as written on a command line: octal digits (`022`, `0o027`), at most
/// `777`.
pub fn parse_umask(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("{s:?} is not an octal umask between 000 and 777")),
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("musicfs");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/musicfs");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/musicfs"),
        None => PathBuf::from(".musicfs-state"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_budget_takes_bytes_or_a_binary_unit() {
        let budget = |t: &str| Config::parse(t).map(|c| c.cache_budget.0);
        assert_eq!(budget(""), Ok(10 << 30));
        assert_eq!(budget("cache_budget = 1073741824"), Ok(1 << 30));
        assert_eq!(budget("cache_budget = \"10G\""), Ok(10 << 30));
        assert_eq!(budget("cache_budget = \"512 MiB\""), Ok(512 << 20));
        assert_eq!(budget("cache_budget = \"1.5g\""), Ok(3 << 29));
        assert!(budget("cache_budget = \"10X\"").is_err());
        assert!(budget("cache_budget = \"lots\"").is_err());
        assert!(budget("cache_budget = -1").is_err());
        let small = Config::parse("cache_budget = \"1M\"").unwrap();
        assert!(small.validate().is_err());
        assert!(Config::parse("cache_budget = \"64M\"")
            .unwrap()
            .validate()
            .is_ok());
    }

    #[test]
    fn origins_tables_take_spec_name_priority_and_limits() {
        let c = Config::parse(
            "[[origins]]\nname = \"b\"\nspec = \"/b\"\npriority = 5\nmax_concurrency = 3\ntimeout = 2\nbandwidth_limit = \"2M\"\n\
             [[origins]]\nname = \"a\"\nspec = \"/a\"\npriority = 1\n\
             [[origins]]\nspec = \"/c\"\n",
        )
        .unwrap();
        let names: Vec<_> = c.origins.iter().map(|o| o.path.clone()).collect();
        // "/c" has no priority: its place (2) ranks it between 1 and 5.
        assert_eq!(names, ["/a", "/c", "/b"].map(PathBuf::from));
        let b = &c.origins[2];
        assert_eq!(b.name.as_deref(), Some("b"));
        assert_eq!(b.concurrency, Some(3));
        assert_eq!(b.timeout_secs, Some(2.0));
        assert_eq!(b.bandwidth_limit, Some(ByteSize(2 << 20)));
        assert!(c.validate().is_ok());
        let zero = Config::parse("[[origins]]\nspec = \"/x\"\nbandwidth_limit = 0\n").unwrap();
        assert!(zero.validate().is_err());
        assert!(Config::parse("[[origins]]\nspec = \"/x\"\nspeed = 1\n").is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn origins_and_values_parse() {
        let c = Config::parse(
            "threads = 2\nentry_timeout_secs = 5\n[[origin]]\npath = \"/music\"\n[[origin]]\npath = \"/nfs\"\nwatch = \"poll\"\npoll_interval_secs = 30\n",
        )
        .unwrap();
        assert_eq!(c.origins[0].watch, WatchMode::Inotify);
        assert_eq!(c.origins[1].watch, WatchMode::Poll);
        assert_eq!(c.origins[1].poll_interval_secs, 30.0);
        assert_eq!(c.threads, 2);
        assert_eq!(c.entry_timeout(), Duration::from_secs(5));
        assert_eq!(c.origins.len(), 2);
        assert_eq!(c.origins[1].path, PathBuf::from("/nfs"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::parse("treads = 2\n").unwrap_err();
        assert!(err.contains("treads"), "{err}");
    }

    #[test]
    fn modes_parse_from_their_flag_words_only() {
        assert_eq!(
            "on".parse::<PassthroughSetting>().ok(),
            Some(PassthroughSetting::On)
        );
        assert_eq!(
            "dev".parse::<TransportSetting>().ok(),
            Some(TransportSetting::Dev)
        );
        assert!("yes".parse::<PassthroughSetting>().is_err());
        assert!("io_uring".parse::<TransportSetting>().is_err());
    }

    #[test]
    fn umask_parses_as_octal_from_flags_and_toml() {
        assert_eq!(parse_umask("022"), Ok(0o022));
        assert_eq!(parse_umask("0o027"), Ok(0o027));
        assert_eq!(parse_umask("7"), Ok(0o007));
        assert!(parse_umask("088").is_err());
        assert!(parse_umask("1000").is_err());
        assert!(parse_umask("").is_err());
        assert_eq!(Config::parse("umask = 0o022\n").unwrap().umask, 0o022);
    }

    #[test]
    fn a_umask_beyond_permission_bits_is_invalid() {
        let c = Config {
            umask: 0o1000,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn negative_timeout_is_invalid() {
        let c = Config {
            attr_timeout_secs: -1.0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn missing_names_are_cached_as_long_as_entries_unless_set_apart() {
        let c = Config::parse("entry_timeout_secs = 0\n").unwrap();
        assert_eq!(c.negative_timeout(), Duration::ZERO);
        let c = Config::parse("negative_timeout_secs = 2.5\n").unwrap();
        assert_eq!(c.negative_timeout(), Duration::from_millis(2500));
        assert_eq!(c.entry_timeout(), Duration::from_secs(3600));
        let bad = Config {
            negative_timeout_secs: Some(f64::NAN),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn readahead_out_of_range_is_refused() {
        let c = Config::parse("readahead_kb = 0\n").unwrap();
        assert!(c.validate().is_err());
        assert_eq!(Config::default().readahead_kb, 1024);
    }

    #[test]
    fn plugin_grants_and_settings_parse_and_are_checked() {
        let c = Config::parse(
            "[plugin_grants.mb]\nhosts = [\"musicbrainz.org\", \"127.0.0.1:8080\"]\n\
             [plugin_settings.mb]\nacoustid_key = \"k\"\n",
        )
        .unwrap();
        let g = &c.plugin_grants["mb"];
        assert_eq!(g.hosts, ["musicbrainz.org", "127.0.0.1:8080"]);
        assert_eq!(g.requests_per_second, 1.0);
        assert_eq!(c.plugin_settings["mb"]["acoustid_key"], "k");
        for bad in [
            "[plugin_grants.mb]\nhosts = [\"http://x/\"]",
            "[plugin_grants.mb]\nhosts = [\"*\"]",
            "[plugin_grants.mb]\nrequests_per_second = 0",
            "[plugin_grants.mb]\nport = 1",
        ] {
            let parsed = Config::parse(bad).map_err(|e| e.to_string());
            assert!(
                parsed
                    .and_then(|c| c.validate().map_err(|e| e.to_string()))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn mass_removal_threshold_parses_and_must_be_a_share() {
        let c = Config::parse("mass_removal_threshold = 0.8").unwrap();
        assert_eq!(c.mass_removal_threshold, 0.8);
        assert!(c.validate().is_ok());
        assert_eq!(Config::default().mass_removal_threshold, 0.5);
        let c = Config {
            mass_removal_threshold: 1.5,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}

#[cfg(test)]
mod control_tests {
    use super::*;

    #[test]
    fn the_configuration_shown_parses_back_to_itself_without_inline_secrets() {
        let text = r#"
            template = "$artist/$title"
            cache_budget = "1G"
            metrics_listen = "127.0.0.1:9464"
            [[origin]]
            path = "/music"
            name = "nas"
            [[webhook]]
            url = "http://127.0.0.1:8080/hook"
            events = ["file.", "library.changed"]
            secret = "hunter2"
            [collections.jazz]
            query = "genre:jazz"
        "#;
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.webhooks[0].max_retries, 5);
        let shown = cfg.to_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        let back = Config::parse(&shown).unwrap();
        assert_eq!(back.webhooks[0].secret, None);
        assert_eq!(
            Config {
                webhooks: cfg.webhooks.clone(),
                ..back
            },
            Config {
                webhooks: cfg.webhooks.clone(),
                ..cfg.clone()
            }
        );
        assert_eq!(
            cfg.control_socket_path(),
            cfg.state_dir().join("control.sock")
        );
        let off = Config::parse("access_log = \"off\"").unwrap();
        assert_eq!(off.access_log_path(), None);
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    #[test]
    fn every_toml_example_in_the_configuration_docs_parses_and_validates() {
        let doc = include_str!("../../docs/CONFIG.md");
        let mut blocks = 0;
        for block in doc.split("```toml").skip(1) {
            let text = block.split("```").next().unwrap_or("");
            let cfg = Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            cfg.validate().unwrap_or_else(|e| panic!("{e}"));
            blocks += 1;
        }
        assert!(blocks >= 2);
    }
}
