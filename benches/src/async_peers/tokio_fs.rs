//! `tokio::fs`'s way: a std file shared by the tasks, every read, write and `sync_data` in
//! `spawn_blocking` (what `tokio::fs::File` does per op; positional I/O, which `tokio::fs::File`
//! lacks, through `FileExt` in the same closure), on a multi-thread tokio runtime with a worker
//! per core.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use storage_io::AlignedBuf;

use super::ours::tokio_runtime;
use crate::async_cells::{
    APPENDS_PER_SYNC, AppendCursor, AsyncCell, BLOCK_BYTES, Measured, SegmentGuard, TaskPlan, Window,
    check_read, check_write,
};
use crate::cell::Workload;

pub(super) fn run(cell: &AsyncCell) -> Result<Measured> {
    let workload = cell.workload()?;
    let rt = tokio_runtime()?;
    let appending = workload == Workload::AsyncAppendSync;
    let flags = if cell.direct { libc::O_DIRECT } else { 0 };
    let (file, _segment) = if appending {
        let p = cell.segment_path();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(&p)
            .with_context(|| format!("open {}", p.display()))?;
        (f, Some(SegmentGuard(p)))
    } else {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&cell.file)
            .with_context(|| format!("open {}", cell.file.display()))?;
        (f, None)
    };
    let file = Arc::new(file);
    let path = Arc::new(if appending {
        cell.segment_path()
    } else {
        cell.file.clone()
    });
    rt.block_on(async {
        let window = Window::start();
        let deadline = Instant::now() + cell.duration();
        let cursor = AppendCursor::default();
        let mut handles = Vec::with_capacity(cell.tasks);
        for t in 0..cell.tasks {
            let mut plan = TaskPlan::new(cell, t, cell.tasks)?;
            let (file, path, cursor) = (Arc::clone(&file), Arc::clone(&path), cursor.clone());
            let block = cell.block();
            handles.push(tokio::spawn(async move {
                let mut ops = 0u64;
                if appending {
                    let mut bufs: Vec<AlignedBuf> = (0..APPENDS_PER_SYNC)
                        .map(|i| AlignedBuf::from_slice(&[i as u8 | 1; BLOCK_BYTES], 4096))
                        .collect::<storage_io::Result<_>>()?;
                    while Instant::now() < deadline {
                        let base = cursor.take();
                        let writes: Vec<_> = bufs
                            .drain(..)
                            .enumerate()
                            .map(|(i, buf)| {
                                let file = Arc::clone(&file);
                                let at = base + (i * BLOCK_BYTES) as u64;
                                tokio::task::spawn_blocking(move || (file.write_at(&buf, at), at, buf))
                            })
                            .collect();
                        for w in writes {
                            let (n, at, buf) = w.await?;
                            check_write(n, at, &path)?;
                            bufs.push(buf);
                        }
                        let f = Arc::clone(&file);
                        tokio::task::spawn_blocking(move || f.sync_data())
                            .await?
                            .with_context(|| format!("sync_data of {}", path.display()))?;
                        ops += APPENDS_PER_SYNC as u64;
                    }
                } else {
                    let mut buf = AlignedBuf::zeroed(block, 4096)?;
                    while Instant::now() < deadline {
                        let at = plan.next_read();
                        let f = Arc::clone(&file);
                        let (n, back) = tokio::task::spawn_blocking(move || {
                            let n = f.read_at(&mut buf, at);
                            (n, buf)
                        })
                        .await?;
                        check_read(n, block, at, &path)?;
                        buf = back;
                        ops += 1;
                    }
                }
                anyhow::Ok(ops)
            }));
        }
        let mut ops = 0;
        for h in handles {
            ops += h.await.context("a task panicked")??;
        }
        Ok(window.end(ops))
    })
}
