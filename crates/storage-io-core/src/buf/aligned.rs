//! [`AlignedBuf`]: aligned heap memory, freed with the layout it was allocated with (or returned to its pool or fixed area).

use super::*;

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
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
    pub(super) cap: usize,
    pub(super) align: usize,
    /// Where the memory goes when dropped.
    pub(super) home: Home,
}

/// Where an [`AlignedBuf`]'s memory goes when it is dropped.
pub(super) enum Home {
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

pub(super) fn layout_for(size: usize, align: usize) -> Result<Layout> {
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

/// So an `AlignedBuf` can own the memory of a `bytes::Bytes` (`Bytes::from_owner`): an aligned
/// page shared without a copy.
impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
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
