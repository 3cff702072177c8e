#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
//! Unit tests of the ring: full SQs, enter failures, reaping re-entry.

use std::io::Write;

use super::setup::sqpoll_refusal;
use super::*;
use crate::usable_or_skip;
use storage_io_core::{IoCompletion, StorageIo};

const FILE_BYTES: usize = 4096;

/// A backend with an SQ of one entry, and a file of `FILE_BYTES` bytes of a known pattern.
fn tiny_sq(queue_depth: usize) -> (UringStorageIo, IoFd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&pattern()).unwrap();
    let config = IoConfig {
        queue_depth,
        sq_depth: 1,
        // These tests are about the ring: reads of the (cached) file must go through it.
        nowait_reads: false,
        ..IoConfig::default()
    };
    let mut io = UringStorageIo::new(&config).unwrap();
    let fd = io
        .open_file(&path, &storage_io_core::OpenOptions::read_only())
        .unwrap();
    (io, fd, dir)
}

fn pattern() -> Vec<u8> {
    (0..FILE_BYTES).map(|i| (i % 251) as u8).collect()
}

/// Reads of twice the file: each comes back short at the end of the file and is continued
/// from inside the reaping loop (the continuation reads 0 bytes: EOF).
fn submit_eof_reads(io: &mut UringStorageIo, fd: IoFd, n: usize) {
    for _ in 0..n {
        io.submit_read(fd, vec![0u8; 2 * FILE_BYTES].into(), 0).unwrap();
    }
}

fn check_reads(done: &[IoCompletion], n: usize) {
    assert_eq!(done.len(), n, "every read completes once");
    for c in done {
        assert_eq!(*c.result.as_ref().unwrap(), FILE_BYTES, "a short read at EOF");
        assert_eq!(&c.buf.as_ref().unwrap()[..], &pattern()[..]);
    }
}

#[test]
fn sqpoll_without_registered_files_is_refused_where_the_kernel_needs_them() {
    let refusal = sqpoll_refusal(true, false, false).expect("refused");
    assert!(refusal.contains("sqpoll_idle_ms"), "says what to do: {refusal}");
    assert_eq!(sqpoll_refusal(true, true, false), None, "registered files: fine");
    assert_eq!(sqpoll_refusal(true, false, true), None, "5.11+: plain fds work");
    assert_eq!(sqpoll_refusal(false, false, false), None, "no SQPOLL asked");
}

/// With the SQ full and `io_uring_enter` failing for good, a submit must return the error
/// (and the buffer), not spin; the op that was already in the SQ still completes later.
#[test]
fn uring_push_entry_returns_a_persistent_enter_error_instead_of_spinning() {
    if !usable_or_skip("uring_push_entry_returns_a_persistent_enter_error_instead_of_spinning") {
        return;
    }
    let (mut io, fd, _dir) = tiny_sq(8);
    io.submit_read(fd, vec![0u8; FILE_BYTES].into(), 0).unwrap(); // fills the SQ
    io.set_enter_fault(Some(EnterFault {
        errno: libc::EINVAL,
        every: 1,
        left: u32::MAX,
        calls: 0,
    }));
    let refused = io
        .submit_read(fd, vec![7u8; FILE_BYTES].into(), 0)
        .expect_err("the SQ is full and the kernel refuses it");
    assert_eq!(refused.error.errno(), libc::EINVAL);
    assert_eq!(refused.buf.len(), FILE_BYTES, "the buffer comes back");
    assert_eq!(io.pending_count(), 1, "the refused read was not accepted");
    // deregister_fd cannot wait for the read in the SQ: it must keep the fd and say so.
    assert!(io.deregister_fd(fd).is_err());
    assert_eq!(
        io.file_len(fd).unwrap(),
        FILE_BYTES as u64,
        "the fd is still registered"
    );
    io.set_enter_fault(None);
    let mut done = Vec::new();
    while io.pending_count() > 0 {
        io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))
            .unwrap();
    }
    check_reads(&done, 1);
    io.deregister_fd(fd).unwrap();
}

/// Continuations pushed while reaping meet a full SQ, and the enter that would make room
/// fails with EBUSY (which reaps to make CQ room): that must not re-enter the reaping loop
/// (an index panic, CQEs taken from the ring and lost).
#[test]
fn uring_reaping_is_not_reentrant_when_a_continuation_meets_a_full_sq_and_ebusy() {
    if !usable_or_skip("uring_reaping_is_not_reentrant_when_a_continuation_meets_a_full_sq_and_ebusy") {
        return;
    }
    for every in [1, 2, 3] {
        let n = 48;
        let (mut io, fd, _dir) = tiny_sq(64);
        submit_eof_reads(&mut io, fd, n);
        io.set_enter_fault(Some(EnterFault {
            errno: libc::EBUSY,
            every,
            left: 40,
            calls: 0,
        }));
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while io.pending_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "every {every}: {} of {n} reads completed; the rest were lost",
                done.len()
            );
            io.wait_completions(&mut done, n, Some(Duration::from_millis(100)))
                .unwrap();
        }
        check_reads(&done, n);
    }
}

/// An append (copied, or a positional write past the end through `submit_write_bytes`) that the
/// ring refuses at submit must not move the append cursor: the next append lands at the end of
/// the file, with no hole where the refused one would have gone.
#[test]
fn uring_refused_append_or_write_does_not_move_the_append_cursor() {
    if !usable_or_skip("uring_refused_append_or_write_does_not_move_the_append_cursor") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, pattern()).unwrap();
    let config = IoConfig {
        queue_depth: 8,
        sq_depth: 1,
        nowait_reads: false,
        ..IoConfig::default()
    };
    let mut io = UringStorageIo::new(&config).unwrap();
    let fd = io
        .open_file(&path, &storage_io_core::OpenOptions::default())
        .unwrap();
    io.submit_read(fd, vec![0u8; FILE_BYTES].into(), 0).unwrap(); // fills the SQ
    io.set_enter_fault(Some(EnterFault {
        errno: libc::EINVAL,
        every: 1,
        left: u32::MAX,
        calls: 0,
    }));
    io.submit_append(fd, &[1u8; 100])
        .expect_err("the SQ is full and the kernel refuses it");
    // 64-byte aligned bytes: written in place (shared_write), past the cursor.
    let shared = bytes::Bytes::from(vec![2u8; 4096]);
    let far = FILE_BYTES as u64 + 8192;
    io.submit_write_bytes(fd, shared, far)
        .expect_err("the SQ is full and the kernel refuses it");
    io.set_enter_fault(None);
    let mut done = Vec::new();
    while io.pending_count() > 0 {
        io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))
            .unwrap();
    }
    done.clear();
    io.submit_append(fd, &[3u8; 10]).unwrap();
    io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))
        .unwrap();
    let c = done.pop().unwrap();
    c.result.as_ref().unwrap();
    assert_eq!(
        c.offset, FILE_BYTES as u64,
        "the append lands at the end of the file, not after the refused ops"
    );
    io.deregister_fd(fd).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_BYTES as u64 + 10);
}
