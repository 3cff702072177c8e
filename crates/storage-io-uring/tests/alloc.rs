//! Ring-0 rule on io_uring: after warm-up, submit + poll allocate nothing — copied writes staged
//! in registered buffers, reads through registered buffers, owned-buffer writes, appends and
//! datasyncs, with and without registered buffers, and with the caller's buffers lent by the
//! backend (I/O in place on registered memory).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::time::Duration;

use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, IoConfig, OpKind, OpenOptions, StorageIo};
use storage_io_testkit::alloc::{CountingAllocator, count_allocations, counting_is_installed};
use storage_io_uring::{UringStorageIo, usable_or_skip};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn steady_state_allocations(config: &IoConfig, direct: bool, lent: bool) -> u64 {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut io = UringStorageIo::new(config).unwrap();
    let fd = io
        .open_file(&dir.path().join("f"), &OpenOptions::create().with_direct(direct))
        .unwrap();
    let mut done: Vec<IoCompletion> = Vec::with_capacity(256);
    let mut bufs: Vec<IoBuf> = (0..8)
        .map(|_| {
            let buf = if lent {
                io.alloc_buf(4096).unwrap()
            } else {
                AlignedBuf::page_aligned(4096).unwrap()
            };
            buf.into()
        })
        .collect();
    let payload = AlignedBuf::from_slice(&[9u8; 4096], 4096).unwrap();

    let round = |io: &mut UringStorageIo, done: &mut Vec<IoCompletion>, bufs: &mut Vec<IoBuf>, i: u64| {
        io.submit_write(fd, &payload, (i % 64) * 4096).unwrap();
        io.submit_append(fd, &payload).unwrap();
        let mut rb = bufs.pop().unwrap();
        if let IoBuf::Aligned(b) = &mut rb {
            b.set_len(4096).unwrap();
        }
        io.submit_read(fd, rb, (i % 32) * 4096)
            .map_err(|e| e.error)
            .unwrap();
        let wb = bufs.pop().unwrap();
        io.submit_write_buf(fd, wb, 4096 * 100)
            .map_err(|e| e.error)
            .unwrap();
        if i.is_multiple_of(8) {
            io.submit_datasync(fd).unwrap();
        }
        io.poll_completions(done);
        while io.pending_count() > 0 {
            io.wait_completions(done, io.pending_count(), Some(Duration::from_secs(10)))
                .unwrap();
        }
        for c in done.drain(..) {
            assert!(c.is_ok(), "{:?} {:?}", c.op, c.result);
            if let Some(b) = c.buf {
                bufs.push(b);
            }
            debug_assert!(c.op != OpKind::Fsync);
        }
    };
    for i in 0..64 {
        round(&mut io, &mut done, &mut bufs, i);
    }
    let ((), allocs) = count_allocations(|| {
        for i in 64..1064 {
            round(&mut io, &mut done, &mut bufs, i);
        }
    });
    if lent {
        assert!(
            io.in_place_ops() >= 2 * 1064,
            "the lent buffers were not used in place"
        );
    }
    allocs
}

#[test]
fn uring_submit_and_poll_do_not_alloc_in_steady_state() {
    if !usable_or_skip("uring_submit_and_poll_do_not_alloc_in_steady_state") {
        return;
    }
    assert!(counting_is_installed(), "the counting allocator is not counting");
    for (what, config, direct, lent) in [
        // The file was just written, so its reads are answered from the page cache at submit.
        (
            "page-cache hits at submit, buffered",
            IoConfig::default(),
            false,
            false,
        ),
        (
            "registered buffers, buffered, through the ring",
            IoConfig {
                nowait_reads: false,
                ..IoConfig::default()
            },
            false,
            false,
        ),
        ("registered buffers, direct", IoConfig::default(), true, false),
        ("lent registered buffers, direct", IoConfig::default(), true, true),
        (
            "no registered buffers, direct",
            IoConfig {
                fixed_buffers: false,
                ..IoConfig::default()
            },
            true,
            false,
        ),
    ] {
        let allocs = steady_state_allocations(&config, direct, lent);
        assert_eq!(
            allocs, 0,
            "{what}: {allocs} allocations in 1000 rounds of submit+poll"
        );
    }
}
