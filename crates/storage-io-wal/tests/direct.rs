//! `direct_io`: segments written with O_DIRECT | O_DSYNC on a real file system (ext4 under the
//! target directory), with no fdatasync, switching modes across reopen. The crash behaviour of
//! the mode is tested on MemIo in `crash.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use storage_io_wal::{SyncMode, WalConfig, WalManager};

use common::{read_all, sync_factory};

fn config(direct_io: bool) -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        direct_io,
        sync_mode: SyncMode::Group {
            max_delay_us: 0,
            max_batch_bytes: 1 << 20,
        },
        ..WalConfig::default()
    }
}

/// The open flags of this process's descriptors on segments in `dir` (from /proc/self/fdinfo).
#[cfg(target_os = "linux")]
fn open_flags_in(dir: &Path) -> Vec<u32> {
    let mut flags = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        // Segments only: the directory's LOCK file is open too.
        if target.parent() != Some(dir) || target.extension() != Some("wal".as_ref()) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ));
        if let Some(octal) = info.ok().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("flags:").map(|f| f.trim().to_string()))
        }) {
            flags.push(u32::from_str_radix(&octal, 8).unwrap());
        }
    }
    flags
}

/// Whether the WAL trusts O_DSYNC (write-through) in `dir`: ext4 under the target directory on
/// Linux; on other platforms the file system is not asked and every direct flush adds a datasync.
fn trusted(dir: &Path) -> bool {
    let trusted = storage_io_core::dsync_trusted_at(dir).unwrap();
    assert!(
        trusted || !cfg!(target_os = "linux"),
        "the target directory is on ext4 here"
    );
    trusted
}

#[test]
fn direct_dsync_log_needs_no_datasync_and_mixes_with_buffered_across_reopen() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("wal");
    let payload = |i: usize| vec![(i % 251) as u8; 1 + (i * 37) % 700];

    let mut expected = Vec::new();
    // Buffered first, then direct, then buffered again: each reopen continues the same log,
    // and a direct flush that starts inside a block written by the buffered mode reads it back.
    for (round, direct) in [false, true, false, true].into_iter().enumerate() {
        let (wal, _) = WalManager::open(&dir, config(direct), sync_factory()).unwrap();
        let first = round * 300;
        std::thread::scope(|s| {
            let wal = &wal;
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        (first + t * 75..first + (t + 1) * 75)
                            .map(|i| (wal.commit(&payload(i)).unwrap(), payload(i)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                expected.extend(h.join().unwrap());
            }
        });
        let stats = wal.stats();
        if direct && trusted(&dir) {
            assert_eq!(stats.datasyncs, 0, "O_DSYNC writes need no fdatasync");
            #[cfg(target_os = "linux")]
            {
                let flags = open_flags_in(&dir);
                assert!(!flags.is_empty(), "the writer keeps its segment open");
                for f in flags {
                    assert_ne!(f & libc::O_DSYNC as u32, 0, "segments are open O_DSYNC: {f:o}");
                    assert_ne!(f & libc::O_DIRECT as u32, 0, "ext4 grants O_DIRECT: {f:o}");
                }
            }
        } else {
            assert!(
                stats.datasyncs > 0,
                "round {round}: buffered, or direct where O_DSYNC is not trusted"
            );
        }
        assert!(stats.datasyncs < 300 || !direct || !trusted(&dir));
        drop(wal);
        let (wal, _) = WalManager::open(&dir, config(!direct), sync_factory()).unwrap();
        expected.sort_by_key(|(lsn, _)| *lsn);
        assert_eq!(read_all(&wal), expected, "round {round}");
        assert_eq!(wal.recovery_report().torn_tail_bytes, 0);
    }
    // The files hold whole blocks only where direct mode padded; a log of ~4 × 300 records of
    // up to 700 bytes crossed several 64 KiB segments.
    assert!(std::fs::read_dir(&dir).unwrap().count() > 2);
}

/// Where the file system is not known to honour O_DSYNC for direct writes submitted
/// asynchronously (tmpfs here; FUSE is the case that loses data), every direct flush adds an
/// fdatasync; on ext4 none.
#[cfg(target_os = "linux")] // compares ext4 with a tmpfs at /dev/shm (statfs is asked on Linux only)
#[test]
fn direct_mode_adds_an_fdatasync_where_o_dsync_is_not_trusted() {
    let commit_some = |dir: &Path| {
        let (wal, _) = WalManager::open(dir, config(true), sync_factory()).unwrap();
        for i in 0..20u32 {
            wal.commit(&i.to_le_bytes()).unwrap();
        }
        let stats = wal.stats();
        wal.close().unwrap();
        stats
    };
    let ext4 = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(
        storage_io_core::dsync_trusted_at(ext4.path()).unwrap(),
        "the target directory is on ext4 here"
    );
    assert_eq!(
        commit_some(ext4.path()).datasyncs,
        0,
        "O_DSYNC is trusted on ext4"
    );
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "this machine has a tmpfs at /dev/shm");
    let tmpfs = tempfile::tempdir_in(shm).unwrap();
    assert!(!storage_io_core::dsync_trusted_at(tmpfs.path()).unwrap());
    let stats = commit_some(tmpfs.path());
    assert!(
        stats.datasyncs >= stats.flushes.min(20) && stats.datasyncs > 0,
        "every flush on tmpfs syncs: {stats:?}"
    );
}

/// Several direct flushes in flight on real files: 8 committer threads, up to 4 flushes at
/// once. Every commit comes back after a reopen, in LSN order; batches that overlapped ended in
/// pads (more bytes written than records), and a lone committer afterwards pays no pads (its
/// flushes rewrite the tail block instead).
#[test]
fn several_direct_flushes_in_flight_on_real_files_keep_every_commit_in_order() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("wal");
    let config = WalConfig {
        max_flushes_in_flight: 4,
        ..config(true)
    };
    let wal = std::sync::Arc::new(WalManager::open(&dir, config.clone(), sync_factory()).unwrap().0);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let wal = std::sync::Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..200u8)
                    .map(|i| (wal.commit(&[t, i, t ^ i]).unwrap(), vec![t, i, t ^ i]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut committed: Vec<_> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    committed.sort();
    let stats = wal.stats();
    if trusted(&dir) {
        assert_eq!(
            stats.datasyncs, 0,
            "direct flushes issue no datasync on this file system"
        );
    } else {
        assert!(
            stats.datasyncs > 0,
            "an untrusted O_DSYNC is backed by datasyncs: {stats:?}"
        );
    }
    let record_bytes = committed.len() as u64 * 23;
    assert!(stats.bytes_written > record_bytes, "{stats:?}");

    // One committer: no company in flight, so no pads: its bytes are its records'.
    let before = wal.stats().bytes_written;
    for i in 0..50u8 {
        committed.push((wal.commit(&[9, i, 9 ^ i]).unwrap(), vec![9, i, 9 ^ i]));
    }
    let lone = wal.stats().bytes_written - before;
    assert!(
        lone <= 50 * 23 + 2 * 4096,
        "a lone committer wrote {lone} bytes for 50 records of 23"
    );
    drop(wal);

    let (wal, _) = WalManager::open(&dir, config, sync_factory()).unwrap();
    assert_eq!(read_all(&wal), committed);
    assert_eq!(wal.recovery_report().in_flight_records_cut, 0);
}
