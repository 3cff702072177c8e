//! FaultyIo (from storage-io-testkit) over the real portable backends: the conformance suite
//! with contract-respecting faults (delays and reordering), and delivery order under them.
//! These live here rather than in the testkit so that the testkit needs no backend crate.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::collections::HashSet;

use storage_io_core::{IoConfig, OpKind, StorageIo};
use storage_io_sync::{SyncStorageIo, ThreadPoolStorageIo};
use storage_io_testkit::conformance::ConformanceOptions;
use storage_io_testkit::conformance_tests;
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultyIo};

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

mod faulty_delays_over_sync {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> {
            Box::new(FaultyIo::new(
                SyncStorageIo::new(&IoConfig::default()).unwrap(),
                delays(1),
            ))
        },
        options()
    );
}

mod faulty_delays_over_thread_pool {
    use super::*;
    conformance_tests!(
        || -> Box<dyn StorageIo> {
            let inner = ThreadPoolStorageIo::new(&IoConfig {
                workers: 2,
                ..IoConfig::default()
            })
            .unwrap();
            Box::new(FaultyIo::new(inner, delays(2)))
        },
        ConformanceOptions {
            model_cases: 24,
            ..options()
        }
    );
}

#[test]
fn delayed_and_reordered_completions_keep_tokens_unique_and_syncs_last() {
    let inner = ThreadPoolStorageIo::new(&IoConfig {
        workers: 3,
        ..IoConfig::default()
    })
    .unwrap();
    let plan = FaultPlan::new(99)
        .with_probability(Some(OpKind::Write), 0.5, Fault::Delay { polls: 3 })
        .reorder(true);
    let mut io = FaultyIo::new(inner, plan);
    let file = tempfile::tempfile().unwrap();
    let fd = io.register_fd(file).unwrap();
    let mut writes = HashSet::new();
    for i in 0..60u64 {
        writes.insert(io.submit_write(fd, &[i as u8; 256], i * 256).unwrap());
    }
    let sync = io.submit_datasync(fd).unwrap();
    let mut done = Vec::new();
    while io.pending_count() > 0 {
        io.poll_completions(&mut done);
        std::thread::yield_now();
    }
    let tokens: HashSet<_> = done.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), 61, "one completion per op, tokens unique");
    let pos = done.iter().position(|c| c.token == sync).unwrap();
    assert!(
        done[..pos].iter().filter(|c| writes.contains(&c.token)).count() == 60,
        "the datasync is delivered after every write it covers, even with delays"
    );
    let in_order = done[..pos].windows(2).all(|w| w[0].token < w[1].token);
    assert!(!in_order, "reordering changed the delivery order");
    assert!(io.injected() > 10);
}
