//! MusicFS storage: everything MusicFS keeps on its own disk.
//!
//! Today this crate owns the **catalog** ([`catalog`]): the LMDB environment (through heed)
//! that remembers every track the scanner found, under a stable [`TrackId`], with its tags
//! and the file facts ([`ScanState`]) an incremental scan compares against, and the files
//! it could not read, so it does not open them again while they stay unchanged. It also owns
//! the **origin seam** ([`origin`]): how an origin is named (a URL-like [`OriginSpec`]),
//! listed, stat'ed, read by offset ([`Source`]) and probed for health, with the local
//! driver as its first implementation (S3, SFTP and SMB specs parse but have no driver
//! yet). It also owns the **content-addressed chunk store** ([`cas`]): the local cache remote
//! files are read through (chunk index in its own LMDB environment, pack files, LRU
//! eviction under a byte budget, verification).
//!
//! What it must not do: know about paths in the virtual tree, templates or FUSE (that is
//! `musicfs-core` and `musicfs-fusedev`), read tags (`musicfs-index`), or ever write to an
//! origin. The catalog stores what it is given; it decides nothing about how tracks are
//! presented.
//!
//! Types to read first:
//! - [`Catalog`]: open a catalog directory, look tracks up, apply a scan's changes in one
//!   transaction.
//! - [`Upsert`]: one new or changed file, as the scanner hands it over; [`Batch`] groups
//!   upserts, removals and [`SkipRecord`]s (broken files) into one transaction.
//! - [`CatalogError`]: every way the catalog can fail, with the catalog's path in it.
//! - [`Cas`]: put the chunks of a fetched range, read cached bytes back (verified), pin
//!   open files, verify the store; [`CasError`] is every way it can fail.
//! - [`Origin`] and [`open_origin`]: the one interface to source files; [`OriginError`] is
//!   every way naming, opening or reading an origin can fail.
//!
//! [`TrackId`]: musicfs_core::meta::TrackId
//! [`ScanState`]: musicfs_core::meta::ScanState
#![deny(missing_docs)]

pub mod art;
pub mod cas;
pub mod catalog;
pub mod origin;

pub use art::ArtStore;
pub use cas::{Cas, CasError, CasOptions, CasStats, PinGuard, VerifyReport};
pub use catalog::{
    ArtRef, ArtSet, Batch, Catalog, CatalogError, DirExtras, ExtraFile, ExtrasChanged, Forgotten,
    IdentitySet, OriginDevice, OverrideKey, Plays, SkipRecord, Upsert, SCHEMA_VERSION,
};
pub use origin::{open_origin, Origin, OriginError, OriginSpec, Source};
