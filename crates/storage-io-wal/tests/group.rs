//! Group commit with many threads, on real files (inline sync backend and the thread pool) and
//! on MemIo; every commit is durable when it returns, and fdatasyncs are fewer than commits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use storage_io_core::{BackendFactory, IoConfig, StorageIo};
use storage_io_testkit::memio::{CrashOptions, MemFs};
use storage_io_wal::{Lsn, SyncMode, WalConfig, WalManager};

use common::{DIR, mem_factory, read_all, sync_factory};

fn pool_factory() -> BackendFactory {
    Arc::new(|_| {
        let config = IoConfig {
            workers: 2,
            ..IoConfig::default()
        };
        Ok(Box::new(storage_io_sync::ThreadPoolStorageIo::new(&config)?) as Box<dyn StorageIo>)
    })
}

fn tmp_dir() -> tempfile::TempDir {
    // Under the target dir: a real ext4 file system here, never tmpfs.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// `threads` committers, `per_thread` commits each; returns every (lsn, payload) acknowledged.
fn commit_concurrently(wal: &Arc<WalManager>, threads: usize, per_thread: usize) -> Vec<(Lsn, Vec<u8>)> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (wal, barrier) = (Arc::clone(wal), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..per_thread)
                    .map(|i| {
                        let payload = format!("thread {t} commit {i}").into_bytes();
                        let lsn = wal.commit(&payload).unwrap();
                        // Durable when commit returns: the durable end is past this record.
                        assert!(wal.durable_lsn() > lsn);
                        (lsn, payload)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

fn check_group_commit(factory: BackendFactory, mode: SyncMode, label: &str) {
    let dir = tmp_dir();
    let config = WalConfig {
        segment_size_bytes: 256 << 10,
        sync_mode: mode,
        ..WalConfig::default()
    };
    let wal = Arc::new(
        WalManager::open(dir.path(), config.clone(), factory.clone())
            .unwrap()
            .0,
    );
    let acked = commit_concurrently(&wal, 16, 40);
    let stats = wal.stats();
    assert_eq!(stats.appends, 640);
    assert!(
        stats.datasyncs < 640,
        "{label}: group commit issued {} fdatasyncs for 640 commits",
        stats.datasyncs
    );
    eprintln!(
        "{label}: 640 commits, {} flushes, {} fdatasyncs",
        stats.flushes, stats.datasyncs
    );
    drop(wal);
    let (wal, _) = WalManager::open(dir.path(), config, factory).unwrap();
    let got = read_all(&wal);
    let got_set: HashSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), 640, "{label}");
    for rec in &acked {
        assert!(got_set.contains(rec), "{label}: commit at {} lost", rec.0);
    }
}

#[test]
fn group_commit_on_real_files_with_the_sync_backend() {
    check_group_commit(
        sync_factory(),
        WalConfig::default().sync_mode,
        "sync backend, group",
    );
}

#[test]
fn group_commit_on_real_files_with_the_thread_pool() {
    check_group_commit(
        pool_factory(),
        WalConfig::default().sync_mode,
        "thread pool, group",
    );
}

#[test]
fn group_commit_with_a_gathering_delay_batches_harder() {
    let mode = SyncMode::Group {
        max_delay_us: 2_000,
        max_batch_bytes: 64 << 10,
    };
    check_group_commit(sync_factory(), mode, "sync backend, group 2 ms");
}

#[test]
fn sync_mode_commits_are_durable_across_a_crash() {
    let fs = MemFs::new(11);
    let config = WalConfig {
        segment_size_bytes: 4096,
        sync_mode: SyncMode::Sync,
        ..WalConfig::default()
    };
    let wal = Arc::new(WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap().0);
    let acked = commit_concurrently(&wal, 8, 50);
    assert!(
        fs.sync_count() <= 400 * 2,
        "at most one data sync per segment per commit"
    );
    std::mem::forget(wal); // the process dies without closing
    fs.crash(CrashOptions::default());
    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    let got: HashSet<_> = read_all(&wal).into_iter().collect();
    assert!(acked.iter().all(|r| got.contains(r)));
}
