//! What every handle on one file shares: the append cursor, the writes in flight, and the
//! group sync that makes them durable.
//!
//! Operations reach the kernel through more than one queue (each runtime thread's ring, or an
//! I/O worker), and no queue orders one file's writes against its syncs. So the order is kept
//! here, per path:
//! - each write and append takes a sequence number when it is *called* and gives it back when
//!   it *completes* (a [`WriteTicket`] dropped);
//! - a `sync_data` called when the next number was `n` must cover every write numbered below
//!   `n`: its fdatasync is started only once all of them have completed, so later writes are
//!   never held behind a sync;
//! - concurrent syncs share one fdatasync ([`SyncGroup`]): a sync whose writes an fdatasync in
//!   flight already covers joins it; the others wait for it and then share the next one, so a
//!   storm of syncs costs at most two fdatasyncs at a time per file;
//! - `size`, `allocate` and `close` wait the same way ([`Fence`]) for the writes called before
//!   them;
//! - `set_len` is a write in this order ([`FileShared::set_len`]): it takes its number and moves
//!   the append cursor to the new length when it is *called*, runs once the writes before it
//!   completed, and the writes and appends called after it are held back
//!   ([`FileShared::defer_behind_set_len`]) until it has run, so that it cannot cut them off.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;
use storage_io_core::{Result, StorageIoError};

use super::slot::Waiting;

/// What [`FileShared::after_writes`] runs.
pub(crate) type AfterWrites = Box<dyn FnOnce() + Send>;

/// The shared state of one file (found by its identity, or by its key ([`path_key`](super::path_key))
/// where it has none: see the worker's `FileId`).
pub(crate) struct FileShared {
    /// Where the next append goes. Set at open (the file's length) and moved by every append
    /// when it is called, so appends in flight at once never overlap.
    cursor: AtomicU64,
    /// A handle was opened with `create` and the directory has not been synced since: the next
    /// sync must sync the directory too, so that the file's name is as durable as its data.
    dir_unsynced: std::sync::atomic::AtomicBool,
    state: Mutex<OrderState>,
    /// What a sync that drives the group's fdatasync registers with it: it wakes every waiter.
    group_waker: Waker,
}

struct OrderState {
    /// The number the next write takes.
    next_seq: u64,
    /// Writes called and not yet completed.
    in_flight: BTreeSet<u64>,
    /// Syncs and fences waiting for writes to complete or for the group's fdatasync.
    waiters: Vec<Waker>,
    /// Actions waiting for every write below their number to complete ([`FileShared::after_writes`]).
    after: Vec<(u64, AfterWrites)>,
    /// The numbers of the `set_len` calls not yet done (also in `in_flight`): a write called
    /// while one is here waits for it ([`FileShared::defer_behind_set_len`]).
    set_lens: BTreeSet<u64>,
    group: SyncGroup,
}

/// One fdatasync (or fsync) at a time per path, shared by every sync it covers.
#[derive(Default)]
struct SyncGroup {
    running: Option<Running>,
    /// Every write numbered below this is durable (a successful sync covered it). `None` until
    /// the first sync succeeded: before it, the file may hold data nobody here synced (written
    /// before it was opened), so the first sync always makes the system call.
    durable_below: Option<u64>,
}

/// The group's fdatasync in flight.
struct Running {
    /// It was started when every write numbered below this had completed: it covers them.
    covers_below: u64,
    /// Whether it is an fsync (which also covers what an fdatasync would).
    full: bool,
    answer: Waiting<Result<()>>,
    /// Where the result goes for every sync that joined.
    outcome: Arc<Mutex<Option<Result<()>>>>,
}

impl FileShared {
    /// A new path whose appends start at `len`.
    pub(crate) fn new(len: u64) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<FileShared>| FileShared {
            cursor: AtomicU64::new(len),
            dir_unsynced: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(OrderState {
                next_seq: 0,
                in_flight: BTreeSet::new(),
                waiters: Vec::new(),
                after: Vec::new(),
                set_lens: BTreeSet::new(),
                group: SyncGroup::default(),
            }),
            group_waker: Waker::from(Arc::new(GroupWaker(me.clone()))),
        })
    }

    /// The cursor after an open saw the file `len` bytes long: a truncating open starts it over,
    /// any other keeps the appends in flight in their places.
    pub(crate) fn opened_at(&self, len: u64, truncated: bool) {
        if truncated {
            self.cursor.store(len, Ordering::SeqCst);
        } else {
            self.cursor.fetch_max(len, Ordering::SeqCst);
        }
    }

    /// A handle was opened with `create`: the next sync syncs the directory too.
    pub(crate) fn created(&self) {
        self.dir_unsynced.store(true, Ordering::SeqCst);
    }

    /// Whether the next sync must sync the directory too.
    pub(crate) fn dir_unsynced(&self) -> bool {
        self.dir_unsynced.load(Ordering::SeqCst)
    }

    /// The directory was synced after the last `create`.
    pub(crate) fn dir_synced(&self) {
        self.dir_unsynced.store(false, Ordering::SeqCst);
    }

    /// A positional write called up to `end`: appends go after it.
    pub(crate) fn wrote_to(&self, end: u64) {
        self.cursor.fetch_max(end, Ordering::SeqCst);
    }

    /// Takes `len` bytes at the end for an append; returns where they go.
    pub(crate) fn reserve_append(&self, len: u64) -> u64 {
        self.cursor.fetch_add(len, Ordering::SeqCst)
    }

    /// A write or append is being called: it gets a number and counts as in flight until the
    /// ticket is dropped (when its completion is delivered, or when it is refused).
    pub(crate) fn begin_write(self: &Arc<Self>) -> WriteTicket {
        let mut s = self.state.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        let fresh = s.in_flight.insert(seq);
        debug_assert!(fresh, "write sequence numbers are unique");
        WriteTicket {
            file: Arc::clone(self),
            seq,
        }
    }

    /// A `set_len(len)` is being called: it takes the next number (a write, so syncs called
    /// after it cover it), and appends called from now on go at `len` and after (the cursor is
    /// moved now, in call order, not when the truncation runs). `send` gets the set_len's ticket
    /// once every write called before it has completed: at once when none is in flight, else on
    /// the thread that completes the last of them. Appends called before it that are still in
    /// flight are covered by the truncation (they complete first), as the caller asked.
    pub(crate) fn set_len(self: &Arc<Self>, len: u64, send: impl FnOnce(WriteTicket) + Send + 'static) {
        let mut s = self.state.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        let fresh = s.in_flight.insert(seq);
        debug_assert!(fresh, "write sequence numbers are unique");
        s.set_lens.insert(seq);
        self.cursor.store(len, Ordering::SeqCst);
        let ticket = WriteTicket {
            file: Arc::clone(self),
            seq,
        };
        // The ticket's own number is in flight: `completed_below` counts only the writes before.
        if s.completed_below() >= seq {
            drop(s);
            send(ticket);
        } else {
            s.after.push((seq, Box::new(move || send(ticket))));
        }
    }

    /// Whether a `set_len` called before the write holding `ticket` has not run yet (then the
    /// write must go through [`FileShared::defer_behind_set_len`]). `false` stays `false`: a
    /// set_len called later takes a later number.
    pub(crate) fn behind_set_len(&self, ticket: &WriteTicket) -> bool {
        self.state
            .lock()
            .set_lens
            .range(..ticket.seq)
            .next_back()
            .is_some()
    }

    /// Keeps `send`, the sending of a write or append numbered `seq` ([`WriteTicket::seq`]) that was called after a
    /// `set_len`, until that set_len (and every write before it) has completed, so that the
    /// truncation cannot cut off what was called after it; the writes in between are not
    /// waited for. Gives `send` back to be run now if the set_len is done already.
    pub(crate) fn defer_behind_set_len(&self, seq: u64, send: AfterWrites) -> Option<AfterWrites> {
        let mut s = self.state.lock();
        match s.set_lens.range(..seq).next_back() {
            Some(&last) => {
                let below = last + 1;
                debug_assert!(s.completed_below() < below, "that set_len is in flight");
                s.after.push((below, send));
                None
            }
            None => Some(send),
        }
    }

    /// The number the next write will take: a fence made now waits for every write below it.
    pub(crate) fn fence(self: &Arc<Self>) -> Fence {
        Fence {
            file: Arc::clone(self),
            below: self.state.lock().next_seq,
        }
    }

    fn end_write(&self, seq: u64) {
        let (waiters, actions) = {
            let mut s = self.state.lock();
            let was_first = s.in_flight.first() == Some(&seq);
            let removed = s.in_flight.remove(&seq);
            debug_assert!(removed, "a write ticket completes once");
            s.set_lens.remove(&seq);
            // Only the oldest write's completion can let a waiter through.
            if was_first {
                let done = s.completed_below();
                let (ready, later) = std::mem::take(&mut s.after)
                    .into_iter()
                    .partition(|(below, _)| *below <= done);
                s.after = later;
                (std::mem::take(&mut s.waiters), ready)
            } else {
                (Vec::new(), Vec::new())
            }
        };
        waiters.into_iter().for_each(Waker::wake);
        actions
            .into_iter()
            .for_each(|(_, action): (u64, AfterWrites)| action());
    }

    /// Runs `action` once every write called before now has completed: at once when none is in
    /// flight, else on the thread that completes the last of them. For what cannot wait in a
    /// future (a dropped file's close, which must not release the append lock before the
    /// file's appends have landed).
    pub(crate) fn after_writes(&self, action: AfterWrites) {
        let mut s = self.state.lock();
        let below = s.next_seq;
        if s.completed_below() >= below {
            drop(s);
            action();
        } else {
            s.after.push((below, action));
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.state.lock().waiters);
        waiters.into_iter().for_each(Waker::wake);
    }
}

impl OrderState {
    /// Every write numbered below this has completed.
    fn completed_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next_seq)
    }

    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiters.push(cx.waker().clone());
        }
    }
}

/// Wakes every waiter of a path when the group's fdatasync answers (whoever polled it last may
/// be gone by then).
struct GroupWaker(Weak<FileShared>);

impl Wake for GroupWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(file) = self.0.upgrade() {
            file.wake_all();
        }
    }
}

/// A write in flight; dropping it marks the write complete (before its caller is answered).
pub(crate) struct WriteTicket {
    file: Arc<FileShared>,
    seq: u64,
}

impl WriteTicket {
    /// The write's number in its path's order.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.file.end_write(self.seq);
    }
}

/// Resolves once every write called before the fence was made has completed.
pub(crate) struct Fence {
    file: Arc<FileShared>,
    below: u64,
}

impl Future for Fence {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.file.state.lock();
        if s.completed_below() >= self.below {
            return Poll::Ready(());
        }
        s.wait(cx);
        Poll::Pending
    }
}

/// How a sync starts its fdatasync or fsync: on the caller's ring or through a worker.
pub(crate) type StartSync = Box<dyn FnOnce(bool) -> Waiting<Result<()>> + Send>;

/// A `sync_data` or `sync_all` in the group of its path.
pub(crate) struct GroupSync {
    file: Arc<FileShared>,
    /// The writes numbered below this must be durable.
    below: u64,
    full: bool,
    start: Option<StartSync>,
    /// Set once this sync rides on a group's fdatasync.
    joined: Option<Arc<Mutex<Option<Result<()>>>>>,
}

impl GroupSync {
    /// A sync of `file` covering every write called before now; `start` starts the system call
    /// (`true` for fsync) if this sync ends up leading a group.
    pub(crate) fn new(file: &Arc<FileShared>, full: bool, start: StartSync) -> Self {
        let below = file.state.lock().next_seq;
        GroupSync {
            file: Arc::clone(file),
            below,
            full,
            start: Some(start),
            joined: None,
        }
    }
}

impl Future for GroupSync {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        let file = Arc::clone(&this.file);
        let mut s = file.state.lock();
        loop {
            // Whoever polls collects the group's answer (for everybody).
            if let Some(running) = s.group.running.as_mut() {
                let mut gcx = Context::from_waker(&file.group_waker);
                if let Poll::Ready(answer) = Pin::new(&mut running.answer).poll(&mut gcx) {
                    let done = s.group.running.take().expect("checked above");
                    let result = answer.unwrap_or(Err(StorageIoError::Closed));
                    if result.is_ok() {
                        debug_assert!(
                            done.covers_below <= s.completed_below(),
                            "a sync covers only completed writes"
                        );
                        s.group.durable_below = Some(
                            s.group
                                .durable_below
                                .map_or(done.covers_below, |d| d.max(done.covers_below)),
                        );
                    }
                    *done.outcome.lock() = Some(result);
                    let waiters = std::mem::take(&mut s.waiters);
                    waiters.into_iter().for_each(Waker::wake);
                }
            }
            if let Some(outcome) = &this.joined {
                if let Some(result) = outcome.lock().clone() {
                    return Poll::Ready(result);
                }
                s.wait(cx);
                return Poll::Pending;
            }
            // Not joined yet. An fsync needs an fsync; a later successful fdatasync is enough
            // for a `sync_data`.
            if !this.full && s.group.durable_below.is_some_and(|d| d >= this.below) {
                return Poll::Ready(Ok(()));
            }
            if s.completed_below() < this.below {
                s.wait(cx);
                return Poll::Pending;
            }
            match &s.group.running {
                Some(r) if r.covers_below >= this.below && (r.full || !this.full) => {
                    this.joined = Some(Arc::clone(&r.outcome));
                    continue;
                }
                // Wait for it to answer, then lead (or join) the next one.
                Some(_) => {
                    s.wait(cx);
                    return Poll::Pending;
                }
                None => {}
            }
            let Some(start) = this.start.take() else {
                return Poll::Ready(Err(StorageIoError::Closed));
            };
            let outcome = Arc::new(Mutex::new(None));
            let covers_below = s.completed_below();
            s.group.running = Some(Running {
                covers_below,
                full: this.full,
                answer: start(this.full),
                outcome: Arc::clone(&outcome),
            });
            this.joined = Some(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::slot::slot;
    use super::*;

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Waker::noop();
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_sync_starts_only_after_the_writes_before_it_complete_and_later_writes_do_not_wait() {
        let file = FileShared::new(0);
        let w1 = file.begin_write();
        let started = Arc::new(Mutex::new(Vec::new()));
        let (completer, answer) = slot();
        let mut answer = Some(answer);
        let log = Arc::clone(&started);
        let mut sync = GroupSync::new(
            &file,
            false,
            Box::new(move |full| {
                log.lock().push(full);
                answer.take().unwrap()
            }),
        );
        let _w2 = file.begin_write(); // called after the sync: not covered, not waited for
        assert!(poll(&mut sync).is_pending());
        assert!(
            started.lock().is_empty(),
            "the sync waits for the write called before it"
        );
        drop(w1);
        assert!(poll(&mut sync).is_pending());
        assert_eq!(
            *started.lock(),
            vec![false],
            "started once the covered write completed"
        );
        completer.complete(Ok(())).ok().unwrap();
        assert_eq!(poll(&mut sync), Poll::Ready(Ok(())));
    }

    #[test]
    fn concurrent_syncs_share_one_fdatasync_and_its_error() {
        let file = FileShared::new(0);
        let calls = Arc::new(AtomicU64::new(0));
        let (completer, answer) = slot();
        let answer = Arc::new(Mutex::new(Some(answer)));
        let mut syncs: Vec<GroupSync> = (0..8)
            .map(|_| {
                let calls = Arc::clone(&calls);
                let answer = Arc::clone(&answer);
                GroupSync::new(
                    &file,
                    false,
                    Box::new(move |_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        answer.lock().take().unwrap()
                    }),
                )
            })
            .collect();
        for s in &mut syncs {
            assert!(poll(s).is_pending());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        completer.complete(Err(StorageIoError::Closed)).ok().unwrap();
        for s in &mut syncs {
            assert_eq!(poll(s), Poll::Ready(Err(StorageIoError::Closed)));
        }
    }

    #[test]
    fn a_sync_behind_a_running_one_that_does_not_cover_it_gets_its_own() {
        let file = FileShared::new(0);
        let (c1, a1) = slot();
        let (c2, a2) = slot();
        let mut a1 = Some(a1);
        let mut a2 = Some(a2);
        let mut first = GroupSync::new(&file, false, Box::new(move |_| a1.take().unwrap()));
        assert!(poll(&mut first).is_pending());
        let w = file.begin_write();
        drop(w); // completed after the first fdatasync started: not covered by it
        let mut second = GroupSync::new(&file, false, Box::new(move |_| a2.take().unwrap()));
        assert!(poll(&mut second).is_pending());
        c1.complete(Ok(())).ok().unwrap();
        assert_eq!(poll(&mut first), Poll::Ready(Ok(())));
        assert!(
            poll(&mut second).is_pending(),
            "the second leads its own fdatasync"
        );
        c2.complete(Ok(())).ok().unwrap();
        assert_eq!(poll(&mut second), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_fence_waits_for_earlier_writes_only() {
        let file = FileShared::new(0);
        let w1 = file.begin_write();
        let mut fence = file.fence();
        let _w2 = file.begin_write();
        assert!(poll(&mut fence).is_pending());
        drop(w1);
        assert_eq!(poll(&mut fence), Poll::Ready(()));
    }

    #[test]
    fn appends_take_disjoint_ranges_and_a_truncating_open_restarts_the_cursor() {
        let file = FileShared::new(10);
        assert_eq!(file.reserve_append(5), 10);
        assert_eq!(file.reserve_append(5), 15);
        file.opened_at(3, false);
        assert_eq!(file.reserve_append(1), 20);
        file.opened_at(0, true);
        assert_eq!(file.reserve_append(1), 0);
    }

    #[test]
    fn a_set_len_runs_after_earlier_writes_and_writes_called_after_it_wait_for_it() {
        let file = FileShared::new(100);
        let before = file.begin_write();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(None));
        let (log, hold) = (Arc::clone(&ran), Arc::clone(&held));
        file.set_len(0, move |ticket| {
            log.lock().push("set_len");
            *hold.lock() = Some(ticket);
        });
        assert_eq!(
            file.reserve_append(10),
            0,
            "appends called after it go at the new length"
        );
        let after = file.begin_write();
        assert!(file.behind_set_len(&after));
        let log = Arc::clone(&ran);
        let kept = file.defer_behind_set_len(after.seq(), Box::new(move || log.lock().push("append")));
        assert!(kept.is_none(), "held back behind the set_len");
        assert!(ran.lock().is_empty(), "the set_len waits for the write before it");
        drop(before);
        assert_eq!(*ran.lock(), vec!["set_len"]);
        let set_len = held.lock().take();
        drop(set_len);
        assert_eq!(*ran.lock(), vec!["set_len", "append"]);
        let later = file.begin_write();
        assert!(!file.behind_set_len(&later), "the set_len is done");
        drop((after, later));
    }
}
