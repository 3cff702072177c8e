//! Flushing: leading a batch, its write and sync steps (inline, or on a flush slot in direct
//! mode), publishing flushes in LSN order, waking waiters and the next leader.

use super::*;
use crate::segio::SEGMENTS_OPEN_AT_ONCE;

/// Bytes queued for one segment, starting at `offset` in it (0 = the segment's header: the
/// flush creates the file).
#[derive(Debug)]
pub(super) struct Piece {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) bytes: Vec<u8>,
}

/// A flush started and not yet published (`State::in_flight`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Flight {
    /// Its number (`State::flushes_started` when it started).
    pub(super) number: u64,
    /// The LSN its batch ends at: `Lsn(u64::MAX)` while the leader still gathers.
    pub(super) end: Lsn,
    /// Its writes and syncs are done: published once every flush before it is.
    pub(super) done: bool,
}

impl State {
    /// The order of the log's positions, checked where they move: the oldest kept record is
    /// durable or older (or, before the first segment's header is durable, right behind it),
    /// durable is written, and written is no further than the next record.
    pub(super) fn check_lsns(&self) {
        storage_io_core::invariant!(
            (self.first_lsn <= self.durable_lsn
                || self.first_lsn.0 == self.durable_lsn.0 + SEGMENT_HEADER_BYTES)
                && self.durable_lsn <= self.written_lsn
                && self.written_lsn <= self.next_lsn,
            "wal positions out of order: first {} durable {} written {} next {}",
            self.first_lsn,
            self.durable_lsn,
            self.written_lsn,
            self.next_lsn
        );
    }
}

impl Shared {
    /// Waits until everything before `target` is durable, leading flushes as needed.
    pub(super) fn sync_to(&self, st: &mut MutexGuard<'_, State>, target: Lsn) -> Result<(), WalError> {
        let seen_full = st.disk_full_seq;
        loop {
            if let Some(cause) = &st.poisoned {
                return Err(WalError::Poisoned { cause: cause.clone() });
            }
            if st.durable_lsn >= target {
                return Ok(());
            }
            if st.disk_full_seq != seen_full {
                let cause = st
                    .disk_full
                    .clone()
                    .unwrap_or(StorageIoError::os(OpKind::Write, ENOSPC));
                return Err(WalError::DiskFull { cause });
            }
            // The flush that holds `target`, if one has taken it.
            let holder = st.in_flight.iter().find(|f| f.end >= target).map(|f| f.number);
            if holder.is_none() && self.may_start(st) {
                self.lead(st)?;
                continue;
            }
            // Wait for the flush that holds `target`, or for the next one (whose leader is
            // elected when a write phase ends or a slot frees).
            let needed = holder.unwrap_or(st.flushes_started + 1);
            self.covered[needed as usize % self.covered.len()].wait(st);
        }
    }

    /// Whether a new flush may start now: no other in its write phase, a free place in flight,
    /// no unpadded tail block still being written (direct mode), and, with flushes in flight,
    /// the queued bytes within [`TORN_WINDOW_BYTES`] of the durable end, which recovery relies
    /// on to tell a tear among writes in flight from damage.
    fn may_start(&self, st: &State) -> bool {
        !st.flushing
            && st.in_sync < self.max_in_flight
            && !st.tail_open
            && (st.in_flight.is_empty() || in_window(st))
    }

    /// Wakes one waiter of the next flush to lead it, if records wait and a flush may start.
    fn elect_next_leader(&self, st: &State) {
        if st.pending_bytes > 0 && self.may_start(st) {
            let next = st.flushes_started + 1;
            self.covered[next as usize % self.covered.len()].notify_one();
        }
    }

    /// Publishes every done flush at the front of `in_flight`: its end becomes durable and its
    /// waiters (threads and futures) are woken.
    fn publish(&self, st: &mut MutexGuard<'_, State>) {
        if st.poisoned.is_some() {
            // A flush before these failed: nothing after it is durable as a log.
            return;
        }
        let mut advanced = false;
        while let Some(&Flight {
            number: n,
            end,
            done: true,
        }) = st.in_flight.front()
        {
            st.in_flight.pop_front();
            st.written_lsn = end;
            st.durable_lsn = end;
            st.check_lsns();
            self.durable.store(end.0, Ordering::Release);
            st.disk_full = None;
            self.maybe_prepare_next(st, end.0);
            self.covered[n as usize % self.covered.len()].notify_all();
            advanced = true;
        }
        if advanced {
            let durable = st.durable_lsn;
            let ready = st.async_waiters.take_until(durable.0);
            if !ready.is_empty() {
                MutexGuard::unlocked(st, || ready.into_iter().for_each(Waker::wake));
            }
        }
    }

    /// Writes and syncs the whole queue as one batch (the caller found that a flush may start
    /// and that none holds its record). The write phase runs under the writer's lock, one at a
    /// time; the fdatasyncs of an inline flush run after it, so the next flush may write (and
    /// sync) meanwhile; a flush is published once every earlier one is.
    fn lead(&self, st: &mut MutexGuard<'_, State>) -> Result<(), WalError> {
        st.flushing = true;
        st.flushes_started += 1;
        let this = st.flushes_started;
        // Records appended while the leader gathers join this flush.
        st.in_flight.push_back(Flight {
            number: this,
            end: Lsn(u64::MAX),
            done: false,
        });
        if let SyncMode::Group {
            max_delay_us,
            max_batch_bytes,
        } = self.config.sync_mode
            && max_delay_us > 0
        {
            st.gathering = true;
            let deadline = Instant::now() + Duration::from_micros(max_delay_us);
            while st.pending_bytes < max_batch_bytes && !self.gather.wait_until(st, deadline).timed_out() {}
            st.gathering = false;
            // Records appended while it gathered join this batch: the window checked before
            // the gather must hold for what is taken. While an earlier flush is in flight and
            // the queue reaches past the window, wait for the earlier flushes (this one alone
            // in flight may be larger).
            while st.poisoned.is_none()
                && let Some(front) = st.in_flight.front().map(|f| f.number)
                && front != this
                && !in_window(st)
            {
                self.covered[front as usize % self.covered.len()].wait(st);
            }
            if let Some(cause) = st.poisoned.clone() {
                st.in_flight.retain(|f| f.number != this);
                st.flushing = false;
                self.wake_everyone(st);
                return Err(WalError::Poisoned { cause });
            }
        }
        // The batch ends with the durable end known now: recovery reads a hole below it as
        // damage to acknowledged records, not as a torn tail. (A batch of a segment header
        // alone, after recovery, needs none.)
        if st.pending_records > 0 {
            self.mark_batch(st);
        }
        if self.slotted {
            // A batch that may have company in flight ends on a block boundary (a pad), so the
            // next flush starts on a fresh block and can go in flight beside this one; a lone
            // record (one committer) is not padded, and the next flush waits for it instead.
            if st.pending_records >= 2 || st.in_flight.len() > 1 {
                self.pad_to_block(st);
            }
            st.tail_open = !st.next_lsn.0.is_multiple_of(PAD_BLOCK_BYTES);
        }
        let opened_tail = st.tail_open;
        st.pending_records = 0;
        let pieces = std::mem::take(&mut st.pieces);
        // With several flushes in flight, an earlier flush can be published after this one
        // took a new segment; its request for that segment would have the preparer truncate
        // and zero-fill the segment under this flush's records.
        if let Some(newest) = pieces.iter().filter(|p| p.offset == 0).map(|p| p.segment).max() {
            st.prepare_asked = st.prepare_asked.max(newest);
        }
        let bytes = std::mem::replace(&mut st.pending_bytes, 0);
        let end = st.next_lsn;
        debug_assert!(
            st.in_flight.front().is_some_and(|f| f.number == this)
                || end.0 - st.durable_lsn.0 <= TORN_WINDOW_BYTES,
            "flush {this} takes bytes up to {end}, past the torn window of the durable end {} while an earlier flush is in flight",
            st.durable_lsn
        );
        if let Some(f) = st.in_flight.iter_mut().find(|f| f.number == this) {
            f.end = end;
        }
        let written = MutexGuard::unlocked(st, || self.write_batch(&pieces));
        st.flushing = false;
        let result = match written {
            Ok(rest) => {
                st.in_sync += 1;
                // The next batch may start writing while this one syncs.
                self.elect_next_leader(st);
                let finished = MutexGuard::unlocked(st, || self.finish_batch(rest));
                st.in_sync -= 1;
                finished
            }
            Err(f) => Err(f),
        };
        if opened_tail {
            st.tail_open = false;
        }
        let outcome = match result {
            Ok(()) => {
                if let Some(f) = st.in_flight.iter_mut().find(|f| f.number == this) {
                    f.done = true;
                }
                self.publish(st);
                self.elect_next_leader(st);
                self.wake_io_if_wanted(st);
                return Ok(());
            }
            // Only the newest flush can go back to the queue: a later one holds later bytes.
            Err(f) if f.error.errno() == ENOSPC && !f.op.is_sync() && st.flushes_started == this => {
                // Nothing of this batch is known durable; keep it queued, in order, for a retry.
                st.in_flight.retain(|f| f.number != this);
                let mut back = pieces;
                back.append(&mut st.pieces);
                st.pieces = back;
                st.pending_bytes += bytes;
                st.disk_full = Some(f.error.clone());
                st.disk_full_seq += 1;
                tracing::warn!(error = %f.error, "wal disk full; records stay queued until space is back");
                Err(WalError::DiskFull { cause: f.error })
            }
            Err(f) => {
                tracing::error!(op = %f.op, error = %f.error, "wal failed; it accepts nothing more until reopened");
                st.in_flight.retain(|f| f.number != this);
                st.pieces.clear();
                st.pending_bytes = 0;
                st.poisoned = Some(f.error.clone());
                Err(WalError::Poisoned { cause: f.error })
            }
        };
        self.wake_everyone(st);
        outcome
    }

    /// Asks the preparer for the segment after the one `end` is in, once `end` is past the
    /// threshold (once per segment).
    fn maybe_prepare_next(&self, st: &mut State, end: u64) {
        let Some(preparer) = &self.preparer else { return };
        let size = self.segment_size;
        let next = end / size + 1;
        if end % size >= size / PREPARE_AT && st.prepare_asked < next && self.segment_follows(end) {
            st.prepare_asked = next;
            preparer.request(next);
        }
    }

    /// Wakes every waiter (failure, full disk, close): each re-checks the state. Async
    /// committers are woken through their wakers, after `st` is unlocked.
    pub(super) fn wake_everyone(&self, st: &mut MutexGuard<'_, State>) {
        for c in &self.covered {
            c.notify_all();
        }
        self.gather.notify_all();
        self.io_wake.notify_all();
        let wakers = st.async_waiters.take_all();
        if !wakers.is_empty() {
            MutexGuard::unlocked(st, || wakers.into_iter().for_each(Waker::wake));
        }
    }

    /// Queues the batch marker carrying the durable end (closing the segment first when the
    /// marker and the segment-end frame do not both fit).
    fn mark_batch(&self, st: &mut State) {
        let size = self.segment_size;
        if st.next_lsn.0 % size + MARKER_BYTES + RECORD_HEADER_BYTES > size {
            if !self.segment_follows(st.next_lsn.0) {
                // The last segment below 2^64 is never closed: this batch goes without a
                // marker (recovery keeps the window rule for it, as for a version-1 log).
                return;
            }
            self.close_segment(st);
        }
        // A mode that never syncs only wrote what it calls durable (a process crash keeps it,
        // a power cut need not): it claims nothing, and recovery keeps the window rule.
        let claimed = if self.config.sync_mode.syncs() {
            st.durable_lsn.0
        } else {
            0
        };
        let (at, durable) = (st.next_lsn.0, claimed);
        debug_assert!(
            durable <= at,
            "the durable end {durable} is past the queue's end {at}"
        );
        self.queue(st, |buf| encode_marker(buf, at, durable));
    }

    /// Queues a pad record to the next block boundary (direct mode, several flushes in
    /// flight), so that the next flush starts on a block of its own. Where the pad would leave
    /// no room for the segment-end record, the segment is closed instead, and the next one's
    /// header is padded to its first block's end — unless that block is the segment's last
    /// (4 KiB segments): a pad never consumes the room of a segment's end frame, so the batch
    /// then ends unpadded and the next flush waits for it (`tail_open`).
    fn pad_to_block(&self, st: &mut State) {
        let size = self.segment_size;
        let fits = |at: u64| size - at % size >= pad_bytes(at) + RECORD_HEADER_BYTES;
        if pad_bytes(st.next_lsn.0) == 0 {
            return;
        }
        if !fits(st.next_lsn.0) {
            if !self.segment_follows(st.next_lsn.0) {
                // The last segment below 2^64: the batch ends unpadded (`tail_open`).
                return;
            }
            self.close_segment(st);
            if pad_bytes(st.next_lsn.0) == 0 || !fits(st.next_lsn.0) {
                return;
            }
        }
        let at = st.next_lsn.0;
        self.queue(st, |buf| encode_pad(buf, at));
        debug_assert!(
            !st.next_lsn.0.is_multiple_of(size) && size - st.next_lsn.0 % size >= RECORD_HEADER_BYTES,
            "a pad left no room for the segment-end frame at {}",
            st.next_lsn
        );
    }

    /// The second step of a flush, after the writer is free: the fdatasyncs an inline flush
    /// left, or a direct flush's staged writes on a flush slot of its own.
    fn finish_batch(&self, rest: Unfinished<'_>) -> Result<(), IoFailure> {
        match rest {
            Unfinished::Sync(files) => {
                self.sync_gate.run(|| sync_handles(&files))?;
                self.counters
                    .datasyncs
                    .fetch_add(files.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Unfinished::Direct(staged) => {
                let mut slot = self.take_slot();
                let written = slot.write_staged(&staged, self.config.sync_mode.syncs());
                self.slots.lock().free.push(slot);
                self.slot_back.notify_one();
                match written {
                    Ok(synced) => {
                        self.counters
                            .datasyncs
                            .fetch_add(synced as u64, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(f) => {
                        self.writer.lock().forget_tails();
                        Err(f)
                    }
                }
            }
        }
    }

    /// A free flush slot: one that came back, a new one while fewer than the flushes allowed in
    /// flight exist, or (when the factory cannot make more) the next one that comes back; at
    /// least one exists, made at open.
    fn take_slot(&self) -> SegmentIo {
        let mut pool = self.slots.lock();
        loop {
            if let Some(slot) = pool.free.pop() {
                return slot;
            }
            if pool.made < self.max_in_flight {
                match pool.make(
                    &self.factory,
                    &self.dir,
                    self.segment_size,
                    self.config.write_chunk_bytes,
                ) {
                    Ok(slot) => return slot,
                    Err(e) => {
                        tracing::warn!(error = %e, slots = pool.made, "the wal cannot make another flush slot; flushes share the ones it has");
                        pool.made = self.max_in_flight;
                    }
                }
            }
            self.slot_back.wait(&mut pool);
        }
    }

    /// One flush: create new segments, write each piece, one datasync per segment, and a
    /// directory sync when a segment was created. Inline flushes return the segments still to
    /// datasync (the caller syncs them after the writer is free); slotted direct flushes
    /// return their staged writes; others are durable already. A batch across more than
    /// [`SEGMENTS_OPEN_AT_ONCE`] segments writes and syncs its earlier segments a group at a
    /// time first, closing each group before opening the next, so that it never holds more
    /// handles than that (a backend's fd table is finite).
    fn write_batch<'a>(&self, pieces: &'a [Piece]) -> Result<Unfinished<'a>, IoFailure> {
        let mut w = self.writer.lock();
        let mut created = false;
        let mut datasyncs = 0;
        let syncs = self.config.sync_mode.syncs();
        let mut rest = pieces;
        while let Some(split) = group_end(rest, SEGMENTS_OPEN_AT_ONCE) {
            let (group, later) = rest.split_at(split);
            let jobs = self.open_pieces(&mut w, group, &mut created)?;
            // Through the sync gate: an earlier flush may be syncing the first of these
            // segments on the same file description (buffered inline mode), and two fdatasyncs
            // in flight there could hide a writeback error from one of them.
            datasyncs += self.sync_gate.run(|| w.write_all(&jobs, syncs))?;
            w.close_below(later[0].segment);
            rest = later;
        }
        let jobs = self.open_pieces(&mut w, rest, &mut created)?;
        let (rest, last_datasyncs) = if self.slotted {
            (Unfinished::Direct(w.stage_direct(&jobs)?), 0)
        } else {
            let (files, n) = w.write_all_sync_later(&jobs, syncs)?;
            (Unfinished::Sync(files), n)
        };
        datasyncs += last_datasyncs;
        if created {
            w.sync_dir().map_err(|error| IoFailure {
                op: OpKind::Fsync,
                error,
            })?;
        }
        if let Some(last) = pieces.last() {
            w.close_below(last.segment);
        }
        let c = &self.counters;
        c.flushes.fetch_add(1, Ordering::Relaxed);
        let bytes: usize = pieces.iter().map(|p| p.bytes.len()).sum();
        c.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
        c.datasyncs.fetch_add(datasyncs as u64, Ordering::Relaxed);
        Ok(rest)
    }

    /// The write jobs of `pieces`: each on its segment's handle, the segment created first
    /// (or taken from the preparer) where a piece starts it; sets `created` when a segment was.
    fn open_pieces<'a>(
        &self,
        w: &mut SegmentIo,
        pieces: &'a [Piece],
        created: &mut bool,
    ) -> Result<Vec<WriteJob<'a>>, IoFailure> {
        let mut jobs = Vec::with_capacity(pieces.len());
        for p in pieces {
            let fd = if p.offset == 0 {
                let prepared = self.preparer.as_ref().is_some_and(|pr| pr.take(p.segment));
                if prepared {
                    // Zero-filled, durable and named in the directory already.
                    self.counters.segments_prepared.fetch_add(1, Ordering::Relaxed);
                    w.existing(p.segment)?
                } else {
                    *created = true;
                    w.create(p.segment, self.config.preallocate)?
                }
            } else {
                w.existing(p.segment)?
            };
            jobs.push(WriteJob {
                fd,
                offset: p.offset,
                data: &p.bytes,
            });
        }
        Ok(jobs)
    }

    /// The `Async` mode's flusher: every `interval`, flush what is queued.
    pub(super) fn background(&self, interval: Duration) {
        let mut st = self.state.lock();
        let mut next = Instant::now() + interval;
        loop {
            while !st.closed && !self.tick.wait_until(&mut st, next).timed_out() {}
            if st.closed {
                return;
            }
            next = Instant::now() + interval;
            if st.pending_bytes > 0 && st.poisoned.is_none() {
                let target = st.next_lsn;
                if let Err(e) = self.sync_to(&mut st, target) {
                    tracing::warn!(error = %e, "background wal flush failed");
                }
            }
        }
    }
}

/// Where the first group of `pieces` ends when they touch more than `max` segments: the index
/// of the first piece of the `max + 1`-th segment; `None` when they touch at most `max`.
fn group_end(pieces: &[Piece], max: usize) -> Option<usize> {
    let mut segments = 0;
    let mut last = None;
    for (i, p) in pieces.iter().enumerate() {
        if last != Some(p.segment) {
            segments += 1;
            last = Some(p.segment);
            if segments > max {
                return Some(i);
            }
        }
    }
    None
}

/// Whether the queue, with room for a pad, ends within [`TORN_WINDOW_BYTES`] of the durable
/// end: what lets a flush go in flight beside earlier ones.
fn in_window(st: &State) -> bool {
    // The difference first: near the end of the LSN space `next_lsn + 2 blocks` passes 2^64.
    st.next_lsn.0 - st.durable_lsn.0 + 2 * PAD_BLOCK_BYTES <= TORN_WINDOW_BYTES
}

/// The flush slots of direct mode with several flushes in flight.
pub(super) struct SlotPool {
    pub(super) free: Vec<SegmentIo>,
    /// Slots made so far (set to the maximum once the factory refused one).
    pub(super) made: usize,
    /// Slots datasync after their writes (O_DSYNC not trusted).
    pub(super) sync_direct: bool,
}

impl SlotPool {
    /// A new slot: a direct-mode `SegmentIo` on a backend of its own (`factory(0)`, the log's
    /// writer's kind).
    pub(super) fn make(
        &mut self,
        factory: &BackendFactory,
        dir: &Path,
        segment_size: u64,
        chunk: usize,
    ) -> Result<SegmentIo, StorageIoError> {
        let mut slot = SegmentIo::new(factory(0)?, dir, segment_size, chunk, true);
        slot.set_sync_direct(self.sync_direct);
        self.made += 1;
        Ok(slot)
    }
}

/// One fdatasync in flight at a time for buffered inline flushes. Linux reports a writeback
/// error once per open file description: of two fdatasyncs in flight on one `File`, the one
/// that checks first takes the error and the other returns 0, so an earlier flush whose pages
/// failed could be acknowledged while a later one's sync saw the error. With one at a time,
/// every error reaches a sync that covers the failed pages (or an earlier one, which poisons
/// the WAL before any later flush is published). The next batch is still written while a
/// sync runs; only the syncs queue.
#[derive(Debug, Default)]
pub(super) struct SyncGate {
    lock: Mutex<()>,
    in_flight: std::sync::atomic::AtomicUsize,
    /// The most syncs ever seen in flight at once (1 while the gate works).
    max_in_flight: std::sync::atomic::AtomicUsize,
}

impl SyncGate {
    fn run<T>(&self, sync: impl FnOnce() -> T) -> T {
        let _one = self.lock.lock();
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_flight.fetch_max(now, Ordering::AcqRel);
        debug_assert_eq!(now, 1, "two inline fdatasyncs in flight at once");
        let result = sync();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

/// What a flush's write step left for after the writer is free.
enum Unfinished<'a> {
    /// Segments to fdatasync (inline buffered flushes; none when the writes were durable).
    Sync(Vec<Arc<File>>),
    /// Direct writes staged for a flush slot.
    Direct(Vec<Staged<'a>>),
}

/// The fdatasyncs an inline flush left to do, on the segments' OS handles.
fn sync_handles(files: &[Arc<File>]) -> Result<(), IoFailure> {
    for file in files {
        storage_io_core::platform::datasync(file).map_err(|e| IoFailure {
            op: OpKind::Datasync,
            error: StorageIoError::from_io(OpKind::Datasync, &e),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::time::{Duration, Instant};

    use storage_io_core::{OpKind, StorageIo};
    use storage_io_testkit::gated::{Gate, GatedIo};
    use storage_io_testkit::memio::MemFs;

    use super::*;

    /// Polls `cond` on the state (a busy wait on the state itself, no sleep) for up to 20 s.
    fn wait_for(wal: &WalManager, what: &str, cond: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(&wal.shared.state.lock()) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::yield_now();
        }
    }

    /// Issue 37, item 5: a leader checks the torn window before it gathers (group delay), and
    /// records appended while it gathers join its batch. With another flush in flight, what it
    /// takes must still end within the window of the durable end.
    #[test]
    fn group_delay_keeps_submitted_bytes_inside_the_torn_window() {
        let fs = MemFs::new(5);
        let gate = Gate::new(); // closed: direct writes stay in flight until it opens
        let factory: BackendFactory = {
            let (fs, gate) = (fs.clone(), gate.clone());
            Arc::new(move |worker| {
                let io = fs.backend();
                Ok(if worker == 0 {
                    Box::new(GatedIo::new(io, gate.clone(), &[OpKind::Write])) as Box<dyn StorageIo>
                } else {
                    Box::new(io) as Box<dyn StorageIo>
                })
            })
        };
        let config = WalConfig {
            segment_size_bytes: 32 << 20,
            direct_io: true,
            max_flushes_in_flight: 2,
            preallocate: false,
            prepare_ahead: false,
            sync_mode: SyncMode::Group {
                max_delay_us: 60_000_000,
                // What flush 1 queues (the marker joins after the gather).
                max_batch_bytes: (4 << 20) - MARKER_BYTES as usize,
            },
            ..WalConfig::default()
        };
        let (wal, _) = WalManager::open("/wal", config, factory).unwrap();
        // Flush 1: one record that fills the batch and, with the batch marker, ends on a block
        // boundary (no tail to wait for), held in flight at the gate.
        let first =
            vec![1u8; (4 << 20) - (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + MARKER_BYTES) as usize];
        let big = vec![2u8; 1 << 20];
        /// Opens the gate when the test ends, passed or not, so that no thread stays blocked.
        struct OpenOnDrop(Gate);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                self.0.open();
            }
        }
        std::thread::scope(|s| {
            let _open = OpenOnDrop(gate.clone());
            let wal = &wal;
            let a = wal.append(&first).unwrap();
            let one = s.spawn(move || wal.wait_durable(a));
            wait_for(wal, "flush 1 is in flight", |st| st.in_sync == 1);
            // Flush 2: a small record, led while flush 1 is in flight; its leader gathers.
            let b = wal.append(b"small").unwrap();
            let two = s.spawn(move || wal.wait_durable(b));
            wait_for(wal, "flush 2 gathers", |st| st.gathering);
            // Ten more MiB arrive at once while it gathers, and fill its batch.
            let lsns = wal.append_batch(std::iter::repeat_n(&big[..], 10)).unwrap();
            wait_for(wal, "flush 2 stops gathering", |st| !st.gathering);
            {
                let st = wal.shared.state.lock();
                let durable = st.durable_lsn.0;
                for &Flight {
                    number: n,
                    end: Lsn(end),
                    ..
                } in &st.in_flight
                {
                    if n > 1 && end != u64::MAX {
                        assert!(
                            end - durable <= TORN_WINDOW_BYTES,
                            "flush {n} took bytes up to {end}, {} past the durable end {durable} while flush 1 is in flight",
                            end - durable
                        );
                    }
                }
            }
            gate.open();
            one.join().unwrap().unwrap();
            two.join().unwrap().unwrap();
            wal.wait_durable(*lsns.last().unwrap()).unwrap();
        });
        wal.close().unwrap();
    }
}

#[cfg(test)]
mod sync_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use super::*;

    /// Issue 37, item 11: buffered inline flushes, eight allowed in flight, eight committers on
    /// real files. Writeback errors are reported once per open file description, so two
    /// fdatasyncs in flight on one segment could hand an earlier flush's error to a later one
    /// and acknowledge the earlier flush. The WAL keeps one fdatasync in flight at a time.
    /// (The testkit's `FaultyIo` hides OS handles, which turns inline I/O off — its flushes
    /// sync through the backend under the writer's lock, one at a time already — so this test
    /// runs on the sync backend's real files.)
    #[test]
    fn buffered_flushes_keep_one_fdatasync_in_flight() {
        // Real files on the repository's disk (not a tmpfs): under its `target/`, made here
        // because a build into another CARGO_TARGET_DIR leaves it missing.
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target");
        std::fs::create_dir_all(target).unwrap();
        let tmp = tempfile::tempdir_in(target).unwrap();
        let factory: BackendFactory = Arc::new(|_| {
            let io = storage_io_sync::SyncStorageIo::new(&storage_io_core::IoConfig::default())?;
            Ok(Box::new(io) as Box<dyn storage_io_core::StorageIo>)
        });
        let config = WalConfig {
            segment_size_bytes: 1 << 20,
            max_flushes_in_flight: 8,
            inline_io: true,
            prepare_ahead: false,
            ..WalConfig::default()
        };
        let (wal, _) = WalManager::open(tmp.path(), config, factory).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let wal = &wal;
                s.spawn(move || {
                    for i in 0..40u8 {
                        wal.commit(&[t, i, 0, 0, 0, 0, 0, 0]).unwrap();
                    }
                });
            }
        });
        assert!(wal.stats().datasyncs > 0, "the flushes synced");
        assert_eq!(
            wal.shared.sync_gate.max_in_flight.load(Ordering::Acquire),
            1,
            "fdatasyncs of buffered flushes overlapped"
        );
        wal.close().unwrap();
    }
}
