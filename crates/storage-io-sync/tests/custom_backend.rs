//! The backend of `examples/custom_backend.rs` (five blocking calls on `BlockingIo`) passes the
//! whole conformance suite, one test per case.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

#[path = "../examples/custom_backend.rs"]
#[allow(dead_code)] // the example's `main`
mod example;

use storage_io_core::{IoConfig, StorageIo};
use storage_io_testkit::conformance::ConformanceOptions;
use storage_io_testkit::conformance_tests;

fn options() -> ConformanceOptions {
    ConformanceOptions {
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    }
}

conformance_tests!(
    || -> Box<dyn StorageIo> { Box::new(example::backend(&IoConfig::default()).unwrap()) },
    options()
);

#[test]
fn the_custom_backend_sees_every_byte_written() {
    use std::sync::atomic::Ordering;
    use storage_io_core::OpenOptions;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut io = example::backend(&IoConfig::default()).unwrap();
    let fd = io
        .open_file(&dir.path().join("f"), &OpenOptions::create())
        .unwrap();
    io.submit_append(fd, &[7u8; 1000]).unwrap();
    io.submit_write(fd, &[8u8; 24], 1000).unwrap();
    io.submit_datasync(fd).unwrap();
    let mut done = Vec::new();
    io.wait_completions(&mut done, 3, None).unwrap();
    assert!(done.iter().all(|c| c.is_ok()));
    assert_eq!(io.file_len(fd).unwrap(), 1024);
    io.deregister_fd(fd).unwrap();
    assert_eq!(io.backend().written.load(Ordering::Relaxed), 1024);
}
