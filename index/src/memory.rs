//! Giving memory back to the operating system after a big job.
//!
//! A scan, a publish or a reconcile allocates tables sized by the library and frees them
//! when done; the global allocator (the binary's choice: `musicfsd` uses mimalloc) keeps
//! freed pages for reuse and returns them only when that thread allocates again, which an
//! idle daemon never does. So the library calls [`release_free_memory`] after each such
//! job, and the binary that owns the allocator registers how to purge it
//! ([`set_release_hook`]); without a hook (tests, other allocators) the call does nothing.

use std::sync::OnceLock;

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Registers `purge` (e.g. `mi_collect(true)`) as the way to return freed memory to the
/// operating system. The first registration wins; returns false if one was already set.
pub fn set_release_hook(purge: fn()) -> bool {
    HOOK.set(purge).is_ok()
}

/// Returns the allocator's freed pages to the operating system, when the binary said how.
pub fn release_free_memory() {
    if let Some(purge) = HOOK.get() {
        purge();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    static CALLS: AtomicU32 = AtomicU32::new(0);

    fn count() {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn the_registered_hook_runs_on_each_release_and_cannot_be_replaced() {
        assert!(set_release_hook(count));
        assert!(!set_release_hook(|| {}), "the first registration wins");
        // Other tests of this crate may publish (and so release) meanwhile: count at least.
        let before = CALLS.load(Ordering::Relaxed);
        release_free_memory();
        release_free_memory();
        assert!(CALLS.load(Ordering::Relaxed) >= before + 2);
    }
}
