//! # storage-io-core
//!
//! The bottom layer (L0) of storage-io: the [`StorageIo`] trait that every disk I/O backend
//! implements, and the values that cross it — [`IoFd`], [`IoToken`], [`IoCompletion`],
//! [`IoBuf`]/[`AlignedBuf`], [`StorageIoError`] — plus [`BufferPool`], [`IoConfig`] and
//! [`IoStats`]. It holds no backend: the inline and thread-pool backends live in
//! `storage-io-sync`, io_uring in `storage-io-uring`, and the conformance suite that checks any
//! backend against the contract in `storage-io-testkit`.
//!
//! ```text
//! L3  storage-io (façade)
//! L2  storage-io-scheduler, storage-io-wal
//! L1  storage-io-uring, storage-io-sync, storage-io-testkit
//! L0  storage-io-core   <- this crate
//! ```
//!
//! A submit/poll round trip, generic over the backend:
//!
//! ```
//! use storage_io_core::{AlignedBuf, IoCompletion, StorageIo};
//!
//! fn read_page(io: &mut dyn StorageIo, fd: storage_io_core::IoFd, page: u64) -> Vec<u8> {
//!     let buf = AlignedBuf::page_aligned(4096).unwrap();
//!     let token = io.submit_read(fd, buf.into(), page * 4096).map_err(|e| e.error).unwrap();
//!     let mut done: Vec<IoCompletion> = Vec::with_capacity(8);
//!     io.wait_completions(&mut done, 1, None).unwrap();
//!     let c = done.pop().unwrap();
//!     assert_eq!(c.token, token);
//!     c.result.unwrap();
//!     c.buf.unwrap().into_vec()
//! }
//! # let _ = read_page;
//! ```
//!
//! A thread that owns a backend and serves a request channel (a scheduler worker, an async file
//! worker) runs [`io_thread::IoLoop`]: channel intake, the backend's waker, a bounded fallback
//! poll, in one place. State transitions check their invariants with [`invariant!`] (a panic
//! in debug builds, an error logged in release builds).
//!
//! Core's OS-specific code sits behind `cfg` in [`platform`] (positional I/O, datasync,
//! direct-I/O and `O_DSYNC` open flags, directory sync, locks, per OS — every crate of the
//! workspace calls it rather than `std::os::unix`), the page-cache read attempt
//! (`read_nowait`, `preadv2(RWF_NOWAIT)`, Linux only), and the `statfs` behind
//! [`dsync_trusted_at`] (Linux only).

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod backend;
mod barrier;
mod buf;
mod config;
mod dir_lock;
mod direct;
mod error;
mod fd_table;
mod inline_queue;
mod invariant;
pub mod io_thread;
mod namespace;
mod nowait;
mod op;
pub mod platform;
mod queued;
mod queued_io;
mod stats;
mod wake;

pub use backend::{BackendFactory, OpenedFd, StorageIo};
pub use buf::{AlignedBuf, BufferPool, BufferPoolConfig, DEFAULT_ALIGNMENT, IoBuf};
/// The `bytes` crate, re-exported: [`StorageIo::submit_write_bytes`] takes its `Bytes`.
pub use bytes;
pub use config::{
    BackendKind, IoConfig, MAX_FILES_LIMIT, MAX_REGISTERED_BYTES, parse_override, parse_override_bool,
};
pub use dir_lock::{DIR_LOCK_FILE_NAME, DirLock};
pub use direct::{
    DirectMode, OpenOptions, OpenedFile, direct_alignment, dsync_trusted_at, dsync_trusted_magic, open_file,
};
pub use error::{InvalidArgument, Result, StorageIoError, SubmitError};
/// The `hdrhistogram` crate, re-exported: [`IoStats::latency_ns`] returns its `Histogram`.
pub use hdrhistogram;
pub use invariant::invariant_broken;
pub use namespace::{FileMetadata, Namespace};
pub use op::{Capabilities, IoCompletion, IoFd, IoToken, OpKind};
pub use stats::{IoStats, IoStatsSnapshot, OpKindSnapshot};
pub use wake::WaitWaker;

/// What only a backend's implementer needs: the pieces our own backends are built from, for a
/// backend of yours to keep the contract the same way. A user of a backend needs none of them.
///
/// - bookkeeping: [`FdTable`](backend_kit::FdTable) (descriptors with generations),
///   [`TokenCounter`](backend_kit::TokenCounter) (one token counter for every op kind),
///   [`InlineQueue`](backend_kit::InlineQueue) and [`InlineBackend`](backend_kit::InlineBackend)
///   (a backend that finishes ops inside `submit_*`), [`deliver_ready`](backend_kit::deliver_ready);
/// - ordering: [`DatasyncBarrier`](backend_kit::DatasyncBarrier) (the datasync barrier's
///   hold/release rule);
/// - transfers: [`plan_write`](backend_kit::plan_write),
///   [`validate_transfer`](backend_kit::validate_transfer), [`file_facts`](backend_kit::file_facts),
///   [`file_len_of`](backend_kit::file_len_of), [`FixedBufs`](backend_kit::FixedBufs)
///   (registered-buffer areas);
/// - queued backends (ops handed to workers or a kernel ring):
///   [`QueuedIo`](backend_kit::QueuedIo) over an [`OpTable`](backend_kit::OpTable) (slots,
///   tokens, ready queue, per-file cursor, barrier and page-cache gate, staging) and the
///   backend's [`OpDriver`](backend_kit::OpDriver), which only starts ops and hands their
///   completions back; [`forward_storage_io!`] for a backend type wrapping one;
/// - the page-cache fast path: [`NowaitGate`](backend_kit::NowaitGate),
///   [`read_nowait`](backend_kit::read_nowait);
/// - waking a blocked wait: [`WakeState`](backend_kit::WakeState) (behind
///   [`WaitWaker`]);
/// - [`lock_dir_default`](backend_kit::lock_dir_default), the real-directory lock behind
///   [`Namespace::lock_dir`].
pub mod backend_kit {
    pub use crate::barrier::DatasyncBarrier;
    pub use crate::buf::FixedBufs;
    pub use crate::dir_lock::lock_dir_default;
    pub use crate::direct::{file_facts, file_len_of, plan_write, validate_transfer};
    pub use crate::fd_table::FdTable;
    pub use crate::inline_queue::{InlineBackend, InlineQueue, InlineWrite, deliver_ready};
    #[cfg(unix)]
    pub use crate::nowait::read_nowait;
    pub use crate::nowait::{NowaitGate, NowaitRead};
    pub use crate::op::TokenCounter;
    pub use crate::queued::{
        DriverOpened, MAX_RETRIES, OpDriver, OpFile, OpPayload, OpSlot, OpTable, registered_index,
    };
    pub use crate::queued_io::QueuedIo;
    pub use crate::wake::WakeState;
}
