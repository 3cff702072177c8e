//! The `StorageIo` implementation, and teardown.

use super::*;

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
        let plan = match self.write_checked(fd, &buf, Some(offset)) {
            Ok(x) => x,
            Err(e) => return Err(SubmitError::new(e, buf)),
        };
        let len = buf.len();
        let in_place = registered_index(self.fixed.as_ref(), &buf).is_some();
        let token = self
            .start(fd, plan.op, plan.offset, len, 0, Payload::WriteOwned(buf))
            .map_err(|(e, p)| {
                let buf = match p {
                    Payload::WriteOwned(b) => b,
                    _ => IoBuf::Vec(Vec::new()),
                };
                SubmitError::new(e, buf)
            })?;
        self.commit_cursor(fd, &plan);
        self.in_place_ops += u64::from(in_place);
        Ok(token)
    }

    fn submit_write_bytes(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        if self.address_fits(fd, data.as_ptr() as usize)? {
            return self.shared_write(fd, data, offset);
        }
        // O_DIRECT refuses the address (a copied write checks it too): an aligned copy, owned.
        let copy = AlignedBuf::from_slice(&data, storage_io_core::DEFAULT_ALIGNMENT)?;
        self.submit_write_buf(fd, copy.into(), offset)
            .map_err(|e| e.error)
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
