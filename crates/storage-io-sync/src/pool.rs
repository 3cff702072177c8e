//! [`ThreadPoolStorageIo`]: blocking `pread`/`pwrite`/`fdatasync` on worker threads, the way
//! PostgreSQL's `io_method=worker` does it. The caller's thread only queues jobs and collects
//! results; it never blocks in `submit_*` or `poll_completions`.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use storage_io_core::{
    AlignedBuf, Capabilities, DEFAULT_ALIGNMENT, IoBuf, IoCompletion, IoConfig, IoFd, IoStats, IoToken,
    OpKind, Result, StorageIo, StorageIoError, SubmitError, WaitWaker,
};

use storage_io_core::backend_kit::{
    DatasyncBarrier, FdTable, NowaitGate, NowaitRead, TokenCounter, WakeState, deliver_ready, file_facts,
    file_len_of, plan_write, stage_cached_read, validate_transfer,
};

use crate::exec;

fn cached_read(
    enabled: bool,
    f: &mut PoolFile,
    buf: &mut [u8],
    offset: u64,
) -> Option<(NowaitRead, Instant)> {
    storage_io_core::backend_kit::try_cached_read_file(enabled, f.align, &mut f.nowait, &f.file, buf, offset)
}

/// What a job carries to and from its worker.
enum Payload {
    /// A read into the caller's buffer.
    Read(IoBuf),
    /// A write of the caller's owned buffer (handed back).
    WriteOwned(IoBuf),
    /// A write of bytes copied into a staging buffer owned by the backend (recycled). Aligned,
    /// so the copy of an aligned direct-I/O write is still aligned when it reaches pwrite.
    WriteCopied(AlignedBuf),
    /// datasync or fsync.
    Sync,
}

struct Job {
    token: IoToken,
    op: OpKind,
    fd: IoFd,
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// A read's first bytes already in the buffer (a partial page-cache hit at submit).
    skip: usize,
    payload: Payload,
    submitted_at: Instant,
}

struct Done {
    token: IoToken,
    op: OpKind,
    fd: IoFd,
    offset: u64,
    len: usize,
    payload: Payload,
    submitted_at: Instant,
    result: Result<usize>,
}

struct PoolFile {
    file: Arc<File>,
    align: Option<usize>,
    append_cursor: u64,
    /// Ops of this fd at a worker or held back here.
    ops_in_flight: usize,
    /// Writes and appends of this fd at a worker.
    writes_at_workers: usize,
    /// Jobs held back to keep the datasync barrier: a sync waits here until every write before
    /// it is done, and writes submitted after a held sync queue behind it.
    held: DatasyncBarrier<Job>,
    /// Whether to try this file's next read from the page cache (`nowait_reads`).
    nowait: NowaitGate,
}

/// The thread-pool backend.
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
pub struct ThreadPoolStorageIo {
    config: IoConfig,
    files: FdTable<PoolFile>,
    tokens: TokenCounter,
    jobs: Option<flume::Sender<Job>>,
    /// Completions from the workers; `None` is a kick from a [`WaitWaker`].
    results: flume::Receiver<Option<Done>>,
    /// Kept to hand to wakers.
    results_tx: flume::Sender<Option<Done>>,
    /// Set up by the first `wait_waker` call.
    wake: Option<Arc<WakeState>>,
    workers: Vec<JoinHandle<()>>,
    /// Completions received from workers but not yet handed to the caller.
    ready: VecDeque<IoCompletion>,
    /// Accepted and not yet delivered.
    pending: usize,
    /// Dispatched to a worker or held, and not yet received back.
    outstanding: usize,
    /// Recycled staging buffers for copied writes.
    staging: Vec<AlignedBuf>,
    stats: IoStats,
    /// Reads answered from the page cache at submit (`nowait_reads`).
    nowait_hits: u64,
}

impl ThreadPoolStorageIo {
    /// Starts `config.effective_workers()` worker threads.
    pub fn new(config: &IoConfig) -> Result<Self> {
        config.validate()?;
        let (job_tx, job_rx) = flume::unbounded::<Job>();
        let (done_tx, done_rx) = flume::unbounded::<Option<Done>>();
        let n = config.effective_workers();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("storage-io-worker-{i}"))
                .spawn(move || worker_loop(&job_rx, &done_tx));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    tracing::error!(error = %e, "could not start an I/O worker thread");
                    return Err(StorageIoError::from_os("spawning an I/O worker thread", &e));
                }
            }
        }
        Ok(ThreadPoolStorageIo {
            config: config.clone(),
            files: FdTable::with_capacity(config.max_files),
            tokens: TokenCounter::new(),
            jobs: Some(job_tx),
            results: done_rx,
            results_tx: done_tx,
            wake: None,
            workers,
            ready: VecDeque::with_capacity(config.queue_depth),
            pending: 0,
            outstanding: 0,
            staging: Vec::with_capacity(config.queue_depth),
            stats: IoStats::new(),
            nowait_hits: 0,
        })
    }

    fn admit(&self) -> Result<()> {
        if self.jobs.is_none() {
            return Err(StorageIoError::Closed);
        }
        if self.pending >= self.config.queue_depth {
            return Err(StorageIoError::QueueFull {
                limit: self.config.queue_depth,
            });
        }
        Ok(())
    }

    /// Accepts a validated job: counts it, then dispatches it or holds it behind a barrier.
    /// On failure the payload comes back, so an owned buffer is never lost.
    #[allow(clippy::too_many_arguments)] // the job's fields
    fn accept(
        &mut self,
        fd: IoFd,
        op: OpKind,
        offset: u64,
        len: usize,
        skip: usize,
        payload: Payload,
    ) -> Result<IoToken, (StorageIoError, Payload)> {
        let f = match self.files.get_mut(fd) {
            Ok(f) => f,
            Err(e) => return Err((e, payload)),
        };
        let token = self.tokens.next_token();
        let job = Job {
            token,
            op,
            fd,
            file: Arc::clone(&f.file),
            offset,
            len,
            skip,
            payload,
            submitted_at: Instant::now(),
        };
        f.ops_in_flight += 1;
        let must_hold = f.held.must_hold(op, f.writes_at_workers);
        self.pending += 1;
        self.outstanding += 1;
        self.stats.record_submit(op);
        if must_hold {
            f.held.hold(job);
        } else {
            if op.is_write() {
                f.writes_at_workers += 1;
            }
            send(self.jobs.as_ref(), job);
        }
        Ok(token)
    }

    fn staging_copy(&mut self, data: &[u8]) -> Result<AlignedBuf> {
        let mut buf = match self.staging.pop() {
            Some(b) if b.capacity() >= data.len() => b,
            _ => AlignedBuf::zeroed(self.config.buffer_size.max(data.len()), DEFAULT_ALIGNMENT)?,
        };
        buf.clear();
        buf.extend_from_slice(data)?;
        Ok(buf)
    }

    fn write_checked(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<(OpKind, u64)> {
        self.admit()?;
        let max = self.config.max_io_bytes;
        let f = self.files.get_mut(fd)?;
        let (op, offset) = plan_write(&mut f.append_cursor, f.align, offset, data, max)?;
        Ok((op, offset))
    }

    /// Turns a worker's result into a completion, releases held jobs of its fd, and recycles
    /// the staging buffer.
    fn on_done(&mut self, done: Done) {
        self.outstanding -= 1;
        let latency = done.submitted_at.elapsed();
        self.stats
            .record_complete(done.op, done.result.as_ref().map(|&n| n).map_err(|_| ()), latency);
        let buf = match done.payload {
            Payload::Read(mut b) => {
                if let Ok(n) = done.result {
                    b.truncate(n);
                }
                Some(b)
            }
            Payload::WriteOwned(b) => Some(b),
            Payload::WriteCopied(v) => {
                if self.staging.len() < self.staging.capacity() && v.capacity() <= self.config.buffer_size {
                    self.staging.push(v);
                }
                None
            }
            Payload::Sync => None,
        };
        if let Ok(f) = self.files.get_mut(done.fd) {
            f.ops_in_flight -= 1;
            if done.op.is_write() {
                f.writes_at_workers -= 1;
            }
            release_held(f, self.jobs.as_ref());
        }
        self.ready.push_back(IoCompletion {
            token: done.token,
            op: done.op,
            fd: done.fd,
            offset: done.offset,
            len_requested: done.len,
            result: done.result,
            buf,
        });
    }

    /// Blocks for one worker result; false if none can come.
    fn receive_one(&mut self, deadline: Option<Instant>) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        let got = match deadline {
            Some(d) => self.results.recv_deadline(d).ok(),
            None => self.results.recv().ok(),
        };
        match got {
            Some(Some(done)) => {
                self.on_done(done);
                true
            }
            // A kick: the caller looks at the wake state.
            Some(None) => true,
            None => false,
        }
    }

    fn drain_results(&mut self) {
        // Nothing at a worker and no waker to send kicks: the channel is empty, and a poll of
        // reads answered at submit need not lock it to find out.
        if self.outstanding == 0 && self.wake.is_none() {
            return;
        }
        while let Ok(msg) = self.results.try_recv() {
            if let Some(done) = msg {
                self.on_done(done);
            }
        }
    }

    /// This backend's side of `try_cached_read`: the read of `buf` at `offset` from the page
    /// cache, tried on the caller's thread when `nowait_reads` and the file allow it.
    fn try_nowait(&mut self, fd: IoFd, buf: &mut IoBuf, offset: u64) -> Option<(NowaitRead, Instant)> {
        let enabled = self.config.nowait_reads;
        let f = self.files.get_mut(fd).ok()?;
        cached_read(enabled, f, buf.as_mut_slice(), offset)
    }

    /// A read the page cache answered whole at submit: no worker is woken; its completion waits
    /// in `ready` for the next poll (`ready` holds at most `queue_depth`, its capacity).
    fn complete_at_submit(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        n: usize,
        started: Instant,
    ) -> IoToken {
        self.pending += 1;
        self.nowait_hits += 1;
        stage_cached_read(
            &mut self.tokens,
            &mut self.stats,
            &mut self.ready,
            fd,
            buf,
            offset,
            n,
            started,
        )
    }

    /// How many reads were answered from the page cache at submit (`IoConfig::nowait_reads`),
    /// without a worker.
    pub fn nowait_hits(&self) -> u64 {
        self.nowait_hits
    }

    fn deliver(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        deliver_ready(&mut self.ready, &mut self.pending, out)
    }
}

/// Hands the caller's buffer back from a refused owned-buffer submission.
fn give_back((error, payload): (StorageIoError, Payload)) -> SubmitError<IoBuf> {
    let buf = match payload {
        Payload::Read(b) | Payload::WriteOwned(b) => b,
        Payload::WriteCopied(_) | Payload::Sync => IoBuf::Vec(Vec::new()),
    };
    SubmitError::new(error, buf)
}

/// Dispatches held jobs of one fd that the barrier now allows.
fn release_held(f: &mut PoolFile, jobs: Option<&flume::Sender<Job>>) {
    while let Some(job) = f.held.next_released(f.writes_at_workers, |j| j.op) {
        if job.op.is_write() {
            f.writes_at_workers += 1;
        }
        send(jobs, job);
    }
}

fn send(jobs: Option<&flume::Sender<Job>>, job: Job) {
    // The workers own the receiving side until the backend is dropped, and they only exit once
    // every sender is gone, so this send cannot fail while `self` is alive.
    if let Some(tx) = jobs
        && tx.send(job).is_err()
    {
        tracing::error!("I/O worker pool is gone; an op was lost");
    }
}

fn worker_loop(jobs: &flume::Receiver<Job>, done: &flume::Sender<Option<Done>>) {
    while let Ok(job) = jobs.recv() {
        let Job {
            token,
            op,
            fd,
            file,
            offset,
            len,
            skip,
            mut payload,
            submitted_at,
        } = job;
        let result = match &mut payload {
            Payload::Read(buf) => {
                exec::read_full_at(&file, &mut buf[skip..], offset + skip as u64).map(|n| skip + n)
            }
            Payload::WriteOwned(buf) => exec::write_all_at(&file, buf, offset, op),
            Payload::WriteCopied(v) => exec::write_all_at(&file, v, offset, op),
            Payload::Sync => exec::sync(&file, op),
        };
        // Drop our handle on the file before reporting, so deregister_fd can take it back.
        drop(file);
        let reply = Done {
            token,
            op,
            fd,
            offset,
            len,
            payload,
            submitted_at,
            result,
        };
        if done.send(Some(reply)).is_err() {
            return;
        }
    }
}

impl StorageIo for ThreadPoolStorageIo {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "thread_pool",
            max_in_flight: self.config.queue_depth,
            asynchronous: true,
            worker_threads: self.workers.len(),
            registered_buffers: false,
            registered_files: false,
            sqpoll: false,
            direct_io: storage_io_core::platform::DIRECT_IO,
            max_io_bytes: self.config.max_io_bytes,
            notes: Vec::new(),
        }
    }

    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        let (append_cursor, align) = file_facts(&file)?;
        self.files.insert(PoolFile {
            file: Arc::new(file),
            align,
            append_cursor,
            ops_in_flight: 0,
            writes_at_workers: 0,
            held: DatasyncBarrier::new(),
            nowait: NowaitGate::default(),
        })
    }

    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        while self.files.get(fd)?.ops_in_flight > 0 {
            if !self.receive_one(None) {
                break;
            }
        }
        // Every op of this fd has come back, and workers drop their handle before replying,
        // so the table holds the last reference and the file closes here.
        self.files.remove(fd)?;
        Ok(())
    }

    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        file_len_of(&self.files.get(fd)?.file)
    }

    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let checked = self.admit().and_then(|()| {
            let f = self.files.get(fd)?;
            validate_transfer(f.align, offset, buf.len(), buf.addr(), self.config.max_io_bytes)
        });
        if let Err(e) = checked {
            return Err(SubmitError::new(e, buf));
        }
        let len = buf.len();
        let mut buf = buf;
        let skip = match self.try_nowait(fd, &mut buf, offset) {
            Some((NowaitRead::Done(n), started)) => {
                return Ok(self.complete_at_submit(fd, buf, offset, n, started));
            }
            Some((NowaitRead::Partial(n), _)) => n,
            _ => 0,
        };
        self.accept(fd, OpKind::Read, offset, len, skip, Payload::Read(buf))
            .map_err(give_back)
    }

    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        let (op, offset) = self.write_checked(fd, data, Some(offset))?;
        let copy = self.staging_copy(data)?;
        self.accept(fd, op, offset, data.len(), 0, Payload::WriteCopied(copy))
            .map_err(|(e, _)| e)
    }

    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let (op, offset) = match self.write_checked(fd, &buf, Some(offset)) {
            Ok(x) => x,
            Err(e) => return Err(SubmitError::new(e, buf)),
        };
        let len = buf.len();
        self.accept(fd, op, offset, len, 0, Payload::WriteOwned(buf))
            .map_err(give_back)
    }

    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        let (op, offset) = self.write_checked(fd, data, None)?;
        let copy = self.staging_copy(data)?;
        self.accept(fd, op, offset, data.len(), 0, Payload::WriteCopied(copy))
            .map_err(|(e, _)| e)
    }

    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.admit()?;
        self.accept(fd, OpKind::Datasync, 0, 0, 0, Payload::Sync)
            .map_err(|(e, _)| e)
    }

    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.admit()?;
        self.accept(fd, OpKind::Fsync, 0, 0, 0, Payload::Sync)
            .map_err(|(e, _)| e)
    }

    fn flush(&mut self) -> Result<usize> {
        // Jobs go to the workers at submit.
        Ok(0)
    }

    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.drain_results();
        self.deliver(out)
    }

    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.drain_results();
        if self.ready.len() >= min {
            // Reads answered at submit: no clock needed.
            return Ok(self.deliver(out));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.ready.len() < min {
            if self.wake.as_ref().is_some_and(|w| !w.arm()) {
                break;
            }
            let received = self.receive_one(deadline);
            let woken = self.wake.as_ref().is_some_and(|w| w.disarm());
            if !received || woken {
                break;
            }
        }
        self.drain_results();
        Ok(self.deliver(out))
    }

    fn wait_waker(&mut self) -> Option<WaitWaker> {
        let state = Arc::clone(self.wake.get_or_insert_with(|| Arc::new(WakeState::new())));
        let tx = self.results_tx.clone();
        Some(WaitWaker::new(state, move || {
            // The backend may be gone; then there is nobody to wake.
            let _ = tx.send(None);
        }))
    }

    fn pending_count(&self) -> usize {
        self.pending
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }
}

impl Drop for ThreadPoolStorageIo {
    fn drop(&mut self) {
        // Every buffer a worker holds must come home before the backend goes: wait for all.
        while self.receive_one(None) {}
        self.jobs = None;
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!("an I/O worker thread panicked");
            }
        }
    }
}
