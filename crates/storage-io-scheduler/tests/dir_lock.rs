//! One scheduler per directory (issue 37 item 10, issue 38's review): a second scheduler on a
//! directory would overwrite the first one's allocation images, so its open is refused with
//! `SchedulerError::DirLocked` naming the lock, in this process and from another one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use storage_io_core::{BackendFactory, IoConfig, StorageIo};
use storage_io_scheduler::{DiskScheduler, PageId, SchedulerError};
use storage_io_sync::ThreadPoolStorageIo;
use storage_io_testkit::memio::{CrashOptions, MemFs};

/// Set in the child's environment by [`two_schedulers_on_one_directory_across_processes`]:
/// `<dir>:<locked|free>`.
const LOCK_CHILD_ENV: &str = "STORAGE_IO_SCHED_TEST_LOCK_CHILD";

fn pool_factory() -> BackendFactory {
    Arc::new(|_| Ok(Box::new(ThreadPoolStorageIo::new(&IoConfig::default())?) as Box<dyn StorageIo>))
}

fn open_real(dir: &Path) -> Result<DiskScheduler, SchedulerError> {
    DiskScheduler::open(dir, config(2), pool_factory())
}

/// Asserts that `opened` is the refusal of a second owner, naming the lock file.
fn assert_refused_as_locked(opened: Result<DiskScheduler, SchedulerError>, dir: &Path) {
    let lock = dir.join("LOCK");
    match opened {
        Err(e @ SchedulerError::DirLocked { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&*lock.to_string_lossy()) && message.contains("another DiskScheduler"),
                "the refusal names the lock and its holder: {message}"
            );
        }
        Err(e) => panic!("a second scheduler on {} failed otherwise: {e}", dir.display()),
        Ok(_) => panic!(
            "a second scheduler opened {} while the first held it",
            dir.display()
        ),
    }
}

#[test]
fn two_schedulers_on_one_directory_in_one_process() {
    // Real files.
    let tmp = real_dir("sched-lock");
    let dir = tmp.path();
    let first = open_real(dir).unwrap();
    let page = first.schedule_allocate().recv().unwrap();
    first
        .schedule_write(page, Bytes::from(vec![7u8; PAGE]))
        .recv()
        .unwrap();
    first.schedule_sync().recv().unwrap();
    assert_refused_as_locked(open_real(dir), dir);
    // The refused open changed nothing: the first owner's page is intact and still its own.
    assert_eq!(first.schedule_read(page).recv().unwrap()[0], 7);
    first.shutdown().unwrap();
    // Shutdown released the lock (the scheduler itself is still alive).
    let second = open_real(dir).unwrap();
    assert_eq!(second.schedule_read(page).recv().unwrap()[0], 7);
    drop(second);
    // So does drop.
    drop(open_real(dir).unwrap());
    drop(first);

    // MemIo: one lock table for every backend of one file system; a crash releases it.
    let fs = MemFs::new(3);
    let factory = mem_factory(&fs);
    let first = open(&factory, config(2));
    assert_refused_as_locked(
        DiskScheduler::open(DIR, config(2), factory.clone()),
        Path::new(DIR),
    );
    // Another directory of the same file system is another scheduler.
    drop(DiskScheduler::open("/other", config(1), factory.clone()).unwrap());
    let page = first.schedule_allocate().recv().unwrap();
    first.schedule_write(page, page_bytes(page, 1)).recv().unwrap();
    first.schedule_sync().recv().unwrap();
    std::mem::forget(first); // the process dies holding the lock
    fs.crash(CrashOptions::default());
    let after = open(&factory, config(2));
    assert_eq!(stamp(&after.schedule_read(page).recv().unwrap()), (page.0, 1));
    assert_eq!(page, PageId(0));
}

#[test]
fn two_schedulers_on_one_directory_across_processes() {
    if let Ok(job) = std::env::var(LOCK_CHILD_ENV) {
        // The child: open the scheduler the parent named, in the state it says.
        let (dir, state) = job.rsplit_once(':').unwrap();
        let dir = Path::new(dir);
        let opened = open_real(dir);
        if state == "locked" {
            assert_refused_as_locked(opened, dir);
        } else {
            let sched = opened.expect("the parent shut down: the child may open the directory");
            let page = sched.schedule_allocate().recv().unwrap();
            sched
                .schedule_write(page, Bytes::from(vec![9u8; PAGE]))
                .recv()
                .unwrap();
            sched.schedule_sync().recv().unwrap();
            sched.shutdown().unwrap();
        }
        return;
    }
    let tmp = real_dir("sched-lock-child");
    let dir = tmp.path().to_path_buf();
    let child = |state: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "two_schedulers_on_one_directory_across_processes",
                "--nocapture",
            ])
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
    let sched = open_real(&dir).unwrap();
    let page = sched.schedule_allocate().recv().unwrap();
    sched
        .schedule_write(page, Bytes::from(vec![8u8; PAGE]))
        .recv()
        .unwrap();
    sched.schedule_sync().recv().unwrap();
    child("locked");
    sched.shutdown().unwrap();
    child("free");
    drop(sched);
    let sched = open_real(&dir).unwrap();
    assert_eq!(sched.schedule_read(page).recv().unwrap()[0], 8);
    assert_eq!(sched.schedule_read(PageId(page.0 + 1)).recv().unwrap()[0], 9);
}
