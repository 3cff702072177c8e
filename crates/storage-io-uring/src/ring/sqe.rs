//! SQE building: a slot's op as an io_uring entry, pushed now or deferred until reaping ends.

use super::*;

impl RingDriver {
    /// Starts slot `idx` (for its remaining bytes): builds and pushes its SQE. While reaping,
    /// the slot is queued in `deferred` instead, and `reap` pushes it after the batch. On `Err`
    /// the SQ could not take it (a persistent enter failure).
    pub(super) fn push_slot(&mut self, ops: &mut Ops, idx: u32) -> std::io::Result<()> {
        if self.reaping {
            self.deferred.push_back(idx);
            return Ok(());
        }
        let entry = self.build_entry(ops, idx);
        self.push_entry(ops, &entry)
    }

    /// After an op was accepted: hands queued SQEs over once `submit_batch` wait, except a
    /// lone SQE while the kernel has nothing else of ours: then the caller's next wait submits
    /// it in the same system call (at qd 1 that halves the io_uring_enter calls), and a second
    /// submit releases both.
    pub(super) fn after_accept(&mut self, ops: &mut Ops) {
        let batch = ops.config().submit_batch;
        let queued = self.ring.submission().len();
        let busy = ops.out() > queued;
        if batch > 0 && queued >= batch && (queued > 1 || busy) {
            // A failure leaves the SQEs queued; flush/poll/wait hand them over and report it.
            let _ = self.enter(ops, 0, None);
        }
    }

    pub(super) fn build_entry(&self, ops: &mut Ops, idx: u32) -> squeue::Entry {
        let registered_files = self.registered_files;
        let raw = ops.file(ops.slot(idx).fd).map(|f| f.as_raw_fd());
        let slot = ops.slot_mut(idx);
        let (raw, fixed_index) = match raw {
            Ok(raw) => (raw, slot.fd.slot),
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
            OpPayload::Read(buf) => {
                let index = registered_index(fixed, buf);
                // SAFETY: done <= len == buf.len(), so the pointer stays inside the buffer. The
                // buffer is owned by this slot until its completion is reaped, and moving the
                // IoBuf value does not move its heap memory, so the kernel's pointer stays valid.
                let ptr = unsafe { buf.as_mut_slice().as_mut_ptr().add(done) };
                read_into!(ptr, index)
            }
            OpPayload::ReadStaged { staging, .. } => {
                let index = fixed.and_then(|f| f.index_of(staging));
                // SAFETY: as for Read: done <= len == staging.len(), and the staging buffer is
                // owned by the slot until reaped; its memory (a registered area) never moves.
                let ptr = unsafe { staging.as_mut_ptr().add(done) };
                read_into!(ptr, index)
            }
            OpPayload::WriteOwned(buf) => {
                let index = registered_index(fixed, buf);
                // SAFETY: as for Read: in bounds, owned by the slot until reaped, heap-stable.
                let ptr = unsafe { buf.as_slice().as_ptr().add(done) };
                write_from!(ptr, index)
            }
            OpPayload::WriteStaged(buf) => {
                let index = fixed.and_then(|f| f.index_of(buf));
                // SAFETY: as for Read: in bounds, owned by the slot until reaped, heap-stable.
                let ptr = unsafe { buf.as_ptr().add(done) };
                write_from!(ptr, index)
            }
            OpPayload::WriteShared(data) => {
                // SAFETY: done <= len == data.len(), so the pointer stays inside the bytes. The
                // slot holds a reference to them until the completion is reaped, and `Bytes`
                // memory never moves or changes while any reference lives.
                let ptr = unsafe { data.as_ptr().add(done) };
                write_from!(ptr, None::<u16>)
            }
            OpPayload::Sync => {
                let flags = if slot.op == OpKind::Fsync {
                    types::FsyncFlags::empty()
                } else {
                    types::FsyncFlags::DATASYNC
                };
                with_fd!(|t| opcode::Fsync::new(t).flags(flags).build())
            }
            OpPayload::None => opcode::Nop::new().build(),
        };
        entry.user_data(u64::from(idx))
    }
}
