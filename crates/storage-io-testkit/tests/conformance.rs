//! The conformance suite on the testkit's own backends: MemIo, and FaultyIo wrapping MemIo with
//! only contract-respecting faults (delays and reordering). One test per case and backend
//! (`conformance_tests!`), so that one failure does not hide the rest. FaultyIo over the real
//! backends is checked in storage-io-sync's tests (testkit has no dev-dependency on a backend
//! crate, so that every crate packages on its own).
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::{OpKind, StorageIo};
use storage_io_testkit::conformance::ConformanceOptions;
use storage_io_testkit::conformance_tests;
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

mod memio {
    use super::*;
    conformance_tests!(
        {
            let fs = MemFs::new(5);
            move || -> Box<dyn StorageIo> { Box::new(fs.backend()) }
        },
        options()
    );
}

mod faulty_delays_over_memio {
    use super::*;
    conformance_tests!(
        {
            let fs = MemFs::new(8);
            move || -> Box<dyn StorageIo> { Box::new(FaultyIo::new(fs.backend(), delays(3))) }
        },
        options()
    );
}

/// `run_with` runs the same table in one call, and `run_case` refuses a name that is no case.
#[test]
fn run_with_covers_every_case_and_run_case_refuses_unknown_names() {
    assert_eq!(storage_io_testkit::conformance::CASES.len(), 18);
    let fs = MemFs::new(6);
    storage_io_testkit::conformance::run_with(
        || -> Box<dyn StorageIo> { Box::new(fs.backend()) },
        &ConformanceOptions {
            model_cases: 4,
            verbose: false,
            ..options()
        },
    );
    let unknown = std::panic::catch_unwind(|| {
        storage_io_testkit::conformance::run_case(
            "no_such_case",
            || -> Box<dyn StorageIo> { Box::new(MemFs::new(7).backend()) },
            &options(),
        )
    });
    let message = unknown.unwrap_err();
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("no case named \"no_such_case\""), "{text}");
}
