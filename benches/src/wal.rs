//! The `wal_commit` workload: N threads committing 128-byte records through `storage-io-wal`
//! (default group commit) on one backend, and beside it the raw peer — one thread doing durable
//! 4 KiB writes one at a time on the same backend, in the same directory: write + fdatasync for
//! the buffered WAL, an O_DIRECT | O_DSYNC write for its `direct_io` mode.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use storage_io_core::{AlignedBuf, IoBuf, IoCompletion, OpenOptions, open_file};
use storage_io_wal::{WalConfig, WalManager};

use crate::cell::{Backend, ScratchDir, Workload, cpu_time, factory, make_backend};
use crate::{Latency, Row};

pub use crate::{ENGINE_OKAYWAL, ENGINE_RAW, ENGINE_ROCKSDB, ENGINE_WAL, ENGINE_WAL_ASYNC};
/// Payload bytes per committed record.
pub const RECORD_BYTES: usize = 128;
/// The regime label of WAL rows (they have no page-cache regime).
pub const REGIME: crate::cell::Regime = crate::cell::Regime::Fdatasync;

/// `(ops, seconds, CPU seconds)` of a cell.
pub(crate) type Measured = (u64, f64, f64);

pub(crate) fn row(
    engine: crate::cell::Engine,
    backend: &str,
    qd: usize,
    block: usize,
    (ops, secs, cpu): Measured,
    hist: &Histogram<u64>,
) -> Row {
    let iops = ops as f64 / secs;
    Row {
        workload: Workload::WalCommit,
        engine,
        backend: backend.into(),
        io: crate::cell::IoMode::Buffered,
        regime: REGIME,
        qd,
        block_size: block,
        iops,
        mb_s: iops * block as f64 / 1e6,
        lat_us: Latency::from_histogram_ns(hist),
        cpu_us_per_op: if ops > 0 { cpu * 1e6 / ops as f64 } else { 0.0 },
        ops,
        ..Row::default()
    }
}

/// `WalConfig::max_flushes_in_flight` for our cells: `STORAGE_IO_WAL_FLUSHES_IN_FLIGHT` when
/// set (to compare settings run by run), else the WAL's default.
pub fn flushes_in_flight() -> usize {
    std::env::var("STORAGE_IO_WAL_FLUSHES_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WalConfig::default().max_flushes_in_flight)
}

/// One WAL cell: who commits, how, for how long.
#[derive(Debug, Clone, Copy)]
pub struct WalCell {
    /// The backend's name (as `make_backend` takes it).
    pub backend: Backend,
    /// Concurrent committers: threads, or (`tasks`) async tasks.
    pub committers: usize,
    /// The committers are tasks on a 2-thread tokio runtime awaiting `commit_async`.
    pub tasks: bool,
    /// The WAL's `direct_io` mode (O_DIRECT | O_DSYNC, no fdatasync).
    pub direct: bool,
    /// How long the committers run.
    pub duration: Duration,
}

/// `committers` threads commit 128-byte records for `duration`; commits/s and commit latency.
pub fn run_wal_cell(root: &Path, cell: &WalCell, stop: &(dyn Fn() -> bool + Sync)) -> Result<Row> {
    let WalCell {
        backend,
        committers,
        tasks,
        direct,
        duration,
    } = *cell;
    let mode = crate::cell::IoMode::of(direct);
    let kind = if tasks { "tasks" } else { "threads" };
    let dir = ScratchDir::new(root, &format!("wal-{backend}-{mode}-{committers}-{kind}"))?;
    let config = WalConfig {
        segment_size_bytes: 64 << 20,
        direct_io: direct,
        max_flushes_in_flight: flushes_in_flight(),
        ..WalConfig::default()
    };
    let (wal, _) = WalManager::open(dir.path(), config, factory(backend, 64)?)?;
    // Warm-up: the first flush creates and zero-fills the first segment.
    wal.commit(&[0u8; RECORD_BYTES])?;
    if tasks {
        return run_task_cell(wal, cell, mode, stop);
    }
    let (measured, hist) = commit_threads(committers, duration, stop, |record| {
        wal.commit(record)?;
        Ok(())
    })?;
    let ops = measured.0;
    let stats = wal.stats();
    let mut out = row(
        ENGINE_WAL,
        backend.name(),
        committers,
        RECORD_BYTES,
        measured,
        &hist,
    );
    out.io = mode;
    // Commits per fdatasync (per flush in direct mode, which issues none): how well group
    // commit batches.
    let syncs = if direct { stats.flushes } else { stats.datasyncs };
    out.completions_per_wait = ops as f64 / syncs.max(1) as f64;
    Ok(out)
}

/// `committers` threads, each committing its own `RECORD_BYTES`-byte record through `commit`
/// until `duration` is up (or `stop`): the ops, wall and CPU seconds, and the commit latencies.
pub(crate) fn commit_threads(
    committers: usize,
    duration: Duration,
    stop: &(dyn Fn() -> bool + Sync),
    commit: impl Fn(&[u8]) -> Result<()> + Sync,
) -> Result<(Measured, Histogram<u64>)> {
    let commit = &commit;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let results: Vec<Result<(u64, Histogram<u64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..committers.max(1))
            .map(|t| {
                s.spawn(move || -> Result<(u64, Histogram<u64>)> {
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                    let record = [t as u8; RECORD_BYTES];
                    let mut n = 0u64;
                    while Instant::now() < deadline && !stop() {
                        let started = Instant::now();
                        commit(&record)?;
                        hist.saturating_record(started.elapsed().as_nanos().max(1) as u64);
                        n += 1;
                    }
                    Ok((n, hist))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a committer thread panicked")))
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut ops = 0;
    for r in results {
        let (n, h) = r?;
        ops += n;
        hist.add(&h)?;
    }
    Ok(((ops, secs, cpu), hist))
}

/// Latency histograms shared by many tasks: a task records into shard `task % SHARDS`.
const SHARDS: usize = 32;

/// `cell.committers` tasks on a 2-thread tokio runtime, each awaiting `commit_async` in a loop.
fn run_task_cell(
    wal: WalManager,
    cell: &WalCell,
    mode: crate::cell::IoMode,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Row> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()?;
    let wal = Arc::new(wal);
    let shards: Arc<Vec<std::sync::Mutex<Histogram<u64>>>> = Arc::new(
        (0..SHARDS)
            .map(|_| Histogram::new_with_bounds(1, 60_000_000_000, 3).map(std::sync::Mutex::new))
            .collect::<Result<_, _>>()?,
    );
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + cell.duration;
    let handles: Vec<_> = (0..cell.committers.max(1))
        .map(|t| {
            let wal = Arc::clone(&wal);
            let shards = Arc::clone(&shards);
            let stopped = Arc::clone(&stopped);
            rt.spawn(async move {
                let record = [t as u8; RECORD_BYTES];
                let mut n = 0u64;
                let mut local = Vec::with_capacity(64);
                while Instant::now() < deadline && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    wal.commit_async(&record).await?;
                    local.push(started.elapsed().as_nanos().max(1) as u64);
                    n += 1;
                    if local.len() == local.capacity() {
                        flush_latencies(&shards[t % SHARDS], &mut local);
                    }
                }
                flush_latencies(&shards[t % SHARDS], &mut local);
                Ok::<u64, storage_io_wal::WalError>(n)
            })
        })
        .collect();
    // The caller's stop (Ctrl-C) reaches the tasks through a flag they check.
    while Instant::now() < deadline && !stop() {
        std::thread::sleep(Duration::from_millis(5));
    }
    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ops = 0;
    for h in handles {
        ops += rt.block_on(h)??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for shard in shards.iter() {
        let shard = shard
            .lock()
            .map_err(|_| anyhow::anyhow!("a latency shard was poisoned"))?;
        hist.add(&*shard)?;
    }
    let stats = wal.stats();
    let mut out = row(
        ENGINE_WAL_ASYNC,
        cell.backend.name(),
        cell.committers,
        RECORD_BYTES,
        (ops, secs, cpu),
        &hist,
    );
    out.io = mode;
    let syncs = if cell.direct {
        stats.flushes
    } else {
        stats.datasyncs
    };
    out.completions_per_wait = ops as f64 / syncs.max(1) as f64;
    Ok(out)
}

fn flush_latencies(shard: &std::sync::Mutex<Histogram<u64>>, local: &mut Vec<u64>) {
    if let Ok(mut h) = shard.lock() {
        for &ns in local.iter() {
            h.saturating_record(ns);
        }
    }
    local.clear();
}

/// One thread doing durable 4 KiB writes, each waited for, over and over: a pwrite +
/// fdatasync on the caller's thread, or (`direct`) one O_DIRECT | O_DSYNC write on `backend`,
/// the WAL `direct_io` mode's way.
pub fn run_raw_cell(
    root: &Path,
    backend: Backend,
    direct: bool,
    duration: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<Row> {
    const BLOCK: usize = 4096;
    const SPAN_BLOCKS: u64 = 256;
    let mode = crate::cell::IoMode::of(direct);
    let dir = ScratchDir::new(root, &format!("wal-{backend}-{mode}-raw"))?;
    let path = dir.path().join("raw.dat");
    let mut io = make_backend(backend, 4)?;
    let mut done: Vec<IoCompletion> = Vec::with_capacity(4);
    // Preallocated like a WAL segment (written and synced once), so that no durable write
    // below changes the file's size.
    {
        let fd = io.open_file(&path, &OpenOptions::create())?;
        io.submit_write(fd, &vec![0u8; BLOCK * SPAN_BLOCKS as usize], 0)?;
        io.submit_datasync(fd)?;
        io.wait_completions(&mut done, 2, None)?;
        if let Some(e) = done.drain(..).find_map(|c| c.result.err()) {
            bail!("preparing the raw file failed: {e}");
        }
        io.deregister_fd(fd)?;
    }
    let options = OpenOptions::create().with_direct(direct).with_dsync(direct);
    let opened = open_file(&path, &options)?;
    if direct && !opened.mode.is_direct() {
        bail!("{} refuses O_DIRECT", path.display());
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    if !direct {
        // Beside the buffered WAL: a pwrite and an fdatasync on the caller's thread, the least
        // a durable write can cost (what `inline_io` flushes do, and what okaywal does).
        use std::os::unix::fs::FileExt;
        let file = opened.file;
        let block = [7u8; BLOCK];
        let mut ops = 0u64;
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        while t0.elapsed() < duration && !stop() {
            let started = Instant::now();
            file.write_all_at(&block, (ops % SPAN_BLOCKS) * BLOCK as u64)?;
            file.sync_data()?;
            hist.saturating_record(started.elapsed().as_nanos().max(1) as u64);
            ops += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cpu_time() - cpu0).as_secs_f64();
        let mut out = row(ENGINE_RAW, backend.name(), 1, BLOCK, (ops, secs, cpu), &hist);
        out.io = mode;
        return Ok(out);
    }
    let fd = io.register_fd(opened.file)?;
    let mut buf = Some(IoBuf::from(AlignedBuf::from_slice(&[7u8; BLOCK], 4096)?));
    let per_op = if direct { 1 } else { 2 };
    let mut ops = 0u64;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    while t0.elapsed() < duration && !stop() {
        let started = Instant::now();
        let Some(b) = buf.take() else {
            bail!("the backend kept the raw write's buffer");
        };
        io.submit_write_buf(fd, b, (ops % SPAN_BLOCKS) * BLOCK as u64)?;
        if !direct {
            io.submit_datasync(fd)?;
        }
        while done.len() < per_op {
            let want = per_op - done.len();
            io.wait_completions(&mut done, want, None)?;
        }
        for c in done.drain(..) {
            if let Err(e) = c.result {
                bail!("raw {} failed: {e}", c.op);
            }
            if c.buf.is_some() {
                buf = c.buf;
            }
        }
        hist.saturating_record(started.elapsed().as_nanos().max(1) as u64);
        ops += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    io.deregister_fd(fd)?;
    let mut out = row(ENGINE_RAW, backend.name(), 1, BLOCK, (ops, secs, cpu), &hist);
    out.io = mode;
    Ok(out)
}

/// The device's durable-write rate as fio measures it, in the WAL cells' directory: 4 KiB
/// random writes over 16 MiB, each made durable on its own: a psync write + fdatasync
/// (buffered, `qd` threads), or io_uring O_DIRECT | O_DSYNC writes at depth `qd` (`direct`).
pub fn run_fio_durable_cell(root: &Path, direct: bool, qd: usize, duration: Duration) -> Result<Row> {
    use crate::fio::{FioEngine, FioJob, FioSync};
    const SIZE: usize = 16 << 20;
    let mode = crate::cell::IoMode::of(direct);
    let dir = ScratchDir::new(root, &format!("wal-fio-{mode}-{qd}"))?;
    let path = dir.path().join("fio.dat");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; SIZE])?;
        f.sync_all()?;
    }
    let job = FioJob {
        workload: Workload::WalCommit,
        engine: if direct {
            FioEngine::IoUring
        } else {
            FioEngine::Psync
        },
        direct,
        qd,
        block: 4096,
        duration,
        size: SIZE as u64,
        file: path,
        invalidate: false,
        sync: if direct {
            FioSync::Dsync
        } else {
            FioSync::Fdatasync
        },
        rate_iops: None,
    };
    let mut out = job.run()?;
    out.regime = REGIME;
    Ok(out)
}

/// The report's WAL section: the three questions, answered from `rows`.
pub fn section(rows: &[Row]) -> String {
    let wal: Vec<&Row> = rows
        .iter()
        .filter(|r| r.workload == Workload::WalCommit)
        .collect();
    if wal.is_empty() {
        return String::new();
    }
    let mut s = String::from("## WAL commit (128-byte records, group commit)\n\n");
    let _ = writeln!(
        s,
        "`qd` is the number of concurrent committers; a commit returns once an fdatasync covers it \
         (with `direct_io`, once its O_DIRECT | O_DSYNC write completes: no fdatasync). `per wait` \
         in the table above is commits per fdatasync (per flush with `direct_io`). The raw peer is \
         one thread doing durable 4 KiB writes one at a time in the same directory: a pwrite + \
         fdatasync on its own thread beside the buffered WAL, one O_DIRECT | O_DSYNC write on the \
         same backend beside `direct_io`.\n"
    );
    let _ = writeln!(
        s,
        "| backend | 1 committer commits/s | most committers | commits/s | × 1 committer | 1-committer mean µs | raw durable write mean µs | latency vs raw |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    // One line per backend and WAL mode (buffered + fdatasync, or direct_io's O_DSYNC writes).
    let mut lines: Vec<(&str, crate::cell::IoMode)> = wal
        .iter()
        .filter(|r| r.engine == ENGINE_WAL)
        .map(|r| (r.backend.as_str(), r.io))
        .collect();
    lines.sort_unstable();
    lines.dedup();
    for (b, io) in lines {
        let mine = |r: &&&Row| r.engine == ENGINE_WAL && r.backend == b && r.io == io;
        let single = wal.iter().filter(mine).find(|r| r.qd == 1);
        let most = wal.iter().filter(mine).max_by_key(|r| r.qd);
        let raw = wal
            .iter()
            .find(|r| r.engine == ENGINE_RAW && r.backend == b && r.io == io);
        let f = |x: Option<f64>, d: usize| x.map_or("–".to_string(), |v| format!("{v:.d$}"));
        let label = if io == crate::cell::IoMode::Direct {
            format!("{b} (direct_io)")
        } else {
            b.to_string()
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            f(single.map(|r| r.iops), 0),
            most.map_or("–".into(), |r| r.qd.to_string()),
            f(most.map(|r| r.iops), 0),
            f(single.zip(most).map(|(a, m)| m.iops / a.iops.max(1e-9)), 1),
            f(single.map(|r| r.lat_us.mean), 0),
            f(raw.map(|r| r.lat_us.mean), 0),
            f(
                single
                    .zip(raw)
                    .map(|(a, r)| a.lat_us.mean / r.lat_us.mean.max(1e-9)),
                2
            ),
        );
    }
    tasks_table(&mut s, &wal);
    device_limit_line(&mut s, &wal);
    peers_table(&mut s, &wal);
    latency_line(&mut s, &wal);
    s.push('\n');
    s
}

/// The async committers' table, each beside the thread committers' best on its backend.
fn tasks_table(s: &mut String, wal: &[&Row]) {
    let tasks: Vec<&&Row> = wal.iter().filter(|r| r.engine == ENGINE_WAL_ASYNC).collect();
    if !tasks.is_empty() {
        let _ = writeln!(
            s,
            "\nAsync committers: `qd` tasks on a 2-thread tokio runtime, each awaiting `commit_async` in a \
             loop (the WAL's I/O thread flushes; no task blocks its thread). Beside each, the thread \
             committers' best rate on the same backend and mode.\n"
        );
        let _ = writeln!(
            s,
            "| backend | tasks | commits/s | mean µs | p99 µs | CPU µs/commit | commits per flush | ÷ best thread cell |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in tasks {
            let best_threads = wal
                .iter()
                .filter(|t| t.engine == ENGINE_WAL && t.backend == r.backend && t.io == r.io)
                .map(|t| t.iops)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let label = if r.io == crate::cell::IoMode::Direct {
                format!("{} (direct_io)", r.backend)
            } else {
                r.backend.clone()
            };
            let _ = writeln!(
                s,
                "| {label} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {} |",
                r.qd,
                r.iops,
                r.lat_us.mean,
                r.lat_us.p99,
                r.cpu_us_per_op,
                r.completions_per_wait,
                best_threads.map_or("–".into(), |b| format!("{:.2}×", r.iops / b.max(1e-9))),
            );
        }
    }
}

/// The device's durable-write limit: fio's cells, by depth.
fn device_limit_line(s: &mut String, wal: &[&Row]) {
    let fio_rows: Vec<&&Row> = wal
        .iter()
        .filter(|r| r.engine == crate::cell::Engine::Fio)
        .collect();
    if !fio_rows.is_empty() {
        // By depth, numerically; "not run" where this run had no such cell.
        let line = |direct: bool| {
            let mut cells: Vec<&&&Row> = fio_rows
                .iter()
                .filter(|r| (r.io == crate::cell::IoMode::Direct) == direct)
                .collect();
            if cells.is_empty() {
                return " not run".to_string();
            }
            cells.sort_by_key(|r| r.qd);
            let cells: Vec<String> = cells
                .iter()
                .map(|r| format!("{:.0}/s at qd {}", r.iops, r.qd))
                .collect();
            format!(" {}", cells.join(", "))
        };
        let _ = writeln!(
            s,
            "\nThe device's durable-write limit (fio, 4 KiB random writes in the same directory, each durable \
             on its own): psync write + fdatasync{}; io_uring O_DIRECT | O_DSYNC{}.",
            line(false),
            line(true)
        );
    }
}

/// Ours against the best external WAL at each committer count.
fn peers_table(s: &mut String, wal: &[&Row]) {
    let peer_rows: Vec<&&Row> = wal
        .iter()
        .filter(|r| r.engine == ENGINE_OKAYWAL || r.engine == ENGINE_ROCKSDB)
        .collect();
    if !peer_rows.is_empty() {
        let _ = writeln!(
            s,
            "\nAgainst the best peer (okaywal: `begin_entry`, `write_chunk`, `commit`; RocksDB: a put with \
             `set_sync(true)`; thread committers, same directory and record size). Ours is the best of our rows \
             at that committer count (any backend, buffered or `direct_io`); tasks are set against the peers' \
             best thread cell.\n"
        );
        let _ = writeln!(
            s,
            "| committers | ours commits/s | ours (where) | CPU µs/commit | best peer | its commits/s | its CPU µs/commit | ours ÷ peer |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---|---:|---:|---:|");
        let best_peer = |qd: Option<usize>| {
            peer_rows
                .iter()
                .filter(|r| qd.is_none_or(|q| r.qd == q))
                .max_by(|a, b| a.iops.total_cmp(&b.iops))
        };
        let mut keys: Vec<(bool, usize)> = wal
            .iter()
            .filter(|r| r.engine == ENGINE_WAL || r.engine == ENGINE_WAL_ASYNC)
            .map(|r| (r.engine == ENGINE_WAL_ASYNC, r.qd))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for (tasks, qd) in keys {
            let engine = if tasks { ENGINE_WAL_ASYNC } else { ENGINE_WAL };
            let Some(ours) = wal
                .iter()
                .filter(|r| r.engine == engine && r.qd == qd)
                .max_by(|a, b| a.iops.total_cmp(&b.iops))
            else {
                continue;
            };
            let Some(peer) = best_peer(if tasks { None } else { Some(qd) }) else {
                continue;
            };
            let what = if tasks { "tasks" } else { "threads" };
            let mode = if ours.io == crate::cell::IoMode::Direct {
                " direct_io"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "| {qd} {what} | {:.0} | {}{mode} | {:.2} | {} | {:.0} | {:.2} | {:.2}× |",
                ours.iops,
                ours.backend,
                ours.cpu_us_per_op,
                peer.engine,
                peer.iops,
                peer.cpu_us_per_op,
                ours.iops / peer.iops.max(1e-9),
            );
        }
    }
}

/// One committer's append + sync latency, io_uring against the thread pool.
fn latency_line(s: &mut String, wal: &[&Row]) {
    let mean = |b: &str| {
        wal.iter()
            .find(|r| {
                r.engine == ENGINE_WAL && r.backend == b && r.io == crate::cell::IoMode::Buffered && r.qd == 1
            })
            .map(|r| r.lat_us.mean)
    };
    if let (Some(u), Some(p)) = (mean("uring"), mean("thread_pool")) {
        let _ = writeln!(
            s,
            "\nSingle-committer append+sync latency, io_uring vs thread pool: {:+.0} % ({u:.0} vs {p:.0} µs){}.",
            (u / p - 1.0) * 100.0,
            mean("sync").map_or(String::new(), |x| format!("; inline sync: {x:.0} µs"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_and_raw_cells_run_and_the_section_answers_from_them() {
        let root = tempfile::tempdir().unwrap();
        let never = || false;
        let short = Duration::from_millis(100);
        let cell = |committers, direct| WalCell {
            backend: Backend::Sync,
            committers,
            tasks: false,
            direct,
            duration: short,
        };
        let mut rows = vec![
            run_wal_cell(root.path(), &cell(1, false), &never).unwrap(),
            run_wal_cell(root.path(), &cell(4, false), &never).unwrap(),
            run_raw_cell(root.path(), Backend::Sync, false, short, &never).unwrap(),
            run_wal_cell(root.path(), &cell(4, true), &never).unwrap(),
            run_wal_cell(
                root.path(),
                &WalCell {
                    tasks: true,
                    ..cell(64, false)
                },
                &never,
            )
            .unwrap(),
        ];
        assert!(rows.iter().all(|r| r.ops > 0 && r.lat_us.mean > 0.0));
        assert!(rows[1].completions_per_wait >= 1.0);
        rows[2].lat_us.mean = rows[0].lat_us.mean / 2.0;
        let text = section(&rows);
        assert!(text.contains("| sync |"), "{text}");
        assert!(text.contains("2.00"), "latency vs raw ratio: {text}");
        assert_eq!(rows[3].io, crate::cell::IoMode::Direct);
        assert!(text.contains("| sync (direct_io) | – | 4 |"), "{text}");
        assert_eq!(rows[4].engine, ENGINE_WAL_ASYNC);
        assert!(rows[4].completions_per_wait > 1.0, "64 tasks share flushes");
        assert!(text.contains("| sync | 64 |"), "the async table: {text}");
        // Nothing left behind.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_direct_raw_peer_writes_o_dsync_and_sits_beside_the_direct_wal_line() {
        // O_DIRECT needs a file system that grants it (tmpfs before Linux 6.6 does not): the
        // package directory is on the build disk.
        let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let never = || false;
        let short = Duration::from_millis(100);
        let raw = run_raw_cell(root.path(), Backend::Sync, true, short, &never).unwrap();
        assert_eq!((raw.io, raw.engine), (crate::cell::IoMode::Direct, ENGINE_RAW));
        assert!(raw.ops > 0 && raw.lat_us.mean > 0.0);
        let cell = WalCell {
            backend: Backend::Sync,
            committers: 1,
            tasks: false,
            direct: true,
            duration: short,
        };
        let mut wal = run_wal_cell(root.path(), &cell, &never).unwrap();
        wal.lat_us.mean = raw.lat_us.mean * 1.5;
        let mut buffered_raw = raw.clone();
        buffered_raw.io = crate::cell::IoMode::Buffered;
        buffered_raw.lat_us.mean = raw.lat_us.mean * 100.0;
        // The direct line is compared with the direct peer, not the buffered one.
        let text = section(&[buffered_raw, raw, wal]);
        assert!(text.contains("| 1.50 |"), "{text}");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_device_limit_line_sorts_by_depth_and_says_what_was_not_run() {
        let fio = |direct: bool, qd: usize, iops: f64| Row {
            workload: Workload::WalCommit,
            engine: crate::cell::Engine::Fio,
            backend: "io_uring".into(),
            io: crate::cell::IoMode::of(direct),
            regime: REGIME,
            qd,
            iops,
            ..Row::default()
        };
        // A direct-only run: no buffered fio row.
        let text = section(&[fio(true, 16, 12427.0), fio(true, 1, 631.0), fio(true, 4, 7938.0)]);
        assert!(
            text.contains("631/s at qd 1, 7938/s at qd 4, 12427/s at qd 16"),
            "depths in numeric order: {text}"
        );
        assert!(!text.contains("fdatasync ;"), "a missing value: {text}");
        assert!(text.contains("psync write + fdatasync not run"), "{text}");
    }
}
