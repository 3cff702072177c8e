//! glommio: one `LocalExecutor` per core; `DmaFile` for direct I/O (its own aligned buffers:
//! `read_at_aligned`, `alloc_dma_buffer` + `write_at`), `BufferedFile` for buffered I/O (`read_at`,
//! `write_at` of a `Vec<u8>`), `fdatasync`; `Rc` files shared by the thread's tasks.

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};

use crate::async_cells::{
    APPENDS_PER_SYNC, AppendCursor, AsyncCell, BLOCK_BYTES, Measured, TaskPlan, check_read, check_write,
    run_per_core,
};

/// The file of one thread: direct or buffered.
enum GFile {
    Dma(DmaFile),
    Buffered(BufferedFile),
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("glommio: {what} {}: {e}", path.display())
}

impl GFile {
    async fn read(&self, at: u64, len: usize) -> std::io::Result<usize> {
        let r = match self {
            GFile::Dma(f) => f.read_at_aligned(at, len).await,
            GFile::Buffered(f) => f.read_at(at, len).await,
        };
        r.map(|b| b.len()).map_err(std::io::Error::from)
    }

    async fn write(&self, at: u64, fill: u8) -> std::io::Result<usize> {
        let r = match self {
            GFile::Dma(f) => {
                let mut buf = f.alloc_dma_buffer(BLOCK_BYTES);
                buf.as_bytes_mut().fill(fill);
                f.write_at(buf, at).await
            }
            GFile::Buffered(f) => f.write_at(vec![fill; BLOCK_BYTES], at).await,
        };
        r.map_err(std::io::Error::from)
    }

    async fn sync(&self) -> std::io::Result<()> {
        let r = match self {
            GFile::Dma(f) => f.fdatasync().await,
            GFile::Buffered(f) => f.fdatasync().await,
        };
        r.map_err(std::io::Error::from)
    }
}

pub(super) fn run(cell: &AsyncCell) -> Result<Measured> {
    let (path, appending, _segment) = super::cell_file(cell)?;
    let cursor = AppendCursor::default();
    run_per_core(cell, |_, first, count, start| {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .map_err(|e| anyhow!("glommio: building an executor: {e}"))?;
        executor.run(async {
            let mut options = OpenOptions::new();
            options.read(true).write(appending);
            let file = if cell.direct {
                GFile::Dma(options.dma_open(&path).await.map_err(|e| err("open", &path, e))?)
            } else {
                GFile::Buffered(
                    options
                        .buffered_open(&path)
                        .await
                        .map_err(|e| err("open", &path, e))?,
                )
            };
            let file = Rc::new(file);
            let deadline = start();
            let mut tasks = Vec::with_capacity(count);
            for t in first..first + count {
                let mut plan = TaskPlan::new(cell, t, cell.tasks)?;
                let (file, cursor, block) = (Rc::clone(&file), cursor.clone(), cell.block());
                let path = path.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut ops = 0u64;
                    while Instant::now() < deadline {
                        if appending {
                            let base = cursor.take();
                            let writes: Vec<_> = (0..APPENDS_PER_SYNC)
                                .map(|i| {
                                    let at = base + (i * BLOCK_BYTES) as u64;
                                    let file = &file;
                                    async move { (file.write(at, i as u8 | 1).await, at) }
                                })
                                .collect();
                            for (n, at) in super::join_all(writes).await {
                                check_write(n, at, &path)?;
                            }
                            file.sync().await.map_err(|e| err("fdatasync", &path, e))?;
                            ops += APPENDS_PER_SYNC as u64;
                        } else {
                            let at = plan.next_read();
                            check_read(file.read(at, block).await, block, at, &path)?;
                            ops += 1;
                        }
                    }
                    anyhow::Ok(ops)
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
