//! Namespace calls as futures (`remove_file`, `rename`, `read_dir`, `metadata`; `set_len` of an
//! open file), and the resolution of the key under which the handles on one file share a worker
//! and an append cursor. Each runs on an I/O worker thread, never on the caller's executor
//! thread, through the worker's backend ([`Namespace`]), so an in-memory backend answers for its
//! own files and never touches the OS's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(doc)]
use storage_io_core::Namespace;
use storage_io_core::{FileMetadata, Result, StorageIo, StorageIoError};

use crate::slot::slot;
use crate::worker::Request;
use crate::{AsyncFile, AsyncFileSystem, Op, path_key, worker_for, worker_gone};

impl AsyncFileSystem {
    /// Removes the file at `path`, through a worker's backend. The removal is durable once
    /// [`AsyncFileSystem::sync_dir`] ran on its directory. Open handles on the file keep
    /// working on the removed file (POSIX), as with `std::fs::remove_file`.
    ///
    /// The call is sent when this is called; a future dropped before a worker took the call
    /// removes nothing, one dropped later does not stop it.
    pub fn remove_file(&self, path: impl AsRef<Path>) -> Op<()> {
        let path = path.as_ref().to_path_buf();
        let forget = vec![path_key(&path)];
        self.on_worker_forgetting(&path.clone(), forget, move |io| {
            io.remove_file(&path).map_err(|e| naming("remove_file", &path, e))
        })
    }

    /// Renames `from` to `to` (replacing `to` if it is a file), through a worker's backend
    /// ([`Namespace::rename`]). Make it durable with [`AsyncFileSystem::sync_dir`] on both
    /// directories. Errors name both paths (`rename a -> b: ...`). Handles open on either file
    /// keep their own file and cursor; a new open of `to` gets the moved file's. Cancellation as
    /// for [`AsyncFileSystem::remove_file`].
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Op<()> {
        let (from, to) = (from.as_ref().to_path_buf(), to.as_ref().to_path_buf());
        let forget = vec![path_key(&from), path_key(&to)];
        self.on_worker_forgetting(&from.clone(), forget, move |io| {
            io.rename(&from, &to).map_err(|e| {
                // `Os` has room for one path: the pair, as the user would read it.
                let both = PathBuf::from(format!("{} -> {}", from.display(), to.display()));
                match e {
                    StorageIoError::Os { errno, .. } => StorageIoError::os_at("rename", &both, errno),
                    other => other,
                }
            })
        })
    }

    /// The paths of the entries directly inside `dir`, sorted, through a worker's backend
    /// (a log's retention lists its segments with this). Cancellation as for
    /// [`AsyncFileSystem::remove_file`].
    pub fn read_dir(&self, dir: impl AsRef<Path>) -> Op<Vec<PathBuf>> {
        let dir = dir.as_ref().to_path_buf();
        self.on_worker(&dir.clone(), move |io| {
            io.list_dir(&dir).map_err(|e| naming("read_dir", &dir, e))
        })
    }

    /// The length and kind of `path` (symlinks followed), through a worker's backend
    /// ([`Namespace::metadata`]: an in-memory backend answers for its own files).
    /// Cancellation as for [`AsyncFileSystem::remove_file`].
    pub fn metadata(&self, path: impl AsRef<Path>) -> Op<FileMetadata> {
        let path = path.as_ref().to_path_buf();
        self.on_worker(&path.clone(), move |io| {
            io.metadata(&path).map_err(|e| naming("metadata", &path, e))
        })
    }

    /// Runs `call` on the worker that serves `route`'s (lexical) key, with its backend, and
    /// answers its result. Sent now; skipped if the future is dropped before its turn.
    fn on_worker<T: Send + 'static>(
        &self,
        route: &Path,
        call: impl FnOnce(&mut dyn StorageIo) -> Result<T> + Send + 'static,
    ) -> Op<T> {
        self.on_worker_forgetting(route, Vec::new(), call)
    }

    /// [`AsyncFileSystem::on_worker`] for a call that removes or renames names away: when it
    /// succeeds, the worker drops the state it keeps by those keys (`Request::Forget`, queued
    /// before the caller hears of the success, so an open called after that finds it gone).
    /// The keys are lexical: for the files kept by key (in-memory backends), that is the key
    /// their opens resolved to, and the route's worker is the one that keeps them.
    fn on_worker_forgetting<T: Send + 'static>(
        &self,
        route: &Path,
        forget: Vec<PathBuf>,
        call: impl FnOnce(&mut dyn StorageIo) -> Result<T> + Send + 'static,
    ) -> Op<T> {
        let worker = worker_for(&path_key(route), self.shared.workers.len());
        let (reply, waiting) = slot();
        let shared = Arc::clone(&self.shared);
        self.shared.send(
            worker,
            Request::Blocking(Box::new(move |io| {
                if reply.is_abandoned() {
                    return;
                }
                let result = io.and_then(call);
                if result.is_ok() && !forget.is_empty() {
                    shared.send(worker, Request::Forget(forget));
                }
                let _ = reply.complete(result);
            })),
        );
        Op::boxed(async move { waiting.await.unwrap_or_else(|| Err(worker_gone())) })
    }

    /// The key of the file at `path`: its directory resolved by the OS (symlinks followed, on a
    /// worker thread) and its name, so that two spellings of one file share one key, and two
    /// files never do (`d/sub/../log` with `sub` a symlink to `other/inner` is `other/log`,
    /// not `d/log`). Where the directory cannot be resolved (it does not exist on the OS file
    /// system: a path of an in-memory backend, or an open that will fail), the lexical key.
    pub(crate) async fn resolved_key(&self, path: &Path) -> Result<PathBuf> {
        let lexical = path_key(path);
        let worker = worker_for(&lexical, self.shared.workers.len());
        let (reply, waiting) = slot();
        let path = path.to_path_buf();
        self.shared.send(
            worker,
            Request::Blocking(Box::new(move |io| {
                let _ = reply.complete(io.map(|_| resolve_parent(&path).unwrap_or(lexical)));
            })),
        );
        waiting.await.unwrap_or_else(|| Err(worker_gone()))
    }
}

impl AsyncFile {
    /// Truncates or extends the file to `len` bytes (`ftruncate`), in call order like every
    /// other operation: it runs after every write and append called on this path before it
    /// has completed (those are cut off by a truncation, as asked), and the appends called
    /// after it land at `len` and after, in call order, and are written only once it has run
    /// (so it never cuts them off); positional writes called after it also wait for it. Needs
    /// an OS file opened for writing (in-memory backends answer `Unsupported`, a read-only
    /// handle the OS's error; the append cursor is then left alone). If the OS refuses the
    /// `ftruncate` of a writable file, the appends called after it still go at `len`. The
    /// request is sent when this is called; dropping the future does not stop it.
    pub fn set_len(&self, len: u64) -> Op<()> {
        if let Some(e) = self.after_close() {
            return Op::boxed(std::future::ready(Err(e)));
        }
        let (fs, worker, fd) = (Arc::clone(&self.fs), self.worker, self.fd);
        let (reply, waiting) = slot();
        let send = move |ticket| {
            fs.send(
                worker,
                Request::SetLen {
                    fd,
                    len,
                    ticket,
                    reply,
                },
            )
        };
        if self.resizable {
            self.file.set_len(len, send);
        } else {
            // It fails on the worker with the reason; in order, but moving no cursor.
            send(self.file.begin_write());
        }
        Op::boxed(async move { waiting.await.unwrap_or_else(|| Err(worker_gone())) })
    }
}

/// `path`'s directory resolved by the OS, joined with its name; `None` where it cannot be.
fn resolve_parent(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let name = absolute.file_name()?;
    let dir = std::fs::canonicalize(absolute.parent()?).ok()?;
    Some(dir.join(name))
}

/// A backend's OS error names the call as the user made it (`read_dir`, not the backend's
/// `list_dir`) and the path (the backend's, if it named one).
fn naming(what: &'static str, path: &Path, e: StorageIoError) -> StorageIoError {
    match e {
        StorageIoError::Os {
            errno, path: named, ..
        } => StorageIoError::os_at(what, named.as_deref().unwrap_or(path), errno),
        other => other,
    }
}
