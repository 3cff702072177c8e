//! Op slots and SQE building: admitting an op, staging its bytes, building and pushing its entry.

use super::*;

impl UringStorageIo {
    /// This backend's side of [`try_cached_read`]: the read of `buf` at `offset` from the page
    /// cache, tried on this thread when `nowait_reads` and the file allow it.
    pub(super) fn try_nowait(
        &mut self,
        fd: IoFd,
        buf: &mut IoBuf,
        offset: u64,
    ) -> Option<(NowaitRead, Instant)> {
        let enabled = self.config.nowait_reads;
        let f = self.files.get_mut(fd).ok()?;
        try_cached_read(enabled, f.align, &mut f.nowait, f.raw, buf.as_mut_slice(), offset)
    }

    pub(super) fn admit(&self) -> Result<()> {
        if self.pending >= self.config.queue_depth || self.free_slots.is_empty() {
            return Err(StorageIoError::QueueFull {
                limit: self.config.queue_depth,
            });
        }
        Ok(())
    }

    /// Takes a slot, fills it, and pushes its SQE (or holds it behind a barrier). On failure
    /// (no free slot, or the SQ could not take the entry) nothing was accepted and the payload
    /// comes back with the error.
    #[allow(clippy::result_large_err)] // a refusal hands the payload back; boxing it would allocate on that path
    #[allow(clippy::too_many_arguments)] // the op's fields, as the slot stores them
    pub(super) fn start(
        &mut self,
        fd: IoFd,
        op: OpKind,
        offset: u64,
        len: usize,
        done: usize,
        payload: Payload,
    ) -> Result<IoToken, (StorageIoError, Payload)> {
        let Some(idx) = self.free_slots.pop() else {
            let limit = self.config.queue_depth;
            return Err((StorageIoError::QueueFull { limit }, payload));
        };
        let token = self.tokens.next_token();
        self.slots[idx as usize] = Slot {
            token,
            op,
            fd,
            offset,
            len,
            done,
            retries: 0,
            payload,
            started: Instant::now(),
        };
        self.pending += 1;
        let hold = match self.files.get_mut(fd) {
            Ok(f) => {
                f.ops_in_flight += 1;
                self.datasync_barrier && f.held.must_hold(op, f.writes_in_kernel)
            }
            Err(_) => false,
        };
        if hold {
            if let Ok(f) = self.files.get_mut(fd) {
                f.held.hold(idx);
            }
        } else if let Err(e) = self.push_slot(idx) {
            // The SQ never took it: undo the admission and hand the payload back.
            let payload = std::mem::replace(&mut self.slots[idx as usize].payload, Payload::None);
            self.free_slots.push(idx);
            self.pending -= 1;
            if let Ok(f) = self.files.get_mut(fd) {
                f.ops_in_flight -= 1;
            }
            return Err((StorageIoError::from_io(op, &e), payload));
        }
        self.stats.record_submit(op);
        // Hand queued SQEs over once `submit_batch` wait, except a lone SQE while the kernel has
        // nothing else of ours: then the caller's next wait submits it in the same system call
        // (at qd 1 that halves the io_uring_enter calls), and a second submit releases both.
        let batch = self.config.submit_batch;
        let queued = self.ring.submission().len();
        let busy = self.in_kernel > queued;
        if batch > 0 && queued >= batch && (queued > 1 || busy) {
            // A failure leaves the SQEs queued; flush/poll/wait hand them over and report it.
            let _ = self.enter(0, None);
        }
        Ok(token)
    }

    /// Builds and pushes the SQE for slot `idx` (for its remaining bytes). While reaping, the
    /// slot is queued in `deferred` instead, and `reap` pushes it after the batch. Either way it
    /// counts as in the kernel from now on (so a held sync keeps waiting for a deferred write).
    /// On `Err` the SQ could not take it (a persistent enter failure) and nothing was counted.
    pub(super) fn push_slot(&mut self, idx: u32) -> std::io::Result<()> {
        self.count_in_kernel(idx, true);
        if self.reaping {
            self.deferred.push_back(idx);
            return Ok(());
        }
        let entry = self.build_entry(idx);
        self.push_entry(&entry)
            .inspect_err(|_| self.count_in_kernel(idx, false))
    }

    /// Counts slot `idx` into (`true`) or out of the kernel's share.
    pub(super) fn count_in_kernel(&mut self, idx: u32, into: bool) {
        let slot = &self.slots[idx as usize];
        if slot.op.is_write()
            && let Ok(f) = self.files.get_mut(slot.fd)
        {
            if into {
                f.writes_in_kernel += 1;
            } else {
                f.writes_in_kernel -= 1;
            }
        }
        if into {
            self.in_kernel += 1;
        } else {
            self.in_kernel -= 1;
        }
    }

    pub(super) fn build_entry(&mut self, idx: u32) -> squeue::Entry {
        let registered_files = self.registered_files;
        let slot = &mut self.slots[idx as usize];
        let (raw, fixed_index) = match self.files.get(slot.fd) {
            Ok(f) => (f.raw, slot.fd.slot),
            // The fd table keeps every fd with ops in flight (deregister waits), so this is
            // unreachable; a NOP completes the slot harmlessly if it ever happens.
            Err(_) => return opcode::Nop::new().build().user_data(u64::from(idx)),
        };
        let done = slot.done;
        let offset = slot.offset + done as u64;
        let remaining = u32::try_from(slot.len - done).unwrap_or(u32::MAX);
        macro_rules! with_fd {
            ($make:expr) => {
                if registered_files {
                    let t = types::Fixed(fixed_index);
                    $make(t)
                } else {
                    let t = types::Fd(raw);
                    $make(t)
                }
            };
        }
        // A registered buffer goes in by index (`*Fixed`), any other memory by address. The
        // kernel checks that a fixed transfer lies inside the buffer of that index.
        macro_rules! read_into {
            ($ptr:expr, $index:expr) => {
                match $index {
                    Some(b) => with_fd!(|t| opcode::ReadFixed::new(t, $ptr, remaining, b)
                        .offset(offset)
                        .build()),
                    None => with_fd!(|t| opcode::Read::new(t, $ptr, remaining).offset(offset).build()),
                }
            };
        }
        macro_rules! write_from {
            ($ptr:expr, $index:expr) => {
                match $index {
                    Some(b) => with_fd!(|t| opcode::WriteFixed::new(t, $ptr, remaining, b)
                        .offset(offset)
                        .build()),
                    None => with_fd!(|t| opcode::Write::new(t, $ptr, remaining)
                        .offset(offset)
                        .build()),
                }
            };
        }
        let fixed = self.fixed.as_ref();
        let entry = match &mut slot.payload {
            Payload::Read(buf) => {
                let index = registered_index(fixed, buf);
                // SAFETY: done <= len == buf.len(), so the pointer stays inside the buffer. The
                // buffer is owned by this slot until its completion is reaped, and moving the
                // IoBuf value does not move its heap memory, so the kernel's pointer stays valid.
                let ptr = unsafe { buf.as_mut_slice().as_mut_ptr().add(done) };
                read_into!(ptr, index)
            }
            Payload::ReadStaged { staging, .. } => {
                let index = fixed.and_then(|f| f.index_of(staging));
                // SAFETY: as for Read: done <= len == staging.len(), and the staging buffer is
                // owned by the slot until reaped; its memory (a registered area) never moves.
                let ptr = unsafe { staging.as_mut_ptr().add(done) };
                read_into!(ptr, index)
            }
            Payload::WriteOwned(buf) => {
                let index = registered_index(fixed, buf);
                // SAFETY: as for Read: in bounds, owned by the slot until reaped, heap-stable.
                let ptr = unsafe { buf.as_slice().as_ptr().add(done) };
                write_from!(ptr, index)
            }
            Payload::WriteStaged(buf) => {
                let index = fixed.and_then(|f| f.index_of(buf));
                // SAFETY: as for Read: in bounds, owned by the slot until reaped, heap-stable.
                let ptr = unsafe { buf.as_ptr().add(done) };
                write_from!(ptr, index)
            }
            Payload::WriteShared(data) => {
                // SAFETY: done <= len == data.len(), so the pointer stays inside the bytes. The
                // slot holds a reference to them until the completion is reaped, and `Bytes`
                // memory never moves or changes while any reference lives.
                let ptr = unsafe { data.as_ptr().add(done) };
                write_from!(ptr, None::<u16>)
            }
            Payload::Sync => {
                let flags = if slot.op == OpKind::Fsync {
                    types::FsyncFlags::empty()
                } else {
                    types::FsyncFlags::DATASYNC
                };
                with_fd!(|t| opcode::Fsync::new(t).flags(flags).build())
            }
            Payload::None => opcode::Nop::new().build(),
        };
        entry.user_data(u64::from(idx))
    }

    /// Stages a copied write: a registered buffer when one is free and big enough, else heap.
    pub(super) fn stage_copy(&mut self, data: &[u8]) -> Result<Payload> {
        if let Some(mut b) = self.fixed.as_ref().and_then(|f| f.take(data.len())) {
            b.copy_from_slice(data);
            return Ok(Payload::WriteStaged(b));
        }
        let mut buf = match self.heap_staging.pop() {
            Some(b) if b.capacity() >= data.len() => b,
            _ => AlignedBuf::zeroed(
                self.config.buffer_size.max(data.len()),
                storage_io_core::DEFAULT_ALIGNMENT,
            )?,
        };
        buf.clear();
        buf.extend_from_slice(data)?;
        Ok(Payload::WriteStaged(buf))
    }

    /// Checks a write and plans where it goes: the op kind, the offset, and the append cursor
    /// after it. The cursor itself is left alone: [`commit_cursor`](Self::commit_cursor) moves it
    /// once the write was accepted, so a refused submit leaves no hole.
    pub(super) fn write_checked(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<WritePlan> {
        self.admit()?;
        let max = self.config.max_io_bytes;
        let f = self.files.get(fd)?;
        let mut cursor = f.append_cursor;
        let (op, offset) = plan_write(&mut cursor, f.align, offset, data, max)?;
        Ok(WritePlan { op, offset, cursor })
    }

    /// Moves `fd`'s append cursor to where an accepted write planned it.
    pub(super) fn commit_cursor(&mut self, fd: IoFd, plan: &WritePlan) {
        if let Ok(f) = self.files.get_mut(fd) {
            debug_assert!(
                plan.cursor >= f.append_cursor,
                "an accepted write never moves the cursor back"
            );
            f.append_cursor = plan.cursor;
        }
    }

    /// Whether the file's direct I/O takes memory at `addr` (any address for a buffered file).
    pub(super) fn address_fits(&self, fd: IoFd, addr: usize) -> Result<bool> {
        let align = self.files.get(fd)?.align.unwrap_or(1);
        Ok(addr.is_multiple_of(align))
    }

    /// A write from `data` in place (`WriteShared`): the caller checked that the file takes its
    /// address.
    pub(super) fn shared_write(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        let plan = self.write_checked(fd, &data, Some(offset))?;
        let len = data.len();
        let token = self
            .start(fd, plan.op, plan.offset, len, 0, Payload::WriteShared(data))
            .map_err(|(e, _)| e)?;
        self.commit_cursor(fd, &plan);
        Ok(token)
    }

    pub(super) fn copied_write(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<IoToken> {
        let plan = self.write_checked(fd, data, offset)?;
        let payload = self.stage_copy(data)?;
        let token = self
            .start(fd, plan.op, plan.offset, data.len(), 0, payload)
            .map_err(|(e, _)| e)?;
        self.commit_cursor(fd, &plan);
        Ok(token)
    }

    pub(super) fn sync(&mut self, fd: IoFd, op: OpKind) -> Result<IoToken> {
        self.admit()?;
        self.files.get(fd)?;
        self.start(fd, op, 0, 0, 0, Payload::Sync).map_err(|(e, _)| e)
    }

    /// A read the page cache answered whole at submit: its completion waits in `ready` for the
    /// next poll, as on the inline backend (no slot, nothing in the ring; `ready` holds at most
    /// `queue_depth`, its capacity, so this does not allocate).
    pub(super) fn complete_at_submit(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        n: usize,
        started: Instant,
    ) -> IoToken {
        self.pending += 1;
        self.nowait_hits += 1;
        stage_cached_read(
            &mut self.tokens,
            &mut self.stats,
            &mut self.ready,
            fd,
            buf,
            offset,
            n,
            started,
        )
    }
}

/// Where a checked write goes, and where the append cursor stands once it is accepted.
pub(super) struct WritePlan {
    pub(super) op: OpKind,
    pub(super) offset: u64,
    pub(super) cursor: u64,
}
