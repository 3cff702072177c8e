//! FaultyIo injects what its plan says, keeps tokens unique, and never breaks the barrier.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::path::Path;

use storage_io_core::{IoBuf, IoCompletion, OpKind, OpenOptions, StorageIo, StorageIoError};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultyIo, errno};
use storage_io_testkit::memio::{CrashOptions, MemFs};

fn drain(io: &mut dyn StorageIo) -> Vec<IoCompletion> {
    let mut out = Vec::new();
    while io.pending_count() > 0 {
        io.wait_completions(&mut out, usize::MAX, Some(std::time::Duration::from_millis(100)))
            .expect("wait_completions");
    }
    out
}

#[test]
fn nth_write_fails_with_enospc_and_does_not_reach_the_file() {
    let fs = MemFs::new(1);
    let mut io = FaultyIo::new(
        fs.backend(),
        FaultPlan::new(0).fail_nth(OpKind::Write, 2, Fault::Enospc),
    );
    let fd = io.open_file(Path::new("/f"), &OpenOptions::create()).unwrap();
    io.submit_write(fd, b"one", 0).unwrap();
    io.submit_write(fd, b"two", 3).unwrap();
    io.submit_write(fd, b"three", 6).unwrap();
    let done = drain(&mut io);
    let failed: Vec<_> = done.iter().filter(|c| c.result.is_err()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].result,
        Err(StorageIoError::os(OpKind::Write, errno::ENOSPC))
    );
    assert_eq!(failed[0].offset, 3);
    assert_eq!(fs.read_file(Path::new("/f")).unwrap(), b"one\0\0\0three");
    assert_eq!(io.injected(), 1);
}

#[test]
fn failed_fsync_reports_eio_and_never_success() {
    let fs = MemFs::new(2);
    let mut io = FaultyIo::new(
        fs.backend(),
        FaultPlan::new(0).fail_from_nth(OpKind::Datasync, 1, Fault::Eio),
    );
    let fd = io.open_file(Path::new("/wal"), &OpenOptions::create()).unwrap();
    io.submit_append(fd, b"rec").unwrap();
    io.submit_datasync(fd).unwrap();
    io.submit_datasync(fd).unwrap();
    let done = drain(&mut io);
    let syncs: Vec<_> = done.iter().filter(|c| c.op == OpKind::Datasync).collect();
    assert_eq!(syncs.len(), 2);
    for s in syncs {
        assert_eq!(
            s.result.as_ref().unwrap_err().errno(),
            errno::EIO,
            "a retried sync stays failed"
        );
    }
}

#[test]
fn read_faults_hand_the_buffer_back() {
    let fs = MemFs::new(3);
    let plan = FaultPlan::new(0)
        .fail_nth(OpKind::Read, 1, Fault::Eio)
        .fail_nth(OpKind::Read, 2, Fault::Short)
        .fail_nth(OpKind::Read, 3, Fault::Eagain);
    let mut io = FaultyIo::new(fs.backend(), plan);
    let fd = io.open_file(Path::new("/r"), &OpenOptions::create()).unwrap();
    io.submit_write(fd, &[7u8; 100], 0).unwrap();
    drain(&mut io);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(
            io.submit_read(fd, IoBuf::Vec(vec![0; 100]), 0)
                .map_err(|e| e.error)
                .unwrap(),
        );
    }
    let done = drain(&mut io);
    let by_token = |t| done.iter().find(|c| c.token == t).unwrap();
    let eio = by_token(tokens[0]);
    assert_eq!(eio.result.as_ref().unwrap_err().errno(), errno::EIO);
    assert_eq!(
        eio.buf.as_ref().unwrap().len(),
        100,
        "the buffer comes back whole on error"
    );
    let short = by_token(tokens[1]);
    assert_eq!(short.result, Ok(50));
    assert_eq!(short.buf.as_ref().unwrap().as_slice(), &[7u8; 50][..]);
    assert!(by_token(tokens[2]).result.as_ref().unwrap_err().is_retryable());
}

#[test]
fn short_write_transfers_only_a_prefix_and_says_so() {
    let fs = MemFs::new(4);
    let mut io = FaultyIo::new(
        fs.backend(),
        FaultPlan::new(0).fail_nth(OpKind::Append, 1, Fault::Short),
    );
    let fd = io.open_file(Path::new("/s"), &OpenOptions::create()).unwrap();
    io.submit_append(fd, b"0123456789").unwrap();
    let done = drain(&mut io);
    assert_eq!(done[0].result, Ok(5));
    assert_eq!(fs.read_file(Path::new("/s")).unwrap(), b"01234");
    fs.crash(CrashOptions::default());
}
