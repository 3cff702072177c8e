//! [`DirLock`]: one owner per directory. A component that keeps state in a directory (the
//! WAL's segments, a page scheduler's files and allocation images) takes the directory's lock
//! at open, through [`Namespace::lock_dir`](crate::Namespace::lock_dir), and holds it until
//! it closes; a second owner — in this process or another — is refused with
//! [`StorageIoError::DirLocked`] instead of corrupting the first one's files (RocksDB, redb
//! and sled do the same).

use std::fmt;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageIoError};

/// The name of the lock file in a locked directory. The file is created on first use and never
/// removed: the lock is the `flock` on it, not its existence, so a process that died holding
/// it leaves no stale lock behind.
pub const DIR_LOCK_FILE_NAME: &str = "LOCK";

/// An exclusive lock on a directory, from [`Namespace::lock_dir`](crate::Namespace::lock_dir);
/// released when dropped (or when the process ends, however it ends).
///
/// ```
/// use storage_io_core::{StorageIo, StorageIoError};
///
/// fn open_exclusively(io: &mut dyn StorageIo, dir: &std::path::Path) -> storage_io_core::Result<()> {
///     io.create_dir_all(dir)?;
///     let lock = io.lock_dir(dir)?; // a second owner gets StorageIoError::DirLocked
///     assert!(matches!(io.lock_dir(dir), Err(StorageIoError::DirLocked { .. })));
///     drop(lock); // the next owner may come
///     Ok(())
/// }
/// # let _ = open_exclusively;
/// ```
pub struct DirLock {
    path: PathBuf,
    /// Releases the lock when dropped: the locked file, or a backend's own guard.
    _guard: Box<dyn Send + Sync>,
}

impl DirLock {
    /// A lock that `guard` holds until it is dropped, for a backend with a file system of its
    /// own (the testkit's in-memory one) whose [`lock_dir`](crate::Namespace::lock_dir) keeps
    /// its own lock table; `path` names the lock (`dir/LOCK`).
    pub fn from_guard(path: PathBuf, guard: impl Send + Sync + 'static) -> DirLock {
        DirLock {
            path,
            _guard: Box::new(guard),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirLock")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Locks the real directory `dir`, as the default [`Namespace::lock_dir`](crate::Namespace::lock_dir)
/// does: opens (creating) `dir/LOCK` and takes an exclusive lock on it without waiting —
/// `flock(LOCK_EX | LOCK_NB)` on Unix, `LockFileEx` on Windows (std's `File::try_lock`). An
/// `flock` belongs to the open file description, so a second lock of the same directory fails
/// in the same process as it does in another. `dir` must exist.
pub fn lock_dir_default(dir: &Path) -> Result<DirLock> {
    let path = dir.join(DIR_LOCK_FILE_NAME);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageIoError::from_os("open", &e))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock::from_guard(path, file)),
        Err(TryLockError::WouldBlock) => Err(StorageIoError::DirLocked { path }),
        Err(TryLockError::Error(e)) => Err(StorageIoError::from_os("flock", &e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn a_directory_has_one_lock_holder_in_one_process_until_the_guard_drops() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock_dir_default(tmp.path()).unwrap();
        assert_eq!(first.path(), tmp.path().join(DIR_LOCK_FILE_NAME));
        match lock_dir_default(tmp.path()) {
            Err(e @ StorageIoError::DirLocked { .. }) => {
                let message = e.to_string();
                assert!(message.contains(&*first.path().to_string_lossy()), "{message}");
                assert!(message.contains("another WalManager"), "{message}");
            }
            other => panic!("a second lock of a locked directory: {other:?}"),
        }
        drop(first);
        drop(lock_dir_default(tmp.path()).unwrap());
        // The file stays: the lock is the flock, not the file.
        assert!(tmp.path().join(DIR_LOCK_FILE_NAME).exists());
    }
}
