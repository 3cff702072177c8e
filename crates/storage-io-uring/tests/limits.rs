//! Configs at the edge of what `IoConfig::validate` accepts: building a ring from them returns,
//! never aborts the process.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::IoConfig;
use storage_io_uring::{UringStorageIo, usable_or_skip};

#[test]
fn uring_new_with_64_gib_of_registered_buffers_returns_an_error_not_an_abort() {
    if !usable_or_skip("uring_new_with_64_gib_of_registered_buffers_returns_an_error_not_an_abort") {
        return;
    }
    let config = IoConfig {
        queue_depth: 1024,
        buffer_size: 64 << 20,
        max_io_bytes: 64 << 20,
        ..IoConfig::default()
    };
    let err = UringStorageIo::new(&config).map(drop).unwrap_err();
    assert!(err.to_string().contains("buffer_size"), "{err}");
}

#[test]
fn uring_new_with_max_files_usize_max_returns_an_error_not_an_abort() {
    if !usable_or_skip("uring_new_with_max_files_usize_max_returns_an_error_not_an_abort") {
        return;
    }
    let config = IoConfig {
        max_files: usize::MAX,
        ..IoConfig::default()
    };
    let err = UringStorageIo::new(&config).map(drop).unwrap_err();
    assert!(err.to_string().contains("max_files"), "{err}");
}
