//! The scheduler workloads, on the same file as the raw cells:
//! - `scheduler_rand_read`: random page reads through `DiskScheduler::schedule_read`, `qd`
//!   of them outstanding from one client thread (the raw peer is `rand_read` at the same qd).
//! - `scheduler_batch_read`: `schedule_read_pages` of `qd` random pages, one batch at a time;
//!   an op is a batch. Its peer `raw_round_read` submits `qd` random reads on the bare backend
//!   and waits for all of them: one round.
//! - `scheduler_seq_scan`: a `ReadStream` over the file with `qd` pages in flight (adjacent
//!   pages merged); its peers are `seq_read` and fio's sequential read at the same qd.
//!
//! The scheduler runs with its default worker count, max(1, cores / 2), unless
//! `--sched-workers` sets one; each worker owns one backend, and the series label names the
//! count.
//!
//! The scheduler needs its own directory: the bench file is hard-linked into a fresh one as
//! `pages.db` (same inode, so literally the same file), and every page of it is allocated
//! with one `schedule_allocate_extent`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, OpenOptions, open_file};
use storage_io_scheduler::{DiskScheduler, PAGE_FILE, PageId, SchedulerConfig};

use crate::Row;
use crate::cell::{Cell, ScratchDir, Workload, XorShift, cell_row, cpu_time, factory, make_backend};

/// Whether this module runs `workload`.
pub fn runs(workload: Workload) -> bool {
    matches!(
        workload,
        Workload::SchedulerRandRead
            | Workload::SchedulerBatchRead
            | Workload::RawRoundRead
            | Workload::SchedulerSeqScan
    )
}

/// Runs a cell of one of this module's workloads.
pub fn run_cell(file: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Result<Row> {
    if cell.workload == Workload::RawRoundRead {
        run_raw_round_cell(file, cell, stop)
    } else {
        run_scheduler_cell(file, cell, stop)
    }
}

/// A scheduler directory beside the bench file, with an empty page file in it (removed on drop;
/// the bench file itself stays).
fn sched_dir(file: &Path) -> Result<ScratchDir> {
    let root = file.parent().unwrap_or(Path::new("."));
    let name = file.file_name().map_or("bench".into(), |n| n.to_string_lossy());
    let dir = ScratchDir::new(root, &format!("{name}.sched"))?;
    // An empty page file first, so a fresh scheduler writes its allocation images...
    drop(std::fs::File::create(dir.path().join(PAGE_FILE))?);
    Ok(dir)
}

/// Opens a scheduler whose page file is `file`, with every page allocated.
fn open_on(file: &Path, cell: &Cell, dir: &ScratchDir) -> Result<DiskScheduler> {
    let pages = (cell.size / cell.block as u64).max(1);
    let config = SchedulerConfig {
        workers: workers_of(cell),
        queue_depth: cell.qd.max(1),
        page_size: cell.block,
        direct_io: cell.direct,
        ..SchedulerConfig::default()
    };
    {
        let sched = DiskScheduler::open(dir.path(), config.clone(), factory(cell.backend, cell.qd.max(1))?)?;
        sched.schedule_allocate_extent(pages).recv()?;
        sched.shutdown()?;
    }
    // ...then swap in the bench file under the same name.
    let page_file = dir.path().join(PAGE_FILE);
    std::fs::remove_file(&page_file)?;
    std::fs::hard_link(file, &page_file)
        .with_context(|| format!("hard-link {} into {}", file.display(), dir.path().display()))?;
    Ok(DiskScheduler::open(
        dir.path(),
        config,
        factory(cell.backend, cell.qd.max(1))?,
    )?)
}

/// The scheduler's worker count for `cell`: the one asked for, or the scheduler's default
/// (what a user who does not set it gets).
fn workers_of(cell: &Cell) -> usize {
    cell.sched_workers
        .unwrap_or_else(|| SchedulerConfig::default().workers)
}

/// Runs a `scheduler_*` cell on `file`.
fn run_scheduler_cell(file: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Result<Row> {
    let dir = sched_dir(file)?;
    let sched = open_on(file, cell, &dir)?;
    let pages = (cell.size / cell.block as u64).max(1);
    let qd = cell.qd.max(1);
    let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let batch = cell.workload == Workload::SchedulerBatchRead;
    // Allocating the pages wrote metadata through the backends (published before the answer
    // came back): only the cell's ops count.
    let before = sched.stats();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + cell.duration;
    let mut ops = 0u64;
    if cell.workload == Workload::SchedulerSeqScan {
        // Whole passes over the file until the time is up; each page is an op.
        'scan: while Instant::now() < deadline && !stop() {
            let mut last = Instant::now();
            for item in sched.read_stream(PageId(0)..PageId(pages), qd) {
                item?;
                let now = Instant::now();
                hist.saturating_record((now - last).as_nanos().max(1) as u64);
                last = now;
                ops += 1;
                if now >= deadline || stop() {
                    break 'scan;
                }
            }
        }
    } else if batch {
        while Instant::now() < deadline && !stop() {
            let want: Vec<PageId> = (0..qd).map(|_| PageId(rng.below(pages))).collect();
            let start = Instant::now();
            let got = sched.schedule_read_pages(want).recv()?;
            hist.saturating_record(start.elapsed().as_nanos().max(1) as u64);
            if got.len() != qd {
                bail!("a batch of {qd} pages returned {}", got.len());
            }
            ops += 1;
        }
    } else {
        // Up to `qd` reads in flight, answered on one channel with the slot as the tag: the
        // client waits for whichever read lands first, as a buffer pool with many misses would.
        let (done, answers) = flume::unbounded();
        let mut started = vec![t0; qd];
        let mut free: Vec<u64> = (0..qd as u64).collect();
        loop {
            if Instant::now() < deadline && !stop() {
                while let Some(tag) = free.pop() {
                    started[tag as usize] = Instant::now();
                    sched.schedule_read_tagged(PageId(rng.below(pages)), tag, &done);
                }
            }
            if free.len() == qd {
                break;
            }
            let first = answers.recv()?;
            let now = Instant::now();
            for read in std::iter::once(first).chain(answers.try_iter()) {
                read.result?;
                hist.saturating_record((now - started[read.tag as usize]).as_nanos().max(1) as u64);
                ops += 1;
                free.push(read.tag);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    sched.shutdown()?;
    // After shutdown every op has completed and been counted (a scan may leave reads in
    // flight when it stops; they end before the workers do).
    let after = sched.stats();
    let held = (after.backend_held_ns - before.backend_held_ns) as f64 / 1e9;
    // Submit calls per page read, as the raw peers count them.
    let pages_per_op = if batch { qd } else { 1 };
    let reads = ops * pages_per_op as u64;
    let (submit_call_us, submit_calls_per_op) = crate::cell::submit_calls(
        after.backend_submit_calls - before.backend_submit_calls,
        after.backend_submit_call_ns - before.backend_submit_call_ns,
        reads,
    );
    Ok(Row {
        sched_workers: Some(workers_of(cell)),
        backend_qd: held / t0.elapsed().as_secs_f64(),
        submit_call_us,
        submit_calls_per_op,
        ..cell_row(cell, ops, pages_per_op, secs, cpu, &hist)
    })
}

/// The raw peer of `scheduler_batch_read`: `qd` random reads submitted at once on the bare
/// backend and waited for together, one round at a time.
fn run_raw_round_cell(file: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Result<Row> {
    let qd = cell.qd.max(1);
    let opened = open_file(file, &OpenOptions::default().with_direct(cell.direct))?;
    let mut io = make_backend(cell.backend, qd)?;
    let fd = io.register_fd(opened.file)?;
    let pages = (cell.size / cell.block as u64).max(1);
    let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut bufs: Vec<IoBuf> = (0..qd)
        .map(|_| AlignedBuf::zeroed(cell.block, 4096).map(IoBuf::from))
        .collect::<Result<_, _>>()?;
    let mut done: Vec<IoCompletion> = Vec::with_capacity(qd);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + cell.duration;
    let mut ops = 0u64;
    while Instant::now() < deadline && !stop() {
        let start = Instant::now();
        for buf in bufs.drain(..) {
            if let Err(e) = io.submit_read(fd, buf, rng.below(pages) * cell.block as u64) {
                bail!("submit failed: {}", e.error);
            }
        }
        while done.len() < qd {
            let want = qd - done.len();
            io.wait_completions(&mut done, want, Some(Duration::from_secs(10)))?;
        }
        hist.saturating_record(start.elapsed().as_nanos().max(1) as u64);
        for c in done.drain(..) {
            c.result?;
            if let Some(mut b) = c.buf {
                if let IoBuf::Aligned(a) = &mut b {
                    a.set_len(cell.block)?;
                }
                bufs.push(b);
            }
        }
        ops += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    io.deregister_fd(fd)?;
    let (submit_call_us, submit_calls_per_op) = crate::cell::submit_calls_of(io.stats(), ops * qd as u64);
    Ok(Row {
        backend_qd: io.stats().mean_ops_held(Duration::from_secs_f64(secs)),
        submit_call_us,
        submit_calls_per_op,
        ..cell_row(cell, ops, qd, secs, cpu, &hist)
    })
}
