//! Helpers shared by the scheduler's behaviour tests.
#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use storage_io_core::{BackendFactory, OpKind, StorageIo};
use storage_io_scheduler::{DiskScheduler, PageId, SchedulerConfig};
use storage_io_testkit::faulty::{FaultPlan, FaultyIo};
use storage_io_testkit::gated::{Gate, GatedIo};
use storage_io_testkit::memio::MemFs;

pub(crate) const DIR: &str = "/db";
pub(crate) const PAGE: usize = 4096;

/// Backends on one in-memory file system.
pub(crate) fn mem_factory(fs: &MemFs) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>))
}

/// Every worker's backend wrapped with `plan` (each worker gets its own copy of the plan).
pub(crate) fn faulty_factory(fs: &MemFs, plan: FaultPlan) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |_| Ok(Box::new(FaultyIo::new(fs.backend(), plan.clone())) as Box<dyn StorageIo>))
}

/// A small config: `workers` workers, extents of 4 pages so batches cross workers, and
/// `alloc_durability = immediate` (not the default since issue 41): these tests count the
/// allocation images and syncs it makes, and crash right after allocations they expect
/// durable. The `next_sync` tests (model, modes, redo, review) set it themselves.
pub(crate) fn config(workers: usize) -> SchedulerConfig {
    SchedulerConfig {
        workers,
        max_combine_pages: 4,
        alloc_durability: storage_io_scheduler::AllocDurability::Immediate,
        ..SchedulerConfig::default()
    }
}

/// Opens a scheduler on `factory`, whose backends also serve `read_blocking` on the caller's
/// thread (in-memory backends are small).
pub(crate) fn open(factory: &BackendFactory, config: SchedulerConfig) -> DiskScheduler {
    DiskScheduler::open_with_caller_backends(DIR, config, factory.clone(), factory.clone())
        .expect("open the scheduler")
}

/// A page whose bytes say which page and which version it is.
pub(crate) fn page_bytes(page: PageId, version: u32) -> Bytes {
    let mut v = vec![(page.0 as u8) ^ (version as u8); PAGE];
    v[..8].copy_from_slice(&page.0.to_le_bytes());
    v[8..12].copy_from_slice(&version.to_le_bytes());
    Bytes::from(v)
}

/// (page, version) read back from a page written by [`page_bytes`].
pub(crate) fn stamp(bytes: &[u8]) -> (u64, u32) {
    (
        u64::from_le_bytes(bytes[..8].try_into().unwrap()),
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
    )
}

pub(crate) fn allocate(sched: &DiskScheduler, n: usize) -> Vec<PageId> {
    (0..n)
        .map(|_| sched.schedule_allocate().recv().expect("allocate"))
        .collect()
}

/// Waits until `cond` holds (checked every millisecond) or panics after 10 s.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A scratch directory on the target dir's file system (ext4 here, so O_DIRECT works).
pub(crate) fn real_dir(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix(name).tempdir_in(base).unwrap()
}

/// Backends whose read completions wait for `gate` (the testkit's GatedIo over MemFs), so a
/// test can keep a read in flight for as long as it needs.
/// A scheduler of `workers` workers whose reads wait at a gate, on a fresh file system seeded
/// with `seed`. The gate starts open (allocation and writes pass); close it to hold reads.
pub(crate) fn open_gated(seed: u64, workers: usize) -> (Gate, DiskScheduler) {
    let fs = MemFs::new(seed);
    let gate = Gate::new();
    gate.open();
    let sched = open(&gated_factory(&fs, &gate), config(workers));
    (gate, sched)
}

pub(crate) fn gated_factory(fs: &MemFs, gate: &Gate) -> BackendFactory {
    gated_factory_for(fs, gate, &[OpKind::Read])
}

/// Backends whose completions of `kinds` wait for `gate`.
pub(crate) fn gated_factory_for(fs: &MemFs, gate: &Gate, kinds: &[OpKind]) -> BackendFactory {
    let fs = fs.clone();
    let gate = gate.clone();
    let kinds = kinds.to_vec();
    Arc::new(move |_| Ok(Box::new(GatedIo::new(fs.backend(), gate.clone(), &kinds)) as Box<dyn StorageIo>))
}

/// One call of a crash-test workload.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Allocate,
    Deallocate(u64),
    Write(u64),
    WriteDurable(u64),
    Sync,
}
