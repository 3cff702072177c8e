//! io-patterns: the queue-depth benchmark driver behind `cargo xtask bench`.
//!
//! Runs each cell (workload × backend × I/O mode × queue depth) for a fixed time on one file,
//! keeping `qd` ops in flight, and reports IOPS, MB/s, latency percentiles and CPU time per op.
//! Writes `results.json` and `report.md` under `target/bench/<timestamp>/`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use storage_io_core::{
    AlignedBuf, BackendKind, IoBuf, IoCompletion, IoConfig, IoToken, OpKind, OpenOptions, StorageIo,
    open_file,
};

#[derive(Parser, Debug)]
#[command(
    name = "io-patterns",
    about = "Queue-depth benchmark of storage-io backends on one file"
)]
struct Args {
    /// A tiny run that only proves the driver works (CI uses it).
    #[arg(long, conflicts_with_all = ["quick", "full"])]
    smoke: bool,
    /// The default: a run of a few minutes.
    #[arg(long)]
    quick: bool,
    /// Longer cells and a bigger file.
    #[arg(long)]
    full: bool,
    /// Workloads: seq_read, rand_read, rand_write.
    #[arg(long, value_delimiter = ',')]
    workload: Vec<String>,
    /// Backends: sync, thread_pool, uring, uring_nofixed (no registered buffers), uring_sqpoll.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// I/O mode: direct, buffered or both.
    #[arg(long)]
    io: Option<String>,
    /// Queue depths.
    #[arg(long, value_delimiter = ',')]
    qd: Vec<usize>,
    /// Seconds per cell.
    #[arg(long)]
    duration: Option<f64>,
    /// Block size in bytes (a multiple of 4096 for direct I/O).
    #[arg(long, default_value_t = 4096)]
    block_size: usize,
    /// File to run on (created and filled if missing or too small). Default: a temp file under target/.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Size of the file in MiB.
    #[arg(long)]
    size_mib: Option<u64>,
    /// Also write the JSON results here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Output directory (default `target/bench/<timestamp>`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

struct Plan {
    workloads: Vec<String>,
    backends: Vec<String>,
    modes: Vec<bool>,
    qds: Vec<usize>,
    duration: Duration,
    size_bytes: u64,
}

fn plan(args: &Args) -> Result<Plan> {
    let (dur, size_mib, qds): (f64, u64, Vec<usize>) = if args.smoke {
        (0.2, 16, vec![1, 4])
    } else if args.full {
        (5.0, 1024, vec![1, 4, 16, 32])
    } else {
        (1.5, 256, vec![1, 4, 16, 32])
    };
    let list = |given: &Vec<String>, default: &[&str], known: &[&str], what: &str| -> Result<Vec<String>> {
        let v: Vec<String> = if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.clone()
        };
        for x in &v {
            if !known.contains(&x.as_str()) {
                bail!("unknown {what} {x:?}; expected one of {}", known.join(", "));
            }
        }
        Ok(v)
    };
    let workloads = list(
        &args.workload,
        if args.smoke {
            &["rand_read", "rand_write"]
        } else {
            &["seq_read", "rand_read", "rand_write"]
        },
        &["seq_read", "rand_read", "rand_write"],
        "workload",
    )?;
    let backends = list(
        &args.backend,
        &["sync", "thread_pool", "uring"],
        BACKENDS,
        "backend",
    )?;
    let modes = match args.io.as_deref().unwrap_or("both") {
        "direct" => vec![true],
        "buffered" => vec![false],
        "both" => vec![true, false],
        other => bail!("unknown --io {other:?}; expected direct, buffered or both"),
    };
    if args.block_size == 0 || !args.block_size.is_multiple_of(512) {
        bail!("--block-size must be a positive multiple of 512 (4096 for direct I/O on most disks)");
    }
    let qds = if args.qd.is_empty() { qds } else { args.qd.clone() };
    if qds.iter().any(|&q| q == 0 || q > 4096) {
        bail!("--qd values must be between 1 and 4096");
    }
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(dur).clamp(0.05, 3600.0));
    let size_bytes = args.size_mib.unwrap_or(size_mib).max(1) << 20;
    Ok(Plan {
        workloads,
        backends,
        modes,
        qds,
        duration,
        size_bytes,
    })
}

#[derive(Serialize, Clone, Debug)]
struct Latency {
    mean: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize, Clone, Debug)]
struct Row {
    workload: String,
    engine: &'static str,
    backend: String,
    io: &'static str,
    regime: &'static str,
    qd: usize,
    block_size: usize,
    iops: f64,
    mb_s: f64,
    lat_us: Latency,
    cpu_us_per_op: f64,
    ops: u64,
    errors: u64,
    qd_achieved: f64,
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    kernel: String,
    file: String,
    file_size_bytes: u64,
    direct_io_granted: bool,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    results: Vec<Row>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let plan = plan(&args)?;
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("bench").join(timestamp()));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| root.join("bench").join("io-patterns.dat"));
    prepare_file(&file, plan.size_bytes)?;

    let direct_ok = open_file(&file, &OpenOptions::default().with_direct(true))?
        .mode
        .is_direct();
    if !direct_ok && plan.modes.contains(&true) {
        eprintln!(
            "note: {} refuses O_DIRECT; direct cells are skipped (use --file on ext4/xfs)",
            file.display()
        );
    }
    let mut cells: Vec<(String, String, bool, usize)> = Vec::new();
    for w in &plan.workloads {
        for b in &plan.backends {
            for &d in plan.modes.iter().filter(|&&d| !d || direct_ok) {
                for &q in &plan.qds {
                    cells.push((w.clone(), b.clone(), d, q));
                }
            }
        }
    }
    let bar = ProgressBar::new(cells.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cells, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    eprintln!(
        "io-patterns: {} cells × {:.1} s on {} ({} MiB), block {} B",
        cells.len(),
        plan.duration.as_secs_f64(),
        file.display(),
        plan.size_bytes >> 20,
        args.block_size
    );
    let mut rows = Vec::new();
    for (workload, backend, direct, qd) in &cells {
        bar.set_message(format!("{workload} {backend} {} qd{qd}", mode_name(*direct)));
        let row = run_cell(
            &file,
            plan.size_bytes,
            workload,
            backend,
            *direct,
            *qd,
            args.block_size,
            plan.duration,
        )
        .with_context(|| format!("cell {workload}/{backend}/{}/qd{qd}", mode_name(*direct)))?;
        if bar.is_hidden() {
            eprintln!(
                "  {workload:<10} {backend:<11} {:<8} qd{qd:<3} {:>9.0} IOPS  p99 {:>8.1} us",
                mode_name(*direct),
                row.iops,
                row.lat_us.p99
            );
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let report = Report {
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            file: file.display().to_string(),
            file_size_bytes: plan.size_bytes,
            direct_io_granted: direct_ok,
        },
        results: rows,
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out_dir.join("results.json"), &json)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &json).with_context(|| format!("write {}", p.display()))?;
    }
    let md = markdown(&report);
    std::fs::write(out_dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("wrote {}", out_dir.join("report.md").display());
    Ok(())
}

fn mode_name(direct: bool) -> &'static str {
    if direct { "direct" } else { "buffered" }
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since 1970-01-01 (proleptic Gregorian, UTC).
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Creates or extends the file to `size` bytes of non-zero data, synced.
fn prepare_file(path: &Path, size: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if have >= size {
        return Ok(());
    }
    eprintln!("io-patterns: filling {} to {} MiB", path.display(), size >> 20);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .collect();
    let mut off = have - have % (1 << 20);
    while off < size {
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk, off)?;
        off += 1 << 20;
    }
    file.sync_all()?;
    Ok(())
}

/// Every backend variant the driver knows.
const BACKENDS: &[&str] = &["sync", "thread_pool", "uring", "uring_nofixed", "uring_sqpoll"];

fn make_backend(name: &str, qd: usize) -> Result<Box<dyn StorageIo>> {
    let mut config = IoConfig {
        queue_depth: qd.max(1),
        workers: qd.clamp(1, 32),
        // One registered buffer per slot, sized for the block (the driver's blocks are 4 KiB by default).
        buffer_size: 64 << 10,
        ..IoConfig::default()
    };
    // STORAGE_IO_* variables tune the backends under test (e.g. STORAGE_IO_SUBMIT_BATCH).
    config.apply_env()?;
    config.queue_depth = qd.max(1);
    let (kind, config) = match name {
        "sync" => (BackendKind::Sync, config),
        "thread_pool" => (BackendKind::ThreadPool, config),
        "uring" => (BackendKind::IoUring, config),
        "uring_nofixed" => (
            BackendKind::IoUring,
            IoConfig {
                fixed_buffers: false,
                ..config
            },
        ),
        "uring_sqpoll" => (
            BackendKind::IoUring,
            IoConfig {
                sqpoll_idle_ms: Some(50),
                ..config
            },
        ),
        other => bail!("unknown backend {other}"),
    };
    Ok(storage_io::build_backend(kind, &config)?)
}

/// Drops the file's pages from the page cache so a buffered cell starts cold.
fn drop_cache(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only takes the descriptor `f` keeps open for the call, and plain
        // integers; it touches no memory of ours.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn cpu_time() -> Duration {
    // SAFETY: rusage is plain old data, so all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct we own, which lives across the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[allow(clippy::too_many_arguments)] // one cell's coordinates; a struct would only rename them
fn run_cell(
    path: &Path,
    size: u64,
    workload: &str,
    backend: &str,
    direct: bool,
    qd: usize,
    block: usize,
    duration: Duration,
) -> Result<Row> {
    if !direct {
        drop_cache(path);
    }
    let opened = open_file(path, &OpenOptions::default().with_direct(direct))?;
    let mut io = make_backend(backend, qd)?;
    let fd = io.register_fd(opened.file)?;
    let blocks = (size / block as u64).max(1);
    let mut free: Vec<IoBuf> = (0..qd)
        .map(|_| AlignedBuf::zeroed(block, 4096).map(IoBuf::from))
        .collect::<Result<_, _>>()?;
    let mut started_at: HashMap<IoToken, Instant> = HashMap::with_capacity(qd * 2);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut done: Vec<IoCompletion> = Vec::with_capacity(qd);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut seq = 0u64;
    let (mut ops, mut errors, mut depth_sum, mut depth_samples) = (0u64, 0u64, 0u64, 0u64);
    let write = workload == "rand_write";
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + duration;
    loop {
        let now = Instant::now();
        let submitting = now < deadline;
        while submitting && io.pending_count() < qd {
            let Some(mut buf) = free.pop() else { break };
            let page = if workload == "seq_read" {
                seq = (seq + 1) % blocks;
                seq
            } else {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % blocks
            };
            if let IoBuf::Aligned(b) = &mut buf {
                b.set_len(block)?;
            }
            let offset = page * block as u64;
            // Stamp before submit: the inline backend does the whole op inside submit_*.
            let stamp = Instant::now();
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
        depth_samples += 1;
        io.wait_completions(&mut done, 1, Some(Duration::from_secs(10)))?;
        let now = Instant::now();
        for c in done.drain(..) {
            if let Some(t) = started_at.remove(&c.token) {
                hist.saturating_record((now - t).as_nanos().max(1) as u64);
            }
            match c.result {
                Ok(_) => ops += 1,
                Err(_) => errors += 1,
            }
            if let Some(b) = c.buf {
                free.push(b);
            }
            debug_assert!(matches!(c.op, OpKind::Read | OpKind::Write));
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    io.deregister_fd(fd)?;
    if errors > 0 {
        bail!("{errors} ops failed");
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    let iops = ops as f64 / elapsed;
    Ok(Row {
        workload: workload.to_string(),
        engine: "storage-io",
        backend: backend.to_string(),
        io: mode_name(direct),
        regime: if direct { "direct" } else { "cold" },
        qd,
        block_size: block,
        iops,
        mb_s: iops * block as f64 / 1e6,
        lat_us: Latency {
            mean: hist.mean() / 1000.0,
            p50: us(hist.value_at_quantile(0.50)),
            p95: us(hist.value_at_quantile(0.95)),
            p99: us(hist.value_at_quantile(0.99)),
            max: us(hist.max()),
        },
        cpu_us_per_op: if ops > 0 { cpu * 1e6 / ops as f64 } else { 0.0 },
        ops,
        errors,
        qd_achieved: if depth_samples > 0 {
            depth_sum as f64 / depth_samples as f64
        } else {
            0.0
        },
    })
}

fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(s, "# io-patterns report\n");
    let _ = writeln!(
        s,
        "{} cores, kernel {}, file {} ({} MiB), direct I/O granted: {}\n",
        m.cores,
        m.kernel,
        m.file,
        m.file_size_bytes >> 20,
        m.direct_io_granted
    );
    let _ = writeln!(
        s,
        "| workload | backend | io | qd | IOPS | MB/s | p50 us | p99 us | CPU us/op | qd achieved | vs sync |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &report.results {
        let base = report
            .results
            .iter()
            .find(|b| b.backend == "sync" && b.workload == r.workload && b.io == r.io && b.qd == r.qd)
            .map(|b| format!("{:.2}×", r.iops / b.iops.max(1e-9)))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {} |",
            r.workload,
            r.backend,
            r.io,
            r.qd,
            r.iops,
            r.mb_s,
            r.lat_us.p50,
            r.lat_us.p99,
            r.cpu_us_per_op,
            r.qd_achieved,
            base
        );
    }
    s
}
