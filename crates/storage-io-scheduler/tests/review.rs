//! Defects found in review of the scheduler and the page cache (issue 38, items 1 to 10): each
//! test is named after its defect and checks the behaviour through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use storage_io_core::OpKind;
use storage_io_scheduler::{DiskScheduler, PageCache, PageId, SchedulerConfig, SchedulerError};
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::memio::MemFs;

/// A page file named like one of the scheduler's own files (an allocation slot) would have its
/// pages overwritten by allocation images: every such name is refused, whatever directory it
/// is written with.
#[test]
fn page_file_named_like_an_allocation_slot_is_refused() {
    for name in [
        "pages.alloc.0",
        "pages.alloc.1",
        "./pages.alloc.0",
        "/db/pages.alloc.1",
        "sub/pages.alloc.0",
        "PAGES.ALLOC.1",
    ] {
        let config = SchedulerConfig {
            page_file: PathBuf::from(name),
            ..config(1)
        };
        let err = config.validate().map(|()| name).unwrap_err();
        assert!(
            matches!(&err, SchedulerError::InvalidConfig(m) if m.contains("page_file")),
            "{name}: {err}"
        );
        let fs = MemFs::new(1);
        let opened = DiskScheduler::open(DIR, config, mem_factory(&fs));
        assert!(
            matches!(opened, Err(SchedulerError::InvalidConfig(_))),
            "{name}: open must refuse it too"
        );
        assert!(
            fs.list().is_empty(),
            "{name}: nothing is created: {:?}",
            fs.list()
        );
    }
    // Names that only look alike are the engine's to choose.
    for name in ["pages.alloc", "pages.alloc.2", "my.pages.alloc.0", "pages.db"] {
        let config = SchedulerConfig {
            page_file: PathBuf::from(name),
            ..config(1)
        };
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A read stream over a range near `u64::MAX` overflowed computing its routing extent (a panic
/// in debug builds, a wrap to page 0 in release): it answers `OutOfRange` for the first page
/// past the scheduler's limit, and reads every page below it.
#[test]
fn read_stream_near_u64_max_answers_out_of_range_instead_of_overflowing() {
    let fs = MemFs::new(8);
    let sched = open(&mem_factory(&fs), config(2));
    let limit = sched.config().page_limit();
    for range in [
        PageId(u64::MAX - 3)..PageId(u64::MAX),
        PageId(u64::MAX - 1)..PageId(u64::MAX),
        PageId(limit)..PageId(u64::MAX),
        PageId(limit + 5)..PageId(limit + 6),
    ] {
        let items: Vec<_> = sched.read_stream(range.clone(), 8).collect();
        assert_eq!(items.len(), 1, "{range:?}: one error, then the end: {items:?}");
        match &items[0] {
            Err(SchedulerError::OutOfRange { page, limit: l }) => {
                assert_eq!((*page, *l), (range.start, limit), "{range:?}");
            }
            other => panic!("{range:?}: expected OutOfRange, got {other:?}"),
        }
    }
    // With max_pages: the pages below the limit are read, then OutOfRange at the limit.
    let fs = MemFs::new(9);
    let sched = open(
        &mem_factory(&fs),
        SchedulerConfig {
            max_pages: Some(10),
            ..config(2)
        },
    );
    allocate(&sched, 10);
    let items: Vec<_> = sched.read_stream(PageId(6)..PageId(u64::MAX), 4).collect();
    let pages: Vec<u64> = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|(p, _)| p.0)
        .collect();
    assert_eq!(pages, [6, 7, 8, 9]);
    assert!(
        matches!(
            items.last(),
            Some(Err(SchedulerError::OutOfRange {
                page: PageId(10),
                limit: 10
            }))
        ),
        "{:?}",
        items.last()
    );
    assert_eq!(items.len(), 5);
}

/// `distance = usize::MAX` overflowed `next_page + room`: it is clamped, the pages come in
/// order, and the window stays bounded.
#[test]
fn read_stream_with_distance_usize_max_neither_overflows_nor_floods_the_scheduler() {
    let fs = MemFs::new(10);
    // One worker of depth 2 holds at most 2 × 4 pages in flight.
    let sched = open(
        &mem_factory(&fs),
        SchedulerConfig {
            queue_depth: 2,
            ..config(1)
        },
    );
    let ids = allocate(&sched, 200);
    for &p in &ids {
        sched.schedule_write(p, page_bytes(p, 1)).recv().unwrap();
    }
    let mut stream = sched.read_stream(PageId(5)..PageId(200), usize::MAX);
    let mut next = 5;
    while let Some(item) = stream.next() {
        let (page, bytes) = item.unwrap();
        assert_eq!(page, PageId(next));
        assert_eq!(stamp(&bytes), (next, 1));
        assert!(stream.in_flight_pages() <= 8, "{stream:?}");
        next += 1;
    }
    assert_eq!(next, 200);
}

/// Reopened with a smaller `max_pages`, the scheduler handed out a freed id past the limit
/// (which then refused every write), and `allocate_at` allocated one below `next`: no id at or
/// past `max_pages` is ever allocated.
#[test]
fn max_pages_applies_to_free_ids_and_to_allocate_at_below_next() {
    let fs = MemFs::new(5);
    {
        let sched = open(&mem_factory(&fs), config(2));
        allocate(&sched, 10);
        for p in [8, 9, 6] {
            sched.schedule_deallocate(PageId(p)).recv().unwrap();
        }
        sched.shutdown().unwrap();
    }
    let limited = |max: u64| SchedulerConfig {
        max_pages: Some(max),
        ..config(2)
    };
    let sched = open(&mem_factory(&fs), limited(7));
    // Id 6 is free and below the limit: it is the one handed out, and it can be written.
    let page = sched.schedule_allocate().recv().unwrap();
    assert_eq!(page, PageId(6));
    sched.schedule_write(page, page_bytes(page, 1)).recv().unwrap();
    // Ids 8 and 9 are free but past the limit: no page is left.
    let got = sched.schedule_allocate().recv();
    assert!(matches!(got, Err(SchedulerError::OutOfPages)), "{got:?}");
    for p in [8, 9] {
        let got = sched.schedule_allocate_at(PageId(p)).recv();
        assert!(
            matches!(got, Err(SchedulerError::OutOfRange { page, limit: 7 }) if page == PageId(p)),
            "allocate_at({p}): {got:?}"
        );
    }
    assert_eq!(
        sched.stats().allocated_pages,
        8,
        "nothing past the limit was allocated"
    );
    sched.shutdown().unwrap();
    // The ids refused stay free: without the limit they are handed out again.
    let sched = open(&mem_factory(&fs), config(2));
    assert_eq!(allocate(&sched, 2), [PageId(8), PageId(9)]);
}

/// `new_page` allocated an id durably, then found every frame pinned and returned
/// `AllFramesPinned`: the id stayed allocated and nobody held it. A `new_page` that fails
/// leaves no id allocated.
#[test]
fn new_page_with_every_frame_pinned_leaks_no_page_id() {
    let fs = MemFs::new(9);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    let pinned = [cache.new_page().unwrap(), cache.new_page().unwrap()];
    assert_eq!(sched.stats().allocated_pages, 2);
    for _ in 0..3 {
        let got = cache.new_page().map(|p| p.id());
        assert!(
            matches!(got, Err(SchedulerError::AllFramesPinned { frames: 2 })),
            "{got:?}"
        );
    }
    assert_eq!(
        sched.stats().allocated_pages,
        2,
        "a failed new_page kept an id allocated"
    );
    drop(pinned);
    // The next page is the next id: none was lost.
    assert_eq!(cache.new_page().unwrap().id(), PageId(2));
}

/// The same when the frame `new_page` needs cannot be written back: the id it allocated is
/// freed again before the error is returned.
#[test]
fn new_page_whose_victim_cannot_be_written_back_leaks_no_page_id() {
    let fs = MemFs::new(10);
    // Writes: 1 = the image at open, 2 = page 0's image, 3 = page 1's image, 4 = the
    // write-back of page 0, which fails.
    let plan = FaultPlan::new(10).fail_nth(OpKind::Write, 4, Fault::Eio);
    let sched = Arc::new(open(&faulty_factory(&fs, plan), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let first = cache.new_page().unwrap().id();
    let err = cache.new_page().map(|p| p.id()).unwrap_err();
    assert_eq!(err.errno(), Some(5), "{err}");
    assert_eq!(
        sched.stats().allocated_pages,
        1,
        "the failed new_page kept its id"
    );
    let got = sched.schedule_read(PageId(first.0 + 1)).recv().map(|b| b.len());
    assert!(matches!(got, Err(SchedulerError::NotAllocated(_))), "{got:?}");
}
