//! The testkit's conformance suite on io_uring, in the configurations users will run.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{IoConfig, StorageIo};
use storage_io_testkit::conformance::{self, ConformanceOptions};
use storage_io_uring::{UringStorageIo, usable_or_skip};

fn options() -> ConformanceOptions {
    ConformanceOptions {
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    }
}

fn run(test: &str, config: IoConfig) {
    if !usable_or_skip(test) {
        return;
    }
    conformance::run_with(
        move || -> Box<dyn StorageIo> { Box::new(UringStorageIo::new(&config).expect("io_uring backend")) },
        &options(),
    );
}

#[test]
fn uring_conformance() {
    run("uring_conformance", IoConfig::default());
}

#[test]
fn uring_unregistered_conformance() {
    // Also the deferred-submit path: requests reach the kernel only at flush/poll/wait.
    run(
        "uring_unregistered_conformance",
        IoConfig {
            fixed_buffers: false,
            submit_batch: 0,
            ..IoConfig::default()
        },
    );
}

#[test]
fn uring_small_ring_small_buffers_conformance() {
    // Queue depth 8 and 4 KiB registered buffers: most transfers in the suite are larger than a
    // registered buffer, so the heap fallback and QueueFull paths are exercised.
    run(
        "uring_small_ring_small_buffers_conformance",
        IoConfig {
            queue_depth: 8,
            buffer_size: 4096,
            submit_batch: 3,
            ..IoConfig::default()
        },
    );
}

#[test]
fn uring_without_nowait_reads_conformance() {
    // Every read goes through the ring (the page-cache fast path off).
    run(
        "uring_without_nowait_reads_conformance",
        IoConfig {
            nowait_reads: false,
            ..IoConfig::default()
        },
    );
}

#[test]
fn uring_sqpoll_conformance() {
    run(
        "uring_sqpoll_conformance",
        IoConfig {
            sqpoll_idle_ms: Some(20),
            ..IoConfig::default()
        },
    );
}
