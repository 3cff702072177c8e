//! Crash simulation on MemIo: a crash fires between any two backend ops of a seeded workload
//! (in the middle of a flush too), the last unsynced write is dropped or torn at 512-byte
//! sectors, and recovery must give back every acknowledged record, intact and in order, never a
//! record that fails its checksum, the same result when run twice, and a log that takes new
//! records after it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalManager};

use common::{DIR, mem_factory, read_all, tear};

#[derive(Debug, Clone)]
enum Op {
    Commit(Vec<u8>),
    Append(Vec<u8>),
    Flush,
}

fn workload(seed: u64, max_payload: usize) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.random_range(8..24);
    (0..n)
        .map(|i| {
            let len = if rng.random_bool(0.1) {
                rng.random_range(max_payload / 2..=max_payload)
            } else {
                rng.random_range(0..64)
            };
            let mut payload = vec![0u8; len];
            rng.fill(&mut payload[..]);
            if let Some(first) = payload.first_mut() {
                *first = i as u8;
            }
            match rng.random_range(0..100) {
                0..50 => Op::Commit(payload),
                50..85 => Op::Append(payload),
                _ => Op::Flush,
            }
        })
        .collect()
}

/// The log's configuration for a seed; `direct` writes with O_DIRECT | O_DSYNC (no datasync,
/// block-widened writes, which need segments of whole blocks).
fn config(seed: u64, direct: bool) -> WalConfig {
    WalConfig {
        segment_size_bytes: if direct { 8192 } else { 512 },
        direct_io: direct,
        sync_mode: if seed.is_multiple_of(2) {
            SyncMode::Sync
        } else {
            SyncMode::Group {
                max_delay_us: 0,
                max_batch_bytes: 1 << 20,
            }
        },
        preallocate: !seed.is_multiple_of(3),
        // The sweep crashes at every backend op of a dry run, so the ops must come in the same
        // order every run: no background preparer racing the writer. The concurrent test
        // below and tests/prepare.rs crash with it on.
        prepare_ahead: false,
        ..WalConfig::default()
    }
}

/// What the workload saw: every appended record (in LSN order) and how many of them are
/// acknowledged durable (a prefix, since the workload is single-threaded).
struct Outcome {
    appended: Vec<(Lsn, Vec<u8>)>,
    acked: usize,
}

fn run(wal: &WalManager, ops: &[Op]) -> Outcome {
    let mut out = Outcome {
        appended: Vec::new(),
        acked: 0,
    };
    for op in ops {
        let step = match op {
            // A commit whose flush fails is of unknown outcome: its record was appended and
            // may be durable, so it counts as appended, not acknowledged.
            Op::Commit(p) => wal.append(p).and_then(|lsn| {
                out.appended.push((lsn, p.clone()));
                wal.wait_durable(lsn).map(|()| out.acked = out.appended.len())
            }),
            Op::Append(p) => wal.append(p).map(|lsn| out.appended.push((lsn, p.clone()))),
            Op::Flush => wal.flush().map(|_| out.acked = out.appended.len()),
        };
        if step.is_err() {
            break;
        }
    }
    out
}

/// One crash point: returns true if the crash fired during the workload.
fn crash_point(seed: u64, ops: &[Op], k: u64, recovery_crash: Option<u64>, direct: bool) -> bool {
    let fs = MemFs::new(seed ^ k.rotate_left(17));
    let factory = mem_factory(&fs);
    let cfg = config(seed, direct);
    let dir = Path::new(DIR);
    fs.crash_after_ops(k, CrashOptions { tear: tear(k) });
    let outcome = {
        let (wal, _) = WalManager::open(dir, cfg.clone(), factory.clone()).expect("first open");
        run(&wal, ops)
    };
    let fired = fs.crash_count() == 1;
    if !fired {
        fs.crash_after_ops(0, CrashOptions::default());
        fs.crash(CrashOptions { tear: tear(k) });
    }
    // Optionally crash again in the middle of recovery itself.
    if let Some(j) = recovery_crash {
        fs.crash_after_ops(j, CrashOptions { tear: tear(j) });
        let _ = WalManager::open(dir, cfg.clone(), factory.clone()).map(|(w, _)| drop(w));
        fs.crash_after_ops(0, CrashOptions::default());
        fs.crash(CrashOptions::default());
    }

    let (wal, next) = WalManager::open(dir, cfg.clone(), factory.clone()).expect("recovery");
    let got = read_all(&wal);
    let ctx = format!("seed {seed} crash at op {k} (recovery crash {recovery_crash:?})");
    assert!(
        got.len() >= outcome.acked,
        "{ctx}: lost acknowledged records: {} < {}",
        got.len(),
        outcome.acked
    );
    assert!(
        got.len() <= outcome.appended.len(),
        "{ctx}: recovered records never appended: got {:?}, appended {:?}",
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        outcome.appended.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(
        got[..],
        outcome.appended[..got.len()],
        "{ctx}: recovered records differ"
    );
    assert!(
        got.last().is_none_or(|(lsn, _)| *lsn < next),
        "{ctx}: next lsn inside the log"
    );
    drop(wal);

    // Recovery again gives the same log, and the log takes new records after it.
    let (wal, next_again) = WalManager::open(dir, cfg.clone(), factory.clone()).expect("second recovery");
    assert_eq!(next_again, next, "{ctx}: second recovery moved the end");
    assert_eq!(read_all(&wal), got, "{ctx}: second recovery differs");
    let lsn = wal.commit(b"after recovery").expect("commit after recovery");
    drop(wal);
    let (wal, _) = WalManager::open(dir, cfg, factory).expect("third open");
    let mut expect = got;
    expect.push((lsn, b"after recovery".to_vec()));
    assert_eq!(read_all(&wal), expect, "{ctx}: records after recovery");
    fired
}

/// Runs seeded workloads with a crash at every backend op of each until `points` crash
/// points are done; returns `(points, workloads)`.
fn crash_everywhere(points: u64, direct: bool) -> (u64, u64) {
    let max_payload = config(0, direct).max_record_bytes() as usize;
    let mut done = 0u64;
    let mut seed = 0u64;
    while done < points {
        let ops = workload(seed, max_payload);
        // A dry run counts the workload's backend ops: each is a crash point.
        let fs = MemFs::new(seed);
        {
            let (wal, _) = WalManager::open(DIR, config(seed, direct), mem_factory(&fs)).unwrap();
            run(&wal, &ops);
        }
        if direct {
            assert_eq!(fs.sync_count(), 0, "seed {seed}: a direct log issued a datasync");
        }
        let total = fs.mutation_count();
        for k in 1..=total {
            let recovery_crash = k.is_multiple_of(7).then_some(1 + k % 3);
            assert!(
                crash_point(seed, &ops, k, recovery_crash, direct),
                "seed {seed}: crash at op {k} did not fire"
            );
            done += 1;
        }
        seed += 1;
    }
    (done, seed)
}

#[test]
fn crash_at_ten_thousand_points_loses_no_acknowledged_record() {
    let (points, workloads) = crash_everywhere(10_000, false);
    eprintln!("crash points: {points} over {workloads} workloads");
}

/// Direct mode: every write is durable when it completes and a flush that starts inside a block
/// rewrites the block's earlier (acknowledged) bytes. A crash that fires on such a write keeps a
/// torn set of its sectors (MemIo's model of an interrupted O_DSYNC write); the rewritten bytes
/// must survive it.
#[test]
fn crash_with_direct_dsync_writes_loses_no_acknowledged_record() {
    let (points, workloads) = crash_everywhere(3_000, true);
    eprintln!("direct crash points: {points} over {workloads} workloads");
}

#[test]
fn crash_during_concurrent_group_commit_keeps_every_acknowledged_record() {
    for k in (3..400).step_by(7) {
        let fs = MemFs::new(k);
        let factory = mem_factory(&fs);
        let cfg = WalConfig {
            segment_size_bytes: 1024,
            ..WalConfig::default()
        };
        fs.crash_after_ops(
            k,
            CrashOptions {
                tear: TearMode::AnySectors,
            },
        );
        let acked: Vec<(Lsn, Vec<u8>)> = {
            let wal = Arc::new(WalManager::open(DIR, cfg.clone(), factory.clone()).unwrap().0);
            let threads: Vec<_> = (0..4u8)
                .map(|t| {
                    let wal = Arc::clone(&wal);
                    std::thread::spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..50u8 {
                            let payload = vec![t, i, t ^ i];
                            match wal.commit(&payload) {
                                Ok(lsn) => mine.push((lsn, payload)),
                                Err(_) => break,
                            }
                        }
                        mine
                    })
                })
                .collect();
            threads.into_iter().flat_map(|h| h.join().unwrap()).collect()
        };
        fs.crash_after_ops(0, CrashOptions::default());
        if fs.crash_count() == 0 {
            fs.crash(CrashOptions::default());
        }
        let (wal, _) = WalManager::open(DIR, cfg, factory).unwrap();
        let got = read_all(&wal);
        for rec in &acked {
            assert!(
                got.contains(rec),
                "crash at {k}: acknowledged record at {} lost",
                rec.0
            );
        }
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "crash at {k}: records out of order"
        );
        assert!(
            got.iter().all(|(_, p)| p.len() == 3 && p[2] == p[0] ^ p[1]),
            "crash at {k}: garbage record"
        );
    }
}

/// Commits that fill several segments; returns the LSNs acknowledged durable before a failure.
fn commit_until_failure(wal: &WalManager, records: usize) -> Vec<Lsn> {
    let mut acked = Vec::new();
    for i in 0..records {
        match wal.commit(&[i as u8; 100]) {
            Ok(lsn) => acked.push(lsn),
            Err(_) => break,
        }
    }
    acked
}

/// LSNs never go backwards, whatever sequence of crashes and truncations: a crash at every op
/// of a workload that fills segments, recovery, `truncate_before(durable_lsn)`, another crash
/// (before any flush), recovery again. A recovery that ends exactly at a segment boundary (the
/// last segment closed, the next not created yet) is among them; truncating everything there
/// must not restart the log at segment 0. `first_lsn` never moves backwards either.
#[test]
fn lsns_never_go_backwards_across_truncations_and_crashes() {
    for direct in [false, true] {
        let cfg = WalConfig {
            preallocate: false,
            ..config(0, direct)
        };
        let records = if direct { 200 } else { 16 };
        let dry = MemFs::new(0);
        {
            let (wal, _) = WalManager::open(DIR, cfg.clone(), mem_factory(&dry)).unwrap();
            commit_until_failure(&wal, records);
        }
        let total = dry.mutation_count();
        let mut boundaries = 0;
        for k in 1..=total {
            let ctx = format!("direct {direct}, crash at op {k} of {total}");
            let fs = MemFs::new(k);
            let factory = mem_factory(&fs);
            fs.crash_after_ops(k, CrashOptions { tear: tear(k) });
            let acked = {
                let (wal, _) = WalManager::open(DIR, cfg.clone(), factory.clone()).unwrap();
                commit_until_failure(&wal, records)
            };
            fs.crash_after_ops(0, CrashOptions::default());
            if fs.crash_count() == 0 {
                fs.crash(CrashOptions::default());
            }
            let (wal, next) = WalManager::open(DIR, cfg.clone(), factory.clone()).unwrap();
            assert!(
                acked.last().is_none_or(|&l| l < next),
                "{ctx}: recovery put the next lsn {next} at or before an acknowledged record"
            );
            let durable = wal.durable_lsn();
            if durable.0.is_multiple_of(cfg.segment_size_bytes) && durable.0 > 0 {
                boundaries += 1;
            }
            let first = wal.first_lsn();
            if durable >= first {
                wal.truncate_before(durable)
                    .unwrap_or_else(|e| panic!("{ctx}: truncate_before(durable {durable}): {e}"));
            }
            let truncated_first = wal.first_lsn();
            assert!(
                truncated_first >= first,
                "{ctx}: truncation moved first_lsn backwards"
            );
            std::mem::forget(wal); // a crash, not a clean close
            fs.crash(CrashOptions::default());
            let (wal, next_again) = WalManager::open(DIR, cfg.clone(), factory).unwrap();
            assert!(
                next_again >= next,
                "{ctx}: lsns went backwards: {next} before the truncation and crash, {next_again} after"
            );
            assert!(
                wal.first_lsn() >= truncated_first,
                "{ctx}: first_lsn went backwards across the crash: {truncated_first} -> {}",
                wal.first_lsn()
            );
            let lsn = wal.commit(b"after").unwrap();
            assert!(lsn >= next, "{ctx}: a new record reused lsn {lsn}");
        }
        assert!(
            boundaries > 0,
            "direct {direct}: no crash point recovered to a segment boundary; the test lost its point"
        );
    }
}
