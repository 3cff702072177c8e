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
//! Core has no OS-specific code except the direct-I/O open helper ([`open_file`]), which needs
//! `O_DIRECT`, and the page-cache read attempt (`read_nowait`, `preadv2(RWF_NOWAIT)`); both sit
//! behind `cfg` and use `libc`.

mod backend;
mod barrier;
mod buf;
mod config;
mod direct;
mod error;
mod fd_table;
mod inline_queue;
mod nowait;
mod op;
mod stats;
mod wake;

pub use backend::{BackendFactory, OpenedFd, StorageIo, list_dir_default, sync_dir_default};
pub use barrier::DatasyncBarrier;
pub use buf::{AlignedBuf, BufferPool, BufferPoolConfig, DEFAULT_ALIGNMENT, FixedBufs, IoBuf};
pub use config::{BackendKind, IoConfig};
pub use direct::{
    DirectMode, OpenOptions, OpenedFile, direct_alignment, dsync_trusted_at, dsync_trusted_magic, file_facts,
    file_len_of, open_file, plan_write, validate_transfer,
};
pub use error::{InvalidArgument, Result, StorageIoError, SubmitError};
pub use fd_table::FdTable;
pub use inline_queue::{InlineBackend, InlineQueue, InlineWrite, deliver_ready};
pub use nowait::{NowaitGate, NowaitRead, cached_read_completion, stage_cached_read};
#[cfg(unix)]
pub use nowait::{read_nowait, try_cached_read};
pub use op::{Capabilities, IoCompletion, IoFd, IoToken, OpKind, TokenCounter};
pub use stats::{IoStats, IoStatsSnapshot, OpKindSnapshot};
pub use wake::{WaitWaker, WakeState};
