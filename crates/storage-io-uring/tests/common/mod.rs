//! Helpers shared by the io_uring integration tests.

use std::time::Duration;

use storage_io_core::{IoCompletion, StorageIo};

/// A temporary directory under target/ (ext4 here, so O_DIRECT works; /tmp may be tmpfs).
pub(crate) fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target/")
}

/// Waits until nothing is pending and returns every completion, in delivery order.
pub(crate) fn drain(io: &mut dyn StorageIo) -> Vec<IoCompletion> {
    let mut out = Vec::new();
    while io.pending_count() > 0 {
        io.wait_completions(&mut out, io.pending_count(), Some(Duration::from_secs(10)))
            .expect("wait_completions");
    }
    out
}
