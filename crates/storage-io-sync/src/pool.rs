//! [`BlockingIo`] and [`ThreadPoolStorageIo`]: blocking calls on worker threads, the way
//! PostgreSQL's `io_method=worker` does it — `pread`/`pwrite`/`fdatasync` on real files, or the
//! calls of a [`BlockingBackend`] of your own. The caller's thread only queues jobs and collects
//! results; it never blocks in `submit_*` or `poll_completions`.
//!
//! The op bookkeeping (slots, tokens, the datasync barrier, staging, the page-cache fast path)
//! is core's [`OpTable`]; this module is the [`OpDriver`] that hands a slot's op to a worker
//! and takes its result back.

use std::fs::File;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use storage_io_core::backend_kit::{DriverOpened, OpDriver, OpFile, OpPayload, OpTable, QueuedIo, WakeState};
use storage_io_core::{Capabilities, IoConfig, OpenOptions, Result, StorageIoError, WaitWaker};

use crate::blocking::{BlockingBackend, StdFiles};
use crate::exec;

/// The thread pool on real files: `pread`/`pwrite`/`fdatasync` through the platform layer.
pub type ThreadPoolStorageIo = BlockingIo<StdFiles>;

/// A file of the pool's table: the backend's file, shared with the worker running an op on it.
struct PoolFile<B: BlockingBackend> {
    backend: Arc<B>,
    file: Arc<B::File>,
}

impl<B: BlockingBackend> OpFile for PoolFile<B> {
    fn file_len(&self) -> Result<u64> {
        self.backend
            .len(&self.file)
            .map_err(|e| StorageIoError::from_os("file length", &e))
    }
    fn std_file(&self) -> Option<&File> {
        self.backend.std_file(&self.file)
    }
}

/// An op on its way to a worker: the slot it belongs to, and what the worker needs to run it.
struct Job<F> {
    idx: u32,
    op: storage_io_core::OpKind,
    file: Arc<F>,
    /// Where the remaining bytes start in the file.
    offset: u64,
    /// Bytes already in place (a partial page-cache hit at submit).
    skip: usize,
    payload: OpPayload,
}

/// A worker's answer: the slot, its payload coming home, and the outcome.
struct Done {
    idx: u32,
    payload: OpPayload,
    result: Result<usize>,
}

/// The thread-pool backend: the calls of a [`BlockingBackend`] (real files for
/// [`ThreadPoolStorageIo`], or a backend of your own through [`with_backend`](Self::with_backend))
/// run on worker threads.
///
/// `workers` threads share one job queue (so a slow op never strands others behind it) and send
/// results back on one completion channel. Datasync and fsync are barriers per fd: a sync is
/// held in the caller's thread until every write to that fd submitted before it has completed,
/// then dispatched; writes submitted while it is held queue behind it. Reads are never held.
///
/// ```
/// use storage_io_core::{IoConfig, StorageIo};
/// use storage_io_sync::ThreadPoolStorageIo;
///
/// let mut io = ThreadPoolStorageIo::new(&IoConfig { workers: 2, ..IoConfig::default() }).unwrap();
/// let fd = io.register_fd(tempfile::tempfile().unwrap()).unwrap();
/// for i in 0..8u64 {
///     io.submit_write(fd, &[i as u8; 512], i * 512).unwrap();
/// }
/// io.submit_datasync(fd).unwrap();
/// let mut done = Vec::new();
/// io.wait_completions(&mut done, 9, None).unwrap();
/// assert_eq!(done.last().unwrap().op, storage_io_core::OpKind::Datasync);
/// ```
pub struct BlockingIo<B: BlockingBackend> {
    io: QueuedIo<PoolDriver<B>>,
}

storage_io_core::forward_storage_io!([B: BlockingBackend] BlockingIo<B> => io);

/// The thread pool as an [`OpDriver`]: a job queue shared by the workers, and one channel of
/// results back.
struct PoolDriver<B: BlockingBackend> {
    backend: Arc<B>,
    jobs: Option<flume::Sender<Job<B::File>>>,
    /// Completions from the workers; `None` is a kick from a [`WaitWaker`].
    results: flume::Receiver<Option<Done>>,
    /// Kept to hand to wakers.
    results_tx: flume::Sender<Option<Done>>,
    /// Set up by the first `wait_waker` call.
    wake: Option<Arc<WakeState>>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPoolStorageIo {
    /// Starts `config.effective_workers()` worker threads on real files.
    pub fn new(config: &IoConfig) -> Result<Self> {
        BlockingIo::with_backend(StdFiles, config)
    }
}

impl<B: BlockingBackend> BlockingIo<B> {
    /// The backend whose calls the workers run.
    pub fn backend(&self) -> &B {
        &self.io.driver().backend
    }

    /// Runs `backend`'s blocking calls on `config.effective_workers()` worker threads.
    pub fn with_backend(backend: B, config: &IoConfig) -> Result<Self> {
        config.validate()?;
        let backend = Arc::new(backend);
        let (job_tx, job_rx) = flume::unbounded::<Job<B::File>>();
        let (done_tx, done_rx) = flume::unbounded::<Option<Done>>();
        let n = config.effective_workers();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let backend = Arc::clone(&backend);
            let spawned = std::thread::Builder::new()
                .name(format!("storage-io-worker-{i}"))
                .spawn(move || worker_loop(&*backend, &job_rx, &done_tx));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    tracing::error!(error = %e, "could not start an I/O worker thread");
                    return Err(StorageIoError::from_os("spawning an I/O worker thread", &e));
                }
            }
        }
        let driver = PoolDriver {
            backend,
            jobs: Some(job_tx),
            results: done_rx,
            results_tx: done_tx,
            wake: None,
            workers,
        };
        Ok(BlockingIo {
            io: QueuedIo::new(driver, OpTable::new(config, true)),
        })
    }

    /// How many reads were answered from the page cache at submit (`IoConfig::nowait_reads`),
    /// without a worker.
    pub fn nowait_hits(&self) -> u64 {
        self.io.ops().nowait_hits()
    }
}

impl<B: BlockingBackend> PoolDriver<B> {
    /// Takes one worker result (or kick) into `ops`: blocks until `deadline` when one is given,
    /// forever when `None`; false when none can come.
    fn receive_one(&mut self, ops: &mut OpTable<PoolFile<B>>, deadline: Option<Instant>) -> bool {
        if ops.in_flight() == 0 {
            return false;
        }
        let got = match deadline {
            Some(d) => self.results.recv_deadline(d).ok(),
            None => self.results.recv().ok(),
        };
        match got {
            Some(Some(done)) => {
                self.on_done(ops, done);
                true
            }
            // A kick: the caller looks at the wake state.
            Some(None) => true,
            None => false,
        }
    }

    fn handle(&self, file: B::File) -> PoolFile<B> {
        PoolFile {
            backend: Arc::clone(&self.backend),
            file: Arc::new(file),
        }
    }

    fn on_done(&mut self, ops: &mut OpTable<PoolFile<B>>, done: Done) {
        ops.slot_mut(done.idx).payload = done.payload;
        ops.returned(done.idx);
        ops.complete(self, done.idx, done.result);
    }
}

impl<B: BlockingBackend> OpDriver for PoolDriver<B> {
    type File = PoolFile<B>;

    fn capabilities(&self, config: &IoConfig) -> Capabilities {
        Capabilities {
            name: B::NAME,
            max_in_flight: config.queue_depth,
            asynchronous: true,
            worker_threads: self.workers.len(),
            registered_buffers: false,
            registered_files: false,
            sqpoll: false,
            direct_io: B::DIRECT_IO,
            max_io_bytes: config.max_io_bytes,
            notes: Vec::new(),
        }
    }

    /// Hands the slot's op to the workers: its payload travels with the job and comes back in
    /// the result.
    fn start(&mut self, ops: &mut OpTable<PoolFile<B>>, idx: u32) -> std::io::Result<()> {
        let Some(tx) = self.jobs.as_ref() else {
            return Err(std::io::Error::other("the I/O worker pool is shut down"));
        };
        let file = Arc::clone(&ops.file(ops.slot(idx).fd).map_err(std::io::Error::other)?.file);
        let slot = ops.slot_mut(idx);
        let job = Job {
            idx,
            op: slot.op,
            file,
            offset: slot.offset,
            skip: slot.done,
            payload: std::mem::take(&mut slot.payload),
        };
        // The workers own the receiving side until the backend is dropped, and they only exit
        // once every sender is gone, so this send cannot fail while the backend is alive.
        tx.send(job).map_err(|e| {
            tracing::error!("I/O worker pool is gone; an op was refused");
            // Put the payload back, so that the table hands it to the caller.
            ops.slot_mut(idx).payload = e.into_inner().payload;
            std::io::Error::other("the I/O worker pool is gone")
        })
    }

    fn adopt(&mut self, file: File) -> Result<PoolFile<B>> {
        let file = self.backend.adopt(file).map_err(|e| match e.kind() {
            // A backend that keeps no OS files: say so, as MemIo does.
            std::io::ErrorKind::Unsupported => StorageIoError::Unsupported {
                what: e.to_string().into(),
            },
            _ => StorageIoError::from_os("register_fd", &e),
        })?;
        Ok(self.handle(file))
    }

    fn open(&mut self, path: &std::path::Path, options: &OpenOptions) -> Result<DriverOpened<PoolFile<B>>> {
        let (file, mode) = self.backend.open_with_mode(path, options)?;
        let handle = self.handle(file);
        let file = handle.std_file().and_then(|f| f.try_clone().ok());
        Ok(DriverOpened { handle, mode, file })
    }

    /// Workers drop their handle before they reply, so the table's is the last one here.
    fn close(&mut self, handle: PoolFile<B>) -> Result<()> {
        match Arc::try_unwrap(handle.file) {
            Ok(file) => self
                .backend
                .close(file)
                .map_err(|e| StorageIoError::from_os("close", &e)),
            Err(_) => Ok(()),
        }
    }

    fn poll(&mut self, ops: &mut OpTable<PoolFile<B>>) {
        // Nothing at a worker and no waker to send kicks: the channel is empty, and a poll of
        // reads answered at submit need not lock it to find out.
        if ops.in_flight() == 0 && self.wake.is_none() {
            return;
        }
        while let Ok(msg) = self.results.try_recv() {
            if let Some(done) = msg {
                self.on_done(ops, done);
            }
        }
    }

    fn wait(&mut self, ops: &mut OpTable<PoolFile<B>>, min: usize, timeout: Option<Duration>) -> Result<()> {
        self.poll(ops);
        if ops.ready_len() >= min {
            // Reads answered at submit: no clock needed.
            return Ok(());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        while ops.ready_len() < min {
            if self.wake.as_ref().is_some_and(|w| !w.arm()) {
                break;
            }
            let received = self.receive_one(ops, deadline);
            let woken = self.wake.as_ref().is_some_and(|w| w.disarm());
            if !received || woken {
                break;
            }
        }
        self.poll(ops);
        Ok(())
    }

    fn wait_one(&mut self, ops: &mut OpTable<PoolFile<B>>) -> Result<bool> {
        Ok(self.receive_one(ops, None))
    }

    fn waker(&mut self) -> Option<WaitWaker> {
        let state = Arc::clone(self.wake.get_or_insert_with(|| Arc::new(WakeState::new())));
        let tx = self.results_tx.clone();
        Some(WaitWaker::new(state, move || {
            // The backend may be gone; then there is nobody to wake.
            let _ = tx.send(None);
        }))
    }
}

impl<B: BlockingBackend> Drop for PoolDriver<B> {
    fn drop(&mut self) {
        // `QueuedIo` waited for every op (every buffer a worker held came home) before this
        // runs: the workers are idle, and exit once the job queue closes.
        self.jobs = None;
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!("an I/O worker thread panicked");
            }
        }
    }
}

fn worker_loop<B: BlockingBackend>(
    b: &B,
    jobs: &flume::Receiver<Job<B::File>>,
    done: &flume::Sender<Option<Done>>,
) {
    while let Ok(job) = jobs.recv() {
        let Job {
            idx,
            op,
            file,
            offset,
            skip,
            mut payload,
        } = job;
        let at = offset + skip as u64;
        let result = match &mut payload {
            OpPayload::Read(buf) => exec::read_full_at(b, &file, &mut buf[skip..], at).map(|n| skip + n),
            OpPayload::ReadStaged { staging, .. } => {
                exec::read_full_at(b, &file, &mut staging[skip..], at).map(|n| skip + n)
            }
            OpPayload::WriteOwned(buf) => exec::write_all_at(b, &file, buf, offset, op),
            OpPayload::WriteStaged(buf) => exec::write_all_at(b, &file, buf, offset, op),
            OpPayload::WriteShared(data) => exec::write_all_at(b, &file, data, offset, op),
            OpPayload::Sync => exec::sync(b, &file, op),
            OpPayload::None => Ok(0),
        };
        // Drop our handle on the file before reporting, so deregister_fd can take it back.
        drop(file);
        if done.send(Some(Done { idx, payload, result })).is_err() {
            return;
        }
    }
}
