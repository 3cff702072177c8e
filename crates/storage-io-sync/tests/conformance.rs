//! The testkit's conformance suite against both portable backends, one test per case and
//! configuration.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{IoConfig, StorageIo};
use storage_io_sync::{SyncStorageIo, ThreadPoolStorageIo};
use storage_io_testkit::conformance::ConformanceOptions;
use storage_io_testkit::conformance_tests;

fn options() -> ConformanceOptions {
    ConformanceOptions {
        // Under target/, on the same file system as the build: O_DIRECT works there on ext4/xfs.
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    }
}

mod sync_backend {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> { Box::new(SyncStorageIo::new(&IoConfig::default()).unwrap()) },
        options()
    );
}

mod thread_pool {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> {
            Box::new(
                ThreadPoolStorageIo::new(&IoConfig {
                    workers: 4,
                    ..IoConfig::default()
                })
                .unwrap(),
            )
        },
        options()
    );
}

/// Every read goes to a worker (the page-cache fast path off).
mod thread_pool_without_nowait_reads {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> {
            Box::new(
                ThreadPoolStorageIo::new(&IoConfig {
                    workers: 2,
                    nowait_reads: false,
                    ..IoConfig::default()
                })
                .unwrap(),
            )
        },
        options()
    );
}

/// One worker serialises everything: the barrier logic must not deadlock on it.
mod thread_pool_single_worker {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> {
            Box::new(
                ThreadPoolStorageIo::new(&IoConfig {
                    workers: 1,
                    queue_depth: 16,
                    ..IoConfig::default()
                })
                .unwrap(),
            )
        },
        ConformanceOptions {
            model_cases: 16,
            ..options()
        }
    );
}

/// A cached read on the thread pool completes at submit without a worker (its completion waits
/// for the next poll); with `nowait_reads` off every read goes to a worker.
#[cfg(target_os = "linux")] // the read at submit is preadv2(RWF_NOWAIT), which only Linux has
#[test]
fn thread_pool_cached_read_completes_at_submit_without_a_worker() {
    use std::io::Write;
    use storage_io_core::OpenOptions;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("hot");
    let data: Vec<u8> = (0..12288).map(|i| (i % 239) as u8).collect();
    std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
    for nowait_reads in [true, false] {
        let mut io = ThreadPoolStorageIo::new(&IoConfig {
            workers: 1,
            nowait_reads,
            ..IoConfig::default()
        })
        .unwrap();
        let fd = io.open_file(&path, &OpenOptions::read_only()).unwrap();
        io.submit_read(fd, vec![0u8; 4096].into(), 4096).unwrap();
        // Past the end: the cached 4 KiB at submit, the rest (EOF) at a worker.
        io.submit_read(fd, vec![0u8; 8192].into(), 8192).unwrap();
        let mut done = Vec::new();
        while io.pending_count() > 0 {
            io.wait_completions(&mut done, 2, None).unwrap();
        }
        done.sort_by_key(|c| c.offset);
        assert_eq!(io.nowait_hits(), u64::from(nowait_reads));
        assert_eq!(done[0].result.as_ref().copied().unwrap(), 4096);
        assert_eq!(&done[0].buf.as_ref().unwrap()[..], &data[4096..8192]);
        assert_eq!(done[1].result.as_ref().copied().unwrap(), 4096);
        assert_eq!(&done[1].buf.as_ref().unwrap()[..], &data[8192..]);
    }
}

/// Small limits: the suite must respect a backend's `queue_depth` and `max_io_bytes`
/// (a correct backend with queue depth 1–4 or transfers under 10,000 bytes passes).
fn small_limits(queue_depth: usize) -> IoConfig {
    IoConfig {
        queue_depth,
        max_io_bytes: 4096,
        buffer_size: 4096,
        workers: 2,
        ..IoConfig::default()
    }
}

mod sync_backend_queue_depth_2_max_io_4k {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> { Box::new(SyncStorageIo::new(&small_limits(2)).unwrap()) },
        options()
    );
}

mod thread_pool_queue_depth_2_max_io_4k {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> { Box::new(ThreadPoolStorageIo::new(&small_limits(2)).unwrap()) },
        options()
    );
}

mod thread_pool_queue_depth_1_max_io_4k {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> { Box::new(ThreadPoolStorageIo::new(&small_limits(1)).unwrap()) },
        options()
    );
}

/// GatedIo (from the testkit) with its gate open over the thread pool: the wrapper passes the
/// whole contract on, the waker included.
mod gated_open_over_thread_pool {
    use super::*;
    use storage_io_testkit::gated::{Gate, GatedIo};
    conformance_tests!(
        || -> Box<dyn StorageIo> {
            let gate = Gate::new();
            gate.open();
            let pool = ThreadPoolStorageIo::new(&IoConfig {
                workers: 2,
                ..IoConfig::default()
            })
            .unwrap();
            Box::new(GatedIo::new(pool, gate, &[]))
        },
        options()
    );
}
