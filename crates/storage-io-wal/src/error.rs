//! [`WalError`]: everything the WAL can answer instead of success.

use storage_io_core::StorageIoError;

use crate::Lsn;

/// Errors of the WAL. Cheap to clone, so one failure can be handed to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O error while opening, recovering, reading or truncating (not while committing:
    /// those poison the WAL, see [`WalError::Poisoned`]).
    #[error("wal i/o error: {0}")]
    Io(#[from] StorageIoError),

    /// A write or fdatasync of the log failed earlier, so what is on disk is unknown. The WAL
    /// accepts nothing more; reopen it, which recovers what is durable. A failed fdatasync is
    /// never retried as success.
    #[error("wal failed earlier ({cause}); nothing more is accepted: reopen the wal to recover")]
    Poisoned {
        /// The error that failed the WAL.
        cause: StorageIoError,
    },

    /// The disk is full: a new segment could not be created or a write got `ENOSPC`. Nothing
    /// acknowledged is lost; records not yet durable stay queued. The commit that got this did
    /// not become durable (it may still, with a later flush). Free space and retry.
    #[error("wal disk full: {cause}; free space and retry (nothing acknowledged was lost)")]
    DiskFull {
        /// The underlying error (`ENOSPC`).
        cause: StorageIoError,
    },

    /// A record larger than the segment can hold.
    #[error(
        "record of {len} bytes is larger than the {max} bytes a segment can hold; raise segment_size_bytes"
    )]
    RecordTooLarge {
        /// Payload length asked for.
        len: usize,
        /// The largest payload of the configured segment size.
        max: u64,
    },

    /// Recovery under [`RecoveryPolicy::Strict`](crate::RecoveryPolicy::Strict) found valid
    /// records after an invalid one.
    #[error(
        "wal corrupt at lsn {at}: the record there is invalid but {valid_after} valid records follow \
         (first at lsn {first_valid_after}); inspect the log, or open with recovery = point_in_time to cut it there"
    )]
    Corrupt {
        /// The first invalid position.
        at: Lsn,
        /// How many valid records follow it.
        valid_after: usize,
        /// The first of them.
        first_valid_after: Lsn,
    },

    /// `wait_durable` or a reader was given an LSN the log does not hold.
    #[error("lsn {lsn} is not in the log (the log holds {first} up to {next})")]
    LsnOutOfRange {
        /// The LSN asked for.
        lsn: Lsn,
        /// The first LSN still in the log.
        first: Lsn,
        /// The LSN the next record will get.
        next: Lsn,
    },

    /// The log has reached the end of the LSN space: the record (or the segment the log would
    /// go on in) would lie past 2^64, where no position can be named. Nothing was queued; what
    /// was appended before stays. Start a new log in another directory.
    #[error(
        "wal lsn space exhausted at {at}: no segment can follow, positions would pass 2^64; start a new log in another directory"
    )]
    LsnSpaceExhausted {
        /// Where the log ends: the position the refused record would have needed to follow.
        at: Lsn,
    },

    /// The configuration is refused; the message names the field.
    #[error("invalid wal config: {0}")]
    InvalidConfig(String),

    /// The WAL was closed.
    #[error("wal closed: it accepts no more records")]
    Closed,

    /// Another owner has the log's directory open: a [`WalManager`](crate::WalManager) in this
    /// process or another process holds its lock file. Two writers on one log would corrupt
    /// each other; close the other one first.
    #[error(
        "the wal directory is in use: its lock {} is held by another WalManager or process (one per directory); close that one first",
        path.display()
    )]
    DirLocked {
        /// The lock file (`dir/LOCK`).
        path: std::path::PathBuf,
    },

    /// The log's directory holds a file named like a segment that this WAL cannot have
    /// written: a `.wal` name other than exactly 16 lower-case hex digits, or a segment number
    /// whose positions would pass 2^64. Nothing was changed; the file is left alone.
    #[error("{} is named like a wal segment but no log can have written it ({reason}); move it out of the wal directory", path.display())]
    ForeignFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be a segment of this log.
        reason: String,
    },
}

impl WalError {
    /// The OS error number behind this error, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            WalError::Io(e) | WalError::Poisoned { cause: e } | WalError::DiskFull { cause: e } => {
                Some(e.errno())
            }
            _ => None,
        }
    }
}
