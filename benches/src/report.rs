//! `report.md`: tables per workload × I/O mode × regime with ours/fio ratio columns, the
//! guidance drawn from the same run, and the `--compare` check against an older run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{Report, Row};

mod guidance;
pub use guidance::guidance;

/// A table's rows: one workload, I/O mode and regime.
type Group = (crate::cell::Workload, crate::cell::IoMode, crate::cell::Regime);

/// Groups rows by (workload, io, regime) in a stable order.
fn groups(rows: &[Row]) -> BTreeMap<Group, Vec<&Row>> {
    let mut g: BTreeMap<Group, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        g.entry((r.workload, r.io, r.regime)).or_default().push(r);
    }
    g
}

/// The row of `backend` (ours or fio's) in the same cell as `r`.
fn peer<'a>(rows: &'a [Row], r: &Row, engine: crate::cell::Engine, backend: &str) -> Option<&'a Row> {
    rows.iter().find(|p| {
        p.engine == engine
            && p.backend == backend
            && p.workload == r.workload
            && p.io == r.io
            && p.regime == r.regime
            && p.qd == r.qd
            && p.block_size == r.block_size
    })
}

/// Ours ÷ a peer's IOPS (see [`pair_ratio`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairRatio {
    /// The median of the per-round ratios, or the one ratio of single-round rows.
    pub median: f64,
    /// The lowest and highest per-round ratio, with more than one pair.
    pub spread: Option<(f64, f64)>,
    /// A 95 % confidence interval of the median ([`median_ci95`](crate::median_ci95)), with
    /// 6 pairs or more. When it includes 1.0 the run cannot tell the two apart.
    pub ci95: Option<(f64, f64)>,
    /// Round pairs behind the figures (1 for single-round rows).
    pub pairs: usize,
}

impl PairRatio {
    /// `0.97×`, `0.97× (0.91–1.04)` with the spread of the pairs, and `0.97× (0.91–1.04; CI
    /// 0.95–0.99)` with its confidence interval too.
    pub fn text(&self) -> String {
        let m = self.median;
        match (self.spread, self.ci95) {
            (Some((lo, hi)), Some((clo, chi))) => format!("{m:.2}× ({lo:.2}–{hi:.2}; CI {clo:.2}–{chi:.2})"),
            (Some((lo, hi)), None) => format!("{m:.2}× ({lo:.2}–{hi:.2})"),
            _ => format!("{m:.2}×"),
        }
    }
}

/// Ours ÷ the peer's IOPS, pair by pair: round i of ours against round i of the peer (they ran
/// back to back), so drift of a shared disk between rounds cancels. Gives the median ratio and,
/// when there was more than one pair, the lowest and highest, and from 6 pairs a 95 %
/// confidence interval of the median. Rows of one round fall back to one ratio.
pub fn pair_ratio(ours: &Row, peer: &Row) -> Option<PairRatio> {
    let n = ours.iops_rounds.len();
    if n > 1 && n == peer.iops_rounds.len() {
        let pairs: Vec<f64> = ours
            .iops_rounds
            .iter()
            .zip(&peer.iops_rounds)
            .filter(|(_, p)| **p > 0.0)
            .map(|(o, p)| o / p)
            .collect();
        if pairs.len() == n {
            let lo = pairs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = pairs.iter().copied().fold(0.0, f64::max);
            return Some(PairRatio {
                median: crate::median(&pairs),
                spread: Some((lo, hi)),
                ci95: crate::median_ci95(&pairs),
                pairs: n,
            });
        }
    }
    (peer.iops > 0.0).then(|| PairRatio {
        median: ours.iops / peer.iops,
        spread: None,
        ci95: None,
        pairs: 1,
    })
}

fn pair_ratio_text(ours: &Row, peer: &Row) -> String {
    pair_ratio(ours, peer).map_or_else(|| "–".into(), |r| r.text())
}

/// `rand_read direct uncached qd 4`: which cell a guidance line means.
fn cell_name(r: &Row) -> String {
    format!("{} {} {} qd {}", r.workload, r.io, r.regime, r.qd)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// A driver-side measurement, or "–" where the engine (fio) does not report it.
fn measured(x: f64) -> String {
    if x > 0.0 { format!("{x:.1}") } else { "–".into() }
}

/// "µs each × calls per op", or "–" where none were measured.
fn submit_calls(r: &Row) -> String {
    if r.submit_calls_per_op > 0.0 {
        format!("{:.1} µs × {:.2}", r.submit_call_us, r.submit_calls_per_op)
    } else {
        "–".into()
    }
}

fn kilo(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// The whole report.md text.
pub fn markdown(report: &Report, notes: &[String]) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(s, "# storage-io bench report ({})\n", m.started);
    let _ = writeln!(
        s,
        "{} cores, {:.1} GiB RAM, kernel {}; file `{}` ({} MiB), O_DIRECT granted: {}; {} s per cell, \
         {} round(s) per cell (median shown); fio: {}; page-cache cap: {}.\n",
        m.cores,
        m.mem_total_bytes as f64 / f64::from(1u32 << 30),
        m.kernel,
        m.file,
        m.file_size_bytes >> 20,
        m.direct_io_granted,
        // 0.25 stays 0.25 and 2 stays 2: the shortest exact form, to the millisecond.
        (m.cell_seconds * 1000.0).round() / 1000.0,
        m.rounds,
        m.fio.as_deref().unwrap_or("not run"),
        m.cache_cap
    );
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    if !notes.is_empty() {
        s.push('\n');
    }
    let _ = writeln!(s, "{LEGEND}");
    let closed: Vec<Row> = (report.results.iter())
        .filter(|r| !crate::openloop::is_open(r))
        .cloned()
        .collect();
    for ((workload, io, regime), rows) in groups(&closed) {
        if !crate::async_cells::is_async(workload) {
            cell_table(&mut s, report, (workload.name(), io.name(), regime.name()), &rows);
        }
    }
    s.push_str(&crate::wal::section(&report.results));
    s.push_str(&crate::async_report::section(&report.results));
    s.push_str(&crate::recover::section(&report.results));
    s.push_str(&crate::openloop::section(&report.results));
    let (_, rest): (Vec<Row>, Vec<Row>) = closed
        .into_iter()
        .partition(|r| crate::async_cells::is_async(r.workload));
    if !rest.is_empty() {
        s.push_str(&guidance(&rest)); // a run of only async cells has its verdicts above
    }
    s
}

/// One table: every series of a (workload, mode, regime) group, with its fio peer's ratios.
fn cell_table(s: &mut String, report: &Report, (workload, io, regime): (&str, &str, &str), rows: &[&Row]) {
    let _ = writeln!(s, "## {workload} · {io} · {regime}\n");
    let _ = writeln!(
        s,
        "| series | qd | IOPS | MB/s | mean | p50 | p95 | p99 | max | CPU µs/op | qd achieved | qd in backend | per wait | submit calls | cached % | vs fio | CPU vs fio |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| (a.engine.name(), a.series(), a.qd).cmp(&(b.engine.name(), b.series(), b.qd)));
    for r in sorted {
        let fio_peer = if r.engine == crate::cell::Engine::Fio {
            None
        } else if r.backend.starts_with("uring") {
            peer(&report.results, r, crate::cell::Engine::Fio, "io_uring+fixed")
        } else {
            peer(&report.results, r, crate::cell::Engine::Fio, "psync")
        };
        let (vs, cpu_vs) = match fio_peer {
            Some(p) => (
                format!("{} {}", pair_ratio_text(r, p), p.backend),
                ratio(r.cpu_us_per_op, p.cpu_us_per_op),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            r.series(),
            r.qd,
            kilo(r.iops),
            r.mb_s,
            r.lat_us.mean,
            r.lat_us.p50,
            r.lat_us.p95,
            r.lat_us.p99,
            r.lat_us.max,
            r.cpu_us_per_op,
            measured(r.qd_achieved),
            measured(r.backend_qd),
            measured(r.completions_per_wait),
            submit_calls(r),
            r.cache_resident_pct.map_or("–".into(), |p| format!("{p:.0}")),
            vs,
            cpu_vs
        );
    }
    s.push('\n');
}

/// What the columns of the cell tables mean, before the first one.
const LEGEND: &str = "Latency is submit → completion as the caller sees it (µs), from the moment the caller \
         starts refilling its free slots, so an op's time waiting behind the submits of ops refilled \
         before it counts (fio's total latency counts it too). CPU is user+system time of the whole \
         process per I/O (fio: its own usr+sys). `vs fio` divides our IOPS by fio's in the same \
         cell: io_uring+fixed for our io_uring backends, psync (qd threads) for sync and thread_pool. \
         With several rounds it is the median of the per-round ratios (ours and fio ran back to back \
         in each round, fio first in every other round), with the lowest and highest in brackets and, \
         from 6 rounds, a 95 % confidence interval of the median (`CI`): where it includes 1.00× \
         the run cannot tell the two apart. \
         `qd achieved` is the mean number of ops outstanding each time the driver waited; `qd in \
         backend` the mean number the backend held (its ops' total submit → completion time over \
         the cell's wall time, by Little's law; for the scheduler, summed over its workers' \
         backends): the difference was in the caller's or the scheduler's hands, not the kernel's. \
         `submit calls` gives the mean wall time of a system call that only handed queued requests \
         to the kernel, times how many such calls each I/O made (io_uring backends; the rest went \
         in with a wait): on a VM mostly the cost of notifying the virtual disk, which decides how \
         much submitting in batches (`STORAGE_IO_SUBMIT_BATCH`) is worth. \
         `cached %` is the share of the file in the page cache when the cell ended (buffered cells).\n";

/// A cell that got worse between two runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    /// The cell ([`Row::key`]).
    pub key: String,
    /// What got worse, with both numbers.
    pub what: String,
}

/// Compares `new` with `old` cell by cell: IOPS down by more than `iops_drop` (0.10 = 10 %) or
/// p99 up by more than `p99_rise` is a regression. Cells in only one run are skipped.
pub fn compare(old: &Report, new: &Report, iops_drop: f64, p99_rise: f64) -> Vec<Regression> {
    let mut out = Vec::new();
    for n in &new.results {
        let key = n.key();
        let Some(o) = old.results.iter().find(|o| o.key() == key) else {
            continue;
        };
        if o.iops > 0.0 && n.iops < o.iops * (1.0 - iops_drop) {
            out.push(Regression {
                key: key.clone(),
                what: format!(
                    "IOPS {} → {} ({:+.0} %)",
                    kilo(o.iops),
                    kilo(n.iops),
                    (n.iops / o.iops - 1.0) * 100.0
                ),
            });
        }
        if o.lat_us.p99 > 0.0 && n.lat_us.p99 > o.lat_us.p99 * (1.0 + p99_rise) {
            out.push(Regression {
                key,
                what: format!(
                    "p99 {:.0} µs → {:.0} µs ({:+.0} %)",
                    o.lat_us.p99,
                    n.lat_us.p99,
                    (n.lat_us.p99 / o.lat_us.p99 - 1.0) * 100.0
                ),
            });
        }
    }
    out
}

/// The `--compare` section of the report.
pub fn compare_section(old_name: &str, old: &Report, new: &Report, found: &[Regression]) -> String {
    let shared = new
        .results
        .iter()
        .filter(|n| old.results.iter().any(|o| o.key() == n.key()))
        .count();
    let mut s = format!("\n## Compared with {old_name}\n\n{shared} cells in both runs; ");
    if found.is_empty() {
        s.push_str(&format!(
            "no regressions (IOPS −{:.0} % or p99 +{:.0} % would be flagged).\n",
            crate::verdict::THRESHOLDS.regression_iops_drop * 100.0,
            crate::verdict::THRESHOLDS.regression_p99_rise * 100.0
        ));
    } else {
        let _ = writeln!(s, "{} regression(s):\n", found.len());
        for r in found {
            let _ = writeln!(s, "- **{}**: {}", r.key, r.what);
        }
    }
    s
}

#[cfg(test)]
mod tests;
