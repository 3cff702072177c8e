//! Defects from the review of issue 37 (items 0, 2, 3, 4, 6, 8, 10): each test is named after
//! the defect it pins down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use storage_io_core::Namespace;

use storage_io_core::{BackendFactory, IoConfig, OpKind, OpenOptions, StorageIo};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultSwitch};
use storage_io_testkit::gated::{Gate, GatedIo};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::{WalConfig, WalError, WalManager};

use common::{DIR, faulty_factory, mem_factory, open, read_all, small_config};

const EIO: i32 = 5;

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

/// Backends on one in-memory file system; the writer's (index 0) completions of writes and
/// datasyncs are held at `gate` while it is closed.
fn gated_factory(fs: &MemFs, gate: &Gate) -> BackendFactory {
    let (fs, gate) = (fs.clone(), gate.clone());
    Arc::new(move |worker| {
        if worker == 0 {
            let io = GatedIo::new(fs.backend(), gate.clone(), &[OpKind::Write, OpKind::Datasync]);
            Ok(Box::new(io) as Box<dyn StorageIo>)
        } else {
            Ok(Box::new(fs.backend()) as Box<dyn StorageIo>)
        }
    })
}

/// Waits (yielding) until the gated backends have accepted more than `n` ops: a flush has
/// reached the backend and is held at the gate.
fn wait_submitted_past(gate: &Gate, n: u64) {
    while gate.submitted() <= n {
        std::thread::yield_now();
    }
}

fn payloads(wal: &WalManager) -> Vec<Vec<u8>> {
    read_all(wal).into_iter().map(|(_, p)| p).collect()
}

#[test]
fn close_refuses_appends_from_its_start_and_leaves_nothing_admitted_undurable() {
    let fs = MemFs::new(4);
    let gate = Gate::new();
    gate.open();
    let config = WalConfig {
        preallocate: false,
        ..small_config(64 << 10)
    };
    let dir = Path::new(DIR);
    let wal = Arc::new(open(dir, &config, &gated_factory(&fs, &gate)));
    wal.commit(b"durable before close").unwrap();
    wal.append(b"queued before close").unwrap();
    gate.close();
    let before = gate.submitted();
    let closer = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || wal.close())
    };
    // close's final flush is at the backend, held.
    wait_submitted_past(&gate, before);
    let during = wal.append(b"appended while close flushes");
    let during_async = wal.commit_async(b"committed async while close flushes");
    gate.open();
    closer.join().unwrap().expect("close");
    assert!(
        matches!(during, Err(WalError::Closed)),
        "an append during close was admitted: {during:?}"
    );
    assert!(
        matches!(block_on(during_async), Err(WalError::Closed)),
        "an async commit during close was admitted"
    );
    drop(wal);
    let wal = open(dir, &config, &mem_factory(&fs));
    assert_eq!(
        payloads(&wal),
        vec![b"durable before close".to_vec(), b"queued before close".to_vec()]
    );
}

#[test]
fn close_of_a_poisoned_wal_returns_the_poison_error() {
    let fs = MemFs::new(5);
    let failing = FaultSwitch::new();
    let plan = FaultPlan::new(5)
        .with_probability(Some(OpKind::Datasync), 1.0, Fault::Eio)
        .only_while(&failing);
    let config = WalConfig {
        preallocate: false,
        ..small_config(64 << 10)
    };
    let wal = open(Path::new(DIR), &config, &faulty_factory(&fs, plan));
    wal.commit(b"durable").unwrap();
    failing.set(true);
    let lost = wal.commit(b"not durable: its fdatasync fails");
    assert!(matches!(lost, Err(WalError::Poisoned { .. })), "{lost:?}");
    for attempt in ["close", "a second close"] {
        match wal.close() {
            Err(WalError::Poisoned { cause }) => assert_eq!(cause.errno(), EIO, "{attempt}"),
            other => panic!("{attempt} of a poisoned wal answered {other:?}"),
        }
    }
}

/// A minimal executor for one future.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Like [`block_on`], but gives up after `limit`: `None` means the future was still pending
/// (a liveness check with a deadline far beyond any flush, not a timing measurement).
fn block_on_within<F: std::future::Future>(f: F, limit: std::time::Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = std::time::Instant::now() + limit;
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[test]
fn an_async_commit_made_while_a_blocking_committer_leads_a_flush_completes() {
    // The blocking leader: a commit, or `flush()` of a record appended before.
    for (seed, leader_flushes) in [(6, false), (7, true)] {
        let fs = MemFs::new(seed);
        let gate = Gate::new();
        gate.open();
        let config = WalConfig {
            preallocate: false,
            ..WalConfig::default()
        };
        let wal = Arc::new(open(Path::new(DIR), &config, &gated_factory(&fs, &gate)));
        // The WAL I/O thread starts, flushes this, and goes idle.
        block_on(wal.commit_async(b"starts the wal-io thread")).unwrap();
        gate.close();
        let before = gate.submitted();
        let leader = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                if leader_flushes {
                    wal.append(b"flush() leads the flush of this").unwrap();
                    wal.flush().map(drop)
                } else {
                    wal.commit(b"a blocking committer leads this flush").map(drop)
                }
            })
        };
        wait_submitted_past(&gate, before);
        // While that flush is held: an async commit, and an append awaited through `durable`.
        let committed = wal.commit_async(b"async commit behind the blocking flush");
        let appended = wal.append(b"appended behind the blocking flush").unwrap();
        let awaited = wal.durable(appended);
        gate.open();
        leader.join().unwrap().unwrap();
        let limit = std::time::Duration::from_secs(30);
        let committed = block_on_within(committed, limit)
            .expect("the async commit's future never completed: nothing flushed its record");
        assert!(committed.unwrap() < appended);
        let awaited = block_on_within(awaited, limit)
            .expect("durable(lsn) of an appended record never completed: nothing flushed it");
        assert_eq!(awaited.unwrap(), appended);
        assert!(wal.durable_lsn() > appended);
    }
}

/// This process's descriptors on files in `dir` that were removed ("(deleted)").
#[cfg(target_os = "linux")]
fn deleted_files_open_in(dir: &Path) -> Vec<String> {
    let mut deleted = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with(&*dir.to_string_lossy()) && target.ends_with(" (deleted)") {
            deleted.push(target);
        }
    }
    deleted
}

#[cfg(target_os = "linux")] // reads /proc/self/fd for deleted files still open
#[test]
fn truncate_before_releases_every_handle_on_the_segments_it_removes_idle_flush_slots_included() {
    let (_tmp, dir) = real_dir("wal-truncate-fds");
    let gate = Gate::new();
    gate.open();
    // Direct mode with two flushes in flight: each flush writes on a flush slot, a backend of
    // its own (index 0), whose writes the gate can hold.
    let factory: BackendFactory = {
        let gate = gate.clone();
        Arc::new(move |worker| {
            let io = storage_io_sync::SyncStorageIo::new(&IoConfig::default())?;
            if worker == 0 {
                Ok(Box::new(GatedIo::new(io, gate.clone(), &[OpKind::Write])) as Box<dyn StorageIo>)
            } else {
                Ok(Box::new(io) as Box<dyn StorageIo>)
            }
        })
    };
    let config = WalConfig {
        segment_size_bytes: 16 << 10,
        direct_io: true,
        max_flushes_in_flight: 2,
        preallocate: false,
        ..WalConfig::default()
    };
    let wal = Arc::new(WalManager::open(&dir, config, factory).unwrap().0);
    // Two flushes in flight at once, so that a second flush slot is made: the first batch
    // holds two records (it ends in a pad, so the next may start beside it).
    gate.close();
    let before = gate.submitted();
    let first = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || {
            let lsns = wal.append_batch([&b"one"[..], b"two"]).unwrap();
            wal.wait_durable(lsns[1])
        })
    };
    wait_submitted_past(&gate, before);
    let before = gate.submitted();
    let second = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || wal.commit(b"three"))
    };
    wait_submitted_past(&gate, before);
    gate.open();
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    // One committer from here on: one slot does every flush, the other stays idle with the
    // segment it wrote last open.
    let record = [7u8; 1000];
    while wal.next_lsn().0 / (16 << 10) < 6 {
        wal.commit(&record).unwrap();
    }
    let removed = wal.truncate_before(wal.durable_lsn()).unwrap();
    assert!(removed >= 5, "removed {removed} segments");
    assert_eq!(
        deleted_files_open_in(&dir),
        Vec::<String>::new(),
        "removed segments are still open: their space is not freed"
    );
    wal.close().unwrap();
}

/// The child's half of [`one_wal_per_directory_across_processes`]: set in the child's
/// environment, `<dir>` and whether the parent holds the log (`locked`) or not (`free`).
const LOCK_CHILD_ENV: &str = "STORAGE_IO_WAL_TEST_LOCK_CHILD";

fn real_config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        ..WalConfig::default()
    }
}

/// Asserts that `opened` is the refusal of a second owner, naming the lock file.
fn assert_refused_as_locked(opened: Result<(WalManager, storage_io_wal::Lsn), WalError>, dir: &Path) {
    let lock = dir.join("LOCK");
    match opened {
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&*lock.to_string_lossy()) && message.contains("another WalManager"),
                "the refusal names the lock and its holder: {message}"
            );
        }
        Ok(_) => panic!("a second wal opened {} while the first held it", dir.display()),
    }
}

#[test]
fn one_wal_per_directory_in_one_process() {
    // Real files: the second open fails however it builds its backends.
    let (_tmp, dir) = real_dir("wal-lock");
    let (first, _) = WalManager::open(&dir, real_config(), pool_factory()).unwrap();
    first.commit(b"the first owner's").unwrap();
    assert_refused_as_locked(WalManager::open(&dir, real_config(), pool_factory()), &dir);
    assert_refused_as_locked(
        WalManager::open(&dir, real_config(), common::sync_factory()),
        &dir,
    );
    first.close().unwrap();
    // Close released it (the manager itself is still alive).
    let (second, _) = WalManager::open(&dir, real_config(), pool_factory()).unwrap();
    assert_eq!(read_from_first(&second), vec![b"the first owner's".to_vec()]);
    drop(second);
    // So does drop.
    let (third, _) = WalManager::open(&dir, real_config(), pool_factory()).unwrap();
    drop(first);
    third.commit(b"the third owner's").unwrap();
    drop(third);

    // MemIo: one lock table for every backend of one file system.
    let fs = MemFs::new(8);
    let config = small_config(4096);
    let first = open(Path::new(DIR), &config, &mem_factory(&fs));
    assert_refused_as_locked(
        WalManager::open(DIR, config.clone(), mem_factory(&fs)),
        Path::new(DIR),
    );
    // Another directory of the same file system is another log.
    drop(open(Path::new("/other-wal"), &config, &mem_factory(&fs)));
    first.close().unwrap();
    let second = open(Path::new(DIR), &config, &mem_factory(&fs));
    second.commit(b"after a crash").unwrap();
    std::mem::forget(second); // the process dies holding the lock
    fs.crash(storage_io_testkit::memio::CrashOptions::default());
    let third = open(Path::new(DIR), &config, &mem_factory(&fs));
    assert_eq!(payloads(&third), vec![b"after a crash".to_vec()]);
}

#[test]
fn one_wal_per_directory_across_processes() {
    if let Ok(job) = std::env::var(LOCK_CHILD_ENV) {
        // The child: open the log the parent named, in the state it says.
        let (dir, state) = job.rsplit_once(':').unwrap();
        let dir = Path::new(dir);
        let opened = WalManager::open(dir, real_config(), common::sync_factory());
        if state == "locked" {
            assert_refused_as_locked(opened, dir);
        } else {
            let (wal, _) = opened.expect("the parent closed the log: the child may open it");
            wal.commit(b"the child's").unwrap();
            wal.close().unwrap();
        }
        return;
    }
    let (_tmp, dir) = real_dir("wal-lock-child");
    let child = |state: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "one_wal_per_directory_across_processes", "--nocapture"])
            .env(LOCK_CHILD_ENV, format!("{}:{state}", dir.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the child ({state}) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The child ran the test (not zero tests filtered out).
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    };
    let (wal, _) = WalManager::open(&dir, real_config(), pool_factory()).unwrap();
    wal.commit(b"the parent's").unwrap();
    child("locked");
    wal.close().unwrap();
    child("free");
    drop(wal);
    let (wal, _) = WalManager::open(&dir, real_config(), pool_factory()).unwrap();
    assert_eq!(
        read_from_first(&wal),
        vec![b"the parent's".to_vec(), b"the child's".to_vec()]
    );
}

/// A close that failed (a full disk: not poison) leaves what was admitted before it not
/// durable for good: a second `close` answers the same error, never `Ok`.
#[test]
fn a_second_close_after_a_failed_close_answers_its_error_again() {
    let fs = MemFs::new(5);
    let full = FaultSwitch::new();
    let plan = FaultPlan::new(1)
        .with_probability(Some(OpKind::Write), 1.0, Fault::Enospc)
        .with_probability(Some(OpKind::Append), 1.0, Fault::Enospc)
        .only_while(&full);
    let factory = faulty_factory(&fs, plan);
    let config = WalConfig {
        segment_size_bytes: 4096,
        prepare_ahead: false,
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(Path::new(DIR), config, factory).unwrap();
    wal.commit(b"durable").unwrap();
    full.set(true);
    let lsn = wal.append(b"admitted, never durable").unwrap();
    let first = wal.close();
    assert!(
        matches!(first, Err(WalError::DiskFull { .. })),
        "first close: {first:?}"
    );
    let second = wal.close();
    assert_eq!(
        second, first,
        "the second close answered otherwise although {lsn:?} (admitted before close) is not durable"
    );
}
