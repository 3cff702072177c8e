//! The systems of the async cells ([`crate::async_cells`]): ours (the async file API on a tokio
//! runtime), `tokio::fs`'s way (`spawn_blocking` per op, always built: tokio is a dependency
//! anyway), and the io_uring runtimes, each an optional dependency behind a cargo feature of its
//! own (`tokio-uring`, `compio`, `monoio`, `glommio`; `async-peers` turns on all four). A peer
//! that is not built is skipped with a one-line hint, like fio.
//!
//! Each runs as its documentation recommends: ours and `tokio::fs` on one multi-thread tokio
//! runtime with a worker per core; the io_uring runtimes thread-per-core, one runtime per core
//! (never more threads than tasks), each thread with its own file handles and its share of the
//! tasks.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use storage_io::AlignedBuf;

use crate::async_cells::{AsyncCell, Measured, SegmentGuard};
use crate::cell::Workload;

#[cfg(feature = "compio")]
mod compio_peer;
#[cfg(feature = "glommio")]
mod glommio_peer;
#[cfg(feature = "monoio")]
mod monoio_peer;
mod ours;
mod tokio_fs;
#[cfg(feature = "tokio-uring")]
mod tokio_uring_peer;

/// Who runs an async cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AsyncSystem {
    /// `storage-io`: our `AsyncFileSystem` at its defaults, tasks on a tokio runtime.
    Ours,
    /// `tokio::fs`: a std file, every op in `spawn_blocking` (what `tokio::fs::File` does).
    TokioFs,
    /// `tokio-uring`: its own single-threaded runtime per core.
    TokioUring,
    /// `compio`: compio-fs on its runtime, one per core.
    Compio,
    /// `monoio`: its io_uring driver, one runtime per core.
    Monoio,
    /// `glommio`: `DmaFile` (direct) or `BufferedFile`, one executor per core.
    Glommio,
}

impl AsyncSystem {
    /// Every system, ours first.
    pub const ALL: [AsyncSystem; 6] = [
        AsyncSystem::Ours,
        AsyncSystem::TokioFs,
        AsyncSystem::TokioUring,
        AsyncSystem::Compio,
        AsyncSystem::Monoio,
        AsyncSystem::Glommio,
    ];

    /// Its name in rows and tables.
    pub const fn name(self) -> &'static str {
        match self {
            AsyncSystem::Ours => "storage-io",
            AsyncSystem::TokioFs => "tokio::fs",
            AsyncSystem::TokioUring => "tokio-uring",
            AsyncSystem::Compio => "compio",
            AsyncSystem::Monoio => "monoio",
            AsyncSystem::Glommio => "glommio",
        }
    }

    /// The system called `name`.
    pub fn named(name: &str) -> Result<AsyncSystem> {
        match AsyncSystem::ALL.into_iter().find(|s| s.name() == name) {
            Some(s) => Ok(s),
            None => bail!("unknown async system {name:?}"),
        }
    }

    /// Whether this build can run it.
    pub fn built(self) -> bool {
        self.missing().is_none()
    }

    /// Why this build cannot run it, if it cannot: the one-line hint.
    pub fn missing(self) -> Option<String> {
        let feature = match self {
            AsyncSystem::Ours | AsyncSystem::TokioFs => return None,
            AsyncSystem::TokioUring if cfg!(feature = "tokio-uring") => return None,
            AsyncSystem::Compio if cfg!(feature = "compio") => return None,
            AsyncSystem::Monoio if cfg!(feature = "monoio") => return None,
            AsyncSystem::Glommio if cfg!(feature = "glommio") => return None,
            AsyncSystem::TokioUring => "tokio-uring",
            AsyncSystem::Compio => "compio",
            AsyncSystem::Monoio => "monoio",
            AsyncSystem::Glommio => "glommio",
        };
        Some(format!(
            "{} peer skipped: build the bench with `--features {feature}` (or `--features async-peers` \
             for every async peer), e.g. `cargo xtask bench --features async-peers --workload async_rand_read`",
            self.name()
        ))
    }

    /// The systems this build runs.
    pub fn available() -> Vec<AsyncSystem> {
        AsyncSystem::ALL.into_iter().filter(|s| s.built()).collect()
    }
}

/// Runs `cell` with `system` in this process.
pub fn run(system: AsyncSystem, cell: &AsyncCell) -> Result<Measured> {
    match system {
        AsyncSystem::Ours => ours::run(cell),
        AsyncSystem::TokioFs => tokio_fs::run(cell),
        #[cfg(feature = "tokio-uring")]
        AsyncSystem::TokioUring => tokio_uring_peer::run(cell),
        #[cfg(feature = "compio")]
        AsyncSystem::Compio => compio_peer::run(cell),
        #[cfg(feature = "monoio")]
        AsyncSystem::Monoio => monoio_peer::run(cell),
        #[cfg(feature = "glommio")]
        AsyncSystem::Glommio => glommio_peer::run(cell),
        #[allow(unreachable_patterns, reason = "reached only when a peer's feature is off")]
        other => bail!("{}", other.missing().unwrap_or_default()),
    }
}

/// The file a peer's cell works on: the bench file, or for `async_append_sync` a fresh, empty
/// segment beside it (removed when the guard drops). Answers the path, whether the cell appends,
/// and the guard.
#[allow(dead_code, reason = "used only by the peers built in")]
pub(crate) fn cell_file(cell: &AsyncCell) -> Result<(PathBuf, bool, Option<SegmentGuard>)> {
    if cell.workload()? != Workload::AsyncAppendSync {
        return Ok((cell.file.clone(), false, None));
    }
    let path = cell.segment_path();
    std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    Ok((path.clone(), true, Some(SegmentGuard(path))))
}

/// A page-aligned buffer the io_uring runtimes read into and write from (their own buffer traits
/// are implemented for it in each peer's module): O_DIRECT needs the alignment, and a `Vec<u8>`
/// does not promise it.
pub struct PeerBuf(pub AlignedBuf);

impl PeerBuf {
    /// `len` bytes of `fill`, aligned to 4096.
    pub fn new(len: usize, fill: u8) -> Result<PeerBuf> {
        let mut buf = AlignedBuf::zeroed(len, 4096)?;
        buf.fill(fill);
        Ok(PeerBuf(buf))
    }
}

/// Awaits every future of `futures` at once (polled in turn), answering their outputs in order:
/// the appends of one request in flight together on runtimes that submit when first polled.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_system_has_a_name_and_the_unbuilt_ones_a_hint() {
        for s in AsyncSystem::ALL {
            assert_eq!(AsyncSystem::named(s.name()).unwrap(), s);
            match s.missing() {
                None => assert!(s.built()),
                Some(hint) => assert!(hint.contains("--features") && hint.contains(s.name()), "{hint}"),
            }
        }
        assert!(AsyncSystem::Ours.built() && AsyncSystem::TokioFs.built());
        assert!(AsyncSystem::named("fio").is_err());
    }

    #[test]
    fn join_all_answers_in_order() {
        let out = storage_io::block_on(join_all((1..=3).map(|i| async move { i }).collect()));
        assert_eq!(out, vec![1, 2, 3]);
    }
}
