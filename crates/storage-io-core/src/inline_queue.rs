//! [`InlineQueue`]: the bookkeeping of a backend that finishes every op inside `submit_*` —
//! tokens, the bounded queue of completions waiting for a poll, and stats.

use std::collections::VecDeque;
use std::time::Instant;

use crate::buf::IoBuf;
use crate::error::{Result, StorageIoError, SubmitError};
use crate::op::{IoCompletion, IoFd, IoToken, OpKind, TokenCounter};
use crate::stats::IoStats;

/// Completions of ops that already ran, waiting for the next poll.
///
/// The queue is preallocated to `queue_depth`; [`InlineQueue::admit`] refuses with `QueueFull`
/// once that many completions wait undelivered, so a caller that never polls gets an error, not
/// unbounded memory. Nothing here allocates after construction.
#[derive(Debug)]
pub struct InlineQueue {
    tokens: TokenCounter,
    ready: VecDeque<IoCompletion>,
    limit: usize,
    stats: IoStats,
}

impl InlineQueue {
    /// A queue that holds at most `queue_depth` undelivered completions.
    pub fn new(queue_depth: usize) -> Self {
        InlineQueue {
            tokens: TokenCounter::new(),
            ready: VecDeque::with_capacity(queue_depth),
            limit: queue_depth,
            stats: IoStats::new(),
        }
    }

    /// `Ok` when one more op may be accepted.
    pub fn admit(&self) -> Result<()> {
        if self.ready.len() >= self.limit {
            return Err(StorageIoError::QueueFull { limit: self.limit });
        }
        Ok(())
    }

    /// Records a finished op that started at `started`, gives it the next token (overwriting
    /// `done.token`), queues it for the next poll, and returns the token.
    pub fn complete(&mut self, started: Instant, mut done: IoCompletion) -> IoToken {
        done.token = self.tokens.next_token();
        self.stats.record_submit(done.op);
        let outcome = done.result.as_ref().map(|&n| n).map_err(|_| ());
        self.stats.record_complete(done.op, outcome, started.elapsed());
        let token = done.token;
        self.ready.push_back(done);
        token
    }

    /// Builds the completion of a finished op from its parts and queues it (see
    /// [`InlineQueue::complete`]); returns the token.
    pub fn finish(
        &mut self,
        started: Instant,
        (op, fd, offset, len_requested): (OpKind, IoFd, u64, usize),
        result: Result<usize>,
        buf: Option<IoBuf>,
    ) -> IoToken {
        let done = IoCompletion {
            token: IoToken(0),
            op,
            fd,
            offset,
            len_requested,
            result,
            buf,
        };
        self.complete(started, done)
    }

    /// Moves every queued completion into `out`, oldest first; returns how many.
    pub fn poll(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let n = self.ready.len();
        out.extend(self.ready.drain(..));
        n
    }

    /// Completions waiting for a poll.
    pub fn pending(&self) -> usize {
        self.ready.len()
    }

    /// The limit given at construction.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Stats of every op completed through this queue.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }
}

/// What an inline backend's write step did.
#[derive(Debug)]
pub struct InlineWrite {
    /// The op it became: `Write`, or `Append` for a write without an offset.
    pub op: OpKind,
    /// The offset it went to (an append's, from the file's cursor).
    pub offset: u64,
    /// Its outcome: bytes written, or the error.
    pub result: Result<usize>,
}

impl InlineWrite {
    /// The write step's report: `op` went to `offset` with `result`.
    pub fn new(op: OpKind, offset: u64, result: Result<usize>) -> Self {
        InlineWrite { op, offset, result }
    }
}

/// The write paths shared by backends that finish every op inside `submit_*` (the inline sync
/// backend, the testkit's in-memory one): implement the two required methods, and
/// `submit_write`, `submit_write_buf` and `submit_append` become one call each.
pub trait InlineBackend {
    /// The backend's completion queue.
    fn inline_queue(&mut self) -> &mut InlineQueue;

    /// Admits, validates, plans (append cursor) and performs one write of `data`; `offset`
    /// `None` is an append. An `Err` refuses the op at submit; an `Ok` carries its outcome.
    fn inline_write(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<InlineWrite>;

    /// `submit_write` / `submit_append`: the data is the caller's, nothing is kept.
    fn write_copied(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<IoToken> {
        let started = Instant::now();
        let InlineWrite { op, offset, result } = self.inline_write(fd, data, offset)?;
        Ok(self
            .inline_queue()
            .finish(started, (op, fd, offset, data.len()), result, None))
    }

    /// `submit_write_buf`: the buffer comes back in the completion, or in the error.
    fn write_owned(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let started = Instant::now();
        match self.inline_write(fd, &buf, Some(offset)) {
            Ok(InlineWrite { op, offset, result }) => {
                let len = buf.len();
                Ok(self
                    .inline_queue()
                    .finish(started, (op, fd, offset, len), result, Some(buf)))
            }
            Err(e) => Err(SubmitError::new(e, buf)),
        }
    }
}

/// Moves every completion in `ready` into `out`, oldest first, and takes them off `pending`
/// (accepted − delivered); returns how many. The delivery step of the asynchronous backends.
pub fn deliver_ready(
    ready: &mut VecDeque<IoCompletion>,
    pending: &mut usize,
    out: &mut Vec<IoCompletion>,
) -> usize {
    let n = ready.len();
    *pending -= n;
    out.extend(ready.drain(..));
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(op: OpKind) -> IoCompletion {
        IoCompletion {
            token: IoToken(0),
            op,
            fd: IoFd {
                slot: 0,
                generation: 0,
            },
            offset: 0,
            len_requested: 0,
            result: Ok(0),
            buf: None,
        }
    }

    #[test]
    fn tokens_are_fresh_and_the_limit_holds_until_polled() {
        let mut q = InlineQueue::new(2);
        let a = q.complete(Instant::now(), done(OpKind::Write));
        let b = q.complete(Instant::now(), done(OpKind::Datasync));
        assert_ne!(a, b);
        assert_eq!(q.admit(), Err(StorageIoError::QueueFull { limit: 2 }));
        let mut out = Vec::new();
        assert_eq!(q.poll(&mut out), 2);
        assert_eq!(out[0].token, a);
        assert!(q.admit().is_ok());
        assert_eq!(q.stats().completed(OpKind::Datasync), 1);
    }
}
