//! [`BatchState`] (a multi-page read answered once, in request order) and [`Join`] (a call
//! answered once all of its parts have arrived: a sync once every worker has synced, an
//! allocation once its image and the writes it waits for are durable).
//!
//! **Invariant:** each sends exactly one answer, when the last part arrives, whatever order the
//! parts arrive in and whichever workers they come from.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::PageId;
use crate::error::{Result, SchedulerError};
use crate::reply::Answer;

/// A `schedule_read_pages` call in progress: one slot per requested page, filled by index.
pub(crate) struct BatchState {
    pages: Vec<PageId>,
    inner: Mutex<BatchSlots>,
    answer: BatchAnswer,
}

/// Where a batch's pages go: copies the caller owns, or shares of the buffers they landed in.
pub(crate) enum BatchAnswer {
    Own(Answer<Vec<BytesMut>>),
    Shared(Answer<Vec<Bytes>>),
}

struct BatchSlots {
    slots: Vec<Option<Bytes>>,
    remaining: usize,
    error: Option<SchedulerError>,
}

impl BatchState {
    pub(crate) fn new(pages: Vec<PageId>, answer: BatchAnswer) -> Self {
        let n = pages.len();
        BatchState {
            pages,
            inner: Mutex::new(BatchSlots {
                slots: (0..n).map(|_| None).collect(),
                remaining: n,
                error: None,
            }),
            answer,
        }
    }

    /// Records the page at `index`. The first error wins and names its index and page; the
    /// answer goes out when the last page is in.
    pub(crate) fn complete(&self, index: usize, result: Result<Bytes>) {
        let mut inner = self.inner.lock();
        match result {
            Ok(page) => inner.slots[index] = Some(page),
            Err(e) => {
                if inner.error.is_none() {
                    inner.error = Some(SchedulerError::Batch {
                        index,
                        page: self.pages[index],
                        source: Box::new(e),
                    });
                }
            }
        }
        inner.remaining -= 1;
        if inner.remaining > 0 {
            return;
        }
        let error = inner.error.take();
        let pages = std::mem::take(&mut inner.slots)
            .into_iter()
            .map(Option::unwrap_or_default);
        drop(inner);
        match (&self.answer, error) {
            (BatchAnswer::Own(a), Some(e)) => drop(a.send(Err(e))),
            (BatchAnswer::Shared(a), Some(e)) => drop(a.send(Err(e))),
            (BatchAnswer::Own(a), None) => drop(a.send(Ok(pages.map(|p| BytesMut::from(&p[..])).collect()))),
            (BatchAnswer::Shared(a), None) => drop(a.send(Ok(pages.collect()))),
        }
    }
}

/// One part of a call answered by several parts of work (a sync on every worker, an
/// allocation image and the writes it depends on): each part reports here once.
pub(crate) trait Part: Send + Sync {
    fn arrive(&self, result: Result<()>);
}

/// A call in progress that is answered, with `value`, once all of its parts have arrived; the
/// first error any part reported wins.
pub(crate) struct Join<T> {
    inner: Mutex<JoinState<T>>,
    answer: Answer<T>,
}

struct JoinState<T> {
    remaining: usize,
    error: Option<SchedulerError>,
    value: Option<T>,
}

/// A `schedule_sync` call in progress: answered when every worker has reported.
pub(crate) type SyncBarrier = Join<()>;

impl<T> Join<T> {
    pub(crate) fn new(parts: usize, value: T, answer: Answer<T>) -> Self {
        Join {
            inner: Mutex::new(JoinState {
                remaining: parts,
                error: None,
                value: Some(value),
            }),
            answer,
        }
    }
}

impl SyncBarrier {
    pub(crate) fn barrier(parts: usize, answer: Answer<()>) -> Self {
        Join::new(parts, (), answer)
    }
}

impl<T: Send> Part for Join<T> {
    fn arrive(&self, result: Result<()>) {
        let mut inner = self.inner.lock();
        if let Err(e) = result {
            inner.error.get_or_insert(e);
        }
        inner.remaining -= 1;
        if inner.remaining == 0 {
            let answer = match inner.error.take() {
                Some(e) => Err(e),
                None => inner.value.take().ok_or(SchedulerError::Closed),
            };
            drop(inner);
            let _ = self.answer.send(answer);
        }
    }
}

/// Where the answer to a write (or a zero page written for a reused id) goes: the caller's
/// own reply, or one part of a [`Join`].
pub(crate) enum Ack {
    Answer(Answer<()>),
    Part(std::sync::Arc<dyn Part>),
}

impl Ack {
    pub(crate) fn send(self, result: Result<()>) {
        match self {
            Ack::Answer(a) => {
                let _ = a.send(result);
            }
            Ack::Part(p) => p.arrive(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;

    #[test]
    fn batch_answers_in_request_order_once_the_last_page_lands() {
        let (tx, reply) = Reply::channel();
        let batch = BatchState::new(vec![PageId(9), PageId(3), PageId(5)], BatchAnswer::Own(tx));
        batch.complete(2, Ok(Bytes::from_static(b"five")));
        batch.complete(0, Ok(Bytes::from_static(b"nine")));
        assert!(reply.try_recv().is_none());
        batch.complete(1, Ok(Bytes::from_static(b"three")));
        let pages = reply.recv().unwrap();
        assert_eq!(pages, vec![&b"nine"[..], &b"three"[..], &b"five"[..]]);
    }

    #[test]
    fn batch_reports_the_first_error_with_its_page() {
        let (tx, reply) = Reply::channel();
        let batch = BatchState::new(vec![PageId(1), PageId(2), PageId(3)], BatchAnswer::Shared(tx));
        batch.complete(1, Err(SchedulerError::NotAllocated(PageId(2))));
        batch.complete(2, Err(SchedulerError::Closed));
        batch.complete(0, Ok(Bytes::new()));
        match reply.recv() {
            Err(SchedulerError::Batch {
                index: 1,
                page: PageId(2),
                ..
            }) => {}
            other => panic!("expected the error of index 1, got {other:?}"),
        }
    }

    #[test]
    fn a_join_answers_its_value_after_every_part_or_the_first_error() {
        let (tx, reply) = Reply::channel();
        let join = std::sync::Arc::new(Join::new(3, PageId(7), tx));
        Ack::Part(join.clone()).send(Ok(()));
        join.arrive(Ok(()));
        assert!(reply.try_recv().is_none());
        join.arrive(Ok(()));
        assert_eq!(reply.recv().unwrap(), PageId(7));
        let (tx, reply) = Reply::channel();
        let join = Join::new(2, PageId(7), tx);
        join.arrive(Err(SchedulerError::NotAllocated(PageId(1))));
        join.arrive(Err(SchedulerError::Closed));
        assert!(matches!(
            reply.recv(),
            Err(SchedulerError::NotAllocated(PageId(1)))
        ));
    }

    #[test]
    fn barrier_answers_after_every_part() {
        let (tx, reply) = Reply::channel();
        let barrier = SyncBarrier::barrier(2, tx);
        barrier.arrive(Ok(()));
        assert!(reply.try_recv().is_none());
        barrier.arrive(Err(SchedulerError::Closed));
        assert!(matches!(reply.recv(), Err(SchedulerError::Closed)));
    }
}
