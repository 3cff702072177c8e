//! The segment-log workloads, through the async file API (`storage_io::AsyncFile`) on one I/O
//! worker, so that io_uring and the thread pool can be compared the way an async log server
//! would use them:
//! - `segment_append`: one op = `qd` appends of `block` bytes, all in flight at once, then one
//!   `sync_data` covering them (a produce request acknowledged when durable). At qd 1 this is the
//!   append + fdatasync latency. The segment is a fresh file beside the bench file, removed after.
//! - `segment_read`: a consumer reading the bench file front to back in `block`-byte reads,
//!   `qd` of them in flight; throughput is the figure of merit.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use storage_io::{AlignedBuf, AsyncFileSystem, AsyncFsConfig, IoConfig, OpenOptions, block_on};

use crate::Row;
use crate::cell::{Cell, Workload, cell_row, cpu_time, factory};

/// Whether this module runs `workload`.
pub fn runs(workload: Workload) -> bool {
    matches!(workload, Workload::SegmentAppend | Workload::SegmentRead)
}

/// A segment file beside the bench file, removed on drop.
struct SegmentFile(PathBuf);

impl Drop for SegmentFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file_system(cell: &Cell) -> Result<AsyncFileSystem> {
    let qd = cell.qd.max(1);
    let factory = factory(cell.backend, qd)?;
    let config = AsyncFsConfig {
        io_workers: 1,
        io: IoConfig {
            queue_depth: qd,
            direct_io: cell.direct,
            ..IoConfig::default()
        },
        ..AsyncFsConfig::default()
    };
    Ok(AsyncFileSystem::with_factory(&config, factory)?)
}

/// A `block`-byte buffer of `fill` bytes, aligned for direct I/O.
fn buffer(block: usize, fill: u8) -> Result<AlignedBuf> {
    Ok(AlignedBuf::from_slice(&vec![fill; block], 4096)?)
}

/// Runs a `segment_*` cell on `file`.
pub fn run_cell(file: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Result<Row> {
    let fs = file_system(cell)?;
    let qd = cell.qd.max(1);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut ops = 0u64;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + cell.duration;
    if cell.workload == Workload::SegmentAppend {
        let segment = SegmentFile(PathBuf::from(format!(
            "{}.segment-{}",
            file.display(),
            std::process::id()
        )));
        let log = block_on(fs.open_with(&segment.0, OpenOptions::create().with_truncate(true), None))?;
        if cell.direct && !log.is_direct() {
            bail!("{} refuses O_DIRECT", segment.0.display());
        }
        let mut bufs: Vec<AlignedBuf> = (0..qd)
            .map(|i| buffer(cell.block, i as u8))
            .collect::<Result<_>>()?;
        while Instant::now() < deadline && !stop() {
            let start = Instant::now();
            let appends: Vec<_> = bufs.drain(..).map(|b| log.append(b)).collect();
            let sync = log.sync_data();
            for append in appends {
                let (at, buf) = block_on(append);
                at?;
                bufs.push(buf);
            }
            block_on(sync)?;
            hist.saturating_record(start.elapsed().as_nanos().max(1) as u64);
            ops += 1;
        }
    } else {
        let data = block_on(fs.open_with(file, OpenOptions::read_only(), None))?;
        if cell.direct && !data.is_direct() {
            bail!("{} refuses O_DIRECT", file.display());
        }
        let blocks = (cell.size / cell.block as u64).max(1);
        let mut next = 0u64;
        let mut in_flight = VecDeque::with_capacity(qd);
        let mut free: Vec<AlignedBuf> = (0..qd).map(|_| buffer(cell.block, 0)).collect::<Result<_>>()?;
        loop {
            let submitting = Instant::now() < deadline && !stop();
            while submitting && in_flight.len() < qd {
                let Some(buf) = free.pop() else { break };
                in_flight.push_back((Instant::now(), data.read_at(buf, next * cell.block as u64)));
                next = (next + 1) % blocks;
            }
            // The consumer takes blocks in file order.
            let Some((start, read)) = in_flight.pop_front() else {
                break;
            };
            let (n, buf) = block_on(read);
            let n = n?;
            if n != cell.block {
                bail!("a {}-byte read inside the file returned {n} bytes", cell.block);
            }
            hist.saturating_record(start.elapsed().as_nanos().max(1) as u64);
            ops += 1;
            free.push(buf);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let m = fs.metrics();
    fs.shutdown();
    let blocks_per_op = if cell.workload == Workload::SegmentAppend {
        qd
    } else {
        1
    };
    Ok(Row {
        errors: m.ops.iter().map(|o| o.errors).sum(),
        ..cell_row(cell, ops, blocks_per_op, secs, cpu, &hist)
    })
}
