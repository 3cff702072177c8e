//! [`DiskScheduler`]: the public API, the dispatcher thread, and opening a page file.
//!
//! **Invariant:** every call accepted before [`DiskScheduler::shutdown`] is answered with its
//! real result; every call after gets `Closed`. A call is *accepted* when its request is in the
//! dispatcher's channel, which happens under a read lock that shutdown takes for writing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use storage_io_core::{BackendFactory, IoFd, OpenOptions, StorageIo, WaitWaker};

use crate::PageId;
use crate::alloc::{self, Allocator};
use crate::batch::{Ack, BatchState, Join, SyncBarrier};
use crate::config::{AllocDurability, AllocationMode, IOSchedulerConfig};
use crate::error::{Result, SchedulerError};
use crate::reply::{Answer, PageAnswer, PageRead, Reply};
use crate::stream::ReadStream;
use crate::worker::{AllocAnswer, Counters, Worker, WorkerMsg, WorkerSetup};

/// The page file inside the scheduler's directory, unless `page_file` names another.
pub const PAGE_FILE: &str = "pages.db";

enum Request {
    Read {
        page: PageId,
        answer: PageAnswer,
    },
    Write {
        page: PageId,
        data: Bytes,
        durable: bool,
        answer: Answer<()>,
    },
    ReadPages {
        pages: Vec<PageId>,
        answer: Answer<Vec<BytesMut>>,
    },
    Allocate(Answer<PageId>),
    AllocateAt {
        page: PageId,
        answer: Answer<bool>,
    },
    AllocateExtent {
        pages: u64,
        answer: Answer<std::ops::Range<PageId>>,
    },
    Deallocate {
        page: PageId,
        answer: Answer<()>,
    },
    Sync(Answer<()>),
    BeginRedo(Answer<()>),
    EndRedo(Answer<()>),
    Shutdown,
}

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
}

/// Page-level I/O for a buffer pool or table heap, over any backend.
///
/// Pages live in one file (`pages.db`) in the scheduler's directory, at `page_id × page_size`.
/// Every call returns a [`Reply`] at once; the I/O happens on worker threads, each with its own
/// backend from the factory. See the crate docs for an example.
pub struct DiskScheduler {
    tx: RwLock<Option<flume::Sender<Request>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    config: IOSchedulerConfig,
    dir: PathBuf,
    counters: Arc<Counters>,
    allocated: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for DiskScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskScheduler")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("open", &self.tx.read().is_some())
            .finish()
    }
}

impl DiskScheduler {
    /// Opens (or creates) the page file in `dir` and starts the dispatcher and
    /// `config.workers` workers; worker `i` runs on `factory(i)`.
    ///
    /// Fails on a bad config, a backend that cannot be built, an unreadable directory, or
    /// allocation metadata that does not match the page file (nothing is changed then).
    pub fn open(
        dir: impl AsRef<Path>,
        config: IOSchedulerConfig,
        factory: BackendFactory,
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
        let setup = |io: Box<dyn StorageIo>, data_fd: IoFd, meta: Option<alloc::MetaSlots>| WorkerSetup {
            io,
            data_fd,
            meta,
            page_size: config.page_size,
            queue_depth: config.queue_depth,
            max_combine_pages: config.max_combine_pages,
            poll_interval: Duration::from_micros(config.poll_interval_us),
            counters: Arc::clone(&counters),
        };
        let mut setups = vec![setup(first, data_fd, meta)];
        for i in 1..config.workers {
            let mut io = factory(i).map_err(backend("building a worker backend"))?;
            let fd = io
                .open_file(&data_path, &open_data)
                .map_err(backend("opening the page file"))?;
            setups.push(setup(io, fd, None));
        }

        let mut threads = Vec::with_capacity(config.workers + 1);
        let mut worker_txs = Vec::with_capacity(config.workers);
        for (i, setup) in setups.into_iter().enumerate() {
            let (tx, rx) = flume::unbounded();
            let worker = Worker::new(setup);
            let waker = worker.waker();
            let handle = std::thread::Builder::new()
                .name(format!("sio-sched-w{i}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| SchedulerError::Worker(format!("spawning worker {i}: {e}")))?;
            threads.push(handle);
            worker_txs.push((tx, waker));
        }
        let external = config.allocation == AllocationMode::External;
        let allocated = Arc::new(std::sync::atomic::AtomicU64::new(if external {
            0
        } else {
            allocator.allocated_count()
        }));
        let (tx, rx) = flume::unbounded();
        let dispatcher = Dispatcher {
            workers: worker_txs,
            allocator,
            page_size: config.page_size,
            extent_pages: config.max_combine_pages as u64,
            max_pages: config.page_limit(),
            external,
            deferred: config.alloc_durability == AllocDurability::NextSync,
            zero_page: config
                .zero_on_reuse
                .then(|| Bytes::from(vec![0u8; config.page_size])),
            redo: false,
            changes: 0,
            counters: Arc::clone(&counters),
            allocated: Arc::clone(&allocated),
            pending_alloc: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("sio-sched-dispatch".into())
            .spawn(move || dispatcher.run(rx))
            .map_err(|e| SchedulerError::Worker(format!("spawning the dispatcher: {e}")))?;
        threads.push(handle);
        tracing::debug!(dir = %dir.display(), workers = config.workers, "disk scheduler open");
        Ok(DiskScheduler {
            tx: RwLock::new(Some(tx)),
            threads: Mutex::new(threads),
            config,
            dir,
            counters,
            allocated,
        })
    }

    fn send<T>(&self, make: impl FnOnce(Answer<T>) -> Request) -> Reply<T> {
        let (answer, reply) = Reply::channel();
        let guard = self.tx.read();
        match guard.as_ref() {
            Some(tx) => {
                if let Err(flume::SendError(req)) = tx.send(make(answer)) {
                    // The dispatcher is gone (it panicked): answer here rather than hang.
                    drop(req);
                    return Reply::ready(Err(SchedulerError::Worker(
                        "the dispatcher thread is gone".into(),
                    )));
                }
                reply
            }
            None => Reply::ready(Err(SchedulerError::Closed)),
        }
    }

    /// Reads one page. With `managed` allocation a page never allocated or freed is
    /// `NotAllocated`; a page allocated and never written reads as zeros (a reused page id
    /// reads as whatever it held before, unless `zero_on_reuse` is set). With `external`
    /// allocation any page below `max_pages` can be read; past the end of the file it is
    /// zeros.
    pub fn schedule_read(&self, page: PageId) -> Reply<BytesMut> {
        self.send(|answer| Request::Read {
            page,
            answer: PageAnswer::own(answer),
        })
    }

    /// Reads one page and sends the answer, with `tag`, on the caller's channel `done` — the
    /// same answer as [`schedule_read`](Self::schedule_read), without a channel per call. A
    /// caller with many reads in flight waits on one channel for whichever lands first.
    /// Exactly one [`PageRead`] per call arrives on `done` (`Closed` after shutdown), unless
    /// every receiver of `done` is gone.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, IOSchedulerConfig};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", IOSchedulerConfig::default(), factory).unwrap();
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
        let guard = self.tx.read();
        match guard.as_ref() {
            // A send that fails drops the request, and its answer sends `Closed`.
            Some(tx) => drop(tx.send(Request::Read { page, answer })),
            None => answer.send(Err(SchedulerError::Closed)),
        }
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
        self.send(|answer| Request::ReadPages { pages, answer })
    }

    /// Allocates a page id (the lowest free one, else a new one past the end). Answered once
    /// the allocation is durable.
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
    pub fn schedule_deallocate(&self, page: PageId) -> Reply<()> {
        self.send(|answer| Request::Deallocate { page, answer })
    }

    /// Allocates the page id `page` itself: taken off the free list, or, past the end, with the
    /// ids in between put on the free list (at most `MAX_ALLOCATE_AT_GAP` of them). Answers
    /// `true` once the allocation is durable, `false` if the page was allocated already. For an
    /// engine that knows which page it needs (physical redo, a page id kept in its own
    /// metadata).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, IOSchedulerConfig, PageId};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", IOSchedulerConfig::default(), factory).unwrap();
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
    /// # use storage_io_scheduler::{DiskScheduler, IOSchedulerConfig, PageId};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = DiskScheduler::open("/db", IOSchedulerConfig::default(), factory).unwrap();
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

    /// Reads pages `range` in order, keeping up to `distance` pages in flight ahead of the
    /// consumer (adjacent pages merged). See [`ReadStream`].
    pub fn read_stream(&self, range: std::ops::Range<PageId>, distance: usize) -> ReadStream<'_> {
        ReadStream::new(self, range, distance)
    }

    /// Stops accepting calls, finishes everything accepted, and joins every thread. Later
    /// calls get `Closed`; calling it twice is fine. Dropping the scheduler does the same.
    pub fn shutdown(&self) -> Result<()> {
        {
            let mut tx = self.tx.write();
            if let Some(tx) = tx.take() {
                let _ = tx.send(Request::Shutdown);
            }
        }
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        let mut panicked = Vec::new();
        for t in threads {
            let name = t.thread().name().unwrap_or("?").to_string();
            if t.join().is_err() {
                panicked.push(name);
            }
        }
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(SchedulerError::Worker(format!(
                "threads panicked: {}",
                panicked.join(", ")
            )))
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> &IOSchedulerConfig {
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
            write_ios: get(&c.write_ios),
            syncs: get(&c.syncs),
            metadata_writes: get(&c.metadata_writes),
            allocated_pages: get(&self.allocated),
            backend_held_ns: get(&c.backend_held_ns),
            backend_submit_calls: get(&c.backend_submit_calls),
            backend_submit_call_ns: get(&c.backend_submit_call_ns),
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

struct Dispatcher {
    /// Each worker's channel, and its backend's waker (sent to, then woken).
    workers: Vec<(flume::Sender<WorkerMsg>, Option<WaitWaker>)>,
    allocator: Allocator,
    page_size: usize,
    extent_pages: u64,
    /// The first page id refused (`max_pages`).
    max_pages: u64,
    /// `allocation = external`: every id below `max_pages` is readable and writable.
    external: bool,
    /// `alloc_durability = next_sync`: changes are answered at once and made durable at the
    /// next sync or durable write.
    deferred: bool,
    /// `zero_on_reuse`: the zero page written over a reused id.
    zero_page: Option<Bytes>,
    /// In a physical-redo phase: writes allocate the pages they touch.
    redo: bool,
    /// Allocation changes made since open; worker 0 publishes how many of them the newest
    /// durable image holds (`Counters::durable_alloc_changes`).
    changes: u64,
    counters: Arc<Counters>,
    allocated: Arc<std::sync::atomic::AtomicU64>,
    /// Answers waiting for the next image, which goes out at the end of this round.
    pending_alloc: Vec<AllocAnswer>,
}

impl Dispatcher {
    /// Pages go to workers by extent (`max_combine_pages` pages): one page always goes to the
    /// same worker, which keeps its writes ordered and its reads single-flight without any
    /// shared state, and a run of adjacent pages that could merge is on one worker.
    fn worker_of(&self, page: u64) -> usize {
        ((page / self.extent_pages) % self.workers.len() as u64) as usize
    }

    fn to_worker(&self, worker: usize, msg: WorkerMsg) {
        // A worker only stops after Shutdown, which it gets last; a send can fail only if it
        // panicked, and then the request's answer is dropped and its caller sees `Closed`.
        let (tx, waker) = &self.workers[worker];
        if tx.send(msg).is_err() {
            tracing::error!(worker, "scheduler worker is gone");
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn run(mut self, rx: flume::Receiver<Request>) {
        let mut stop = false;
        while !stop {
            let Ok(first) = rx.recv() else { break };
            stop = self.handle(first);
            while !stop {
                match rx.try_recv() {
                    Ok(req) => stop = self.handle(req),
                    Err(_) => break,
                }
            }
            // Every allocation change handled in this round becomes durable in one image.
            if !self.pending_alloc.is_empty() {
                let (_, image) = self.allocator.next_image(self.page_size);
                let answers = std::mem::take(&mut self.pending_alloc);
                let changes = self.changes;
                self.to_worker(
                    0,
                    WorkerMsg::Persist {
                        image,
                        answers,
                        changes,
                    },
                );
            }
            if !self.external {
                self.allocated
                    .store(self.allocator.allocated_count(), Ordering::Relaxed);
            }
        }
        // A clean shutdown is a durability point too: deferred changes (and a redo never
        // ended) go into a last image, which worker 0 writes before it stops.
        if !self.external && self.changes_not_durable() {
            let (_, image) = self.allocator.next_image(self.page_size);
            let changes = self.changes;
            self.to_worker(
                0,
                WorkerMsg::Persist {
                    image,
                    answers: Vec::new(),
                    changes,
                },
            );
        }
        for w in 0..self.workers.len() {
            self.to_worker(w, WorkerMsg::Shutdown);
        }
        // Requests that raced with shutdown cannot exist (shutdown holds the write lock while
        // it sends Shutdown). Any leftover is dropped with its sender, and its caller's `recv`
        // answers `Closed` instead of hanging.
        while let Ok(req) = rx.try_recv() {
            drop(req);
        }
    }

    /// Whether `page` may be read: allocated (`managed`), in a redo or `external` any id
    /// below `max_pages`.
    fn check_read(&self, page: PageId) -> Result<()> {
        if page.0 >= self.max_pages {
            return Err(SchedulerError::OutOfRange {
                page,
                limit: self.max_pages,
            });
        }
        if self.external || self.redo || self.allocator.is_allocated(page) {
            Ok(())
        } else {
            Err(SchedulerError::NotAllocated(page))
        }
    }

    /// Whether `page` may be written; in a redo, an unallocated page is allocated here.
    fn check_write(&mut self, page: PageId) -> Result<()> {
        if self.external || self.allocator.is_allocated(page) {
            return self.check_read(page);
        }
        if !self.redo {
            return Err(SchedulerError::NotAllocated(page));
        }
        self.allocator.allocate_at(page, self.max_pages)?;
        self.changes += 1;
        Ok(())
    }

    /// Refuses an allocation call under `external` allocation.
    fn managed(&self, call: &'static str) -> Result<()> {
        if self.external {
            Err(SchedulerError::ExternalAllocation { call })
        } else {
            Ok(())
        }
    }

    /// True when some allocation change is not yet in a durable image (as far as worker 0
    /// has told; an image still in flight counts as not durable).
    fn changes_not_durable(&self) -> bool {
        self.changes > self.counters.durable_alloc_changes.load(Ordering::Acquire)
    }

    /// A change was made: `immediate` answers wait for this round's image, `next_sync` ones
    /// are sent now.
    fn changed(&mut self, answer: AllocAnswer) {
        self.changes += 1;
        if self.deferred {
            answer.send(Ok(()));
        } else {
            self.pending_alloc.push(answer);
        }
    }

    /// Writes the zero page over a reused `page` for `zero_on_reuse`, as one part of `ack`:
    /// durably when changes are durable at once, else just before the allocation is answered.
    fn zero_reused(&self, page: PageId, ack: Ack) {
        let Some(zeros) = &self.zero_page else { return };
        let msg = WorkerMsg::Write {
            page: page.0,
            data: zeros.clone(),
            durable: !self.deferred,
            answer: ack,
        };
        self.to_worker(self.worker_of(page.0), msg);
    }

    /// Answers an allocation of `page` that came off the free list (`reused`) with `value`:
    /// with `zero_on_reuse`, only once the zero page is written (and, for `immediate`, durable
    /// along with the image).
    fn allocated_page<T: Send + 'static>(
        &mut self,
        page: PageId,
        reused: bool,
        value: T,
        answer: Answer<T>,
        plain: impl FnOnce(T, Answer<T>) -> AllocAnswer,
    ) {
        if !(reused && self.zero_page.is_some()) {
            self.changed(plain(value, answer));
            return;
        }
        // Immediate: the zero page's durable write and the image; next_sync: the write.
        let parts = if self.deferred { 1 } else { 2 };
        let join: Arc<Join<T>> = Arc::new(Join::new(parts, value, answer));
        self.zero_reused(page, Ack::Part(join.clone()));
        self.changes += 1;
        if !self.deferred {
            self.pending_alloc.push(AllocAnswer::Part(join));
        }
    }

    /// Handles one request; true on Shutdown.
    fn handle(&mut self, req: Request) -> bool {
        match req {
            Request::Read { page, answer } => match self.check_read(page) {
                Ok(()) => self.to_worker(self.worker_of(page.0), WorkerMsg::Read { page: page.0, answer }),
                Err(e) => answer.send(Err(e)),
            },
            Request::Write {
                page,
                data,
                durable,
                answer,
            } => self.write(page, data, durable, answer),
            Request::ReadPages { pages, answer } => self.read_pages(pages, answer),
            Request::Allocate(answer) => {
                let result = self
                    .managed("schedule_allocate")
                    .and_then(|()| self.allocator.allocate_reporting_reuse(self.max_pages));
                match result {
                    Ok((page, reused)) => {
                        self.allocated_page(page, reused, page, answer, AllocAnswer::Allocate);
                    }
                    Err(e) => {
                        let _ = answer.send(Err(e));
                    }
                }
            }
            Request::AllocateAt { page, answer } => {
                let was_free = page.0 < self.allocator.parts().0;
                let result = self
                    .managed("schedule_allocate_at")
                    .and_then(|()| self.allocator.allocate_at(page, self.max_pages));
                match result {
                    Ok(true) => {
                        self.allocated_page(page, was_free, true, answer, AllocAnswer::AllocateAt);
                    }
                    // Already allocated: nothing changes, but the answer still means "durable".
                    Ok(false) if !self.deferred && self.changes_not_durable() => {
                        self.pending_alloc.push(AllocAnswer::AllocateAt(false, answer));
                    }
                    Ok(false) => {
                        let _ = answer.send(Ok(false));
                    }
                    Err(e) => {
                        let _ = answer.send(Err(e));
                    }
                }
            }
            Request::AllocateExtent { pages, answer } => {
                let result = self
                    .managed("schedule_allocate_extent")
                    .and_then(|()| self.allocator.allocate_extent(pages, self.max_pages));
                match result {
                    Ok(range) => self.changed(AllocAnswer::Extent(range, answer)),
                    Err(e) => {
                        let _ = answer.send(Err(e));
                    }
                }
            }
            Request::Deallocate { page, answer } => {
                let result = self
                    .managed("schedule_deallocate")
                    .and_then(|()| self.allocator.deallocate(page));
                match result {
                    Ok(()) => self.changed(AllocAnswer::Done(answer)),
                    Err(e) => {
                        let _ = answer.send(Err(e));
                    }
                }
            }
            Request::Sync(answer) => {
                // With deferred changes a sync is also their durability point.
                let image = self.deferred && self.changes_not_durable();
                let parts = self.workers.len() + usize::from(image);
                let barrier = Arc::new(SyncBarrier::barrier(parts, answer));
                for w in 0..self.workers.len() {
                    self.to_worker(w, WorkerMsg::Sync(barrier.clone()));
                }
                if image {
                    self.pending_alloc.push(AllocAnswer::Part(barrier));
                }
            }
            Request::BeginRedo(answer) => {
                let _ = answer.send(self.managed("schedule_begin_redo").map(|()| self.redo = true));
            }
            Request::EndRedo(answer) => match self.managed("schedule_end_redo") {
                Ok(()) => {
                    self.redo = false;
                    // Answered once an image with every change so far is durable (a new one
                    // even when the redo changed nothing: the answer promises durability).
                    self.pending_alloc.push(AllocAnswer::Done(answer));
                }
                Err(e) => {
                    let _ = answer.send(Err(e));
                }
            },
            Request::Shutdown => return true,
        }
        false
    }

    fn write(&mut self, page: PageId, data: Bytes, durable: bool, answer: Answer<()>) {
        if let Err(e) = self.check_write(page) {
            let _ = answer.send(Err(e));
            return;
        }
        let worker = self.worker_of(page.0);
        // A durable write is a durability point for deferred allocation changes: it is
        // answered once they are durable too (and, with zero pages written for reused ids
        // since, once every worker has synced them).
        let ack = if durable && self.deferred && self.changes_not_durable() {
            let barriers = if self.zero_page.is_some() {
                self.workers.len()
            } else {
                0
            };
            let join = Arc::new(SyncBarrier::barrier(2 + barriers, answer));
            for w in 0..barriers {
                self.to_worker(w, WorkerMsg::Sync(join.clone()));
            }
            self.pending_alloc.push(AllocAnswer::Part(join.clone()));
            Ack::Part(join)
        } else {
            Ack::Answer(answer)
        };
        let msg = WorkerMsg::Write {
            page: page.0,
            data,
            durable,
            answer: ack,
        };
        self.to_worker(worker, msg);
    }

    fn read_pages(&mut self, pages: Vec<PageId>, answer: Answer<Vec<BytesMut>>) {
        if pages.is_empty() {
            let _ = answer.send(Ok(Vec::new()));
            return;
        }
        if let Some((index, page, e)) = pages
            .iter()
            .enumerate()
            .find_map(|(i, &p)| self.check_read(p).err().map(|e| (i, p, e)))
        {
            let _ = answer.send(Err(SchedulerError::Batch {
                index,
                page,
                source: Box::new(e),
            }));
            return;
        }
        let mut parts: Vec<Vec<(usize, u64)>> = vec![Vec::new(); self.workers.len()];
        for (index, page) in pages.iter().enumerate() {
            parts[self.worker_of(page.0)].push((index, page.0));
        }
        let batch = Arc::new(BatchState::new(pages, answer));
        for (w, items) in parts.into_iter().enumerate() {
            if !items.is_empty() {
                self.to_worker(
                    w,
                    WorkerMsg::Batch {
                        batch: Arc::clone(&batch),
                        items,
                    },
                );
            }
        }
    }
}
