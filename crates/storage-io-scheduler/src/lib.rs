//! # storage-io-scheduler
//!
//! The page-level API a database engine's buffer pool and table heap call (layer L2: depends on
//! `storage-io-core` only, and runs over any backend — io_uring, the thread pool, the inline
//! sync backend, or the testkit's `MemIo` and `FaultyIo` — through a
//! [`BackendFactory`](storage_io_core::BackendFactory)).
//!
//! ```text
//! L3  storage-io (façade)
//! L2  storage-io-scheduler, storage-io-wal   <- this crate
//! L1  storage-io-uring, storage-io-sync, storage-io-testkit
//! L0  storage-io-core
//! ```
//!
//! - [`DiskScheduler`]: `schedule_read / write / read_pages / allocate / deallocate / sync`.
//!   Each returns a [`Reply`] at once: block on it, poll it or await it. The call checks the
//!   request and routes each page to one of N workers on the caller's thread, under the
//!   scheduler's lock (no dispatcher thread: a request reaches its worker with one hand-off);
//!   each worker owns its backend and keeps up to `queue_depth` ops in flight. The caller's
//!   thread does no I/O.
//! - **Ordered batches**: `schedule_read_pages` answers in request order whatever order the
//!   reads completed in, merging adjacent pages into one read.
//! - **Single flight and read-your-writes**: concurrent reads of one page share one I/O; a
//!   read scheduled after a write to the page sees that write.
//! - **Allocation** that survives crashes: page ids are handed out from a free list written to
//!   two alternating checksummed images. Reading a page never allocated (or freed) is an
//!   error, not zeros. Or the engine owns allocation ([`AllocationMode::External`]): any id
//!   below `max_pages` reads and writes, in the engine's own file (`page_file`). For an
//!   engine's recovery: `schedule_allocate_at`, a physical-redo phase
//!   (`schedule_begin_redo`), changes made durable at the next sync
//!   ([`AllocDurability::NextSync`]) and `zero_on_reuse`.
//! - [`ReadStream`]: a sequential scan with a window of pages in flight ahead of the consumer.
//! - [`PageCache`]: fixed frames, pin guards, CLOCK eviction, dirty write-back through the
//!   scheduler, and one fetch for two misses on the same page.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use storage_io_core::{BackendFactory, StorageIo};
//! use storage_io_scheduler::{DiskScheduler, SchedulerConfig};
//! use storage_io_testkit::memio::MemFs;
//!
//! let fs = MemFs::new(7);
//! let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
//! let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
//!
//! let page = sched.schedule_allocate().recv().unwrap();
//! sched.schedule_write(page, Bytes::from(vec![7u8; 4096])).recv().unwrap();
//! sched.schedule_sync().recv().unwrap();
//! assert_eq!(sched.schedule_read(page).recv().unwrap()[0], 7);
//! let both = sched.schedule_read_pages(vec![page, page]).recv().unwrap();
//! assert_eq!(both.len(), 2);
//! sched.shutdown().unwrap();
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod alloc;
mod batch;
mod cache;
mod caller;
mod config;
mod counters;
mod dispatch;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod idhash;
mod lend;
mod reply;
mod scheduler;
mod stream;
mod worker;

pub use alloc::MAX_ALLOCATE_AT_GAP;
/// The `bytes` crate, re-exported: pages are written as its `Bytes` and read as its `BytesMut`.
pub use bytes;
pub use cache::{
    DEFAULT_DROP_FLUSH_BOUND, PageCache, PageCacheStats, PageReadGuard, PageWriteGuard, PinnedPage,
};
#[allow(deprecated)] // the old name stays importable, with its deprecation note
pub use config::IOSchedulerConfig;
pub use config::{AllocDurability, AllocationMode, MAX_PAGE_SIZE, MIN_PAGE_SIZE, SchedulerConfig};
pub use error::{Result, SchedulerError};
/// The `flume` crate, re-exported: [`Reply::receiver`] and
/// [`DiskScheduler::schedule_read_tagged`] name its channel ends.
pub use flume;
pub use lend::aligned_bytes;
pub use reply::{PageRead, Reply};
pub use scheduler::{DiskScheduler, PAGE_FILE, SchedulerStats};
pub use stream::ReadStream;

/// A page number: page `n` lives at byte `n × page_size` of the page file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PageId(pub u64);

impl std::fmt::Display for PageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
