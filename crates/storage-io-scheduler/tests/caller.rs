//! `read_blocking`: reads on the caller's own thread, with the scheduler's checks, order and
//! single flight.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use common::*;
use storage_io_core::OpKind;
use storage_io_scheduler::{DiskScheduler, PageId, SchedulerConfig, SchedulerError};
use storage_io_testkit::gated::Gate;
use storage_io_testkit::memio::MemFs;

/// Starts `read_blocking(page)` on a thread of its own and returns once its read is submitted
/// (held there while `gate` is closed).
fn held_caller_read(
    gate: &Gate,
    sched: &Arc<DiskScheduler>,
    page: PageId,
) -> std::thread::JoinHandle<storage_io_scheduler::Result<bytes::Bytes>> {
    let submitted = gate.submitted();
    let reader = {
        let sched = Arc::clone(sched);
        std::thread::spawn(move || sched.read_blocking(page))
    };
    wait_until("the caller's read to be submitted", || {
        gate.submitted() > submitted
    });
    reader
}

#[test]
fn a_blocking_read_runs_on_the_caller_and_reads_of_the_page_meanwhile_join_it() {
    let (gate, sched) = open_gated(21, 2);
    let sched = Arc::new(sched);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 4)).recv().unwrap();
    let before = sched.stats();

    gate.close();
    let reader = held_caller_read(&gate, &sched, page);
    let joined: Vec<_> = (0..3).map(|_| sched.schedule_read_shared(page)).collect();
    let owned = sched.schedule_read(page);
    assert_eq!(sched.stats().reads_joined - before.reads_joined, 4);
    assert!(!reader.is_finished(), "answered while its completion was held");
    gate.open();

    let mine = reader.join().unwrap().unwrap();
    assert_eq!(stamp(&mine), (page.0, 4));
    for r in joined {
        let got = r.recv().unwrap();
        assert_eq!(
            got.as_ptr(),
            mine.as_ptr(),
            "joined readers share the caller's buffer"
        );
    }
    assert_eq!(stamp(&owned.recv().unwrap()), (page.0, 4));
    let after = sched.stats();
    assert_eq!(after.caller_reads - before.caller_reads, 1);
    assert_eq!(after.read_ios - before.read_ios, 1, "five reads, one I/O");
}

#[test]
fn a_blocking_read_after_a_write_in_flight_sees_the_write() {
    let fs = MemFs::new(22);
    let gate = Gate::new();
    gate.open();
    let sched = open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), config(1));
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 1)).recv().unwrap();
    let before = sched.stats();

    gate.close(); // the next write stays in flight
    let write = sched.schedule_write(page, page_bytes(page, 2));
    assert_eq!(stamp(&sched.read_blocking(page).unwrap()), (page.0, 2));
    let after = sched.stats();
    assert_eq!(after.caller_reads, before.caller_reads, "the worker answered it");
    assert_eq!(
        after.reads_from_pending_writes - before.reads_from_pending_writes,
        1
    );
    gate.open();
    write.recv().unwrap();
    assert_eq!(stamp(&sched.read_blocking(page).unwrap()), (page.0, 2));
    assert_eq!(sched.stats().caller_reads, before.caller_reads + 1);
}

#[test]
fn a_read_scheduled_after_a_write_never_joins_an_older_blocking_read() {
    let (gate, sched) = open_gated(23, 1);
    let sched = Arc::new(sched);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 1)).recv().unwrap();

    gate.close();
    let reader = held_caller_read(&gate, &sched, page);
    let before = sched.stats();
    sched.schedule_write(page, page_bytes(page, 2)).recv().unwrap();
    let newer = sched.schedule_read_shared(page);
    assert_eq!(sched.stats().reads_joined, before.reads_joined);
    gate.open();
    assert_eq!(stamp(&newer.recv().unwrap()), (page.0, 2));
    reader.join().unwrap().unwrap();
}

#[test]
fn blocking_reads_keep_the_scheduler_s_answers_for_bad_pages_and_after_shutdown() {
    let fs = MemFs::new(24);
    let sched = open(&mem_factory(&fs), config(1));
    match sched.read_blocking(PageId(3)) {
        Err(SchedulerError::NotAllocated(PageId(3))) => {}
        other => panic!("expected NotAllocated, got {other:?}"),
    }
    let page = allocate(&sched, 1)[0];
    assert!(sched.read_blocking(page).unwrap().iter().all(|&b| b == 0));
    sched.shutdown().unwrap();
    assert!(matches!(sched.read_blocking(page), Err(SchedulerError::Closed)));
}

#[test]
fn with_no_caller_backends_blocking_reads_go_through_the_workers() {
    let fs = MemFs::new(25);
    let config = SchedulerConfig {
        caller_backends: 0,
        ..config(1)
    };
    let sched = open(&mem_factory(&fs), config);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 6)).recv().unwrap();
    assert_eq!(stamp(&sched.read_blocking(page).unwrap()), (page.0, 6));
    assert_eq!(sched.stats().caller_reads, 0);
    assert_eq!(sched.stats().read_ios, 1);
}

/// Many threads read on their own threads while a writer overwrites pages: a read that starts
/// after a write was scheduled (even one not answered yet) sees that write or a newer one.
#[test]
fn order_blocking_readers_never_see_a_page_older_than_a_write_already_scheduled() {
    const PAGES: usize = 16;
    let fs = MemFs::new(26);
    let config = SchedulerConfig {
        caller_backends: 4, // fewer than the readers: some reads go through the workers
        ..config(2)
    };
    let sched = Arc::new(open(&mem_factory(&fs), config));
    let pages = allocate(&sched, PAGES);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 0)).recv().unwrap();
    }
    let scheduled: Arc<Vec<AtomicU32>> = Arc::new((0..PAGES).map(|_| AtomicU32::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..6u64)
        .map(|t| {
            let (sched, scheduled, stop, pages) = (
                Arc::clone(&sched),
                Arc::clone(&scheduled),
                Arc::clone(&stop),
                pages.clone(),
            );
            std::thread::spawn(move || {
                let mut x = t * 7 + 1;
                let mut reads = 0u64;
                while !stop.load(Ordering::Acquire) || reads < 50 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (x >> 33) as usize % PAGES;
                    let floor = scheduled[i].load(Ordering::Acquire);
                    let (page, version) = stamp(&sched.read_blocking(pages[i]).unwrap());
                    assert_eq!(page, pages[i].0);
                    assert!(
                        version >= floor,
                        "read version {version} after {floor} was scheduled"
                    );
                    reads += 1;
                }
            })
        })
        .collect();
    // Up to 8 writes in flight at a time, each published as soon as it is scheduled.
    let mut in_flight = std::collections::VecDeque::new();
    for v in 1..=2000u32 {
        let i = (v as usize * 5) % PAGES;
        in_flight.push_back(sched.schedule_write(pages[i], page_bytes(pages[i], v)));
        scheduled[i].store(v, Ordering::Release);
        if in_flight.len() == 8 {
            in_flight.pop_front().unwrap().recv().unwrap();
        }
    }
    for w in in_flight {
        w.recv().unwrap();
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    let stats = sched.stats();
    assert!(stats.caller_reads > 0, "some reads ran on their callers");
}

#[test]
fn shutdown_with_a_blocking_read_in_flight_still_answers_the_reads_that_joined_it() {
    let (gate, sched) = open_gated(27, 1);
    let sched = Arc::new(sched);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 8)).recv().unwrap();

    gate.close();
    let reader = held_caller_read(&gate, &sched, page);
    let joined = sched.schedule_read_shared(page);
    // Shutdown waits for the caller read (the read that joined it is accepted work).
    let closer = {
        let sched = Arc::clone(&sched);
        std::thread::spawn(move || sched.shutdown())
    };
    gate.open();
    closer.join().unwrap().unwrap();
    assert_eq!(stamp(&reader.join().unwrap().unwrap()), (page.0, 8));
    assert_eq!(
        stamp(&joined.recv().unwrap()),
        (page.0, 8),
        "accepted before shutdown"
    );
}

#[test]
fn a_failed_blocking_read_gives_its_error_to_the_reads_that_joined_it() {
    use storage_io_core::{BackendFactory, StorageIo};
    use storage_io_testkit::faulty::{Fault, FaultPlan, FaultyIo};
    use storage_io_testkit::gated::GatedIo;
    let fs = MemFs::new(28);
    let gate = Gate::new();
    gate.open();
    // The workers read fine; the caller backends' reads fail with EIO, held at the gate.
    let callers: BackendFactory = {
        let (fs, gate) = (fs.clone(), gate.clone());
        Arc::new(move |_| {
            let faulty = FaultyIo::new(
                fs.backend(),
                FaultPlan::new(1).fail_from_nth(OpKind::Read, 0, Fault::Eio),
            );
            Ok(Box::new(GatedIo::new(faulty, gate.clone(), &[OpKind::Read])) as Box<dyn StorageIo>)
        })
    };
    let sched = Arc::new(
        DiskScheduler::open_with_caller_backends(DIR, config(1), mem_factory(&fs), callers).unwrap(),
    );
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 1)).recv().unwrap();

    gate.close();
    let reader = held_caller_read(&gate, &sched, page);
    let joined = sched.schedule_read_shared(page);
    gate.open();
    let is_eio = |r: storage_io_scheduler::Result<bytes::Bytes>| matches!(r, Err(SchedulerError::Io { page: p, .. }) if p == page);
    assert!(is_eio(reader.join().unwrap()), "the caller gets its read's error");
    assert!(is_eio(joined.recv()), "and so does the read that joined it");
    // The page is open again: a later read through a worker succeeds.
    assert_eq!(
        stamp(&sched.schedule_read_shared(page).recv().unwrap()),
        (page.0, 1)
    );
}
