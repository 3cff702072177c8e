//! The page cache: eviction with write-back, one fetch for two misses, pins, failures.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use storage_io_core::OpKind;
use storage_io_scheduler::{PageCache, PageId, SchedulerError};
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::memio::MemFs;

#[test]
fn cache_evicts_with_clock_and_writes_dirty_pages_back() {
    let fs = MemFs::new(1);
    let sched = Arc::new(open(&mem_factory(&fs), config(2)));
    let cache = PageCache::new(Arc::clone(&sched), 4).unwrap();
    let mut ids = Vec::new();
    for i in 0..16u32 {
        let page = cache.new_page().unwrap();
        page.write().copy_from_slice(&page_bytes(page.id(), i));
        ids.push((page.id(), i));
    }
    let s = cache.stats();
    assert_eq!(s.evictions, 12);
    assert_eq!(s.write_backs, 12, "every evicted page was dirty");
    for &(id, v) in &ids {
        assert_eq!(stamp(&cache.fetch(id).unwrap().read()), (id.0, v));
    }
    cache.flush_all().unwrap();
    drop(cache);
    sched.shutdown().unwrap();
    let sched = open(&mem_factory(&fs), config(2));
    for &(id, v) in &ids {
        assert_eq!(stamp(&sched.schedule_read(id).recv().unwrap()), (id.0, v));
    }
}

#[test]
fn cache_hot_pages_survive_a_scan_thanks_to_the_reference_bit() {
    let fs = MemFs::new(2);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let pages = allocate(&sched, 20);
    let cache = PageCache::new(Arc::clone(&sched), 4).unwrap();
    let hot = pages[0];
    for &p in &pages[1..] {
        drop(cache.fetch(hot).unwrap()); // touched between every miss
        drop(cache.fetch(p).unwrap());
    }
    let s = cache.stats();
    assert_eq!(
        s.misses, 20,
        "the hot page was read once, the 19 others once each: {s:?}"
    );
    assert_eq!(s.hits, 18);
}

#[test]
fn cache_single_flight_two_misses_on_one_page_fetch_once() {
    let (gate, sched) = open_gated(3, 1);
    let sched = Arc::new(sched);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 5)).recv().unwrap();
    let cache = Arc::new(PageCache::new(Arc::clone(&sched), 4).unwrap());
    let before = sched.stats().read_ios;

    gate.close();
    let fetchers: Vec<_> = (0..2)
        .map(|_| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || stamp(&cache.fetch(page).unwrap().read()))
        })
        .collect();
    wait_until("one miss and one waiter", || {
        let s = cache.stats();
        s.misses == 1 && s.waited_for_load >= 1
    });
    gate.open();
    for f in fetchers {
        assert_eq!(f.join().unwrap(), (page.0, 5));
    }
    assert_eq!(sched.stats().read_ios - before, 1);
    assert_eq!(cache.stats().misses, 1);
}

#[test]
fn cache_with_every_frame_pinned_says_so() {
    let fs = MemFs::new(4);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let pages = allocate(&sched, 3);
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    let _a = cache.fetch(pages[0]).unwrap();
    let _b = cache.fetch(pages[1]).unwrap();
    let err = cache.fetch(pages[2]).unwrap_err();
    assert!(
        matches!(err, SchedulerError::AllFramesPinned { frames: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("pinned"), "{err}");
    assert!(matches!(cache.deallocate(pages[0]), Err(SchedulerError::Pinned(p)) if p == pages[0]));
    assert!(PageCache::new(Arc::clone(&sched), 0).is_err());
    // A read error reaches the caller and frees the frame.
    drop(_b);
    assert!(matches!(
        cache.fetch(PageId(99)),
        Err(SchedulerError::NotAllocated(_))
    ));
    assert!(cache.fetch(pages[2]).is_ok());
}

#[test]
fn cache_failed_write_back_keeps_the_page_dirty_and_loses_nothing() {
    let fs = MemFs::new(5);
    // Writes: 1 = initial allocation image, 2 and 3 = two allocation images, 4 = the first
    // write-back, which fails.
    let plan = FaultPlan::new(5).fail_nth(OpKind::Write, 4, Fault::Eio);
    let sched = Arc::new(open(&faulty_factory(&fs, plan), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let a = cache.new_page().unwrap();
    a.write().copy_from_slice(&page_bytes(a.id(), 1));
    let a_id = a.id();
    drop(a);
    let err = cache.new_page().unwrap_err(); // allocates page 1, cannot evict page 0
    assert_eq!(err.errno(), Some(5), "{err}");
    // Page 0 is still cached with its bytes, and a flush now succeeds.
    assert_eq!(stamp(&cache.fetch(a_id).unwrap().read()), (a_id.0, 1));
    cache.flush_all().unwrap();
    drop(cache);
    sched.shutdown().unwrap();
    let sched = open(&mem_factory(&fs), config(1));
    assert_eq!(stamp(&sched.schedule_read(a_id).recv().unwrap()), (a_id.0, 1));
}

#[test]
fn cache_concurrent_increments_are_all_kept() {
    let fs = MemFs::new(6);
    let sched = Arc::new(open(&mem_factory(&fs), config(2)));
    let pages = allocate(&sched, 24);
    let cache = Arc::new(PageCache::new(Arc::clone(&sched), 6).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let cache = Arc::clone(&cache);
            let pages = pages.clone();
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                for _ in 0..300 {
                    let p = pages[rng.random_range(0..pages.len())];
                    let page = cache.fetch(p).unwrap();
                    let mut bytes = page.write();
                    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                    bytes[..8].copy_from_slice(&(n + 1).to_le_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    cache.flush_all().unwrap();
    let total: u64 = sched
        .schedule_read_pages(pages.clone())
        .recv()
        .unwrap()
        .iter()
        .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))
        .sum();
    assert_eq!(total, 1200, "every increment made under a write guard is on disk");
    assert!(cache.stats().evictions > 0);
}

/// `new_page` hands out an id freed earlier while the cache still holds the old page's frame:
/// the new page must be zeros and dirty (its zeros reach the disk), not the old bytes.
#[test]
fn new_page_on_a_reused_id_is_zeroed_and_dirty() {
    let fs = MemFs::new(11);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 4).unwrap();
    let old = {
        let page = cache.new_page().unwrap();
        page.write().copy_from_slice(&page_bytes(page.id(), 1));
        page.id()
    };
    cache.flush_all().unwrap();
    sched.schedule_deallocate(old).recv().unwrap();
    let page = cache.new_page().unwrap();
    assert_eq!(page.id(), old, "the freed id is reused");
    assert!(
        page.read().iter().all(|&b| b == 0),
        "a new page must be zero-filled, not the freed page's bytes"
    );
    drop(page);
    cache.flush_all().unwrap();
    let back = sched.schedule_read(old).recv().unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "the new page's zeros must reach the disk (it is dirty)"
    );
}

/// A dirty frame whose page was deallocated must not make every later eviction fail with
/// `NotAllocated`: the freed page's bytes are dead, and the frame is reused.
#[test]
fn a_dirty_frame_of_a_deallocated_page_does_not_block_eviction() {
    let fs = MemFs::new(12);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let others = allocate(&sched, 3);
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let freed = {
        let page = cache.new_page().unwrap();
        page.write()[0] = 9;
        page.id()
    };
    sched.schedule_deallocate(freed).recv().unwrap();
    for &p in &others {
        cache
            .fetch(p)
            .unwrap_or_else(|e| panic!("evicting the freed page's frame failed: {e}"));
    }
    // Freeing through the cache drops the frame too, pinned pages excepted.
    let page = cache.new_page().unwrap();
    let id = page.id();
    page.write()[0] = 3;
    assert!(
        cache.deallocate(id).is_err(),
        "a pinned page cannot be deallocated"
    );
    drop(page);
    cache.deallocate(id).unwrap();
    assert!(matches!(
        sched.schedule_read(id).recv(),
        Err(SchedulerError::NotAllocated(_))
    ));
    cache.flush_all().unwrap();
    assert!(cache.fetch(others[0]).is_ok());
}

/// One thread counts up in a page through `fetch`/`write` while another loops `flush_all`;
/// after both stop, the page is evicted and read back through the scheduler: the last count
/// must be there (a flush between marking the page dirty and changing it must not lose it).
#[test]
fn page_cache_counter_survives_concurrent_flush_all_and_eviction() {
    let fs = MemFs::new(13);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let id = cache.new_page().unwrap().id();
    let spare = allocate(&sched, 1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    const COUNT: u64 = 3000;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                cache.flush_all().unwrap();
            }
        });
        for i in 1..=COUNT {
            let page = cache.fetch(id).unwrap();
            page.write()[..8].copy_from_slice(&i.to_le_bytes());
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
    });
    for &p in &spare {
        drop(cache.fetch(p).unwrap()); // a miss evicts `id` from the only frame
    }
    let back = sched.schedule_read(id).recv().unwrap();
    assert_eq!(u64::from_le_bytes(back[..8].try_into().unwrap()), COUNT);
}

/// A cache dropped with dirty pages and no `flush_all`: before, the pages were simply lost (the
/// allocation was durable, so they read back as zeros after a reopen). Dropping flushes them.
#[test]
fn a_cache_dropped_without_flush_all_keeps_its_pages() {
    let fs = MemFs::new(41);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 8).unwrap();
    let ids: Vec<PageId> = (0..5u32)
        .map(|v| {
            let page = cache.new_page().unwrap();
            page.write().copy_from_slice(&page_bytes(page.id(), v));
            page.id()
        })
        .collect();
    drop(cache); // no flush_all
    sched.shutdown().unwrap();
    let file = std::path::Path::new(DIR).join(storage_io_scheduler::PAGE_FILE);
    let durable = fs.durable_contents(&file).unwrap_or_default();
    for (v, id) in ids.iter().enumerate() {
        let at = id.0 as usize * PAGE;
        let bytes = durable.get(at..at + PAGE).unwrap_or(&[]);
        assert!(
            bytes.len() == PAGE && stamp(bytes) == (id.0, v as u32),
            "page {id} is not durable after the drop: {:?}",
            &bytes[..bytes.len().min(12)]
        );
    }
    let sched = open(&mem_factory(&fs), config(1));
    for (v, id) in ids.iter().enumerate() {
        assert_eq!(stamp(&sched.schedule_read(*id).recv().unwrap()), (id.0, v as u32));
    }
}

/// `close` flushes and returns the flush's error (here a write-back's EIO); the page stays
/// dirty and the closed cache does not flush again on drop.
#[test]
fn close_returns_the_error_of_its_flush() {
    let fs = MemFs::new(42);
    // Writes: 1 = initial allocation image, 2 = the allocation's image, 3 = the write-back.
    let plan = FaultPlan::new(42).fail_nth(OpKind::Write, 3, Fault::Eio);
    let sched = Arc::new(open(&faulty_factory(&fs, plan), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    cache.new_page().unwrap().write()[0] = 1;
    let err = cache.close().unwrap_err();
    assert_eq!(err.errno(), Some(5), "{err}");
}

/// A clean close: everything durable, and `close` says so.
#[test]
fn close_flushes_every_dirty_page() {
    let fs = MemFs::new(43);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    let id = {
        let page = cache.new_page().unwrap();
        page.write().copy_from_slice(&page_bytes(page.id(), 7));
        page.id()
    };
    cache.close().unwrap();
    sched.shutdown().unwrap();
    let sched = open(&mem_factory(&fs), config(1));
    assert_eq!(stamp(&sched.schedule_read(id).recv().unwrap()), (id.0, 7));
}

/// The flush on drop is bounded and logs its failure: a cache whose scheduler has shut down
/// drops at once (the write-back answers `Closed`) instead of panicking or hanging.
#[test]
fn a_cache_dropped_after_its_scheduler_shut_down_does_not_hang() {
    let fs = MemFs::new(44);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    cache.new_page().unwrap().write()[0] = 1;
    sched.shutdown().unwrap();
    drop(cache);
}
