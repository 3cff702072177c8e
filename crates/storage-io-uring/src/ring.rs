//! [`UringStorageIo`]: the io_uring backend.
//!
//! Layout of one instance:
//! - one ring, SQ = `sq_depth` (default `queue_depth`), CQ = 2 × the larger of the two (at
//!   least that + 3, for the wake read and the two wait timers of [`RingTimers`]); at most
//!   `queue_depth` ops in flight
//!   (each holds one op slot), so the CQ cannot overflow — and if the kernel ever reports an
//!   overflow anyway, the next enter flushes it (`IORING_FEAT_NODROP`);
//! - preallocated op slots; an SQE's `user_data` is its slot index;
//! - a sparse fixed-file table of `max_files` entries: `register_fd` fills the slot with the same
//!   index as the `IoFd`, and SQEs use `types::Fixed`;
//! - a pool of `queue_depth` registered buffers of `buffer_size` bytes (a [`FixedBufs`] area).
//!   [`StorageIo::alloc_buf`] lends them to callers, and I/O on a lent buffer is done in place
//!   with `ReadFixed`/`WriteFixed`. A read into any other buffer is staged in a free registered
//!   buffer and copied out on completion, and a copied write (`submit_write`, `submit_append`)
//!   is staged in one; with none free or a transfer too big, plain `Read`/`Write` on the
//!   caller's memory. If registration fails (RLIMIT_MEMLOCK), the backend runs unregistered
//!   and says so in `capabilities().notes`.
//!
//! **Datasync barrier.** io_uring does not order SQEs. A datasync/fsync on fd F is held in user
//! space while any write to F is in the kernel, and pushed when the last one is reaped; writes to
//! F submitted while a sync is held queue behind it. `IOSQE_IO_DRAIN` would stall every file's
//! ops behind the sync, and `IOSQE_IO_LINK` only chains SQEs submitted together, so neither
//! covers "every earlier write to F" without hurting unrelated I/O.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use storage_io_core::{
    AlignedBuf, Capabilities, DatasyncBarrier, FdTable, FixedBufs, IoBuf, IoCompletion, IoConfig, IoFd,
    IoStats, IoToken, NowaitGate, NowaitRead, OpKind, Result, StorageIo, StorageIoError, SubmitError,
    TokenCounter, WaitWaker, WakeState, deliver_ready, file_facts, file_len_of, plan_write,
    stage_cached_read, try_cached_read, validate_transfer,
};

use crate::probe::{ProbeReport, Unavailable, probe, unavailable_from};

/// How often one op may come back with `EAGAIN`/`EINTR` before the error is reported.
const MAX_RETRIES: u32 = 64;

/// Tries to make room in a full SQ before the kernel is taken to refuse it for good.
const SQ_FULL_ROUNDS: usize = 1024;

/// `user_data` of the read on the wake eventfd (op slots use their index, far below this).
const WAKE_TAG: u64 = u64::MAX;

/// What [`StorageIo::wait_waker`] needs: an eventfd with a read on it in the ring while the
/// owner blocks. A waker writes the eventfd, the read completes, and the CQE ends the wait.
struct RingWake {
    state: Arc<WakeState>,
    efd: Arc<OwnedFd>,
    /// Where the read puts the eventfd counter; boxed so its address is stable.
    counter: Box<u64>,
    /// The read is in the ring (pushed and not yet reaped).
    read_armed: bool,
}

impl RingWake {
    fn new() -> std::io::Result<Self> {
        // A blocking eventfd: io_uring completes a read on an O_NONBLOCK file at once with
        // EAGAIN instead of waiting for a write.
        // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(RingWake {
            state: Arc::new(WakeState::new()),
            efd: Arc::new(efd),
            counter: Box::new(0),
            read_armed: false,
        })
    }

    fn waker(&self) -> WaitWaker {
        let efd = Arc::clone(&self.efd);
        WaitWaker::new(Arc::clone(&self.state), move || kick_eventfd(efd.as_raw_fd()))
    }
}

/// `user_data` of the ring timers (IORING_OP_TIMEOUT); slot `i` uses `TIMER_TAG - i`.
const TIMER_TAG: u64 = u64::MAX - 1;

/// Deadlines of blocking waits, kept in the ring as IORING_OP_TIMEOUT ops.
///
/// A timeout passed with `IORING_ENTER_EXT_ARG` makes the kernel arm and cancel a timer on every
/// `io_uring_enter`; at qd 1 that was about 4 % more CPU per read than waiting without one (the
/// bench's hang guard waits with 10 s). A timer op in the ring instead serves every later wait
/// whose deadline is no earlier than it, so a loop of waits with a far deadline arms one timer
/// per deadline, not one per wait. A wait that a timer serves asks the kernel for one CQE, since
/// the timer's CQE must be able to end it.
struct RingTimers {
    /// The absolute CLOCK_MONOTONIC expiry each timer was armed with. Boxed so the address in
    /// the SQE stays put; the kernel copies the value when it takes the SQE.
    ts: [Box<types::Timespec>; 2],
    /// When each timer fires; `None` while it is not in the ring.
    fires_at: [Option<Instant>; 2],
}

impl RingTimers {
    fn new() -> Self {
        RingTimers {
            ts: [Box::new(types::Timespec::new()), Box::new(types::Timespec::new())],
            fires_at: [None, None],
        }
    }

    /// A timer in the ring that fires no later than `deadline`.
    fn covers(&self, deadline: Instant) -> bool {
        self.fires_at.iter().flatten().any(|&t| t <= deadline)
    }

    /// Its CQE arrived (expired, or cancelled as the ring closed).
    /// Forgets the timer `entry` was built for (its SQE never reached the ring).
    fn disarm(&mut self, entry: &squeue::Entry) {
        if let Some(i @ 0..=1) = TIMER_TAG.checked_sub(entry.get_user_data()) {
            self.fires_at[i as usize] = None;
        }
    }

    fn reaped(&mut self, user_data: u64) -> bool {
        match TIMER_TAG.checked_sub(user_data) {
            Some(i @ 0..=1) => {
                self.fires_at[i as usize] = None;
                true
            }
            _ => false,
        }
    }

    /// Builds the SQE of a free timer firing at `deadline` (`left` from now); `None` when both
    /// are in the ring.
    fn arm(&mut self, deadline: Instant, left: Duration) -> Option<squeue::Entry> {
        let i = self.fires_at.iter().position(Option::is_none)?;
        let expiry = monotonic_now().checked_add(left)?;
        *self.ts[i] = types::Timespec::from(expiry);
        self.fires_at[i] = Some(deadline);
        let ts: *const types::Timespec = &*self.ts[i];
        Some(
            opcode::Timeout::new(ts)
                .flags(types::TimeoutFlags::ABS)
                .build()
                .user_data(TIMER_TAG - i as u64),
        )
    }
}

/// CLOCK_MONOTONIC now (the clock of `Instant` and of absolute io_uring timeouts).
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live local it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Adds 1 to an eventfd counter. The counter only overflows after 2^64 - 2 unread kicks, and a
/// failed kick can only delay the owner until its next completion, so errors are ignored.
fn kick_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64 to an fd the caller keeps open.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Where the bytes of an op live while the kernel has them.
enum Payload {
    /// Nothing (free slot, or a sync).
    None,
    /// A read straight into the caller's buffer (in place with `ReadFixed` when it is one of
    /// our registered buffers).
    Read(IoBuf),
    /// A read into a registered staging buffer, copied into the caller's buffer on completion.
    ReadStaged { staging: AlignedBuf, user: IoBuf },
    /// A write of the caller's owned buffer (handed back; `WriteFixed` when it is registered).
    WriteOwned(IoBuf),
    /// A copied write, staged in a registered buffer or in backend heap memory (recycled).
    WriteStaged(AlignedBuf),
    /// datasync or fsync.
    Sync,
}

struct Slot {
    token: IoToken,
    op: OpKind,
    fd: IoFd,
    offset: u64,
    len: usize,
    /// Bytes transferred so far (short transfers are continued).
    done: usize,
    retries: u32,
    payload: Payload,
    started: Instant,
}

impl Slot {
    fn empty() -> Self {
        Slot {
            token: IoToken(0),
            op: OpKind::Read,
            fd: IoFd {
                slot: 0,
                generation: 0,
            },
            offset: 0,
            len: 0,
            done: 0,
            retries: 0,
            payload: Payload::None,
            started: Instant::now(),
        }
    }
}

struct UringFile {
    file: File,
    raw: RawFd,
    align: Option<usize>,
    append_cursor: u64,
    /// Ops of this fd in the kernel or held.
    ops_in_flight: usize,
    /// Writes of this fd in the kernel.
    writes_in_kernel: usize,
    /// Slots held back by the datasync barrier, in submission order.
    held: DatasyncBarrier<u32>,
    /// Whether to try this file's next read from the page cache (`nowait_reads`).
    nowait: NowaitGate,
}

/// The registered-buffer index of `buf` when it is one of `fixed`'s buffers.
fn registered_index(fixed: Option<&FixedBufs>, buf: &IoBuf) -> Option<u16> {
    match (fixed, buf) {
        (Some(f), IoBuf::Aligned(b)) => f.index_of(b),
        _ => None,
    }
}

/// The io_uring backend. Build it with [`UringStorageIo::new`]; it fails with a typed reason
/// (never a panic) when io_uring is unavailable.
///
/// ```no_run
/// use storage_io_core::{IoConfig, OpenOptions, StorageIo};
/// use storage_io_uring::UringStorageIo;
///
/// let mut io = UringStorageIo::new(&IoConfig::default()).expect("io_uring available");
/// let fd = io.open_file("data.bin".as_ref(), &OpenOptions::create().with_direct(true)).unwrap();
/// io.submit_write(fd, &[7u8; 4096], 0).unwrap();
/// io.submit_datasync(fd).unwrap();
/// let mut done = Vec::new();
/// io.wait_completions(&mut done, 2, None).unwrap();
/// ```
pub struct UringStorageIo {
    // Field order matters for Drop: the ring closes (and unregisters buffers and files) before
    // the buffer memory and the files are freed.
    ring: IoUring,
    /// The registered buffers. Lent buffers hold the memory alive past the ring, and the
    /// ring's close unregisters it before this field drops.
    fixed: Option<FixedBufs>,
    files: FdTable<UringFile>,
    config: IoConfig,
    registered_files: bool,
    sqpoll: bool,
    ext_arg: bool,
    notes: Vec<String>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    tokens: TokenCounter,
    ready: VecDeque<IoCompletion>,
    /// Accepted and not yet delivered.
    pending: usize,
    /// SQEs the kernel owns or will own (pushed, not yet reaped).
    in_kernel: usize,
    /// Staging memory for copied writes that get no registered buffer.
    heap_staging: Vec<AlignedBuf>,
    /// Reaped CQEs waiting to be processed (preallocated; no allocation while reaping).
    reaped: Vec<(u64, i32)>,
    /// `reap` is running: a nested call returns at once (the running one takes what is left).
    reaping: bool,
    /// Slots to push (continuations, released syncs) that came up while reaping. They are
    /// pushed after the batch, never from inside it: pushing into a full SQ may need an enter
    /// that reaps. Empty whenever `reap` is not running. Counted in `in_kernel` already.
    deferred: VecDeque<u32>,
    /// Reads and writes done in place on a caller's lent registered buffer.
    in_place_ops: u64,
    /// Reads answered from the page cache at submit (`nowait_reads`), never in the ring.
    nowait_hits: u64,
    stats: IoStats,
    report: ProbeReport,
    /// Set up by the first `wait_waker` call.
    wake: Option<RingWake>,
    timers: RingTimers,
    /// Unit tests only: `io_uring_enter` failures to inject.
    #[cfg(test)]
    enter_fault: Option<EnterFault>,
}

/// Unit tests only: makes every `every`-th `io_uring_enter` fail with `errno` (before the system
/// call, so nothing is submitted), `left` times.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
struct EnterFault {
    errno: i32,
    every: u32,
    left: u32,
    calls: u32,
}

// SAFETY: UringStorageIo owns its ring, buffers and files outright; the raw pointers inside
// (registered buffer memory, SQE addresses) point only into memory this struct owns. Nothing is
// shared with another thread, so moving the whole instance to another thread is sound, which is
// all `Send` permits (it is not `Sync`).
unsafe impl Send for UringStorageIo {}

impl UringStorageIo {
    /// Builds the ring. Fails with `Unsupported` naming the reason when io_uring cannot be used,
    /// or when SQPOLL was asked for and the kernel refused it.
    pub fn new(config: &IoConfig) -> Result<Self> {
        config.validate()?;
        let report = probe().map_err(unsupported)?;
        let sq = u32::try_from(config.effective_sq_depth()).unwrap_or(u32::MAX);
        // The CQ holds every op in flight twice over, whichever of the SQ and the in-flight cap
        // is larger, and always has room for the wake read and the two ring timers besides.
        let most = u32::try_from(config.effective_sq_depth().max(config.queue_depth)).unwrap_or(u32::MAX);
        let cq = most.saturating_mul(2).max(most.saturating_add(3));
        // COOP_TASKRUN + TASKRUN_FLAG (Linux 5.19+): completions do not interrupt this thread
        // with an IPI; they are run at our next io_uring_enter, and the SQ ring's TASKRUN flag
        // tells a non-blocking poll when to enter. SINGLE_ISSUER/DEFER_TASKRUN are not used:
        // a backend is `Send` and may move to another thread between calls.
        let build = |coop: bool| {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq);
            if coop {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            if let Some(idle_ms) = config.sqpoll_idle_ms {
                builder.setup_sqpoll(idle_ms);
            }
            builder.build(sq)
        };
        let (ring, coop_taskrun) = match build(true) {
            Ok(ring) => (Ok(ring), true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (build(false), false),
            Err(e) => (Err(e), false),
        };
        let ring = ring.map_err(|e| {
            let why = unavailable_from(&e);
            if config.sqpoll_idle_ms.is_some() {
                StorageIoError::Unsupported {
                    what: format!(
                        "io_uring with SQPOLL could not be set up: {why} (turn sqpoll_idle_ms off)"
                    )
                    .into(),
                }
            } else {
                unsupported(why)
            }
        })?;
        let mut notes = vec![format!("kernel {}", report.kernel)];
        if !coop_taskrun {
            notes.push("kernel lacks IORING_SETUP_COOP_TASKRUN; completions interrupt the thread".into());
        }
        if !report.nodrop {
            notes.push("kernel lacks IORING_FEAT_NODROP; in-flight ops are capped at queue_depth".into());
        }

        let max_files = u32::try_from(config.max_files).unwrap_or(u32::MAX);
        let registered_files = match ring.submitter().register_files_sparse(max_files) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not register a fixed-file table; using plain fds");
                notes.push(format!("registered files off: {e}"));
                false
            }
        };

        if let Some(why) = sqpoll_refusal(
            config.sqpoll_idle_ms.is_some(),
            registered_files,
            ring.params().is_feature_sqpoll_nonfixed(),
        ) {
            return Err(StorageIoError::Unsupported { what: why.into() });
        }

        let fixed = if config.fixed_buffers {
            match register_buffers(
                &ring,
                config.queue_depth.min(u16::MAX as usize),
                config.buffer_size,
            ) {
                Ok(f) => Some(f),
                Err(e) => {
                    let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                        " (RLIMIT_MEMLOCK too low: raise ulimit -l or lower queue_depth/buffer_size)"
                    } else {
                        ""
                    };
                    tracing::warn!(error = %e, "{}", format!("running without registered buffers{hint}"));
                    notes.push(format!("registered buffers off: {e}{hint}"));
                    None
                }
            }
        } else {
            None
        };

        let slots = (0..config.queue_depth).map(|_| Slot::empty()).collect();
        Ok(UringStorageIo {
            sqpoll: config.sqpoll_idle_ms.is_some(),
            ext_arg: report.ext_arg,
            ring,
            fixed,
            files: FdTable::with_capacity(config.max_files),
            config: config.clone(),
            registered_files,
            notes,
            slots,
            free_slots: (0..config.queue_depth as u32).rev().collect(),
            tokens: TokenCounter::new(),
            ready: VecDeque::with_capacity(config.queue_depth),
            pending: 0,
            in_kernel: 0,
            heap_staging: Vec::with_capacity(config.queue_depth),
            reaped: Vec::with_capacity(config.queue_depth * 2),
            reaping: false,
            deferred: VecDeque::with_capacity(config.queue_depth),
            in_place_ops: 0,
            nowait_hits: 0,
            stats: IoStats::new(),
            report,
            wake: None,
            timers: RingTimers::new(),
            #[cfg(test)]
            enter_fault: None,
        })
    }

    /// What the probe found when this instance was built.
    pub fn probe_report(&self) -> &ProbeReport {
        &self.report
    }

    /// How many reads and writes were done in place on a buffer this backend lent
    /// ([`StorageIo::alloc_buf`]), with no copy through its own registered memory.
    pub fn in_place_ops(&self) -> u64 {
        self.in_place_ops
    }

    /// How many reads were answered from the page cache at submit (`IoConfig::nowait_reads`),
    /// without entering the ring.
    pub fn nowait_hits(&self) -> u64 {
        self.nowait_hits
    }

    /// This backend's side of [`try_cached_read`]: the read of `buf` at `offset` from the page
    /// cache, tried on this thread when `nowait_reads` and the file allow it.
    fn try_nowait(&mut self, fd: IoFd, buf: &mut IoBuf, offset: u64) -> Option<(NowaitRead, Instant)> {
        let enabled = self.config.nowait_reads;
        let f = self.files.get_mut(fd).ok()?;
        try_cached_read(enabled, f.align, &mut f.nowait, f.raw, buf.as_mut_slice(), offset)
    }

    fn admit(&self) -> Result<()> {
        if self.pending >= self.config.queue_depth || self.free_slots.is_empty() {
            return Err(StorageIoError::QueueFull {
                limit: self.config.queue_depth,
            });
        }
        Ok(())
    }

    /// Takes a slot, fills it, and pushes its SQE (or holds it behind a barrier). On failure
    /// (no free slot, or the SQ could not take the entry) nothing was accepted and the payload
    /// comes back with the error.
    #[allow(clippy::result_large_err)] // a refusal hands the payload back; boxing it would allocate on that path
    #[allow(clippy::too_many_arguments)] // the op's fields, as the slot stores them
    fn start(
        &mut self,
        fd: IoFd,
        op: OpKind,
        offset: u64,
        len: usize,
        done: usize,
        payload: Payload,
    ) -> Result<IoToken, (StorageIoError, Payload)> {
        let Some(idx) = self.free_slots.pop() else {
            let limit = self.config.queue_depth;
            return Err((StorageIoError::QueueFull { limit }, payload));
        };
        let token = self.tokens.next_token();
        self.slots[idx as usize] = Slot {
            token,
            op,
            fd,
            offset,
            len,
            done,
            retries: 0,
            payload,
            started: Instant::now(),
        };
        self.pending += 1;
        let hold = match self.files.get_mut(fd) {
            Ok(f) => {
                f.ops_in_flight += 1;
                f.held.must_hold(op, f.writes_in_kernel)
            }
            Err(_) => false,
        };
        if hold {
            if let Ok(f) = self.files.get_mut(fd) {
                f.held.hold(idx);
            }
        } else if let Err(e) = self.push_slot(idx) {
            // The SQ never took it: undo the admission and hand the payload back.
            let payload = std::mem::replace(&mut self.slots[idx as usize].payload, Payload::None);
            self.free_slots.push(idx);
            self.pending -= 1;
            if let Ok(f) = self.files.get_mut(fd) {
                f.ops_in_flight -= 1;
            }
            return Err((StorageIoError::from_io(op, &e), payload));
        }
        self.stats.record_submit(op);
        // Hand queued SQEs over once `submit_batch` wait, except a lone SQE while the kernel has
        // nothing else of ours: then the caller's next wait submits it in the same system call
        // (at qd 1 that halves the io_uring_enter calls), and a second submit releases both.
        let batch = self.config.submit_batch;
        let queued = self.ring.submission().len();
        let busy = self.in_kernel > queued;
        if batch > 0 && queued >= batch && (queued > 1 || busy) {
            // A failure leaves the SQEs queued; flush/poll/wait hand them over and report it.
            let _ = self.enter(0, None);
        }
        Ok(token)
    }

    /// Builds and pushes the SQE for slot `idx` (for its remaining bytes). While reaping, the
    /// slot is queued in `deferred` instead, and `reap` pushes it after the batch. Either way it
    /// counts as in the kernel from now on (so a held sync keeps waiting for a deferred write).
    /// On `Err` the SQ could not take it (a persistent enter failure) and nothing was counted.
    fn push_slot(&mut self, idx: u32) -> std::io::Result<()> {
        self.count_in_kernel(idx, true);
        if self.reaping {
            self.deferred.push_back(idx);
            return Ok(());
        }
        let entry = self.build_entry(idx);
        self.push_entry(&entry)
            .inspect_err(|_| self.count_in_kernel(idx, false))
    }

    /// Counts slot `idx` into (`true`) or out of the kernel's share.
    fn count_in_kernel(&mut self, idx: u32, into: bool) {
        let slot = &self.slots[idx as usize];
        if slot.op.is_write()
            && let Ok(f) = self.files.get_mut(slot.fd)
        {
            if into {
                f.writes_in_kernel += 1;
            } else {
                f.writes_in_kernel -= 1;
            }
        }
        if into {
            self.in_kernel += 1;
        } else {
            self.in_kernel -= 1;
        }
    }

    fn build_entry(&mut self, idx: u32) -> squeue::Entry {
        let registered_files = self.registered_files;
        let slot = &mut self.slots[idx as usize];
        let (raw, fixed_index) = match self.files.get(slot.fd) {
            Ok(f) => (f.raw, slot.fd.slot),
            // The fd table keeps every fd with ops in flight (deregister waits), so this is
            // unreachable; a NOP completes the slot harmlessly if it ever happens.
            Err(_) => return opcode::Nop::new().build().user_data(u64::from(idx)),
        };
        let done = slot.done;
        let offset = slot.offset + done as u64;
        let remaining = u32::try_from(slot.len - done).unwrap_or(u32::MAX);
        macro_rules! with_fd {
            ($make:expr) => {
                if registered_files {
                    let t = types::Fixed(fixed_index);
                    $make(t)
                } else {
                    let t = types::Fd(raw);
                    $make(t)
                }
            };
        }
        // A registered buffer goes in by index (`*Fixed`), any other memory by address. The
        // kernel checks that a fixed transfer lies inside the buffer of that index.
        macro_rules! read_into {
            ($ptr:expr, $index:expr) => {
                match $index {
                    Some(b) => with_fd!(|t| opcode::ReadFixed::new(t, $ptr, remaining, b)
                        .offset(offset)
                        .build()),
                    None => with_fd!(|t| opcode::Read::new(t, $ptr, remaining).offset(offset).build()),
                }
            };
        }
        macro_rules! write_from {
            ($ptr:expr, $index:expr) => {
                match $index {
                    Some(b) => with_fd!(|t| opcode::WriteFixed::new(t, $ptr, remaining, b)
                        .offset(offset)
                        .build()),
                    None => with_fd!(|t| opcode::Write::new(t, $ptr, remaining)
                        .offset(offset)
                        .build()),
                }
            };
        }
        let fixed = self.fixed.as_ref();
        let entry = match &mut slot.payload {
            Payload::Read(buf) => {
                let index = registered_index(fixed, buf);
                // SAFETY: done <= len == buf.len(), so the pointer stays inside the buffer. The
                // buffer is owned by this slot until its completion is reaped, and moving the
                // IoBuf value does not move its heap memory, so the kernel's pointer stays valid.
                let ptr = unsafe { buf.as_mut_slice().as_mut_ptr().add(done) };
                read_into!(ptr, index)
            }
            Payload::ReadStaged { staging, .. } => {
                let index = fixed.and_then(|f| f.index_of(staging));
                // SAFETY: as for Read: done <= len == staging.len(), and the staging buffer is
                // owned by the slot until reaped; its memory (a registered area) never moves.
                let ptr = unsafe { staging.as_mut_ptr().add(done) };
                read_into!(ptr, index)
            }
            Payload::WriteOwned(buf) => {
                let index = registered_index(fixed, buf);
                // SAFETY: as for Read: in bounds, owned by the slot until reaped, heap-stable.
                let ptr = unsafe { buf.as_slice().as_ptr().add(done) };
                write_from!(ptr, index)
            }
            Payload::WriteStaged(buf) => {
                let index = fixed.and_then(|f| f.index_of(buf));
                // SAFETY: as for Read: in bounds, owned by the slot until reaped, heap-stable.
                let ptr = unsafe { buf.as_ptr().add(done) };
                write_from!(ptr, index)
            }
            Payload::Sync => {
                let flags = if slot.op == OpKind::Fsync {
                    types::FsyncFlags::empty()
                } else {
                    types::FsyncFlags::DATASYNC
                };
                with_fd!(|t| opcode::Fsync::new(t).flags(flags).build())
            }
            Payload::None => opcode::Nop::new().build(),
        };
        entry.user_data(u64::from(idx))
    }

    /// Pushes one SQE, submitting to make room when the SQ is full. Never called while
    /// reaping (see `deferred`). Fails with the enter error when the kernel refuses SQEs for
    /// good, or with EBUSY when it takes none in [`SQ_FULL_ROUNDS`] tries.
    fn push_entry(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
        for _ in 0..SQ_FULL_ROUNDS {
            if self.try_push(entry) {
                return Ok(());
            }
            // The SQ is full of SQEs the kernel has not taken yet: hand them over, then retry.
            // A kernel that takes none (a full CQ, EBUSY) gets its completions reaped first.
            if self.make_sq_room()? == 0 {
                self.reap();
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::EBUSY))
    }

    /// Pushes one SQE if the SQ has room.
    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every pointer inside `entry` refers to memory owned by an op slot or by the
        // registered buffers, which stay alive and untouched until the CQE for this user_data
        // is reaped (see build_entry); the wake read and the timers keep theirs likewise.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Hands queued SQEs to the kernel because the SQ is full; returns how many it took. Under
    /// SQPOLL the kernel thread takes them: wait for it to make room.
    fn make_sq_room(&mut self) -> std::io::Result<usize> {
        if self.sqpoll {
            self.ring.submitter().squeue_wait()?;
            return Ok(1);
        }
        self.enter(0, None)
    }

    /// While reaping: pushes the deferred slots the SQ has room for, handing SQEs to the kernel
    /// when it is full. Returns when all are in the SQ, or when the kernel takes none (then the
    /// caller reaps and comes back); a persistent enter failure is returned.
    fn push_deferred(&mut self) -> std::io::Result<()> {
        while let Some(&idx) = self.deferred.front() {
            let entry = self.build_entry(idx);
            if self.try_push(&entry) {
                self.deferred.pop_front();
                continue;
            }
            if self.make_sq_room()? == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Completes every deferred slot with `error` (they never reached the kernel).
    fn fail_deferred(&mut self, error: &std::io::Error) {
        tracing::error!(%error, "io_uring refuses submissions; failing the ops that could not be pushed");
        while let Some(idx) = self.deferred.pop_front() {
            self.count_in_kernel(idx, false);
            let op = self.slots[idx as usize].op;
            // Finishing may release held syncs into `deferred`: they fail too.
            self.finish(idx, Err(StorageIoError::from_io(op, error)));
        }
    }

    /// Submits queued SQEs and, if `want` > 0, waits for that many completions or the timeout.
    /// EINTR and EBUSY (a full CQ) are handled by reaping and returning; the caller loops.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> std::io::Result<usize> {
        // A call that only submits is timed for the stats (what handing requests over costs;
        // see `IoStats::mean_submit_call`). Under SQPOLL the kernel thread takes the SQEs and
        // the call does not submit anything itself.
        let timed = (want == 0 && !self.sqpoll && !self.ring.submission().is_empty()).then(Instant::now);
        #[cfg(test)]
        if let Some(f) = self.enter_fault.as_mut() {
            f.calls += 1;
            if f.left > 0 && f.calls.is_multiple_of(f.every) {
                f.left -= 1;
                let errno = f.errno;
                return match errno {
                    libc::EBUSY | libc::EAGAIN => {
                        self.reap();
                        Ok(0)
                    }
                    _ => Err(std::io::Error::from_raw_os_error(errno)),
                };
            }
        }
        let submitter = self.ring.submitter();
        let r = match timeout {
            Some(t) if want > 0 && self.ext_arg => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        if let Some(t0) = timed {
            self.stats.record_submit_call(t0.elapsed());
        }
        match r {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(0),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                // The CQ is full (or the kernel is short of memory for a moment): make room. While
                // reaping this is a no-op, and the reaping loop takes the CQEs itself.
                self.reap();
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every CQE into completions (continuing short transfers and retries).
    ///
    /// Not re-entrant: a call from inside (an enter that met a full CQ while pushing) returns
    /// at once. Each batch is taken out of the CQ before any of it is handled, and the
    /// continuations it starts are pushed after it (`deferred`), so nothing handled here can
    /// reap underneath the loop. It returns with `deferred` empty.
    fn reap(&mut self) {
        if self.reaping {
            return;
        }
        self.reaping = true;
        let mut idle_rounds = 0;
        loop {
            self.reaped.clear();
            {
                let mut cq = self.ring.completion();
                cq.sync();
                for cqe in &mut cq {
                    self.reaped.push((cqe.user_data(), cqe.result()));
                    if self.reaped.len() == self.reaped.capacity() {
                        break;
                    }
                }
            }
            let got = self.reaped.len();
            for i in 0..got {
                let (user_data, res) = self.reaped[i];
                self.on_cqe(user_data, res);
            }
            if let Err(e) = self.push_deferred() {
                self.fail_deferred(&e);
            }
            if self.deferred.is_empty() {
                if got == 0 {
                    break;
                }
                continue;
            }
            // The SQ is full and the kernel takes nothing until its CQEs are reaped; if none
            // come for many rounds it is refusing for good.
            idle_rounds = if got == 0 { idle_rounds + 1 } else { 0 };
            if idle_rounds > SQ_FULL_ROUNDS {
                self.fail_deferred(&std::io::Error::from_raw_os_error(libc::EBUSY));
                break;
            }
        }
        self.reaping = false;
    }

    fn on_cqe(&mut self, user_data: u64, res: i32) {
        if self.timers.reaped(user_data) {
            return;
        }
        if user_data == WAKE_TAG {
            // The eventfd read finished (a kick, or an error such as ECANCELED): re-armed
            // before the next blocking wait.
            if let Some(w) = self.wake.as_mut() {
                w.read_armed = false;
            }
            return;
        }
        let Ok(idx) = u32::try_from(user_data) else { return };
        if idx as usize >= self.slots.len() {
            return;
        }
        self.in_kernel -= 1;
        let slot = &mut self.slots[idx as usize];
        if slot.op.is_write()
            && let Ok(f) = self.files.get_mut(slot.fd)
        {
            f.writes_in_kernel -= 1;
        }
        let outcome: Option<Result<usize>> = if res < 0 {
            let errno = -res;
            if (errno == libc::EAGAIN || errno == libc::EINTR) && slot.retries < MAX_RETRIES {
                slot.retries += 1;
                None
            } else {
                Some(Err(StorageIoError::os(slot.op, errno)))
            }
        } else {
            let n = res as usize;
            match slot.op {
                OpKind::Datasync | OpKind::Fsync => Some(Ok(0)),
                OpKind::Read => {
                    slot.done += n;
                    // 0 bytes means end of file: a successful short read.
                    if n == 0 || slot.done >= slot.len {
                        Some(Ok(slot.done))
                    } else {
                        None
                    }
                }
                OpKind::Write | OpKind::Append => {
                    slot.done += n;
                    if slot.done >= slot.len {
                        Some(Ok(slot.len))
                    } else if n == 0 {
                        Some(Err(StorageIoError::os(slot.op, libc::EIO)))
                    } else {
                        None
                    }
                }
            }
        };
        match outcome {
            // Short transfer or EAGAIN: continue the same op where it stopped (deferred: this
            // runs inside `reap`).
            None => {
                if let Err(e) = self.push_slot(idx) {
                    let op = self.slots[idx as usize].op;
                    self.finish(idx, Err(StorageIoError::from_io(op, &e)));
                }
            }
            Some(result) => self.finish(idx, result),
        }
    }

    fn finish(&mut self, idx: u32, result: Result<usize>) {
        let slot = &mut self.slots[idx as usize];
        let payload = std::mem::replace(&mut slot.payload, Payload::None);
        let (token, op, fd, offset, len, started) =
            (slot.token, slot.op, slot.fd, slot.offset, slot.len, slot.started);
        let buf = match payload {
            Payload::Read(mut b) => {
                if let Ok(n) = result {
                    b.truncate(n);
                }
                Some(b)
            }
            Payload::ReadStaged { staging, mut user } => {
                if let Ok(n) = result {
                    user.as_mut_slice()[..n].copy_from_slice(&staging[..n]);
                    user.truncate(n);
                }
                // Dropping the staging buffer puts it back on the registered free list.
                Some(user)
            }
            Payload::WriteOwned(b) => Some(b),
            Payload::WriteStaged(b) => {
                // Registered staging goes back to its free list on drop; heap staging is kept.
                if !b.is_pooled()
                    && self.heap_staging.len() < self.heap_staging.capacity()
                    && b.capacity() <= self.config.buffer_size
                {
                    self.heap_staging.push(b);
                }
                None
            }
            Payload::Sync | Payload::None => None,
        };
        self.stats
            .record_complete(op, result.as_ref().map(|&n| n).map_err(|_| ()), started.elapsed());
        self.free_slots.push(idx);
        self.ready.push_back(IoCompletion {
            token,
            op,
            fd,
            offset,
            len_requested: len,
            result,
            buf,
        });
        self.release_held(fd);
    }

    /// After an op of `fd` finished: dispatch held ops the barrier now allows.
    fn release_held(&mut self, fd: IoFd) {
        let Ok(f) = self.files.get_mut(fd) else { return };
        f.ops_in_flight -= 1;
        loop {
            let Ok(f) = self.files.get_mut(fd) else { return };
            let slots = &self.slots;
            let Some(front) = f
                .held
                .next_released(f.writes_in_kernel, |&i| slots[i as usize].op)
            else {
                return;
            };
            if let Err(e) = self.push_slot(front) {
                let op = self.slots[front as usize].op;
                self.finish(front, Err(StorageIoError::from_io(op, &e)));
            }
        }
    }

    /// Stages a copied write: a registered buffer when one is free and big enough, else heap.
    fn stage_copy(&mut self, data: &[u8]) -> Result<Payload> {
        if let Some(mut b) = self.fixed.as_ref().and_then(|f| f.take(data.len())) {
            b.copy_from_slice(data);
            return Ok(Payload::WriteStaged(b));
        }
        let mut buf = match self.heap_staging.pop() {
            Some(b) if b.capacity() >= data.len() => b,
            _ => AlignedBuf::zeroed(
                self.config.buffer_size.max(data.len()),
                storage_io_core::DEFAULT_ALIGNMENT,
            )?,
        };
        buf.clear();
        buf.extend_from_slice(data)?;
        Ok(Payload::WriteStaged(buf))
    }

    fn write_checked(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<(OpKind, u64)> {
        self.admit()?;
        let max = self.config.max_io_bytes;
        let f = self.files.get_mut(fd)?;
        let (op, offset) = plan_write(&mut f.append_cursor, f.align, offset, data, max)?;
        Ok((op, offset))
    }

    fn copied_write(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<IoToken> {
        let (op, offset) = self.write_checked(fd, data, offset)?;
        let payload = self.stage_copy(data)?;
        self.start(fd, op, offset, data.len(), 0, payload)
            .map_err(|(e, _)| e)
    }

    fn sync(&mut self, fd: IoFd, op: OpKind) -> Result<IoToken> {
        self.admit()?;
        self.files.get(fd)?;
        self.start(fd, op, 0, 0, 0, Payload::Sync).map_err(|(e, _)| e)
    }

    /// A read the page cache answered whole at submit: its completion waits in `ready` for the
    /// next poll, as on the inline backend (no slot, nothing in the ring; `ready` holds at most
    /// `queue_depth`, its capacity, so this does not allocate).
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

    fn deliver(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        deliver_ready(&mut self.ready, &mut self.pending, out)
    }

    /// Submits what is queued and blocks until every op of `fd` (or of all fds) is reaped. An
    /// enter failure other than EINTR/EBUSY/EAGAIN is returned: ops may still be in the SQ or
    /// the kernel then, and the caller must not free what they use.
    fn wait_idle(&mut self, fd: Option<IoFd>) -> std::io::Result<()> {
        loop {
            let busy = match fd {
                Some(fd) => self.files.get(fd).map_or(0, |f| f.ops_in_flight),
                None => self.in_kernel,
            };
            if busy == 0 || self.in_kernel == 0 {
                return Ok(());
            }
            self.enter(1, None).inspect_err(|e| {
                tracing::error!(error = %e, "io_uring_enter failed while waiting for in-flight ops");
            })?;
            self.reap();
        }
    }
}

impl UringStorageIo {
    /// Before blocking: puts the eventfd read in the ring if it is not there, then arms the
    /// wake state. `false` means a wake is pending (or the read could not be queued): do not
    /// block.
    fn arm_wake(&mut self) -> std::io::Result<bool> {
        let Some(w) = self.wake.as_mut() else {
            return Ok(true);
        };
        if !w.read_armed {
            // The kernel writes 8 bytes to `counter` when the read completes. The box lives in
            // `self.wake` until the read is reaped (Drop kicks and reaps it first), so the
            // pointer stays valid for as long as push_entry's contract requires.
            let ptr: *mut u64 = &mut *w.counter;
            let entry = opcode::Read::new(types::Fd(w.efd.as_raw_fd()), ptr.cast(), 8)
                .build()
                .user_data(WAKE_TAG);
            w.read_armed = true;
            if let Err(e) = self.push_entry(&entry) {
                if let Some(w) = self.wake.as_mut() {
                    w.read_armed = false;
                }
                return Err(e);
            }
        }
        Ok(self.wake.as_ref().is_none_or(|w| w.state.arm()))
    }

    /// How to block for `want` completions until `deadline` (`left` from now): the CQE count
    /// the kernel waits for and the timeout to hand it (EXT_ARG).
    ///
    /// A wake read in the ring must end the wait with its one CQE, so the kernel then waits for
    /// one. A wait for one CQE uses a ring timer (see [`RingTimers`]) rather than EXT_ARG; a wait
    /// for more keeps EXT_ARG, which ends it on time without a return to user space per CQE.
    /// Without EXT_ARG (kernels before 5.11) every deadline uses a ring timer; if both are in
    /// the ring and fire later than this deadline, the wait may end that much late.
    fn plan_wait(
        &mut self,
        want: usize,
        deadline: Option<(Instant, Duration)>,
    ) -> std::io::Result<(usize, Option<Duration>)> {
        let want = if self.wake.as_ref().is_some_and(|w| w.read_armed) {
            1
        } else {
            want
        };
        let Some((deadline, left)) = deadline else {
            return Ok((want, None));
        };
        if want > 1 && self.ext_arg {
            return Ok((want, Some(left)));
        }
        if self.timers.covers(deadline) {
            return Ok((1, None));
        }
        if let Some(entry) = self.timers.arm(deadline, left) {
            if let Err(e) = self.push_entry(&entry) {
                self.timers.disarm(&entry);
                return Err(e);
            }
            return Ok((1, None));
        }
        Ok(if self.ext_arg {
            (want, Some(left))
        } else {
            (1, None)
        })
    }

    /// After blocking: `true` when a wake arrived and the wait should return.
    fn disarm_wake(&self) -> bool {
        self.wake.as_ref().is_some_and(|w| w.state.disarm())
    }
}

/// Why SQPOLL cannot be used, if it cannot: before Linux 5.11 (no `IORING_FEAT_SQPOLL_NONFIXED`)
/// the SQ thread accepts only registered files, so without the fixed-file table (sparse
/// registration came in 5.19) every op would fail with EBADF.
fn sqpoll_refusal(sqpoll: bool, registered_files: bool, sqpoll_nonfixed: bool) -> Option<String> {
    (sqpoll && !registered_files && !sqpoll_nonfixed).then(|| {
        "io_uring SQPOLL on this kernel (before 5.11) works only with registered files, and the \
         fixed-file table could not be registered (sparse registration needs 5.19): turn \
         sqpoll_idle_ms off"
            .to_string()
    })
}

fn unsupported(why: Unavailable) -> StorageIoError {
    StorageIoError::Unsupported {
        what: format!("io_uring unavailable: {why}").into(),
    }
}

/// Allocates `count` buffers of `size` bytes (rounded up to a whole page) and registers them.
fn register_buffers(ring: &IoUring, count: usize, size: usize) -> std::io::Result<FixedBufs> {
    let align = storage_io_core::DEFAULT_ALIGNMENT;
    let size = size
        .checked_next_multiple_of(align)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let fixed =
        FixedBufs::new(count, size, align).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let iovecs: Vec<libc::iovec> = fixed
        .regions()
        .map(|(base, len)| libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        })
        .collect();
    // The kernel writes a registered buffer only for a ReadFixed naming its index, which this
    // backend issues only while a slot owns that buffer (lent and moved in, or its own staging).
    // SAFETY: each iovec is one buffer of the area, allocated while the FixedBufs (dropped after
    // the ring, which unregisters them) or any buffer lent from it lives.
    unsafe { ring.submitter().register_buffers(&iovecs)? };
    Ok(fixed)
}

impl StorageIo for UringStorageIo {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "io_uring",
            max_in_flight: self.config.queue_depth,
            asynchronous: true,
            worker_threads: 0,
            registered_buffers: self.fixed.is_some(),
            registered_files: self.registered_files,
            sqpoll: self.sqpoll,
            direct_io: true,
            max_io_bytes: self.config.max_io_bytes,
            notes: self.notes.clone(),
        }
    }

    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        let (append_cursor, align) = file_facts(&file)?;
        let raw = file.as_raw_fd();
        let fd = self.files.insert(UringFile {
            file,
            raw,
            align,
            append_cursor,
            ops_in_flight: 0,
            writes_in_kernel: 0,
            held: DatasyncBarrier::new(),
            nowait: NowaitGate::default(),
        })?;
        if self.registered_files
            && let Err(e) = self.ring.submitter().register_files_update(fd.slot, &[raw])
        {
            self.files.remove(fd)?;
            return Err(StorageIoError::from_os("io_uring_register (files update)", &e));
        }
        Ok(fd)
    }

    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        self.files.get(fd)?;
        // An op of `fd` may still be in the SQ or the kernel if this fails: keep the fd (and its
        // fixed-file slot) and report the failure.
        self.wait_idle(Some(fd))
            .map_err(|e| StorageIoError::from_os("io_uring_enter", &e))?;
        if self.registered_files {
            // Clear the fixed-file slot before the fd closes, so no later SQE can reach it.
            self.ring
                .submitter()
                .register_files_update(fd.slot, &[-1])
                .map_err(|e| StorageIoError::from_os("io_uring_register (files update)", &e))?;
        }
        self.files.remove(fd)?;
        Ok(())
    }

    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        file_len_of(&self.files.get(fd)?.file)
    }

    /// Lends a free registered buffer when `len` fits one (see [`StorageIo::alloc_buf`]); else
    /// a fresh aligned allocation.
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        match self.fixed.as_ref().and_then(|f| f.take(len)) {
            Some(buf) => Ok(buf),
            None => AlignedBuf::zeroed(len, storage_io_core::DEFAULT_ALIGNMENT),
        }
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
        let done = match self.try_nowait(fd, &mut buf, offset) {
            Some((NowaitRead::Done(n), started)) => {
                return Ok(self.complete_at_submit(fd, buf, offset, n, started));
            }
            Some((NowaitRead::Partial(n), _)) => n,
            _ => 0,
        };
        let in_place = registered_index(self.fixed.as_ref(), &buf).is_some();
        // A read continued after a partial cache hit goes into the caller's buffer (its first
        // bytes are filled already), not through staging.
        let staging = match self.fixed.as_ref() {
            Some(f) if !in_place && done == 0 => f.take(len),
            _ => None,
        };
        let payload = match staging {
            Some(staging) => Payload::ReadStaged { staging, user: buf },
            None => Payload::Read(buf),
        };
        let token = self
            .start(fd, OpKind::Read, offset, len, done, payload)
            .map_err(|(e, p)| {
                let buf = match p {
                    // The staging buffer goes back to the free list as it drops here.
                    Payload::ReadStaged { user, .. } => user,
                    Payload::Read(b) => b,
                    _ => IoBuf::Vec(Vec::new()),
                };
                SubmitError::new(e, buf)
            })?;
        self.in_place_ops += u64::from(in_place);
        Ok(token)
    }

    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        self.copied_write(fd, data, Some(offset))
    }

    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let (op, offset) = match self.write_checked(fd, &buf, Some(offset)) {
            Ok(x) => x,
            Err(e) => return Err(SubmitError::new(e, buf)),
        };
        let len = buf.len();
        let in_place = registered_index(self.fixed.as_ref(), &buf).is_some();
        let token = self
            .start(fd, op, offset, len, 0, Payload::WriteOwned(buf))
            .map_err(|(e, p)| {
                let buf = match p {
                    Payload::WriteOwned(b) => b,
                    _ => IoBuf::Vec(Vec::new()),
                };
                SubmitError::new(e, buf)
            })?;
        self.in_place_ops += u64::from(in_place);
        Ok(token)
    }

    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        self.copied_write(fd, data, None)
    }

    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync(fd, OpKind::Datasync)
    }

    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync(fd, OpKind::Fsync)
    }

    fn flush(&mut self) -> Result<usize> {
        self.enter(0, None)
            .map_err(|e| StorageIoError::from_os("io_uring_enter", &e))
    }

    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let must_enter = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
        };
        if must_enter {
            // Hand queued SQEs to the kernel without waiting; a failure here leaves them queued
            // for the next poll or wait.
            let _ = self.enter(0, None);
        }
        // With none of our ops in the kernel there is nothing to reap but a wake read's or a
        // timer's CQE, which the next wait takes (reads answered at submit skip the CQ here).
        if self.in_kernel > 0 || must_enter {
            self.reap();
        }
        self.deliver(out)
    }

    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        // Reads answered at submit leave nothing in the kernel: deliver them without touching
        // the CQ or the clock (as `poll_completions` does).
        if self.in_kernel == 0 && self.deferred.is_empty() && self.ring.submission().is_empty() {
            return Ok(self.deliver(out));
        }
        self.reap();
        if self.ready.len() >= min || self.in_kernel == 0 {
            // Nothing to wait for, but SQEs queued since the last enter must still reach the
            // kernel now: returning without submitting them would leave the device idle for a
            // whole round and quietly lower the queue depth the caller asked for.
            if !self.ring.submission().is_empty() {
                self.enter(0, None)
                    .map_err(|e| StorageIoError::from_os("io_uring_enter", &e))?;
                self.reap();
            }
            return Ok(self.deliver(out));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.ready.len() < min && self.in_kernel > 0 {
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    Some(d - now)
                }
                None => None,
            };
            let want = (min - self.ready.len()).min(self.in_kernel).max(1);
            let enter_err = |e: std::io::Error| StorageIoError::from_os("io_uring_enter", &e);
            if !self.arm_wake().map_err(enter_err)? {
                break;
            }
            let (want, left) = self.plan_wait(want, deadline.zip(left)).map_err(enter_err)?;
            let entered = self.enter(want, left);
            let woken = self.disarm_wake();
            entered.map_err(|e| StorageIoError::from_os("io_uring_enter", &e))?;
            self.reap();
            if woken {
                break;
            }
        }
        Ok(self.deliver(out))
    }

    fn wait_waker(&mut self) -> Option<WaitWaker> {
        if self.wake.is_none() {
            match RingWake::new() {
                Ok(w) => self.wake = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no eventfd for waking io_uring waits; callers must poll");
                    return None;
                }
            }
        }
        self.wake.as_ref().map(RingWake::waker)
    }

    fn pending_count(&self) -> usize {
        self.pending
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }
}

impl Drop for UringStorageIo {
    fn drop(&mut self) {
        // The eventfd read writes into `counter`: end it with a kick and reap it before the
        // box is freed.
        if let Some(fd) = self
            .wake
            .as_ref()
            .filter(|w| w.read_armed)
            .map(|w| w.efd.as_raw_fd())
        {
            kick_eventfd(fd);
            while self.wake.as_ref().is_some_and(|w| w.read_armed) {
                if let Err(e) = self.enter(1, None) {
                    tracing::error!(error = %e, "io_uring_enter failed while ending the wake read");
                    break;
                }
                self.reap();
            }
        }
        // The kernel may still write into slot buffers and registered memory: wait for every op
        // before anything is freed. Held ops never reached the kernel and are simply dropped.
        let idle = self.wait_idle(None);
        if idle.is_err() || self.wake.as_ref().is_some_and(|w| w.read_armed) {
            // The kernel may still use memory this instance owns, and no wait can tell when it
            // stops: leak that memory rather than free it under the kernel.
            tracing::error!("io_uring ops still in flight at drop; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(self.fixed.take());
            std::mem::forget(self.wake.take());
            std::mem::forget(std::mem::replace(&mut self.timers, RingTimers::new()));
            return;
        }
        // An SQPOLL thread reads SQEs on its own time, and a timer's SQE points at a timespec
        // in `self.timers`: let it take every SQE before that memory goes (a bounded wait; the
        // thread polls the SQ while it has work).
        if self.sqpoll {
            for _ in 0..10_000 {
                if self.ring.submission().is_empty() {
                    break;
                }
                let _ = self.enter(0, None);
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::io::Write;

    use super::*;
    use crate::usable_or_skip;

    const FILE_BYTES: usize = 4096;

    /// A backend with an SQ of one entry, and a file of `FILE_BYTES` bytes of a known pattern.
    fn tiny_sq(queue_depth: usize) -> (UringStorageIo, IoFd, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&pattern()).unwrap();
        let config = IoConfig {
            queue_depth,
            sq_depth: 1,
            // These tests are about the ring: reads of the (cached) file must go through it.
            nowait_reads: false,
            ..IoConfig::default()
        };
        let mut io = UringStorageIo::new(&config).unwrap();
        let fd = io
            .open_file(&path, &storage_io_core::OpenOptions::read_only())
            .unwrap();
        (io, fd, dir)
    }

    fn pattern() -> Vec<u8> {
        (0..FILE_BYTES).map(|i| (i % 251) as u8).collect()
    }

    /// Reads of twice the file: each comes back short at the end of the file and is continued
    /// from inside the reaping loop (the continuation reads 0 bytes: EOF).
    fn submit_eof_reads(io: &mut UringStorageIo, fd: IoFd, n: usize) {
        for _ in 0..n {
            io.submit_read(fd, vec![0u8; 2 * FILE_BYTES].into(), 0).unwrap();
        }
    }

    fn check_reads(done: &[IoCompletion], n: usize) {
        assert_eq!(done.len(), n, "every read completes once");
        for c in done {
            assert_eq!(*c.result.as_ref().unwrap(), FILE_BYTES, "a short read at EOF");
            assert_eq!(&c.buf.as_ref().unwrap()[..], &pattern()[..]);
        }
    }

    #[test]
    fn sqpoll_without_registered_files_is_refused_where_the_kernel_needs_them() {
        let refusal = sqpoll_refusal(true, false, false).expect("refused");
        assert!(refusal.contains("sqpoll_idle_ms"), "says what to do: {refusal}");
        assert_eq!(sqpoll_refusal(true, true, false), None, "registered files: fine");
        assert_eq!(sqpoll_refusal(true, false, true), None, "5.11+: plain fds work");
        assert_eq!(sqpoll_refusal(false, false, false), None, "no SQPOLL asked");
    }

    /// With the SQ full and `io_uring_enter` failing for good, a submit must return the error
    /// (and the buffer), not spin; the op that was already in the SQ still completes later.
    #[test]
    fn uring_push_entry_returns_a_persistent_enter_error_instead_of_spinning() {
        if !usable_or_skip("uring_push_entry_returns_a_persistent_enter_error_instead_of_spinning") {
            return;
        }
        let (mut io, fd, _dir) = tiny_sq(8);
        io.submit_read(fd, vec![0u8; FILE_BYTES].into(), 0).unwrap(); // fills the SQ
        io.enter_fault = Some(EnterFault {
            errno: libc::EINVAL,
            every: 1,
            left: u32::MAX,
            calls: 0,
        });
        let refused = io
            .submit_read(fd, vec![7u8; FILE_BYTES].into(), 0)
            .expect_err("the SQ is full and the kernel refuses it");
        assert_eq!(refused.error.errno(), libc::EINVAL);
        assert_eq!(refused.buf.len(), FILE_BYTES, "the buffer comes back");
        assert_eq!(io.pending_count(), 1, "the refused read was not accepted");
        // deregister_fd cannot wait for the read in the SQ: it must keep the fd and say so.
        assert!(io.deregister_fd(fd).is_err());
        assert_eq!(
            io.file_len(fd).unwrap(),
            FILE_BYTES as u64,
            "the fd is still registered"
        );
        io.enter_fault = None;
        let mut done = Vec::new();
        while io.pending_count() > 0 {
            io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))
                .unwrap();
        }
        check_reads(&done, 1);
        io.deregister_fd(fd).unwrap();
    }

    /// Continuations pushed while reaping meet a full SQ, and the enter that would make room
    /// fails with EBUSY (which reaps to make CQ room): that must not re-enter the reaping loop
    /// (an index panic, CQEs taken from the ring and lost).
    #[test]
    fn uring_reaping_is_not_reentrant_when_a_continuation_meets_a_full_sq_and_ebusy() {
        if !usable_or_skip("uring_reaping_is_not_reentrant_when_a_continuation_meets_a_full_sq_and_ebusy") {
            return;
        }
        for every in [1, 2, 3] {
            let n = 48;
            let (mut io, fd, _dir) = tiny_sq(64);
            submit_eof_reads(&mut io, fd, n);
            io.enter_fault = Some(EnterFault {
                errno: libc::EBUSY,
                every,
                left: 40,
                calls: 0,
            });
            let mut done = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while io.pending_count() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "every {every}: {} of {n} reads completed; the rest were lost",
                    done.len()
                );
                io.wait_completions(&mut done, n, Some(Duration::from_millis(100)))
                    .unwrap();
            }
            check_reads(&done, n);
        }
    }
}
