//! The scheduler workloads, on the same file as the raw cells:
//!
//! Every scheduler cell reads through the zero-copy path (`schedule_read_shared`, tagged reads,
//! `schedule_read_pages_shared`, `ReadStream`), the one a buffer pool or scan uses.
//! - `scheduler_rand_read`: random page reads through `DiskScheduler`, `qd` of them
//!   outstanding from one client thread (tagged reads at qd > 1; the raw peer is `rand_read` at
//!   the same qd).
//! - `scheduler_batch_read`: `schedule_read_pages_shared` of `qd` random pages, one batch at a time;
//!   an op is a batch. Its peer `raw_round_read` submits `qd` random reads on the bare backend
//!   and waits for all of them: one round.
//! - `scheduler_seq_scan`: a `ReadStream` over the file with `qd` pages in flight (adjacent
//!   pages merged); its peers are `seq_read` and fio's sequential read at the same qd.
//! - `scheduler_client_read`: `qd` blocking client threads, each with one random page read
//!   outstanding (`read_blocking`, which reads on the client's own thread where it can): the
//!   buffer-pool miss path of a multi-threaded
//!   engine. Its peers: fio psync with `qd` jobs (each thread its own `pread`, the blocking
//!   fallback), `rand_read` (the raw loop) at the same qd, and `raw_handoff_read`.
//! - `scheduler_task_read`: the same with `qd` async tasks on a 2-thread tokio runtime, each
//!   awaiting its own read (`recv_async`).
//! - `raw_handoff_read`: the raw loop on one thread keeps the clients' reads in flight and
//!   hands each completion to its client thread over a channel, which sends its next request
//!   back: two cross-thread hand-offs per read and nothing else, the floor under any
//!   dispatcher/worker design on the machine at hand.
//! - `raw_tagged_handoff_read`: the same raw loop serving one client thread that keeps `qd`
//!   reads outstanding, takes every answer that has arrived and sends their refills together:
//!   the two-thread structure of `scheduler_rand_read` with nothing of the scheduler in it.
//!
//! The scheduler runs with its default worker count, max(1, cores / 2), unless
//! `--sched-workers` sets one; each worker owns one backend, and the series label names the
//! count.
//!
//! The scheduler needs its own directory: the bench file is hard-linked into a fresh one as
//! `pages.db` (same inode, so literally the same file), and every page of it is allocated
//! with one `schedule_allocate_extent`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, IoFd, IoToken, OpenOptions, StorageIo, open_file};
use storage_io_scheduler::{DiskScheduler, PAGE_FILE, PageId, SchedulerConfig};

use crate::Row;
use crate::cell::{
    Cell, ScratchDir, Workload, XorShift, caller_factory, cell_row, cpu_time, factory, make_backend,
};

/// Whether this module runs `workload`.
pub fn runs(workload: Workload) -> bool {
    matches!(
        workload,
        Workload::SchedulerRandRead
            | Workload::SchedulerBatchRead
            | Workload::RawRoundRead
            | Workload::SchedulerSeqScan
            | Workload::SchedulerClientRead
            | Workload::SchedulerTaskRead
            | Workload::RawHandoffRead
            | Workload::RawTaggedHandoffRead
    )
}

/// Runs a cell of one of this module's workloads.
pub fn run_cell(file: &Path, cell: &Cell, stop: &dyn Fn() -> bool) -> Result<Row> {
    match cell.workload {
        Workload::RawRoundRead => run_raw_round_cell(file, cell, stop),
        Workload::RawHandoffRead => run_handoff_cell(file, cell, stop, false),
        Workload::RawTaggedHandoffRead => run_handoff_cell(file, cell, stop, true),
        _ => run_scheduler_cell(file, cell, stop),
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
    Ok(DiskScheduler::open_with_caller_backends(
        dir.path(),
        config,
        factory(cell.backend, cell.qd.max(1))?,
        caller_factory(cell.backend, cell.block)?,
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
    let sched = Arc::new(open_on(file, cell, &dir)?);
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
    } else if cell.workload == Workload::SchedulerClientRead {
        let (n, h) = blocking_clients(qd, pages, deadline, stop, |page| {
            sched.read_blocking(page).map(drop).map_err(Into::into)
        })?;
        ops = n;
        hist.add(&h)?;
    } else if cell.workload == Workload::SchedulerTaskRead {
        let (n, h) = task_clients(&sched, qd, pages, deadline, stop)?;
        ops = n;
        hist.add(&h)?;
    } else if batch {
        while Instant::now() < deadline && !stop() {
            let want: Vec<PageId> = (0..qd).map(|_| PageId(rng.below(pages))).collect();
            let start = Instant::now();
            let got = sched.schedule_read_pages_shared(want).recv()?;
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

/// `clients` threads each doing `read(page)` of random pages one at a time until `deadline` (or
/// `stop`, asked on this thread); returns the reads done and their latencies.
fn blocking_clients(
    clients: usize,
    pages: u64,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
    read: impl Fn(PageId) -> Result<()> + Sync,
) -> Result<(u64, Histogram<u64>)> {
    let halt = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients as u64)
            .map(|c| {
                let (halt, read) = (&halt, &read);
                s.spawn(move || -> Result<(u64, Histogram<u64>)> {
                    let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D ^ (c + 1).wrapping_mul(0x9E37_79B9));
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                    let mut n = 0;
                    while !halt.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        read(PageId(rng.below(pages)))?;
                        h.saturating_record(start.elapsed().as_nanos().max(1) as u64);
                        n += 1;
                    }
                    Ok((n, h))
                })
            })
            .collect();
        while Instant::now() < deadline && !stop() {
            std::thread::sleep(
                Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        halt.store(true, Ordering::Relaxed);
        let mut total = (0, Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?);
        for h in handles {
            let (n, hist) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            total.0 += n;
            total.1.add(&hist)?;
        }
        Ok(total)
    })
}

/// An answer from the raw loop of the hand-off cells: the slot (the tag) and the result.
type SlotAnswer = (usize, Result<(), String>);

/// `raw_handoff_read`: `qd` client threads ask a raw backend loop on this thread for random
/// reads over a channel and wait for the answer on one of their own, one read each at a time.
/// `raw_tagged_handoff_read` (`tagged`): one client thread keeps `qd` reads outstanding, as
/// `scheduler_rand_read`'s client does, with every answer on one channel.
fn run_handoff_cell(file: &Path, cell: &Cell, stop: &dyn Fn() -> bool, tagged: bool) -> Result<Row> {
    let qd = cell.qd.max(1);
    let opened = open_file(file, &OpenOptions::default().with_direct(cell.direct))?;
    let mut io = make_backend(cell.backend, qd)?;
    let fd = io.register_fd(opened.file)?;
    let pages = (cell.size / cell.block as u64).max(1);
    let waker = io.wait_waker();
    let (requests, asked) = flume::unbounded::<(usize, PageId)>();
    // Where each slot's answer goes: a channel per client thread, or one for the tagged client.
    let (answer_to, answers): (Vec<_>, Vec<_>) = if tagged {
        let (tx, rx) = flume::unbounded::<SlotAnswer>();
        (vec![tx; qd], vec![rx])
    } else {
        (0..qd).map(|_| flume::bounded::<SlotAnswer>(1)).unzip()
    };
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + cell.duration;
    let halt = AtomicBool::new(false);
    let (ops, hist) = std::thread::scope(|s| -> Result<(u64, Histogram<u64>)> {
        let clients: Vec<_> = answers
            .into_iter()
            .enumerate()
            .map(|(c, answer)| {
                let (requests, halt, waker) = (requests.clone(), &halt, waker.clone());
                let slots: Vec<usize> = if tagged { (0..qd).collect() } else { vec![c] };
                s.spawn(move || handoff_client(c, &slots, pages, &requests, &answer, waker.as_ref(), halt))
            })
            .collect();
        drop(requests);
        let served = serve_handoff(
            &mut *io, fd, cell.block, &asked, &answer_to, deadline, stop, &halt,
        );
        halt.store(true, Ordering::Relaxed);
        let mut total = (0, Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?);
        for h in clients {
            let (n, hist) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            total.0 += n;
            total.1.add(&hist)?;
        }
        served?;
        Ok(total)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    io.deregister_fd(fd)?;
    let (submit_call_us, submit_calls_per_op) = crate::cell::submit_calls_of(io.stats(), ops);
    Ok(Row {
        backend_qd: io.stats().mean_ops_held(Duration::from_secs_f64(secs)),
        submit_call_us,
        submit_calls_per_op,
        ..cell_row(cell, ops, 1, secs, cpu, &hist)
    })
}

/// One client of the hand-off cells: keeps a read outstanding for each of its `slots`, takes
/// every answer that has arrived, then sends their refills together and wakes the raw loop
/// once, until `halt`. Returns its reads and their latencies.
fn handoff_client(
    client: usize,
    slots: &[usize],
    pages: u64,
    requests: &flume::Sender<(usize, PageId)>,
    answers: &flume::Receiver<SlotAnswer>,
    waker: Option<&storage_io_core::WaitWaker>,
    halt: &AtomicBool,
) -> Result<(u64, Histogram<u64>)> {
    let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9));
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut started = vec![Instant::now(); slots.iter().max().map_or(0, |m| m + 1)];
    let mut n = 0;
    let mut refill: Vec<usize> = slots.to_vec();
    while !halt.load(Ordering::Relaxed) {
        let now = Instant::now();
        for slot in refill.drain(..) {
            started[slot] = now;
            requests.send((slot, PageId(rng.below(pages))))?;
        }
        if let Some(w) = waker {
            w.wake();
        }
        let first = answers.recv()?;
        let now = Instant::now();
        for (slot, result) in std::iter::once(first).chain(answers.try_iter()) {
            result.map_err(anyhow::Error::msg)?;
            h.saturating_record((now - started[slot]).as_nanos().max(1) as u64);
            n += 1;
            refill.push(slot);
        }
    }
    Ok((n, h))
}

/// The raw loop of the hand-off cells: submits every read the clients asked for, waits for
/// completions (a request cuts the wait short through the backend's waker), and hands each
/// completion to the slot that asked. Past `deadline` (or `stop`) it sets `halt` and serves
/// on until every client has gone.
#[allow(clippy::too_many_arguments)] // one loop's whole context; a struct would only rename it
fn serve_handoff(
    io: &mut dyn StorageIo,
    fd: IoFd,
    block: usize,
    asked: &flume::Receiver<(usize, PageId)>,
    answer_to: &[flume::Sender<SlotAnswer>],
    deadline: Instant,
    stop: &dyn Fn() -> bool,
    halt: &AtomicBool,
) -> Result<()> {
    let mut client_of: HashMap<IoToken, usize> = HashMap::with_capacity(answer_to.len());
    let mut done: Vec<IoCompletion> = Vec::with_capacity(answer_to.len());
    let mut spare: Vec<IoBuf> = Vec::new();
    // The deadline halts the clients only once one read was answered: on a loaded machine the
    // client threads may not even have started when a short cell's deadline passes.
    let mut answered = 0u64;
    loop {
        if !halt.load(Ordering::Relaxed) && ((Instant::now() >= deadline && answered > 0) || stop()) {
            halt.store(true, Ordering::Relaxed);
        }
        if client_of.is_empty() {
            // Nothing in flight: wait for a request, or for every client to have gone.
            match asked.recv_timeout(Duration::from_millis(10)) {
                Ok(r) => submit_for(io, fd, block, &mut spare, &mut client_of, r)?,
                Err(flume::RecvTimeoutError::Timeout) => continue,
                Err(flume::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
        for r in asked.try_iter() {
            submit_for(io, fd, block, &mut spare, &mut client_of, r)?;
        }
        io.wait_completions(&mut done, 1, Some(Duration::from_millis(10)))?;
        for c in done.drain(..) {
            let Some(slot) = client_of.remove(&c.token) else {
                continue;
            };
            let answer = c.result.map(drop).map_err(|e| e.to_string());
            if let Some(mut b) = c.buf {
                if let IoBuf::Aligned(a) = &mut b {
                    a.set_len(block)?;
                }
                spare.push(b);
            }
            // A client that has gone (its answer channel closed) asks for nothing more.
            let _ = answer_to[slot].send((slot, answer));
            answered += 1;
        }
    }
}

/// Submits client `c`'s read of `page` in a spare buffer (or a new one), noting whose it is.
fn submit_for(
    io: &mut dyn StorageIo,
    fd: IoFd,
    block: usize,
    spare: &mut Vec<IoBuf>,
    client_of: &mut HashMap<IoToken, usize>,
    (c, page): (usize, PageId),
) -> Result<()> {
    let buf = match spare.pop() {
        Some(b) => b,
        None => IoBuf::from(AlignedBuf::zeroed(block, 4096)?),
    };
    let token = io
        .submit_read(fd, buf, page.0 * block as u64)
        .map_err(|e| anyhow::anyhow!("submit failed: {}", e.error))?;
    client_of.insert(token, c);
    Ok(())
}

/// `tasks` tokio tasks on a 2-thread runtime, each awaiting random page reads one at a time
/// until `deadline` (or `stop`, asked on this thread); returns the reads and their latencies.
fn task_clients(
    sched: &Arc<DiskScheduler>,
    tasks: usize,
    pages: u64,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<(u64, Histogram<u64>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let halt = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks as u64)
        .map(|t| {
            let (sched, halt) = (Arc::clone(sched), Arc::clone(&halt));
            rt.spawn(async move {
                let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D ^ (t + 1).wrapping_mul(0x9E37_79B9));
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut n = 0u64;
                while !halt.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    sched
                        .schedule_read_shared(PageId(rng.below(pages)))
                        .recv_async()
                        .await?;
                    h.saturating_record(start.elapsed().as_nanos().max(1) as u64);
                    n += 1;
                }
                Ok::<_, anyhow::Error>((n, h))
            })
        })
        .collect();
    while Instant::now() < deadline && !stop() {
        std::thread::sleep(Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())));
    }
    halt.store(true, Ordering::Relaxed);
    let mut total = (0, Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?);
    for h in handles {
        let (n, hist) = rt.block_on(h)??;
        total.0 += n;
        total.1.add(&hist)?;
    }
    Ok(total)
}
