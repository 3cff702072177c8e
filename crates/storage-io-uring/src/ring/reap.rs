//! Reaping: entering the kernel, taking CQEs, continuing short transfers, handing completions
//! to the op table.

use super::*;

impl RingDriver {
    /// Pushes one SQE, submitting to make room when the SQ is full. Never called while
    /// reaping (see `deferred`). Fails with the enter error when the kernel refuses SQEs for
    /// good, or with EBUSY when it takes none in [`SQ_FULL_ROUNDS`] tries.
    pub(super) fn push_entry(&mut self, ops: &mut Ops, entry: &squeue::Entry) -> std::io::Result<()> {
        for _ in 0..SQ_FULL_ROUNDS {
            if self.try_push(entry) {
                return Ok(());
            }
            // The SQ is full of SQEs the kernel has not taken yet: hand them over, then retry.
            // A kernel that takes none (a full CQ, EBUSY) gets its completions reaped first.
            if self.make_sq_room(ops)? == 0 {
                self.reap(ops);
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
    pub(super) fn make_sq_room(&mut self, ops: &mut Ops) -> std::io::Result<usize> {
        if self.sqpoll {
            self.ring.submitter().squeue_wait()?;
            return Ok(1);
        }
        self.enter(ops, 0, None)
    }

    /// While reaping: pushes the deferred slots the SQ has room for, handing SQEs to the kernel
    /// when it is full. Returns when all are in the SQ, or when the kernel takes none (then the
    /// caller reaps and comes back); a persistent enter failure is returned.
    pub(super) fn push_deferred(&mut self, ops: &mut Ops) -> std::io::Result<()> {
        while let Some(&idx) = self.deferred.front() {
            let entry = self.build_entry(ops, idx);
            if self.try_push(&entry) {
                self.deferred.pop_front();
                continue;
            }
            if self.make_sq_room(ops)? == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Completes every deferred slot with `error` (they never reached the kernel).
    pub(super) fn fail_deferred(&mut self, ops: &mut Ops, error: &std::io::Error) {
        tracing::error!(%error, "io_uring refuses submissions; failing the ops that could not be pushed");
        while let Some(idx) = self.deferred.pop_front() {
            ops.returned(idx);
            let op = ops.slot(idx).op;
            // Completing may release held syncs into `deferred`: they fail too.
            ops.complete(self, idx, Err(StorageIoError::from_io(op, error)));
        }
    }

    /// Submits queued SQEs and, if `want` > 0, waits for that many completions or the timeout.
    /// EINTR and EBUSY (a full CQ) are handled by reaping and returning; the caller loops.
    pub(super) fn enter(
        &mut self,
        ops: &mut Ops,
        want: usize,
        timeout: Option<Duration>,
    ) -> std::io::Result<usize> {
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
                        self.reap(ops);
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
            ops.stats_mut().record_submit_call(t0.elapsed());
        }
        match r {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(0),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                // The CQ is full (or the kernel is short of memory for a moment): make room. While
                // reaping this is a no-op, and the reaping loop takes the CQEs itself.
                self.reap(ops);
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
    pub(super) fn reap(&mut self, ops: &mut Ops) {
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
                self.on_cqe(ops, user_data, res);
            }
            if let Err(e) = self.push_deferred(ops) {
                self.fail_deferred(ops, &e);
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
                self.fail_deferred(ops, &std::io::Error::from_raw_os_error(libc::EBUSY));
                break;
            }
        }
        self.reaping = false;
    }

    pub(super) fn on_cqe(&mut self, ops: &mut Ops, user_data: u64, res: i32) {
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
        if idx as usize >= ops.slot_count() {
            return;
        }
        ops.returned(idx);
        let transfer = if res < 0 { Err(-res) } else { Ok(res as usize) };
        match ops.transferred(idx, transfer) {
            // Short transfer or EAGAIN: continue the same op where it stopped (deferred: this
            // runs inside `reap`).
            None => ops.dispatch(self, idx),
            Some(result) => ops.complete(self, idx, result),
        }
    }

    /// Submits what is queued and blocks until at least one op is reaped; false when none is
    /// in the kernel. An enter failure other than EINTR/EBUSY/EAGAIN is returned: ops may still
    /// be in the SQ or the kernel then, and the caller must not free what they use.
    pub(super) fn reap_one(&mut self, ops: &mut Ops) -> std::io::Result<bool> {
        if ops.out() == 0 {
            return Ok(false);
        }
        self.enter(ops, 1, None).inspect_err(|e| {
            tracing::error!(error = %e, "io_uring_enter failed while waiting for in-flight ops");
        })?;
        self.reap(ops);
        Ok(true)
    }
}
