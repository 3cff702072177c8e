//! Reaping and completion: entering the kernel, taking CQEs, continuing short transfers, finishing ops.

use super::*;

impl UringStorageIo {
    /// Pushes one SQE, submitting to make room when the SQ is full. Never called while
    /// reaping (see `deferred`). Fails with the enter error when the kernel refuses SQEs for
    /// good, or with EBUSY when it takes none in [`SQ_FULL_ROUNDS`] tries.
    pub(super) fn push_entry(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
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
    pub(super) fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every pointer inside `entry` refers to memory owned by an op slot or by the
        // registered buffers, which stay alive and untouched until the CQE for this user_data
        // is reaped (see build_entry); the wake read and the timers keep theirs likewise.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Hands queued SQEs to the kernel because the SQ is full; returns how many it took. Under
    /// SQPOLL the kernel thread takes them: wait for it to make room.
    pub(super) fn make_sq_room(&mut self) -> std::io::Result<usize> {
        if self.sqpoll {
            self.ring.submitter().squeue_wait()?;
            return Ok(1);
        }
        self.enter(0, None)
    }

    /// While reaping: pushes the deferred slots the SQ has room for, handing SQEs to the kernel
    /// when it is full. Returns when all are in the SQ, or when the kernel takes none (then the
    /// caller reaps and comes back); a persistent enter failure is returned.
    pub(super) fn push_deferred(&mut self) -> std::io::Result<()> {
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
    pub(super) fn fail_deferred(&mut self, error: &std::io::Error) {
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
    pub(super) fn enter(&mut self, want: usize, timeout: Option<Duration>) -> std::io::Result<usize> {
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
    pub(super) fn reap(&mut self) {
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

    pub(super) fn on_cqe(&mut self, user_data: u64, res: i32) {
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

    pub(super) fn finish(&mut self, idx: u32, result: Result<usize>) {
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
            Payload::WriteShared(_) | Payload::Sync | Payload::None => None,
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
    pub(super) fn release_held(&mut self, fd: IoFd) {
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

    pub(super) fn deliver(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        deliver_ready(&mut self.ready, &mut self.pending, out)
    }

    /// Submits what is queued and blocks until every op of `fd` (or of all fds) is reaped. An
    /// enter failure other than EINTR/EBUSY/EAGAIN is returned: ops may still be in the SQ or
    /// the kernel then, and the caller must not free what they use.
    pub(super) fn wait_idle(&mut self, fd: Option<IoFd>) -> std::io::Result<()> {
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
