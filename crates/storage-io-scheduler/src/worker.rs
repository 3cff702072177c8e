//! One scheduler worker: owns a backend and its fds, keeps up to `queue_depth` ops in flight.
//!
//! **Invariants** (per worker; the dispatcher routes every page to one worker, so they hold
//! per page too):
//! - *Read your writes.* From the moment a write to page P is accepted until it completes, a
//!   read of P is answered with that write's bytes (the newest accepted write), not from disk.
//! - *Writes to one page reach the backend one at a time, in order.* The backend does not order
//!   overlapping writes (io_uring may run them in any order), so a later write waits.
//! - *Single flight.* A read of P joins a read of P already in flight, unless a write to P was
//!   accepted after that read was issued.
//! - *A sync covers every write accepted before it.* A barrier sync is queued behind writes that
//!   wait for an earlier write to their page, and the backend's datasync barrier does the rest.
//! - *Exactly one answer per call*, including on errors and at shutdown.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use storage_io_core::io_thread::{Accepted, Intake, IoHandler, IoLoop};
use storage_io_core::{
    AlignedBuf, BufferPool, BufferPoolConfig, DEFAULT_ALIGNMENT, IoBuf, IoCompletion, IoFd, IoToken,
    StorageIo, StorageIoError, WaitWaker,
};

use crate::PageId;
use crate::alloc::MetaSlots;
use crate::batch::{Ack, BatchState, Part};
pub(crate) use crate::counters::Counters;
use crate::counters::bump;
use crate::error::{Result, SchedulerError};
use crate::idhash::IdMap;
use crate::lend::{self, Lender, Loan};
use crate::reply::{Answer, PageAnswer};

/// What the dispatcher hands a worker.
pub(crate) enum WorkerMsg {
    Read {
        page: u64,
        answer: PageAnswer,
    },
    Write {
        page: u64,
        data: Bytes,
        durable: bool,
        answer: Ack,
    },
    /// This worker's share of a batch: (index in the request, page).
    Batch {
        batch: Arc<BatchState>,
        items: Vec<(usize, u64)>,
    },
    /// A sync of the page file covering every write accepted before it; one part of a join.
    Sync(Arc<dyn Part>),
    /// Write this allocation image into the slot that is not the durable one, datasync it,
    /// then answer.
    Persist {
        image: Vec<u8>,
        answers: Vec<AllocAnswer>,
        /// How many allocation changes since open the image holds.
        changes: u64,
        /// How many zero pages the dispatcher had sent when it made the image: the image waits
        /// until that many have finished (`Counters::zeros_finished`).
        zeros: u64,
    },
    /// A zero page finished on some worker (sent to worker 0): an image may be waiting for it.
    ZeroPageDone,
    Shutdown,
}

/// An allocation change waiting for its image to be durable.
pub(crate) enum AllocAnswer {
    Allocate(PageId, Answer<PageId>),
    /// `schedule_allocate_at`: whether the page was newly allocated.
    AllocateAt(bool, Answer<bool>),
    Extent(std::ops::Range<PageId>, Answer<std::ops::Range<PageId>>),
    /// A deallocation, or the end of a redo phase.
    Done(Answer<()>),
    /// One part of a join (an allocation that also waits for a zero page, a sync or durable
    /// write that also waits for the image).
    Part(Arc<dyn Part>),
}

impl AllocAnswer {
    /// Answers with `error` (the change was not made durable).
    pub(crate) fn fail(self, error: SchedulerError) {
        match self {
            AllocAnswer::Allocate(_, a) => drop(a.send(Err(error))),
            AllocAnswer::Extent(_, a) => drop(a.send(Err(error))),
            AllocAnswer::AllocateAt(_, a) => drop(a.send(Err(error))),
            AllocAnswer::Done(a) => drop(a.send(Err(error))),
            AllocAnswer::Part(p) => p.arrive(Err(error)),
        }
    }

    pub(crate) fn send(self, result: std::result::Result<(), &StorageIoError>) {
        let err = |e: &StorageIoError| SchedulerError::Backend {
            what: "writing allocation metadata",
            source: e.clone(),
        };
        match self {
            AllocAnswer::Allocate(page, a) => {
                let _ = a.send(result.map(|()| page).map_err(err));
            }
            AllocAnswer::Extent(range, a) => {
                let _ = a.send(result.map(|()| range).map_err(err));
            }
            AllocAnswer::AllocateAt(fresh, a) => {
                let _ = a.send(result.map(|()| fresh).map_err(err));
            }
            AllocAnswer::Done(a) => {
                let _ = a.send(result.map_err(err));
            }
            AllocAnswer::Part(p) => p.arrive(result.map_err(err)),
        }
    }
}

/// Who gets a page when a read completes.
enum Waiter {
    Single(PageAnswer),
    Batch(Arc<BatchState>, usize),
}

impl Waiter {
    fn send(self, result: Result<Bytes>) {
        match self {
            Waiter::Single(a) => a.send(result),
            Waiter::Batch(batch, index) => batch.complete(index, result),
        }
    }
}

type OpId = u64;

struct ReadOp {
    first: u64,
    /// Waiters of each page of the run, by position.
    /// Pages in the run.
    pages: u64,
    /// Who waits for which page of the run (its position), in arrival order: one list for the
    /// whole run, so a one-page read costs one allocation.
    waiters: Vec<(u32, Waiter)>,
    /// The loan of the backend buffer the read went into, if it is one (set at submit).
    loan: Option<Loan>,
}

struct WriteOp {
    page: u64,
    data: Bytes,
    answer: Option<Ack>,
    /// The datasync submitted right behind a durable write.
    sync: Option<OpId>,
    /// The sync's result, if it (against the contract) came back before the write.
    sync_result: Option<std::result::Result<(), StorageIoError>>,
}

enum SyncOp {
    /// The fdatasync of a durable write; the answer moves in when the write succeeds.
    Durable {
        page: u64,
        write: OpId,
        answer: Option<Ack>,
    },
    Barrier(Arc<dyn Part>),
}

enum Op {
    Read(ReadOp),
    Write(WriteOp),
    Sync(SyncOp),
    MetaWrite {
        slot: usize,
        image: Vec<u8>,
        sync: OpId,
    },
    MetaSync {
        slot: usize,
        answers: Vec<AllocAnswer>,
        /// The allocation changes the image holds (published once it is durable).
        changes: u64,
        failed: Option<StorageIoError>,
    },
}

/// A write waiting for the write before it to the same page.
struct Parked {
    seq: u64,
    data: Bytes,
    durable: bool,
    answer: Ack,
}

#[derive(Default)]
struct PageWrites {
    /// The write op of this page that is queued or in flight.
    active: Option<OpId>,
    parked: VecDeque<Parked>,
    /// The newest accepted bytes: what a read of this page sees.
    latest: Bytes,
}

/// Static facts a worker needs.
pub(crate) struct WorkerSetup {
    pub(crate) io: Box<dyn StorageIo>,
    pub(crate) data_fd: IoFd,
    /// Worker 0 only: the two allocation-image slots.
    pub(crate) meta: Option<MetaSlots>,
    pub(crate) page_size: usize,
    pub(crate) queue_depth: usize,
    pub(crate) max_combine_pages: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) counters: Arc<Counters>,
    /// Writes sent to this worker and not finished: the dispatcher counts up, this counts down.
    pub(crate) writes_out: Arc<std::sync::atomic::AtomicU64>,
}

pub(crate) struct Worker {
    io: Box<dyn StorageIo>,
    data_fd: IoFd,
    /// The allocation-image slots (worker 0 only); `durable` moves when an image's sync succeeds.
    meta: Option<MetaSlots>,
    page_size: usize,
    max_in_flight: usize,
    max_combine_pages: usize,
    /// How long a wait for completions may block while requests could arrive when the backend
    /// has no [`WaitWaker`] (with one, the dispatcher wakes the worker after each send).
    poll_interval: Duration,
    waker: Option<WaitWaker>,
    counters: Arc<Counters>,
    /// Aligned staging for writes from unaligned pages, and reads' memory past the lend limit.
    buffers: Option<BufferPool>,
    /// The backend buffers lent to answers callers hold.
    lender: Lender,
    writes_out: Arc<std::sync::atomic::AtomicU64>,

    next_op: OpId,
    ops: IdMap<OpId, Op>,
    ready: VecDeque<OpId>,
    in_flight: IdMap<IoToken, OpId>,
    /// Reads in flight (or queued) that a new read of the page may join.
    joinable: IdMap<u64, OpId>,
    writes: IdMap<u64, PageWrites>,
    write_seq: u64,
    /// Sequence numbers of parked writes.
    parked: BTreeSet<u64>,
    /// Barrier syncs waiting for the writes accepted before them to leave the parking.
    barriers: VecDeque<(u64, Arc<dyn Part>)>,
    /// Images queued: (image, answers, changes, zeros); see `WorkerMsg::Persist`.
    persists: VecDeque<(Vec<u8>, Vec<AllocAnswer>, u64, u64)>,
    persist_busy: bool,
    /// This worker's backend `held_ns`, `submit_calls` and `submit_call_ns` as last added to
    /// the shared counters.
    published: [u64; 3],
}

impl IoHandler for Worker {
    type Msg = WorkerMsg;
    type Io = dyn StorageIo;

    fn io(&mut self) -> &mut Self::Io {
        self.io.as_mut()
    }

    fn accept(&mut self, msg: WorkerMsg) -> Accepted {
        match msg {
            WorkerMsg::Shutdown => Accepted::Stop,
            msg => {
                self.accept(msg);
                Accepted::Continue
            }
        }
    }

    fn pump(&mut self) {
        Worker::pump(self);
    }

    fn has_work(&self) -> bool {
        !self.is_idle()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// An image waiting for a zero page on another worker (which sends `ZeroPageDone`): also
    /// after `Shutdown`, since the image is accepted work.
    fn waits_for_intake(&self) -> bool {
        self.image_waits_for_zero_pages()
    }

    fn intake_gone(&mut self) {
        self.fail_images("a worker writing a zero page is gone");
    }

    fn complete(&mut self, done: &mut Vec<IoCompletion>, intake: &mut Intake<WorkerMsg>) {
        // The backend counted these ops when it reaped them: publish before answering, so a
        // caller holding an answer sees its op's time in the stats.
        self.publish_backend_stats();
        // The device often returns the whole queue at once. Requests that callers send back
        // while the rest are still being answered are taken and submitted between
        // completions, so the device gets new work before the last answer goes out.
        for c in done.drain(..) {
            Worker::complete(self, c);
            if intake.take(self) > 0 {
                Worker::pump(self);
            }
        }
    }
}

impl Worker {
    pub(crate) fn new(mut setup: WorkerSetup) -> Self {
        let caps = setup.io.capabilities();
        let waker = setup.io.wait_waker();
        let max_in_flight = setup.queue_depth.min(caps.max_in_flight.max(1));
        // Read buffers come from a small aligned pool (a merged read is at most 1 MiB); if a
        // class runs dry, reads allocate instead of waiting.
        let page_size = setup.page_size;
        let mut classes = vec![(page_size, max_in_flight * 2)];
        if setup.max_combine_pages > 1 {
            classes.push((page_size * setup.max_combine_pages, max_in_flight));
        }
        let buffers = BufferPool::new(BufferPoolConfig {
            classes,
            align: DEFAULT_ALIGNMENT,
        })
        .ok();
        Worker {
            io: setup.io,
            data_fd: setup.data_fd,
            meta: setup.meta,
            page_size,
            max_in_flight,
            max_combine_pages: setup.max_combine_pages,
            poll_interval: setup.poll_interval,
            waker,
            counters: setup.counters,
            buffers,
            lender: Lender::new(max_in_flight, caps.registered_buffers),
            writes_out: setup.writes_out,
            next_op: 0,
            ops: IdMap::default(),
            ready: VecDeque::new(),
            in_flight: IdMap::default(),
            joinable: IdMap::default(),
            writes: IdMap::default(),
            write_seq: 0,
            parked: BTreeSet::new(),
            barriers: VecDeque::new(),
            persists: VecDeque::new(),
            persist_busy: false,
            published: [0; 3],
        }
    }

    /// Serves `rx` until a `Shutdown` arrives (or every sender is gone), then finishes every
    /// accepted op and returns ([`IoLoop`]: the dispatcher's wake ends a wait for completions
    /// when a request arrives; a backend without a waker is woken now and then by the poll
    /// interval to look at the request channel).
    pub(crate) fn run(mut self, rx: flume::Receiver<WorkerMsg>) {
        let fallback = self.poll_interval;
        IoLoop::new(rx, self.waker.as_ref(), fallback).run(&mut self);
    }

    /// Adds the backend's op time and submit calls since the last call to the shared counters.
    fn publish_backend_stats(&mut self) {
        let stats = self.io.stats();
        let now = [stats.held_ns(), stats.submit_calls(), stats.submit_call_ns()];
        let c = &self.counters;
        let shared = [
            &c.backend_held_ns,
            &c.backend_submit_calls,
            &c.backend_submit_call_ns,
        ];
        for ((counter, now), last) in shared.into_iter().zip(now).zip(&mut self.published) {
            bump(counter, now.saturating_sub(*last));
            *last = now;
        }
    }

    /// How many of the backend's buffers this worker has lent to answers callers still hold.
    pub(crate) fn lent_gauge(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.lender.gauge()
    }

    /// What the dispatcher calls after sending to this worker, if the backend can be woken.
    pub(crate) fn waker(&self) -> Option<WaitWaker> {
        self.waker.clone()
    }

    fn is_idle(&self) -> bool {
        self.ops.is_empty() && self.persists.is_empty() && self.barriers.is_empty()
    }

    /// Whether the next image must wait: a zero page sent before it (to any worker) has not
    /// finished. An image never becomes durable before the zero pages of the ids it allocates,
    /// so an id it holds never reads its old bytes after a crash (see alloc.rs, "fresh ids").
    fn image_waits_for_zero_pages(&self) -> bool {
        !self.persist_busy
            && self
                .persists
                .back()
                .is_some_and(|&(_, _, _, zeros)| self.counters.zeros_finished.load(Ordering::Acquire) < zeros)
    }

    /// Refuses every queued image (a zero page it waits for will never finish).
    fn fail_images(&mut self, why: &str) {
        for (_, answers, _, _) in self.persists.drain(..) {
            for a in answers {
                a.fail(SchedulerError::Worker(why.to_string()));
            }
        }
    }

    fn new_op(&mut self, op: Op) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(id, op);
        id
    }

    fn accept(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Read { page, answer } => {
                if let Some(waiter) = self.join_or_answer(page, Waiter::Single(answer)) {
                    self.start_read(page, 1, vec![(0, waiter)]);
                }
            }
            WorkerMsg::Batch { batch, items } => {
                let reads = items
                    .into_iter()
                    .map(|(index, page)| (page, Waiter::Batch(Arc::clone(&batch), index)))
                    .collect();
                self.accept_reads(reads);
            }
            WorkerMsg::Write {
                page,
                data,
                durable,
                answer,
            } => self.accept_write(page, data, durable, answer),
            WorkerMsg::Sync(barrier) => self.barriers.push_back((self.write_seq, barrier)),
            WorkerMsg::Persist {
                image,
                answers,
                changes,
                zeros,
            } => self.persists.push_back((image, answers, changes, zeros)),
            WorkerMsg::ZeroPageDone | WorkerMsg::Shutdown => {}
        }
    }

    fn accept_reads(&mut self, reads: Vec<(u64, Waiter)>) {
        let mut need: BTreeMap<u64, Vec<Waiter>> = BTreeMap::new();
        for (page, waiter) in reads {
            if let Some(waiter) = self.join_or_answer(page, waiter) {
                need.entry(page).or_default().push(waiter);
            }
        }
        // Adjacent pages become one read of up to max_combine pages (the dispatcher routes
        // whole extents of that many pages to one worker, and sizes batches accordingly).
        let mut run: Vec<(u32, Waiter)> = Vec::new();
        let (mut run_first, mut run_len) = (0u64, 0u64);
        let max_run = self.max_combine_pages as u64;
        for (page, waiters) in need {
            if run_len > 0 && (page != run_first + run_len || run_len == max_run) {
                self.start_read(run_first, run_len, std::mem::take(&mut run));
                run_len = 0;
            }
            if run_len == 0 {
                run_first = page;
            }
            run.extend(waiters.into_iter().map(|w| (run_len as u32, w)));
            run_len += 1;
        }
        if run_len > 0 {
            self.start_read(run_first, run_len, run);
        }
    }

    /// Answers a read of `page` from a pending write, or joins it to a read of the page in
    /// flight; gives the waiter back when the page has to be read.
    fn join_or_answer(&mut self, page: u64, waiter: Waiter) -> Option<Waiter> {
        if let Some(w) = self.writes.get(&page) {
            bump(&self.counters.reads_from_pending_writes, 1);
            waiter.send(Ok(w.latest.clone()));
            return None;
        }
        if let Some(&op) = self.joinable.get(&page)
            && let Some(Op::Read(read)) = self.ops.get_mut(&op)
        {
            bump(&self.counters.reads_joined, 1);
            read.waiters.push(((page - read.first) as u32, waiter));
            return None;
        }
        Some(waiter)
    }

    fn start_read(&mut self, first: u64, pages: u64, waiters: Vec<(u32, Waiter)>) {
        let id = self.new_op(Op::Read(ReadOp {
            first,
            pages,
            waiters,
            loan: None,
        }));
        for page in first..first + pages {
            self.joinable.insert(page, id);
        }
        self.ready.push_back(id);
    }

    fn accept_write(&mut self, page: u64, data: Bytes, durable: bool, answer: Ack) {
        self.write_seq += 1;
        let seq = self.write_seq;
        // Reads accepted from now on must see this write, not join an older read.
        self.joinable.remove(&page);
        let state = self.writes.entry(page).or_default();
        state.latest = data.clone();
        if state.active.is_some() {
            state.parked.push_back(Parked {
                seq,
                data,
                durable,
                answer,
            });
            self.parked.insert(seq);
            return;
        }
        self.start_write(page, data, durable, answer);
    }

    fn start_write(&mut self, page: u64, data: Bytes, durable: bool, answer: Ack) {
        let id = self.new_op(Op::Write(WriteOp {
            page,
            data,
            answer: Some(answer),
            sync: None,
            sync_result: None,
        }));
        self.ready.push_back(id);
        if durable {
            let sync = self.new_op(Op::Sync(SyncOp::Durable {
                page,
                write: id,
                answer: None,
            }));
            self.ready.push_back(sync);
            if let Some(Op::Write(w)) = self.ops.get_mut(&id) {
                w.sync = Some(sync);
            }
        }
        if let Some(state) = self.writes.get_mut(&page) {
            state.active = Some(id);
        }
    }

    /// Moves barrier syncs and allocation images to the ready queue when they may go, then
    /// submits ready ops up to the in-flight limit.
    fn pump(&mut self) {
        while let Some(&(seq, _)) = self.barriers.front() {
            if self.parked.first().is_some_and(|&oldest| oldest <= seq) {
                break;
            }
            if let Some((_, barrier)) = self.barriers.pop_front() {
                let id = self.new_op(Op::Sync(SyncOp::Barrier(barrier)));
                self.ready.push_back(id);
            }
        }
        if let Some(source) = self.counters.alloc_poisoned.get()
            && !self.persists.is_empty()
        {
            // An earlier image failed: whether its changes are on disk is unknown, and these
            // images hold them too. None is written (a retried sync may report success for
            // data the failed one lost); every change waiting for one is refused.
            debug_assert!(!self.persist_busy, "an image in flight after one failed");
            for (_, answers, _, _) in self.persists.drain(..) {
                for a in answers {
                    a.fail(SchedulerError::AllocationPoisoned {
                        source: source.clone(),
                    });
                }
            }
        }
        if !self.persist_busy && !self.persists.is_empty() && !self.image_waits_for_zero_pages() {
            // Images are whole snapshots: only the newest queued one needs writing, and it
            // answers everyone queued. One image at a time, so a crash tears at most one slot,
            // and never the durable one (see alloc.rs, "image slots").
            let mut answers = Vec::new();
            let mut newest = None;
            while let Some((image, mut more, changes, zeros)) = self.persists.pop_front() {
                debug_assert!(
                    self.counters.zeros_finished.load(Ordering::Acquire) >= zeros,
                    "an image written before the zero pages sent ahead of it finished"
                );
                answers.append(&mut more);
                newest = Some((image, changes));
            }
            if let Some((image, changes)) = newest {
                let slot = self.meta.map_or(0, |m| m.target());
                let sync = self.new_op(Op::MetaSync {
                    slot,
                    answers,
                    changes,
                    failed: None,
                });
                let write = self.new_op(Op::MetaWrite { slot, image, sync });
                self.ready.push_back(write);
                self.ready.push_back(sync);
                self.persist_busy = true;
            }
        }
        let mut submitted = false;
        while self.in_flight.len() < self.max_in_flight {
            let Some(id) = self.ready.pop_front() else { break };
            self.submit(id);
            submitted = true;
        }
        if submitted && let Err(e) = self.io.flush() {
            tracing::warn!(error = %e, "scheduler worker: flushing submissions failed");
        }
    }

    /// An aligned buffer of `len` bytes from the worker's pool (or freshly allocated).
    fn aligned_buf(&self, len: usize) -> std::result::Result<IoBuf, StorageIoError> {
        if let Some(pool) = &self.buffers
            && let Ok(buf) = pool.acquire(len)
        {
            return Ok(buf.into());
        }
        Ok(AlignedBuf::zeroed(len, DEFAULT_ALIGNMENT)?.into())
    }

    fn submit(&mut self, id: OpId) {
        let ps = self.page_size as u64;
        let submitted = match self.ops.get(&id) {
            Some(Op::Read(read)) => {
                let len = read.pages as usize * self.page_size;
                let offset = read.first * ps;
                let pool = self.buffers.as_ref();
                let fallback = || pool.and_then(|p| p.acquire(len).ok());
                match self.lender.read_buf(self.io.as_mut(), len, fallback) {
                    Ok(lend::ReadBuf { buf, loan }) => {
                        let submitted = self
                            .io
                            .submit_read(self.data_fd, buf.into(), offset)
                            .map_err(|e| e.error);
                        if let Some(Op::Read(read)) = self.ops.get_mut(&id) {
                            read.loan = loan;
                        }
                        submitted
                    }
                    Err(e) => Err(e),
                }
            }
            Some(Op::Write(w)) => {
                if (w.data.as_ptr() as usize).is_multiple_of(DEFAULT_ALIGNMENT) {
                    // An aligned page goes to the backend as it is: the write keeps a reference
                    // to the caller's bytes (io_uring writes from them in place).
                    self.io
                        .submit_write_bytes(self.data_fd, w.data.clone(), w.page * ps)
                } else {
                    // Direct I/O needs an aligned source: stage the page in an aligned buffer
                    // that moves into the backend and comes back with the completion.
                    match self.aligned_buf(w.data.len()) {
                        Ok(mut buf) => {
                            buf.as_mut_slice().copy_from_slice(&w.data);
                            self.io
                                .submit_write_buf(self.data_fd, buf, w.page * ps)
                                .map_err(|e| e.error)
                        }
                        Err(e) => Err(e),
                    }
                }
            }
            Some(Op::Sync(_)) => self.io.submit_datasync(self.data_fd),
            Some(Op::MetaWrite { slot, image, .. }) => match self.meta {
                Some(m) => self.io.submit_write(m.fds[*slot], image, 0),
                None => Err(StorageIoError::invalid(
                    "allocation image sent to a worker without metadata files",
                )),
            },
            Some(Op::MetaSync { slot, .. }) => match self.meta {
                Some(m) => self.io.submit_datasync(m.fds[*slot]),
                None => Err(StorageIoError::invalid(
                    "allocation image sent to a worker without metadata files",
                )),
            },
            None => return,
        };
        match submitted {
            Ok(token) => {
                self.in_flight.insert(token, id);
            }
            Err(e) => self.finish(id, Err(e), None),
        }
    }

    fn complete(&mut self, c: IoCompletion) {
        let Some(id) = self.in_flight.remove(&c.token) else {
            tracing::warn!(token = ?c.token, "scheduler worker: completion for an unknown token");
            return;
        };
        self.finish(id, c.result, c.buf);
    }

    fn finish(&mut self, id: OpId, result: std::result::Result<usize, StorageIoError>, buf: Option<IoBuf>) {
        let Some(op) = self.ops.remove(&id) else { return };
        match op {
            Op::Read(read) => self.finish_read(id, read, result, buf),
            Op::Write(w) => self.finish_write(w, result.map(|_| ())),
            Op::Sync(SyncOp::Durable { page, write, answer }) => {
                bump(&self.counters.syncs, 1);
                let result = result.map(|_| ());
                match answer {
                    Some(a) => {
                        a.send(result.map_err(|source| SchedulerError::Io {
                            page: PageId(page),
                            source,
                        }));
                    }
                    None => {
                        if let Some(Op::Write(w)) = self.ops.get_mut(&write) {
                            w.sync_result = Some(result);
                        }
                    }
                }
            }
            Op::Sync(SyncOp::Barrier(barrier)) => {
                bump(&self.counters.syncs, 1);
                barrier.arrive(result.map(|_| ()).map_err(|source| SchedulerError::Backend {
                    what: "fdatasync of the page file",
                    source,
                }));
            }
            Op::MetaWrite { sync, .. } => {
                bump(&self.counters.metadata_writes, 1);
                if let Err(e) = result
                    && let Some(Op::MetaSync { failed, .. }) = self.ops.get_mut(&sync)
                {
                    failed.get_or_insert(e);
                }
            }
            Op::MetaSync {
                slot,
                answers,
                changes,
                failed,
            } => {
                self.persist_busy = false;
                let result = match failed {
                    Some(e) => Err(e),
                    None => result.map(|_| ()),
                };
                match &result {
                    // This slot now holds the newest durable image; the other may be written.
                    Ok(()) => {
                        if let Some(m) = &mut self.meta {
                            m.durable = slot;
                        }
                        // Before the answers: a caller told "durable" must find the
                        // dispatcher knowing it too.
                        self.counters
                            .durable_alloc_changes
                            .fetch_max(changes, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "allocation metadata could not be made durable; allocation changes are refused until reopen");
                        // Before the answers: a caller told of the failure must find every
                        // later allocation change refused.
                        let _ = self.counters.alloc_poisoned.set(e.clone());
                    }
                }
                for a in answers {
                    a.send(result.as_ref().map(|_| ()));
                }
            }
        }
    }

    fn finish_read(
        &mut self,
        id: OpId,
        read: ReadOp,
        result: std::result::Result<usize, StorageIoError>,
        buf: Option<IoBuf>,
    ) {
        let count = read.pages;
        for page in read.first..read.first + count {
            if self.joinable.get(&page) == Some(&id) {
                self.joinable.remove(&page);
            }
        }
        bump(&self.counters.read_ios, 1);
        bump(&self.counters.pages_read, count);
        let ps = self.page_size;
        match result {
            Ok(n) => {
                // Every page of the run is a slice of the one buffer the read landed in, and
                // every waiter of a page shares it (a caller that wants its own copy makes it).
                let len = count as usize * ps;
                let data = lend::freeze(buf, n, len, read.loan);
                for (i, w) in read.waiters {
                    let i = i as usize;
                    w.send(Ok(data.slice(i * ps..(i + 1) * ps)));
                }
            }
            Err(source) => {
                for (i, w) in read.waiters {
                    w.send(Err(SchedulerError::Io {
                        page: PageId(read.first + u64::from(i)),
                        source: source.clone(),
                    }));
                }
            }
        }
    }

    fn finish_write(&mut self, w: WriteOp, result: std::result::Result<(), StorageIoError>) {
        bump(&self.counters.write_ios, 1);
        // The write is in the file (or failed): reads need not wait for it on this worker. The
        // dispatcher counts a write before sending it: this worker holds no more (this one too).
        let out = self.writes_out.fetch_sub(1, Ordering::AcqRel);
        let held = (self.writes.len() + self.parked.len()) as u64;
        storage_io_core::invariant!(out >= held.max(1), "{out} writes out, {held} held");
        let page = PageId(w.page);
        let as_error = |source| SchedulerError::Io { page, source };
        if let Some(answer) = w.answer {
            match (result, w.sync) {
                (Err(e), _) => {
                    // The sync behind a failed write must not answer success for it.
                    answer.send(Err(as_error(e)));
                }
                (Ok(()), None) => answer.send(Ok(())),
                (Ok(()), Some(sync)) => match w.sync_result {
                    Some(r) => answer.send(r.map_err(as_error)),
                    None => {
                        if let Some(Op::Sync(SyncOp::Durable { answer: slot, .. })) = self.ops.get_mut(&sync)
                        {
                            *slot = Some(answer);
                        }
                    }
                },
            }
        }
        // Next write to this page, if one is parked; otherwise reads go to disk again.
        let Some(state) = self.writes.get_mut(&w.page) else {
            return;
        };
        state.active = None;
        match state.parked.pop_front() {
            Some(next) => {
                self.parked.remove(&next.seq);
                self.start_write(w.page, next.data, next.durable, next.answer);
            }
            None => {
                self.writes.remove(&w.page);
            }
        }
    }
}
