//! The report's tests: tables, guidance, ratios and `--compare`.

use super::guidance::*;
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
    let hot_only: Vec<Row> = rows
        .into_iter()
        .filter(|r| r.regime == crate::cell::Regime::Hot)
        .collect();
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
        workload: crate::cell::Workload::SchedulerRandRead,
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
    raw.workload = Workload::RandRead;
    let mut floor = row("storage-io", "uring", "direct", "uncached", 32, 70_000.0);
    floor.workload = Workload::RawHandoffRead;
    let mut clients = row("storage-io", "uring", "direct", "uncached", 32, 63_000.0);
    clients.workload = Workload::SchedulerClientRead;
    let mut psync = row("fio", "psync", "direct", "uncached", 32, 90_000.0);
    psync.workload = Workload::SchedulerClientRead;
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
        r.workload = w;
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
        workload: crate::cell::Workload::WalCommit,
        engine: crate::ENGINE_WAL_ASYNC,
        regime: crate::cell::Regime::Fdatasync,
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
