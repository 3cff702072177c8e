//! Limits of the log that a long life reaches: more segments than the backend's fd table holds
//! (reopen and one batch across them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use storage_io_core::{BackendFactory, IoConfig, StorageIo};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalManager};

use common::{DIR, read_all};

/// Backends on one in-memory file system whose fd tables hold `max_files` files.
fn limited_factory(fs: &MemFs, max_files: usize) -> BackendFactory {
    let fs = fs.clone();
    let config = IoConfig {
        max_files,
        ..IoConfig::default()
    };
    Arc::new(move |_| Ok(Box::new(fs.backend_with(&config)) as Box<dyn StorageIo>))
}

/// 512-byte segments: three 100-byte records each.
fn tiny_segments() -> WalConfig {
    WalConfig {
        segment_size_bytes: 512,
        sync_mode: SyncMode::Sync,
        preallocate: false,
        prepare_ahead: false,
        ..WalConfig::default()
    }
}

fn record(i: u32) -> Vec<u8> {
    i.to_le_bytes().repeat(25)
}

/// Reopens and checks that exactly `acked` is in the log.
fn reopen_and_check(fs: &MemFs, max_files: usize, acked: &[(Lsn, Vec<u8>)], what: &str) {
    let (wal, _) = WalManager::open(Path::new(DIR), tiny_segments(), limited_factory(fs, max_files))
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    assert!(
        wal.recovery_report().segments > max_files,
        "{what}: the log must span more segments than the fd table holds"
    );
    assert_eq!(read_all(&wal), acked, "{what}: every acknowledged record is back");
    // The reopened log goes on.
    let lsn = wal.commit(b"after the reopen").unwrap();
    wal.close().unwrap();
    assert!(lsn > acked.last().unwrap().0);
}

/// A log of more segments than the backend's fd table holds (issue 37, reviewer defect A):
/// recovery opens and closes segments as it walks them, instead of holding one handle per
/// segment. Once with a 32-file table, once with the default 1,024 files and 1,100 segments.
#[test]
fn a_log_of_more_segments_than_the_fd_table_holds_reopens() {
    for (max_files, segments) in [(32usize, 40u32), (IoConfig::default().max_files, 1_100)] {
        let fs = MemFs::new(u64::from(segments));
        let factory = limited_factory(&fs, max_files);
        let mut acked = Vec::new();
        {
            let (wal, _) = WalManager::open(Path::new(DIR), tiny_segments(), factory).unwrap();
            for i in 0..segments * 3 {
                let r = record(i);
                acked.push((wal.commit(&r).unwrap(), r));
            }
            wal.close().unwrap();
        }
        reopen_and_check(
            &fs,
            max_files,
            &acked,
            &format!("{segments} segments, {max_files} files"),
        );
    }
}

/// One batch across more segments than the fd table holds (issue 37, reviewer defect A): the
/// flush closes the segments it has finished as it goes, instead of opening every segment of
/// the batch first and poisoning the log when the table is full. Buffered, and direct with
/// two flushes in flight (staged on a flush slot).
#[test]
fn one_batch_across_more_segments_than_the_fd_table_holds_is_written() {
    let max_files = 32;
    let direct = WalConfig {
        segment_size_bytes: 4096,
        direct_io: true,
        max_flushes_in_flight: 2,
        ..tiny_segments()
    };
    for (config, len) in [(tiny_segments(), 100), (direct, 1000)] {
        let fs = MemFs::new(7);
        let factory = limited_factory(&fs, max_files);
        let mut acked = Vec::new();
        {
            let (wal, _) = WalManager::open(Path::new(DIR), config.clone(), factory).unwrap();
            // Four segments of records before the batch, committed one by one.
            for i in 0..12 {
                let r = vec![i as u8; len];
                acked.push((wal.commit(&r).unwrap(), r));
            }
            let records: Vec<Vec<u8>> = (0..150u32).map(|i| i.to_le_bytes().repeat(len / 4)).collect();
            let lsns = wal.append_batch(records.iter().map(Vec::as_slice)).unwrap();
            let end = wal.flush().expect("one flush across 50 segments");
            assert!(end > *lsns.last().unwrap());
            acked.extend(lsns.into_iter().zip(records));
            wal.close().unwrap();
        }
        reopen_and_check(
            &fs,
            max_files,
            &acked,
            &format!("one batch of 50 segments, {config:?}"),
        );
    }
}
