//! Helpers shared by the scheduler's behaviour tests.
#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storage_io_core::{
    BackendFactory, Capabilities, IoBuf, IoCompletion, IoFd, IoStats, IoToken, OpKind, OpenOptions, Result,
    StorageIo, SubmitError,
};
use storage_io_scheduler::{DiskScheduler, IOSchedulerConfig, PageId};
use storage_io_testkit::faulty::{FaultPlan, FaultyIo};
use storage_io_testkit::memio::MemFs;

pub(crate) const DIR: &str = "/db";
pub(crate) const PAGE: usize = 4096;

/// Backends on one in-memory file system.
pub(crate) fn mem_factory(fs: &MemFs) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>))
}

/// Every worker's backend wrapped with `plan` (each worker gets its own copy of the plan).
pub(crate) fn faulty_factory(fs: &MemFs, plan: FaultPlan) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |_| Ok(Box::new(FaultyIo::new(fs.backend(), plan.clone())) as Box<dyn StorageIo>))
}

/// A small config: `workers` workers, extents of 4 pages so batches cross workers.
pub(crate) fn config(workers: usize) -> IOSchedulerConfig {
    IOSchedulerConfig {
        workers,
        max_combine_pages: 4,
        ..IOSchedulerConfig::default()
    }
}

pub(crate) fn open(factory: &BackendFactory, config: IOSchedulerConfig) -> DiskScheduler {
    DiskScheduler::open(DIR, config, factory.clone()).expect("open the scheduler")
}

/// A page whose bytes say which page and which version it is.
pub(crate) fn page_bytes(page: PageId, version: u32) -> Bytes {
    let mut v = vec![(page.0 as u8) ^ (version as u8); PAGE];
    v[..8].copy_from_slice(&page.0.to_le_bytes());
    v[8..12].copy_from_slice(&version.to_le_bytes());
    Bytes::from(v)
}

/// (page, version) read back from a page written by [`page_bytes`].
pub(crate) fn stamp(bytes: &[u8]) -> (u64, u32) {
    (
        u64::from_le_bytes(bytes[..8].try_into().unwrap()),
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
    )
}

pub(crate) fn allocate(sched: &DiskScheduler, n: usize) -> Vec<PageId> {
    (0..n)
        .map(|_| sched.schedule_allocate().recv().expect("allocate"))
        .collect()
}

/// Waits until `cond` holds (checked every millisecond) or panics after 10 s.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A scratch directory on the target dir's file system (ext4 here, so O_DIRECT works).
pub(crate) fn real_dir(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix(name).tempdir_in(base).unwrap()
}

/// A backend that holds back read completions while its gate is closed, so a test can keep a
/// read in flight for as long as it needs.
pub(crate) struct Gated {
    inner: Box<dyn StorageIo>,
    open: Arc<AtomicBool>,
    held: Vec<IoCompletion>,
}

impl Gated {
    pub(crate) fn factory(fs: &MemFs, open: Arc<AtomicBool>) -> BackendFactory {
        let fs = fs.clone();
        Arc::new(move |_| {
            Ok(Box::new(Gated {
                inner: Box::new(fs.backend()),
                open: Arc::clone(&open),
                held: Vec::new(),
            }) as Box<dyn StorageIo>)
        })
    }

    fn sort(&mut self, from: Vec<IoCompletion>, out: &mut Vec<IoCompletion>) -> usize {
        let before = out.len();
        let open = self.open.load(Ordering::Acquire);
        for c in from {
            if c.op == OpKind::Read && !open {
                self.held.push(c);
            } else {
                out.push(c);
            }
        }
        if open {
            out.append(&mut self.held);
        }
        out.len() - before
    }
}

impl StorageIo for Gated {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        self.inner.register_fd(file)
    }
    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        self.inner.deregister_fd(fd)
    }
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        self.inner.open_file(path, options)
    }
    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        self.inner.file_len(fd)
    }
    fn sync_dir(&mut self, dir: &Path) -> Result<()> {
        self.inner.sync_dir(dir)
    }
    fn remove_file(&mut self, path: &Path) -> Result<()> {
        self.inner.remove_file(path)
    }
    fn list_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.inner.list_dir(dir)
    }
    fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        self.inner.submit_read(fd, buf, offset)
    }
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        self.inner.submit_write(fd, data, offset)
    }
    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        self.inner.submit_write_buf(fd, buf, offset)
    }
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        self.inner.submit_append(fd, data)
    }
    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.inner.submit_datasync(fd)
    }
    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.inner.submit_fsync(fd)
    }
    fn flush(&mut self) -> Result<usize> {
        self.inner.flush()
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let mut got = Vec::new();
        self.inner.poll_completions(&mut got);
        self.sort(got, out)
    }
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let mut got = Vec::new();
        self.inner.wait_completions(&mut got, min, timeout)?;
        let n = self.sort(got, out);
        if n == 0 && !self.held.is_empty() {
            // Only held reads are pending: don't let the worker spin.
            std::thread::sleep(
                timeout
                    .unwrap_or(Duration::from_millis(1))
                    .min(Duration::from_millis(1)),
            );
        }
        Ok(n)
    }
    fn pending_count(&self) -> usize {
        self.inner.pending_count() + self.held.len()
    }
    fn stats(&self) -> &IoStats {
        self.inner.stats()
    }
}
