//! The host's services for enrichers (`musicfs_plugin_api::HostV1`): HTTP GET to the hosts
//! the operator granted the plugin (`[plugin_grants.NAME]`), at most `requests_per_second`
//! to any one host, with the daemon's User-Agent, and the plugin's settings
//! (`[plugin_settings.NAME]`). A plugin granted nothing reaches nothing.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use musicfs_core::config::PluginGrant;
use musicfs_plugin_api::{EmitBytes, EmitStr, HostV1, Str, HOST_DENIED, HOST_FAILED};

/// The most body one request hands a plugin.
pub const MAX_BODY: u64 = 16 << 20;
/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The User-Agent every plugin request carries (MusicBrainz asks for an application name,
/// its version and a contact).
pub fn user_agent(plugin: &str) -> String {
    format!(
        "MusicFS/{} ( plugin {plugin}; https://github.com/musicfs/musicfs )",
        env!("CARGO_PKG_VERSION")
    )
}

/// What the operator allows plugins, and when each (plugin, host) last asked.
#[derive(Debug, Default)]
pub struct Grants {
    grants: BTreeMap<String, PluginGrant>,
    settings: BTreeMap<String, BTreeMap<String, String>>,
    last: Mutex<HashMap<(String, String), Instant>>,
}

/// Why a URL may not be fetched.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not http(s), or no host in it.
    BadUrl,
    /// The plugin's grant does not name the host.
    NotGranted(String),
}

impl Grants {
    /// The configured grants and settings.
    pub fn new(
        grants: BTreeMap<String, PluginGrant>,
        settings: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Grants {
        Grants {
            grants,
            settings,
            last: Mutex::default(),
        }
    }

    /// Whether `plugin` may GET `url`: its `host:port` when so.
    pub fn check(&self, plugin: &str, url: &str) -> Result<String, Refused> {
        let parsed = reqwest::Url::parse(url).map_err(|_| Refused::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(Refused::BadUrl);
        }
        let host = parsed
            .host_str()
            .ok_or(Refused::BadUrl)?
            .to_ascii_lowercase();
        let port = parsed.port_or_known_default().ok_or(Refused::BadUrl)?;
        let with_port = format!("{host}:{port}");
        let granted = self.grants.get(plugin).is_some_and(|g| {
            g.hosts.iter().any(|h| {
                let h = h.to_ascii_lowercase();
                h == host || h == with_port
            })
        });
        if granted {
            Ok(with_port)
        } else {
            Err(Refused::NotGranted(with_port))
        }
    }

    /// Waits until `plugin` may send its next request to `host` (the grant's rate).
    fn pace(&self, plugin: &str, host: &str) {
        let rate = self
            .grants
            .get(plugin)
            .map_or(1.0, |g| g.requests_per_second);
        let gap = Duration::from_secs_f64(1.0 / rate);
        let key = (plugin.to_string(), host.to_string());
        loop {
            let wait = {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match last.get(&key) {
                    Some(t) if now < *t + gap => *t + gap - now,
                    _ => {
                        last.insert(key, now);
                        return;
                    }
                }
            };
            std::thread::sleep(wait);
        }
    }

    /// GETs `url` for `plugin`: status and body.
    pub fn get(&self, plugin: &str, url: &str) -> Result<(u16, Vec<u8>), i32> {
        let host = match self.check(plugin, url) {
            Ok(h) => h,
            Err(why) => {
                tracing::warn!(plugin, url, ?why, "plugin request refused: not granted");
                return Err(HOST_DENIED);
            }
        };
        self.pace(plugin, &host);
        let client = reqwest::blocking::Client::builder()
            .user_agent(user_agent(plugin))
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| HOST_FAILED)?;
        let reply = client.get(url).send().map_err(|e| {
            tracing::warn!(plugin, url, error = %e, "plugin request failed");
            HOST_FAILED
        })?;
        let status = reply.status().as_u16();
        let mut body = Vec::new();
        reply
            .take(MAX_BODY + 1)
            .read_to_end(&mut body)
            .map_err(|_| HOST_FAILED)?;
        if body.len() as u64 > MAX_BODY {
            tracing::warn!(plugin, url, "plugin request's answer is too large");
            return Err(HOST_FAILED);
        }
        tracing::debug!(plugin, url, status, bytes = body.len(), "plugin request");
        Ok((status, body))
    }

    /// `plugin`'s setting `key`.
    pub fn setting(&self, plugin: &str, key: &str) -> Option<&str> {
        self.settings.get(plugin)?.get(key).map(String::as_str)
    }
}

/// What a `HostV1` call's `ctx` points at.
pub struct CallHost<'a> {
    /// The grants.
    pub grants: &'a Grants,
    /// The plugin calling.
    pub plugin: &'a str,
}

impl CallHost<'_> {
    /// The table for a call; valid while `self` is.
    pub fn table(&self) -> HostV1 {
        HostV1 {
            size: std::mem::size_of::<HostV1>(),
            ctx: self as *const CallHost<'_> as *mut c_void,
            http_get,
            setting,
        }
    }
}

unsafe extern "C" fn http_get(
    ctx: *mut c_void,
    url: Str,
    body: EmitBytes,
    body_ctx: *mut c_void,
) -> i32 {
    // SAFETY: `ctx` is the CallHost that made the table, alive for the call.
    let host = unsafe { &*(ctx as *const CallHost<'_>) };
    // SAFETY: the plugin's string lives for the call.
    let Some(url) = (unsafe { url.as_str() }) else {
        return HOST_FAILED;
    };
    match host.grants.get(host.plugin, url) {
        Ok((status, bytes)) => {
            // SAFETY: the plugin's callback with its context; the bytes live for the call.
            unsafe { body(body_ctx, bytes.as_ptr(), bytes.len()) };
            i32::from(status)
        }
        Err(code) => code,
    }
}

unsafe extern "C" fn setting(
    ctx: *mut c_void,
    key: Str,
    value: EmitStr,
    value_ctx: *mut c_void,
) -> i32 {
    // SAFETY: as in `http_get`.
    let host = unsafe { &*(ctx as *const CallHost<'_>) };
    // SAFETY: the plugin's string lives for the call.
    let Some(key) = (unsafe { key.as_str() }) else {
        return 0;
    };
    match host.grants.setting(host.plugin, key) {
        Some(v) => {
            // SAFETY: the plugin's callback; the string lives for the call.
            unsafe { value(value_ctx, Str::new(v)) };
            1
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(hosts: &[&str]) -> Grants {
        let mut g = BTreeMap::new();
        g.insert(
            "mb".to_string(),
            PluginGrant {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                requests_per_second: 20.0,
            },
        );
        Grants::new(g, BTreeMap::new())
    }

    #[test]
    fn only_granted_hosts_and_ports_pass() {
        let g = grants(&["musicbrainz.org", "127.0.0.1:8080"]);
        assert_eq!(
            g.check("mb", "https://MusicBrainz.org/ws/2/x"),
            Ok("musicbrainz.org:443".into())
        );
        assert!(g.check("mb", "http://musicbrainz.org:81/").is_ok());
        assert!(g.check("mb", "http://127.0.0.1:8080/a").is_ok());
        assert!(matches!(
            g.check("mb", "http://127.0.0.1:8081/a"),
            Err(Refused::NotGranted(_))
        ));
        assert!(matches!(
            g.check("mb", "http://evil.org/"),
            Err(Refused::NotGranted(_))
        ));
        assert!(matches!(
            g.check("other", "https://musicbrainz.org/"),
            Err(Refused::NotGranted(_))
        ));
        assert_eq!(g.check("mb", "file:///etc/passwd"), Err(Refused::BadUrl));
        assert_eq!(
            g.check("mb", "http://u:p@musicbrainz.org/"),
            Err(Refused::BadUrl)
        );
        assert_eq!(g.check("mb", "not a url"), Err(Refused::BadUrl));
        assert_eq!(g.get("mb", "http://evil.org/").unwrap_err(), HOST_DENIED);
    }

    #[test]
    fn requests_to_one_host_are_paced() {
        let g = grants(&["a"]);
        let started = Instant::now();
        for _ in 0..3 {
            g.pace("mb", "a:80");
        }
        // 20 per second: the third waits two gaps of 50 ms.
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
