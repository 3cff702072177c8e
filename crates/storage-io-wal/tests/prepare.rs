//! The background segment preparer (`WalConfig::prepare_ahead`): new segments come from it,
//! nothing is lost when it fails or is missing, a clean close leaves no spare behind, and
//! crashes while it works lose no acknowledged record.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use storage_io_core::{BackendFactory, OpKind, StorageIo, StorageIoError};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultyIo};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};
use storage_io_wal::{Lsn, WalConfig, WalManager};

use common::{DIR, mem_factory, read_all, small_config};

/// 30-byte records in 512-byte segments: a new segment every dozen commits.
fn commit_many(wal: &WalManager, n: u8) -> Vec<(Lsn, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let payload = vec![i; 30];
            (wal.commit(&payload).unwrap(), payload)
        })
        .collect()
}

/// Backends on `fs`, the preparer's (worker 2) passed through `preparer` first.
fn factory_with_preparer(
    fs: &MemFs,
    preparer: impl Fn(Box<dyn StorageIo>) -> Result<Box<dyn StorageIo>, StorageIoError> + Send + Sync + 'static,
) -> BackendFactory {
    let inner = mem_factory(fs);
    Arc::new(move |worker| {
        let backend = inner(worker)?;
        if worker == 2 {
            preparer(backend)
        } else {
            Ok(backend)
        }
    })
}

fn segment_files(fs: &MemFs) -> Vec<PathBuf> {
    fs.list()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

#[test]
fn prepared_segments_carry_the_log_and_a_clean_close_leaves_none_behind() {
    let fs = MemFs::new(1);
    let config = small_config(512);
    assert!(
        config.preallocate && config.prepare_ahead,
        "the defaults prepare ahead"
    );
    let (wal, _) = WalManager::open(DIR, config.clone(), mem_factory(&fs)).unwrap();
    let written = commit_many(&wal, 60);
    let stats = wal.stats();
    wal.close().unwrap();
    let files = segment_files(&fs);
    assert!(files.len() >= 5, "the test needs several segments: {files:?}");
    // The first segment was asked for at open and every later one at the switch before it,
    // and a flush waits for a preparation under way: each segment came ready-made.
    assert_eq!(stats.segments_prepared, files.len() as u64, "{stats:?}");
    for f in &files {
        let image = fs.read_file(f).unwrap();
        assert_eq!(image.len(), 512, "{} is not full size", f.display());
    }

    let (wal, _) = WalManager::open(DIR, config, mem_factory(&fs)).unwrap();
    assert_eq!(
        wal.recovery_report().removed_segments,
        Vec::<u64>::new(),
        "a clean close left a prepared segment behind"
    );
    assert_eq!(read_all(&wal), written);
}

#[test]
fn without_a_backend_for_the_preparer_flushes_create_segments_themselves() {
    let fs = MemFs::new(2);
    let factory = factory_with_preparer(&fs, |_| {
        Err(StorageIoError::invalid("no backend for worker 2 in this test"))
    });
    let (wal, _) = WalManager::open(DIR, small_config(512), factory.clone()).unwrap();
    let written = commit_many(&wal, 40);
    assert_eq!(wal.stats().segments_prepared, 0);
    drop(wal);
    fs.crash(CrashOptions::default());
    let (wal, _) = WalManager::open(DIR, small_config(512), factory).unwrap();
    assert_eq!(read_all(&wal), written);
}

#[test]
fn a_failing_preparer_neither_poisons_the_log_nor_leaves_files() {
    let fs = MemFs::new(3);
    let factory = factory_with_preparer(&fs, |backend| {
        let plan = FaultPlan::new(3).with_probability(Some(OpKind::Write), 1.0, Fault::Eio);
        Ok(Box::new(FaultyIo::new(backend, plan)) as Box<dyn StorageIo>)
    });
    let (wal, _) = WalManager::open(DIR, small_config(512), factory.clone()).unwrap();
    let written = commit_many(&wal, 40);
    assert_eq!(wal.stats().segments_prepared, 0, "every preparation failed");
    wal.close().unwrap();
    let files = segment_files(&fs);
    let (wal, _) = WalManager::open(DIR, small_config(512), factory).unwrap();
    assert_eq!(read_all(&wal), written);
    assert_eq!(
        wal.recovery_report().removed_segments,
        Vec::<u64>::new(),
        "a failed preparation left a file: {files:?}"
    );
}

/// Crashes at a range of backend ops while the writer and the preparer both work (their ops
/// interleave differently from run to run, so a crash point may fire in either, or not at all).
#[test]
fn crashes_while_segments_are_prepared_lose_no_acknowledged_record() {
    let mut fired = 0;
    for k in 1..=150u64 {
        let fs = MemFs::new(k);
        let factory = mem_factory(&fs);
        let config = WalConfig {
            direct_io: k.is_multiple_of(2),
            segment_size_bytes: if k.is_multiple_of(2) { 8192 } else { 512 },
            ..small_config(512)
        };
        let tear = if k.is_multiple_of(3) {
            TearMode::AnySectors
        } else {
            TearMode::Prefix
        };
        fs.crash_after_ops(k, CrashOptions { tear });
        let mut acked = Vec::new();
        {
            let (wal, _) = WalManager::open(DIR, config.clone(), factory.clone()).unwrap();
            for i in 0..60u8 {
                let payload = vec![i; 30 + usize::from(i) * 7];
                match wal.commit(&payload) {
                    Ok(lsn) => acked.push((lsn, payload)),
                    Err(_) => break,
                }
            }
        }
        fs.crash_after_ops(0, CrashOptions::default());
        if fs.crash_count() == 1 {
            fired += 1;
        } else {
            fs.crash(CrashOptions::default());
        }
        let (wal, _) = WalManager::open(DIR, config.clone(), factory.clone()).unwrap();
        let got = read_all(&wal);
        assert!(
            got.len() >= acked.len() && got[..acked.len()] == acked[..],
            "crash at op {k}: acknowledged records lost or changed ({} recovered, {} acked)",
            got.len(),
            acked.len()
        );
        let lsn = wal.commit(b"after").unwrap();
        wal.close().unwrap();
        let (wal, _) = WalManager::open(DIR, config, factory).unwrap();
        assert!(
            wal.recovery_report().removed_segments.is_empty(),
            "crash at op {k}: a clean close after recovery left a file to remove"
        );
        let mut expect = got;
        expect.push((lsn, b"after".to_vec()));
        assert_eq!(read_all(&wal), expect, "crash at op {k}: records after recovery");
    }
    assert!(fired > 100, "only {fired} of 150 crash points fired");
}
