//! A full disk on real files: every retry of the flush that creates a segment must close what
//! the last one opened. (Its own test binary, so no other test opens files while the process's
//! descriptors are counted.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::Arc;

use storage_io_core::{BackendFactory, IoConfig, OpKind, StorageIo};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultSwitch, FaultyIo};
use storage_io_wal::{WalConfig, WalError, WalManager};

const ENOSPC: i32 = 28;

/// The process's open file descriptors (Linux: `/proc/self/fd`).
#[cfg(not(windows))]
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The process's open handles, counted in the system's handle table
/// (`NtQuerySystemInformation(SystemHandleInformation)`): under Wine `/proc/self/fd` lists the
/// Wine process's own descriptors, which its handle cache opens and closes on its own, and
/// `GetProcessHandleCount` answers 0.
#[cfg(windows)]
fn open_fds() -> usize {
    #[repr(C)]
    struct HandleEntry {
        owner_pid: u32,
        object_type: u8,
        flags: u8,
        handle: u16,
        object: usize,
        access: u32,
    }
    #[link(name = "ntdll")]
    unsafe extern "system" {
        fn NtQuerySystemInformation(class: u32, info: *mut std::ffi::c_void, len: u32, ret: *mut u32) -> i32;
    }
    const SYSTEM_HANDLE_INFORMATION: u32 = 16;
    const STATUS_INFO_LENGTH_MISMATCH: i32 = 0xC000_0004_u32 as i32;
    let pid = std::process::id();
    let mut words = vec![0usize; 1 << 16];
    loop {
        let len = u32::try_from(words.len() * size_of::<usize>()).unwrap();
        let mut needed = 0u32;
        // SAFETY: `words` is a valid, writable, aligned buffer of `len` bytes that the call fills
        // and nothing keeps after it; `needed` is a valid u32.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_HANDLE_INFORMATION,
                words.as_mut_ptr().cast(),
                len,
                &mut needed,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            words.resize(words.len() * 2, 0);
            continue;
        }
        assert!(
            status >= 0,
            "NtQuerySystemInformation(SystemHandleInformation): {status:#x}"
        );
        // SYSTEM_HANDLE_INFORMATION: a ULONG count (padded to a pointer), then the entries.
        let count = words[0] & 0xFFFF_FFFF;
        assert!(size_of::<usize>() + count * size_of::<HandleEntry>() <= len as usize);
        // SAFETY: the call wrote `count` entries right after the count, inside `words` (checked
        // above); `words` is aligned for usize, which HandleEntry's alignment does not exceed.
        let entries =
            unsafe { std::slice::from_raw_parts(words.as_ptr().add(1).cast::<HandleEntry>(), count) };
        let mine = entries.iter().filter(|e| e.owner_pid == pid).count();
        assert!(mine > 0, "the handle table lists none of this process's handles");
        return mine;
    }
}

#[test]
fn disk_full_leaks_no_file_handle_per_retry_and_recovers_when_space_is_back() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("wal-full")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().join("wal");
    let full = FaultSwitch::new();
    let plan = FaultPlan::new(1)
        .with_probability(Some(OpKind::Write), 1.0, Fault::Enospc)
        .with_probability(Some(OpKind::Append), 1.0, Fault::Enospc)
        .only_while(&full);
    let factory: BackendFactory = Arc::new(move |_| {
        let io = storage_io_sync::SyncStorageIo::new(&IoConfig::default())?;
        Ok(Box::new(FaultyIo::new(io, plan.clone())) as Box<dyn StorageIo>)
    });
    let config = WalConfig {
        segment_size_bytes: 64 * 1024,
        preallocate: true,
        // The fds of a background preparer would come and go while they are counted.
        prepare_ahead: false,
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(&dir, config.clone(), factory.clone()).unwrap();
    full.set(true);
    let disk_full = |what: &str, r: Result<storage_io_wal::Lsn, WalError>| match r {
        Err(WalError::DiskFull { cause }) => assert_eq!(cause.errno(), ENOSPC, "{what}"),
        other => panic!("{what}: expected DiskFull, got {other:?}"),
    };
    // The first commit's record stays queued for a retry.
    disk_full("the first commit", wal.commit(b"queued while full"));
    let before = open_fds();
    for i in 0..1200 {
        disk_full(&format!("commit {i} against a full disk"), wal.commit(b"refused"));
    }
    assert_eq!(
        open_fds(),
        before,
        "1,200 retries against a full disk changed the number of open file descriptors"
    );
    full.set(false);
    let lsn = wal.commit(b"space is back").unwrap();
    wal.close().unwrap();
    drop(wal);
    let (wal, _) = WalManager::open(&dir, config, factory).unwrap();
    let got: Vec<_> = wal.reader(wal.first_lsn()).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(
        got.iter().map(|(_, p)| p.as_slice()).collect::<Vec<_>>(),
        [&b"queued while full"[..], b"space is back"]
    );
    assert_eq!(got.last().unwrap().0, lsn);
}
