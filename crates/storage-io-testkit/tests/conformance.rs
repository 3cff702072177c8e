//! The conformance suite on the testkit's own backends: MemIo, and FaultyIo wrapping real
//! backends with only contract-respecting faults (delays and reordering).
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{IoConfig, OpKind, StorageIo};
use storage_io_sync::{SyncStorageIo, ThreadPoolStorageIo};
use storage_io_testkit::conformance::{self, ConformanceOptions};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultyIo};
use storage_io_testkit::memio::MemFs;

fn options() -> ConformanceOptions {
    ConformanceOptions {
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    }
}

fn delays(seed: u64) -> FaultPlan {
    FaultPlan::new(seed)
        .with_probability(Some(OpKind::Write), 0.3, Fault::Delay { polls: 2 })
        .with_probability(Some(OpKind::Read), 0.3, Fault::Delay { polls: 1 })
        .with_probability(Some(OpKind::Append), 0.3, Fault::Delay { polls: 4 })
        .reorder(true)
}

#[test]
fn memio_conformance() {
    let fs = MemFs::new(5);
    conformance::run_with(|| -> Box<dyn StorageIo> { Box::new(fs.backend()) }, &options());
}

#[test]
fn faulty_delays_over_sync_conformance() {
    conformance::run_with(
        || -> Box<dyn StorageIo> {
            Box::new(FaultyIo::new(
                SyncStorageIo::new(&IoConfig::default()).unwrap(),
                delays(1),
            ))
        },
        &options(),
    );
}

#[test]
fn faulty_delays_over_thread_pool_conformance() {
    conformance::run_with(
        || -> Box<dyn StorageIo> {
            let inner = ThreadPoolStorageIo::new(&IoConfig {
                workers: 2,
                ..IoConfig::default()
            })
            .unwrap();
            Box::new(FaultyIo::new(inner, delays(2)))
        },
        &ConformanceOptions {
            model_cases: 24,
            ..options()
        },
    );
}
