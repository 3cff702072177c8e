//! The ring as an [`OpDriver`]: starting ops, polling and waiting for CQEs, teardown.

use super::*;

impl OpDriver for RingDriver {
    type File = File;

    fn capabilities(&self, config: &IoConfig) -> Capabilities {
        Capabilities {
            name: "io_uring",
            max_in_flight: config.queue_depth,
            asynchronous: true,
            worker_threads: 0,
            registered_buffers: self.fixed.is_some(),
            registered_files: self.registered_files,
            sqpoll: self.sqpoll,
            direct_io: true,
            max_io_bytes: config.max_io_bytes,
            notes: self.notes.clone(),
        }
    }

    fn adopt(&mut self, file: File) -> Result<File> {
        Ok(file)
    }

    fn start(&mut self, ops: &mut Ops, idx: u32) -> std::io::Result<()> {
        self.push_slot(ops, idx)
    }

    fn registered_bufs(&self) -> Option<&FixedBufs> {
        self.fixed.as_ref()
    }

    fn file_registered(&mut self, fd: IoFd, file: &File) -> Result<()> {
        if self.registered_files {
            self.ring
                .submitter()
                .register_files_update(fd.slot, &[file.as_raw_fd()])
                .map_err(|e| StorageIoError::from_os("io_uring_register (files update)", &e))?;
        }
        Ok(())
    }

    fn file_deregistered(&mut self, fd: IoFd) -> Result<()> {
        if self.registered_files {
            // Clear the fixed-file slot before the fd closes, so no later SQE can reach it.
            self.ring
                .submitter()
                .register_files_update(fd.slot, &[-1])
                .map_err(|e| StorageIoError::from_os("io_uring_register (files update)", &e))?;
        }
        Ok(())
    }

    fn accepted(&mut self, ops: &mut Ops) {
        self.after_accept(ops);
    }

    fn flush(&mut self, ops: &mut Ops) -> Result<usize> {
        self.enter(ops, 0, None).map_err(enter_error)
    }

    fn poll(&mut self, ops: &mut Ops) {
        let must_enter = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
        };
        if must_enter {
            // Hand queued SQEs to the kernel without waiting; a failure here leaves them queued
            // for the next poll or wait.
            let _ = self.enter(ops, 0, None);
        }
        // With none of our ops in the kernel there is nothing to reap but a wake read's or a
        // timer's CQE, which the next wait takes (reads answered at submit skip the CQ here).
        if ops.out() > 0 || must_enter {
            self.reap(ops);
        }
    }

    fn wait(&mut self, ops: &mut Ops, min: usize, timeout: Option<Duration>) -> Result<()> {
        // Reads answered at submit leave nothing in the kernel: deliver them without touching
        // the CQ or the clock (as `poll` does).
        if ops.out() == 0 && self.deferred.is_empty() && self.ring.submission().is_empty() {
            return Ok(());
        }
        self.reap(ops);
        if ops.ready_len() >= min || ops.out() == 0 {
            // Nothing to wait for, but SQEs queued since the last enter must still reach the
            // kernel now: returning without submitting them would leave the device idle for a
            // whole round and quietly lower the queue depth the caller asked for.
            if !self.ring.submission().is_empty() {
                self.enter(ops, 0, None).map_err(enter_error)?;
                self.reap(ops);
            }
            return Ok(());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        while ops.ready_len() < min && ops.out() > 0 {
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
            let want = (min - ops.ready_len()).min(ops.out()).max(1);
            if !self.arm_wake(ops).map_err(enter_error)? {
                break;
            }
            let (want, left) = self
                .plan_wait(ops, want, deadline.zip(left))
                .map_err(enter_error)?;
            let entered = self.enter(ops, want, left);
            let woken = self.disarm_wake();
            entered.map_err(enter_error)?;
            self.reap(ops);
            if woken {
                break;
            }
        }
        Ok(())
    }

    fn wait_one(&mut self, ops: &mut Ops) -> Result<bool> {
        self.reap_one(ops).map_err(enter_error)
    }

    fn waker(&mut self) -> Option<WaitWaker> {
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

    fn shutdown(&mut self, ops: &mut Ops) {
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
                if let Err(e) = self.enter(ops, 1, None) {
                    tracing::error!(error = %e, "io_uring_enter failed while ending the wake read");
                    break;
                }
                self.reap(ops);
            }
        }
        // The kernel may still write into slot buffers and registered memory: wait for every op
        // before anything is freed. Held ops never reached the kernel and are simply dropped.
        let idle = loop {
            match self.reap_one(ops) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if idle.is_err() || self.wake.as_ref().is_some_and(|w| w.read_armed) {
            // The kernel may still use memory this instance owns, and no wait can tell when it
            // stops: leak that memory rather than free it under the kernel.
            tracing::error!("io_uring ops still in flight at drop; leaking their buffers");
            ops.leak_slots();
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
                let _ = self.enter(ops, 0, None);
                std::thread::yield_now();
            }
        }
    }
}
