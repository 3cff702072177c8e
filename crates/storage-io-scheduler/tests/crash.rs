//! Crash simulation on MemIo: a crash at every mutating op of a workload (and during open).
//! After each, the page file reopens, every acknowledged allocation and deallocation holds, and
//! every page made durable (a durable write or a sync) has its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use storage_io_core::OpKind;
use storage_io_scheduler::{DiskScheduler, PageId, SchedulerError};
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::gated::Gate;
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};

const WORKLOAD: &[Step] = &[
    Step::Allocate,
    Step::Allocate,
    Step::Allocate,
    Step::WriteDurable(0),
    Step::Write(1),
    Step::Allocate,
    Step::WriteDurable(2),
    Step::Sync,
    Step::Deallocate(1),
    Step::Write(3),
    Step::WriteDurable(0),
    Step::Allocate, // reuses 1
    Step::Deallocate(2),
    Step::Write(1),
    Step::Sync,
    Step::Allocate, // reuses 2
    Step::WriteDurable(2),
    Step::Deallocate(0),
];

/// What the acknowledged prefix of the workload guarantees.
#[derive(Debug, Clone, Default, PartialEq)]
struct Durable {
    next: u64,
    free: BTreeSet<u64>,
    /// Page -> (version durable, newest version written after it, if any).
    pages: HashMap<u64, (u32, Option<u32>)>,
}

impl Durable {
    fn allocated(&self, p: u64) -> bool {
        p < self.next && !self.free.contains(&p)
    }
}

/// Runs the workload until the first error (the crash); returns what was acknowledged and the
/// step that failed, if any.
fn run_workload(sched: &DiskScheduler) -> (Durable, Option<Step>) {
    let mut d = Durable::default();
    // Written but not yet covered by a sync: page -> version.
    let mut unsynced: HashMap<u64, u32> = HashMap::new();
    for (i, &step) in WORKLOAD.iter().enumerate() {
        let version = i as u32 + 1;
        let ok = match step {
            Step::Allocate => sched.schedule_allocate().recv().map(|p| {
                assert_eq!(p.0, d.free.first().copied().unwrap_or(d.next));
                if !d.free.remove(&p.0) {
                    d.next += 1;
                }
            }),
            Step::Deallocate(p) => sched.schedule_deallocate(PageId(p)).recv().map(|()| {
                d.free.insert(p);
            }),
            Step::Write(p) => sched
                .schedule_write(PageId(p), page_bytes(PageId(p), version))
                .recv()
                .map(|()| {
                    unsynced.insert(p, version);
                    d.pages.entry(p).or_insert((0, None)).1 = Some(version);
                }),
            Step::WriteDurable(p) => sched
                .schedule_write_durable(PageId(p), page_bytes(PageId(p), version))
                .recv()
                .map(|()| {
                    unsynced.remove(&p);
                    d.pages.insert(p, (version, None));
                }),
            Step::Sync => sched.schedule_sync().recv().map(|()| {
                for (p, v) in unsynced.drain() {
                    d.pages.insert(p, (v, None));
                }
            }),
        };
        if ok.is_err() {
            return (d, Some(step));
        }
    }
    (d, None)
}

fn check_after_crash(fs: &MemFs, d: &Durable, failed: Option<Step>, point: &str) {
    let sched = DiskScheduler::open(DIR, config(2), mem_factory(fs))
        .unwrap_or_else(|e| panic!("{point}: the page file must reopen after any crash: {e}"));
    for p in 0..d.next + 1 {
        // The step that failed may or may not have landed.
        let uncertain = matches!(failed, Some(Step::Deallocate(q)) if q == p)
            || (matches!(failed, Some(Step::Allocate)) && p == d.free.first().copied().unwrap_or(d.next));
        let got = sched.schedule_read(PageId(p)).recv();
        if uncertain {
            continue;
        }
        if !d.allocated(p) {
            assert!(
                matches!(got, Err(SchedulerError::NotAllocated(_))),
                "{point}: page {p} is not allocated after the acknowledged steps, got {got:?}"
            );
            continue;
        }
        let bytes = got.unwrap_or_else(|e| panic!("{point}: page {p} was allocated and acknowledged: {e}"));
        if let Some(&(version, later)) = d.pages.get(&p) {
            let pending =
                later.is_some() || matches!(failed, Some(Step::Write(q) | Step::WriteDurable(q)) if q == p);
            if !pending && version > 0 {
                assert_eq!(
                    stamp(&bytes),
                    (p, version),
                    "{point}: page {p} lost its durable bytes"
                );
            }
        }
    }
}

#[test]
fn crash_at_every_op_keeps_acknowledged_allocations_and_durable_pages() {
    // How many mutating ops the workload takes, opening included.
    let dry = MemFs::new(0);
    {
        let sched = DiskScheduler::open(DIR, config(2), mem_factory(&dry)).unwrap();
        let (_, failed) = run_workload(&sched);
        assert!(failed.is_none());
    }
    let total = dry.mutation_count();
    assert!(
        total > 20,
        "the workload is too small to be interesting: {total} ops"
    );

    let mut points = 0;
    for seed in 0..12u64 {
        let tear = [TearMode::None, TearMode::Prefix, TearMode::AnySectors][seed as usize % 3];
        let options = CrashOptions { tear };
        for n in 1..=total + 1 {
            let fs = MemFs::new(seed * 1000 + n);
            fs.crash_after_ops(n, options);
            let point = format!("seed {seed}, crash at op {n} of {total} ({tear:?})");
            let (d, failed) = match DiskScheduler::open(DIR, config(2), mem_factory(&fs)) {
                Ok(sched) => {
                    let r = run_workload(&sched);
                    let _ = sched.shutdown();
                    r
                }
                Err(_) => (Durable::default(), None), // crashed while opening
            };
            if fs.crash_count() == 0 {
                fs.crash_after_ops(0, options); // disarm, then crash at the end instead
                fs.crash(options);
            }
            check_after_crash(&fs, &d, failed, &point);
            points += 1;
        }
    }
    assert!(points >= 12 * total as usize);
}

/// Frees every other page of 100..612 in a 700-page extent, so that an allocation image holds 256 free ids
/// and spans several sectors (a crash can then tear it). Returns the scheduler's allocated count.
fn fragment(sched: &DiskScheduler) -> u64 {
    let extent = sched.schedule_allocate_extent(700).recv().unwrap();
    assert_eq!(extent, PageId(0)..PageId(700));
    // One at a time, so the number of images written is the same on every run.
    for i in 0..256 {
        sched.schedule_deallocate(PageId(2 * i + 100)).recv().unwrap();
    }
    sched.stats().allocated_pages
}

/// Sends a deallocation of `page` and waits until the dispatcher has handled it (so its image is
/// on its way to the worker), without waiting for the answer.
fn deallocate_queued(sched: &DiskScheduler, page: u64) -> storage_io_scheduler::Reply<()> {
    let before = sched.stats().allocated_pages;
    let reply = sched.schedule_deallocate(PageId(page));
    wait_until("the dispatcher to handle a deallocation", || {
        sched.stats().allocated_pages < before
    });
    reply
}

/// Several allocation images queued behind one in flight: the newest of them must not go into the
/// slot of the image in flight (the newest durable one once it completes), or a torn write of it
/// and a crash fall back two images and undo an acknowledged change.
#[test]
fn queued_allocation_images_never_overwrite_the_newest_durable_one() {
    for seed in 0..24u64 {
        let tear = [TearMode::Prefix, TearMode::AnySectors][seed as usize % 2];
        let fs = MemFs::new(seed);
        let gate = Gate::new();
        gate.open();
        let factory = gated_factory_for(&fs, &gate, &[OpKind::Datasync]);
        let sched = open(&factory, config(1));
        fragment(&sched);
        // Image N: written, its datasync done but the news of it held at the gate.
        gate.close();
        let synced = gate.submitted();
        let acked = sched.schedule_deallocate(PageId(1));
        wait_until("image N's datasync to reach the backend", || {
            gate.submitted() > synced
        });
        // Images N+1 and N+2 queue behind it.
        let later = [deallocate_queued(&sched, 3), deallocate_queued(&sched, 5)];
        // The next mutation is the write of the queued image; the crash fires at its datasync,
        // tearing that write.
        fs.crash_after_ops(2, CrashOptions { tear });
        gate.open();
        acked
            .recv()
            .unwrap_or_else(|e| panic!("seed {seed}: image N was durable before the crash: {e}"));
        for reply in later {
            let _ = reply.recv(); // the crash: may fail
        }
        drop(sched);
        assert_eq!(fs.crash_count(), 1, "seed {seed}: the crash must have fired");
        let sched = DiskScheduler::open(DIR, config(1), mem_factory(&fs))
            .unwrap_or_else(|e| panic!("seed {seed}: reopen after the crash: {e}"));
        let got = sched.schedule_read(PageId(1)).recv().map(|b| b.len());
        assert!(
            matches!(got, Err(SchedulerError::NotAllocated(PageId(1)))),
            "seed {seed} ({tear:?}): the acknowledged deallocation of page 1 was undone: {got:?}"
        );
        assert!(
            sched.schedule_read(PageId(511)).recv().is_ok(),
            "seed {seed}: the acknowledged extent was lost"
        );
    }
}

/// A failed image write leaves the newest durable image where it was, and no image follows it in
/// the same run: allocation is poisoned (later changes are refused, a clean shutdown writes no
/// last image), so a crash after it finds the newest durable image intact.
#[test]
fn an_image_after_a_failed_one_never_overwrites_the_newest_durable_one() {
    for seed in 0..24u64 {
        let tear = [TearMode::Prefix, TearMode::AnySectors][seed as usize % 2];
        let fs = MemFs::new(seed);
        // Worker 0's backend opens the scheduler (image 1), then writes image 2 (the extent)
        // and the 256 frees' images; the write of the image after those fails.
        let counting = MemFs::new(seed);
        let images = {
            let sched = open(&mem_factory(&counting), config(1));
            fragment(&sched);
            sched.stats().metadata_writes + 1 // + the image written at open
        };
        let plan = FaultPlan::new(seed).fail_nth(OpKind::Write, images + 1, Fault::Eio);
        let sched = open(&faulty_factory(&fs, plan), config(1));
        fragment(&sched);
        let failed = sched.schedule_deallocate(PageId(1)).recv();
        assert!(
            failed.is_err(),
            "seed {seed}: the injected write failure must be reported"
        );
        let writes = fs.mutation_count();
        let refused = sched.schedule_deallocate(PageId(3)).recv();
        assert!(
            matches!(refused, Err(SchedulerError::AllocationPoisoned { .. })),
            "seed {seed}: a change after a failed image must be refused: {refused:?}"
        );
        drop(sched);
        assert_eq!(
            fs.mutation_count(),
            writes,
            "seed {seed}: nothing is written after a failed image"
        );
        fs.crash(CrashOptions { tear });
        let sched = DiskScheduler::open(DIR, config(1), mem_factory(&fs))
            .unwrap_or_else(|e| panic!("seed {seed}: reopen after the crash: {e}"));
        // Page 1 is uncertain (its answer was an error).
        for p in (0..700).filter(|&p| p != 1) {
            let got = sched.schedule_read(PageId(p)).recv().map(|b| b.len());
            let acked_free = (100..612).contains(&p) && p % 2 == 0;
            assert_eq!(
                matches!(got, Err(SchedulerError::NotAllocated(_))),
                acked_free,
                "seed {seed} ({tear:?}): page {p} after the crash: {got:?}"
            );
        }
    }
}
