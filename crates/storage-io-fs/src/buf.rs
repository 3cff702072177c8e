//! Owned buffers for the async file API, and [`IoBufferPool`].

use storage_io_core::bytes::{Bytes, BytesMut};
use storage_io_core::{AlignedBuf, BufferPool, BufferPoolConfig, DEFAULT_ALIGNMENT, IoBuf, Result};

use super::AsyncFsConfig;

/// A buffer that can move into an operation and come back with its result.
///
/// Implemented for `Vec<u8>` (any file; a write of one to a direct-I/O file is staged through
/// an aligned copy, a read into one is refused there), [`AlignedBuf`] (any file, and what direct
/// I/O reads need; the buffers [`IoBufferPool`] hands out are these), [`IoBuf`], and the `bytes` crate's
/// `Bytes` and `BytesMut` (re-exported as `storage_io_fs::bytes`). The bytes in use are the
/// buffer's length: a read fills `len()` bytes and comes back truncated to what was read; a write
/// writes `len()` bytes.
pub trait OwnedBuf: Send + 'static {
    /// Moves the buffer into the form the backends take.
    fn into_io_buf(self) -> IoBuf;
    /// Takes it back. Backends return the very buffer they were given, so this is a move.
    fn from_io_buf(buf: IoBuf) -> Self;
    /// An empty buffer, answered only if an I/O worker died with the caller's buffer in flight
    /// (a bug; the error says so): the original cannot be recovered then.
    fn lost() -> Self;
}

impl OwnedBuf for Vec<u8> {
    fn into_io_buf(self) -> IoBuf {
        IoBuf::Vec(self)
    }
    fn from_io_buf(buf: IoBuf) -> Self {
        buf.into_vec()
    }
    fn lost() -> Self {
        Vec::new()
    }
}

impl OwnedBuf for AlignedBuf {
    fn into_io_buf(self) -> IoBuf {
        IoBuf::Aligned(self)
    }
    fn from_io_buf(buf: IoBuf) -> Self {
        match buf {
            IoBuf::Aligned(b) => b,
            // Not reached: backends hand back what they were given. Copy rather than panic.
            IoBuf::Vec(v) => AlignedBuf::from_slice(&v, DEFAULT_ALIGNMENT).unwrap_or_else(|_| Self::lost()),
        }
    }
    fn lost() -> Self {
        // A zero-length buffer allocates nothing and cannot fail with the default alignment.
        AlignedBuf::zeroed(0, DEFAULT_ALIGNMENT).unwrap_or_else(|_| unreachable!("4096 is a valid alignment"))
    }
}

impl OwnedBuf for IoBuf {
    fn into_io_buf(self) -> IoBuf {
        self
    }
    fn from_io_buf(buf: IoBuf) -> Self {
        buf
    }
    fn lost() -> Self {
        IoBuf::Vec(Vec::new())
    }
}

/// A shared buffer: the bytes move in without a copy when this is their only handle and they
/// are plain heap memory (a `Bytes` made from a `Vec`), else they are copied once. A read
/// fills a buffer of its length (a `Bytes` is immutable: read into a `BytesMut` or a `Vec` and
/// freeze it instead). The buffer comes back as a `Bytes` over the same memory.
impl OwnedBuf for Bytes {
    fn into_io_buf(self) -> IoBuf {
        IoBuf::Vec(Vec::from(self))
    }
    fn from_io_buf(buf: IoBuf) -> Self {
        Bytes::from(buf.into_vec())
    }
    fn lost() -> Self {
        Bytes::new()
    }
}

/// A growable buffer: moves in without a copy when it owns its whole allocation (one made by
/// `BytesMut::with_capacity` and not split), else it is copied once; it comes back as a
/// `BytesMut` over the same memory.
impl OwnedBuf for BytesMut {
    fn into_io_buf(self) -> IoBuf {
        IoBuf::Vec(Vec::from(self))
    }
    fn from_io_buf(buf: IoBuf) -> Self {
        BytesMut::from(Bytes::from(buf.into_vec()))
    }
    fn lost() -> Self {
        BytesMut::new()
    }
}

/// The size classes of an [`IoBufferPool`]: 4 KiB, 64 KiB and 1 MiB.
pub const POOL_CLASSES: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];

/// Aligned buffers for the async file API in three size classes (4 KiB, 64 KiB, 1 MiB), each
/// bounded, all aligned to 4096 bytes so they suit direct I/O.
///
/// `AsyncFsConfig::buffer_pool_size` bytes are split evenly over the classes (at least one buffer
/// each). Acquire and release take no lock: each class keeps its free buffers in a lock-free
/// queue, and dropping a buffer gives it back. Past a class's bound, [`IoBufferPool::acquire`]
/// fails with `BufferExhausted` instead of growing — memory use is capped.
///
/// ```
/// use storage_io_fs::{AsyncFsConfig, IoBufferPool};
/// let pool = IoBufferPool::new(&AsyncFsConfig::default())?;
/// let buf = pool.acquire(10_000)?; // from the 64 KiB class, length 10 000
/// assert_eq!((buf.len(), buf.capacity()), (10_000, 64 << 10));
/// drop(buf); // back to the pool
/// # Ok::<(), storage_io_fs::StorageIoError>(())
/// ```
#[derive(Clone, Debug)]
pub struct IoBufferPool {
    pool: BufferPool,
    limits: [usize; 3],
}

impl IoBufferPool {
    /// A pool of `config.buffer_pool_size` bytes (validated with the rest of the config).
    pub fn new(config: &AsyncFsConfig) -> Result<Self> {
        config.validate()?;
        let per_class = config.buffer_pool_size / POOL_CLASSES.len();
        let limits = POOL_CLASSES.map(|size| (per_class / size).max(1));
        let pool = BufferPool::new(BufferPoolConfig {
            classes: POOL_CLASSES.iter().copied().zip(limits).collect(),
            align: DEFAULT_ALIGNMENT,
        })?;
        Ok(IoBufferPool { pool, limits })
    }

    /// A buffer of length `len` from the smallest class that holds it. `BufferExhausted` when
    /// that class is at its bound; `InvalidArgument` above 1 MiB.
    pub fn acquire(&self, len: usize) -> Result<AlignedBuf> {
        self.pool.acquire(len)
    }

    /// Per class: (size in bytes, buffers handed out now, bound).
    pub fn usage(&self) -> Vec<(usize, usize, usize)> {
        POOL_CLASSES
            .iter()
            .zip(self.limits)
            .map(|(&size, limit)| (size, self.pool.outstanding(size).unwrap_or(0), limit))
            .collect()
    }
}
