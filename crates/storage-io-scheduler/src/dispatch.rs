//! The dispatcher: owns the allocator, checks every request against it in arrival order,
//! routes pages to workers, and hands allocation changes to worker 0 as images.
//!
//! It has no thread of its own. The caller's thread runs it under the scheduler's lock
//! ([`DiskScheduler`](crate::DiskScheduler) holds it in a mutex), so a request reaches its
//! worker with one hand-off, not two: on a machine where a wake-up across CPUs costs tens of
//! microseconds, a dispatcher thread between caller and worker cost one more such wake-up per
//! request (the figures: docs/benchmarks.md in the storage-io repository). The lock's order is the arrival order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use storage_io_core::WaitWaker;

use crate::PageId;
use crate::alloc::Allocator;
use crate::batch::{Ack, BatchAnswer, BatchState, Join, Part, SyncBarrier};
use crate::caller::Joiners;
use crate::config::{AllocDurability, AllocationMode, SchedulerConfig};
use crate::counters::bump;
use crate::error::{Result, SchedulerError};
use crate::idhash::IdMap;
use crate::reply::{Answer, PageAnswer, Reply};
use crate::worker::{AllocAnswer, Counters, WorkerMsg};

pub(crate) enum Request {
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
        answer: BatchAnswer,
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
}

/// How a [`DiskScheduler::read_blocking`](crate::DiskScheduler::read_blocking) goes.
pub(crate) enum CallerStart {
    /// On the caller's thread; reads of the page that join it meanwhile wait in the list.
    Mine(Joiners),
    /// The usual way (refused, joined, or sent to a worker): the answer comes on the reply.
    Dispatched(Wakes),
}

/// The workers a dispatched request sent to, to be woken once the scheduler's lock is let go
/// (a wake may be a system call; the callers queued on the lock need not wait for it).
#[derive(Debug, Default)]
pub(crate) enum Wakes {
    #[default]
    None,
    One(usize),
    Many(Vec<usize>),
}

impl Wakes {
    fn add(&mut self, worker: usize) {
        match self {
            Wakes::None => *self = Wakes::One(worker),
            Wakes::One(w) if *w == worker => {}
            Wakes::One(w) => *self = Wakes::Many(vec![*w, worker]),
            Wakes::Many(ws) => {
                if !ws.contains(&worker) {
                    ws.push(worker);
                }
            }
        }
    }

    /// Wakes each worker named, through `wakers` (a worker whose backend has no waker looks
    /// at its channel on its own).
    pub(crate) fn wake(self, wakers: &[Option<WaitWaker>]) {
        let wake = |w: usize| {
            if let Some(Some(waker)) = wakers.get(w) {
                waker.wake();
            }
        };
        match self {
            Wakes::None => {}
            Wakes::One(w) => wake(w),
            Wakes::Many(ws) => ws.into_iter().for_each(wake),
        }
    }
}

pub(crate) struct Dispatcher {
    /// Each worker's channel.
    workers: Vec<flume::Sender<WorkerMsg>>,
    /// The workers sent to by the request being dispatched.
    wakes: Wakes,
    /// Per worker: writes sent to it that it has not finished (it counts them down).
    writes_out: Vec<Arc<AtomicU64>>,
    /// Reads on callers' threads in flight that a read of the page may join (a write to the
    /// page takes its entry away).
    caller_joinable: IdMap<u64, Joiners>,
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
    /// `zero_on_reuse`: an id that comes off the free list gets a zero page.
    zero_on_reuse: bool,
    /// Ids past the durable end of the allocator that the page file holds bytes for (written
    /// before a crash, under `next_sync` or in a redo that never ended): each gets a zero page
    /// when it is handed out, so a fresh id reads as zeros after any crash.
    stale: std::ops::Range<u64>,
    /// The zero page written over a reused (`zero_on_reuse`) or stale id; `None` when no id
    /// will ever need one.
    zero_page: Option<Bytes>,
    /// Zero pages sent so far: each image carries the count, and worker 0 writes it only once
    /// that many have finished (`Counters::zeros_finished`).
    zeros_sent: u64,
    /// Worker 0's waker: a zero page that finishes on another worker wakes it.
    waker0: Option<WaitWaker>,
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
    pub(crate) fn new(
        workers: Vec<flume::Sender<WorkerMsg>>,
        writes_out: Vec<Arc<AtomicU64>>,
        allocator: Allocator,
        config: &SchedulerConfig,
        stale_end: u64,
        counters: Arc<Counters>,
        allocated: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let stale = allocator.parts().0..stale_end;
        Dispatcher {
            workers,
            wakes: Wakes::None,
            writes_out,
            caller_joinable: IdMap::default(),
            allocator,
            page_size: config.page_size,
            extent_pages: config.max_combine_pages as u64,
            max_pages: config.page_limit(),
            external: config.allocation == AllocationMode::External,
            deferred: config.alloc_durability == AllocDurability::NextSync,
            zero_page: (config.zero_on_reuse || !stale.is_empty())
                .then(|| Bytes::from(vec![0u8; config.page_size])),
            zero_on_reuse: config.zero_on_reuse,
            zeros_sent: 0,
            waker0: None,
            stale,
            redo: false,
            changes: 0,
            counters,
            allocated,
            pending_alloc: Vec::new(),
        }
    }

    /// Sets worker 0's waker (if its backend has one), which finished zero pages call.
    pub(crate) fn with_worker0_waker(mut self, waker: Option<WaitWaker>) -> Self {
        self.waker0 = waker;
        self
    }

    /// Pages go to workers by extent (`max_combine_pages` pages): one page always goes to the
    /// same worker, which keeps its writes ordered and its reads single-flight without any
    /// shared state, and a run of adjacent pages that could merge is on one worker.
    fn worker_of(&self, page: u64) -> usize {
        ((page / self.extent_pages) % self.workers.len() as u64) as usize
    }

    fn send_to(&mut self, worker: usize, msg: WorkerMsg) {
        if let WorkerMsg::Write { page, .. } = &msg {
            // Reads accepted from now on must see this write: none joins an older caller read,
            // and none runs on a caller until the worker has finished the write.
            self.caller_joinable.remove(page);
            self.writes_out[worker].fetch_add(1, Ordering::AcqRel);
        }
        // A worker only stops after Shutdown, which it gets last; a send can fail only if it
        // panicked, and then the request's answer is dropped and its caller sees `Closed`.
        if self.workers[worker].send(msg).is_err() {
            tracing::error!(worker, "scheduler worker is gone");
        }
        self.wakes.add(worker);
    }

    /// Handles one request in arrival order, and sends every allocation change it made to
    /// worker 0 as one image; returns the workers to wake.
    pub(crate) fn dispatch(&mut self, req: Request) -> Wakes {
        self.handle(req);
        // Worker 0 writes one image at a time and folds the images queued meanwhile into the
        // next: changes that arrive while an image is being made durable share one.
        if !self.pending_alloc.is_empty() {
            let (_, image) = self.allocator.next_image(self.page_size);
            let answers = std::mem::take(&mut self.pending_alloc);
            let changes = self.changes;
            self.send_to(
                0,
                WorkerMsg::Persist {
                    image,
                    answers,
                    changes,
                    zeros: self.zeros_sent,
                },
            );
        }
        if !self.external {
            self.allocated
                .store(self.allocator.allocated_count(), Ordering::Relaxed);
        }
        std::mem::take(&mut self.wakes)
    }

    /// Decides where a blocking read of `page` runs: on the caller, when its worker has no
    /// write outstanding (so the file holds every write accepted before it) and no caller read
    /// of the page is in flight; otherwise a plain read is dispatched, answered to `answer()`.
    pub(crate) fn start_caller_read(
        &mut self,
        page: PageId,
        answer: impl FnOnce() -> PageAnswer,
    ) -> CallerStart {
        let worker = self.worker_of(page.0);
        let clear = self.writes_out[worker].load(Ordering::Acquire) == 0;
        if clear && self.check_read(page).is_ok() && !self.caller_joinable.contains_key(&page.0) {
            let joiners = Joiners::default();
            self.caller_joinable.insert(page.0, Arc::clone(&joiners));
            return CallerStart::Mine(joiners);
        }
        let answer = answer();
        CallerStart::Dispatched(self.dispatch(Request::Read { page, answer }))
    }

    /// A caller read of `page` is over: no read joins it from now on. Returns those that did.
    pub(crate) fn end_caller_read(&mut self, page: PageId, joiners: &Joiners) -> Vec<PageAnswer> {
        if self
            .caller_joinable
            .get(&page.0)
            .is_some_and(|j| Arc::ptr_eq(j, joiners))
        {
            self.caller_joinable.remove(&page.0);
        }
        std::mem::take(&mut *joiners.lock())
    }

    /// Stops the workers once they have finished everything sent so far; returns the workers
    /// to wake, and the answer of the last allocation image if one was needed.
    pub(crate) fn close(mut self) -> (Wakes, Option<Reply<()>>) {
        // A clean shutdown is a durability point too: deferred changes (and a redo never
        // ended) go into a last image, which worker 0 writes before it stops; its answer is
        // shutdown's result.
        let mut last_image = None;
        if !self.external && self.changes_not_durable() {
            let (_, image) = self.allocator.next_image(self.page_size);
            let changes = self.changes;
            let (answer, reply) = Reply::channel();
            last_image = Some(reply);
            self.send_to(
                0,
                WorkerMsg::Persist {
                    image,
                    answers: vec![AllocAnswer::Done(answer)],
                    changes,
                    zeros: self.zeros_sent,
                },
            );
        }
        for w in 0..self.workers.len() {
            self.send_to(w, WorkerMsg::Shutdown);
        }
        (std::mem::take(&mut self.wakes), last_image)
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
        self.not_poisoned()?;
        self.allocator.allocate_at(page, self.max_pages)?;
        self.changes += 1;
        Ok(())
    }

    /// Refuses every allocation change once an allocation image could not be made durable
    /// (see `SchedulerError::AllocationPoisoned`): the in-memory allocator may hold changes
    /// whose fate on disk is unknown, so no id it frees may be handed out again.
    fn not_poisoned(&self) -> Result<()> {
        match self.counters.alloc_poisoned.get() {
            Some(source) => Err(SchedulerError::AllocationPoisoned {
                source: source.clone(),
            }),
            None => Ok(()),
        }
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

    /// Writes the zero page over `page` (reused under `zero_on_reuse`, or stale) durably, as
    /// one part of `join`, under either `alloc_durability`. No image goes out before it has
    /// finished (worker 0 waits for it), so no image makes an id allocated whose zero page a
    /// crash could still undo; the durable write is cheap for stale ids, which exist only
    /// after a crash.
    fn write_zero_page(&mut self, page: PageId, join: Arc<dyn Part>) {
        let Some(zeros) = &self.zero_page else { return };
        let done = ZeroPageDone {
            join,
            counters: Arc::clone(&self.counters),
            worker0: self.workers[0].clone(),
            waker0: self.waker0.clone(),
        };
        let msg = WorkerMsg::Write {
            page: page.0,
            data: zeros.clone(),
            durable: true,
            answer: Ack::Part(Arc::new(done)),
        };
        self.zeros_sent += 1;
        let worker = self.worker_of(page.0);
        self.send_to(worker, msg);
    }

    /// Whether handing out `page` must write a zero page over it first: it came off the free
    /// list (`reused`) under `zero_on_reuse`, or the page file holds bytes for it from before
    /// a crash (it is stale).
    fn needs_zeros(&self, page: u64, reused: bool) -> bool {
        (reused && self.zero_on_reuse) || self.stale.contains(&page)
    }

    /// Answers an allocation with `value`; when `zero` names pages (reused under
    /// `zero_on_reuse`, or stale), only once their zero pages are durable (and, for
    /// `immediate`, the image after them).
    fn allocated_page<T: Send + 'static>(
        &mut self,
        zero: Vec<PageId>,
        value: T,
        answer: Answer<T>,
        plain: impl FnOnce(T, Answer<T>) -> AllocAnswer,
    ) {
        if zero.is_empty() || self.zero_page.is_none() {
            debug_assert!(zero.is_empty(), "a page to zero without a zero page");
            self.changed(plain(value, answer));
            return;
        }
        // Immediate: each zero page's durable write and the image; next_sync: the writes.
        let parts = zero.len() + usize::from(!self.deferred);
        let join: Arc<Join<T>> = Arc::new(Join::new(parts, value, answer));
        for page in zero {
            self.write_zero_page(page, join.clone());
        }
        self.changes += 1;
        if !self.deferred {
            self.pending_alloc.push(AllocAnswer::Part(join));
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Read { page, answer } => match self.check_read(page) {
                Ok(()) => {
                    if let Some(joiners) = self.caller_joinable.get(&page.0) {
                        bump(&self.counters.reads_joined, 1);
                        joiners.lock().push(answer);
                        return;
                    }
                    let worker = self.worker_of(page.0);
                    self.send_to(worker, WorkerMsg::Read { page: page.0, answer });
                }
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
                    .and_then(|()| self.not_poisoned())
                    .and_then(|()| self.allocator.allocate_reporting_reuse(self.max_pages));
                match result {
                    Ok((page, reused)) => {
                        let zero = if self.needs_zeros(page.0, reused) {
                            vec![page]
                        } else {
                            Vec::new()
                        };
                        self.allocated_page(zero, page, answer, AllocAnswer::Allocate);
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
                    .and_then(|()| self.not_poisoned())
                    .and_then(|()| self.allocator.allocate_at(page, self.max_pages));
                match result {
                    Ok(true) => {
                        let zero = if self.needs_zeros(page.0, was_free) {
                            vec![page]
                        } else {
                            Vec::new()
                        };
                        self.allocated_page(zero, true, answer, AllocAnswer::AllocateAt);
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
                    .and_then(|()| self.not_poisoned())
                    .and_then(|()| self.allocator.allocate_extent(pages, self.max_pages));
                match result {
                    Ok(range) => {
                        // Fresh ids, but some may be stale after a crash.
                        let zero: Vec<PageId> = (range.start.0.max(self.stale.start)
                            ..range.end.0.min(self.stale.end))
                            .map(PageId)
                            .collect();
                        self.allocated_page(zero, range.clone(), answer, |range, answer| {
                            AllocAnswer::Extent(range, answer)
                        });
                    }
                    Err(e) => {
                        let _ = answer.send(Err(e));
                    }
                }
            }
            Request::Deallocate { page, answer } => {
                let result = self
                    .managed("schedule_deallocate")
                    .and_then(|()| self.not_poisoned())
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
                    self.send_to(w, WorkerMsg::Sync(barrier.clone()));
                }
                if image {
                    self.pending_alloc.push(AllocAnswer::Part(barrier));
                }
            }
            Request::BeginRedo(answer) => {
                let _ = answer.send(self.managed("schedule_begin_redo").map(|()| self.redo = true));
            }
            Request::EndRedo(answer) => match self
                .managed("schedule_end_redo")
                .and_then(|()| self.not_poisoned())
            {
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
        }
    }

    fn write(&mut self, page: PageId, data: Bytes, durable: bool, answer: Answer<()>) {
        if let Err(e) = self.check_write(page) {
            let _ = answer.send(Err(e));
            return;
        }
        let worker = self.worker_of(page.0);
        // A durable write is a durability point for deferred allocation changes: it is
        // answered once they are durable too (their image waits for the zero pages written
        // since, which are durable writes).
        let ack = if durable && self.deferred && self.changes_not_durable() {
            let join = Arc::new(SyncBarrier::barrier(2, answer));
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
        self.send_to(worker, msg);
    }

    fn read_pages(&mut self, pages: Vec<PageId>, answer: BatchAnswer) {
        if pages.is_empty() {
            match answer {
                BatchAnswer::Own(a) => drop(a.send(Ok(Vec::new()))),
                BatchAnswer::Shared(a) => drop(a.send(Ok(Vec::new()))),
            }
            return;
        }
        if let Some((index, page, e)) = pages
            .iter()
            .enumerate()
            .find_map(|(i, &p)| self.check_read(p).err().map(|e| (i, p, e)))
        {
            let e = SchedulerError::Batch {
                index,
                page,
                source: Box::new(e),
            };
            match answer {
                BatchAnswer::Own(a) => drop(a.send(Err(e))),
                BatchAnswer::Shared(a) => drop(a.send(Err(e))),
            }
            return;
        }
        let mut parts: Vec<Vec<(usize, u64)>> = vec![Vec::new(); self.workers.len()];
        for (index, page) in pages.iter().enumerate() {
            parts[self.worker_of(page.0)].push((index, page.0));
        }
        let batch = Arc::new(BatchState::new(pages, answer));
        for (w, items) in parts.into_iter().enumerate() {
            if !items.is_empty() {
                self.send_to(
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

/// The answer of a zero page's durable write: passed on to the allocation it is part of, then
/// counted in `Counters::zeros_finished`, and worker 0 (which may hold an image until it
/// finishes) is told.
struct ZeroPageDone {
    join: Arc<dyn Part>,
    counters: Arc<Counters>,
    worker0: flume::Sender<WorkerMsg>,
    waker0: Option<WaitWaker>,
}

impl Part for ZeroPageDone {
    fn arrive(&self, result: Result<()>) {
        if let Err(e) = &result {
            // The allocation is answered with this error, yet the allocator holds the id (and
            // later changes may already build on it): poison allocation, as a failed image
            // does, before the caller hears of the error. No image is written after this, so
            // the reopened scheduler decides from the last durable one.
            let source = match e {
                SchedulerError::Io { source, .. } | SchedulerError::Backend { source, .. } => source.clone(),
                _ => storage_io_core::StorageIoError::invalid("writing a zero page failed"),
            };
            tracing::error!(error = %e, "a zero page could not be written; allocation changes are refused until reopen");
            let _ = self.counters.alloc_poisoned.set(source);
        }
        self.join.arrive(result);
        self.counters.zeros_finished.fetch_add(1, Ordering::AcqRel);
        // Worker 0 stops only once no image waits, so it still reads its channel.
        let _ = self.worker0.send(WorkerMsg::ZeroPageDone);
        if let Some(waker) = &self.waker0 {
            waker.wake();
        }
    }
}
