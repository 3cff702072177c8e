//! [`WalConfig`]: every knob of the WAL, with its default.

use serde::{Deserialize, Serialize};

use crate::error::WalError;
use crate::format::{MIN_SEGMENT_BYTES, max_payload_bytes};

/// When a commit counts as done, and who pays for the fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum SyncMode {
    /// Every [`commit`](crate::WalManager::commit) returns after an fdatasync that covers its
    /// record. The first committer to find no flush running writes and syncs everything
    /// appended so far; committers that arrive meanwhile wait for the next flush, which one of
    /// them leads. No delay is added to gather a batch.
    Sync,
    /// Group commit: like `Sync`, but the leader waits up to `max_delay_us` (or until
    /// `max_batch_bytes` are waiting) for more committers to join before it writes. One write
    /// and one fdatasync per segment touched cover the whole batch.
    Group {
        /// Longest a leader waits for more records before writing, in microseconds.
        max_delay_us: u64,
        /// A leader stops waiting once this many bytes are ready.
        max_batch_bytes: usize,
    },
    /// [`commit`](crate::WalManager::commit) returns once the record is appended in memory; a
    /// background thread writes and syncs every `interval_ms`. A crash may lose the last
    /// interval's commits (PostgreSQL's `synchronous_commit = off`).
    Async {
        /// Time between background flushes, in milliseconds.
        interval_ms: u64,
    },
    /// Records are written to the OS but never synced: a commit survives a process crash, not
    /// a power loss. For tests and throw-away data.
    None,
}

impl SyncMode {
    /// True when a flush ends with an fdatasync.
    pub fn syncs(self) -> bool {
        !matches!(self, SyncMode::None)
    }
}

/// What recovery does when it finds an invalid record that is followed by valid ones. A torn
/// tail is always cut off, under either policy: nothing valid after the first invalid frame,
/// or valid frames only inside the in-flight window after it
/// ([`TORN_WINDOW_BYTES`](crate::format::TORN_WINDOW_BYTES): writes that landed while an
/// earlier one in flight did not, never acknowledged). The table on [`recovery`](crate::recovery)
/// lists every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryPolicy {
    /// Keep the log up to the first invalid record and cut everything after it, reporting how
    /// many valid records beyond the window were cut
    /// ([`RecoveryReport::skipped_valid_records`]). The default: it opens whatever a crash
    /// left, and reports damage rather than refusing.
    ///
    /// [`RecoveryReport::skipped_valid_records`]: crate::RecoveryReport::skipped_valid_records
    #[default]
    PointInTime,
    /// Refuse to open ([`WalError::Corrupt`]) when valid records follow an invalid one beyond
    /// the in-flight window, so that damage in the middle of the log is never cut without a
    /// person looking. A crash cannot leave that (the writer keeps every write in flight
    /// inside the window), except in the middle of one flush larger than the window.
    Strict,
}

/// Configuration of a [`WalManager`](crate::WalManager) (serde; unknown fields are refused).
///
/// ```
/// use storage_io_wal::{SyncMode, WalConfig};
/// let config: WalConfig = serde_json::from_str(
///     r#"{ "segment_size_bytes": 16777216, "sync_mode": { "mode": "group", "max_delay_us": 200, "max_batch_bytes": 65536 } }"#,
/// ).unwrap();
/// assert_eq!(config.segment_size_bytes, 16 << 20);
/// assert!(matches!(config.sync_mode, SyncMode::Group { max_delay_us: 200, .. }));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// Size of every segment file, in bytes. Default 64 MiB. An existing log keeps the size it
    /// was written with (read from its segment headers).
    pub segment_size_bytes: u64,
    /// When commits are durable. Default `Group { max_delay_us: 0, max_batch_bytes: 1 MiB }`:
    /// batches form while the previous fdatasync runs, with no added delay.
    pub sync_mode: SyncMode,
    /// Zero-fill each new segment to its full size before the first record goes in, so that
    /// later fdatasyncs update no file size or extent map and a full disk shows up when a
    /// segment is created rather than in the middle of a commit. Default true.
    pub preallocate: bool,
    /// With `preallocate`, zero-fill the next segment on a background thread (through its own
    /// backend, `factory(2)`) while the current one fills, so the flush that moves into a new
    /// segment writes only its records instead of the whole segment first. If the next segment
    /// is not ready yet the flush waits for the fill under way; if preparing it failed, or the
    /// factory gives no backend for the thread, the flush creates it as without this. A crash
    /// can leave a prepared segment past the end of the log, which recovery removes (and lists
    /// in [`RecoveryReport::removed_segments`](crate::RecoveryReport::removed_segments)); a
    /// clean close removes it. Default true.
    pub prepare_ahead: bool,
    /// What recovery does with valid records after an invalid one. Default `PointInTime`.
    pub recovery: RecoveryPolicy,
    /// Largest single write handed to the backend, in bytes (larger flushes are split).
    /// Default 1 MiB; keep it at or below the backend's `max_io_bytes`.
    pub write_chunk_bytes: usize,
    /// Write segments with `O_DIRECT | O_DSYNC`: each write bypasses the page cache and is
    /// durable when it completes, so flushes issue no fdatasync (and every sync mode, `None`
    /// included, makes what it writes durable). Writes are widened to 4 KiB blocks: a flush
    /// that starts inside a block rewrites the block's earlier bytes (kept in memory from the
    /// previous flush) and pads the rest with zeros, which stay zeros until the next flush
    /// overwrites them. Needs `segment_size_bytes` to be a multiple of 4096. Where the file
    /// system refuses direct I/O (tmpfs), segments are opened buffered with `O_DSYNC`, with a
    /// warning. O_DSYNC is trusted only where the file system is known to honour it for writes
    /// submitted asynchronously (ext4, XFS, btrfs: `storage_io_core::dsync_trusted_at`); on any
    /// other (FUSE, tmpfs, NFS) every flush adds an fdatasync, with a warning at open. An
    /// in-memory backend's directory is not on an OS file system: its own O_DSYNC is trusted.
    /// Default false.
    pub direct_io: bool,
    /// Buffered mode: each flush writes (`pwrite`) and fdatasyncs on the flushing thread (the
    /// committer that leads the flush, or the WAL I/O thread for async commits), on OS handles
    /// of the segments, instead of through the backend. On io_uring a buffered write to ext4
    /// and every datasync go to a kernel worker thread: a cross-CPU wake-up each way, which a
    /// single committer pays in every commit. In-memory backends (no OS file) and `direct_io`
    /// always go through the backend. Default true (the measurement:
    /// docs/benchmarks.md in the storage-io repository).
    pub inline_io: bool,
    /// Flushes in flight at once (1 to 8). A commit is acknowledged only once every earlier
    /// flush is durable too; while flushes are in flight, no bytes go out more than
    /// [`TORN_WINDOW_BYTES`](crate::format::TORN_WINDOW_BYTES) past the durable end, which is
    /// what lets recovery read a hole among them as a torn tail.
    /// - Buffered mode with `inline_io`: while one flush's fdatasync runs, the next batch is
    ///   written and synced beside it (ext4 runs fdatasyncs of one file concurrently).
    /// - `direct_io`: each flush's O_DIRECT | O_DSYNC writes go out on a flush slot (a backend
    ///   of its own, from the factory's index 0) while the next batch is staged. A batch that
    ///   may have company in flight ends in a pad record, so that the next starts on a fresh
    ///   4 KiB block and no two writes in flight share one; a lone committer's batches are not
    ///   padded.
    /// - Other modes keep one.
    ///
    /// Default 1: on the VM this was measured on (a virtio disk without FUA, where every
    /// O_DSYNC write is a write and a cache flush) more in flight made smaller batches whose
    /// flushes queued behind each other's cache flushes, and committed fewer records per second
    /// in both modes (the figures: docs/benchmarks.md in the storage-io repository). Measure on your device.
    pub max_flushes_in_flight: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size_bytes: 64 << 20,
            sync_mode: SyncMode::Group {
                max_delay_us: 0,
                max_batch_bytes: 1 << 20,
            },
            preallocate: true,
            prepare_ahead: true,
            recovery: RecoveryPolicy::PointInTime,
            write_chunk_bytes: 1 << 20,
            direct_io: false,
            inline_io: true,
            max_flushes_in_flight: 1,
        }
    }
}

impl WalConfig {
    /// Checks every field; the error says which one is wrong and what would be right.
    pub fn validate(&self) -> Result<(), WalError> {
        if self.segment_size_bytes < MIN_SEGMENT_BYTES || self.segment_size_bytes > u32::MAX as u64 {
            return Err(WalError::InvalidConfig(format!(
                "segment_size_bytes = {} is out of range: use {MIN_SEGMENT_BYTES} to {} bytes",
                self.segment_size_bytes,
                u32::MAX
            )));
        }
        if !(1..=8).contains(&self.max_flushes_in_flight) {
            return Err(WalError::InvalidConfig(format!(
                "max_flushes_in_flight = {} is out of range: use 1 to 8",
                self.max_flushes_in_flight
            )));
        }
        if self.write_chunk_bytes < 4096 {
            return Err(WalError::InvalidConfig(format!(
                "write_chunk_bytes = {} is too small: use at least 4096",
                self.write_chunk_bytes
            )));
        }
        if self.direct_io && !self.segment_size_bytes.is_multiple_of(4096) {
            return Err(WalError::InvalidConfig(format!(
                "segment_size_bytes = {} must be a multiple of 4096 with direct_io",
                self.segment_size_bytes
            )));
        }
        if let SyncMode::Async { interval_ms: 0 } = self.sync_mode {
            return Err(WalError::InvalidConfig(
                "sync_mode async needs interval_ms > 0 (use sync or group for immediate durability)".into(),
            ));
        }
        Ok(())
    }

    /// How far recovery reads past the end of a segment's valid frames (or its last non-zero
    /// byte) to prove that no write in flight at a crash landed beyond: the flushes that may be
    /// in flight at once (`max_flushes_in_flight`) times the most one flush hands the backend
    /// at once (`write_chunk_bytes`, or a group's `max_batch_bytes` when larger), and never
    /// more than [`TORN_WINDOW_BYTES`](crate::format::TORN_WINDOW_BYTES), the bound the writer
    /// keeps while flushes are in flight. A reopen reads the log and this much after it, not the
    /// preallocated rest of its segment (1 MiB with the defaults). Frames a crash left farther
    /// out (a lone flush larger than this, or a log written with a larger window than it is
    /// reopened with) are cut like the rest of a torn tail without being read; reopen a log
    /// with the `max_flushes_in_flight` and chunk sizes it was written with, or larger.
    pub fn in_flight_window_bytes(&self) -> u64 {
        let batch = match self.sync_mode {
            SyncMode::Group { max_batch_bytes, .. } => max_batch_bytes,
            _ => 0,
        };
        let per_flush = self.write_chunk_bytes.max(batch) as u64;
        (self.max_flushes_in_flight as u64)
            .saturating_mul(per_flush)
            .min(crate::format::TORN_WINDOW_BYTES)
    }

    /// The largest record payload this configuration accepts.
    pub fn max_record_bytes(&self) -> u64 {
        max_payload_bytes(self.segment_size_bytes)
    }
}
