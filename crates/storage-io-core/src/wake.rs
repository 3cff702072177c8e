//! [`WaitWaker`]: cutting a blocked [`wait_completions`](crate::StorageIo::wait_completions)
//! short from another thread.
//!
//! A thread that owns a backend often serves a request channel too: it submits what arrived,
//! then blocks for completions. Without a way to interrupt that wait, a request that arrives
//! meanwhile sits in the channel until an op completes or a timeout ends the wait — on a busy
//! device that keeps fewer ops in flight than asked for. A backend that can be interrupted hands
//! out a [`WaitWaker`] from [`StorageIo::wait_waker`](crate::StorageIo::wait_waker); the
//! producer sends its request and then calls [`WaitWaker::wake`].
//!
//! Wakes are never lost and cost the producer nothing while the owner is not blocked: a wake
//! sets a flag, and only when the owner is blocked (or about to block) does the backend's kick
//! run (an eventfd write for io_uring, a message for the thread pool).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// The flags a backend and its wakers share. Backends call [`arm`](WakeState::arm) right before
/// they block and [`disarm`](WakeState::disarm) right after; wakers call
/// [`wake`](WakeState::wake).
///
/// Every access is sequentially consistent: the owner stores `armed` then reads `woken`, a
/// waker stores `woken` then reads `armed`, so at least one of the two sees the other's store —
/// either the owner does not block, or the waker kicks it.
#[derive(Debug, Default)]
pub struct WakeState {
    armed: AtomicBool,
    woken: AtomicBool,
}

impl WakeState {
    /// New state: not blocked, no wake pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// The owner is about to block. Returns `false` (and consumes the wake) when a wake is
    /// already pending: then it must not block.
    pub fn arm(&self) -> bool {
        self.armed.store(true, SeqCst);
        if self.woken.swap(false, SeqCst) {
            self.armed.store(false, SeqCst);
            return false;
        }
        true
    }

    /// The owner stopped blocking. Returns `true` (and consumes it) when a wake arrived: the
    /// wait should return to its caller.
    pub fn disarm(&self) -> bool {
        self.armed.store(false, SeqCst);
        self.woken.swap(false, SeqCst)
    }

    /// Records a wake. Returns `true` when the owner is blocked or about to block and must be
    /// kicked; then the caller runs the backend's kick.
    pub fn wake(&self) -> bool {
        self.woken.store(true, SeqCst);
        self.armed.swap(false, SeqCst)
    }
}

/// A handle, cheap to clone and usable from any thread, that makes the backend's current
/// [`wait_completions`](crate::StorageIo::wait_completions) — or, if none is blocked, its next
/// one — return early, possibly with fewer completions than asked for (even none). Wakes
/// coalesce: many wakes before the owner looks count as one.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use storage_io_core::WaitWaker;
/// use storage_io_core::backend_kit::WakeState;
///
/// let state = Arc::new(WakeState::new());
/// let kicks = Arc::new(AtomicUsize::new(0));
/// let k = Arc::clone(&kicks);
/// let waker = WaitWaker::new(Arc::clone(&state), move || {
///     k.fetch_add(1, Ordering::SeqCst);
/// });
/// waker.wake(); // the owner is not blocked: recorded, no kick
/// assert_eq!(kicks.load(Ordering::SeqCst), 0);
/// assert!(!state.arm(), "a pending wake stops the owner from blocking");
/// assert!(state.arm());
/// waker.wake(); // the owner is blocked: kicked once
/// assert_eq!(kicks.load(Ordering::SeqCst), 1);
/// assert!(state.disarm(), "the owner sees the wake when it stops blocking");
/// ```
#[derive(Clone)]
pub struct WaitWaker {
    state: Arc<WakeState>,
    kick: Arc<dyn Fn() + Send + Sync>,
}

impl WaitWaker {
    /// A waker over `state` that runs `kick` when the owner has to be interrupted.
    pub fn new(state: Arc<WakeState>, kick: impl Fn() + Send + Sync + 'static) -> Self {
        WaitWaker {
            state,
            kick: Arc::new(kick),
        }
    }

    /// Interrupts the owner's wait (see the type docs).
    pub fn wake(&self) {
        if self.state.wake() {
            (self.kick)();
        }
    }
}

impl fmt::Debug for WaitWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitWaker")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_wake_between_arm_and_disarm_kicks_once_and_is_seen() {
        let state = WakeState::new();
        assert!(state.arm());
        assert!(state.wake(), "blocked owner must be kicked");
        assert!(
            !state.wake(),
            "a second wake while the kick is on its way is coalesced"
        );
        assert!(state.disarm());
        assert!(!state.disarm(), "the wake was consumed");
        assert!(state.arm(), "nothing pending any more");
    }

    #[test]
    fn no_wake_is_lost_under_races() {
        // The owner drains a channel and parks when it is empty; the producer sends, then wakes.
        // A lost wake would leave the owner parked with a message waiting until the long park
        // timeout ends: that is the failure this test looks for.
        let state = Arc::new(WakeState::new());
        let owner = std::thread::current();
        let kicks = Arc::new(AtomicUsize::new(0));
        let waker = {
            let kicks = Arc::clone(&kicks);
            WaitWaker::new(Arc::clone(&state), move || {
                kicks.fetch_add(1, SeqCst);
                owner.unpark();
            })
        };
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let messages = 20_000;
        let producer = std::thread::spawn(move || {
            for i in 0..messages {
                tx.send(i).unwrap();
                waker.wake();
                if i % 7 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0;
        while got < messages {
            while rx.try_recv().is_ok() {
                got += 1;
            }
            if got == messages {
                break;
            }
            if state.arm() {
                let parked = std::time::Instant::now();
                std::thread::park_timeout(std::time::Duration::from_secs(5));
                let woke = state.disarm();
                assert!(
                    woke || parked.elapsed() < std::time::Duration::from_secs(5),
                    "lost wake: parked for the whole timeout after {got} messages"
                );
            }
        }
        producer.join().unwrap();
        assert!(kicks.load(SeqCst) <= messages as usize);
    }
}
