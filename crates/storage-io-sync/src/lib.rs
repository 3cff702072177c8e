//! # storage-io-sync
//!
//! The portable backends of storage-io (layer L1), both implementing
//! [`StorageIo`](storage_io_core::StorageIo) from `storage-io-core`:
//!
//! - [`SyncStorageIo`] performs each op inline in `submit_*` and stages the completion for the
//!   next poll: deterministic, no threads, no allocation after warm-up. The reference backend.
//! - [`ThreadPoolStorageIo`] hands ops to worker threads doing blocking positional I/O
//!   (PostgreSQL's `io_method=worker`); the caller never blocks in submit or poll.
//!
//! Both use Unix positional I/O (`pread`/`pwrite`); on Windows they compile against
//! `seek_read`/`seek_write`. Both finish short transfers, retry `EINTR`, keep errno in every error,
//! and pass `storage_io_testkit::conformance::run`.
//!
//! ```
//! use storage_io_core::{IoConfig, OpenOptions, StorageIo};
//! use storage_io_sync::ThreadPoolStorageIo;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut io = ThreadPoolStorageIo::new(&IoConfig::default()).unwrap();
//! let fd = io.open_file(&dir.path().join("log"), &OpenOptions::create()).unwrap();
//! io.submit_append(fd, b"record-1").unwrap();
//! io.submit_datasync(fd).unwrap();
//! let mut done = Vec::new();
//! io.wait_completions(&mut done, 2, None).unwrap();
//! assert!(done.iter().all(|c| c.is_ok()));
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod blocking;
mod exec;
mod inline;
mod pool;

pub use blocking::{BlockingBackend, StdFiles};
pub use inline::SyncStorageIo;
pub use pool::{BlockingIo, ThreadPoolStorageIo};
