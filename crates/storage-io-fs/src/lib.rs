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
mod file;
#[cfg(caller_rings)]
mod local;
mod metrics;
mod namespace;
mod op;
mod order;
mod slot;
#[cfg(feature = "tokio")]
mod tokio_io;
mod vectored;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use storage_io_core::{IoStats, WaitWaker};

pub use buf::{IoBufferPool, OwnedBuf, POOL_CLASSES};
// The core types this crate's signatures name, so a user needs no second dependency.
pub use config::AsyncFsConfig;
pub use file::AsyncFile;
#[cfg(caller_rings)]
use local::{LocalFile, LocalRings};
pub use metrics::{AsyncIoMetrics, LATENCY_BUCKETS_SECONDS, OpMetrics, PoolClassMetrics};
pub use op::{BufOp, Op, block_on};
use slot::slot;
/// The `bytes` crate, re-exported: `Bytes` and `BytesMut` are [`OwnedBuf`]s.
pub use storage_io_core::bytes;
pub use storage_io_core::{
    AlignedBuf, BackendFactory, BackendKind, DirectMode, FileMetadata, IoConfig, OpKind, OpenOptions, Result,
    StorageIo, StorageIoError,
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
        let by_id = worker::FilesById::default();
        for (w, io) in backends.into_iter().enumerate() {
            let (tx, rx) = flume::unbounded();
            let shared = Arc::new(WorkerShared::new());
            let worker = Worker::new(
                io,
                rx,
                tx.downgrade(),
                Arc::clone(&shared),
                Arc::clone(&by_id),
                config.io.queue_depth,
            );
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
    ///
    /// Its appends share the cursor of every other handle on the same file opened through this
    /// file system (see [`AsyncFileSystem::open_append`] for what "the same file" means).
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
    /// Within this file system, every handle on one file shares one append cursor (see
    /// [`AsyncFile::append`]), so a second `open_append` of a path is fine. "One file" is the
    /// file's identity (device and inode on Unix), not its name: a file reached by two names —
    /// a hard link, a directory renamed between two opens — still has one cursor, and a new
    /// file created at the name of one removed or renamed away (a handle on it still open) has
    /// its own, starting at its own length. Where there is no identity (an in-memory backend's
    /// files; off Unix) the path is the key: there one file reached by two names has two
    /// cursors (appends through them overwrite each other), and a new file at a name removed
    /// or renamed away other than through this file system's `remove_file`/`rename` continues
    /// the old one's cursor while a handle on the old one is open. Across processes
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
    /// Every handle on one path is served by the same worker (chosen by the path), and every
    /// handle on one file shares one append cursor (see [`AsyncFileSystem::open_append`]).
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
            resizable: parts.resizable,
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
        Request::Forget(_) => {}
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
/// reached through a symlink or a hard link of its own has two keys (its handles still share
/// one state through the file's identity, see the worker's `FileId`): a second `open_append`
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
