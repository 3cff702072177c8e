//! Limits of the log that a long life reaches: more segments than the backend's fd table holds
//! (reopen and one batch across them), and the end of the LSN space.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;
use storage_io_core::Namespace;

use storage_io_core::{BackendFactory, IoConfig, OpenOptions, StorageIo};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalError, WalManager};

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

/// Writes segment `n` of a log of `size`-byte segments holding only its header (format
/// version 2), as the writer leaves a segment it has just started.
fn write_bare_segment(fs: &MemFs, n: u64, size: u64) {
    write_segment(fs, n, size, false);
}

/// Writes segment `n` holding its header and, with `closed`, a segment-end frame after it.
fn write_segment(fs: &MemFs, n: u64, size: u64, closed: bool) {
    let mut header = Vec::with_capacity(32);
    header.extend_from_slice(b"SIOW");
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&size.to_le_bytes());
    header.extend_from_slice(&(n * size).to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    if closed {
        let at = header.len();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&[2, 0, 0, 0]);
        header.extend_from_slice(&(n * size + 32).to_le_bytes());
        let crc = crc32c::crc32c(&header[at..]);
        header.extend_from_slice(&crc.to_le_bytes());
    }
    let mut io = fs.backend();
    io.create_dir_all(Path::new(DIR)).unwrap();
    let fd = io
        .open_file(
            &Path::new(DIR).join(format!("{n:016x}.wal")),
            &OpenOptions::create(),
        )
        .unwrap();
    io.sync_dir(Path::new(DIR)).unwrap();
    io.submit_write(fd, &header, 0).unwrap();
    io.submit_datasync(fd).unwrap();
    let mut done = Vec::new();
    io.wait_completions(&mut done, 2, None).unwrap();
    assert!(done.iter().all(|c| c.is_ok()));
    io.deregister_fd(fd).unwrap();
}

/// A log near the end of the LSN space (issue 37, reviewer defect D): appends that would need
/// a segment past 2^64 are refused with `LsnSpaceExhausted` naming the position, never an
/// overflow panic or a wrapped LSN; what was acknowledged before reopens.
#[test]
fn appends_near_the_end_of_the_lsn_space_are_refused_cleanly() {
    let size = 512u64;
    // The second-to-last segment whose positions all lie below 2^64.
    let last = u64::MAX / size - 1;
    for start in [last - 1, last] {
        let fs = MemFs::new(start);
        write_bare_segment(&fs, start, size);
        let factory = common::mem_factory(&fs);
        let mut acked = Vec::new();
        let refused = {
            let (wal, next) = WalManager::open(Path::new(DIR), tiny_segments(), factory.clone()).unwrap();
            assert_eq!(next.0, start * size + 32);
            let mut refused = None;
            for i in 0..20 {
                let r = record(i);
                match wal.commit(&r) {
                    Ok(lsn) => acked.push((lsn, r)),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            // Empty records fill what is left, until one is refused too.
            let mut filled = false;
            for _ in 0..32 {
                match wal.commit(b"") {
                    Ok(lsn) => acked.push((lsn, Vec::new())),
                    Err(WalError::LsnSpaceExhausted { .. }) => {
                        filled = true;
                        break;
                    }
                    Err(e) => panic!("an empty record near the end: {e}"),
                }
            }
            assert!(filled, "empty records were never refused");
            // A batch is refused whole.
            let err = wal.append_batch([&b""[..], b""]).unwrap_err();
            assert!(matches!(err, WalError::LsnSpaceExhausted { .. }), "{err}");
            wal.close().unwrap();
            refused
        };
        match refused {
            Some(WalError::LsnSpaceExhausted { at }) => {
                assert!(at.0 > start * size && at.0 < u64::MAX, "{at}");
                let text = WalError::LsnSpaceExhausted { at }.to_string();
                assert!(text.contains(&at.to_string()), "{text}");
            }
            other => panic!("segment {start:#x}: expected LsnSpaceExhausted, got {other:?}"),
        }
        assert!(!acked.is_empty(), "the records that fit were acknowledged");
        let (wal, _) = WalManager::open(Path::new(DIR), tiny_segments(), factory).unwrap();
        assert_eq!(
            read_all(&wal),
            acked,
            "segment {start:#x}: every acknowledged record is back"
        );
        let err = wal.commit(b"").unwrap_err();
        assert!(matches!(err, WalError::LsnSpaceExhausted { .. }), "{err}");
        wal.close().unwrap();
    }
}

/// A log whose last segment below 2^64 is closed (no writer leaves one: copied together by
/// hand) has nowhere to go on: open refuses it with `LsnSpaceExhausted`, without an overflow.
#[test]
fn a_closed_last_segment_of_the_lsn_space_is_refused_at_open() {
    let size = 512u64;
    let last = u64::MAX / size - 1;
    let fs = MemFs::new(1);
    write_segment(&fs, last, size, true);
    let Err(err) = WalManager::open(Path::new(DIR), tiny_segments(), common::mem_factory(&fs)) else {
        panic!("a log with no room left opened");
    };
    assert!(matches!(err, WalError::LsnSpaceExhausted { .. }), "{err}");
}

/// The same batch on real files through the sync backend with a 32-file fd table: buffered
/// inline flushes write and fdatasync the earlier segments of the batch a group at a time
/// (through the sync gate), then the last group as usual.
#[test]
fn one_batch_across_more_segments_than_the_fd_table_holds_on_real_files() {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("wal-limits")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().join("wal");
    let factory: BackendFactory = Arc::new(|_| {
        let config = IoConfig {
            max_files: 32,
            ..IoConfig::default()
        };
        Ok(Box::new(storage_io_sync::SyncStorageIo::new(&config)?) as Box<dyn StorageIo>)
    });
    let mut acked = Vec::new();
    {
        let (wal, _) = WalManager::open(&dir, tiny_segments(), factory.clone()).unwrap();
        let records: Vec<Vec<u8>> = (0..150).map(record).collect();
        let lsns = wal.append_batch(records.iter().map(Vec::as_slice)).unwrap();
        wal.flush().expect("one flush across 50 segments on real files");
        acked.extend(lsns.into_iter().zip(records));
        wal.close().unwrap();
    }
    let (wal, _) = WalManager::open(&dir, tiny_segments(), factory).unwrap();
    assert!(wal.recovery_report().segments > 32);
    assert_eq!(read_all(&wal), acked);
}
