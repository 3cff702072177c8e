//! Several direct flushes in flight (`direct_io` with `max_flushes_in_flight > 1`), on MemIo
//! with a write latency so that committer threads overlap their flushes: a crash at any op
//! lands each O_DSYNC write then in flight whole, not at all or torn at 512-byte sectors, and
//! recovery must give back every acknowledged record, a prefix of the log in LSN order (no
//! record twice, none out of order, none never appended), the same log when run twice, and a
//! log that takes new records.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use storage_io_testkit::memio::{CrashOptions, MemFs};
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalManager};

use common::{DIR, mem_factory, read_all, tear};

const THREADS: u8 = 4;
const COMMITS: u8 = 24;

fn config(k: u64) -> WalConfig {
    WalConfig {
        // Small segments so that batches cross segment ends often; both sync modes.
        segment_size_bytes: if k.is_multiple_of(2) { 12 << 10 } else { 32 << 10 },
        direct_io: true,
        max_flushes_in_flight: 2 + (k % 3) as usize * 3, // 2, 5, 8
        sync_mode: if k.is_multiple_of(5) {
            SyncMode::Sync
        } else {
            SyncMode::Group {
                max_delay_us: 0,
                max_batch_bytes: 1 << 20,
            }
        },
        preallocate: !k.is_multiple_of(3),
        prepare_ahead: k.is_multiple_of(4),
        ..WalConfig::default()
    }
}

/// Every record appended (with its LSN) and every one acknowledged durable.
#[derive(Default)]
struct Seen {
    appended: Vec<(Lsn, Vec<u8>)>,
    acked: Vec<Lsn>,
}

/// `THREADS` committers append and wait, each until its first failure (the crash).
fn commit_concurrently(wal: &Arc<WalManager>) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(wal);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                for i in 0..COMMITS {
                    // Mostly small records, sometimes one of several blocks.
                    let len = if (t + i) % 7 == 0 {
                        5000
                    } else {
                        3 + usize::from(i % 5) * 40
                    };
                    let mut payload = vec![t ^ i; len];
                    payload[0] = t;
                    payload[1] = i;
                    let Ok(lsn) = wal.append(&payload) else { break };
                    seen.lock().appended.push((lsn, payload));
                    if wal.wait_durable(lsn).is_err() {
                        break;
                    }
                    seen.lock().acked.push(lsn);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut seen = std::mem::take(&mut *seen.lock());
    seen.appended.sort_by_key(|r| r.0);
    seen
}

/// One crash point; returns whether the crash fired during the workload, and whether it found
/// two or more writes in flight.
fn crash_point(k: u64, ops: u64) -> (bool, bool) {
    let fs = MemFs::new(k);
    fs.set_write_latency(Duration::from_micros(20));
    let factory = mem_factory(&fs);
    let cfg = config(k);
    let dir = Path::new(DIR);
    fs.crash_after_ops(1 + k % ops, CrashOptions { tear: tear(k) });
    let crashed = Arc::new(
        WalManager::open(dir, cfg.clone(), factory.clone())
            .expect("first open")
            .0,
    );
    let seen = commit_concurrently(&crashed);
    let fired = fs.crash_count() == 1;
    let several = fs.crashes_with_writes_in_flight() == 1;
    if !fired {
        fs.crash_after_ops(0, CrashOptions::default());
        fs.crash(CrashOptions { tear: tear(k) });
    }
    // The process died: its backends belong to the epoch before the crash, so everything this
    // WAL does on its way down (a close, a last flush) fails and changes nothing durable. It is
    // dropped rather than leaked, or 10,000 crash points hold ~2 MB each until the test ends.
    drop(crashed);
    fs.set_write_latency(Duration::ZERO);
    let (wal, next) = WalManager::open(dir, cfg.clone(), factory.clone()).expect("recovery");
    let got = read_all(&wal);
    let ctx = format!("crash point {k} (crash at op {} of ~{ops})", 1 + k % ops);
    assert_eq!(
        got[..],
        seen.appended[..got.len().min(seen.appended.len())],
        "{ctx}: the recovered log is not a prefix of what was appended"
    );
    assert!(
        got.len() <= seen.appended.len(),
        "{ctx}: records never appended came back"
    );
    if let Some(newest_acked) = seen.acked.iter().max() {
        assert!(
            got.last().is_some_and(|(lsn, _)| lsn >= newest_acked),
            "{ctx}: acknowledged record at {newest_acked} lost (log ends at {:?}); {:?}",
            got.last().map(|r| r.0),
            wal.recovery_report()
        );
    }
    assert!(
        got.last().is_none_or(|(lsn, _)| *lsn < next),
        "{ctx}: next lsn inside the log"
    );
    drop(wal);
    let (wal, next_again) = WalManager::open(dir, cfg.clone(), factory.clone()).expect("second recovery");
    assert_eq!(next_again, next, "{ctx}: second recovery moved the end");
    assert_eq!(read_all(&wal), got, "{ctx}: second recovery differs");
    assert_eq!(
        wal.recovery_report().torn_tail_bytes,
        0,
        "{ctx}: the first recovery left torn bytes"
    );
    let lsn = wal.commit(b"after recovery").expect("commit after recovery");
    drop(wal);
    let (wal, _) = WalManager::open(dir, cfg, factory).expect("third open");
    let mut expect = got;
    expect.push((lsn, b"after recovery".to_vec()));
    assert_eq!(read_all(&wal), expect, "{ctx}: records after recovery");
    (fired, several)
}

#[test]
fn crash_at_ten_thousand_points_with_several_direct_flushes_in_flight_loses_no_acknowledged_record() {
    // A dry run sizes the range of crash points: the ops one workload makes.
    let dry = MemFs::new(0);
    dry.set_write_latency(Duration::from_micros(20));
    {
        let wal = Arc::new(WalManager::open(DIR, config(0), mem_factory(&dry)).unwrap().0);
        let seen = commit_concurrently(&wal);
        assert_eq!(seen.acked.len(), usize::from(THREADS) * usize::from(COMMITS));
        assert!(wal.stats().flushes > 0);
    }
    assert_eq!(dry.sync_count(), 0, "a direct log issued a datasync");
    let ops = dry.mutation_count();
    let points: u64 = std::env::var("STORAGE_IO_WAL_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (mut fired, mut several) = (0u64, 0u64);
    // Crash points run on a few threads at once: each has its own file system.
    let workers = 4;
    let results: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let (mut fired, mut several) = (0, 0);
                    for k in (w..points).step_by(workers as usize) {
                        let (f, s) = crash_point(k, ops);
                        fired += u64::from(f);
                        several += u64::from(s);
                    }
                    (fired, several)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (f, s) in results {
        fired += f;
        several += s;
    }
    eprintln!(
        "{points} crash points over ~{ops} ops; {fired} fired mid-workload; {several} with several writes in flight"
    );
    assert!(
        fired * 2 > points,
        "most crashes fire mid-workload: {fired} of {points}"
    );
    assert!(
        several * 10 > points,
        "the test lost its point: only {several} of {points} crashes found several writes in flight"
    );
}
