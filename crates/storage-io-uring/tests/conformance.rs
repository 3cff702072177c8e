//! The testkit's conformance suite on io_uring, in the configurations users will run: one test
//! per case and configuration. Each skips loudly where io_uring is unusable (never in CI).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{IoConfig, StorageIo};
use storage_io_testkit::conformance::ConformanceOptions;
use storage_io_testkit::conformance_tests;
use storage_io_uring::{UringStorageIo, usable_or_skip};

fn options() -> ConformanceOptions {
    ConformanceOptions {
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    }
}

/// Backends of `config`, or `None` (after saying why) where io_uring cannot run here.
fn uring(test: &str, config: IoConfig) -> Option<impl Fn() -> Box<dyn StorageIo>> {
    usable_or_skip(test).then_some(move || -> Box<dyn StorageIo> {
        Box::new(UringStorageIo::new(&config).expect("io_uring backend"))
    })
}

/// Expands to one test per conformance case on `$config`, each skipping where io_uring is
/// unusable.
macro_rules! uring_conformance {
    ($module:ident, $config:expr) => {
        mod $module {
            use super::*;
            conformance_tests!(
                {
                    let Some(make) = uring(concat!(stringify!($module), "_conformance"), $config) else {
                        return;
                    };
                    make
                },
                options()
            );
        }
    };
}

uring_conformance!(uring, IoConfig::default());

// Also the deferred-submit path: requests reach the kernel only at flush/poll/wait.
uring_conformance!(
    uring_unregistered,
    IoConfig {
        fixed_buffers: false,
        submit_batch: 0,
        ..IoConfig::default()
    }
);

// Queue depth 8 and 4 KiB registered buffers: most transfers in the suite are larger than a
// registered buffer, so the heap fallback and QueueFull paths are exercised.
uring_conformance!(
    uring_small_ring_small_buffers,
    IoConfig {
        queue_depth: 8,
        buffer_size: 4096,
        submit_batch: 3,
        ..IoConfig::default()
    }
);

// Every read goes through the ring (the page-cache fast path off).
uring_conformance!(
    uring_without_nowait_reads,
    IoConfig {
        nowait_reads: false,
        ..IoConfig::default()
    }
);

uring_conformance!(
    uring_sqpoll,
    IoConfig {
        sqpoll_idle_ms: Some(20),
        ..IoConfig::default()
    }
);
