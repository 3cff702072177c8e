//! MemIo's [`Namespace`]: names, directory sync and locks of a [`MemFs`](super::MemFs), with no
//! real file or directory touched (the crash model of a rename is in the parent's docs).

use std::path::{Path, PathBuf};

use storage_io_core::{DIR_LOCK_FILE_NAME, DirLock, FileMetadata, Namespace, Result, StorageIoError};

use super::{ENOENT, MemFile, MemFs, MemIo};

/// MemFs's own names: no real file or directory is touched.
impl Namespace for MemIo {
    fn sync_dir(&mut self, dir: &Path) -> Result<()> {
        let mut st = self.fs.tick(self.epoch)?;
        for (path, f) in st.files.iter_mut() {
            if path.parent() == Some(dir) {
                if let Some(d) = f.renamed.take() {
                    f.durable = d;
                }
                f.durable_exists = f.live.is_some();
            }
        }
        Ok(())
    }

    fn remove_file(&mut self, path: &Path) -> Result<()> {
        let mut st = self.fs.tick(self.epoch)?;
        match st.files.get_mut(path) {
            Some(f) if f.live.is_some() => {
                f.live = None;
                f.unsynced.clear();
                Ok(())
            }
            _ => Err(StorageIoError::os_at("remove_file", path, ENOENT)),
        }
    }

    fn list_dir(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.check_alive()?;
        let st = self.fs.state.lock();
        Ok(st
            .files
            .iter()
            .filter(|(p, f)| f.live.is_some() && p.parent() == Some(dir))
            .map(|(p, _)| p.clone())
            .collect())
    }

    fn create_dir_all(&mut self, _dir: &Path) -> Result<()> {
        // MemFs has no directories: a file's directory is its path's parent.
        self.check_alive()
    }

    /// An in-memory lock, shared by every backend of this file system (one "process"): a
    /// second `lock_dir` of the same directory fails with `DirLocked` until the first guard is
    /// dropped or the file system crashes. No `LOCK` file appears among the files.
    fn lock_dir(&mut self, dir: &Path) -> Result<DirLock> {
        self.check_alive()?;
        let path = dir.join(DIR_LOCK_FILE_NAME);
        let mut st = self.fs.state.lock();
        if st.dir_locks.contains_key(&path) {
            return Err(StorageIoError::DirLocked { path });
        }
        st.next_dir_lock += 1;
        let number = st.next_dir_lock;
        st.dir_locks.insert(path.clone(), number);
        let guard = MemDirLock {
            fs: self.fs.clone(),
            path: path.clone(),
            number,
        };
        Ok(DirLock::from_guard(path, guard))
    }

    /// Moves the file's data to `to` (replacing what was there); durable at the next
    /// `sync_dir` of `to`'s directory (see the module docs).
    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        let mut st = self.fs.tick(self.epoch)?;
        let moved = match st.files.get_mut(from) {
            Some(f) if f.live.is_some() && from != to => MemFile {
                live: f.live.take(),
                unsynced: std::mem::take(&mut f.unsynced),
                renamed: Some(f.renamed.take().unwrap_or_else(|| f.durable.clone())),
                ..MemFile::default()
            },
            Some(f) if f.live.is_some() => return Ok(()),
            _ => return Err(StorageIoError::os_at("rename", from, ENOENT)),
        };
        let target = st.files.entry(to.to_path_buf()).or_default();
        target.live = moved.live;
        target.unsynced = moved.unsynced;
        target.renamed = moved.renamed;
        Ok(())
    }

    /// A file's length; a directory is any path that is the parent of a live file.
    fn metadata(&mut self, path: &Path) -> Result<FileMetadata> {
        self.check_alive()?;
        let st = self.fs.state.lock();
        if let Some(data) = st.files.get(path).and_then(|f| f.live.as_ref()) {
            return Ok(FileMetadata {
                len: data.len() as u64,
                is_dir: false,
            });
        }
        let is_dir = st
            .files
            .iter()
            .any(|(p, f)| f.live.is_some() && p.starts_with(path));
        if is_dir {
            return Ok(FileMetadata { len: 0, is_dir: true });
        }
        Err(StorageIoError::os_at("metadata", path, ENOENT))
    }
}

/// Holds a directory lock of a [`MemFs`](super::MemFs) until dropped.
struct MemDirLock {
    fs: MemFs,
    path: PathBuf,
    number: u64,
}

impl Drop for MemDirLock {
    fn drop(&mut self) {
        let mut st = self.fs.state.lock();
        // Only its own lock: after a crash the directory may have a new holder.
        if st.dir_locks.get(&self.path) == Some(&self.number) {
            st.dir_locks.remove(&self.path);
        }
    }
}
