//! Ring-0 rule: after warm-up, submit + poll on `SyncStorageIo` allocate nothing.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, IoConfig, OpKind, OpenOptions, StorageIo};
use storage_io_sync::SyncStorageIo;
use storage_io_testkit::alloc::{CountingAllocator, count_allocations, counting_is_installed};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn sync_backend_submit_and_poll_do_not_alloc_in_steady_state() {
    assert!(counting_is_installed(), "the counting allocator is not counting");
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
                (OpKind::Read, Some(b)) => read_buf = Some(b),
                (OpKind::Write, Some(b)) => write_buf = Some(b),
                _ => {}
            }
        }
    };

    // Warm-up: first use of every op kind, stats, the completion queue.
    for i in 0..32 {
        round(&mut io, &mut done, i);
    }
    let ((), allocs) = count_allocations(|| {
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
