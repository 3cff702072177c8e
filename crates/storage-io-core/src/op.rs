//! Handles, tokens, op kinds and completions: the values that cross the submit/poll boundary.

use std::fmt;

use crate::buf::IoBuf;
use crate::error::StorageIoError;

/// A file registered with one backend instance.
///
/// `slot` indexes the backend's fd table; `generation` changes each time a slot is reused, so a
/// handle kept after [`deregister_fd`](crate::StorageIo::deregister_fd) is refused with `BadFd`
/// instead of silently reaching whichever file took the slot next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoFd {
    /// Index in the backend's fd table.
    pub slot: u32,
    /// Reuse counter of that slot.
    pub generation: u32,
}

impl fmt::Display for IoFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.slot, self.generation)
    }
}

/// Identifies one accepted operation; unique per backend instance across every op kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoToken(pub u64);

impl fmt::Display for IoToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// Hands out tokens from one counter, so no two op kinds can ever collide.
#[derive(Debug, Default)]
pub struct TokenCounter {
    next: u64,
}

impl TokenCounter {
    /// A counter starting at token 1 (0 is never issued, so it can mean "none" in a user's table).
    pub const fn new() -> Self {
        TokenCounter { next: 1 }
    }

    /// The next token.
    pub fn next_token(&mut self) -> IoToken {
        if self.next == 0 {
            self.next = 1;
        }
        let t = IoToken(self.next);
        self.next = self.next.wrapping_add(1);
        t
    }
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Positional read into an owned buffer.
    Read,
    /// Positional write.
    Write,
    /// Write at the end of the file, at an offset the backend assigns.
    Append,
    /// `fdatasync`: data (and the metadata needed to read it) durable.
    Datasync,
    /// `fsync`: data and all metadata durable.
    Fsync,
}

impl OpKind {
    /// Every op kind, in a fixed order (index = [`OpKind::index`]).
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::Append,
        OpKind::Datasync,
        OpKind::Fsync,
    ];

    /// A dense index for per-kind tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The lower-case name used in messages and reports.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Append => "append",
            OpKind::Datasync => "datasync",
            OpKind::Fsync => "fsync",
        }
    }

    /// True for the ops that move data to the file (write and append).
    pub const fn is_write(self) -> bool {
        matches!(self, OpKind::Write | OpKind::Append)
    }

    /// True for datasync and fsync.
    pub const fn is_sync(self) -> bool {
        matches!(self, OpKind::Datasync | OpKind::Fsync)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of one accepted operation, delivered exactly once by `poll_completions` or
/// `wait_completions`.
#[derive(Debug)]
pub struct IoCompletion {
    /// The token `submit_*` returned.
    pub token: IoToken,
    /// What kind of op this was.
    pub op: OpKind,
    /// The file it ran on.
    pub fd: IoFd,
    /// Where in the file it ran; for an append, the offset the backend assigned. 0 for syncs.
    pub offset: u64,
    /// Bytes asked for (0 for syncs).
    pub len_requested: usize,
    /// Bytes transferred, or the error. A read shorter than asked means end of file
    /// (see [`IoCompletion::is_eof`]); writes are never short on success.
    pub result: Result<usize, StorageIoError>,
    /// The caller's buffer, on success and on error: reads (truncated to the bytes read) and
    /// owned-buffer writes. `None` for copied writes and syncs.
    pub buf: Option<IoBuf>,
}

impl IoCompletion {
    /// True for a successful read that stopped short of the request at end of file.
    pub fn is_eof(&self) -> bool {
        self.op == OpKind::Read && matches!(self.result, Ok(n) if n < self.len_requested)
    }

    /// True when the op succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// What a backend is and what it can do, for logs, reports and auto-selection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// Short stable name (`sync`, `thread_pool`, `io_uring`, `mem`, …).
    pub name: &'static str,
    /// Operations the backend accepts before `submit_*` answers `QueueFull`.
    pub max_in_flight: usize,
    /// True when submitted ops proceed without the caller's thread (kernel queue or workers).
    pub asynchronous: bool,
    /// Worker threads the backend runs (0 for inline and kernel-queue backends).
    pub worker_threads: usize,
    /// Kernel-registered buffers in use.
    pub registered_buffers: bool,
    /// Kernel-registered (fixed) files in use.
    pub registered_files: bool,
    /// Kernel submission-queue polling in use.
    pub sqpoll: bool,
    /// Direct I/O files can be registered (alignment is then enforced per file).
    pub direct_io: bool,
    /// Largest single transfer accepted, in bytes.
    pub max_io_bytes: usize,
    /// Free text: why a feature is off (for example "RLIMIT_MEMLOCK too low for fixed buffers").
    pub notes: Vec<String>,
}
