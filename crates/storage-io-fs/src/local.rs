//! Submission on the caller's thread: one io_uring per tokio runtime thread, driven by tokio's
//! own reactor — no I/O thread between a task and the kernel.
//!
//! A read, write, append or sync called on a runtime thread pushes its SQE into that thread's
//! ring (made on first use) and enters the kernel right there. The ring's fd is registered with
//! the runtime's epoll ([`AsyncFd`]); a small drain task per ring wakes when the completion queue
//! fills, takes the CQEs and answers the waiting futures through their wakers. A future polled
//! on another thread than the one that submitted still completes: its answer is a plain slot,
//! and the ring it was submitted to is drained wherever its drain task runs.
//!
//! Rings are `Mutex`-guarded and built without `SINGLE_ISSUER`/`DEFER_TASKRUN` (and without
//! `COOP_TASKRUN`, see [`UringStorageIo::for_reactor`]): a drain task may run on any runtime
//! thread, and a completion must wake a thread that sleeps in `epoll_wait`. At most one ring per
//! runtime thread is made, up to a limit; threads beyond it (a `spawn_blocking` pool) share the
//! existing rings.
//!
//! Ownership is as on the worker path: the ring holds an op's buffer until its CQE, so a dropped
//! future never frees memory the kernel may still write.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use storage_io_core::{
    IoBuf, IoCompletion, IoConfig, IoFd, IoStats, IoToken, OpKind, Result, StorageIo, StorageIoError,
    SubmitError,
};
use storage_io_uring::UringStorageIo;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::order::WriteTicket;
use super::slot::Completer;
use super::worker::BufReply;

/// The wait for completions while draining a ring at shutdown.
const DRAIN_WAIT: Duration = Duration::from_millis(10);

thread_local! {
    /// This thread's ring per file system (by [`LocalRings::id`]).
    static MINE: RefCell<Vec<(u64, Weak<LocalRing>)>> = const { RefCell::new(Vec::new()) };
    /// Set while [`block_on`](super::block_on) runs here: a ring on this thread could not be
    /// drained while it blocks, so operations called inside take the worker path.
    static BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as blocked in `block_on` until dropped.
pub(crate) struct BlockingScope(bool);

impl BlockingScope {
    pub(crate) fn enter() -> Self {
        BlockingScope(BLOCKING.replace(true))
    }
}

impl Drop for BlockingScope {
    fn drop(&mut self) {
        BLOCKING.set(self.0);
    }
}

/// The rings of one file system.
pub(crate) struct LocalRings {
    id: u64,
    config: IoConfig,
    rings: Mutex<Vec<Arc<LocalRing>>>,
    max_rings: usize,
    /// Set when a ring could not be made (or the reactor refused it): every op takes the worker
    /// path from then on.
    disabled: AtomicBool,
    /// Set at shutdown: no new op is accepted.
    closed: AtomicBool,
}

impl LocalRings {
    /// Rings for a file system whose ops may run with `config`; `max_rings` caps how many.
    pub(crate) fn new(config: &IoConfig, max_rings: usize) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        LocalRings {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            config: config.clone(),
            rings: Mutex::new(Vec::new()),
            max_rings: max_rings.max(1),
            disabled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// The ring for an op called on this thread, or `None` for the worker path (no tokio
    /// runtime here, inside `block_on`, or no ring could be made).
    pub(crate) fn current(&self) -> Option<Arc<LocalRing>> {
        if self.disabled.load(Ordering::Relaxed) || self.closed.load(Ordering::Relaxed) || BLOCKING.get() {
            return None;
        }
        let mine = MINE.with_borrow(|m| {
            m.iter()
                .find(|(id, _)| *id == self.id)
                .and_then(|(_, w)| w.upgrade())
        });
        if mine.is_some() {
            return mine;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let ring = self.ring_for_new_thread(&runtime)?;
        MINE.with_borrow_mut(|m| {
            m.retain(|(_, w)| w.strong_count() > 0);
            m.push((self.id, Arc::downgrade(&ring)));
        });
        Some(ring)
    }

    fn ring_for_new_thread(&self, runtime: &tokio::runtime::Handle) -> Option<Arc<LocalRing>> {
        let mut rings = self.rings.lock();
        // Checked under the lock `shutdown` takes after setting it: a ring made here is one
        // that shutdown drains.
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        if rings.len() >= self.max_rings {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            std::thread::current().id().hash(&mut h);
            return rings.get((h.finish() % rings.len() as u64) as usize).cloned();
        }
        match LocalRing::new(&self.config, rings.len()) {
            Ok(ring) => {
                let ring = Arc::new(ring);
                let task = runtime.spawn(drain(Arc::clone(&ring)));
                *ring.drain_task.lock() = Some(task.abort_handle());
                tracing::debug!(ring = ring.id, thread = ?std::thread::current().id(), "async file system: a ring for this runtime thread");
                rings.push(Arc::clone(&ring));
                Some(ring)
            }
            Err(e) => {
                if !self.disabled.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "async file system: no io_uring on the caller's thread; operations go through the I/O workers");
                }
                None
            }
        }
    }

    /// Refuses new ops, then waits (blocking) until every op accepted before has completed
    /// and been answered.
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let rings = self.rings.lock().clone();
        for ring in rings {
            // Under the ring's lock: an op either got in before (and is drained below) or is
            // refused with `Closed`.
            ring.inner.lock().closed = true;
            ring.drain_blocking();
            if let Some(task) = ring.drain_task.lock().take() {
                task.abort();
            }
        }
    }

    /// Adds every ring's counters to `total` and returns the rings' gauges.
    pub(crate) fn gauges(&self, total: &mut IoStats) -> RingGauges {
        let rings = self.rings.lock();
        let mut g = RingGauges {
            rings: rings.len(),
            ..RingGauges::default()
        };
        for ring in rings.iter() {
            let inner = ring.inner.lock();
            total.merge(&inner.stats);
            g.in_flight += inner.io.pending_count() as u64;
            g.queued += inner.backlog.len() as u64;
            g.max_in_flight = g.max_in_flight.max(inner.max_in_flight);
            g.ops += inner.submitted;
        }
        g
    }
}

/// What [`LocalRings::gauges`] reports.
#[derive(Debug, Default)]
pub(crate) struct RingGauges {
    pub(crate) rings: usize,
    pub(crate) in_flight: u64,
    pub(crate) queued: u64,
    pub(crate) max_in_flight: u64,
    /// Ops submitted on the rings, ever.
    pub(crate) ops: u64,
}

/// A handle's OS file and its registration on each ring it was used on.
pub(crate) struct LocalFile {
    os: File,
    regs: Mutex<Vec<(usize, Weak<LocalRing>, IoFd)>>,
}

impl LocalFile {
    pub(crate) fn new(os: File) -> Arc<Self> {
        Arc::new(LocalFile {
            os,
            regs: Mutex::new(Vec::new()),
        })
    }

    /// The file's handle on `ring`, registering it there on first use. Called under the
    /// ring's lock.
    fn fd_on(&self, ring: &Arc<LocalRing>, io: &mut UringStorageIo) -> Result<IoFd> {
        let mut regs = self.regs.lock();
        if let Some((_, _, fd)) = regs.iter().find(|(id, _, _)| *id == ring.id) {
            return Ok(*fd);
        }
        let dup = self.os.try_clone().map_err(|e| {
            StorageIoError::from_os("duplicating a file handle for a runtime thread's ring", &e)
        })?;
        let fd = io.register_fd(dup)?;
        regs.push((ring.id, Arc::downgrade(ring), fd));
        Ok(fd)
    }
}

impl Drop for LocalFile {
    /// Runs when the last handle and the last op of the file are gone (ops hold the file), so
    /// nothing of it is in any ring.
    fn drop(&mut self) {
        for (_, ring, fd) in self.regs.get_mut().drain(..) {
            if let Some(ring) = ring.upgrade()
                && let Err(e) = ring.inner.lock().io.deregister_fd(fd)
            {
                tracing::warn!(%fd, error = %e, "async file system: closing a file on a ring failed");
            }
        }
    }
}

/// What an op on a ring answers, and what it keeps alive until then.
pub(crate) enum LocalReply {
    /// A read or positional write: the byte count and the buffer.
    Transfer(BufReply),
    /// An append: the offset it was given, and the buffer.
    Append(u64, Completer<(Result<u64>, IoBuf)>),
    /// A datasync or fsync.
    Sync(Completer<Result<()>>),
}

/// One op for a ring.
pub(crate) struct LocalOp {
    pub(crate) kind: OpKind,
    pub(crate) file: Arc<LocalFile>,
    pub(crate) buf: Option<IoBuf>,
    pub(crate) offset: u64,
    pub(crate) at: Instant,
    /// Marks a write complete for its path's ordering when dropped (before the answer).
    pub(crate) ticket: Option<WriteTicket>,
    pub(crate) reply: LocalReply,
}

/// What a ring keeps per op in the kernel.
struct InRing {
    kind: OpKind,
    at: Instant,
    _file: Arc<LocalFile>,
    /// An append's buffer (its bytes were staged), handed back with the answer.
    kept: Option<IoBuf>,
    ticket: Option<WriteTicket>,
    reply: LocalReply,
}

/// An op to answer once the ring's lock is released (answers wake tasks and drop files and
/// tickets, which take other locks).
enum Answer {
    Done(InRing, IoCompletion),
    Refused(LocalOp, StorageIoError),
}

/// One ring: the backend, what is in it, and its fd in the reactor.
pub(crate) struct LocalRing {
    id: usize,
    // Field order matters for Drop: the fd leaves the reactor before the ring closes it (a
    // number closed first could be reused and then deregistered by mistake).
    /// The ring's fd in tokio's reactor.
    reactor: AsyncFd<RingFd>,
    inner: Mutex<RingInner>,
    /// The drain task, stopped at shutdown (it holds the ring while it waits).
    drain_task: Mutex<Option<tokio::task::AbortHandle>>,
}

struct RingInner {
    io: UringStorageIo,
    ops: HashMap<IoToken, InRing>,
    /// Ops that found the ring full, in call order; started as slots free up.
    backlog: VecDeque<LocalOp>,
    done: Vec<IoCompletion>,
    stats: IoStats,
    max_in_flight: u64,
    /// Ops submitted here, ever.
    submitted: u64,
    /// The file system is shutting down: new ops are refused.
    closed: bool,
}

/// The ring's fd, as the reactor sees it (the ring owns and closes it).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl LocalRing {
    fn new(config: &IoConfig, id: usize) -> Result<Self> {
        let mut config = config.clone();
        // This ring's owner decides when to enter (see `LocalRing::submit`).
        config.submit_batch = 0;
        let io = UringStorageIo::for_reactor(&config)?;
        let ring_fd = RingFd(io.ring_fd());
        // SAFETY: the fd is the ring's, open for as long as `io` lives; `io` moves into this
        // `LocalRing`'s `inner`, which is declared after `reactor` and so dropped after it: the
        // fd stays open and the same for the whole life of the `AsyncFd`.
        let registered = unsafe { AsyncFd::register_with_interest(ring_fd, Interest::READABLE) };
        let reactor = registered.map_err(|e| {
            StorageIoError::from_os(
                "registering an io_uring fd with the tokio reactor",
                &e.into_parts().1,
            )
        })?;
        Ok(LocalRing {
            id,
            drain_task: Mutex::new(None),
            inner: Mutex::new(RingInner {
                io,
                ops: HashMap::with_capacity(config.queue_depth),
                backlog: VecDeque::new(),
                done: Vec::with_capacity(config.queue_depth),
                stats: IoStats::new(),
                max_in_flight: 0,
                submitted: 0,
                closed: false,
            }),
            reactor,
        })
    }

    /// Starts `op` (or queues it behind a full ring) and enters the kernel once. With
    /// `collect`, completions already there (a read answered from the page cache at submit)
    /// are answered before returning; a caller holding its path's order lock passes `false`.
    pub(crate) fn submit(self: &Arc<Self>, op: LocalOp, collect: bool) {
        let mut answers = Vec::new();
        {
            let mut inner = self.inner.lock();
            if inner.closed {
                answers.push(Answer::Refused(op, StorageIoError::Closed));
            } else if inner.backlog.is_empty() {
                inner.start(self, op, &mut answers);
            } else {
                inner.backlog.push_back(op);
            }
            let reaped = if collect {
                inner.reap(self, &mut answers, Reap::Unsubmitted)
            } else {
                0
            };
            // Decided after the reap: a completion it took no longer promises a later pump,
            // and a reap that took completions enters as a pump would (the tasks they wake
            // refill the kernel's queue without waiting for the next one).
            if reaped > 0 {
                inner.enter_queued();
            } else {
                inner.enter_unless_deferred();
            }
        }
        answer_all(answers);
    }

    /// Takes every completion there is, starts what waited for a slot, answers.
    fn pump(self: &Arc<Self>, wait: Option<Duration>) -> usize {
        let mut answers = Vec::new();
        let pending = {
            let mut inner = self.inner.lock();
            let how = match wait {
                Some(t) => Reap::Wait(t),
                None => Reap::Poll,
            };
            inner.reap(self, &mut answers, how);
            // Every pump hands over what submitters left queued (see `enter_unless_deferred`).
            inner.enter_queued();
            inner.io.pending_count() + inner.backlog.len()
        };
        answer_all(answers);
        pending
    }

    /// Waits until nothing is in the ring or behind it, answering as ops complete.
    fn drain_blocking(self: &Arc<Self>) {
        while self.pump(Some(DRAIN_WAIT)) > 0 {}
    }
}

/// How [`RingInner::reap`] takes completions.
#[derive(Clone, Copy)]
enum Reap {
    /// Enter for queued SQEs, then take what is there.
    Poll,
    /// Take what is there and leave queued SQEs for a later enter.
    Unsubmitted,
    /// Enter and wait up to this long for a completion when ops are pending.
    Wait(Duration),
}

/// A new SQE waits for the ring's next pump instead of its own `io_uring_enter` only while the
/// kernel holds at least this many of the ring's ops: one of them completing wakes the drain
/// task, which enters for everything queued. Below it (one task reading alone) an op enters at
/// once, so its latency is the device's.
const DEFER_WHILE_ENTERED: usize = 2;
/// At most this many SQEs wait for a pump; the one that fills the batch enters for all of them.
const DEFER_AT_MOST: usize = 16;

impl RingInner {
    /// Hands queued SQEs to the kernel unless they may wait for the next pump. Batching the
    /// SQEs of tasks that run between two completions into one enter saves a system call (and
    /// on a virtual disk a doorbell) per op.
    ///
    /// Sound because every pump enters for what is queued, and a pump is sure to come: the
    /// kernel holds ops of this ring whose completions have not been reaped (checked under the
    /// ring's lock, after this submitter's own reap), and the first of them to post makes the
    /// ring's fd readable, which runs the drain task. A completion another submitter's reap
    /// takes first makes that submitter decide again, with the lower count.
    fn enter_unless_deferred(&mut self) {
        let queued = self.io.queued_sqes();
        if queued == 0 || (queued < DEFER_AT_MOST && self.io.entered_ops() >= DEFER_WHILE_ENTERED) {
            return;
        }
        self.enter_queued();
    }

    fn enter_queued(&mut self) {
        if let Err(e) = self.io.submit_queued() {
            tracing::warn!(error = %e, "async file system: io_uring_enter failed; the next reap retries");
        }
    }

    fn start(&mut self, ring: &Arc<LocalRing>, mut op: LocalOp, answers: &mut Vec<Answer>) {
        let fd = match op.file.fd_on(ring, &mut self.io) {
            Ok(fd) => fd,
            Err(e) => return answers.push(Answer::Refused(op, e)),
        };
        let submitted = match op.kind {
            OpKind::Read => self
                .io
                .submit_read(fd, op.buf.take().unwrap_or_else(no_buf), op.offset),
            OpKind::Write => self
                .io
                .submit_write_buf(fd, op.buf.take().unwrap_or_else(no_buf), op.offset),
            // An append's bytes are copied (staged) as on the worker path, so any buffer works
            // on a direct file; the caller's buffer comes back with the answer.
            OpKind::Append => {
                let data = op.buf.as_deref().unwrap_or_default();
                self.io
                    .submit_write(fd, data, op.offset)
                    .map_err(|e| SubmitError::new(e, no_buf()))
            }
            OpKind::Fsync => self
                .io
                .submit_fsync(fd)
                .map_err(|e| SubmitError::new(e, no_buf())),
            OpKind::Datasync => self
                .io
                .submit_datasync(fd)
                .map_err(|e| SubmitError::new(e, no_buf())),
        };
        match submitted {
            Ok(token) => {
                self.stats.record_submit(op.kind);
                self.submitted += 1;
                let in_ring = InRing {
                    kind: op.kind,
                    at: op.at,
                    _file: op.file,
                    kept: op.buf,
                    ticket: op.ticket,
                    reply: op.reply,
                };
                let fresh = self.ops.insert(token, in_ring).is_none();
                debug_assert!(fresh, "a ring hands out each token once");
                let in_flight = self.io.pending_count() as u64;
                self.max_in_flight = self.max_in_flight.max(in_flight);
            }
            Err(refused) => {
                let (error, buf) = refused.into_parts();
                if op.buf.is_none() && !op.kind.is_sync() {
                    op.buf = Some(buf);
                }
                if matches!(error, StorageIoError::QueueFull { .. }) {
                    self.backlog.push_front(op);
                } else {
                    self.stats.record_submit(op.kind);
                    self.stats.record_complete(op.kind, Err(()), op.at.elapsed());
                    answers.push(Answer::Refused(op, error));
                }
            }
        }
    }

    /// Collects completions (as `how` says), then starts backlog ops while the ring has room.
    /// Returns how many completions it took.
    fn reap(&mut self, ring: &Arc<LocalRing>, answers: &mut Vec<Answer>, how: Reap) -> usize {
        let mut reaped = 0;
        loop {
            match how {
                Reap::Wait(t) if self.io.pending_count() > 0 => {
                    if let Err(e) = self.io.wait_completions(&mut self.done, 1, Some(t)) {
                        tracing::warn!(error = %e, "async file system: waiting on a ring failed");
                    }
                }
                Reap::Unsubmitted => {
                    self.io.poll_completions_unsubmitted(&mut self.done);
                }
                Reap::Wait(_) | Reap::Poll => {
                    self.io.poll_completions(&mut self.done);
                }
            }
            let now = Instant::now();
            let got = self.done.len();
            for c in std::mem::take(&mut self.done) {
                let Some(op) = self.ops.remove(&c.token) else {
                    tracing::warn!(token = %c.token, "async file system: completion for an unknown token");
                    continue;
                };
                let outcome = c.result.as_ref().map(|&n| n).map_err(|_| ());
                self.stats.record_complete(op.kind, outcome, now - op.at);
                answers.push(Answer::Done(op, c));
            }
            let mut started = false;
            while let Some(op) = self.backlog.pop_front() {
                let before = self.backlog.len();
                self.start(ring, op, answers);
                if self.backlog.len() > before {
                    break; // the ring is full again
                }
                started = true;
            }
            if started {
                self.enter_queued();
            }
            reaped += got;
            if got == 0 || matches!(how, Reap::Wait(_)) {
                return reaped;
            }
        }
    }
}

fn no_buf() -> IoBuf {
    IoBuf::Vec(Vec::new())
}

/// Answers ops, outside every ring lock.
fn answer_all(answers: Vec<Answer>) {
    for a in answers {
        match a {
            Answer::Done(op, c) => {
                // The write counts as complete for its path before its caller hears of it.
                drop(op.ticket);
                let buf = c.buf.or(op.kept).unwrap_or_else(no_buf);
                match op.reply {
                    LocalReply::Transfer(reply) => drop(reply.complete((c.result, buf))),
                    LocalReply::Append(offset, reply) => {
                        drop(reply.complete((c.result.map(|_| offset), buf)))
                    }
                    LocalReply::Sync(reply) => drop(reply.complete(c.result.map(|_| ()))),
                }
            }
            Answer::Refused(op, error) => {
                drop(op.ticket);
                let buf = op.buf.unwrap_or_else(no_buf);
                match op.reply {
                    LocalReply::Transfer(reply) => drop(reply.complete((Err(error), buf))),
                    LocalReply::Append(_, reply) => drop(reply.complete((Err(error), buf))),
                    LocalReply::Sync(reply) => drop(reply.complete(Err(error))),
                }
            }
        }
    }
}

/// A ring's drain task: wakes when the ring's completion queue has entries (tokio's epoll
/// says its fd is readable) and answers them. Aborted at the file system's shutdown.
async fn drain(ring: Arc<LocalRing>) {
    loop {
        match ring.reactor.readable().await {
            Ok(mut guard) => {
                // Cleared before reaping: a CQE posted after this point raises readiness again.
                guard.clear_ready();
                drop(guard);
                ring.pump(None);
            }
            Err(e) => {
                tracing::error!(error = %e, "async file system: the reactor dropped a ring; its ops are answered at shutdown");
                return;
            }
        }
    }
}
