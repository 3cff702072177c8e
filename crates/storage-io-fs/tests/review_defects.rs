//! The defects review rev41 (issue 41) found through the public API, one test (or two) per
//! defect, named after it. Each failed before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendKind, IoConfig, block_on};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn real_dir() -> tempfile::TempDir {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("rev41").tempdir_in(base).unwrap()
}

fn config(workers: usize) -> AsyncFsConfig {
    AsyncFsConfig {
        io_workers: workers,
        buffer_pool_size: 8 << 20,
        io: IoConfig {
            queue_depth: 32,
            ..IoConfig::default()
        },
        ..AsyncFsConfig::default()
    }
}

fn backends() -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Sync, BackendKind::ThreadPool];
    if common::uring_status().is_ok() {
        kinds.push(BackendKind::IoUring);
    }
    kinds
}

fn fs_on(kind: BackendKind, config: &AsyncFsConfig) -> AsyncFileSystem {
    let mut config = config.clone();
    config.io.backend = kind;
    common::open_fs(&config).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. set_len took effect when polled, after appends called after it: it cut them off
// ---------------------------------------------------------------------------------------------

/// `set_len(0)` is called, then an append; the append answers an offset. Its bytes must be
/// in the file at that offset afterwards (call order), and a later append must not land on it.
#[test]
fn an_append_called_after_set_len_is_not_truncated_away() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("seg");
        block_on(async {
            let f = fs.open_append(&path).await.unwrap();
            assert_eq!(f.append(vec![1u8; 100]).await.0.unwrap(), 0);
            let truncate = f.set_len(0);
            let after = f.append(vec![2u8; 100]);
            let (at, _) = after.await;
            let at = at.unwrap();
            truncate.await.unwrap();
            let later = f.append(vec![3u8; 100]).await.0.unwrap();
            let (n, back) = f.read_at(vec![0u8; 100], at).await;
            assert_eq!(
                (n.unwrap(), back.iter().all(|&b| b == 2)),
                (100, true),
                "{kind}: the append called after set_len answered offset {at} and must be there"
            );
            assert!(
                later >= at + 100 || later + 100 <= at,
                "{kind}: a later append (at {later}) overlaps the earlier one (at {at})"
            );
        });
        fs.shutdown();
    }
}

/// The same from a tokio runtime thread (io_uring: the callers' rings).
#[test]
fn an_append_called_after_set_len_is_not_truncated_away_on_a_runtime() {
    let rt = runtime();
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("seg");
        let fs2 = fs.clone();
        rt.block_on(rt.spawn(async move {
            let f = fs2.open_append(&path).await.unwrap();
            assert_eq!(f.append(vec![1u8; 100]).await.0.unwrap(), 0);
            let truncate = f.set_len(0);
            let after = f.append(vec![2u8; 100]);
            truncate.await.unwrap();
            let at = after.await.0.unwrap();
            let later = f.append(vec![3u8; 100]).await.0.unwrap();
            let (n, back) = f.read_at(vec![0u8; 100], at).await;
            assert_eq!(
                (n.unwrap(), back.iter().all(|&b| b == 2)),
                (100, true),
                "{kind}: the append called after set_len answered offset {at} and must be there (later at {later})"
            );
        }))
        .unwrap();
        fs.shutdown();
    }
}

/// set_len to extend, then append after it completed: lands at len (documented).
#[test]
fn set_len_extend_then_append_lands_at_len_and_errors_name_call_and_path() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let path = dir.path().join("seg");
        block_on(async {
            let f = fs.open_append(&path).await.unwrap();
            f.append(vec![1u8; 10]).await.0.unwrap();
            f.set_len(5000).await.unwrap();
            assert_eq!(f.append(vec![2u8; 10]).await.0.unwrap(), 5000, "{kind}");
            assert_eq!(f.size().await.unwrap(), 5010);
            let ro = fs.open(&path).await.unwrap();
            let e = ro.set_len(0).await.unwrap_err().to_string();
            assert!(e.contains("set_len") && e.contains("seg"), "{kind}: {e}");
        });
        fs.shutdown();
    }
}
