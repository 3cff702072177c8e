//! compio: one runtime per core (compio's runtime is thread-per-core; io_uring driver), `Rc<File>`
//! shared by the thread's tasks, `AsyncReadAt::read_at`, `AsyncWriteAt::write_at` on `&File` at
//! offsets from the shared append cursor, `sync_data`.

use std::mem::MaybeUninit;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use compio::buf::{IoBuf, IoBufMut, SetLen};
use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAt, AsyncWriteAt};

use super::PeerBuf;
use crate::async_cells::{
    APPENDS_PER_SYNC, AppendCursor, AsyncCell, BLOCK_BYTES, Measured, TaskPlan, check_read, check_write,
    run_per_core,
};

impl IoBuf for PeerBuf {
    fn as_init(&self) -> &[u8] {
        &self.0
    }
}

impl SetLen for PeerBuf {
    unsafe fn set_len(&mut self, len: usize) {
        let _ = self.0.set_len(len);
    }
}

impl IoBufMut for PeerBuf {
    fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        let capacity = self.0.capacity();
        // SAFETY: the AlignedBuf owns `capacity` bytes at this pointer (zero-filled at
        // allocation), borrowed mutably through `self` for the slice's lifetime; MaybeUninit<u8>
        // has the layout of u8.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<MaybeUninit<u8>>(), capacity) }
    }
}

pub(super) fn run(cell: &AsyncCell) -> Result<Measured> {
    let (path, appending, _segment) = super::cell_file(cell)?;
    let cursor = AppendCursor::default();
    let flags = if cell.direct { libc::O_DIRECT } else { 0 };
    run_per_core(cell, |_, first, count, start| {
        let rt = compio::runtime::Runtime::new().context("compio: building a runtime")?;
        rt.block_on(async {
            let file = OpenOptions::new()
                .read(true)
                .write(appending)
                .custom_flags(flags)
                .open(&path)
                .await
                .with_context(|| format!("compio: open {}", path.display()))?;
            let file = Rc::new(file);
            let deadline = start();
            let mut tasks = Vec::with_capacity(count);
            for t in first..first + count {
                let plan = TaskPlan::new(cell, t, cell.tasks)?;
                let (file, cursor, block) = (Rc::clone(&file), cursor.clone(), cell.block());
                let path = path.clone();
                tasks.push(compio::runtime::spawn(async move {
                    if appending {
                        append_task(&file, &cursor, deadline, &path).await
                    } else {
                        read_task(&file, plan, block, deadline, &path).await
                    }
                }));
            }
            let mut ops = 0;
            for t in tasks {
                ops += t.await.map_err(|_| anyhow!("a compio task panicked"))??;
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
        // compio reads into the bytes past the buffer's length: start from an empty one.
        buf.0.clear();
        let compio::BufResult(n, back) = file.read_at(buf, at).await;
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
                async move {
                    let mut handle = file;
                    (handle.write_at(buf, at).await, at)
                }
            })
            .collect();
        for (compio::BufResult(n, buf), at) in super::join_all(writes).await {
            check_write(n, at, path)?;
            bufs.push(buf);
        }
        file.sync_data()
            .await
            .with_context(|| format!("compio: sync_data of {}", path.display()))?;
        ops += APPENDS_PER_SYNC as u64;
    }
    Ok(ops)
}
