//! `inline_io` on real files: buffered flushes write and fdatasync on the flushing thread
//! through the segments' OS handles (one flush at a time, or several in flight), and the log
//! reads back the same every way.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use storage_io_wal::{WalConfig, WalManager};

fn scratch(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix(name).tempdir_in(base).unwrap()
}

#[test]
fn inline_and_backend_flushes_write_the_same_log() {
    for (inline_io, max_flushes_in_flight) in [(true, 1), (true, 4), (false, 1)] {
        let tmp = scratch("wal-inline");
        let dir = tmp.path().join("wal");
        let config = WalConfig {
            segment_size_bytes: 64 * 1024,
            inline_io,
            max_flushes_in_flight,
            ..WalConfig::default()
        };
        let (wal, _) = WalManager::open(&dir, config.clone(), sync_factory()).unwrap();
        let wal = Arc::new(wal);
        // Several committers across several segments, each commit durable when it returns.
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let wal = Arc::clone(&wal);
                s.spawn(move || {
                    let mut seen = wal.durable_lsn();
                    for i in 0..300u32 {
                        let mut record = vec![t; 100];
                        record[..4].copy_from_slice(&i.to_le_bytes());
                        let lsn = wal.commit(&record).unwrap();
                        // Acknowledged in LSN order: durable through this record, and the
                        // durable end never moves back, whichever flush finished first.
                        let durable = wal.durable_lsn();
                        assert!(durable > lsn && durable >= seen);
                        seen = durable;
                    }
                });
            }
        });
        let stats = wal.stats();
        assert!(
            stats.datasyncs > 0 && stats.datasyncs <= stats.flushes + 16,
            "{stats:?}"
        );
        wal.close().unwrap();
        drop(wal);
        let (wal, _) = WalManager::open(&dir, config, sync_factory()).unwrap();
        let records = read_all(&wal);
        assert_eq!(
            records.len(),
            1200,
            "inline_io = {inline_io}, {max_flushes_in_flight} in flight"
        );
        for t in 0..4u8 {
            let mine: Vec<u32> = records
                .iter()
                .filter(|(_, r)| r[4] == t)
                .map(|(_, r)| u32::from_le_bytes(r[..4].try_into().unwrap()))
                .collect();
            assert_eq!(
                mine,
                (0..300).collect::<Vec<_>>(),
                "committer {t}, inline_io = {inline_io}"
            );
        }
    }
}

#[test]
fn inline_flushes_never_hand_a_write_or_a_datasync_to_the_backend() {
    use storage_io_core::{BackendFactory, IoConfig, OpKind, StorageIo};
    use storage_io_testkit::gated::{Gate, GatedIo};
    let tmp = scratch("wal-inline-gated");
    let gate = Gate::new(); // closed: an op handed to the backend would never complete
    let held = gate.clone();
    let factory: BackendFactory = Arc::new(move |_| {
        let io = storage_io_sync::SyncStorageIo::new(&IoConfig::default())?;
        Ok(
            Box::new(GatedIo::new(io, held.clone(), &[OpKind::Write, OpKind::Datasync]))
                as Box<dyn StorageIo>,
        )
    });
    let config = WalConfig {
        segment_size_bytes: 64 * 1024,
        preallocate: false,
        prepare_ahead: false,
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(tmp.path(), config, factory).unwrap();
    for i in 0..50u32 {
        wal.commit(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(
        gate.submitted(),
        0,
        "a write or datasync went through the backend"
    );
    assert!(wal.stats().datasyncs >= 1);
}
