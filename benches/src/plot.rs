//! SVG plots: IOPS and p99 latency against queue depth, one line per backend and I/O mode
//! (fio's engines included), one pair of plots per workload and regime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::Row;
use crate::cell::{Regime, Workload};

type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Writes `iops_<workload>_<regime>.svg` and `p99_<workload>_<regime>.svg` into `dir` and
/// returns their paths. Direct cells (regime `uncached`) share the plot of each buffered regime,
/// so every plot shows direct against buffered.
pub fn write_plots(rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    let all = rows;
    // The async cells have their own section, by task count and system, not by queue depth.
    let rows: Vec<Row> = rows
        .iter()
        .filter(|r| !crate::async_cells::is_async(r.workload) && !crate::openloop::is_open(r))
        .cloned()
        .collect();
    let rows = &rows[..];
    let mut panels: BTreeMap<(Workload, Regime), (Series, Series)> = BTreeMap::new();
    // Per workload: a direct cell joins each buffered regime of its own workload (a WAL's
    // `fdatasync` rows never pull rand_read's direct cells into a plot of that name).
    let mut buffered_regimes: BTreeMap<Workload, BTreeSet<Regime>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.io == crate::cell::IoMode::Buffered) {
        buffered_regimes.entry(r.workload).or_default().insert(r.regime);
    }
    for r in rows {
        let regimes: Vec<Regime> = match buffered_regimes.get(&r.workload) {
            Some(b) if r.io == crate::cell::IoMode::Direct => b.iter().copied().collect(),
            _ => vec![r.regime],
        };
        for regime in regimes {
            let (iops, p99) = panels.entry((r.workload, regime)).or_default();
            let name = format!("{} {}", r.series(), r.io);
            iops.entry(name.clone()).or_default().push((r.qd as f64, r.iops));
            p99.entry(name).or_default().push((r.qd as f64, r.lat_us.p99));
        }
    }
    let mut written = Vec::new();
    for ((workload, regime), (iops, p99)) in panels {
        for (what, series, unit) in [("iops", iops, "IOPS"), ("p99", p99, "p99 latency (µs)")] {
            let path = dir.join(format!("{what}_{workload}_{regime}.svg"));
            let x = x_axis(workload);
            let title = format!("{workload}, {regime}: {unit} vs {x}");
            draw(&path, &title, (x, unit), series).map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
            written.push(path);
        }
    }
    // The open-loop cells: latency against offered load, one plot per cell.
    let open: Vec<Row> = all
        .iter()
        .filter(|r| crate::openloop::is_open(r))
        .cloned()
        .collect();
    written.extend(crate::openloop::write_plots(&open, dir)?);
    Ok(written)
}

/// What a workload's `qd` counts, for the x axis.
fn x_axis(workload: Workload) -> &'static str {
    match workload {
        Workload::WalCommit => "committers",
        Workload::SchedulerClientRead | Workload::RawHandoffRead => "client threads",
        Workload::SchedulerTaskRead => "tasks",
        _ => "queue depth",
    }
}

/// A y-axis label: whole numbers without a fraction (`50000`, not `50000.0`), others with up
/// to two decimals and no trailing zeros.
pub(crate) fn axis_label(y: f64) -> String {
    if (y - y.round()).abs() < 1e-9 {
        return format!("{y:.0}");
    }
    let s = format!("{y:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw(
    path: &Path,
    title: &str,
    (x_unit, unit): (&str, &str),
    mut series: Series,
) -> Result<(), Box<dyn std::error::Error>> {
    for pts in series.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = series.values().flatten();
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.2;
    let y_max = all.map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc(format!("{x_unit} (log scale)"))
        .y_desc(unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| axis_label(*y))
        // No minor gridlines: on a log axis they crowd into a grey band between the labels.
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // fio's lines dashed-looking (thin), ours solid and thicker.
        let width = if name.starts_with("fio") { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A latency-against-load plot: each series' µs against the offered rate (ops/s), the knee
/// (rate, µs) marked with a vertical line.
pub(crate) fn draw_load_curve(
    path: &Path,
    title: &str,
    series: Vec<(String, Vec<(f64, f64)>)>,
    knee: Option<(f64, f64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let y_max = all.map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("offered load (ops/s, Poisson arrivals)")
        .y_desc("latency from intended arrival (µs)")
        .x_label_formatter(&|x| axis_label(*x))
        .y_label_formatter(&|y| axis_label(*y))
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let width = if name.starts_with("fio") { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    if let Some((x, y)) = knee {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, y_max)],
            BLACK.mix(0.5).stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("knee ({} µs)", axis_label(y.round())),
            (x, y_max * 0.95),
            ("sans-serif", 14),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_files_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        for (qd, iops) in [(1, 10e3), (4, 30e3), (16, 50e3)] {
            for (engine, backend, io, regime) in [
                ("storage-io", "uring", "direct", "uncached"),
                ("fio", "io_uring+fixed", "direct", "uncached"),
                ("storage-io", "thread_pool", "buffered", "thrash"),
            ] {
                rows.push(crate::test_row(engine, backend, io, regime, qd, iops));
            }
        }
        let paths = write_plots(&rows, dir.path()).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["iops_rand_read_thrash.svg", "p99_rand_read_thrash.svg"]
        );
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        for series in [
            "uring direct",
            "fio io_uring+fixed direct",
            "thread_pool buffered",
        ] {
            assert!(svg.contains(series), "{series} missing from the legend");
        }
    }

    #[test]
    fn each_workload_is_plotted_under_its_own_regimes_and_title() {
        // A direct-only rand_read run beside wal_commit (whose buffered rows are "fdatasync").
        let dir = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        for qd in [1, 4] {
            rows.push(crate::test_row(
                "storage-io",
                "uring",
                "direct",
                "uncached",
                qd,
                1e4,
            ));
            let mut wal = crate::test_row("storage-io-wal", "uring", "buffered", "fdatasync", qd, 5e3);
            wal.workload = crate::cell::Workload::WalCommit;
            rows.push(wal);
        }
        let paths = write_plots(&rows, dir.path()).unwrap();
        let mut names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "iops_rand_read_uncached.svg",
                "iops_wal_commit_fdatasync.svg",
                "p99_rand_read_uncached.svg",
                "p99_wal_commit_fdatasync.svg"
            ]
        );
        let wal = std::fs::read_to_string(dir.path().join("iops_wal_commit_fdatasync.svg")).unwrap();
        assert!(
            wal.contains("committers"),
            "wal_commit's x axis counts committers"
        );
    }

    #[test]
    fn axis_labels_drop_the_fraction_of_whole_numbers() {
        assert_eq!(axis_label(50000.0), "50000");
        assert_eq!(axis_label(0.0), "0");
        assert_eq!(axis_label(2.5), "2.5");
        assert_eq!(axis_label(0.25), "0.25");
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Row> = [(1, 10e3), (32, 50e3)]
            .map(|(qd, iops)| crate::test_row("storage-io", "uring", "direct", "uncached", qd, iops))
            .to_vec();
        let paths = write_plots(&rows, dir.path()).unwrap();
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(!svg.contains(".0<"), "a label ends in .0");
    }
}
