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
//! Modules, one concern each: `setup` (probe, ring, registration), `sqe` (admitting an op,
//! staging its bytes, building its entry), `reap` (entering the kernel, taking CQEs, continuing
//! short transfers, finishing ops), `timers` (wait deadlines as ring timers), `wake` (the eventfd
//! behind `wait_waker`) and `backend` (the `StorageIo` implementation and teardown).
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
use storage_io_core::backend_kit::{
    DatasyncBarrier, FdTable, FixedBufs, NowaitGate, NowaitRead, TokenCounter, WakeState, deliver_ready,
    file_facts, file_len_of, plan_write, stage_cached_read, try_cached_read, validate_transfer,
};
use storage_io_core::{
    AlignedBuf, Capabilities, IoBuf, IoCompletion, IoConfig, IoFd, IoStats, IoToken, OpKind, Result,
    StorageIo, StorageIoError, SubmitError, WaitWaker,
};

use crate::probe::{ProbeReport, Unavailable, probe, unavailable_from};

/// How often one op may come back with `EAGAIN`/`EINTR` before the error is reported.
const MAX_RETRIES: u32 = 64;

/// Tries to make room in a full SQ before the kernel is taken to refuse it for good.
const SQ_FULL_ROUNDS: usize = 1024;

mod backend;
mod reap;
mod setup;
mod sqe;
#[cfg(test)]
mod tests;
mod timers;
mod wake;

use timers::RingTimers;
use wake::{RingWake, WAKE_TAG, kick_eventfd};

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
    /// A write straight from the caller's shared bytes, kept alive by this reference until the
    /// completion is reaped.
    WriteShared(bytes::Bytes),
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
    /// Hold a datasync while writes of its file are in the kernel, and writes behind a held
    /// sync (the module docs' barrier). Off for a ring built with `for_reactor`, whose owner
    /// orders syncs itself.
    datasync_barrier: bool,
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

    /// The ring's file descriptor, for a reactor's epoll: it reads as readable while the
    /// completion queue holds entries (see [`for_reactor`](Self::for_reactor)). It stays open
    /// for as long as this instance lives.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// SQEs pushed and not yet handed to the kernel (they wait for [`submit_queued`](Self::submit_queued)).
    pub fn queued_sqes(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Ops handed to the kernel whose completions have not been reaped yet. An owner that
    /// leaves SQEs queued may count on each of these to post a completion, and so to make the
    /// ring's fd readable again, later.
    pub fn entered_ops(&mut self) -> usize {
        // A queued timer or wake SQE is not an op: subtracting it too can only undercount,
        // which makes an owner enter sooner, never later.
        let queued = self.ring.submission().len();
        self.in_kernel.saturating_sub(queued)
    }

    /// As [`StorageIo::poll_completions`], but leaves queued SQEs queued: it takes what the
    /// kernel has posted without a system call (unless the completion queue overflowed, which
    /// only an enter flushes). For an owner that batches its SQEs into fewer enters.
    pub fn poll_completions_unsubmitted(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        if self.ring.submission().cq_overflow() {
            return self.poll_completions(out);
        }
        if self.in_kernel > 0 {
            self.reap();
        }
        self.deliver(out)
    }

    /// Hands SQEs queued since the last enter (by `submit_*` under a `submit_batch` above 1, or
    /// by continuations that `poll_completions` queued) to the kernel. No system call when
    /// none are queued. Returns how many the kernel took.
    pub fn submit_queued(&mut self) -> Result<usize> {
        if self.ring.submission().is_empty() {
            return Ok(0);
        }
        self.enter(0, None)
            .map_err(|e| StorageIoError::from_os("io_uring_enter", &e))
    }
}
