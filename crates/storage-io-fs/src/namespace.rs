//! The resolution of the key under which the handles on one file share a worker and an append
//! cursor, on an I/O worker thread (never on the caller's executor thread).

use std::path::{Path, PathBuf};

use storage_io_core::Result;

use crate::slot::slot;
use crate::worker::Request;
use crate::{AsyncFileSystem, path_key, worker_for, worker_gone};

impl AsyncFileSystem {
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

/// `path`'s directory resolved by the OS, joined with its name; `None` where it cannot be.
fn resolve_parent(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let name = absolute.file_name()?;
    let dir = std::fs::canonicalize(absolute.parent()?).ok()?;
    Some(dir.join(name))
}
