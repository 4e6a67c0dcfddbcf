//! Bytes allocated on the current thread, so that a target can check that
//! what a parser allocates stays in proportion to what it was given. An
//! 8-byte IKE Delete payload once asked for 786 KB (65,535 zero-sized
//! SPIs): natively that is only slow, but in the IKE guest's 128 MiB a
//! few such payloads trapped it. The binaries that run the targets (the
//! cargo-fuzz ones, the corpus test) make [`Metered`] their allocator;
//! elsewhere the meter reads 0 and the check passes.
#![allow(unsafe_code)] // a GlobalAlloc is unsafe to implement; each block says why it is sound

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting what the thread asks of it.
pub struct Metered;

thread_local! {
    /// Const-initialised with no destructor: reading it never allocates,
    /// so the allocator can use it.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // During a thread's teardown the counter may be gone: nothing to count.
    let _ = ALLOCATED.try_with(|c| c.set(c.get().saturating_add(bytes)));
}

// SAFETY: every call is passed on to `System` with the caller's own
// arguments, so `System`'s guarantees hold; counting touches only a
// thread-local `Cell`, never the memory handed out.
unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: the caller upholds `realloc`'s contract: `ptr` came from
        // this allocator (so from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// What `f` returned, and the bytes it allocated on this thread (freed
/// or not; 0 unless [`Metered`] is the global allocator).
pub fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATED.with(Cell::get);
    let r = f();
    (r, ALLOCATED.with(Cell::get) - before)
}

/// At most this many bytes per input byte, and this many besides, for a
/// parse: a payload's structures and the copies of its bytes cost a small
/// multiple of the bytes that describe them.
pub const PER_INPUT_BYTE: usize = 64;
pub const BESIDES: usize = 64 << 10;

#[cfg(test)]
mod tests {
    #[test]
    fn the_meter_counts_only_under_its_allocator() {
        // The unit tests of this crate run under the system allocator.
        let (v, n) = super::allocated_by(|| vec![0u8; 1000]);
        assert_eq!((v.len(), n), (1000, 0));
    }
}
