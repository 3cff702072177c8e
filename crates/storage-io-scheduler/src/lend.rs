//! Zero-copy page reads: a read lands in a buffer the backend lends
//! ([`StorageIo::alloc_buf`]: registered with the kernel on io_uring), and the caller gets
//! [`Bytes`] over that very buffer; pages of one merged read, and callers that joined one read,
//! share it.
//!
//! **Invariant:** a worker lends at most `limit` of the backend's pooled buffers to answers
//! that callers still hold. Beyond that its reads land in plain aligned memory, which the
//! backend stages if it must, so a caller that keeps pages (a cache) can slow a read by a copy
//! but never leave the backend without buffers for its own ops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use storage_io_core::{AlignedBuf, DEFAULT_ALIGNMENT, IoBuf, StorageIo};

/// Counts the backend buffers a worker has lent out, and bounds them.
#[derive(Debug)]
pub(crate) struct Lender {
    out: Arc<AtomicUsize>,
    limit: usize,
    /// The backend has registered buffers to lend; otherwise `alloc_buf` is a fresh zeroed
    /// allocation, and the worker's own pool serves better.
    lends: bool,
}

/// One lent buffer, counted until it is dropped.
#[derive(Debug)]
pub(crate) struct Loan(Arc<AtomicUsize>);

impl Drop for Loan {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// A buffer for a read of `len` bytes, and its loan when it is one of the backend's own.
pub(crate) struct ReadBuf {
    pub(crate) buf: AlignedBuf,
    pub(crate) loan: Option<Loan>,
}

impl Lender {
    /// A lender of at most `limit` buffers, over a backend that has registered buffers to
    /// lend (`lends`) or not.
    pub(crate) fn new(limit: usize, lends: bool) -> Self {
        Lender {
            out: Arc::new(AtomicUsize::new(0)),
            limit,
            lends,
        }
    }

    /// Buffers lent now and not yet given back.
    pub(crate) fn out(&self) -> usize {
        self.out.load(Ordering::Acquire)
    }

    /// The count of buffers out, to read from other threads (the scheduler's stats).
    pub(crate) fn gauge(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.out)
    }

    /// The backend's own buffer while fewer than `limit` are out, else plain aligned memory
    /// (`fallback`, which may come from the worker's pool, or a fresh allocation).
    pub(crate) fn read_buf(
        &self,
        io: &mut dyn StorageIo,
        len: usize,
        fallback: impl FnOnce() -> Option<AlignedBuf>,
    ) -> storage_io_core::Result<ReadBuf> {
        if self.lends && self.out() < self.limit {
            let buf = io.alloc_buf(len)?;
            // Only pooled buffers are scarce; a fresh allocation from the backend is not a loan.
            let loan = buf.is_pooled().then(|| {
                self.out.fetch_add(1, Ordering::AcqRel);
                Loan(Arc::clone(&self.out))
            });
            return Ok(ReadBuf { buf, loan });
        }
        let buf = match fallback() {
            Some(buf) => buf,
            None => AlignedBuf::zeroed(len, DEFAULT_ALIGNMENT)?,
        };
        Ok(ReadBuf { buf, loan: None })
    }
}

/// What a shared page's [`Bytes`] owns: the buffer the read landed in, and its loan.
struct PageBuf {
    buf: IoBuf,
    _loan: Option<Loan>,
}

impl AsRef<[u8]> for PageBuf {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_slice()
    }
}

/// A copy of `data` in memory aligned for direct I/O ([`DEFAULT_ALIGNMENT`]), as [`Bytes`].
///
/// A page handed to [`DiskScheduler::schedule_write`](crate::DiskScheduler::schedule_write)
/// in such memory goes to the backend as it is; a page in ordinary heap memory is first
/// copied into an aligned buffer by the worker (direct I/O needs one). Build pages with this
/// when the scheduler runs with `direct_io`, and the copy happens once, on the caller's thread.
///
/// ```
/// let page = storage_io_scheduler::aligned_bytes(&[7u8; 4096]);
/// assert_eq!(page.as_ptr() as usize % 4096, 0);
/// assert_eq!(&page[..], &[7u8; 4096][..]);
/// ```
pub fn aligned_bytes(data: &[u8]) -> Bytes {
    match AlignedBuf::from_slice(data, DEFAULT_ALIGNMENT) {
        Ok(buf) => Bytes::from_owner(buf),
        // Out of memory for an aligned copy: an ordinary one still works (the worker aligns it).
        Err(_) => Bytes::copy_from_slice(data),
    }
}

/// The `len` bytes a read asked for, from the buffer it came back with: the `read` bytes it
/// got, then zeros (a read past the end of the file). Shares the buffer, copying nothing,
/// when the buffer can hold `len` bytes; otherwise (a backend that returned a shorter buffer)
/// copies into a new one.
pub(crate) fn freeze(buf: Option<IoBuf>, read: usize, len: usize, loan: Option<Loan>) -> Bytes {
    let Some(mut buf) = buf else {
        return Bytes::from(vec![0u8; len]);
    };
    let read = read.min(buf.len()).min(len);
    let whole = match &mut buf {
        IoBuf::Aligned(b) => b.capacity() >= len && b.set_len(len).is_ok(),
        IoBuf::Vec(v) => {
            v.resize(len, 0);
            true
        }
    };
    if !whole {
        let mut page = vec![0u8; len];
        page[..read].copy_from_slice(&buf.as_slice()[..read]);
        return Bytes::from(page);
    }
    // A lent buffer holds whatever its last use left in it: the bytes past the read are zeros.
    buf.as_mut_slice()[read..].fill(0);
    Bytes::from_owner(PageBuf { buf, _loan: loan })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_read_is_padded_with_zeros_over_stale_bytes() {
        let mut buf = AlignedBuf::zeroed(8192, DEFAULT_ALIGNMENT).unwrap();
        buf.fill(0xAB);
        buf.truncate(100);
        let page = freeze(Some(IoBuf::Aligned(buf)), 100, 8192, None);
        assert_eq!(page.len(), 8192);
        assert!(page[..100].iter().all(|&b| b == 0xAB));
        assert!(page[100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_loan_is_counted_until_the_last_share_is_dropped() {
        let lender = Lender::new(1, true);
        let out = Arc::clone(&lender.out);
        out.fetch_add(1, Ordering::AcqRel);
        let buf = AlignedBuf::zeroed(4096, DEFAULT_ALIGNMENT).unwrap();
        let page = freeze(Some(IoBuf::Aligned(buf)), 4096, 4096, Some(Loan(out)));
        let half = page.slice(2048..);
        drop(page);
        assert_eq!(lender.out(), 1, "a slice still holds the buffer");
        drop(half);
        assert_eq!(lender.out(), 0);
    }

    #[test]
    fn past_the_limit_reads_land_in_plain_memory() {
        let lender = Lender::new(0, true);
        let mut io = storage_io_testkit::memio::MemFs::new(1).backend();
        let fallback = AlignedBuf::zeroed(4096, DEFAULT_ALIGNMENT).unwrap();
        let at = fallback.as_ptr();
        let got = lender
            .read_buf(&mut io, 4096, || Some(fallback))
            .expect("a buffer");
        assert!(got.loan.is_none());
        assert_eq!(
            got.buf.as_ptr(),
            at,
            "the fallback is used, the backend is not asked"
        );
    }
}
