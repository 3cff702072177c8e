//! The ring timers and the clock: deadlines of blocking waits as IORING_OP_TIMEOUT ops.

use super::*;

/// `user_data` of the ring timers (IORING_OP_TIMEOUT); slot `i` uses `TIMER_TAG - i`.
pub(super) const TIMER_TAG: u64 = u64::MAX - 1;

/// Deadlines of blocking waits, kept in the ring as IORING_OP_TIMEOUT ops.
///
/// A timeout passed with `IORING_ENTER_EXT_ARG` makes the kernel arm and cancel a timer on every
/// `io_uring_enter`; at qd 1 that was about 4 % more CPU per read than waiting without one (the
/// bench's hang guard waits with 10 s). A timer op in the ring instead serves every later wait
/// whose deadline is no earlier than it, so a loop of waits with a far deadline arms one timer
/// per deadline, not one per wait. A wait that a timer serves asks the kernel for one CQE, since
/// the timer's CQE must be able to end it.
pub(super) struct RingTimers {
    /// The absolute CLOCK_MONOTONIC expiry each timer was armed with. Boxed so the address in
    /// the SQE stays put; the kernel copies the value when it takes the SQE.
    pub(super) ts: [Box<types::Timespec>; 2],
    /// When each timer fires; `None` while it is not in the ring.
    pub(super) fires_at: [Option<Instant>; 2],
}

impl RingTimers {
    pub(super) fn new() -> Self {
        RingTimers {
            ts: [Box::new(types::Timespec::new()), Box::new(types::Timespec::new())],
            fires_at: [None, None],
        }
    }

    /// A timer in the ring that fires no later than `deadline`.
    pub(super) fn covers(&self, deadline: Instant) -> bool {
        self.fires_at.iter().flatten().any(|&t| t <= deadline)
    }

    /// Its CQE arrived (expired, or cancelled as the ring closed).
    /// Forgets the timer `entry` was built for (its SQE never reached the ring).
    pub(super) fn disarm(&mut self, entry: &squeue::Entry) {
        if let Some(i @ 0..=1) = TIMER_TAG.checked_sub(entry.get_user_data()) {
            self.fires_at[i as usize] = None;
        }
    }

    pub(super) fn reaped(&mut self, user_data: u64) -> bool {
        match TIMER_TAG.checked_sub(user_data) {
            Some(i @ 0..=1) => {
                self.fires_at[i as usize] = None;
                true
            }
            _ => false,
        }
    }

    /// Builds the SQE of a free timer firing at `deadline` (`left` from now); `None` when both
    /// are in the ring.
    pub(super) fn arm(&mut self, deadline: Instant, left: Duration) -> Option<squeue::Entry> {
        let i = self.fires_at.iter().position(Option::is_none)?;
        let expiry = monotonic_now().checked_add(left)?;
        *self.ts[i] = types::Timespec::from(expiry);
        self.fires_at[i] = Some(deadline);
        let ts: *const types::Timespec = &*self.ts[i];
        Some(
            opcode::Timeout::new(ts)
                .flags(types::TimeoutFlags::ABS)
                .build()
                .user_data(TIMER_TAG - i as u64),
        )
    }
}

/// CLOCK_MONOTONIC now (the clock of `Instant` and of absolute io_uring timeouts).
pub(super) fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live local it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl RingDriver {
    /// How to block for `want` completions until `deadline` (`left` from now): the CQE count
    /// the kernel waits for and the timeout to hand it (EXT_ARG).
    ///
    /// A wake read in the ring must end the wait with its one CQE, so the kernel then waits for
    /// one. A wait for one CQE uses a ring timer (see [`RingTimers`]) rather than EXT_ARG; a wait
    /// for more keeps EXT_ARG, which ends it on time without a return to user space per CQE.
    /// Without EXT_ARG (kernels before 5.11) every deadline uses a ring timer; if both are in
    /// the ring and fire later than this deadline, the wait may end that much late.
    pub(super) fn plan_wait(
        &mut self,
        ops: &mut Ops,
        want: usize,
        deadline: Option<(Instant, Duration)>,
    ) -> std::io::Result<(usize, Option<Duration>)> {
        let want = if self.wake.as_ref().is_some_and(|w| w.read_armed) {
            1
        } else {
            want
        };
        let Some((deadline, left)) = deadline else {
            return Ok((want, None));
        };
        if want > 1 && self.ext_arg {
            return Ok((want, Some(left)));
        }
        if self.timers.covers(deadline) {
            return Ok((1, None));
        }
        if let Some(entry) = self.timers.arm(deadline, left) {
            if let Err(e) = self.push_entry(ops, &entry) {
                self.timers.disarm(&entry);
                return Err(e);
            }
            return Ok((1, None));
        }
        Ok(if self.ext_arg {
            (want, Some(left))
        } else {
            (1, None)
        })
    }
}
