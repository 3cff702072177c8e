//! Async commits: `commit_async` / `durable` futures on a multi-threaded tokio runtime and on a
//! plain `block_on`; failures, a full disk and close reach every pending future; a dropped
//! future loses nothing; a poll never waits for I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::*;
use storage_io_core::{BackendFactory, OpKind, StorageIo};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultSwitch};
use storage_io_testkit::gated::{Gate, GatedIo};
use storage_io_testkit::memio::{CrashOptions, MemFs};
use storage_io_wal::{Lsn, WalConfig, WalError};

/// A minimal executor: polls on this thread, parks until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 1 << 20,
        ..WalConfig::default()
    }
}

#[test]
fn thousands_of_tasks_commit_on_a_multi_threaded_runtime_and_every_record_survives() {
    let fs = MemFs::new(1);
    let factory = mem_factory(&fs);
    let wal = Arc::new(open(Path::new(DIR), &config(), &factory));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    const TASKS: u32 = 1024;
    const EACH: u32 = 20;
    let lsns: Vec<Vec<Lsn>> = rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..EACH {
                        let record = format!("task {t} record {i}");
                        let lsn = wal.commit_async(record.as_bytes()).await.unwrap();
                        // Durable when the future completes: never behind the durable end.
                        assert!(wal.durable_lsn() > lsn);
                        mine.push(lsn);
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    for mine in &lsns {
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "a task's commits are in LSN order"
        );
    }
    let stats = wal.stats();
    assert_eq!(stats.appends, u64::from(TASKS * EACH));
    assert!(
        stats.flushes < stats.appends / 4,
        "group commit for async committers: {} flushes for {} commits",
        stats.flushes,
        stats.appends
    );
    drop(wal); // closes
    // Nothing acknowledged is lost in a crash.
    fs.crash(CrashOptions::default());
    let wal = open(Path::new(DIR), &config(), &factory);
    let records = read_all(&wal);
    assert_eq!(records.len(), (TASKS * EACH) as usize);
}

#[test]
fn a_dropped_future_loses_nothing() {
    let fs = MemFs::new(2);
    let factory = mem_factory(&fs);
    let wal = open(Path::new(DIR), &config(), &factory);
    for i in 0..50u32 {
        drop(wal.commit_async(&i.to_le_bytes()));
    }
    // Never polled, never awaited: the WAL I/O thread makes them durable all the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal.durable_lsn() < wal.next_lsn() {
        assert!(Instant::now() < deadline, "dropped commits were never flushed");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::mem::forget(wal); // the process dies: no close
    fs.crash(CrashOptions::default());
    let wal = open(Path::new(DIR), &config(), &factory);
    assert_eq!(read_all(&wal).len(), 50);
}

#[test]
fn durable_waits_for_appended_records_and_checks_its_lsn() {
    let fs = MemFs::new(3);
    let wal = open(Path::new(DIR), &config(), &mem_factory(&fs));
    let lsns: Vec<Lsn> = (0..10u32)
        .map(|i| wal.append(&i.to_le_bytes()).unwrap())
        .collect();
    let last = *lsns.last().unwrap();
    assert_eq!(block_on(wal.durable(last)).unwrap(), last);
    assert!(wal.durable_lsn() > last);
    // Already durable: ready at once.
    assert_eq!(block_on(wal.durable(lsns[0])).unwrap(), lsns[0]);
    let beyond = wal.next_lsn();
    assert!(matches!(
        block_on(wal.durable(beyond)),
        Err(WalError::LsnOutOfRange { .. })
    ));
    let huge = vec![0u8; (wal.max_record_bytes() + 1) as usize];
    assert!(matches!(
        block_on(wal.commit_async(&huge)),
        Err(WalError::RecordTooLarge { .. })
    ));
}

/// The writer's backend holds its datasyncs at `gate`.
fn gated_factory(fs: &MemFs, gate: &Gate) -> BackendFactory {
    let fs = fs.clone();
    let gate = gate.clone();
    Arc::new(move |i| {
        if i == 0 {
            Ok(Box::new(GatedIo::new(fs.backend(), gate.clone(), &[OpKind::Datasync])) as Box<dyn StorageIo>)
        } else {
            Ok(Box::new(fs.backend()) as Box<dyn StorageIo>)
        }
    })
}

#[test]
fn a_poll_never_waits_for_the_disk() {
    let fs = MemFs::new(4);
    let gate = Gate::new();
    gate.open();
    let wal = open(Path::new(DIR), &config(), &gated_factory(&fs, &gate));
    wal.commit(b"warm").unwrap();
    gate.close();
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let held = gate.submitted();
    let mut first = pin!(wal.commit_async(b"held at the gate"));
    let started = Instant::now();
    assert!(first.as_mut().poll(&mut cx).is_pending());
    // The flush runs on the WAL I/O thread and waits at the gate; polls and new commits on
    // this thread go on meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.submitted() == held {
        assert!(Instant::now() < deadline, "the flush never reached the backend");
        std::thread::yield_now();
    }
    let mut second = pin!(wal.commit_async(b"behind it"));
    for _ in 0..1000 {
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "polls waited for the held flush"
    );
    gate.open();
    let a = block_on(first).unwrap();
    let b = block_on(second).unwrap();
    assert!(a < b);
}

#[test]
fn a_failed_flush_answers_every_pending_future_and_later_commits() {
    let fs = MemFs::new(5);
    // The second datasync fails with EIO: the first flush after the warm-up.
    let plan = FaultPlan::new(5).fail_nth(OpKind::Datasync, 2, Fault::Eio);
    let wal = open(Path::new(DIR), &config(), &faulty_factory(&fs, plan));
    wal.commit(b"warm").unwrap();
    let pending: Vec<_> = (0..32u32).map(|i| wal.commit_async(&i.to_le_bytes())).collect();
    for f in pending {
        assert!(matches!(block_on(f), Err(WalError::Poisoned { .. })));
    }
    assert!(matches!(
        block_on(wal.commit_async(b"after")),
        Err(WalError::Poisoned { .. })
    ));
}

#[test]
fn a_full_disk_answers_pending_futures_and_the_records_go_in_once_space_is_back() {
    let fs = MemFs::new(6);
    let full = FaultSwitch::new();
    let plan = FaultPlan::new(6)
        .with_probability(Some(OpKind::Write), 1.0, Fault::Enospc)
        .only_while(&full);
    let factory = faulty_factory(&fs, plan);
    let wal = open(Path::new(DIR), &config(), &factory);
    wal.commit(b"before").unwrap();
    full.set(true);
    let pending: Vec<_> = (0..8u32).map(|i| wal.commit_async(&i.to_le_bytes())).collect();
    for f in pending {
        assert!(matches!(block_on(f), Err(WalError::DiskFull { .. })));
    }
    full.set(false);
    // Space is back: the next commit flushes the queued records first, in order.
    let lsn = block_on(wal.commit_async(b"after")).unwrap();
    assert!(wal.durable_lsn() > lsn);
    drop(wal);
    fs.crash(CrashOptions::default());
    let wal = open(Path::new(DIR), &config(), &factory);
    let records: Vec<Vec<u8>> = read_all(&wal).into_iter().map(|(_, r)| r).collect();
    assert_eq!(records.len(), 10);
    assert_eq!(records[0], b"before");
    assert_eq!(records[9], b"after");
}

#[test]
fn close_makes_pending_futures_durable_and_later_ones_fail() {
    let fs = MemFs::new(7);
    let gate = Gate::new();
    gate.open();
    let wal = Arc::new(open(Path::new(DIR), &config(), &gated_factory(&fs, &gate)));
    wal.commit(b"warm").unwrap();
    let pending: Vec<_> = (0..16u32).map(|i| wal.commit_async(&i.to_le_bytes())).collect();
    wal.close().unwrap();
    for f in pending {
        block_on(f).unwrap();
    }
    assert!(matches!(
        block_on(wal.commit_async(b"late")),
        Err(WalError::Closed)
    ));
}
