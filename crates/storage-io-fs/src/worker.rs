//! The I/O worker: one thread, one backend, many operations in flight.
//!
//! A worker takes requests from its channel in arrival order and keeps up to `queue_depth` of
//! them in flight on its backend (the pipelining a one-op-at-a-time worker lacks). Requests that
//! find no free slot wait in a FIFO backlog, so operations on one file reach the backend in the
//! order they were made — which is what makes `sync_data` cover every write requested before it
//! (the backend's datasync barrier does the rest). Opens, closes, `size` and `allocate` run on the
//! worker thread itself when their turn comes, never on the caller's executor thread.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use storage_io_core::io_thread::{Accepted, Intake, IoHandler, IoLoop};
use storage_io_core::{
    DirectMode, IoBuf, IoCompletion, IoFd, IoStats, IoToken, OpKind, OpenOptions, Result, StorageIo,
    StorageIoError, WaitWaker,
};

use super::order::{FileShared, WriteTicket};
use super::slot::Completer;

/// How long a worker with operations in flight waits for a completion before looking at its
/// channel again, when its backend offers no [`WaitWaker`]: the most a new request waits for a
/// busy worker to notice it.
const POLL_INTERVAL: Duration = Duration::from_micros(20);

/// A file the worker opened: its handle and whether direct I/O is in effect. Dropped without
/// [`Opened::into_parts`] (its open was cancelled), it closes the file again.
pub(crate) struct Opened {
    pub(crate) fd: IoFd,
    pub(crate) mode: DirectMode,
    /// What every handle on the path shares (append cursor, writes in flight, group sync).
    pub(crate) file: Arc<FileShared>,
    /// A second OS handle on the file, for rings on the caller's threads (none for files of
    /// in-memory backends, and none where caller rings are not compiled in).
    pub(crate) os: Option<File>,
    /// `set_len` can work: an OS file opened for writing.
    pub(crate) resizable: bool,
    guard: CloseGuard,
}

/// An opened file's parts, for the `AsyncFile` that takes it over.
pub(crate) struct OpenedParts {
    pub(crate) fd: IoFd,
    pub(crate) mode: DirectMode,
    pub(crate) file: Arc<FileShared>,
    #[cfg_attr(
        not(caller_rings),
        allow(dead_code, reason = "always None without caller rings")
    )]
    pub(crate) os: Option<File>,
    pub(crate) resizable: bool,
}

impl Opened {
    /// Hands the file over to an `AsyncFile`, which closes it from now on.
    pub(crate) fn into_parts(mut self) -> OpenedParts {
        self.guard.inbox = None;
        let mode = std::mem::replace(
            &mut self.mode,
            DirectMode::Buffered {
                fallback_reason: None,
            },
        );
        OpenedParts {
            fd: self.fd,
            mode,
            file: Arc::clone(&self.file),
            os: self.os.take(),
            resizable: self.resizable,
        }
    }
}

/// The way back to the worker that opened a file: a weak sender (the channel still closes when
/// the file system lets go of its senders) and the backend's waker.
type Inbox = (flume::WeakSender<Request>, Option<WaitWaker>);

/// Sends a `Close` for a file nobody took (an abandoned open) when dropped, wherever that is.
struct CloseGuard {
    fd: IoFd,
    inbox: Option<Inbox>,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        let Some((weak, waker)) = self.inbox.take() else {
            return;
        };
        // No sender left: the worker is shutting down and closes every file itself.
        if let Some(tx) = weak.upgrade() {
            let _ = tx.send(Request::Close {
                fd: self.fd,
                reply: None,
            });
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// The reply of a read or write: the result and the caller's buffer.
pub(crate) type BufReply = Completer<(Result<usize>, IoBuf)>;

/// A call run on a worker thread: given the worker's backend, or the error that keeps it from
/// running (the request never reached a worker).
pub(crate) type BlockingCall = Box<dyn FnOnce(Result<&mut dyn StorageIo>) + Send>;

/// One request from an [`AsyncFile`](super::AsyncFile) or the file system.
pub(crate) enum Request {
    Open {
        path: PathBuf,
        /// The file's key ([`path_key`](super::path_key)): handles with one key share a cursor.
        key: PathBuf,
        options: OpenOptions,
        preallocate_bytes: Option<u64>,
        /// Take the advisory append lock (`open_append`).
        append_lock: bool,
        reply: Completer<Result<Opened>>,
    },
    /// A read into, or a write from, the caller's buffer (`kind` is `Read` or `Write`).
    Transfer {
        kind: OpKind,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        at: Instant,
        /// A write's place in its path's order (none for reads).
        ticket: Option<WriteTicket>,
        reply: BufReply,
    },
    /// An append at the offset its path's cursor gave it when it was called.
    Append {
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        at: Instant,
        ticket: WriteTicket,
        reply: Completer<(Result<u64>, IoBuf)>,
    },
    /// A datasync or fsync; with `dir`, after syncing that directory (the path was created and
    /// its name is not durable yet), which is then marked synced in the path's state.
    Sync {
        fd: IoFd,
        kind: OpKind,
        dir: Option<(PathBuf, Arc<FileShared>)>,
        at: Instant,
        reply: Completer<Result<()>>,
    },
    Size {
        fd: IoFd,
        reply: Completer<Result<u64>>,
    },
    /// Makes the creations and removals of files in `dir` durable (through the backend).
    SyncDir {
        dir: PathBuf,
        reply: Completer<Result<()>>,
    },
    Allocate {
        fd: IoFd,
        len: u64,
        reply: Completer<Result<()>>,
    },
    /// Truncates or extends the file (`set_len`), sent once the writes called before it have
    /// completed, and after the ops in flight on it; its ticket lets the writes called after
    /// it go when it is done.
    SetLen {
        fd: IoFd,
        len: u64,
        ticket: WriteTicket,
        reply: Completer<Result<()>>,
    },
    /// A call that runs on the worker thread with its backend when its turn comes (a namespace
    /// call, resolving a path): it answers its own reply.
    Blocking(BlockingCall),
    /// Names removed or renamed away through the file system (`remove_file`, `rename`): their
    /// state by key is dropped, so a later open of a new file there starts afresh (handles
    /// already open keep their state). Only files without an identity are kept by key.
    Forget(Vec<PathBuf>),
    Close {
        fd: IoFd,
        reply: Option<Completer<Result<()>>>,
    },
    /// Always the last message a worker gets: drain, close every file, exit.
    Shutdown,
}

impl Request {
    /// For `size` and `allocate`: the file whose ops in flight must complete first, so that they
    /// see every write requested before them.
    fn fence(&self) -> Option<IoFd> {
        match self {
            Request::Size { fd, .. } | Request::Allocate { fd, .. } | Request::SetLen { fd, .. } => Some(*fd),
            _ => None,
        }
    }

    /// True for the requests that occupy a backend slot while in flight.
    fn needs_slot(&self) -> bool {
        matches!(
            self,
            Request::Transfer { .. } | Request::Append { .. } | Request::Sync { .. }
        )
    }
}

/// What the worker keeps per operation in flight.
enum InFlight {
    Buf {
        kind: OpKind,
        at: Instant,
        ticket: Option<WriteTicket>,
        reply: BufReply,
    },
    Append {
        at: Instant,
        buf: IoBuf,
        offset: u64,
        ticket: WriteTicket,
        reply: Completer<(Result<u64>, IoBuf)>,
    },
    Sync {
        kind: OpKind,
        at: Instant,
        reply: Completer<Result<()>>,
    },
}

/// The advisory lock `open_append` takes, held while any handle that asked for it is open.
struct AppendLock {
    /// A handle on the locked open file description: keeps the lock while it lives.
    _file: File,
    holders: usize,
}

/// What the worker knows of one open handle beyond the backend's fd.
struct Handle {
    key: PathBuf,
    /// The identity of the file it opened (see [`FileId`]).
    id: FileId,
    holds_lock: bool,
}

/// A file's identity: device and inode on Unix. The state the handles on a file share (cursor,
/// write order, group sync) is keyed by it, so a file created at the name of one that was
/// removed or renamed away (while a handle on it is open) gets state of its own instead of the
/// old file's, and one file reached by two names (a hard link, a directory renamed between two
/// opens) has one state. The append lock is keyed by path and identity. `None` for an
/// in-memory backend's files (no OS file) and off Unix, where std offers no stable file
/// identity: there the path alone keys the state.
type FileId = Option<(u64, u64)>;

/// The shared state of every open file with an identity ([`FileId`]), for all the workers of
/// one file system: two names of one file may be served by two workers.
pub(crate) type FilesById = Arc<Mutex<HashMap<(u64, u64), std::sync::Weak<FileShared>>>>;

/// The identity of the OS file `file` ([`FileId`]).
fn file_id(file: Option<&File>) -> FileId {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.and_then(|f| f.metadata().ok()).map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        None
    }
}

/// The part of a worker other threads read: metrics and gauges.
pub(crate) struct WorkerShared {
    /// End-to-end latency histograms and counters per op kind.
    pub(crate) stats: Mutex<IoStats>,
    /// Operations in flight on the backend now.
    pub(crate) in_flight: AtomicU64,
    /// Requests taken from the channel and waiting for a slot.
    pub(crate) backlog: AtomicU64,
    /// The most operations ever in flight at once.
    pub(crate) max_in_flight: AtomicU64,
}

impl WorkerShared {
    pub(crate) fn new() -> Self {
        WorkerShared {
            stats: Mutex::new(IoStats::new()),
            in_flight: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        }
    }
}

pub(crate) struct Worker {
    io: Box<dyn StorageIo>,
    /// The channel, until `run` hands it to the loop.
    rx: Option<flume::Receiver<Request>>,
    /// This worker's own channel, for the close guards of the files it opens.
    me: flume::WeakSender<Request>,
    shared: Arc<WorkerShared>,
    queue_depth: usize,
    backlog: VecDeque<Request>,
    in_flight: HashMap<IoToken, InFlight>,
    /// Ops in flight per file.
    busy: HashMap<IoFd, usize>,
    /// Each open file, with a second OS handle on it for `allocate` where there is an OS file
    /// (the backend owns the first; an in-memory backend's files have none).
    files: HashMap<IoFd, Option<File>>,
    /// Each open handle's key and whether it holds the append lock.
    handles: HashMap<IoFd, Handle>,
    /// The shared state of each file with a handle or a write in flight: appends through any
    /// handle on a file take their offsets from its one cursor (two handles on one file would
    /// otherwise overwrite each other); a file whose handles are all closed keeps its state
    /// while its writes are in flight, so a new open continues after them. Files with an
    /// identity are found by it, across the workers ([`FilesById`]): a new file at a name (the
    /// old one removed or renamed away) gets state of its own, the old file's handles keep
    /// theirs. Files without one (in-memory backends) are found in `paths` by key; every handle
    /// on a key is opened by this worker (the file system routes by key).
    by_id: FilesById,
    paths: HashMap<PathBuf, std::sync::Weak<FileShared>>,
    /// The append locks this worker holds, per key and file identity (a new file at a key
    /// takes its own lock).
    append_locks: HashMap<(PathBuf, FileId), AppendLock>,
    /// The backend's waker: with one, the worker blocks for completions without a timeout and
    /// senders wake it; without one, it looks at its channel every [`POLL_INTERVAL`].
    waker: Option<WaitWaker>,
}

impl IoHandler for Worker {
    type Msg = Request;
    type Io = dyn StorageIo;

    fn io(&mut self) -> &mut Self::Io {
        self.io.as_mut()
    }

    fn accept(&mut self, request: Request) -> Accepted {
        match request {
            Request::Shutdown => Accepted::Stop,
            r => {
                self.backlog.push_back(r);
                Accepted::Continue
            }
        }
    }

    fn pump(&mut self) {
        self.start_ready();
        if let Err(e) = self.io.flush() {
            tracing::warn!(error = %e, "io worker: flush failed; completions will report it");
        }
        self.publish_gauges();
    }

    fn has_work(&self) -> bool {
        !self.backlog.is_empty() || self.io.pending_count() > 0
    }

    fn in_flight(&self) -> usize {
        self.io.pending_count()
    }

    fn complete(&mut self, done: &mut Vec<IoCompletion>, _intake: &mut Intake<Request>) {
        if !done.is_empty() {
            let now = Instant::now();
            // Stats are recorded before any reply goes out, under one lock for the round: a
            // caller that reads the metrics after its op completed sees that op counted.
            let shared = Arc::clone(&self.shared);
            let mut stats = shared.stats.lock();
            for c in done.drain(..) {
                self.deliver(c, now, &mut stats);
            }
        }
        self.publish_gauges();
    }
}

impl Worker {
    pub(crate) fn new(
        mut io: Box<dyn StorageIo>,
        rx: flume::Receiver<Request>,
        me: flume::WeakSender<Request>,
        shared: Arc<WorkerShared>,
        by_id: FilesById,
        queue_depth: usize,
    ) -> Self {
        let queue_depth = queue_depth.min(io.capabilities().max_in_flight).max(1);
        let waker = io.wait_waker();
        Worker {
            io,
            rx: Some(rx),
            me,
            shared,
            queue_depth,
            backlog: VecDeque::with_capacity(queue_depth * 2),
            in_flight: HashMap::with_capacity(queue_depth * 2),
            busy: HashMap::new(),
            files: HashMap::new(),
            handles: HashMap::new(),
            by_id,
            paths: HashMap::new(),
            append_locks: HashMap::new(),
            waker,
        }
    }

    /// What senders call after queueing a request, if the backend can be woken.
    pub(crate) fn waker(&self) -> Option<WaitWaker> {
        self.waker.clone()
    }

    /// Serves requests until `Shutdown` (or every sender is gone), then finishes everything
    /// accepted and closes every file ([`IoLoop`]: senders wake a wait for completions; a
    /// backend without a waker is looked at every [`POLL_INTERVAL`]).
    pub(crate) fn run(mut self) {
        let waker = self.waker.clone();
        if let Some(rx) = self.rx.take() {
            IoLoop::new(rx, waker.as_ref(), POLL_INTERVAL).run(&mut self);
        }
        for (fd, _) in std::mem::take(&mut self.files) {
            if let Err(e) = self.io.deregister_fd(fd) {
                tracing::warn!(%fd, error = %e, "io worker: closing a file at shutdown failed");
            }
        }
    }

    /// Starts backlog requests in order while there are free slots.
    fn start_ready(&mut self) {
        while let Some(head) = self.backlog.front() {
            if head.needs_slot() && self.io.pending_count() >= self.queue_depth {
                return;
            }
            // Later requests wait behind a fence too: they must not overtake it.
            if head.fence().is_some_and(|fd| self.busy.contains_key(&fd)) {
                return;
            }
            let Some(request) = self.backlog.pop_front() else {
                return;
            };
            if let Some(back) = self.start(request) {
                // The backend is full after all (its own limit): retry after completions.
                self.backlog.push_front(back);
                return;
            }
        }
    }

    /// Starts one request; gives it back if the backend's queue is full.
    fn start(&mut self, request: Request) -> Option<Request> {
        match request {
            Request::Transfer {
                kind,
                fd,
                buf,
                offset,
                at,
                ticket,
                reply,
            } => return self.start_transfer(kind, fd, buf, offset, at, ticket, reply),
            Request::Append {
                fd,
                buf,
                offset,
                at,
                ticket,
                reply,
            } => return self.start_append(fd, buf, offset, at, ticket, reply),
            Request::Sync {
                fd,
                kind,
                dir,
                at,
                reply,
            } => return self.start_sync(fd, kind, dir, at, reply),
            Request::Open {
                path,
                key,
                options,
                preallocate_bytes,
                append_lock,
                reply,
            } => {
                // Cancelled (its future dropped) before it started: open nothing.
                if reply.is_abandoned() {
                    return None;
                }
                let opened = self.open(&path, key, &options, preallocate_bytes, append_lock);
                // Cancelled while it ran: close what it opened, now.
                if let Err(Ok(unwanted)) = reply.complete(opened) {
                    let fd = unwanted.into_parts().fd;
                    if let Err(e) = self.close(fd) {
                        tracing::warn!(%fd, error = %e, "io worker: closing the file of a cancelled open failed");
                    }
                }
            }
            Request::Size { fd, reply } => {
                let _ = reply.complete(self.io.file_len(fd));
            }
            Request::SyncDir { dir, reply } => {
                let _ = reply.complete(self.io.sync_dir(&dir));
            }
            Request::Allocate { fd, len, reply } => {
                let result = match self.files.get(&fd) {
                    Some(Some(file)) => reserve(file, len).map_err(|e| match self.handles.get(&fd) {
                        Some(handle) => naming_path(e, &handle.key),
                        None => e,
                    }),
                    Some(None) => Err(no_os_file("allocate")),
                    None => Err(StorageIoError::BadFd { fd }),
                };
                let _ = reply.complete(result);
            }
            Request::SetLen {
                fd,
                len,
                ticket,
                reply,
            } => {
                // The append cursor moved to `len` when set_len was called; the appends called
                // after it wait for this ticket, so the truncation cannot cut them off.
                let result = match (self.files.get(&fd), self.handles.get(&fd)) {
                    (Some(Some(file)), Some(handle)) => file
                        .set_len(len)
                        .map_err(|e| StorageIoError::from_os_at("set_len", &handle.key, &e)),
                    (Some(_), _) => Err(no_os_file("set_len")),
                    (None, _) => Err(StorageIoError::BadFd { fd }),
                };
                drop(ticket);
                let _ = reply.complete(result);
            }
            Request::Blocking(call) => call(Ok(self.io.as_mut())),
            Request::Forget(keys) => {
                for key in keys {
                    self.paths.remove(&key);
                }
            }
            Request::Close { fd, reply } => {
                // deregister_fd waits for this file's ops in flight; their completions stay
                // queued for the next collect.
                let result = self.close(fd);
                if let Some(reply) = reply {
                    let _ = reply.complete(result);
                } else if let Err(e) = result {
                    tracing::warn!(%fd, error = %e, "io worker: closing a dropped file failed");
                }
            }
            // `accept` takes it: it never reaches the backlog.
            Request::Shutdown => {}
        }
        None
    }

    /// A read or write of an owned buffer; gives it back when the backend is full.
    #[allow(clippy::too_many_arguments)] // the request's fields, as it carries them
    fn start_transfer(
        &mut self,
        kind: OpKind,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        at: Instant,
        ticket: Option<WriteTicket>,
        reply: BufReply,
    ) -> Option<Request> {
        // Cancelled (its future dropped) before it started: nothing to do.
        if reply.is_abandoned() {
            return None;
        }
        let submitted = if kind == OpKind::Read {
            self.io.submit_read(fd, buf, offset)
        } else {
            self.io.submit_write_buf(fd, buf, offset)
        };
        match submitted {
            Ok(token) => self.track(
                fd,
                token,
                kind,
                InFlight::Buf {
                    kind,
                    at,
                    ticket,
                    reply,
                },
            ),
            Err(e) => {
                let (error, buf) = e.into_parts();
                if matches!(error, StorageIoError::QueueFull { .. }) {
                    return Some(Request::Transfer {
                        kind,
                        fd,
                        buf,
                        offset,
                        at,
                        ticket,
                        reply,
                    });
                }
                self.refused(kind, at);
                drop(ticket);
                let _ = reply.complete((Err(error), buf));
            }
        }

        None
    }

    /// An append of copied bytes at the offset its path's cursor gave it; gives it back when
    /// the backend is full. Not skipped when its future was dropped: its range of the file is
    /// taken, and leaving it unwritten would leave a hole before later appends.
    fn start_append(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
        at: Instant,
        ticket: WriteTicket,
        reply: Completer<(Result<u64>, IoBuf)>,
    ) -> Option<Request> {
        match self.io.submit_write(fd, &buf, offset) {
            Ok(token) => self.track(
                fd,
                token,
                OpKind::Append,
                InFlight::Append {
                    at,
                    buf,
                    offset,
                    ticket,
                    reply,
                },
            ),
            Err(StorageIoError::QueueFull { .. }) => {
                return Some(Request::Append {
                    fd,
                    buf,
                    offset,
                    at,
                    ticket,
                    reply,
                });
            }
            Err(error) => {
                self.refused(OpKind::Append, at);
                drop(ticket);
                let _ = reply.complete((Err(error), buf));
            }
        }

        None
    }

    /// A datasync or fsync, after the directory of a file created since its last sync
    /// (so that the name is durable too); gives it back when the backend is full.
    fn start_sync(
        &mut self,
        fd: IoFd,
        kind: OpKind,
        dir: Option<(PathBuf, Arc<FileShared>)>,
        at: Instant,
        reply: Completer<Result<()>>,
    ) -> Option<Request> {
        let dir = match dir {
            Some((path, file)) if file.dir_unsynced() => match self.io.sync_dir(&path) {
                Ok(()) => {
                    file.dir_synced();
                    None
                }
                Err(error) => {
                    self.refused(kind, at);
                    let _ = reply.complete(Err(error));
                    return None;
                }
            },
            other => other,
        };
        let submitted = if kind == OpKind::Fsync {
            self.io.submit_fsync(fd)
        } else {
            self.io.submit_datasync(fd)
        };
        match submitted {
            Ok(token) => self.track(fd, token, kind, InFlight::Sync { kind, at, reply }),
            Err(StorageIoError::QueueFull { .. }) => {
                return Some(Request::Sync {
                    fd,
                    kind,
                    dir,
                    at,
                    reply,
                });
            }
            Err(error) => {
                self.refused(kind, at);
                let _ = reply.complete(Err(error));
            }
        }

        None
    }

    /// Opens through the backend, so any backend can host the async API (an in-memory one
    /// opens its own files).
    fn open(
        &mut self,
        path: &std::path::Path,
        key: PathBuf,
        options: &OpenOptions,
        preallocate_bytes: Option<u64>,
        append_lock: bool,
    ) -> Result<Opened> {
        let opened = self.io.open_file_with_mode(path, options)?;
        let undo = |io: &mut Box<dyn StorageIo>, e: StorageIoError| {
            if let Err(close) = io.deregister_fd(opened.fd) {
                tracing::warn!(error = %close, "io worker: closing a file whose open failed half-way");
            }
            Err(e)
        };
        let id = file_id(opened.file.as_ref());
        let lock_key = (key.clone(), id);
        let holds_lock = append_lock && opened.file.is_some();
        if holds_lock && !self.append_locks.contains_key(&lock_key) {
            let locked = opened.file.as_ref().map(|_| lock_for_append(path)).transpose();
            match locked {
                Ok(Some(file)) => {
                    self.append_locks.insert(
                        lock_key.clone(),
                        AppendLock {
                            _file: file,
                            holders: 0,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => return undo(&mut self.io, e),
            }
        }
        if let Some(len) = preallocate_bytes {
            let reserved = match &opened.file {
                Some(file) => reserve(file, len).map_err(|e| naming_path(e, path)),
                None => Err(no_os_file("preallocation (allocate)")),
            };
            if let Err(e) = reserved {
                self.release_lock(&lock_key, holds_lock, false);
                return undo(&mut self.io, e);
            }
        }
        let len = match self.io.file_len(opened.fd) {
            Ok(len) => len,
            Err(e) => {
                self.release_lock(&lock_key, holds_lock, false);
                return undo(&mut self.io, e);
            }
        };
        if let Some(lock) = self.append_locks.get_mut(&lock_key).filter(|_| holds_lock) {
            lock.holders += 1;
        }
        // A file whose last handle closed while its writes were in flight still has its state:
        // new appends continue after those writes. Looked up and added under one lock, so two
        // workers opening one new file under two names give it one state.
        let file = match id {
            Some(id) => {
                let mut ids = self.by_id.lock();
                match ids.get(&id).and_then(std::sync::Weak::upgrade) {
                    Some(file) => {
                        file.opened_at(len, options.truncate);
                        file
                    }
                    None => {
                        let file = FileShared::new(len);
                        ids.retain(|_, w| w.strong_count() > 0);
                        ids.insert(id, Arc::downgrade(&file));
                        file
                    }
                }
            }
            None => match self.paths.get(&key).and_then(std::sync::Weak::upgrade) {
                Some(file) => {
                    file.opened_at(len, options.truncate);
                    file
                }
                None => {
                    let file = FileShared::new(len);
                    self.paths.retain(|_, w| w.strong_count() > 0);
                    self.paths.insert(key.clone(), Arc::downgrade(&file));
                    file
                }
            },
        };
        // A second OS handle for the rings on the callers' threads (where this is a real file).
        let os = match opened.file.as_ref().filter(|_| cfg!(caller_rings)) {
            Some(f) => match f.try_clone() {
                Ok(dup) => Some(dup),
                Err(e) => {
                    self.release_lock(&lock_key, holds_lock, true);
                    return undo(
                        &mut self.io,
                        StorageIoError::from_os_at("open: duplicating the file handle", path, &e),
                    );
                }
            },
            None => None,
        };
        let resizable = opened.file.is_some() && options.write;
        self.handles.insert(opened.fd, Handle { key, id, holds_lock });
        self.files.insert(opened.fd, opened.file);
        if options.create || options.create_new {
            file.created();
        }
        Ok(Opened {
            fd: opened.fd,
            mode: opened.mode,
            file,
            os,
            resizable,
            guard: CloseGuard {
                fd: opened.fd,
                inbox: Some((self.me.clone(), self.waker.clone())),
            },
        })
    }

    /// Closes a handle: the backend's fd (after its ops in flight), the second OS handle, and
    /// its share of the path's cursor and append lock.
    fn close(&mut self, fd: IoFd) -> Result<()> {
        let result = self.io.deregister_fd(fd);
        self.files.remove(&fd);
        if let Some(handle) = self.handles.remove(&fd) {
            self.release_lock(&(handle.key, handle.id), handle.holds_lock, true);
        }
        result
    }

    /// Gives up one hold of the append lock of `key` (a path and a file identity; `counted`:
    /// the holder was counted), releasing the lock when nobody holds it any more.
    fn release_lock(&mut self, key: &(PathBuf, FileId), holds_lock: bool, counted: bool) {
        if !holds_lock {
            return;
        }
        if let Some(lock) = self.append_locks.get_mut(key) {
            if counted {
                lock.holders -= 1;
            }
            if lock.holders == 0 {
                self.append_locks.remove(key);
            }
        }
    }

    fn track(&mut self, fd: IoFd, token: IoToken, kind: OpKind, op: InFlight) {
        self.shared.stats.lock().record_submit(kind);
        *self.busy.entry(fd).or_insert(0) += 1;
        self.in_flight.insert(token, op);
    }

    /// Counts an op the backend refused at submit (bad fd, misaligned, …) as a failed op.
    fn refused(&mut self, kind: OpKind, at: Instant) {
        let mut stats = self.shared.stats.lock();
        stats.record_submit(kind);
        stats.record_complete(kind, Err(()), at.elapsed());
    }

    fn deliver(&mut self, c: IoCompletion, now: Instant, stats: &mut IoStats) {
        let Some(op) = self.in_flight.remove(&c.token) else {
            tracing::warn!(token = %c.token, "io worker: completion for an unknown token");
            return;
        };
        if let Some(n) = self.busy.get_mut(&c.fd) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&c.fd);
            }
        }
        let outcome = c.result.as_ref().map(|&n| n).map_err(|_| ());
        match op {
            InFlight::Buf {
                kind,
                at,
                ticket,
                reply,
            } => {
                stats.record_complete(kind, outcome, now - at);
                // The write counts as complete for its path before its caller hears of it.
                drop(ticket);
                let buf = c.buf.unwrap_or_else(|| IoBuf::Vec(Vec::new()));
                // A cancelled caller's buffer is dropped here, after the backend gave it back.
                let _ = reply.complete((c.result, buf));
            }
            InFlight::Append {
                at,
                buf,
                offset,
                ticket,
                reply,
            } => {
                stats.record_complete(OpKind::Append, outcome, now - at);
                debug_assert_eq!(offset, c.offset, "an append lands where its cursor put it");
                drop(ticket);
                let _ = reply.complete((c.result.map(|_| offset), buf));
            }
            InFlight::Sync { kind, at, reply } => {
                stats.record_complete(kind, outcome, now - at);
                let _ = reply.complete(c.result.map(|_| ()));
            }
        }
    }

    fn publish_gauges(&self) {
        let in_flight = self.io.pending_count() as u64;
        self.shared.in_flight.store(in_flight, Ordering::Relaxed);
        self.shared
            .backlog
            .store(self.backlog.len() as u64, Ordering::Relaxed);
        self.shared.max_in_flight.fetch_max(in_flight, Ordering::Relaxed);
    }
}

/// `allocate` (and preallocation) on a backend whose files are not OS files.
fn no_os_file(what: &str) -> StorageIoError {
    StorageIoError::Unsupported {
        what: format!(
            "{what} needs an OS file and this backend's files are not (an in-memory backend: open without preallocate_appends)"
        )
        .into(),
    }
}

/// Takes the exclusive advisory append lock ([`platform::try_lock_advisory`]: `flock` on Unix,
/// `LockFileEx` on Windows) on an open file description of its own (a fresh open of `path`,
/// not a dup of the data file's: the data file has duplicates on the callers' rings, and a lock
/// on a shared description would be held until the last of them closed) and returns the handle
/// that keeps it. Another holder — another process, or another file system in this one — makes
/// it an `Os` error naming the path.
fn lock_for_append(path: &std::path::Path) -> Result<File> {
    use storage_io_core::platform::{self, AdvisoryLock};
    const WHAT: &str =
        "open_append: lock for appending (another process or file system appends to this file)";
    let file = File::open(path).map_err(|e| StorageIoError::from_os_at(WHAT, path, &e))?;
    match platform::try_lock_advisory(&file) {
        Ok(AdvisoryLock::Held) => Ok(file),
        Ok(AdvisoryLock::HeldElsewhere(e)) | Err(e) => Err(StorageIoError::from_os_at(WHAT, path, &e)),
        // A file system without such locks: append without the lock rather than not at all,
        // and say so.
        Ok(AdvisoryLock::Unsupported(e)) => {
            tracing::warn!(path = %path.display(), error = %e,
                "open_append: the file system refuses file locks; appenders in other processes are not detected");
            Ok(file)
        }
    }
}

/// `e` naming `path` when it is a system call's error that names none (an open's `fallocate`:
/// the caller learns which file it was about).
fn naming_path(e: StorageIoError, path: &std::path::Path) -> StorageIoError {
    match e {
        StorageIoError::Os {
            what,
            errno,
            path: None,
        } => StorageIoError::os_at(what, path, errno),
        other => other,
    }
}

/// Reserves disk space for the first `len` bytes of `file` without changing its size
/// ([`storage_io_core::platform::reserve_keep_size`]; Linux only).
fn reserve(file: &File, len: u64) -> Result<()> {
    storage_io_core::platform::reserve_keep_size(file, len).map_err(|e| {
        if e.kind() == std::io::ErrorKind::Unsupported {
            StorageIoError::unsupported("allocate (fallocate) is only implemented on Linux")
        } else if e.kind() == std::io::ErrorKind::InvalidInput {
            StorageIoError::invalid("allocate: length exceeds i64::MAX")
        } else {
            StorageIoError::from_os("fallocate", &e)
        }
    })
}
