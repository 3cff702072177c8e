//! The scheduler on the io_uring backend, for what only a kernel-backed backend produces.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::*;
use storage_io_core::{BackendFactory, IoConfig, StorageIo};
use storage_io_scheduler::{DiskScheduler, PageId, SchedulerConfig};
use storage_io_uring::{UringStorageIo, usable_or_skip};

/// io_uring backends built with `config`, with reads always through the ring: the pages the
/// tests read were just written, and must not be answered from the page cache at submit.
fn uring_factory(config: IoConfig) -> BackendFactory {
    let config = IoConfig {
        nowait_reads: false,
        ..config
    };
    Arc::new(move |_| Ok(Box::new(UringStorageIo::new(&config)?) as Box<dyn StorageIo>))
}

#[test]
fn backend_submit_calls_of_the_workers_reach_the_scheduler_stats() {
    if !usable_or_skip("backend_submit_calls_of_the_workers_reach_the_scheduler_stats") {
        return;
    }
    let dir = real_dir("sched-uring");
    // submit_batch 1 (the default): a read is handed to the kernel by a submit-only system call
    // as soon as a second one is queued behind it.
    let factory = uring_factory(IoConfig {
        queue_depth: 32,
        submit_batch: 1,
        ..IoConfig::default()
    });
    let config = SchedulerConfig {
        workers: 1,
        // Allocation images made durable as they go: none is left for shutdown to write
        // between the two counts (`next_sync` writes one there).
        alloc_durability: storage_io_scheduler::AllocDurability::Immediate,
        ..SchedulerConfig::default()
    };
    let sched = DiskScheduler::open(dir.path(), config, factory).unwrap();
    let pages = allocate(&sched, 32);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 1)).recv().unwrap();
    }
    let before = sched.stats();
    // Every other page, so no two merge: one batch, 16 reads submitted in a row.
    let want: Vec<PageId> = pages.iter().step_by(2).copied().collect();
    let got = sched.schedule_read_pages(want.clone()).recv().unwrap();
    for (bytes, &p) in got.iter().zip(&want) {
        assert_eq!(stamp(bytes), (p.0, 1));
    }
    sched.shutdown().unwrap();
    let after = sched.stats();
    assert_eq!(after.read_ios - before.read_ios, 16);
    let calls = after.backend_submit_calls - before.backend_submit_calls;
    assert!(
        (1..=16).contains(&calls),
        "{calls} submit-only calls for 16 reads submitted in a row"
    );
    let ns = after.backend_submit_call_ns - before.backend_submit_call_ns;
    assert!(ns >= calls * 100, "{calls} system calls took only {ns} ns in all");
    assert_eq!(sched.stats(), after, "nothing changes after shutdown");
}

#[test]
fn shared_reads_lend_registered_buffers_up_to_the_queue_depth_and_get_them_back() {
    if !usable_or_skip("shared_reads_lend_registered_buffers_up_to_the_queue_depth_and_get_them_back") {
        return;
    }
    let dir = real_dir("sched-lend");
    const QD: usize = 8;
    let factory = uring_factory(IoConfig {
        queue_depth: 64,
        fixed_buffers: true,
        ..IoConfig::default()
    });
    let config = SchedulerConfig {
        workers: 1,
        queue_depth: QD,
        direct_io: true,
        ..SchedulerConfig::default()
    };
    let sched = DiskScheduler::open(dir.path(), config, factory).unwrap();
    let pages = allocate(&sched, 4 * QD);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 2)).recv().unwrap();
    }
    // Hold every page read, one at a time: the first QD land in lent buffers, the rest in
    // plain memory, and all read right.
    let mut held = Vec::new();
    for &p in &pages {
        let bytes = sched.schedule_read_shared(p).recv().unwrap();
        assert_eq!(stamp(&bytes), (p.0, 2));
        held.push(bytes);
    }
    let lent = sched.stats().lent_buffers;
    assert_eq!(
        lent, QD as u64,
        "the ring lends up to the queue depth while pages are held"
    );
    // An owned read copies out and gives its buffer back at once.
    let owned = sched.schedule_read(pages[0]).recv().unwrap();
    assert_eq!(stamp(&owned), (pages[0].0, 2));
    assert_eq!(sched.stats().lent_buffers, lent);
    let slice = held[0].slice(100..200);
    held.clear();
    assert_eq!(sched.stats().lent_buffers, 1, "a slice keeps its buffer");
    drop(slice);
    assert_eq!(sched.stats().lent_buffers, 0, "every buffer went back");
    let again = sched.schedule_read_shared(pages[1]).recv().unwrap();
    assert_eq!(sched.stats().lent_buffers, 1);
    assert_eq!(stamp(&again), (pages[1].0, 2));
}
