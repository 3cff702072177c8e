//! The guidance section of report.md: what this run's figures say about direct I/O, the
//! backends, the page-cache fast path, fio and the scheduler, and what to configure.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{PairRatio, cell_name, groups, kilo, pair_ratio, peer, ratio};
use crate::Row;
use crate::verdict::THRESHOLDS;

/// What the confidence intervals of ours ÷ fio say: which cells are ahead or behind beyond the
/// run's noise, and which it cannot tell apart. `None` when no cell had 6 rounds.
pub(super) fn fio_verdict(ratios: &[(PairRatio, &Row)]) -> Option<String> {
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
    let hint = if !even.is_empty()
        && ratios
            .iter()
            .any(|(pr, _)| pr.ci95.is_some() && pr.pairs < THRESHOLDS.narrow_interval_pairs)
    {
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

/// Our best row (by IOPS) among `rows` matching the filter.
pub(super) fn best(rows: &[Row], f: impl Fn(&Row) -> bool) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.engine == crate::cell::Engine::StorageIo && f(r))
        .max_by(|a, b| a.iops.total_cmp(&b.iops))
}

/// The median of the per-round ratios of two of our rows, as `text()` shows it.
pub(super) fn ours_vs(a: &Row, b: &Row) -> String {
    pair_ratio(a, b).map_or_else(|| "–".into(), |r| r.text())
}

/// The guidance lines about the page-cache fast path, if the run has the cells for them.
pub(super) fn fast_path_guidance(rows: &[Row], qds: &BTreeSet<usize>) -> Option<String> {
    let mut s = String::new();
    // (hot cells where io_uring held ≥ 0.95× sync, hot cells) and (other cells where io_uring
    // held ≥ 0.97× its fast path off, other cells).
    let (mut hot_ok, mut hot, mut cold_ok, mut cold) = (0, 0, 0, 0);
    for ((w, io, regime), group) in groups(rows) {
        let of = |b: &str, q: usize| {
            group
                .iter()
                .find(|r| r.engine == crate::cell::Engine::StorageIo && r.backend == b && r.qd == q)
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
                    if on == "uring" && regime != crate::cell::Regime::Hot {
                        cold += 1;
                        cold_ok += usize::from(
                            pair_ratio(a, b).is_some_and(|r| r.median >= THRESHOLDS.fast_path_on_vs_off),
                        );
                    }
                }
                if let Some(y) = of("sync", q).filter(|_| io == crate::cell::IoMode::Buffered) {
                    bits.push(format!("{} of sync", ours_vs(a, y)));
                    if on == "uring" && regime == crate::cell::Regime::Hot {
                        hot += 1;
                        hot_ok += usize::from(
                            pair_ratio(a, y).is_some_and(|r| r.median >= THRESHOLDS.hot_uring_vs_sync),
                        );
                    }
                }
                if !bits.is_empty() && (io == crate::cell::IoMode::Buffered || of(off, q).is_some()) {
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
            "in {hot_ok} of {hot} hot cells io_uring held ≥ {:.2}× the inline sync backend",
            THRESHOLDS.hot_uring_vs_sync
        ));
    }
    if cold > 0 {
        facts.push(format!(
            "in {cold_ok} of {cold} uncached cells ≥ {:.2}× io_uring with the fast path off",
            THRESHOLDS.fast_path_on_vs_off
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
pub(super) struct Cold {
    /// Anything was said.
    said: bool,
    direct: Vec<String>,
    buffered: Vec<String>,
}

/// Direct vs buffered, per workload and buffered regime (best of ours at each depth).
pub(super) fn direct_vs_buffered(s: &mut String, rows: &[Row], qds: &BTreeSet<usize>) -> Cold {
    let workloads: BTreeSet<crate::cell::Workload> = rows.iter().map(|r| r.workload).collect();
    let mut cold = Cold::default();
    for &w in &workloads {
        let regimes: BTreeSet<crate::cell::Regime> = rows
            .iter()
            .filter(|r| r.workload == w && r.io == crate::cell::IoMode::Buffered)
            .map(|r| r.regime)
            .collect();
        for regime in regimes {
            let (mut wins, mut total, mut cells) = (0, 0, Vec::new());
            for &q in qds {
                let d = best(rows, |r| {
                    r.workload == w && r.io == crate::cell::IoMode::Direct && r.qd == q
                });
                let b = best(rows, |r| {
                    r.workload == w
                        && r.io == crate::cell::IoMode::Buffered
                        && r.regime == regime
                        && r.qd == q
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
            if regime != crate::cell::Regime::Hot {
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
pub(super) fn backend_lines(s: &mut String, rows: &[Row], qds: &BTreeSet<usize>) -> bool {
    let mut said = false;
    for ((w, io, regime), group) in groups(rows) {
        let of = |b: &str, q: usize| {
            group
                .iter()
                .find(|r| r.engine == crate::cell::Engine::StorageIo && r.backend == b && r.qd == q)
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
pub(super) fn fio_lines(s: &mut String, rows: &[Row]) -> bool {
    let mut said = false;
    let mut ratios = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.engine == crate::cell::Engine::StorageIo && r.backend == "uring")
    {
        if let Some(pr) =
            peer(rows, r, crate::cell::Engine::Fio, "io_uring+fixed").and_then(|p| pair_ratio(r, p))
        {
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
pub(super) fn advice(rows: &[Row], cold: &Cold) -> Vec<String> {
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
pub(super) struct BackendChoice {
    /// The line of facts: where each was ahead, and where the run could not tell.
    facts: String,
    /// What to configure, from those facts alone.
    advice: String,
}

/// Which of io_uring and the thread pool led, cell by cell: by the confidence interval of
/// the per-round ratios from 6 rounds, by their whole spread from 2, and with one round by a
/// margin beyond [`Thresholds::single_round_margin`](crate::verdict::Thresholds) (flagged as one round). `None` without such a pair.
pub(super) fn backend_choice(rows: &[Row]) -> Option<BackendChoice> {
    let (mut uring, mut pool, mut even) = (Vec::new(), Vec::new(), 0usize);
    let mut single_rounds = false;
    for u in rows
        .iter()
        .filter(|r| r.backend == "uring" && r.engine != crate::cell::Engine::Fio)
    {
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
                (
                    pr.median / THRESHOLDS.single_round_margin,
                    pr.median * THRESHOLDS.single_round_margin,
                )
            }
        };
        let cell = format!("{} {} {} qd {} {}", u.workload, u.engine, u.io, u.qd, pr.text());
        if lo > 1.0 {
            uring.push((u.workload, cell));
        } else if hi < 1.0 {
            pool.push((u.workload, cell));
        } else {
            even += 1;
        }
    }
    let total = uring.len() + pool.len() + even;
    if total == 0 {
        return None;
    }
    let list = |v: &[(crate::cell::Workload, String)]| {
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
    let workloads = |v: &[(crate::cell::Workload, String)]| {
        let w: BTreeSet<&str> = v.iter().map(|(w, _)| w.name()).collect();
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
            " (one round per cell: a lead counts only beyond the single-round margin; rerun with `--rounds 6` or more for \
             a confidence interval before pinning a backend)",
        );
    }
    Some(BackendChoice { facts, advice })
}

/// The smallest queue depth at which our io_uring backend reaches 90 % of its best random-read
/// IOPS on direct I/O: deeper queues only add latency beyond it.
pub(super) fn knee(rows: &[Row]) -> Option<String> {
    let mut pts: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.engine == crate::cell::Engine::StorageIo
                && r.backend == "uring"
                && r.workload == crate::cell::Workload::RandRead
                && r.io == crate::cell::IoMode::Direct
        })
        .collect();
    if pts.len() < 2 {
        return None;
    }
    pts.sort_by_key(|r| r.qd);
    let top = pts.iter().map(|r| r.iops).fold(0.0, f64::max);
    let k = pts
        .iter()
        .find(|r| r.iops >= THRESHOLDS.knee_share_of_peak * top)?;
    Some(format!(
        "random reads reach {:.0} % of their best IOPS at qd {} ({} of {}; p99 {:.0} µs there) — a `queue_depth` \
         of about that many ops in flight per disk is enough",
        THRESHOLDS.knee_share_of_peak * 100.0,
        k.qd,
        kilo(k.iops),
        kilo(top),
        k.lat_us.p99
    ))
}

/// One line per `scheduler_rand_read` cell that has its raw `rand_read` peer (same backend, I/O
/// mode and qd): the IOPS ratio and, where both were measured, how many reads the backends held
/// on average against the raw loop.
pub(super) fn scheduler_lines(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| {
        r.engine == crate::cell::Engine::StorageIo && r.workload == crate::cell::Workload::SchedulerRandRead
    }) {
        let Some(raw) = rows.iter().find(|p| {
            p.engine == crate::cell::Engine::StorageIo
                && p.workload == crate::cell::Workload::RandRead
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

/// The blocking clients' own peer: fio psync with as many jobs, each its own pread.
fn clients_vs_psync(rows: &[Row], floor: &Row, raw: &Row) -> Option<String> {
    use crate::cell::Workload;
    // The blocking clients' own peer: fio psync with as many jobs, each its own pread.
    let same = |a: &Row, b: &Row| {
        a.engine == crate::cell::Engine::StorageIo
            && a.backend == b.backend
            && a.io == b.io
            && a.qd == b.qd
            && a.block_size == b.block_size
    };
    let clients = rows.iter().find(|c| {
        c.workload == Workload::SchedulerClientRead
            && c.engine == crate::cell::Engine::StorageIo
            && same(c, floor)
    });
    let psync = rows.iter().find(|f| {
        f.workload == Workload::SchedulerClientRead
            && f.engine == crate::cell::Engine::Fio
            && f.backend == "psync"
            && f.io == floor.io
            && f.qd == floor.qd
    });
    let (Some(c), Some(f)) = (clients, psync) else {
        return None;
    };
    Some(format!(
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
    ))
}

/// What a hand-off costs on this machine (`raw_handoff_read` against the raw loop at the same
/// backend, mode and depth), and where the scheduler's client cells stand against that floor.
pub(super) fn handoff_lines(rows: &[Row]) -> Vec<String> {
    use crate::cell::Workload;
    let same = |a: &Row, b: &Row| {
        a.engine == crate::cell::Engine::StorageIo
            && a.backend == b.backend
            && a.io == b.io
            && a.qd == b.qd
            && a.block_size == b.block_size
    };
    let mut out = Vec::new();
    // The one-client floor: the worker thread's cost to a client with many reads in flight.
    for floor in rows.iter().filter(|r| {
        r.engine == crate::cell::Engine::StorageIo && r.workload == Workload::RawTaggedHandoffRead
    }) {
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
        .filter(|r| r.engine == crate::cell::Engine::StorageIo && r.workload == Workload::RawHandoffRead)
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
                    && c.engine == crate::cell::Engine::StorageIo
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
        out.extend(clients_vs_psync(rows, floor, raw));
    }
    out
}
