//! Defects of issue 37 owned by the second review (pads in small segments, the reader on a
//! foreign segment name, the group delay and the torn window, writeback errors with several
//! buffered flushes in flight, recovery and readers that read only the log).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use storage_io_testkit::memio::MemFs;
use storage_io_wal::{SyncMode, WalConfig, WalManager};

use common::{DIR, mem_factory, read_all};

/// Direct mode, two flushes in flight, 4 KiB segments: every batch of two records ends in a
/// pad, and a pad that would fill a segment's only block must not take the place of the next
/// segment's end frame (issue 37, item 1).
#[test]
fn pads_in_4k_segments_keep_records() {
    let fs = MemFs::new(37);
    let factory = mem_factory(&fs);
    let config = WalConfig {
        segment_size_bytes: 4096,
        direct_io: true,
        max_flushes_in_flight: 2,
        sync_mode: SyncMode::Sync,
        ..WalConfig::default()
    };
    let dir = Path::new(DIR);
    let mut acked = Vec::new();
    let next = {
        let (wal, _) = WalManager::open(dir, config.clone(), factory.clone()).unwrap();
        for round in 0..4u8 {
            let a = wal.append(&[round, 0]).unwrap();
            let b = wal.append(&[round, 1]).unwrap();
            wal.wait_durable(b).unwrap();
            acked.push((a, vec![round, 0]));
            acked.push((b, vec![round, 1]));
        }
        let next = wal.next_lsn();
        wal.close().unwrap();
        next
    };
    let (wal, reopened_next) = WalManager::open(dir, config, factory).unwrap();
    assert_eq!(
        read_all(&wal),
        acked,
        "every acknowledged record is back after a clean close"
    );
    assert!(
        reopened_next >= next,
        "next_lsn went back from {next} to {reopened_next}: acknowledged lsns would be reused"
    );
    assert_eq!(wal.recovery_report().in_flight_records_cut, 0);
}

/// A file named `ffffffffffffffff.wal` cannot be a segment of any log (its positions pass
/// 2^64): `WalReader::open` refuses it as `WalManager::open` does, naming the file, instead
/// of panicking on a multiply overflow (issue 37, item 7).
#[test]
fn reader_open_refuses_a_segment_number_past_the_lsn_space() {
    use storage_io_core::{OpenOptions, StorageIo};
    use storage_io_wal::{WalError, WalReader};

    for with_log in [false, true] {
        let fs = MemFs::new(7);
        let dir = Path::new(DIR);
        if with_log {
            let (wal, _) = WalManager::open(dir, common::small_config(4096), mem_factory(&fs)).unwrap();
            wal.commit(b"a record").unwrap();
            wal.close().unwrap();
        }
        let mut io = fs.backend();
        let stray = dir.join("ffffffffffffffff.wal");
        let fd = io.open_file(&stray, &OpenOptions::create()).unwrap();
        io.submit_write(fd, &[0u8; 64], 0).unwrap();
        io.submit_datasync(fd).unwrap();
        io.deregister_fd(fd).unwrap();

        let err = WalReader::open(dir, Box::new(fs.backend())).err();
        assert!(
            matches!(&err, Some(WalError::ForeignFile { path, .. }) if *path == stray),
            "the reader must refuse {} (with a log beside it: {with_log}), got {err:?}",
            stray.display()
        );
        let manager = WalManager::open(dir, common::small_config(4096), mem_factory(&fs)).err();
        assert!(
            matches!(manager, Some(WalError::ForeignFile { .. })),
            "{manager:?}"
        );
    }
}
