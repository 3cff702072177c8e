//! [`SchedulerError`]: every backend error, normalised, plus the scheduler's own.

use std::path::PathBuf;

use storage_io_core::StorageIoError;

use crate::PageId;

/// Everything a scheduler call can fail with. Cloneable, because one failed I/O can answer
/// several callers (reads that shared it through single flight).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The backend failed an I/O on this page (the errno is inside).
    #[error("i/o on page {page} failed: {source}")]
    Io {
        /// The page whose read or write failed.
        page: PageId,
        /// The backend's error.
        source: StorageIoError,
    },
    /// The backend failed an operation that is not about one page (a sync, opening a file,
    /// writing the allocation metadata).
    #[error("{what} failed: {source}")]
    Backend {
        /// What the scheduler was doing.
        what: &'static str,
        /// The backend's error.
        source: StorageIoError,
    },
    /// Another owner has the scheduler's directory open: a [`DiskScheduler`](crate::DiskScheduler)
    /// in this process or another process holds its lock file. Two schedulers on one directory
    /// would overwrite each other's allocation images; shut the other one down first.
    #[error(
        "the scheduler directory is in use: its lock {} is held by another DiskScheduler or process (one per directory); shut that one down first",
        path.display()
    )]
    DirLocked {
        /// The lock file (`dir/LOCK`).
        path: PathBuf,
    },
    /// The page was never allocated, or was freed: reading it would give meaningless bytes.
    #[error("page {0} is not allocated (never allocated, or deallocated); allocate a page first")]
    NotAllocated(PageId),
    /// A write's payload is not exactly one page.
    #[error("write to page {page} has {len} bytes; pages are {page_size} bytes")]
    WrongSize {
        /// The page written.
        page: PageId,
        /// Bytes handed in.
        len: usize,
        /// The configured page size.
        page_size: usize,
    },
    /// One page of a [`schedule_read_pages`](crate::DiskScheduler::schedule_read_pages) batch
    /// failed; the batch returns no pages.
    #[error("batch read failed at index {index} (page {page}): {source}")]
    Batch {
        /// Position of the failed page in the request.
        index: usize,
        /// The page.
        page: PageId,
        /// Why it failed.
        source: Box<SchedulerError>,
    },
    /// The scheduler was shut down before this call was accepted.
    #[error("the scheduler is shut down; open a new one")]
    Closed,
    /// A config field is out of range.
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    /// The page file's allocation metadata is unreadable; nothing was changed.
    #[error("allocation metadata in {path} is unusable: {reason}")]
    CorruptMetadata {
        /// The directory or file concerned.
        path: PathBuf,
        /// What is wrong and what to check.
        reason: String,
    },
    /// Every page id is taken.
    #[error("no page id is left (the page file would pass 2^64 bytes)")]
    OutOfPages,
    /// The page id is at or past the limit: `max_pages` of the config, or the largest id whose
    /// bytes fit below 2^64.
    #[error("page {page} is out of range: page ids go up to {limit} (exclusive; see max_pages)")]
    OutOfRange {
        /// The page asked for.
        page: PageId,
        /// The first id not accepted.
        limit: u64,
    },
    /// `schedule_allocate_at` asked for a page so far past the end that the ids in between,
    /// which go on the free list, would bloat every allocation image.
    #[error(
        "page {page} is {} ids past the end of the allocated range ({next}); allocate_at reaches at most {max_gap} ids past it",
        page.0 - next
    )]
    AllocationGap {
        /// The page asked for.
        page: PageId,
        /// The first id never handed out.
        next: u64,
        /// How far past `next` an allocation may reach.
        max_gap: u64,
    },
    /// The scheduler runs with `allocation = external`: the engine owns page allocation, and
    /// the scheduler's allocate / deallocate calls and redo phase do not exist.
    #[error(
        "{call} is not available: the scheduler was opened with allocation = external, so the engine owns page allocation (any page id below max_pages can be read and written)"
    )]
    ExternalAllocation {
        /// The call that was refused.
        call: &'static str,
    },
    /// Every frame of the page cache is pinned: nothing can be evicted for another page.
    #[error("all {frames} page cache frames are pinned; drop PinnedPages or use a bigger cache")]
    AllFramesPinned {
        /// The cache's frame count.
        frames: usize,
    },
    /// The page is pinned in the page cache, so it cannot be deallocated.
    #[error("page {0} is pinned; drop its PinnedPage before deallocating it")]
    Pinned(PageId),
    /// An allocation image could not be made durable (its write or fdatasync failed), or the
    /// zero page of an allocated id could not be written, so whether the changes the allocator
    /// holds are on disk is unknown: every allocation change is refused
    /// from then on, so no page id can get two owners. Reads and writes go on; reopening the
    /// scheduler loads the last durable image.
    #[error(
        "allocation metadata could not be made durable ({source}); allocation changes are refused until the scheduler is reopened (it then loads the last durable allocation image)"
    )]
    AllocationPoisoned {
        /// The error of the image write or sync that failed.
        source: StorageIoError,
    },
    /// A call that waits with a bound (a [`PageCache`](crate::PageCache) flushing on drop)
    /// got no answer in time; the work it waited for may still complete.
    #[error(
        "{call} got no answer from the scheduler within {waited_ms} ms; call it without a bound (flush_all, close) to wait for it"
    )]
    TimedOut {
        /// The call that gave up.
        call: &'static str,
        /// How long it waited, in milliseconds.
        waited_ms: u64,
    },
    /// A worker thread could not start or died.
    #[error("scheduler worker failed: {0}")]
    Worker(String),
}

impl SchedulerError {
    /// The errno of the backend error inside, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SchedulerError::Io { source, .. }
            | SchedulerError::Backend { source, .. }
            | SchedulerError::AllocationPoisoned { source } => Some(source.errno()),
            SchedulerError::Batch { source, .. } => source.errno(),
            _ => None,
        }
    }
}

/// Results of scheduler calls.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
