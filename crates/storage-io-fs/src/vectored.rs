//! Vectored operations: several buffers in one call, placed back to back (a record's header and
//! its payload without joining them first). Each buffer is its own operation underneath, sent
//! when the method is called, in order; the backends' queues keep them in flight together.

use std::future::Future;

use storage_io_core::{IoBuf, OpKind, Result};

use crate::{AsyncFile, BufOp, OwnedBuf};

impl AsyncFile {
    /// Appends all of `bufs` back to back at the end of the file and answers the offset the
    /// first landed at. The whole run takes its place at once, so appends called on this path
    /// meanwhile (from any handle) never land between its buffers. The buffers come back in
    /// order. As with [`AsyncFile::append`], the appends are written even if the future is
    /// dropped (their place is taken when this is called); the first error is answered.
    pub fn append_vectored<B: OwnedBuf>(
        &self,
        bufs: Vec<B>,
    ) -> impl Future<Output = (Result<u64>, Vec<B>)> + Send + 'static {
        let bufs: Vec<IoBuf> = bufs.into_iter().map(OwnedBuf::into_io_buf).collect();
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        // Closed, or a length a direct-I/O file cannot take: the whole run is refused before it
        // takes a place.
        let refused = self.after_close().or_else(|| {
            bufs.iter()
                .find_map(|b| self.check_direct_write("append_vectored", b, None).err())
        });
        let base = if refused.is_some() {
            0
        } else {
            self.file.reserve_append(total)
        };
        let mut at = base;
        let ops: Vec<BufOp<u64, B>> = bufs
            .into_iter()
            .map(|buf| {
                if let Some(e) = &refused {
                    return Self::refused_now(buf, e.clone());
                }
                let offset = at;
                at += buf.len() as u64;
                self.append_at("append_vectored", buf, offset)
            })
            .collect();
        async move {
            let (result, bufs) = gather(ops).await;
            (result.map(|_| base), bufs)
        }
    }

    /// Writes all of `bufs` back to back from `offset` and answers the bytes written (their
    /// total). Each buffer is a write of its own, sent now; dropping the future cancels those a
    /// worker has not started (so a cancelled vectored write may be partly done). The buffers
    /// come back in order; the first error is answered.
    pub fn write_vectored_at<B: OwnedBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> impl Future<Output = (Result<usize>, Vec<B>)> + Send + 'static {
        gather_sum(self.transfers(OpKind::Write, bufs, offset))
    }

    /// Reads into all of `bufs` back to back from `offset` and answers the bytes read (fewer
    /// than their total only at the end of the file; each buffer comes back truncated to what
    /// it got). Cancellation as for [`AsyncFile::read_at`], per buffer.
    pub fn read_vectored_at<B: OwnedBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> impl Future<Output = (Result<usize>, Vec<B>)> + Send + 'static {
        gather_sum(self.transfers(OpKind::Read, bufs, offset))
    }

    /// One read or write per buffer, back to back from `offset`, sent now in order.
    fn transfers<B: OwnedBuf>(&self, kind: OpKind, bufs: Vec<B>, offset: u64) -> Vec<BufOp<usize, B>> {
        let call = if kind == OpKind::Read {
            "read_vectored_at"
        } else {
            "write_vectored_at"
        };
        let mut at = offset;
        bufs.into_iter()
            .map(|buf| {
                let buf = buf.into_io_buf();
                let len = buf.len() as u64;
                let op = self.transfer_io(call, kind, buf, at);
                at = at.saturating_add(len);
                op
            })
            .collect()
    }
}

/// Awaits every op in order: all the buffers, and the first error (or the last value).
async fn gather<T, B: OwnedBuf>(ops: Vec<BufOp<T, B>>) -> (Result<Option<T>>, Vec<B>) {
    let mut bufs = Vec::with_capacity(ops.len());
    let mut result = Ok(None);
    for op in ops {
        let (r, buf) = op.await;
        bufs.push(buf);
        match (r, &result) {
            (Ok(v), Ok(_)) => result = Ok(Some(v)),
            (Err(e), Ok(_)) => result = Err(e),
            (_, Err(_)) => {}
        }
    }
    (result, bufs)
}

/// [`gather`] for reads and writes: the sum of the byte counts.
async fn gather_sum<B: OwnedBuf>(ops: Vec<BufOp<usize, B>>) -> (Result<usize>, Vec<B>) {
    let mut bufs = Vec::with_capacity(ops.len());
    let mut result = Ok(0usize);
    for op in ops {
        let (r, buf) = op.await;
        bufs.push(buf);
        result = match (result, r) {
            (Ok(sum), Ok(n)) => Ok(sum + n),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
    }
    (result, bufs)
}
