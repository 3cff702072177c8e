//! Crash tests of what an engine with its own recovery does: physical redo of logged page
//! images over pages the allocator freed since (`schedule_begin_redo`), and allocation changes
//! made durable at the next sync (`alloc_durability = next_sync`), with a crash at every op.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use storage_io_scheduler::{AllocDurability, DiskScheduler, PageId, SchedulerConfig, SchedulerError};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};

/// The engine's log of page images: (page, version), in log order.
const LOG: &[(u64, u32)] = &[
    (0, 1),
    (1, 1),
    (2, 1),
    (3, 1),
    (4, 1),
    (5, 1),
    (2, 2),
    (9, 1),
    (4, 2),
    (0, 3),
];

/// Before the crash: the engine allocates pages 0..6, writes what the log says (page 9 through
/// `schedule_allocate_at`), then frees pages 2, 4 and 9 without logging it, and the power fails.
fn run_before_the_crash(fs: &MemFs) {
    let sched = open(&mem_factory(fs), config(2));
    allocate(&sched, 6);
    assert!(sched.schedule_allocate_at(PageId(9)).recv().unwrap());
    for &(p, v) in LOG {
        sched
            .schedule_write_durable(PageId(p), page_bytes(PageId(p), v))
            .recv()
            .unwrap();
    }
    for p in [2, 4, 9] {
        sched.schedule_deallocate(PageId(p)).recv().unwrap();
    }
    drop(sched);
    fs.crash(CrashOptions::default());
}

/// Recovery: replays every logged image in a redo phase, then syncs and ends the redo.
/// Returns the first error (the crash).
fn redo(fs: &MemFs) -> Result<(), SchedulerError> {
    let sched = DiskScheduler::open(DIR, config(2), mem_factory(fs))?;
    sched.schedule_begin_redo().recv()?;
    for &(p, v) in LOG {
        sched.schedule_write(PageId(p), page_bytes(PageId(p), v)).recv()?;
    }
    sched.schedule_sync().recv()?;
    sched.schedule_end_redo().recv()?;
    sched.shutdown()
}

/// After a complete redo every logged page is allocated and holds its newest logged version.
fn check_redone(fs: &MemFs, point: &str) {
    let sched = DiskScheduler::open(DIR, config(2), mem_factory(fs))
        .unwrap_or_else(|e| panic!("{point}: reopen after the redo: {e}"));
    let newest: BTreeMap<u64, u32> = LOG.iter().copied().collect();
    for (&p, &v) in &newest {
        let got = sched.schedule_read(PageId(p)).recv();
        let got = got.unwrap_or_else(|e| panic!("{point}: page {p} after the redo: {e}"));
        assert_eq!(stamp(&got), (p, v), "{point}: page {p}");
    }
    // Pages the log never touched stay as they were: 6..9 were never allocated.
    for p in 6..9 {
        assert!(
            matches!(
                sched.schedule_read(PageId(p)).recv(),
                Err(SchedulerError::NotAllocated(_))
            ),
            "{point}: page {p}"
        );
    }
}

#[test]
fn without_a_redo_phase_replaying_a_freed_page_is_refused() {
    let fs = MemFs::new(1);
    run_before_the_crash(&fs);
    let sched = open(&mem_factory(&fs), config(2));
    let got = sched.schedule_write(PageId(2), page_bytes(PageId(2), 2)).recv();
    assert!(
        matches!(got, Err(SchedulerError::NotAllocated(PageId(2)))),
        "{got:?}"
    );
    // Reads in a redo see what the file holds, even for a freed page.
    sched.schedule_begin_redo().recv().unwrap();
    assert_eq!(stamp(&sched.schedule_read(PageId(2)).recv().unwrap()), (2, 2));
    sched.schedule_end_redo().recv().unwrap();
    assert!(matches!(
        sched.schedule_read(PageId(2)).recv(),
        Err(SchedulerError::NotAllocated(_))
    ));
}

#[test]
fn a_crash_at_every_op_of_a_physical_redo_is_recovered_by_redoing_it() {
    // How many mutating ops the redo takes.
    let dry = MemFs::new(0);
    run_before_the_crash(&dry);
    let start = dry.mutation_count();
    redo(&dry).unwrap();
    let total = dry.mutation_count() - start;
    check_redone(&dry, "no crash");
    assert!(total >= 8, "the redo is too small to be interesting: {total} ops");

    let mut points = 0;
    for seed in 0..6u64 {
        let tear = [TearMode::None, TearMode::Prefix, TearMode::AnySectors][seed as usize % 3];
        let options = CrashOptions { tear };
        for n in 1..=total + 1 {
            let point = format!("seed {seed}, crash at op {n} of {total} of the redo ({tear:?})");
            let fs = MemFs::new(seed * 1000 + n);
            run_before_the_crash(&fs);
            let crashes = fs.crash_count();
            fs.crash_after_ops(n, options);
            let first = redo(&fs);
            if fs.crash_count() == crashes {
                assert!(first.is_ok(), "{point}: {first:?}");
                fs.crash_after_ops(0, options);
            }
            fs.crash(options);
            // The engine runs its recovery again from the same log: it must go through.
            redo(&fs).unwrap_or_else(|e| panic!("{point}: the second redo failed: {e}"));
            fs.crash(options);
            check_redone(&fs, &point);
            points += 1;
        }
    }
    assert!(points >= 6 * total as usize);
}

const DEFERRED_WORKLOAD: &[Step] = &[
    Step::Allocate,
    Step::Allocate,
    Step::Allocate,
    Step::Allocate,
    Step::WriteDurable(0), // a durability point: 0..4 durable
    Step::WriteDurable(2),
    Step::WriteDurable(3), // old bytes that zero_on_reuse must hide
    Step::Deallocate(1),
    Step::Allocate, // 1 again, zeroed
    Step::Write(1),
    Step::Deallocate(2),
    Step::Sync,     // durability point
    Step::Allocate, // 2 again
    Step::Deallocate(3),
    Step::Allocate, // 3 again
    Step::Allocate, // 4
    Step::Deallocate(0),
    Step::WriteDurable(4), // durability point
    Step::Deallocate(4),
    Step::Allocate,
];

fn deferred_config() -> SchedulerConfig {
    SchedulerConfig {
        alloc_durability: AllocDurability::NextSync,
        zero_on_reuse: true,
        ..config(2)
    }
}

/// Allocation state: (next, free ids).
type State = (u64, BTreeSet<u64>);

/// Runs the workload until the first error; returns the allocation state as of the last
/// acknowledged durability point, the state after every acknowledged step, and which pages
/// were made durable with which version (as of that point) or written since.
fn run_deferred(sched: &DiskScheduler) -> (State, State, BTreeMap<u64, u32>, BTreeSet<u64>) {
    let mut now: State = (0, BTreeSet::new());
    let mut durable = now.clone();
    let mut durable_pages: BTreeMap<u64, u32> = BTreeMap::new();
    let mut written_since: BTreeMap<u64, u32> = BTreeMap::new();
    for (i, &step) in DEFERRED_WORKLOAD.iter().enumerate() {
        let version = i as u32 + 1;
        let ok = match step {
            Step::Allocate => sched.schedule_allocate().recv().map(|p| {
                let expect = now.1.first().copied().unwrap_or(now.0);
                assert_eq!(p.0, expect);
                if now.1.remove(&p.0) {
                    // Zeroed on reuse: its old bytes are gone (version 0 = zeros).
                    written_since.insert(p.0, 0);
                } else {
                    now.0 += 1;
                }
            }),
            Step::Deallocate(p) => sched.schedule_deallocate(PageId(p)).recv().map(|()| {
                now.1.insert(p);
            }),
            Step::Write(p) => sched
                .schedule_write(PageId(p), page_bytes(PageId(p), version))
                .recv()
                .map(|()| {
                    written_since.insert(p, version);
                }),
            Step::WriteDurable(p) => sched
                .schedule_write_durable(PageId(p), page_bytes(PageId(p), version))
                .recv()
                .map(|()| {
                    // Deferred: the allocation state is durable now, and this page; pages
                    // zeroed for reuse too (they are synced with the point).
                    durable = now.clone();
                    durable_pages.insert(p, version);
                    written_since.remove(&p);
                    for (q, v) in std::mem::take(&mut written_since) {
                        if v == 0 {
                            durable_pages.insert(q, 0);
                        } else {
                            written_since.insert(q, v);
                        }
                    }
                }),
            Step::Sync => sched.schedule_sync().recv().map(|()| {
                durable = now.clone();
                for (q, v) in std::mem::take(&mut written_since) {
                    durable_pages.insert(q, v);
                }
            }),
        };
        if ok.is_err() {
            break;
        }
    }
    (durable, now, durable_pages, written_since.into_keys().collect())
}

#[test]
fn deferred_allocation_changes_survive_a_crash_at_every_op_once_a_durability_point_covers_them() {
    let dry = MemFs::new(0);
    {
        let sched = DiskScheduler::open(DIR, deferred_config(), mem_factory(&dry)).unwrap();
        let (durable, now, _, _) = run_deferred(&sched);
        assert_eq!(durable.0, now.0);
    }
    let total = dry.mutation_count();
    let mut points = 0;
    for seed in 0..9u64 {
        let tear = [TearMode::None, TearMode::Prefix, TearMode::AnySectors][seed as usize % 3];
        let options = CrashOptions { tear };
        for n in 1..=total + 1 {
            let point = format!("seed {seed}, crash at op {n} of {total} ({tear:?})");
            let fs = MemFs::new(seed * 1000 + n);
            fs.crash_after_ops(n, options);
            let (durable, now, pages, pending) =
                match DiskScheduler::open(DIR, deferred_config(), mem_factory(&fs)) {
                    Ok(sched) => {
                        let r = run_deferred(&sched);
                        let _ = sched.shutdown();
                        r
                    }
                    Err(_) => Default::default(), // crashed while opening
                };
            if fs.crash_count() == 0 {
                fs.crash_after_ops(0, options);
                fs.crash(options);
            }
            let sched = DiskScheduler::open(DIR, deferred_config(), mem_factory(&fs))
                .unwrap_or_else(|e| panic!("{point}: reopen: {e}"));
            // An id allocated at the last durability point and still allocated by every step
            // acknowledged since is allocated after the crash, with the bytes made durable
            // (zeros for an id zeroed on reuse), unless it was written since.
            for p in 0..now.0.max(durable.0) + 1 {
                let allocated_at = |s: &State| p < s.0 && !s.1.contains(&p);
                if !(allocated_at(&durable) && allocated_at(&now)) {
                    continue;
                }
                let bytes = sched.schedule_read(PageId(p)).recv().unwrap_or_else(|e| {
                    panic!("{point}: page {p} was allocated at a durability point, lost: {e}")
                });
                if let Some(&v) = pages.get(&p)
                    && !pending.contains(&p)
                {
                    let have = if bytes.iter().all(|&b| b == 0) {
                        (0, 0)
                    } else {
                        stamp(&bytes)
                    };
                    let want = if v == 0 { (0, 0) } else { (p, v) };
                    assert_eq!(have, want, "{point}: page {p} lost its durable bytes");
                }
            }
            points += 1;
        }
    }
    assert!(points >= 9 * total as usize);
}
