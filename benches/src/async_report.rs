//! The report's section on the async cells: per cell, every system's median round with its
//! min–max, CPU µs and context switches per op, ours ÷ the best peer and ÷ `tokio::fs`, and the
//! verdict against the targets of issues 42 and 43, which are data ([`THRESHOLDS`]), not prose.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::async_peers::AsyncSystem;
use crate::cell::Workload;
use crate::{Row, median, median_ci95};

/// What a threshold divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Our ops/s ÷ the best peer's (any system but ours, `tokio::fs` included).
    VsBestPeer,
    /// Our ops/s ÷ `tokio::fs`'s.
    VsTokioFs,
    /// Our CPU µs per op ÷ the best peer's.
    CpuVsBestPeer,
}

/// One target: where it applies and the bound the median ratio must meet.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    /// The ratio.
    pub measure: Measure,
    /// The workloads it applies to.
    pub workloads: &'static [Workload],
    /// The task counts it applies to (inclusive).
    pub tasks: (usize, usize),
    /// The ratio must be at least this (`at_most == false`) or at most this.
    pub bound: f64,
    /// Whether `bound` is an upper bound.
    pub at_most: bool,
}

const READS: &[Workload] = &[Workload::AsyncRandRead, Workload::AsyncSeqRead];
const APPENDS: &[Workload] = &[Workload::AsyncAppendSync];
const ALL: &[Workload] = &[
    Workload::AsyncRandRead,
    Workload::AsyncAppendSync,
    Workload::AsyncSeqRead,
];

/// The targets (issue 42 section 1, issue 43): every read cell ≥ 1.0× the best peer; append +
/// sync ≥ 1.0× at 32 tasks and more, ≥ 0.9× at fewer; every cell ≥ 1.5× `tokio::fs`; CPU per op
/// no more than the best peer's.
pub const THRESHOLDS: &[Threshold] = &[
    Threshold {
        measure: Measure::VsBestPeer,
        workloads: READS,
        tasks: (1, usize::MAX),
        bound: 1.0,
        at_most: false,
    },
    Threshold {
        measure: Measure::VsBestPeer,
        workloads: APPENDS,
        tasks: (32, usize::MAX),
        bound: 1.0,
        at_most: false,
    },
    Threshold {
        measure: Measure::VsBestPeer,
        workloads: APPENDS,
        tasks: (1, 31),
        bound: 0.9,
        at_most: false,
    },
    Threshold {
        measure: Measure::VsTokioFs,
        workloads: ALL,
        tasks: (1, usize::MAX),
        bound: 1.5,
        at_most: false,
    },
    Threshold {
        measure: Measure::CpuVsBestPeer,
        workloads: ALL,
        tasks: (1, usize::MAX),
        bound: 1.0,
        at_most: true,
    },
];

impl Threshold {
    fn applies(&self, workload: &str, tasks: usize) -> bool {
        self.workloads.iter().any(|w| w.name() == workload) && (self.tasks.0..=self.tasks.1).contains(&tasks)
    }

    fn met(&self, ratio: f64) -> bool {
        if self.at_most {
            ratio <= self.bound
        } else {
            ratio >= self.bound
        }
    }

    fn text(&self) -> String {
        let what = match self.measure {
            Measure::VsBestPeer => "÷ best",
            Measure::VsTokioFs => "÷ tokio::fs",
            Measure::CpuVsBestPeer => "CPU ÷ best",
        };
        format!("{what} {} {}", if self.at_most { "≤" } else { "≥" }, self.bound)
    }
}

/// A ratio of ours to a peer: the median of the per-round ratios (the systems ran interleaved,
/// round by round) with their min–max and, from 6 rounds, the 95 % confidence interval of the
/// median; the ratio of the medians when the rounds do not pair up.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// The median.
    pub median: f64,
    /// Lowest and highest per-round ratio.
    pub range: Option<(f64, f64)>,
    /// 95 % confidence interval of the median.
    pub ci: Option<(f64, f64)>,
}

impl Ratio {
    /// Ours ÷ `peer` in ops/s.
    pub fn of(ours: &Row, peer: &Row) -> Option<Ratio> {
        if peer.iops <= 0.0 {
            return None;
        }
        let (a, b) = (&ours.iops_rounds, &peer.iops_rounds);
        if a.len() < 2 || a.len() != b.len() {
            return Some(Ratio {
                median: ours.iops / peer.iops,
                range: None,
                ci: None,
            });
        }
        let per_round: Vec<f64> = a
            .iter()
            .zip(b)
            .filter(|(_, p)| **p > 0.0)
            .map(|(o, p)| o / p)
            .collect();
        let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Ratio {
            median: median(&per_round),
            range: lo.is_finite().then_some((lo, hi)),
            ci: median_ci95(&per_round),
        })
    }

    fn text(&self) -> String {
        let mut s = format!("{:.2}×", self.median);
        if let Some((lo, hi)) = self.ci {
            let _ = write!(s, " (CI {lo:.2}–{hi:.2})");
        } else if let Some((lo, hi)) = self.range {
            let _ = write!(s, " ({lo:.2}–{hi:.2})");
        }
        s
    }
}

/// ops/s (or MB/s for `async_seq_read`) of a row with its rounds' min–max, CPU and switches.
fn figure(r: &Row) -> String {
    let seq = r.workload == Workload::AsyncSeqRead;
    let scale = |iops: f64| {
        if seq {
            format!("{:.0}", iops * r.block_size as f64 / 1e6)
        } else if iops >= 10_000.0 {
            format!("{:.1}k", iops / 1000.0)
        } else {
            format!("{iops:.0}")
        }
    };
    let mut s = scale(r.iops);
    if r.iops_rounds.len() > 1 {
        let lo = r.iops_rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iops_rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = write!(s, " ({}–{})", scale(lo), scale(hi));
    }
    let _ = write!(s, " · {:.1} µs", r.cpu_us_per_op);
    if let Some(cs) = r.ctx_switches_per_op {
        let _ = write!(s, " · {cs:.2} cs");
    }
    s
}

/// One cell's rows by system.
type CellRows<'a> = BTreeMap<String, &'a Row>;

/// The section (empty without async rows).
pub fn section(rows: &[Row]) -> String {
    // (workload, io, regime, tasks) → system → row.
    let mut cells: BTreeMap<(Workload, crate::cell::IoMode, crate::cell::Regime, usize), CellRows<'_>> =
        BTreeMap::new();
    for r in rows.iter().filter(|r| crate::async_cells::is_async(r.workload)) {
        cells
            .entry((r.workload, r.io, r.regime, r.qd))
            .or_default()
            .insert(r.engine.name().to_string(), r);
    }
    if cells.is_empty() {
        return String::new();
    }
    let systems: Vec<&str> = AsyncSystem::ALL
        .iter()
        .map(|s| s.name())
        .filter(|name| cells.values().any(|c| c.contains_key(*name)))
        .collect();
    let mut s = String::from("## The async file API beside the Rust async-I/O runtimes\n\n");
    s.push_str(
        "Each system ran each round of a cell in a process of its own, the systems taking turns \
         round by round. A figure is the median round's ops/s (MB/s for async_seq_read) with the \
         rounds' min–max, CPU µs per op and context switches per op (`cs`) of its process over \
         the measured window. A ratio is the median of the per-round ratios (95 % CI from 6 \
         rounds, else min–max). The best peer is the fastest system other than ours, tokio::fs \
         included. Targets: ",
    );
    let targets: Vec<String> = THRESHOLDS
        .iter()
        .map(|t| {
            let w: Vec<&str> = t.workloads.iter().map(|w| w.name()).collect();
            let tasks = match t.tasks {
                (lo, usize::MAX) => format!("{lo}+ tasks"),
                (lo, hi) => format!("{lo}–{hi} tasks"),
            };
            format!("{} ({}, {tasks})", t.text(), w.join("/"))
        })
        .collect();
    s.push_str(&targets.join("; "));
    s.push_str(".\n\n");
    let mut current: Option<Workload> = None;
    for ((workload, io, regime, tasks), by_system) in &cells {
        if current != Some(*workload) {
            if current.is_some() {
                s.push('\n');
            }
            current = Some(*workload);
            let _ = writeln!(s, "### {workload}\n");
            let _ = write!(s, "| mode | tasks |");
            for name in &systems {
                let _ = write!(s, " {name} |");
            }
            s.push_str(" best peer | ours ÷ best | ours ÷ tokio::fs | CPU ÷ best | verdict |\n|---|---:|");
            for _ in &systems {
                s.push_str("---:|");
            }
            s.push_str("---|---:|---:|---:|---|\n");
        }
        let _ = write!(s, "| {io} {regime} | {tasks} |");
        for name in &systems {
            let cell = by_system.get(*name).map_or("–".to_string(), |r| figure(r));
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(s, "{}", verdict_columns(workload.name(), *tasks, by_system));
    }
    s.push('\n');
    s
}

/// The best peer, the three ratios and the verdict of one cell, as table columns.
fn verdict_columns(workload: &str, tasks: usize, by_system: &CellRows<'_>) -> String {
    let ours_name = AsyncSystem::Ours.name();
    let Some(ours) = by_system.get(ours_name) else {
        return " – | – | – | – | no row of ours |".into();
    };
    let best = by_system
        .iter()
        .filter(|(name, _)| name.as_str() != ours_name)
        .max_by(|a, b| a.1.iops.total_cmp(&b.1.iops))
        .map(|(_, r)| *r);
    let tokio = by_system.get(AsyncSystem::TokioFs.name()).copied();
    let vs_best = best.and_then(|b| Ratio::of(ours, b));
    let vs_tokio = tokio.and_then(|t| Ratio::of(ours, t));
    let cpu = best
        .filter(|b| b.cpu_us_per_op > 0.0)
        .map(|b| ours.cpu_us_per_op / b.cpu_us_per_op);
    let mut missed = Vec::new();
    let mut judged = 0;
    for t in THRESHOLDS.iter().filter(|t| t.applies(workload, tasks)) {
        let value = match t.measure {
            Measure::VsBestPeer => vs_best.as_ref().map(|r| r.median),
            Measure::VsTokioFs => vs_tokio.as_ref().map(|r| r.median),
            Measure::CpuVsBestPeer => cpu,
        };
        if let Some(v) = value {
            judged += 1;
            if !t.met(v) {
                missed.push(t.text());
            }
        }
    }
    let verdict = match (judged, missed.is_empty()) {
        (0, _) => "no peer to judge by".to_string(),
        (_, true) => "meets every target".to_string(),
        (_, false) => format!("misses {}", missed.join(", ")),
    };
    let text = |r: Option<Ratio>| r.map_or("–".into(), |r| r.text());
    format!(
        " {} | {} | {} | {} | {verdict} |",
        best.map_or("–", |b| b.engine.name()),
        text(vs_best),
        text(vs_tokio),
        cpu.map_or("–".into(), |c| format!("{c:.2}×"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: AsyncSystem, workload: Workload, tasks: usize, rounds: &[f64], cpu: f64) -> Row {
        Row {
            workload,
            engine: crate::cell::Engine::named(system.name()).expect("every system is an engine"),
            backend: system.name().into(),
            io: crate::cell::IoMode::Direct,
            regime: crate::cell::Regime::Uncached,
            qd: tasks,
            block_size: 4096,
            iops: median(rounds),
            cpu_us_per_op: cpu,
            ctx_switches_per_op: Some(1.0),
            iops_rounds: rounds.to_vec(),
            ..Row::default()
        }
    }

    #[test]
    fn ratios_pair_rounds_and_the_verdict_follows_the_thresholds() {
        let rounds = |x: f64| [x, x * 1.1, x * 0.9, x, x * 1.05, x * 0.95];
        let rows = vec![
            row(
                AsyncSystem::Ours,
                Workload::AsyncRandRead,
                32,
                &rounds(60_000.0),
                10.0,
            ),
            row(
                AsyncSystem::TokioFs,
                Workload::AsyncRandRead,
                32,
                &rounds(30_000.0),
                30.0,
            ),
            row(
                AsyncSystem::Monoio,
                Workload::AsyncRandRead,
                32,
                &rounds(50_000.0),
                8.0,
            ),
            row(
                AsyncSystem::Ours,
                Workload::AsyncAppendSync,
                1,
                &rounds(9_000.0),
                5.0,
            ),
            row(
                AsyncSystem::TokioFs,
                Workload::AsyncAppendSync,
                1,
                &rounds(5_000.0),
                9.0,
            ),
            row(
                AsyncSystem::Compio,
                Workload::AsyncAppendSync,
                1,
                &rounds(9_500.0),
                6.0,
            ),
        ];
        let text = section(&rows);
        // Reads: 1.2× monoio, 2.0× tokio::fs, but 1.25× monoio's CPU.
        assert!(
            text.contains(
                "| monoio | 1.20× (CI 1.20–1.20) | 2.00× (CI 2.00–2.00) | 1.25× | misses CPU ÷ best ≤ 1 |"
            ),
            "{text}"
        );
        // Appends at 1 task: 0.95× compio meets the 0.9× bound, 1.8× tokio::fs, less CPU.
        assert!(
            text.contains(
                "| compio | 0.95× (CI 0.95–0.95) | 1.80× (CI 1.80–1.80) | 0.83× | meets every target |"
            ),
            "{text}"
        );
        assert!(text.contains("### async_rand_read") && text.contains("### async_append_sync"));
        assert!(text.contains("60.0k (54.0k–66.0k) · 10.0 µs · 1.00 cs"), "{text}");
        assert!(section(&[]).is_empty());
    }

    #[test]
    fn a_ratio_without_paired_rounds_divides_the_medians() {
        let ours = row(AsyncSystem::Ours, Workload::AsyncSeqRead, 1, &[100.0], 1.0);
        let peer = row(
            AsyncSystem::Glommio,
            Workload::AsyncSeqRead,
            1,
            &[50.0, 60.0],
            1.0,
        );
        let r = Ratio::of(&ours, &peer).unwrap();
        assert_eq!(r.median, 100.0 / 55.0);
        assert_eq!((r.range, r.ci), (None, None));
    }
}
