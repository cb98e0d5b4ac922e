//! Serves a snapshot at a mountpoint until SIGINT/SIGTERM or an external unmount.
//!
//! `cargo run -p musicfs-fusedev --example serve_snapshot -- SNAPSHOT MOUNTPOINT
//!  [--catalog DIR] [--threads N] [--no-auto-unmount] [--allow-other]
//!  [--passthrough auto|on|off] [--transport auto|uring|dev] [--timeout SECS]`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use musicfs_core::snapshot::Snapshot;
use musicfs_fusedev::{mount, MountOptions};
use musicfs_storage::Catalog;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args_os().skip(1);
    let mut positional = Vec::new();
    let mut opts = MountOptions::default();
    let mut catalog = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--catalog") => catalog = args.next().map(PathBuf::from),
            Some("--threads") => {
                let n = args.next().context("--threads needs a value")?;
                opts.threads = n.to_string_lossy().parse()?;
            }
            Some("--no-auto-unmount") => opts.auto_unmount = false,
            Some("--passthrough") => {
                let v = args.next().context("--passthrough needs auto|on|off")?;
                opts.passthrough = v.to_string_lossy().parse().map_err(anyhow::Error::msg)?;
            }
            Some("--transport") => {
                let v = args.next().context("--transport needs auto|uring|dev")?;
                opts.transport = v.to_string_lossy().parse().map_err(anyhow::Error::msg)?;
            }
            Some("--timeout") => {
                let v = args.next().context("--timeout needs seconds")?;
                let t = std::time::Duration::from_secs_f64(v.to_string_lossy().parse()?);
                (opts.entry_timeout, opts.attr_timeout, opts.negative_timeout) = (t, t, t);
            }
            Some("--allow-other") => opts.allow_other = true,
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [snapshot, mountpoint] = positional.as_slice() else {
        bail!("usage: serve_snapshot SNAPSHOT MOUNTPOINT [--catalog DIR] [--threads N]");
    };
    let snap = Snapshot::open(snapshot)?;
    let catalog = catalog
        .map(|dir| Catalog::open(&dir).map(Arc::new))
        .transpose()?;
    let shared = Arc::new(ArcSwap::from_pointee(snap));
    let mounted = mount(mountpoint, shared, catalog, &opts)?;
    println!(
        "mounted {} ({} threads)",
        mounted.mountpoint().display(),
        mounted.threads()
    );
    let unmounter = mounted.unmounter();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(sig, "signal: unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!(error = %e, "unmount");
            }
        }
    });
    let res = mounted.wait();
    handle.close();
    res?;
    println!("unmounted");
    Ok(())
}
