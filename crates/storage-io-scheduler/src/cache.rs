//! [`PageCache`]: a fixed number of page frames over a [`DiskScheduler`].
//!
//! **Invariants:**
//! - A pinned page stays in its frame until the last pin is dropped.
//! - Two misses on one page fetch it once: the first marks the frame *loading*, the second
//!   waits for it.
//! - A dirty page is written back before its frame is reused; if that write fails the page
//!   stays cached and dirty and the caller gets the error, so nothing is lost.
//! - *No lost update.* `PinnedPage::write` takes the frame's lock before it marks the page
//!   dirty, and a write-back clears the dirty bit before it copies the bytes (under the frame's
//!   read lock): every change is either in the copy written back or still marked dirty.
//! - *`flush_all` covers every page dirty when it began.* A frame whose write-back another
//!   thread has under way (an eviction, another flush) is waited for, not skipped, so the sync
//!   that ends `flush_all` is sent after every such write was accepted.
//! - A frame being written back is never chosen as a victim, so the bytes copied for the write
//!   are always the page's own.
//! - `new_page` always gives zeros, marked dirty, even when the id was freed and the cache still
//!   holds the old page's frame. A write-back that fails with `NotAllocated` (the page was
//!   deallocated behind the cache) drops the dead bytes instead of failing every eviction;
//!   [`PageCache::deallocate`] frees a page and its frame together.
//!
//! Lock order: a frame's lock may be taken before the state lock (as `write` does), so the state
//! lock is held while taking a frame's lock only for a frame no other thread can reach (a victim
//! being mapped, or a frame still loading).
//!
//! Eviction is CLOCK (second chance): the hand skips pinned or busy frames and clears the
//! reference bit of recently used ones before taking one. A page enters with its bit clear and
//! a hit sets it, so pages touched once (a scan) go before pages touched again.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use storage_io_core::invariant;

use crate::PageId;
use crate::config::AllocationMode;
use crate::error::{Result, SchedulerError};
use crate::reply::Reply;
use crate::scheduler::DiskScheduler;

mod async_api;

/// How long dropping a [`PageCache`] with dirty pages waits for their write-backs and the sync
/// by default (see [`PageCache::set_flush_on_drop`]).
pub const DEFAULT_DROP_FLUSH_BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    Empty,
    Loading,
    Ready,
    /// A thread is writing the frame back (with the state lock released): not a victim, and
    /// `flush_all` waits for it. `pinned`: it was pinned when the write-back began, and pins
    /// still use it meanwhile; otherwise a pin waits for the write-back to end.
    WritingBack {
        pinned: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct FrameMeta {
    page: Option<PageId>,
    pins: u32,
    referenced: bool,
    dirty: bool,
    state: FrameState,
}

impl FrameMeta {
    const EMPTY: FrameMeta = FrameMeta {
        page: None,
        pins: 0,
        referenced: false,
        dirty: false,
        state: FrameState::Empty,
    };

    fn writing_back(&self) -> bool {
        matches!(self.state, FrameState::WritingBack { .. })
    }
}

/// How [`PageCache::pin`] fills a frame for a page it does not hold yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Read the page in through the scheduler (`fetch`).
    Read,
    /// A new page: zeros, dirty, nothing read (`new_page`, `create_page`).
    Zeros,
}

struct State {
    table: HashMap<PageId, usize>,
    meta: Vec<FrameMeta>,
    hand: usize,
    stats: PageCacheStats,
}

/// What the cache has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCacheStats {
    /// Fetches answered from a frame.
    pub hits: u64,
    /// Fetches that read the page through the scheduler.
    pub misses: u64,
    /// Fetches that waited for another thread's read of the same page (no second read).
    pub waited_for_load: u64,
    /// Frames reused for another page.
    pub evictions: u64,
    /// Dirty pages written back (on eviction or flush).
    pub write_backs: u64,
    /// Times `flush_all` waited for a write-back that another thread had under way.
    pub flush_waits: u64,
    /// Dirty pages dropped because their page had been deallocated behind the cache.
    pub freed_discarded: u64,
}

/// A buffer pool of `frames` pages over a scheduler.
///
/// ```
/// # use std::sync::Arc;
/// # use storage_io_core::{BackendFactory, StorageIo};
/// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig, PageCache};
/// # let fs = storage_io_testkit::memio::MemFs::new(1);
/// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
/// let sched = Arc::new(DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap());
/// let cache = PageCache::new(Arc::clone(&sched), 8).unwrap();
/// let page = cache.new_page().unwrap();        // allocated, zeroed, pinned, dirty
/// page.write()[0..5].copy_from_slice(b"hello");
/// let id = page.id();
/// drop(page);                                   // unpinned; stays cached until evicted
/// cache.flush_all().unwrap();                   // written back and synced
/// assert_eq!(&cache.fetch(id).unwrap().read()[0..5], b"hello");
/// ```
pub struct PageCache {
    sched: Arc<DiskScheduler>,
    page_size: usize,
    frames: Vec<RwLock<Box<[u8]>>>,
    state: Mutex<State>,
    /// Threads waiting for a frame's state to change.
    changed: Condvar,
    /// Tasks waiting for the same (the futures of `async_api`): woken with `changed`. Taken
    /// after the state lock when both are held.
    waiters: Mutex<Vec<Waker>>,
    /// Allocations whose `new_page_async` was dropped before the id arrived: freed as soon as
    /// the answer is seen (any later `new_page`, every flush), so a cancelled future leaks no id.
    orphans: Mutex<Vec<Reply<PageId>>>,
    /// What dropping the cache does with dirty pages (`None`: nothing; `close` sets it).
    flush_on_drop: Option<Duration>,
    /// Unit tests only: called at the [`HookPoint`]s, to force an interleaving.
    #[cfg(test)]
    hook: Mutex<Option<TestHook>>,
}

#[cfg(test)]
type TestHook = Arc<dyn Fn(HookPoint) + Send + Sync>;

/// Places where a unit test can stop a thread to force an interleaving.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookPoint {
    /// In `PinnedPage::write`, between its two steps (taking the frame lock and marking the
    /// page dirty).
    WriteBetweenSteps,
    /// In `write_back`, after the state lock is released and before the bytes are copied.
    WriteBackUnlocked,
    /// `flush_all` is about to wait for another thread's write-back of a frame.
    FlushWaits,
}

impl PageCache {
    #[cfg(test)]
    fn hook(&self, point: HookPoint) {
        let hook = self.hook.lock().clone();
        if let Some(hook) = hook {
            hook(point);
        }
    }
}

impl PageCache {
    /// Wakes every thread and task waiting for a frame's state to change. Called after the
    /// change, with or without the state lock held.
    fn notify(&self) {
        self.changed.notify_all();
        let woken = std::mem::take(&mut *self.waiters.lock());
        for waker in woken {
            waker.wake();
        }
    }

    /// Frees the ids of cancelled `new_page_async` calls whose answer has come (the
    /// deallocation is sent, not waited for); keeps the others for later.
    fn free_arrived_orphans(&self) {
        self.orphans.lock().retain(|reply| match reply.try_recv() {
            None => true,
            Some(Ok(page)) => {
                drop(self.sched.schedule_deallocate(page));
                false
            }
            Some(Err(_)) => false,
        });
    }
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("frames", &self.frames.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A frame being loaded: unless disarmed once the page is in, it empties the frame (dropping
/// its one pin), unmaps the page and wakes the threads waiting for it, on an error and on a
/// panic alike, so a fetch never waits for a load that will not finish.
struct LoadGuard<'a> {
    cache: &'a PageCache,
    frame: usize,
    page: PageId,
    armed: bool,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.cache.state.lock();
        // (Not checked while unwinding: a second panic would abort.)
        debug_assert!(std::thread::panicking() || st.meta[self.frame].state == FrameState::Loading);
        if st.table.get(&self.page) == Some(&self.frame) {
            st.table.remove(&self.page);
        }
        st.meta[self.frame] = FrameMeta::EMPTY;
        drop(st);
        self.cache.notify();
    }
}

/// A frame being written back with the state lock released: if dropped armed (a panic), it
/// ends the write-back as a failed one ends, the page cached and dirty, and wakes the waiters.
struct WriteBackGuard<'a> {
    cache: &'a PageCache,
    frame: usize,
    prior: FrameState,
    armed: bool,
}

impl Drop for WriteBackGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.cache.state.lock();
        let m = &mut st.meta[self.frame];
        m.dirty = true;
        if m.writing_back() {
            m.state = self.prior;
        }
        drop(st);
        self.cache.notify();
    }
}

/// The id `new_page` allocated, deallocated if dropped armed (a panic before it was pinned).
/// The deallocation is sent, not waited for (the reply is dropped; the work is not).
struct FreeOnUnwind<'a> {
    sched: &'a DiskScheduler,
    page: PageId,
    armed: bool,
}

impl Drop for FreeOnUnwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            drop(self.sched.schedule_deallocate(self.page));
        }
    }
}

/// A page pinned in a frame: it cannot be evicted while this lives.
pub struct PinnedPage<'a> {
    cache: &'a PageCache,
    frame: usize,
    page: PageId,
}

/// Shared access to a pinned page's bytes.
pub type PageReadGuard<'a> = RwLockReadGuard<'a, Box<[u8]>>;
/// Exclusive access to a pinned page's bytes; taking it marks the page dirty.
pub type PageWriteGuard<'a> = RwLockWriteGuard<'a, Box<[u8]>>;

impl std::fmt::Debug for PinnedPage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedPage").field("page", &self.page).finish()
    }
}

impl PinnedPage<'_> {
    /// The page's id.
    pub fn id(&self) -> PageId {
        self.page
    }

    /// Reads the page's bytes (blocks while another thread holds a write guard).
    pub fn read(&self) -> PageReadGuard<'_> {
        self.cache.frames[self.frame].read()
    }

    /// Changes the page's bytes; the page becomes dirty and is written back before its frame
    /// is reused, or by [`PageCache::flush_all`].
    pub fn write(&self) -> PageWriteGuard<'_> {
        // The frame's lock first: a write-back copies under the read lock after clearing the
        // dirty bit, so it either sees this change or finds the bit set again.
        let guard = self.cache.frames[self.frame].write();
        #[cfg(test)]
        self.cache.hook(HookPoint::WriteBetweenSteps);
        self.cache.state.lock().meta[self.frame].dirty = true;
        guard
    }
}

impl Drop for PinnedPage<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.state.lock();
        let m = &mut st.meta[self.frame];
        m.pins -= 1;
        if m.pins == 0 {
            self.cache.notify();
        }
    }
}

impl PageCache {
    /// A cache of `frames` pages (at least 1).
    pub fn new(sched: Arc<DiskScheduler>, frames: usize) -> Result<PageCache> {
        if frames == 0 {
            return Err(SchedulerError::InvalidConfig(
                "a page cache needs at least one frame".into(),
            ));
        }
        let page_size = sched.page_size();
        Ok(PageCache {
            sched,
            page_size,
            frames: (0..frames)
                .map(|_| RwLock::new(vec![0u8; page_size].into_boxed_slice()))
                .collect(),
            state: Mutex::new(State {
                table: HashMap::with_capacity(frames),
                meta: vec![FrameMeta::EMPTY; frames],
                hand: 0,
                stats: PageCacheStats::default(),
            }),
            changed: Condvar::new(),
            waiters: Mutex::new(Vec::new()),
            orphans: Mutex::new(Vec::new()),
            flush_on_drop: Some(DEFAULT_DROP_FLUSH_BOUND),
            #[cfg(test)]
            hook: Mutex::new(None),
        })
    }

    /// Number of frames.
    pub fn capacity(&self) -> usize {
        self.frames.len()
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> PageCacheStats {
        self.state.lock().stats
    }

    /// The scheduler underneath.
    pub fn scheduler(&self) -> &Arc<DiskScheduler> {
        &self.sched
    }

    /// Pins `page`, reading it through the scheduler on a miss. Fails with the read's error,
    /// with a failed write-back of the frame it needed, or with `AllFramesPinned` when every
    /// frame is pinned.
    pub fn fetch(&self, page: PageId) -> Result<PinnedPage<'_>> {
        self.pin(page, Fill::Read)
    }

    /// Allocates a new page through the scheduler and pins it zero-filled and dirty, without
    /// reading anything. An id freed earlier may come back; the page is zeros all the same.
    /// With `allocation = external` the scheduler allocates nothing (`ExternalAllocation`):
    /// use [`create_page`](Self::create_page) with the engine's own id.
    ///
    /// A `new_page` that fails leaves no id allocated: with every frame pinned it allocates
    /// nothing (`AllFramesPinned`), and if the frame cannot be had after the allocation (its
    /// dirty page cannot be written back, or another thread pinned the last frame meanwhile)
    /// the id is deallocated again before the error is returned. Only if that deallocation
    /// fails too does the id stay allocated (logged as an error; nobody holds it).
    pub fn new_page(&self) -> Result<PinnedPage<'_>> {
        self.free_arrived_orphans();
        {
            let st = self.state.lock();
            if st.meta.iter().all(|m| m.pins > 0) {
                return Err(SchedulerError::AllFramesPinned {
                    frames: self.frames.len(),
                });
            }
        }
        let page = self.sched.schedule_allocate().recv()?;
        // A panic in `pin` (a write-back's) frees the id too, without waiting for the answer.
        let mut unwind = FreeOnUnwind {
            sched: &self.sched,
            page,
            armed: true,
        };
        let pinned = self.pin(page, Fill::Zeros);
        unwind.armed = false;
        pinned.inspect_err(|e| {
            // Nobody else knows the id yet: freeing it cannot take it from anyone.
            if let Err(freeing) = self.sched.schedule_deallocate(page).recv() {
                tracing::error!(%page, error = %e, %freeing, "page cache: new_page failed and the page id it allocated could not be freed");
            }
        })
    }

    /// Pins `page` as a new page, zero-filled and dirty, without reading it: for an engine that
    /// owns allocation (`allocation = external`) and has just taken `page` off its own free
    /// list, or after [`DiskScheduler::schedule_allocate_at`]. Whatever the page held before,
    /// in the cache or on disk, is dead.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storage_io_core::{BackendFactory, StorageIo};
    /// # use storage_io_scheduler::{AllocationMode, DiskScheduler, SchedulerConfig, PageCache, PageId};
    /// # use storage_io_testkit::memio::MemFs;
    /// # let fs = MemFs::new(1);
    /// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    /// let config = SchedulerConfig { allocation: AllocationMode::External, ..Default::default() };
    /// let sched = Arc::new(DiskScheduler::open("/db", config, factory).unwrap());
    /// let cache = PageCache::new(sched, 8).unwrap();
    /// let page = cache.create_page(PageId(42)).unwrap(); // the engine chose id 42
    /// page.write()[0] = 1;
    /// drop(page);
    /// cache.flush_all().unwrap();
    /// ```
    pub fn create_page(&self, page: PageId) -> Result<PinnedPage<'_>> {
        self.pin(page, Fill::Zeros)
    }

    /// Deallocates `page` through the scheduler and drops its frame, dirty or not (the bytes of
    /// a freed page are dead). Fails without changing anything if the page is pinned. With
    /// `allocation = external` the engine keeps its own free list: only the frame is dropped.
    pub fn deallocate(&self, page: PageId) -> Result<()> {
        let mut st = self.state.lock();
        while let Some(&f) = st.table.get(&page) {
            let m = st.meta[f];
            if m.pins > 0 {
                return Err(SchedulerError::Pinned(page));
            }
            if m.writing_back() || m.state == FrameState::Loading {
                self.changed.wait(&mut st);
                continue;
            }
            st.table.remove(&page);
            st.meta[f] = FrameMeta::EMPTY;
            self.notify();
            break;
        }
        drop(st);
        if self.sched.config().allocation == AllocationMode::External {
            return Ok(());
        }
        self.sched.schedule_deallocate(page).recv()
    }

    fn pin(&self, page: PageId, fill: Fill) -> Result<PinnedPage<'_>> {
        let mut st = self.state.lock();
        loop {
            if let Some(&f) = st.table.get(&page) {
                match st.meta[f].state {
                    FrameState::Ready | FrameState::WritingBack { pinned: true } => {
                        return Ok(self.hit(st, f, page, fill));
                    }
                    // Another thread is reading it in or writing it back: wait, don't read twice.
                    FrameState::Loading | FrameState::WritingBack { pinned: false } => {
                        st.stats.waited_for_load += 1;
                        self.changed.wait(&mut st);
                        continue;
                    }
                    FrameState::Empty => {
                        st.table.remove(&page);
                    }
                }
            }
            let Some(victim) = self.clock_victim(&mut st) else {
                if st.meta.iter().all(|m| m.pins > 0) {
                    return Err(SchedulerError::AllFramesPinned {
                        frames: self.frames.len(),
                    });
                }
                // Frames are busy loading or writing back; one will free up.
                self.changed.wait(&mut st);
                continue;
            };
            if st.meta[victim].dirty {
                // Write the old page back first; it stays mapped (state WritingBack) so that a
                // fetch of it waits rather than reads stale bytes from disk.
                st = self.write_back(st, victim, None)?;
                continue;
            }
            self.install(&mut st, victim, page, fill);
            return match fill {
                Fill::Zeros => {
                    // No other thread can reach this frame yet (it was an idle victim and the
                    // state lock is still held), so taking its lock here cannot wait.
                    self.frames[victim].write().fill(0);
                    Ok(PinnedPage {
                        cache: self,
                        frame: victim,
                        page,
                    })
                }
                Fill::Read => {
                    st.stats.misses += 1;
                    drop(st);
                    self.load(victim, page)
                }
            };
        }
    }

    /// A page found ready in frame `f`: pinned, referenced; for [`Fill::Zeros`] (a new page on
    /// an id freed while its old frame stayed cached, whose bytes are dead) zeroed and dirty.
    fn hit(&self, mut st: MutexGuard<'_, State>, f: usize, page: PageId, fill: Fill) -> PinnedPage<'_> {
        st.stats.hits += 1;
        let m = &mut st.meta[f];
        m.pins += 1;
        m.referenced = true;
        drop(st);
        let pinned = PinnedPage {
            cache: self,
            frame: f,
            page,
        };
        if fill == Fill::Zeros {
            // Marked dirty by `write`, after its frame lock, so a concurrent flush cannot lose
            // the zeros.
            pinned.write().fill(0);
        }
        pinned
    }

    /// Maps `page` into the idle, clean frame `victim`, evicting what it held: pinned once,
    /// loading (to be read in) or, for a new page, ready and dirty. A page starts without its
    /// reference bit: only a second use earns it a second chance, so a scan of pages used once
    /// cannot push out the pages in real use.
    fn install(&self, st: &mut State, victim: usize, page: PageId, fill: Fill) {
        if let Some(old) = st.meta[victim].page.take() {
            st.table.remove(&old);
            st.stats.evictions += 1;
        }
        st.meta[victim] = FrameMeta {
            page: Some(page),
            pins: 1,
            referenced: false,
            dirty: fill == Fill::Zeros,
            state: match fill {
                Fill::Read => FrameState::Loading,
                Fill::Zeros => FrameState::Ready,
            },
        };
        st.table.insert(page, victim);
    }

    /// Reads `page` into its loading frame through the scheduler and pins it; on failure the
    /// frame is emptied (its one pin with it) and the page unmapped.
    ///
    /// A miss blocks its caller, so the read runs on the caller's thread where it can
    /// ([`DiskScheduler::read_blocking`]), without a hand-off to a worker. It is the zero-copy
    /// kind: the page lands in a buffer the backend lends and is copied once, into the frame
    /// (a frame is the cache's own, mutable memory, so that copy stays; reading into the frame
    /// itself would cost the same copy on io_uring, where a read into memory that is not
    /// registered is staged).
    ///
    /// Whatever happens (an error, or a panic in the read), a frame never stays loading: it is
    /// emptied and unmapped, and the threads waiting for it wake and load the page themselves.
    fn load(&self, frame: usize, page: PageId) -> Result<PinnedPage<'_>> {
        let mut unload = LoadGuard {
            cache: self,
            frame,
            page,
            armed: true,
        };
        let bytes = self.sched.read_blocking(page)?;
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

    /// CLOCK: the first unpinned, idle frame whose reference bit is clear, clearing bits as
    /// the hand passes; two sweeps at most.
    fn clock_victim(&self, st: &mut State) -> Option<usize> {
        let n = st.meta.len();
        for _ in 0..2 * n {
            let f = st.hand;
            st.hand = (st.hand + 1) % n;
            let m = &mut st.meta[f];
            if m.pins > 0 || matches!(m.state, FrameState::Loading | FrameState::WritingBack { .. }) {
                continue;
            }
            if m.state == FrameState::Empty || !m.referenced {
                return Some(f);
            }
            m.referenced = false;
        }
        None
    }

    /// Writes frame `f` back through the scheduler with the state lock released; on failure
    /// the page stays cached and dirty. A page deallocated behind the cache (`NotAllocated`)
    /// has dead bytes: they are dropped and the frame is clean. With a `deadline`, a write
    /// not answered by then fails with `TimedOut` (the page stays dirty).
    fn write_back<'s>(
        &'s self,
        mut st: parking_lot::MutexGuard<'s, State>,
        f: usize,
        deadline: Option<Instant>,
    ) -> Result<parking_lot::MutexGuard<'s, State>> {
        let Some(job) = self.write_back_begin(&mut st, f) else {
            return Ok(st);
        };
        drop(st);
        // A panic from here on (copying the page, sending it) puts the frame back as it was,
        // still dirty, so nothing waits for a write-back that will not finish.
        let mut unwind = job.guard(self);
        let reply = self.write_back_send(&job);
        let result = wait_reply(&reply, deadline, "page cache write-back");
        unwind.armed = false;
        let mut st = self.state.lock();
        self.write_back_end(&mut st, &job, result).map(|()| st)
    }

    /// The first step of a write-back of frame `f`, under the state lock: the dirty bit
    /// cleared, the frame marked as being written back. `None` for a frame without a page.
    fn write_back_begin(&self, st: &mut State, f: usize) -> Option<WriteBackJob> {
        let Some(page) = st.meta[f].page else {
            st.meta[f].dirty = false;
            return None;
        };
        let prior = st.meta[f].state;
        invariant!(
            prior == FrameState::Ready,
            "write-back of frame {f} in state {prior:?}"
        );
        st.meta[f].dirty = false;
        st.meta[f].state = FrameState::WritingBack {
            pinned: st.meta[f].pins > 0,
        };
        Some(WriteBackJob {
            frame: f,
            page,
            prior,
        })
    }

    /// The second step, with the state lock released: the page's bytes copied (under the
    /// frame's read lock) and sent.
    fn write_back_send(&self, job: &WriteBackJob) -> Reply<()> {
        #[cfg(test)]
        self.hook(HookPoint::WriteBackUnlocked);
        // Aligned, so the worker hands it to the backend without staging it again.
        let data = crate::lend::aligned_bytes(&self.frames[job.frame].read());
        self.sched.schedule_write(job.page, data)
    }

    /// The last step, under the state lock again: the frame back to its state, the waiters
    /// woken, and the page dirty again if the write failed.
    fn write_back_end(&self, st: &mut State, job: &WriteBackJob, result: Result<()>) -> Result<()> {
        let f = job.frame;
        invariant!(
            st.meta[f].writing_back(),
            "frame {f} ends a write-back it did not begin: {:?}",
            st.meta[f]
        );
        if st.meta[f].writing_back() {
            st.meta[f].state = job.prior;
        }
        self.notify();
        match result {
            Ok(()) => {
                st.stats.write_backs += 1;
                Ok(())
            }
            Err(SchedulerError::NotAllocated(_)) => {
                tracing::debug!(page = %job.page, "page cache: dropped the dirty bytes of a deallocated page");
                st.stats.freed_discarded += 1;
                Ok(())
            }
            Err(e) => {
                st.meta[f].dirty = true;
                Err(e)
            }
        }
    }

    /// Writes back every dirty page (pinned ones too, as they are now) and syncs. When it
    /// returns `Ok`, every page that was dirty when it began is durable, including pages whose
    /// write-back another thread had under way (those are waited for).
    ///
    /// Blocks its thread while it waits; from async code, use
    /// [`flush_all_async`](Self::flush_all_async).
    pub fn flush_all(&self) -> Result<()> {
        self.flush_until(None)
    }

    /// `flush_all`, giving up with `TimedOut` at `deadline` if there is one.
    fn flush_until(&self, deadline: Option<Instant>) -> Result<()> {
        let mut st = self.state.lock();
        for f in 0..self.frames.len() {
            loop {
                let m = st.meta[f];
                if m.writing_back() {
                    // Its write is not accepted yet: the sync below might go first.
                    st.stats.flush_waits += 1;
                    #[cfg(test)]
                    {
                        drop(st);
                        self.hook(HookPoint::FlushWaits);
                        st = self.state.lock();
                        if !st.meta[f].writing_back() {
                            continue;
                        }
                    }
                    self.changed.wait(&mut st);
                    continue;
                }
                if m.dirty && m.state == FrameState::Ready {
                    st = self.write_back(st, f, deadline)?;
                }
                break;
            }
        }
        drop(st);
        // The ids of cancelled `new_page_async` calls: freed before the sync, so it covers them.
        let orphans = std::mem::take(&mut *self.orphans.lock());
        for reply in orphans {
            if let Ok(page) = wait_reply(&reply, deadline, "page cache flush (a cancelled allocation)") {
                wait_reply(
                    &self.sched.schedule_deallocate(page),
                    deadline,
                    "page cache flush (freeing a cancelled allocation)",
                )?;
            }
        }
        wait_reply(&self.sched.schedule_sync(), deadline, "page cache flush (sync)")
    }

    /// Flushes every dirty page ([`flush_all`](Self::flush_all)) and closes the cache,
    /// returning the flush's error: the clean shutdown of an engine. On an error nothing is
    /// flushed again on drop (the error is the caller's now). The scheduler stays open.
    pub fn close(mut self) -> Result<()> {
        self.flush_on_drop = None;
        self.flush_all()
    }

    /// What dropping the cache does with dirty pages: `Some(bound)` (the default,
    /// [`DEFAULT_DROP_FLUSH_BOUND`]) writes them back and syncs, waiting at most `bound` for
    /// the scheduler, and logs an error (through `tracing`) if that fails or takes longer;
    /// `None` drops them (what an engine whose WAL replays them may want). A cache that holds
    /// no dirty page does nothing on drop either way. Prefer [`close`](Self::close), which
    /// returns the error. The flush on drop blocks the dropping thread: in async code, end
    /// with [`close_async`](Self::close_async) (or `flush_all_async`) instead.
    pub fn set_flush_on_drop(&mut self, bound: Option<Duration>) {
        self.flush_on_drop = bound;
    }

    /// True when a frame holds a dirty page or a cancelled allocation waits to be freed.
    fn has_unflushed(&self) -> bool {
        self.state.lock().meta.iter().any(|m| m.dirty && m.page.is_some()) || !self.orphans.lock().is_empty()
    }
}

/// Dropping a cache with dirty pages flushes them, bounded (see
/// [`PageCache::set_flush_on_drop`]); a failure is logged, not returned.
impl Drop for PageCache {
    fn drop(&mut self) {
        let Some(bound) = self.flush_on_drop else {
            return;
        };
        if !self.has_unflushed() {
            return;
        }
        let dirty = self.state.lock().meta.iter().filter(|m| m.dirty).count();
        if let Err(e) = self.flush_until(Some(Instant::now() + bound)) {
            tracing::error!(dir = %self.sched.dir().display(), dirty_pages = dirty, error = %e, "page cache: dropped with dirty pages and the flush on drop failed; those pages may be lost (call close() to get the error)");
        } else {
            tracing::debug!(dirty_pages = dirty, "page cache: flushed on drop");
        }
    }
}

/// A write-back begun by [`PageCache::write_back_begin`].
struct WriteBackJob {
    frame: usize,
    page: PageId,
    prior: FrameState,
}

impl WriteBackJob {
    /// Armed: ends the write-back as a failed one if dropped before disarmed.
    fn guard<'a>(&self, cache: &'a PageCache) -> WriteBackGuard<'a> {
        WriteBackGuard {
            cache,
            frame: self.frame,
            prior: self.prior,
            armed: true,
        }
    }
}

/// Waits for `reply`, until `deadline` if there is one (then `TimedOut`, naming `call`).
fn wait_reply<T>(reply: &Reply<T>, deadline: Option<Instant>, call: &'static str) -> Result<T> {
    match deadline {
        None => reply.recv(),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            reply.recv_timeout(left).unwrap_or_else(|| {
                Err(SchedulerError::TimedOut {
                    call,
                    waited_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                })
            })
        }
    }
}

#[cfg(test)]
mod tests;
