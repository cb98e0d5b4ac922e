//! `musicfs`: scan origins into the catalog and publish the tree; print the tree.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use musicfs_core::config::Config;
use musicfs_core::snapshot::Snapshot;
use musicfs_core::template::Template;
use musicfs_index::refresh::{scan_summary, Library, StateDir};
use musicfs_tools::{check_origins, init_logging, origin_paths, progress_bar};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MusicFS control CLI.
#[derive(Parser)]
#[command(
    name = "musicfs",
    version,
    about = "Scan a music library and inspect its MusicFS tree"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// TOML configuration file.
    #[arg(long, global = true, env = "MUSICFS_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (catalog and snapshot) [default: $XDG_STATE_HOME/musicfs, or
    /// /var/lib/musicfs for root].
    #[arg(long, global = true, env = "MUSICFS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace); RUST_LOG wins.
    #[arg(long, global = true, env = "MUSICFS_LOG_LEVEL")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Scan origins into the catalog (only new and changed files are read) and publish the tree.
    Scan {
        /// An origin directory; repeat for several (default: the config's origins).
        #[arg(long = "origin", env = "MUSICFS_ORIGINS", value_delimiter = ':')]
        origins: Vec<PathBuf>,
        /// Path template (see docs/TEMPLATES.md).
        #[arg(long, env = "MUSICFS_TEMPLATE")]
        template: Option<String>,
    },
    /// Print every path of the published tree, sorted, one per line.
    Tree {
        /// Also print inode, size and source path (tab-separated: ino, size, path, source).
        #[arg(long)]
        long: bool,
    },
}

fn main() -> ExitCode {
    musicfs_tools::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let cfg = match load_config(&cli.common) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("musicfs: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log_level);
    let result = match cli.command {
        Command::Scan { origins, template } => scan(cfg, origins, template),
        Command::Tree { long } => tree(&cfg, long),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musicfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(common: &Common) -> Result<Config> {
    let mut cfg = Config::load(common.config.as_deref())?;
    if let Some(d) = &common.state_dir {
        cfg.state_dir = Some(d.clone());
    }
    if let Some(l) = &common.log_level {
        cfg.log_level = l.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn scan(mut cfg: Config, origins: Vec<PathBuf>, template: Option<String>) -> Result<()> {
    if let Some(t) = template {
        cfg.template = t;
    }
    let template = Template::parse(&cfg.template).context("bad template")?;
    let origins = if origins.is_empty() {
        origin_paths(&cfg)
    } else {
        origins
    };
    anyhow::ensure!(
        !origins.is_empty(),
        "no origin: give --origin DIR or [[origin]] in the config"
    );
    let origins = check_origins(&origins)?;
    let state = StateDir::create(&cfg.state_dir())?;
    let library = Library {
        catalog: std::sync::Arc::new(state.open_catalog()?),
        template,
        origins,
        state,
        progress: progress_bar(),
    };
    let report = library.scan()?;
    eprintln!("{}", scan_summary(&report));
    if let Ok(snap) = Snapshot::open(&library.state.snapshot_path()) {
        if library.is_current(&snap)? {
            eprintln!("tree unchanged: generation {} kept", snap.generation());
            return Ok(());
        }
    }
    let published = library.publish()?;
    eprintln!(
        "published generation {} with {} tracks in {:.3}s",
        published.generation,
        published.tracks,
        published.elapsed.as_secs_f64()
    );
    Ok(())
}

fn tree(cfg: &Config, long: bool) -> Result<()> {
    let state = StateDir::create(&cfg.state_dir())?;
    let snap = Snapshot::open_verified(&state.snapshot_path())
        .context("no usable snapshot: run `musicfs scan` first")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (path, node) in snap.walk() {
        if long {
            write!(out, "{}\t{}\t", node.ino(), node.size())?;
            out.write_all(&path)?;
            out.write_all(b"\t")?;
            if let Some(f) = node.file() {
                if let Some(root) = snap.origin_root(f.origin) {
                    out.write_all(root.as_os_str().as_bytes())?;
                    out.write_all(b"/")?;
                }
                out.write_all(f.rel_path)?;
            }
        } else {
            out.write_all(&path)?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
