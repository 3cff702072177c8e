//! Feeds arbitrary bytes to the WAL's frame decoder on its own (a position and base LSN in byte
//! 0, then a segment image); `check_frame` panics on a frame that decodes yet does not fit its
//! segment or does not re-encode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage_io_wal::fuzzing::check_frame(data);
});
