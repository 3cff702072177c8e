//! # storage-io-fs
//!
//! The async file API: [`AsyncFileSystem`] and [`AsyncFile`], on any backend, from any executor
//! (layer L2: depends on `storage-io-core`, and with the `io-uring` feature on Linux on
//! `storage-io-uring` for the rings on the callers' threads; backends come in through a
//! [`BackendFactory`]). Most users open it through the `storage-io` façade
//! (`storage_io::open_async_fs`), which picks the backend.
//!
//! ```text
//! L3  storage-io (façade)
//! L2  storage-io-scheduler, storage-io-wal, storage-io-fs   <- this crate
//! L1  storage-io-uring, storage-io-sync, storage-io-testkit
//! L0  storage-io-core
//! ```
//!
//! Operations take an owned buffer and give it back with the result, so the memory the kernel
//! writes into belongs to the operation until it completes — on success, on error, and when the
//! caller's future is dropped half-way (the worker then drops the buffer, but only after the
//! backend has handed it back). Futures are completed from the I/O workers through wakers and
//! need no particular runtime: tokio, a plain `block_on`, or anything that polls.
//!
//! ```
//! use std::sync::Arc;
//! use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendFactory, block_on};
//! use storage_io_core::StorageIo;
//!
//! // Any backend: here the testkit's in-memory one (the façade builds io_uring or the thread pool).
//! let mem = storage_io_testkit::memio::MemFs::new(1);
//! let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(mem.backend()) as Box<dyn StorageIo>));
//! let fs = AsyncFileSystem::with_factory(&AsyncFsConfig::default(), factory)?;
//! block_on(async {
//!     let log = fs.open_append("/segment-0.log").await?;
//!     let (at, _record) = log.append(b"hello".to_vec()).await;
//!     log.sync_data().await?; // durable from here on
//!     let (n, buf) = log.read_at(vec![0u8; 5], at?).await;
//!     assert_eq!((n?, &buf[..]), (5, &b"hello"[..]));
//!     Ok::<(), storage_io_fs::StorageIoError>(())
//! })?;
//! fs.shutdown();
//! # Ok::<(), storage_io_fs::StorageIoError>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod buf;
mod config;
#[cfg(caller_rings)]
mod local;
mod metrics;
mod namespace;
mod order;
mod slot;
#[cfg(feature = "tokio")]
mod tokio_io;
mod vectored;
mod worker;

use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use storage_io_core::{IoBuf, IoFd, IoStats, WaitWaker};

pub use buf::{IoBufferPool, OwnedBuf, POOL_CLASSES};
// The core types this crate's signatures name, so a user needs no second dependency.
pub use config::AsyncFsConfig;
#[cfg(caller_rings)]
use local::{LocalFile, LocalOp, LocalReply, LocalRings};
pub use metrics::{AsyncIoMetrics, LATENCY_BUCKETS_SECONDS, OpMetrics, PoolClassMetrics};
pub use namespace::FileMetadata;
use order::{FileShared, GroupSync};
use slot::{Waiting, slot};
/// The `bytes` crate, re-exported: `Bytes` and `BytesMut` are [`OwnedBuf`]s.
pub use storage_io_core::bytes;
pub use storage_io_core::{
    AlignedBuf, BackendFactory, BackendKind, DirectMode, IoConfig, OpKind, OpenOptions, Result, StorageIo,
    StorageIoError,
};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use tokio_io::{TOKIO_FILE_MAX_BUF, TokioFile};
use worker::{Request, Worker, WorkerShared};

/// Without rings on the callers' threads (off Linux, or without the `io-uring` or `tokio`
/// feature) there is nothing to register a file with: every op takes the worker path.
#[cfg(not(caller_rings))]
type LocalFile = ();

/// A set of I/O workers serving [`AsyncFile`]s: the entry point of the async file API.
///
/// `AsyncFsConfig::io_workers` threads each own one backend (built by the façade's auto-selection, or
/// by your factory) and keep up to `queue_depth` operations in flight. Each file is opened on one
/// worker (round robin) and registered with that worker's backend; all its operations go there,
/// in the order they are made. Cloning is cheap and shares the workers.
///
/// Stopping: [`AsyncFileSystem::shutdown`], or dropping the last clone and the last file. Every
/// operation requested before the stop completes with its real result; every later one fails
/// with `Closed` (and gets its buffer back). Nothing hangs.
#[derive(Clone)]
pub struct AsyncFileSystem {
    shared: Arc<Shared>,
}

struct Shared {
    /// Taken (under the write lock) at shutdown, so no request can follow a worker's `Shutdown`.
    /// Each worker's channel and its backend's waker (send, then wake).
    senders: RwLock<Option<Vec<WorkerInbox>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    workers: Vec<Arc<WorkerShared>>,
    next_worker: AtomicUsize,
    config: AsyncFsConfig,
    backend: String,
    pool: IoBufferPool,
    /// Writes staged into aligned memory for direct I/O, and their bytes.
    staged_writes: AtomicU64,
    staged_bytes: AtomicU64,
    /// Rings on the callers' runtime threads (io_uring inside a tokio runtime), if in use.
    #[cfg(caller_rings)]
    local: Option<LocalRings>,
}

impl AsyncFileSystem {
    /// Starts the workers on backends from `factory` (one per worker: yours, the testkit's, or
    /// one from the façade's `storage_io::backend_factory`).
    ///
    /// Every operation goes through the workers (your backend serves them all); only
    /// [`AsyncFileSystem::with_backend_kind`] for io_uring submits on the callers' threads.
    pub fn with_factory(config: &AsyncFsConfig, factory: BackendFactory) -> Result<Self> {
        Self::start(config, factory, false)
    }

    /// Starts the workers on backends from `factory`, which builds backends of `kind` (what
    /// the façade's `storage_io::open_async_fs` selected). When `kind` is io_uring,
    /// `config.caller_rings` is on and this crate has its `io-uring` and `tokio` features (on
    /// Linux), ops called inside a tokio runtime submit on io_uring rings of the callers' own
    /// threads, built from `config.io`, instead of going through the workers; every other op
    /// goes through the workers.
    pub fn with_backend_kind(
        config: &AsyncFsConfig,
        factory: BackendFactory,
        kind: BackendKind,
    ) -> Result<Self> {
        let caller_rings = cfg!(caller_rings) && config.caller_rings && kind == BackendKind::IoUring;
        tracing::info!(
            backend = %kind,
            io_workers = config.effective_io_workers(),
            caller_rings,
            "async file system starting (caller_rings: inside a tokio runtime, ops submit on the caller's thread)"
        );
        Self::start(config, factory, caller_rings)
    }

    fn start(config: &AsyncFsConfig, factory: BackendFactory, caller_rings: bool) -> Result<Self> {
        config.validate()?;
        #[cfg(not(caller_rings))]
        let _ = caller_rings;
        let pool = IoBufferPool::new(config)?;
        let count = config.effective_io_workers();
        let mut backends = Vec::with_capacity(count);
        for w in 0..count {
            backends.push(factory(w)?);
        }
        let backend = backends.first().map_or("none", |b| b.name()).to_string();
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        for (w, io) in backends.into_iter().enumerate() {
            let (tx, rx) = flume::unbounded();
            let shared = Arc::new(WorkerShared::new());
            let worker = Worker::new(io, rx, tx.downgrade(), Arc::clone(&shared), config.io.queue_depth);
            let waker = worker.waker();
            let handle = std::thread::Builder::new()
                .name(format!("storage-io-worker-{w}"))
                .spawn(move || worker.run())
                .map_err(|e| StorageIoError::from_os("spawning an I/O worker thread", &e))?;
            senders.push((tx, waker));
            threads.push(handle);
            workers.push(shared);
        }
        Ok(AsyncFileSystem {
            shared: Arc::new(Shared {
                senders: RwLock::new(Some(senders)),
                threads: Mutex::new(threads),
                workers,
                next_worker: AtomicUsize::new(0),
                config: config.clone(),
                backend,
                pool,
                staged_writes: AtomicU64::new(0),
                staged_bytes: AtomicU64::new(0),
                #[cfg(caller_rings)]
                local: caller_rings.then(|| {
                    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                    LocalRings::new(&config.io, threads + 1)
                }),
            }),
        })
    }

    /// Opens an existing file read-only.
    pub async fn open(&self, path: impl AsRef<Path>) -> Result<AsyncFile> {
        self.open_with(path, OpenOptions::read_only(), None).await
    }

    /// Opens an existing file for reading and writing.
    pub async fn open_rw(&self, path: impl AsRef<Path>) -> Result<AsyncFile> {
        self.open_with(path, OpenOptions::default(), None).await
    }

    /// Creates a file for reading and writing, truncating it if it exists.
    pub async fn create(&self, path: impl AsRef<Path>) -> Result<AsyncFile> {
        self.open_with(path, OpenOptions::create().with_truncate(true), None)
            .await
    }

    /// Opens a file for appending (creating it if missing; existing contents are kept, and
    /// appends land after them). With `AsyncFsConfig::preallocate_appends` on,
    /// `AsyncFsConfig::preallocate_size` bytes are reserved first (see [`AsyncFile::allocate`]).
    ///
    /// Within this file system, every handle on one path shares one append cursor (see
    /// [`AsyncFile::append`]), so a second `open_append` of a path is fine. Across processes
    /// (and across file systems in one process), `open_append` takes an exclusive advisory lock
    /// (`flock`; on Windows `LockFileEx` on one byte past any data) on the file, held until the
    /// last handle on it here is closed: a second appender elsewhere gets an `Os` error naming
    /// the path instead of overwriting this one's records. The lock is advisory: a process that writes without taking it is not stopped.
    /// Files of in-memory backends have no OS file and take no lock.
    pub async fn open_append(&self, path: impl AsRef<Path>) -> Result<AsyncFile> {
        let config = &self.shared.config;
        let reserve = config.preallocate_appends.then_some(config.preallocate_size);
        self.open_inner(path.as_ref(), OpenOptions::create(), reserve, true)
            .await
    }

    /// Opens with explicit options. `AsyncFsConfig::io.direct_io` turns direct I/O on for every open
    /// (as does `options.direct`); where the file system refuses it, the file is opened
    /// buffered with a warning and [`AsyncFile::mode`] says so.
    ///
    /// `preallocate_bytes`: `Some(n)` reserves disk space for the first `n` bytes once the file
    /// is open, as [`AsyncFile::allocate`] does (`fallocate` with `FALLOC_FL_KEEP_SIZE`: the
    /// size and the append position do not change; Linux only, and only for files the OS
    /// knows, so in-memory backends refuse it); the open fails with the reservation's error.
    /// `None` reserves nothing. (`open_append` passes `preallocate_size` here when
    /// `preallocate_appends` is on.)
    ///
    /// Every handle on one path is served by the same worker (chosen by the path), which keeps
    /// one append cursor for them all.
    ///
    /// ```no_run
    /// # async fn demo(fs: storage_io_fs::AsyncFileSystem) -> storage_io_fs::Result<()> {
    /// use storage_io_fs::OpenOptions;
    /// // A new segment with 64 MiB reserved up front.
    /// let segment = fs.open_with("log/1.seg", OpenOptions::create(), Some(64 << 20)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open_with(
        &self,
        path: impl AsRef<Path>,
        options: OpenOptions,
        preallocate_bytes: Option<u64>,
    ) -> Result<AsyncFile> {
        self.open_inner(path.as_ref(), options, preallocate_bytes, false)
            .await
    }

    async fn open_inner(
        &self,
        path: &Path,
        mut options: OpenOptions,
        preallocate_bytes: Option<u64>,
        append_lock: bool,
    ) -> Result<AsyncFile> {
        options.direct |= self.shared.config.io.direct_io;
        let path = path.to_path_buf();
        // Resolved on a worker thread: the directory through the OS, so a symlinked directory
        // before a `..` cannot give two files one key.
        let key = self.resolved_key(&path).await?;
        let worker = worker_for(&key, self.shared.workers.len());
        let (reply, waiting) = slot();
        self.shared.send(
            worker,
            Request::Open {
                path: path.clone(),
                key,
                options,
                preallocate_bytes,
                append_lock,
                reply,
            },
        );
        // Dropped before the answer comes (a timeout, a select!), this future drops `waiting`,
        // and the worker closes the file it opens (or a delivered one closes itself).
        let opened = waiting.await.unwrap_or_else(|| Err(worker_gone()))?;
        let parts = opened.into_parts();
        #[cfg(caller_rings)]
        let local = self.shared.local.as_ref().and(parts.os).map(LocalFile::new);
        #[cfg(not(caller_rings))]
        let local: Option<Arc<LocalFile>> = None;
        Ok(AsyncFile {
            fs: Arc::clone(&self.shared),
            worker,
            fd: parts.fd,
            mode: parts.mode,
            path,
            file: parts.file,
            local,
            closed: AtomicBool::new(false),
        })
    }

    /// Makes the creation (and removal) of the files in `dir` durable: an fsync of the directory,
    /// through a worker's backend. The first `sync_data`/`sync_all` of a file opened with
    /// `create` does this for its own directory already; call it for removals, or to make the
    /// names of many new files durable at once.
    ///
    /// ```no_run
    /// # async fn demo(fs: storage_io_fs::AsyncFileSystem) -> storage_io_fs::Result<()> {
    /// let segment = fs.open_append("log/00000000000000000000.log").await?;
    /// fs.sync_dir("log").await?; // the new segment's name survives a crash from here on
    /// # Ok(()) }
    /// ```
    pub async fn sync_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let worker = self.shared.next_worker.fetch_add(1, Ordering::Relaxed) % self.shared.workers.len();
        let (reply, waiting) = slot();
        self.shared.send(
            worker,
            Request::SyncDir {
                dir: dir.as_ref().to_path_buf(),
                reply,
            },
        );
        waiting.await.unwrap_or_else(|| Err(worker_gone()))
    }

    /// The buffer pool sized by `AsyncFsConfig::buffer_pool_size`: aligned buffers for direct I/O.
    pub fn buffers(&self) -> &IoBufferPool {
        &self.shared.pool
    }

    /// The backend the workers run (`io_uring`, `thread_pool`, `sync`, …).
    pub fn backend(&self) -> &str {
        &self.shared.backend
    }

    /// The number of I/O worker threads.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Counters, latency histograms and gauges, as of now.
    pub fn metrics(&self) -> AsyncIoMetrics {
        self.shared.metrics()
    }

    /// Stops the workers: everything requested before this call completes (with its real
    /// result), every later request fails with `Closed`, files are closed, threads joined.
    /// Blocks until the workers have drained; from async code, call it where blocking is
    /// allowed (tokio: `spawn_blocking`). Calling it again does nothing.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}

impl std::fmt::Debug for AsyncFileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncFileSystem")
            .field("backend", &self.shared.backend)
            .field("workers", &self.shared.workers.len())
            .finish_non_exhaustive()
    }
}

/// Where requests for one worker go: its channel, and its backend's waker if it has one.
type WorkerInbox = (flume::Sender<Request>, Option<WaitWaker>);

impl Shared {
    /// Hands a request to a worker, or — after shutdown — answers it with `Closed` right here.
    fn send(&self, worker: usize, request: Request) {
        let refused = {
            let senders = self.senders.read();
            match senders.as_ref().and_then(|s| s.get(worker)) {
                Some((tx, waker)) => {
                    let refused = tx.send(request).err().map(|e| e.into_inner());
                    if let Some(w) = waker {
                        w.wake();
                    }
                    refused
                }
                None => Some(request),
            }
        };
        if let Some(request) = refused {
            refuse(request, StorageIoError::Closed);
        }
    }

    fn metrics(&self) -> AsyncIoMetrics {
        let mut total = IoStats::new();
        let (mut in_flight, mut queued, mut max_in_flight) = (0, 0, 0);
        for w in &self.workers {
            total.merge(&w.stats.lock());
            in_flight += w.in_flight.load(Ordering::Relaxed);
            queued += w.backlog.load(Ordering::Relaxed);
            max_in_flight = max_in_flight.max(w.max_in_flight.load(Ordering::Relaxed));
        }
        if let Some(senders) = self.senders.read().as_ref() {
            queued += senders.iter().map(|(s, _)| s.len() as u64).sum::<u64>();
        }
        #[cfg(caller_rings)]
        let (caller_rings, caller_ring_ops) = match &self.local {
            Some(local) => {
                let g = local.gauges(&mut total);
                in_flight += g.in_flight;
                queued += g.queued;
                max_in_flight = max_in_flight.max(g.max_in_flight);
                (g.rings, g.ops)
            }
            None => (0, 0),
        };
        #[cfg(not(caller_rings))]
        let (caller_rings, caller_ring_ops) = (0, 0);
        let snapshot = total.snapshot();
        AsyncIoMetrics {
            backend: self.backend.clone(),
            workers: self.workers.len(),
            ops: OpKind::ALL
                .iter()
                .map(|&k| OpMetrics::from_stats(&total, &snapshot, k))
                .collect(),
            in_flight,
            queued,
            max_in_flight,
            buffer_pool: self
                .pool
                .usage()
                .into_iter()
                .map(|(size_bytes, outstanding, limit)| PoolClassMetrics {
                    size_bytes,
                    outstanding,
                    limit,
                })
                .collect(),
            caller_rings,
            caller_ring_ops,
            staged_writes: self.staged_writes.load(Ordering::Relaxed),
            staged_bytes: self.staged_bytes.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) {
        // Ops on the callers' rings first: no new one is taken from here on, and every one
        // taken before is answered (later calls go to the workers, which refuse them).
        #[cfg(caller_rings)]
        if let Some(local) = &self.local {
            local.shutdown();
        }
        let Some(senders) = self.senders.write().take() else {
            return;
        };
        for (tx, waker) in &senders {
            let _ = tx.send(Request::Shutdown);
            if let Some(w) = waker {
                w.wake();
            }
        }
        drop(senders);
        let threads = std::mem::take(&mut *self.threads.lock());
        let me = std::thread::current().id();
        for handle in threads {
            // A task dropped by a waker on a worker thread can drop the last handle there; that
            // worker finishes on its own after draining, so it is not joined from itself.
            if handle.thread().id() == me {
                continue;
            }
            if handle.join().is_err() {
                tracing::error!("an io worker panicked; its in-flight operations failed with Closed");
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Answers a request that never reached a worker.
fn refuse(request: Request, error: StorageIoError) {
    match request {
        Request::Open { reply, .. } => drop(reply.complete(Err(error))),
        Request::Transfer { buf, reply, .. } => {
            drop(reply.complete((Err(error), buf)));
        }
        Request::Append { buf, reply, .. } => drop(reply.complete((Err(error), buf))),
        Request::Sync { reply, .. } | Request::Allocate { reply, .. } | Request::SetLen { reply, .. } => {
            drop(reply.complete(Err(error)))
        }
        Request::Blocking(call) => call(Err(error)),
        Request::Size { reply, .. } => drop(reply.complete(Err(error))),
        Request::SyncDir { reply, .. } => drop(reply.complete(Err(error))),
        Request::Close { reply, .. } => {
            if let Some(reply) = reply {
                drop(reply.complete(Err(error)));
            }
        }
        Request::Shutdown => {}
    }
}

/// The path made absolute and normalised lexically (`.` dropped, `dir/..` removed), with no
/// system call (it runs on the caller's thread): the worker a namespace call or an open's key
/// resolution goes to, and the key itself where the directory cannot be resolved
/// ([`AsyncFileSystem::resolved_key`]; lexically, `d/sub/../log` is `d/log` even when `sub` is
/// a symlink to another directory, which is why an open's key is resolved by the OS). A file
/// reached through a symlink or a hard link of its own has two keys: a second `open_append`
/// under the other name is refused by the append lock.
fn path_key(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut key = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            // `/..` is `/`; a `..` that cannot pop (a relative path that stayed relative) stays.
            Component::ParentDir => {
                if key.file_name().is_some() {
                    key.pop();
                } else if !key.has_root() {
                    key.push(part);
                }
            }
            other => key.push(other),
        }
    }
    key
}

/// The directory a file's name is in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The worker that serves every handle on the file with this key.
fn worker_for(key: &Path, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// What a future gets if its worker vanished without answering (a worker panic: a bug).
fn worker_gone() -> StorageIoError {
    tracing::error!("an io worker stopped without answering a request");
    StorageIoError::Closed
}

/// A file opened through an [`AsyncFileSystem`]. Share it between tasks with `Arc`; every method
/// takes `&self` and many operations may be in flight at once.
///
/// Each method sends its request **when it is called** and returns a future ([`BufOp`] or
/// [`Op`]) that waits for the answer. So operations on a file take effect in the order the calls
/// were made, whatever order their futures are polled in: start a batch of appends, then
/// `sync_data`, then await them all, and the sync covers the appends. The futures borrow
/// nothing, so they can be moved into spawned tasks.
///
/// Dropping the file closes it after the operations already requested (use
/// [`AsyncFile::close`] to learn the result).
pub struct AsyncFile {
    fs: Arc<Shared>,
    worker: usize,
    fd: IoFd,
    mode: DirectMode,
    path: PathBuf,
    /// What every handle on this path shares: append cursor, writes in flight, group sync.
    file: Arc<FileShared>,
    /// This handle's OS file for the rings on the callers' threads (none without them, or for
    /// files of in-memory backends).
    #[cfg_attr(
        not(caller_rings),
        allow(dead_code, reason = "always None without caller rings")
    )]
    local: Option<Arc<LocalFile>>,
    /// `close` was called: later operations fail with `BadFd`, and dropping sends no second close.
    closed: AtomicBool,
}

impl AsyncFile {
    /// The ring of the calling thread when this op can be submitted right here.
    #[cfg(caller_rings)]
    fn ring(&self) -> Option<(Arc<local::LocalRing>, &Arc<LocalFile>)> {
        let file = self.local.as_ref()?;
        Some((self.fs.local.as_ref()?.current()?, file))
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`. The buffer comes back truncated to the
    /// bytes read (fewer than asked only at end of file), on success and on error.
    pub fn read_at<B: OwnedBuf>(&self, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer(OpKind::Read, buf, offset)
    }

    /// Writes all of `buf` at `offset` without copying it; the buffer comes back with the result.
    /// A write past the end moves the append cursor past it.
    ///
    /// On a direct-I/O file, `offset` and the length must be multiples of the file's alignment
    /// ([`DirectMode::Direct`]); a buffer whose *address* is not (a `Vec`, `Bytes`) is copied
    /// into aligned memory first rather than refused, and the copy is counted
    /// ([`AsyncIoMetrics::staged_bytes`]). Use [`IoBufferPool`] buffers to write without it.
    pub fn write_at<B: OwnedBuf>(&self, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer(OpKind::Write, buf, offset)
    }

    /// The error of an operation called after [`AsyncFile::close`].
    fn after_close(&self) -> Option<StorageIoError> {
        self.closed
            .load(Ordering::Acquire)
            .then_some(StorageIoError::BadFd { fd: self.fd })
    }

    /// A buffer operation answered at once with `error` (called after close).
    fn refused_now<T, B: OwnedBuf>(buf: IoBuf, error: StorageIoError) -> BufOp<T, B> {
        let (reply, waiting) = slot();
        let _ = reply.complete((Err(error), buf));
        BufOp {
            waiting,
            staged: None,
            buf: PhantomData,
        }
    }

    fn transfer<B: OwnedBuf>(&self, kind: OpKind, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer_io(kind, buf.into_io_buf(), offset)
    }

    /// [`AsyncFile::transfer`] of a buffer already in the backends' form.
    fn transfer_io<B: OwnedBuf>(&self, kind: OpKind, buf: IoBuf, offset: u64) -> BufOp<usize, B> {
        if let Some(e) = self.after_close() {
            return Self::refused_now(buf, e);
        }
        let (buf, staged) = match self.stage(kind, buf) {
            Ok(staged) => staged,
            Err((e, buf)) => return Self::refused_now(buf, e),
        };
        let mut op = self.send_transfer(kind, buf, offset);
        op.staged = staged;
        op
    }

    /// A write to a direct-I/O file from memory off its alignment goes out from an aligned
    /// copy: the copy, and the caller's buffer to give back. Anything else goes as it is.
    #[allow(clippy::type_complexity)] // the buffer comes back with the error
    fn stage(
        &self,
        kind: OpKind,
        buf: IoBuf,
    ) -> std::result::Result<(IoBuf, Option<IoBuf>), (StorageIoError, IoBuf)> {
        let DirectMode::Direct { align } = self.mode else {
            return Ok((buf, None));
        };
        if kind != OpKind::Write || (buf.as_ptr() as usize).is_multiple_of(align) {
            return Ok((buf, None));
        }
        match AlignedBuf::from_slice(&buf, align) {
            Ok(copy) => {
                self.fs.staged_writes.fetch_add(1, Ordering::Relaxed);
                self.fs
                    .staged_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                debug_assert!(
                    (copy.as_ptr() as usize).is_multiple_of(align),
                    "a staged copy is aligned"
                );
                Ok((IoBuf::Aligned(copy), Some(buf)))
            }
            Err(e) => Err((e, buf)),
        }
    }

    fn send_transfer<B: OwnedBuf>(&self, kind: OpKind, buf: IoBuf, offset: u64) -> BufOp<usize, B> {
        let (reply, waiting) = slot();
        let ticket = (kind == OpKind::Write).then(|| {
            self.file.wrote_to(offset.saturating_add(buf.len() as u64));
            self.file.begin_write()
        });
        #[cfg(caller_rings)]
        if let Some((ring, file)) = self.ring() {
            let op = LocalOp {
                kind,
                file: Arc::clone(file),
                buf: Some(buf),
                offset,
                at: Instant::now(),
                ticket,
                reply: LocalReply::Transfer(reply),
            };
            ring.submit(op, true);
            return BufOp {
                waiting,
                staged: None,
                buf: PhantomData,
            };
        }
        let request = Request::Transfer {
            kind,
            fd: self.fd,
            buf,
            offset,
            at: Instant::now(),
            ticket,
            reply,
        };
        self.fs.send(self.worker, request);
        BufOp {
            waiting,
            staged: None,
            buf: PhantomData,
        }
    }

    /// Writes all of `buf` at the end of the file and answers the offset it landed at. Appends
    /// in flight at once never overlap: each takes its place when it is called, in call order.
    /// Every handle on this path opened through this file system shares one append cursor, so
    /// appends through two handles never overwrite each other (across processes, see
    /// [`AsyncFileSystem::open_append`]).
    ///
    /// An append is written even if its future is dropped: its place in the file is taken when
    /// it is called, and skipping it would leave a hole before the appends after it.
    pub fn append<B: OwnedBuf>(&self, buf: B) -> BufOp<u64, B> {
        let buf = buf.into_io_buf();
        if let Some(e) = self.after_close() {
            return Self::refused_now(buf, e);
        }
        let offset = self.file.reserve_append(buf.len() as u64);
        self.send_append(buf, offset)
    }

    /// Sends an append of `buf` at `offset`, a place already taken from the path's cursor.
    fn send_append<B: OwnedBuf>(&self, buf: IoBuf, offset: u64) -> BufOp<u64, B> {
        let (reply, waiting) = slot();
        let ticket = self.file.begin_write();
        #[cfg(caller_rings)]
        if let Some((ring, file)) = self.ring() {
            let op = LocalOp {
                kind: OpKind::Append,
                file: Arc::clone(file),
                buf: Some(buf),
                offset,
                at: Instant::now(),
                ticket: Some(ticket),
                reply: LocalReply::Append(offset, reply),
            };
            ring.submit(op, true);
            return BufOp {
                waiting,
                staged: None,
                buf: PhantomData,
            };
        }
        let request = Request::Append {
            fd: self.fd,
            buf,
            offset,
            at: Instant::now(),
            ticket,
            reply,
        };
        self.fs.send(self.worker, request);
        BufOp {
            waiting,
            staged: None,
            buf: PhantomData,
        }
    }

    /// `fdatasync`: every write and append called on this file before this call is durable
    /// when it returns `Ok`.
    ///
    /// The system call starts once those writes have completed, and writes called after it
    /// are not held back. Concurrent syncs of one file share one fdatasync: a sync that one in
    /// flight already covers rides on it, and the syncs that arrive while one runs share the
    /// next (so 256 tasks syncing at once cost two fdatasyncs, not 256). The first sync of a
    /// file opened with `create` also syncs its directory, so that the name is durable too.
    pub fn sync_data(&self) -> Op<()> {
        self.sync(false)
    }

    /// `fsync`: as [`AsyncFile::sync_data`], plus all metadata.
    pub fn sync_all(&self) -> Op<()> {
        self.sync(true)
    }

    fn sync(&self, full: bool) -> Op<()> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let fs = Arc::clone(&self.fs);
        let (worker, fd) = (self.worker, self.fd);
        let shared = Arc::clone(&self.file);
        let path = self.path.clone();
        #[cfg(caller_rings)]
        let local = self.local.clone();
        let start: order::StartSync = Box::new(move |full| {
            let kind = if full { OpKind::Fsync } else { OpKind::Datasync };
            let (reply, waiting) = slot();
            // The directory of a new file is synced first, by the worker: until that succeeded,
            // syncs go there.
            let dir = shared
                .dir_unsynced()
                .then(|| (parent_dir(&path), Arc::clone(&shared)));
            #[cfg(caller_rings)]
            if dir.is_none()
                && let Some(file) = &local
                && let Some(ring) = fs.local.as_ref().and_then(LocalRings::current)
            {
                let op = LocalOp {
                    kind,
                    file: Arc::clone(file),
                    buf: None,
                    offset: 0,
                    at: Instant::now(),
                    ticket: None,
                    reply: LocalReply::Sync(reply),
                };
                // Called under the path's order lock: answer nothing else from here.
                ring.submit(op, false);
                return waiting;
            }
            let request = Request::Sync {
                fd,
                kind,
                dir,
                at: Instant::now(),
                reply,
            };
            fs.send(worker, request);
            waiting
        });
        Op::boxed(GroupSync::new(&self.file, full, start))
    }

    /// The file's length in bytes, after every write and append called before this call has
    /// completed.
    pub fn size(&self) -> Op<u64> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let fence = self.file.fence();
        let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
        Op::boxed(async move {
            fence.await;
            let (reply, waiting) = slot();
            fs.send(worker, Request::Size { fd, reply });
            waiting.await.unwrap_or_else(|| Err(worker_gone()))
        })
    }

    /// Reserves disk space for the first `len` bytes (`fallocate` with `FALLOC_FL_KEEP_SIZE`):
    /// the size and the append position do not change, and writes inside the reserved range
    /// cannot fail for lack of space. `ENOSPC` if the space is not there; `EOPNOTSUPP` on file
    /// systems without fallocate; Linux only.
    pub fn allocate(&self, len: u64) -> Op<()> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let fence = self.file.fence();
        let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
        Op::boxed(async move {
            fence.await;
            let (reply, waiting) = slot();
            fs.send(worker, Request::Allocate { fd, len, reply });
            waiting.await.unwrap_or_else(|| Err(worker_gone()))
        })
    }

    /// Closes the file after every operation called before has completed, and says whether
    /// closing went well.
    ///
    /// Takes `&self`, so a file shared through an `Arc` can be closed by any of its holders
    /// without unwrapping it: operations called on it after the close fail (`BadFd`; the handle
    /// is never reused for another file), and dropping it later sends no second close. Only the
    /// first call closes and answers the result; a later call answers `Ok` at once. Dropping the
    /// future does not stop the close.
    pub fn close(&self) -> Op<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Op::boxed(std::future::ready(Ok(())));
        }
        let fence = self.file.fence();
        let guard = CloseOnDrop {
            fs: Some(Arc::clone(&self.fs)),
            worker: self.worker,
            fd: self.fd,
        };
        Op::boxed(async move {
            fence.await;
            let (reply, waiting) = slot();
            guard.send(Some(reply));
            waiting.await.unwrap_or_else(|| Err(worker_gone()))
        })
    }

    /// Direct or buffered I/O, and why (direct I/O falls back to buffered where refused).
    pub fn mode(&self) -> &DirectMode {
        &self.mode
    }

    /// True when direct I/O is in effect: offsets, lengths and read buffers must then be
    /// aligned to 4096 bytes (use [`IoBufferPool`] or `AlignedBuf`); a write from memory off the
    /// alignment is staged through an aligned copy (see [`AsyncFile::write_at`]).
    pub fn is_direct(&self) -> bool {
        self.mode.is_direct()
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for AsyncFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncFile")
            .field("path", &self.path)
            .field("worker", &self.worker)
            .field("fd", &self.fd)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Sends a file's close when dropped, unless `send` sent it first: a `close` future dropped
/// while it waits for the writes before it still closes the file.
struct CloseOnDrop {
    /// Taken by `send`.
    fs: Option<Arc<Shared>>,
    worker: usize,
    fd: IoFd,
}

impl CloseOnDrop {
    fn send(mut self, reply: Option<slot::Completer<Result<()>>>) {
        if let Some(fs) = self.fs.take() {
            fs.send(self.worker, Request::Close { fd: self.fd, reply });
        }
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            fs.send(
                self.worker,
                Request::Close {
                    fd: self.fd,
                    reply: None,
                },
            );
        }
    }
}

impl Drop for AsyncFile {
    /// Closes the file once the writes called on its path before the drop have completed: the
    /// close releases the append lock, and another appender must not get it while an append of
    /// this file (on a caller's ring) can still land.
    fn drop(&mut self) {
        if !*self.closed.get_mut() {
            let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
            self.file.after_writes(Box::new(move || {
                fs.send(worker, Request::Close { fd, reply: None })
            }));
        }
    }
}

/// Runs a future to completion on the calling thread, parking it between polls: a way for
/// synchronous code (a CLI, a benchmark, a test) to use the async file API without a runtime.
/// It is not an executor for tasks; inside async code, just `.await`.
///
/// ```no_run
/// # let factory: storage_io_fs::BackendFactory = std::sync::Arc::new(|_| {
/// #     Ok(Box::new(storage_io_sync::SyncStorageIo::new(&Default::default())?) as Box<dyn storage_io_fs::StorageIo>)
/// # });
/// let fs = storage_io_fs::AsyncFileSystem::with_factory(&storage_io_fs::AsyncFsConfig::default(), factory)?;
/// let file = storage_io_fs::block_on(fs.open("data.bin"))?;
/// let (n, buf) = storage_io_fs::block_on(file.read_at(vec![0u8; 4096], 0));
/// # Ok::<(), storage_io_fs::StorageIoError>(())
/// ```
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    // Ops called inside take the worker path: a ring on this thread would not be drained
    // while it blocks here.
    #[cfg(caller_rings)]
    let _scope = local::BlockingScope::enter();
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // A wake that came before this park makes it return at once (the token is kept).
        std::thread::park();
    }
}

/// The answer to an operation that moved a buffer in: the result and the buffer.
///
/// The request was sent when the method was called; this future only waits for the answer.
/// Dropping it cancels the operation if its worker has not started it; otherwise the operation
/// runs to completion and the buffer is dropped once the backend has given it back.
#[must_use = "the operation was sent; await the future to get the result and the buffer back"]
pub struct BufOp<T, B> {
    waiting: Waiting<(Result<T>, IoBuf)>,
    /// The caller's buffer, kept here while an aligned copy of it is written; it comes back
    /// instead of the copy.
    staged: Option<IoBuf>,
    buf: PhantomData<fn() -> B>,
}

impl<T, B: OwnedBuf> Future for BufOp<T, B> {
    type Output = (Result<T>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = std::task::ready!(Pin::new(&mut self.waiting).poll(cx));
        let staged = self.staged.take();
        Poll::Ready(match (answer, staged) {
            (Some((result, _copy)), Some(original)) => (result, B::from_io_buf(original)),
            (Some((result, buf)), None) => (result, B::from_io_buf(buf)),
            (None, Some(original)) => (Err(worker_gone()), B::from_io_buf(original)),
            (None, None) => (Err(worker_gone()), B::lost()),
        })
    }
}

/// The answer to an operation without a buffer (sync, size, allocate, close).
///
/// A sync is started when it is called as far as ordering goes (it covers the writes called
/// before it); its system call starts once those have completed. Size, allocate and close wait
/// for the writes called before them in the same way.
#[must_use = "await the future to learn the result; a sync not awaited may not run"]
pub struct Op<T> {
    inner: Pin<Box<dyn Future<Output = Result<T>> + Send>>,
}

impl<T> Op<T> {
    fn boxed(fut: impl Future<Output = Result<T>> + Send + 'static) -> Self {
        Op { inner: Box::pin(fut) }
    }
}

impl<T> Future for Op<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> std::fmt::Debug for Op<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").finish_non_exhaustive()
    }
}
