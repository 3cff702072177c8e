//! A sweep over valid configurations on MemIo (issue 37): segment sizes from 512 to 65536
//! (4096 and odd sizes among them), buffered and direct, 1, 2 and 8 flushes in flight, small
//! and large write chunks, preallocation and prepare-ahead on and off, every sync mode and
//! both recovery policies. For each one that `validate()` accepts: rounds of appends each
//! ended by `wait_durable`, then a clean close and reopen, then more rounds and a crash; every
//! acknowledged record must be back, in order, and the next LSN must not reuse an
//! acknowledged one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use storage_io_testkit::memio::{CrashOptions, MemFs};
use storage_io_wal::{Lsn, RecoveryPolicy, SyncMode, WalConfig, WalManager};

use common::{DIR, mem_factory, read_all, tear};

const SIZES: [u64; 7] = [512, 777, 4096, 5000, 8192, 12288, 65536];
const FLIGHTS: [usize; 3] = [1, 2, 8];

fn sync_modes() -> [SyncMode; 5] {
    [
        SyncMode::Sync,
        SyncMode::Group {
            max_delay_us: 0,
            max_batch_bytes: 1 << 20,
        },
        SyncMode::Group {
            max_delay_us: 20,
            max_batch_bytes: 600,
        },
        SyncMode::Async { interval_ms: 1 },
        SyncMode::None,
    ]
}

/// Every configuration of the sweep (valid or not: the sweep asks `validate()`). The four
/// on/off knobs and the chunk size rotate with the index, so that each combination of size,
/// mode, flights and sync mode meets two of their sixteen combinations, and every one of the
/// sixteen is met many times.
fn configs() -> Vec<WalConfig> {
    let mut out = Vec::new();
    let mut i = 0usize;
    for &segment_size_bytes in &SIZES {
        for direct_io in [false, true] {
            for &max_flushes_in_flight in &FLIGHTS {
                for sync_mode in sync_modes() {
                    for _ in 0..2 {
                        let bits = i * 7 % 16;
                        i += 1;
                        out.push(WalConfig {
                            segment_size_bytes,
                            direct_io,
                            max_flushes_in_flight,
                            sync_mode,
                            preallocate: bits & 1 != 0,
                            prepare_ahead: bits & 2 != 0,
                            write_chunk_bytes: if bits & 4 != 0 { 4096 } else { 1 << 20 },
                            recovery: if bits & 8 != 0 {
                                RecoveryPolicy::Strict
                            } else {
                                RecoveryPolicy::PointInTime
                            },
                            ..WalConfig::default()
                        });
                    }
                }
            }
        }
    }
    out
}

/// A payload for record `n`: mostly small, now and then up to the largest the segment takes.
fn payload(n: usize, max: u64) -> Vec<u8> {
    let len = match n % 7 {
        3 => max as usize,
        5 => (max / 2) as usize,
        _ => n * 13 % 90,
    };
    let mut p = vec![(n % 251) as u8; len];
    if let Some(first) = p.first_mut() {
        *first = (n % 256) as u8;
    }
    p
}

/// Rounds of 1 to 3 appends each ended by `wait_durable` of the last; returns the records
/// acknowledged.
fn rounds(wal: &WalManager, from: usize, count: usize, acked: &mut Vec<(Lsn, Vec<u8>)>) {
    let max = wal.max_record_bytes();
    let mut n = from;
    for round in 0..count {
        let mut batch = Vec::new();
        for _ in 0..1 + round % 3 {
            let p = payload(n, max);
            n += 1;
            batch.push((wal.append(&p).unwrap(), p));
        }
        let last = batch.last().unwrap().0;
        wal.wait_durable(last).unwrap();
        acked.extend(batch);
    }
}

fn check(wal: &WalManager, next: Lsn, acked: &[(Lsn, Vec<u8>)], what: &str, config: &WalConfig) {
    let got = read_all(wal);
    assert!(
        got.len() >= acked.len() && got[..acked.len()] == *acked,
        "{what}: {} of {} acknowledged records back (first lost: {:?}) with {config:?}",
        got.iter().zip(acked).take_while(|(a, b)| a == b).count(),
        acked.len(),
        acked
            .iter()
            .zip(got.iter().map(Some).chain(std::iter::repeat(None)))
            .find(|(a, g)| Some(*a) != *g)
            .map(|(a, _)| a.0),
    );
    if let Some((last, _)) = acked.last() {
        assert!(
            next > *last,
            "{what}: next lsn {next} reuses acknowledged {last} with {config:?}"
        );
    }
}

fn sweep_one(k: usize, config: &WalConfig) {
    let fs = MemFs::new(k as u64);
    let factory = mem_factory(&fs);
    let dir = Path::new(DIR);
    let mut acked = Vec::new();
    {
        let (wal, _) = WalManager::open(dir, config.clone(), factory.clone()).unwrap();
        rounds(&wal, 0, 12, &mut acked);
        wal.close().unwrap();
    }
    // A power cut does not keep what `SyncMode::None` wrote buffered: it promises a process
    // crash only. Its acknowledged records are checked after the clean close only.
    let survives_power_cut = config.sync_mode.syncs() || config.direct_io;
    {
        let (wal, next) = WalManager::open(dir, config.clone(), factory.clone()).unwrap();
        check(&wal, next, &acked, "after close and reopen", config);
        if !survives_power_cut {
            return;
        }
        rounds(&wal, 1000, 12, &mut acked);
        fs.crash(CrashOptions { tear: tear(k as u64) });
        // Everything after the crash fails: the manager's drop writes nothing more.
        drop(wal);
    }
    let (wal, next) = WalManager::open(dir, config.clone(), factory).unwrap();
    check(&wal, next, &acked, "after a crash", config);
    let report = wal.recovery_report();
    assert_eq!(
        (report.corruption_at, report.skipped_valid_records),
        (None, 0),
        "a crash left no damage to report, with {config:?}"
    );
}

#[test]
fn every_valid_config_keeps_acknowledged_records_across_close_and_crash() {
    let all = configs();
    let mut valid = 0;
    for (k, config) in all.iter().enumerate() {
        if config.validate().is_err() {
            continue;
        }
        valid += 1;
        sweep_one(k, config);
    }
    // Direct mode refuses sizes that are not whole 4 KiB blocks; everything else is valid.
    assert_eq!(valid, all.len() - 3 * FLIGHTS.len() * sync_modes().len() * 2);
}
