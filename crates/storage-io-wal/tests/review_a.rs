//! Defects from the review of issue 37 (items 0, 2, 3, 4, 6, 8, 10): each test is named after
//! the defect it pins down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use storage_io_core::{BackendFactory, IoConfig, OpenOptions, StorageIo};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::{WalConfig, WalError, WalManager};

use common::{DIR, mem_factory, open, read_all, small_config};

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

/// Puts a file with `bytes` at `path` of the in-memory file system.
fn put_file(fs: &MemFs, path: &Path, bytes: &[u8]) {
    let mut io = fs.backend();
    let fd = io.open_file(path, &OpenOptions::create()).unwrap();
    io.submit_write(fd, bytes, 0).unwrap();
    io.submit_datasync(fd).unwrap();
    let mut done = Vec::new();
    io.wait_completions(&mut done, 2, None).unwrap();
    assert!(done.iter().all(|c| c.result.is_ok()));
    io.deregister_fd(fd).unwrap();
}

#[test]
fn a_stray_file_named_like_a_segment_is_refused_and_never_removed() {
    let fs = MemFs::new(2);
    let factory = mem_factory(&fs);
    let config = small_config(512);
    let dir = Path::new(DIR);
    let wal = open(dir, &config, &factory);
    let mut expected = Vec::new();
    // Past segment 0xa, so that an upper-case name can alias a real segment.
    while wal.next_lsn().0 / 512 <= 0xb {
        let payload = format!("record {}", expected.len()).into_bytes();
        wal.commit(&payload).unwrap();
        expected.push(payload);
    }
    wal.close().unwrap();
    drop(wal);
    let segments_before = fs.list();
    for stray in [
        "+000000000000000.wal",
        "000000000000000A.wal",
        "0x0000000000000a.wal",
        "00000000000000000.wal",
        "-1.wal",
    ] {
        let path = dir.join(stray);
        let copy_of = if stray.contains('A') {
            "000000000000000a.wal"
        } else {
            "0000000000000000.wal"
        };
        put_file(&fs, &path, &fs.read_file(&dir.join(copy_of)).unwrap());
        match WalManager::open(dir, config.clone(), factory.clone()) {
            Err(WalError::ForeignFile { path: named, .. }) => assert_eq!(named, path, "{stray}"),
            Err(e) => panic!("{stray}: expected ForeignFile, got {e}"),
            Ok(_) => panic!("{stray}: a directory holding it was opened"),
        }
        let mut listed = fs.list();
        listed.retain(|p| p != &path);
        assert_eq!(
            listed, segments_before,
            "{stray}: the open removed or created a file"
        );
        fs.backend().remove_file(&path).unwrap();
    }
    let wal = open(dir, &config, &factory);
    let got: Vec<Vec<u8>> = read_all(&wal).into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, expected);
}
