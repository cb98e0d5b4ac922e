//! `musicfs`: scan origins into the catalog and publish the tree; print the tree; list and
//! forget origins; verify the chunk cache and show its statistics.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use musicfs_core::config::{Config, OriginConfig};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::template::Template;
use musicfs_index::refresh::{scan_summary, Library, StateDir};
use musicfs_index::scan::ScanOptions;
use musicfs_index::search::SearchIndex;
use musicfs_storage::origin::OriginTable;
use musicfs_tools::control::cli;
use musicfs_tools::{
    init_logging, open_cache, parse_origin, progress_bar, resolve_origins, BadOrigin,
};

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
    /// The running daemon's control socket [default: the config's `control_socket`, else
    /// STATE_DIR/control.sock].
    #[arg(long, global = true, env = "MUSICFS_CONTROL_SOCKET")]
    socket: Option<PathBuf>,
    /// Print replies as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Scan origins into the catalog (only new and changed files are read) and publish the tree.
    Scan {
        /// An origin: a directory, `file:///DIR`, `s3://BUCKET[/PREFIX]?endpoint=…`,
        /// `sftp://USER@HOST[:PORT]/PATH` or `smb://USER@HOST[:PORT]/SHARE[/PATH]`; repeat for
        /// several (default: the config's origins). A path may contain `:`;
        /// MUSICFS_ORIGINS takes one origin per line.
        #[arg(long = "origin", env = "MUSICFS_ORIGINS", value_delimiter = '\n')]
        origins: Vec<PathBuf>,
        /// Path template (see docs/TEMPLATES.md).
        #[arg(long, env = "MUSICFS_TEMPLATE")]
        template: Option<String>,
        /// Remove the tracks of an origin that emptied, or lost more than
        /// `mass_removal_threshold` of its tracks, in this scan (otherwise it is reported
        /// offline and they are kept).
        #[arg(long)]
        allow_mass_removal: bool,
        /// Read every file again, changed or not (repairs the catalog after a tag-reader
        /// change; picks up cover art in a library scanned before art was recorded).
        #[arg(long)]
        verify: bool,
    },
    /// Share this library (catalog, tree, cover art) through the shared tier, so other
    /// daemons configured alike start from it with `musicfsd --from-shared`.
    Share {
        #[command(subcommand)]
        action: ShareAction,
    },
    /// Native plugins of the running daemon (loaded from `plugin_dir`).
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Manage the origins the catalog knows.
    Origin {
        #[command(subcommand)]
        action: OriginAction,
    },
    /// Check the catalog (`<state>/catalog`).
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Inspect the chunk cache (`<state>/cas`) remote files are read through.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Search the library (query language: docs/SEARCH.md) and print what
    /// `/.search/QUERY/` shows, best first: each result's name and its path in the tree,
    /// tab-separated.
    Search {
        /// The query, e.g. `genre:jazz year:[1960 TO 1969]`.
        query: String,
        /// Print a JSON array of {rank, name, path, track_id} instead.
        #[arg(long)]
        json: bool,
        /// Most results (default: the config's `search_limit`).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Import another player's library: a beets `library.db`, an iTunes/Music
    /// `Library.xml`, or a `musicfs export` (.json/.csv). Tags differing from the file's
    /// become tag edits for the fields named by --fields (an export's own edits always);
    /// play counts merge into the access statistics. The origin is never written.
    Import {
        /// The library file.
        file: PathBuf,
        /// Fields whose differing values become edits: comma-separated names, or `all`
        /// (default: none; only play counts).
        #[arg(long, default_value = "")]
        fields: String,
        /// Rewrite paths starting with FROM to start with TO (`FROM=TO`), for a library
        /// made on another machine.
        #[arg(long)]
        path_map: Option<String>,
    },
    /// Export the catalog with its tag edits and play counts (every track: source path,
    /// tags shown, edited fields) as JSON or CSV, to FILE or stdout.
    Export {
        /// `json` or `csv`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Where to write (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Tag edits MusicFS keeps without touching the origin (the metadata overlay): the
    /// tree and the served files show them.
    Tag {
        #[command(subcommand)]
        action: TagAction,
    },
    /// Per origin: tracks, tracks shown, copies hidden behind tracks of other places and
    /// the bytes that saves, and the origin's state (as the last scan left it); then
    /// totals.
    Stats,
    /// What the running daemon serves: generation, tracks, queues and read mode, origins
    /// with their state, cache use, open files.
    Status,
    /// Rescan the origins (or one) in the running daemon; waits until the result is
    /// served.
    Refresh {
        /// Only this origin (its spec or name).
        #[arg(long)]
        origin: Option<String>,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait at most [default: 600].
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Whether the running daemon is scanning, and how far it got.
    Progress,
    /// Fetch the files under a path of the tree into the chunk cache (remote origins).
    Prefetch {
        /// A path in the tree, e.g. `Artist/Album (1999) [FLAC]`.
        path: String,
    },
    /// Show or change the running daemon's configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Stop the running daemon: new opens fail (EBUSY), open files may finish for the
    /// drain timeout, then it unmounts. Waits until it has stopped.
    Shutdown {
        /// Seconds open files may keep reading.
        #[arg(long, default_value_t = 30.0)]
        drain_timeout: f64,
        /// Return once the drain started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the running daemon's events as JSON lines (file.opened, file.read,
    /// file.closed, library.changed, origin.health, cache.evicted).
    Events {
        /// Only these kinds (or prefixes ending in `.`, e.g. `file.`); repeat or comma-separate.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Stop after this many.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for musicfs, musicfsd and every subcommand into a directory.
    Manpages {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        dir: PathBuf,
    },
    /// Print every path of the published tree, sorted, one per line.
    Tree {
        /// Also print inode, size and source path (tab-separated: ino, size, path, source),
        /// then each other copy of the track as `SOURCE (same)` (same bytes) or
        /// `SOURCE (retagged)` (same audio, other tags).
        #[arg(long)]
        long: bool,
    },
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Read every page of the catalog, in a child process (a damaged page can crash the
    /// reader): exit status 0 when it is sound, 1 saying what is wrong. Safe while the
    /// daemon runs.
    Check,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Read every cached chunk and check it against its hash, and the index against the
    /// pack files. Exit status 0 when all is well, 1 with a report of every problem.
    Verify,
    /// Print how much is cached, the budget, and what deduplication saves.
    Stats,
    /// Evict every cached chunk (except those of files open in a running daemon).
    Clear,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the configuration in force (the daemon's, with runtime changes; without a
    /// daemon, the file's).
    Show,
    /// Change a setting of the running daemon without a restart: log_level,
    /// refresh_interval_secs, cache_budget, origin.NAME.enabled, origin.NAME.timeout_secs.
    Set {
        /// The setting.
        key: String,
        /// Its new value.
        value: String,
    },
}

/// What `musicfs tag` names.
#[derive(clap::Args, Debug, Clone)]
struct TagTargets {
    /// Tracks: paths in the mount (a folder: every track below it), paths relative to the
    /// tree's root, or source paths in an origin.
    paths: Vec<String>,
    /// Also every track this search query finds (docs/SEARCH.md).
    #[arg(long)]
    query: Option<String>,
    /// Return before the edit is served.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand, Debug)]
enum TagAction {
    /// Set fields: `musicfs tag set PATH… field=value…` (a field twice: several values;
    /// `field=`: remove it). Fields: title artist album albumartist genre date track
    /// tracktotal disc disctotal composer lyrics.
    Set {
        #[command(flatten)]
        targets: TagTargets,
    },
    /// Every field of each track: the value shown, edited ones marked with the file's.
    Get {
        #[command(flatten)]
        targets: TagTargets,
    },
    /// Only the edited fields of each track, with the file's values.
    Diff {
        #[command(flatten)]
        targets: TagTargets,
    },
    /// Drop edits: `musicfs tag clear PATH… [field…]` (no field: all of them, and any
    /// proposals).
    Clear {
        #[command(flatten)]
        targets: TagTargets,
    },
    /// Ask the loaded metadata plugins what to change: their suggestions are kept as
    /// proposals (shown with `?`), nothing changes until `tag apply`.
    Suggest {
        #[command(flatten)]
        targets: TagTargets,
    },
    /// Turn the tracks' proposals into edits.
    Apply {
        #[command(flatten)]
        targets: TagTargets,
    },
}

impl TagAction {
    /// The action's name, its targets, and its arguments (assignments for set, field
    /// names for clear) split from the paths.
    fn parts(self) -> (&'static str, TagTargets, Vec<String>) {
        let (name, mut t) = match self {
            TagAction::Set { targets } => ("set", targets),
            TagAction::Get { targets } => ("get", targets),
            TagAction::Diff { targets } => ("diff", targets),
            TagAction::Clear { targets } => ("clear", targets),
            TagAction::Suggest { targets } => ("suggest", targets),
            TagAction::Apply { targets } => ("apply", targets),
        };
        let is_arg = |a: &String| match name {
            "set" => a
                .split_once('=')
                .is_some_and(|(f, _)| musicfs_core::overlay::TagField::parse(f).is_some()),
            "clear" => {
                musicfs_core::overlay::TagField::parse(a).is_some() && !Path::new(a).exists()
            }
            _ => false,
        };
        let (args, paths): (Vec<String>, Vec<String>) = t.paths.drain(..).partition(is_arg);
        t.paths = paths;
        (name, t, args)
    }
}

#[derive(Subcommand)]
enum PluginAction {
    /// The loaded plugins: name, version, API version, kinds, file.
    List,
    /// Loads a plugin: its file name in plugin_dir, or its crate's name (`titlecase`).
    Load { name: String },
    /// Unloads a plugin, by the name it gives itself.
    Unload { name: String },
    /// Loads a plugin again from its file (after a new build).
    Reload { name: String },
}

#[derive(Subcommand)]
enum ShareAction {
    /// Stores the state dir's library in the shared tier (`shared_tier` in the config).
    Push,
}

#[derive(Subcommand)]
enum OriginAction {
    /// List the origins the catalog knows, with their track counts.
    List,
    /// Serve one more origin in the running daemon (scanned at once, then polled for
    /// changes; a `[[origin]]` table with the same spec gives its settings). Waits until
    /// its tracks are served.
    Add {
        /// The origin spec (as `--origin` takes it).
        spec: String,
        /// A name for it.
        #[arg(long)]
        name: Option<String>,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop serving an origin in the running daemon: its tracks leave the tree (the catalog
    /// keeps them: adding it back shows them at once; `forget` deletes them).
    Remove {
        /// Its spec or name.
        origin: String,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove an origin and every track of it from the catalog, and republish the tree.
    /// The only command that removes tracks of an origin that is not there.
    Forget {
        /// The origin's root, as listed by `musicfs origin list`.
        origin: PathBuf,
    },
}

fn main() -> ExitCode {
    if let Some(code) = musicfs_tools::catalog_check::run_if_asked() {
        return code;
    }
    musicfs_tools::disable_transparent_huge_pages();
    musicfs_tools::release_memory_after_big_jobs();
    let cli = Cli::parse();
    let cfg = match load_config(&cli.common) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("musicfs: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log_level);
    let socket = cli
        .common
        .socket
        .clone()
        .unwrap_or_else(|| cfg.control_socket_path());
    let json = cli.common.json;
    let result = match cli.command {
        Command::Status => daemon(
            &socket,
            |mut c| async move { cli::status(&mut c, json).await },
        ),
        Command::Refresh {
            origin,
            no_wait,
            timeout,
        } => daemon(&socket, |mut c| async move {
            cli::refresh(&mut c, origin, no_wait, timeout, json).await
        }),
        Command::Progress => daemon(
            &socket,
            |mut c| async move { cli::progress(&mut c, json).await },
        ),
        Command::Prefetch { path } => daemon(&socket, |mut c| async move {
            cli::prefetch(&mut c, path, json).await
        }),
        Command::Config { action } => match action {
            ConfigAction::Show => either(
                &socket,
                |mut c| async move { cli::config_show(&mut c, json).await },
                || {
                    print!("{}", cfg.to_toml());
                    Ok(())
                },
            ),
            ConfigAction::Set { key, value } => daemon(&socket, |mut c| async move {
                cli::config_set(&mut c, key, value, json).await
            }),
        },
        Command::Shutdown {
            drain_timeout,
            no_wait,
        } => {
            let s = socket.clone();
            daemon(&socket, |mut c| async move {
                cli::shutdown(&mut c, &s, drain_timeout, no_wait, json).await
            })
        }
        Command::Events { kinds, count } => daemon(&socket, |mut c| async move {
            cli::events(&mut c, kinds, count).await
        }),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "musicfs",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir),
        Command::Scan {
            origins,
            template,
            allow_mass_removal,
            verify,
        } => scan(cfg, origins, template, (allow_mass_removal, verify)),
        Command::Share {
            action: ShareAction::Push,
        } => share_push(&cfg, json),
        Command::Plugin { action } => {
            let (what, name) = match action {
                PluginAction::List => ("list", String::new()),
                PluginAction::Load { name } => ("load", name),
                PluginAction::Unload { name } => ("unload", name),
                PluginAction::Reload { name } => ("reload", name),
            };
            daemon(&socket, |mut c| async move {
                cli::plugin(&mut c, what, name, json).await
            })
        }
        Command::Origin { action } => match action {
            OriginAction::List => origin_list(&cfg),
            OriginAction::Add {
                spec,
                name,
                no_wait,
            } => daemon(&socket, |mut c| async move {
                cli::origin_add(&mut c, spec, name, no_wait, json).await
            }),
            OriginAction::Remove { origin, no_wait } => daemon(&socket, |mut c| async move {
                cli::origin_remove(&mut c, origin, no_wait, json).await
            }),
            OriginAction::Forget { origin } => origin_forget(&cfg, &origin),
        },
        Command::Cache { action } => match action {
            CacheAction::Verify => either(
                &socket,
                |mut c| async move { cli::cache_verify(&mut c, json).await },
                || cache_verify(&cfg),
            ),
            CacheAction::Stats => either(
                &socket,
                |mut c| async move { cli::cache_stats(&mut c, json).await },
                || cache_stats(&cfg, json),
            ),
            CacheAction::Clear => either(
                &socket,
                |mut c| async move { cli::cache_clear(&mut c, json).await },
                || cache_clear(&cfg),
            ),
        },
        Command::Tree { long } => tree(&cfg, long),
        Command::Stats => stats(&cfg),
        Command::Catalog {
            action: CatalogAction::Check,
        } => catalog_check(&cfg),
        Command::Import {
            file,
            fields,
            path_map,
        } => import_library(&cfg, &socket, &file, &fields, path_map.as_deref(), json),
        Command::Export { format, output } => export_library(&cfg, &format, output.as_deref()),
        Command::Tag { action } => {
            let (name, targets, args) = action.parts();
            let (paths, query) = (targets.paths, targets.query.unwrap_or_default());
            let paths: Vec<String> = paths.iter().map(|p| absolute_if_exists(p)).collect();
            let req = musicfs_tools::control::proto::TagRequest {
                action: name.into(),
                paths: paths.clone(),
                query: query.clone(),
                args: args.clone(),
                no_wait: targets.no_wait,
            };
            match musicfs_tools::tagging::Action::parse(name) {
                Err(e) => Err(e),
                Ok(act) => either(
                    &socket,
                    |mut c| async move {
                        let reply = c.tag(req).await.map_err(cli::rpc_error)?.into_inner();
                        musicfs_tools::tagging::print(&reply, act, json)
                    },
                    || tag_offline(&cfg, act, &paths, &query, &args, json),
                ),
            }
        }
        Command::Search {
            query,
            json: as_json,
            limit,
        } => {
            let as_json = as_json || json;
            let q = query.clone();
            either(
                &socket,
                |mut c| async move { cli::search(&mut c, q, limit, as_json).await },
                || search(&cfg, &query, as_json, limit),
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musicfs: {e:#}");
            // A bad origin spec is bad usage, like a bad configuration.
            if e.downcast_ref::<BadOrigin>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs `f` against the daemon on `socket`; fails when none runs.
fn daemon<F, Fut>(socket: &Path, f: F) -> Result<()>
where
    F: FnOnce(cli::Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    cli::runtime()?.block_on(async {
        let c = cli::must_connect(socket).await?;
        f(c).await
    })
}

/// Runs `online` against the daemon on `socket` when one runs, else `offline` on the
/// state directory.
fn either<F, Fut>(socket: &Path, online: F, offline: impl FnOnce() -> Result<()>) -> Result<()>
where
    F: FnOnce(cli::Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let rt = cli::runtime()?;
    match rt.block_on(cli::try_connect(socket))? {
        Some(c) => rt.block_on(online(c)),
        None => offline(),
    }
}

/// Writes man pages for both binaries and every subcommand into `dir`.
fn manpages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0;
    let mut write = |cmd: clap::Command| -> Result<()> {
        let name = cmd.get_name().to_string();
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
        Ok(())
    };
    let top = Cli::command();
    for sub in top.get_subcommands() {
        write(sub.clone().name(format!("musicfs-{}", sub.get_name())))?;
    }
    write(top)?;
    write(musicfs_tools::daemon_command())?;
    eprintln!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

fn cache_clear(cfg: &Config) -> Result<()> {
    let cas = open_cache(cfg)?;
    let evicted = cas.clear()?;
    println!("evicted {evicted} chunks; {} left", cas.stats()?.chunks);
    Ok(())
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

fn scan(
    mut cfg: Config,
    origins: Vec<PathBuf>,
    template: Option<String>,
    (allow_mass_removal, verify): (bool, bool),
) -> Result<()> {
    if let Some(t) = template {
        cfg.template = t;
    }
    let template = Template::parse(&cfg.template).context("bad template")?;
    // A plugin may serve an origin.
    let _plugins = musicfs_tools::start_plugins(&cfg)?;
    let origins: Vec<OriginConfig> = if origins.is_empty() {
        cfg.origins.clone()
    } else {
        // Each keeps its table's settings when the configuration has the same spec.
        origins
            .into_iter()
            .map(|p| {
                cfg.origins
                    .iter()
                    .find(|o| o.path == p)
                    .cloned()
                    .unwrap_or_else(|| OriginConfig::local(p))
            })
            .collect()
    };
    anyhow::ensure!(
        !origins.is_empty(),
        "no origin: give --origin DIR or [[origin]] in the config"
    );
    let origins = resolve_origins(&origins)?.origins;
    let state = StateDir::create(&cfg.state_dir())?;
    let library = Library {
        catalog: std::sync::Arc::new(state.open_catalog()?),
        template,
        origins,
        readers: Vec::new(),
        state,
        mass_removal_threshold: cfg.mass_removal_threshold,
        health: Default::default(),
        progress: progress_bar(),
        renditions: musicfs_index::refresh::no_renditions(),
    };
    let opts = ScanOptions {
        allow_mass_removal,
        verify,
        ..library.scan_options()
    };
    // The published tree as it was before the scan: a small change publishes as a delta
    // on it (see `Library::publish_change`).
    let before = Snapshot::open(&library.state.snapshot_path()).ok();
    let was_current = match &before {
        Some(snap) => library.is_current(snap)?,
        None => false,
    };
    let report = library.scan_with(opts)?;
    eprintln!("{}", scan_summary(&report));
    match before {
        Some(snap) if !library.is_current(&snap)? => {
            let published = library.publish_change(&snap, &report.touched, was_current)?;
            report_published(&published);
        }
        _ => publish_if_changed(&library)?,
    }
    sync_search(&library)?;
    // Everything that could be scanned was, and the tree published; a kept origin still
    // fails the command, so a script notices.
    anyhow::ensure!(
        report.offline.is_empty(),
        "{} origin(s) offline, their tracks kept (see above)",
        report.offline.len()
    );
    Ok(())
}

/// Brings the search index to the catalog.
fn sync_search(library: &Library) -> Result<()> {
    let index = SearchIndex::open(&library.state.search_dir())?;
    let synced = index.sync(&library.catalog, None)?;
    if synced.written + synced.deleted > 0 {
        eprintln!(
            "search index: {} written, {} deleted ({} tracks)",
            synced.written,
            synced.deleted,
            index.len()
        );
    }
    Ok(())
}

fn search(cfg: &Config, query: &str, json: bool, limit: Option<usize>) -> Result<()> {
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = state.open_catalog()?;
    let snap = Snapshot::open(&state.snapshot_path())
        .context("no usable snapshot: run `musicfs scan` first")?;
    let index = SearchIndex::open(&state.search_dir())?;
    if let Err(e) = index.sync(&catalog, None) {
        // The daemon may be writing it right now: answer from it as it is.
        tracing::warn!("cannot bring the search index up to date: {e}");
    }
    let hits = index.search(query, limit.unwrap_or(cfg.search_limit))?;
    let ids: Vec<u64> = hits.iter().map(|h| h.id.0).collect();
    let tags: &dyn musicfs_fusedev::TagSource = &catalog;
    let entries = musicfs_fusedev::virt::entries(&snap, &ids, Some(tags));
    let hits = musicfs_tools::control::search_hits(&entries);
    cli::print_hits(&hits, json)
}

/// A path that exists here, made absolute (a file in the mount named from inside it);
/// anything else as given (a path relative to the tree's root).
fn absolute_if_exists(p: &str) -> String {
    match std::fs::canonicalize(p) {
        Ok(abs) if !Path::new(p).is_absolute() || Path::new(p).exists() => {
            abs.to_string_lossy().into_owned()
        }
        _ => p.to_string(),
    }
}

/// `musicfs tag` with no daemon running: edits go into the catalog and show from the
/// next daemon start (or `musicfs scan`).
fn tag_offline(
    cfg: &Config,
    action: musicfs_tools::tagging::Action,
    paths: &[String],
    query: &str,
    args: &[String],
    json: bool,
) -> Result<()> {
    use musicfs_tools::tagging;
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = state.open_catalog()?;
    let snap = Snapshot::open(&state.snapshot_path())
        .context("no usable snapshot: run `musicfs scan` first")?;
    let index = if query.is_empty() {
        None
    } else {
        let index = SearchIndex::open(&state.search_dir())?;
        if let Err(e) = index.sync(&catalog, None) {
            tracing::warn!("cannot bring the search index up to date: {e}");
        }
        Some(index)
    };
    let ids = tagging::resolve(&snap, &catalog, index.as_ref(), None, paths, query)?;
    // Offline, `suggest` runs the configured plugins in this process.
    let plugins = musicfs_tools::plugins::Plugins::configured(cfg);
    if action == tagging::Action::Suggest {
        for name in &cfg.plugins {
            plugins.load(name)?;
        }
    }
    let proposals = musicfs_tools::plugins::Proposals::at(&cfg.state_dir());
    let ctx = tagging::TagContext {
        plugins: Some(&plugins),
        proposals: &proposals,
        // Offline: no origins opened, so an enricher gets no fingerprint.
        open: None,
    };
    let changed = tagging::apply(&catalog, &ids, action, args, &ctx)?;
    let tracks = tagging::report(
        &catalog,
        &snap,
        &ids,
        action == tagging::Action::Get,
        &proposals,
    )?;
    if changed > 0 && !json {
        eprintln!("no daemon runs: the edits show from its next start (or `musicfs scan`)");
    }
    let reply = musicfs_tools::control::proto::TagReply {
        tracks,
        changed,
        refresh: None,
    };
    tagging::print(&reply, action, json)
}

/// `musicfs import`: into the catalog (LMDB lets the daemon run meanwhile), then, when a
/// daemon runs, a refresh so it serves the edits.
fn import_library(
    cfg: &Config,
    socket: &Path,
    file: &Path,
    fields: &str,
    path_map: Option<&str>,
    json: bool,
) -> Result<()> {
    use musicfs_tools::library_io;
    let fields = library_io::parse_fields(fields)?;
    let map = match path_map {
        None => None,
        Some(m) => {
            let (from, to) = m.split_once('=').context("--path-map takes FROM=TO")?;
            Some((PathBuf::from(from), PathBuf::from(to)))
        }
    };
    let entries = library_io::read_any(file)?;
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = state.open_catalog()?;
    let report = library_io::import(
        &catalog,
        entries,
        &fields,
        map.as_ref().map(|(f, t)| (f.as_path(), t.as_path())),
    )?;
    drop(catalog);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} entries, {} matched, {} tracks with new tag edits, {} with play counts",
            report.entries, report.matched, report.overridden, report.plays
        );
        for p in &report.unmatched {
            println!("not in the catalog: {p}");
        }
    }
    if report.overridden > 0 {
        either(
            socket,
            |mut c| async move { cli::refresh(&mut c, None, false, None, false).await },
            || {
                eprintln!("no daemon runs: the edits show from its next start (or `musicfs scan`)");
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// `musicfs export`.
fn export_library(cfg: &Config, format: &str, output: Option<&Path>) -> Result<()> {
    use musicfs_tools::library_io;
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = state.open_catalog()?;
    let export = library_io::export(&catalog)?;
    let mut out: Box<dyn std::io::Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        "json" => {
            serde_json::to_writer_pretty(&mut out, &export)?;
            writeln!(out)?;
        }
        "csv" => library_io::write_csv(&export, &mut out)?,
        other => anyhow::bail!("unknown export format {other:?} (json, csv)"),
    }
    out.flush()?;
    Ok(())
}

fn publish_if_changed(library: &Library) -> Result<()> {
    if let Ok(snap) = Snapshot::open(&library.state.snapshot_path()) {
        if library.is_current(&snap)? {
            eprintln!("tree unchanged: generation {} kept", snap.generation());
            return Ok(());
        }
    }
    report_published(&library.publish()?);
    Ok(())
}

fn report_published(published: &musicfs_index::refresh::Published) {
    eprintln!(
        "published generation {} with {} tracks in {:.3}s{}",
        published.generation,
        published.tracks,
        published.elapsed.as_secs_f64(),
        if published.delta {
            " (as a delta on the previous tree)"
        } else {
            ""
        }
    );
}

fn share_push(cfg: &Config, json: bool) -> Result<()> {
    let tier = musicfs_tools::open_tier(cfg)?
        .context("no shared_tier in the configuration: nowhere to share the library")?;
    let keys = cfg
        .origins
        .iter()
        .map(|o| Ok(parse_origin(o.path.as_os_str())?.key()))
        .collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(!keys.is_empty(), "no origin configured: nothing to share");
    let name = musicfs_tools::share::bundle_name(cfg, keys.iter().map(|k| k.as_os_str()));
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = state.open_catalog()?;
    let (name, bytes) = musicfs_tools::share::push(&tier, &name, &state, &catalog)?;
    if json {
        println!("{}", serde_json::json!({ "name": name, "bytes": bytes }));
    } else {
        println!("shared {name} ({bytes} bytes) in {}", tier.shown());
    }
    Ok(())
}

fn origin_list(cfg: &Config) -> Result<()> {
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = state.open_catalog()?;
    for (id, root) in catalog.origins()? {
        let tracks = catalog.scan_states(id)?.len();
        println!("{}\t{tracks}", root.display());
    }
    Ok(())
}

/// Forgets `origin` and republishes the tree the snapshot showed, without it.
fn origin_forget(cfg: &Config, origin: &std::path::Path) -> Result<()> {
    let state = StateDir::create(&cfg.state_dir())?;
    let catalog = std::sync::Arc::new(state.open_catalog()?);
    let known = catalog.origins()?;
    // The catalog names origins by key (a local origin's canonical root); one that is gone
    // cannot be canonicalized, so the absolute path as given is tried as well.
    let key = PathBuf::from(parse_origin(origin.as_os_str())?.key());
    let wanted = [Some(key), std::path::absolute(origin).ok()];
    let Some((id, root)) = known
        .iter()
        .find(|(_, root)| wanted.iter().flatten().any(|w| w == root))
        .cloned()
    else {
        let names: Vec<String> = known.iter().map(|(_, r)| r.display().to_string()).collect();
        anyhow::bail!(
            "the catalog has no origin {} (it has: {})",
            origin.display(),
            names.join(", ")
        );
    };
    let done = catalog.forget_origin(id)?;
    eprintln!(
        "forgot origin {}: {} tracks removed",
        root.display(),
        done.tracks
    );
    let Ok(snap) = Snapshot::open(&state.snapshot_path()) else {
        return Ok(());
    };
    let (others, errors) = OriginTable::from_keys(
        snap.origin_keys()
            .filter(|(_, key)| *key != root.as_os_str()),
    );
    if let Some(e) = errors.into_iter().next() {
        return Err(e).context("an origin the snapshot shows cannot be opened");
    }
    let library = Library {
        catalog,
        template: Template::parse(snap.template()).context("the snapshot's template")?,
        origins: others.iter().map(|(_, o)| o.clone()).collect(),
        readers: Vec::new(),
        state,
        mass_removal_threshold: cfg.mass_removal_threshold,
        health: Default::default(),
        progress: None,
        renditions: musicfs_index::refresh::no_renditions(),
    };
    drop(snap);
    publish_if_changed(&library)
}

fn catalog_check(cfg: &Config) -> Result<()> {
    let dir = cfg.state_dir().join("catalog");
    anyhow::ensure!(
        dir.join("data.mdb").is_file(),
        "no catalog at {}",
        dir.display()
    );
    match musicfs_tools::catalog_check::check(&dir).context("cannot run the catalog check")? {
        musicfs_storage::catalog::Verdict::Sound(summary) => {
            println!("{summary}");
            println!("ok");
            Ok(())
        }
        musicfs_storage::catalog::Verdict::Damaged(why) => anyhow::bail!(
            "the catalog {} is damaged: {why}. Stop the daemon, move the directory away (it \
             keeps tag edits and play counts, which a rebuild loses) and start the daemon \
             again: it rescans the origins into a new catalog",
            dir.display()
        ),
    }
}

fn cache_verify(cfg: &Config) -> Result<()> {
    let cas = open_cache(cfg)?;
    let report = cas.verify()?;
    println!(
        "checked {} chunks ({} bytes) in {} packs, {} manifests",
        report.chunks, report.bytes, report.packs, report.manifests
    );
    for p in &report.problems {
        println!("problem: {p}");
    }
    anyhow::ensure!(
        report.is_ok(),
        "the chunk cache {} has {} problem(s); damaged chunks are dropped when read",
        cas.dir().display(),
        report.problems.len()
    );
    println!("ok");
    Ok(())
}

fn cache_stats(cfg: &Config, json: bool) -> Result<()> {
    let cas = open_cache(cfg)?;
    if !json {
        println!("directory\t{}", cas.dir().display());
    }
    cli::print_cache_stats(&musicfs_tools::control::cache_stats_reply(&cas)?, json)
}

fn stats(cfg: &Config) -> Result<()> {
    let state = StateDir::create(&cfg.state_dir())?;
    let snap = Snapshot::open_verified(&state.snapshot_path())
        .context("no usable snapshot: run `musicfs scan` first")?;
    let catalog = state.open_catalog()?;
    #[derive(Default)]
    struct Counts {
        tracks: u64,
        shown: u64,
        hidden: u64,
        saved: u64,
    }
    let mut per: std::collections::BTreeMap<u32, Counts> = Default::default();
    catalog.for_each(|t| per.entry(t.origin.0).or_default().tracks += 1)?;
    snap.for_each_node(|n| {
        if let Some(f) = n.file() {
            per.entry(f.origin).or_default().shown += 1;
            for a in snap.alternates(f.track_id) {
                let c = per.entry(a.origin).or_default();
                c.hidden += 1;
                c.saved += a.size;
            }
        }
    });
    // The states the running daemon's prober last wrote (ROOT, STATE, PROBE_US, WHY).
    let health_file = cfg.state_dir().join(musicfs_index::refresh::HEALTH_FILE);
    let states: std::collections::HashMap<String, String> = std::fs::read_to_string(&health_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut f = line.splitn(4, '\t');
            let (root, state, us, why) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
            let text = match why {
                "" => format!("{state} (probe {us} us)"),
                why => format!("{state}: {why} (probe {us} us)"),
            };
            Some((root.to_owned(), text))
        })
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(out, "origin\ttracks\tshown\tcopies\tbytes_saved\tstate")?;
    let mut total = Counts::default();
    for (id, root) in catalog.origins()? {
        let c = per.remove(&id.0).unwrap_or_default();
        let root = root.display().to_string();
        let state = states
            .get(&root)
            .cloned()
            .unwrap_or_else(|| "unknown (no daemon has probed it)".to_owned());
        // The configured origin with this key (a spec names it as the catalog does).
        let name = cfg
            .origins
            .iter()
            .find(|o| {
                musicfs_storage::origin::OriginSpec::parse(&o.path.to_string_lossy())
                    .is_ok_and(|spec| spec.key() == root.as_str())
            })
            .and_then(|o| o.name.clone());
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            name.unwrap_or(root),
            c.tracks,
            c.shown,
            c.hidden,
            c.saved,
            state
        )?;
        total.tracks += c.tracks;
        total.shown += c.shown;
        total.hidden += c.hidden;
        total.saved += c.saved;
    }
    writeln!(
        out,
        "total\t{}\t{}\t{}\t{}\t",
        total.tracks, total.shown, total.hidden, total.saved
    )?;
    out.flush()?;
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
                for a in snap.alternates(f.track_id) {
                    out.write_all(b"\t")?;
                    if let Some(root) = snap.origin_root(a.origin) {
                        out.write_all(root.as_os_str().as_bytes())?;
                        out.write_all(b"/")?;
                    }
                    out.write_all(a.rel_path)?;
                    out.write_all(if a.same_bytes {
                        b" (same)"
                    } else {
                        b" (retagged)"
                    })?;
                }
            }
        } else {
            out.write_all(&path)?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
