//! [`Counters`]: what the workers count, read by
//! [`DiskScheduler::stats`](crate::DiskScheduler::stats).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use storage_io_core::StorageIoError;

/// Counters shared by the workers and read by [`DiskScheduler::stats`](crate::DiskScheduler::stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read_ios: AtomicU64,
    pub(crate) pages_read: AtomicU64,
    pub(crate) reads_joined: AtomicU64,
    pub(crate) reads_from_pending_writes: AtomicU64,
    /// Reads done on the caller's thread (`read_blocking`).
    pub(crate) caller_reads: AtomicU64,
    pub(crate) write_ios: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) metadata_writes: AtomicU64,
    /// How many allocation changes since open the newest durable image holds (worker 0
    /// publishes it when an image's fdatasync succeeds).
    pub(crate) durable_alloc_changes: AtomicU64,
    /// Set (by worker 0, before it answers) when an allocation image could not be made
    /// durable: from then on every allocation change is refused (`AllocationPoisoned`).
    pub(crate) alloc_poisoned: OnceLock<StorageIoError>,
    /// Zero pages (each a durable write) finished, well or not: an image waits for the zero
    /// pages sent before it (`WorkerMsg::Persist::zeros`).
    pub(crate) zeros_finished: AtomicU64,
    /// Sum of the workers' backend `held_ns` (published before each batch's answers go out).
    pub(crate) backend_held_ns: AtomicU64,
    /// Sum of the workers' backend `submit_calls` (published with `backend_held_ns`).
    pub(crate) backend_submit_calls: AtomicU64,
    /// Sum of the workers' backend `submit_call_ns` (published with `backend_held_ns`).
    pub(crate) backend_submit_call_ns: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    // Publishing runs after every batch of completions, mostly with nothing new for some
    // counters (no submit calls on the portable backends): skip the atomic then.
    if by > 0 {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}
