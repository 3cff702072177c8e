//! Plan: what to run, from the arguments and the preset — the cells of a run in order.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use storage_io_benches::async_cells::{self, AsyncCell};
use storage_io_benches::async_peers::AsyncSystem;
use storage_io_benches::cell::{BACKENDS, Backend, Cell, WORKLOADS, Workload};
use storage_io_benches::cli::{self, Args, REGIMES, names};
use storage_io_benches::fio::{self, FioEngine, FioJob};
use storage_io_benches::openloop::Rate;
use storage_io_benches::{peers, recover, wal};

/// What to run, after defaults.
pub(crate) struct Plan {
    pub(crate) workloads: Vec<Workload>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) modes: Vec<bool>,
    pub(crate) regimes: Vec<String>,
    pub(crate) qds: Vec<usize>,
    pub(crate) fio_engines: Vec<FioEngine>,
    pub(crate) duration: Duration,
    pub(crate) size_bytes: u64,
    pub(crate) rounds: usize,
    /// The quick preset with the rounds and the duration left to it: a narrow selection gets
    /// [`NARROW_ROUNDS`] short rounds instead of one (see [`widen_if_narrow`]).
    pub(crate) widen_if_narrow: bool,
    /// Open-loop rates of rand_read direct (`--rate`, `--rates`, or the preset's).
    pub(crate) rates: Vec<Rate>,
}

/// A quick run of at most this many cells per round is narrow enough to repeat.
pub(crate) const NARROW_MAX_CELLS: usize = 24;
/// Rounds of a narrow quick run: enough for the report's 95 % confidence interval (from 6).
pub(crate) const NARROW_ROUNDS: usize = 10;
// The report gives a confidence interval from 6 rounds, and the sides take turns going first.
const _: () = assert!(NARROW_ROUNDS >= 6 && NARROW_ROUNDS.is_multiple_of(2));
/// Seconds per cell of a narrow quick run (10 rounds of 24 cells, with fio's start-up, ≈ 2 min).
pub(crate) const NARROW_DURATION: f64 = 0.25;

/// A quick run narrowed to a few cells (`--workload rand_read --backend uring --io direct`
/// is 16) takes seconds at one round, and one round of a cell on a noisy disk says little. Such a
/// run gets [`NARROW_ROUNDS`] rounds of [`NARROW_DURATION`] s instead, so each comparison with
/// fio comes with a confidence interval. Returns the note for the report when it widens.
pub(crate) fn widen_if_narrow(plan: &mut Plan, cells_per_round: usize) -> Option<String> {
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

pub(crate) fn plan(args: &Args) -> Result<Plan> {
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
        rates: rates_of(args, &preset),
    })
}

/// What `--smoke`, the default quick pass and `--full` run unless told otherwise.
pub(crate) struct Preset {
    duration: f64,
    size_mib: u64,
    qds: &'static [usize],
    workloads: &'static [&'static str],
    backends: &'static [&'static str],
    regimes: &'static [&'static str],
    rounds: usize,
    /// Open-loop rates, percent of peak.
    rates: &'static [f64],
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
                // One open-loop rate: the path runs in CI, without fio's peers.
                rates: &[50.0],
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
                rates: &[25.0, 50.0, 75.0, 90.0],
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
                rates: &[],
            }
        }
    }
}

/// The open-loop rates asked for: `--rate` (ops/s) and `--rates` (percent of peak), or the
/// preset's percentages when neither is given.
fn rates_of(args: &Args, preset: &Preset) -> Vec<Rate> {
    if args.rate.is_empty() && args.rates.is_empty() {
        return preset.rates.iter().map(|&p| Rate::PercentOfPeak(p)).collect();
    }
    let absolute = args.rate.iter().map(|&r| Rate::PerSecond(r));
    absolute
        .chain(args.rates.iter().map(|&p| Rate::PercentOfPeak(p)))
        .collect()
}

/// Rounds per cell: the preset's unless given (checked by [`cli::rounds_ok`]).
pub(crate) fn rounds_of(args: &Args, preset: &Preset) -> Result<usize> {
    cli::rounds_ok(args.rounds.unwrap_or(preset.rounds))
}

/// The fio engines asked for (all by default).
pub(crate) fn fio_engines_of(args: &Args) -> Result<Vec<FioEngine>> {
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

/// One thing to run: a cell of ours or of fio's, in a regime.
pub(crate) enum Job {
    Ours(Cell),
    /// An open-loop rand_read direct cell, ours or fio's beside it (see `openloop.rs`).
    OpenLoop(OpenStep),
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
        engine: storage_io_benches::cell::Engine,
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

pub(crate) struct Step {
    pub(crate) job: Job,
    pub(crate) regime: String,
}

impl Step {
    pub(crate) fn label(&self) -> String {
        let (w, b, d, q) = match &self.job {
            Job::Async(c) => return c.label(),
            Job::OpenLoop(o) => {
                let who = if o.fio {
                    "fio io_uring+fixed".to_string()
                } else {
                    o.backend.to_string()
                };
                let rate = match o.rate {
                    Rate::PerSecond(r) => format!("{r:.0}/s"),
                    Rate::PercentOfPeak(p) => format!("{p:.0}% of {} peak", o.backend),
                };
                return format!("rand_read open loop {who} direct {rate}");
            }
            Job::Ours(c) => (
                c.workload.name().to_string(),
                c.backend.name().to_string(),
                c.direct,
                c.qd,
            ),
            Job::Fio(f) => (
                f.workload.name().to_string(),
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
                engine.to_string(),
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

pub(crate) fn steps(
    plan: &Plan,
    file: &Path,
    size: u64,
    args: &Args,
    fio_on: bool,
    direct_ok: bool,
) -> Vec<Step> {
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
            out.extend(cell_steps(w, round, plan, args, (file, size, fio_on, direct_ok)));
        }
        if round < plan.rounds {
            out.extend(open_steps(plan, args, round, (fio_on, direct_ok)));
        }
    }
    out
}

/// The cells of one raw or scheduler workload in one round: per I/O mode, regime and depth,
/// ours and fio's back to back.
fn cell_steps(
    w: Workload,
    round: usize,
    plan: &Plan,
    args: &Args,
    (file, size, fio_on, direct_ok): (&Path, u64, bool, bool),
) -> Vec<Step> {
    let mut out = Vec::new();
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
                                workload: w,
                                engine,
                                direct,
                                qd,
                                block: args.block_size,
                                duration: plan.duration,
                                size,
                                file: file.to_path_buf(),
                                invalidate: regime != "hot",
                                sync: fio::FioSync::None,
                                rate_iops: None,
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
    out
}

/// An open-loop cell: Poisson arrivals at a rate resolved when it runs (a percentage needs
/// the closed-loop peak measured before it in the same run).
pub(crate) struct OpenStep {
    /// Ours on this backend, or (`fio`) fio io_uring+fixed at the rate resolved from this
    /// backend's peak.
    pub(crate) backend: Backend,
    pub(crate) fio: bool,
    pub(crate) rate: Rate,
    pub(crate) block: usize,
    pub(crate) duration: Duration,
}

/// The open-loop cells of one round: per rate, each backend's cell and, beside `uring`'s, fio's
/// at the same rate (fio first in every other round). Only with rand_read direct in the run.
fn open_steps(plan: &Plan, args: &Args, round: usize, (fio_on, direct_ok): (bool, bool)) -> Vec<Step> {
    let mut out = Vec::new();
    if !(plan.workloads.contains(&Workload::RandRead) && plan.modes.contains(&true) && direct_ok) {
        return out;
    }
    for &rate in &plan.rates {
        for &backend in &plan.backends {
            let step = |fio| Step {
                job: Job::OpenLoop(OpenStep {
                    backend,
                    fio,
                    rate,
                    block: args.block_size,
                    duration: plan.duration,
                }),
                regime: "uncached".into(),
            };
            let mut pair = vec![step(false)];
            if fio_on && backend == Backend::Uring {
                pair.push(step(true));
                if round % 2 == 1 {
                    pair.reverse();
                }
            }
            out.extend(pair);
        }
    }
    out
}

/// One round of an async workload: each cell for every system this build runs, in turn.
pub(crate) fn async_steps(
    w: Workload,
    round: usize,
    plan: &Plan,
    args: &Args,
    file: (&Path, u64, bool),
) -> Vec<Step> {
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
pub(crate) fn wal_steps(plan: &Plan, args: &Args, direct_ok: bool) -> Vec<Step> {
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
                    engine: *engine,
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
