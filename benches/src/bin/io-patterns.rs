//! io-patterns: the queue-depth benchmark behind `cargo xtask bench`.
//!
//! Runs each cell (workload × backend × I/O mode × page-cache regime × queue depth) for a fixed
//! time on one file, keeping `qd` ops in flight, and the same cells with fio beside ours when fio
//! is installed. Writes `results.json`, `report.md` (tables, ours/fio ratios, guidance) and SVG
//! plots under `target/bench/<timestamp>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use storage_io_benches::async_cells::{self, AsyncCell};
use storage_io_benches::async_peers::AsyncSystem;
use storage_io_benches::cache::{self, MemCap};
use storage_io_benches::cell::{BACKENDS, Backend, Cell, WORKLOADS, Workload};
use storage_io_benches::cli::{self, Args, REGIMES, names};
use storage_io_benches::engine;
use storage_io_benches::fio::{self, FioEngine, FioJob};
use storage_io_benches::{
    Machine, Report, Row, fold_rounds, peers, plot, recover, report, signal, timestamp, wal,
};
use storage_io_core::{OpenOptions, open_file};

/// What to run, after defaults.
struct Plan {
    workloads: Vec<Workload>,
    backends: Vec<Backend>,
    modes: Vec<bool>,
    regimes: Vec<String>,
    qds: Vec<usize>,
    fio_engines: Vec<FioEngine>,
    duration: Duration,
    size_bytes: u64,
    rounds: usize,
    /// The quick preset with the rounds and the duration left to it: a narrow selection gets
    /// [`NARROW_ROUNDS`] short rounds instead of one (see [`widen_if_narrow`]).
    widen_if_narrow: bool,
}

/// A quick run of at most this many cells per round is narrow enough to repeat.
const NARROW_MAX_CELLS: usize = 24;
/// Rounds of a narrow quick run: enough for the report's 95 % confidence interval (from 6).
const NARROW_ROUNDS: usize = 10;
// The report gives a confidence interval from 6 rounds, and the sides take turns going first.
const _: () = assert!(NARROW_ROUNDS >= 6 && NARROW_ROUNDS.is_multiple_of(2));
/// Seconds per cell of a narrow quick run (10 rounds of 24 cells, with fio's start-up, ≈ 2 min).
const NARROW_DURATION: f64 = 0.25;

/// A quick run narrowed to a few cells (`--workload rand_read --backend uring --io direct`
/// is 16) takes seconds at one round, and one round of a cell on a noisy disk says little. Such a
/// run gets [`NARROW_ROUNDS`] rounds of [`NARROW_DURATION`] s instead, so each comparison with
/// fio comes with a confidence interval. Returns the note for the report when it widens.
fn widen_if_narrow(plan: &mut Plan, cells_per_round: usize) -> Option<String> {
    if !plan.widen_if_narrow || cells_per_round == 0 || cells_per_round > NARROW_MAX_CELLS {
        return None;
    }
    plan.rounds = NARROW_ROUNDS;
    plan.duration = Duration::from_secs_f64(NARROW_DURATION);
    Some(format!(
        "a narrow quick run ({cells_per_round} cells): {NARROW_ROUNDS} rounds of {NARROW_DURATION} s \
         instead of one, so each comparison with fio has a confidence interval (--rounds 1 for a \
         single round)"
    ))
}

fn plan(args: &Args) -> Result<Plan> {
    let preset = Preset::of(args);
    let workloads: Vec<Workload> = names(&args.workload, preset.workloads, &WORKLOADS, "workload")?
        .iter()
        .filter_map(|n| Workload::named(n))
        .collect();
    let backends: Vec<Backend> = names(&args.backend, preset.backends, &BACKENDS, "backend")?
        .iter()
        .map(|n| Backend::named(n))
        .collect::<Result<_>>()?;
    let regimes = names(&args.regime, preset.regimes, &REGIMES, "regime")?;
    let modes = cli::io_modes(args.io.as_deref())?;
    cli::validate(args)?;
    let qds = if args.qd.is_empty() {
        preset.qds.to_vec()
    } else {
        args.qd.clone()
    };
    if qds.iter().any(|&q| q == 0 || q > 4096) {
        bail!("--qd values must be between 1 and 4096");
    }
    let duration = match args.duration {
        Some(d) if !(0.05..=3600.0).contains(&d) => bail!("--duration must be between 0.05 and 3600 seconds"),
        Some(d) => d,
        None => preset.duration,
    };
    let rounds = rounds_of(args, &preset)?;
    // The async cells read a 1 GiB file by default when they run alone (issue 42).
    let only_async = !workloads.is_empty() && workloads.iter().all(|&w| async_cells::is_async(w));
    let size_mib = args.size_mib.unwrap_or(if only_async && !args.smoke {
        1024
    } else {
        preset.size_mib
    });
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    Ok(Plan {
        workloads,
        backends,
        modes,
        regimes,
        qds,
        fio_engines: fio_engines_of(args)?,
        duration: Duration::from_secs_f64(duration),
        size_bytes: size_mib << 20,
        rounds,
        widen_if_narrow: !args.smoke && !args.full && args.rounds.is_none() && args.duration.is_none(),
    })
}

/// What `--smoke`, the default quick pass and `--full` run unless told otherwise.
struct Preset {
    duration: f64,
    size_mib: u64,
    qds: &'static [usize],
    workloads: &'static [&'static str],
    backends: &'static [&'static str],
    regimes: &'static [&'static str],
    rounds: usize,
}

impl Preset {
    fn of(args: &Args) -> Preset {
        if args.smoke {
            Preset {
                duration: 0.2,
                size_mib: 16,
                qds: &[1, 4],
                workloads: &[
                    "rand_read",
                    "rand_write",
                    "wal_commit",
                    "segment_append",
                    "segment_read",
                    "async_rand_read",
                    "async_append_sync",
                    "async_seq_read",
                    "wal_recover",
                ],
                backends: &["sync", "thread_pool", "uring"],
                regimes: &["hot", "thrash"],
                rounds: 1,
            }
        } else if args.full {
            Preset {
                // Four rounds so that ours and fio (and each scheduler cell and its raw peer) go
                // first equally often; 2 s cells keep the run as long as three 3 s rounds were.
                duration: 2.0,
                size_mib: 1024,
                qds: &[1, 4, 16, 32],
                workloads: &WORKLOADS,
                backends: &BACKENDS,
                regimes: &REGIMES,
                rounds: 4,
            }
        } else {
            Preset {
                // Short cells keep the default pass to a few minutes on 2 cores (252 cells with fio
                // measured 179 s at 0.5 s before the client workloads came; they add about a minute).
                duration: 0.4,
                size_mib: 256,
                qds: &[1, 4, 16, 32],
                workloads: &WORKLOADS,
                backends: &["sync", "thread_pool", "uring"],
                regimes: &["hot", "thrash"],
                rounds: 1,
            }
        }
    }
}

/// Rounds per cell: the preset's unless given (checked by [`cli::rounds_ok`]).
fn rounds_of(args: &Args, preset: &Preset) -> Result<usize> {
    cli::rounds_ok(args.rounds.unwrap_or(preset.rounds))
}

/// The fio engines asked for (all by default).
fn fio_engines_of(args: &Args) -> Result<Vec<FioEngine>> {
    if args.fio_engine.is_empty() {
        return Ok(FioEngine::ALL.to_vec());
    }
    args.fio_engine
        .iter()
        .map(|name| {
            FioEngine::ALL
                .into_iter()
                .find(|e| e.name() == name.trim())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown --fio-engine {name:?}; expected one of psync, io_uring, io_uring+fixed"
                    )
                })
        })
        .collect()
}

/// The file under test; removed on drop when the bench created it.
struct BenchFile {
    path: PathBuf,
    created: bool,
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
fn check_file_dir(file: &Path) -> Result<()> {
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

fn prepare_file(given: Option<&Path>, root: &Path, size: u64, block: usize) -> Result<(BenchFile, u64)> {
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

/// One thing to run: a cell of ours or of fio's, in a regime.
enum Job {
    Ours(Cell),
    /// One round of an async cell of one system, in a child process.
    Async(AsyncCell),
    Fio(FioJob),
    /// A `wal_recover` cell: a log reopened (or read) cold.
    Recover(recover::RecoverCell),
    /// `committers` threads committing through the WAL on a backend (`direct`: the WAL's
    /// O_DIRECT | O_DSYNC mode).
    Wal {
        backend: Backend,
        committers: usize,
        /// The committers are async tasks (`commit_async`), not threads.
        tasks: bool,
        direct: bool,
        duration: Duration,
    },
    /// fio's durable 4 KiB writes (the device's limit) beside the WAL cells: psync write +
    /// fdatasync, or (`direct`) io_uring O_DIRECT | O_DSYNC at depth `qd`.
    FioDurable {
        direct: bool,
        qd: usize,
        duration: Duration,
    },
    /// An external WAL beside ours (`peers::ENGINE_OKAYWAL` or `peers::ENGINE_ROCKSDB`), with
    /// `committers` threads.
    Peer {
        engine: &'static str,
        committers: usize,
        duration: Duration,
    },
    /// The raw durable 4 KiB write peer of the WAL cells, on a backend: write + fdatasync, or
    /// (`direct`) one O_DIRECT | O_DSYNC write, like the WAL's `direct_io` mode.
    RawSync {
        backend: Backend,
        direct: bool,
        duration: Duration,
    },
}

struct Step {
    job: Job,
    regime: String,
}

impl Step {
    fn label(&self) -> String {
        let (w, b, d, q) = match &self.job {
            Job::Async(c) => return c.label(),
            Job::Ours(c) => (
                c.workload.name().to_string(),
                c.backend.name().to_string(),
                c.direct,
                c.qd,
            ),
            Job::Fio(f) => (
                f.workload.clone(),
                format!("fio {}", f.engine.name()),
                f.direct,
                f.qd,
            ),
            Job::Wal {
                backend,
                committers,
                tasks,
                direct,
                ..
            } => {
                let who = if *tasks {
                    format!("{backend} tasks")
                } else {
                    backend.name().to_string()
                };
                (Workload::WalCommit.name().to_string(), who, *direct, *committers)
            }
            Job::RawSync { backend, direct, .. } => (
                Workload::WalCommit.name().to_string(),
                format!("{backend} raw"),
                *direct,
                1,
            ),
            Job::Peer {
                engine, committers, ..
            } => (
                Workload::WalCommit.name().to_string(),
                (*engine).into(),
                false,
                *committers,
            ),
            Job::FioDurable { direct, qd, .. } => (
                Workload::WalCommit.name().to_string(),
                "fio durable".into(),
                *direct,
                *qd,
            ),
            Job::Recover(c) => (
                Workload::WalRecover.name().to_string(),
                format!("{:?} {}", c.reader, c.log.label()),
                false,
                1,
            ),
        };
        format!(
            "{w} {b} {} {} qd{q}",
            if d { "direct" } else { "buffered" },
            self.regime
        )
    }
}

fn steps(plan: &Plan, file: &Path, size: u64, args: &Args, fio_on: bool, direct_ok: bool) -> Vec<Step> {
    let mut out = Vec::new();
    let any_async = plan.workloads.iter().any(|&w| async_cells::is_async(w));
    let full_default = args.full && args.rounds.is_none();
    for round in 0..async_cells::rounds(plan.rounds, any_async, full_default) {
        // Every other round runs the workloads in reverse, so a scheduler cell and its raw
        // peer (different workloads) also take turns going first.
        let mut workloads = plan.workloads.clone();
        if round % 2 == 1 {
            workloads.reverse();
        }
        for w in workloads {
            if async_cells::is_async(w) {
                out.extend(async_steps(w, round, plan, args, (file, size, direct_ok)));
                continue;
            }
            if round >= plan.rounds {
                continue; // the async cells' extra rounds
            }
            if w == Workload::WalCommit {
                out.extend(wal_steps(plan, args, direct_ok));
                continue;
            }
            if w == Workload::WalRecover {
                let fio_here = !args.no_fio && fio::version().is_some();
                out.extend(
                    recover::cells(args.smoke, fio_here, round)
                        .into_iter()
                        .map(|c| Step {
                            job: Job::Recover(c),
                            regime: recover::REGIME.to_string(),
                        }),
                );
                continue;
            }
            for &direct in plan.modes.iter().filter(|&&d| !d || direct_ok) {
                // Direct I/O has no cache in front of the disk yet (the scheduler's page cache will
                // be it): one `uncached` regime stands for all three.
                let regimes: Vec<String> = if direct {
                    vec!["uncached".into()]
                } else {
                    plan.regimes.clone()
                };
                for regime in regimes {
                    for &qd in &plan.qds {
                        // Ours and fio back to back; fio goes first in every other round, so
                        // neither side always meets the disk in the state the other left it.
                        let mut pair = Vec::new();
                        for b in &plan.backends {
                            pair.push(Step {
                                job: Job::Ours(Cell {
                                    workload: w,
                                    backend: *b,
                                    direct,
                                    qd,
                                    block: args.block_size,
                                    duration: plan.duration,
                                    size,
                                    streams: args.streams,
                                    sched_workers: args.sched_workers,
                                }),
                                regime: regime.clone(),
                            });
                        }
                        if fio_on && fio::supports(w.name()) {
                            let ours = pair.len();
                            for &engine in &plan.fio_engines {
                                pair.push(Step {
                                    job: Job::Fio(FioJob {
                                        workload: w.name().into(),
                                        engine,
                                        direct,
                                        qd,
                                        block: args.block_size,
                                        duration: plan.duration,
                                        size,
                                        file: file.to_path_buf(),
                                        invalidate: regime != "hot",
                                        sync: fio::FioSync::None,
                                    }),
                                    regime: regime.clone(),
                                });
                            }
                            if round % 2 == 1 {
                                pair.rotate_left(ours);
                            }
                        }
                        out.append(&mut pair);
                    }
                }
            }
        }
    }
    out
}

/// One round of an async workload: each cell for every system this build runs, in turn.
fn async_steps(w: Workload, round: usize, plan: &Plan, args: &Args, file: (&Path, u64, bool)) -> Vec<Step> {
    let spec = async_cells::AsyncPlan {
        modes: plan.modes.clone(),
        direct_ok: file.2,
        tasks: async_cells::task_counts(&args.qd, args.smoke),
        duration: plan.duration,
        file: file.0.to_path_buf(),
        size: file.1,
    };
    async_cells::round_cells(w, round, &spec, &AsyncSystem::available())
        .into_iter()
        .map(|c| Step {
            regime: c.regime.clone(),
            job: Job::Async(c),
        })
        .collect()
}

/// The wal_commit cells: per backend and mode, the raw peer then each committer count. Like
/// the other direct cells, the `direct_io` ones are skipped where the file system refuses
/// O_DIRECT (their directory is beside the bench file).
fn wal_steps(plan: &Plan, args: &Args, direct_ok: bool) -> Vec<Step> {
    let committers: Vec<usize> = if !args.qd.is_empty() {
        args.qd.clone()
    } else if args.smoke {
        vec![1, 4]
    } else if args.full {
        vec![1, 4, 16, 64]
    } else {
        vec![1, 8, 64]
    };
    let task_counts: Vec<usize> = if !args.wal_tasks.is_empty() {
        args.wal_tasks.iter().copied().filter(|&n| n > 0).collect()
    } else if args.smoke {
        vec![16]
    } else if args.full {
        vec![64, 1024, 4096]
    } else {
        vec![64, 1024]
    };
    let regime = wal::REGIME.to_string();
    let mut out = Vec::new();
    // The external peers, same committer counts (threads: they have no async API).
    let built = [
        (peers::ENGINE_OKAYWAL, peers::okaywal_missing().is_none()),
        (peers::ENGINE_ROCKSDB, peers::rocksdb_missing().is_none()),
    ];
    // The device's limit: fio's durable writes, when fio is here.
    if !args.no_fio && fio::version().is_some() {
        let direct_depths: &[usize] = if direct_ok && plan.modes.contains(&true) {
            &[1, 4, 16]
        } else {
            &[]
        };
        let buffered: &[(bool, usize)] = if plan.modes.contains(&false) {
            &[(false, 1)]
        } else {
            &[]
        };
        let cells = buffered
            .iter()
            .copied()
            .chain(direct_depths.iter().map(|&q| (true, q)));
        for (direct, qd) in cells {
            out.push(Step {
                job: Job::FioDurable {
                    direct,
                    qd,
                    duration: plan.duration,
                },
                regime: regime.clone(),
            });
        }
    }
    for (engine, _) in built.iter().filter(|(_, here)| *here) {
        for &c in &committers {
            out.push(Step {
                job: Job::Peer {
                    engine,
                    committers: c,
                    duration: plan.duration,
                },
                regime: regime.clone(),
            });
        }
    }
    for b in &plan.backends {
        for &direct in plan.modes.iter().filter(|&&d| !d || direct_ok) {
            out.push(Step {
                job: Job::RawSync {
                    backend: *b,
                    direct,
                    duration: plan.duration,
                },
                regime: regime.clone(),
            });
            let threads = committers.iter().map(|&c| (c, false));
            for (c, tasks) in threads.chain(task_counts.iter().map(|&c| (c, true))) {
                out.push(Step {
                    job: Job::Wal {
                        backend: *b,
                        committers: c,
                        tasks,
                        direct,
                        duration: plan.duration,
                    },
                    regime: regime.clone(),
                });
            }
        }
    }
    out
}

fn main() {
    if let Some(code) = async_cells::child_main() {
        std::process::exit(code);
    }
    signal::install();
    match run() {
        Ok(true) => std::process::exit(130),
        Ok(false) => {}
        Err(e) => {
            eprintln!("io-patterns: error: {e:#}");
            std::process::exit(if signal::stopped() { 130 } else { 1 });
        }
    }
}

/// The whole bench; `Ok(true)` when it was interrupted (partial results are still written).
fn run() -> Result<bool> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(args) = cli::parse("io-patterns", &argv)? else {
        return Ok(false); // --help or --version
    };
    if args.list {
        print!("{}", cli::list_text(&built_here));
        return Ok(false);
    }
    let mut plan = plan(&args)?;
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    if let Some(file) = &args.file {
        check_file_dir(file)?;
    }
    let started = timestamp();
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("bench").join(&started));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let old = baseline(&args)?;
    let (file, size) = prepare_file(args.file.as_deref(), &root, plan.size_bytes, args.block_size)?;
    if !file.created && !args.allow_write && plan.workloads.contains(&Workload::RandWrite) {
        bail!(
            "refusing to run rand_write on the existing file {} (it would overwrite its data); \
             give a path that does not exist yet, drop rand_write, or pass --allow-write",
            file.path.display()
        );
    }
    let direct_ok = open_file(&file.path, &OpenOptions::default().with_direct(true))?
        .mode
        .is_direct();
    let (fio_version, mut notes) = missing_tools(&plan, &args, &file.path, direct_ok);
    let (mut cap, cache_cap) = cache_cap(&plan, &mut notes);
    let select = |plan: &Plan| {
        let mut all = steps(plan, &file.path, size, &args, fio_version.is_some(), direct_ok);
        if cap.is_none() {
            // Without a cache cap only the cache-independent cells can run (WAL cells have none).
            // The async cells prepare their own regimes (cold: posix_fadvise; no cap needed).
            all.retain(|s| {
                s.regime == "hot"
                    || s.regime == "uncached"
                    || s.regime == wal::REGIME
                    || matches!(s.job, Job::Async(_))
                    || s.regime == recover::REGIME
            });
        }
        all
    };
    let mut all = select(&plan);
    if let Some(note) = widen_if_narrow(&mut plan, all.len()) {
        eprintln!("io-patterns: {note}");
        notes.push(note);
        all = select(&plan);
    }
    let secs = all.len() as f64 * (plan.duration.as_secs_f64() + 0.05);
    eprintln!(
        "io-patterns: {} cells × {} s (≈ {:.0} s) on {} ({} MiB), block {} B → {}",
        all.len(),
        // 0.25 stays 0.25, as in the report's header.
        (plan.duration.as_secs_f64() * 1000.0).round() / 1000.0,
        secs,
        file.path.display(),
        size >> 20,
        args.block_size,
        out_dir.display()
    );
    let run = run_cells(&all, &file.path, size, cap.as_mut());
    // The wal_recover logs are kept across rounds beside the bench file.
    recover::remove_logs(file.path.parent().unwrap_or(Path::new(".")));
    let (rows, interrupted) = run?;
    drop(cap);
    if interrupted {
        notes.push(format!(
            "interrupted after {} of {} cells: partial results",
            rows.len(),
            all.len()
        ));
    }
    let report = Report {
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            mem_total_bytes: mem_total(),
            file: file.path.display().to_string(),
            file_size_bytes: size,
            direct_io_granted: direct_ok,
            fio: fio_version,
            cache_cap,
            cell_seconds: plan.duration.as_secs_f64(),
            rounds: plan.rounds,
            started,
        },
        results: fold_rounds(rows),
    };
    write_outputs(&report, &notes, &out_dir, &args, old.as_ref())?;
    Ok(interrupted)
}

/// Whether this build of the driver, on this machine, runs a peer (for `--list`).
fn built_here(name: &str, needs: cli::Needs) -> std::result::Result<(), String> {
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
fn baseline(args: &Args) -> Result<Option<Report>> {
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
fn missing_tools(plan: &Plan, args: &Args, file: &Path, direct_ok: bool) -> (Option<String>, Vec<String>) {
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
fn cache_cap(plan: &Plan, notes: &mut Vec<String>) -> (Option<MemCap>, String) {
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
fn run_cells(all: &[Step], file: &Path, size: u64, mut cap: Option<&mut MemCap>) -> Result<(Vec<Row>, bool)> {
    let bar = ProgressBar::new(all.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cells, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut interrupted = false;
    for step in all {
        if signal::stopped() {
            interrupted = true;
            break;
        }
        bar.set_message(step.label());
        let row = run_step(step, file, size, cap.as_deref_mut());
        let mut row = match row {
            Ok(r) => r,
            Err(_) if signal::stopped() => {
                interrupted = true;
                break;
            }
            Err(e) => return Err(e.context(format!("cell {}", step.label()))),
        };
        row.regime = step.regime.clone();
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

/// Writes results.json (and `--json`), the plots and report.md (with `--compare`'s section),
/// and prints the report.
fn write_outputs(
    report: &Report,
    notes: &[String],
    out_dir: &Path,
    args: &Args,
    old: Option<&Report>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out_dir.join("results.json"), &json)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &json).with_context(|| format!("write {}", p.display()))?;
    }
    let plots = plot::write_plots(&report.results, out_dir)?;
    let mut md = report::markdown(report, notes);
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in &plots {
            if let Some(name) = p.file_name() {
                let name = name.to_string_lossy();
                md.push_str(&format!("![{name}]({name})\n"));
            }
        }
    }
    if let (Some(old), Some(old_path)) = (old, &args.compare) {
        let found = report::compare(old, report, 0.10, 0.25);
        md.push_str(&report::compare_section(
            &old_path.display().to_string(),
            old,
            report,
            &found,
        ));
        for r in &found {
            eprintln!("io-patterns: REGRESSION {}: {}", r.key, r.what);
        }
    }
    std::fs::write(out_dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!(
        "io-patterns: wrote {} ({} rows, {} plots)",
        out_dir.join("report.md").display(),
        report.results.len(),
        plots.len()
    );
    Ok(())
}

/// Prepares the page cache for the step's regime, runs it, and records residency.
fn run_step(step: &Step, path: &Path, size: u64, cap: Option<&mut MemCap>) -> Result<Row> {
    // WAL cells write in a directory of their own beside the bench file; no cache regime.
    let wal_root = path.parent().unwrap_or(Path::new("."));
    let direct = match &step.job {
        Job::Async(c) => return async_cells::run(c),
        Job::Ours(c) => c.direct,
        Job::Fio(f) => f.direct,
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
            return wal::run_wal_cell(wal_root, &cell, &signal::stopped);
        }
        Job::RawSync {
            backend,
            direct,
            duration,
        } => {
            return wal::run_raw_cell(wal_root, *backend, *direct, *duration, &signal::stopped);
        }
        Job::FioDurable { direct, qd, duration } => {
            return wal::run_fio_durable_cell(wal_root, *direct, *qd, *duration);
        }
        Job::Recover(c) => return recover::run_cell(wal_root, c),
        Job::Peer {
            engine,
            committers,
            duration,
        } => {
            return if *engine == peers::ENGINE_ROCKSDB {
                peers::run_rocksdb_cell(wal_root, *committers, *duration, &signal::stopped)
            } else {
                peers::run_okaywal_cell(wal_root, *committers, *duration, &signal::stopped)
            };
        }
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
        | Job::Wal { .. }
        | Job::RawSync { .. }
        | Job::Peer { .. }
        | Job::FioDurable { .. }
        | Job::Recover(_) => {
            unreachable!("WAL, recovery and async cells returned above")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(argv: &[&str]) -> Result<Plan> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let args = cli::parse("io-patterns", &argv)?.expect("not --help");
        plan(&args)
    }

    #[test]
    fn rounds_are_one_or_even_so_each_side_leads_equally_often() {
        for ok in ["1", "2", "4", "100"] {
            assert_eq!(
                plan_of(&["--rounds", ok]).unwrap().rounds,
                ok.parse::<usize>().unwrap()
            );
        }
        for odd in ["3", "5", "99"] {
            let Err(e) = plan_of(&["--rounds", odd]) else {
                panic!("--rounds {odd} accepted")
            };
            let e = e.to_string();
            assert!(e.contains("is odd") && e.contains("or 1 for a quick look"), "{e}");
        }
        for out in ["0", "101"] {
            assert!(plan_of(&["--rounds", out]).is_err(), "--rounds {out} accepted");
        }
        assert_eq!(
            plan_of(&["--full"]).unwrap().rounds % 2,
            0,
            "the full preset's rounds"
        );
        assert_eq!(plan_of(&[]).unwrap().rounds, 1, "the quick preset's rounds");
    }

    #[test]
    fn a_narrow_quick_run_gets_rounds_enough_for_a_confidence_interval() {
        let narrow = ["--workload", "rand_read", "--backend", "uring", "--io", "direct"];
        let mut plan = plan_of(&narrow).unwrap();
        let note = widen_if_narrow(&mut plan, 16).expect("16 cells is narrow");
        assert_eq!(plan.rounds, NARROW_ROUNDS);
        assert_eq!(plan.duration, Duration::from_secs_f64(NARROW_DURATION));
        assert!(note.contains("16 cells") && note.contains("--rounds 1"), "{note}");
        // The whole quick preset is not narrow; explicit rounds or durations are kept as given.
        let mut wide = plan_of(&[]).unwrap();
        assert!(widen_if_narrow(&mut wide, NARROW_MAX_CELLS + 1).is_none());
        assert_eq!(wide.rounds, 1);
        for given in [
            &["--rounds", "1"][..],
            &["--duration", "0.4"],
            &["--full"],
            &["--smoke"],
        ] {
            let mut p = plan_of(&[&narrow[..], given].concat()).unwrap();
            let before = (p.rounds, p.duration);
            assert!(widen_if_narrow(&mut p, 4).is_none(), "{given:?}");
            assert_eq!((p.rounds, p.duration), before, "{given:?}");
        }
    }
}
