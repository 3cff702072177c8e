//! [`WalManager`]: appends, group commit, durability waits, truncation, close.
//!
//! Appends copy the framed record into an in-memory queue under a short lock and get their LSN
//! at once. Whoever then needs durability and finds no flush running becomes the *leader*: it
//! takes the whole queue, writes it with one write per segment touched, issues one fdatasync
//! per segment, and wakes every waiter the flush covered. Committers that arrive meanwhile queue
//! their records behind it and wait; the next leader is one of them, so a batch forms while the
//! previous fdatasync runs. The backend is owned by whichever thread leads (a `Mutex` that only
//! the leader and `truncate_before` take), so a single committer pays no thread hand-off.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use storage_io_core::{BackendFactory, DirLock, OpKind, StorageIoError};

use crate::Lsn;
use crate::config::{SyncMode, WalConfig};
use crate::error::WalError;
use crate::format::{
    KIND_DATA, KIND_SEGMENT_END, MARKER_BYTES, PAD_BLOCK_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    TORN_WINDOW_BYTES, encode_marker, encode_pad, encode_record, encode_segment_header, max_payload_bytes,
    pad_bytes, segment_in_lsn_space,
};
use crate::prepare::Preparer;
use crate::reader::WalReader;
use crate::recovery::{RecoveryReport, recover};
use crate::segio::{IoFailure, SegmentIo, Staged, WriteJob};
use flush::{Flight, Piece};

mod async_commit;
mod flush;

pub use async_commit::Durable;
use async_commit::Waiters;
use flush::SlotPool;

const ENOSPC: i32 = 28;

/// The next segment is prepared once the current one is 1 / `PREPARE_AT` full: early enough
/// that its zero-fill (paced by the preparer) finishes long before the log needs it, late
/// enough that a log just opened does not share the disk with it during its first commits.
const PREPARE_AT: u64 = 2;

#[derive(Debug)]
struct State {
    /// LSN the next record gets.
    next_lsn: Lsn,
    /// Framed records not yet written, in LSN order.
    pieces: Vec<Piece>,
    pending_bytes: usize,
    /// A leader is writing (or gathering) a batch: the write phase, one at a time.
    flushing: bool,
    /// Flushes whose writes are done and whose fdatasyncs run (at most
    /// `max_flushes_in_flight`, counting the one in its write phase).
    in_sync: usize,
    /// Flushes started and not yet published, oldest first. A flush is published (its end
    /// becomes `durable_lsn`) only when it and every flush before it are done.
    in_flight: VecDeque<Flight>,
    /// Flushes started so far; the one in flight (if any) has this number.
    flushes_started: u64,
    /// Data records queued and not yet taken by a flush.
    pending_records: usize,
    /// Direct mode, several flushes in flight: the newest flush ends inside a block, without a
    /// pad, and its writes have not completed; the next flush rewrites that block, so it may
    /// not start before.
    tail_open: bool,
    /// The leader is waiting for more records (group delay); appends wake it when the batch is full.
    gathering: bool,
    written_lsn: Lsn,
    durable_lsn: Lsn,
    first_lsn: Lsn,
    first_segment: u64,
    poisoned: Option<StorageIoError>,
    disk_full: Option<StorageIoError>,
    /// Bumped by every flush that failed for a full disk, so its waiters can tell.
    disk_full_seq: u64,
    closed: bool,
    /// `close` has started: appends are refused ([`WalError::Closed`]) while it makes
    /// everything admitted before durable; `closed` follows once it has.
    closing: bool,
    /// What the first `close` answered when it failed: every later `close` answers it again
    /// (what was admitted before it is not durable, and nothing will make it so).
    close_error: Option<WalError>,
    /// Async committers' wakers, by (target, id): woken once `durable_lsn >= target`, or on
    /// failure, a full disk or close.
    async_waiters: Waiters,
    next_waiter_id: u64,
    /// The WAL I/O thread flushes until everything before this is durable (async commits
    /// raise it as they append).
    async_wanted: Lsn,
    /// The newest segment asked of the preparer, or taken by a flush (which then creates it or
    /// takes it ready-made): a segment is never asked for once a flush has it.
    prepare_asked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    flushes: AtomicU64,
    datasyncs: AtomicU64,
    bytes_written: AtomicU64,
    segments_prepared: AtomicU64,
}

/// Counters of one [`WalManager`] since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalStats {
    /// Records appended.
    pub appends: u64,
    /// Flushes written (each one write per segment touched).
    pub flushes: u64,
    /// fdatasyncs issued by flushes: fewer than commits when group commit works; none with
    /// [`WalConfig::direct_io`] on ext4, XFS or btrfs, whose direct writes are durable when
    /// they complete (on other file systems direct flushes add one).
    pub datasyncs: u64,
    /// Bytes of records (and segment headers) written by flushes.
    pub bytes_written: u64,
    /// New segments a flush took ready-made from the background preparer
    /// ([`WalConfig::prepare_ahead`]) instead of zero-filling them itself.
    pub segments_prepared: u64,
}

struct Shared {
    config: WalConfig,
    segment_size: u64,
    dir: PathBuf,
    factory: BackendFactory,
    state: Mutex<State>,
    /// Waiters sleep on `covered[n % covered.len()]` for flush `n`, the first whose batch holds
    /// their record (`max_flushes_in_flight + 2` condvars, so the flushes in flight and the next
    /// one never share one).
    /// When flush `n` ends it wakes exactly its waiters, plus one waiter of flush `n + 1` to
    /// lead it: a waiter is woken once per commit, not once per flush. Both are woken when the
    /// WAL fails, the disk is full, or the WAL closes.
    covered: Vec<Condvar>,
    /// Flushes allowed in flight at once (1 unless buffered flushes go inline or direct mode
    /// has flush slots).
    max_in_flight: usize,
    /// Direct mode with several flushes in flight: the flush slots, each a `SegmentIo` on a
    /// backend of its own, on which a flush's writes are submitted and waited for after the
    /// writer staged them.
    slots: Mutex<SlotPool>,
    /// Wakes a flush waiting for a slot to come back (when no more can be made).
    slot_back: Condvar,
    /// Flushes go through `slots` (direct mode, `max_flushes_in_flight > 1`).
    slotted: bool,
    /// Wakes a leader that is gathering a batch (group delay) once the batch is full.
    gather: Condvar,
    /// Wakes the background flusher of `SyncMode::Async` (close).
    tick: Condvar,
    writer: Mutex<SegmentIo>,
    /// Zero-fills the next segment ahead of the writer (`prepare_ahead`).
    preparer: Option<Preparer>,
    counters: Counters,
    /// Buffered inline flushes: one fdatasync in flight at a time (see [`flush::SyncGate`]).
    sync_gate: flush::SyncGate,
    /// Wakes the WAL I/O thread that flushes for async committers.
    io_wake: Condvar,
    /// `durable_lsn`, readable without the state lock (a future polled after its flush finds
    /// itself done here).
    durable: AtomicU64,
    /// The WAL I/O thread has been started (`io_thread` is set).
    io_started: std::sync::atomic::AtomicBool,
    /// That thread, started by the first async commit.
    io_thread: Mutex<Option<JoinHandle<()>>>,
}

/// The write-ahead log. Share it between threads with `Arc`; every method takes `&self`.
///
/// ```
/// use std::sync::Arc;
/// use storage_io_core::{BackendFactory, StorageIo};
/// use storage_io_testkit::memio::MemFs;
/// use storage_io_wal::{WalConfig, WalManager};
///
/// let fs = MemFs::new(1); // in memory here; storage_io::backend_factory gives a real one
/// let factory: BackendFactory = { let fs = fs.clone(); Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>)) };
/// let (wal, next) = WalManager::open("/db/wal", WalConfig::default(), factory.clone()).unwrap();
/// let lsn = wal.commit(b"insert into t values (1)").unwrap(); // durable when it returns
/// assert!(lsn >= next);
/// wal.close().unwrap();
///
/// let (wal, _) = WalManager::open("/db/wal", WalConfig::default(), factory).unwrap();
/// let records: Vec<_> = wal.reader(wal.first_lsn()).unwrap().map(|r| r.unwrap().1).collect();
/// assert_eq!(records, vec![b"insert into t values (1)".to_vec()]);
/// ```
pub struct WalManager {
    shared: Arc<Shared>,
    background: Mutex<Option<JoinHandle<()>>>,
    report: RecoveryReport,
    /// The directory's lock, from open until `close` has finished (or the manager is dropped).
    lock: Mutex<Option<DirLock>>,
    /// Held for the whole of `close`: a second call waits for the first, then answers as it did,
    /// so the directory lock is never released while the first is still shutting down.
    close_gate: Mutex<()>,
}

impl WalManager {
    /// Opens (creating if needed) the log in `dir`, recovers it, and returns the manager and the
    /// LSN the next record will get. `factory(0)` builds the backend the log writes through;
    /// readers build theirs with `factory(1)`, and the segment preparer
    /// ([`WalConfig::prepare_ahead`]) with `factory(2)`.
    ///
    /// One manager per directory: open takes the directory's lock (`dir/LOCK`, an exclusive
    /// `flock` on real files, through the backend's `lock_dir`) and holds it until
    /// [`close`](WalManager::close) finishes or the manager is dropped; a second open, in this
    /// process or another, fails with [`WalError::DirLocked`].
    pub fn open(
        dir: impl AsRef<Path>,
        config: WalConfig,
        factory: BackendFactory,
    ) -> Result<(WalManager, Lsn), WalError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let mut io = SegmentIo::new(
            factory(0)?,
            &dir,
            config.segment_size_bytes,
            config.write_chunk_bytes,
            config.direct_io,
        );
        if config.inline_io {
            io = io.inline_io();
        }
        // Before anything is read or changed: one owner per directory.
        let lock = io.lock_dir()?;
        let (plan, report) = recover(&mut io, &config)?;
        // Direct mode trusts O_DSYNC only where the file system is known to honour it for
        // writes submitted asynchronously; elsewhere every flush adds an fdatasync.
        let dsync_trusted = !config.direct_io || dsync_trusted(&dir);
        io.set_sync_direct(!dsync_trusted);
        let segment_size = report.segment_size_bytes;
        if config.direct_io && !segment_size.is_multiple_of(4096) {
            return Err(WalError::InvalidConfig(format!(
                "the log in {} has segments of {segment_size} bytes, not a multiple of 4096: open it without direct_io",
                dir.display()
            )));
        }
        let state = State::recovered(&plan, &report);
        tracing::info!(
            dir = %dir.display(),
            backend = io.backend_name(),
            records = report.records,
            next_lsn = %report.next_lsn,
            torn_tail_bytes = report.torn_tail_bytes,
            "wal opened"
        );
        let preparer = if config.preallocate && config.prepare_ahead {
            start_preparer(&factory, &dir, segment_size, &config, dsync_trusted)
        } else {
            None
        };
        if let Some(p) = &preparer {
            // The first segment, for a log that has none; else the next one once the current
            // one is half full (see `PREPARE_AT`), which may be now.
            if plan.end_offset == 0 {
                p.request(plan.end_segment);
            } else if plan.end_offset >= segment_size / PREPARE_AT
                && segment_in_lsn_space(plan.end_segment + 1, segment_size)
            {
                p.request(plan.end_segment + 1);
            }
        }
        let flights = Flights::new(&config, &factory, &dir, segment_size, dsync_trusted)?;
        let shared = Arc::new(Shared {
            segment_size,
            dir,
            factory,
            durable: AtomicU64::new(state.durable_lsn.0),
            state: Mutex::new(state),
            covered: (0..flights.max_in_flight + 2).map(|_| Condvar::new()).collect(),
            max_in_flight: flights.max_in_flight,
            slots: Mutex::new(flights.slots),
            slot_back: Condvar::new(),
            slotted: flights.slotted,
            gather: Condvar::new(),
            tick: Condvar::new(),
            writer: Mutex::new(io),
            preparer,
            counters: Counters::default(),
            io_wake: Condvar::new(),
            sync_gate: flush::SyncGate::default(),
            io_started: std::sync::atomic::AtomicBool::new(false),
            io_thread: Mutex::new(None),
            config,
        });
        let background = start_background(&shared)?;
        let next = report.next_lsn;
        Ok((
            WalManager {
                shared,
                background: Mutex::new(background),
                report,
                lock: Mutex::new(Some(lock)),
                close_gate: Mutex::new(()),
            },
            next,
        ))
    }

    /// Appends one record and returns its LSN. The record is queued in memory: it is durable
    /// after [`wait_durable`](WalManager::wait_durable) of this LSN (or a later one) returns.
    pub fn append(&self, record: &[u8]) -> Result<Lsn, WalError> {
        self.shared.check_size(record.len())?;
        let mut st = self.shared.state.lock();
        self.shared.admit(&mut st)?;
        self.shared.place(&mut st, record).map(Lsn)
    }

    /// Appends several records at consecutive positions, all or none (sizes are checked before
    /// any is queued); returns their LSNs.
    pub fn append_batch<'a>(
        &self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Lsn>, WalError> {
        let records: Vec<&[u8]> = records.into_iter().collect();
        for r in &records {
            self.shared.check_size(r.len())?;
        }
        let mut st = self.shared.state.lock();
        self.shared.admit(&mut st)?;
        // All or none: every record must have a position before any is queued.
        let mut at = st.next_lsn.0;
        for r in &records {
            at = self.shared.position(at, r.len())? + RECORD_HEADER_BYTES + r.len() as u64;
        }
        records
            .iter()
            .map(|r| self.shared.place(&mut st, r).map(Lsn))
            .collect()
    }

    /// Appends one record and returns once it is durable as the sync mode defines it (at once
    /// under `Async`, whose background thread makes it durable later).
    pub fn commit(&self, record: &[u8]) -> Result<Lsn, WalError> {
        let lsn = self.append(record)?;
        if !matches!(self.shared.config.sync_mode, SyncMode::Async { .. }) {
            self.wait_durable(lsn)?;
        }
        Ok(lsn)
    }

    /// Blocks until the record at `lsn` (and everything before it) is durable, leading a flush
    /// if none is running. Errors: the WAL failed ([`WalError::Poisoned`]), the disk is full
    /// ([`WalError::DiskFull`]: not durable yet), or `lsn` was never appended.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut st = self.shared.state.lock();
        if lsn >= st.next_lsn || lsn < st.first_lsn {
            return Err(WalError::LsnOutOfRange {
                lsn,
                first: st.first_lsn,
                next: st.next_lsn,
            });
        }
        self.shared.sync_to(&mut st, Lsn(lsn.0 + 1))
    }

    /// Makes everything appended so far durable; returns the durable end of the log.
    pub fn flush(&self) -> Result<Lsn, WalError> {
        let mut st = self.shared.state.lock();
        let target = st.next_lsn;
        self.shared.sync_to(&mut st, target)?;
        Ok(st.durable_lsn)
    }

    /// Everything before this LSN is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.state.lock().durable_lsn
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.shared.state.lock().next_lsn
    }

    /// The first LSN still in the log (moves forward with [`truncate_before`](WalManager::truncate_before)).
    pub fn first_lsn(&self) -> Lsn {
        self.shared.state.lock().first_lsn
    }

    /// The segment size the log uses (from its headers when it existed before).
    pub fn segment_size_bytes(&self) -> u64 {
        self.shared.segment_size
    }

    /// The largest record payload this log accepts.
    pub fn max_record_bytes(&self) -> u64 {
        max_payload_bytes(self.shared.segment_size)
    }

    /// What recovery found when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            appends: c.appends.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            datasyncs: c.datasyncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            segments_prepared: c.segments_prepared.load(Ordering::Relaxed),
        }
    }

    /// Iterates the records written so far from `from` (an LSN the log holds, usually a
    /// record's or [`first_lsn`](WalManager::first_lsn)), through a backend of its own
    /// (`factory(1)`). Records appended after this call are not seen.
    pub fn reader(&self, from: Lsn) -> Result<WalReader, WalError> {
        let (first, next, limit) = {
            let st = self.shared.state.lock();
            (st.first_lsn, st.next_lsn, st.written_lsn)
        };
        if from < first || from > next {
            return Err(WalError::LsnOutOfRange {
                lsn: from,
                first,
                next,
            });
        }
        let io = (self.shared.factory)(1)?;
        Ok(WalReader::new(
            io,
            &self.shared.dir,
            self.shared.segment_size,
            from.0,
            limit.0,
        ))
    }

    /// Removes the segments that hold only records before `lsn` (after a checkpoint), then syncs
    /// the directory; returns how many were removed. `lsn` must be durable; one before
    /// [`first_lsn`](WalManager::first_lsn) was truncated already and removes nothing.
    ///
    /// The newest segment file is always kept, even when every record in it is before `lsn`
    /// (a log whose durable end is exactly a segment boundary): it is what tells recovery where
    /// the log goes on, so that LSNs never go backwards after a crash. Calls from several
    /// threads are serialised; `first_lsn` only moves forward.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize, WalError> {
        let size = self.shared.segment_size;
        // The writer's lock first and for the whole call: a second truncation waits, then
        // starts from what this one left.
        let mut w = self.shared.writer.lock();
        let (first_segment, keep_from) = {
            let st = self.shared.state.lock();
            if lsn > st.durable_lsn {
                return Err(WalError::LsnOutOfRange {
                    lsn,
                    first: st.first_lsn,
                    next: st.durable_lsn,
                });
            }
            // The segment holding the last byte written exists on disk; it stays.
            let newest = st.written_lsn.0.saturating_sub(1) / size;
            (st.first_segment, (lsn.0 / size).min(newest))
        };
        if keep_from <= first_segment {
            return Ok(0);
        }
        // Every handle on the segments going away is closed, so their space is freed when
        // they are removed: the writer's (in `remove`) and those of idle flush slots, which
        // keep the segment they wrote last open. A slot in flight writes segments past the
        // durable end only, and closes the ones below its last when its write completes.
        // (Lock order: the writer, then the slots.)
        for slot in &mut self.shared.slots.lock().free {
            slot.close_below(keep_from);
            debug_assert!(slot.lowest_open().is_none_or(|s| s >= keep_from));
        }
        for s in first_segment..keep_from {
            w.remove(s)?;
        }
        w.sync_dir()?;
        let mut st = self.shared.state.lock();
        st.first_segment = keep_from;
        st.first_lsn = Lsn(keep_from * size + SEGMENT_HEADER_BYTES);
        st.check_lsns();
        Ok((keep_from - first_segment) as usize)
    }

    /// Stops accepting records and makes everything appended before durable. From the moment
    /// it starts, appends and commits (blocking or async) get [`WalError::Closed`]; it returns
    /// once every record admitted before is durable, or with the error that kept one from
    /// being so: [`WalError::Poisoned`] for a WAL that failed (then, and on every later call),
    /// [`WalError::DiskFull`] when the final flush found the disk full. Dropping the manager
    /// does the same and logs a failure.
    pub fn close(&self) -> Result<(), WalError> {
        let _one_at_a_time = self.close_gate.lock();
        let result = {
            let mut st = self.shared.state.lock();
            if st.closed {
                return match (&st.poisoned, &st.close_error) {
                    (Some(cause), _) => Err(WalError::Poisoned { cause: cause.clone() }),
                    (None, Some(first)) => Err(first.clone()),
                    (None, None) => Ok(()),
                };
            }
            // Under the same lock as the target: nothing is admitted after it.
            st.closing = true;
            let target = st.next_lsn;
            // A poisoned WAL answers its poison here: what it admitted is not durable.
            let result = self.shared.sync_to(&mut st, target);
            debug_assert!(
                // (The last batch's marker and pad lie past `target`.)
                result.is_err() || (st.durable_lsn >= st.next_lsn && st.durable_lsn >= target),
                "close returns Ok only when everything admitted is durable"
            );
            st.closed = true;
            st.close_error = result.as_ref().err().cloned();
            result
        };
        self.shared.tick.notify_all();
        self.shared.wake_everyone(&mut self.shared.state.lock());
        if let Some(handle) = self.background.lock().take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.shared.io_thread.lock().take() {
            let _ = handle.join();
        }
        if let Some(p) = &self.shared.preparer {
            // After the last flush: a segment prepared and never taken is removed.
            p.stop();
        }
        // Last: nothing of this manager touches the directory any more.
        drop(self.lock.lock().take());
        result
    }
}

/// Starts the segment preparer on a backend of its own; `None` (with a warning) when the factory
/// gives no backend for it or the thread cannot start: flushes then create segments themselves.
fn start_preparer(
    factory: &BackendFactory,
    dir: &Path,
    segment_size: u64,
    config: &WalConfig,
    dsync_trusted: bool,
) -> Option<Preparer> {
    let started = factory(2).map_err(|e| e.to_string()).and_then(|backend| {
        let mut io = SegmentIo::new(
            backend,
            dir,
            segment_size,
            config.write_chunk_bytes,
            config.direct_io,
        );
        io.set_sync_direct(config.direct_io && !dsync_trusted);
        // Direct segments' writes are durable as they complete, where O_DSYNC is trusted.
        let sync = config.sync_mode.syncs() && !(config.direct_io && dsync_trusted);
        Preparer::start(io, sync).map_err(|e| e.to_string())
    });
    match started {
        Ok(p) => Some(p),
        Err(error) => {
            tracing::warn!(%error, "the wal cannot prepare segments in the background; flushes will zero-fill them");
            None
        }
    }
}

/// How many flushes may be in flight, and the flush slots direct mode needs for that.
struct Flights {
    max_in_flight: usize,
    slotted: bool,
    slots: SlotPool,
}

impl Flights {
    /// Several flushes overlap only where a flush can complete without the writer: buffered
    /// segments written inline (the fdatasyncs of one file run concurrently on ext4), or direct
    /// writes submitted on a flush slot's own backend. The first slot is made now, so that a
    /// factory that cannot make one fails the open; the rest as flushes overlap.
    fn new(
        config: &WalConfig,
        factory: &BackendFactory,
        dir: &Path,
        segment_size: u64,
        dsync_trusted: bool,
    ) -> Result<Flights, WalError> {
        let slotted = config.direct_io && config.max_flushes_in_flight > 1;
        let max_in_flight = if (config.inline_io && !config.direct_io) || slotted {
            config.max_flushes_in_flight
        } else {
            1
        };
        let mut slots = SlotPool {
            free: Vec::new(),
            made: 0,
            sync_direct: !dsync_trusted,
        };
        if slotted {
            let slot = slots.make(factory, dir, segment_size, config.write_chunk_bytes)?;
            slots.free.push(slot);
        }
        Ok(Flights {
            max_in_flight,
            slotted,
            slots,
        })
    }
}

/// Starts the `SyncMode::Async` flusher thread, for that mode only.
fn start_background(shared: &Arc<Shared>) -> Result<Option<JoinHandle<()>>, WalError> {
    let SyncMode::Async { interval_ms } = shared.config.sync_mode else {
        return Ok(None);
    };
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name("wal-flusher".into())
        .spawn(move || s.background(Duration::from_millis(interval_ms)))
        .map(Some)
        .map_err(|e| WalError::Io(StorageIoError::from_os("spawning the wal flusher thread", &e)))
}

impl State {
    /// The state of a log that recovery left as `plan` says: everything before its end
    /// durable, and, when the next segment does not exist yet, that segment's header queued
    /// as the first thing the first flush writes.
    fn recovered(plan: &crate::recovery::Plan, report: &RecoveryReport) -> State {
        let mut state = State {
            next_lsn: report.next_lsn,
            pieces: Vec::new(),
            pending_bytes: 0,
            flushing: false,
            in_sync: 0,
            in_flight: VecDeque::new(),
            flushes_started: 0,
            pending_records: 0,
            tail_open: false,
            gathering: false,
            written_lsn: report.next_lsn,
            durable_lsn: report.next_lsn,
            first_lsn: report.first_lsn,
            first_segment: plan.kept.first().copied().unwrap_or(plan.end_segment),
            poisoned: None,
            disk_full: None,
            disk_full_seq: 0,
            closed: false,
            closing: false,
            close_error: None,
            async_waiters: Waiters::default(),
            next_waiter_id: 0,
            async_wanted: Lsn(0),
            prepare_asked: 0,
        };
        if plan.end_offset == 0 {
            let segment_size = report.segment_size_bytes;
            let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
            encode_segment_header(&mut bytes, segment_size, plan.end_segment);
            state.pending_bytes = bytes.len();
            state.pieces.push(Piece {
                segment: plan.end_segment,
                offset: 0,
                bytes,
            });
            state.written_lsn = Lsn(plan.end_segment * segment_size);
            state.durable_lsn = state.written_lsn;
        }
        state.check_lsns();
        state
    }
}

impl Drop for WalManager {
    fn drop(&mut self) {
        if self.shared.state.lock().closed {
            // `close` ran and answered already.
            return;
        }
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the wal on drop failed: records after the durable lsn may be lost");
        }
    }
}

impl Shared {
    fn check_size(&self, len: usize) -> Result<(), WalError> {
        let max = max_payload_bytes(self.segment_size);
        if len as u64 > max {
            return Err(WalError::RecordTooLarge { len, max });
        }
        Ok(())
    }

    /// Refuses appends to a closed or failed WAL; on a full disk, first retries the queued flush.
    fn admit(&self, st: &mut MutexGuard<'_, State>) -> Result<(), WalError> {
        if st.closed || st.closing {
            return Err(WalError::Closed);
        }
        if let Some(cause) = &st.poisoned {
            return Err(WalError::Poisoned { cause: cause.clone() });
        }
        if st.disk_full.is_some() {
            let target = st.next_lsn;
            self.sync_to(st, target)?;
        }
        Ok(())
    }

    /// Where a record of `len` payload bytes goes when the queue ends at `at`: at `at`, or at
    /// the start of the next segment (after its header) when it and the segment-end frame do
    /// not fit. `LsnSpaceExhausted` when it would need a segment whose positions pass 2^64
    /// (recovery could not take that segment back).
    fn position(&self, at: u64, len: usize) -> Result<u64, WalError> {
        let size = self.segment_size;
        let need = RECORD_HEADER_BYTES + len as u64;
        if at % size + need + RECORD_HEADER_BYTES <= size {
            return Ok(at);
        }
        if !self.segment_follows(at) {
            return Err(WalError::LsnSpaceExhausted { at: Lsn(at) });
        }
        Ok((at / size + 1) * size + SEGMENT_HEADER_BYTES)
    }

    /// Whether a segment can follow the one `at` is in: all its positions lie below 2^64.
    fn segment_follows(&self, at: u64) -> bool {
        segment_in_lsn_space(at / self.segment_size + 1, self.segment_size)
    }

    /// Frames `record` into the queue and returns its LSN; closes the segment first when the
    /// record (plus the segment-end frame) does not fit. Queues nothing when the LSN space
    /// has no room for it.
    fn place(&self, st: &mut State, record: &[u8]) -> Result<u64, WalError> {
        let size = self.segment_size;
        let need = RECORD_HEADER_BYTES + record.len() as u64;
        let lsn = self.position(st.next_lsn.0, record.len())?;
        if lsn != st.next_lsn.0 {
            self.close_segment(st);
        }
        debug_assert_eq!(lsn, st.next_lsn.0, "the record goes where its position was found");
        debug_assert!(
            lsn % size >= SEGMENT_HEADER_BYTES && lsn % size + need + RECORD_HEADER_BYTES <= size,
            "a record at {lsn} would overlap a segment header or leave no room for the end frame"
        );
        self.queue(st, |buf| encode_record(buf, KIND_DATA, lsn, record));
        st.pending_records += 1;
        self.counters.appends.fetch_add(1, Ordering::Relaxed);
        if st.gathering
            && let SyncMode::Group { max_batch_bytes, .. } = self.config.sync_mode
            && st.pending_bytes >= max_batch_bytes
        {
            self.gather.notify_all();
        }
        Ok(lsn)
    }

    /// Queues the segment-end frame at `next_lsn` and the next segment's header: the log goes
    /// on at the start of the next segment.
    fn close_segment(&self, st: &mut State) {
        let size = self.segment_size;
        let end_lsn = st.next_lsn.0;
        debug_assert!(
            self.segment_follows(end_lsn),
            "closing the segment of {end_lsn}, the last one below 2^64"
        );
        // From the frame's start: the frame may end exactly on the segment boundary.
        let next_segment = end_lsn / size + 1;
        self.queue(st, |buf| encode_record(buf, KIND_SEGMENT_END, end_lsn, &[]));
        st.next_lsn = Lsn(next_segment * size);
        self.queue(st, |buf| encode_segment_header(buf, size, next_segment));
    }

    /// Appends bytes at `next_lsn` to the queue (extending the last piece when contiguous).
    fn queue(&self, st: &mut State, encode: impl FnOnce(&mut Vec<u8>)) {
        let segment = st.next_lsn.0 / self.segment_size;
        let offset = st.next_lsn.0 % self.segment_size;
        let contiguous = st
            .pieces
            .last()
            .is_some_and(|p| p.segment == segment && p.offset + p.bytes.len() as u64 == offset);
        if !contiguous {
            st.pieces.push(Piece {
                segment,
                offset,
                bytes: Vec::with_capacity(4096),
            });
        }
        let piece = st.pieces.last_mut().expect("a piece was just ensured");
        let before = piece.bytes.len();
        encode(&mut piece.bytes);
        let added = piece.bytes.len() - before;
        st.next_lsn.0 += added as u64;
        st.pending_bytes += added;
        st.check_lsns();
    }
}

/// Whether `dir`'s file system honours O_DSYNC on direct writes however they are submitted
/// (`storage_io_core::dsync_trusted_at`). Recovery has created `dir` by now, so a directory the
/// OS knows nothing of belongs to a backend with a file system of its own (an in-memory one),
/// whose O_DSYNC is its own to honour: that one is trusted.
fn dsync_trusted(dir: &Path) -> bool {
    match storage_io_core::dsync_trusted_at(dir) {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                dir = %dir.display(),
                "the wal's file system is not known to make O_DIRECT | O_DSYNC writes durable when they complete (only ext4, xfs and btrfs are); every direct_io flush adds an fdatasync"
            );
            false
        }
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "the wal directory is not on an OS file system; the backend's O_DSYNC is trusted");
            true
        }
    }
}
