//! [`Namespace`]: the directory side of a backend — creating, listing, renaming and removing
//! names, directory sync and locks — apart from [`StorageIo`](crate::StorageIo)'s queue.
//!
//! Every method has a default over `std::fs` on the real file system, so a backend of real
//! files implements it with an empty `impl Namespace for MyIo {}`; in-memory backends (the
//! testkit's MemIo) answer for their own files. Errors name the call and the path.

use std::path::{Path, PathBuf};

use crate::dir_lock::DirLock;
use crate::error::{Result, StorageIoError};

/// What [`Namespace::metadata`] says of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMetadata {
    /// Length in bytes (0 for a directory on backends without one).
    pub len: u64,
    /// True for a directory.
    pub is_dir: bool,
}

/// Names and directories of a backend's files (see the module docs). Components above the
/// backend (the WAL finding its segments, a scheduler creating its directory) go through this,
/// so that in-memory backends can answer for their own files. A directory entry created,
/// renamed or removed is durable once [`sync_dir`](Namespace::sync_dir) runs on its directory.
///
/// ```
/// use storage_io_core::{Namespace, StorageIo};
///
/// fn replace(io: &mut dyn StorageIo, dir: &std::path::Path) -> storage_io_core::Result<u64> {
///     io.create_dir_all(dir)?;
///     let (tmp, live) = (dir.join("state.tmp"), dir.join("state"));
///     let fd = io.open_file(&tmp, &storage_io_core::OpenOptions::create())?;
///     io.deregister_fd(fd)?;
///     io.rename(&tmp, &live)?;
///     io.sync_dir(dir)?; // the rename survives a crash from here on
///     Ok(io.metadata(&live)?.len)
/// }
/// # let _ = replace;
/// ```
pub trait Namespace: Send {
    /// Makes the directory entries of files created, renamed or removed in `dir` durable
    /// (fsync on the directory; a no-op on Windows, where NTFS journals them).
    fn sync_dir(&mut self, dir: &Path) -> Result<()> {
        crate::platform::sync_dir(dir).map_err(|e| StorageIoError::from_os_at("sync_dir", dir, &e))
    }

    /// Removes the file at `path`.
    fn remove_file(&mut self, path: &Path) -> Result<()> {
        std::fs::remove_file(path).map_err(|e| StorageIoError::from_os_at("remove_file", path, &e))
    }

    /// Renames `from` to `to`, replacing `to` if it exists (atomically where the OS does).
    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(|e| StorageIoError::from_os_at("rename", from, &e))
    }

    /// The length of the file at `path`, and whether it is a directory.
    fn metadata(&mut self, path: &Path) -> Result<FileMetadata> {
        let m = std::fs::metadata(path).map_err(|e| StorageIoError::from_os_at("metadata", path, &e))?;
        Ok(FileMetadata {
            len: m.len(),
            is_dir: m.is_dir(),
        })
    }

    /// The paths of the entries directly inside `dir`, sorted.
    fn list_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        let to_err = |e: std::io::Error| StorageIoError::from_os_at("list_dir", dir, &e);
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(to_err)? {
            paths.push(entry.map_err(to_err)?.path());
        }
        paths.sort();
        Ok(paths)
    }

    /// Creates `dir` and its missing parents (no error if it exists). In-memory backends,
    /// which have no directories, accept any path.
    fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| StorageIoError::from_os_at("create_dir_all", dir, &e))
    }

    /// Takes the exclusive lock of directory `dir` (which must exist), held until the returned
    /// [`DirLock`] is dropped: a component that owns a directory (the WAL, a page scheduler)
    /// takes it at open, so that a second owner in this process or another gets
    /// [`StorageIoError::DirLocked`] naming the lock file. The default locks the real
    /// directory (`dir/LOCK` with an exclusive `flock`); in-memory backends keep a lock table
    /// of their own.
    fn lock_dir(&mut self, dir: &Path) -> Result<DirLock> {
        crate::dir_lock::lock_dir_default(dir)
    }
}

impl<T: Namespace + ?Sized> Namespace for Box<T> {
    fn sync_dir(&mut self, dir: &Path) -> Result<()> {
        (**self).sync_dir(dir)
    }
    fn remove_file(&mut self, path: &Path) -> Result<()> {
        (**self).remove_file(path)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        (**self).rename(from, to)
    }
    fn metadata(&mut self, path: &Path) -> Result<FileMetadata> {
        (**self).metadata(path)
    }
    fn list_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        (**self).list_dir(dir)
    }
    fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        (**self).create_dir_all(dir)
    }
    fn lock_dir(&mut self, dir: &Path) -> Result<DirLock> {
        (**self).lock_dir(dir)
    }
}
