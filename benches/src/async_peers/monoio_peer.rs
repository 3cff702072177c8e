//! monoio: one runtime per core on its io_uring driver (`RuntimeBuilder::<IoUringDriver>`, as
//! its docs show for thread-per-core), `Rc<File>` shared by the thread's tasks, `read_at`,
//! `write_at` at offsets from the shared append cursor, `sync_data`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::fs::{File, OpenOptions};
use monoio::{IoUringDriver, RuntimeBuilder};

use super::PeerBuf;
use crate::async_cells::{
    APPENDS_PER_SYNC, AppendCursor, AsyncCell, BLOCK_BYTES, Measured, TaskPlan, check_read, check_write,
    run_per_core,
};

// SAFETY: the pointer is the AlignedBuf's allocation, which stays put while the PeerBuf (moved
// into the runtime's op) is alive; `len` bytes of it are initialised.
unsafe impl IoBuf for PeerBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

// SAFETY: as for IoBuf; `capacity` bytes are allocated and were zero-filled at allocation, so
// raising the length up to it never exposes uninitialised bytes.
unsafe impl IoBufMut for PeerBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.0.capacity()
    }

    unsafe fn set_init(&mut self, pos: usize) {
        if pos > self.0.len() {
            let _ = self.0.set_len(pos);
        }
    }
}

pub(super) fn run(cell: &AsyncCell) -> Result<Measured> {
    let (path, appending, _segment) = super::cell_file(cell)?;
    let cursor = AppendCursor::default();
    let flags = if cell.direct { libc::O_DIRECT } else { 0 };
    run_per_core(cell, |_, first, count, start| {
        let mut rt = RuntimeBuilder::<IoUringDriver>::new()
            .build()
            .context("monoio: building an io_uring runtime")?;
        rt.block_on(async {
            let file = OpenOptions::new()
                .read(true)
                .write(appending)
                .custom_flags(flags)
                .open(&path)
                .await
                .with_context(|| format!("monoio: open {}", path.display()))?;
            let file = Rc::new(file);
            let deadline = start();
            let mut tasks = Vec::with_capacity(count);
            for t in first..first + count {
                let plan = TaskPlan::new(cell, t, cell.tasks)?;
                let (file, cursor, block) = (Rc::clone(&file), cursor.clone(), cell.block());
                let path = path.clone();
                tasks.push(monoio::spawn(async move {
                    if appending {
                        append_task(&file, &cursor, deadline, &path).await
                    } else {
                        read_task(&file, plan, block, deadline, &path).await
                    }
                }));
            }
            let mut ops = 0;
            for t in tasks {
                ops += t.await?;
            }
            anyhow::Ok(ops)
        })
    })
}

async fn read_task(
    file: &File,
    mut plan: TaskPlan,
    block: usize,
    deadline: Instant,
    path: &Path,
) -> Result<u64> {
    let mut buf = PeerBuf::new(block, 0)?;
    let mut ops = 0;
    while Instant::now() < deadline {
        let at = plan.next_read();
        let (n, back) = file.read_at(buf, at).await;
        check_read(n, block, at, path)?;
        buf = back;
        ops += 1;
    }
    Ok(ops)
}

async fn append_task(file: &File, cursor: &AppendCursor, deadline: Instant, path: &Path) -> Result<u64> {
    let mut bufs: Vec<PeerBuf> = (0..APPENDS_PER_SYNC)
        .map(|i| PeerBuf::new(BLOCK_BYTES, i as u8 | 1))
        .collect::<Result<_>>()?;
    let mut ops = 0;
    while Instant::now() < deadline {
        let base = cursor.take();
        let writes: Vec<_> = bufs
            .drain(..)
            .enumerate()
            .map(|(i, buf)| {
                let at = base + (i * BLOCK_BYTES) as u64;
                async move { (file.write_at(buf, at).await, at) }
            })
            .collect();
        for ((n, buf), at) in super::join_all(writes).await {
            check_write(n, at, path)?;
            bufs.push(buf);
        }
        file.sync_data()
            .await
            .with_context(|| format!("monoio: sync_data of {}", path.display()))?;
        ops += APPENDS_PER_SYNC as u64;
    }
    Ok(ops)
}
