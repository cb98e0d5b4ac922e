//! MusicFS index: finds audio files in origins, reads their tags, and keeps the catalog in
//! step with them.
//!
//! What it owns: walking local origins ([`scan()`]), reading tags and stream facts with
//! symphonia without decoding audio ([`read_tags`]), and deciding which files changed since
//! the last scan (stat comparison, so unchanged files are never opened). It stores results
//! through `musicfs-storage`'s catalog and never writes to an origin: files are opened
//! read-only with `O_NOATIME`.
//!
//! What it must not do: render paths or build the tree (`musicfs-core`), talk to FUSE, or
//! decode audio, or remove the tracks of an origin that is merely not there ([`health`]).
//!
//! Types to read first:
//! - [`scan()`] with [`ScanOptions`] → [`ScanReport`]: the incremental, parallel scan.
//! - [`read_tags`] → `(Format, TrackMeta)` or [`TagError`]: one file's tags; see the
//!   [`tags`] module for which tag block wins when a file carries several.
#![deny(missing_docs)]

mod fields;
pub mod fsio;
pub mod health;
mod known;
mod riff;
pub mod scan;
pub mod tags;
mod walk;
pub mod watch;

pub use scan::{
    scan, DirHook, OfflineOrigin, Progress, ProgressFn, ScanError, ScanOptions, ScanReport, Skipped,
};
pub use tags::{read_tags, read_tags_from, TagError};
