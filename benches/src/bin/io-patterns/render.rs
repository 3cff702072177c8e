//! Render: results.json, the plots, report.md with `--compare`'s section, and the report on
//! stdout.

use std::path::Path;

use anyhow::{Context, Result};
use storage_io_benches::cli::Args;
use storage_io_benches::verdict::THRESHOLDS;
use storage_io_benches::{Report, plot, report};

/// Writes results.json (and `--json`), the plots and report.md (with `--compare`'s section),
/// and prints the report.
pub(crate) fn write_outputs(
    report: &Report,
    notes: &[String],
    out_dir: &Path,
    args: &Args,
    old: Option<&Report>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out_dir.join("results.json"), &json)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &json).with_context(|| format!("write {}", p.display()))?;
    }
    let plots = plot::write_plots(&report.results, out_dir)?;
    let mut md = report::markdown(report, notes);
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in &plots {
            if let Some(name) = p.file_name() {
                let name = name.to_string_lossy();
                md.push_str(&format!("![{name}]({name})\n"));
            }
        }
    }
    if let (Some(old), Some(old_path)) = (old, &args.compare) {
        let found = report::compare(
            old,
            report,
            THRESHOLDS.regression_iops_drop,
            THRESHOLDS.regression_p99_rise,
        );
        md.push_str(&report::compare_section(
            &old_path.display().to_string(),
            old,
            report,
            &found,
        ));
        for r in &found {
            eprintln!("io-patterns: REGRESSION {}: {}", r.key, r.what);
        }
    }
    std::fs::write(out_dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!(
        "io-patterns: wrote {} ({} rows, {} plots)",
        out_dir.join("report.md").display(),
        report.results.len(),
        plots.len()
    );
    Ok(())
}
