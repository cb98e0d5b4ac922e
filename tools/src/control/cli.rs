//! The `musicfs` commands that talk to a running daemon: each prints a human summary, or
//! the reply as JSON with `--json`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

pub use super::client::Client;
use super::client::{connect, ConnectError};
use super::proto;

/// A single-threaded runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// Connects to the daemon on `socket`, or tells why not: `Ok(None)` when no daemon runs.
pub async fn try_connect(socket: &Path) -> Result<Option<Client>> {
    match connect(socket).await {
        Ok(c) => Ok(Some(c)),
        Err(ConnectError::NoDaemon(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Connects, or fails saying no daemon runs.
pub async fn must_connect(socket: &Path) -> Result<Client> {
    Ok(connect(socket).await?)
}

pub fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// `musicfs status`.
pub async fn status(c: &mut Client, as_json: bool) -> Result<()> {
    let s = c
        .status(proto::StatusRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        return print_json(&json!({
            "version": s.version,
            "pid": s.pid,
            "uptime_ms": s.uptime_ms,
            "mountpoint": s.mountpoint,
            "generation": s.generation,
            "tracks": s.tracks,
            "read_mode": s.read_mode,
            "queues": s.queues.iter().map(|q| json!({"queue": q.queue, "transport": q.transport})).collect::<Vec<_>>(),
            "origins": s.origins.iter().map(|o| json!({
                "id": o.id, "spec": o.spec, "state": o.state, "reason": o.reason, "tracks": o.tracks
            })).collect::<Vec<_>>(),
            "cache": {"enabled": s.cache_enabled, "bytes": s.cache_bytes, "budget": s.cache_budget},
            "open_files": s.open_files,
            "draining": s.draining,
            "catalog": {"state": s.catalog, "problem": s.catalog_problem},
        }));
    }
    println!(
        "musicfsd {} (pid {}), up {:.0} s",
        s.version,
        s.pid,
        s.uptime_ms as f64 / 1000.0
    );
    println!("mountpoint\t{}", s.mountpoint);
    println!("generation\t{}", s.generation);
    println!("tracks\t{}", s.tracks);
    let transport = s.queues.first().map_or("?", |q| q.transport.as_str());
    println!("queues\t{} ({transport})", s.queues.len());
    println!("read mode\t{}", s.read_mode);
    println!("open files\t{}", s.open_files);
    if s.draining {
        println!("draining\tyes");
    }
    if s.catalog_problem.is_empty() {
        println!("catalog\t{}", s.catalog);
    } else {
        println!("catalog\t{}: {}", s.catalog, s.catalog_problem);
    }
    if s.cache_enabled {
        println!("cache\t{} of {} bytes", s.cache_bytes, s.cache_budget);
    } else {
        println!("cache\tnone (every origin is local)");
    }
    for o in &s.origins {
        let why = if o.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", o.reason)
        };
        println!("origin\t{}\t{} tracks\t{}{why}", o.spec, o.tracks, o.state);
    }
    Ok(())
}

/// `musicfs refresh`.
pub async fn refresh(
    c: &mut Client,
    origin: Option<String>,
    no_wait: bool,
    timeout: Option<f64>,
    as_json: bool,
) -> Result<()> {
    let r = c
        .refresh(proto::RefreshRequest {
            origin: origin.unwrap_or_default(),
            no_wait,
            timeout_secs: timeout.unwrap_or(0.0),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_refresh(&r, as_json)
}

/// `musicfs origin add SPEC`.
pub async fn origin_add(
    c: &mut Client,
    spec: String,
    name: Option<String>,
    no_wait: bool,
    as_json: bool,
) -> Result<()> {
    let r = c
        .origin_add(proto::OriginAddRequest {
            spec,
            name: name.unwrap_or_default(),
            no_wait,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_refresh(&r, as_json)
}

/// `musicfs origin remove ORIGIN`.
pub async fn origin_remove(
    c: &mut Client,
    origin: String,
    no_wait: bool,
    as_json: bool,
) -> Result<()> {
    let r = c
        .origin_remove(proto::OriginRemoveRequest { origin, no_wait })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_refresh(&r, as_json)
}

fn print_refresh(r: &proto::RefreshReply, as_json: bool) -> Result<()> {
    if as_json {
        print_json(&json!({
            "waited": r.waited, "generation": r.generation, "published": r.published,
            "added": r.added, "changed": r.changed, "removed": r.removed, "error": r.error,
        }))?;
    } else if !r.waited {
        println!("refresh started");
    } else if r.published {
        println!(
            "published generation {}: {} added, {} changed, {} removed",
            r.generation, r.added, r.changed, r.removed
        );
    } else if r.error.is_empty() {
        println!("nothing changed: generation {} kept", r.generation);
    }
    anyhow::ensure!(r.error.is_empty(), "refresh failed: {}", r.error);
    Ok(())
}

/// `musicfs progress`.
pub async fn progress(c: &mut Client, as_json: bool) -> Result<()> {
    let p = c
        .scan_progress(proto::ScanProgressRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        return print_json(&json!({
            "running": p.running, "seen": p.seen, "opened": p.opened, "unchanged": p.unchanged,
            "last_generation": p.last_generation, "last_error": p.last_error,
        }));
    }
    if p.running {
        println!(
            "scanning: {} files seen, {} read, {} unchanged",
            p.seen, p.opened, p.unchanged
        );
    } else {
        println!(
            "idle (last refresh served generation {})",
            p.last_generation
        );
    }
    if !p.last_error.is_empty() {
        println!("last refresh failed: {}", p.last_error);
    }
    Ok(())
}

/// `musicfs cache stats` through the daemon.
pub async fn cache_stats(c: &mut Client, as_json: bool) -> Result<()> {
    let s = c
        .cache_stats(proto::CacheRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_cache_stats(&s, as_json)
}

/// Prints cache statistics (the daemon's, or read from the state dir by `musicfs`).
pub fn print_cache_stats(s: &proto::CacheStatsReply, as_json: bool) -> Result<()> {
    let ratio = if s.stored_bytes == 0 {
        1.0
    } else {
        s.logical_bytes as f64 / s.stored_bytes as f64
    };
    if as_json {
        return print_json(&json!({
            "enabled": s.enabled, "chunks": s.chunks, "stored_bytes": s.stored_bytes,
            "budget_bytes": s.budget, "disk_bytes": s.disk_bytes, "packs": s.packs,
            "file_versions": s.manifests, "logical_bytes": s.logical_bytes,
            "shared_chunks": s.shared_chunks, "dedup_ratio": ratio,
            "evicted_total": s.evicted_total,
        }));
    }
    if !s.enabled {
        println!("no chunk cache: every origin is local");
        return Ok(());
    }
    println!("chunks\t{}", s.chunks);
    println!("stored_bytes\t{}", s.stored_bytes);
    println!("budget_bytes\t{}", s.budget);
    println!("disk_bytes\t{}", s.disk_bytes);
    println!("packs\t{}", s.packs);
    println!("file_versions\t{}", s.manifests);
    println!("logical_bytes\t{}", s.logical_bytes);
    println!("shared_chunks\t{}", s.shared_chunks);
    println!("dedup_ratio\t{ratio:.3}");
    println!("evicted_total\t{}", s.evicted_total);
    Ok(())
}

/// `musicfs cache clear` through the daemon.
pub async fn cache_clear(c: &mut Client, as_json: bool) -> Result<()> {
    let r = c
        .cache_clear(proto::CacheRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        return print_json(
            &json!({"evicted_chunks": r.evicted_chunks, "chunks_left": r.chunks_left}),
        );
    }
    println!(
        "evicted {} chunks; {} left (pinned by open files)",
        r.evicted_chunks, r.chunks_left
    );
    Ok(())
}

/// `musicfs cache verify` through the daemon.
pub async fn cache_verify(c: &mut Client, as_json: bool) -> Result<()> {
    let r = c
        .cache_verify(proto::CacheRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        print_json(
            &json!({"ok": r.ok, "chunks_checked": r.chunks_checked, "problems": r.problems}),
        )?;
    } else {
        println!("checked {} chunks", r.chunks_checked);
        for p in &r.problems {
            println!("problem: {p}");
        }
        if r.ok {
            println!("ok");
        }
    }
    anyhow::ensure!(r.ok, "the chunk cache has {} problem(s)", r.problems.len());
    Ok(())
}

/// `musicfs prefetch PATH`.
/// `musicfs plugin ACTION [NAME]`: the loaded plugins after the action.
pub async fn plugin(c: &mut Client, action: &str, name: String, as_json: bool) -> Result<()> {
    let r = c
        .plugin(proto::PluginRequest {
            action: action.into(),
            name,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        let all: Vec<_> = r
            .plugins
            .iter()
            .map(|p| {
                json!({"name": p.name, "version": p.version, "api": p.api, "path": p.path,
                       "kinds": p.kinds})
            })
            .collect();
        return print_json(&json!({"plugins": all, "disabled": r.disabled}));
    }
    if r.plugins.is_empty() {
        println!("no plugin loaded");
    }
    for d in &r.disabled {
        println!("disabled\t{d}");
    }
    for p in &r.plugins {
        println!(
            "{}\t{}\tapi {}\t{}\t{}",
            p.name,
            p.version,
            p.api,
            p.kinds.join(","),
            p.path
        );
    }
    Ok(())
}

pub async fn prefetch(c: &mut Client, path: String, as_json: bool) -> Result<()> {
    let r = c
        .prefetch(proto::PrefetchRequest { path })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        return print_json(&json!({"files": r.files, "queued": r.queued}));
    }
    println!(
        "{} files, {} queued for fetching (the others are local)",
        r.files, r.queued
    );
    Ok(())
}

/// `musicfs search` through the daemon: the same output as offline.
pub async fn search(
    c: &mut Client,
    query: String,
    limit: Option<usize>,
    as_json: bool,
) -> Result<()> {
    let r = c
        .search(proto::SearchRequest {
            query,
            limit: limit.unwrap_or(0).min(u32::MAX as usize) as u32,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_hits(&r.hits, as_json)
}

/// Prints search results: `NAME\tPATH` lines, or a JSON array.
pub fn print_hits(hits: &[proto::SearchHit], as_json: bool) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if as_json {
        let rows: Vec<_> = hits
            .iter()
            .map(
                |h| json!({"rank": h.rank, "name": h.name, "path": h.path, "track_id": h.track_id}),
            )
            .collect();
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        for h in hits {
            writeln!(out, "{}\t{}", h.name, h.path)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `musicfs config show` through the daemon.
pub async fn config_show(c: &mut Client, as_json: bool) -> Result<()> {
    let r = c
        .config_show(proto::ConfigShowRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        let v: toml::Value = toml::from_str(&r.toml).context("the daemon's configuration")?;
        return print_json(&serde_json::to_value(v)?);
    }
    print!("{}", r.toml);
    Ok(())
}

/// `musicfs config set KEY VALUE`.
pub async fn config_set(c: &mut Client, key: String, value: String, as_json: bool) -> Result<()> {
    let r = c
        .config_set(proto::ConfigSetRequest { key, value })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if as_json {
        return print_json(&json!({"key": r.key, "value": r.value, "previous": r.previous}));
    }
    println!("{} = {} (was {})", r.key, r.value, r.previous);
    Ok(())
}

/// `musicfs shutdown`: asks for a drain and waits until the daemon has gone (its socket
/// is removed), unless `no_wait`.
pub async fn shutdown(
    c: &mut Client,
    socket: &Path,
    drain: f64,
    no_wait: bool,
    as_json: bool,
) -> Result<()> {
    let r = c
        .shutdown(proto::ShutdownRequest {
            drain_timeout_secs: drain,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if !as_json {
        println!(
            "draining: {} open file(s), unmounting within {drain} s",
            r.open_files
        );
    }
    if !no_wait {
        let deadline = Instant::now() + Duration::from_secs_f64(drain + 30.0);
        while socket.exists() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the daemon has not stopped {} s after the drain timeout",
                30
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if as_json {
        print_json(&json!({"open_files": r.open_files, "stopped": !no_wait}))?;
    } else if !no_wait {
        println!("stopped");
    }
    Ok(())
}

/// `musicfs events`: prints events as JSON lines until `count` were printed (or forever).
pub async fn events(c: &mut Client, kinds: Vec<String>, count: Option<u64>) -> Result<()> {
    let mut stream = c
        .events(proto::EventsRequest { kinds })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while count.is_none_or(|n| printed < n) {
        let e = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // The daemon stopped (or restarted): the stream ends, like `tail -f` of a
            // removed file.
            Err(s) => {
                eprintln!("musicfs: the event stream ended: {}", s.message());
                break;
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{}", e.json)?;
        out.flush()?;
        printed += 1;
    }
    Ok(())
}
