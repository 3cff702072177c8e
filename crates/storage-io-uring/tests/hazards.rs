//! The io_uring traps that sank other systems, each as a test.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use storage_io_core::{
    AlignedBuf, InvalidArgument, IoCompletion, IoConfig, IoFd, OpenOptions, StorageIo, StorageIoError,
    open_file,
};
use storage_io_uring::{UringStorageIo, usable_or_skip};

mod common;
use common::{dir, drain};

fn page(i: u64) -> Vec<u8> {
    (0..4096u64).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn uring_datasync_in_one_batch_with_many_writes_completes_after_all_of_them() {
    if !usable_or_skip("uring_datasync_in_one_batch_with_many_writes_completes_after_all_of_them") {
        return;
    }
    let d = dir();
    for direct in [false, true] {
        let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
        let fd = io
            .open_file(
                &d.path().join(format!("batch-{direct}")),
                &OpenOptions::create().with_direct(direct),
            )
            .unwrap();
        // 100 writes and the datasync are pushed into the SQ without any flush in between, so
        // the kernel sees them in one io_uring_enter.
        let mut writes = HashSet::new();
        for i in 0..100u64 {
            let mut buf = AlignedBuf::page_aligned(4096).unwrap();
            buf.copy_from_slice(&page(i));
            writes.insert(
                io.submit_write_buf(fd, buf.into(), i * 4096)
                    .map_err(|e| e.error)
                    .unwrap(),
            );
        }
        let sync = io.submit_datasync(fd).unwrap();
        let done = drain(&mut io);
        let pos = done.iter().position(|c| c.token == sync).unwrap();
        assert!(done[pos].is_ok());
        let before: HashSet<_> = done[..pos].iter().map(|c| c.token).collect();
        assert!(
            writes.is_subset(&before),
            "direct={direct}: the datasync overtook a write"
        );
    }
}

#[test]
fn uring_drop_with_ops_in_flight_waits_for_the_kernel() {
    if !usable_or_skip("uring_drop_with_ops_in_flight_waits_for_the_kernel") {
        return;
    }
    let d = dir();
    let path = d.path().join("drop");
    for round in 0..20u64 {
        let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
        let fd = io
            .open_file(&path, &OpenOptions::create().with_direct(true))
            .unwrap();
        for i in 0..64u64 {
            let mut buf = AlignedBuf::page_aligned(4096).unwrap();
            buf.copy_from_slice(&page(i + round));
            io.submit_write_buf(fd, buf.into(), i * 4096)
                .map_err(|e| e.error)
                .unwrap();
            io.submit_read(
                fd,
                AlignedBuf::page_aligned(4096).unwrap().into(),
                64 * 4096 + i * 4096,
            )
            .map_err(|e| e.error)
            .unwrap();
        }
        io.flush().unwrap();
        // Dropping now must wait for the kernel before freeing the 128 buffers it is using.
        drop(io);
        let f = std::fs::File::open(&path).unwrap();
        let mut got = vec![0u8; 4096];
        for i in [0u64, 63] {
            f.read_exact_at(&mut got, i * 4096).unwrap();
            assert_eq!(
                got,
                page(i + round),
                "write {i} of round {round} landed before drop returned"
            );
        }
    }
}

#[test]
fn uring_deregister_with_ops_in_flight_waits_and_the_slot_is_not_aliased() {
    if !usable_or_skip("uring_deregister_with_ops_in_flight_waits_and_the_slot_is_not_aliased") {
        return;
    }
    let d = dir();
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let a = io.open_file(&d.path().join("a"), &OpenOptions::create()).unwrap();
    for i in 0..50u64 {
        io.submit_write(a, &page(i), i * 4096).unwrap();
    }
    io.submit_datasync(a).unwrap();
    io.deregister_fd(a).unwrap();
    // The next file takes the same fixed-file slot; the old handle must not reach it.
    let b = io.open_file(&d.path().join("b"), &OpenOptions::create()).unwrap();
    assert_eq!(a.slot, b.slot);
    assert_eq!(
        io.submit_write(a, b"stale", 0),
        Err(StorageIoError::BadFd { fd: a })
    );
    let done = drain(&mut io);
    assert_eq!(done.len(), 51, "every op in flight at deregister completed");
    assert!(done.iter().all(IoCompletion::is_ok));
    assert_eq!(io.file_len(b).unwrap(), 0, "nothing meant for a reached b");
    let a_len = std::fs::metadata(d.path().join("a")).unwrap().len();
    assert_eq!(a_len, 50 * 4096);
}

#[test]
fn uring_tiny_cq_under_a_burst_loses_nothing() {
    if !usable_or_skip("uring_tiny_cq_under_a_burst_loses_nothing") {
        return;
    }
    let d = dir();
    // The last case keeps 64 ops in flight through a 2-entry SQ (sq_depth < queue_depth): a
    // full SQ is submitted and retried, never dropped.
    for (qd, sq_depth) in [(1usize, 0usize), (2, 0), (3, 0), (64, 2)] {
        let mut io = UringStorageIo::new(&IoConfig {
            queue_depth: qd,
            sq_depth,
            ..IoConfig::default()
        })
        .unwrap();
        let fd = io
            .open_file(&d.path().join(format!("burst-{qd}")), &OpenOptions::create())
            .unwrap();
        let mut tokens = HashSet::new();
        let mut done = Vec::new();
        let mut i = 0u64;
        while i < 2000 {
            match io.submit_write(fd, &[i as u8; 64], i * 64) {
                Ok(t) => {
                    tokens.insert(t);
                    i += 1;
                }
                Err(StorageIoError::QueueFull { limit }) => {
                    assert_eq!(limit, qd);
                    io.poll_completions(&mut done);
                    if io.pending_count() >= qd {
                        io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))
                            .unwrap();
                    }
                }
                Err(e) => panic!("qd {qd}: {e}"),
            }
        }
        done.extend(drain(&mut io));
        let got: HashSet<_> = done.iter().map(|c| c.token).collect();
        assert_eq!(got, tokens, "qd {qd}: every op completed exactly once");
        assert_eq!(io.file_len(fd).unwrap(), 2000 * 64);
    }
}

#[test]
fn uring_misaligned_and_absurd_requests_are_errors_not_panics() {
    if !usable_or_skip("uring_misaligned_and_absurd_requests_are_errors_not_panics") {
        return;
    }
    let d = dir();
    let path = d.path().join("direct");
    let opened = open_file(&path, &OpenOptions::create().with_direct(true)).unwrap();
    assert!(
        opened.mode.is_direct(),
        "{} is on ext4; O_DIRECT must be granted",
        path.display()
    );
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io.register_fd(opened.file).unwrap();
    let offsets = [
        0u64,
        1,
        511,
        4095,
        4096,
        u64::MAX - 4096,
        u64::MAX,
        i64::MAX as u64,
    ];
    let lens = [0usize, 1, 512, 4095, 4096, 4097, 8192];
    for &off in &offsets {
        for &len in &lens {
            let buf = AlignedBuf::page_aligned(len).unwrap();
            match io.submit_read(fd, buf.into(), off) {
                Ok(_) => assert!(
                    off % 4096 == 0 && len % 4096 == 0,
                    "accepted misaligned read {off}/{len}"
                ),
                Err(e) => {
                    assert!(
                        matches!(e.error, StorageIoError::InvalidArgument(_)),
                        "{off}/{len}: {:?}",
                        e.error
                    );
                    assert_eq!(e.buf.len(), len);
                }
            }
            let r = io.submit_write(fd, &vec![0u8; len], off);
            if let Err(e) = r {
                assert!(
                    matches!(e, StorageIoError::InvalidArgument(_)),
                    "{off}/{len}: {e:?}"
                );
            }
        }
    }
    // Aligned offsets past the end of the device-sized range come back as I/O errors, not panics.
    for c in drain(&mut io) {
        if let Err(e) = &c.result {
            assert!(matches!(e, StorageIoError::Io { .. }), "{e:?}");
        }
    }
    let huge = io.submit_write(fd, &vec![0u8; (64 << 20) + 4096], 0).unwrap_err();
    assert!(matches!(
        huge,
        StorageIoError::InvalidArgument(InvalidArgument::TooLarge { .. })
    ));
    let forged = IoFd {
        slot: u32::MAX,
        generation: u32::MAX,
    };
    assert!(matches!(
        io.submit_datasync(forged),
        Err(StorageIoError::BadFd { .. })
    ));
    assert_eq!(io.pending_count(), 0);
}

#[test]
fn uring_reads_across_eof_are_finished_short_successes_with_direct_io() {
    if !usable_or_skip("uring_reads_across_eof_are_finished_short_successes_with_direct_io") {
        return;
    }
    let d = dir();
    let path = d.path().join("eof");
    std::fs::write(&path, vec![5u8; 3 * 4096]).unwrap();
    let opened = open_file(&path, &OpenOptions::default().with_direct(true)).unwrap();
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io.register_fd(opened.file).unwrap();
    let t = io
        .submit_read(fd, AlignedBuf::page_aligned(8 * 4096).unwrap().into(), 2 * 4096)
        .map_err(|e| e.error)
        .unwrap();
    let c = drain(&mut io).into_iter().find(|c| c.token == t).unwrap();
    assert_eq!(c.result, Ok(4096));
    assert!(c.is_eof());
    assert_eq!(c.buf.unwrap().as_slice(), &[5u8; 4096][..]);
}

#[test]
fn uring_capabilities_report_registered_buffers_and_files() {
    if !usable_or_skip("uring_capabilities_report_registered_buffers_and_files") {
        return;
    }
    let io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let caps = io.capabilities();
    assert_eq!(caps.name, "io_uring");
    assert!(caps.registered_files, "{:?}", caps.notes);
    assert!(caps.registered_buffers, "{:?}", caps.notes);
    assert!(caps.notes.iter().any(|n| n.starts_with("kernel ")));
    let off = UringStorageIo::new(&IoConfig {
        fixed_buffers: false,
        ..IoConfig::default()
    })
    .unwrap();
    assert!(!off.capabilities().registered_buffers);
}

#[test]
fn uring_stats_time_the_calls_that_only_submit_and_not_the_waits() {
    if !usable_or_skip("uring_stats_time_the_calls_that_only_submit_and_not_the_waits") {
        return;
    }
    let d = dir();
    let path = d.path().join("f");
    std::fs::write(&path, vec![7u8; 8 * 4096]).unwrap();
    // A backend with `submit_batch` that has been handed four reads of the file.
    let four_reads = |submit_batch: usize| {
        let mut io = UringStorageIo::new(&IoConfig {
            submit_batch,
            // The file was just written: its reads must go through the ring, not the cache.
            nowait_reads: false,
            ..IoConfig::default()
        })
        .unwrap();
        let file = open_file(&path, &OpenOptions::default()).unwrap().file;
        let fd = io.register_fd(file).unwrap();
        for i in 0..4u64 {
            let buf = AlignedBuf::zeroed(4096, 4096).unwrap();
            io.submit_read(fd, buf.into(), i * 4096).unwrap();
        }
        io
    };
    // Batches of two: the first read waits for a second (the kernel has nothing of ours yet),
    // the second hands both over, the fourth hands over the third and itself.
    let mut io = four_reads(2);
    assert_eq!(io.stats().submit_calls(), 2);
    assert!(io.stats().mean_submit_call().unwrap() > Duration::ZERO);
    let done = drain(&mut io);
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|c| matches!(c.result, Ok(4096))), "{done:?}");
    io.flush().unwrap();
    assert_eq!(
        io.stats().submit_calls(),
        2,
        "waits and a flush with nothing queued are not submit calls"
    );

    // Batch 0: submits queue only; the flush hands all four over in one call.
    let mut io = four_reads(0);
    assert_eq!(io.stats().submit_calls(), 0);
    io.flush().unwrap();
    assert_eq!(io.stats().submit_calls(), 1);
    assert_eq!(drain(&mut io).len(), 4);
    assert_eq!(io.stats().snapshot().submit_calls, 1);
}

/// A read on a pipe stays in the kernel until someone writes the pipe: an op that only ends
/// when the test says so.
fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    use std::os::fd::FromRawFd;
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn uring_wait_waker_ends_a_blocked_wait_and_no_wake_is_lost() {
    if !usable_or_skip("uring_wait_waker_ends_a_blocked_wait_and_no_wake_is_lost") {
        return;
    }
    use std::io::Write;
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let waker = io.wait_waker().expect("io_uring offers a waker");
    let (rx, mut tx) = pipe();
    let fd = io.register_fd(rx).unwrap();
    io.submit_read(fd, vec![0u8; 8].into(), 0).unwrap();
    let mut out = Vec::new();

    // 1. A wake from another thread ends a wait that has no timeout and no completion coming.
    for _ in 0..3 {
        let w = waker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        let n = io.wait_completions(&mut out, 1, None).unwrap();
        assert_eq!(n, 0, "woken, not completed");
        assert_eq!(io.pending_count(), 1);
        t.join().unwrap();
    }

    // 2. A wake before the wait is kept: the next wait returns at once.
    waker.wake();
    assert_eq!(io.wait_completions(&mut out, 1, None).unwrap(), 0);

    // 3. Many wakes racing with many waits: every wait the producer asked for ends (a lost
    //    wake would hang here, since the pipe read never completes on its own).
    let rounds = 2000;
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let (ack, acked) = std::sync::mpsc::channel::<()>();
    let producer = std::thread::spawn({
        let waker = waker.clone();
        move || {
            for _ in 0..rounds {
                asked.recv().unwrap();
                waker.wake();
                acked.recv().unwrap();
            }
        }
    });
    for _ in 0..rounds {
        ask.send(()).unwrap();
        io.wait_completions(&mut out, 1, None).unwrap();
        ack.send(()).unwrap();
    }
    producer.join().unwrap();

    // 4. The read still completes normally, and drop with the wake read armed is clean.
    tx.write_all(b"12345678").unwrap();
    let done = drain(&mut io);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result.as_ref().copied().unwrap(), 8);
    assert_eq!(done[0].buf.as_ref().unwrap().as_slice(), b"12345678");
    io.deregister_fd(fd).unwrap();
    drop(io);
    waker.wake(); // the backend is gone: harmless
}

/// A backend, its waker, and two 4-byte reads in flight on a pipe: they end only when
/// [`end_stuck_reads`] writes the pipe end returned here.
fn two_stuck_reads() -> (UringStorageIo, storage_io_core::WaitWaker, IoFd, std::fs::File) {
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let waker = io.wait_waker().expect("io_uring offers a waker");
    let (rx, tx) = pipe();
    let fd = io.register_fd(rx).unwrap();
    io.submit_read(fd, vec![0u8; 4].into(), 0).unwrap();
    io.submit_read(fd, vec![0u8; 4].into(), 0).unwrap();
    (io, waker, fd, tx)
}

/// Feeds both reads of [`two_stuck_reads`], collects them, and closes the pipe's read end.
fn end_stuck_reads(io: &mut UringStorageIo, fd: IoFd, tx: &std::fs::File) -> Vec<IoCompletion> {
    use std::io::Write;
    let mut tx = tx;
    tx.write_all(b"12345678").unwrap();
    let done = drain(io);
    io.deregister_fd(fd).unwrap();
    done
}

/// A wait for more completions than will come must still end on a wake: the wake's CQE is one,
/// so the kernel may only be asked for one while the wake read is in the ring.
#[test]
fn uring_wait_waker_ends_a_wait_for_more_than_one_completion() {
    if !usable_or_skip("uring_wait_waker_ends_a_wait_for_more_than_one_completion") {
        return;
    }
    use std::io::Write;
    let (io, waker, fd, tx) = two_stuck_reads();
    // The wait runs on its own thread so that a wait that ignores the wake fails the test
    // instead of hanging it.
    let (back, io_back) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut io = io;
        let mut out = Vec::new();
        let n = io.wait_completions(&mut out, 2, None).unwrap();
        back.send((io, n)).unwrap();
    });
    let mut answer = None;
    for _ in 0..100 {
        waker.wake();
        if let Ok(got) = io_back.recv_timeout(Duration::from_millis(100)) {
            answer = Some(got);
            break;
        }
    }
    let Some((mut io, n)) = answer else {
        // Let the waiter finish so the process can end, then fail.
        (&tx).write_all(b"12345678").unwrap();
        waiter.join().unwrap();
        panic!("a wake did not end wait_completions(min = 2) within 10 s");
    };
    waiter.join().unwrap();
    assert_eq!(n, 0, "woken, not completed");
    assert_eq!(io.pending_count(), 2);
    let done = end_stuck_reads(&mut io, fd, &tx);
    assert_eq!(done.len(), 2);
}

/// Deadlines are kept as timer ops in the ring, one serving many waits. A later wait with an
/// earlier deadline must still end at its own deadline, not the older timer's; waits for one
/// and for several completions both end on time; and ops keep completing normally afterwards.
#[test]
fn uring_wait_deadlines_end_each_wait_whatever_timer_an_earlier_wait_left() {
    if !usable_or_skip("uring_wait_deadlines_end_each_wait_whatever_timer_an_earlier_wait_left") {
        return;
    }
    use std::time::Instant;
    let (mut io, waker, fd, tx) = two_stuck_reads();
    let mut out = Vec::new();

    // Many waits with a far deadline, each ended by a wake: they leave a timer 60 s out.
    for _ in 0..200 {
        waker.wake();
        assert_eq!(
            io.wait_completions(&mut out, 1, Some(Duration::from_secs(60)))
                .unwrap(),
            0
        );
    }
    // Nearer deadlines, for one and for two completions: each ends at its own deadline.
    for (min, ms) in [(1, 30), (2, 30), (1, 80), (1, 10), (2, 10)] {
        let asked = Duration::from_millis(ms);
        let t = Instant::now();
        assert_eq!(io.wait_completions(&mut out, min, Some(asked)).unwrap(), 0);
        let took = t.elapsed();
        assert!(
            took >= asked,
            "min {min}: returned after {took:?}, before its {asked:?} deadline"
        );
        assert!(
            took < Duration::from_secs(20),
            "min {min}: a {asked:?} deadline took {took:?} (waited for the older 60 s timer?)"
        );
    }
    assert_eq!(io.pending_count(), 2);
    let done = end_stuck_reads(&mut io, fd, &tx);
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|c| c.result.as_ref().is_ok_and(|&n| n == 4)));
    drop(io); // with the 60 s timer still in the ring
}
