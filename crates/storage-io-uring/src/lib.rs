//! # storage-io-uring
//!
//! The io_uring backend of storage-io (layer L1, depends on `storage-io-core` only):
//! [`UringStorageIo`] implements [`StorageIo`](storage_io_core::StorageIo) on one ring per
//! instance, with registered buffers and files, optional SQPOLL, continued short transfers, and
//! a datasync that is a real barrier (see the `UringStorageIo` docs for how).
//!
//! [`probe()`] tells whether io_uring can be used here and, when not, why — `ENOSYS`, `EPERM`
//! (`kernel.io_uring_disabled`, seccomp), a missing opcode — as a typed [`Unavailable`].
//!
//! ```no_run
//! use storage_io_core::{IoConfig, StorageIo};
//!
//! match storage_io_uring::probe() {
//!     Ok(report) => println!("io_uring on kernel {}", report.kernel),
//!     Err(why) => println!("falling back: {why}"),
//! }
//! # #[cfg(target_os = "linux")]
//! let io = storage_io_uring::UringStorageIo::new(&IoConfig::default());
//! ```
//!
//! Off Linux only the probe compiles, and it answers [`Unavailable::NotLinux`].

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod probe;
#[cfg(target_os = "linux")]
mod ring;

pub use probe::{ProbeReport, Unavailable, kernel_release, probe};
/// Test helpers (feature `testing`): skip an io_uring test loudly where io_uring is unusable,
/// or fail it when `STORAGE_IO_REQUIRE_URING` is set (as in CI).
#[cfg(any(test, feature = "testing"))]
pub use probe::{uring_required, usable_or_skip};
#[cfg(target_os = "linux")]
pub use ring::UringStorageIo;
