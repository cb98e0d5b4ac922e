//! The out-of-process catalog check, wired: both binaries answer the hidden
//! `--check-catalog DIR` by walking the catalog ([`musicfs_storage::catalog::walk`]) and
//! exiting, and [`check`] runs that in a child of the current executable, so a damaged
//! page kills the child, never the caller.
//!
//! The daemon starts it right after mounting ([`check_in_background`]); `musicfs catalog
//! check` runs it on demand.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use musicfs_storage::catalog::{run_check, walk, Verdict};
use musicfs_storage::Catalog;
use tracing::{error, info, warn};

/// The hidden flag that makes a binary walk a catalog and exit.
pub const CHECK_FLAG: &str = "--check-catalog";

/// When the process was started as `PROGRAM --check-catalog DIR`: walks the catalog in
/// `DIR` and returns the exit code (0: sound, with a summary on stdout; 1: an error, on
/// stderr). A damaged page may instead kill this process, which is the point of running
/// it alone. `None` for any other command line.
pub fn run_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(CHECK_FLAG.as_ref()) {
        return None;
    }
    let Some(dir) = args.next() else {
        eprintln!("{CHECK_FLAG} needs the catalog directory");
        return Some(ExitCode::from(2));
    };
    Some(match walk(Path::new(&dir)) {
        Ok(s) => {
            println!(
                "{} databases, {} entries, {} bytes read",
                s.databases, s.entries, s.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The caller names the catalog: say only what is wrong with it.
            match e {
                musicfs_storage::CatalogError::Corrupt { detail, .. } => eprintln!("{detail}"),
                e => eprintln!("{e}"),
            }
            ExitCode::FAILURE
        }
    })
}

/// Checks the catalog in `catalog_dir` in a child process (this executable run with
/// [`CHECK_FLAG`]).
pub fn check(catalog_dir: &Path) -> std::io::Result<Verdict> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg(CHECK_FLAG).arg(catalog_dir);
    // The child logs nothing; keep a RUST_LOG meant for the daemon from mattering.
    cmd.env_remove("RUST_LOG");
    run_check(cmd)
}

/// Marks `catalog` as being checked and checks it on a thread of its own: work that reads
/// the whole catalog waits for the verdict ([`Catalog::wait_for_check`]); on damage every
/// catalog operation fails from then on, and the error says what to do, once, in the log.
pub fn check_in_background(catalog: Arc<Catalog>, catalog_dir: &Path) -> std::io::Result<()> {
    catalog.begin_check();
    let dir = catalog_dir.to_path_buf();
    let started = std::time::Instant::now();
    let spawned = std::thread::Builder::new()
        .name("catalog-check".into())
        .spawn({
            let catalog = catalog.clone();
            move || {
                let verdict = match check(&dir) {
                    Ok(v) => v,
                    // Not a verdict on the catalog: it is used as before, unchecked.
                    Err(e) => {
                        warn!(catalog = %dir.display(), "cannot run the catalog check, using the catalog unchecked: {e}");
                        Verdict::Sound(String::new())
                    }
                };
                match &verdict {
                    Verdict::Sound(summary) => info!(
                        catalog = %dir.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "catalog check passed: {summary}"
                    ),
                    Verdict::Damaged(why) => error!(
                        catalog = %dir.display(),
                        "catalog damaged ({why}): still serving the last published tree, but \
                         the catalog is not read or written again by this daemon (no refresh, \
                         tag edit or play count until it is replaced). To recover: stop the \
                         daemon, move {} away (it keeps tag edits and play counts, which a \
                         rebuild loses) and start it again; it rescans the origins into a new \
                         catalog",
                        dir.display()
                    ),
                }
                catalog.set_verdict(&verdict);
            }
        });
    if let Err(e) = spawned {
        catalog.set_verdict(&Verdict::Sound(String::new()));
        return Err(e);
    }
    Ok(())
}
