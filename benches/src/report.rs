//! `report.md`: tables per workload × I/O mode × regime with ours/fio ratio columns, the
//! guidance drawn from the same run, and the `--compare` check against an older run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::{Report, Row};

/// Groups rows by (workload, io, regime) in a stable order.
fn groups(rows: &[Row]) -> BTreeMap<(String, String, String), Vec<&Row>> {
    let mut g: BTreeMap<(String, String, String), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        g.entry((r.workload.clone(), r.io.clone(), r.regime.clone()))
            .or_default()
            .push(r);
    }
    g
}

/// The row of `backend` (ours or fio's) in the same cell as `r`.
fn peer<'a>(rows: &'a [Row], r: &Row, engine: &str, backend: &str) -> Option<&'a Row> {
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

/// What the confidence intervals of ours ÷ fio say: which cells are ahead or behind beyond the
/// run's noise, and which it cannot tell apart. `None` when no cell had 6 rounds.
fn fio_verdict(ratios: &[(PairRatio, &Row)]) -> Option<String> {
    let (mut ahead, mut behind, mut even) = (Vec::new(), Vec::new(), Vec::new());
    for (pr, r) in ratios {
        let Some((lo, hi)) = pr.ci95 else { continue };
        let cell = format!("{} ({:.2}–{:.2})", cell_name(r), lo, hi);
        if lo > 1.0 {
            ahead.push(cell);
        } else if hi < 1.0 {
            behind.push(cell);
        } else {
            even.push(cell);
        }
    }
    if ahead.is_empty() && behind.is_empty() && even.is_empty() {
        return None;
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    // Only where an interval straddles 1.0 and fewer pairs than the suggestion made it.
    let hint = if !even.is_empty() && ratios.iter().any(|(pr, _)| pr.ci95.is_some() && pr.pairs < 40) {
        " (more or shorter rounds narrow an interval: `--rounds 40 --duration 0.25`)"
    } else {
        ""
    };
    // The interval covers this run's rounds only. A disk with slow and fast phases changes the
    // ratio itself from phase to phase, so runs minutes apart can disagree beyond it.
    let confirm = if ahead.is_empty() && behind.is_empty() {
        ""
    } else {
        " An interval speaks for this run's rounds only: where the disk has slow and fast phases \
         (a VM's does), the ratio itself moves with them, so confirm a verdict with a second run."
    };
    Some(format!(
        "- By the 95 % confidence intervals of those medians: ahead of fio in {}; behind in {}; \
         not told apart in {}{hint}.{confirm}",
        list(&ahead),
        list(&behind),
        list(&even)
    ))
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
    for ((workload, io, regime), rows) in groups(&report.results) {
        if !crate::async_cells::is_async_name(&workload) {
            cell_table(&mut s, report, (&workload, &io, &regime), &rows);
        }
    }
    s.push_str(&crate::wal::section(&report.results));
    s.push_str(&crate::async_report::section(&report.results));
    s.push_str(&crate::recover::section(&report.results));
    let (_, rest): (Vec<Row>, Vec<Row>) =
        (report.results.iter().cloned()).partition(|r| crate::async_cells::is_async_name(&r.workload));
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
    sorted.sort_by(|a, b| (a.engine.as_str(), a.series(), a.qd).cmp(&(b.engine.as_str(), b.series(), b.qd)));
    for r in sorted {
        let fio_peer = if r.engine == "fio" {
            None
        } else if r.backend.starts_with("uring") {
            peer(&report.results, r, "fio", "io_uring+fixed")
        } else {
            peer(&report.results, r, "fio", "psync")
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

/// Our best row (by IOPS) among `rows` matching the filter.
fn best(rows: &[Row], f: impl Fn(&Row) -> bool) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.engine == "storage-io" && f(r))
        .max_by(|a, b| a.iops.total_cmp(&b.iops))
}

/// The median of the per-round ratios of two of our rows, as `text()` shows it.
fn ours_vs(a: &Row, b: &Row) -> String {
    pair_ratio(a, b).map_or_else(|| "–".into(), |r| r.text())
}

/// The guidance lines about the page-cache fast path, if the run has the cells for them.
fn fast_path_guidance(rows: &[Row], qds: &BTreeSet<usize>) -> Option<String> {
    let mut s = String::new();
    // (hot cells where io_uring held ≥ 0.95× sync, hot cells) and (other cells where io_uring
    // held ≥ 0.97× its fast path off, other cells).
    let (mut hot_ok, mut hot, mut cold_ok, mut cold) = (0, 0, 0, 0);
    for ((w, io, regime), group) in groups(rows) {
        let of = |b: &str, q: usize| {
            group
                .iter()
                .find(|r| r.engine == "storage-io" && r.backend == b && r.qd == q)
                .copied()
        };
        let mut parts = Vec::new();
        for &q in qds {
            for (on, off) in [
                ("uring", "uring_nowait_off"),
                ("thread_pool", "thread_pool_nowait_off"),
            ] {
                let Some(a) = of(on, q) else { continue };
                let mut bits = Vec::new();
                if let Some(b) = of(off, q) {
                    bits.push(format!("{} of off", ours_vs(a, b)));
                    if on == "uring" && regime != "hot" {
                        cold += 1;
                        cold_ok += usize::from(pair_ratio(a, b).is_some_and(|r| r.median >= 0.97));
                    }
                }
                if let Some(y) = of("sync", q).filter(|_| io == "buffered") {
                    bits.push(format!("{} of sync", ours_vs(a, y)));
                    if on == "uring" && regime == "hot" {
                        hot += 1;
                        hot_ok += usize::from(pair_ratio(a, y).is_some_and(|r| r.median >= 0.95));
                    }
                }
                if !bits.is_empty() && (io == "buffered" || of(off, q).is_some()) {
                    parts.push(format!("{on} qd {q} {}", bits.join(", ")));
                }
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(
                s,
                "- {w} · {io} · {regime}: page-cache fast path (`nowait_reads`, IOPS on ÷ off, and ÷ sync) — {}.",
                parts.join("; ")
            );
        }
    }
    let mut facts = Vec::new();
    if hot > 0 {
        facts.push(format!(
            "in {hot_ok} of {hot} hot cells io_uring held ≥ 0.95× the inline sync backend"
        ));
    }
    if cold > 0 {
        facts.push(format!(
            "in {cold_ok} of {cold} uncached cells ≥ 0.97× io_uring with the fast path off"
        ));
    }
    if !facts.is_empty() {
        let verdict = match (hot > 0 && cold > 0, hot_ok == hot && cold_ok == cold) {
            (true, true) => "auto (io_uring) now holds its own on hot and cold data alike",
            (_, false) => "auto (io_uring) does not yet hold its own everywhere",
            (false, true) => {
                "this run has only hot or only uncached cells, so it cannot say whether auto holds on both"
            }
        };
        let _ = writeln!(s, "- {verdict}: {}.", facts.join(", and "));
    }
    (!s.is_empty()).then_some(s)
}

/// The guidance section, drawn only from `rows`.
pub fn guidance(rows: &[Row]) -> String {
    let mut s = String::from("## Guidance (from this run's numbers)\n\n");
    let qds: BTreeSet<usize> = rows.iter().map(|r| r.qd).collect();
    let cold = direct_vs_buffered(&mut s, rows, &qds);
    let mut said = cold.said;
    said |= backend_lines(&mut s, rows, &qds);
    // The page-cache fast path (`nowait_reads`): each queued backend with it on and off, and
    // against the inline backend, in the buffered cells; then whether `auto` (io_uring with the
    // fast path) now holds its own on hot and cold data alike.
    if let Some(lines) = fast_path_guidance(rows, &qds) {
        said = true;
        s.push_str(&lines);
    }
    said |= fio_lines(&mut s, rows);
    if let Some(choice) = backend_choice(rows) {
        said = true;
        let _ = writeln!(s, "{}", choice.facts);
    }
    // The scheduler against its raw peer: the IOPS ratio, and where the missing depth went.
    for line in scheduler_lines(rows) {
        said = true;
        let _ = writeln!(s, "{line}");
    }
    let advice = advice(rows, &cold);
    if !advice.is_empty() {
        said = true;
        let _ = writeln!(s, "\n**What to configure:**\n");
        for a in advice {
            let _ = writeln!(s, "- {a}");
        }
    }
    if !said {
        s.push_str("Not enough cells in this run to compare (run with more backends, modes or depths).\n");
    }
    s
}

/// Which workloads direct I/O won with the page cache capped, and which buffered I/O won.
#[derive(Default)]
struct Cold {
    /// Anything was said.
    said: bool,
    direct: Vec<String>,
    buffered: Vec<String>,
}

/// Direct vs buffered, per workload and buffered regime (best of ours at each depth).
fn direct_vs_buffered(s: &mut String, rows: &[Row], qds: &BTreeSet<usize>) -> Cold {
    let workloads: BTreeSet<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
    let mut cold = Cold::default();
    for &w in &workloads {
        let regimes: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.workload == w && r.io == "buffered")
            .map(|r| r.regime.as_str())
            .collect();
        for regime in regimes {
            let (mut wins, mut total, mut cells) = (0, 0, Vec::new());
            for &q in qds {
                let d = best(rows, |r| r.workload == w && r.io == "direct" && r.qd == q);
                let b = best(rows, |r| {
                    r.workload == w && r.io == "buffered" && r.regime == regime && r.qd == q
                });
                if let (Some(d), Some(b)) = (d, b) {
                    total += 1;
                    wins += usize::from(d.iops > b.iops);
                    cells.push(format!(
                        "qd {q}: {} {} vs {} {}",
                        d.backend,
                        kilo(d.iops),
                        b.backend,
                        kilo(b.iops)
                    ));
                }
            }
            if total == 0 {
                continue;
            }
            cold.said = true;
            let verdict = if wins == total {
                "**direct I/O wins at every queue depth**".to_string()
            } else if wins == 0 {
                "**buffered I/O wins at every queue depth**".to_string()
            } else {
                format!("direct I/O wins at {wins} of {total} queue depths")
            };
            if regime != "hot" {
                if 2 * wins > total {
                    cold.direct.push(format!("{w} ({regime})"));
                } else {
                    cold.buffered.push(format!("{w} ({regime})"));
                }
            }
            let _ = writeln!(
                s,
                "- {w}, page cache {regime}: {verdict} (best of ours, direct vs buffered IOPS; {}).",
                cells.join("; ")
            );
        }
    }
    cold
}

/// io_uring vs the thread pool vs sync per cell group, and where the curves cross.
fn backend_lines(s: &mut String, rows: &[Row], qds: &BTreeSet<usize>) -> bool {
    let mut said = false;
    for ((w, io, regime), group) in groups(rows) {
        let of = |b: &str, q: usize| {
            group
                .iter()
                .find(|r| r.engine == "storage-io" && r.backend == b && r.qd == q)
        };
        let mut crossing = None;
        let mut parts = Vec::new();
        for &q in qds {
            if let (Some(u), Some(t)) = (of("uring", q), of("thread_pool", q)) {
                parts.push(format!("qd {q} {}", ratio(u.iops, t.iops)));
                if u.iops > t.iops {
                    crossing.get_or_insert(q);
                } else {
                    crossing = None;
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        said = true;
        let cross = match crossing {
            Some(q) if Some(&q) == qds.first() => "io_uring leads from the lowest depth".to_string(),
            Some(q) => format!("io_uring overtakes the thread pool at qd {q} and stays ahead"),
            None => "the thread pool ends ahead of io_uring".to_string(),
        };
        let sync_note = qds
            .iter()
            .rev()
            .find_map(|&q| Some((q, of("uring", q)?, of("sync", q)?)))
            .map(|(q, u, y)| format!("; vs sync at qd {q}: {}", ratio(u.iops, y.iops)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "- {w} · {io} · {regime}: io_uring / thread pool IOPS {} — {cross}{sync_note}.",
            parts.join(", ")
        );
    }
    said
}

/// Our io_uring backend against fio io_uring+fixedbufs+registerfiles, and the verdict.
fn fio_lines(s: &mut String, rows: &[Row]) -> bool {
    let mut said = false;
    let mut ratios = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.engine == "storage-io" && r.backend == "uring")
    {
        if let Some(pr) = peer(rows, r, "fio", "io_uring+fixed").and_then(|p| pair_ratio(r, p)) {
            ratios.push((pr, r));
        }
    }
    if !ratios.is_empty() {
        said = true;
        let values: Vec<f64> = ratios.iter().map(|(pr, _)| pr.median).collect();
        let (worst, at) = ratios
            .iter()
            .min_by(|a, b| a.0.median.total_cmp(&b.0.median))
            .map(|(pr, r)| (pr.median, cell_name(r)))
            .unwrap_or_default();
        let spreads: Vec<(f64, f64)> = ratios.iter().filter_map(|(pr, _)| pr.spread).collect();
        let spread = if spreads.is_empty() {
            String::new()
        } else {
            format!(
                "; single pairs ranged {:.2}–{:.2}×",
                spreads.iter().map(|s| s.0).fold(f64::INFINITY, f64::min),
                spreads.iter().map(|s| s.1).fold(0.0, f64::max)
            )
        };
        let _ = writeln!(
            s,
            "- Our io_uring backend vs fio io_uring+fixedbufs+registerfiles: median {:.2}× over {} cells, lowest cell {:.2}× ({at}){spread}.",
            crate::median(&values),
            values.len(),
            worst
        );
        if let Some(line) = fio_verdict(&ratios) {
            let _ = writeln!(s, "{line}");
        }
    }
    said
}

/// What to configure, from the cells above.
fn advice(rows: &[Row], cold: &Cold) -> Vec<String> {
    let mut advice = Vec::new();
    if !cold.direct.is_empty() {
        advice.push(format!(
            "set `direct_io = true` when the working set is larger than the cache: direct I/O won at most \
             queue depths in {}",
            cold.direct.join(", ")
        ));
    }
    if !cold.buffered.is_empty() {
        advice.push(format!(
            "keep `direct_io = false` for {}: even with the cache capped, buffered I/O won at most queue \
             depths (read-ahead and the hits that remain)",
            cold.buffered.join(", ")
        ));
    }
    if let Some(knee) = knee(rows) {
        advice.push(knee);
    }
    if let Some(choice) = backend_choice(rows) {
        advice.push(choice.advice);
    }
    advice
}

/// io_uring against the thread pool over every cell of the run that has both, and what that
/// says about `backend`.
struct BackendChoice {
    /// The line of facts: where each was ahead, and where the run could not tell.
    facts: String,
    /// What to configure, from those facts alone.
    advice: String,
}

/// Which of io_uring and the thread pool led, cell by cell: by the confidence interval of
/// the per-round ratios from 6 rounds, by their whole spread from 2, and with one round by a
/// margin beyond [`SINGLE_ROUND_MARGIN`] (flagged as one round). `None` without such a pair.
fn backend_choice(rows: &[Row]) -> Option<BackendChoice> {
    let (mut uring, mut pool, mut even) = (Vec::new(), Vec::new(), 0usize);
    let mut single_rounds = false;
    for u in rows.iter().filter(|r| r.backend == "uring" && r.engine != "fio") {
        let Some(t) = rows.iter().find(|t| {
            t.backend == "thread_pool"
                && t.engine == u.engine
                && t.workload == u.workload
                && t.io == u.io
                && t.regime == u.regime
                && t.qd == u.qd
                && t.block_size == u.block_size
        }) else {
            continue;
        };
        let Some(pr) = pair_ratio(u, t) else { continue };
        let (lo, hi) = match (pr.ci95, pr.spread) {
            (Some(ci), _) => ci,
            (None, Some(spread)) => spread,
            (None, None) => {
                single_rounds = true;
                (pr.median / SINGLE_ROUND_MARGIN, pr.median * SINGLE_ROUND_MARGIN)
            }
        };
        let cell = format!("{} {} {} qd {} {}", u.workload, u.engine, u.io, u.qd, pr.text());
        if lo > 1.0 {
            uring.push((u.workload.clone(), cell));
        } else if hi < 1.0 {
            pool.push((u.workload.clone(), cell));
        } else {
            even += 1;
        }
    }
    let total = uring.len() + pool.len() + even;
    if total == 0 {
        return None;
    }
    let list = |v: &[(String, String)]| {
        if v.is_empty() {
            String::new()
        } else {
            let shown: Vec<&str> = v.iter().take(6).map(|(_, c)| c.as_str()).collect();
            let more = v.len().saturating_sub(6);
            let more = if more > 0 {
                format!(", and {more} more")
            } else {
                String::new()
            };
            format!(" ({}{more})", shown.join("; "))
        }
    };
    let facts = format!(
        "- io_uring ÷ thread pool over the {total} cells of this run that have both: io_uring ahead in {}{}, \
         thread pool ahead in {}{}, not told apart in {even}.",
        uring.len(),
        list(&uring),
        pool.len(),
        list(&pool)
    );
    let workloads = |v: &[(String, String)]| {
        let w: BTreeSet<&str> = v.iter().map(|(w, _)| w.as_str()).collect();
        w.into_iter().collect::<Vec<_>>().join(", ")
    };
    let mut advice = match (uring.is_empty(), pool.is_empty()) {
        (true, true) => "this run cannot tell io_uring and the thread pool apart: `backend = auto` costs \
                         nothing here, and nothing in it argues for pinning either"
            .to_string(),
        (false, true) => format!(
            "`backend = auto` (io_uring where the probe passes) fits this run: io_uring led in {}, \
             the thread pool nowhere",
            workloads(&uring)
        ),
        (true, false) => format!(
            "this run favours `backend = thread_pool` for {}: the thread pool led there and io_uring nowhere",
            workloads(&pool)
        ),
        (false, false) => format!(
            "choose per workload: `backend = thread_pool` led in {}, io_uring (`auto`) in {}",
            workloads(&pool),
            workloads(&uring)
        ),
    };
    if single_rounds {
        advice.push_str(
            " (one round per cell: a lead counts only beyond ±5 %; rerun with `--rounds 6` or more for \
             a confidence interval before pinning a backend)",
        );
    }
    Some(BackendChoice { facts, advice })
}

/// With one round per cell, io_uring and the thread pool count as apart only when one is this
/// factor ahead (a shared disk moves more than that between cells; see docs/benchmarks.md).
const SINGLE_ROUND_MARGIN: f64 = 1.05;

/// The smallest queue depth at which our io_uring backend reaches 90 % of its best random-read
/// IOPS on direct I/O: deeper queues only add latency beyond it.
fn knee(rows: &[Row]) -> Option<String> {
    let mut pts: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.engine == "storage-io" && r.backend == "uring" && r.workload == "rand_read" && r.io == "direct"
        })
        .collect();
    if pts.len() < 2 {
        return None;
    }
    pts.sort_by_key(|r| r.qd);
    let top = pts.iter().map(|r| r.iops).fold(0.0, f64::max);
    let k = pts.iter().find(|r| r.iops >= 0.9 * top)?;
    Some(format!(
        "random reads reach 90 % of their best IOPS at qd {} ({} of {}; p99 {:.0} µs there) — a `queue_depth` \
         of about that many ops in flight per disk is enough",
        k.qd,
        kilo(k.iops),
        kilo(top),
        k.lat_us.p99
    ))
}

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

/// One line per `scheduler_rand_read` cell that has its raw `rand_read` peer (same backend, I/O
/// mode and qd): the IOPS ratio and, where both were measured, how many reads the backends held
/// on average against the raw loop.
fn scheduler_lines(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.engine == "storage-io" && r.workload == crate::cell::Workload::SchedulerRandRead)
    {
        let Some(raw) = rows.iter().find(|p| {
            p.engine == "storage-io"
                && p.workload == "rand_read"
                && p.backend == r.backend
                && p.io == r.io
                && p.qd == r.qd
                && p.block_size == r.block_size
        }) else {
            continue;
        };
        let Some(PairRatio {
            median: m, spread, ..
        }) = pair_ratio(r, raw)
        else {
            continue;
        };
        let spread = spread.map_or(String::new(), |(lo, hi)| format!(" ({lo:.2}–{hi:.2})"));
        let mut line = format!(
            "- Scheduler random reads, {} {} qd {}: {m:.2}×{spread} the raw backend's IOPS",
            r.series(),
            r.io,
            r.qd
        );
        if r.backend_qd > 0.0 && raw.backend_qd > 0.0 {
            let _ = write!(
                line,
                "; the backends held {:.1} of the {} reads outstanding on average, the raw loop {:.1} \
                 (the rest were on their way through the scheduler's threads or the caller)",
                r.backend_qd, r.qd, raw.backend_qd
            );
        }
        line.push('.');
        out.push(line);
    }
    out.extend(handoff_lines(rows));
    out
}

/// What a hand-off costs on this machine (`raw_handoff_read` against the raw loop at the same
/// backend, mode and depth), and where the scheduler's client cells stand against that floor.
fn handoff_lines(rows: &[Row]) -> Vec<String> {
    use crate::cell::Workload;
    let same = |a: &Row, b: &Row| {
        a.engine == "storage-io"
            && a.backend == b.backend
            && a.io == b.io
            && a.qd == b.qd
            && a.block_size == b.block_size
    };
    let mut out = Vec::new();
    // The one-client floor: the worker thread's cost to a client with many reads in flight.
    for floor in rows
        .iter()
        .filter(|r| r.engine == "storage-io" && r.workload == Workload::RawTaggedHandoffRead)
    {
        let find = |w: Workload| rows.iter().find(|p| p.workload == w && same(p, floor));
        let (Some(raw), Some(sched)) = (find(Workload::RandRead), find(Workload::SchedulerRandRead)) else {
            continue;
        };
        out.push(format!(
            "- The tagged hand-off, {} {} qd {}: one client thread with {} reads outstanding, served \
             by the raw loop on another, {} the raw loop's IOPS at {:.1} µs CPU per read against \
             {:.1}; the scheduler's tagged client (`scheduler_rand_read`) {} of it at {:.1} µs.",
            floor.backend,
            floor.io,
            floor.qd,
            floor.qd,
            ratio(floor.iops, raw.iops),
            floor.cpu_us_per_op,
            raw.cpu_us_per_op,
            ratio(sched.iops, floor.iops),
            sched.cpu_us_per_op
        ));
    }
    for floor in rows
        .iter()
        .filter(|r| r.engine == "storage-io" && r.workload == Workload::RawHandoffRead)
    {
        let Some(raw) = rows
            .iter()
            .find(|p| p.workload == Workload::RandRead && same(p, floor))
        else {
            continue;
        };
        let extra_us = if floor.iops > 0.0 && raw.iops > 0.0 {
            (floor.qd as f64 / floor.iops - raw.qd as f64 / raw.iops) * 1e6
        } else {
            0.0
        };
        let mut line = format!(
            "- The hand-off floor, {} {} qd {}: {} the raw loop's IOPS ({extra_us:.0} µs more per read, \
             {:.1} µs more CPU): the least any dispatcher/worker design pays here",
            floor.backend,
            floor.io,
            floor.qd,
            ratio(floor.iops, raw.iops),
            floor.cpu_us_per_op - raw.cpu_us_per_op
        );
        for (w, who) in [
            (
                Workload::SchedulerClientRead,
                "blocking clients (`read_blocking`: on their own threads, no hand-off)",
            ),
            (Workload::SchedulerTaskRead, "async tasks (through the worker)"),
        ] {
            if let Some(c) = rows.iter().find(|c| {
                c.workload == w
                    && c.engine == "storage-io"
                    && c.backend == floor.backend
                    && c.io == floor.io
                    && c.qd == floor.qd
            }) {
                let _ = write!(
                    line,
                    "; the scheduler with {} {who} {} of it",
                    c.qd,
                    ratio(c.iops, floor.iops)
                );
            }
        }
        line.push('.');
        out.push(line);
        // The blocking clients' own peer: fio psync with as many jobs, each its own pread.
        let clients = rows.iter().find(|c| {
            c.workload == Workload::SchedulerClientRead && c.engine == "storage-io" && same(c, floor)
        });
        let psync = rows.iter().find(|f| {
            f.workload == Workload::SchedulerClientRead
                && f.engine == "fio"
                && f.backend == "psync"
                && f.io == floor.io
                && f.qd == floor.qd
        });
        if let (Some(c), Some(f)) = (clients, psync) {
            out.push(format!(
                "- {} blocking clients, {} {}: {} fio psync with {} jobs (the blocking fallback: each \
                 thread its own pread), {} the raw loop; CPU per read {:.1} µs against fio psync's \
                 {:.1} and the raw loop's {:.1}.",
                c.qd,
                c.backend,
                c.io,
                ratio(c.iops, f.iops),
                f.qd,
                ratio(c.iops, raw.iops),
                c.cpu_us_per_op,
                f.cpu_us_per_op,
                raw.cpu_us_per_op
            ));
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
        s.push_str("no regressions (IOPS −10 % or p99 +25 % would be flagged).\n");
    } else {
        let _ = writeln!(s, "{} regression(s):\n", found.len());
        for r in found {
            let _ = writeln!(s, "- **{}**: {}", r.key, r.what);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Latency;

    fn row(engine: &str, backend: &str, io: &str, regime: &str, qd: usize, iops: f64) -> Row {
        Row {
            cpu_us_per_op: 5.0,
            lat_us: Latency {
                p99: 100.0 * qd as f64,
                ..Latency::default()
            },
            ..crate::test_row(engine, backend, io, regime, qd, iops)
        }
    }

    fn sample() -> Vec<Row> {
        let mut v = Vec::new();
        for (q, u, t, f, b) in [
            (1, 10e3, 12e3, 10e3, 30e3),
            (4, 30e3, 25e3, 31e3, 31e3),
            (16, 60e3, 40e3, 62e3, 32e3),
        ] {
            v.push(row("storage-io", "uring", "direct", "uncached", q, u));
            v.push(row("storage-io", "thread_pool", "direct", "uncached", q, t));
            v.push(row("fio", "io_uring+fixed", "direct", "uncached", q, f));
            v.push(row("storage-io", "thread_pool", "buffered", "thrash", q, b));
        }
        v
    }

    #[test]
    fn guidance_names_the_crossing_the_winner_and_the_fio_ratio() {
        let g = guidance(&sample());
        assert!(g.contains("io_uring overtakes the thread pool at qd 4"), "{g}");
        assert!(
            g.contains("page cache thrash: direct I/O wins at 1 of 3 queue depths"),
            "{g}"
        );
        assert!(
            g.contains("keep `direct_io = false` for rand_read (thrash)"),
            "{g}"
        );
        assert!(g.contains("qd 16: uring 60.0k vs thread_pool 32.0k"), "{g}");
        assert!(g.contains("median 0.97×"), "{g}");
        assert!(!g.contains("set `direct_io = true`"), "{g}");
        assert!(g.contains("90 % of their best IOPS at qd 16"), "{g}");
    }

    #[test]
    fn fast_path_guidance_compares_on_off_and_sync_and_gives_a_verdict() {
        let mut rows = Vec::new();
        for (backend, hot, cold) in [
            ("sync", 700e3, 0.0),
            ("uring", 690e3, 90e3),
            ("uring_nowait_off", 570e3, 91e3),
            ("thread_pool", 600e3, 70e3),
            ("thread_pool_nowait_off", 60e3, 70e3),
        ] {
            rows.push(row("storage-io", backend, "buffered", "hot", 1, hot));
            if cold > 0.0 {
                rows.push(row("storage-io", backend, "direct", "uncached", 1, cold));
            }
        }
        let g = guidance(&rows);
        assert!(
            g.contains("rand_read · buffered · hot: page-cache fast path"),
            "{g}"
        );
        assert!(g.contains("uring qd 1 1.21× of off, 0.99× of sync"), "{g}");
        assert!(g.contains("thread_pool qd 1 10.00× of off, 0.86× of sync"), "{g}");
        assert!(
            g.contains("rand_read · direct · uncached: page-cache fast path"),
            "{g}"
        );
        assert!(
            g.contains("auto (io_uring) now holds its own on hot and cold data alike: in 1 of 1 hot cells"),
            "{g}"
        );
        // Only hot cells: no verdict on both.
        let hot_only: Vec<Row> = rows.into_iter().filter(|r| r.regime == "hot").collect();
        assert!(guidance(&hot_only).contains("cannot say whether auto holds on both"));
    }

    #[test]
    fn fio_ratio_is_the_median_of_back_to_back_pairs() {
        // The disk drifted: round 2 was slow for both. Pairs 1.0, 1.0, 0.5 → median 1.0, while
        // the ratio of the median rounds alone would say 20/20 = 1.0 only by luck.
        let ours = Row {
            iops_rounds: vec![30.0, 10.0, 20.0],
            ..row("storage-io", "uring", "direct", "uncached", 32, 20.0)
        };
        let fio = Row {
            iops_rounds: vec![30.0, 10.0, 40.0],
            ..row("fio", "io_uring+fixed", "direct", "uncached", 32, 30.0)
        };
        assert_eq!(
            pair_ratio(&ours, &fio),
            Some(PairRatio {
                median: 1.0,
                spread: Some((0.5, 1.0)),
                ci95: None,
                pairs: 3
            })
        );
        assert_eq!(pair_ratio_text(&ours, &fio), "1.00× (0.50–1.00)");
        // One round (or rounds that do not pair up): the plain ratio.
        let single = row("storage-io", "uring", "direct", "uncached", 32, 15.0);
        assert_eq!(
            pair_ratio(&single, &fio).map(|r| (r.median, r.spread)),
            Some((0.5, None))
        );
        let zero = row("fio", "io_uring+fixed", "direct", "uncached", 32, 0.0);
        assert_eq!(pair_ratio(&single, &zero), None);
        let md = markdown(
            &Report {
                results: vec![ours, fio],
                ..Report::default()
            },
            &[],
        );
        assert!(md.contains("1.00× (0.50–1.00) io_uring+fixed"), "{md}");
        assert!(md.contains("single pairs ranged 0.50–1.00×"), "{md}");
    }

    #[test]
    fn fio_verdict_sorts_cells_by_where_their_confidence_interval_lies() {
        // Twelve rounds per cell. qd 1: every pair 0.9 → behind. qd 4: pairs around 1.0 → not
        // told apart. qd 16: every pair 1.1 → ahead. qd 32 ran once: no interval, not listed.
        let fio_rounds = vec![100.0; 12];
        let cell = |qd: usize, ours: Vec<f64>| {
            let fio = Row {
                iops_rounds: fio_rounds.clone(),
                ..row("fio", "io_uring+fixed", "direct", "uncached", qd, 100.0)
            };
            let ours = Row {
                iops_rounds: ours,
                ..row("storage-io", "uring", "direct", "uncached", qd, 100.0)
            };
            [ours, fio]
        };
        let mut rows = Vec::new();
        rows.extend(cell(1, vec![90.0; 12]));
        rows.extend(cell(
            4,
            vec![
                95.0, 105.0, 96.0, 104.0, 97.0, 103.0, 98.0, 102.0, 99.0, 101.0, 100.0, 100.0,
            ],
        ));
        rows.extend(cell(16, vec![110.0; 12]));
        rows.push(row("storage-io", "uring", "direct", "uncached", 32, 100.0));
        rows.push(row("fio", "io_uring+fixed", "direct", "uncached", 32, 100.0));
        let g = guidance(&rows);
        assert!(
            g.contains("ahead of fio in rand_read direct uncached qd 16 (1.10–1.10)"),
            "{g}"
        );
        assert!(
            g.contains("behind in rand_read direct uncached qd 1 (0.90–0.90)"),
            "{g}"
        );
        assert!(
            g.contains("not told apart in rand_read direct uncached qd 4 (0.97–1.03)"),
            "{g}"
        );
        assert!(!g.contains("qd 32 ("), "{g}");
        assert!(g.contains("`--rounds 40 --duration 0.25`"), "{g}");
        assert!(g.contains("confirm a verdict with a second run"), "{g}");
        let pr = pair_ratio(&rows[2], &rows[3]).unwrap();
        assert_eq!(pr.text(), "1.00× (0.95–1.05; CI 0.97–1.03)");
        // Fewer than 6 rounds: no interval and no verdict line.
        let short: Vec<Row> = rows
            .iter()
            .map(|r| Row {
                iops_rounds: r.iops_rounds.iter().take(4).copied().collect(),
                ..r.clone()
            })
            .collect();
        assert!(!guidance(&short).contains("confidence intervals"));
        // Forty rounds already: the verdict stands without the suggestion.
        let long: Vec<Row> = rows
            .iter()
            .map(|r| Row {
                iops_rounds: r
                    .iops_rounds
                    .iter()
                    .cycle()
                    .take(r.iops_rounds.len() * 4)
                    .copied()
                    .collect(),
                ..r.clone()
            })
            .collect();
        let g = guidance(&long);
        assert!(
            g.contains("not told apart in rand_read direct uncached qd 4"),
            "{g}"
        );
        assert!(!g.contains("--rounds 40"), "{g}");
        // Nothing called ahead or behind: nothing to confirm.
        let even_only: Vec<Row> = long.iter().filter(|r| r.qd == 4).cloned().collect();
        let g = guidance(&even_only);
        assert!(
            g.contains("not told apart in rand_read direct uncached qd 4"),
            "{g}"
        );
        assert!(!g.contains("second run"), "{g}");
    }

    #[test]
    fn scheduler_reads_are_set_beside_the_raw_loop_with_the_depth_each_kept_in_the_backend() {
        let raw = Row {
            iops_rounds: vec![40.0, 50.0],
            backend_qd: 25.0,
            ..row("storage-io", "uring", "direct", "uncached", 32, 45.0)
        };
        let sched = Row {
            workload: crate::cell::Workload::SchedulerRandRead.name().into(),
            sched_workers: Some(1),
            iops_rounds: vec![32.0, 45.0],
            backend_qd: 19.6,
            ..row("storage-io", "uring", "direct", "uncached", 32, 38.0)
        };
        let g = guidance(&[raw.clone(), sched.clone()]);
        assert!(
            g.contains(
                "Scheduler random reads, uring (1 scheduler worker) direct qd 32: 0.85× (0.80–0.90) \
                 the raw backend's IOPS; the backends held 19.6 of the 32 reads outstanding on \
                 average, the raw loop 25.0"
            ),
            "{g}"
        );
        // Without the held depth (a report from before it was measured) the ratio stays.
        let old = Row {
            backend_qd: 0.0,
            ..sched
        };
        let g = guidance(&[raw, old]);
        assert!(g.contains("0.85× (0.80–0.90) the raw backend's IOPS."), "{g}");
        // No raw peer, no line.
        assert!(!guidance(&sample()).contains("Scheduler random reads"));
    }

    #[test]
    fn every_table_line_has_as_many_cells_as_the_header() {
        let md = markdown(
            &Report {
                results: sample(),
                ..Report::default()
            },
            &[],
        );
        let header = md.lines().find(|l| l.starts_with("| series |")).unwrap();
        let cells = header.matches('|').count();
        for line in md.lines().filter(|l| l.starts_with('|')) {
            assert_eq!(line.matches('|').count(), cells, "{line}");
        }
    }

    #[test]
    fn markdown_has_a_table_per_group_with_ratio_columns() {
        let report = Report {
            results: sample(),
            ..Report::default()
        };
        let md = markdown(&report, &["a note".into()]);
        assert!(md.contains("## rand_read · direct · uncached"), "{md}");
        assert!(md.contains("## rand_read · buffered · thrash"), "{md}");
        assert!(md.contains("| uring | 16 | 60.0k |"), "{md}");
        assert!(md.contains("0.97× io_uring+fixed"), "{md}");
        assert!(md.contains("- a note"), "{md}");
        assert!(md.contains("## Guidance"), "{md}");
    }

    #[test]
    fn compare_flags_drops_and_latency_rises_only() {
        let old = Report {
            results: sample(),
            ..Report::default()
        };
        let mut newer = old.clone();
        newer.results[0].iops *= 0.5; // uring qd1 halves
        newer.results[1].lat_us.p99 *= 2.0; // thread_pool qd1 p99 doubles
        newer.results[2].iops *= 1.5; // an improvement is not flagged
        newer
            .results
            .push(row("storage-io", "sync", "direct", "uncached", 1, 1.0)); // new cell
        let found = compare(&old, &newer, 0.10, 0.25);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].key.contains("uring") && found[0].what.contains("-50 %"),
            "{found:?}"
        );
        assert!(found[1].what.starts_with("p99"), "{found:?}");
        let text = compare_section("old.json", &old, &newer, &found);
        assert!(text.contains("12 cells in both runs; 2 regression(s)"), "{text}");
        assert!(compare(&old, &old, 0.10, 0.25).is_empty());
    }

    #[test]
    fn guidance_states_what_a_hand_off_costs_and_where_the_clients_stand() {
        use crate::cell::Workload;
        let mut raw = row("storage-io", "uring", "direct", "uncached", 32, 100_000.0);
        raw.workload = Workload::RandRead.name().into();
        let mut floor = row("storage-io", "uring", "direct", "uncached", 32, 70_000.0);
        floor.workload = Workload::RawHandoffRead.name().into();
        let mut clients = row("storage-io", "uring", "direct", "uncached", 32, 63_000.0);
        clients.workload = Workload::SchedulerClientRead.name().into();
        let mut psync = row("fio", "psync", "direct", "uncached", 32, 90_000.0);
        psync.workload = Workload::SchedulerClientRead.name().into();
        let lines = handoff_lines(&[raw, floor, clients, psync]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("The hand-off floor, uring direct qd 32: 0.70×"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("137 µs more per read"), "{}", lines[0]);
        assert!(lines[0].contains("no hand-off) 0.90× of it"), "{}", lines[0]);
        assert!(
            lines[1].contains("32 blocking clients, uring direct: 0.70× fio psync with 32 jobs"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("0.63× the raw loop"), "{}", lines[1]);
    }

    #[test]
    fn guidance_puts_the_tagged_client_beside_the_tagged_hand_off() {
        use crate::cell::Workload;
        let cell = |w: Workload, iops: f64, cpu: f64| {
            let mut r = row("storage-io", "uring", "direct", "uncached", 32, iops);
            r.workload = w.name().into();
            r.cpu_us_per_op = cpu;
            r
        };
        let lines = handoff_lines(&[
            cell(Workload::RandRead, 100_000.0, 3.0),
            cell(Workload::RawTaggedHandoffRead, 90_000.0, 4.5),
            cell(Workload::SchedulerRandRead, 81_000.0, 5.0),
        ]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("The tagged hand-off, uring direct qd 32"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("0.90× the raw loop's IOPS at 4.5 µs"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("`scheduler_rand_read`) 0.90× of it at 5.0 µs"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn backend_advice_follows_the_runs_figures_and_their_spread() {
        // The direct-I/O WAL: the thread pool ahead of io_uring in every one of 6 rounds.
        let wal = |backend: &str, qd: usize, rounds: [f64; 6]| Row {
            workload: "wal_commit".into(),
            engine: crate::ENGINE_WAL_ASYNC.into(),
            regime: "fdatasync".into(),
            iops: crate::median(&rounds),
            iops_rounds: rounds.to_vec(),
            ..row("storage-io-wal async", backend, "direct", "fdatasync", qd, 0.0)
        };
        let rows = vec![
            wal("uring", 64, [19.9e3, 21e3, 18e3, 20e3, 22e3, 19e3]),
            wal("thread_pool", 64, [58.8e3, 50e3, 61e3, 55e3, 57e3, 60e3]),
        ];
        let g = guidance(&rows);
        assert!(!g.contains("keep `backend = auto`"), "a fixed preference: {g}");
        assert!(
            g.contains("thread pool ahead in 1 (wal_commit storage-io-wal async direct qd 64"),
            "{g}"
        );
        assert!(g.contains("`backend = thread_pool`"), "{g}");
        // One round each: no spread, so no lead is claimed beyond the noise rule.
        let single: Vec<Row> = sample();
        let g = guidance(&single);
        assert!(g.contains("one round"), "{g}");
    }
}
