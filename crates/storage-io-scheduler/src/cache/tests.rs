//! The page cache's unit tests: the races its hook points open.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::sync::mpsc;

use storage_io_core::{BackendFactory, StorageIo};
use storage_io_testkit::memio::MemFs;

use super::*;
use crate::{PAGE_FILE, SchedulerConfig};

const DIR: &str = "/db";

fn cache_on(fs: &MemFs, frames: usize) -> PageCache {
    let fs = fs.clone();
    let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    let config = SchedulerConfig {
        workers: 1,
        ..SchedulerConfig::default()
    };
    let sched = DiskScheduler::open(DIR, config, factory).unwrap();
    PageCache::new(Arc::new(sched), frames).unwrap()
}

/// Stops the first thread that reaches `point` until the returned sender sends; the
/// receiver hears of every point reached.
fn stop_at(cache: &PageCache, point: HookPoint) -> (mpsc::Sender<()>, mpsc::Receiver<HookPoint>) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (seen_tx, seen_rx) = mpsc::channel();
    let go_rx = Mutex::new(Some(go_rx));
    let seen_tx = Mutex::new(seen_tx);
    *cache.hook.lock() = Some(Arc::new(move |p| {
        let _ = seen_tx.lock().send(p);
        if p == point
            && let Some(go) = go_rx.lock().take()
        {
            let _ = go.recv();
        }
    }));
    (go_tx, seen_rx)
}

fn durable_page(fs: &MemFs, page: PageId, page_size: usize) -> Vec<u8> {
    let file = fs
        .durable_contents(&Path::new(DIR).join(PAGE_FILE))
        .unwrap_or_default();
    let at = page.0 as usize * page_size;
    file.get(at..at + page_size)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// A write racing a `flush_all`: the flush must not clear the page's dirty bit and write
/// back the old bytes while the writer's new bytes go into the frame unmarked.
#[test]
fn page_cache_lost_update_when_flush_all_runs_between_the_steps_of_write() {
    let fs = MemFs::new(1);
    let cache = cache_on(&fs, 1);
    let id = {
        let page = cache.new_page().unwrap();
        page.write()[0] = 1;
        page.id()
    };
    cache.flush_all().unwrap();
    let (go, seen) = stop_at(&cache, HookPoint::WriteBetweenSteps);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let page = cache.fetch(id).unwrap();
            page.write()[0] = 2;
        });
        assert_eq!(seen.recv().unwrap(), HookPoint::WriteBetweenSteps);
        let flushed = cache.flush_all();
        go.send(()).unwrap();
        writer.join().unwrap();
        flushed.unwrap();
    });
    *cache.hook.lock() = None;
    // Evict the page (a one-frame cache), then read it from the scheduler.
    drop(cache.new_page().unwrap());
    let back = cache.scheduler().schedule_read(id).recv().unwrap();
    assert_eq!(back[0], 2, "the write after the flush was lost on eviction");
}

/// `flush_all` while another thread's write-back of a dirty page is under way (an
/// eviction): it must not return before that page is durable.
#[test]
fn flush_all_waits_for_a_write_back_in_progress() {
    let fs = MemFs::new(2);
    let cache = cache_on(&fs, 1);
    let ps = cache.page_size;
    let id = {
        let page = cache.new_page().unwrap();
        page.write()[0] = 7;
        page.id()
    };
    let (go, seen) = stop_at(&cache, HookPoint::WriteBackUnlocked);
    std::thread::scope(|s| {
        // The eviction of `id` (the cache has one frame) stops before its write is sent.
        let evictor = s.spawn(|| drop(cache.new_page().unwrap()));
        assert_eq!(seen.recv().unwrap(), HookPoint::WriteBackUnlocked);
        let (done_tx, done_rx) = mpsc::channel();
        let (cache, fs) = (&cache, &fs);
        let flusher = s.spawn(move || {
            cache.flush_all().unwrap();
            let _ = done_tx.send(durable_page(fs, id, ps));
        });
        // Either the flush returns (wrong: the eviction's write is not even sent yet), or
        // it says it waits for the write-back. The stopped evictor is let go before any
        // assertion, so a failure cannot leave it waiting.
        let durable = loop {
            if let Ok(durable) = done_rx.try_recv() {
                break durable;
            }
            if let Ok(HookPoint::FlushWaits) = seen.try_recv() {
                go.send(()).unwrap();
                break done_rx.recv().unwrap();
            }
            std::thread::yield_now();
        };
        let _ = go.send(());
        evictor.join().unwrap();
        flusher.join().unwrap();
        assert_eq!(
            durable.first(),
            Some(&7),
            "flush_all returned while the page dirty when it began was not durable"
        );
    });
    assert!(cache.stats().flush_waits >= 1);
}

/// A panic while a dirty page was being written back (here at the hook; in real life an
/// allocation failure copying it) left the frame `WritingBack` for good: a fetch of the
/// page and `flush_all` waited forever. The write-back is guarded like a load: the frame
/// goes back to what it was, still dirty, and nothing waits for it.
#[test]
fn a_panic_during_a_write_back_leaves_the_page_cached_and_dirty_not_stuck() {
    let fs = MemFs::new(3);
    let cache = cache_on(&fs, 1);
    let id = {
        let page = cache.new_page().unwrap();
        page.write()[0] = 9;
        page.id()
    };
    *cache.hook.lock() = Some(Arc::new(|p| {
        assert!(p != HookPoint::WriteBackUnlocked, "the write-back panicked");
    }));
    let evicted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(cache.new_page());
    }));
    assert!(evicted.is_err(), "the write-back must have panicked");
    *cache.hook.lock() = None;
    assert_eq!(
        cache.scheduler().stats().allocated_pages,
        1,
        "the id the panicked new_page allocated is freed"
    );
    let cache = Arc::new(cache);
    let (tx, rx) = mpsc::channel();
    let c = Arc::clone(&cache);
    std::thread::spawn(move || {
        let first = c.fetch(id).map(|p| p.read()[0]);
        let flushed = c.flush_all();
        let _ = tx.send((first, flushed));
    });
    let (first, flushed) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("fetch and flush_all after a panicked write-back hang");
    assert_eq!(first.unwrap(), 9, "the page's bytes stay cached");
    flushed.unwrap();
    assert_eq!(
        durable_page(&fs, id, cache.page_size)[0],
        9,
        "and still dirty: flushed"
    );
}
