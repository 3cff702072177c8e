//! The testkit's conformance suite against both portable backends.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{IoConfig, StorageIo};
use storage_io_sync::{SyncStorageIo, ThreadPoolStorageIo};
use storage_io_testkit::conformance::{self, ConformanceOptions};

fn options() -> ConformanceOptions {
    ConformanceOptions {
        // Under target/, on the same file system as the build: O_DIRECT works there on ext4/xfs.
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    }
}

#[test]
fn sync_backend_conformance() {
    conformance::run_with(
        || -> Box<dyn StorageIo> { Box::new(SyncStorageIo::new(&IoConfig::default()).unwrap()) },
        &options(),
    );
}

#[test]
fn thread_pool_backend_conformance() {
    conformance::run_with(
        || -> Box<dyn StorageIo> {
            Box::new(
                ThreadPoolStorageIo::new(&IoConfig {
                    workers: 4,
                    ..IoConfig::default()
                })
                .unwrap(),
            )
        },
        &options(),
    );
}

#[test]
fn thread_pool_single_worker_conformance() {
    // One worker serialises everything: the barrier logic must not deadlock on it.
    conformance::run_with(
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
        &ConformanceOptions {
            model_cases: 16,
            ..options()
        },
    );
}
