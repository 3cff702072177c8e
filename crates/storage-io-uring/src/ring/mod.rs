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
//!   [`StorageIo::alloc_buf`](storage_io_core::StorageIo::alloc_buf) lends them to callers, and I/O on a lent buffer is done in place
//!   with `ReadFixed`/`WriteFixed`. A read into any other buffer is staged in a free registered
//!   buffer and copied out on completion, and a copied write (`submit_write`, `submit_append`)
//!   is staged in one; with none free or a transfer too big, plain `Read`/`Write` on the
//!   caller's memory. If registration fails (RLIMIT_MEMLOCK), the backend runs unregistered
//!   and says so in `capabilities().notes`.
//!
//! The op bookkeeping (slots, tokens, per-file state, the datasync barrier, staging, the
//! page-cache fast path) is core's [`OpTable`]; this module is the [`OpDriver`] that turns a
//! slot into an SQE and a CQE back into a completion. Modules, one concern each: `setup`
//! (probe, ring, registration), `sqe` (building and pushing a slot's entry), `reap` (entering
//! the kernel, taking CQEs, continuing short transfers), `timers` (wait deadlines as ring
//! timers), `wake` (the eventfd behind `wait_waker`) and `backend` (the driver's waits and
//! teardown).
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
    FixedBufs, OpDriver, OpPayload, OpTable, QueuedIo, WakeState, registered_index,
};
use storage_io_core::{Capabilities, IoConfig, IoFd, OpKind, Result, StorageIoError, WaitWaker};

use crate::probe::{ProbeReport, Unavailable, probe, unavailable_from};

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
    io: QueuedIo<RingDriver>,
}

storage_io_core::forward_storage_io!(UringStorageIo => io);

/// The ring as an [`OpDriver`]: an SQ entry per started slot (`user_data` = the slot index),
/// a CQE per transfer.
struct RingDriver {
    // Field order matters for Drop: the ring closes (and unregisters buffers and files) before
    // the buffer memory is freed (the files live in the op table, which drops after the driver).
    ring: IoUring,
    /// The registered buffers. Lent buffers hold the memory alive past the ring, and the
    /// ring's close unregisters it before this field drops.
    fixed: Option<FixedBufs>,
    registered_files: bool,
    sqpoll: bool,
    ext_arg: bool,
    notes: Vec<String>,
    /// Reaped CQEs waiting to be processed (preallocated; no allocation while reaping).
    reaped: Vec<(u64, i32)>,
    /// `reap` is running: a nested call returns at once (the running one takes what is left).
    reaping: bool,
    /// Slots to push (continuations, released syncs) that came up while reaping. They are
    /// pushed after the batch, never from inside it: pushing into a full SQ may need an enter
    /// that reaps. Empty whenever `reap` is not running. Counted as out already.
    deferred: VecDeque<u32>,
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

// SAFETY: RingDriver owns its ring and registered buffers outright; the raw pointers inside
// (registered buffer memory, SQE addresses) point only into memory it or its op table owns.
// Nothing is shared with another thread, so moving the backend to another thread is sound,
// which is all `Send` permits (it is not `Sync`).
unsafe impl Send for RingDriver {}

/// The op table of a ring.
type Ops = OpTable<File>;

fn enter_error(e: std::io::Error) -> StorageIoError {
    StorageIoError::from_os("io_uring_enter", &e)
}

impl UringStorageIo {
    /// What the probe found when this instance was built.
    pub fn probe_report(&self) -> &ProbeReport {
        &self.io.driver().report
    }

    /// How many reads and writes were done in place on a buffer this backend lent
    /// ([`StorageIo::alloc_buf`](storage_io_core::StorageIo::alloc_buf)), with no copy through its own registered memory.
    pub fn in_place_ops(&self) -> u64 {
        self.io.ops().in_place_ops()
    }

    /// How many reads were answered from the page cache at submit (`IoConfig::nowait_reads`),
    /// without entering the ring.
    pub fn nowait_hits(&self) -> u64 {
        self.io.ops().nowait_hits()
    }

    /// The ring's file descriptor, for a reactor's epoll: it reads as readable while the
    /// completion queue holds entries (see [`for_reactor`](Self::for_reactor)). It stays open
    /// for as long as this instance lives.
    pub fn ring_fd(&self) -> RawFd {
        self.io.driver().ring.as_raw_fd()
    }

    /// SQEs pushed and not yet handed to the kernel (they wait for [`submit_queued`](Self::submit_queued)).
    pub fn queued_sqes(&mut self) -> usize {
        self.io.parts_mut().0.ring.submission().len()
    }

    /// Ops handed to the kernel whose completions have not been reaped yet. An owner that
    /// leaves SQEs queued may count on each of these to post a completion, and so to make the
    /// ring's fd readable again, later.
    pub fn entered_ops(&mut self) -> usize {
        let (ring, ops) = self.io.parts_mut();
        // A queued timer or wake SQE is not an op: subtracting it too can only undercount,
        // which makes an owner enter sooner, never later.
        let queued = ring.ring.submission().len();
        ops.out().saturating_sub(queued)
    }

    /// As [`StorageIo::poll_completions`](storage_io_core::StorageIo::poll_completions), but
    /// leaves queued SQEs queued: it takes what the kernel has posted without a system call
    /// (unless the completion queue overflowed, which only an enter flushes). For an owner that
    /// batches its SQEs into fewer enters.
    pub fn poll_completions_unsubmitted(&mut self, out: &mut Vec<storage_io_core::IoCompletion>) -> usize {
        let (ring, ops) = self.io.parts_mut();
        if ring.ring.submission().cq_overflow() {
            return storage_io_core::StorageIo::poll_completions(self, out);
        }
        if ops.out() > 0 {
            ring.reap(ops);
        }
        ops.deliver(out)
    }

    /// Hands SQEs queued since the last enter (by `submit_*` under a `submit_batch` above 1, or
    /// by continuations that `poll_completions` queued) to the kernel. No system call when
    /// none are queued. Returns how many the kernel took.
    pub fn submit_queued(&mut self) -> Result<usize> {
        let (ring, ops) = self.io.parts_mut();
        if ring.ring.submission().is_empty() {
            return Ok(0);
        }
        ring.enter(ops, 0, None).map_err(enter_error)
    }

    /// Unit tests only: injects `io_uring_enter` failures (`None`: stops).
    #[cfg(test)]
    fn set_enter_fault(&mut self, fault: Option<EnterFault>) {
        self.io.parts_mut().0.enter_fault = fault;
    }
}
