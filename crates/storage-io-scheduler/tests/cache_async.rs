//! The page cache from async code: its futures on tokio runtimes with more tasks than frames,
//! never blocking the executor's thread, and dropped at every await they have.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::*;
use storage_io_core::OpKind;
use storage_io_scheduler::{
    AllocDurability, AllocationMode, PageCache, PageId, SchedulerConfig, SchedulerError,
};
use storage_io_testkit::gated::Gate;
use storage_io_testkit::memio::MemFs;

/// Polls `fut` once, with a waker that does nothing: how far it gets without waiting.
fn poll_once<F: Future>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_time()
        .build()
        .unwrap()
}

/// A hang guard, not a timing assertion: a deadlock fails the test instead of stopping CI.
const HANG: Duration = Duration::from_secs(60);

/// 64 tasks on 2 runtime threads share 4 frames: each allocates pages, holds a pin across
/// awaits, fetches its pages back (evicting the others'), and checks their bytes. No task
/// deadlocks (a future waits for a frame instead of failing `AllFramesPinned`), and after a
/// flush every page is on disk as its task left it.
#[test]
fn cache_futures_serve_more_tasks_than_frames_on_two_threads() {
    const TASKS: u32 = 64;
    const PAGES_PER_TASK: u32 = 3;
    let fs = MemFs::new(41);
    let sched = Arc::new(open(&mem_factory(&fs), config(2)));
    let cache = Arc::new(PageCache::new(Arc::clone(&sched), 4).unwrap());
    let rt = runtime(2);
    let written = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let cache = Arc::clone(&cache);
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for v in 0..PAGES_PER_TASK {
                    let page = cache.new_page_async().await.unwrap();
                    page.write().copy_from_slice(&page_bytes(page.id(), t * 10 + v));
                    // The pin is held across an await: other tasks find this frame taken.
                    tokio::task::yield_now().await;
                    mine.push((page.id(), t * 10 + v));
                }
                for &(id, v) in &mine {
                    let page = cache.fetch_async(id).await.unwrap();
                    tokio::task::yield_now().await;
                    assert_eq!(stamp(&page.read()), (id.0, v), "task {t} read back another page");
                }
                mine
            }));
        }
        let mut written = Vec::new();
        for task in tasks {
            written.extend(
                tokio::time::timeout(HANG, task)
                    .await
                    .expect("a task hung")
                    .unwrap(),
            );
        }
        cache.flush_all_async().await.unwrap();
        written
    });
    assert_eq!(written.len(), (TASKS * PAGES_PER_TASK) as usize);
    let s = cache.stats();
    assert!(s.evictions > 0 && s.misses > 0, "4 frames for 192 pages: {s:?}");
    drop(cache);
    for &(id, v) in &written {
        assert_eq!(stamp(&sched.schedule_read(id).recv().unwrap()), (id.0, v));
    }
}

/// A miss awaits its read: on a one-thread runtime, the task that opens the read's gate runs
/// while the fetch waits. A fetch that blocked its thread would never let it run.
#[test]
fn fetch_async_does_not_block_the_executor_thread() {
    let fs = MemFs::new(42);
    let gate = Gate::new();
    gate.open();
    let sched = Arc::new(open(&gated_factory(&fs, &gate), config(1)));
    let id = allocate(&sched, 1)[0];
    sched.schedule_write(id, page_bytes(id, 5)).recv().unwrap();
    let cache = Arc::new(PageCache::new(Arc::clone(&sched), 1).unwrap());
    gate.close();
    let before = gate.submitted();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let v = rt.block_on(async {
        let c = Arc::clone(&cache);
        let fetch = tokio::spawn(async move { stamp(&c.fetch_async(id).await.unwrap().read()) });
        while gate.submitted() == before {
            tokio::task::yield_now().await;
        }
        gate.open();
        tokio::time::timeout(HANG, fetch)
            .await
            .expect("the fetch hung")
            .unwrap()
    });
    assert_eq!(v, (id.0, 5));
    assert_eq!(cache.stats().misses, 1);
}

/// `fetch_async` dropped while its read is in flight: the frame is emptied, not left loading,
/// and the next fetch of the page reads it and finds its bytes.
#[test]
fn fetch_async_dropped_mid_read_leaves_the_frame_usable() {
    let (gate, sched) = open_gated(43, 1);
    let sched = Arc::new(sched);
    let id = allocate(&sched, 1)[0];
    sched.schedule_write(id, page_bytes(id, 3)).recv().unwrap();
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    gate.close();
    let mut fetch = Box::pin(cache.fetch_async(id));
    assert!(poll_once(&mut fetch).is_pending(), "the read is held at the gate");
    drop(fetch);
    gate.open();
    assert_eq!(stamp(&cache.fetch(id).unwrap().read()), (id.0, 3));
    let rt = runtime(1);
    rt.block_on(async {
        assert_eq!(stamp(&cache.fetch_async(id).await.unwrap().read()), (id.0, 3));
    });
}

/// `new_page_async` dropped while its allocation is in flight: the id it was given is freed
/// (by the next flush, which waits for the answer), and the frame is usable after.
#[test]
fn new_page_async_dropped_mid_allocation_leaks_no_id() {
    let fs = MemFs::new(44);
    let gate = Gate::new();
    gate.open();
    let sched = Arc::new(open(
        &gated_factory_for(&fs, &gate, &[OpKind::Write, OpKind::Datasync]),
        config(1),
    ));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let before = sched.stats().allocated_pages;
    gate.close();
    let mut new = Box::pin(cache.new_page_async());
    assert!(
        poll_once(&mut new).is_pending(),
        "the allocation image is held at the gate"
    );
    drop(new);
    gate.open();
    let rt = runtime(1);
    rt.block_on(async {
        cache.flush_all_async().await.unwrap();
        assert_eq!(
            sched.stats().allocated_pages,
            before,
            "the cancelled allocation leaked its id"
        );
        let page = cache.new_page_async().await.unwrap();
        page.write()[0] = 1;
    });
    assert_eq!(sched.stats().allocated_pages, before + 1);
}

/// `new_page_async` dropped while the dirty page in the frame it needs is being written back:
/// the id it allocated is freed, and the old page stays cached and dirty (flushed later).
#[test]
fn new_page_async_dropped_mid_write_back_frees_its_id_and_keeps_the_old_page() {
    let fs = MemFs::new(45);
    let gate = Gate::new();
    gate.open();
    let config = SchedulerConfig {
        // Allocation answers at once: the only I/O of this new_page is the victim's write.
        alloc_durability: AllocDurability::NextSync,
        ..config(1)
    };
    let sched = Arc::new(open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), config));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let old = {
        let page = cache.new_page().unwrap();
        page.write().copy_from_slice(&page_bytes(page.id(), 9));
        page.id()
    };
    let before = sched.stats().allocated_pages;
    gate.close();
    let mut new = Box::pin(cache.new_page_async());
    assert!(
        poll_once(&mut new).is_pending(),
        "the victim's write-back is held at the gate"
    );
    drop(new);
    gate.open();
    let rt = runtime(1);
    rt.block_on(async {
        cache.flush_all_async().await.unwrap();
        assert_eq!(
            sched.stats().allocated_pages,
            before,
            "the cancelled new_page leaked its id"
        );
        assert_eq!(stamp(&cache.fetch_async(old).await.unwrap().read()), (old.0, 9));
    });
    drop(cache);
    assert_eq!(stamp(&sched.schedule_read(old).recv().unwrap()), (old.0, 9));
}

/// `flush_all_async` dropped while a write-back is in flight: the page is dirty again, and the
/// next flush writes it (once more) and syncs.
#[test]
fn flush_all_async_dropped_mid_write_back_leaves_the_page_dirty() {
    let fs = MemFs::new(46);
    let gate = Gate::new();
    gate.open();
    let sched = Arc::new(open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    let id = {
        let page = cache.new_page().unwrap();
        page.write().copy_from_slice(&page_bytes(page.id(), 4));
        page.id()
    };
    gate.close();
    let mut flush = Box::pin(cache.flush_all_async());
    assert!(
        poll_once(&mut flush).is_pending(),
        "the write-back is held at the gate"
    );
    drop(flush);
    assert_eq!(cache.stats().write_backs, 0);
    gate.open();
    runtime(1).block_on(async { cache.flush_all_async().await.unwrap() });
    assert_eq!(
        cache.stats().write_backs,
        1,
        "the page was dirty again and written by the next flush"
    );
    let durable = fs
        .durable_contents(&std::path::Path::new(DIR).join(storage_io_scheduler::PAGE_FILE))
        .unwrap();
    let at = id.0 as usize * PAGE;
    assert_eq!(stamp(&durable[at..at + PAGE]), (id.0, 4));
}

/// `create_page_async` (external allocation) dropped while the frame's dirty page is written
/// back: nothing is mapped for the new id, the old page stays, and the call works after.
#[test]
fn create_page_async_dropped_mid_write_back_leaves_the_frame_usable() {
    let fs = MemFs::new(47);
    let gate = Gate::new();
    gate.open();
    let config = SchedulerConfig {
        allocation: AllocationMode::External,
        ..config(1)
    };
    let sched = Arc::new(open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), config));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    cache.create_page(PageId(1)).unwrap().write()[0] = 11;
    gate.close();
    let mut create = Box::pin(cache.create_page_async(PageId(2)));
    assert!(poll_once(&mut create).is_pending());
    drop(create);
    gate.open();
    runtime(1).block_on(async {
        cache.create_page_async(PageId(2)).await.unwrap().write()[0] = 22;
        assert_eq!(cache.fetch_async(PageId(1)).await.unwrap().read()[0], 11);
        assert_eq!(cache.fetch_async(PageId(2)).await.unwrap().read()[0], 22);
        cache.flush_all_async().await.unwrap();
    });
}

/// `deallocate_async` dropped while its deallocation is in flight: the frame is gone and the
/// deallocation still happens (the work of a dropped reply is not cancelled).
#[test]
fn deallocate_async_dropped_mid_flight_still_frees_the_page() {
    let fs = MemFs::new(48);
    let gate = Gate::new();
    gate.open();
    let sched = Arc::new(open(
        &gated_factory_for(&fs, &gate, &[OpKind::Write, OpKind::Datasync]),
        config(1),
    ));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let id = cache.new_page().unwrap().id();
    cache.flush_all().unwrap();
    let before = sched.stats().allocated_pages;
    gate.close();
    let mut free = Box::pin(cache.deallocate_async(id));
    assert!(
        poll_once(&mut free).is_pending(),
        "the allocation image is held at the gate"
    );
    drop(free);
    gate.open();
    runtime(1).block_on(async {
        cache.flush_all_async().await.unwrap();
        assert!(matches!(
            cache.fetch_async(id).await,
            Err(SchedulerError::NotAllocated(_))
        ));
        cache.new_page_async().await.unwrap();
    });
    assert_eq!(sched.stats().allocated_pages, before);
}

/// `close_async` dropped mid-flush: the cache it owned is dropped with it and flushes on drop,
/// so the page is durable all the same.
#[test]
fn close_async_dropped_mid_flush_flushes_on_drop() {
    let fs = MemFs::new(49);
    let gate = Gate::new();
    gate.open();
    let sched = Arc::new(open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    let id = {
        let page = cache.new_page().unwrap();
        page.write().copy_from_slice(&page_bytes(page.id(), 8));
        page.id()
    };
    gate.close();
    let mut close = Box::pin(cache.close_async());
    assert!(
        poll_once(&mut close).is_pending(),
        "the write-back is held at the gate"
    );
    // (The scheduler orders writes to one page: the flush on drop's write waits for the
    // first, so the gate opens before the drop.)
    gate.open();
    drop(close);
    let durable = fs
        .durable_contents(&std::path::Path::new(DIR).join(storage_io_scheduler::PAGE_FILE))
        .unwrap();
    let at = id.0 as usize * PAGE;
    assert_eq!(
        stamp(&durable[at..at + PAGE]),
        (id.0, 8),
        "written back and synced on drop"
    );
}
