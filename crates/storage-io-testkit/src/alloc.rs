//! A counting global allocator for Ring-0 tests: "after warm-up, submit and poll allocate nothing".
//!
//! Install it in the test binary, then count what a closure allocates on the calling thread
//! (other threads, such as the test harness's, are not counted):
//!
//! ```
//! #[global_allocator]
//! static ALLOC: storage_io_testkit::alloc::CountingAllocator = storage_io_testkit::alloc::CountingAllocator;
//!
//! fn main() {
//!     use storage_io_testkit::alloc::count_allocations;
//!     let mut ring: Vec<u64> = Vec::with_capacity(16); // warm-up: allocate up front
//!     let ((), allocations) = count_allocations(|| ring.push(1));
//!     assert_eq!(allocations, 0, "pushing within capacity allocates nothing");
//!     let (page, allocations) = count_allocations(|| vec![0u8; 4096]);
//!     assert_eq!((page.len(), allocations), (4096, 1));
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Forwards to the system allocator and counts allocations made inside [`count_allocations`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

fn note() {
    // try_with: the thread-locals may already be gone while a thread shuts down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which System shares.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System with this layout, per the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as for dealloc; new_size is the caller's, per GlobalAlloc::realloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the number of allocations (and reallocations) it made
/// on this thread. Counts only when [`CountingAllocator`] is the global allocator; call
/// [`counting_is_installed`] to make sure a zero means something.
pub fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = COUNT.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, COUNT.with(Cell::get) - before)
}

/// True when the counting allocator is installed and counting (it sees a known allocation).
pub fn counting_is_installed() -> bool {
    // black_box: an optimised build may otherwise elide an allocation that is only dropped.
    let (b, n) = count_allocations(|| std::hint::black_box(Box::new([0u8; 64])));
    drop(b);
    n == 1
}
