//! # storage-io-wal
//!
//! The write-ahead log an engine commits through (layer L2: depends on `storage-io-core` only,
//! and runs over any backend — io_uring, the thread pool, the inline sync backend, or the
//! testkit's `MemIo` and `FaultyIo` — through a [`BackendFactory`](storage_io_core::BackendFactory)).
//!
//! ```text
//! L3  storage-io (façade)
//! L2  storage-io-scheduler, storage-io-wal   <- this crate
//! L1  storage-io-uring, storage-io-sync, storage-io-testkit
//! L0  storage-io-core
//! ```
//!
//! - **Records** are framed as length + kind + LSN + CRC32C, back to back in fixed-size,
//!   zero-filled segment files whose headers carry a magic, a version and their first LSN
//!   ([`format`](mod@format)). A record never spans two segments. An [`Lsn`] is a byte position in the log.
//! - **Group commit** ([`SyncMode`]): one leader writes the whole queued batch and issues one
//!   fdatasync that covers every committer that joined it.
//! - **What bounds group commit.** By default one flush is in flight at a time
//!   ([`WalConfig::max_flushes_in_flight`] allows more: in direct mode a batch with company in
//!   flight then ends in a pad record so that no two writes in flight share a block). A commit waits for at least one
//!   durable write (L), and its thread must be woken (w) before it appends again, so N
//!   committers make at most N / (L + w) commits a second. When records are waiting, the next
//!   flush starts as soon as one ends, so a committer that appends while flush *k* runs waits
//!   for *k* and then for *k + 1*: N committers settle into two cohorts that take turns, at
//!   about N / (2 × L). With L = 200 µs, 64 committers reach at most 160k/s that way. Several
//!   flushes in flight split the cohorts, but on a disk whose O_DSYNC writes each need a cache
//!   flush the flushes queue behind each other's cache flushes (docs/benchmarks.md in the storage-io repository). A group
//!   delay ([`SyncMode::Group`]'s `max_delay_us`) merges the cohorts, but only by idling the disk
//!   while the woken committers come back. The bench's `CPU µs/op` column shows what each
//!   sleep and wake-up costs.
//! - **Async commits**: [`WalManager::commit_async`] and [`WalManager::durable`] return a
//!   [`Durable`] future for committers on an executor (any runtime, or none); a `wal-io` thread
//!   flushes for them, so no executor thread waits for the disk.
//! - **Inline I/O** ([`WalConfig::inline_io`]): buffered flushes write and fdatasync on the
//!   flushing thread rather than through the backend's queue (no io-wq round trip on io_uring).
//! - **Failure**: a failed write or fdatasync *poisons* the WAL ([`WalError::Poisoned`]): it is
//!   never retried as success, and nothing more is accepted until the log is reopened. A full
//!   disk is the exception that loses nothing ([`WalError::DiskFull`]).
//! - **Recovery** scans every segment, verifies each record, zeroes a torn tail (valid frames
//!   after a hole count as torn when they lie inside the in-flight window,
//!   [`format::TORN_WINDOW_BYTES`]) and follows a [`RecoveryPolicy`] for damage in the middle
//!   (the table of every case is on [`recovery`]).
//!
//! ```
//! use std::sync::Arc;
//! use storage_io_core::{BackendFactory, StorageIo};
//! use storage_io_testkit::memio::{CrashOptions, MemFs};
//! use storage_io_wal::{WalConfig, WalManager};
//!
//! let fs = MemFs::new(7);
//! let factory: BackendFactory = { let fs = fs.clone(); Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>)) };
//! let (wal, _) = WalManager::open("/wal", WalConfig::default(), factory.clone()).unwrap();
//! wal.commit(b"durable").unwrap();
//! wal.append(b"only queued").unwrap();
//! std::mem::forget(wal); // the process dies: no close, no flush
//! fs.crash(CrashOptions::default());
//!
//! let (wal, _) = WalManager::open("/wal", WalConfig::default(), factory).unwrap();
//! let got: Vec<Vec<u8>> = wal.reader(wal.first_lsn()).unwrap().map(|r| r.unwrap().1).collect();
//! assert_eq!(got, vec![b"durable".to_vec()]);
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod config;
mod error;
pub mod format;
mod manager;
mod prepare;
mod reader;
pub mod recovery;
mod segio;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use config::{RecoveryPolicy, SyncMode, WalConfig};
pub use error::WalError;
pub use manager::{Durable, WalManager, WalStats};
pub use reader::WalReader;
pub use recovery::RecoveryReport;

/// A log sequence number: the byte position of a record in the log
/// (`segment number × segment size + offset in the segment`). Later records have larger LSNs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
