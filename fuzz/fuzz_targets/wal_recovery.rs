//! Feeds arbitrary bytes to the WAL's record decoder and recovery planner as a log of 512-byte
//! segments; `check_log_image` panics on any broken invariant.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run wal_recovery corpus/wal_recovery`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage_io_wal::fuzzing::check_log_image(data);
});
