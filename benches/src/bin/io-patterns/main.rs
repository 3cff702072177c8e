//! io-patterns: the queue-depth benchmark behind `cargo xtask bench`.
//!
//! Runs each cell (workload × backend × I/O mode × page-cache regime × queue depth) for a fixed
//! time on one file, keeping `qd` ops in flight, and the same cells with fio beside ours when fio
//! is installed. Writes `results.json`, `report.md` (tables, ours/fio ratios, guidance) and SVG
//! plots under `target/bench/<timestamp>/`.
//!
//! The driver is three steps, a module each: [`plan`](mod@plan) (what to run), [`run`](mod@run) (running it) and
//! [`render`](mod@render) (the files and the report).

mod plan;
mod render;
mod run;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use storage_io_benches::async_cells;
use storage_io_benches::cell::Workload;
use storage_io_benches::cli;
use storage_io_benches::{Machine, Report, fold_rounds, recover, signal, timestamp, wal};
use storage_io_core::{OpenOptions, open_file};

use crate::plan::{Job, Plan, plan, steps, widen_if_narrow};
use crate::render::write_outputs;
use crate::run::{
    baseline, built_here, cache_cap, check_file_dir, missing_tools, prepare_file, run_cells, this_machine,
};

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
                    || s.regime == wal::REGIME.name()
                    || matches!(s.job, Job::Async(_))
                    || s.regime == recover::REGIME.name()
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
    let machine = Machine {
        file: file.path.display().to_string(),
        file_size_bytes: size,
        direct_io_granted: direct_ok,
        fio: fio_version,
        cache_cap,
        cell_seconds: plan.duration.as_secs_f64(),
        rounds: plan.rounds,
        started,
        ..this_machine()
    };
    let report = Report {
        machine,
        results: fold_rounds(rows),
    };
    write_outputs(&report, &notes, &out_dir, &args, old.as_ref())?;
    Ok(interrupted)
}
