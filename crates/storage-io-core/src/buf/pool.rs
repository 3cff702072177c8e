//! [`BufferPool`]: bounded size classes of aligned buffers that go back to their class when dropped.

use super::*;

/// A pointer to a pool-owned allocation waiting on a free list.
pub(super) struct RawBuf(pub(super) NonNull<u8>);

// SAFETY: a RawBuf on a free list is owned by that list alone; nothing else points at it.
unsafe impl Send for RawBuf {}

/// One size class of a [`BufferPool`].
pub(super) struct PoolClass {
    pub(super) size_bytes: usize,
    pub(super) align: usize,
    pub(super) limit: usize,
    /// Buffers handed out and not yet dropped.
    pub(super) outstanding: AtomicUsize,
    /// Free buffers: a lock-free bounded queue of `limit` entries, so acquire and release take
    /// no lock and giving one back never allocates.
    pub(super) free: ArrayQueue<RawBuf>,
}

impl PoolClass {
    pub(super) fn give_back(&self, raw: RawBuf) {
        // At most `limit` buffers of a class exist (acquire reserves before allocating, prefill
        // stops at the limit), so the queue has room; if it ever had not, free the memory.
        if let Err(raw) = self.free.push(raw) {
            // SAFETY: pool buffers are allocated with this class's layout; `raw` was just given
            // back by its only owner and is on no list.
            unsafe { alloc::dealloc(raw.0.as_ptr(), self.layout()) }
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }

    fn layout(&self) -> Layout {
        // Validated when the class was created.
        Layout::from_size_align(self.size_bytes, self.align).unwrap_or(Layout::new::<u8>())
    }
}

impl Drop for PoolClass {
    fn drop(&mut self) {
        let layout = self.layout();
        while let Some(raw) = self.free.pop() {
            // SAFETY: every RawBuf on the free list was allocated by alloc_zeroed with this
            // class's layout, and the list is its only owner; it is freed once, here.
            unsafe { alloc::dealloc(raw.0.as_ptr(), layout) }
        }
    }
}

/// Configuration of a [`BufferPool`]: size classes, how many buffers each may hold, alignment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BufferPoolConfig {
    /// `(size_bytes, max_buffers)` per class. Default: 4 KiB × 1024, 64 KiB × 256, 1 MiB × 16.
    pub classes: Vec<(usize, usize)>,
    /// Alignment of every buffer. Default 4096.
    pub align: usize,
}

impl Default for BufferPoolConfig {
    fn default() -> Self {
        BufferPoolConfig {
            classes: vec![(4 << 10, 1024), (64 << 10, 256), (1 << 20, 16)],
            align: DEFAULT_ALIGNMENT,
        }
    }
}

/// A bounded pool of aligned buffers in size classes, shared between threads.
///
/// [`BufferPool::acquire`] hands out the smallest class that fits, with its length set to the
/// size asked for; dropping the buffer gives it back (its capacity unchanged). Memory is allocated
/// lazily up to each class's limit; past it, `acquire` fails with `BufferExhausted` instead of
/// growing. Each class keeps its free buffers in a lock-free bounded queue, so acquire and release
/// take no lock at all.
///
/// ```
/// use storage_io_core::{BufferPool, BufferPoolConfig};
/// let pool = BufferPool::new(BufferPoolConfig::default()).unwrap();
/// let buf = pool.acquire(100).unwrap();
/// assert_eq!((buf.len(), buf.capacity()), (100, 4096));
/// drop(buf); // back to the pool
/// assert_eq!(pool.outstanding(4096), Some(0));
/// ```
#[derive(Clone)]
pub struct BufferPool {
    classes: Arc<[Arc<PoolClass>]>,
}

impl BufferPool {
    /// Builds a pool; classes are sorted by size. Fails on a zero size or limit, a duplicate
    /// size, or a bad alignment.
    pub fn new(config: BufferPoolConfig) -> Result<Self> {
        let mut specs = config.classes.clone();
        specs.sort_unstable();
        if specs.is_empty() {
            return Err(StorageIoError::invalid(
                "a buffer pool needs at least one size class",
            ));
        }
        let mut classes = Vec::with_capacity(specs.len());
        for (i, &(size_bytes, limit)) in specs.iter().enumerate() {
            if size_bytes == 0 || limit == 0 {
                return Err(StorageIoError::invalid(
                    "buffer pool classes need a non-zero size and a non-zero limit",
                ));
            }
            if i > 0 && specs[i - 1].0 == size_bytes {
                return Err(StorageIoError::invalid(
                    "buffer pool size classes must be distinct",
                ));
            }
            layout_for(size_bytes, config.align)?;
            classes.push(Arc::new(PoolClass {
                size_bytes,
                align: config.align,
                limit,
                outstanding: AtomicUsize::new(0),
                free: ArrayQueue::new(limit),
            }));
        }
        Ok(BufferPool {
            classes: classes.into(),
        })
    }

    /// Takes a buffer of at least `len` bytes (length set to `len`) from the smallest class that
    /// fits. Fails with `BufferExhausted` when that class is at its limit, and with
    /// `InvalidArgument` when `len` is larger than the largest class.
    pub fn acquire(&self, len: usize) -> Result<AlignedBuf> {
        let Some(class) = self.classes.iter().find(|c| c.size_bytes >= len) else {
            let max = self.classes.last().map_or(0, |c| c.size_bytes);
            return Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge {
                len,
                max,
            }));
        };
        // Reserve a slot first so that concurrent acquires never exceed the limit.
        let reserved = class
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < class.limit).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(StorageIoError::BufferExhausted {
                size_bytes: class.size_bytes,
                limit: class.limit,
            });
        }
        let reused = class.free.pop();
        let ptr = match reused {
            Some(raw) => raw.0,
            None => {
                let layout = class.layout();
                // SAFETY: the class layout has a non-zero size (checked in new) and a valid
                // alignment (checked by layout_for in new).
                let raw = unsafe { alloc::alloc_zeroed(layout) };
                match NonNull::new(raw) {
                    Some(p) => p,
                    None => alloc::handle_alloc_error(layout),
                }
            }
        };
        Ok(AlignedBuf {
            ptr,
            len,
            cap: class.size_bytes,
            align: class.align,
            home: Home::Pool(Arc::clone(class)),
        })
    }

    /// Allocates every class up to its limit now, so later acquires never call the allocator.
    pub fn prefill(&self) {
        for class in self.classes.iter() {
            let layout = class.layout();
            let have = class.free.len() + class.outstanding.load(Ordering::Acquire);
            for _ in have..class.limit {
                // SAFETY: as in acquire: non-zero size, valid alignment.
                let raw = unsafe { alloc::alloc_zeroed(layout) };
                let Some(p) = NonNull::new(raw) else {
                    alloc::handle_alloc_error(layout)
                };
                if let Err(extra) = class.free.push(RawBuf(p)) {
                    // Buffers came back concurrently and filled the list: this one is surplus.
                    // SAFETY: allocated just above with `layout`, owned by nothing else.
                    unsafe { alloc::dealloc(extra.0.as_ptr(), layout) }
                    break;
                }
            }
        }
    }

    /// The size classes, smallest first.
    pub fn class_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.classes.iter().map(|c| c.size_bytes)
    }

    /// How many buffers of class `size_bytes` are handed out now; `None` if there is no such class.
    pub fn outstanding(&self, size_bytes: usize) -> Option<usize> {
        self.classes
            .iter()
            .find(|c| c.size_bytes == size_bytes)
            .map(|c| c.outstanding.load(Ordering::Acquire))
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for c in self.classes.iter() {
            list.entry(&(c.size_bytes, c.outstanding.load(Ordering::Relaxed), c.limit));
        }
        list.finish()
    }
}
