//! The stat facts the local walk records for each file (files themselves are opened only
//! through the origin seam, `musicfs_storage::origin`).

use std::os::unix::fs::MetadataExt;

use musicfs_core::{Perm, ScanState};

/// The facts the incremental scan compares to tell whether a file changed, and the owner
/// and permission bits the tree shows (the same values
/// `musicfs_storage::origin::Stat::scan_state` gives for a listed entry).
pub fn scan_state(md: &std::fs::Metadata) -> ScanState {
    ScanState {
        size: md.size(),
        mtime_ns: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
        ino: md.ino(),
        ctime_ns: md
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.ctime_nsec()),
        perm: Some(Perm {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        }),
    }
}
