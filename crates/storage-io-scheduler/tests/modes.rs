//! Allocation modes and the calls an engine with its own allocation needs: `external`
//! allocation, adopting an existing page file, `schedule_allocate_at`, `zero_on_reuse` and
//! `alloc_durability = next_sync`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use storage_io_core::Namespace;

use common::*;
use storage_io_core::{OpenOptions, StorageIo};
use storage_io_scheduler::{
    AllocDurability, AllocationMode, DiskScheduler, MAX_ALLOCATE_AT_GAP, PageCache, PageId, SchedulerConfig,
    SchedulerError,
};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};

fn external(max_pages: Option<u64>) -> SchedulerConfig {
    SchedulerConfig {
        allocation: AllocationMode::External,
        max_pages,
        ..config(2)
    }
}

/// Writes `bytes` to `path` on `fs` and makes them durable, the way an engine's own tools
/// would have left a page file.
fn put_file(fs: &MemFs, path: &Path, bytes: &[u8]) {
    let mut io = fs.backend();
    io.create_dir_all(path.parent().unwrap()).unwrap();
    let fd = io.open_file(path, &OpenOptions::create()).unwrap();
    let mut done = Vec::new();
    io.submit_write(fd, bytes, 0).unwrap();
    io.wait_completions(&mut done, 1, None).unwrap();
    io.submit_datasync(fd).unwrap();
    io.wait_completions(&mut done, 1, None).unwrap();
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    io.sync_dir(path.parent().unwrap()).unwrap();
}

fn alloc_images(fs: &MemFs) -> Vec<PathBuf> {
    fs.list()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("pages.alloc"))
        .collect()
}

#[test]
fn external_allocation_reads_and_writes_any_page_below_max_pages_and_refuses_allocation_calls() {
    let fs = MemFs::new(1);
    let sched = open(&mem_factory(&fs), external(Some(1000)));
    // Never written, past the end of the (empty) file: zeros.
    assert_eq!(sched.schedule_read(PageId(7)).recv().unwrap(), vec![0u8; PAGE]);
    sched
        .schedule_write(PageId(999), page_bytes(PageId(999), 1))
        .recv()
        .unwrap();
    sched
        .schedule_write_durable(PageId(3), page_bytes(PageId(3), 2))
        .recv()
        .unwrap();
    assert_eq!(stamp(&sched.schedule_read(PageId(999)).recv().unwrap()), (999, 1));
    let pages = sched
        .schedule_read_pages(vec![PageId(3), PageId(4), PageId(999)])
        .recv()
        .unwrap();
    assert_eq!(stamp(&pages[0]), (3, 2));
    assert_eq!(pages[1], vec![0u8; PAGE]);
    // Past max_pages: refused, and the error says why.
    let err = sched
        .schedule_write(PageId(1000), page_bytes(PageId(1000), 3))
        .recv()
        .unwrap_err();
    assert!(
        matches!(
            err,
            SchedulerError::OutOfRange {
                page: PageId(1000),
                limit: 1000
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_pages"), "{err}");
    let err = sched
        .schedule_read_pages(vec![PageId(1), PageId(5000)])
        .recv()
        .unwrap_err();
    assert!(matches!(err, SchedulerError::Batch { index: 1, .. }), "{err}");
    // The engine owns allocation: the scheduler's allocation calls are refused by name.
    let refused = [
        sched.schedule_allocate().recv().map(|_| ()),
        sched.schedule_allocate_extent(4).recv().map(|_| ()),
        sched.schedule_allocate_at(PageId(5)).recv().map(|_| ()),
        sched.schedule_deallocate(PageId(3)).recv(),
        sched.schedule_begin_redo().recv(),
    ];
    for (result, call) in refused.into_iter().zip([
        "schedule_allocate",
        "schedule_allocate_extent",
        "schedule_allocate_at",
        "schedule_deallocate",
        "schedule_begin_redo",
    ]) {
        let err = result.unwrap_err();
        assert!(
            matches!(err, SchedulerError::ExternalAllocation { call: c } if c == call),
            "{call}: {err}"
        );
        assert!(err.to_string().contains("allocation = external"), "{err}");
    }
    sched.schedule_sync().recv().unwrap();
    assert_eq!(sched.stats().metadata_writes, 0);
    drop(sched);
    assert!(
        alloc_images(&fs).is_empty(),
        "external allocation wrote images: {:?}",
        alloc_images(&fs)
    );
    // What was synced survives a crash.
    fs.crash(CrashOptions::default());
    let sched = open(&mem_factory(&fs), external(Some(1000)));
    assert_eq!(stamp(&sched.schedule_read(PageId(999)).recv().unwrap()), (999, 1));
    assert_eq!(stamp(&sched.schedule_read(PageId(3)).recv().unwrap()), (3, 2));
}

#[test]
fn external_allocation_adopts_an_existing_page_file_under_its_own_name() {
    let fs = MemFs::new(2);
    // An engine's file: two and a half pages, no allocation images.
    let mut file = vec![0u8; PAGE * 2 + PAGE / 2];
    file[..PAGE].copy_from_slice(&page_bytes(PageId(0), 5));
    file[PAGE..2 * PAGE].copy_from_slice(&page_bytes(PageId(1), 6));
    file[2 * PAGE..].fill(0xEE);
    put_file(&fs, Path::new("/db/heap.dat"), &file);
    let config = SchedulerConfig {
        page_file: PathBuf::from("heap.dat"),
        ..external(None)
    };
    let sched = open(&mem_factory(&fs), config.clone());
    assert_eq!(stamp(&sched.schedule_read(PageId(0)).recv().unwrap()), (0, 5));
    assert_eq!(stamp(&sched.schedule_read(PageId(1)).recv().unwrap()), (1, 6));
    // The half page is read as far as the file goes, the rest zeros.
    let last = sched.schedule_read(PageId(2)).recv().unwrap();
    assert!(last[..PAGE / 2].iter().all(|&b| b == 0xEE) && last[PAGE / 2..].iter().all(|&b| b == 0));
    sched
        .schedule_write_durable(PageId(1), page_bytes(PageId(1), 7))
        .recv()
        .unwrap();
    drop(sched);
    // The engine's own tools still see its pages in its own file.
    let on_disk = fs.durable_contents(Path::new("/db/heap.dat")).unwrap();
    assert_eq!(stamp(&on_disk[PAGE..2 * PAGE]), (1, 7));
    assert!(!fs.list().iter().any(|p| p.ends_with("pages.db")));
    assert!(alloc_images(&fs).is_empty());
}

#[test]
fn managed_allocation_adopts_a_file_without_images_only_when_asked() {
    let fs = MemFs::new(3);
    let mut file = vec![0u8; PAGE * 3 - 100];
    file[..PAGE].copy_from_slice(&page_bytes(PageId(0), 1));
    put_file(&fs, Path::new("/db/pages.db"), &file);
    let err = DiskScheduler::open(DIR, config(2), mem_factory(&fs)).unwrap_err();
    assert!(matches!(err, SchedulerError::CorruptMetadata { .. }), "{err}");
    assert!(
        err.to_string().contains("adopt_existing"),
        "the error must name the way out: {err}"
    );
    assert!(alloc_images(&fs).is_empty(), "a refused open changed nothing");

    let adopt = SchedulerConfig {
        adopt_existing: true,
        ..config(2)
    };
    let sched = open(&mem_factory(&fs), adopt);
    // Every page up to the file's length (rounded up) is allocated; the next id is new.
    assert_eq!(sched.stats().allocated_pages, 3);
    assert_eq!(stamp(&sched.schedule_read(PageId(0)).recv().unwrap()), (0, 1));
    assert!(sched.schedule_read(PageId(2)).recv().is_ok());
    assert!(matches!(
        sched.schedule_read(PageId(3)).recv(),
        Err(SchedulerError::NotAllocated(PageId(3)))
    ));
    assert_eq!(sched.schedule_allocate().recv().unwrap(), PageId(3));
    drop(sched);
    // From now on the images exist: a plain open works and keeps the adopted pages.
    fs.crash(CrashOptions::default());
    let sched = open(&mem_factory(&fs), config(2));
    assert_eq!(sched.stats().allocated_pages, 4);
}

#[test]
fn allocate_at_takes_the_id_asked_for_and_refuses_what_it_cannot() {
    let fs = MemFs::new(4);
    let config = SchedulerConfig {
        max_pages: Some(MAX_ALLOCATE_AT_GAP * 4),
        ..config(2)
    };
    let sched = open(&mem_factory(&fs), config.clone());
    assert!(sched.schedule_allocate_at(PageId(10)).recv().unwrap());
    assert!(!sched.schedule_allocate_at(PageId(10)).recv().unwrap());
    // The ids skipped went on the free list: allocation hands them out first.
    assert_eq!(sched.schedule_allocate().recv().unwrap(), PageId(0));
    sched.schedule_deallocate(PageId(10)).recv().unwrap();
    assert!(sched.schedule_allocate_at(PageId(10)).recv().unwrap());
    assert!(sched.schedule_allocate_at(PageId(5)).recv().unwrap()); // off the free list
    let err = sched
        .schedule_allocate_at(PageId(11 + MAX_ALLOCATE_AT_GAP + 1))
        .recv()
        .unwrap_err();
    assert!(matches!(err, SchedulerError::AllocationGap { .. }), "{err}");
    let err = sched
        .schedule_allocate_at(PageId(MAX_ALLOCATE_AT_GAP * 4))
        .recv()
        .unwrap_err();
    assert!(matches!(err, SchedulerError::OutOfRange { .. }), "{err}");
    assert_eq!(sched.stats().allocated_pages, 3);
    drop(sched);
    fs.crash(CrashOptions::default());
    let sched = open(&mem_factory(&fs), config);
    for (p, allocated) in [
        (0, true),
        (1, false),
        (5, true),
        (9, false),
        (10, true),
        (11, false),
    ] {
        assert_eq!(
            sched.schedule_read(PageId(p)).recv().is_ok(),
            allocated,
            "page {p}"
        );
    }
}

#[test]
fn zero_on_reuse_gives_zeros_for_a_reused_id_and_keeps_them_across_a_crash() {
    for seed in 0..8 {
        let fs = MemFs::new(seed);
        let config = SchedulerConfig {
            zero_on_reuse: true,
            ..config(2)
        };
        let sched = open(&mem_factory(&fs), config.clone());
        let pages = allocate(&sched, 6);
        for &p in &pages {
            sched.schedule_write_durable(p, page_bytes(p, 1)).recv().unwrap();
        }
        sched.schedule_deallocate(PageId(4)).recv().unwrap();
        sched.schedule_deallocate(PageId(1)).recv().unwrap();
        assert_eq!(sched.schedule_allocate().recv().unwrap(), PageId(1));
        assert_eq!(sched.schedule_read(PageId(1)).recv().unwrap(), vec![0u8; PAGE]);
        let at = sched.schedule_allocate_at(PageId(4)).recv().unwrap();
        assert!(at);
        assert_eq!(sched.schedule_read(PageId(4)).recv().unwrap(), vec![0u8; PAGE]);
        // Nothing else changed.
        assert_eq!(stamp(&sched.schedule_read(PageId(2)).recv().unwrap()), (2, 1));
        // The acknowledged allocation was durable with its zeros: a crash keeps both.
        drop(sched);
        let tear = [TearMode::None, TearMode::Prefix, TearMode::AnySectors][seed as usize % 3];
        fs.crash(CrashOptions { tear });
        let sched = open(&mem_factory(&fs), config);
        for p in [1, 4] {
            assert_eq!(
                sched.schedule_read(PageId(p)).recv().unwrap(),
                vec![0u8; PAGE],
                "seed {seed}, page {p}"
            );
        }
    }
    // Without the option a reused id keeps its old bytes (the documented default).
    let fs = MemFs::new(9);
    let sched = open(&mem_factory(&fs), config(1));
    let p = sched.schedule_allocate().recv().unwrap();
    sched.schedule_write(p, page_bytes(p, 3)).recv().unwrap();
    sched.schedule_deallocate(p).recv().unwrap();
    assert_eq!(sched.schedule_allocate().recv().unwrap(), p);
    assert_eq!(stamp(&sched.schedule_read(p).recv().unwrap()), (p.0, 3));
}

#[test]
fn next_sync_allocations_cost_no_image_until_a_durability_point() {
    let deferred = SchedulerConfig {
        alloc_durability: AllocDurability::NextSync,
        ..config(2)
    };
    let fs = MemFs::new(5);
    let sched = open(&mem_factory(&fs), deferred.clone());
    let before = sched.stats().metadata_writes;
    let pages = allocate(&sched, 1000);
    assert_eq!(pages.last(), Some(&PageId(999)));
    sched.schedule_deallocate(PageId(7)).recv().unwrap();
    assert_eq!(
        sched.stats().metadata_writes,
        before,
        "no image before a durability point"
    );
    // Not durable yet: a crash now may undo them (here, with nothing synced, it does).
    fs.crash(CrashOptions::default());
    drop(sched);
    let sched = open(&mem_factory(&fs), deferred.clone());
    assert_eq!(sched.stats().allocated_pages, 0);

    // A sync is a durability point: one image for all the changes before it.
    let pages = allocate(&sched, 1000);
    sched.schedule_deallocate(PageId(7)).recv().unwrap();
    let images = sched.stats().metadata_writes;
    sched.schedule_sync().recv().unwrap();
    assert_eq!(sched.stats().metadata_writes, images + 1);
    // So is a durable write, on any page.
    sched.schedule_deallocate(PageId(8)).recv().unwrap();
    sched
        .schedule_write_durable(pages[3], page_bytes(pages[3], 1))
        .recv()
        .unwrap();
    // A durable write with nothing new to persist writes no image.
    let images = sched.stats().metadata_writes;
    sched
        .schedule_write_durable(pages[4], page_bytes(pages[4], 1))
        .recv()
        .unwrap();
    assert_eq!(sched.stats().metadata_writes, images);
    fs.crash(CrashOptions::default());
    drop(sched);
    let sched = open(&mem_factory(&fs), deferred);
    assert_eq!(sched.stats().allocated_pages, 998);
    for p in [7, 8] {
        assert!(matches!(
            sched.schedule_read(PageId(p)).recv(),
            Err(SchedulerError::NotAllocated(_))
        ));
    }
    assert_eq!(stamp(&sched.schedule_read(pages[3]).recv().unwrap()), (3, 1));
}

#[test]
fn the_page_cache_works_with_external_allocation() {
    let fs = MemFs::new(6);
    let sched = Arc::new(open(&mem_factory(&fs), external(None)));
    let cache = PageCache::new(Arc::clone(&sched), 4).unwrap();
    let err = cache.new_page().map(|_| ()).unwrap_err();
    assert!(matches!(err, SchedulerError::ExternalAllocation { .. }), "{err}");
    for p in 0..16u64 {
        let page = cache.create_page(PageId(p * 3)).unwrap();
        page.write()[..8].copy_from_slice(&p.to_le_bytes());
    }
    // Evictions wrote most of them back; flush the rest.
    cache.flush_all().unwrap();
    for p in 0..16u64 {
        let page = cache.fetch(PageId(p * 3)).unwrap();
        assert_eq!(page.read()[..8], p.to_le_bytes());
    }
    // The engine frees a page in its own free list; the cache drops the frame.
    cache.deallocate(PageId(3)).unwrap();
    let again = cache.create_page(PageId(3)).unwrap();
    assert!(again.read().iter().all(|&b| b == 0));
    drop(again);
    drop(cache);
    sched.schedule_sync().recv().unwrap();
    let bytes = sched.schedule_read(PageId(45)).recv().unwrap();
    assert_eq!(bytes[..8], 15u64.to_le_bytes());
}
