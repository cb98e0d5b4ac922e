//! The `musicfsd` command line (here so that `musicfs manpages` can render it too).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

/// The MusicFS daemon: a read-only FUSE filesystem showing a music library by its tags.
#[derive(Parser)]
#[command(
    name = "musicfsd",
    version,
    args_override_self = true,
    after_help = "Stop with Ctrl-C, SIGTERM or `fusermount3 -u MOUNTPOINT` (exit 0); SIGHUP rescans the origins.\nExit code 2: bad usage, configuration or mountpoint, or no readable origin and no snapshot. Docs: docs/CONFIG.md, docs/SEMANTICS.md."
)]
pub struct DaemonCli {
    /// Where to mount the tree (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// FUSE worker threads, each on its own /dev/fuse queue [default: one per CPU].
    #[arg(long, env = "MUSICFS_THREADS")]
    pub threads: Option<usize>,
    /// TOML configuration file.
    #[arg(long, env = "MUSICFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// An origin: a directory, `file:///DIR`, `s3://BUCKET[/PREFIX]?endpoint=…`,
    /// `sftp://USER@HOST[:PORT]/PATH` or `smb://USER@HOST[:PORT]/SHARE[/PATH]`; repeat for
    /// several (default: the config's origins). A path may contain `:`; MUSICFS_ORIGINS
    /// takes one origin per line.
    #[arg(long = "origin", env = "MUSICFS_ORIGINS", value_delimiter = '\n')]
    pub origins: Vec<PathBuf>,
    /// Path template (see docs/TEMPLATES.md).
    #[arg(long, env = "MUSICFS_TEMPLATE")]
    pub template: Option<String>,
    /// State directory (catalog and snapshot) [default: $XDG_STATE_HOME/musicfs, or
    /// /var/lib/musicfs for root].
    #[arg(long, env = "MUSICFS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Let other users access the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Owner uid shown for every file and directory [default: each source's owner].
    #[arg(long, env = "MUSICFS_UID")]
    pub uid: Option<u32>,
    /// Group gid shown for every file and directory [default: each source's group].
    #[arg(long, env = "MUSICFS_GID")]
    pub gid: Option<u32>,
    /// Octal permission bits cleared from every mode shown, e.g. 022 or 027 [default: 0].
    #[arg(long, env = "MUSICFS_UMASK", value_parser = musicfs_core::config::parse_umask)]
    pub umask: Option<u32>,
    /// Kernel entry cache timeout in seconds [default: 3600].
    #[arg(long)]
    pub entry_timeout: Option<f64>,
    /// Kernel attribute cache timeout in seconds [default: 3600].
    #[arg(long)]
    pub attr_timeout: Option<f64>,
    /// How long the kernel caches a missing name, in seconds [default: the entry timeout].
    #[arg(long)]
    pub negative_timeout: Option<f64>,
    /// Kernel readahead for the mount in KiB (root) [default: 1024].
    #[arg(long)]
    pub readahead_kb: Option<u32>,
    /// Seconds between health probes of each origin, 0 for none [default: 30].
    #[arg(long)]
    pub probe_interval: Option<f64>,
    /// Start an empty state dir from the library another daemon shared in the shared tier
    /// (`musicfs share push`): served at once, reconciled with the origins in the
    /// background.
    #[arg(long)]
    pub from_shared: bool,
    /// Next tracks of an album being played fetched ahead from remote origins, 0 for
    /// none [default: 2].
    #[arg(long)]
    pub prefetch_tracks: Option<usize>,
    /// Without passthrough, let the kernel open files without asking (one round trip less
    /// per open; write intents are then refused by the read-only mount alone).
    #[arg(
        long,
        env = "MUSICFS_SKIP_OPEN",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub skip_open: bool,
    /// Log filter (error, warn, info, debug, trace); RUST_LOG wins.
    #[arg(long, env = "MUSICFS_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// FUSE passthrough for local sources: auto, on (fail the mount without it), off.
    #[arg(long, env = "MUSICFS_PASSTHROUGH")]
    pub passthrough: Option<musicfs_core::config::PassthroughSetting>,
    /// Request transport: auto, uring (FUSE-over-io_uring, required), dev (/dev/fuse).
    #[arg(long, env = "MUSICFS_TRANSPORT")]
    pub transport: Option<musicfs_core::config::TransportSetting>,
    /// Write Y to /sys/module/fuse/parameters/enable_uring before mounting (root).
    #[arg(long)]
    pub enable_uring_param: bool,
    /// Do not count and time FUSE requests (`/metrics` then has no per-operation
    /// histograms). For measuring what the counting costs (`musicfs-bench`).
    #[arg(long)]
    pub no_op_metrics: bool,
}

/// The `musicfsd` command as clap describes it.
pub fn daemon_command() -> clap::Command {
    DaemonCli::command()
}
