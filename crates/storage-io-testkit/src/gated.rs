//! [`GatedIo`]: holds completions back until the test opens a [`Gate`], so a test can keep
//! operations in flight for as long as it needs — to count how many reads a single-flight guard
//! let through, or to drop a future or shut a component down while its I/O is still pending —
//! without sleeps.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use storage_io_core::{
    AlignedBuf, Capabilities, IoBuf, IoCompletion, IoFd, IoStats, IoToken, OpKind, OpenOptions, OpenedFd,
    Result, StorageIo, SubmitError, WaitWaker,
};

/// A switch shared between a test and its [`GatedIo`] backends. It starts closed. It also
/// counts the ops of the gated kinds submitted through those backends, so a test can see when
/// a request has reached a backend without waiting for its completion.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: AtomicBool,
    submitted: AtomicU64,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate::default()
    }

    /// Lets held completions (and all later ones) through at the next poll.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::Release);
    }

    /// Holds completions of the gated kinds again from the next poll on.
    pub fn close(&self) {
        self.0.open.store(false, Ordering::Release);
    }

    /// True when completions pass.
    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }

    /// Ops of the gated kinds that the backends on this gate have accepted so far (whether the
    /// gate was open or not).
    pub fn submitted(&self) -> u64 {
        self.0.submitted.load(Ordering::Acquire)
    }
}

/// Wraps a backend and, while its [`Gate`] is closed, keeps the completions of the chosen op
/// kinds instead of delivering them. The ops themselves run on the inner backend as usual; only
/// the news of their completion waits. Held ops count as pending.
///
/// ```
/// use storage_io_core::{OpKind, OpenOptions, StorageIo};
/// use storage_io_testkit::gated::{Gate, GatedIo};
/// use storage_io_testkit::memio::MemFs;
///
/// let gate = Gate::new();
/// let mut io = GatedIo::new(MemFs::new(1).backend(), gate.clone(), &[OpKind::Read]);
/// let fd = io.open_file("/f".as_ref(), &OpenOptions::create()).unwrap();
/// io.submit_read(fd, vec![0; 8].into(), 0).unwrap();
/// let mut done = Vec::new();
/// assert_eq!(io.poll_completions(&mut done), 0); // held
/// assert_eq!(gate.submitted(), 1); // but it did reach the backend
/// gate.open();
/// assert_eq!(io.poll_completions(&mut done), 1);
/// ```
pub struct GatedIo<B> {
    inner: B,
    gate: Gate,
    kinds: Vec<OpKind>,
    held: Vec<IoCompletion>,
    scratch: Vec<IoCompletion>,
}

impl<B: StorageIo> GatedIo<B> {
    /// Gates the completions of `kinds` (every kind if empty) of `inner` on `gate`.
    pub fn new(inner: B, gate: Gate, kinds: &[OpKind]) -> Self {
        let kinds = if kinds.is_empty() {
            OpKind::ALL.to_vec()
        } else {
            kinds.to_vec()
        };
        GatedIo {
            inner,
            gate,
            kinds,
            held: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Completions held back right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Counts an accepted op of kind `op` if it is gated; passes the submit result through.
    fn count<T, E>(&self, op: OpKind, result: std::result::Result<T, E>) -> std::result::Result<T, E> {
        if result.is_ok() && self.kinds.contains(&op) {
            self.gate.0.submitted.fetch_add(1, Ordering::AcqRel);
        }
        result
    }

    /// Moves this round's completions into `out` or the held list; returns how many reached `out`.
    fn sort(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let before = out.len();
        let open = self.gate.is_open();
        for c in self.scratch.drain(..) {
            if !open && self.kinds.contains(&c.op) {
                self.held.push(c);
            } else {
                out.push(c);
            }
        }
        if open {
            out.append(&mut self.held);
        }
        out.len() - before
    }
}

storage_io_core::forward_namespace!([B: StorageIo] GatedIo<B> => inner);

impl<B: StorageIo> StorageIo for GatedIo<B> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        self.inner.register_fd(file)
    }
    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        self.inner.deregister_fd(fd)
    }
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        self.inner.open_file(path, options)
    }
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        self.inner.open_file_with_mode(path, options)
    }
    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        self.inner.file_len(fd)
    }
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        self.inner.alloc_buf(len)
    }
    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let result = self.inner.submit_read(fd, buf, offset);
        self.count(OpKind::Read, result)
    }
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        let result = self.inner.submit_write(fd, data, offset);
        self.count(OpKind::Write, result)
    }
    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let result = self.inner.submit_write_buf(fd, buf, offset);
        self.count(OpKind::Write, result)
    }
    fn submit_write_bytes(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        let result = self.inner.submit_write_bytes(fd, data, offset);
        self.count(OpKind::Write, result)
    }
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        let result = self.inner.submit_append(fd, data);
        self.count(OpKind::Append, result)
    }
    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        let result = self.inner.submit_datasync(fd);
        self.count(OpKind::Datasync, result)
    }
    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        let result = self.inner.submit_fsync(fd);
        self.count(OpKind::Fsync, result)
    }
    fn flush(&mut self) -> Result<usize> {
        self.inner.flush()
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.inner.poll_completions(&mut self.scratch);
        self.sort(out)
    }
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.inner.wait_completions(&mut self.scratch, min, timeout)?;
        let n = self.sort(out);
        if n == 0 && !self.held.is_empty() {
            // Only held ops are pending, so the inner wait returned at once: pause briefly
            // rather than let the caller spin on a closed gate.
            std::thread::sleep(
                timeout
                    .unwrap_or(Duration::from_millis(1))
                    .min(Duration::from_millis(1)),
            );
        }
        Ok(n)
    }
    /// The inner backend's waker: this wrapper's wait is one inner wait.
    fn wait_waker(&mut self) -> Option<WaitWaker> {
        self.inner.wait_waker()
    }
    fn pending_count(&self) -> usize {
        self.inner.pending_count() + self.held.len()
    }
    fn stats(&self) -> &IoStats {
        self.inner.stats()
    }
}
