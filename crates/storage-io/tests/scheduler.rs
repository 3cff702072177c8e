//! The page scheduler through the façade, on real files (ext4 under the target dir, so O_DIRECT
//! works): the auto-selected backend (io_uring in CI), the thread pool and the sync backend.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use storage_io::{BackendKind, IoConfig};

use storage_io::scheduler::{PageCache, PageId, SchedulerConfig};

fn page(id: PageId, version: u8) -> Vec<u8> {
    let mut v = vec![version; 4096];
    v[..8].copy_from_slice(&id.0.to_le_bytes());
    v
}

fn roundtrip(backend: BackendKind, workers: usize) {
    if backend == BackendKind::IoUring {
        let required = std::env::var("STORAGE_IO_REQUIRE_URING").is_ok_and(|v| v == "1");
        let status = storage_io::uring_status();
        if !matches!(status, storage_io::UringStatus::Available { .. }) {
            assert!(!required, "io_uring required in CI but {status}");
            eprintln!("SKIPPED scheduler_io_uring_backend_on_real_files: {status}");
            return;
        }
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let io = IoConfig {
        backend,
        ..IoConfig::default()
    };
    let config = SchedulerConfig {
        workers,
        direct_io: true,
        ..SchedulerConfig::default()
    };
    let ids: Vec<PageId> = {
        let sched = storage_io::open_scheduler(dir.path(), config.clone(), &io).unwrap();
        let ids: Vec<PageId> = (0..64)
            .map(|_| sched.schedule_allocate().recv().unwrap())
            .collect();
        let writes: Vec<_> = ids
            .iter()
            .map(|&id| sched.schedule_write(id, page(id, 1).into()))
            .collect();
        for w in writes {
            w.recv().unwrap();
        }
        sched.schedule_sync().recv().unwrap();
        let mut reversed = ids.clone();
        reversed.reverse();
        let got = sched.schedule_read_pages(reversed.clone()).recv().unwrap();
        for (bytes, id) in got.iter().zip(&reversed) {
            assert_eq!(bytes[..8], id.0.to_le_bytes());
        }
        sched.schedule_deallocate(ids[5]).recv().unwrap();
        ids
    };
    // Reopened: allocation and contents are back.
    let sched = Arc::new(storage_io::open_scheduler(dir.path(), config, &io).unwrap());
    assert!(sched.schedule_read(ids[5]).recv().is_err());
    let scanned: Vec<u64> = sched
        .read_stream(ids[6]..PageId(64), 16)
        .map(|r| {
            let (id, bytes) = r.unwrap();
            assert_eq!(bytes[..8], id.0.to_le_bytes());
            assert_eq!(bytes[4095], 1);
            id.0
        })
        .collect();
    assert_eq!(scanned, (6..64).collect::<Vec<_>>());
    let cache = PageCache::new(Arc::clone(&sched), 8).unwrap();
    for &id in &ids[10..40] {
        let p = cache.fetch(id).unwrap();
        p.write()[4095] = 2;
    }
    cache.flush_all().unwrap();
    assert_eq!(sched.schedule_read(ids[20]).recv().unwrap()[4095], 2);
    // The cache's misses read on this thread, on the small caller backends (a depth-2 ring for
    // io_uring, the sync backend for the others), and a blocking read sees the flushed bytes.
    let before = sched.stats().caller_reads;
    assert!(before > 0, "the cache's misses ran on the caller's thread");
    let bytes = sched.read_blocking(ids[30]).unwrap();
    assert_eq!((&bytes[..8], bytes[4095]), (&ids[30].0.to_le_bytes()[..], 2));
    assert_eq!(sched.stats().caller_reads, before + 1);
    // A page written from aligned memory goes to the backend by reference, and reads back.
    let aligned = storage_io::scheduler::aligned_bytes(&page(ids[41], 3));
    sched.schedule_write(ids[41], aligned).recv().unwrap();
    assert_eq!(sched.read_blocking(ids[41]).unwrap()[4095], 3);
}

#[test]
fn scheduler_auto_backend_on_real_files_with_direct_io() {
    roundtrip(BackendKind::Auto, 2);
}

#[test]
fn scheduler_io_uring_backend_on_real_files() {
    roundtrip(BackendKind::IoUring, 1);
}

#[test]
fn scheduler_thread_pool_and_sync_backends_on_real_files() {
    roundtrip(BackendKind::ThreadPool, 2);
    roundtrip(BackendKind::Sync, 1);
}
