//! The driver's command line: its flags, the names it accepts with a line on each, and the
//! checks that need nothing but the arguments.
//!
//! This file has no dependency beyond `clap`, `anyhow` and `std`, so that `cargo xtask bench`
//! compiles it too (`#[path]`) and answers `--help`, `--list` and a wrong argument at once,
//! before it builds the release driver (minutes on a 2-core machine).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

/// The driver's arguments (`cargo xtask bench --help`).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "io-patterns",
    about = "Queue-depth benchmark of storage-io backends, with fio beside them on the same file",
    after_help = "Default: a quick run (several minutes; --workload narrows it) on a temp file under target/bench/.\n\
                  Output: target/bench/<timestamp>/report.md, results.json and SVG plots."
)]
pub struct Args {
    /// A tiny run that only proves the driver works (CI uses it).
    #[arg(long, conflicts_with_all = ["quick", "full"])]
    pub smoke: bool,
    /// The default: every workload and the main backends, hot and thrash regimes, one round.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Everything: all backends and regimes, longer cells, a 1 GiB file, four rounds (median).
    #[arg(long)]
    pub full: bool,
    /// Workloads, comma-separated (default: the preset's); `--list` says what each measures.
    /// For wal_commit --qd is the number of concurrent committers (default 1, 8, 64); for the
    /// async_* cells the number of tasks (default 1, 32, 256).
    #[arg(long, value_delimiter = ',')]
    pub workload: Vec<String>,
    /// Backends, comma-separated: sync, thread_pool, uring, uring_nofixed, uring_sqpoll,
    /// uring_heapbuf, uring_nowait_off, thread_pool_nowait_off (`--list` says what each is).
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<String>,
    /// I/O mode: direct, buffered or both.
    #[arg(long)]
    pub io: Option<String>,
    /// Queue depths.
    #[arg(long, value_delimiter = ',')]
    pub qd: Vec<usize>,
    /// wal_commit: async committers, as task counts on a 2-thread tokio runtime (default 64,
    /// 1024; --full adds 4096; --smoke 16). 0 runs none.
    #[arg(long, value_delimiter = ',')]
    pub wal_tasks: Vec<usize>,
    /// Page-cache regimes for buffered cells: hot, pressure (cache ≈ file / 1.5), thrash (cache ≈ file / 4).
    #[arg(long, value_delimiter = ',')]
    pub regime: Vec<String>,
    /// Run on this file (e.g. on the disk you care about). Created, filled and removed afterwards
    /// if missing; an existing file is only read unless --allow-write.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Let rand_write cells overwrite an existing --file.
    #[arg(long)]
    pub allow_write: bool,
    /// Size of the file in MiB (a new file is filled to this size).
    #[arg(long)]
    pub size_mib: Option<u64>,
    /// Seconds per cell.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Rounds per cell: 1, or an even number so both sides of a comparison go first equally
    /// often. The report shows the median round (ours and fio alternate within a round).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Block size in bytes (a multiple of 4096 for direct I/O).
    #[arg(long, default_value_t = 4096)]
    pub block_size: usize,
    /// Concurrent sequential streams of multistream_scan.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Worker threads of the scheduler_* cells (default: the scheduler's own default,
    /// max(1, cores / 2)); each worker owns one backend (one ring for io_uring).
    #[arg(long)]
    pub sched_workers: Option<usize>,
    /// Open loop: also run rand_read direct with Poisson arrivals at these rates, ops/s (fio
    /// beside at the same rate); latency is timed from each op's intended arrival.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Open loop at these percentages of each backend's closed-loop rand_read direct peak
    /// measured earlier in the same run (e.g. 25,50,75,90; --full runs those, --smoke 50).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Print every workload and peer, one line each, with the peers this machine (and this
    /// build) can run, and exit.
    #[arg(long)]
    pub list: bool,
    /// Do not run fio even if it is installed.
    #[arg(long)]
    pub no_fio: bool,
    /// fio engines to run beside us: psync, io_uring, io_uring+fixed.
    #[arg(long, value_delimiter = ',')]
    pub fio_engine: Vec<String>,
    /// Also write the JSON results here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Compare with an earlier results.json and flag regressions (IOPS −10 %, p99 +25 %).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Output directory (default `target/bench/<timestamp>`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Every workload the driver knows, with a line on what it measures, in the order it runs them.
pub const WORKLOADS: [(&str, &str); 19] = [
    (
        "seq_read",
        "one sequential reader, qd reads in flight (fio beside)",
    ),
    (
        "rand_read",
        "4 KiB uniform random reads, qd in flight (fio beside)",
    ),
    ("rand_write", "uniform random writes, qd in flight (fio beside)"),
    ("multistream_scan", "--streams sequential readers at once"),
    (
        "wal_commit",
        "durable commits of 128-byte records through the WAL, qd committer threads and async tasks (okaywal, RocksDB, fio durable writes beside)",
    ),
    (
        "scheduler_rand_read",
        "random page reads through the page scheduler, qd outstanding",
    ),
    (
        "scheduler_batch_read",
        "batches of page reads through the scheduler (read_pages)",
    ),
    (
        "raw_round_read",
        "the scheduler cells' raw peer: rounds of qd reads on one backend",
    ),
    ("scheduler_seq_scan", "a ReadStream scanning the file"),
    (
        "scheduler_client_read",
        "qd blocking client threads, each waiting for its own page read (fio psync with qd jobs beside)",
    ),
    (
        "scheduler_task_read",
        "qd async tasks each awaiting its own page read through the scheduler",
    ),
    (
        "raw_handoff_read",
        "the raw loop on one thread handing each read to one of qd client threads (the hand-off floor)",
    ),
    (
        "raw_tagged_handoff_read",
        "the raw loop serving one client thread that keeps qd reads outstanding",
    ),
    (
        "segment_append",
        "qd appends then one sync per op through the async file API",
    ),
    ("segment_read", "sequential reads through the async file API"),
    (
        "async_rand_read",
        "tasks reading 4 KiB at random offsets: the async file API beside tokio::fs and the io_uring runtimes",
    ),
    (
        "async_append_sync",
        "tasks appending 8 x 4 KiB then one sync_data, ours and the async peers",
    ),
    (
        "async_seq_read",
        "consumer tasks reading a segment front to back, ours and the async peers",
    ),
    (
        "wal_recover",
        "reopening a log cold (4/64/256 MiB segments, 1 GiB log), fio sequential read and okaywal beside",
    ),
];

/// Every backend variant of ours, with a line on what it is.
pub const BACKENDS: [(&str, &str); 8] = [
    ("sync", "inline blocking I/O on the caller's thread"),
    ("thread_pool", "worker threads doing blocking I/O"),
    ("uring", "io_uring with registered buffers and files"),
    ("uring_nofixed", "io_uring without registered buffers"),
    ("uring_sqpoll", "io_uring with a kernel SQ polling thread"),
    (
        "uring_heapbuf",
        "io_uring on the caller's heap buffers (reads staged in registered memory and copied)",
    ),
    (
        "uring_nowait_off",
        "io_uring with every buffered read through the ring (no page-cache fast path)",
    ),
    (
        "thread_pool_nowait_off",
        "the pool with every buffered read on a worker (no page-cache fast path)",
    ),
];

/// The page-cache regimes of buffered cells.
pub const REGIMES: [&str; 3] = ["hot", "pressure", "thrash"];

/// fio's engines beside ours.
pub const FIO_ENGINES: [&str; 3] = ["psync", "io_uring", "io_uring+fixed"];

/// What a peer needs before the driver can run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A program on the PATH.
    Program(&'static str),
    /// A cargo feature of the bench crate (`cargo xtask bench --features NAME`).
    Feature(&'static str),
    /// Nothing: always built.
    Nothing,
}

/// Every peer the driver can put beside ours: name, what it stands beside, what it needs.
pub const PEERS: [(&str, &str, Needs); 8] = [
    (
        "fio",
        "the raw cells, wal_commit's device limit, wal_recover's read (psync, io_uring, io_uring+fixed)",
        Needs::Program("fio"),
    ),
    (
        "okaywal",
        "wal_commit and wal_recover: a pure-Rust WAL with group commit (default feature)",
        Needs::Feature("okaywal"),
    ),
    (
        "rocksdb",
        "wal_commit: RocksDB puts with set_sync(true) (needs librocksdb-dev)",
        Needs::Feature("rocksdb"),
    ),
    (
        "tokio::fs",
        "the async_* cells: spawn_blocking per op",
        Needs::Nothing,
    ),
    (
        "tokio-uring",
        "the async_* cells: its own runtime per core",
        Needs::Feature("tokio-uring"),
    ),
    (
        "compio",
        "the async_* cells: compio-fs, one runtime per core",
        Needs::Feature("compio"),
    ),
    (
        "monoio",
        "the async_* cells: its io_uring driver, one runtime per core",
        Needs::Feature("monoio"),
    ),
    (
        "glommio",
        "the async_* cells: DmaFile / BufferedFile, one executor per core",
        Needs::Feature("glommio"),
    ),
];

/// The `--list` text. `available` says, per peer, whether this machine and build can run it
/// and, when not, what to do.
pub fn list_text(available: &dyn Fn(&str, Needs) -> std::result::Result<(), String>) -> String {
    let mut s = String::from("workloads (--workload NAME,...):\n");
    let w = WORKLOADS.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, what) in WORKLOADS {
        s.push_str(&format!("  {name:<w$}  {what}\n"));
    }
    s.push_str("\nbackends (--backend NAME,...):\n");
    let w = BACKENDS.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, what) in BACKENDS {
        s.push_str(&format!("  {name:<w$}  {what}\n"));
    }
    s.push_str("\npeers (here: whether this machine and build run it):\n");
    let w = PEERS.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
    for (name, what, needs) in PEERS {
        let here = match available(name, needs) {
            Ok(()) => "yes".to_string(),
            Err(why) => format!("no: {why}"),
        };
        s.push_str(&format!("  {name:<w$}  [{here}] {what}\n"));
    }
    s
}

/// Whether `program` answers `--version` (fio on the PATH).
pub fn program_found(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The names asked for (or the preset's `default`), each checked against `known`.
pub fn names(given: &[String], default: &[&str], known: &[&str], what: &str) -> Result<Vec<String>> {
    let v: Vec<String> = if given.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        given.iter().map(|s| s.trim().to_string()).collect()
    };
    for x in &v {
        if !known.contains(&x.as_str()) {
            bail!("unknown {what} {x:?}; expected one of {}", known.join(", "));
        }
    }
    Ok(v)
}

/// Every check of the arguments that needs nothing else: names, ranges and rounds. The driver
/// runs it again in its plan; `cargo xtask bench` runs it before building the driver.
pub fn validate(args: &Args) -> Result<()> {
    let workloads: Vec<&str> = WORKLOADS.iter().map(|(n, _)| *n).collect();
    let backends: Vec<&str> = BACKENDS.iter().map(|(n, _)| *n).collect();
    names(&args.workload, &[], &workloads, "workload")?;
    names(&args.backend, &[], &backends, "backend")?;
    names(&args.regime, &[], &REGIMES, "regime")?;
    io_modes(args.io.as_deref())?;
    for e in &args.fio_engine {
        if !FIO_ENGINES.contains(&e.trim()) {
            bail!(
                "unknown --fio-engine {e:?}; expected one of {}",
                FIO_ENGINES.join(", ")
            );
        }
    }
    check_limits(args)?;
    if args.qd.iter().any(|&q| q == 0 || q > 4096) {
        bail!("--qd values must be between 1 and 4096");
    }
    if let Some(d) = args.duration
        && !(0.05..=3600.0).contains(&d)
    {
        bail!("--duration must be between 0.05 and 3600 seconds");
    }
    if args.size_mib == Some(0) {
        bail!("--size-mib must be at least 1");
    }
    if let Some(r) = args.rounds {
        rounds_ok(r)?;
    }
    if let Some(r) = args
        .rate
        .iter()
        .find(|r| !(r.is_finite() && **r > 0.0 && **r <= 1e8))
    {
        bail!("--rate {r}: give ops per second, above 0 and at most 100000000");
    }
    if let Some(p) = args
        .rates
        .iter()
        .find(|p| !(p.is_finite() && **p > 0.0 && **p <= 200.0))
    {
        bail!("--rates {p}: give percentages of the closed-loop peak, above 0 and at most 200");
    }
    Ok(())
}

/// `--io`: which modes (true = direct) to run.
pub fn io_modes(io: Option<&str>) -> Result<Vec<bool>> {
    Ok(match io.unwrap_or("both") {
        "direct" => vec![true],
        "buffered" => vec![false],
        "both" => vec![true, false],
        other => bail!("unknown --io {other:?}; expected direct, buffered or both"),
    })
}

/// The block size, streams and scheduler workers asked for are in range.
pub fn check_limits(args: &Args) -> Result<()> {
    if args.block_size == 0 || !args.block_size.is_multiple_of(512) || args.block_size > 64 << 20 {
        bail!("--block-size must be a multiple of 512 up to 64 MiB (4096 for direct I/O on most disks)");
    }
    if args.streams == 0 || args.streams > 4096 {
        bail!("--streams must be between 1 and 4096");
    }
    if args.sched_workers.is_some_and(|n| n == 0 || n > 256) {
        bail!("--sched-workers must be between 1 and 256");
    }
    Ok(())
}

/// Rounds per cell: 1, or an even number up to 100 (the two sides of a comparison take turns
/// going first).
pub fn rounds_ok(rounds: usize) -> Result<usize> {
    if rounds == 0 || rounds > 100 {
        bail!("--rounds must be between 1 and 100");
    }
    if rounds > 1 && rounds % 2 == 1 {
        bail!(
            "--rounds {rounds} is odd: the two sides of a comparison take turns going first, so \
             an odd count lets one of them lead once more; use {} or {} (or 1 for a quick look)",
            rounds - 1,
            rounds + 1
        );
    }
    Ok(rounds)
}

/// Parses the driver's arguments as `bin` (`io-patterns`, or `cargo xtask bench`): `Ok(None)`
/// when clap printed help or the version, an error with clap's text for a wrong argument.
pub fn parse(bin: &'static str, argv: &[String]) -> Result<Option<Args>> {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Args::command().bin_name(bin);
    let matches = match cmd.try_get_matches_from(std::iter::once(bin.to_string()).chain(argv.iter().cloned()))
    {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return Ok(None);
        }
        Err(e) => bail!("{}", e.render().to_string().trim_end()),
    };
    let args = Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    validate(&args)?;
    Ok(Some(args))
}
