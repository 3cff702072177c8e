//! The precise torn window: every batch carries the durable end known when it was submitted, so
//! a hole below the highest durable end found in the log is damage to acknowledged records
//! (`Strict` refuses, `PointInTime` cuts and reports), and only a hole above it is a torn tail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use storage_io_core::Namespace;

use storage_io_core::{OpenOptions, StorageIo};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::{Lsn, RecoveryPolicy, WalConfig, WalError, WalManager};

use common::{DIR, mem_factory, read_all, small_config};

const SEG: u64 = 4096;

fn segment_path(n: u64) -> PathBuf {
    Path::new(DIR).join(format!("{n:016x}.wal"))
}

/// Writes `content` as a new durable file, as a disk holding it would.
fn put(fs: &MemFs, path: &Path, content: &[u8]) {
    let mut io = fs.backend();
    let fd = io.open_file(path, &OpenOptions::create()).unwrap();
    io.sync_dir(path.parent().unwrap()).unwrap();
    io.submit_write(fd, content, 0).unwrap();
    io.submit_datasync(fd).unwrap();
    let mut done = Vec::new();
    io.wait_completions(&mut done, 2, None).unwrap();
    assert!(done.iter().all(|c| c.is_ok()));
}

/// A log of 8 records, each committed (acknowledged) by a flush of its own; returns them and
/// the image of segment 0.
fn acknowledged_log() -> (Vec<(Lsn, Vec<u8>)>, Vec<u8>) {
    let fs = MemFs::new(1);
    let (wal, _) = WalManager::open(DIR, small_config(SEG), mem_factory(&fs)).unwrap();
    for i in 0..8 {
        wal.commit(format!("acknowledged record {i}").as_bytes()).unwrap();
    }
    let records = read_all(&wal);
    wal.close().unwrap();
    assert_eq!(fs.list(), vec![segment_path(0)], "the test needs one segment");
    (records, fs.read_file(&segment_path(0)).unwrap())
}

fn open_with(fs: &MemFs, recovery: RecoveryPolicy) -> Result<(WalManager, Lsn), WalError> {
    let config = WalConfig {
        recovery,
        ..small_config(SEG)
    };
    WalManager::open(DIR, config, mem_factory(fs))
}

#[test]
fn a_bit_flip_below_the_durable_end_is_damage_not_a_torn_tail() {
    let (records, image) = acknowledged_log();
    for victim in [0usize, 3, 6] {
        let (lsn, _) = &records[victim];
        let mut bad = image.clone();
        bad[lsn.0 as usize + 25] ^= 0x08;
        let ctx = format!("flip in acknowledged record {victim}");
        let fs = MemFs::new(2);
        put(&fs, &segment_path(0), &bad);
        match open_with(&fs, RecoveryPolicy::Strict) {
            Err(WalError::Corrupt {
                at,
                valid_after,
                first_valid_after,
            }) => {
                assert_eq!(at, *lsn, "{ctx}");
                assert_eq!(valid_after, 7 - victim, "{ctx}");
                assert_eq!(first_valid_after, records[victim + 1].0, "{ctx}");
            }
            Err(other) => panic!("{ctx}: strict gave {other}"),
            Ok((wal, _)) => panic!(
                "{ctx}: strict opened and kept {} of 8 acknowledged records",
                read_all(&wal).len()
            ),
        }
        assert_eq!(
            fs.read_file(&segment_path(0)).unwrap(),
            bad,
            "{ctx}: strict wrote"
        );

        let (wal, next) = open_with(&fs, RecoveryPolicy::PointInTime).unwrap();
        assert_eq!(read_all(&wal), records[..victim], "{ctx}");
        assert_eq!(next, *lsn, "{ctx}");
        let report = wal.recovery_report();
        assert_eq!(report.corruption_at, Some(*lsn), "{ctx}");
        assert_eq!(report.skipped_valid_records, 7 - victim, "{ctx}");
        assert_eq!(report.in_flight_records_cut, 0, "{ctx}");
    }
}

#[test]
fn a_torn_tail_above_the_durable_end_is_still_cut_under_strict() {
    let (records, image) = acknowledged_log();
    let (last, _) = &records[7];
    for byte_in_frame in [0usize, 9, 25] {
        let mut bad = image.clone();
        bad[last.0 as usize + byte_in_frame] ^= 0x08;
        let fs = MemFs::new(3);
        put(&fs, &segment_path(0), &bad);
        let (wal, next) = open_with(&fs, RecoveryPolicy::Strict).unwrap();
        assert_eq!(read_all(&wal), records[..7]);
        assert_eq!(next, *last);
        let report = wal.recovery_report();
        assert!(report.corruption_at.is_none());
        assert_eq!(report.skipped_valid_records, 0);
    }
}

/// A version-1 log (no batch markers) is still read, with the window rule alone: a hole with
/// valid records after it inside the window is a torn tail under `Strict`, and the log goes on
/// after the cut (new batches in version-2 frames) and reopens.
// Builds its version-1 segment with the `fuzzing` module's writer, so it runs where that
// feature is on: `cargo xtask ci`'s fuzzing step (`--features storage-io-wal/fuzzing`).
#[cfg(feature = "fuzzing")]
#[test]
fn a_version_1_log_is_read_with_the_window_rule() {
    let payloads: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("version one record {i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    let image = storage_io_wal::fuzzing::version_1_segment(0, SEG, &refs);

    // Intact: every record is read, and the log goes on.
    let fs = MemFs::new(4);
    put(&fs, &segment_path(0), &image);
    let (wal, _) = open_with(&fs, RecoveryPolicy::Strict).unwrap();
    let records = read_all(&wal);
    let got: Vec<&[u8]> = records.iter().map(|r| &r.1[..]).collect();
    assert_eq!(got, refs);
    let more = wal.commit(b"written by version 2").unwrap();
    wal.close().unwrap();
    let (wal, _) = open_with(&fs, RecoveryPolicy::Strict).unwrap();
    let again = read_all(&wal);
    assert_eq!(again[..8], records[..]);
    assert_eq!(again[8], (more, b"written by version 2".to_vec()));
    wal.close().unwrap();

    // A flip in record 3: the records after it lie inside the window, and no marker says they
    // were acknowledged, so `Strict` cuts them as writes in flight.
    let victim = records[3].0;
    let mut bad = image.clone();
    bad[victim.0 as usize + 25] ^= 0x08;
    let fs = MemFs::new(5);
    put(&fs, &segment_path(0), &bad);
    let (wal, next) = open_with(&fs, RecoveryPolicy::Strict).unwrap();
    assert_eq!(read_all(&wal), records[..3]);
    assert_eq!(next, victim);
    let report = wal.recovery_report();
    assert!(report.corruption_at.is_none());
    assert_eq!(report.in_flight_records_cut, 4);
}

/// A log that never syncs (`SyncMode::None`) has no durable end to claim: after an ordinary
/// power cut its hole is a torn tail, so `Strict` opens it (the markers of such a log must not
/// claim the bytes it only wrote).
#[test]
fn strict_opens_a_sync_none_log_after_a_power_cut() {
    use storage_io_testkit::memio::CrashOptions;
    use storage_io_wal::SyncMode;
    let mut fails = Vec::new();
    for seed in 0..30u64 {
        for size in [512u64, 4096] {
            let fs = MemFs::new(seed);
            let factory = mem_factory(&fs);
            let config = WalConfig {
                segment_size_bytes: size,
                sync_mode: SyncMode::None,
                recovery: RecoveryPolicy::Strict,
                ..WalConfig::default()
            };
            let dir = Path::new(DIR);
            let (wal, _) = WalManager::open(dir, config.clone(), factory.clone()).unwrap();
            for i in 0..(seed % 7 + 3) {
                wal.commit(&[i as u8; 100]).unwrap();
            }
            wal.close().unwrap();
            drop(wal);
            let (wal, _) = WalManager::open(dir, config.clone(), factory.clone()).unwrap();
            for i in 0..40u64 {
                wal.commit(&vec![i as u8; (i * 37 % 200) as usize]).unwrap();
            }
            fs.crash(CrashOptions {
                tear: common::tear(seed),
            });
            drop(wal);
            if let Err(e) = WalManager::open(dir, config.clone(), factory) {
                fails.push(format!("seed {seed} size {size}: {e}"));
            }
        }
    }
    assert!(fails.is_empty(), "{} of 60: {fails:#?}", fails.len());
}
