//! [`Reply`]: the answer to one scheduler call, on its own channel.

use std::time::Duration;

use crate::error::{Result, SchedulerError};

/// The answer to one scheduler call. Block on it ([`recv`](Reply::recv)), poll it
/// ([`try_recv`](Reply::try_recv)), or await it ([`recv_async`](Reply::recv_async)) from any
/// executor. Exactly one answer is ever sent; dropping the `Reply` discards it without
/// cancelling the work (a write still happens).
#[derive(Debug)]
pub struct Reply<T> {
    rx: flume::Receiver<Result<T>>,
}

/// The sending half, kept by whoever answers.
pub(crate) type Answer<T> = flume::Sender<Result<T>>;

impl<T> Reply<T> {
    pub(crate) fn channel() -> (Answer<T>, Reply<T>) {
        let (tx, rx) = flume::bounded(1);
        (tx, Reply { rx })
    }

    /// A reply that is already answered (bad input caught before anything was queued).
    pub(crate) fn ready(value: Result<T>) -> Reply<T> {
        let (tx, reply) = Reply::channel();
        let _ = tx.send(value);
        reply
    }

    /// Blocks until the answer arrives. `Closed` if the scheduler went away without answering
    /// (it does not: shutdown answers everything it accepted) or the answer was already taken.
    pub fn recv(&self) -> Result<T> {
        self.rx.recv().unwrap_or(Err(SchedulerError::Closed))
    }

    /// The answer if it has arrived, without blocking.
    pub fn try_recv(&self) -> Option<Result<T>> {
        match self.rx.try_recv() {
            Ok(v) => Some(v),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => Some(Err(SchedulerError::Closed)),
        }
    }

    /// Waits up to `timeout`; `None` if the answer has not arrived by then.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Result<T>> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => Some(v),
            Err(flume::RecvTimeoutError::Timeout) => None,
            Err(flume::RecvTimeoutError::Disconnected) => Some(Err(SchedulerError::Closed)),
        }
    }

    /// Awaits the answer without blocking the executor thread.
    pub async fn recv_async(&self) -> Result<T> {
        self.rx.recv_async().await.unwrap_or(Err(SchedulerError::Closed))
    }

    /// The underlying flume receiver, borrowed (to wait on many replies at once with
    /// `flume::Selector`).
    pub fn receiver(&self) -> &flume::Receiver<Result<T>> {
        &self.rx
    }

    /// The underlying flume receiver, for `select!` and friends.
    pub fn into_receiver(self) -> flume::Receiver<Result<T>> {
        self.rx
    }
}
