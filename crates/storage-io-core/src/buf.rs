//! Owned I/O buffers: [`AlignedBuf`] for direct I/O, [`IoBuf`] for anything a backend accepts,
//! and a bounded [`BufferPool`] with size classes.
//!
//! An [`AlignedBuf`] is allocated zeroed and freed with the very [`Layout`] it was allocated with,
//! so every byte up to its capacity is always initialised and its length can move freely within
//! the capacity. Buffers taken from a [`BufferPool`] go back to their pool when dropped.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::error::{InvalidArgument, Result, StorageIoError};

/// The default alignment for direct I/O: the page size and the logical block size of most devices.
pub const DEFAULT_ALIGNMENT: usize = 4096;

/// A heap buffer whose start address is a multiple of a chosen power-of-two alignment.
///
/// All `capacity()` bytes are initialised (zeroed at allocation), so [`AlignedBuf::set_len`] is
/// safe: growing the length exposes old contents, never uninitialised memory.
///
/// ```
/// use storage_io_core::AlignedBuf;
/// let mut buf = AlignedBuf::zeroed(8192, 4096).unwrap();
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// buf[..5].copy_from_slice(b"hello");
/// buf.truncate(5);
/// assert_eq!(&buf[..], b"hello");
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    align: usize,
    /// Where the memory goes when dropped.
    home: Home,
}

/// Where an [`AlignedBuf`]'s memory goes when it is dropped.
enum Home {
    /// Its own allocation, freed with its layout.
    Heap,
    /// A [`BufferPool`] class's free list.
    Pool(Arc<PoolClass>),
    /// Slot `index` of a [`FixedBufs`] area.
    Fixed(Arc<FixedArea>, u16),
}

// SAFETY: an AlignedBuf uniquely owns its allocation (no aliasing pointers are handed out beyond
// borrows tied to &self/&mut self), exactly like Vec<u8>, so moving it across threads is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only permit reads of initialised bytes, as with &Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two); the length is `len`.
    ///
    /// A zero length allocates nothing. Fails with `InvalidArgument` for a bad alignment or a size
    /// the allocator cannot represent; an out-of-memory condition aborts as it does for `Vec`.
    pub fn zeroed(len: usize, align: usize) -> Result<Self> {
        let layout = layout_for(len, align)?;
        let ptr = if len == 0 {
            dangling(align)
        } else {
            // SAFETY: layout has a non-zero size (checked just above) and a valid alignment
            // (checked by layout_for).
            let raw = unsafe { alloc::alloc_zeroed(layout) };
            match NonNull::new(raw) {
                Some(p) => p,
                None => alloc::handle_alloc_error(layout),
            }
        };
        Ok(AlignedBuf {
            ptr,
            len,
            cap: len,
            align,
            home: Home::Heap,
        })
    }

    /// Allocates `len` zeroed bytes at the default 4096-byte alignment.
    pub fn page_aligned(len: usize) -> Result<Self> {
        Self::zeroed(len, DEFAULT_ALIGNMENT)
    }

    /// Copies `data` into a new buffer of exactly that length at `align`.
    pub fn from_slice(data: &[u8], align: usize) -> Result<Self> {
        let mut buf = Self::zeroed(data.len(), align)?;
        buf.copy_from_slice(data);
        Ok(buf)
    }

    /// The number of bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of bytes allocated (fixed for the buffer's life).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The alignment of the buffer's start address.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Sets the length to any value up to the capacity. Bytes between the old and the new length
    /// keep what they held before (zeros if never written).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.cap {
            return Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge {
                len,
                max: self.cap,
            }));
        }
        self.len = len;
        Ok(())
    }

    /// Shortens the buffer to `len` bytes; does nothing if it is already shorter.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Sets the length to zero.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data` after the current length; fails if it would pass the capacity.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<()> {
        let end = self.len.saturating_add(data.len());
        if end > self.cap {
            return Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge {
                len: end,
                max: self.cap,
            }));
        }
        let old = self.len;
        self.len = end;
        self[old..end].copy_from_slice(data);
        Ok(())
    }

    /// A raw pointer to the first byte (valid for `capacity()` bytes).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// A raw mutable pointer to the first byte (valid for `capacity()` bytes).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// True when this buffer came from a [`BufferPool`] or a [`FixedBufs`] area and goes back
    /// there on drop.
    pub fn is_pooled(&self) -> bool {
        !matches!(self.home, Home::Heap)
    }
}

fn layout_for(size: usize, align: usize) -> Result<Layout> {
    if !align.is_power_of_two() {
        return Err(StorageIoError::invalid(
            "alignment must be a power of two (4096 suits most devices)",
        ));
    }
    Layout::from_size_align(size, align)
        .map_err(|_| StorageIoError::invalid("buffer size overflows at this alignment"))
}

fn dangling(align: usize) -> NonNull<u8> {
    // A well-aligned, non-null address that is never dereferenced for a zero-sized buffer.
    NonNull::new(std::ptr::without_provenance_mut::<u8>(align)).unwrap_or(NonNull::dangling())
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len bytes, all initialised (allocated zeroed), and
        // uniquely owned by self, so a shared borrow tied to &self is sound.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self guarantees no other borrow of these bytes exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .field("align", &self.align)
            .field("pooled", &self.is_pooled())
            .finish()
    }
}

impl Clone for AlignedBuf {
    /// Clones into a fresh, unpooled allocation with the same alignment and length.
    fn clone(&self) -> Self {
        match AlignedBuf::from_slice(self, self.align) {
            Ok(buf) => buf,
            // The original was built with the same size and alignment, so the layout is valid.
            Err(_) => unreachable!("layout of an existing buffer is valid"),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        match std::mem::replace(&mut self.home, Home::Heap) {
            Home::Pool(class) => return class.give_back(RawBuf(self.ptr)),
            Home::Fixed(area, index) => return area.give_back(index),
            Home::Heap => {}
        }
        // SAFETY: ptr was allocated by alloc_zeroed with exactly this size and alignment (cap and
        // align never change after construction) and is freed once, here.
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, self.align),
            )
        }
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

/// An owned buffer that a backend accepts for reads and zero-copy writes and hands back in the
/// completion.
///
/// For a read, the transfer length is the buffer's current `len()`; on completion the buffer is
/// truncated to the bytes actually read (shorter only at end of file).
#[derive(Debug, PartialEq)]
pub enum IoBuf {
    /// Aligned memory, required for direct I/O.
    Aligned(AlignedBuf),
    /// Plain heap memory (fine for buffered I/O).
    Vec(Vec<u8>),
}

impl IoBuf {
    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Aligned(b) => b,
            IoBuf::Vec(v) => v,
        }
    }

    /// The bytes in use, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Aligned(b) => b,
            IoBuf::Vec(v) => v,
        }
    }

    /// The number of bytes in use.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the buffer to `len` bytes; does nothing if it is already shorter.
    pub fn truncate(&mut self, len: usize) {
        match self {
            IoBuf::Aligned(b) => b.truncate(len),
            IoBuf::Vec(v) => v.truncate(len),
        }
    }

    /// The address of the first byte.
    pub fn addr(&self) -> usize {
        self.as_slice().as_ptr() as usize
    }

    /// True when the buffer's address is a multiple of `align`.
    pub fn is_aligned_to(&self, align: usize) -> bool {
        align <= 1 || self.addr().is_multiple_of(align)
    }

    /// Copies the bytes in use into a `Vec` (or returns the `Vec` itself without copying).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            IoBuf::Aligned(b) => b.to_vec(),
            IoBuf::Vec(v) => v,
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl From<Vec<u8>> for IoBuf {
    fn from(v: Vec<u8>) -> Self {
        IoBuf::Vec(v)
    }
}

impl From<AlignedBuf> for IoBuf {
    fn from(b: AlignedBuf) -> Self {
        IoBuf::Aligned(b)
    }
}

/// A pointer to a pool-owned allocation waiting on a free list.
struct RawBuf(NonNull<u8>);

// SAFETY: a RawBuf on a free list is owned by that list alone; nothing else points at it.
unsafe impl Send for RawBuf {}

/// One size class of a [`BufferPool`].
struct PoolClass {
    size_bytes: usize,
    align: usize,
    limit: usize,
    /// Buffers handed out and not yet dropped.
    outstanding: AtomicUsize,
    /// Free buffers: a lock-free bounded queue of `limit` entries, so acquire and release take
    /// no lock and giving one back never allocates.
    free: ArrayQueue<RawBuf>,
}

impl PoolClass {
    fn give_back(&self, raw: RawBuf) {
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

/// One allocation split into `count` buffers of `size` bytes, lent out as [`AlignedBuf`]s.
struct FixedArea {
    base: NonNull<u8>,
    size: usize,
    count: usize,
    align: usize,
    /// Indices of the buffers not lent out. Holds every index once at most, so pushing one back
    /// always finds room.
    free: ArrayQueue<u16>,
}

// SAFETY: the area owns its allocation; each buffer in it is used by at most one owner at a
// time (the holder of the lent AlignedBuf, or nobody while its index is on the free list), and
// the free list is a thread-safe queue, so the area may be shared and dropped on any thread.
unsafe impl Send for FixedArea {}
// SAFETY: as for Send: shared access only touches the lock-free free list and immutable fields.
unsafe impl Sync for FixedArea {}

impl FixedArea {
    fn layout(&self) -> Layout {
        // Validated when the area was created.
        Layout::from_size_align(self.size * self.count, self.align).unwrap_or(Layout::new::<u8>())
    }

    fn give_back(&self, index: u16) {
        // The index came off this list when it was lent, so there is room for it.
        let _ = self.free.push(index);
    }
}

impl Drop for FixedArea {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated by alloc_zeroed with exactly this layout (size, count and
        // align never change). The area is dropped when the last Arc goes, which is after every
        // lent buffer (each holds an Arc) and the owner that registered it are gone.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout()) }
    }
}

/// A fixed set of equally sized, aligned buffers in one allocation: the memory a backend
/// registers with the kernel once (io_uring's fixed buffers) and then uses for its own staging
/// and lends to callers through [`StorageIo::alloc_buf`](crate::StorageIo::alloc_buf).
///
/// A lent buffer is an ordinary [`AlignedBuf`] whose capacity is the buffer size; dropping it
/// puts it back on the free list, which takes no lock and never allocates. The memory stays
/// allocated while any lent buffer or any clone of the `FixedBufs` exists, so a buffer may
/// outlive the backend that lent it. [`FixedBufs::index_of`] tells a backend that a buffer it
/// was handed is one of its own, so it can do I/O on it in place.
///
/// ```
/// use storage_io_core::FixedBufs;
/// let fixed = FixedBufs::new(2, 4096, 4096).unwrap();
/// let a = fixed.take(100).unwrap();
/// assert_eq!((a.len(), a.capacity()), (100, 4096));
/// assert!(fixed.index_of(&a).is_some());
/// let _b = fixed.take(4096).unwrap();
/// assert!(fixed.take(1).is_none(), "both are lent");
/// drop(a);
/// assert_eq!(fixed.available(), 1);
/// ```
#[derive(Clone)]
pub struct FixedBufs {
    area: Arc<FixedArea>,
}

impl FixedBufs {
    /// Allocates `count` zeroed buffers of `size` bytes, each aligned to `align` (a power of two
    /// that divides `size`). At most 65,536 buffers (io_uring indexes them with a `u16`).
    pub fn new(count: usize, size: usize, align: usize) -> Result<Self> {
        if count == 0 || count > usize::from(u16::MAX) + 1 || size == 0 {
            return Err(StorageIoError::invalid(
                "fixed buffers need 1 to 65536 buffers of a non-zero size",
            ));
        }
        if !align.is_power_of_two() || !size.is_multiple_of(align) {
            return Err(StorageIoError::invalid(
                "the fixed buffer size must be a multiple of a power-of-two alignment",
            ));
        }
        let total = count
            .checked_mul(size)
            .ok_or_else(|| StorageIoError::invalid("fixed buffers: count × size overflows"))?;
        let layout = layout_for(total, align)?;
        // SAFETY: the layout has a non-zero size (count and size are non-zero) and a valid
        // alignment (checked by layout_for).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        let free = ArrayQueue::new(count);
        for i in 0..count {
            // `count` fits in the queue by construction and every index fits in a u16.
            let _ = free.push(i as u16);
        }
        Ok(FixedBufs {
            area: Arc::new(FixedArea {
                base,
                size,
                count,
                align,
                free,
            }),
        })
    }

    /// How many buffers the area holds.
    pub fn count(&self) -> usize {
        self.area.count
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.area.size
    }

    /// How many buffers are free now.
    pub fn available(&self) -> usize {
        self.area.free.len()
    }

    /// Lends a free buffer with its length set to `len`; `None` when `len` is larger than the
    /// buffer size or every buffer is lent. Its bytes are whatever its last user left there.
    pub fn take(&self, len: usize) -> Option<AlignedBuf> {
        if len > self.area.size {
            return None;
        }
        let index = self.area.free.pop()?;
        // SAFETY: index < count, so index * size < count * size: the pointer stays inside the
        // area's allocation and is non-null.
        let ptr = unsafe {
            NonNull::new_unchecked(self.area.base.as_ptr().add(usize::from(index) * self.area.size))
        };
        Some(AlignedBuf {
            ptr,
            len,
            cap: self.area.size,
            align: self.area.align,
            home: Home::Fixed(Arc::clone(&self.area), index),
        })
    }

    /// The index of `buf` in this area, if it is one of this area's buffers.
    pub fn index_of(&self, buf: &AlignedBuf) -> Option<u16> {
        match &buf.home {
            Home::Fixed(area, index) if Arc::ptr_eq(area, &self.area) => Some(*index),
            _ => None,
        }
    }

    /// Start address and length of each buffer, in index order: what a backend registers with
    /// the kernel. The memory lives as long as this `FixedBufs` or any buffer lent from it.
    pub fn regions(&self) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        let area = &self.area;
        // wrapping_add computes the address without dereferencing it; every i < count stays
        // inside the allocation.
        (0..area.count).map(move |i| (area.base.as_ptr().wrapping_add(i * area.size), area.size))
    }
}

impl fmt::Debug for FixedBufs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedBufs")
            .field("count", &self.area.count)
            .field("buf_size", &self.area.size)
            .field("available", &self.area.free.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_zeroed_and_resizable_within_capacity() {
        for align in [512, 4096, 65536] {
            let mut b = AlignedBuf::zeroed(3 * align, align).unwrap();
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert!(b.iter().all(|&x| x == 0));
            b[0] = 7;
            b.truncate(1);
            assert_eq!(&b[..], &[7]);
            b.set_len(3 * align).unwrap();
            assert_eq!(b[0], 7);
            assert!(b.set_len(3 * align + 1).is_err());
        }
    }

    #[test]
    fn bad_alignment_is_an_error_not_a_panic() {
        assert!(matches!(
            AlignedBuf::zeroed(4096, 3000),
            Err(StorageIoError::InvalidArgument(_))
        ));
        let empty = AlignedBuf::zeroed(0, 4096).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn extend_stops_at_capacity() {
        let mut b = AlignedBuf::zeroed(8, 8).unwrap();
        b.clear();
        b.extend_from_slice(b"abcd").unwrap();
        b.extend_from_slice(b"efgh").unwrap();
        assert!(b.extend_from_slice(b"i").is_err());
        assert_eq!(&b[..], b"abcdefgh");
    }

    #[test]
    fn pool_reuses_memory_and_keeps_capacity() {
        let pool = BufferPool::new(BufferPoolConfig {
            classes: vec![(4096, 2), (65536, 1)],
            align: 4096,
        })
        .unwrap();
        let a = pool.acquire(10).unwrap();
        let addr = a.as_ptr() as usize;
        assert_eq!((a.len(), a.capacity()), (10, 4096));
        drop(a);
        let b = pool.acquire(4000).unwrap();
        assert_eq!(b.as_ptr() as usize, addr, "a freed buffer is reused");
        assert_eq!(b.capacity(), 4096);
        let big = pool.acquire(5000).unwrap();
        assert_eq!(big.capacity(), 65536);
    }

    #[test]
    fn pool_is_bounded_per_class_and_says_so() {
        let pool = BufferPool::new(BufferPoolConfig {
            classes: vec![(4096, 2)],
            align: 4096,
        })
        .unwrap();
        let a = pool.acquire(1).unwrap();
        let _b = pool.acquire(1).unwrap();
        let err = pool.acquire(1).unwrap_err();
        assert_eq!(
            err,
            StorageIoError::BufferExhausted {
                size_bytes: 4096,
                limit: 2
            }
        );
        drop(a);
        assert!(pool.acquire(1).is_ok());
        assert!(matches!(
            pool.acquire(4097),
            Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge { .. }))
        ));
    }

    #[test]
    fn buffers_outliving_the_pool_are_freed_safely() {
        let pool = BufferPool::new(BufferPoolConfig::default()).unwrap();
        pool.prefill();
        let buf = pool.acquire(4096).unwrap();
        drop(pool);
        assert_eq!(buf.len(), 4096);
        drop(buf);
    }

    #[test]
    fn pool_is_shared_across_threads() {
        let pool = BufferPool::new(BufferPoolConfig {
            classes: vec![(4096, 8)],
            align: 4096,
        })
        .unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let pool = pool.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        let mut b = pool.acquire(4096).unwrap();
                        b[0] = 1;
                    }
                });
            }
        });
        assert_eq!(pool.outstanding(4096), Some(0));
    }

    #[test]
    fn fixed_bufs_lend_once_and_come_back_on_drop() {
        let fixed = FixedBufs::new(3, 8192, 4096).unwrap();
        let regions: Vec<_> = fixed.regions().collect();
        assert_eq!(regions.len(), 3);
        let mut lent: Vec<AlignedBuf> = (0..3).map(|_| fixed.take(8192).unwrap()).collect();
        assert!(fixed.take(1).is_none());
        assert!(fixed.take(8193).is_none(), "larger than a buffer");
        let mut seen: Vec<u16> = lent.iter().map(|b| fixed.index_of(b).unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
        for b in &mut lent {
            let i = usize::from(fixed.index_of(b).unwrap());
            assert_eq!(b.as_ptr() as usize, regions[i].0 as usize);
            assert_eq!(b.as_ptr() as usize % 4096, 0);
            b[0] = i as u8 + 1;
        }
        let other = FixedBufs::new(1, 4096, 4096).unwrap();
        assert_eq!(other.index_of(&lent[0]), None, "another area's buffer");
        assert_eq!(fixed.index_of(&AlignedBuf::zeroed(8192, 4096).unwrap()), None);
        assert_eq!(fixed.index_of(&lent[0].clone()), None, "a clone is a plain copy");
        lent.pop();
        assert_eq!(fixed.available(), 1);
        let again = fixed.take(10).unwrap();
        assert_eq!(again.len(), 10);
        assert!(again.is_pooled());
    }

    #[test]
    fn fixed_bufs_outlive_their_area_handle() {
        let fixed = FixedBufs::new(2, 4096, 4096).unwrap();
        let mut buf = fixed.take(4096).unwrap();
        drop(fixed);
        buf[4095] = 9;
        assert_eq!(buf[4095], 9);
        drop(buf);
    }

    #[test]
    fn fixed_bufs_refuse_bad_shapes() {
        for (count, size, align) in [
            (0, 4096, 4096),
            (1, 0, 4096),
            (1, 4096, 3000),
            (1, 100, 4096),
            (70_000, 4096, 4096),
        ] {
            assert!(
                matches!(
                    FixedBufs::new(count, size, align),
                    Err(StorageIoError::InvalidArgument(_))
                ),
                "{count} × {size} @ {align}"
            );
        }
    }

    #[test]
    fn iobuf_reports_alignment_and_length() {
        let a: IoBuf = AlignedBuf::zeroed(4096, 4096).unwrap().into();
        assert!(a.is_aligned_to(4096));
        let mut v: IoBuf = vec![1u8; 10].into();
        v.truncate(3);
        assert_eq!(v.len(), 3);
        assert_eq!(v.into_vec(), vec![1, 1, 1]);
    }
}
