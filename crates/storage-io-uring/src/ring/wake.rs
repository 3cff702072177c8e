//! The wake eventfd: what cuts a blocked wait short from another thread (`wait_waker`).

use super::*;

/// `user_data` of the read on the wake eventfd (op slots use their index, far below this).
pub(super) const WAKE_TAG: u64 = u64::MAX;

/// What [`StorageIo::wait_waker`](storage_io_core::StorageIo::wait_waker) needs: an eventfd with a read on it in the ring while the
/// owner blocks. A waker writes the eventfd, the read completes, and the CQE ends the wait.
pub(super) struct RingWake {
    pub(super) state: Arc<WakeState>,
    pub(super) efd: Arc<OwnedFd>,
    /// Where the read puts the eventfd counter; boxed so its address is stable.
    pub(super) counter: Box<u64>,
    /// The read is in the ring (pushed and not yet reaped).
    pub(super) read_armed: bool,
}

impl RingWake {
    pub(super) fn new() -> std::io::Result<Self> {
        // A blocking eventfd: io_uring completes a read on an O_NONBLOCK file at once with
        // EAGAIN instead of waiting for a write.
        // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(RingWake {
            state: Arc::new(WakeState::new()),
            efd: Arc::new(efd),
            counter: Box::new(0),
            read_armed: false,
        })
    }

    pub(super) fn waker(&self) -> WaitWaker {
        let efd = Arc::clone(&self.efd);
        WaitWaker::new(Arc::clone(&self.state), move || kick_eventfd(efd.as_raw_fd()))
    }
}

/// Adds 1 to an eventfd counter. The counter only overflows after 2^64 - 2 unread kicks, and a
/// failed kick can only delay the owner until its next completion, so errors are ignored.
pub(super) fn kick_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64 to an fd the caller keeps open.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

impl RingDriver {
    /// Before blocking: puts the eventfd read in the ring if it is not there, then arms the
    /// wake state. `false` means a wake is pending (or the read could not be queued): do not
    /// block.
    pub(super) fn arm_wake(&mut self, ops: &mut Ops) -> std::io::Result<bool> {
        let Some(w) = self.wake.as_mut() else {
            return Ok(true);
        };
        if !w.read_armed {
            // The kernel writes 8 bytes to `counter` when the read completes. The box lives in
            // `self.wake` until the read is reaped (Drop kicks and reaps it first), so the
            // pointer stays valid for as long as push_entry's contract requires.
            let ptr: *mut u64 = &mut *w.counter;
            let entry = opcode::Read::new(types::Fd(w.efd.as_raw_fd()), ptr.cast(), 8)
                .build()
                .user_data(WAKE_TAG);
            w.read_armed = true;
            if let Err(e) = self.push_entry(ops, &entry) {
                if let Some(w) = self.wake.as_mut() {
                    w.read_armed = false;
                }
                return Err(e);
            }
        }
        Ok(self.wake.as_ref().is_none_or(|w| w.state.arm()))
    }

    /// After blocking: `true` when a wake arrived and the wait should return.
    pub(super) fn disarm_wake(&self) -> bool {
        self.wake.as_ref().is_some_and(|w| w.state.disarm())
    }
}
