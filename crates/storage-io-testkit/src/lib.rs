//! # storage-io-testkit
//!
//! Test tools for any [`StorageIo`](storage_io_core::StorageIo) backend (layer L1, depends on
//! `storage-io-core` only). Add it as a dev-dependency.
//!
//! - [`conformance::run`]: one call checks the whole contract — read-after-write, unique tokens,
//!   buffers coming back, the datasync barrier, appends, bad fds, deregistering with ops in
//!   flight, errno-keeping errors, direct-I/O alignment, EOF, queue-full, and thousands of random
//!   ops against an in-memory model. [`conformance_tests!`] makes one `#[test]` per case
//!   instead, so that one failure does not hide the rest.
//! - [`memio::MemFs`] / [`memio::MemIo`]: in-memory files with a volatile and a durable state;
//!   `crash()` drops unsynced writes (optionally tearing the last one at 512-byte sectors), and
//!   lands each O_DSYNC write still in flight whole, not at all, or torn.
//! - [`alloc::CountingAllocator`]: counts heap allocations on one thread, for Ring-0 tests.
//! - [`faulty::FaultyIo`]: wraps any backend and injects EIO/ENOSPC/EAGAIN, short transfers, and
//!   delayed or reordered completions, at the Nth op or on a seeded schedule.
//! - [`gated::GatedIo`]: holds completions back until the test opens a [`gated::Gate`], to keep
//!   ops in flight without sleeps.
//!
//! ```
//! use storage_io_core::{OpKind, OpenOptions, StorageIo};
//! use storage_io_testkit::faulty::{Fault, FaultPlan, FaultyIo};
//! use storage_io_testkit::memio::MemFs;
//!
//! let fs = MemFs::new(1);
//! let mut io = FaultyIo::new(fs.backend(), FaultPlan::new(1).fail_nth(OpKind::Datasync, 1, Fault::Eio));
//! let fd = io.open_file("/wal/0".as_ref(), &OpenOptions::create()).unwrap();
//! io.submit_append(fd, b"commit").unwrap();
//! io.submit_datasync(fd).unwrap();
//! let mut done = Vec::new();
//! io.wait_completions(&mut done, 2, None).unwrap();
//! assert_eq!(done[1].result.as_ref().unwrap_err().errno(), 5); // EIO, never success
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod alloc;
pub mod conformance;
pub mod corpus;
pub mod faulty;
pub mod gated;
pub mod memio;
