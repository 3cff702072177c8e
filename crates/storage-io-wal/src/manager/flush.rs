//! Flushing: leading a batch, its write and sync steps (inline, or on a flush slot in direct
//! mode), publishing flushes in LSN order, waking waiters and the next leader.

use super::*;

impl Shared {
    /// Waits until everything before `target` is durable, leading flushes as needed.
    pub(super) fn sync_to(&self, st: &mut MutexGuard<'_, State>, target: u64) -> Result<(), WalError> {
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
            let holder = st.in_flight.iter().find(|f| f.1 >= target).map(|f| f.0);
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
        let in_window = st.next_lsn + 2 * PAD_BLOCK_BYTES - st.durable_lsn <= TORN_WINDOW_BYTES;
        !st.flushing
            && st.in_sync < self.max_in_flight
            && !st.tail_open
            && (st.in_flight.is_empty() || in_window)
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
        while let Some(&(n, end, true)) = st.in_flight.front() {
            st.in_flight.pop_front();
            st.written_lsn = end;
            st.durable_lsn = end;
            self.durable.store(end, Ordering::Release);
            st.disk_full = None;
            self.maybe_prepare_next(st, end);
            self.covered[n as usize % self.covered.len()].notify_all();
            advanced = true;
        }
        if advanced {
            let durable = st.durable_lsn;
            let ready = st.async_waiters.take_until(durable);
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
        st.in_flight.push_back((this, u64::MAX, false));
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
        }
        if self.slotted {
            // A batch that may have company in flight ends on a block boundary (a pad), so the
            // next flush starts on a fresh block and can go in flight beside this one; a lone
            // record (one committer) is not padded, and the next flush waits for it instead.
            if st.pending_records >= 2 || st.in_flight.len() > 1 {
                self.pad_to_block(st);
            }
            st.tail_open = !st.next_lsn.is_multiple_of(PAD_BLOCK_BYTES);
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
        if let Some(f) = st.in_flight.iter_mut().find(|f| f.0 == this) {
            f.1 = end;
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
                if let Some(f) = st.in_flight.iter_mut().find(|f| f.0 == this) {
                    f.2 = true;
                }
                self.publish(st);
                self.elect_next_leader(st);
                return Ok(());
            }
            // Only the newest flush can go back to the queue: a later one holds later bytes.
            Err(f) if f.error.errno() == ENOSPC && !f.op.is_sync() && st.flushes_started == this => {
                // Nothing of this batch is known durable; keep it queued, in order, for a retry.
                st.in_flight.retain(|f| f.0 != this);
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
                st.in_flight.retain(|f| f.0 != this);
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
        if end % size >= size / PREPARE_AT && st.prepare_asked < next {
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

    /// Queues a pad record to the next block boundary (direct mode, several flushes in
    /// flight), so that the next flush starts on a block of its own. Where the pad would leave
    /// no room for the segment-end record, the segment is closed instead, and the next one's
    /// header is padded to its first block's end.
    fn pad_to_block(&self, st: &mut State) {
        let size = self.segment_size;
        let pad = pad_bytes(st.next_lsn);
        if pad == 0 {
            return;
        }
        if size - st.next_lsn % size < pad + RECORD_HEADER_BYTES {
            self.close_segment(st);
        }
        let at = st.next_lsn;
        self.queue(st, |buf| encode_pad(buf, at));
    }

    /// The second step of a flush, after the writer is free: the fdatasyncs an inline flush
    /// left, or a direct flush's staged writes on a flush slot of its own.
    fn finish_batch(&self, rest: Unfinished<'_>) -> Result<(), IoFailure> {
        match rest {
            Unfinished::Sync(files) => {
                sync_handles(&files)?;
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
    /// return their staged writes; others are durable already.
    fn write_batch<'a>(&self, pieces: &'a [Piece]) -> Result<Unfinished<'a>, IoFailure> {
        let mut w = self.writer.lock();
        let mut created = false;
        let mut jobs = Vec::with_capacity(pieces.len());
        for p in pieces {
            let fd = if p.offset == 0 {
                let prepared = self.preparer.as_ref().is_some_and(|pr| pr.take(p.segment));
                if prepared {
                    // Zero-filled, durable and named in the directory already.
                    self.counters.segments_prepared.fetch_add(1, Ordering::Relaxed);
                    w.existing(p.segment)?
                } else {
                    created = true;
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
        let (rest, datasyncs) = if self.slotted {
            (Unfinished::Direct(w.stage_direct(&jobs)?), 0)
        } else {
            let (files, n) = w.write_all_sync_later(&jobs, self.config.sync_mode.syncs())?;
            (Unfinished::Sync(files), n)
        };
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
