//! [`PageCache`]: a fixed number of page frames over a [`DiskScheduler`].
//!
//! **Invariants:**
//! - A pinned page stays in its frame until the last pin is dropped.
//! - Two misses on one page fetch it once: the first marks the frame *loading*, the second
//!   waits for it.
//! - A dirty page is written back before its frame is reused; if that write fails the page
//!   stays cached and dirty and the caller gets the error, so nothing is lost.
//!
//! Eviction is CLOCK (second chance): the hand skips pinned or busy frames and clears the
//! reference bit of recently used ones before taking one. A page enters with its bit clear and
//! a hit sets it, so pages touched once (a scan) go before pages touched again.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::PageId;
use crate::error::{Result, SchedulerError};
use crate::scheduler::DiskScheduler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    Empty,
    Loading,
    Ready,
    WritingBack,
}

#[derive(Debug, Clone, Copy)]
struct FrameMeta {
    page: Option<PageId>,
    pins: u32,
    referenced: bool,
    dirty: bool,
    state: FrameState,
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
}

/// A buffer pool of `frames` pages over a scheduler.
///
/// ```
/// # use std::sync::Arc;
/// # use storage_io_core::{BackendFactory, StorageIo};
/// # use storage_io_scheduler::{DiskScheduler, IOSchedulerConfig, PageCache};
/// # let fs = storage_io_testkit::memio::MemFs::new(1);
/// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
/// let sched = Arc::new(DiskScheduler::open("/db", IOSchedulerConfig::default(), factory).unwrap());
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
    changed: Condvar,
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("frames", &self.frames.len())
            .field("stats", &self.stats())
            .finish()
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
        self.cache.state.lock().meta[self.frame].dirty = true;
        self.cache.frames[self.frame].write()
    }
}

impl Drop for PinnedPage<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.state.lock();
        let m = &mut st.meta[self.frame];
        m.pins -= 1;
        if m.pins == 0 {
            self.cache.changed.notify_all();
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
        let empty = FrameMeta {
            page: None,
            pins: 0,
            referenced: false,
            dirty: false,
            state: FrameState::Empty,
        };
        Ok(PageCache {
            sched,
            page_size,
            frames: (0..frames)
                .map(|_| RwLock::new(vec![0u8; page_size].into_boxed_slice()))
                .collect(),
            state: Mutex::new(State {
                table: HashMap::with_capacity(frames),
                meta: vec![empty; frames],
                hand: 0,
                stats: PageCacheStats::default(),
            }),
            changed: Condvar::new(),
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
    /// with a failed write-back of the frame it needed, or with `InvalidConfig` when every
    /// frame is pinned.
    pub fn fetch(&self, page: PageId) -> Result<PinnedPage<'_>> {
        self.pin(page, true)
    }

    /// Allocates a new page through the scheduler and pins it zero-filled and dirty, without
    /// reading anything.
    pub fn new_page(&self) -> Result<PinnedPage<'_>> {
        let page = self.sched.schedule_allocate().recv()?;
        self.pin(page, false)
    }

    fn pin(&self, page: PageId, read: bool) -> Result<PinnedPage<'_>> {
        let mut st = self.state.lock();
        loop {
            if let Some(&f) = st.table.get(&page) {
                match st.meta[f].state {
                    FrameState::Ready => {
                        st.stats.hits += 1;
                        let m = &mut st.meta[f];
                        m.pins += 1;
                        m.referenced = true;
                        return Ok(PinnedPage {
                            cache: self,
                            frame: f,
                            page,
                        });
                    }
                    // Another thread is reading it in or writing it back: wait, don't read twice.
                    FrameState::Loading | FrameState::WritingBack => {
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
                    return Err(SchedulerError::InvalidConfig(format!(
                        "all {} page cache frames are pinned; unpin pages or use a bigger cache",
                        self.frames.len()
                    )));
                }
                // Frames are busy loading or writing back; one will free up.
                self.changed.wait(&mut st);
                continue;
            };
            if st.meta[victim].dirty {
                // Write the old page back first; it stays mapped (state WritingBack) so that a
                // fetch of it waits rather than reads stale bytes from disk.
                st = self.write_back(st, victim)?;
                continue;
            }
            if let Some(old) = st.meta[victim].page.take() {
                st.table.remove(&old);
                st.stats.evictions += 1;
            }
            // A page starts without its reference bit: only a second use earns it a second
            // chance, so a scan of pages used once cannot push out the pages in real use.
            st.meta[victim] = FrameMeta {
                page: Some(page),
                pins: 1,
                referenced: false,
                dirty: !read,
                state: if read {
                    FrameState::Loading
                } else {
                    FrameState::Ready
                },
            };
            st.table.insert(page, victim);
            if !read {
                self.frames[victim].write().fill(0);
                return Ok(PinnedPage {
                    cache: self,
                    frame: victim,
                    page,
                });
            }
            st.stats.misses += 1;
            drop(st);
            let result = self.sched.schedule_read(page).recv();
            let mut st2 = self.state.lock();
            match result {
                Ok(bytes) => {
                    self.frames[victim]
                        .write()
                        .copy_from_slice(&bytes[..self.page_size]);
                    st2.meta[victim].state = FrameState::Ready;
                    self.changed.notify_all();
                    return Ok(PinnedPage {
                        cache: self,
                        frame: victim,
                        page,
                    });
                }
                Err(e) => {
                    st2.table.remove(&page);
                    st2.meta[victim] = FrameMeta {
                        page: None,
                        pins: 0,
                        referenced: false,
                        dirty: false,
                        state: FrameState::Empty,
                    };
                    self.changed.notify_all();
                    return Err(e);
                }
            }
        }
    }

    /// CLOCK: the first unpinned, idle frame whose reference bit is clear, clearing bits as
    /// the hand passes; two sweeps at most.
    fn clock_victim(&self, st: &mut State) -> Option<usize> {
        let n = st.meta.len();
        for _ in 0..2 * n {
            let f = st.hand;
            st.hand = (st.hand + 1) % n;
            let m = &mut st.meta[f];
            if m.pins > 0 || matches!(m.state, FrameState::Loading | FrameState::WritingBack) {
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
    /// the page stays cached and dirty.
    fn write_back<'s>(
        &'s self,
        mut st: parking_lot::MutexGuard<'s, State>,
        f: usize,
    ) -> Result<parking_lot::MutexGuard<'s, State>> {
        let Some(page) = st.meta[f].page else {
            st.meta[f].dirty = false;
            return Ok(st);
        };
        let prior = st.meta[f].state;
        st.meta[f].dirty = false;
        if st.meta[f].pins == 0 {
            st.meta[f].state = FrameState::WritingBack;
        }
        drop(st);
        let data = Bytes::copy_from_slice(&self.frames[f].read());
        let result = self.sched.schedule_write(page, data).recv();
        let mut st = self.state.lock();
        if st.meta[f].state == FrameState::WritingBack {
            st.meta[f].state = prior;
        }
        self.changed.notify_all();
        match result {
            Ok(()) => {
                st.stats.write_backs += 1;
                Ok(st)
            }
            Err(e) => {
                st.meta[f].dirty = true;
                Err(e)
            }
        }
    }

    /// Writes back every dirty page (pinned ones too, as they are now) and syncs.
    pub fn flush_all(&self) -> Result<()> {
        let mut st = self.state.lock();
        for f in 0..self.frames.len() {
            if st.meta[f].dirty && st.meta[f].state == FrameState::Ready {
                st = self.write_back(st, f)?;
            }
        }
        drop(st);
        self.sched.schedule_sync().recv()
    }
}
