//! One error type for every backend, keeping the OS errno where there is one.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::{IoFd, OpKind};

/// The result type of this workspace.
pub type Result<T, E = StorageIoError> = std::result::Result<T, E>;

/// Everything that can go wrong in a [`StorageIo`](crate::StorageIo) backend.
///
/// Errors are cheap to build (no allocation for the common variants) and cheap to clone, so a
/// backend can return them from its hot path and a scheduler can hand one error to several
/// waiters. [`StorageIoError::errno`] gives the closest OS error number for every variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageIoError {
    /// The backend already has its limit of operations in flight; poll completions, then retry.
    #[error("queue full: {limit} operations already in flight; poll completions before submitting more")]
    QueueFull {
        /// The in-flight limit that was hit (the backend's `queue_depth`).
        limit: usize,
    },

    /// The fd was never registered with this backend, or was deregistered.
    #[error("bad fd {fd}: not registered with this backend (was it deregistered?)")]
    BadFd {
        /// The handle that was passed.
        fd: IoFd,
    },

    /// A bounded buffer pool has no free buffer of the requested size class.
    #[error(
        "buffer pool exhausted: all {limit} buffers of {size_bytes} bytes are in use; drop buffers or raise the pool limit"
    )]
    BufferExhausted {
        /// The size class that ran out.
        size_bytes: usize,
        /// How many buffers that class may hold.
        limit: usize,
    },

    /// The backend (or the component above it) has shut down and accepts no more work.
    #[error("closed: the backend has shut down and accepts no more operations")]
    Closed,

    /// The backend cannot do this at all (a missing kernel feature, an op it does not model).
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is unsupported, and where possible what to do instead.
        what: Cow<'static, str>,
    },

    /// The request itself is wrong: misaligned direct I/O, an oversized write, a zero-length op.
    #[error("invalid argument: {0}")]
    InvalidArgument(InvalidArgument),

    /// A system call that is not an I/O op failed: opening a file, a namespace call
    /// (`remove_file`, `create_dir_all`, `list_dir`, `sync_dir`), setting up, registering with or
    /// entering an io_uring, starting a thread, reserving space. `what` names it, and `path` the
    /// file or directory it was about when there is one: `open /x/y: Not a directory (os error 20)`.
    #[error("{what}{}: {}", OsSubject(path.as_deref()), std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// The call that failed, for example "open" or "io_uring_enter".
        what: &'static str,
        /// The raw OS error number.
        errno: i32,
        /// The path the call was about (`None` for calls without one, such as `io_uring_enter`).
        path: Option<Arc<Path>>,
    },

    /// The directory is in use: another owner — a WAL or page scheduler in this process, or
    /// another process — holds its lock file (see [`Namespace::lock_dir`](crate::Namespace::lock_dir)).
    #[error(
        "{} is locked: another WalManager, DiskScheduler or process has its directory open (one owner per directory); close that one first",
        path.display()
    )]
    DirLocked {
        /// The lock file (`dir/LOCK`).
        path: std::path::PathBuf,
    },

    /// The operating system failed the operation; `errno` is the raw OS error number.
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Io {
        /// The operation that failed.
        op: OpKind,
        /// The raw OS error number (for example `libc::EIO` = 5, `libc::ENOSPC` = 28).
        errno: i32,
    },
}

/// Why a request was refused as invalid. Kept as data so callers can match on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// A direct-I/O request whose offset, length or buffer address is not a multiple of the
    /// file's required alignment.
    Misaligned {
        /// Byte offset in the file.
        offset: u64,
        /// Length of the transfer in bytes.
        len: usize,
        /// Address of the memory buffer.
        buf_addr: usize,
        /// The alignment the file requires.
        align: usize,
    },
    /// A single transfer larger than the configured `max_io_bytes`.
    TooLarge {
        /// Requested length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// `offset + len` does not fit in a `u64`/`i64` file offset.
    OffsetOverflow {
        /// Byte offset in the file.
        offset: u64,
        /// Length of the transfer in bytes.
        len: usize,
    },
    /// Any other refusal, with a static reason.
    Other(&'static str),
    /// Any other refusal, with a reason built at run time (not used on hot paths).
    Message(String),
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidArgument::Misaligned {
                offset,
                len,
                buf_addr,
                align,
            } => write!(
                f,
                "direct I/O needs offset, length and buffer address aligned to {align} bytes \
                 (offset {offset}, length {len}, buffer at {buf_addr:#x}); use AlignedBuf and round the request"
            ),
            InvalidArgument::TooLarge { len, max } => write!(
                f,
                "a single transfer of {len} bytes exceeds max_io_bytes = {max}; split it or raise the limit"
            ),
            InvalidArgument::OffsetOverflow { offset, len } => write!(
                f,
                "offset {offset} + length {len} overflows the largest file offset"
            ),
            InvalidArgument::Other(reason) => f.write_str(reason),
            InvalidArgument::Message(reason) => f.write_str(reason),
        }
    }
}

/// Displays what comes between the call's name and the OS error: ` <path>`, or ` failed`.
struct OsSubject<'a>(Option<&'a Path>);

impl fmt::Display for OsSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, " {}", path.display()),
            None => f.write_str(" failed"),
        }
    }
}

/// Error numbers used when a variant has no OS error of its own, and to tell retryable ones.
#[cfg(unix)]
mod errno {
    pub(super) use libc::{EAGAIN, EBADF, EINTR, EINVAL, EIO, ENOBUFS, ENOENT, EOPNOTSUPP, ESHUTDOWN};
}

/// Off Unix core has no `libc`: the Linux numbers.
#[cfg(not(unix))]
mod errno {
    pub(super) const EIO: i32 = 5;
    pub(super) const EINTR: i32 = 4;
    pub(super) const EBADF: i32 = 9;
    pub(super) const EAGAIN: i32 = 11;
    pub(super) const ENOBUFS: i32 = 105;
    pub(super) const EINVAL: i32 = 22;
    pub(super) const ESHUTDOWN: i32 = 108;
    pub(super) const EOPNOTSUPP: i32 = 95;
    pub(super) const ENOENT: i32 = 2;
    /// Windows' ERROR_PATH_NOT_FOUND: a missing directory on the way (ENOENT on Unix).
    pub(super) const PATH_NOT_FOUND: i32 = 3;
}

impl StorageIoError {
    /// Builds an [`StorageIoError::Io`] from a `std::io::Error` raised by `op`.
    ///
    /// Errors without an OS error number (rare on Unix) map to `EIO` so that nothing is lost as
    /// success; `UnexpectedEof` and `WriteZero` map to `EIO` too, since a backend finishes short
    /// transfers itself and only reports one that cannot make progress.
    pub fn from_io(op: OpKind, err: &std::io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(errno::EIO);
        StorageIoError::Io { op, errno }
    }

    /// Builds an [`StorageIoError::Os`]: the system call `what` failed with `err`.
    pub fn from_os(what: &'static str, err: &std::io::Error) -> Self {
        StorageIoError::Os {
            what,
            errno: err.raw_os_error().unwrap_or(errno::EIO),
            path: None,
        }
    }

    /// Builds an [`StorageIoError::Os`] for a call about `path` (an open, a namespace call):
    /// the message names the call and the path, `open /x/y: Not a directory (os error 20)`.
    pub fn from_os_at(what: &'static str, path: &Path, err: &std::io::Error) -> Self {
        Self::os_at(what, path, err.raw_os_error().unwrap_or(errno::EIO))
    }

    /// Shorthand for an [`StorageIoError::Os`] about `path` with a raw errno (for backends
    /// that model files themselves, such as an in-memory one).
    pub fn os_at(what: &'static str, path: &Path, errno: i32) -> Self {
        StorageIoError::Os {
            what,
            errno,
            path: Some(Arc::from(path)),
        }
    }

    /// The path the failed call was about, when the error names one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StorageIoError::Os { path, .. } => path.as_deref(),
            _ => None,
        }
    }

    /// Shorthand for an [`StorageIoError::Io`] with a raw errno.
    pub const fn os(op: OpKind, errno: i32) -> Self {
        StorageIoError::Io { op, errno }
    }

    /// Shorthand for an [`StorageIoError::InvalidArgument`] with a static reason.
    pub const fn invalid(reason: &'static str) -> Self {
        StorageIoError::InvalidArgument(InvalidArgument::Other(reason))
    }

    /// Shorthand for an [`StorageIoError::Unsupported`] with a static reason.
    pub const fn unsupported(what: &'static str) -> Self {
        StorageIoError::Unsupported {
            what: Cow::Borrowed(what),
        }
    }

    /// The closest OS error number: the real one for [`StorageIoError::Io`], a conventional
    /// one (`EBADF`, `EINVAL`, `EAGAIN`, …) for the others.
    pub fn errno(&self) -> i32 {
        match self {
            StorageIoError::QueueFull { .. } => errno::EAGAIN,
            StorageIoError::BadFd { .. } => errno::EBADF,
            StorageIoError::BufferExhausted { .. } => errno::ENOBUFS,
            StorageIoError::Closed => errno::ESHUTDOWN,
            StorageIoError::Unsupported { .. } => errno::EOPNOTSUPP,
            StorageIoError::InvalidArgument(_) => errno::EINVAL,
            StorageIoError::DirLocked { .. } => errno::EAGAIN,
            StorageIoError::Io { errno, .. } | StorageIoError::Os { errno, .. } => *errno,
        }
    }

    /// True when the file or directory does not exist (`ENOENT`), whichever call reported it:
    /// an open or a namespace call (`Os`) or an I/O op (`Io`). Match on this rather than on a
    /// variant: open and namespace calls are `Os` errors.
    pub fn is_not_found(&self) -> bool {
        let missing =
            self.errno() == errno::ENOENT || (cfg!(windows) && self.errno() == windows_path_not_found());
        matches!(self, StorageIoError::Io { .. } | StorageIoError::Os { .. }) && missing
    }

    /// True when retrying the same request later may succeed (queue full, `EAGAIN`, `EINTR`).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageIoError::QueueFull { .. })
            || matches!(self, StorageIoError::Io { errno, .. } if *errno == errno::EAGAIN || *errno == errno::EINTR)
    }
}

/// Windows reports a missing directory on the way as ERROR_PATH_NOT_FOUND (3), not as the missing
/// file's 2; both mean "not found".
#[cfg(not(unix))]
fn windows_path_not_found() -> i32 {
    errno::PATH_NOT_FOUND
}

#[cfg(unix)]
fn windows_path_not_found() -> i32 {
    -1
}

impl From<StorageIoError> for std::io::Error {
    fn from(err: StorageIoError) -> Self {
        match err {
            StorageIoError::Io { errno, .. } | StorageIoError::Os { errno, .. } => {
                std::io::Error::from_raw_os_error(errno)
            }
            other => {
                let kind = match other {
                    StorageIoError::QueueFull { .. } => std::io::ErrorKind::WouldBlock,
                    StorageIoError::BadFd { .. } | StorageIoError::InvalidArgument(_) => {
                        std::io::ErrorKind::InvalidInput
                    }
                    StorageIoError::Unsupported { .. } => std::io::ErrorKind::Unsupported,
                    StorageIoError::Closed => std::io::ErrorKind::BrokenPipe,
                    StorageIoError::DirLocked { .. } => std::io::ErrorKind::ResourceBusy,
                    _ => std::io::ErrorKind::Other,
                };
                std::io::Error::new(kind, other)
            }
        }
    }
}

/// A refused submission that carries the caller's buffer back, so nothing is lost on failure.
///
/// Returned by the submit calls that take an owned buffer
/// ([`StorageIo::submit_read`](crate::StorageIo::submit_read),
/// [`StorageIo::submit_write_buf`](crate::StorageIo::submit_write_buf)).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SubmitError<B> {
    /// Why the submission was refused.
    pub error: StorageIoError,
    /// The buffer that was passed in, unchanged.
    pub buf: B,
}

impl<B> SubmitError<B> {
    /// Pairs an error with the buffer to hand back.
    pub fn new(error: StorageIoError, buf: B) -> Self {
        SubmitError { error, buf }
    }

    /// Splits into the error and the buffer.
    pub fn into_parts(self) -> (StorageIoError, B) {
        (self.error, self.buf)
    }
}

impl<B> From<SubmitError<B>> for StorageIoError {
    fn from(err: SubmitError<B>) -> Self {
        err.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_errno_and_say_what_failed() {
        let err = StorageIoError::from_io(OpKind::Datasync, &std::io::Error::from_raw_os_error(28));
        assert_eq!(err.errno(), 28);
        let text = err.to_string();
        assert!(text.starts_with("datasync failed"), "{text}");
        assert!(text.contains("os error 28"), "{text}");
        let back: std::io::Error = err.into();
        assert_eq!(back.raw_os_error(), Some(28));
    }

    #[test]
    fn a_failed_system_call_names_itself_not_an_io_op() {
        let err = crate::open_file(
            std::path::Path::new("/no/such/dir/file"),
            &crate::OpenOptions::default(),
        )
        .map(drop)
        .unwrap_err();
        assert!(matches!(err, StorageIoError::Os { what: "open", .. }), "{err:?}");
        assert!(err.to_string().starts_with("open /no/such/dir/file: "), "{err}");
        let spawn = StorageIoError::from_os(
            "spawning an I/O worker thread",
            &std::io::Error::from_raw_os_error(11),
        );
        assert_eq!(spawn.errno(), errno::EAGAIN);
        // Retryable means an I/O op's EAGAIN or EINTR (libc's numbers), not a failed call.
        assert!(StorageIoError::os(OpKind::Read, errno::EINTR).is_retryable());
        assert!(StorageIoError::os(OpKind::Read, errno::EAGAIN).is_retryable());
        assert!(!spawn.is_retryable());
        let back: std::io::Error = spawn.into();
        assert_eq!(back.raw_os_error(), Some(11));
    }

    #[test]
    fn a_missing_file_is_not_found_whichever_call_reported_it() {
        let open = crate::open_file(
            std::path::Path::new("/no/such/dir/file"),
            &crate::OpenOptions::default(),
        )
        .map(drop)
        .unwrap_err();
        assert!(open.is_not_found(), "{open:?}");
        assert_eq!(open.path(), Some(std::path::Path::new("/no/such/dir/file")));
        assert!(StorageIoError::os(OpKind::Read, errno::ENOENT).is_not_found());
        assert!(!StorageIoError::os(OpKind::Read, errno::EIO).is_not_found());
        assert!(!StorageIoError::Closed.is_not_found());
    }

    #[test]
    fn misaligned_message_names_every_number_and_the_fix() {
        let err = StorageIoError::InvalidArgument(InvalidArgument::Misaligned {
            offset: 100,
            len: 4096,
            buf_addr: 0x1000,
            align: 4096,
        });
        let text = err.to_string();
        for needle in ["offset 100", "length 4096", "0x1000", "4096 bytes", "AlignedBuf"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(err.errno(), errno::EINVAL);
    }

    #[test]
    fn submit_error_hands_the_buffer_back() {
        let err = SubmitError::new(StorageIoError::Closed, vec![1u8, 2, 3]);
        let (e, buf) = err.into_parts();
        assert_eq!(e, StorageIoError::Closed);
        assert_eq!(buf, vec![1, 2, 3]);
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        assert!(StorageIoError::QueueFull { limit: 1 }.is_retryable());
        assert!(StorageIoError::os(OpKind::Read, errno::EAGAIN).is_retryable());
        assert!(!StorageIoError::os(OpKind::Write, errno::EIO).is_retryable());
        assert!(!StorageIoError::Closed.is_retryable());
    }
}
