//! MusicFS storage: everything MusicFS keeps on its own disk.
//!
//! Today this crate owns the **catalog** ([`catalog`]): the LMDB environment (through heed)
//! that remembers every track the scanner found, under a stable [`TrackId`], with its tags
//! and the file facts ([`ScanState`]) an incremental scan compares against, and the files
//! it could not read, so it does not open them again while they stay unchanged. Later it will
//! also own the content-addressed chunk store (CAS: chunk index, pack files, eviction) and
//! the origins (local, S3, SFTP, SMB) that list and read source files.
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
//!
//! [`TrackId`]: musicfs_core::meta::TrackId
//! [`ScanState`]: musicfs_core::meta::ScanState
#![deny(missing_docs)]

pub mod catalog;

pub use catalog::{
    Batch, Catalog, CatalogError, Forgotten, OriginDevice, SkipRecord, Upsert, SCHEMA_VERSION,
};
