//! [`SyncStorageIo`]: every op runs to the end inside `submit_*`; completions wait for the next
//! poll. Deterministic, thread-free, allocation-free after warm-up.

use std::fs::File;
use std::time::{Duration, Instant};

use storage_io_core::{
    Capabilities, IoBuf, IoCompletion, IoConfig, IoFd, IoStats, IoToken, Namespace, OpKind, Result,
    StorageIo, SubmitError,
};

use storage_io_core::backend_kit::{
    FdTable, InlineBackend, InlineQueue, InlineWrite, file_facts, file_len_of, plan_write, validate_transfer,
};

use crate::blocking::StdFiles;
use crate::exec;

struct SyncFile {
    file: File,
    align: Option<usize>,
    append_cursor: u64,
}

/// The inline backend: blocking I/O performed in `submit_*`, completions staged for
/// `poll_completions` in submission order.
///
/// It is the reference backend for tests (results never depend on timing) and suits callers who
/// want no threads and no kernel queue. Completions staged but not yet polled count against
/// `queue_depth`, so a caller that never polls gets `QueueFull`, not unbounded memory.
///
/// ```
/// use storage_io_core::{IoConfig, StorageIo};
/// use storage_io_sync::SyncStorageIo;
///
/// let mut io = SyncStorageIo::new(&IoConfig::default()).unwrap();
/// let fd = io.register_fd(tempfile::tempfile().unwrap()).unwrap();
/// io.submit_append(fd, b"hello").unwrap();
/// io.submit_datasync(fd).unwrap();
/// let mut done = Vec::new();
/// assert_eq!(io.poll_completions(&mut done), 2);
/// assert!(done.iter().all(|c| c.is_ok()));
/// ```
pub struct SyncStorageIo {
    config: IoConfig,
    files: FdTable<SyncFile>,
    queue: InlineQueue,
}

impl SyncStorageIo {
    /// Builds the backend; fails only on an invalid config.
    pub fn new(config: &IoConfig) -> Result<Self> {
        config.validate()?;
        Ok(SyncStorageIo {
            config: config.clone(),
            files: FdTable::with_capacity(config.max_files),
            queue: InlineQueue::new(config.queue_depth),
        })
    }

    fn sync_inner(&mut self, fd: IoFd, op: OpKind) -> Result<IoToken> {
        self.queue.admit()?;
        let started = Instant::now();
        let f = self.files.get(fd)?;
        let result = exec::sync(&StdFiles, &f.file, op);
        Ok(self.queue.finish(started, (op, fd, 0, 0), result, None))
    }
}

impl InlineBackend for SyncStorageIo {
    fn inline_queue(&mut self) -> &mut InlineQueue {
        &mut self.queue
    }

    fn inline_write(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<InlineWrite> {
        self.queue.admit()?;
        let max = self.config.max_io_bytes;
        let f = self.files.get_mut(fd)?;
        let (op, offset) = plan_write(&mut f.append_cursor, f.align, offset, data, max)?;
        let result = exec::write_all_at(&StdFiles, &f.file, data, offset, op);
        Ok(InlineWrite { op, offset, result })
    }
}

/// Real files: the `std::fs` defaults.
impl Namespace for SyncStorageIo {}

impl StorageIo for SyncStorageIo {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "sync",
            max_in_flight: self.config.queue_depth,
            asynchronous: false,
            worker_threads: 0,
            registered_buffers: false,
            registered_files: false,
            sqpoll: false,
            direct_io: storage_io_core::platform::DIRECT_IO,
            max_io_bytes: self.config.max_io_bytes,
            notes: Vec::new(),
        }
    }

    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        let (append_cursor, align) = file_facts(&file)?;
        self.files.insert(SyncFile {
            file,
            align,
            append_cursor,
        })
    }

    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        // Ops finish inside submit, so nothing is ever in flight; staged completions stay queued.
        self.files.remove(fd)?;
        Ok(())
    }

    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        file_len_of(&self.files.get(fd)?.file)
    }

    fn submit_read(&mut self, fd: IoFd, mut buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let checked = self.queue.admit().and_then(|()| {
            let f = self.files.get(fd)?;
            validate_transfer(f.align, offset, buf.len(), buf.addr(), self.config.max_io_bytes)?;
            Ok(f)
        });
        let f = match checked {
            Ok(f) => f,
            Err(e) => return Err(SubmitError::new(e, buf)),
        };
        let started = Instant::now();
        let len = buf.len();
        let result = exec::read_full_at(&StdFiles, &f.file, &mut buf, offset);
        if let Ok(n) = result {
            buf.truncate(n);
        }
        Ok(self
            .queue
            .finish(started, (OpKind::Read, fd, offset, len), result, Some(buf)))
    }

    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        self.write_copied(fd, data, Some(offset))
    }

    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        self.write_owned(fd, buf, offset)
    }

    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        self.write_copied(fd, data, None)
    }

    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync_inner(fd, OpKind::Datasync)
    }

    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync_inner(fd, OpKind::Fsync)
    }

    fn flush(&mut self) -> Result<usize> {
        Ok(0)
    }

    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.queue.poll(out)
    }

    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        _min: usize,
        _timeout: Option<Duration>,
    ) -> Result<usize> {
        // Everything accepted has already completed, so there is never anything to wait for.
        Ok(self.poll_completions(out))
    }

    fn pending_count(&self) -> usize {
        self.queue.pending()
    }

    fn stats(&self) -> &IoStats {
        self.queue.stats()
    }
}
