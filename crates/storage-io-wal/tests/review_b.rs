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

/// Issue 37, item 12: reopening a 100-record log and reading it read what the log holds, not
/// the 64 MiB preallocated segment it sits in. Read ops are counted through a gate left open.
#[test]
fn reopen_and_read_cost_the_log_not_the_segment() {
    use std::sync::Arc;

    use storage_io_core::{BackendFactory, OpKind, StorageIo};
    use storage_io_testkit::gated::{Gate, GatedIo};

    let fs = MemFs::new(12);
    let dir = Path::new(DIR);
    let config = WalConfig {
        segment_size_bytes: 64 << 20,
        preallocate: true,
        prepare_ahead: false,
        ..WalConfig::default()
    };
    let expected: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().repeat(10)).collect();
    {
        let (wal, _) = WalManager::open(dir, config.clone(), mem_factory(&fs)).unwrap();
        for r in &expected {
            wal.commit(r).unwrap();
        }
        wal.close().unwrap();
    }
    let reads = Gate::new();
    reads.open(); // counts reads, holds nothing
    let factory: BackendFactory = {
        let (fs, reads) = (fs.clone(), reads.clone());
        Arc::new(move |_| {
            Ok(Box::new(GatedIo::new(fs.backend(), reads.clone(), &[OpKind::Read])) as Box<dyn StorageIo>)
        })
    };
    let (wal, _) = WalManager::open(dir, config, factory).unwrap();
    let at_open = reads.submitted();
    // Recovery reads the log and the in-flight window after it (1 MiB with this config), in
    // 1 MiB reads: not the 64 MiB segment.
    assert!(
        at_open <= 12,
        "reopening a 100-record log took {at_open} reads of up to 1 MiB"
    );
    let got: Vec<Vec<u8>> = read_all(&wal).into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, expected);
    let reading = reads.submitted() - at_open;
    assert!(reading <= 3, "reading a 100-record log took {reading} reads");
}

/// The streaming reader returns records larger than its buffer, across segments, from any
/// start, and `WalReader::open` reads the same log.
#[test]
fn streaming_reader_returns_records_larger_than_its_buffer() {
    // Without preallocation the last segment is as short as its records: a header and one
    // small record (shorter than two headers) must still be read.
    for preallocate in [true, false] {
        streaming_reader_case(preallocate);
    }
}

fn streaming_reader_case(preallocate: bool) {
    use storage_io_wal::WalReader;

    let fs = MemFs::new(3);
    let dir = Path::new(DIR);
    let config = WalConfig {
        segment_size_bytes: 1 << 20,
        preallocate,
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(dir, config, mem_factory(&fs)).unwrap();
    // A largest record fills a segment: the 5-byte record after it starts the next one.
    let max = wal.max_record_bytes() as usize;
    let sizes = [10usize, 300 << 10, 7, 900 << 10, 0, 1000, 600 << 10, 3, max, 5];
    let mut expected = Vec::new();
    for (i, len) in sizes.into_iter().enumerate() {
        let payload = vec![i as u8 + 1; len];
        expected.push((wal.commit(&payload).unwrap(), payload));
    }
    // Compared by LSN, length and checksum of each record, so that a failure stays readable.
    let digest = |records: &[(storage_io_wal::Lsn, Vec<u8>)]| -> Vec<(u64, usize, u32)> {
        records.iter().map(|(l, p)| (l.0, p.len(), fnv(p))).collect()
    };
    assert_eq!(digest(&read_all(&wal)), digest(&expected));
    let from = expected[3].0;
    let tail: Vec<_> = wal.reader(from).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(digest(&tail), digest(&expected[3..]));
    wal.close().unwrap();
    let offline: Vec<_> = WalReader::open(dir, Box::new(fs.backend()))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(digest(&offline), digest(&expected), "preallocate {preallocate}");
}

/// A cheap checksum (FNV-1a) for comparing payloads in assertions.
fn fnv(p: &[u8]) -> u32 {
    p.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}
