//! The WAL's API at its edges: bad input is a clear error that loses nothing, readers,
//! truncation, the async and none sync modes, reopening with another segment size.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};
use storage_io_core::Namespace;

use storage_io_core::{OpenOptions, StorageIo};

use storage_io_testkit::memio::{CrashOptions, MemFs};
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalError, WalManager, WalReader};

use common::{DIR, mem_factory, read_all, small_config};

#[test]
fn oversized_record_is_refused_and_loses_nothing() {
    let fs = MemFs::new(1);
    let (wal, _) = WalManager::open(DIR, small_config(1024), mem_factory(&fs)).unwrap();
    wal.commit(b"kept").unwrap();
    let max = wal.max_record_bytes() as usize;
    assert_eq!(max, 1024 - 32 - 40);
    let err = wal.append(&vec![0; max + 1]).unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { len, .. } if len == max + 1));
    assert!(err.to_string().contains("segment_size_bytes"), "{err}");
    // A batch with one oversized record queues none of them.
    let big = vec![1u8; max + 1];
    assert!(wal.append_batch([&b"a"[..], &big[..]]).is_err());
    wal.commit(&vec![2; max]).unwrap();
    let got: Vec<Vec<u8>> = read_all(&wal).into_iter().map(|r| r.1).collect();
    assert_eq!(got, vec![b"kept".to_vec(), vec![2; max]]);
}

#[test]
fn invalid_config_names_the_field() {
    let fs = MemFs::new(2);
    for (config, field) in [
        (small_config(100), "segment_size_bytes"),
        (
            WalConfig {
                write_chunk_bytes: 10,
                ..WalConfig::default()
            },
            "write_chunk_bytes",
        ),
        (
            WalConfig {
                segment_size_bytes: 6000,
                direct_io: true,
                ..WalConfig::default()
            },
            "multiple of 4096",
        ),
        (
            WalConfig {
                sync_mode: SyncMode::Async { interval_ms: 0 },
                ..WalConfig::default()
            },
            "interval_ms",
        ),
    ] {
        let err = WalManager::open(DIR, config, mem_factory(&fs)).err().unwrap();
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(fs.list().is_empty(), "a refused config wrote nothing");
}

#[test]
fn config_round_trips_through_json_and_refuses_unknown_fields() {
    let config = WalConfig::default();
    let text = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<WalConfig>(&text).unwrap(), config);
    assert!(serde_json::from_str::<WalConfig>(r#"{"segment_size":1}"#).is_err());
}

#[test]
fn lsns_out_of_range_are_errors() {
    let fs = MemFs::new(3);
    let (wal, next) = WalManager::open(DIR, small_config(1024), mem_factory(&fs)).unwrap();
    assert!(matches!(
        wal.wait_durable(next),
        Err(WalError::LsnOutOfRange { .. })
    ));
    assert!(matches!(
        wal.wait_durable(Lsn(0)),
        Err(WalError::LsnOutOfRange { .. })
    ));
    assert!(matches!(
        wal.reader(Lsn(1 << 40)),
        Err(WalError::LsnOutOfRange { .. })
    ));
    let lsn = wal.commit(b"x").unwrap();
    assert_eq!(lsn, next);
    wal.wait_durable(lsn).unwrap();
}

#[test]
fn reader_starts_at_any_record_and_sees_only_what_was_written() {
    let fs = MemFs::new(4);
    let (wal, _) = WalManager::open(DIR, small_config(512), mem_factory(&fs)).unwrap();
    let lsns = wal
        .append_batch(
            (0..30u8)
                .map(|i| [i; 25])
                .collect::<Vec<_>>()
                .iter()
                .map(|r| &r[..]),
        )
        .unwrap();
    wal.flush().unwrap();
    wal.append(b"not yet written").unwrap();
    let from = lsns[17];
    let got: Vec<(Lsn, Vec<u8>)> = wal.reader(from).unwrap().map(Result::unwrap).collect();
    assert_eq!(got.len(), 13);
    assert_eq!(got[0], (from, vec![17; 25]));
    assert!(got.iter().zip(&lsns[17..]).all(|((a, _), b)| a == b));
    // The offline reader sees the same log.
    wal.close().unwrap();
    let offline: Vec<Vec<u8>> = WalReader::open(DIR, Box::new(fs.backend()))
        .unwrap()
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(offline.len(), 31);
}

#[test]
fn truncate_before_removes_old_segments_and_survives_a_crash() {
    let fs = MemFs::new(5);
    // No preparer: it creates the next segment whenever it likes, which the file counts below
    // would see.
    let config = WalConfig {
        prepare_ahead: false,
        ..small_config(512)
    };
    let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
    let lsns: Vec<Lsn> = (0..60u8).map(|i| wal.commit(&[i; 40]).unwrap()).collect();
    let segments_before = fs.list().len();
    let checkpoint = lsns[40];
    let removed = wal.truncate_before(checkpoint).unwrap();
    assert!(removed > 0);
    assert_eq!(fs.list().len(), segments_before - removed);
    assert!(wal.first_lsn() <= checkpoint);
    assert!(matches!(wal.reader(lsns[0]), Err(WalError::LsnOutOfRange { .. })));
    // Truncating past the durable end is refused.
    let pending = wal.append(b"queued").unwrap();
    assert!(wal.truncate_before(Lsn(pending.0 + 1)).is_err());
    std::mem::forget(wal);
    fs.crash(CrashOptions::default());
    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    let got = read_all(&wal);
    assert!(got.first().unwrap().0 <= checkpoint);
    assert_eq!(got.last().unwrap().1, vec![59; 40]);
    assert!(got.iter().any(|r| r.0 == checkpoint));
}

#[test]
fn async_mode_commits_at_once_and_the_background_thread_makes_them_durable() {
    let fs = MemFs::new(6);
    let config = WalConfig {
        segment_size_bytes: 4096,
        sync_mode: SyncMode::Async { interval_ms: 5 },
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    let lsn = wal.commit(b"async").unwrap();
    let syncs_before = fs.sync_count();
    // Nobody flushes: only the background thread can move the durable end past the record.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal.durable_lsn() <= lsn {
        assert!(Instant::now() < deadline, "the background flusher never ran");
        std::thread::yield_now();
    }
    assert!(fs.sync_count() > syncs_before);
    wal.close().unwrap();
    assert!(matches!(wal.append(b"late"), Err(WalError::Closed)));
}

#[test]
fn none_mode_writes_but_never_syncs() {
    let fs = MemFs::new(7);
    let config = WalConfig {
        segment_size_bytes: 4096,
        sync_mode: SyncMode::None,
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
    let syncs = fs.sync_count();
    for i in 0..10u8 {
        wal.commit(&[i]).unwrap();
    }
    assert_eq!(fs.sync_count(), syncs, "none mode issued an fdatasync");
    assert_eq!(wal.stats().datasyncs, 0);
    // Written to the OS: a process crash (no power loss) keeps them.
    std::mem::forget(wal);
    fs.release_dir_locks(); // the dead process's lock goes with it
    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    assert_eq!(read_all(&wal).len(), 10);
}

#[test]
fn reopening_with_another_segment_size_keeps_the_one_on_disk() {
    let fs = MemFs::new(8);
    {
        let (wal, _) = WalManager::open(DIR, small_config(1024), mem_factory(&fs)).unwrap();
        wal.commit(b"one").unwrap();
    }
    let (wal, _) = WalManager::open(DIR, small_config(4096), mem_factory(&fs)).unwrap();
    assert_eq!(wal.segment_size_bytes(), 1024);
    wal.commit(b"two").unwrap();
    assert_eq!(read_all(&wal).len(), 2);
}

#[test]
fn close_makes_queued_records_durable() {
    let fs = MemFs::new(9);
    let config = small_config(1024);
    let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
    wal.append(b"queued only").unwrap();
    wal.close().unwrap();
    fs.crash(CrashOptions::default());
    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    assert_eq!(read_all(&wal)[0].1, b"queued only");
}

/// Two `truncate_before` calls at once, one further than the other: `first_lsn` must end at the
/// further one (it never moves backwards), and a reader from `first_lsn` must work.
#[test]
fn concurrent_truncate_before_never_moves_first_lsn_backwards() {
    for round in 0..60u64 {
        let fs = MemFs::new(round);
        let config = WalConfig {
            preallocate: false,
            ..small_config(512)
        };
        let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
        let lsns: Vec<Lsn> = (0..200u8).map(|i| wal.commit(&[i; 40]).unwrap()).collect();
        let (near, far) = (lsns[20], lsns[180]);
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let a = s.spawn(|| {
                barrier.wait();
                wal.truncate_before(far).unwrap()
            });
            let b = s.spawn(|| {
                barrier.wait();
                wal.truncate_before(near).unwrap()
            });
            a.join().unwrap();
            b.join().unwrap();
        });
        let first = wal.first_lsn();
        assert!(
            first > lsns[170],
            "round {round}: first_lsn {first} moved back behind the further truncation ({far})"
        );
        let reader = wal
            .reader(first)
            .unwrap_or_else(|e| panic!("round {round}: reader(first_lsn {first}): {e}"));
        let records: Vec<_> = reader.map(|r| r.unwrap()).collect();
        assert_eq!(records.last().unwrap().1, vec![199u8; 40], "round {round}");
    }
}

/// A file named like a segment whose number no log can reach (its LSNs would pass 2^64):
/// opening refuses with an error naming it, and removes nothing.
#[test]
fn a_stray_file_named_like_a_segment_is_refused_and_kept() {
    for name in ["ffffffffffffffff.wal", "0100000000000000.wal"] {
        let fs = MemFs::new(9);
        let config = small_config(512);
        {
            let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
            wal.commit(b"kept").unwrap();
        }
        let stray = Path::new(DIR).join(name);
        {
            let mut io = fs.backend();
            let fd = io.open_file(&stray, &OpenOptions::create()).unwrap();
            io.submit_write(fd, &[7u8; 600], 0).unwrap();
            io.submit_datasync(fd).unwrap();
            let mut done = Vec::new();
            io.wait_completions(&mut done, 2, None).unwrap();
            io.sync_dir(Path::new(DIR)).unwrap();
        }
        let before = fs.list();
        let err = match WalManager::open(DIR, config.clone(), mem_factory(&fs)) {
            Ok(_) => panic!("{name}: a log with a stray segment-named file opened"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(name), "{name}: the error must name the file: {err}");
        assert_eq!(fs.list(), before, "{name}: opening removed or created files");
        assert_eq!(fs.read_file(&stray).unwrap(), vec![7u8; 600]);
    }
}
