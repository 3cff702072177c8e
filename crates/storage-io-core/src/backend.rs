//! The [`StorageIo`] trait: the contract every backend keeps.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use crate::buf::{AlignedBuf, IoBuf};
use crate::direct::{DirectMode, OpenOptions, open_file};
use crate::error::{Result, SubmitError};
use crate::namespace::Namespace;
use crate::op::{Capabilities, IoCompletion, IoFd, IoToken};
use crate::stats::IoStats;
use crate::wake::WaitWaker;

/// Non-blocking disk I/O: submit operations, get tokens, poll completions.
///
/// One instance belongs to one thread at a time (`Send`, not `Sync`); run one per worker thread.
/// Every backend — inline sync, the thread pool, io_uring, the testkit's MemIo and FaultyIo, or
/// yours — keeps these eight rules, and `storage_io_testkit::conformance::run` checks them:
///
/// 1. **Non-blocking.** `submit_*` enqueue and return a token; [`poll_completions`] never blocks.
///    [`wait_completions`] is the one call that may block, up to its timeout.
/// 2. **Unique tokens.** Tokens come from one counter per instance, across every op kind. Each
///    accepted op yields exactly one [`IoCompletion`]. [`pending_count`] = accepted − delivered.
/// 3. **Buffers come back.** A read's buffer moves in at submit and comes back in its completion,
///    filled, on success *and* on error; a refused submit hands it back in [`SubmitError`].
///    [`submit_write`] copies the caller's bytes into backend-owned memory before returning;
///    [`submit_write_buf`] moves an owned buffer in and hands it back. Nothing is freed while
///    the kernel or a worker may still touch it.
/// 4. **Datasync is a barrier.** A datasync or fsync on fd F covers every write and append to F
///    *submitted* before it, and its completion is delivered after theirs.
/// 5. **Short I/O is finished, not reported.** A short transfer is continued for the remainder;
///    end of file on a read is a successful short count ([`IoCompletion::is_eof`]). `EAGAIN` and
///    `EINTR` are retried; a full queue is drained, never dropped.
/// 6. **Ring-0 rules on the hot path.** After warm-up, `submit_*` and `poll_completions` do not
///    allocate, take no lock another thread holds for long, and do not panic.
/// 7. **Errors keep their errno** inside one [`StorageIoError`](crate::StorageIoError). Bad input — an unknown fd,
///    misaligned direct I/O, an oversized transfer — is an error at submit, never a panic.
/// 8. **Teardown is safe.** [`deregister_fd`] and `Drop` wait for that fd's (all) in-flight ops
///    before closing fds or freeing memory; a stale [`IoFd`] is refused, never aliased.
///
/// Names and directories (creating, listing, renaming, removing, directory sync, locks) are the
/// supertrait [`Namespace`], whose methods all default to the real file system: a backend of
/// real files adds an empty `impl Namespace for MyIo {}`.
///
/// Appends: each file has an append cursor, starting at its length when registered. An append
/// takes the next `len` bytes at the cursor at submit time (so appends in flight never overlap)
/// and its completion says where it landed. Writes that end past the cursor move it too.
///
/// ```
/// use storage_io_core::{IoCompletion, StorageIo};
///
/// /// Writes `data` at offset 0, makes it durable, reads it back: works on any backend.
/// fn roundtrip(io: &mut dyn StorageIo, file: std::fs::File, data: &[u8]) -> Vec<u8> {
///     let fd = io.register_fd(file).unwrap();
///     io.submit_write(fd, data, 0).unwrap();
///     io.submit_datasync(fd).unwrap();
///     io.submit_read(fd, vec![0; data.len()].into(), 0).unwrap();
///     let mut done: Vec<IoCompletion> = Vec::new();
///     io.wait_completions(&mut done, 3, None).unwrap();
///     io.deregister_fd(fd).unwrap();
///     let read = done.into_iter().find(|c| c.op == storage_io_core::OpKind::Read).unwrap();
///     read.buf.unwrap().into_vec()
/// }
/// # let _ = roundtrip;
/// ```
///
/// [`poll_completions`]: StorageIo::poll_completions
/// [`wait_completions`]: StorageIo::wait_completions
/// [`pending_count`]: StorageIo::pending_count
/// [`submit_write`]: StorageIo::submit_write
/// [`submit_write_buf`]: StorageIo::submit_write_buf
/// [`deregister_fd`]: StorageIo::deregister_fd
pub trait StorageIo: Namespace {
    /// What this backend is and can do.
    fn capabilities(&self) -> Capabilities;

    /// The backend's short name (`sync`, `thread_pool`, `io_uring`, …).
    fn name(&self) -> &'static str {
        self.capabilities().name
    }

    /// Takes ownership of an open file and returns its handle. If the file was opened with
    /// direct I/O, every later request on it must be aligned (see [`crate::direct_alignment`]).
    fn register_fd(&mut self, file: File) -> Result<IoFd>;

    /// Waits for every in-flight op on `fd` (their completions stay queued for the next poll),
    /// then releases the handle and closes the file. Later use of `fd` is `BadFd`.
    fn deregister_fd(&mut self, fd: IoFd) -> Result<()>;

    /// Opens `path` and registers it. The default opens a real file (falling back from direct to
    /// buffered I/O where the file system refuses it, with a warning); in-memory backends
    /// override this to open their own files.
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        let opened = open_file(path, options)?;
        self.register_fd(opened.file)
    }

    /// Opens `path` and registers it like [`open_file`](StorageIo::open_file), and also says
    /// which I/O mode is in effect and, for a file the OS knows, gives a second handle on it
    /// (for what the backend does not do, such as `fallocate`). The default opens a real file;
    /// a backend that overrides `open_file` overrides this too, so that components opening
    /// through it (the async file API) work on it, in-memory backends included.
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        let opened = open_file(path, options)?;
        let file = opened.file.try_clone().ok();
        let fd = self.register_fd(opened.file)?;
        Ok(OpenedFd {
            fd,
            mode: opened.mode,
            file,
        })
    }

    /// The file's current length in bytes, including writes completed but not yet synced.
    fn file_len(&mut self, fd: IoFd) -> Result<u64>;

    /// An aligned buffer of `len` bytes (capacity at least `len`) that suits this backend best.
    ///
    /// A backend with memory registered with the kernel lends one of those buffers when one is
    /// free and `len` fits: reads into it and writes from it then skip the copy through the
    /// backend's own registered memory. The io_uring backend does this; where none is free, and
    /// on every other backend (this default), it is a fresh zeroed allocation at
    /// [`DEFAULT_ALIGNMENT`](crate::DEFAULT_ALIGNMENT). A lent buffer holds whatever its last
    /// use left in it, goes back on drop, and stays valid after the backend is gone; holding
    /// many for long leaves the backend fewer for its own staging, never fewer ops.
    ///
    /// ```
    /// use storage_io_core::StorageIo;
    ///
    /// fn read_first_page(io: &mut dyn StorageIo, fd: storage_io_core::IoFd) -> storage_io_core::Result<u8> {
    ///     let buf = io.alloc_buf(4096)?;
    ///     io.submit_read(fd, buf.into(), 0).map_err(|e| e.error)?;
    ///     let mut done = Vec::new();
    ///     io.wait_completions(&mut done, 1, None)?;
    ///     let page = done.pop().and_then(|c| c.buf).expect("a read hands its buffer back");
    ///     Ok(page.first().copied().unwrap_or(0))
    /// }
    /// # let _ = read_first_page;
    /// ```
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        AlignedBuf::zeroed(len, crate::DEFAULT_ALIGNMENT)
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`; the buffer comes back in the completion,
    /// truncated to the bytes read.
    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>>;

    /// Writes a copy of `data` at `offset`; `data` may be reused as soon as this returns.
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken>;

    /// Writes the bytes of an owned buffer at `offset` without copying; the buffer comes back
    /// in the completion.
    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>>;

    /// Writes `data` at `offset`, keeping `data` itself (a reference count, not a copy) until
    /// the write completes where the backend can: for shared, immutable pages such as a
    /// scheduler's, which stay alive anyway. Bytes at an address the file's direct I/O cannot
    /// take are copied into aligned memory first, never refused for their address (offset and
    /// length must still suit the file). The io_uring backend writes from `data` in place; the
    /// default hands it to [`submit_write`](StorageIo::submit_write).
    ///
    /// ```
    /// use storage_io_core::StorageIo;
    ///
    /// fn write_page(io: &mut dyn StorageIo, fd: storage_io_core::IoFd, page: bytes::Bytes) -> storage_io_core::Result<()> {
    ///     io.submit_write_bytes(fd, page, 0)?;
    ///     let mut done = Vec::new();
    ///     io.wait_completions(&mut done, 1, None)?;
    ///     done.pop().map_or(Ok(0), |c| c.result).map(drop)
    /// }
    /// # let _ = write_page;
    /// ```
    fn submit_write_bytes(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        if (data.as_ptr() as usize).is_multiple_of(crate::DEFAULT_ALIGNMENT) {
            return self.submit_write(fd, &data, offset);
        }
        // Not every backend copies a write into aligned memory itself (the inline one writes
        // from the caller's memory): an unaligned address gets an aligned copy here.
        let copy = AlignedBuf::from_slice(&data, crate::DEFAULT_ALIGNMENT)?;
        self.submit_write_buf(fd, copy.into(), offset)
            .map_err(|e| e.error)
    }

    /// Writes a copy of `data` at the file's append cursor (see the trait docs).
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken>;

    /// `fdatasync` on `fd`, ordered after every write to `fd` submitted before it.
    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken>;

    /// `fsync` on `fd`, ordered after every write to `fd` submitted before it.
    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken>;

    /// Pushes queued submissions to the kernel or the workers; returns how many were pushed.
    /// Backends that start every op at submit return 0 (the default).
    fn flush(&mut self) -> Result<usize> {
        Ok(0)
    }

    /// Moves every completion that is ready into `out` without blocking; returns how many.
    /// Reuse `out` between calls so that polling never allocates.
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize;

    /// Blocks until at least `min` completions are in `out` (counting only those added by this
    /// call), or `timeout` passes, or nothing is pending; returns how many were added.
    /// `min` larger than [`pending_count`](StorageIo::pending_count) waits for all pending ops.
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize>;

    /// A handle that lets another thread interrupt a blocked
    /// [`wait_completions`](StorageIo::wait_completions) (see [`WaitWaker`]): after
    /// [`WaitWaker::wake`], the wait in progress — or, if none is, the next one — returns early,
    /// possibly with fewer completions than asked for. A thread that serves a request channel
    /// and a backend can then block without a timeout: producers send, then wake.
    ///
    /// `None` (the default) means the backend cannot be interrupted; wait with a timeout.
    fn wait_waker(&mut self) -> Option<WaitWaker> {
        None
    }

    /// Ops accepted and not yet delivered by a poll.
    fn pending_count(&self) -> usize;

    /// Counters, bytes, errors, in-flight gauge and latency histogram of this instance.
    fn stats(&self) -> &IoStats;
}

/// A file opened through a backend by [`StorageIo::open_file_with_mode`].
#[derive(Debug)]
pub struct OpenedFd {
    /// The backend's handle.
    pub fd: IoFd,
    /// Whether direct I/O is in effect (and why not, if it was asked for).
    pub mode: DirectMode,
    /// A second OS handle on the same file, when there is an OS file (`None` on in-memory
    /// backends).
    pub file: Option<File>,
}

impl<T: StorageIo + ?Sized> StorageIo for Box<T> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        (**self).register_fd(file)
    }
    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        (**self).deregister_fd(fd)
    }
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        (**self).open_file(path, options)
    }
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        (**self).open_file_with_mode(path, options)
    }
    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        (**self).file_len(fd)
    }
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        (**self).alloc_buf(len)
    }
    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        (**self).submit_read(fd, buf, offset)
    }
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        (**self).submit_write(fd, data, offset)
    }
    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        (**self).submit_write_buf(fd, buf, offset)
    }
    fn submit_write_bytes(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        (**self).submit_write_bytes(fd, data, offset)
    }
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        (**self).submit_append(fd, data)
    }
    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        (**self).submit_datasync(fd)
    }
    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        (**self).submit_fsync(fd)
    }
    fn flush(&mut self) -> Result<usize> {
        (**self).flush()
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        (**self).poll_completions(out)
    }
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        (**self).wait_completions(out, min, timeout)
    }
    fn wait_waker(&mut self) -> Option<WaitWaker> {
        (**self).wait_waker()
    }
    fn pending_count(&self) -> usize {
        (**self).pending_count()
    }
    fn stats(&self) -> &IoStats {
        (**self).stats()
    }
}

/// Builds one backend per worker; what the scheduler, the WAL and the async file API take, so
/// that they run on any backend (`Arc<dyn Fn(usize) -> Result<Box<dyn StorageIo>>>`).
pub type BackendFactory = std::sync::Arc<dyn Fn(usize) -> Result<Box<dyn StorageIo>> + Send + Sync>;
