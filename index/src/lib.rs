//! MusicFS index: finds audio files in origins, reads their tags, and keeps the catalog in
//! step with them.
//!
//! What it owns: walking origins ([`scan()`]), reading tags and stream facts with
//! symphonia without decoding audio ([`read_tags_from`]), and deciding which files changed
//! since the last scan (stat comparison, so unchanged files are never opened). Origins are
//! `musicfs_storage::origin::Origin`s: it lists, stats, probes and opens them only through
//! that seam (a local origin's root is used directly for its fast parallel walk and its
//! inotify watches). It stores results through `musicfs-storage`'s catalog and never
//! writes to an origin: local files are opened read-only with `O_NOATIME`.
//!
//! It also keeps a served tree current ([`refresh`]): the refresh loop (scan → catalog →
//! tree → snapshot → publish → invalidate) that the daemon wires up with its watchers,
//! timers and signals, handing it the kernel's invalidation sink as a
//! `musicfs_core::snapshot::InvalidationSink`.
//!
//! What it must not do: render paths (`musicfs-core`), talk to FUSE (it never imports
//! `musicfs-fusedev`), decode audio, or remove the tracks of an origin that is merely not
//! there ([`health`]).
//!
//! Types to read first:
//! - [`scan()`] with [`ScanOptions`] → [`ScanReport`]: the incremental, parallel scan.
//! - [`read_tags`] → `(Format, TrackMeta)` or [`TagError`]: one file's tags; see the
//!   [`tags`] module for which tag block wins when a file carries several.
//! - [`refresh::Library`] (publish, start-up load, refresh) and [`refresh::Refresher`] (the
//!   daemon's refresh thread).
#![deny(missing_docs)]

mod blocks;
mod fields;
pub mod formats;
pub mod fsio;
pub mod health;
pub mod identity;
mod known;
pub mod memory;
pub mod overlay;
pub mod refresh;
mod riff;
pub mod scan;
pub mod search;
pub mod tags;
mod walk;
pub mod watch;

#[cfg(test)]
mod testorigin;

pub use scan::{
    scan, DirHook, OfflineOrigin, Progress, ProgressFn, ScanError, ScanOptions, ScanReport, Skipped,
};
pub use tags::{
    read_tags, read_tags_from, read_track_from, read_track_identity, Picture, TagError, TrackRead,
};
