//! [`OpTable`] and [`QueuedIo`]: one op table for the backends that hand ops on (to worker
//! threads, to a kernel ring) and collect their completions later.
//!
//! The table owns everything such a backend keeps per op and per file — preallocated op slots,
//! the token counter, the queue of completions waiting for a poll, each file's append cursor,
//! alignment, ops in flight, writes out, [`DatasyncBarrier`] and [`NowaitGate`], the staging
//! memory of copied writes, and the stats — and [`QueuedIo`] implements
//! [`StorageIo`](crate::StorageIo) on it. A backend supplies an [`OpDriver`]: "start the op in
//! this slot" ([`OpDriver::start`]) and, when the op is done, "here is its completion"
//! ([`OpTable::complete`]), plus how to wait for completions.
//!
//! Counting: an op is *accepted* when it takes a slot (or completes at submit from the page
//! cache), *out* while the driver has it, *held* while the datasync barrier keeps it back, and
//! *finished* once its completion is queued; `pending` = accepted − delivered.

use std::collections::VecDeque;
use std::fs::File;
use std::time::{Duration, Instant};

use crate::barrier::DatasyncBarrier;
use crate::buf::{AlignedBuf, FixedBufs, IoBuf};
use crate::config::IoConfig;
use crate::direct::OpenOptions;
use crate::direct::{DirectMode, direct_alignment, file_len_of, open_file, plan_write, validate_transfer};
use crate::error::{Result, StorageIoError};
use crate::fd_table::FdTable;
use crate::nowait::{NowaitGate, NowaitRead, cached_read_completion, try_cached_read_file};
use crate::op::{Capabilities, IoCompletion, IoFd, IoToken, OpKind, TokenCounter};
use crate::stats::IoStats;
use crate::wake::WaitWaker;
use std::path::Path;

/// How often one op may come back with `EAGAIN`/`EINTR` before the error is reported.
pub const MAX_RETRIES: u32 = 64;

/// Where the bytes of an op live while the driver has them.
#[derive(Debug, Default)]
pub enum OpPayload {
    /// Nothing (a free slot, or a payload the driver has taken out while it runs the op).
    #[default]
    None,
    /// A read straight into the caller's buffer.
    Read(IoBuf),
    /// A read into a registered staging buffer, copied into the caller's buffer at completion.
    ReadStaged {
        /// The registered buffer the device reads into.
        staging: AlignedBuf,
        /// The caller's buffer, handed back in the completion.
        user: IoBuf,
    },
    /// A write of the caller's owned buffer (handed back in the completion).
    WriteOwned(IoBuf),
    /// A copied write, staged in a registered buffer or in the table's heap staging.
    WriteStaged(AlignedBuf),
    /// A write straight from the caller's shared bytes, kept alive until the completion.
    WriteShared(bytes::Bytes),
    /// datasync or fsync.
    Sync,
}

impl OpPayload {
    /// The caller's buffer from a payload refused at submit (an empty one where the payload
    /// held none of the caller's).
    pub(crate) fn into_user_buf(self) -> IoBuf {
        match self {
            OpPayload::Read(b) | OpPayload::WriteOwned(b) | OpPayload::ReadStaged { user: b, .. } => b,
            _ => IoBuf::Vec(Vec::new()),
        }
    }
}

/// One op in the table: what it is, where it goes, and its bytes.
#[derive(Debug)]
pub struct OpSlot {
    /// The op kind.
    pub op: OpKind,
    /// Its file.
    pub fd: IoFd,
    /// Where it starts in the file.
    pub offset: u64,
    /// Bytes asked for.
    pub len: usize,
    /// Bytes transferred so far (a partial page-cache hit, or a short transfer continued): a
    /// driver starts the op at `offset + done` for `len - done` bytes.
    pub done: usize,
    /// The op's bytes.
    pub payload: OpPayload,
    token: IoToken,
    #[cfg_attr(
        not(unix),
        allow(dead_code, reason = "read only by the unix-only `transferred`")
    )]
    retries: u32,
    started: Instant,
}

impl OpSlot {
    fn empty() -> Self {
        OpSlot {
            op: OpKind::Read,
            fd: IoFd {
                slot: 0,
                generation: 0,
            },
            offset: 0,
            len: 0,
            done: 0,
            payload: OpPayload::None,
            token: IoToken(0),
            retries: 0,
            started: Instant::now(),
        }
    }
}

/// Per-file state of a queued backend; `H` is the driver's handle on the open file.
#[derive(Debug)]
struct QueuedFile<H> {
    handle: H,
    align: Option<usize>,
    append_cursor: u64,
    /// Ops of this file out or held.
    ops_in_flight: usize,
    /// Writes and appends of this file out at the driver.
    writes_out: usize,
    /// Slots held back by the datasync barrier, in submission order.
    held: DatasyncBarrier<u32>,
    /// Whether to try this file's next read from the page cache (`nowait_reads`).
    nowait: NowaitGate,
}

/// Where a checked write goes, and where the append cursor stands once it is accepted.
pub(crate) struct WritePlan {
    pub(crate) op: OpKind,
    pub(crate) offset: u64,
    cursor: u64,
}

/// A driver's handle on an open file, as the op table needs it.
pub trait OpFile: Send {
    /// The file's length now.
    fn file_len(&self) -> Result<u64>;

    /// The OS file behind the handle, if there is one: its direct-I/O alignment is enforced,
    /// and buffered reads may be answered from the page cache at submit. `None` (the
    /// default): neither.
    fn std_file(&self) -> Option<&File> {
        None
    }
}

impl OpFile for File {
    fn file_len(&self) -> Result<u64> {
        file_len_of(self)
    }
    fn std_file(&self) -> Option<&File> {
        Some(self)
    }
}

/// A file a driver opened by path: the handle, the I/O mode in effect, and a second OS handle
/// when there is one (see [`OpenedFd`](crate::OpenedFd)).
#[derive(Debug)]
pub struct DriverOpened<H> {
    /// The driver's handle.
    pub handle: H,
    /// Whether direct I/O is in effect.
    pub mode: DirectMode,
    /// A second OS handle on the file, when there is one.
    pub file: Option<File>,
}

/// What a queued backend's executor supplies: starting an op, and waiting for completions
/// (which it hands back with [`OpTable::complete`]). See the module docs.
pub trait OpDriver: Send + Sized {
    /// The driver's handle on an open file (the `File` itself, or a handle of the backend's
    /// own).
    type File: OpFile;

    /// What the backend is and can do, under `config`.
    fn capabilities(&self, config: &IoConfig) -> Capabilities;

    /// Takes an open OS file as a handle (`register_fd`); a backend without OS files refuses.
    fn adopt(&mut self, file: File) -> Result<Self::File>;

    /// Opens `path` (`open_file`). The default opens a real file (falling back from direct to
    /// buffered I/O where the file system refuses it) and adopts it.
    fn open(&mut self, path: &Path, options: &OpenOptions) -> Result<DriverOpened<Self::File>> {
        let opened = open_file(path, options)?;
        let file = opened.file.try_clone().ok();
        Ok(DriverOpened {
            handle: self.adopt(opened.file)?,
            mode: opened.mode,
            file,
        })
    }

    /// Closes a handle once every op on it is back (the default drops it).
    fn close(&mut self, file: Self::File) -> Result<()> {
        drop(file);
        Ok(())
    }

    /// Start the op in slot `idx` of `ops` (for its remaining bytes, see [`OpSlot::done`]). It
    /// counts as out from the call on; on `Err` it never started, and the table fails or
    /// refuses it.
    fn start(&mut self, ops: &mut OpTable<Self::File>, idx: u32) -> std::io::Result<()>;

    /// Moves every completion that is ready into `ops` without blocking.
    fn poll(&mut self, ops: &mut OpTable<Self::File>);

    /// Blocks until `ops` holds `min` completions ready, `timeout` passes, nothing is out, or
    /// a [`WaitWaker`] wakes the wait.
    fn wait(&mut self, ops: &mut OpTable<Self::File>, min: usize, timeout: Option<Duration>) -> Result<()>;

    /// Blocks until at least one op comes back; `false` when none can (nothing is out).
    fn wait_one(&mut self, ops: &mut OpTable<Self::File>) -> Result<bool>;

    /// Memory registered with the kernel: lent by `alloc_buf`, and staging for reads and
    /// copied writes. `None` (the default): none.
    fn registered_bufs(&self) -> Option<&FixedBufs> {
        None
    }

    /// A file was registered as `fd` (the default does nothing); an `Err` refuses it.
    fn file_registered(&mut self, fd: IoFd, file: &Self::File) -> Result<()> {
        let _ = (fd, file);
        Ok(())
    }

    /// Every op of `fd` is back and the file is about to close (the default does nothing).
    fn file_deregistered(&mut self, fd: IoFd) -> Result<()> {
        let _ = fd;
        Ok(())
    }

    /// An op was accepted and started or held (the default does nothing): a ring may hand a
    /// batch of queued entries to the kernel here.
    fn accepted(&mut self, ops: &mut OpTable<Self::File>) {
        let _ = ops;
    }

    /// Pushes queued starts on; returns how many (the default: none are queued).
    fn flush(&mut self, ops: &mut OpTable<Self::File>) -> Result<usize> {
        let _ = ops;
        Ok(0)
    }

    /// A handle that interrupts [`wait`](OpDriver::wait) (see
    /// [`StorageIo::wait_waker`](crate::StorageIo::wait_waker)); `None` (the default): none.
    fn waker(&mut self) -> Option<WaitWaker> {
        None
    }

    /// Teardown: waits for every op before the table's memory goes (the default).
    fn shutdown(&mut self, ops: &mut OpTable<Self::File>) {
        while ops.in_flight() > 0 && matches!(self.wait_one(ops), Ok(true)) {}
    }
}

/// The op table of a queued backend (see the module docs). `H` is the driver's file handle.
#[derive(Debug)]
pub struct OpTable<H> {
    config: IoConfig,
    /// Whether to keep the datasync barrier (see [`OpTable::new`]).
    barrier: bool,
    slots: Vec<OpSlot>,
    free_slots: Vec<u32>,
    files: FdTable<QueuedFile<H>>,
    tokens: TokenCounter,
    ready: VecDeque<IoCompletion>,
    /// Accepted and not yet delivered.
    pending: usize,
    /// Started at the driver and not yet back.
    out: usize,
    /// Staging memory for copied writes that get no registered buffer (recycled).
    heap_staging: Vec<AlignedBuf>,
    stats: IoStats,
    nowait_hits: u64,
    in_place_ops: u64,
}

impl<H: OpFile> OpTable<H> {
    /// A table of `config.queue_depth` preallocated slots for `config.max_files` files.
    /// `barrier: false` drops the datasync barrier: a sync starts at once and later writes are
    /// not held behind it (for an owner that orders syncs itself).
    pub fn new(config: &IoConfig, barrier: bool) -> Self {
        let depth = config.queue_depth;
        OpTable {
            config: config.clone(),
            barrier,
            slots: (0..depth).map(|_| OpSlot::empty()).collect(),
            free_slots: (0..depth as u32).rev().collect(),
            files: FdTable::with_capacity(config.max_files),
            tokens: TokenCounter::new(),
            ready: VecDeque::with_capacity(depth),
            pending: 0,
            out: 0,
            heap_staging: Vec::with_capacity(depth),
            stats: IoStats::new(),
            nowait_hits: 0,
            in_place_ops: 0,
        }
    }

    /// The configuration the table was built with.
    pub fn config(&self) -> &IoConfig {
        &self.config
    }

    /// Slot `idx`.
    pub fn slot(&self, idx: u32) -> &OpSlot {
        &self.slots[idx as usize]
    }

    /// Slot `idx`, to take its payload out while the op runs (and put it back before
    /// [`complete`](Self::complete)).
    pub fn slot_mut(&mut self, idx: u32) -> &mut OpSlot {
        &mut self.slots[idx as usize]
    }

    /// How many slots there are (`queue_depth`).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The driver's handle on `fd`'s file.
    pub fn file(&self, fd: IoFd) -> Result<&H> {
        Ok(&self.files.get(fd)?.handle)
    }

    /// Ops started at the driver and not yet back.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Ops accepted and not yet finished (out or held): the slots in use.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Completions waiting for a poll.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Ops accepted and not yet delivered.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The stats of every op through this table.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    /// The stats, for a driver's own counters (system calls).
    pub fn stats_mut(&mut self) -> &mut IoStats {
        &mut self.stats
    }

    /// Reads answered from the page cache at submit (`IoConfig::nowait_reads`).
    pub fn nowait_hits(&self) -> u64 {
        self.nowait_hits
    }

    /// Reads and writes done in place on a registered buffer the caller was lent.
    pub fn in_place_ops(&self) -> u64 {
        self.in_place_ops
    }

    /// Leaks every slot's memory (a driver that cannot tell when the kernel stops using it).
    pub fn leak_slots(&mut self) {
        std::mem::forget(std::mem::take(&mut self.slots));
        self.free_slots.clear();
    }

    /// Counts slot `idx` back from the driver (before it is continued or completed).
    pub fn returned(&mut self, idx: u32) {
        let slot = &self.slots[idx as usize];
        debug_assert!(self.out > 0, "an op came back that was not out");
        self.out -= 1;
        if slot.op.is_write()
            && let Ok(f) = self.files.get_mut(slot.fd)
        {
            f.writes_out -= 1;
        }
    }

    /// Takes the outcome of one transfer of slot `idx` (`Ok(bytes)` or `Err(errno)`): `None`
    /// when the op must start again for the rest (a short transfer, or `EAGAIN`/`EINTR` fewer
    /// than [`MAX_RETRIES`] times), else its result. End of file is a successful short read;
    /// a write that transfers nothing is `EIO`.
    #[cfg(unix)]
    pub fn transferred(&mut self, idx: u32, res: std::result::Result<usize, i32>) -> Option<Result<usize>> {
        let slot = &mut self.slots[idx as usize];
        let n = match res {
            Err(errno) if (errno == libc::EAGAIN || errno == libc::EINTR) && slot.retries < MAX_RETRIES => {
                slot.retries += 1;
                return None;
            }
            Err(errno) => return Some(Err(StorageIoError::os(slot.op, errno))),
            Ok(n) => n,
        };
        match slot.op {
            OpKind::Datasync | OpKind::Fsync => Some(Ok(0)),
            OpKind::Read => {
                slot.done += n;
                (n == 0 || slot.done >= slot.len).then_some(Ok(slot.done))
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
    }

    /// Starts slot `idx` at `driver` (again, for a continuation, or once the barrier releases
    /// it); if the driver refuses, the op completes with that error.
    pub fn dispatch<D: OpDriver<File = H>>(&mut self, driver: &mut D, idx: u32) {
        self.count_out(idx);
        if let Err(e) = driver.start(self, idx) {
            self.returned(idx);
            let op = self.slots[idx as usize].op;
            self.complete(driver, idx, Err(StorageIoError::from_io(op, &e)));
        }
    }

    /// "Here is its completion": finishes slot `idx` with `result` (the driver counted it back
    /// with [`returned`](Self::returned) and put its payload back), queues the completion for
    /// the next poll, and starts the held ops of its file that the barrier now lets go.
    pub fn complete<D: OpDriver<File = H>>(&mut self, driver: &mut D, idx: u32, result: Result<usize>) {
        let fd = self.finish(idx, result);
        let Ok(f) = self.files.get_mut(fd) else { return };
        f.ops_in_flight -= 1;
        loop {
            let Ok(f) = self.files.get_mut(fd) else { return };
            let slots = &self.slots;
            let Some(next) = f.held.next_released(f.writes_out, |&i| slots[i as usize].op) else {
                return;
            };
            self.dispatch(driver, next);
        }
    }

    /// Moves every ready completion into `out`, oldest first; returns how many.
    pub fn deliver(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.check_counts();
        let n = self.ready.len();
        self.pending -= n;
        out.extend(self.ready.drain(..));
        n
    }

    /// Pair check of the counters: every pending op is in a slot or ready, and every op out
    /// holds a slot.
    fn check_counts(&self) {
        let (pending, in_flight, ready) = (self.pending, self.in_flight(), self.ready.len());
        crate::invariant!(
            pending == in_flight + ready,
            "pending ops ({pending}) are exactly the slots in use ({in_flight}) plus the completions ready ({ready})"
        );
        crate::invariant!(
            self.out <= in_flight,
            "every op out ({}) holds a slot ({in_flight} in use)",
            self.out
        );
    }

    fn count_out(&mut self, idx: u32) {
        self.out += 1;
        let slot = &self.slots[idx as usize];
        if slot.op.is_write()
            && let Ok(f) = self.files.get_mut(slot.fd)
        {
            f.writes_out += 1;
        }
    }

    /// Registers an open file: its append cursor starts at its length.
    pub(crate) fn insert(&mut self, handle: H) -> Result<IoFd> {
        let append_cursor = handle.file_len()?;
        let align = handle.std_file().and_then(direct_alignment);
        self.files.insert(QueuedFile {
            handle,
            align,
            append_cursor,
            ops_in_flight: 0,
            writes_out: 0,
            held: DatasyncBarrier::new(),
            nowait: NowaitGate::default(),
        })
    }

    /// Drops `fd` from the table (its ops must all be back).
    pub(crate) fn remove(&mut self, fd: IoFd) -> Result<H> {
        let f = self.files.remove(fd)?;
        debug_assert_eq!(f.ops_in_flight, 0, "a file leaves the table with no op in flight");
        Ok(f.handle)
    }

    /// Ops of `fd` out or held.
    pub(crate) fn ops_in_flight(&self, fd: IoFd) -> Result<usize> {
        Ok(self.files.get(fd)?.ops_in_flight)
    }

    /// The file's length now.
    pub(crate) fn file_len(&self, fd: IoFd) -> Result<u64> {
        self.files.get(fd)?.handle.file_len()
    }

    /// Checks a read of `buf` at `offset` before it is accepted.
    pub(crate) fn check_read(&self, fd: IoFd, buf: &IoBuf, offset: u64) -> Result<()> {
        self.admit()?;
        let f = self.files.get(fd)?;
        validate_transfer(f.align, offset, buf.len(), buf.addr(), self.config.max_io_bytes)
    }

    /// Whether the file's direct I/O takes memory at `addr` (any address for a buffered file).
    pub(crate) fn address_fits(&self, fd: IoFd, addr: usize) -> Result<bool> {
        Ok(addr.is_multiple_of(self.files.get(fd)?.align.unwrap_or(1)))
    }

    /// Counts `n` ops done in place on a lent registered buffer.
    pub(crate) fn count_in_place(&mut self, n: bool) {
        self.in_place_ops += u64::from(n);
    }

    pub(crate) fn admit(&self) -> Result<()> {
        if self.pending >= self.config.queue_depth || self.free_slots.is_empty() {
            return Err(StorageIoError::QueueFull {
                limit: self.config.queue_depth,
            });
        }
        Ok(())
    }

    /// Takes a slot, fills it, and starts it at `driver` or holds it behind the barrier. On a
    /// refusal (no slot, or the driver could not start it) nothing was accepted and the
    /// payload comes back.
    #[allow(clippy::result_large_err)] // a refusal hands the payload back; boxing it would allocate
    pub(crate) fn accept<D: OpDriver<File = H>>(
        &mut self,
        driver: &mut D,
        (fd, op, offset, len): (IoFd, OpKind, u64, usize),
        done: usize,
        payload: OpPayload,
    ) -> std::result::Result<IoToken, (StorageIoError, OpPayload)> {
        let hold = match self.files.get(fd) {
            Ok(f) => self.barrier && f.held.must_hold(op, f.writes_out),
            Err(e) => return Err((e, payload)),
        };
        let Some(idx) = self.free_slots.pop() else {
            let limit = self.config.queue_depth;
            return Err((StorageIoError::QueueFull { limit }, payload));
        };
        let token = self.tokens.next_token();
        self.slots[idx as usize] = OpSlot {
            op,
            fd,
            offset,
            len,
            done,
            payload,
            token,
            retries: 0,
            started: Instant::now(),
        };
        self.pending += 1;
        if let Ok(f) = self.files.get_mut(fd) {
            f.ops_in_flight += 1;
            if hold {
                f.held.hold(idx);
            }
        }
        if !hold {
            self.count_out(idx);
            if let Err(e) = driver.start(self, idx) {
                // The driver never took it: undo the admission and hand the payload back.
                self.returned(idx);
                let payload = std::mem::take(&mut self.slots[idx as usize].payload);
                self.free_slots.push(idx);
                self.pending -= 1;
                if let Ok(f) = self.files.get_mut(fd) {
                    f.ops_in_flight -= 1;
                }
                return Err((StorageIoError::from_io(op, &e), payload));
            }
        }
        self.stats.record_submit(op);
        driver.accepted(self);
        Ok(token)
    }

    /// Frees slot `idx`, turns it into a completion (recycling staging) and queues it.
    pub(crate) fn finish(&mut self, idx: u32, result: Result<usize>) -> IoFd {
        let slot = &mut self.slots[idx as usize];
        let payload = std::mem::take(&mut slot.payload);
        let (token, op, fd, offset, len, started) =
            (slot.token, slot.op, slot.fd, slot.offset, slot.len, slot.started);
        let buf = match payload {
            OpPayload::Read(mut b) => {
                if let Ok(n) = result {
                    b.truncate(n);
                }
                Some(b)
            }
            OpPayload::ReadStaged { staging, mut user } => {
                if let Ok(n) = result {
                    user.as_mut_slice()[..n].copy_from_slice(&staging[..n]);
                    user.truncate(n);
                }
                // Dropping a registered staging buffer puts it back on its free list.
                Some(user)
            }
            OpPayload::WriteOwned(b) => Some(b),
            OpPayload::WriteStaged(b) => {
                if !b.is_pooled()
                    && self.heap_staging.len() < self.heap_staging.capacity()
                    && b.capacity() <= self.config.buffer_size
                {
                    self.heap_staging.push(b);
                }
                None
            }
            OpPayload::WriteShared(_) | OpPayload::Sync | OpPayload::None => None,
        };
        self.stats
            .record_complete(op, result.as_ref().map(|&n| n).map_err(|_| ()), started.elapsed());
        debug_assert!(!self.free_slots.contains(&idx), "a slot finishes once");
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
        fd
    }

    /// Checks a write and plans where it goes. The cursor itself moves only once the write
    /// is accepted ([`commit_cursor`](Self::commit_cursor)), so a refused submit leaves no hole.
    pub(crate) fn plan(&self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<WritePlan> {
        self.admit()?;
        let f = self.files.get(fd)?;
        let mut cursor = f.append_cursor;
        let (op, offset) = plan_write(&mut cursor, f.align, offset, data, self.config.max_io_bytes)?;
        Ok(WritePlan { op, offset, cursor })
    }

    pub(crate) fn commit_cursor(&mut self, fd: IoFd, plan: &WritePlan) {
        if let Ok(f) = self.files.get_mut(fd) {
            debug_assert!(
                plan.cursor >= f.append_cursor,
                "an accepted write never moves the cursor back"
            );
            f.append_cursor = plan.cursor;
        }
    }

    /// Stages a copied write: a registered buffer when one is free and big enough, else heap.
    pub(crate) fn stage_copy(&mut self, registered: Option<&FixedBufs>, data: &[u8]) -> Result<OpPayload> {
        if let Some(mut b) = registered.and_then(|f| f.take(data.len())) {
            b.copy_from_slice(data);
            return Ok(OpPayload::WriteStaged(b));
        }
        let mut buf = match self.heap_staging.pop() {
            Some(b) if b.capacity() >= data.len() => b,
            _ => AlignedBuf::zeroed(self.config.buffer_size.max(data.len()), crate::DEFAULT_ALIGNMENT)?,
        };
        buf.clear();
        buf.extend_from_slice(data)?;
        Ok(OpPayload::WriteStaged(buf))
    }

    /// The read of `buf` at `offset` from the page cache, tried on this thread when
    /// `nowait_reads` and the file allow it.
    pub(crate) fn try_nowait(
        &mut self,
        fd: IoFd,
        buf: &mut IoBuf,
        offset: u64,
    ) -> Option<(NowaitRead, Instant)> {
        let enabled = self.config.nowait_reads;
        let f = self.files.get_mut(fd).ok()?;
        let file = f.handle.std_file()?;
        try_cached_read_file(enabled, f.align, &mut f.nowait, file, buf.as_mut_slice(), offset)
    }

    /// A read the page cache answered whole at submit: no slot, nothing at the driver; its
    /// completion waits in `ready` (capacity `queue_depth`, so this does not allocate).
    pub(crate) fn complete_at_submit(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        n: usize,
        started: Instant,
    ) -> IoToken {
        self.pending += 1;
        self.nowait_hits += 1;
        let token = self.tokens.next_token();
        let done = cached_read_completion(token, &mut self.stats, fd, buf, offset, n, started);
        self.ready.push_back(done);
        token
    }
}

/// The registered-buffer index of `buf` when it is one of `fixed`'s buffers.
pub fn registered_index(fixed: Option<&FixedBufs>, buf: &IoBuf) -> Option<u16> {
    match (fixed, buf) {
        (Some(f), IoBuf::Aligned(b)) => f.index_of(b),
        _ => None,
    }
}
