//! The node ids the kernel knows tree nodes by.
//!
//! A file's inode number (`st_ino`) stays the same across versions of its content, but the
//! FUSE node id it is handed out under carries a tag of its content generation in bits
//! 40..60: a re-tagged file is a new node to the kernel. The kernel would otherwise meet
//! the same node id again with another generation and retire the old inode, failing every
//! read of the handles still open on it with EIO (a player mid-track when a tag editor
//! saves); with a new id, those handles keep reading the version they opened (through the
//! old inode and its pages) while new opens get the new one.
//!
//! Only track files are tagged: their inode numbers are far below 2^40
//! ([`crate::tree::FILE_INO_BASE`] plus a catalog id), and every other node (the root and
//! fixed virtual directories below [`crate::tree::FILE_INO_BASE`], directories and virtual
//! nodes with one of bits 60..63 set) is handed out as its inode number. Two generations
//! share a tag once in about a million re-tags; the kernel then retires the old inode as
//! it did before tags existed (EIO for the handles on it, never mixed bytes).

use crate::tree::FILE_INO_BASE;

/// Where the version tag starts.
const TAG_SHIFT: u32 = 40;
/// Bits of the tag (40..60).
const TAG_BITS: u32 = 20;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const INO_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// The tag of content `generation`: never 0 (0 marks an untagged id).
pub fn version_tag(generation: u64) -> u64 {
    // Fold every bit of the generation in, then keep it out of 0.
    let folded = generation ^ (generation >> TAG_BITS) ^ (generation >> (2 * TAG_BITS));
    (folded % TAG_MASK) + 1
}

/// The node id of inode `ino` at content `generation` (0 for directories and nodes that
/// are not versioned): `ino` itself unless it is a track file.
pub fn kernel_id(ino: u64, generation: u64) -> u64 {
    if generation == 0 || !(FILE_INO_BASE..=INO_MASK).contains(&ino) {
        return ino;
    }
    ino | version_tag(generation) << TAG_SHIFT
}

/// The inode number and version tag (0: none) of a node id the kernel sent.
pub fn split(nodeid: u64) -> (u64, u64) {
    if nodeid >> (TAG_SHIFT + TAG_BITS) != 0 {
        // A directory or virtual node: bits 60..63 are theirs, and nothing is tagged.
        return (nodeid, 0);
    }
    (nodeid & INO_MASK, (nodeid >> TAG_SHIFT) & TAG_MASK)
}

/// Whether `nodeid` names inode `ino` at content `generation`: untagged ids (what older
/// kernels' caches and tests hold) name whatever version is current.
pub fn names_version(nodeid: u64, ino: u64, generation: u64) -> bool {
    let (at, tag) = split(nodeid);
    at == ino && (tag == 0 || nodeid == kernel_id(ino, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_files_are_tagged_by_version_and_split_back() {
        for ino in [FILE_INO_BASE, FILE_INO_BASE + 1, 12_345_678, INO_MASK] {
            for generation in [1u64, 3, 0xdead_beef_0000_0001, u64::MAX] {
                let id = kernel_id(ino, generation);
                assert_ne!(id, ino, "tagged");
                assert_eq!(split(id), (ino, version_tag(generation)));
                assert!(names_version(id, ino, generation));
                assert!(names_version(ino, ino, generation), "untagged: current");
                assert_eq!(id >> 60, 0, "bits 60..63 stay clear");
            }
        }
        // Another generation (with another tag) is another node.
        let (a, b) = (kernel_id(100, 7), kernel_id(100, 9));
        assert_ne!(a, b);
        assert!(!names_version(a, 100, 9));
    }

    #[test]
    fn other_nodes_are_their_inode_numbers() {
        for ino in [
            1u64,
            2,
            FILE_INO_BASE - 1,
            INO_MASK + 1,
            1 << 60,
            1 << 61,
            1 << 62,
        ] {
            assert_eq!(kernel_id(ino, 77), ino);
        }
        for ino in [
            1u64,
            1 << 60 | 5,
            1 << 61 | 1 << 40,
            1 << 62,
            1 << 63 | 12_345,
            u64::MAX,
        ] {
            assert_eq!(kernel_id(ino, 0), ino);
            assert_eq!(split(ino), (ino, 0), "{ino:#x}");
        }
    }

    #[test]
    fn tags_are_never_zero_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for g in 0..10_000u64 {
            let generation = crate::tree::content_generation(&crate::meta::ScanState {
                size: g,
                ..Default::default()
            });
            let tag = version_tag(generation);
            assert!((1..=TAG_MASK).contains(&tag));
            seen.insert(tag);
        }
        assert!(seen.len() > 9_900, "{} distinct tags of 10000", seen.len());
    }
}
