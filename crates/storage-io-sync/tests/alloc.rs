//! Ring-0 rule: after warm-up, submit + poll on `SyncStorageIo` allocate nothing.
//!
//! A counting global allocator counts allocations made on the measuring thread only, so the test
//! harness's own threads cannot disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, IoConfig, OpenOptions, StorageIo};
use storage_io_sync::SyncStorageIo;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which System shares.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc/realloc with this layout, per the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for dealloc; new_size is the caller's, per GlobalAlloc::realloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.load(Ordering::Relaxed) - before)
}

#[test]
fn sync_backend_submit_and_poll_do_not_alloc_in_steady_state() {
    // The counter must see an allocation, or a zero below would prove nothing.
    let (_b, probe) = counted(|| Box::new([0u8; 64]));
    assert_eq!(probe, 1, "the counting allocator is not counting");

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut io = SyncStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io
        .open_file(&dir.path().join("f"), &OpenOptions::create())
        .unwrap();
    let mut done: Vec<IoCompletion> = Vec::with_capacity(64);
    let mut read_buf = Some(IoBuf::from(AlignedBuf::page_aligned(4096).unwrap()));
    let mut write_buf = Some(IoBuf::from(AlignedBuf::page_aligned(4096).unwrap()));
    let payload = [7u8; 4096];

    let mut round = |io: &mut SyncStorageIo, done: &mut Vec<IoCompletion>, i: u64| {
        io.submit_write(fd, &payload, (i % 64) * 4096).unwrap();
        io.submit_append(fd, &payload[..128]).unwrap();
        let wb = write_buf.take().unwrap();
        io.submit_write_buf(fd, wb, 8192).map_err(|e| e.error).unwrap();
        let mut rb = read_buf.take().unwrap();
        if let IoBuf::Aligned(b) = &mut rb {
            b.set_len(4096).unwrap();
        }
        io.submit_read(fd, rb, (i % 64) * 4096)
            .map_err(|e| e.error)
            .unwrap();
        if i.is_multiple_of(16) {
            io.submit_datasync(fd).unwrap();
        }
        io.poll_completions(done);
        for c in done.drain(..) {
            assert!(c.is_ok(), "{:?}", c.result);
            match (c.op, c.buf) {
                (storage_io_core::OpKind::Read, Some(b)) => read_buf = Some(b),
                (storage_io_core::OpKind::Write, Some(b)) => write_buf = Some(b),
                _ => {}
            }
        }
    };

    // Warm-up: first use of every op kind, stats, the completion queue.
    for i in 0..32 {
        round(&mut io, &mut done, i);
    }
    let ((), allocs) = counted(|| {
        for i in 32..2032 {
            round(&mut io, &mut done, i);
        }
    });
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations in 2000 rounds of submit+poll"
    );
    assert_eq!(io.pending_count(), 0);
}
