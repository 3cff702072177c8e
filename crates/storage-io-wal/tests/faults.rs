//! Fault injection with FaultyIo: a failed fdatasync or write poisons the WAL (never retried as
//! success, every waiter told, nothing accepted until reopened); a full disk loses nothing and
//! the WAL works again once space is back; short writes are finished.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::{Arc, Barrier};

use storage_io_core::OpKind;
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::memio::{CrashOptions, MemFs};
use storage_io_wal::{SyncMode, WalConfig, WalError, WalManager};

use common::{DIR, faulty_factory, mem_factory, read_all, small_config};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn reopen_records(fs: &MemFs, config: &WalConfig) -> Vec<Vec<u8>> {
    let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(fs)).unwrap();
    read_all(&wal).into_iter().map(|(_, p)| p).collect()
}

fn assert_poisoned(result: Result<impl std::fmt::Debug, WalError>, errno: i32) {
    match result {
        Err(WalError::Poisoned { cause }) => assert_eq!(cause.errno(), errno),
        other => panic!("expected a poisoned wal, got {other:?}"),
    }
}

#[test]
fn failed_fsync_poisons_the_wal_and_is_never_retried_as_success() {
    for fault in [Fault::Eio, Fault::Enospc] {
        let fs = MemFs::new(1);
        let config = small_config(4096);
        let plan = FaultPlan::new(1).fail_nth(OpKind::Datasync, 2, fault);
        let (wal, _) = WalManager::open(DIR, config.clone(), faulty_factory(&fs, plan)).unwrap();
        wal.commit(b"first").unwrap();
        let errno = if fault == Fault::Eio { EIO } else { ENOSPC };
        assert_poisoned(wal.commit(b"second"), errno);
        // Poisoned for good: no append, no wait, no flush succeeds, even though the next
        // fdatasync would work.
        assert_poisoned(wal.append(b"third"), errno);
        assert_poisoned(wal.flush(), errno);
        assert_poisoned(wal.commit(b"fourth"), errno);
        let msg = wal.append(b"x").unwrap_err().to_string();
        assert!(msg.contains("reopen"), "the message says what to do: {msg}");
        drop(wal);
        // Reopening recovers what is durable; nothing after the failure was accepted.
        fs.crash(CrashOptions::default());
        let got = reopen_records(&fs, &config);
        assert_eq!(got[0], b"first");
        assert!(
            got.len() <= 2,
            "only records appended before the failure may survive: {got:?}"
        );
        assert!(!got.iter().any(|p| p == b"third" || p == b"fourth"));
    }
}

#[test]
fn failed_fsync_reaches_every_waiter_of_the_batch() {
    let fs = MemFs::new(2);
    let config = WalConfig {
        segment_size_bytes: 1 << 16,
        // A long gathering delay so that all committers join one batch.
        sync_mode: SyncMode::Group {
            max_delay_us: 200_000,
            max_batch_bytes: 8 * 30,
        },
        ..WalConfig::default()
    };
    let plan = FaultPlan::new(2).fail_nth(OpKind::Datasync, 1, Fault::Eio);
    let wal = Arc::new(
        WalManager::open(DIR, config, faulty_factory(&fs, plan))
            .unwrap()
            .0,
    );
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u8)
        .map(|i| {
            let (wal, barrier) = (Arc::clone(&wal), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                wal.commit(&[i; 10])
            })
        })
        .collect();
    for h in handles {
        assert_poisoned(h.join().unwrap(), EIO);
    }
    assert_eq!(
        wal.stats().datasyncs,
        0,
        "a failed flush is not counted as a sync"
    );
}

#[test]
fn failed_write_poisons_the_wal() {
    let fs = MemFs::new(3);
    let config = WalConfig {
        preallocate: false,
        ..small_config(4096)
    };
    let plan = FaultPlan::new(3).fail_nth(OpKind::Write, 3, Fault::Eio);
    let (wal, _) = WalManager::open(DIR, config.clone(), faulty_factory(&fs, plan)).unwrap();
    wal.commit(b"one").unwrap();
    wal.commit(b"two").unwrap();
    assert_poisoned(wal.commit(b"three"), EIO);
    assert_poisoned(wal.append(b"four"), EIO);
    drop(wal);
    assert_eq!(
        reopen_records(&fs, &config),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
}

#[test]
fn disk_full_loses_nothing_and_the_wal_works_again_once_space_is_back() {
    for preallocate in [false, true] {
        let fs = MemFs::new(4);
        let config = WalConfig {
            preallocate,
            ..small_config(512)
        };
        // Three writes in a row hit a full disk, then space is back.
        let first_full = if preallocate { 6 } else { 4 };
        let plan = (first_full..first_full + 3).fold(FaultPlan::new(4), |p, n| {
            p.fail_nth(OpKind::Write, n, Fault::Enospc)
        });
        let (wal, _) = WalManager::open(DIR, config.clone(), faulty_factory(&fs, plan)).unwrap();
        let (mut acked, mut queued, mut refused) = (Vec::new(), Vec::new(), 0);
        let disk_full = |e: WalError| match e {
            WalError::DiskFull { cause } => assert_eq!(cause.errno(), ENOSPC),
            other => panic!("disk full must not poison the wal: {other}"),
        };
        for i in 0..40u8 {
            let payload = vec![i; 40];
            // While the disk is full an append first retries the queued flush; if that still
            // fails, the append is refused and its record is not queued.
            let lsn = match wal.append(&payload) {
                Ok(lsn) => lsn,
                Err(e) => {
                    disk_full(e);
                    refused += 1;
                    continue;
                }
            };
            match wal.wait_durable(lsn) {
                Ok(()) => acked.push(payload),
                Err(e) => {
                    disk_full(e);
                    queued.push(payload);
                }
            }
        }
        assert!(
            !queued.is_empty(),
            "the fault plan never hit (preallocate {preallocate})"
        );
        assert!(
            acked.len() >= 35,
            "the wal did not come back: {} acked",
            acked.len()
        );
        wal.close().unwrap();
        fs.crash(CrashOptions::default());
        let got = reopen_records(&fs, &config);
        for a in &acked {
            assert!(got.contains(a), "acknowledged record lost after disk full");
        }
        // A record whose commit met a full disk stayed queued and landed with a later flush.
        for q in &queued {
            assert!(got.contains(q), "a record queued during disk full was dropped");
        }
        assert_eq!(got.len(), 40 - refused, "preallocate {preallocate}");
        assert!(got.windows(2).all(|w| w[0][0] < w[1][0]), "records out of order");
    }
}

#[test]
fn short_writes_are_finished_not_trusted() {
    let fs = MemFs::new(5);
    let config = WalConfig {
        preallocate: false,
        ..small_config(1024)
    };
    let plan = FaultPlan::new(5).with_probability(Some(OpKind::Write), 0.4, Fault::Short);
    let (wal, _) = WalManager::open(DIR, config.clone(), faulty_factory(&fs, plan)).unwrap();
    let payloads: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 1 + usize::from(i) * 3]).collect();
    for p in &payloads {
        wal.commit(p).unwrap();
    }
    drop(wal);
    fs.crash(CrashOptions::default());
    assert_eq!(reopen_records(&fs, &config), payloads);
}

/// One flush whose write meets a full disk and whose fdatasync fails: the failed fdatasync must
/// poison the WAL (the write's ENOSPC, reported first, must not hide it as a retryable full disk).
#[test]
fn a_failed_fdatasync_poisons_even_when_a_write_of_its_flush_hit_a_full_disk() {
    let fs = MemFs::new(8);
    let config = WalConfig {
        preallocate: false,
        ..small_config(512)
    };
    // The first flush: one write (segment header and record) and one datasync.
    let plan = FaultPlan::new(8)
        .fail_nth(OpKind::Write, 1, Fault::Enospc)
        .fail_nth(OpKind::Datasync, 1, Fault::Eio);
    let (wal, _) = WalManager::open(DIR, config, faulty_factory(&fs, plan)).unwrap();
    assert_poisoned(wal.commit(b"one"), EIO);
    assert_poisoned(wal.append(b"two"), EIO);
}
