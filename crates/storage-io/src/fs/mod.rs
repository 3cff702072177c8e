//! The async file API: [`AsyncFileSystem`] and [`AsyncFile`], on any backend, from any executor.
//!
//! Operations take an owned buffer and give it back with the result, so the memory the kernel
//! writes into belongs to the operation until it completes — on success, on error, and when the
//! caller's future is dropped half-way (the worker then drops the buffer, but only after the
//! backend has handed it back). Futures are completed from the I/O workers through wakers and
//! need no particular runtime: tokio, a plain `block_on`, or anything that polls.
//!
//! ```no_run
//! use storage_io::{AsyncFileSystem, AsyncFsConfig};
//! # async fn demo() -> storage_io::Result<()> {
//! let fs = AsyncFileSystem::new(&AsyncFsConfig::default())?; // io_uring where the kernel allows it
//! let log = fs.open_append("segment-0.log").await?;
//! let (at, _record) = log.append(b"hello".to_vec()).await;
//! log.sync_data().await?; // durable from here on
//! let (n, buf) = log.read_at(vec![0u8; 5], at?).await;
//! assert_eq!((n?, &buf[..]), (5, &b"hello"[..]));
//! # Ok(()) }
//! ```

mod buf;
mod config;
mod metrics;
mod slot;
mod worker;

use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use storage_io_core::{
    BackendFactory, DirectMode, IoBuf, IoFd, IoStats, OpKind, OpenOptions, Result, StorageIoError, WaitWaker,
};

pub use buf::{IoBufferPool, OwnedBuf, POOL_CLASSES};
pub use config::AsyncFsConfig;
pub use metrics::{AsyncIoMetrics, LATENCY_BUCKETS_SECONDS, OpMetrics, PoolClassMetrics};
use slot::{Waiting, slot};
use worker::{Request, Worker, WorkerShared};

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
}

impl AsyncFileSystem {
    /// Starts the workers on the backend the façade selects for `config` (io_uring where the
    /// probe passes, else the thread pool; `STORAGE_IO_BACKEND` overrides), logging the kernel
    /// version, the backend chosen and why.
    pub fn new(config: &AsyncFsConfig) -> Result<Self> {
        // The STORAGE_IO_* overrides apply here as in every opener of the façade.
        let mut config = config.clone();
        config.apply_env()?;
        let config = &config;
        // One probe serves both the log line and the selection.
        let uring = crate::uring_status();
        match &uring {
            crate::UringStatus::Available { kernel, .. } => tracing::info!(%kernel, "io_uring available"),
            other => tracing::info!(status = %other, "io_uring not in use"),
        }
        let selection = crate::select_with(&config.io, &uring)?;
        let factory = crate::factory_of(selection.kind, &config.io);
        tracing::info!(
            backend = %selection.kind,
            reason = %selection.reason,
            io_workers = config.effective_io_workers(),
            "async file system starting"
        );
        Self::with_factory(config, factory)
    }

    /// Starts the workers on backends from `factory` (one per worker: yours, the testkit's, or
    /// one from [`backend_factory`](crate::backend_factory)).
    pub fn with_factory(config: &AsyncFsConfig, factory: BackendFactory) -> Result<Self> {
        config.validate()?;
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
    /// appends land after them). With `preallocate_wal` on, `preallocate_size` bytes are
    /// reserved first (see [`AsyncFile::allocate`]).
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
    /// Every handle on one path is served by the same worker (chosen by the path), which keeps
    /// one append cursor for them all.
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
        let key = path_key(&path);
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
        let (fd, mode) = opened.into_parts();
        Ok(AsyncFile {
            fs: Arc::clone(&self.shared),
            worker,
            fd,
            mode,
            path,
            closed: false,
        })
    }

    /// Makes the creation (and removal) of the files in `dir` durable: an fsync of the directory,
    /// through a worker's backend. The first `sync_data`/`sync_all` of a file opened with
    /// `create` does this for its own directory already; call it for removals, or to make the
    /// names of many new files durable at once.
    ///
    /// ```no_run
    /// # async fn demo(fs: storage_io::AsyncFileSystem) -> storage_io::Result<()> {
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
        }
    }

    fn shutdown(&self) {
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
        Request::Sync { reply, .. } | Request::Allocate { reply, .. } => drop(reply.complete(Err(error))),
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

/// The key under which handles on one file share a worker and an append cursor: the path made
/// absolute and normalised lexically (`.` dropped, `dir/..` removed), so `d/log`, `./d/log` and
/// `d/sub/../log` are one key. No system call is made (this runs on the caller's thread) and no
/// symlink is resolved: two names for one file through a symlink or a hard link are two keys,
/// and a second `open_append` under the other name is refused by the append lock.
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
    closed: bool,
}

impl AsyncFile {
    /// Reads `buf.len()` bytes at `offset` into `buf`. The buffer comes back truncated to the
    /// bytes read (fewer than asked only at end of file), on success and on error.
    pub fn read_at<B: OwnedBuf>(&self, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer(OpKind::Read, buf, offset)
    }

    /// Writes all of `buf` at `offset` without copying it; the buffer comes back with the result.
    pub fn write_at<B: OwnedBuf>(&self, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer(OpKind::Write, buf, offset)
    }

    fn transfer<B: OwnedBuf>(&self, kind: OpKind, buf: B, offset: u64) -> BufOp<usize, B> {
        let (reply, waiting) = slot();
        let request = Request::Transfer {
            kind,
            fd: self.fd,
            buf: buf.into_io_buf(),
            offset,
            at: Instant::now(),
            reply,
        };
        self.fs.send(self.worker, request);
        BufOp {
            waiting,
            buf: PhantomData,
        }
    }

    /// Writes all of `buf` at the end of the file and answers the offset it landed at. Appends
    /// in flight at once never overlap: each takes its place when the worker submits it, in the
    /// order they were requested. Every handle on this path opened through this file system
    /// shares one append cursor, so appends through two handles never overwrite each other
    /// (across processes, see [`AsyncFileSystem::open_append`]).
    pub fn append<B: OwnedBuf>(&self, buf: B) -> BufOp<u64, B> {
        let (reply, waiting) = slot();
        let request = Request::Append {
            fd: self.fd,
            buf: buf.into_io_buf(),
            at: Instant::now(),
            reply,
        };
        self.fs.send(self.worker, request);
        BufOp {
            waiting,
            buf: PhantomData,
        }
    }

    /// `fdatasync`: every write and append requested on this file before the call is durable
    /// when it returns `Ok`.
    pub fn sync_data(&self) -> Op<()> {
        self.sync(OpKind::Datasync)
    }

    /// `fsync`: as [`AsyncFile::sync_data`], plus all metadata.
    pub fn sync_all(&self) -> Op<()> {
        self.sync(OpKind::Fsync)
    }

    fn sync(&self, kind: OpKind) -> Op<()> {
        let (reply, waiting) = slot();
        let request = Request::Sync {
            fd: self.fd,
            kind,
            at: Instant::now(),
            reply,
        };
        self.fs.send(self.worker, request);
        Op { waiting }
    }

    /// The file's length in bytes, after every write and append requested before this call
    /// has completed.
    pub fn size(&self) -> Op<u64> {
        let (reply, waiting) = slot();
        self.fs.send(self.worker, Request::Size { fd: self.fd, reply });
        Op { waiting }
    }

    /// Reserves disk space for the first `len` bytes (`fallocate` with `FALLOC_FL_KEEP_SIZE`):
    /// the size and the append position do not change, and writes inside the reserved range
    /// cannot fail for lack of space. `ENOSPC` if the space is not there; `EOPNOTSUPP` on file
    /// systems without fallocate; Linux only.
    pub fn allocate(&self, len: u64) -> Op<()> {
        let (reply, waiting) = slot();
        self.fs.send(
            self.worker,
            Request::Allocate {
                fd: self.fd,
                len,
                reply,
            },
        );
        Op { waiting }
    }

    /// Closes the file after every operation requested before, and says whether that went well.
    pub fn close(mut self) -> Op<()> {
        self.closed = true;
        let (reply, waiting) = slot();
        self.fs.send(
            self.worker,
            Request::Close {
                fd: self.fd,
                reply: Some(reply),
            },
        );
        Op { waiting }
    }

    /// Direct or buffered I/O, and why (direct I/O falls back to buffered where refused).
    pub fn mode(&self) -> &DirectMode {
        &self.mode
    }

    /// True when direct I/O is in effect: offsets, lengths and buffers must then be aligned to
    /// 4096 bytes (use [`IoBufferPool`] or `AlignedBuf`).
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

impl Drop for AsyncFile {
    fn drop(&mut self) {
        if !self.closed {
            self.fs.send(
                self.worker,
                Request::Close {
                    fd: self.fd,
                    reply: None,
                },
            );
        }
    }
}

/// Runs a future to completion on the calling thread, parking it between polls: a way for
/// synchronous code (a CLI, a benchmark, a test) to use the async file API without a runtime.
/// It is not an executor for tasks; inside async code, just `.await`.
///
/// ```no_run
/// let fs = storage_io::AsyncFileSystem::new(&storage_io::AsyncFsConfig::default())?;
/// let file = storage_io::block_on(fs.open("data.bin"))?;
/// let (n, buf) = storage_io::block_on(file.read_at(vec![0u8; 4096], 0));
/// # Ok::<(), storage_io::StorageIoError>(())
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
    buf: PhantomData<fn() -> B>,
}

impl<T, B: OwnedBuf> Future for BufOp<T, B> {
    type Output = (Result<T>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.waiting).poll(cx).map(|answer| match answer {
            Some((result, buf)) => (result, B::from_io_buf(buf)),
            None => (Err(worker_gone()), B::lost()),
        })
    }
}

/// The answer to an operation without a buffer (sync, size, allocate, close).
///
/// As with [`BufOp`], the request was sent when the method was called.
#[must_use = "the operation was sent; await the future to learn its result"]
pub struct Op<T> {
    waiting: Waiting<Result<T>>,
}

impl<T> Future for Op<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.waiting)
            .poll(cx)
            .map(|answer| answer.unwrap_or_else(|| Err(worker_gone())))
    }
}
