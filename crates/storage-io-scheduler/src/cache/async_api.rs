//! The [`PageCache`]'s futures: `fetch_async`, `new_page_async`, `create_page_async`,
//! `deallocate_async`, `flush_all_async` and `close_async`, for callers on an executor.
//!
//! They take the same steps as the blocking calls, under the same state lock, but where a
//! blocking call waits on the condition variable or on a scheduler reply, a future returns
//! `Pending`: a task waiting for a frame registers its waker (under the state lock, so a change
//! made after its look cannot be missed: every change is followed by [`PageCache::notify`]),
//! and a read, write-back, allocation or sync is awaited with [`Reply::recv_async`]. Nothing
//! blocks the executor's thread but the short state and frame locks.
//!
//! Where the blocking calls answer `AllFramesPinned`, the futures wait for a frame to be
//! unpinned: tasks outnumber frames in an async server, and a pin is released when its
//! [`PinnedPage`] is dropped. (A task that holds every frame's pin itself and awaits another
//! waits forever: keep fewer pins per task than frames.)
//!
//! **Cancellation:** dropping any of these futures at an await leaves the cache consistent,
//! with the guards the blocking calls use against panics: a frame being loaded is emptied and
//! unmapped (the read's answer is dropped), a frame being written back is dirty again (the
//! write still happens; the page is written again later), and an id allocated for a dropped
//! `new_page_async` is freed: at once if it has arrived, else as soon as any later
//! `new_page`/flush sees the answer (every flush waits for such answers and frees the ids before
//! its sync).

use std::future::poll_fn;
use std::task::{Poll, Waker};

use storage_io_core::invariant;

use super::{Fill, FrameState, FreeOnUnwind, LoadGuard, PageCache, PinnedPage, State, WriteBackJob};
use crate::PageId;
use crate::config::AllocationMode;
use crate::error::{Result, SchedulerError};
use crate::reply::Reply;

/// What [`PageCache::pin_step`] decided, under the state lock.
enum Step {
    /// Found ready in this frame, already pinned.
    Hit(usize),
    /// A new page mapped into this idle frame, pinned and dirty; its bytes are still to be
    /// zeroed (nobody else can reach the frame yet).
    Installed(usize),
    /// Mapped into this frame, which is loading: read it in.
    Load(usize),
    /// The victim frame is dirty: write it back first (begun), then look again.
    WriteBack(WriteBackJob),
}

/// An allocation whose answer has not been taken: if dropped so, the id is freed (now, or by
/// a later call that sees the answer).
struct PendingAllocation<'a> {
    cache: &'a PageCache,
    reply: Option<Reply<PageId>>,
}

impl PendingAllocation<'_> {
    async fn recv(&mut self) -> Result<PageId> {
        let result = match &self.reply {
            Some(reply) => reply.recv_async().await,
            None => Err(SchedulerError::Closed),
        };
        self.reply = None;
        result
    }
}

impl Drop for PendingAllocation<'_> {
    fn drop(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        match reply.try_recv() {
            Some(Ok(page)) => drop(self.cache.sched.schedule_deallocate(page)),
            Some(Err(_)) => {}
            None => self.cache.orphans.lock().push(reply),
        }
    }
}

impl PageCache {
    /// Registers a task to be woken by the next [`notify`](Self::notify). The caller holds the
    /// state lock and has just seen that it must wait.
    fn register(&self, _st: &State, waker: &Waker) {
        let mut waiters = self.waiters.lock();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    /// [`fetch`](Self::fetch) as a future: a miss reads the page through the scheduler's
    /// workers and awaits it; a frame another task is loading or writing back, or no free
    /// frame at all, is waited for without blocking the thread. Fails with the read's error or
    /// with a failed write-back of the frame it needed (never `AllFramesPinned`: it waits).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig, PageCache};
    /// # let fs = storage_io_testkit::memio::MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let sched = Arc::new(DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap());
    /// let cache = Arc::new(PageCache::new(sched, 8).unwrap());
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let id = {
    ///     let page = cache.new_page_async().await.unwrap();
    ///     page.write()[0] = 7;
    ///     page.id()
    /// };
    /// cache.flush_all_async().await.unwrap();
    /// assert_eq!(cache.fetch_async(id).await.unwrap().read()[0], 7);
    /// # });
    /// ```
    pub async fn fetch_async(&self, page: PageId) -> Result<PinnedPage<'_>> {
        self.pin_async(page, Fill::Read).await
    }

    /// [`new_page`](Self::new_page) as a future: waits for an unpinned frame, awaits the
    /// allocation, and pins the page zero-filled and dirty. As with `new_page`, a call that
    /// fails leaves no id allocated, and so does a call dropped before it is done.
    pub async fn new_page_async(&self) -> Result<PinnedPage<'_>> {
        self.free_arrived_orphans();
        // Allocating while every frame is pinned would only hold an id while it waits.
        poll_fn(|cx| {
            let st = self.state.lock();
            if st.meta.iter().all(|m| m.pins > 0) {
                self.register(&st, cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let mut allocation = PendingAllocation {
            cache: self,
            reply: Some(self.sched.schedule_allocate()),
        };
        let page = allocation.recv().await?;
        // Dropped (cancelled) or unwound before the page is pinned: the id is freed.
        let mut unwind = FreeOnUnwind {
            sched: &self.sched,
            page,
            armed: true,
        };
        let pinned = self.pin_async(page, Fill::Zeros).await;
        unwind.armed = false;
        match pinned {
            Ok(pinned) => Ok(pinned),
            Err(e) => {
                // Nobody else knows the id yet: freeing it cannot take it from anyone.
                if let Err(freeing) = self.sched.schedule_deallocate(page).recv_async().await {
                    tracing::error!(%page, error = %e, %freeing, "page cache: new_page_async failed and the page id it allocated could not be freed");
                }
                Err(e)
            }
        }
    }

    /// [`create_page`](Self::create_page) as a future (a victim's write-back is awaited).
    pub async fn create_page_async(&self, page: PageId) -> Result<PinnedPage<'_>> {
        self.pin_async(page, Fill::Zeros).await
    }

    /// [`deallocate`](Self::deallocate) as a future.
    pub async fn deallocate_async(&self, page: PageId) -> Result<()> {
        poll_fn(|cx| {
            let mut st = self.state.lock();
            let Some(&f) = st.table.get(&page) else {
                return Poll::Ready(Ok(()));
            };
            let m = st.meta[f];
            if m.pins > 0 {
                return Poll::Ready(Err(SchedulerError::Pinned(page)));
            }
            if m.writing_back() || m.state == FrameState::Loading {
                self.register(&st, cx.waker());
                return Poll::Pending;
            }
            st.table.remove(&page);
            st.meta[f] = super::FrameMeta::EMPTY;
            self.notify();
            Poll::Ready(Ok(()))
        })
        .await?;
        if self.sched.config().allocation == AllocationMode::External {
            return Ok(());
        }
        self.sched.schedule_deallocate(page).recv_async().await
    }

    /// [`flush_all`](Self::flush_all) as a future: every page dirty when it began is written
    /// back (write-backs other tasks or threads have under way are awaited), then synced.
    /// Dropped before it is done, it leaves the pages it had not written back dirty, and those
    /// whose write it had sent dirty too (written again by the next flush).
    pub async fn flush_all_async(&self) -> Result<()> {
        for f in 0..self.frames.len() {
            let mut counted = false;
            let job = poll_fn(|cx| {
                let mut st = self.state.lock();
                let m = st.meta[f];
                if m.writing_back() {
                    // Its write is not accepted yet: the sync below might go first.
                    if !counted {
                        st.stats.flush_waits += 1;
                        counted = true;
                    }
                    self.register(&st, cx.waker());
                    return Poll::Pending;
                }
                if m.dirty && m.state == FrameState::Ready {
                    return Poll::Ready(self.write_back_begin(&mut st, f));
                }
                Poll::Ready(None)
            })
            .await;
            if let Some(job) = job {
                self.write_back_async(job).await?;
            }
        }
        // The ids of cancelled `new_page_async` calls, one at a time so that a flush dropped
        // meanwhile puts the one it holds back.
        loop {
            let Some(reply) = self.orphans.lock().pop() else {
                break;
            };
            let mut allocation = PendingAllocation {
                cache: self,
                reply: Some(reply),
            };
            if let Ok(page) = allocation.recv().await {
                self.sched.schedule_deallocate(page).recv_async().await?;
            }
        }
        self.sched.schedule_sync().recv_async().await
    }

    /// [`close`](Self::close) as a future: flushes ([`flush_all_async`](Self::flush_all_async))
    /// and closes the cache, returning the flush's error. Dropped before it is done, the cache
    /// is dropped with it and flushes on drop, blocking, as a cache dropped without `close`.
    pub async fn close_async(mut self) -> Result<()> {
        let result = self.flush_all_async().await;
        self.flush_on_drop = None;
        result
    }

    /// Pins `page` (the futures' [`pin`](Self::pin)).
    async fn pin_async(&self, page: PageId, fill: Fill) -> Result<PinnedPage<'_>> {
        loop {
            let step = poll_fn(|cx| {
                let mut st = self.state.lock();
                match self.pin_step(&mut st, page, fill) {
                    Some(step) => Poll::Ready(step),
                    None => {
                        self.register(&st, cx.waker());
                        Poll::Pending
                    }
                }
            })
            .await;
            match step {
                Step::Hit(frame) => {
                    let pinned = PinnedPage {
                        cache: self,
                        frame,
                        page,
                    };
                    if fill == Fill::Zeros {
                        // Marked dirty by `write`, after its frame lock (as `hit` does).
                        pinned.write().fill(0);
                    }
                    return Ok(pinned);
                }
                Step::Installed(frame) => {
                    // Pinned by this task alone and unreachable until returned: this cannot wait.
                    self.frames[frame].write().fill(0);
                    return Ok(PinnedPage {
                        cache: self,
                        frame,
                        page,
                    });
                }
                Step::Load(frame) => {
                    let unload = LoadGuard {
                        cache: self,
                        frame,
                        page,
                        armed: true,
                    };
                    return self.load_async(unload).await;
                }
                Step::WriteBack(job) => self.write_back_async(job).await?,
            }
        }
    }

    /// One look at the frames for `page`, under the state lock (what one turn of `pin`'s loop
    /// does, except that no free frame means waiting, not `AllFramesPinned`). `None`: wait for
    /// a frame's state to change.
    fn pin_step(&self, st: &mut State, page: PageId, fill: Fill) -> Option<Step> {
        loop {
            if let Some(&f) = st.table.get(&page) {
                match st.meta[f].state {
                    FrameState::Ready | FrameState::WritingBack { pinned: true } => {
                        st.stats.hits += 1;
                        let m = &mut st.meta[f];
                        m.pins += 1;
                        m.referenced = true;
                        return Some(Step::Hit(f));
                    }
                    // Another task is reading it in or writing it back: wait, don't read twice.
                    FrameState::Loading | FrameState::WritingBack { pinned: false } => {
                        st.stats.waited_for_load += 1;
                        return None;
                    }
                    FrameState::Empty => {
                        st.table.remove(&page);
                    }
                }
            }
            let victim = self.clock_victim(st)?;
            if st.meta[victim].dirty {
                match self.write_back_begin(st, victim) {
                    Some(job) => return Some(Step::WriteBack(job)),
                    None => continue,
                }
            }
            self.install(st, victim, page, fill);
            return Some(match fill {
                Fill::Zeros => Step::Installed(victim),
                Fill::Read => {
                    st.stats.misses += 1;
                    Step::Load(victim)
                }
            });
        }
    }

    /// Reads the page of `unload`'s loading frame through the workers and pins it; dropped or
    /// failed, the guard empties the frame.
    async fn load_async<'s>(&'s self, mut unload: LoadGuard<'s>) -> Result<PinnedPage<'s>> {
        let (frame, page) = (unload.frame, unload.page);
        let bytes = self.sched.schedule_read_shared(page).recv_async().await?;
        // The frame is still loading: nobody else touches its bytes.
        self.frames[frame]
            .write()
            .copy_from_slice(&bytes[..self.page_size]);
        {
            let mut st = self.state.lock();
            let m = st.meta[frame];
            invariant!(
                m.state == FrameState::Loading && m.page == Some(page),
                "loaded {page}: {m:?}"
            );
            st.meta[frame].state = FrameState::Ready;
        }
        unload.armed = false;
        self.notify();
        Ok(PinnedPage {
            cache: self,
            frame,
            page,
        })
    }

    /// Ends a begun write-back: sends the page and awaits the write. Dropped before the answer,
    /// the frame is dirty again (the guard); the write itself still happens.
    async fn write_back_async(&self, job: WriteBackJob) -> Result<()> {
        let mut unwind = job.guard(self);
        let reply = self.write_back_send(&job);
        let result = reply.recv_async().await;
        unwind.armed = false;
        let mut st = self.state.lock();
        self.write_back_end(&mut st, &job, result)
    }
}
