//! The small backends a scheduler's `read_blocking` runs on, one per blocking caller: built here
//! because only the façade knows the backend kinds (the scheduler depends on core only).

use std::sync::Arc;

use storage_io_core::{BackendFactory, BackendKind, IoConfig};

use crate::{build_backend, select};

/// A factory of the small backends a [`DiskScheduler`](storage_io_scheduler::DiskScheduler) reads on for
/// `read_blocking`, each used by one caller thread for one read at a time: for io_uring
/// (`kind`), a ring of depth 2 with two `page_size` registered buffers and no SQPOLL thread;
/// for the thread pool or the sync backend, the sync backend, which reads inline on the
/// caller's thread (a pool would hand the read to one of its threads, the very hand-off
/// `read_blocking` avoids). [`open_scheduler`](crate::open_scheduler) passes one to
/// [`DiskScheduler::open_with_caller_backends`](storage_io_scheduler::DiskScheduler::open_with_caller_backends); it is public for users who open the
/// scheduler with a factory of their own.
pub fn caller_backend_factory(kind: BackendKind, io: &IoConfig, page_size: usize) -> BackendFactory {
    let config = IoConfig {
        queue_depth: 2,
        sq_depth: 0,
        buffer_size: page_size.max(4096),
        sqpoll_idle_ms: None,
        workers: 1,
        ..io.clone()
    };
    // `auto` becomes what it selects here (io_uring, or the thread pool where it is unusable).
    let resolved = match kind {
        BackendKind::Auto => select(&config).map_or(BackendKind::ThreadPool, |s| s.kind),
        other => other,
    };
    let kind = match resolved {
        BackendKind::IoUring => BackendKind::IoUring,
        _ => BackendKind::Sync,
    };
    Arc::new(move |_caller| build_backend(kind, &config))
}
