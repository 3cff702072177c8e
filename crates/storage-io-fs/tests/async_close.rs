//! `AsyncFile::close(&self)`: a file shared through an `Arc` closes without being unwrapped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendFactory, StorageIo, StorageIoError, block_on};
use storage_io_testkit::memio::MemFs;

fn mem_fs(mem: &MemFs) -> AsyncFileSystem {
    let mem = mem.clone();
    let config = AsyncFsConfig {
        io_workers: 1,
        ..AsyncFsConfig::default()
    };
    let io = config.io.clone();
    let factory: BackendFactory =
        Arc::new(move |_| Ok(Box::new(mem.backend_with(&io)) as Box<dyn StorageIo>));
    AsyncFileSystem::with_factory(&config, factory).unwrap()
}

/// One holder closes the shared file: what was appended before is there, later operations
/// through any holder fail with `BadFd`, a second close answers `Ok`, and dropping the last
/// holder afterwards is quiet.
#[test]
fn a_shared_file_closes_through_any_holder() {
    let mem = MemFs::new(41);
    let fs = mem_fs(&mem);
    block_on(async {
        let file = Arc::new(fs.open_append("/seg").await.unwrap());
        let other = Arc::clone(&file);
        let (at, _) = other.append(b"kept".to_vec()).await;
        assert_eq!(at.unwrap(), 0);
        file.close().await.unwrap();
        let (result, _) = other.append(b"late".to_vec()).await;
        assert!(matches!(result, Err(StorageIoError::BadFd { .. })), "{result:?}");
        other.close().await.unwrap();
        drop((file, other));
        let again = fs.open("/seg").await.unwrap();
        assert_eq!(again.size().await.unwrap(), 4);
    });
}

/// A close whose future is dropped before it is polled still closes (it was sent when called):
/// the next operation on the file fails, and the bytes written before it are kept.
#[test]
fn a_close_dropped_unpolled_still_closes() {
    let mem = MemFs::new(42);
    let fs = mem_fs(&mem);
    block_on(async {
        let file = fs.create("/f").await.unwrap();
        let write = file.write_at(b"abc".to_vec(), 0);
        drop(file.close());
        assert_eq!(write.await.0.unwrap(), 3);
        let (result, _) = file.read_at(vec![0u8; 3], 0).await;
        assert!(matches!(result, Err(StorageIoError::BadFd { .. })), "{result:?}");
        drop(file);
        let (n, buf) = fs.open("/f").await.unwrap().read_at(vec![0u8; 3], 0).await;
        assert_eq!((n.unwrap(), &buf[..]), (3, &b"abc"[..]));
    });
}
