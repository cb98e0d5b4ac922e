//! MusicFS core: the types every other crate speaks, and nothing that does I/O on an origin.
//!
//! It owns the track model ([`meta::TrackRecord`], [`meta::TrackMeta`]), path templates
//! ([`template::Template`]) with name sanitising ([`sanitize`]), the virtual tree and its
//! on-disk rkyv snapshot ([`tree::TreeBuilder`], [`snapshot::Snapshot`]), the snapshot diff
//! that decides what a kernel must forget after a republish ([`snapshot::diff`], reporting to
//! an [`snapshot::InvalidationSink`]), configuration ([`config`], whose settings, e.g.
//! [`config::PassthroughSetting`], are the one vocabulary every crate uses), and which
//! origins are offline right now ([`health::OriginHealth`]). It must not depend on any other MusicFS crate, and must not know how bytes
//! are fetched or where the catalog lives.
#![deny(missing_docs)]

pub mod config;
pub mod events;
pub mod health;
pub mod meta;
pub mod nodeid;
pub mod overlay;
pub mod sanitize;
pub mod snapshot;
pub mod template;
pub mod tree;

pub use meta::{
    CopyTags, Format, Identity, OriginId, Perm, ScanState, TrackId, TrackMeta, TrackRecord,
};
