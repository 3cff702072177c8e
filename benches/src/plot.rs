//! SVG plots: IOPS and p99 latency against queue depth, one line per backend and I/O mode
//! (fio's engines included), one pair of plots per workload and regime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::Row;

type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Writes `iops_<workload>_<regime>.svg` and `p99_<workload>_<regime>.svg` into `dir` and
/// returns their paths. Direct cells (regime `uncached`) share the plot of each buffered regime,
/// so every plot shows direct against buffered.
pub fn write_plots(rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    // The async cells have their own section, by task count and system, not by queue depth.
    let rows: Vec<Row> = rows
        .iter()
        .filter(|r| !crate::async_cells::is_async_name(&r.workload))
        .cloned()
        .collect();
    let rows = &rows[..];
    let mut panels: BTreeMap<(String, String), (Series, Series)> = BTreeMap::new();
    let buffered_regimes: Vec<String> = {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r.io == "buffered")
            .map(|r| r.regime.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    for r in rows {
        let regimes = if r.io == "direct" && !buffered_regimes.is_empty() {
            buffered_regimes.clone()
        } else {
            vec![r.regime.clone()]
        };
        for regime in regimes {
            let (iops, p99) = panels.entry((r.workload.clone(), regime)).or_default();
            let name = format!("{} {}", r.series(), r.io);
            iops.entry(name.clone()).or_default().push((r.qd as f64, r.iops));
            p99.entry(name).or_default().push((r.qd as f64, r.lat_us.p99));
        }
    }
    let mut written = Vec::new();
    for ((workload, regime), (iops, p99)) in panels {
        for (what, series, unit) in [("iops", iops, "IOPS"), ("p99", p99, "p99 latency (µs)")] {
            let path = dir.join(format!("{what}_{workload}_{regime}.svg"));
            let title = format!("{workload}, {regime}: {unit} vs queue depth");
            draw(&path, &title, unit, series).map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn draw(path: &Path, title: &str, unit: &str, mut series: Series) -> Result<(), Box<dyn std::error::Error>> {
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
        .x_desc("queue depth (log scale)")
        .y_desc(unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
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
}
