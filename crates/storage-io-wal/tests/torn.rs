//! Torn tails at every byte offset of the last record, and bit flips in the middle of the log
//! under both recovery policies, inside the in-flight window and beyond it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use storage_io_core::Namespace;

use storage_io_core::{OpenOptions, StorageIo};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::format::{RECORD_HEADER_BYTES, TORN_WINDOW_BYTES};
use storage_io_wal::{Lsn, RecoveryPolicy, WalConfig, WalError, WalManager};

use common::{DIR, mem_factory, read_all, small_config};

const SEG: u64 = 4096;

fn segment_path(n: u64) -> PathBuf {
    Path::new(DIR).join(format!("{n:016x}.wal"))
}

/// Overwrites bytes of a file and makes them durable, as damage on the disk would be.
fn poke(fs: &MemFs, path: &Path, offset: u64, bytes: &[u8]) {
    let mut io = fs.backend();
    let fd = io.open_file(path, &OpenOptions::default()).unwrap();
    io.submit_write(fd, bytes, offset).unwrap();
    io.submit_datasync(fd).unwrap();
    let mut done = Vec::new();
    io.wait_completions(&mut done, 2, None).unwrap();
    assert!(done.iter().all(|c| c.is_ok()));
}

/// A log of `n` committed records in segment 0; returns them.
fn log_of(fs: &MemFs, n: usize, config: &WalConfig) -> Vec<(Lsn, Vec<u8>)> {
    let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(fs)).unwrap();
    for i in 0..n {
        wal.commit(format!("record number {i} with some payload").as_bytes())
            .unwrap();
    }
    let all = read_all(&wal);
    wal.close().unwrap();
    all
}

#[test]
fn torn_tail_at_every_byte_offset_of_the_last_record_is_cut_cleanly() {
    let config = small_config(SEG);
    let template = MemFs::new(1);
    let records = log_of(&template, 5, &config);
    let (last_lsn, last_payload) = records.last().unwrap().clone();
    let frame_len = RECORD_HEADER_BYTES as usize + last_payload.len();
    let image = template.read_file(&segment_path(0)).unwrap();
    for keep in 0..frame_len {
        for garbage in [false, true] {
            let fs = MemFs::new(2);
            // The segment as a crash in the middle of the last record's write leaves it: the
            // first `keep` bytes of the frame landed, the rest is zeros or stale garbage.
            let mut torn = image.clone();
            let start = last_lsn.0 as usize;
            for (i, b) in torn[start + keep..start + frame_len].iter_mut().enumerate() {
                *b = if garbage { 0xA5 ^ (i as u8) } else { 0 };
            }
            poke_new(&fs, &segment_path(0), &torn);
            let (wal, next) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
            let ctx = format!("torn after {keep} bytes (garbage: {garbage})");
            assert_eq!(read_all(&wal), records[..4], "{ctx}");
            assert_eq!(
                next, last_lsn,
                "{ctx}: the next record goes where the torn one was"
            );
            let report = wal.recovery_report();
            assert_eq!(report.skipped_valid_records, 0, "{ctx}");
            assert!(report.corruption_at.is_none(), "{ctx}");
            // The torn bytes are zeroed, so a new record cannot line up with stale ones.
            let lsn = wal.commit(b"replacement").unwrap();
            assert_eq!(lsn, last_lsn);
            drop(wal);
            let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
            let got = read_all(&wal);
            assert_eq!(got.len(), 5, "{ctx}");
            assert_eq!(got[4], (last_lsn, b"replacement".to_vec()), "{ctx}");
        }
    }
}

/// Creates a durable file with `content`.
fn poke_new(fs: &MemFs, path: &Path, content: &[u8]) {
    let mut io = fs.backend();
    io.open_file(path, &OpenOptions::create()).unwrap();
    io.sync_dir(path.parent().unwrap()).unwrap();
    poke(fs, path, 0, content);
}

/// A hole inside the in-flight window (`TORN_WINDOW_BYTES`) and at or above the durable end
/// the batch markers carry, with valid records after it, is what a write in flight leaves when
/// a later part of it lands and an earlier one does not: a torn tail under both policies, the
/// records after it cut and counted. (One batch: no later marker says they were acknowledged;
/// tests/precise_window.rs flips a record below the durable end.)
#[test]
fn bit_flip_with_valid_records_after_it_inside_the_window_is_a_torn_tail_under_both_policies() {
    let config = small_config(SEG);
    let template = MemFs::new(3);
    let records = {
        let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&template)).unwrap();
        for i in 0..8 {
            wal.append(format!("record number {i} with some payload").as_bytes())
                .unwrap();
        }
        wal.flush().unwrap();
        let all = read_all(&wal);
        wal.close().unwrap();
        all
    };
    let image = template.read_file(&segment_path(0)).unwrap();
    for victim in [0usize, 3, 6] {
        for byte_in_frame in [0usize, 4, 9, 17, 25] {
            let (lsn, _) = &records[victim];
            let mut bad = image.clone();
            bad[lsn.0 as usize + byte_in_frame] ^= 0x08;
            for recovery in [RecoveryPolicy::Strict, RecoveryPolicy::PointInTime] {
                let ctx = format!("flip in record {victim} at frame byte {byte_in_frame}, {recovery:?}");
                let fs = MemFs::new(4);
                poke_new(&fs, &segment_path(0), &bad);
                let config = WalConfig {
                    recovery,
                    ..config.clone()
                };
                let (wal, next) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
                assert_eq!(read_all(&wal), records[..victim], "{ctx}");
                assert_eq!(next, *lsn, "{ctx}");
                let report = wal.recovery_report();
                assert!(report.corruption_at.is_none(), "{ctx}");
                assert_eq!(report.skipped_valid_records, 0, "{ctx}");
                assert_eq!(report.in_flight_records_cut, 7 - victim, "{ctx}");
            }
        }
    }
}

/// Damage with valid records after it beyond the in-flight window cannot be a crash's tear:
/// `Strict` refuses to open (changing nothing), `PointInTime` cuts there and reports it.
#[test]
fn bit_flip_with_valid_records_beyond_the_window_is_cut_under_point_in_time_and_refused_under_strict() {
    let seg = 1u64 << 20;
    let config = WalConfig {
        prepare_ahead: false,
        ..small_config(seg)
    };
    let template = MemFs::new(3);
    let (records, files) = {
        let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&template)).unwrap();
        for i in 0..8 {
            wal.append(format!("record number {i} with some payload").as_bytes())
                .unwrap();
        }
        // Enough log after the small records to reach past the window.
        let filler: Vec<Vec<u8>> = (0..TORN_WINDOW_BYTES / (64 << 10) + 24)
            .map(|i| vec![i as u8; 64 << 10])
            .collect();
        wal.append_batch(filler.iter().map(|r| &r[..])).unwrap();
        wal.flush().unwrap();
        let all = read_all(&wal);
        wal.close().unwrap();
        let files: Vec<(PathBuf, Vec<u8>)> = template
            .list()
            .into_iter()
            .map(|p| {
                let c = template.read_file(&p).unwrap();
                (p, c)
            })
            .collect();
        (all, files)
    };
    for victim in [0usize, 3, 6] {
        for byte_in_frame in [0usize, 9, 25] {
            let (lsn, _) = &records[victim];
            let beyond: Vec<&(Lsn, Vec<u8>)> = records
                .iter()
                .filter(|(l, _)| l.0 >= lsn.0 + TORN_WINDOW_BYTES)
                .collect();
            assert!(!beyond.is_empty(), "the log reaches past the window");
            let ctx = format!("flip in record {victim} at frame byte {byte_in_frame}");
            let fs = MemFs::new(4);
            for (path, content) in &files {
                let mut content = content.clone();
                if *path == segment_path(0) {
                    content[lsn.0 as usize + byte_in_frame] ^= 0x08;
                }
                poke_new(&fs, path, &content);
            }
            let bad = fs.read_file(&segment_path(0)).unwrap();
            let strict = WalConfig {
                recovery: RecoveryPolicy::Strict,
                ..config.clone()
            };
            match WalManager::open(DIR, strict, mem_factory(&fs)) {
                Err(WalError::Corrupt {
                    at,
                    valid_after,
                    first_valid_after,
                }) => {
                    assert_eq!(at, *lsn, "{ctx}");
                    assert_eq!(valid_after, beyond.len(), "{ctx}");
                    assert_eq!(first_valid_after, beyond[0].0, "{ctx}");
                }
                Err(other) => panic!("{ctx}: strict gave {other}"),
                Ok(_) => panic!("{ctx}: strict opened a log with valid records after damage"),
            }
            // Refusing changed nothing on disk.
            assert_eq!(
                fs.read_file(&segment_path(0)).unwrap(),
                bad,
                "{ctx}: strict wrote"
            );
            assert_eq!(fs.list().len(), files.len(), "{ctx}: strict removed a segment");

            let (wal, next) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
            assert_eq!(read_all(&wal), records[..victim], "{ctx}");
            assert_eq!(next, *lsn, "{ctx}");
            let report = wal.recovery_report();
            assert_eq!(report.corruption_at, Some(*lsn), "{ctx}");
            assert_eq!(report.skipped_valid_records, beyond.len(), "{ctx}");
            assert!(
                report.in_flight_records_cut >= records.len() - victim - 1 - beyond.len(),
                "{ctx}"
            );
        }
    }
}

#[test]
fn torn_segment_header_at_the_tail_is_a_torn_creation() {
    let config = small_config(512);
    let fs = MemFs::new(5);
    let records = {
        let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
        for i in 0..40u8 {
            wal.commit(&[i; 30]).unwrap();
        }
        read_all(&wal)
    };
    let segments = fs.list();
    assert!(
        segments.len() >= 3,
        "the test needs several segments: {segments:?}"
    );
    let last = segments.last().unwrap().clone();
    let kept: Vec<_> = records
        .iter()
        .filter(|(lsn, _)| lsn.0 / 512 < segments.len() as u64 - 1)
        .cloned()
        .collect();
    poke(&fs, &last, 3, &[0xff]);
    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    assert_eq!(read_all(&wal), kept);
    assert_eq!(wal.recovery_report().removed_segments.len(), 1);
}
