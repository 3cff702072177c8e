//! The WAL through the façade, on the auto-selected backend and real files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use storage_io::IoConfig;
use storage_io::wal::{WalConfig, WalReader};

#[test]
fn open_wal_on_the_auto_backend_commits_and_recovers() {
    // Under the target dir: a real ext4 file system here, never tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = WalConfig {
        segment_size_bytes: 1 << 20,
        ..WalConfig::default()
    };
    let io = IoConfig::default();
    let lsns: Vec<_> = {
        let (wal, _) = storage_io::open_wal(dir.path(), config.clone(), &io).unwrap();
        (0..100u32)
            .map(|i| wal.commit(&i.to_le_bytes()).unwrap())
            .collect()
    };
    let (wal, next) = storage_io::open_wal(dir.path(), config, &io).unwrap();
    assert_eq!(wal.recovery_report().records, 100);
    assert!(next > *lsns.last().unwrap());
    drop(wal);
    let backend = storage_io::open_backend(&io).unwrap();
    let got: Vec<u32> = WalReader::open(dir.path(), backend)
        .unwrap()
        .map(|r| u32::from_le_bytes(r.unwrap().1.try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}
