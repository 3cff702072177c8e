//! Feeds arbitrary bytes to the page scheduler's allocation-image decoder; `check_alloc_image`
//! panics on an image that decodes yet breaks an invariant or does not re-encode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage_io_scheduler::fuzzing::check_alloc_image(data);
});
