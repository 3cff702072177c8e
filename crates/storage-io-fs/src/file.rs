//! [`AsyncFile`]: one open file of an [`AsyncFileSystem`], its operations, and its close.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use storage_io_core::{AlignedBuf, DirectMode, InvalidArgument, IoBuf, IoFd, OpKind, Result, StorageIoError};

#[cfg(caller_rings)]
use crate::LocalRings;
#[cfg(caller_rings)]
use crate::local::{self, LocalOp, LocalReply};
use crate::order::{self, FileShared, GroupSync};
use crate::slot::{self, slot};
use crate::worker::Request;
#[cfg(doc)]
use crate::{AsyncFileSystem, IoBufferPool};
use crate::{BufOp, LocalFile, Op, OwnedBuf, Shared, parent_dir, worker_gone};

/// A file opened through an [`AsyncFileSystem`]. Share it between tasks with `Arc`; every method
/// takes `&self` and many operations may be in flight at once.
///
/// Each method sends its request **when it is called** and returns a future ([`BufOp`] or
/// [`Op`]) that waits for the answer. So operations on a file take effect in the order the calls
/// were made, whatever order their futures are polled in: start a batch of appends, then
/// `sync_data`, then await them all, and the sync covers the appends. The futures borrow
/// nothing, so they can be moved into spawned tasks.
///
/// Dropping the file closes it after the operations already requested (use
/// [`AsyncFile::close`] to learn the result).
pub struct AsyncFile {
    pub(crate) fs: Arc<Shared>,
    pub(crate) worker: usize,
    pub(crate) fd: IoFd,
    pub(crate) mode: DirectMode,
    pub(crate) path: PathBuf,
    /// What every handle on this path shares: append cursor, writes in flight, group sync.
    pub(crate) file: Arc<FileShared>,
    /// `set_len` can work on this handle (an OS file opened for writing): only then does it
    /// move the append cursor.
    pub(crate) resizable: bool,
    /// This handle's OS file for the rings on the callers' threads (none without them, or for
    /// files of in-memory backends).
    #[cfg_attr(
        not(caller_rings),
        allow(dead_code, reason = "always None without caller rings")
    )]
    pub(crate) local: Option<Arc<LocalFile>>,
    /// `close` was called: later operations fail with `BadFd`, and dropping sends no second close.
    pub(crate) closed: AtomicBool,
}

impl AsyncFile {
    /// The ring of the calling thread when this op can be submitted right here.
    #[cfg(caller_rings)]
    fn ring(&self) -> Option<(Arc<local::LocalRing>, &Arc<LocalFile>)> {
        let file = self.local.as_ref()?;
        Some((self.fs.local.as_ref()?.current()?, file))
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`. The buffer comes back truncated to the
    /// bytes read (fewer than asked only at end of file), on success and on error.
    pub fn read_at<B: OwnedBuf>(&self, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer("read_at", OpKind::Read, buf, offset)
    }

    /// Writes all of `buf` at `offset` without copying it; the buffer comes back with the result.
    /// A write past the end moves the append cursor past it.
    ///
    /// On a direct-I/O file, `offset` and the length must be multiples of the file's alignment
    /// ([`DirectMode::Direct`]; otherwise the write is refused with an `InvalidArgument` naming
    /// the call, the path and your buffer's address); a buffer whose *address* is not (a `Vec`,
    /// `Bytes`) is copied into aligned memory first rather than refused, and the copy is counted
    /// ([`AsyncIoMetrics::staged_bytes`](crate::AsyncIoMetrics::staged_bytes)). Use [`IoBufferPool`] buffers to write without it.
    pub fn write_at<B: OwnedBuf>(&self, buf: B, offset: u64) -> BufOp<usize, B> {
        self.transfer("write_at", OpKind::Write, buf, offset)
    }

    /// The error of an operation called after [`AsyncFile::close`].
    pub(crate) fn after_close(&self) -> Option<StorageIoError> {
        self.closed
            .load(Ordering::Acquire)
            .then_some(StorageIoError::BadFd { fd: self.fd })
    }

    /// A buffer operation answered at once with `error` (called after close).
    pub(crate) fn refused_now<T, B: OwnedBuf>(buf: IoBuf, error: StorageIoError) -> BufOp<T, B> {
        let (reply, waiting) = slot();
        let _ = reply.complete((Err(error), buf));
        BufOp::sent(waiting)
    }

    fn transfer<B: OwnedBuf>(
        &self,
        call: &'static str,
        kind: OpKind,
        buf: B,
        offset: u64,
    ) -> BufOp<usize, B> {
        self.transfer_io(call, kind, buf.into_io_buf(), offset)
    }

    /// [`AsyncFile::transfer`] of a buffer already in the backends' form; `call` is the method
    /// the caller called (for errors).
    pub(crate) fn transfer_io<B: OwnedBuf>(
        &self,
        call: &'static str,
        kind: OpKind,
        buf: IoBuf,
        offset: u64,
    ) -> BufOp<usize, B> {
        if let Some(e) = self.after_close() {
            return Self::refused_now(buf, e);
        }
        if kind != OpKind::Write {
            return self.send_transfer(kind, buf, offset);
        }
        let (buf, staged) = match self.stage(call, buf, Some(offset)) {
            Ok(staged) => staged,
            Err((e, buf)) => return Self::refused_now(buf, e),
        };
        let mut op = self.send_transfer(kind, buf, offset);
        op.staged = staged;
        op
    }

    /// Whether a write of `buf` at `offset` (`None`: not known yet, an append's) can go to this
    /// file: on a direct-I/O file, the offset and the length must be multiples of the
    /// alignment. The error names the call, the path and the caller's buffer address.
    pub(crate) fn check_direct_write(
        &self,
        call: &'static str,
        buf: &IoBuf,
        offset: Option<u64>,
    ) -> Result<()> {
        let DirectMode::Direct { align } = self.mode else {
            return Ok(());
        };
        let offset_ok = offset.is_none_or(|o| o.is_multiple_of(align as u64));
        if offset_ok && buf.len().is_multiple_of(align) {
            return Ok(());
        }
        let at = offset.map_or_else(|| "the end".to_owned(), |o| format!("offset {o}"));
        Err(StorageIoError::InvalidArgument(InvalidArgument::Message(
            format!(
                "{call} {}: direct I/O needs the offset and length aligned to {align} bytes \
             (at {at}, length {}, your buffer at {:#x}); round the request",
                self.path.display(),
                buf.len(),
                buf.as_ptr() as usize
            ),
        )))
    }

    /// A write (`write_at`, `append`, their vectored forms) to a direct-I/O file: refused if
    /// its offset or length is off the alignment ([`AsyncFile::check_direct_write`]; nothing is
    /// staged or counted then), and from memory off the alignment it goes out from an aligned
    /// copy: the copy, and the caller's buffer to give back. Anything else goes as it is.
    #[allow(clippy::type_complexity)] // the buffer comes back with the error
    pub(crate) fn stage(
        &self,
        call: &'static str,
        buf: IoBuf,
        offset: Option<u64>,
    ) -> std::result::Result<(IoBuf, Option<IoBuf>), (StorageIoError, IoBuf)> {
        let DirectMode::Direct { align } = self.mode else {
            return Ok((buf, None));
        };
        if let Err(e) = self.check_direct_write(call, &buf, offset) {
            return Err((e, buf));
        }
        if (buf.as_ptr() as usize).is_multiple_of(align) {
            return Ok((buf, None));
        }
        match AlignedBuf::from_slice(&buf, align) {
            Ok(copy) => {
                self.fs.staged_writes.fetch_add(1, Ordering::Relaxed);
                self.fs
                    .staged_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                debug_assert!(
                    (copy.as_ptr() as usize).is_multiple_of(align),
                    "a staged copy is aligned"
                );
                Ok((IoBuf::Aligned(copy), Some(buf)))
            }
            Err(e) => Err((e, buf)),
        }
    }

    fn send_transfer<B: OwnedBuf>(&self, kind: OpKind, buf: IoBuf, offset: u64) -> BufOp<usize, B> {
        let (reply, waiting) = slot();
        let ticket = (kind == OpKind::Write).then(|| {
            self.file.wrote_to(offset.saturating_add(buf.len() as u64));
            self.file.begin_write()
        });
        // A write called after a set_len that has not run yet waits for it (through the worker).
        if let Some(seq) = ticket
            .as_ref()
            .filter(|t| self.file.behind_set_len(t))
            .map(|t| t.seq())
        {
            let request = Request::Transfer {
                kind,
                fd: self.fd,
                buf,
                offset,
                at: Instant::now(),
                ticket,
                reply,
            };
            self.send_behind_set_len(seq, request);
            return BufOp::sent(waiting);
        }
        #[cfg(caller_rings)]
        if let Some((ring, file)) = self.ring() {
            let op = LocalOp {
                kind,
                file: Arc::clone(file),
                buf: Some(buf),
                offset,
                at: Instant::now(),
                ticket,
                reply: LocalReply::Transfer(reply),
            };
            ring.submit(op, true);
            return BufOp::sent(waiting);
        }
        let request = Request::Transfer {
            kind,
            fd: self.fd,
            buf,
            offset,
            at: Instant::now(),
            ticket,
            reply,
        };
        self.fs.send(self.worker, request);
        BufOp::sent(waiting)
    }

    /// Writes all of `buf` at the end of the file and answers the offset it landed at. Appends
    /// in flight at once never overlap: each takes its place when it is called, in call order.
    /// Every handle on this file opened through this file system shares one append cursor (by
    /// the file's identity, whatever name it was opened by; see
    /// [`AsyncFileSystem::open_append`], also for other processes), so appends through two
    /// handles never overwrite each other.
    ///
    /// An append is written even if its future is dropped: its place in the file is taken when
    /// it is called, and skipping it would leave a hole before the appends after it.
    ///
    /// On a direct-I/O file, a buffer off the alignment is staged as for [`AsyncFile::write_at`],
    /// and a length (or an end of file) off it is refused.
    pub fn append<B: OwnedBuf>(&self, buf: B) -> BufOp<u64, B> {
        let buf = buf.into_io_buf();
        if let Some(e) = self.after_close() {
            return Self::refused_now(buf, e);
        }
        // A length the file cannot take is refused before it takes a place.
        if let Err(e) = self.check_direct_write("append", &buf, None) {
            return Self::refused_now(buf, e);
        }
        let offset = self.file.reserve_append(buf.len() as u64);
        self.append_at("append", buf, offset)
    }

    /// Sends an append of `buf` at `offset`, a place already taken from the path's cursor,
    /// staged on a direct-I/O file as a write is ([`AsyncFile::stage`]).
    pub(crate) fn append_at<B: OwnedBuf>(
        &self,
        call: &'static str,
        buf: IoBuf,
        offset: u64,
    ) -> BufOp<u64, B> {
        let (buf, staged) = match self.stage(call, buf, Some(offset)) {
            Ok(staged) => staged,
            Err((e, buf)) => return Self::refused_now(buf, e),
        };
        let mut op = self.send_append(buf, offset);
        op.staged = staged;
        op
    }

    /// Sends an append of `buf` at `offset`, a place already taken from the path's cursor.
    pub(crate) fn send_append<B: OwnedBuf>(&self, buf: IoBuf, offset: u64) -> BufOp<u64, B> {
        let (reply, waiting) = slot();
        let ticket = self.file.begin_write();
        // An append called after a set_len that has not run yet is written after it (its place,
        // after the new length, is taken already), through the worker.
        if self.file.behind_set_len(&ticket) {
            let seq = ticket.seq();
            let request = Request::Append {
                fd: self.fd,
                buf,
                offset,
                at: Instant::now(),
                ticket,
                reply,
            };
            self.send_behind_set_len(seq, request);
            return BufOp::sent(waiting);
        }
        #[cfg(caller_rings)]
        if let Some((ring, file)) = self.ring() {
            let op = LocalOp {
                kind: OpKind::Append,
                file: Arc::clone(file),
                buf: Some(buf),
                offset,
                at: Instant::now(),
                ticket: Some(ticket),
                reply: LocalReply::Append(offset, reply),
            };
            ring.submit(op, true);
            return BufOp::sent(waiting);
        }
        let request = Request::Append {
            fd: self.fd,
            buf,
            offset,
            at: Instant::now(),
            ticket,
            reply,
        };
        self.fs.send(self.worker, request);
        BufOp::sent(waiting)
    }

    /// Sends `request` (a write numbered `seq`) to the worker once the set_len called before it
    /// has run: from the thread that completes it, or now if it is done already.
    fn send_behind_set_len(&self, seq: u64, request: Request) {
        let (fs, worker) = (Arc::clone(&self.fs), self.worker);
        let send: order::AfterWrites = Box::new(move || fs.send(worker, request));
        if let Some(send) = self.file.defer_behind_set_len(seq, send) {
            send();
        }
    }

    /// `fdatasync`: every write and append called on this file before this call is durable
    /// when it returns `Ok`.
    ///
    /// The system call starts once those writes have completed, and writes called after it
    /// are not held back. Concurrent syncs of one file share one fdatasync: a sync that one in
    /// flight already covers rides on it, and the syncs that arrive while one runs share the
    /// next (so 256 tasks syncing at once cost two fdatasyncs, not 256). The first sync of a
    /// file opened with `create` also syncs its directory, so that the name is durable too.
    pub fn sync_data(&self) -> Op<()> {
        self.sync(false)
    }

    /// `fsync`: as [`AsyncFile::sync_data`], plus all metadata.
    pub fn sync_all(&self) -> Op<()> {
        self.sync(true)
    }

    fn sync(&self, full: bool) -> Op<()> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let fs = Arc::clone(&self.fs);
        let (worker, fd) = (self.worker, self.fd);
        let shared = Arc::clone(&self.file);
        let path = self.path.clone();
        #[cfg(caller_rings)]
        let local = self.local.clone();
        let start: order::StartSync = Box::new(move |full| {
            let kind = if full { OpKind::Fsync } else { OpKind::Datasync };
            let (reply, waiting) = slot();
            // The directory of a new file is synced first, by the worker: until that succeeded,
            // syncs go there.
            let dir = shared
                .dir_unsynced()
                .then(|| (parent_dir(&path), Arc::clone(&shared)));
            #[cfg(caller_rings)]
            if dir.is_none()
                && let Some(file) = &local
                && let Some(ring) = fs.local.as_ref().and_then(LocalRings::current)
            {
                let op = LocalOp {
                    kind,
                    file: Arc::clone(file),
                    buf: None,
                    offset: 0,
                    at: Instant::now(),
                    ticket: None,
                    reply: LocalReply::Sync(reply),
                };
                // Called under the path's order lock: answer nothing else from here.
                ring.submit(op, false);
                return waiting;
            }
            let request = Request::Sync {
                fd,
                kind,
                dir,
                at: Instant::now(),
                reply,
            };
            fs.send(worker, request);
            waiting
        });
        Op::boxed(GroupSync::new(&self.file, full, start))
    }

    /// The file's length in bytes, after every write and append called before this call has
    /// completed.
    pub fn size(&self) -> Op<u64> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let fence = self.file.fence();
        let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
        Op::boxed(async move {
            fence.await;
            let (reply, waiting) = slot();
            fs.send(worker, Request::Size { fd, reply });
            waiting.await.unwrap_or_else(|| Err(worker_gone()))
        })
    }

    /// Reserves disk space for the first `len` bytes (`fallocate` with `FALLOC_FL_KEEP_SIZE`):
    /// the size and the append position do not change, and writes inside the reserved range
    /// cannot fail for lack of space. `ENOSPC` if the space is not there; `EOPNOTSUPP` on file
    /// systems without fallocate; Linux only.
    pub fn allocate(&self, len: u64) -> Op<()> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let fence = self.file.fence();
        let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
        Op::boxed(async move {
            fence.await;
            let (reply, waiting) = slot();
            fs.send(worker, Request::Allocate { fd, len, reply });
            waiting.await.unwrap_or_else(|| Err(worker_gone()))
        })
    }

    /// Closes the file after every operation called before has completed, and says whether
    /// closing went well.
    ///
    /// Takes `&self`, so a file shared through an `Arc` can be closed by any of its holders
    /// without unwrapping it: operations called on it after the close fail (`BadFd`; the handle
    /// is never reused for another file), and dropping it later sends no second close. Only the
    /// first call closes and answers the result; a later call answers `Ok` at once. Dropping the
    /// future does not stop the close.
    pub fn close(&self) -> Op<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Op::boxed(std::future::ready(Ok(())));
        }
        let fence = self.file.fence();
        let guard = CloseOnDrop {
            fs: Some(Arc::clone(&self.fs)),
            worker: self.worker,
            fd: self.fd,
        };
        Op::boxed(async move {
            fence.await;
            let (reply, waiting) = slot();
            guard.send(Some(reply));
            waiting.await.unwrap_or_else(|| Err(worker_gone()))
        })
    }

    /// Direct or buffered I/O, and why (direct I/O falls back to buffered where refused).
    pub fn mode(&self) -> &DirectMode {
        &self.mode
    }

    /// True when direct I/O is in effect: offsets, lengths and read buffers must then be
    /// aligned to 4096 bytes (use [`IoBufferPool`] or `AlignedBuf`); a write from memory off the
    /// alignment is staged through an aligned copy (see [`AsyncFile::write_at`]).
    pub fn is_direct(&self) -> bool {
        self.mode.is_direct()
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for AsyncFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncFile")
            .field("path", &self.path)
            .field("worker", &self.worker)
            .field("fd", &self.fd)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Sends a file's close when dropped, unless `send` sent it first: a `close` future dropped
/// while it waits for the writes before it still closes the file.
struct CloseOnDrop {
    /// Taken by `send`.
    fs: Option<Arc<Shared>>,
    worker: usize,
    fd: IoFd,
}

impl CloseOnDrop {
    fn send(mut self, reply: Option<slot::Completer<Result<()>>>) {
        if let Some(fs) = self.fs.take() {
            fs.send(self.worker, Request::Close { fd: self.fd, reply });
        }
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            fs.send(
                self.worker,
                Request::Close {
                    fd: self.fd,
                    reply: None,
                },
            );
        }
    }
}

impl Drop for AsyncFile {
    /// Closes the file once the writes called on its path before the drop have completed: the
    /// close releases the append lock, and another appender must not get it while an append of
    /// this file (on a caller's ring) can still land.
    fn drop(&mut self) {
        if !*self.closed.get_mut() {
            let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
            self.file.after_writes(Box::new(move || {
                fs.send(worker, Request::Close { fd, reply: None })
            }));
        }
    }
}
