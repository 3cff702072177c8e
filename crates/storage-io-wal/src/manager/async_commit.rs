//! Commits for async code: [`WalManager::commit_async`] and [`WalManager::durable`] return a
//! [`Durable`] future that completes once the record is durable.
//!
//! Nothing here blocks the executor's thread. A poll takes the state lock for a few
//! instructions (no I/O is ever done under it on this path) and registers the task's waker; the
//! flushing happens on the WAL I/O thread (`wal-io`, started by the first async commit), which
//! leads flushes while async committers wait, exactly as a blocking committer would, and wakes
//! the futures its flush covered. The futures need no runtime: any executor's waker works, and
//! so does a plain `block_on`.
//!
//! A record is appended when `commit_async` is called, not when its future is first polled, so
//! dropping the future loses nothing: the WAL I/O thread makes it durable all the same.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use storage_io_core::{OpKind, StorageIoError};

use super::{ENOSPC, Shared, State, WalManager};
use crate::Lsn;
use crate::error::WalError;

/// A future that completes with `Ok(lsn)` once the record at `lsn` (and everything before it)
/// is durable as the sync mode defines it, or with the error that stopped it: the WAL failed
/// ([`WalError::Poisoned`]), the disk filled before it was durable ([`WalError::DiskFull`]; the
/// record stays queued and a later commit retries it), or the WAL closed first
/// ([`WalError::Closed`]; `close` makes everything appended durable before it closes, so this
/// only happens to a record whose flush failed). `'static` and `Send`: spawn it, select on it,
/// or drop it.
#[must_use = "a Durable future does nothing useful unless awaited (the record is appended and made durable regardless)"]
pub struct Durable {
    shared: Arc<Shared>,
    lsn: Lsn,
    /// Done once `durable_lsn >= target`.
    target: u64,
    /// `disk_full_seq` when the record was appended: a flush that failed for a full disk after
    /// that answers this future.
    seen_full: u64,
    /// This future's key in `async_waiters`, while a waker is registered.
    key: Option<(u64, u64)>,
    /// The append failed: the answer, without waiting.
    failed: Option<WalError>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("lsn", &self.lsn)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl WalManager {
    /// Appends `record` now and returns a future that completes with its LSN once it is durable:
    /// the async form of [`commit`](WalManager::commit), for committers on an executor. The
    /// caller's thread only copies the record into the queue; the WAL I/O thread writes and
    /// syncs, one flush for every committer it covers.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_testkit::memio::MemFs;
    /// use storage_io_wal::{WalConfig, WalManager};
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let (wal, _) = WalManager::open("/wal", WalConfig::default(), factory).unwrap();
    /// let commits: Vec<_> = (0..100u32).map(|i| wal.commit_async(&i.to_le_bytes())).collect();
    /// // Any executor; a minimal one here.
    /// let lsns: Vec<_> = commits.into_iter().map(|c| block_on(c).unwrap()).collect();
    /// assert!(wal.durable_lsn() > *lsns.last().unwrap());
    /// assert!(wal.stats().flushes < 100); // group commit: far fewer flushes than commits
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark { fn wake(self: Arc<Self>) { self.0.unpark() } }
    /// #     let waker = Arc::new(Unpark(std::thread::current())).into();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v } std::thread::park() }
    /// # }
    /// ```
    pub fn commit_async(&self, record: &[u8]) -> Durable {
        let shared = &self.shared;
        let appended = shared.check_size(record.len()).and_then(|()| {
            let mut st = shared.state.lock();
            // Never the blocking `admit`: on a full disk it retries the flush on this thread.
            admit_without_io(&st)?;
            let lsn = shared.place(&mut st, record)?;
            let seen_full = st.disk_full_seq;
            want_flush(shared, &mut st)?;
            Ok((lsn, seen_full))
        });
        match appended {
            Ok((lsn, seen_full)) => self.future(Lsn(lsn), seen_full, None),
            Err(e) => self.future(Lsn(0), 0, Some(e)),
        }
    }

    /// A future that completes once the record at `lsn` (one this log holds) is durable: the
    /// async form of [`wait_durable`](WalManager::wait_durable). Records appended with
    /// [`append`](WalManager::append) are flushed for it by the WAL I/O thread.
    pub fn durable(&self, lsn: Lsn) -> Durable {
        let mut st = self.shared.state.lock();
        if lsn >= st.next_lsn || lsn < st.first_lsn {
            let e = WalError::LsnOutOfRange {
                lsn,
                first: st.first_lsn,
                next: st.next_lsn,
            };
            drop(st);
            return self.future(lsn, 0, Some(e));
        }
        let seen_full = st.disk_full_seq;
        let wanted = if st.durable_lsn <= lsn {
            want_flush(&self.shared, &mut st).err()
        } else {
            None
        };
        drop(st);
        self.future(lsn, seen_full, wanted)
    }

    fn future(&self, lsn: Lsn, seen_full: u64, failed: Option<WalError>) -> Durable {
        Durable {
            shared: Arc::clone(&self.shared),
            lsn,
            target: lsn.0 + 1,
            seen_full,
            key: None,
            failed,
        }
    }
}

/// `admit` for async callers: refuses a closed or failed WAL, and never does I/O (a full disk
/// is retried by the WAL I/O thread).
fn admit_without_io(st: &State) -> Result<(), WalError> {
    if st.closed || st.closing {
        return Err(WalError::Closed);
    }
    if let Some(cause) = &st.poisoned {
        return Err(WalError::Poisoned { cause: cause.clone() });
    }
    Ok(())
}

/// Asks the WAL I/O thread to flush everything appended so far, starting it if need be. Fails
/// only if the thread cannot start (what was appended stays queued for the next flush).
fn want_flush(shared: &Arc<Shared>, st: &mut State) -> Result<(), WalError> {
    st.async_wanted = st.async_wanted.max(st.next_lsn);
    if !shared.io_started.load(Ordering::Acquire) {
        let mut thread = shared.io_thread.lock();
        if thread.is_none() && !st.closed {
            let s = Arc::clone(shared);
            let handle = std::thread::Builder::new()
                .name("wal-io".into())
                .spawn(move || s.flush_for_async())
                .map_err(|e| WalError::Io(StorageIoError::from_os("spawning the wal I/O thread", &e)))?;
            *thread = Some(handle);
            shared.io_started.store(true, Ordering::Release);
        }
    }
    // While a flush is in its write phase the thread is not woken here: the end of that flush
    // wakes it (`wake_io_if_wanted`), whoever led it, so the record is never left waiting for
    // an unrelated later commit.
    if !st.flushing {
        shared.io_wake.notify_one();
    }
    Ok(())
}

impl Shared {
    /// At the end of every flush: wakes the WAL I/O thread if async committers (or `durable`
    /// futures) want more than is durable now. The flush may have been led by a blocking
    /// committer while the thread slept; `want_flush` did not wake it then, since a flush was
    /// running, and nothing else would. A no-op (no waiter) when the thread is busy flushing.
    pub(super) fn wake_io_if_wanted(&self, st: &State) {
        if st.async_wanted > st.durable_lsn && st.poisoned.is_none() && !st.closed {
            self.io_wake.notify_one();
        }
    }

    /// The WAL I/O thread: flushes while async committers want it, until the WAL closes.
    fn flush_for_async(&self) {
        let mut st = self.state.lock();
        loop {
            if st.closed {
                return;
            }
            if st.async_wanted > st.durable_lsn && st.poisoned.is_none() {
                let target = st.async_wanted;
                match self.sync_to(&mut st, target) {
                    Ok(()) => continue,
                    Err(e) => {
                        // A full disk (or a failed WAL): stop until an async commit asks again;
                        // its futures were answered through their wakers.
                        if !matches!(e, WalError::Poisoned { .. } | WalError::Closed) {
                            tracing::warn!(error = %e, "wal flush for async committers failed");
                        }
                        // Unless an async commit came while the flush failed: its future
                        // is younger than this failure and must be flushed (or failed) too.
                        if st.async_wanted == target {
                            st.async_wanted = st.durable_lsn;
                        }
                        // Look at `closed` again before sleeping: close may have come while
                        // the flush was failing, and its wake-up would be lost.
                        continue;
                    }
                }
            }
            self.io_wake.wait(&mut st);
        }
    }
}

impl Future for Durable {
    type Output = Result<Lsn, WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        // Done without the lock: the flush that made it durable has taken (or is taking) this
        // future's waker off the list, so there is nothing to deregister either.
        if this.shared.durable.load(Ordering::Acquire) >= this.target {
            this.key = None;
            return Poll::Ready(Ok(this.lsn));
        }
        let mut st = this.shared.state.lock();
        if st.durable_lsn.0 >= this.target {
            this.key = None;
            return Poll::Ready(Ok(this.lsn));
        }
        if let Some(cause) = &st.poisoned {
            return Poll::Ready(Err(WalError::Poisoned { cause: cause.clone() }));
        }
        if st.disk_full_seq != this.seen_full {
            let cause = st
                .disk_full
                .clone()
                .unwrap_or(StorageIoError::os(OpKind::Write, ENOSPC));
            return Poll::Ready(Err(WalError::DiskFull { cause }));
        }
        if st.closed {
            return Poll::Ready(Err(WalError::Closed));
        }
        let key = match this.key {
            Some(key) => key,
            None => {
                st.next_waiter_id += 1;
                (this.target, st.next_waiter_id)
            }
        };
        st.async_waiters.register(key, cx.waker());
        this.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.state.lock().async_waiters.remove(key);
        }
    }
}

/// Async committers' wakers, sorted by (target, id): a flush takes them from the front up to
/// the new durable end. Targets arrive nearly in order (records are appended in LSN order), so
/// an insert lands at or near the back.
#[derive(Debug, Default)]
pub(super) struct Waiters(VecDeque<((u64, u64), Waker)>);

impl Waiters {
    /// Registers `waker` under `key`, or refreshes the waker of a key registered already.
    fn register(&mut self, key: (u64, u64), waker: &Waker) {
        let at = self.position(key);
        match self.0.get_mut(at) {
            Some((k, w)) if *k == key => {
                if !w.will_wake(waker) {
                    w.clone_from(waker);
                }
            }
            _ => self.0.insert(at, (key, waker.clone())),
        }
    }

    fn remove(&mut self, key: (u64, u64)) {
        let at = self.position(key);
        if self.0.get(at).is_some_and(|(k, _)| *k == key) {
            self.0.remove(at);
        }
    }

    /// Where `key` is or would go.
    fn position(&self, key: (u64, u64)) -> usize {
        match self.0.back() {
            Some((last, _)) if *last < key => self.0.len(),
            _ => self.0.partition_point(|(k, _)| *k < key),
        }
    }

    /// The wakers of every future whose target is at or below `durable`.
    pub(super) fn take_until(&mut self, durable: u64) -> Vec<Waker> {
        let n = self.0.partition_point(|((target, _), _)| *target <= durable);
        self.0.drain(..n).map(|(_, w)| w).collect()
    }

    /// Every waker (a failure, a full disk, close).
    pub(super) fn take_all(&mut self) -> Vec<Waker> {
        self.0.drain(..).map(|(_, w)| w).collect()
    }
}
