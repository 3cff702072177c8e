//! The async file API beside the Rust async-I/O runtimes a tokio server's author would pick
//! instead (issue 42, section 1): three cells, each at several task counts, direct and buffered.
//!
//! - `async_rand_read`: each task reads 4 KiB at uniformly random offsets of the bench file,
//!   one read at a time (positional reads; ops/s).
//! - `async_append_sync`: a produce request per task — [`APPENDS_PER_SYNC`] appends of 4 KiB to one
//!   shared segment file, all in flight at once, then one `sync_data` covering them; an op is one
//!   append (so ops/s are durable 4 KiB records per second). The segment is a fresh file beside
//!   the bench file, removed after the cell.
//! - `async_seq_read`: consumers reading the bench file front to back in [`SEQ_READ_BYTES`]
//!   reads, each task its own stripe of it (MB/s).
//!
//! Every system (ours, `tokio::fs` and the optional peers in [`crate::async_peers`]) runs each
//! round of a cell in a child process of its own — the driver re-executes itself with the hidden
//! argument [`CHILD_ARG`] — so that thread-per-core runtimes never share a process, and CPU time
//! and context switches (`getrusage` of the child over the measured window) are the system's
//! own. The rounds are interleaved (A B C, then B C A, …), and the parent prepares the page
//! cache before each child: `cold` drops the file's pages (`posix_fadvise(DONTNEED)`), `hot`
//! reads it all first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::async_peers::{self, AsyncSystem};
use crate::cell::{Workload, XorShift};
use crate::{Latency, Row, cache};

/// The hidden first argument that makes the driver run one cell of one system and print its
/// [`Measured`] as JSON.
pub const CHILD_ARG: &str = "__async-cell";
/// Appends in flight before each `sync_data` in `async_append_sync`.
pub const APPENDS_PER_SYNC: usize = 8;
/// Bytes per read of `async_seq_read` (what a log consumer fetches at once).
pub const SEQ_READ_BYTES: usize = 128 << 10;
/// Bytes per read of `async_rand_read` and per append of `async_append_sync`.
pub const BLOCK_BYTES: usize = 4096;
/// Task counts of a full or quick run.
pub const TASKS: &[usize] = &[1, 32, 256];
/// Task counts of `--smoke`.
pub const SMOKE_TASKS: &[usize] = &[1, 32];
/// Rounds of the async cells in a full run: the report's confidence interval needs 6.
pub const FULL_ROUNDS: usize = 6;
/// `Row::regime` of an append cell (a new segment file: no cache state to prepare).
pub const REGIME_NEW_FILE: &str = "new_file";

/// Whether `workload` is one of the async cells.
pub fn is_async(workload: Workload) -> bool {
    matches!(
        workload,
        Workload::AsyncRandRead | Workload::AsyncAppendSync | Workload::AsyncSeqRead
    )
}

/// Whether a row's workload name is one of the async cells.
pub fn is_async_name(workload: &str) -> bool {
    Workload::named(workload).is_some_and(is_async)
}

/// One round of one cell of one system: what the parent hands its child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AsyncCell {
    /// `async_rand_read`, `async_append_sync` or `async_seq_read`.
    pub workload: String,
    /// Who runs it ([`AsyncSystem::name`]).
    pub system: String,
    /// O_DIRECT (each system's own way) or buffered.
    pub direct: bool,
    /// `uncached` (direct), `cold` or `hot` (buffered reads), [`REGIME_NEW_FILE`] (appends).
    pub regime: String,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Seconds of the measured window.
    pub seconds: f64,
    /// The bench file.
    pub file: PathBuf,
    /// Bytes of it used, from offset 0.
    pub size: u64,
}

impl AsyncCell {
    /// The workload, checked.
    pub fn workload(&self) -> Result<Workload> {
        match Workload::named(&self.workload) {
            Some(w) if is_async(w) => Ok(w),
            _ => bail!("{} is not an async cell", self.workload),
        }
    }

    /// Bytes per op.
    pub fn block(&self) -> usize {
        if self.workload == Workload::AsyncSeqRead.name() {
            SEQ_READ_BYTES
        } else {
            BLOCK_BYTES
        }
    }

    /// The measured window.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// The progress line's name.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} {} {} tasks",
            self.workload,
            self.system,
            if self.direct { "direct" } else { "buffered" },
            self.regime,
            self.tasks
        )
    }

    /// The segment file an append cell writes (beside the bench file, one per child).
    pub fn segment_path(&self) -> PathBuf {
        let mut name = self.file.clone().into_os_string();
        name.push(format!(".async-segment-{}", std::process::id()));
        PathBuf::from(name)
    }
}

/// What a child measured over its window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// Ops completed.
    pub ops: u64,
    /// Wall time of the window.
    pub seconds: f64,
    /// User + system CPU time of the child over the window (all its threads).
    pub cpu_seconds: f64,
    /// Voluntary + involuntary context switches of the child over the window.
    pub context_switches: u64,
}

/// CPU time and context switches of this process so far (`getrusage(RUSAGE_SELF)`: every
/// thread, the kernel's io_uring workers of this process included).
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    cpu: Duration,
    switches: u64,
}

impl Usage {
    /// Now.
    pub fn now() -> Usage {
        // SAFETY: rusage is plain old data, so all-zero bytes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes one rusage into the struct we own, which lives across the call.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        if rc != 0 {
            return Usage {
                cpu: Duration::ZERO,
                switches: 0,
            };
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
        Usage {
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            switches: (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
        }
    }
}

/// The measured window of a child: started when every task is ready to go, ended when the
/// last has stopped.
pub struct Window {
    started: Instant,
    usage: Usage,
}

impl Window {
    /// Starts it.
    pub fn start() -> Window {
        Window {
            usage: Usage::now(),
            started: Instant::now(),
        }
    }

    /// Ends it with `ops` done.
    pub fn end(self, ops: u64) -> Measured {
        let seconds = self.started.elapsed().as_secs_f64();
        let now = Usage::now();
        Measured {
            ops,
            seconds,
            cpu_seconds: (now.cpu.saturating_sub(self.usage.cpu)).as_secs_f64(),
            context_switches: now.switches.saturating_sub(self.usage.switches),
        }
    }
}

/// Where each task of a cell starts and what it does next: random block offsets, a stripe of
/// the file front to back, or its share of the shared append cursor.
pub struct TaskPlan {
    workload: Workload,
    rng: XorShift,
    blocks: u64,
    stripe: (u64, u64),
    next: u64,
}

impl TaskPlan {
    /// The plan of task `task` of `tasks` (across all threads of the child).
    pub fn new(cell: &AsyncCell, task: usize, tasks: usize) -> Result<TaskPlan> {
        let workload = cell.workload()?;
        let block = cell.block() as u64;
        let blocks = (cell.size / block).max(1);
        let tasks = tasks.max(1) as u64;
        let task = task as u64;
        // Each consumer reads its own stripe of whole reads; with more tasks than reads, some share.
        let per = (blocks / tasks).max(1);
        let first = (task * per) % blocks;
        let stripe = (first, (first + per).min(blocks));
        Ok(TaskPlan {
            workload,
            rng: XorShift::new(0x9E37_79B9_7F4A_7C15 ^ (task + 1).wrapping_mul(0x1000_0000_01B3)),
            blocks,
            stripe,
            next: stripe.0,
        })
    }

    /// The offset of this task's next read.
    pub fn next_read(&mut self) -> u64 {
        let block = if self.workload == Workload::AsyncSeqRead {
            SEQ_READ_BYTES as u64
        } else {
            BLOCK_BYTES as u64
        };
        let b = if self.workload == Workload::AsyncSeqRead {
            let b = self.next;
            self.next = if b + 1 >= self.stripe.1 {
                self.stripe.0
            } else {
                b + 1
            };
            b
        } else {
            self.rng.below(self.blocks)
        };
        b * block
    }
}

/// The append cursor peers without an append call share: each request takes
/// [`APPENDS_PER_SYNC`] blocks at the end, as an append-only log would.
#[derive(Debug, Default, Clone)]
pub struct AppendCursor(Arc<AtomicU64>);

impl AppendCursor {
    /// The offsets of one request's appends.
    pub fn take(&self) -> u64 {
        self.0
            .fetch_add((APPENDS_PER_SYNC * BLOCK_BYTES) as u64, Ordering::Relaxed)
    }
}

/// A segment file that is removed on drop.
pub struct SegmentGuard(pub PathBuf);

impl Drop for SegmentGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The async cells of one round of `workload`, systems rotated by the round so each goes first
/// equally often.
pub fn round_cells(
    workload: Workload,
    round: usize,
    spec: &AsyncPlan,
    systems: &[AsyncSystem],
) -> Vec<AsyncCell> {
    let mut out = Vec::new();
    let mut modes: Vec<(bool, &str)> = Vec::new();
    for &direct in &spec.modes {
        if direct && !spec.direct_ok {
            continue;
        }
        if direct {
            modes.push((true, "uncached"));
        } else if workload == Workload::AsyncAppendSync {
            modes.push((false, REGIME_NEW_FILE));
        } else {
            modes.push((false, "cold"));
            modes.push((false, "hot"));
        }
    }
    for (direct, regime) in modes {
        let regime = if direct && workload == Workload::AsyncAppendSync {
            REGIME_NEW_FILE
        } else {
            regime
        };
        for &tasks in &spec.tasks {
            let mut order = systems.to_vec();
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for system in order {
                out.push(AsyncCell {
                    workload: workload.name().into(),
                    system: system.name().into(),
                    direct,
                    regime: regime.into(),
                    tasks,
                    seconds: spec.duration.as_secs_f64(),
                    file: spec.file.clone(),
                    size: spec.size,
                });
            }
        }
    }
    out
}

/// Task counts of the async cells: `--qd` when given, else [`SMOKE_TASKS`] or [`TASKS`].
pub fn task_counts(given: &[usize], smoke: bool) -> Vec<usize> {
    match (given.is_empty(), smoke) {
        (false, _) => given.to_vec(),
        (true, true) => SMOKE_TASKS.to_vec(),
        (true, false) => TASKS.to_vec(),
    }
}

/// Rounds of a run: the plan's, and with async cells in a full run at its default rounds at least
/// [`FULL_ROUNDS`] (the other cells keep the plan's and skip the extra rounds).
pub fn rounds(plan_rounds: usize, any_async: bool, full_default: bool) -> usize {
    if any_async && full_default {
        plan_rounds.max(FULL_ROUNDS)
    } else {
        plan_rounds
    }
}

/// What the driver's plan says about the async cells.
#[derive(Debug, Clone)]
pub struct AsyncPlan {
    /// O_DIRECT, buffered or both.
    pub modes: Vec<bool>,
    /// Whether the file system grants O_DIRECT.
    pub direct_ok: bool,
    /// Task counts.
    pub tasks: Vec<usize>,
    /// Seconds per round of a cell.
    pub duration: Duration,
    /// The bench file and the bytes of it used.
    pub file: PathBuf,
    /// Bytes used.
    pub size: u64,
}

/// Runs one round of `cell` in a child process (after preparing the page cache) and makes its row.
pub fn run(cell: &AsyncCell) -> Result<Row> {
    let workload = cell.workload()?;
    if !cell.direct && workload != Workload::AsyncAppendSync {
        if cell.regime == crate::cell::Regime::Hot.name() {
            if cache::residency(&cell.file)? < 0.95 {
                cache::warm(&cell.file)?;
            }
        } else {
            cache::drop_cache(&cell.file)?;
        }
    }
    let exe = std::env::current_exe().context("finding the driver's own executable")?;
    let spec = serde_json::to_string(cell)?;
    let out = std::process::Command::new(&exe)
        .arg(CHILD_ARG)
        .arg(&spec)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {CHILD_ARG}", exe.display()))?;
    if !out.status.success() {
        bail!("{}: the child process failed ({})", cell.label(), out.status);
    }
    let measured: Measured = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: the child's answer is not a measurement", cell.label()))?;
    let mut row = row(cell, &measured)?;
    if !cell.direct && workload != Workload::AsyncAppendSync {
        row.cache_resident_pct = Some(cache::residency(&cell.file)? * 100.0);
    }
    Ok(row)
}

/// The row of one round.
pub fn row(cell: &AsyncCell, m: &Measured) -> Result<Row> {
    let per_op = |x: f64| if m.ops > 0 { x / m.ops as f64 } else { 0.0 };
    let iops = if m.seconds > 0.0 {
        m.ops as f64 / m.seconds
    } else {
        0.0
    };
    Ok(Row {
        workload: cell.workload()?,
        engine: crate::cell::Engine::named(&cell.system)
            .with_context(|| format!("{}: unknown system {:?}", cell.label(), cell.system))?,
        backend: cell.system.clone(),
        io: crate::cell::IoMode::of(cell.direct),
        regime: crate::cell::Regime::named(&cell.regime)
            .with_context(|| format!("{}: unknown regime {:?}", cell.label(), cell.regime))?,
        qd: cell.tasks,
        block_size: cell.block(),
        iops,
        mb_s: iops * cell.block() as f64 / 1e6,
        lat_us: Latency::default(),
        cpu_us_per_op: per_op(m.cpu_seconds * 1e6),
        ctx_switches_per_op: Some(per_op(m.context_switches as f64)),
        ops: m.ops,
        ..Row::default()
    })
}

/// In a child: when the first argument is [`CHILD_ARG`], runs the cell the second describes,
/// prints its measurement and answers the exit code; otherwise `None`.
pub fn child_main() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()?.to_str() != Some(CHILD_ARG) {
        return None;
    }
    let result = args
        .next()
        .context("missing the cell description")
        .and_then(|spec| {
            let spec = spec
                .into_string()
                .map_err(|_| anyhow::anyhow!("a cell description is UTF-8"))?;
            let cell: AsyncCell = serde_json::from_str(&spec)?;
            run_here(&cell)
        });
    match result {
        Ok(m) => match serde_json::to_string(&m) {
            Ok(json) => {
                println!("{json}");
                Some(0)
            }
            Err(e) => {
                eprintln!("io-patterns {CHILD_ARG}: {e}");
                Some(1)
            }
        },
        Err(e) => {
            eprintln!("io-patterns {CHILD_ARG}: error: {e:#}");
            Some(1)
        }
    }
}

/// Runs `cell` in this process.
pub fn run_here(cell: &AsyncCell) -> Result<Measured> {
    let system = AsyncSystem::named(&cell.system)?;
    async_peers::run(system, cell)
}

/// Threads a thread-per-core runtime gets for `tasks` tasks: one per core, no more than tasks.
pub fn per_core_threads(tasks: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, tasks.max(1))
}

/// Splits `tasks` over `threads`: thread `t` runs tasks `first..first + count`.
pub fn share(tasks: usize, threads: usize, t: usize) -> (usize, usize) {
    let base = tasks / threads;
    let extra = tasks % threads;
    let count = base + usize::from(t < extra);
    let first = t * base + t.min(extra);
    (first, count)
}

/// Runs a thread-per-core system: `threads` OS threads, each running `body(thread, first_task,
/// task_count, start)` on a runtime it builds itself. A thread builds its runtime and opens its
/// files, then calls `start` (which waits until every thread is ready and answers the deadline)
/// and runs its tasks until then, answering the ops it completed. The window covers from the
/// moment all are ready until the last returns.
pub fn run_per_core<F>(cell: &AsyncCell, body: F) -> Result<Measured>
where
    F: Fn(usize, usize, usize, &dyn Fn() -> Instant) -> Result<u64> + Send + Sync,
{
    let threads = per_core_threads(cell.tasks);
    let ready = std::sync::Barrier::new(threads + 1);
    let duration = cell.duration();
    let start = || {
        ready.wait();
        Instant::now() + duration
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (first, count) = share(cell.tasks, threads, t);
                let (body, start, ready) = (&body, &start, &ready);
                s.spawn(move || {
                    // A thread that fails (or panics) before it gets to `start` still meets the
                    // barrier, so the others and the window are not left waiting for it.
                    let started = std::cell::Cell::new(false);
                    let mark = || {
                        started.set(true);
                        start()
                    };
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        body(t, first, count, &mark)
                    }));
                    if !started.get() {
                        ready.wait();
                    }
                    result.unwrap_or_else(|_| bail!("a runtime thread panicked"))
                })
            })
            .collect();
        ready.wait();
        let window = Window::start();
        let mut ops = 0;
        let mut failure = None;
        for h in handles {
            match h.join() {
                Ok(Ok(n)) => ops += n,
                Ok(Err(e)) => failure = Some(e.context(cell.label())),
                Err(_) => failure = Some(anyhow::anyhow!("{}: a runtime thread panicked", cell.label())),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(window.end(ops)),
        }
    })
}

/// Reads answer whole blocks inside the file; anything else is a bug of the cell or the system.
pub fn check_read(n: std::io::Result<usize>, want: usize, at: u64, path: &Path) -> Result<()> {
    let n = n.with_context(|| format!("read of {want} bytes at {at} in {}", path.display()))?;
    if n != want {
        bail!(
            "a {want}-byte read at {at} inside {} returned {n} bytes",
            path.display()
        );
    }
    Ok(())
}

/// Writes complete.
pub fn check_write(n: std::io::Result<usize>, at: u64, path: &Path) -> Result<()> {
    let n = n.with_context(|| format!("write at {at} in {}", path.display()))?;
    if n != BLOCK_BYTES {
        bail!(
            "a {BLOCK_BYTES}-byte write at {at} in {} wrote {n} bytes",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_run_gives_the_async_cells_six_rounds_and_smoke_fewer_tasks() {
        assert_eq!(rounds(4, true, true), FULL_ROUNDS);
        assert_eq!(rounds(4, false, true), 4);
        assert_eq!(rounds(2, true, false), 2, "--rounds is kept");
        assert_eq!(task_counts(&[], false), TASKS);
        assert_eq!(task_counts(&[], true), SMOKE_TASKS);
        assert_eq!(task_counts(&[8], true), [8]);
    }

    #[test]
    fn tasks_are_shared_over_threads_without_gaps() {
        for (tasks, threads) in [(1, 1), (32, 2), (256, 3), (5, 2)] {
            let mut next = 0;
            for t in 0..threads {
                let (first, count) = share(tasks, threads, t);
                assert_eq!(first, next, "{tasks} over {threads}");
                next += count;
            }
            assert_eq!(next, tasks);
        }
    }

    fn cell(workload: Workload, tasks: usize) -> AsyncCell {
        AsyncCell {
            workload: workload.name().into(),
            system: AsyncSystem::Ours.name().into(),
            direct: false,
            regime: crate::cell::Regime::Hot.name().into(),
            tasks,
            seconds: 0.05,
            file: PathBuf::from("/nonexistent"),
            size: 1 << 20,
        }
    }

    #[test]
    fn consumers_read_their_own_stripe_front_to_back_and_wrap() {
        let c = cell(Workload::AsyncSeqRead, 2);
        let blocks = (1 << 20) / SEQ_READ_BYTES as u64; // 8
        let mut second = TaskPlan::new(&c, 1, 2).unwrap();
        let offsets: Vec<u64> = (0..5)
            .map(|_| second.next_read() / SEQ_READ_BYTES as u64)
            .collect();
        assert_eq!(offsets, vec![4, 5, 6, 7, 4], "{blocks} blocks");
        let mut random = TaskPlan::new(&cell(Workload::AsyncRandRead, 2), 0, 2).unwrap();
        let picks: Vec<u64> = (0..1000).map(|_| random.next_read()).collect();
        assert!(picks.iter().all(|&p| p % 4096 == 0 && p < 1 << 20));
    }

    #[test]
    fn rounds_interleave_systems_and_each_goes_first_in_turn() {
        let plan = AsyncPlan {
            modes: vec![true, false],
            direct_ok: true,
            tasks: vec![1, 32],
            duration: Duration::from_millis(50),
            file: PathBuf::from("/f"),
            size: 1 << 20,
        };
        let systems = [AsyncSystem::Ours, AsyncSystem::TokioFs];
        let first = round_cells(Workload::AsyncRandRead, 0, &plan, &systems);
        // uncached, cold, hot × 2 task counts × 2 systems.
        assert_eq!(first.len(), 12);
        assert_eq!(first[0].system, "storage-io");
        assert_eq!(first[1].system, "tokio::fs");
        let second = round_cells(Workload::AsyncRandRead, 1, &plan, &systems);
        assert_eq!(second[0].system, "tokio::fs");
        let appends = round_cells(Workload::AsyncAppendSync, 0, &plan, &systems);
        assert_eq!(appends.len(), 8, "direct and buffered, no cache regimes");
        assert!(appends.iter().all(|c| c.regime == REGIME_NEW_FILE));
        let no_direct = AsyncPlan {
            direct_ok: false,
            ..plan
        };
        assert!(
            round_cells(Workload::AsyncSeqRead, 0, &no_direct, &systems)
                .iter()
                .all(|c| !c.direct)
        );
    }

    #[test]
    fn per_core_threads_meet_at_the_start_even_when_one_fails_before_it() {
        let c = AsyncCell {
            tasks: 4,
            seconds: 0.01,
            ..cell(Workload::AsyncRandRead, 4)
        };
        let counted = run_per_core(&c, |_, _, count, start| {
            let deadline = start();
            let mut ops = 0;
            while Instant::now() < deadline {
                ops += 1;
            }
            Ok(ops.max(count as u64))
        })
        .unwrap();
        assert!(counted.ops >= 4 && counted.seconds > 0.0);
        let threads = per_core_threads(4);
        let failed = run_per_core(&c, |t, _, _, start| {
            if t == 0 {
                bail!("thread 0 could not open its file");
            }
            start();
            Ok(1)
        });
        let e = failed.unwrap_err().to_string();
        assert!(e.contains(&c.label()), "{e} ({threads} threads)");
        let panicked = run_per_core(&c, |t, _, _, start| {
            assert!(t != 0, "thread 0 panics before its start");
            start();
            Ok(1)
        });
        assert!(panicked.is_err());
    }

    #[test]
    fn a_round_makes_a_row_with_cpu_and_context_switches_per_op() {
        let c = cell(Workload::AsyncSeqRead, 1);
        let r = row(
            &c,
            &Measured {
                ops: 1000,
                seconds: 0.5,
                cpu_seconds: 0.01,
                context_switches: 1500,
            },
        )
        .unwrap();
        assert_eq!(r.iops, 2000.0);
        assert_eq!(r.block_size, SEQ_READ_BYTES);
        assert!((r.cpu_us_per_op - 10.0).abs() < 1e-9);
        assert_eq!(r.ctx_switches_per_op, Some(1.5));
        assert!((r.mb_s - 2000.0 * SEQ_READ_BYTES as f64 / 1e6).abs() < 1e-6);
    }
}
