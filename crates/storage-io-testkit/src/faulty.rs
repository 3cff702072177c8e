//! [`FaultyIo`]: wraps any backend and injects faults on a seeded schedule or at the Nth op.
//!
//! Faults:
//! - **EIO / ENOSPC / EAGAIN** on reads, writes and appends: the op does not reach the inner
//!   backend and completes with that errno (the buffer comes back).
//! - **EIO / ENOSPC / EAGAIN** on datasync/fsync: the sync *does* run on the inner backend (so the
//!   barrier order holds) and its result is replaced by the error, as when the kernel's
//!   writeback failed ("fsyncgate": the data may or may not be on disk).
//! - **Short** reads and writes: only a prefix is transferred and the completion says so with a
//!   short `Ok(n)`. This breaks rule 5 of the contract on purpose, to test code that must not
//!   trust a backend blindly.
//! - **Delay**: the completion is held back for some polls. A sync on the same fd is held at
//!   least as long, so a delayed write is never reported after the sync that covers it.
//! - **Reorder** (plan-wide): each batch of completions is shuffled between syncs.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use storage_io_core::backend_kit::{TokenCounter, WakeState, deliver_ready};
use storage_io_core::{
    AlignedBuf, Capabilities, IoBuf, IoCompletion, IoFd, IoStats, IoToken, OpKind, OpenOptions, OpenedFd,
    Result, StorageIo, StorageIoError, SubmitError, WaitWaker,
};

/// The errno values injected.
pub mod errno {
    /// I/O error.
    pub const EIO: i32 = 5;
    /// Try again.
    pub const EAGAIN: i32 = 11;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with `EIO`.
    Eio,
    /// Fail with `ENOSPC`.
    Enospc,
    /// Fail with `EAGAIN`.
    Eagain,
    /// Transfer only the first half (at least one byte fewer than asked) and report that.
    Short,
    /// Hold the completion back for this many polls.
    Delay {
        /// Polls to wait before delivering.
        polls: u32,
    },
}

impl Fault {
    fn errno(self) -> Option<i32> {
        match self {
            Fault::Eio => Some(errno::EIO),
            Fault::Enospc => Some(errno::ENOSPC),
            Fault::Eagain => Some(errno::EAGAIN),
            Fault::Short | Fault::Delay { .. } => None,
        }
    }
}

/// When a rule fires, counted over the ops it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    /// Only the Nth matching op (1-based).
    Nth(u64),
    /// The Nth matching op and every one after it (a disk that stays broken).
    FromNth(u64),
    /// Every matching op with this probability, from the plan's seed.
    Probability(f64),
}

/// A rule: which ops (`None` = any kind), when, and what fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// The op kind this rule watches; `None` matches every kind.
    pub op: Option<OpKind>,
    /// When it fires.
    pub when: When,
    /// What it injects.
    pub fault: Fault,
}

/// The schedule of faults for one [`FaultyIo`].
///
/// ```
/// use storage_io_core::OpKind;
/// use storage_io_testkit::faulty::{Fault, FaultPlan};
/// // The third datasync fails with EIO; one write in ten is delayed by two polls.
/// let plan = FaultPlan::new(42)
///     .fail_nth(OpKind::Datasync, 3, Fault::Eio)
///     .with_probability(Some(OpKind::Write), 0.1, Fault::Delay { polls: 2 });
/// assert_eq!(plan.rules().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    rules: Vec<FaultRule>,
    reorder: bool,
    switch: Option<FaultSwitch>,
}

/// A switch a test shares with the [`FaultyIo`] backends of a plan made with
/// [`FaultPlan::only_while`]: while it is off, no rule of the plan fires (nor counts an op), so
/// a test can fill the disk and free it again from outside a component that owns its backends.
///
/// ```
/// use storage_io_core::{OpKind, OpenOptions, StorageIo};
/// use storage_io_testkit::faulty::{Fault, FaultPlan, FaultSwitch, FaultyIo};
/// use storage_io_testkit::memio::MemFs;
///
/// let full = FaultSwitch::new();
/// let plan = FaultPlan::new(1)
///     .with_probability(Some(OpKind::Write), 1.0, Fault::Enospc)
///     .only_while(&full);
/// let mut io = FaultyIo::new(MemFs::new(1).backend(), plan);
/// let fd = io.open_file("/f".as_ref(), &OpenOptions::create()).unwrap();
/// let mut done = Vec::new();
/// full.set(true);
/// io.submit_write(fd, b"x", 0).unwrap();
/// io.wait_completions(&mut done, 1, None).unwrap();
/// assert_eq!(done.pop().unwrap().result.unwrap_err().errno(), 28); // ENOSPC
/// full.set(false);
/// io.submit_write(fd, b"x", 0).unwrap();
/// io.wait_completions(&mut done, 1, None).unwrap();
/// assert!(done.pop().unwrap().result.is_ok());
/// ```
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// A switch, off.
    pub fn new() -> Self {
        FaultSwitch::default()
    }

    /// Turns the plan's faults on or off (from the next op on).
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Release);
    }

    /// True while the plan's faults are on.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl PartialEq for FaultSwitch {
    /// Two switches are equal when they are the same switch.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl FaultPlan {
    /// An empty plan (no faults) with the seed for probabilistic rules and reordering.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            rules: Vec::new(),
            reorder: false,
            switch: None,
        }
    }

    /// Makes every rule of the plan fire only while `switch` is on.
    pub fn only_while(mut self, switch: &FaultSwitch) -> Self {
        self.switch = Some(switch.clone());
        self
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The Nth op of kind `op` (1-based) gets `fault`.
    pub fn fail_nth(self, op: OpKind, n: u64, fault: Fault) -> Self {
        self.rule(FaultRule {
            op: Some(op),
            when: When::Nth(n),
            fault,
        })
    }

    /// The Nth op of kind `op` and every later one get `fault`.
    pub fn fail_from_nth(self, op: OpKind, n: u64, fault: Fault) -> Self {
        self.rule(FaultRule {
            op: Some(op),
            when: When::FromNth(n),
            fault,
        })
    }

    /// Every op of kind `op` (or any kind) gets `fault` with probability `p`.
    pub fn with_probability(self, op: Option<OpKind>, p: f64, fault: Fault) -> Self {
        self.rule(FaultRule {
            op,
            when: When::Probability(p.clamp(0.0, 1.0)),
            fault,
        })
    }

    /// Shuffles each batch of completions (between syncs) before delivering it.
    pub fn reorder(mut self, on: bool) -> Self {
        self.reorder = on;
        self
    }

    /// The rules, in the order they are checked (the first that fires wins).
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }
}

/// What to do with the inner completion of an op that was passed through.
#[derive(Debug, Clone, Copy)]
struct Passed {
    outer: IoToken,
    fault: Option<Fault>,
    /// For a short fault: the length reported.
    short_len: usize,
}

/// A backend wrapper that injects faults according to a [`FaultPlan`].
///
/// Tokens are its own (one counter), so injected and passed-through ops never collide.
pub struct FaultyIo<B> {
    inner: B,
    plan: FaultPlan,
    rng: SmallRng,
    /// Matching-op counters, one per rule.
    seen: Vec<u64>,
    tokens: TokenCounter,
    passed: HashMap<IoToken, Passed>,
    ready: VecDeque<IoCompletion>,
    /// Completions held back: (poll number at which to release, completion).
    delayed: Vec<(u64, IoCompletion)>,
    polls: u64,
    pending: usize,
    scratch: Vec<IoCompletion>,
    injected: u64,
    /// The wake state of this wrapper's wakers (set up by the first `wait_waker`): a wake
    /// ends this wrapper's wait loop, not only the inner backend's current wait.
    wake: Option<Arc<WakeState>>,
}

impl<B: StorageIo> FaultyIo<B> {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: B, plan: FaultPlan) -> Self {
        let seen = vec![0; plan.rules.len()];
        FaultyIo {
            rng: SmallRng::seed_from_u64(plan.seed),
            inner,
            plan,
            seen,
            tokens: TokenCounter::new(),
            passed: HashMap::new(),
            ready: VecDeque::new(),
            delayed: Vec::new(),
            polls: 0,
            wake: None,
            pending: 0,
            scratch: Vec::new(),
            injected: 0,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably (ops submitted directly bypass the faults).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// How many faults have been injected so far.
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// Replaces the plan (counters restart).
    pub fn set_plan(&mut self, plan: FaultPlan) {
        self.seen = vec![0; plan.rules.len()];
        self.rng = SmallRng::seed_from_u64(plan.seed);
        self.plan = plan;
    }

    /// Decides the fault, if any, for the next op of kind `op`.
    fn decide(&mut self, op: OpKind) -> Option<Fault> {
        if self.plan.switch.as_ref().is_some_and(|s| !s.is_on()) {
            return None;
        }
        let mut chosen = None;
        for (i, rule) in self.plan.rules.iter().enumerate() {
            if rule.op.is_some_and(|k| k != op) {
                continue;
            }
            self.seen[i] += 1;
            let n = self.seen[i];
            let fires = match rule.when {
                When::Nth(k) => n == k,
                When::FromNth(k) => n >= k,
                When::Probability(p) => self.rng.random_bool(p),
            };
            if fires && chosen.is_none() {
                chosen = Some(rule.fault);
            }
        }
        if chosen.is_some() {
            self.injected += 1;
        }
        chosen
    }

    /// Completes an op without passing it on.
    fn inject(
        &mut self,
        op: OpKind,
        fd: IoFd,
        offset: u64,
        len: usize,
        errno: i32,
        buf: Option<IoBuf>,
    ) -> IoToken {
        let token = self.tokens.next_token();
        self.pending += 1;
        self.ready.push_back(IoCompletion {
            token,
            op,
            fd,
            offset,
            len_requested: len,
            result: Err(StorageIoError::os(op, errno)),
            buf,
        });
        token
    }

    fn pass(&mut self, inner: IoToken, fault: Option<Fault>, short_len: usize) -> IoToken {
        let outer = self.tokens.next_token();
        self.pending += 1;
        self.passed.insert(
            inner,
            Passed {
                outer,
                fault,
                short_len,
            },
        );
        outer
    }

    fn write_like(&mut self, op: OpKind, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        let fault = self.decide(op);
        if let Some(e) = fault.and_then(Fault::errno) {
            // Offsets of failed appends are not known to the inner backend; report 0.
            return Ok(self.inject(op, fd, offset, data.len(), e, None));
        }
        let short = fault == Some(Fault::Short) && !data.is_empty();
        let send = if short { &data[..data.len() / 2] } else { data };
        let inner = match op {
            OpKind::Append => self.inner.submit_append(fd, send)?,
            _ => self.inner.submit_write(fd, send, offset)?,
        };
        Ok(self.pass(inner, fault, send.len()))
    }

    fn sync_like(&mut self, op: OpKind, fd: IoFd) -> Result<IoToken> {
        let fault = self.decide(op);
        let inner = if op == OpKind::Fsync {
            self.inner.submit_fsync(fd)?
        } else {
            self.inner.submit_datasync(fd)?
        };
        Ok(self.pass(inner, fault, 0))
    }

    /// Pulls the inner backend's completions, applies faults, and moves released ones to `ready`.
    fn pump(&mut self, inner_done: usize) {
        let _ = inner_done;
        self.polls += 1;
        let mut batch = std::mem::take(&mut self.scratch);
        for mut c in batch.drain(..) {
            let Some(p) = self.passed.remove(&c.token) else {
                continue;
            };
            c.token = p.outer;
            let mut delay = 0;
            match p.fault {
                Some(Fault::Short) => {
                    if let Ok(n) = c.result {
                        let short = match c.op {
                            OpKind::Read => n / 2,
                            _ => p.short_len.min(n),
                        };
                        c.result = Ok(short);
                        if let (Some(b), OpKind::Read) = (c.buf.as_mut(), c.op) {
                            b.truncate(short);
                        }
                    }
                }
                Some(Fault::Delay { polls }) => delay = u64::from(polls),
                Some(f) => {
                    if let Some(e) = f.errno() {
                        c.result = Err(StorageIoError::os(c.op, e));
                    }
                }
                None => {}
            }
            if c.op.is_sync() {
                // Never let a sync overtake a delayed write of its fd.
                let held = self
                    .delayed
                    .iter()
                    .filter(|(_, d)| d.fd == c.fd && d.op.is_write())
                    .map(|(at, _)| *at)
                    .max();
                if let Some(at) = held {
                    self.delayed.push((at.max(self.polls + delay), c));
                    continue;
                }
            }
            if delay > 0 {
                self.delayed.push((self.polls + delay, c));
            } else {
                self.ready.push_back(c);
            }
        }
        self.scratch = batch;
        // Release delayed completions whose time has come, in the order they were held.
        let now = self.polls;
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, c) = self.delayed.remove(i);
                self.ready.push_back(c);
            } else {
                i += 1;
            }
        }
        if self.plan.reorder {
            self.shuffle_ready();
        }
    }

    /// Shuffles `ready` within runs that contain no sync, so every sync stays after the writes
    /// delivered before it.
    fn shuffle_ready(&mut self) {
        let slice = self.ready.make_contiguous();
        let mut start = 0;
        for i in 0..=slice.len() {
            if i == slice.len() || slice[i].op.is_sync() {
                slice[start..i].shuffle(&mut self.rng);
                start = i + 1;
            }
        }
    }

    fn deliver(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        deliver_ready(&mut self.ready, &mut self.pending, out)
    }
}

storage_io_core::forward_namespace!([B: StorageIo] FaultyIo<B> => inner);

impl<B: StorageIo> StorageIo for FaultyIo<B> {
    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        c.notes.push(format!(
            "wrapped by FaultyIo with {} rule(s)",
            self.plan.rules.len()
        ));
        c
    }

    fn name(&self) -> &'static str {
        "faulty"
    }

    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        self.inner.register_fd(file)
    }

    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        self.inner.deregister_fd(fd)
    }

    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        self.inner.open_file(path, options)
    }
    /// Opens through the inner backend but withholds the second OS handle (`file: None`): a
    /// caller that wrote or synced through it (the WAL's `inline_io` does, where there is one)
    /// would go around the faults this wrapper exists to inject.
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        let opened = self.inner.open_file_with_mode(path, options)?;
        Ok(OpenedFd { file: None, ..opened })
    }

    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        self.inner.file_len(fd)
    }

    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        self.inner.alloc_buf(len)
    }

    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let fault = self.decide(OpKind::Read);
        if let Some(e) = fault.and_then(Fault::errno) {
            let len = buf.len();
            return Ok(self.inject(OpKind::Read, fd, offset, len, e, Some(buf)));
        }
        let inner = self.inner.submit_read(fd, buf, offset)?;
        Ok(self.pass(inner, fault, 0))
    }

    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        self.write_like(OpKind::Write, fd, data, offset)
    }

    fn submit_write_buf(
        &mut self,
        fd: IoFd,
        mut buf: IoBuf,
        offset: u64,
    ) -> Result<IoToken, SubmitError<IoBuf>> {
        let fault = self.decide(OpKind::Write);
        if let Some(e) = fault.and_then(Fault::errno) {
            let len = buf.len();
            return Ok(self.inject(OpKind::Write, fd, offset, len, e, Some(buf)));
        }
        let short_len = if fault == Some(Fault::Short) && !buf.is_empty() {
            let half = buf.len() / 2;
            buf.truncate(half);
            half
        } else {
            buf.len()
        };
        let inner = self.inner.submit_write_buf(fd, buf, offset)?;
        Ok(self.pass(inner, fault, short_len))
    }

    /// Faults as for `submit_write`; the bytes pass to the inner backend's own
    /// `submit_write_bytes` (a short fault sends their first half).
    fn submit_write_bytes(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        let fault = self.decide(OpKind::Write);
        if let Some(e) = fault.and_then(Fault::errno) {
            return Ok(self.inject(OpKind::Write, fd, offset, data.len(), e, None));
        }
        let send = if fault == Some(Fault::Short) && !data.is_empty() {
            data.slice(..data.len() / 2)
        } else {
            data
        };
        let len = send.len();
        let inner = self.inner.submit_write_bytes(fd, send, offset)?;
        Ok(self.pass(inner, fault, len))
    }

    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        self.write_like(OpKind::Append, fd, data, 0)
    }

    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync_like(OpKind::Datasync, fd)
    }

    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync_like(OpKind::Fsync, fd)
    }

    fn flush(&mut self) -> Result<usize> {
        self.inner.flush()
    }

    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        let n = self.inner.poll_completions(&mut scratch);
        self.scratch = scratch;
        self.pump(n);
        self.deliver(out)
    }

    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let mut scratch = std::mem::take(&mut self.scratch);
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let want = if self.inner.pending_count() > 0 && self.ready.len() < min {
                1
            } else {
                0
            };
            // A wake pending for this wrapper ends the wait before it blocks; one that comes
            // while the inner backend waits ends the inner wait (the kick wakes it) and then
            // this loop.
            if want > 0 && self.wake.as_ref().is_some_and(|w| !w.arm()) {
                self.scratch = scratch;
                break;
            }
            let r = self.inner.wait_completions(&mut scratch, want, left);
            let woken = want > 0 && self.wake.as_ref().is_some_and(|w| w.disarm());
            self.scratch = scratch;
            r?;
            self.pump(0);
            let nothing_left = self.inner.pending_count() == 0 && self.delayed.is_empty();
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if self.ready.len() >= min || nothing_left || timed_out || woken {
                break;
            }
        }
        Ok(self.deliver(out))
    }

    /// The inner backend's waker, behind a wake state of this wrapper's own (so that a wake
    /// also ends this wrapper's wait loop); `None` when the inner backend has none.
    fn wait_waker(&mut self) -> Option<WaitWaker> {
        let inner = self.inner.wait_waker()?;
        let state = Arc::clone(self.wake.get_or_insert_with(|| Arc::new(WakeState::new())));
        Some(WaitWaker::new(state, move || inner.wake()))
    }

    fn pending_count(&self) -> usize {
        self.pending
    }

    fn stats(&self) -> &IoStats {
        self.inner.stats()
    }
}
