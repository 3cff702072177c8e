//! [`Reply`]: the answer to one scheduler call, on its own channel; [`PageRead`]: the answer
//! to a tagged read, on a channel the caller owns.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::PageId;
use crate::error::{Result, SchedulerError};

/// The answer to [`DiskScheduler::schedule_read_tagged`](crate::DiskScheduler::schedule_read_tagged),
/// sent on the caller's channel: the caller's tag, the page, and the bytes or the error.
///
/// The bytes are shared, not copied: they are the buffer the read landed in (see
/// [`DiskScheduler::schedule_read_shared`](crate::DiskScheduler::schedule_read_shared)).
#[derive(Debug)]
pub struct PageRead {
    /// The tag the caller chose when it scheduled the read.
    pub tag: u64,
    /// The page that was read.
    pub page: PageId,
    /// The page's bytes, or why it could not be read.
    pub result: Result<Bytes>,
}

/// Where the answer to one page read goes: the call's own [`Reply`], or a caller's channel of
/// tagged answers. A tagged answer that is dropped unsent (a worker that died) sends `Closed`,
/// so a caller waiting on its channel never waits for an answer that cannot come.
#[derive(Debug)]
pub(crate) struct PageAnswer(Option<PageAnswerTo>);

#[derive(Debug)]
enum PageAnswerTo {
    /// A caller that wants its own mutable copy.
    Own(Answer<BytesMut>),
    /// A caller that shares the buffer the read landed in.
    Shared(Answer<Bytes>),
    Tagged {
        tag: u64,
        page: PageId,
        to: flume::Sender<PageRead>,
    },
}

impl PageAnswer {
    pub(crate) fn own(answer: Answer<BytesMut>) -> Self {
        PageAnswer(Some(PageAnswerTo::Own(answer)))
    }

    pub(crate) fn shared(answer: Answer<Bytes>) -> Self {
        PageAnswer(Some(PageAnswerTo::Shared(answer)))
    }

    pub(crate) fn tagged(tag: u64, page: PageId, to: flume::Sender<PageRead>) -> Self {
        PageAnswer(Some(PageAnswerTo::Tagged { tag, page, to }))
    }

    /// Sends the answer (a caller that went away is not an error): a share of `result`'s
    /// bytes, or, for a caller that wants its own, a copy.
    pub(crate) fn send(mut self, result: Result<Bytes>) {
        match self.0.take() {
            Some(PageAnswerTo::Own(a)) => {
                let _ = a.send(result.map(|page| BytesMut::from(&page[..])));
            }
            Some(PageAnswerTo::Shared(a)) => {
                let _ = a.send(result);
            }
            Some(PageAnswerTo::Tagged { tag, page, to }) => deliver(&to, PageRead { tag, page, result }),
            None => {}
        }
    }
}

/// Puts a tagged answer on the caller's channel without ever waiting for room: the scheduler's
/// lock and its workers must not wait on a channel only the caller drains (a full one froze
/// every caller). An answer that finds the channel full goes to a short-lived thread of its
/// own, which waits for room (or for the last receiver to go), so it still arrives.
fn deliver(to: &flume::Sender<PageRead>, read: PageRead) {
    match to.try_send(read) {
        Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
        Err(flume::TrySendError::Full(read)) => {
            let to = to.clone();
            let (tag, page) = (read.tag, read.page);
            let spawned = std::thread::Builder::new()
                .name("sio-sched-tagged".into())
                .spawn(move || {
                    let _ = to.send(read);
                });
            if let Err(e) = spawned {
                tracing::error!(tag, %page, error = %e, "scheduler: a tagged answer found its channel full and no thread could wait for room; the answer is lost");
            }
        }
    }
}

impl Drop for PageAnswer {
    fn drop(&mut self) {
        if let Some(PageAnswerTo::Tagged { tag, page, to }) = self.0.take() {
            deliver(
                &to,
                PageRead {
                    tag,
                    page,
                    result: Err(SchedulerError::Closed),
                },
            );
        }
    }
}

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
    /// A caller that only waits for one page does better with
    /// [`DiskScheduler::read_blocking`](crate::DiskScheduler::read_blocking).
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
