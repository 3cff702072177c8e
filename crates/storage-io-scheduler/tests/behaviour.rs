//! Behaviour of the scheduler on in-memory backends: ordered batches under reordering, single
//! flight, read-your-writes, shutdown under load, faults, read streams.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use storage_io_core::OpKind;
use storage_io_scheduler::{DiskScheduler, PageId, Reply, SchedulerConfig, SchedulerError};
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::memio::MemFs;

#[test]
fn order_of_batch_reads_survives_reordered_and_delayed_completions() {
    let fs = MemFs::new(1);
    let plan =
        FaultPlan::new(9)
            .reorder(true)
            .with_probability(Some(OpKind::Read), 0.3, Fault::Delay { polls: 3 });
    let sched = open(&faulty_factory(&fs, plan), config(3));
    let pages = allocate(&sched, 64);
    let writes: Vec<Reply<()>> = pages
        .iter()
        .map(|&p| sched.schedule_write(p, page_bytes(p, 1)))
        .collect();
    for w in writes {
        w.recv().unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(5);
    for round in 0..50 {
        // Random order, some duplicates, runs of adjacent pages that merge.
        let mut want: Vec<PageId> = pages.clone();
        want.shuffle(&mut rng);
        want.truncate(rng.random_range(1..=64));
        if round % 3 == 0 {
            let start = rng.random_range(0..60);
            want.extend((start..start + 4).map(PageId));
            want.push(want[0]);
        }
        let got = sched.schedule_read_pages(want.clone()).recv().unwrap();
        let stamps: Vec<u64> = got.iter().map(|p| stamp(p).0).collect();
        assert_eq!(
            stamps,
            want.iter().map(|p| p.0).collect::<Vec<_>>(),
            "round {round}"
        );
    }
    let stats = sched.stats();
    assert!(
        stats.read_ios < stats.pages_read,
        "adjacent pages were never merged: {stats:?}"
    );
    assert!(sched.schedule_read_pages(Vec::new()).recv().unwrap().is_empty());
}

#[test]
fn single_flight_concurrent_reads_of_one_page_share_one_io() {
    let (gate, sched) = open_gated(2, 1);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 7)).recv().unwrap();
    let before = sched.stats();

    gate.close(); // reads now stay in flight until the gate opens
    let first = sched.schedule_read(page);
    let others: Vec<_> = (0..7).map(|_| sched.schedule_read(page)).collect();
    let batch = sched.schedule_read_pages(vec![page, page]);
    wait_until("the other reads to join", || {
        sched.stats().reads_joined - before.reads_joined == 9
    });
    assert!(
        first.try_recv().is_none(),
        "the read was answered while its completion was held"
    );
    gate.open();

    assert_eq!(stamp(&first.recv().unwrap()), (page.0, 7));
    for r in others {
        assert_eq!(stamp(&r.recv().unwrap()), (page.0, 7));
    }
    assert_eq!(batch.recv().unwrap().len(), 2);
    assert_eq!(
        sched.stats().read_ios - before.read_ios,
        1,
        "ten reads of one page cost one I/O"
    );
}

#[test]
fn single_flight_never_joins_a_read_issued_before_a_newer_write() {
    let (gate, sched) = open_gated(3, 1);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 1)).recv().unwrap();

    gate.close();
    let old = sched.schedule_read(page);
    let write = sched.schedule_write(page, page_bytes(page, 2));
    let new = sched.schedule_read(page);
    write.recv().unwrap();
    let new_after_write = sched.schedule_read(page);
    gate.open();

    assert_eq!(
        stamp(&old.recv().unwrap()),
        (page.0, 1),
        "a read accepted before the write"
    );
    assert_eq!(
        stamp(&new.recv().unwrap()),
        (page.0, 2),
        "a read accepted after the write"
    );
    assert_eq!(stamp(&new_after_write.recv().unwrap()), (page.0, 2));
}

#[test]
fn order_read_your_writes_with_delayed_writes_in_flight() {
    let fs = MemFs::new(4);
    let plan =
        FaultPlan::new(4)
            .reorder(true)
            .with_probability(Some(OpKind::Write), 0.5, Fault::Delay { polls: 4 });
    let sched = open(&faulty_factory(&fs, plan), config(2));
    let pages = allocate(&sched, 8);
    let mut pending = Vec::new();
    for version in 1..=40u32 {
        for &p in &pages {
            // Not waiting for the write: the read right behind it must still see it.
            pending.push(sched.schedule_write(p, page_bytes(p, version)));
            let read = sched.schedule_read(p).recv().unwrap();
            assert_eq!(stamp(&read), (p.0, version));
        }
    }
    for w in pending {
        w.recv().unwrap();
    }
    // Writes to one page landed in order: the last one is on disk.
    sched.schedule_sync().recv().unwrap();
    sched.shutdown().unwrap();
    let sched = open(&mem_factory(&fs), config(2));
    for &p in &pages {
        assert_eq!(stamp(&sched.schedule_read(p).recv().unwrap()), (p.0, 40));
    }
}

#[test]
fn shutdown_under_load_answers_every_call_and_loses_no_acknowledged_write() {
    let fs = MemFs::new(5);
    let plan = FaultPlan::new(5).with_probability(None, 0.2, Fault::Delay { polls: 2 });
    let sched = Arc::new(open(&faulty_factory(&fs, plan), config(2)));
    let pages = allocate(&sched, 32);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sched = Arc::clone(&sched);
            let mine: Vec<PageId> = pages.iter().copied().skip(t).step_by(4).collect();
            std::thread::spawn(move || {
                // Keep issuing until the scheduler refuses; return the last acknowledged
                // version of each page.
                let mut acked = vec![0u32; mine.len()];
                let mut version = 0;
                loop {
                    version += 1;
                    let replies: Vec<_> = mine
                        .iter()
                        .map(|&p| sched.schedule_write(p, page_bytes(p, version)))
                        .collect();
                    let mut closed = false;
                    for (i, r) in replies.into_iter().enumerate() {
                        match r.recv() {
                            Ok(()) => acked[i] = version,
                            Err(SchedulerError::Closed) => closed = true,
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                    if closed {
                        return (mine, acked);
                    }
                }
            })
        })
        .collect();
    wait_until("some writes", || sched.stats().write_ios > 200);
    sched.shutdown().unwrap();
    assert!(matches!(
        sched.schedule_read(pages[0]).recv(),
        Err(SchedulerError::Closed)
    ));
    assert!(matches!(
        sched.schedule_allocate().recv(),
        Err(SchedulerError::Closed)
    ));
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let sched = open(&mem_factory(&fs), config(2));
    for (mine, acked) in results {
        for (p, v) in mine.into_iter().zip(acked) {
            let (_, on_disk) = stamp(&sched.schedule_read(p).recv().unwrap());
            assert!(
                on_disk >= v,
                "page {p}: acknowledged version {v}, found {on_disk}"
            );
        }
    }
}

#[test]
fn shutdown_by_drop_with_ops_in_flight_answers_them_all() {
    let fs = MemFs::new(6);
    let plan = FaultPlan::new(6).with_probability(None, 0.5, Fault::Delay { polls: 5 });
    let sched = open(&faulty_factory(&fs, plan), config(2));
    let pages = allocate(&sched, 16);
    let writes: Vec<_> = pages
        .iter()
        .map(|&p| sched.schedule_write(p, page_bytes(p, 1)))
        .collect();
    let reads: Vec<_> = pages.iter().map(|&p| sched.schedule_read(p)).collect();
    let batch = sched.schedule_read_pages(pages.clone());
    let sync = sched.schedule_sync();
    drop(sched);
    for w in writes {
        w.recv().unwrap();
    }
    for (r, p) in reads.into_iter().zip(&pages) {
        assert_eq!(stamp(&r.recv().unwrap()), (p.0, 1));
    }
    assert_eq!(batch.recv().unwrap().len(), 16);
    sync.recv().unwrap();
}

#[test]
fn faults_eio_on_one_page_of_a_batch_reaches_that_caller_and_the_scheduler_goes_on() {
    let fs = MemFs::new(7);
    let sched = open(&mem_factory(&fs), config(1));
    let pages = allocate(&sched, 40);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 1)).recv().unwrap();
    }
    sched.shutdown().unwrap();
    drop(sched);

    // Opening reads the two allocation images (reads 1 and 2). With 1 worker and extents of 4
    // pages, pages 0, 10, 20, 30 are four separate reads in page order: the 5th is page 20.
    let plan = FaultPlan::new(7).fail_nth(OpKind::Read, 5, Fault::Eio);
    let sched = open(&faulty_factory(&fs, plan), config(1));
    let want = vec![PageId(30), PageId(0), PageId(20), PageId(10)];
    match sched.schedule_read_pages(want.clone()).recv() {
        Err(
            e @ SchedulerError::Batch {
                index: 2,
                page: PageId(20),
                ..
            },
        ) => {
            assert_eq!(e.errno(), Some(5), "{e}");
            assert!(e.to_string().contains("page 20"), "{e}");
        }
        other => panic!("expected EIO at index 2 (page 20), got {other:?}"),
    }
    // The scheduler keeps working, and the same pages read fine now.
    let got = sched.schedule_read_pages(want.clone()).recv().unwrap();
    assert_eq!(
        got.iter().map(|p| stamp(p).0).collect::<Vec<_>>(),
        vec![30, 0, 20, 10]
    );
}

#[test]
fn faults_failed_write_and_failed_fsync_reach_their_callers() {
    let fs = MemFs::new(8);
    let plan = FaultPlan::new(8)
        .fail_nth(OpKind::Write, 3, Fault::Eio) // 1 = initial alloc image, 2 = first allocate's image
        .fail_nth(OpKind::Datasync, 3, Fault::Enospc);
    let sched = open(&faulty_factory(&fs, plan), config(1));
    let page = allocate(&sched, 1)[0];
    let err = sched
        .schedule_write(page, page_bytes(page, 1))
        .recv()
        .unwrap_err();
    assert!(
        matches!(err, SchedulerError::Io { page: p, .. } if p == page),
        "{err}"
    );
    assert_eq!(err.errno(), Some(5));
    // A failed write is not served to readers afterwards: the old (zero) page is on disk.
    assert_eq!(sched.schedule_read(page).recv().unwrap()[..], [0u8; PAGE][..]);
    // Datasyncs so far: initial image, allocate image. The 3rd is this durable write's.
    sched.schedule_write(page, page_bytes(page, 2)).recv().unwrap();
    let err = sched
        .schedule_write_durable(page, page_bytes(page, 3))
        .recv()
        .unwrap_err();
    assert_eq!(err.errno(), Some(28), "{err}");
    sched
        .schedule_write_durable(page, page_bytes(page, 4))
        .recv()
        .unwrap();
    sched.schedule_sync().recv().unwrap();
}

#[test]
fn bad_input_gets_clear_errors() {
    let fs = MemFs::new(9);
    let sched = open(&mem_factory(&fs), config(2));
    let err = sched.schedule_read(PageId(3)).recv().unwrap_err();
    assert!(matches!(err, SchedulerError::NotAllocated(PageId(3))));
    assert!(err.to_string().contains("not allocated"), "{err}");
    let page = allocate(&sched, 1)[0];
    let err = sched
        .schedule_write(page, Bytes::from(vec![0u8; 100]))
        .recv()
        .unwrap_err();
    assert!(err.to_string().contains("100 bytes"), "{err}");
    assert!(matches!(
        sched.schedule_write(PageId(9), page_bytes(PageId(9), 1)).recv(),
        Err(SchedulerError::NotAllocated(PageId(9)))
    ));
    // A page allocated and never written reads as zeros.
    assert_eq!(sched.schedule_read(page).recv().unwrap()[..], [0u8; PAGE][..]);
    sched.schedule_deallocate(page).recv().unwrap();
    assert!(matches!(
        sched.schedule_read(page).recv(),
        Err(SchedulerError::NotAllocated(_))
    ));
    assert!(matches!(
        sched.schedule_deallocate(page).recv(),
        Err(SchedulerError::NotAllocated(_))
    ));
    match sched.schedule_read_pages(vec![PageId(0), PageId(5)]).recv() {
        Err(SchedulerError::Batch { index: 0, .. }) => {}
        other => panic!("expected a batch error at index 0, got {other:?}"),
    }
    let bad = SchedulerConfig {
        page_size: 1000,
        ..SchedulerConfig::default()
    };
    let err = DiskScheduler::open(DIR, bad, mem_factory(&fs)).unwrap_err();
    assert!(err.to_string().contains("page_size"), "{err}");
}

#[test]
fn reopen_with_a_different_page_size_is_refused_and_changes_nothing() {
    let fs = MemFs::new(10);
    let sched = open(&mem_factory(&fs), config(1));
    let page = allocate(&sched, 1)[0];
    sched
        .schedule_write_durable(page, page_bytes(page, 1))
        .recv()
        .unwrap();
    sched.shutdown().unwrap();
    drop(sched);
    let other = SchedulerConfig {
        page_size: 8192,
        ..config(1)
    };
    let err = DiskScheduler::open(DIR, other, mem_factory(&fs)).unwrap_err();
    assert!(err.to_string().contains("page_size = 4096"), "{err}");
    let sched = open(&mem_factory(&fs), config(1));
    assert_eq!(stamp(&sched.schedule_read(page).recv().unwrap()), (page.0, 1));
}

#[test]
fn read_stream_yields_pages_in_order_with_a_bounded_window() {
    let fs = MemFs::new(11);
    let plan =
        FaultPlan::new(11)
            .reorder(true)
            .with_probability(Some(OpKind::Read), 0.3, Fault::Delay { polls: 2 });
    let sched = open(&faulty_factory(&fs, plan), config(2));
    let pages = allocate(&sched, 100);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 3)).recv().unwrap();
    }
    let before = sched.stats();
    let mut stream = sched.read_stream(PageId(5)..PageId(95), 8);
    let mut seen = Vec::new();
    while let Some(item) = stream.next() {
        assert!(
            stream.in_flight_pages() <= 8,
            "window exceeded: {}",
            stream.in_flight_pages()
        );
        let (id, bytes) = item.unwrap();
        assert_eq!(stamp(&bytes), (id.0, 3));
        seen.push(id.0);
    }
    assert_eq!(seen, (5..95).collect::<Vec<_>>());
    let stats = sched.stats();
    assert!(
        stats.read_ios - before.read_ios <= 90 / 4 + 2,
        "runs of adjacent pages should be one read each: {} reads for 90 pages",
        stats.read_ios - before.read_ios
    );
    // An empty range yields nothing; a freed page in the middle ends the stream with an error.
    assert_eq!(sched.read_stream(PageId(3)..PageId(3), 4).count(), 0);
    sched.schedule_deallocate(PageId(50)).recv().unwrap();
    let items: Vec<_> = sched.read_stream(PageId(40)..PageId(60), 4).collect();
    // Runs are read whole (extents of 4): 40..48 arrive, the run 48..52 fails as one.
    assert!(items[..8].iter().all(|r| r.is_ok()));
    assert!(matches!(
        items.last(),
        Some(Err(SchedulerError::Batch { page: PageId(50), .. }))
    ));
    assert_eq!(items.len(), 9, "the stream ends at the error");
}

#[test]
fn read_stream_over_many_workers_merges_runs_within_extents() {
    let fs = MemFs::new(12);
    let sched = open(
        &mem_factory(&fs),
        SchedulerConfig {
            workers: 3,
            max_combine_pages: 8,
            ..SchedulerConfig::default()
        },
    );
    allocate(&sched, 64);
    let ids: Vec<u64> = sched
        .read_stream(PageId(0)..PageId(64), 64)
        .map(|r| r.unwrap().0.0)
        .collect();
    assert_eq!(ids, (0..64).collect::<Vec<_>>());
    assert_eq!(sched.stats().read_ios, 8, "64 pages in extents of 8 are 8 reads");
}

#[test]
fn recv_async_answers_from_a_plain_executor() {
    let fs = MemFs::new(13);
    let sched = open(&mem_factory(&fs), config(1));
    let reply = sched.schedule_allocate();
    // A minimal executor: poll with a no-op waker until ready (the answer arrives on its own).
    let mut fut = std::pin::pin!(reply.recv_async());
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let page = loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            break v.unwrap();
        }
        std::thread::yield_now();
    };
    assert_eq!(page, PageId(0));
}

#[test]
fn allocate_extent_hands_out_adjacent_new_pages_and_survives_reopen() {
    let fs = MemFs::new(14);
    let sched = open(&mem_factory(&fs), config(2));
    assert_eq!(
        sched.schedule_allocate_extent(10).recv().unwrap(),
        PageId(0)..PageId(10)
    );
    sched.schedule_deallocate(PageId(3)).recv().unwrap();
    assert_eq!(
        sched.schedule_allocate_extent(2).recv().unwrap(),
        PageId(10)..PageId(12)
    );
    assert_eq!(
        sched.schedule_allocate().recv().unwrap(),
        PageId(3),
        "single pages reuse the free list"
    );
    assert!(matches!(
        sched.schedule_allocate_extent(u64::MAX).recv(),
        Err(SchedulerError::OutOfPages)
    ));
    sched.shutdown().unwrap();
    drop(sched);
    let sched = open(&mem_factory(&fs), config(2));
    assert_eq!(sched.stats().allocated_pages, 12);
    assert_eq!(
        sched
            .schedule_read_pages((0..12).map(PageId).collect())
            .recv()
            .unwrap()
            .len(),
        12
    );
}

#[test]
fn tagged_reads_answer_once_each_on_the_callers_channel_in_completion_order() {
    let (gate, sched) = open_gated(21, 2);
    let pages = allocate(&sched, 16);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 5)).recv().unwrap();
    }
    let (done, answers) = flume::unbounded();
    gate.close();
    for (tag, &p) in pages.iter().enumerate() {
        sched.schedule_read_tagged(p, 100 + tag as u64, &done);
    }
    // A page never allocated, and a read of the same page twice (single flight): each call
    // still gets exactly one answer with its own tag.
    sched.schedule_read_tagged(PageId(9_999), 7, &done);
    sched.schedule_read_tagged(pages[3], 8, &done);
    let refused = answers.recv().unwrap();
    assert_eq!((refused.tag, refused.page), (7, PageId(9_999)));
    assert!(matches!(refused.result, Err(SchedulerError::NotAllocated(_))));
    assert!(answers.try_recv().is_err(), "reads are held at the gate");
    gate.open();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..17 {
        let r = answers.recv().unwrap();
        assert!(seen.insert(r.tag), "tag {} answered twice", r.tag);
        let want = if r.tag == 8 {
            pages[3]
        } else {
            pages[(r.tag - 100) as usize]
        };
        assert_eq!(r.page, want);
        assert_eq!(stamp(&r.result.unwrap()), (want.0, 5));
    }
    assert!(answers.try_recv().is_err(), "one answer per call");

    // After shutdown a tagged read is answered `Closed` at once.
    sched.shutdown().unwrap();
    sched.schedule_read_tagged(pages[0], 1, &done);
    assert!(matches!(
        answers.recv().unwrap().result,
        Err(SchedulerError::Closed)
    ));
}

#[test]
fn backend_held_time_counts_every_worker_and_is_complete_after_shutdown() {
    let fs = MemFs::new(6);
    let sched = open(&mem_factory(&fs), config(2));
    let pages = allocate(&sched, 16);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 1)).recv().unwrap();
    }
    let reads: Vec<_> = pages.iter().map(|&p| sched.schedule_read(p)).collect();
    for r in reads {
        r.recv().unwrap();
    }
    sched.shutdown().unwrap();
    let s = sched.stats();
    // Pages 0..16 in extents of 4 went to both workers, so both published their share.
    assert_eq!((s.read_ios, s.write_ios), (16, 16));
    // Every backend op is recorded as held for at least 1 ns.
    let ops = s.read_ios + s.write_ios + s.syncs + 2 * s.metadata_writes;
    assert!(
        s.backend_held_ns >= ops,
        "{} ns held for {ops} backend ops",
        s.backend_held_ns
    );
    assert_eq!(sched.stats(), s, "nothing changes after shutdown");
}

#[test]
fn order_a_read_sent_back_while_a_burst_is_answered_is_submitted_before_the_burst_ends() {
    // A device that returns the whole queue at once leaves the worker answering many reads in a
    // row. A caller that sends its next read after the first answer must not wait for the last:
    // the worker takes requests between completions, so the device gets new work at once.
    let (gate, sched) = open_gated(23, 1);
    let pages = allocate(&sched, 17);
    gate.close();
    // No room in the channel: each answer waits for this thread, so the burst is answered only
    // as fast as the test takes the answers.
    let (done, answers) = flume::bounded(0);
    let burst = 16u64;
    let before = gate.submitted();
    for (tag, &p) in pages[..burst as usize].iter().enumerate() {
        sched.schedule_read_tagged(p, tag as u64, &done);
    }
    wait_until("the burst to reach the backend", || {
        gate.submitted() == before + burst
    });
    gate.open();
    let mut taken = vec![answers.recv().unwrap()];
    let extra = sched.schedule_read(pages[burst as usize]);
    while gate.submitted() < before + burst + 1 && (taken.len() as u64) < burst {
        // Give the worker a moment to pick the new read up before taking the next answer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while gate.submitted() < before + burst + 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if gate.submitted() < before + burst + 1 {
            taken.push(answers.recv().unwrap());
        }
    }
    assert_eq!(
        gate.submitted(),
        before + burst + 1,
        "the new read was not submitted while the burst was being answered"
    );
    assert!(
        (taken.len() as u64) < burst,
        "the new read waited for the whole burst: {} of {burst} answers taken first",
        taken.len()
    );
    while (taken.len() as u64) < burst {
        taken.push(answers.recv().unwrap());
    }
    let mut tags: Vec<u64> = taken.iter().map(|r| r.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..burst).collect::<Vec<_>>(), "one answer per read");
    assert!(taken.into_iter().all(|r| r.result.is_ok()));
    assert_eq!(extra.recv().unwrap().len(), PAGE);
}
