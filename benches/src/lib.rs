//! The queue-depth benchmark behind `cargo xtask bench`: our engine's cells, fio's cells on the
//! same file, page-cache regimes, the report with its guidance, SVG plots and `--compare`.
//!
//! The binary `io-patterns` drives it; this library holds the parts that have tests:
//!
//! - [`cli`]: the command line, the names it accepts and `--list` (xtask compiles it too);
//! - [`cell`]: what every cell of ours shares (the workload and backend names, building a
//!   backend, CPU time, scratch directories, the row a cell makes);
//! - [`engine`]: the raw cells (`seq_read`, `rand_read`, `rand_write`, `multistream_scan`) and
//!   the dispatch to the others;
//! - [`sched`]: the page scheduler's cells (`scheduler_rand_read`, `scheduler_batch_read`,
//!   `scheduler_seq_scan`) and their raw peer `raw_round_read`;
//! - [`segment`]: the async file API's cells (`segment_append`, `segment_read`);
//! - [`async_cells`], [`async_peers`] and [`async_report`]: the async file API beside the Rust
//!   async-I/O runtimes (`async_rand_read`, `async_append_sync`, `async_seq_read`);
//! - [`wal`] and [`peers`]: `wal_commit`, with okaywal, RocksDB and fio's durable writes beside;
//! - [`openloop`]: latency at a given load (Poisson arrivals, timed from the intended
//!   arrival), with fio at the same rate;
//! - [`recover`]: `wal_recover`, reopening a log cold, with fio's sequential read and okaywal beside;
//! - [`fio`]: fio's cells; [`cache`]: the page-cache regimes; [`report`] and [`plot`]: the
//!   report, its guidance and its SVGs; [`verdict`]: the thresholds of its verdicts in one
//!   table; [`signal`]: Ctrl-C.

pub mod async_cells;
pub mod async_peers;
pub mod async_report;
pub mod cache;
pub mod cell;
pub mod cli;
pub mod engine;
pub mod fio;
pub mod openloop;
pub mod peers;
pub mod plot;
pub mod recover;
pub mod report;
pub mod sched;
pub mod segment;
pub mod signal;
pub mod verdict;
pub mod wal;

/// `Row::engine` of a WAL cell (the WAL cells live in `wal.rs`).
pub const ENGINE_WAL: cell::Engine = cell::Engine::Wal;
/// `Row::engine` of a WAL cell whose committers are async tasks (`commit_async`).
pub const ENGINE_WAL_ASYNC: cell::Engine = cell::Engine::WalAsync;
/// `Row::engine` of an okaywal cell (the peers live in `peers.rs`).
pub const ENGINE_OKAYWAL: cell::Engine = cell::Engine::Okaywal;
/// `Row::engine` of a RocksDB cell.
pub const ENGINE_ROCKSDB: cell::Engine = cell::Engine::Rocksdb;
/// `Row::engine` of the raw write + fdatasync peer.
pub const ENGINE_RAW: cell::Engine = cell::Engine::Raw;

use serde::{Deserialize, Serialize};

/// Latency percentiles of a cell, in microseconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile (0 in rows from before it was recorded).
    #[serde(default)]
    pub p999: f64,
    /// Largest seen.
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds, in microseconds.
    pub fn from_histogram_ns(hist: &hdrhistogram::Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            mean: hist.mean() / 1000.0,
            p50: us(hist.value_at_quantile(0.50)),
            p95: us(hist.value_at_quantile(0.95)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
        }
    }
}

/// One measured cell: the JSON row of `results.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// One of [`cell::WORKLOADS`] (`seq_read`, `rand_read`, `rand_write`, `multistream_scan`,
    /// `wal_commit`, the `scheduler_*` and `raw_round_read` cells, `segment_append`, `segment_read`).
    pub workload: cell::Workload,
    /// `storage-io`, `fio`, a WAL, or an async peer.
    pub engine: cell::Engine,
    /// Ours: `sync`, `thread_pool`, `uring`, `uring_nofixed`, `uring_sqpoll`, `uring_heapbuf`,
    /// `uring_nowait_off`, `thread_pool_nowait_off`; fio: `psync`,
    /// `io_uring`, `io_uring+fixed`.
    pub backend: String,
    /// `direct` or `buffered`.
    pub io: cell::IoMode,
    /// `hot`, `pressure`, `thrash`, or `uncached` (direct I/O: no cache in front of the disk).
    pub regime: cell::Regime,
    /// Queue depth asked for.
    pub qd: usize,
    /// Bytes per I/O.
    pub block_size: usize,
    /// Completed I/Os per second (median over rounds).
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mb_s: f64,
    /// Latency from submit to completion seen by the caller.
    pub lat_us: Latency,
    /// User + system CPU time of the whole process per completed I/O.
    pub cpu_us_per_op: f64,
    /// I/Os completed.
    pub ops: u64,
    /// I/Os that failed.
    #[serde(default)]
    pub errors: u64,
    /// Mean ops in flight, sampled each time the driver waited (the queue depth achieved); 0 for fio.
    #[serde(default)]
    pub qd_achieved: f64,
    /// Mean completions handed back per wait (how bunched completions arrive); 0 for fio.
    #[serde(default)]
    pub completions_per_wait: f64,
    /// Mean ops the backend held over the cell (its ops' total submit → completion time over
    /// wall time, by Little's law); for scheduler cells, summed over the workers' backends.
    /// Below `qd`, the rest of the queue depth was in the caller's (or the scheduler's) hands
    /// instead of the kernel's. 0 where not measured (fio, the WAL cells).
    #[serde(default)]
    pub backend_qd: f64,
    /// Mean wall time, µs, of a system call that only handed queued requests to the kernel
    /// (io_uring backends; see `IoStats::mean_submit_call`). On a VM most of it is notifying the
    /// virtual disk, and it decides how much batching submissions is worth. 0 where not measured.
    #[serde(default)]
    pub submit_call_us: f64,
    /// Submit-only system calls per op (`submit_call_us` is the mean of these); 0 where not
    /// measured.
    #[serde(default)]
    pub submit_calls_per_op: f64,
    /// Concurrent sequential streams (multistream_scan only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<usize>,
    /// Worker threads of the scheduler (`scheduler_*` cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched_workers: Option<usize>,
    /// Percent of the file in the page cache when the cell ended (buffered cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_resident_pct: Option<f64>,
    /// Voluntary + involuntary context switches of the process per op (the async cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_switches_per_op: Option<f64>,
    /// Peak growth of the process's RSS during the cell, bytes (`wal_recover` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_peak_bytes: Option<u64>,
    /// Open-loop cells: the offered arrival rate, ops/s (Poisson arrivals; latency from each
    /// op's intended arrival). `None` for closed-loop cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    /// Open-loop cells given as `--rates`: the offered rate in percent of the cell's
    /// closed-loop peak in the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_pct: Option<f64>,
    /// Open-loop cells of ours: the 99th percentile of the wait from intended arrival to issue,
    /// µs (the driver late, or the in-flight cap full); the rest of the latency is the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_delay_us_p99: Option<f64>,
    /// IOPS of every round, when more than one was run; `iops` is their median.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iops_rounds: Vec<f64>,
}

impl Row {
    /// What identifies a cell across runs (for medians and `--compare`).
    pub fn key(&self) -> String {
        let rate = self
            .offered_rate
            .map_or(String::new(), |r| format!("/rate{r:.0}"));
        format!(
            "{}/{}/{}/{}/{}/qd{}/bs{}{rate}",
            self.workload, self.engine, self.backend, self.io, self.regime, self.qd, self.block_size
        )
    }

    /// "uring" or "fio io_uring+fixed": the series name in tables and plots.
    pub fn series(&self) -> String {
        if self.engine == crate::cell::Engine::Fio {
            format!("fio {}", self.backend)
        } else if self.engine == ENGINE_RAW && self.io == crate::cell::IoMode::Direct {
            format!("{} raw 4K O_DIRECT|O_DSYNC write", self.backend)
        } else if self.engine == ENGINE_RAW {
            "raw 4K pwrite+fdatasync (caller's thread)".to_string()
        } else if self.engine == ENGINE_WAL {
            format!("wal on {}", self.backend)
        } else if self.engine == ENGINE_WAL_ASYNC {
            format!("wal tasks on {}", self.backend)
        } else if let Some(n) = self.sched_workers {
            let s = if n == 1 { "" } else { "s" };
            format!("{} ({n} scheduler worker{s})", self.backend)
        } else {
            self.backend.clone()
        }
    }
}

/// The machine and run the results come from.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Total RAM in bytes.
    pub mem_total_bytes: u64,
    /// The file measured.
    pub file: String,
    /// Its size.
    pub file_size_bytes: u64,
    /// Whether the file system granted O_DIRECT.
    pub direct_io_granted: bool,
    /// fio's version, when fio was run.
    pub fio: Option<String>,
    /// How the page cache was capped for `pressure`/`thrash`, or why it could not be.
    pub cache_cap: String,
    /// Seconds per cell.
    pub cell_seconds: f64,
    /// Rounds per cell (median reported).
    pub rounds: usize,
    /// When the run started (UTC, `YYYYMMDD-HHMMSS`).
    pub started: String,
}

/// `results.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Report {
    /// Where the numbers come from.
    pub machine: Machine,
    /// One row per cell.
    pub results: Vec<Row>,
}

/// The median of `values` (mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A distribution-free 95 % confidence interval for the median of `values`: the order
/// statistics x(j) and x(n + 1 − j) of the sorted values, where j is the largest rank with
/// P(Binomial(n, ½) < j) ≤ 2.5 %. It assumes only that the values are independent draws of one
/// distribution (for the bench: rounds of a back-to-back pair). `None` for fewer than 6 finite
/// values, where even the whole range covers less than 95 %.
///
/// ```
/// use storage_io_benches::median_ci95;
///
/// assert_eq!(median_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
/// // With 6 values only the whole range covers 95 %; with 20 it is the 6th to the 15th.
/// assert_eq!(median_ci95(&[3.0, 1.0, 2.0, 6.0, 5.0, 4.0]), Some((1.0, 6.0)));
/// let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
/// assert_eq!(median_ci95(&twenty), Some((6.0, 15.0)));
/// ```
pub fn median_ci95(values: &[f64]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n < 6 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // P(B = i) for B ~ Binomial(n, ½), from P(B = 0) = 2^-n; `below` sums P(B < j).
    let mut p = 0.5f64.powi(n as i32);
    let mut below = 0.0;
    let mut j = 0;
    while j < n / 2 && below + p <= 0.025 {
        below += p;
        p = p * (n - j) as f64 / (j + 1) as f64;
        j += 1;
    }
    // j ≥ 1 holds from n = 6 (2^-6 < 2.5 %); ranks are 1-based.
    let j = j.max(1);
    Some((v[j - 1], v[n - j]))
}

/// Folds the rounds of each cell into one row: the round with the median IOPS, carrying every
/// round's IOPS in `iops_rounds`. Order of first appearance is kept.
pub fn fold_rounds(rows: Vec<Row>) -> Vec<Row> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<Row>> = std::collections::HashMap::new();
    for r in rows {
        let k = r.key();
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    order
        .into_iter()
        .filter_map(|k| {
            let mut g = groups.remove(&k)?;
            if g.len() == 1 {
                return g.pop();
            }
            let runs: Vec<f64> = g.iter().map(|r| r.iops).collect();
            if g[0].offered_rate.is_some() {
                // Open loop: every round offers the same rate; the median round is by p99.
                g.sort_by(|a, b| a.lat_us.p99.total_cmp(&b.lat_us.p99));
            } else {
                g.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            }
            let mut row = g.swap_remove(g.len() / 2);
            row.iops_rounds = runs;
            Some(row)
        })
        .collect()
}

/// UTC `YYYYMMDD-HHMMSS` for directory names.
pub fn timestamp() -> String {
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

/// A 4 KiB rand_read row for tests.
#[cfg(test)]
pub(crate) fn test_row(engine: &str, backend: &str, io: &str, regime: &str, qd: usize, iops: f64) -> Row {
    Row {
        workload: crate::cell::Workload::RandRead,
        engine: crate::cell::Engine::named(engine).expect("a test names a known engine"),
        backend: backend.into(),
        io: crate::cell::IoMode::of(io == "direct"),
        regime: crate::cell::Regime::named(regime).expect("a test names a known regime"),
        qd,
        block_size: 4096,
        iops,
        ..Row::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &str, iops: f64) -> Row {
        test_row("storage-io", backend, "direct", "uncached", 4, iops)
    }

    #[test]
    fn rounds_fold_to_the_median_round() {
        let folded = fold_rounds(vec![
            row("uring", 10.0),
            row("sync", 5.0),
            row("uring", 30.0),
            row("uring", 20.0),
        ]);
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].backend, "uring");
        assert_eq!(folded[0].iops, 20.0);
        assert_eq!(folded[0].iops_rounds, vec![10.0, 30.0, 20.0]);
        assert_eq!(folded[1].iops, 5.0);
        assert!(folded[1].iops_rounds.is_empty());
    }

    #[test]
    fn scheduler_series_name_their_worker_count_and_keep_it_through_folding() {
        let sched = |workers, iops| Row {
            workload: crate::cell::Workload::SchedulerRandRead,
            sched_workers: Some(workers),
            ..row("uring", iops)
        };
        assert_eq!(sched(1, 1.0).series(), "uring (1 scheduler worker)");
        assert_eq!(sched(2, 1.0).series(), "uring (2 scheduler workers)");
        assert_eq!(
            row("uring", 1.0).series(),
            "uring",
            "raw rows have no worker count"
        );
        let folded = fold_rounds(vec![sched(2, 3.0), sched(2, 1.0), sched(2, 2.0)]);
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].sched_workers, Some(2));
        let json = serde_json::to_string(&row("uring", 1.0)).unwrap();
        assert!(!json.contains("sched_workers"), "absent for raw rows: {json}");
    }

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn timestamps_are_sortable_names() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert_eq!(&t[8..9], "-");
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn typed_rows_read_and_write_the_results_json_of_earlier_runs() {
        // Rows as results.json stored them before the row's fields were typed (no p999, no
        // open-loop fields): every workload, engine and mode a smoke run writes.
        let old_text = include_str!("../tests/data/results-before-typed-rows.json");
        let old: Report = serde_json::from_str(old_text).expect("an earlier results.json parses");
        assert!(old.results.len() > 20);
        assert!(
            old.results
                .iter()
                .any(|r| r.workload == cell::Workload::WalCommit)
        );
        assert!(old.results.iter().any(|r| r.io == cell::IoMode::Buffered));
        assert!(
            old.results
                .iter()
                .all(|r| r.lat_us.p999 == 0.0 && r.offered_rate.is_none())
        );
        // Written back, each row's names are the strings they were, so old and new compare.
        let old_json: serde_json::Value = serde_json::from_str(old_text).unwrap();
        let new_json = serde_json::to_value(&old).unwrap();
        for (a, b) in old_json["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(new_json["results"].as_array().unwrap())
        {
            for field in ["workload", "engine", "backend", "io", "regime", "qd"] {
                assert_eq!(a[field], b[field], "{field}");
            }
        }
        let again: Report = serde_json::from_value(new_json).unwrap();
        let keys = |r: &Report| r.results.iter().map(Row::key).collect::<Vec<_>>();
        assert_eq!(keys(&old), keys(&again));
        assert!(report::compare(&old, &again, 0.10, 0.25).is_empty());
        // Every async system's name is an engine (async_cells::row parses it).
        for system in async_peers::AsyncSystem::ALL {
            assert!(cell::Engine::named(system.name()).is_some(), "{}", system.name());
        }
        // A name no build knows is an error that says so, not a silent default.
        let bad = old_text.replacen("\"rand_read\"", "\"rand_reed\"", 1);
        let err = serde_json::from_str::<Report>(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown workload \"rand_reed\""), "{err}");
    }
}
