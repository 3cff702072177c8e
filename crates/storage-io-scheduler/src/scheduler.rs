//! [`DiskScheduler`]: the public API and opening a page file (the dispatcher, which the
//! caller's thread runs under the scheduler's lock, is in `dispatch.rs`).
//!
//! **Invariant:** every call accepted before [`DiskScheduler::shutdown`] is answered with its
//! real result; every call after gets `Closed`. A call is *accepted* when the dispatcher has
//! handled it, under the lock that shutdown takes to close the dispatcher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use storage_io_core::{BackendFactory, DirLock, IoFd, OpenOptions, StorageIo, StorageIoError};

use crate::PageId;
use crate::alloc::{self, Allocator};
use crate::batch::BatchAnswer;
use crate::caller::CallerPool;
use crate::config::{AllocationMode, SchedulerConfig};
use crate::dispatch::{CallerStart, Dispatcher, Request};
use crate::error::{Result, SchedulerError};
use crate::reply::{Answer, PageAnswer, PageRead, Reply};
use crate::worker::{Counters, Worker, WorkerSetup};
use storage_io_core::WaitWaker;

/// The page file inside the scheduler's directory, unless `page_file` names another.
pub const PAGE_FILE: &str = "pages.db";

/// A snapshot of what the scheduler has done since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Read ops submitted to backends (a merged run of pages counts once).
    pub read_ios: u64,
    /// Pages those reads covered.
    pub pages_read: u64,
    /// Reads answered by joining a read of the same page already in flight (single flight).
    pub reads_joined: u64,
    /// Reads answered from a write to the same page that had not completed yet.
    pub reads_from_pending_writes: u64,
    /// Reads [`DiskScheduler::read_blocking`] did on the caller's own thread (also counted
    /// in `read_ios` and `pages_read`).
    pub caller_reads: u64,
    /// Write ops submitted to backends.
    pub write_ios: u64,
    /// fdatasyncs of the page file (durable writes and sync barriers, per worker).
    pub syncs: u64,
    /// Allocation images written (each followed by an fdatasync).
    pub metadata_writes: u64,
    /// Pages allocated now (as of the last allocate or deallocate the dispatcher handled).
    pub allocated_pages: u64,
    /// Total submit → completion time of every op the workers' backends ran, in nanoseconds
    /// (published before the answers of each batch of completions go out, so it covers every
    /// op whose answer a caller holds; complete after shutdown).
    ///
    /// The difference of two readings divided by the wall time between them is the mean number
    /// of ops the backends held (Little's law): set it beside the reads a client keeps
    /// outstanding to see how many of them were in the backends rather than on their way
    /// through the scheduler's threads.
    pub backend_held_ns: u64,
    /// System calls of the workers' backends that only handed queued requests to the kernel
    /// (io_uring; see `IoStats::submit_calls`), published with `backend_held_ns`.
    pub backend_submit_calls: u64,
    /// Their total wall time in nanoseconds: over a span, the difference of two readings
    /// divided by the difference in `backend_submit_calls` is what one such call cost.
    pub backend_submit_call_ns: u64,
    /// Backend buffers (registered with the kernel, on io_uring) that pages answered without a
    /// copy hold right now: each goes back when the last `Bytes` over it is dropped. At most
    /// `queue_depth` per worker; reads past that land in plain memory.
    pub lent_buffers: u64,
}

/// Page-level I/O for a buffer pool or table heap, over any backend.
///
/// Pages live in one file (`pages.db`) in the scheduler's directory, at `page_id × page_size`.
/// Every call returns a [`Reply`] at once; the I/O happens on worker threads, each with its own
/// backend from the factory. See the crate docs for an example.
pub struct DiskScheduler {
    /// `None` once shut down.
    dispatcher: Mutex<Option<Dispatcher>>,
    /// Each worker's backend waker, called after the lock is let go.
    wakers: Vec<Option<WaitWaker>>,
    /// Each worker's count of lent backend buffers.
    lent: Vec<Arc<std::sync::atomic::AtomicUsize>>,
    /// Backends for reads on the caller's thread.
    callers: CallerPool,
    /// Reads on callers' threads in progress (counted under the dispatcher's lock when they
    /// start, so shutdown, which takes the dispatcher under it, sees each one it must wait
    /// for: reads that joined them are accepted work, which their callers answer).
    caller_reads: Mutex<usize>,
    /// Signalled when `caller_reads` drops to zero.
    caller_reads_done: parking_lot::Condvar,
    /// The answer of shutdown's last allocation image, from the close until the workers are
    /// joined (whichever shutdown call joins them returns its error).
    last_image: Mutex<Option<Reply<()>>>,
    /// The worker threads until the first shutdown has joined them, then its result. Held for
    /// the whole join, so a concurrent shutdown waits for it.
    threads: Mutex<Threads>,
    config: SchedulerConfig,
    dir: PathBuf,
    counters: Arc<Counters>,
    allocated: Arc<std::sync::atomic::AtomicU64>,
    /// The directory's lock, held from open until the first shutdown has joined the workers
    /// (one scheduler per directory).
    lock: Mutex<Option<DirLock>>,
}

impl std::fmt::Debug for DiskScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskScheduler")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("open", &self.dispatcher.lock().is_some())
            .finish()
    }
}

impl DiskScheduler {
    /// Opens (or creates) the page file in `dir` and starts `config.workers` workers; worker
    /// `i` runs on `factory(i)`.
    ///
    /// It makes no backends for reads on the caller's thread: a `factory` backend may be a
    /// whole io_uring ring with its registered memory, too much to make one per blocking
    /// caller, so [`read_blocking`](Self::read_blocking) goes through the workers.
    /// [`open_with_caller_backends`](Self::open_with_caller_backends) (which
    /// `storage_io::open_scheduler` uses) takes a factory of small ones.
    ///
    /// Fails on a bad config, a backend that cannot be built, an unreadable directory, or
    /// allocation metadata that does not match the page file (nothing is changed then).
    pub fn open(
        dir: impl AsRef<Path>,
        config: SchedulerConfig,
        factory: BackendFactory,
    ) -> Result<DiskScheduler> {
        DiskScheduler::start(dir, config, factory, None)
    }

    /// Like [`open`](Self::open), and [`read_blocking`](Self::read_blocking) reads on the
    /// caller's thread, on backends from `caller_factory` (up to `config.caller_backends`, made
    /// when first needed). A caller backend holds one read at a time, so it can be much smaller
    /// than a worker's: on io_uring a ring of depth 2 with two pages of registered memory,
    /// against a worker's `queue_depth` buffers (`storage_io::scheduler::caller_backend_factory` builds
    /// them so). Caller backend `k` is `caller_factory(config.workers + k)`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use bytes::Bytes;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open_with_caller_backends(
    ///     "/db",
    ///     SchedulerConfig::default(),
    ///     factory.clone(),
    ///     factory, // in-memory backends are small; on io_uring, use small rings
    /// )
    /// .unwrap();
    /// let page = sched.schedule_allocate().recv().unwrap();
    /// sched.schedule_write(page, Bytes::from(vec![5u8; 4096])).recv().unwrap();
    /// assert_eq!(sched.read_blocking(page).unwrap()[0], 5);
    /// assert_eq!(sched.stats().caller_reads, 1); // read on this thread
    /// ```
    pub fn open_with_caller_backends(
        dir: impl AsRef<Path>,
        config: SchedulerConfig,
        factory: BackendFactory,
        caller_factory: BackendFactory,
    ) -> Result<DiskScheduler> {
        DiskScheduler::start(dir, config, factory, Some(caller_factory))
    }

    fn start(
        dir: impl AsRef<Path>,
        config: SchedulerConfig,
        factory: BackendFactory,
        caller_factory: Option<BackendFactory>,
    ) -> Result<DiskScheduler> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let backend = |what: &'static str| move |source| SchedulerError::Backend { what, source };
        let open_data = OpenOptions::create().with_direct(config.direct_io);
        let data_path = dir.join(&config.page_file);

        // Worker 0's backend also loads the allocation state.
        let mut first = factory(0).map_err(backend("building the backend of worker 0"))?;
        first
            .create_dir_all(&dir)
            .map_err(backend("creating the scheduler directory"))?;
        // One owner per directory: a second scheduler would overwrite this one's allocation
        // images (and, with external allocation, race its page writes).
        let lock = first.lock_dir(&dir).map_err(|e| match e {
            StorageIoError::DirLocked { path } => SchedulerError::DirLocked { path },
            source => SchedulerError::Backend {
                what: "locking the scheduler directory",
                source,
            },
        })?;
        let data_fd = first
            .open_file(&data_path, &open_data)
            .map_err(backend("opening the page file"))?;
        let data_len = first
            .file_len(data_fd)
            .map_err(backend("reading the page file length"))?;
        // An empty page file may be one this open created: its name must survive a crash
        // (with managed allocation the images' first write syncs the scheduler directory, but
        // the page file may live elsewhere).
        if data_len == 0
            && let Some(parent) = data_path.parent()
        {
            first
                .sync_dir(parent)
                .map_err(backend("syncing the page file's directory"))?;
        }
        // External allocation: no allocation images, and the file is adopted as it is.
        let (allocator, meta) = match config.allocation {
            AllocationMode::Managed => {
                let (allocator, meta) = alloc::load(
                    first.as_mut(),
                    &dir,
                    config.page_size,
                    data_len,
                    config.adopt_existing,
                )?;
                (allocator, Some(meta))
            }
            AllocationMode::External => (Allocator::new(), None),
        };
        let counters = Arc::new(Counters::default());
        let writes_out: Vec<_> = (0..config.workers)
            .map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0)))
            .collect();
        let setup =
            |i: usize, io: Box<dyn StorageIo>, data_fd: IoFd, meta: Option<alloc::MetaSlots>| WorkerSetup {
                io,
                data_fd,
                meta,
                page_size: config.page_size,
                queue_depth: config.queue_depth,
                max_combine_pages: config.max_combine_pages,
                poll_interval: Duration::from_micros(config.poll_interval_us),
                counters: Arc::clone(&counters),
                writes_out: Arc::clone(&writes_out[i]),
            };
        let mut setups = vec![setup(0, first, data_fd, meta)];
        for i in 1..config.workers {
            let mut io = factory(i).map_err(backend("building a worker backend"))?;
            let fd = io
                .open_file(&data_path, &open_data)
                .map_err(backend("opening the page file"))?;
            setups.push(setup(i, io, fd, None));
        }

        let mut threads = Vec::with_capacity(config.workers);
        let mut worker_txs = Vec::with_capacity(config.workers);
        let mut wakers = Vec::with_capacity(config.workers);
        let mut lent = Vec::with_capacity(config.workers);
        for (i, setup) in setups.into_iter().enumerate() {
            let (tx, rx) = flume::unbounded();
            let worker = Worker::new(setup);
            let waker = worker.waker();
            lent.push(worker.lent_gauge());
            let handle = std::thread::Builder::new()
                .name(format!("sio-sched-w{i}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| SchedulerError::Worker(format!("spawning worker {i}: {e}")))?;
            threads.push(handle);
            worker_txs.push(tx);
            wakers.push(waker);
        }
        let external = config.allocation == AllocationMode::External;
        let allocated = Arc::new(std::sync::atomic::AtomicU64::new(if external {
            0
        } else {
            allocator.allocated_count()
        }));
        // Pages the file holds past the allocator's durable end (bytes written before a crash
        // whose image never became durable): handed out with a zero page over them.
        let stale_end = if external {
            0
        } else {
            data_len.div_ceil(config.page_size as u64)
        };
        let dispatcher = Dispatcher::new(
            worker_txs,
            writes_out,
            allocator,
            &config,
            stale_end,
            Arc::clone(&counters),
            Arc::clone(&allocated),
        )
        .with_worker0_waker(wakers.first().cloned().flatten());
        tracing::debug!(dir = %dir.display(), workers = config.workers, "disk scheduler open");
        Ok(DiskScheduler {
            dispatcher: Mutex::new(Some(dispatcher)),
            wakers,
            lent,
            callers: CallerPool::new(
                caller_factory,
                config.workers,
                config.caller_backends,
                data_path,
                open_data,
            ),
            caller_reads: Mutex::new(0),
            caller_reads_done: parking_lot::Condvar::new(),
            last_image: Mutex::new(None),
            threads: Mutex::new(Threads::Running(threads)),
            lock: Mutex::new(Some(lock)),
            config,
            dir,
            counters,
            allocated,
        })
    }

    /// Dispatches the request on this thread, in the order callers take the lock, then wakes
    /// the workers it went to.
    fn send<T>(&self, make: impl FnOnce(Answer<T>) -> Request) -> Reply<T> {
        let (answer, reply) = Reply::channel();
        let wakes = match self.dispatcher.lock().as_mut() {
            Some(dispatcher) => dispatcher.dispatch(make(answer)),
            // Closed: the request (and its answer's sender) is dropped, so `recv` says `Closed`.
            None => return Reply::ready(Err(SchedulerError::Closed)),
        };
        wakes.wake(&self.wakers);
        reply
    }

    /// Reads one page. With `managed` allocation a page never allocated or freed is
    /// `NotAllocated`; a page allocated and never written reads as zeros, also after a crash
    /// (a reused page id reads as whatever it held before, unless `zero_on_reuse` is set). With `external`
    /// allocation any page below `max_pages` can be read; past the end of the file it is
    /// zeros.
    ///
    /// The answer is the caller's own mutable copy of the page (one copy out of the buffer
    /// the read landed in); [`schedule_read_shared`](Self::schedule_read_shared) skips it.
    pub fn schedule_read(&self, page: PageId) -> Reply<BytesMut> {
        self.send(|answer| Request::Read {
            page,
            answer: PageAnswer::own(answer),
        })
    }

    /// Reads one page without copying it: the answer is the buffer the read landed in (one the
    /// backend lends, registered with the kernel on io_uring), shared by every caller whose read
    /// joined the same I/O, and by the pages of one merged read. The same answers as
    /// [`schedule_read`](Self::schedule_read) otherwise. For callers that only look at a page
    /// (a scan, a lookup); a caller that wants to change its copy uses `schedule_read`.
    ///
    /// Hold the answer as long as needed: a worker lends at most `queue_depth` of the backend's
    /// buffers to answers still held, and reads into plain memory beyond that, so pages kept
    /// (in a cache, say) never leave the backend without buffers of its own.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use bytes::Bytes;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
    /// let page = sched.schedule_allocate().recv().unwrap();
    /// sched.schedule_write(page, Bytes::from(vec![9u8; 4096])).recv().unwrap();
    /// let (a, b) = (sched.schedule_read_shared(page), sched.schedule_read_shared(page));
    /// let (a, b) = (a.recv().unwrap(), b.recv().unwrap());
    /// assert_eq!((a[0], b[4095]), (9, 9));
    /// ```
    pub fn schedule_read_shared(&self, page: PageId) -> Reply<Bytes> {
        self.send(|answer| Request::Read {
            page,
            answer: PageAnswer::shared(answer),
        })
    }

    /// Reads one page and returns it, on the calling thread when it can: for a caller that
    /// would block on the answer anyway, such as a buffer pool's miss. The same answers as
    /// [`schedule_read_shared`](Self::schedule_read_shared), the same checks and the same
    /// order (it sees every write scheduled before it).
    ///
    /// The read runs on a backend of the caller's own (from a pool of up to
    /// `caller_backends`, when the scheduler was opened with
    /// [`open_with_caller_backends`](Self::open_with_caller_backends) or through
    /// `storage_io::open_scheduler`) and the thread waits for it in the kernel, as `pread`
    /// would: no hand-off to a worker thread and back, which costs two cross-CPU wake-ups. It
    /// goes through a worker as [`schedule_read_shared`](Self::schedule_read_shared) does when
    /// the scheduler has no caller backends, when the page's worker still holds a write, when
    /// another caller's read of the page is in flight (it joins that one), or when every caller
    /// backend is busy. Reads of the page scheduled meanwhile join it; a batch read does not.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use bytes::Bytes;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
    /// let page = sched.schedule_allocate().recv().unwrap();
    /// sched.schedule_write(page, Bytes::from(vec![5u8; 4096])).recv().unwrap();
    /// assert_eq!(sched.read_blocking(page).unwrap()[0], 5);
    /// assert_eq!(sched.stats().caller_reads, 0); // `open`: through a worker
    /// ```
    pub fn read_blocking(&self, page: PageId) -> Result<Bytes> {
        // Handed back when dropped (and dropped, uncounted, if the read panics).
        let Some(mut lease) = self.callers.take() else {
            return self.schedule_read_shared(page).recv();
        };
        // The reply's channel is made only if the read goes the usual way.
        let mut reply = None;
        let answer = || {
            let (answer, r) = Reply::channel();
            reply = Some(r);
            PageAnswer::shared(answer)
        };
        let start = match self.dispatcher.lock().as_mut() {
            Some(d) => {
                let start = d.start_caller_read(page, answer);
                if matches!(start, CallerStart::Mine(_)) {
                    // Under the dispatcher's lock; `CallerReadEnd` counts it down.
                    *self.caller_reads.lock() += 1;
                }
                start
            }
            None => return Err(SchedulerError::Closed),
        };
        let joiners = match start {
            CallerStart::Mine(joiners) => joiners,
            CallerStart::Dispatched(wakes) => {
                drop(lease);
                wakes.wake(&self.wakers);
                return reply.map_or(Err(SchedulerError::Closed), |r| r.recv());
            }
        };
        // Whatever happens from here (even a panic in the backend), the reads that joined are
        // answered and the page is open to new reads again.
        let mut ending = CallerReadEnd {
            sched: self,
            page,
            joiners,
            result: None,
        };
        let io = lease.io();
        let held_before = io.held_ns();
        let result = io.read(page, self.config.page_size);
        let c = &self.counters;
        c.backend_held_ns
            .fetch_add(io.held_ns().saturating_sub(held_before), Ordering::Relaxed);
        drop(lease);
        c.read_ios.fetch_add(1, Ordering::Relaxed);
        c.pages_read.fetch_add(1, Ordering::Relaxed);
        c.caller_reads.fetch_add(1, Ordering::Relaxed);
        ending.result = Some(result.clone());
        drop(ending);
        result
    }

    /// Reads one page and sends the answer, with `tag`, on the caller's channel `done` — the
    /// same answer as [`schedule_read`](Self::schedule_read), without a channel per call. A
    /// caller with many reads in flight waits on one channel for whichever lands first.
    /// Exactly one [`PageRead`] per call arrives on `done` (`Closed` after shutdown), unless
    /// every receiver of `done` is gone.
    ///
    /// `done` should have room for every read outstanding on it: an unbounded channel, or one
    /// bounded to at least the reads in flight. The scheduler never waits on it (neither under
    /// its lock nor on a worker, where a full channel would stall every other caller): an answer
    /// that finds `done` full is handed to a short-lived thread that waits for room, so it still
    /// arrives, at the cost of a thread. This call never blocks on `done`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
    /// let pages: Vec<_> = (0..8).map(|_| sched.schedule_allocate().recv().unwrap()).collect();
    /// let (done, answers) = flume::unbounded();
    /// for (tag, &page) in pages.iter().enumerate() {
    ///     sched.schedule_read_tagged(page, tag as u64, &done);
    /// }
    /// for _ in 0..pages.len() {
    ///     let read = answers.recv().unwrap(); // in completion order
    ///     assert_eq!(read.page, pages[read.tag as usize]);
    ///     assert_eq!(read.result.unwrap().len(), 4096);
    /// }
    /// ```
    pub fn schedule_read_tagged(&self, page: PageId, tag: u64, done: &flume::Sender<PageRead>) {
        let answer = PageAnswer::tagged(tag, page, done.clone());
        let wakes = match self.dispatcher.lock().as_mut() {
            Some(dispatcher) => dispatcher.dispatch(Request::Read { page, answer }),
            None => return answer.send(Err(SchedulerError::Closed)),
        };
        wakes.wake(&self.wakers);
    }

    /// Writes one page (`data` must be exactly `page_size` bytes). Answered when the write has
    /// completed (in the page cache for buffered I/O); reads scheduled after this call see
    /// `data` even before then.
    pub fn schedule_write(&self, page: PageId, data: Bytes) -> Reply<()> {
        self.write(page, data, false)
    }

    /// Like [`schedule_write`](Self::schedule_write), then an fdatasync: answered when the
    /// page is durable.
    pub fn schedule_write_durable(&self, page: PageId, data: Bytes) -> Reply<()> {
        self.write(page, data, true)
    }

    fn write(&self, page: PageId, data: Bytes, durable: bool) -> Reply<()> {
        if data.len() != self.config.page_size {
            return Reply::ready(Err(SchedulerError::WrongSize {
                page,
                len: data.len(),
                page_size: self.config.page_size,
            }));
        }
        self.send(|answer| Request::Write {
            page,
            data,
            durable,
            answer,
        })
    }

    /// Reads many pages at once; the answer lists them in request order, whatever order they
    /// completed in. Adjacent pages are read together (up to `max_combine_pages`); a page
    /// listed twice is read once. If any page fails, the answer is the first error, with its
    /// index and page.
    pub fn schedule_read_pages(&self, pages: Vec<PageId>) -> Reply<Vec<BytesMut>> {
        self.send(|answer| Request::ReadPages {
            pages,
            answer: BatchAnswer::Own(answer),
        })
    }

    /// [`schedule_read_pages`](Self::schedule_read_pages) without copying: the pages of one
    /// merged read are slices of the one buffer it landed in (see
    /// [`schedule_read_shared`](Self::schedule_read_shared)).
    pub fn schedule_read_pages_shared(&self, pages: Vec<PageId>) -> Reply<Vec<Bytes>> {
        self.send(|answer| Request::ReadPages {
            pages,
            answer: BatchAnswer::Shared(answer),
        })
    }

    /// Allocates a page id (the lowest free one, else a new one past the end). Answered once
    /// the allocation is durable (an error from that poisons allocation: see
    /// [`schedule_deallocate`](Self::schedule_deallocate)). So does an error writing the zero
    /// page of an id that needs one (`zero_on_reuse`, or an id past the end that the page file
    /// holds bytes for after a crash): the allocator holds the id, so every later allocation
    /// change is refused with [`AllocationPoisoned`](SchedulerError::AllocationPoisoned) until
    /// reopen, which decides from the last durable image. Never an id at or past `max_pages`: free ids up there (left
    /// by a run with a larger limit) stay free, and with none below it the answer is
    /// `OutOfPages`.
    pub fn schedule_allocate(&self) -> Reply<PageId> {
        self.send(Request::Allocate)
    }

    /// Allocates `pages` new, adjacent page ids past the end (never from the free list, so
    /// they are contiguous on disk: for bulk loads and extending a table). Answered once
    /// durable, with one allocation image however many pages.
    pub fn schedule_allocate_extent(&self, pages: u64) -> Reply<std::ops::Range<PageId>> {
        self.send(|answer| Request::AllocateExtent { pages, answer })
    }

    /// Frees a page id; later reads and writes of it are `NotAllocated` until it is allocated
    /// again. Answered once durable.
    ///
    /// An error from making the change durable (the allocation image's write or fdatasync
    /// failed) means its fate on disk is unknown, and it poisons allocation until the scheduler
    /// is reopened: every later allocation change is refused with
    /// [`AllocationPoisoned`](SchedulerError::AllocationPoisoned), so the id is never handed out
    /// to another owner while the caller may still hold it. The reopened scheduler decides from
    /// the image it loads (a read of the page answers `NotAllocated` if the deallocation holds).
    /// The same goes for every allocation call answered with such an error.
    pub fn schedule_deallocate(&self, page: PageId) -> Reply<()> {
        self.send(|answer| Request::Deallocate { page, answer })
    }

    /// Allocates the page id `page` itself: taken off the free list, or, past the end, with the
    /// ids in between put on the free list (at most `MAX_ALLOCATE_AT_GAP` of them). Answers
    /// `true` once the allocation is durable, `false` if the page was allocated already. For an
    /// engine that knows which page it needs (physical redo, a page id kept in its own
    /// metadata). A page at or past `max_pages` is `OutOfRange`, whether or not it lies below
    /// the end.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig, PageId};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
    /// assert!(sched.schedule_allocate_at(PageId(5)).recv().unwrap());
    /// assert!(!sched.schedule_allocate_at(PageId(5)).recv().unwrap()); // already allocated
    /// assert_eq!(sched.schedule_allocate().recv().unwrap(), PageId(0)); // 0..5 went on the free list
    /// ```
    pub fn schedule_allocate_at(&self, page: PageId) -> Reply<bool> {
        self.send(|answer| Request::AllocateAt { page, answer })
    }

    /// Starts a physical-redo phase (`managed` allocation): until
    /// [`schedule_end_redo`](Self::schedule_end_redo), a write to a page that is not allocated
    /// allocates it rather than failing with `NotAllocated`, and a read of such a page reads
    /// what the file holds (zeros past its end). For recovery that replays page images from a
    /// log in which deallocations are not logged. The allocations a redo makes become durable
    /// at its end; a crash before then leaves them undone (and the redo is run again).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use bytes::Bytes;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig, PageId};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
    /// sched.schedule_begin_redo().recv().unwrap();
    /// // Replay a logged page image of page 3, which the allocator does not know.
    /// sched.schedule_write(PageId(3), Bytes::from(vec![3u8; 4096])).recv().unwrap();
    /// sched.schedule_end_redo().recv().unwrap(); // page 3 is allocated, durably
    /// assert_eq!(sched.schedule_read(PageId(3)).recv().unwrap()[0], 3);
    /// ```
    pub fn schedule_begin_redo(&self) -> Reply<()> {
        self.send(Request::BeginRedo)
    }

    /// Ends the redo phase begun by [`schedule_begin_redo`](Self::schedule_begin_redo):
    /// answered once every allocation the redo made is durable (the pages it wrote are durable
    /// only if their writes were, or after a [`schedule_sync`](Self::schedule_sync)).
    pub fn schedule_end_redo(&self) -> Reply<()> {
        self.send(Request::EndRedo)
    }

    /// A barrier: answered once every write accepted before this call is durable.
    pub fn schedule_sync(&self) -> Reply<()> {
        self.send(Request::Sync)
    }

    /// Stops accepting calls, finishes everything accepted, and joins every thread. Later
    /// calls get `Closed`. Every call, the second and concurrent ones too, returns only once
    /// everything accepted before it is answered (reads on callers' threads included) and every
    /// worker thread is joined, with the same result. Dropping the scheduler does the same.
    ///
    /// Shutdown is a durability point for allocation changes not yet durable (`next_sync`, a
    /// redo never ended): it writes a last allocation image, and if that fails (or allocation
    /// is poisoned) it returns the error: those changes may be lost after a crash.
    pub fn shutdown(&self) -> Result<()> {
        let mut open = self.dispatcher.lock();
        if let Some(dispatcher) = open.take() {
            let (wakes, last_image) = dispatcher.close();
            // Stored before the lock is let go: a concurrent shutdown that finds the
            // dispatcher gone and joins the workers first returns this image's result too.
            *self.last_image.lock() = last_image;
            drop(open);
            wakes.wake(&self.wakers);
        } else {
            drop(open);
        }
        // Reads on callers' threads accepted before the close answer the reads that joined
        // them when they end: everything accepted is answered only once they have.
        let mut reads = self.caller_reads.lock();
        while *reads > 0 {
            self.caller_reads_done.wait(&mut reads);
        }
        drop(reads);
        self.callers.close();
        // Held while joining: a concurrent shutdown waits here until the workers are joined.
        let mut threads = self.threads.lock();
        let handles = match &mut *threads {
            Threads::Running(handles) => std::mem::take(handles),
            Threads::Joined(result) => return result.clone(),
        };
        let mut panicked = Vec::new();
        for t in handles {
            let name = t.thread().name().unwrap_or("?").to_string();
            if t.join().is_err() {
                panicked.push(name);
            }
        }
        // Worker 0 answered the last image before it stopped (or dropped it, if it panicked).
        let last_image = self.last_image.lock().take();
        let result = if panicked.is_empty() {
            last_image.map_or(Ok(()), |r| r.recv())
        } else {
            Err(SchedulerError::Worker(format!(
                "threads panicked: {}",
                panicked.join(", ")
            )))
        };
        *threads = Threads::Joined(result.clone());
        // Every worker is joined: nothing of this scheduler touches the directory any more.
        drop(self.lock.lock().take());
        result
    }

    /// The configuration in effect.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        self.config.page_size
    }

    /// The directory holding the page file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> SchedulerStats {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        SchedulerStats {
            read_ios: get(&c.read_ios),
            pages_read: get(&c.pages_read),
            reads_joined: get(&c.reads_joined),
            reads_from_pending_writes: get(&c.reads_from_pending_writes),
            caller_reads: get(&c.caller_reads),
            write_ios: get(&c.write_ios),
            syncs: get(&c.syncs),
            metadata_writes: get(&c.metadata_writes),
            allocated_pages: get(&self.allocated),
            backend_held_ns: get(&c.backend_held_ns),
            backend_submit_calls: get(&c.backend_submit_calls),
            backend_submit_call_ns: get(&c.backend_submit_call_ns),
            lent_buffers: self.lent.iter().map(|l| l.load(Ordering::Relaxed) as u64).sum(),
        }
    }
}

/// The worker threads of a scheduler, then how joining them went.
enum Threads {
    Running(Vec<JoinHandle<()>>),
    Joined(Result<()>),
}

/// The end of a read on the caller's thread: closes the page to new joiners and answers the
/// reads that joined, with the read's result, or (if the reading thread panicked) an error.
struct CallerReadEnd<'a> {
    sched: &'a DiskScheduler,
    page: PageId,
    joiners: crate::caller::Joiners,
    result: Option<Result<Bytes>>,
}

impl Drop for CallerReadEnd<'_> {
    fn drop(&mut self) {
        // Closed or not, the reads that joined are answered (after shutdown none can join).
        let joined = match self.sched.dispatcher.lock().as_mut() {
            Some(d) => d.end_caller_read(self.page, &self.joiners),
            None => std::mem::take(&mut *self.joiners.lock()),
        };
        let result = self.result.take().unwrap_or_else(|| {
            Err(SchedulerError::Worker(
                "the thread reading this page for the caller panicked".into(),
            ))
        });
        for j in joined {
            j.send(result.clone());
        }
        let mut reads = self.sched.caller_reads.lock();
        debug_assert!(*reads > 0, "a caller read ended that was never counted");
        *reads -= 1;
        if *reads == 0 {
            self.sched.caller_reads_done.notify_all();
        }
    }
}

impl Drop for DiskScheduler {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "disk scheduler shutdown");
        }
    }
}
