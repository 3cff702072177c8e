//! Feeds arbitrary text to the JSON and TOML loading of `IoConfig`, `WalConfig` and
//! `SchedulerConfig` (byte 0 picks which); `check_config_text` panics on a panic while parsing
//! or validating, or on a valid config that does not round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage_io::fuzzing::check_config_text(data);
});
