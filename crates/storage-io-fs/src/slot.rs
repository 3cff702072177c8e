//! A one-value completion slot between an I/O worker and the future waiting on it.
//!
//! One allocation per operation (an `Arc` holding a short lock). The worker completes the slot
//! from its own thread and wakes whichever executor polled the future last; nothing here belongs
//! to a particular runtime. A future dropped before completion (cancellation) simply lets go of
//! its half: the worker's `complete` then hands the value back, and the worker drops it — after
//! the backend has returned the buffer, so nothing the kernel may still touch is ever freed early.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

struct State<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The completer went away without a value (its worker stopped).
    abandoned: bool,
    /// The waiting future was dropped: a later `complete` hands its value back.
    waiter_gone: bool,
}

/// The worker's half: completes the operation exactly once.
pub(crate) struct Completer<T> {
    shared: Option<Arc<Mutex<State<T>>>>,
}

/// The caller's half: a future that resolves to the value, or to `None` if the worker went away
/// without answering.
pub(crate) struct Waiting<T> {
    shared: Arc<Mutex<State<T>>>,
}

/// A new slot: the completer goes to the worker, the waiting future stays with the caller.
pub(crate) fn slot<T>() -> (Completer<T>, Waiting<T>) {
    let shared = Arc::new(Mutex::new(State {
        value: None,
        waker: None,
        abandoned: false,
        waiter_gone: false,
    }));
    (
        Completer {
            shared: Some(Arc::clone(&shared)),
        },
        Waiting { shared },
    )
}

impl<T> Completer<T> {
    /// Delivers the value and wakes the waiting task. Gives the value back when nobody waits
    /// any more (the future was dropped), so the caller decides what to do with it.
    pub(crate) fn complete(mut self, value: T) -> Result<(), T> {
        let Some(shared) = self.shared.take() else {
            return Err(value);
        };
        let waker = {
            // Checked under the lock the waiting side's drop takes: a value is never stored
            // for a future that is gone (it would be dropped with the slot, on whichever thread
            // lets go last); it comes back here instead.
            let mut state = shared.lock();
            if state.waiter_gone {
                return Err(value);
            }
            state.value = Some(value);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// True when the future was dropped and nobody will read the value.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.lock().waiter_gone)
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let waker = {
                let mut state = shared.lock();
                state.abandoned = true;
                state.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Drop for Waiting<T> {
    /// Marks the slot as abandoned and drops a value that was delivered but never read, here
    /// on the caller's side (a value with a `Drop` of its own, such as an opened file's close
    /// guard, then acts before the caller's next request).
    fn drop(&mut self) {
        let unread = {
            let mut state = self.shared.lock();
            state.waiter_gone = true;
            state.value.take()
        };
        drop(unread);
    }
}

impl<T> Future for Waiting<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(v) = state.value.take() {
            return Poll::Ready(Some(v));
        }
        if state.abandoned {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll_once<T>(w: &mut Waiting<T>, flag: &Arc<Flag>) -> Poll<Option<T>> {
        let waker = Waker::from(Arc::clone(flag));
        Pin::new(w).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn completion_wakes_and_delivers_once() {
        let flag = Arc::new(Flag(0.into()));
        let (c, mut w) = slot::<u32>();
        assert!(poll_once(&mut w, &flag).is_pending());
        assert!(c.complete(7).is_ok());
        assert_eq!(flag.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(poll_once(&mut w, &flag), Poll::Ready(Some(7)));
    }

    #[test]
    fn a_dropped_future_hands_the_value_back_to_the_worker() {
        let (c, w) = slot::<Vec<u8>>();
        drop(w);
        assert!(c.is_abandoned());
        assert_eq!(c.complete(vec![1, 2]).unwrap_err(), vec![1, 2]);
    }

    #[test]
    fn a_completer_dropped_unanswered_resolves_to_none() {
        let flag = Arc::new(Flag(0.into()));
        let (c, mut w) = slot::<u32>();
        assert!(poll_once(&mut w, &flag).is_pending());
        drop(c);
        assert_eq!(poll_once(&mut w, &flag), Poll::Ready(None));
    }
}
