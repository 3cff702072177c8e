//! Our side of a cell: one backend, one file, `qd` ops kept in flight for a fixed time.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, IoToken, OpenOptions, StorageIo, open_file};

use crate::cell::{Backend, Cell, Workload, XorShift, cpu_time, make_backend, submit_calls_of};
use crate::{Latency, Row};

/// Where the next op of a cell goes.
struct Offsets {
    blocks: u64,
    rng: XorShift,
    cursors: Vec<u64>,
    next_stream: usize,
    random: bool,
}

impl Offsets {
    fn new(cell: &Cell) -> Offsets {
        let blocks = (cell.size / cell.block as u64).max(1);
        let streams = if cell.workload == Workload::MultistreamScan {
            cell.streams.clamp(1, blocks as usize)
        } else {
            1
        };
        // Stream s starts at its own slice of the file and wraps within the whole file.
        let cursors = (0..streams as u64).map(|s| s * blocks / streams as u64).collect();
        Offsets {
            blocks,
            rng: XorShift::new(0x2545_F491_4F6C_DD1D),
            cursors,
            next_stream: 0,
            random: matches!(cell.workload, Workload::RandRead | Workload::RandWrite),
        }
    }

    /// The next block number.
    fn next(&mut self) -> u64 {
        if self.random {
            return self.rng.below(self.blocks);
        }
        let s = self.next_stream;
        self.next_stream = (s + 1) % self.cursors.len();
        let page = self.cursors[s];
        self.cursors[s] = (page + 1) % self.blocks;
        page
    }
}

/// `qd` buffers of `block` bytes for a cell on `backend`, each filled with a non-zero byte.
pub fn cell_buffers(io: &mut dyn StorageIo, backend: Backend, qd: usize, block: usize) -> Result<Vec<IoBuf>> {
    // Buffers from the backend (`alloc_buf`): io_uring lends its registered buffers, so reads
    // and writes on them need no copy, as with fio's fixedbufs. `uring_heapbuf` brings its own
    // heap buffers instead, which io_uring stages through registered memory and copies.
    let own = backend == Backend::UringHeapbuf;
    (0..qd)
        .map(|i| {
            let mut b = if own {
                AlignedBuf::zeroed(block, 4096)?
            } else {
                io.alloc_buf(block)?
            };
            b.fill(i as u8 | 1);
            Ok(IoBuf::from(b))
        })
        .collect::<Result<_, storage_io_core::StorageIoError>>()
        .map_err(Into::into)
}

/// The cells of the workloads another module runs (the scheduler's, the async file API's).
fn run_elsewhere(path: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Option<Result<Row>> {
    if crate::sched::runs(cell.workload) {
        return Some(crate::sched::run_cell(path, cell, stop));
    }
    if crate::segment::runs(cell.workload) {
        return Some(crate::segment::run_cell(path, cell, stop));
    }
    if crate::async_cells::is_async(cell.workload) {
        return Some(Err(anyhow::anyhow!(
            "{} runs through async_cells::run (a child process per system), not as a backend cell",
            cell.workload
        )));
    }
    None
}

/// Runs one cell of ours on `path` and measures it. `stop` ends it early (Ctrl-C).
pub fn run_cell(path: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Result<Row> {
    if let Some(row) = run_elsewhere(path, cell, stop) {
        return row;
    }
    let (qd, block) = (cell.qd.max(1), cell.block);
    let opened = open_file(path, &OpenOptions::default().with_direct(cell.direct))?;
    if cell.direct && !opened.mode.is_direct() {
        bail!("{} refuses O_DIRECT", path.display());
    }
    let mut io = make_backend(cell.backend, qd)?;
    let fd = io.register_fd(opened.file)?;
    let mut offsets = Offsets::new(cell);
    let mut free = cell_buffers(io.as_mut(), cell.backend, qd, block)?;
    let mut started_at: HashMap<IoToken, Instant> = HashMap::with_capacity(qd * 2);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut done: Vec<IoCompletion> = Vec::with_capacity(qd);
    let (mut ops, mut errors, mut depth_sum, mut waits) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let write = cell.workload == Workload::RandWrite;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + cell.duration;
    loop {
        let submitting = Instant::now() < deadline && !stop();
        // One stamp per refill, taken before its first submit: an op's latency includes the
        // time it waits behind the submits of the ops refilled before it (each may be a system
        // call), as an application with these reads ready at once would see (and as fio's
        // total latency counts). The inline backend does the whole op inside submit_*.
        let stamp = Instant::now();
        while submitting && io.pending_count() < qd {
            let Some(mut buf) = free.pop() else { break };
            if let IoBuf::Aligned(b) = &mut buf {
                b.set_len(block)?;
            }
            let offset = offsets.next() * block as u64;
            let submitted = if write {
                io.submit_write_buf(fd, buf, offset)
            } else {
                io.submit_read(fd, buf, offset)
            };
            match submitted {
                Ok(t) => {
                    started_at.insert(t, stamp);
                }
                Err(e) => bail!("submit failed: {}", e.error),
            }
        }
        if io.pending_count() == 0 {
            break;
        }
        depth_sum += io.pending_count() as u64;
        waits += 1;
        io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))?;
        let now = Instant::now();
        for c in done.drain(..) {
            if let Some(t) = started_at.remove(&c.token) {
                hist.saturating_record((now - t).as_nanos().max(1) as u64);
            }
            match c.result {
                Ok(_) => ops += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
            if let Some(b) = c.buf {
                free.push(b);
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    io.deregister_fd(fd)?;
    if let Some(e) = first_error {
        bail!("{errors} of {} ops failed; the first: {e}", ops + errors);
    }
    let tally = Tally {
        ops,
        errors,
        depth_sum,
        waits,
        elapsed,
        cpu,
    };
    Ok(loop_row(
        cell,
        (qd, block),
        &tally,
        &hist,
        io.stats(),
        offsets.cursors.len(),
    ))
}

/// What a cell's loop counted.
struct Tally {
    ops: u64,
    errors: u64,
    /// Ops in flight summed over the waits.
    depth_sum: u64,
    waits: u64,
    elapsed: f64,
    /// CPU seconds of the process over the cell.
    cpu: f64,
}

/// The row of a raw cell's loop.
fn loop_row(
    cell: &Cell,
    (qd, block): (usize, usize),
    t: &Tally,
    hist: &Histogram<u64>,
    stats: &storage_io_core::IoStats,
    streams: usize,
) -> Row {
    let (ops, elapsed, waits) = (t.ops, t.elapsed, t.waits);
    let iops = ops as f64 / elapsed;
    let (submit_call_us, submit_calls_per_op) = submit_calls_of(stats, ops);
    let per_wait = |x: u64| if waits > 0 { x as f64 / waits as f64 } else { 0.0 };
    Row {
        workload: cell.workload,
        engine: crate::cell::Engine::StorageIo,
        backend: cell.backend.name().into(),
        io: crate::cell::IoMode::of(cell.direct),
        regime: crate::cell::Regime::default(),
        qd,
        block_size: block,
        iops,
        mb_s: iops * block as f64 / 1e6,
        lat_us: Latency::from_histogram_ns(hist),
        cpu_us_per_op: if ops > 0 { t.cpu * 1e6 / ops as f64 } else { 0.0 },
        ops,
        errors: t.errors,
        qd_achieved: per_wait(t.depth_sum),
        completions_per_wait: per_wait(ops),
        backend_qd: stats.mean_ops_held(Duration::from_secs_f64(elapsed)),
        submit_call_us,
        submit_calls_per_op,
        streams: (cell.workload == Workload::MultistreamScan).then_some(streams),
        ..Row::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(workload: Workload) -> Cell {
        Cell {
            workload,
            backend: crate::cell::Backend::Sync,
            direct: false,
            qd: 4,
            block: 4096,
            duration: Duration::from_millis(50),
            size: 1 << 20,
            streams: 4,
            sched_workers: None,
        }
    }

    #[test]
    fn offsets_follow_the_workload() {
        let mut seq = Offsets::new(&cell(Workload::SeqRead));
        assert_eq!(
            (0..5).map(|_| seq.next()).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let mut multi = Offsets::new(&cell(Workload::MultistreamScan));
        // 256 blocks, 4 streams at 0, 64, 128, 192, taken in turn.
        assert_eq!(
            (0..6).map(|_| multi.next()).collect::<Vec<_>>(),
            vec![0, 64, 128, 192, 1, 65]
        );
        let mut rand = Offsets::new(&cell(Workload::RandRead));
        let picks: Vec<u64> = (0..1000).map(|_| rand.next()).collect();
        assert!(picks.iter().all(|&p| p < 256));
        let distinct: std::collections::HashSet<_> = picks.iter().collect();
        assert!(
            distinct.len() > 200,
            "random offsets should cover the file: {}",
            distinct.len()
        );
    }

    #[test]
    fn a_cell_runs_and_counts_its_ops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        for w in Workload::ALL
            .into_iter()
            .filter(|&w| !crate::async_cells::is_async(w))
        {
            let row = run_cell(&path, &cell(w), &|| false).unwrap();
            assert!(row.ops > 0, "{w}: no ops");
            assert_eq!(row.errors, 0);
            assert!(
                row.lat_us.p50 > 0.0 && row.lat_us.p50 <= row.lat_us.max,
                "{w}: {:?}",
                row.lat_us
            );
            assert_eq!(row.streams.is_some(), w == Workload::MultistreamScan);
            if !crate::segment::runs(w) {
                // Little's law over the cell: some ops were in the backend, never more than
                // the driver kept outstanding.
                let qd = cell(w).qd as f64;
                assert!(
                    row.backend_qd > 0.0 && row.backend_qd <= qd * 1.01,
                    "{w}: {} ops held on average at qd {qd}",
                    row.backend_qd
                );
            }
        }
        let stopped = run_cell(&path, &cell(Workload::RandRead), &|| true).unwrap();
        assert_eq!(stopped.ops, 0, "a stop before the first submit runs nothing");
        let unknown = crate::cell::Backend::named("nvme").unwrap_err().to_string();
        assert!(unknown.contains("uring, uring_nofixed"), "{unknown}");
    }
}
