//! What the tests need of backend selection, which is the façade's (a layer above this crate):
//! build a backend of a given kind, and start a file system on the kind a config asks for
//! (`auto`: io_uring where the probe passes, else the thread pool), as `storage_io::open_async_fs`
//! does.
#![allow(dead_code, unreachable_pub)] // each test binary uses some of these

use std::sync::Arc;

use storage_io_fs::{
    AsyncFileSystem, AsyncFsConfig, BackendFactory, BackendKind, IoConfig, Result, StorageIo,
};

/// Whether io_uring works here, or why not.
pub fn uring_status() -> std::result::Result<(), String> {
    storage_io_uring::probe()
        .map(|_| ())
        .map_err(|why| format!("io_uring unavailable: {why}"))
}

/// One backend of `kind` (never `Auto`).
pub fn build_backend(kind: BackendKind, config: &IoConfig) -> Result<Box<dyn StorageIo>> {
    Ok(match kind {
        BackendKind::Sync => Box::new(storage_io_sync::SyncStorageIo::new(config)?),
        BackendKind::ThreadPool => Box::new(storage_io_sync::ThreadPoolStorageIo::new(config)?),
        #[cfg(target_os = "linux")]
        BackendKind::IoUring => Box::new(storage_io_uring::UringStorageIo::new(config)?),
        other => panic!("the tests build no {other} backend here"),
    })
}

/// A file system on `config.io.backend` (`auto` resolved as the façade does), with the callers'
/// rings when that is io_uring.
pub fn open_fs(config: &AsyncFsConfig) -> Result<AsyncFileSystem> {
    let kind = match config.io.backend {
        BackendKind::Auto if uring_status().is_ok() => BackendKind::IoUring,
        BackendKind::Auto => BackendKind::ThreadPool,
        other => other,
    };
    let io = config.io.clone();
    let factory: BackendFactory = Arc::new(move |_| build_backend(kind, &io));
    AsyncFileSystem::with_backend_kind(config, factory, kind)
}

/// A fresh directory under the test target's temporary directory (a real file system, ext4
/// here, never /dev/shm: O_DIRECT needs one), named after `prefix`.
pub fn real_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix(prefix).tempdir_in(base).unwrap()
}

/// The backends to run on: sync, the thread pool, and io_uring where it works (in CI, where
/// STORAGE_IO_REQUIRE_URING=1, a missing io_uring fails the test instead of skipping it).
pub fn backends(test: &str) -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Sync, BackendKind::ThreadPool];
    match uring_status() {
        Ok(()) => kinds.push(BackendKind::IoUring),
        Err(status) => {
            let required = std::env::var("STORAGE_IO_REQUIRE_URING").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "io_uring required (STORAGE_IO_REQUIRE_URING=1) but {status}"
            );
            eprintln!("SKIPPED the io_uring case of {test}: {status}");
        }
    }
    kinds
}
