//! The hot path allocates nothing: a counting global allocator (for this test binary)
//! counts the allocations of the calling thread over a loop of hand-built requests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::tests::Rig;
use super::*;
use musicfs_core::snapshot::ROOT_INO;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread local, whose access never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's pointer and layouts.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// One round of what a player and a file manager do: look names up (hits and misses),
/// stat, list a directory plain and plus, open, read, release, forget.
fn round(r: &mut Rig, dir: u64, file: u64, names: &[Vec<u8>]) {
    for name in names {
        assert!(matches!(
            r.call(abi::FUSE_LOOKUP, dir, name),
            Outcome::Reply(_)
        ));
    }
    assert!(matches!(
        r.call(abi::FUSE_GETATTR, file, &[0u8; 16]),
        Outcome::Reply(_)
    ));
    let dh = r.opendir(dir);
    for op in [abi::FUSE_READDIR, abi::FUSE_READDIRPLUS] {
        assert!(matches!(r.read(dir, dh, 0, 4096, op), Outcome::Reply(_)));
    }
    assert_eq!(r.release(dir, dh, abi::FUSE_RELEASEDIR), Outcome::Reply(0));
    let o = r.open(file, libc::O_RDONLY);
    let fh = r.reply::<abi::OpenOut>(&o).fh;
    assert_eq!(
        r.read(file, fh, 4096, 4096, abi::FUSE_READ),
        Outcome::Reply(4096)
    );
    assert_eq!(r.release(file, fh, abi::FUSE_RELEASE), Outcome::Reply(0));
    let forget = [1u8; 8];
    assert_eq!(r.call(abi::FUSE_FORGET, file, &forget), Outcome::Silent);
}

#[test]
fn lookup_getattr_readdir_open_read_release_forget_allocate_nothing() {
    let mut r = Rig::new(crate::fs::FsConfig {
        negative_timeout: std::time::Duration::ZERO,
        ..crate::fs::FsConfig::default()
    });
    let dir = r.ino("Ann/First");
    let file = r.ino("Ann/First/01 - One.flac");
    let names: Vec<Vec<u8>> = ["01 - One.flac", "02 - Two.flac"]
        .iter()
        .map(|n| super::tests::cstr(n))
        .collect();
    let miss = super::tests::cstr("not here.flac");
    // Warm-up: handle tables and the handle pool reach their steady size.
    for _ in 0..4 {
        round(&mut r, dir, file, &names);
    }
    let before = allocations();
    for _ in 0..1000 {
        round(&mut r, dir, file, &names);
        // A miss, answered with ENOENT (negative caching off), and one with a cached
        // negative entry are both allocation-free.
        assert_eq!(
            r.call(abi::FUSE_LOOKUP, dir, &miss),
            Outcome::Error(libc::ENOENT)
        );
    }
    let during = allocations() - before;
    assert_eq!(during, 0, "{during} allocations in 1000 rounds");

    let mut cached = Rig::standard();
    let root_miss = super::tests::cstr("Nobody");
    let _ = cached.call(abi::FUSE_LOOKUP, ROOT_INO, &root_miss);
    let before = allocations();
    for _ in 0..1000 {
        let o = cached.call(abi::FUSE_LOOKUP, ROOT_INO, &root_miss);
        assert_eq!(cached.reply::<abi::EntryOut>(&o).nodeid, 0);
    }
    assert_eq!(allocations() - before, 0);

    // With skip_open, READs carry no handle and find the source by inode.
    let mut by_inode = Rig::new(crate::fs::FsConfig {
        skip_open: true,
        ..crate::fs::FsConfig::default()
    });
    let file = by_inode.ino("Ann/First/01 - One.flac");
    let _ = by_inode.read(file, 0, 0, 4096, abi::FUSE_READ);
    let before = allocations();
    for i in 0..1000u64 {
        let o = by_inode.read(file, 0, (i % 2) * 4096, 4096, abi::FUSE_READ);
        assert_eq!(o, Outcome::Reply(4096));
    }
    assert_eq!(allocations() - before, 0);
}
