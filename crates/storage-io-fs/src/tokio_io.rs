//! [`TokioFile`]: tokio's `AsyncRead`, `AsyncWrite` and `AsyncSeek` over an [`AsyncFile`], so
//! codecs, `BufReader`/`BufWriter` and `tokio::io::copy` work on the async file API (feature
//! `tokio`).
//!
//! A cursor over positional I/O, as `tokio::fs::File` is: a read reads at the cursor and moves
//! it; a write copies the caller's bytes into a buffer of its own, sends a positional write at
//! the cursor and answers at once, moving the cursor (at most one write is in flight; the next
//! write, a read, a seek's completion or `poll_flush` wait for it, and a failed write is
//! reported by the next of those calls). `poll_flush` waits for the write in flight; it does
//! not sync: call [`AsyncFile::sync_data`] for durability. `poll_shutdown` is `poll_flush`
//! (the file stays open for its other handles; it closes with its last handle).
//!
//! The file is shared (`Arc<AsyncFile>`), so one file can have a `TokioFile` per task, each
//! with its own cursor. On a file opened with direct I/O the usual alignment rules apply to the
//! cursor and to the lengths asked for.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::{AsyncFile, BufOp, Op};

/// The most bytes one read or write of a [`TokioFile`] moves (larger asks are split, as
/// `tokio::fs::File` does): 2 MiB.
pub const TOKIO_FILE_MAX_BUF: usize = 2 << 20;

/// An [`AsyncFile`] with a cursor, implementing tokio's `AsyncRead`, `AsyncWrite` and
/// `AsyncSeek` (see the module docs for how writes are answered).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendFactory, StorageIo, TokioFile};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// let dir = tempfile::tempdir()?;
/// // The façade's `storage_io::open_async_fs` picks io_uring or the thread pool; here, the pool.
/// let factory: BackendFactory = Arc::new(|_| {
///     Ok(Box::new(storage_io_sync::ThreadPoolStorageIo::new(&Default::default())?) as Box<dyn StorageIo>)
/// });
/// let fs = AsyncFileSystem::with_factory(&AsyncFsConfig::default(), factory)?;
/// let file = Arc::new(fs.create(dir.path().join("lines.txt")).await?);
/// let mut writer = TokioFile::new(Arc::clone(&file));
/// writer.write_all(b"one\ntwo\n").await?;
/// writer.flush().await?;
/// let mut lines = BufReader::new(TokioFile::new(file)).lines();
/// assert_eq!(lines.next_line().await?.as_deref(), Some("one"));
/// assert_eq!(lines.next_line().await?.as_deref(), Some("two"));
/// # Ok(()) }
/// ```
pub struct TokioFile {
    file: Arc<AsyncFile>,
    pos: u64,
    /// The read in flight: its future and the offset it reads at.
    read: Option<(BufOp<usize, Vec<u8>>, u64)>,
    /// The write in flight (already answered to the caller).
    write: Option<BufOp<usize, Vec<u8>>>,
    /// A seek from the end waiting for the file's size: the future and the offset from the end.
    seek: Option<(Op<u64>, i64)>,
    /// A buffer back from an op, for the next one.
    spare: Vec<u8>,
}

impl std::fmt::Debug for TokioFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioFile")
            .field("path", &self.file.path())
            .field("pos", &self.pos)
            .field("reading", &self.read.is_some())
            .field("writing", &self.write.is_some())
            .finish()
    }
}

impl TokioFile {
    /// A cursor at offset 0 over `file`.
    pub fn new(file: Arc<AsyncFile>) -> Self {
        TokioFile::at(file, 0)
    }

    /// A cursor at `pos` over `file`.
    pub fn at(file: Arc<AsyncFile>, pos: u64) -> Self {
        TokioFile {
            file,
            pos,
            read: None,
            write: None,
            seek: None,
            spare: Vec::new(),
        }
    }

    /// The file underneath.
    pub fn file(&self) -> &Arc<AsyncFile> {
        &self.file
    }

    /// The cursor: where the next read or write goes.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// A buffer of `len` bytes, reusing the last one back from an op.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.resize(len, 0);
        buf
    }

    /// Waits for the write in flight, if any; its error, if it failed.
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.write.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let (result, buf) = ready!(Pin::new(op).poll(cx));
        self.write = None;
        let expected = buf.len();
        self.spare = buf;
        match result {
            Ok(n) if n == expected => Poll::Ready(Ok(())),
            Ok(n) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write_at on {} wrote {n} of {expected} bytes",
                    self.file.path().display()
                ),
            ))),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncRead for TokioFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_done(cx))?;
        if this.read.is_none() {
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let buf = this.buffer(out.remaining().min(TOKIO_FILE_MAX_BUF));
            this.read = Some((this.file.read_at(buf, this.pos), this.pos));
        }
        let Some((op, at)) = this.read.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let at = *at;
        let (result, buf) = ready!(Pin::new(op).poll(cx));
        this.read = None;
        let n = result?;
        // The caller may ask for less than when the read began: only what fits is consumed.
        let taken = n.min(out.remaining());
        out.put_slice(&buf[..taken]);
        this.pos = at + taken as u64;
        this.spare = buf;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TokioFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_write_done(cx))?;
        // A read begun at the old cursor is stale once the file changes under it.
        this.read = None;
        let len = data.len().min(TOKIO_FILE_MAX_BUF);
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut buf = this.buffer(0);
        buf.extend_from_slice(&data[..len]);
        this.write = Some(this.file.write_at(buf, this.pos));
        this.pos += len as u64;
        Poll::Ready(Ok(len))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_done(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_done(cx)
    }
}

impl AsyncSeek for TokioFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        if self.seek.is_some() {
            return Err(io::Error::other(
                "start_seek while another seek is in progress; call poll_complete first",
            ));
        }
        // A read in flight was for the old position: its answer is dropped.
        self.read = None;
        let invalid = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        };
        match position {
            SeekFrom::Start(to) => self.pos = to,
            SeekFrom::Current(by) => self.pos = self.pos.checked_add_signed(by).ok_or_else(invalid)?,
            SeekFrom::End(by) => {
                // The size after every write requested before (the one in flight included).
                let size = self.file.size();
                self.seek = Some((size, by));
            }
        }
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = &mut *self;
        ready!(this.poll_write_done(cx))?;
        if let Some((op, by)) = this.seek.as_mut() {
            let by = *by;
            let size = ready!(Pin::new(op).poll(cx));
            this.seek = None;
            this.pos = size?.checked_add_signed(by).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "seek to a negative or overflowing position",
                )
            })?;
        }
        Poll::Ready(Ok(this.pos))
    }
}
