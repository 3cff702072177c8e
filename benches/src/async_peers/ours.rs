//! Ours: the async file API (`storage_io::AsyncFileSystem` at its defaults, as a user builds it),
//! its tasks on a multi-thread tokio runtime with a worker per core.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use storage_io::{AlignedBuf, AsyncFile, AsyncFsConfig, OpenOptions};

use crate::async_cells::{
    APPENDS_PER_SYNC, AsyncCell, BLOCK_BYTES, Measured, SegmentGuard, TaskPlan, Window, check_read,
    check_write,
};
use crate::cell::Workload;

/// A multi-thread tokio runtime with a worker per core (what ours and `tokio::fs` run on).
pub(super) fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

pub(super) fn run(cell: &AsyncCell) -> Result<Measured> {
    let workload = cell.workload()?;
    let rt = tokio_runtime()?;
    let fs = storage_io::open_async_fs(&AsyncFsConfig::default())?;
    let appending = workload == Workload::AsyncAppendSync;
    let (path, _segment) = if appending {
        let p = cell.segment_path();
        (p.clone(), Some(SegmentGuard(p)))
    } else {
        (cell.file.clone(), None)
    };
    let options = if appending {
        OpenOptions::create().with_truncate(true)
    } else {
        OpenOptions::read_only()
    };
    let measured = rt.block_on(async {
        let file = fs
            .open_with(&path, options.with_direct(cell.direct), None)
            .await
            .with_context(|| format!("open {}", path.display()))?;
        if cell.direct && !file.is_direct() {
            bail!("{} refuses O_DIRECT", path.display());
        }
        let file = Arc::new(file);
        let window = Window::start();
        let deadline = Instant::now() + cell.duration();
        let mut handles = Vec::with_capacity(cell.tasks);
        for t in 0..cell.tasks {
            let plan = TaskPlan::new(cell, t, cell.tasks)?;
            let file = Arc::clone(&file);
            let block = cell.block();
            handles.push(tokio::spawn(async move {
                if appending {
                    append_task(&file, deadline).await
                } else {
                    read_task(&file, plan, block, deadline).await
                }
            }));
        }
        let mut ops = 0;
        for h in handles {
            ops += h.await.context("a task panicked")??;
        }
        Ok(window.end(ops))
    });
    fs.shutdown();
    measured
}

async fn read_task(file: &AsyncFile, mut plan: TaskPlan, block: usize, deadline: Instant) -> Result<u64> {
    let mut buf = AlignedBuf::zeroed(block, 4096)?;
    let mut ops = 0;
    while Instant::now() < deadline {
        let at = plan.next_read();
        let (n, back) = file.read_at(buf, at).await;
        check_read(n.map_err(std::io::Error::other), block, at, file.path())?;
        buf = back;
        ops += 1;
    }
    Ok(ops)
}

async fn append_task(file: &AsyncFile, deadline: Instant) -> Result<u64> {
    let mut bufs: Vec<AlignedBuf> = (0..APPENDS_PER_SYNC)
        .map(|i| AlignedBuf::from_slice(&[i as u8 | 1; BLOCK_BYTES], 4096))
        .collect::<storage_io::Result<_>>()?;
    let mut ops = 0;
    while Instant::now() < deadline {
        // Each call sends its request at once, so the sync covers the appends made before it.
        let appends: Vec<_> = bufs.drain(..).map(|b| file.append(b)).collect();
        let sync = file.sync_data();
        for append in appends {
            let (at, buf) = append.await;
            let at = at.with_context(|| format!("append to {}", file.path().display()))?;
            check_write(Ok(buf.len()), at, file.path())?;
            bufs.push(buf);
        }
        sync.await
            .with_context(|| format!("sync_data of {}", file.path().display()))?;
        ops += APPENDS_PER_SYNC as u64;
    }
    Ok(ops)
}
