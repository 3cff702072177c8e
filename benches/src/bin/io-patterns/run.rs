//! Run: the bench file, the tools beside us, the page-cache cap, and each cell in turn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use storage_io_benches::async_cells;
use storage_io_benches::async_peers::AsyncSystem;
use storage_io_benches::cache::{self, MemCap};
use storage_io_benches::cell::{Backend, Regime, Workload};
use storage_io_benches::cli::{self, Args};
use storage_io_benches::engine;
use storage_io_benches::fio;
use storage_io_benches::{Machine, Report, Row, openloop, peers, recover, signal, wal};

use crate::plan::{Job, OpenStep, Plan, Step};

/// The file under test; removed on drop when the bench created it.
pub(crate) struct BenchFile {
    pub(crate) path: PathBuf,
    pub(crate) created: bool,
}

impl Drop for BenchFile {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates (and fills) the file, or checks an existing one. Returns it and the bytes to use.
/// A `--file` in a directory that does not exist is refused, as fio refuses it: the bench
/// creates the file, never the directories above it (a typo must not leave a tree behind).
pub(crate) fn check_file_dir(file: &Path) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("--file {}: {} is not a directory", file.display(), dir.display()),
        Err(e) => bail!(
            "--file {}: directory {} does not exist ({e}); create it first or pick another path",
            file.display(),
            dir.display()
        ),
    }
}

pub(crate) fn prepare_file(
    given: Option<&Path>,
    root: &Path,
    size: u64,
    block: usize,
) -> Result<(BenchFile, u64)> {
    let (path, must_create) = match given {
        Some(p) => (p.to_path_buf(), !p.exists()),
        None => (
            root.join("bench")
                .join(format!("io-patterns-{}.dat", std::process::id())),
            true,
        ),
    };
    if !must_create {
        let have = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if !have.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let usable = have.len().min(size) / block as u64 * block as u64;
        if usable < (1 << 20) {
            bail!(
                "{} has {} bytes; the bench needs at least 1 MiB (or give a new path to create)",
                path.display(),
                have.len()
            );
        }
        return Ok((BenchFile { path, created: false }, usable));
    }
    if given.is_none()
        && let Some(dir) = path.parent()
    {
        // Only the default location under the target dir is made on demand.
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let guard = BenchFile { path, created: true };
    eprintln!(
        "io-patterns: filling {} with {} MiB",
        guard.path.display(),
        size >> 20
    );
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&guard.path)
        .with_context(|| format!("create {}", guard.path.display()))?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .collect();
    let mut off = 0;
    while off < size {
        if signal::stopped() {
            bail!("interrupted while filling the file");
        }
        let n = (size - off).min(chunk.len() as u64) as usize;
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk[..n], off)
            .with_context(|| format!("fill {}", guard.path.display()))?;
        off += n as u64;
    }
    file.sync_all()?;
    Ok((guard, size))
}

/// Whether this build of the driver, on this machine, runs a peer (for `--list`).
pub(crate) fn built_here(name: &str, needs: cli::Needs) -> std::result::Result<(), String> {
    let missing = match name {
        "okaywal" => peers::okaywal_missing().map(str::to_string),
        "rocksdb" => peers::rocksdb_missing().map(str::to_string),
        _ => AsyncSystem::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .and_then(AsyncSystem::missing),
    };
    match (missing, needs) {
        (Some(why), _) => Err(why),
        (None, cli::Needs::Program(p)) if !cli::program_found(p) => {
            Err(format!("{p} not found (apt-get install {p})"))
        }
        (None, _) => Ok(()),
    }
}

/// The earlier run `--compare` names, if any.
pub(crate) fn baseline(args: &Args) -> Result<Option<Report>> {
    let Some(p) = &args.compare else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
    let old = serde_json::from_str::<Report>(&text)
        .with_context(|| format!("{} is not a results.json", p.display()))?;
    Ok(Some(old))
}

/// fio's version when it runs beside us, and a note for each peer or mode this run goes
/// without (each said on stderr too): no fio, no okaywal or RocksDB for the WAL cells, a file
/// that refuses O_DIRECT.
pub(crate) fn missing_tools(
    plan: &Plan,
    args: &Args,
    file: &Path,
    direct_ok: bool,
) -> (Option<String>, Vec<String>) {
    let mut notes = Vec::new();
    if !direct_ok && plan.modes.contains(&true) {
        notes.push(format!(
            "{} refuses O_DIRECT (tmpfs?): direct cells were skipped; use --file on ext4/xfs",
            file.display()
        ));
    }
    if plan.workloads.contains(&Workload::WalRecover) {
        if let Some(hint) = peers::okaywal_missing() {
            eprintln!("io-patterns: {hint}");
            notes.push(hint.into());
        }
        notes.push(
            "wal_recover: no RocksDB reopen cell yet (the RocksDB peer is wired for wal_commit only)".into(),
        );
    }
    if plan.workloads.contains(&Workload::WalCommit) {
        for hint in [peers::okaywal_missing(), peers::rocksdb_missing()]
            .into_iter()
            .flatten()
        {
            eprintln!("io-patterns: {hint}");
            notes.push(hint.into());
        }
    }
    if plan.workloads.iter().any(|&w| async_cells::is_async(w)) {
        for hint in AsyncSystem::ALL.into_iter().filter_map(AsyncSystem::missing) {
            eprintln!("io-patterns: {hint}");
            notes.push(hint);
        }
    }
    let open_loop_runs =
        plan.workloads.contains(&Workload::RandRead) && plan.modes.contains(&true) && direct_ok;
    if !plan.rates.is_empty() && !open_loop_runs {
        notes.push(
            "open-loop rates were skipped: they run rand_read direct, so keep rand_read in --workload \
             and --io direct or both, on a file that grants O_DIRECT"
                .into(),
        );
    }
    let fio_version = if args.no_fio { None } else { fio::version() };
    if !args.no_fio && fio_version.is_none() {
        eprintln!(
            "io-patterns: fio not found, running without it; to put fio beside us: apt-get install fio"
        );
        notes.push("fio was not installed (apt-get install fio), so there are no fio rows".into());
    }
    (fio_version, notes)
}

/// The page-cache cap the pressure and thrash cells need (a memory cgroup), and how the report
/// describes it; without one those cells are skipped, with a note saying why.
pub(crate) fn cache_cap(plan: &Plan, notes: &mut Vec<String>) -> (Option<MemCap>, String) {
    let capped_regimes = plan.modes.contains(&false) && plan.regimes.iter().any(|r| r != "hot");
    if !capped_regimes {
        return (None, "not needed".into());
    }
    match MemCap::create() {
        Ok(c) => {
            let how = format!(
                "memory cgroup {} (limit: file/1.5 for pressure, file/4 for thrash, plus the memory of \
                 the process under it: 16 MiB for fio, 8 MiB for ours, plus buffers)",
                c.path().display()
            );
            (Some(c), how)
        }
        Err(why) => {
            notes.push(format!(
                "pressure/thrash buffered cells were skipped: no memory cgroup could be made ({why}); \
                 run as root or in a delegated cgroup"
            ));
            (None, format!("none ({why})"))
        }
    }
}

/// Runs every cell in order under a progress bar (a line per cell when stderr is not a
/// terminal); returns the rows and whether Ctrl-C stopped the run early.
pub(crate) fn run_cells(
    all: &[Step],
    file: &Path,
    size: u64,
    mut cap: Option<&mut MemCap>,
) -> Result<(Vec<Row>, bool)> {
    let bar = ProgressBar::new(all.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cells, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    // Each backend's closed-loop peak as its first open-loop cell found it: every round then
    // offers the same rates (the peak of later rounds would move them, and rows of one
    // percentage would no longer fold into one).
    let mut peaks: HashMap<Backend, f64> = HashMap::new();
    let mut interrupted = false;
    for step in all {
        if signal::stopped() {
            interrupted = true;
            break;
        }
        bar.set_message(step.label());
        let row = match &step.job {
            Job::OpenLoop(o) => run_open(o, file, size, (&rows, &mut peaks)),
            _ => run_step(step, file, size, cap.as_deref_mut()),
        };
        let mut row = match row {
            Ok(r) => r,
            Err(_) if signal::stopped() => {
                interrupted = true;
                break;
            }
            Err(e) => return Err(e.context(format!("cell {}", step.label()))),
        };
        row.regime = Regime::named(&step.regime)
            .with_context(|| format!("cell {}: unknown regime {:?}", step.label(), step.regime))?;
        if bar.is_hidden() {
            eprintln!(
                "  {:<52} {:>9.0} IOPS  p99 {:>8.1} us  {:>5.2} CPU us/op",
                step.label(),
                row.iops,
                row.lat_us.p99,
                row.cpu_us_per_op
            );
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((rows, interrupted))
}

/// Prepares the page cache for the step's regime, runs it, and records residency.
pub(crate) fn run_step(step: &Step, path: &Path, size: u64, cap: Option<&mut MemCap>) -> Result<Row> {
    // WAL cells write in a directory of their own beside the bench file; no cache regime.
    let wal_root = path.parent().unwrap_or(Path::new("."));
    let direct = match &step.job {
        Job::Ours(c) => c.direct,
        Job::Fio(f) => f.direct,
        other => return run_without_cache(other, wal_root),
    };
    let divisor = match step.regime.as_str() {
        "pressure" => Some(1.5),
        "thrash" => Some(4.0),
        _ => None,
    };
    if !direct {
        if step.regime == "hot" {
            if cache::residency(path)? < 0.95 {
                cache::warm(path)?;
            }
        } else {
            cache::drop_cache(path)?;
        }
    }
    // The cap holds the page cache the regime allows plus the memory the process under it
    // allocates meanwhile (no swap here, so that part cannot be reclaimed): fio's own memory
    // (30 MiB resident, most of it shared libraries charged elsewhere) or our buffers and per-cell tables.
    let slack: u64 = match &step.job {
        Job::Fio(f) => (16 << 20) + (f.qd * f.block) as u64,
        Job::Ours(c) => (8 << 20) + 2 * (c.qd * c.block) as u64,
        Job::Async(_)
        | Job::OpenLoop(_)
        | Job::Wal { .. }
        | Job::RawSync { .. }
        | Job::Peer { .. }
        | Job::FioDurable { .. }
        | Job::Recover(_) => 0,
    };
    let capped = match (divisor, cap) {
        (Some(d), Some(c)) if !direct => {
            c.set_limit((size as f64 / d) as u64 + slack)
                .map_err(anyhow::Error::msg)?;
            c.enter().map_err(anyhow::Error::msg)?;
            Some(c)
        }
        _ => None,
    };
    let result = match &step.job {
        Job::Ours(c) => engine::run_cell(path, c, &signal::stopped),
        Job::Fio(f) => f.run(),
        Job::Async(_)
        | Job::OpenLoop(_)
        | Job::Wal { .. }
        | Job::RawSync { .. }
        | Job::Peer { .. }
        | Job::FioDurable { .. }
        | Job::Recover(_) => {
            unreachable!("WAL, recovery, open-loop and async cells returned above")
        }
    };
    if let Some(c) = capped {
        c.leave().map_err(anyhow::Error::msg)?;
    }
    let mut row = result?;
    if !direct {
        // What the cache held by the end: shows the regime was what its name says.
        row.cache_resident_pct = Some(cache::residency(path)? * 100.0);
    }
    Ok(row)
}

/// The machine's cores, kernel and memory; the run's fields are left default.
pub(crate) fn this_machine() -> Machine {
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        mem_total_bytes: mem_total(),
        ..Machine::default()
    }
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Runs a cell that has no page-cache regime to prepare: the async, WAL, recovery and
/// peer cells, in their own directory beside the bench file (`wal_root`).
fn run_without_cache(job: &Job, wal_root: &Path) -> Result<Row> {
    match job {
        Job::Async(c) => async_cells::run(c),
        Job::OpenLoop(_) => bail!("open-loop cells run in run_cells: their rate needs the rows before them"),
        Job::Ours(_) | Job::Fio(_) => {
            bail!(
                "{} needs its page-cache regime prepared (run_step)",
                step_kind(job)
            )
        }
        Job::Wal {
            backend,
            committers,
            tasks,
            direct,
            duration,
        } => {
            let cell = wal::WalCell {
                backend: *backend,
                committers: *committers,
                tasks: *tasks,
                direct: *direct,
                duration: *duration,
            };
            wal::run_wal_cell(wal_root, &cell, &signal::stopped)
        }
        Job::RawSync {
            backend,
            direct,
            duration,
        } => wal::run_raw_cell(wal_root, *backend, *direct, *duration, &signal::stopped),
        Job::FioDurable { direct, qd, duration } => {
            wal::run_fio_durable_cell(wal_root, *direct, *qd, *duration)
        }
        Job::Recover(c) => recover::run_cell(wal_root, c),
        Job::Peer {
            engine,
            committers,
            duration,
        } => {
            if *engine == peers::ENGINE_ROCKSDB {
                peers::run_rocksdb_cell(wal_root, *committers, *duration, &signal::stopped)
            } else {
                peers::run_okaywal_cell(wal_root, *committers, *duration, &signal::stopped)
            }
        }
    }
}

/// A short name of a job's kind, for errors.
fn step_kind(job: &Job) -> &'static str {
    match job {
        Job::Ours(_) => "a cell of ours",
        Job::Fio(_) => "a fio cell",
        _ => "a cell",
    }
}

/// Runs an open-loop cell at its rate, resolved from the closed-loop peak among `rows` (the
/// run so far): ours on its backend, or fio io_uring+fixed at the same rate and depth.
fn run_open(
    o: &OpenStep,
    file: &Path,
    size: u64,
    (rows, peaks): (&[Row], &mut HashMap<Backend, f64>),
) -> Result<Row> {
    let peak = peak_for(o.backend, rows, peaks);
    let rate = o.rate.resolve(peak)?;
    if !o.fio {
        let run = (o.block, size, o.duration);
        return openloop::run_rand_read(file, o.backend, (rate, o.rate.percent()), run, &signal::stopped);
    }
    let job = fio::FioJob {
        workload: Workload::RandRead,
        engine: fio::FioEngine::IoUringFixed,
        direct: true,
        qd: openloop::MAX_IN_FLIGHT,
        block: o.block,
        duration: o.duration,
        size,
        file: file.to_path_buf(),
        invalidate: false,
        sync: fio::FioSync::None,
        rate_iops: Some(rate.round() as u64),
    };
    let mut row = job.run()?;
    row.offered_rate = Some(rate);
    row.load_pct = o.rate.percent();
    Ok(row)
}

/// The closed-loop peak an open-loop cell of `backend` takes its percentage of: the best among
/// `rows` when the backend's first open-loop cell runs (the end of round 1), kept in `peaks`
/// for the later rounds so that each offers the same rates.
fn peak_for(backend: Backend, rows: &[Row], peaks: &mut HashMap<Backend, f64>) -> Option<f64> {
    if let Some(&p) = peaks.get(&backend) {
        return Some(p);
    }
    let p = openloop::closed_loop_peak(rows, backend.name())?;
    peaks.insert(backend, p);
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_offers_the_rates_of_the_first_peak() {
        let closed = |iops: f64| {
            let mut r = Row {
                workload: Workload::RandRead,
                backend: "uring".into(),
                iops,
                ..Row::default()
            };
            r.io = storage_io_benches::cell::IoMode::Direct;
            r
        };
        let mut peaks = HashMap::new();
        let mut rows = vec![closed(40_000.0)];
        assert_eq!(peak_for(Backend::Uring, &rows, &mut peaks), Some(40_000.0));
        // Round 2's closed cells measure a higher peak; its open cells keep round 1's rates.
        rows.push(closed(50_000.0));
        assert_eq!(peak_for(Backend::Uring, &rows, &mut peaks), Some(40_000.0));
        assert_eq!(
            peak_for(Backend::Sync, &rows, &mut peaks),
            None,
            "no sync cells ran"
        );
    }
}
