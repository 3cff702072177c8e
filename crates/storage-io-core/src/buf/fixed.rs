//! [`FixedBufs`]: one allocation split into equal buffers, for registration with a kernel (io_uring fixed buffers).

use super::*;

/// Out of memory (the same number on Linux, the BSDs and macOS).
const ENOMEM: i32 = 12;

/// One allocation split into `count` buffers of `size` bytes, lent out as [`AlignedBuf`]s.
pub(super) struct FixedArea {
    pub(super) base: NonNull<u8>,
    pub(super) size: usize,
    pub(super) count: usize,
    pub(super) align: usize,
    /// Indices of the buffers not lent out. Holds every index once at most, so pushing one back
    /// always finds room.
    pub(super) free: ArrayQueue<u16>,
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

    pub(super) fn give_back(&self, index: u16) {
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
/// use storage_io_core::backend_kit::FixedBufs;
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
            // Out of memory is an error for the backend to report (io_uring then runs without
            // registered buffers), never an abort.
            return Err(StorageIoError::Os {
                what: "allocating fixed buffers",
                errno: ENOMEM,
                path: None,
            });
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
