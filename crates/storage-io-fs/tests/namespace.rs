//! Namespace calls as futures (issue 41): `remove_file`, `rename`, `read_dir`, `metadata` and
//! `AsyncFile::set_len`, on every backend with real files; their errors name the call and the
//! path; a call dropped before a worker took it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::backends;

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use storage_io_fs::{
    AsyncFileSystem, AsyncFsConfig, BackendFactory, BackendKind, IoConfig, StorageIo, block_on,
};
use storage_io_testkit::gated::{Gate, GatedIo};
use storage_io_testkit::memio::MemFs;

fn real_dir() -> tempfile::TempDir {
    common::real_dir("namespace")
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

fn fs_on(kind: BackendKind, config: &AsyncFsConfig) -> AsyncFileSystem {
    let mut config = config.clone();
    config.io.backend = kind;
    common::open_fs(&config).unwrap()
}

#[test]
fn a_segment_log_retention_lists_measures_renames_truncates_and_removes() {
    for kind in backends("a_segment_log_retention_lists_measures_renames_truncates_and_removes") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let (a, b) = (dir.path().join("0.seg"), dir.path().join("1.seg"));
        block_on(async {
            for (path, len) in [(&a, 100usize), (&b, 300)] {
                let f = fs.create(path).await.unwrap();
                f.write_at(vec![7u8; len], 0).await.0.unwrap();
                f.close().await.unwrap();
            }
            assert_eq!(
                fs.read_dir(dir.path()).await.unwrap(),
                vec![a.clone(), b.clone()],
                "{kind}"
            );
            let m = fs.metadata(&b).await.unwrap();
            assert_eq!((m.len, m.is_dir), (300, false), "{kind}");
            assert!(fs.metadata(dir.path()).await.unwrap().is_dir);

            // Truncate a torn tail, then append: the append lands at the new end.
            let log = fs.open_append(&b).await.unwrap();
            log.append(vec![1u8; 10]).await.0.unwrap();
            log.set_len(200).await.unwrap();
            assert_eq!(log.size().await.unwrap(), 200, "{kind}");
            let (at, _) = log.append(vec![2u8; 8]).await;
            assert_eq!(at.unwrap(), 200, "{kind}: the append after set_len");
            log.close().await.unwrap();
            assert_eq!(std::fs::metadata(&b).unwrap().len(), 208);

            let archived = dir.path().join("0.seg.old");
            fs.rename(&a, &archived).await.unwrap();
            fs.remove_file(&archived).await.unwrap();
            fs.sync_dir(dir.path()).await.unwrap();
            assert_eq!(fs.read_dir(dir.path()).await.unwrap(), vec![b.clone()], "{kind}");
        });
        fs.shutdown();
    }
}

#[test]
fn namespace_errors_name_the_call_and_the_path() {
    let dir = real_dir();
    let fs = fs_on(BackendKind::Sync, &config(1));
    let missing = dir.path().join("missing");
    let shown = missing.display().to_string();
    block_on(async {
        for (call, err) in [
            ("remove_file", fs.remove_file(&missing).await.unwrap_err()),
            (
                "rename",
                fs.rename(&missing, dir.path().join("x")).await.unwrap_err(),
            ),
            ("read_dir", fs.read_dir(&missing).await.unwrap_err()),
            ("metadata", fs.metadata(&missing).await.unwrap_err()),
        ] {
            let text = err.to_string();
            assert!(text.contains(call) && text.contains(&shown), "{call}: {text}");
        }
    });
    fs.shutdown();
}

#[test]
fn set_len_on_an_in_memory_file_is_unsupported_and_says_so() {
    let mem = MemFs::new(1);
    let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(mem.backend()) as Box<dyn StorageIo>));
    let fs = AsyncFileSystem::with_factory(&config(1), factory).unwrap();
    block_on(async {
        let f = fs.create("/f").await.unwrap();
        let text = f.set_len(0).await.unwrap_err().to_string();
        assert!(text.contains("set_len"), "{text}");
        // The in-memory backend lists and removes its own files.
        assert_eq!(
            fs.read_dir("/").await.unwrap(),
            vec![std::path::PathBuf::from("/f")]
        );
        f.close().await.unwrap();
        fs.remove_file("/f").await.unwrap();
        assert!(fs.read_dir("/").await.unwrap().is_empty());
    });
    fs.shutdown();
}

/// Waits until `cond` holds (checked every millisecond) or panics after 10 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_namespace_call_dropped_before_its_turn_does_nothing() {
    let dir = real_dir();
    let gate = Gate::new();
    let g = gate.clone();
    let factory: BackendFactory = Arc::new(move |_| {
        let inner = storage_io_sync::SyncStorageIo::new(&IoConfig::default())?;
        Ok(Box::new(GatedIo::new(inner, g.clone(), &[])) as Box<dyn StorageIo>)
    });
    let fs = AsyncFileSystem::with_factory(&config(1), factory).unwrap();
    let (keep, gone) = (dir.path().join("keep"), dir.path().join("gone"));
    std::fs::write(&keep, b"k").unwrap();
    std::fs::write(&gone, b"g").unwrap();
    gate.open();
    let file = block_on(fs.open_rw(&keep)).unwrap();
    gate.close();
    // Fill the worker's 32 slots with held reads and queue a write behind them: the namespace
    // calls queue behind it, in call order.
    let reads: Vec<_> = (0..32u64).map(|i| file.read_at(vec![0u8; 1], i)).collect();
    wait_until("32 reads in flight", || fs.metrics().in_flight == 32);
    let write = file.write_at(vec![9u8; 1], 0);
    wait_until("the write queued", || fs.metrics().queued == 1);
    let mut dropped = Box::pin(fs.remove_file(&keep));
    let mut rename = Box::pin(fs.rename(&keep, dir.path().join("renamed")));
    assert!(
        dropped
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    assert!(
        rename
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    drop((dropped, rename));
    let kept = fs.remove_file(&gone);
    gate.open();
    for r in reads {
        block_on(r).0.unwrap();
    }
    block_on(write).0.unwrap();
    block_on(kept).unwrap();
    assert!(keep.exists(), "the dropped remove_file and rename ran");
    assert!(!gone.exists(), "the remove_file that was awaited did not run");
    drop(file);
    fs.shutdown();
}

/// `set_len` takes its place in call order when it is called (it moved the append cursor then),
/// so a dropped future does not stop it: it runs after the write called before it.
#[test]
fn a_set_len_dropped_while_earlier_writes_are_in_flight_still_runs_after_them() {
    let dir = real_dir();
    let gate = Gate::new();
    let g = gate.clone();
    let factory: BackendFactory = Arc::new(move |_| {
        let inner = storage_io_sync::SyncStorageIo::new(&IoConfig::default())?;
        Ok(Box::new(GatedIo::new(inner, g.clone(), &[])) as Box<dyn StorageIo>)
    });
    let fs = AsyncFileSystem::with_factory(&config(1), factory).unwrap();
    let path = dir.path().join("f");
    gate.open();
    let file = block_on(fs.create(&path)).unwrap();
    gate.close();
    let write = file.write_at(vec![1u8; 4096], 0);
    wait_until("the write in flight", || fs.metrics().in_flight == 1);
    let mut truncate = Box::pin(file.set_len(0));
    assert!(
        truncate
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    drop(truncate);
    gate.open();
    assert_eq!(block_on(write).0.unwrap(), 4096);
    assert_eq!(
        block_on(file.size()).unwrap(),
        0,
        "the dropped set_len ran, after the write"
    );
    block_on(file.close()).unwrap();
    fs.shutdown();
}
