//! Defects from the review of issue 37 (items 0, 2, 3, 4, 6, 8, 10): each test is named after
//! the defect it pins down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use storage_io_core::{BackendFactory, IoConfig, StorageIo};
use storage_io_wal::{WalConfig, WalManager};

/// Real files through the thread-pool backend (what `storage_io::backend_factory` gives on a
/// machine without io_uring).
fn pool_factory() -> BackendFactory {
    Arc::new(|_| {
        let io = storage_io_sync::ThreadPoolStorageIo::new(&IoConfig::default())?;
        Ok(Box::new(io) as Box<dyn StorageIo>)
    })
}

/// A fresh directory under the target directory (a real file system, not tmpfs).
fn real_dir(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir_in(base).unwrap();
    let dir = tmp.path().join("wal");
    (tmp, dir)
}

fn read_from_first(wal: &WalManager) -> Vec<Vec<u8>> {
    wal.reader(wal.first_lsn())
        .expect("a reader of a fresh log")
        .map(|r| r.expect("reading a fresh log yields nothing, never an error").1)
        .collect()
}

#[test]
fn a_fresh_log_on_real_files_can_be_read_at_once() {
    // Without the preparer the first segment does not exist until the first flush; with it,
    // whether it exists yet is a race. Either way the empty log reads as empty.
    for prepare_ahead in [false, true] {
        for _ in 0..5 {
            let (_tmp, dir) = real_dir("wal-fresh");
            let config = WalConfig {
                segment_size_bytes: 1 << 20,
                prepare_ahead,
                ..WalConfig::default()
            };
            let (wal, _) = WalManager::open(&dir, config, pool_factory()).unwrap();
            assert!(read_from_first(&wal).is_empty());
            wal.commit(b"first").unwrap();
            assert_eq!(read_from_first(&wal), vec![b"first".to_vec()]);
            wal.close().unwrap();
        }
    }
}
