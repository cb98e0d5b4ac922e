//! The MusicBrainz + AcoustID enricher: for a track that lacks some of album artist, date,
//! track or disc number (or album, title, artist), it looks the track's Chromaprint
//! fingerprint up in AcoustID, the best recording found in MusicBrainz, and proposes the
//! missing fields from it. It never proposes to change a field the track has.
//!
//! Everything goes through the host: the network only to the hosts the operator granted
//! (`[plugin_grants.musicbrainz] hosts = ["api.acoustid.org", "musicbrainz.org"]`), paced
//! by the host (MusicBrainz asks for 1 request per second, the grant's default) with the
//! daemon's User-Agent. Settings (`[plugin_settings.musicbrainz]`): `acoustid_key` (an
//! AcoustID application key, required), `acoustid_url` and `musicbrainz_url` (other
//! servers, such as a mirror; defaults: the public services), `min_score` (the least
//! AcoustID score believed, default 0.5).

use musicfs_plugin_api::{export_plugin, Enricher, Host};
use serde_json::Value;

/// The enricher.
pub struct MusicBrainz;

/// The fields it fills, as `musicfs tag set` names them.
const FIELDS: [&str; 7] = [
    "albumartist",
    "date",
    "track",
    "disc",
    "album",
    "title",
    "artist",
];

/// The names a track's shown tags may carry a field under.
fn has(tags: &[(&str, &str)], field: &str) -> bool {
    let names: &[&str] = match field {
        "albumartist" => &["albumartist", "album_artist"],
        "date" => &["date", "year"],
        "track" => &["track", "tracknumber"],
        "disc" => &["disc", "discnumber"],
        other => {
            return tags
                .iter()
                .any(|(k, v)| *k == other && !v.trim().is_empty())
        }
    };
    tags.iter()
        .any(|(k, v)| names.contains(k) && !v.trim().is_empty())
}

fn get(tags: &[(&str, &str)], key: &str) -> Option<String> {
    tags.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

fn fetch_json(host: &Host<'_>, url: &str) -> Result<Value, String> {
    let (status, body) = host.get(url)?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))
}

/// The credited names joined as MusicBrainz shows them (`A feat. B`).
fn credit(v: &Value) -> Option<String> {
    let parts = v.as_array()?;
    let mut out = String::new();
    for p in parts {
        out.push_str(p.get("name").and_then(Value::as_str)?);
        out.push_str(p.get("joinphrase").and_then(Value::as_str).unwrap_or(""));
    }
    let out = out.trim().to_string();
    (!out.is_empty()).then_some(out)
}

/// The recording AcoustID matches best, if it is believed.
fn best_recording(answer: &Value, min_score: f64) -> Option<String> {
    if answer.get("status").and_then(Value::as_str) != Some("ok") {
        return None;
    }
    let mut results: Vec<&Value> = answer.get("results")?.as_array()?.iter().collect();
    results.sort_by(|a, b| {
        let s = |v: &Value| v.get("score").and_then(Value::as_f64).unwrap_or(0.0);
        s(b).total_cmp(&s(a))
    });
    results.into_iter().find_map(|r| {
        let score = r.get("score").and_then(Value::as_f64).unwrap_or(0.0);
        if score < min_score {
            return None;
        }
        r.get("recordings")?
            .as_array()?
            .first()?
            .get("id")?
            .as_str()
            .map(str::to_string)
    })
}

/// What the recording says of each field.
fn facts(rec: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(t) = rec.get("title").and_then(Value::as_str) {
        out.push(("title", t.to_string()));
    }
    if let Some(a) = rec.get("artist-credit").and_then(credit) {
        out.push(("artist", a));
    }
    // The first official release, else the first.
    let releases = rec.get("releases").and_then(Value::as_array);
    let release = releases.and_then(|all| {
        all.iter()
            .find(|r| r.get("status").and_then(Value::as_str) == Some("Official"))
            .or_else(|| all.first())
    });
    if let Some(r) = release {
        if let Some(t) = r.get("title").and_then(Value::as_str) {
            out.push(("album", t.to_string()));
        }
        if let Some(d) = r
            .get("date")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        {
            out.push(("date", d.to_string()));
        }
        if let Some(a) = r.get("artist-credit").and_then(credit) {
            out.push(("albumartist", a));
        }
        if let Some(m) = r
            .get("media")
            .and_then(Value::as_array)
            .and_then(|m| m.first())
        {
            if let Some(p) = m.get("position").and_then(Value::as_u64) {
                out.push(("disc", p.to_string()));
            }
            let track = ["tracks", "track"]
                .iter()
                .find_map(|k| m.get(*k)?.as_array()?.first().cloned());
            if let Some(n) = track
                .as_ref()
                .and_then(|t| t.get("number")?.as_str().map(str::to_string))
            {
                out.push(("track", n));
            }
        }
    }
    out
}

impl Enricher for MusicBrainz {
    fn suggest(tags: &[(&str, &str)], host: &Host<'_>) -> Result<Vec<(String, String)>, String> {
        let missing: Vec<&str> = FIELDS.into_iter().filter(|f| !has(tags, f)).collect();
        let (Some(fp), Some(duration)) = (get(tags, "fingerprint"), get(tags, "duration_s")) else {
            return Ok(Vec::new());
        };
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let key = host
            .setting("acoustid_key")
            .ok_or("no acoustid_key in [plugin_settings.musicbrainz]")?;
        let acoustid = host
            .setting("acoustid_url")
            .unwrap_or_else(|| "https://api.acoustid.org".into());
        let mb = host
            .setting("musicbrainz_url")
            .unwrap_or_else(|| "https://musicbrainz.org".into());
        let min_score = host
            .setting("min_score")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.5);
        let lookup = format!(
            "{}/v2/lookup?client={key}&meta=recordingids&duration={duration}&fingerprint={fp}",
            acoustid.trim_end_matches('/')
        );
        let Some(mbid) = best_recording(&fetch_json(host, &lookup)?, min_score) else {
            return Ok(Vec::new());
        };
        if !mbid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(format!("AcoustID answered a strange recording id {mbid:?}"));
        }
        let url = format!(
            "{}/ws/2/recording/{mbid}?inc=artists+releases+media&fmt=json",
            mb.trim_end_matches('/')
        );
        let rec = fetch_json(host, &url)?;
        Ok(facts(&rec)
            .into_iter()
            .filter(|(f, _)| missing.contains(f))
            .map(|(f, v)| (f.to_string(), v))
            .collect())
    }
}

export_plugin!(
    name = "musicbrainz",
    version = "1.0.0",
    enricher = MusicBrainz
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_believed_recording_wins() {
        let a: Value = serde_json::json!({"status": "ok", "results": [
            {"score": 0.3, "recordings": [{"id": "low"}]},
            {"score": 0.9, "recordings": [{"id": "high"}]},
            {"score": 0.95}
        ]});
        assert_eq!(best_recording(&a, 0.5).as_deref(), Some("high"));
        assert_eq!(best_recording(&a, 0.99), None);
        assert_eq!(
            best_recording(&serde_json::json!({"status": "error"}), 0.0),
            None
        );
        assert_eq!(best_recording(&serde_json::json!("junk"), 0.0), None);
    }

    #[test]
    fn a_recording_gives_every_field() {
        let r: Value = serde_json::json!({
            "title": "So What",
            "artist-credit": [{"name": "Miles Davis", "joinphrase": " & "}, {"name": "Band"}],
            "releases": [
                {"title": "Bootleg", "status": "Bootleg"},
                {"title": "Kind of Blue", "status": "Official", "date": "1959-08-17",
                 "artist-credit": [{"name": "Miles Davis"}],
                 "media": [{"position": 1, "tracks": [{"number": "1"}]}]}
            ]
        });
        let f = facts(&r);
        for want in [
            ("title", "So What"),
            ("artist", "Miles Davis & Band"),
            ("album", "Kind of Blue"),
            ("date", "1959-08-17"),
            ("albumartist", "Miles Davis"),
            ("disc", "1"),
            ("track", "1"),
        ] {
            assert!(
                f.iter().any(|(k, v)| *k == want.0 && v == want.1),
                "{want:?} in {f:?}"
            );
        }
        assert!(facts(&serde_json::json!([1, 2])).is_empty());
    }

    #[test]
    fn only_missing_fields_count() {
        let tags = [("title", "x"), ("year", "1999"), ("tracknumber", " ")];
        assert!(has(&tags, "title") && has(&tags, "date"));
        assert!(!has(&tags, "track") && !has(&tags, "albumartist"));
    }
}
