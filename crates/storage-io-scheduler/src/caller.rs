//! Reads on the caller's thread ([`DiskScheduler::read_blocking`](crate::DiskScheduler::read_blocking)):
//! a pool of backends, each used by one caller at a time, that read a page and wait for it on
//! the thread that asked.
//!
//! A caller that blocks on its answer anyway gains nothing from handing the read to a worker
//! thread: the hand-off there and back is two cross-CPU wake-ups (about 75 µs each on the test
//! VM), while the device wakes a thread waiting in the kernel directly, as `pread` does.
//!
//! **Invariants** (with the dispatcher, which decides under its lock whether a read may run
//! here):
//! - A caller read runs only while its page's worker holds no write accepted before it, so it
//!   sees every such write; a read accepted after a write waits for it on the worker instead.
//! - Reads of the page accepted while a caller read of it is in flight (and before any write
//!   to the page) join it: one I/O, and its caller answers them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use storage_io_core::{BackendFactory, IoCompletion, IoFd, OpenOptions, StorageIo};

use crate::PageId;
use crate::error::{Result, SchedulerError};
use crate::lend;
use crate::reply::PageAnswer;

/// Reads of one page that joined a caller read in flight; its caller answers them.
pub(crate) type Joiners = Arc<Mutex<Vec<PageAnswer>>>;

/// One backend of the pool, with the page file open on it.
pub(crate) struct CallerIo {
    io: Box<dyn StorageIo>,
    fd: IoFd,
    done: Vec<IoCompletion>,
}

/// The backends kept for caller reads.
pub(crate) struct CallerPool {
    /// `None`: no caller backends (every blocking read goes through a worker).
    factory: Option<BackendFactory>,
    /// The factory index of the first caller backend (the workers have the ones below).
    first_index: usize,
    max: usize,
    data_path: PathBuf,
    open: OpenOptions,
    idle: Mutex<Vec<CallerIo>>,
    /// Backends made so far, idle or in use.
    made: AtomicUsize,
    /// Set at shutdown: backends handed back are dropped, not kept.
    closed: AtomicBool,
}

impl CallerPool {
    pub(crate) fn new(
        factory: Option<BackendFactory>,
        first_index: usize,
        max: usize,
        data_path: PathBuf,
        open: OpenOptions,
    ) -> Self {
        CallerPool {
            max: if factory.is_some() { max } else { 0 },
            factory,
            first_index,
            data_path,
            open,
            idle: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// An idle backend, or a new one while fewer than `max` exist; `None` when the pool is
    /// used up (or off, or a backend could not be made: the read goes through a worker then).
    /// The lease hands it back when dropped, or, if it is dropped by a panic, closes it and
    /// stops counting it, so the pool makes a new one when next needed.
    pub(crate) fn take(&self) -> Option<CallerLease<'_>> {
        self.take_io().map(|io| CallerLease {
            pool: self,
            io: Some(io),
        })
    }

    fn take_io(&self) -> Option<CallerIo> {
        if self.max == 0 {
            return None; // no caller backends: no lock, no counting
        }
        if let Some(io) = self.idle.lock().pop() {
            return Some(io);
        }
        let n = self.made.fetch_add(1, Ordering::AcqRel);
        if n >= self.max || self.closed.load(Ordering::Acquire) {
            self.made.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Counted from here; uncounted again if making it fails, or panics (a factory is the
        // user's code), so a later call tries again.
        let mut counted = Uncount {
            made: &self.made,
            armed: true,
        };
        match self.make(self.first_index + n) {
            Ok(io) => {
                counted.armed = false;
                Some(io)
            }
            Err(e) => {
                // The read itself still happens.
                tracing::warn!(error = %e, "scheduler: a backend for reads on the caller's thread could not be made; reading through a worker");
                None
            }
        }
    }

    fn make(&self, index: usize) -> storage_io_core::Result<CallerIo> {
        let factory = self
            .factory
            .as_ref()
            .ok_or_else(|| storage_io_core::StorageIoError::invalid("no caller backends"))?;
        let mut io = factory(index)?;
        let fd = io.open_file(&self.data_path, &self.open)?;
        Ok(CallerIo {
            io,
            fd,
            done: Vec::with_capacity(1),
        })
    }

    /// Hands a backend back for the next caller (dropped after shutdown).
    fn give_back(&self, io: CallerIo) {
        if self.closed.load(Ordering::Acquire) {
            self.drop_one(io);
            return;
        }
        self.idle.lock().push(io);
    }

    /// Closes every idle backend; the ones in use close when handed back.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle.lock());
        for io in idle {
            self.drop_one(io);
        }
    }

    fn drop_one(&self, mut io: CallerIo) {
        if let Err(e) = io.io.deregister_fd(io.fd) {
            tracing::warn!(error = %e, "scheduler: closing a caller backend's page file");
        }
        self.made.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot of `made` counted for a backend being made: given back when dropped armed.
struct Uncount<'a> {
    made: &'a AtomicUsize,
    armed: bool,
}

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.made.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A backend of the pool in one caller's hands.
///
/// **Invariant:** `made` counts every backend idle or leased. A lease ends by handing its
/// backend back (the usual way) or, when a panic unwinds through its reader, by dropping the
/// backend uncounted: its state is unknown (an op may be half submitted), so it is not reused,
/// and the pool is not one backend short for good.
pub(crate) struct CallerLease<'a> {
    pool: &'a CallerPool,
    /// `None` once handed back.
    io: Option<CallerIo>,
}

impl CallerLease<'_> {
    /// The backend.
    pub(crate) fn io(&mut self) -> &mut CallerIo {
        match &mut self.io {
            Some(io) => io,
            // Only `drop` takes it out, and after it nothing can call this.
            None => unreachable!("a caller lease is used after it ended"),
        }
    }
}

impl Drop for CallerLease<'_> {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else { return };
        if std::thread::panicking() {
            tracing::warn!(
                "scheduler: a read on the caller's thread panicked; its backend is closed and a new one will be made"
            );
            drop(io);
            self.pool.made.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.pool.give_back(io);
        }
    }
}

impl CallerIo {
    /// Reads `page` (`page_size` bytes; zeros past the end of the file) and waits for it.
    pub(crate) fn read(&mut self, page: PageId, page_size: usize) -> Result<Bytes> {
        let io_error = |source| SchedulerError::Io { page, source };
        let buf = self.io.alloc_buf(page_size).map_err(io_error)?;
        let offset = page.0 * page_size as u64;
        let token = self
            .io
            .submit_read(self.fd, buf.into(), offset)
            .map_err(|e| io_error(e.error))?;
        // No flush: the wait hands the queued read to the kernel itself (on io_uring, one
        // system call submits it and waits, as `pread` is one).
        loop {
            self.done.clear();
            self.io
                .wait_completions(&mut self.done, 1, None)
                .map_err(io_error)?;
            // One op in flight on this backend: its completion is the one.
            if let Some(c) = self.done.drain(..).find(|c| c.token == token) {
                let n = c.result.map_err(io_error)?;
                return Ok(lend::freeze(c.buf, n, page_size, None));
            }
        }
    }

    /// The backend's total op time so far (for the scheduler's `backend_held_ns`).
    pub(crate) fn held_ns(&self) -> u64 {
        self.io.stats().held_ns()
    }
}
