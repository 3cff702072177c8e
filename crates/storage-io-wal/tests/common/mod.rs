//! Helpers shared by the WAL behaviour tests.
#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use storage_io_core::{BackendFactory, StorageIo};
use storage_io_testkit::faulty::{FaultPlan, FaultyIo};
use storage_io_testkit::memio::{MemFs, TearMode};
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalManager};

pub(crate) const DIR: &str = "/wal";

/// Backends on one in-memory file system.
pub(crate) fn mem_factory(fs: &MemFs) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>))
}

/// Backends on one in-memory file system, the writer's (index 0) wrapped with `plan`.
pub(crate) fn faulty_factory(fs: &MemFs, plan: FaultPlan) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |worker| {
        if worker == 0 {
            Ok(Box::new(FaultyIo::new(fs.backend(), plan.clone())) as Box<dyn StorageIo>)
        } else {
            Ok(Box::new(fs.backend()) as Box<dyn StorageIo>)
        }
    })
}

/// Real files through the inline sync backend.
pub(crate) fn sync_factory() -> BackendFactory {
    Arc::new(|_| {
        let io = storage_io_sync::SyncStorageIo::new(&storage_io_core::IoConfig::default())?;
        Ok(Box::new(io) as Box<dyn StorageIo>)
    })
}

/// Small segments so that tests cross segment boundaries often.
pub(crate) fn small_config(segment_size_bytes: u64) -> WalConfig {
    WalConfig {
        segment_size_bytes,
        sync_mode: SyncMode::Sync,
        ..WalConfig::default()
    }
}

/// Every record in the log, in order.
pub(crate) fn read_all(wal: &WalManager) -> Vec<(Lsn, Vec<u8>)> {
    wal.reader(wal.first_lsn())
        .expect("reader")
        .map(|r| r.expect("a record the reader returns verifies"))
        .collect()
}

pub(crate) fn open(dir: &Path, config: &WalConfig, factory: &BackendFactory) -> WalManager {
    WalManager::open(dir, config.clone(), factory.clone())
        .expect("open")
        .0
}

/// The tear mode of crash point `k`: none, a prefix, or any sectors, in turn.
pub(crate) fn tear(k: u64) -> TearMode {
    match k % 3 {
        0 => TearMode::None,
        1 => TearMode::Prefix,
        _ => TearMode::AnySectors,
    }
}
