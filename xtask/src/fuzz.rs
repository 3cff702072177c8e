//! `cargo xtask fuzz` and `cargo xtask sanitize`: the nightly-only checks, run by hand (they take
//! too long for `cargo xtask ci`). Both need the nightly toolchain; `fuzz` also needs cargo-fuzz.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Every cargo-fuzz target in `fuzz/`, and the corpus `cargo xtask ci` replays for it.
pub(crate) const TARGETS: &[(&str, &str)] = &[
    ("wal_recovery", "storage-io-wal: tests/fuzz_corpus.rs"),
    ("wal_frame", "storage-io-wal: tests/fuzz_corpus.rs"),
    ("sched_alloc_image", "storage-io-scheduler: tests/fuzz_corpus.rs"),
    ("config_text", "storage-io: tests/fuzz_corpus.rs"),
];

fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    cmd
}

fn require_nightly() -> Result<()> {
    let ok = nightly_cargo()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!("no nightly toolchain: install it with `rustup toolchain install nightly`");
    }
    Ok(())
}

/// What one fuzzing run reported.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct FuzzRun {
    /// `stat::number_of_executed_units`.
    pub(crate) executions: u64,
    /// Coverage (libFuzzer's `cov:`) at the end.
    pub(crate) coverage: u64,
    /// Corpus entries at the end.
    pub(crate) corpus: u64,
    /// Executions per second, as libFuzzer last reported it.
    pub(crate) per_second: u64,
    /// The file a crash was written to, if one was found.
    pub(crate) crash: Option<String>,
}

/// Reads libFuzzer's output (stderr).
pub(crate) fn parse_libfuzzer(out: &str) -> FuzzRun {
    let mut run = FuzzRun::default();
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = line[line.find(key)? + key.len()..].trim_start();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    for line in out.lines() {
        if let Some(n) = number_after(line, "stat::number_of_executed_units:") {
            run.executions = n;
        }
        if line.starts_with('#') {
            if let Some(c) = number_after(line, "cov: ") {
                run.coverage = c;
            }
            if let Some(c) = number_after(line, "corp: ") {
                run.corpus = c;
            }
            if let Some(r) = number_after(line, "exec/s: ") {
                run.per_second = r;
            }
        }
        if let Some(at) = line.find("Test unit written to ") {
            run.crash = Some(line[at + "Test unit written to ".len()..].trim().to_string());
        }
    }
    run
}

/// `cargo xtask fuzz`'s options: the targets (all by default), seconds per target, sanitizer.
fn fuzz_args(args: &[String]) -> Result<(Vec<String>, u64, String)> {
    let mut targets: Vec<String> = Vec::new();
    let mut seconds: u64 = 60;
    // cargo-fuzz instruments with AddressSanitizer by default; `none` runs 2-3x faster.
    let mut sanitizer = "address".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--target" => targets.extend(
                it.next()
                    .context("--target needs a name")?
                    .split(',')
                    .map(str::to_string),
            ),
            "--time" => {
                seconds = it
                    .next()
                    .context("--time needs a number of seconds")?
                    .parse()
                    .context("--time takes whole seconds")?;
            }
            "--sanitizer" => {
                sanitizer = it
                    .next()
                    .context("--sanitizer needs a name (address, none)")?
                    .clone()
            }
            other => bail!(
                "unknown fuzz option {other:?}; expected --target NAME, --time SECONDS, --sanitizer address|none"
            ),
        }
    }
    let known: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    if targets.is_empty() {
        targets = known.iter().map(|t| t.to_string()).collect();
    }
    if let Some(bad) = targets.iter().find(|t| !known.contains(&t.as_str())) {
        bail!(
            "unknown fuzz target {bad:?}; the targets are {}",
            known.join(", ")
        );
    }
    Ok((targets, seconds, sanitizer))
}

/// `cargo xtask fuzz [--target NAME] [--time SECONDS] [--sanitizer address|none]`.
pub(crate) fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let (targets, seconds, sanitizer) = fuzz_args(args)?;
    require_nightly()?;
    let has_fuzz = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        bail!("cargo-fuzz is not installed: `cargo +nightly install cargo-fuzz --locked`");
    }
    let fuzz_dir = root.join("fuzz");
    let out_dir = root.join("target").join("fuzz");
    std::fs::create_dir_all(&out_dir)?;
    let mut rows = Vec::new();
    let mut crashes = Vec::new();
    for t in &targets {
        // New inputs go to a scratch corpus; the committed one only seeds it.
        let scratch = fuzz_dir.join("corpus-scratch").join(t);
        let seeds = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&seeds)?;
        eprintln!("\n==> fuzz {t} for {seconds} s");
        // Build first, so that the time given is all fuzzing.
        let built = nightly_cargo()
            .current_dir(&fuzz_dir)
            .args(["fuzz", "build", "--sanitizer", &sanitizer, t])
            .status()
            .with_context(|| format!("could not start cargo fuzz build {t}"))?;
        if !built.success() {
            bail!("cargo fuzz build {t} failed ({built})");
        }
        let out = nightly_cargo()
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run", "--sanitizer", &sanitizer, t])
            .arg(&scratch)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .output()
            .with_context(|| format!("could not start cargo fuzz run {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        std::fs::write(out_dir.join(format!("{t}.log")), &log)?;
        let run = parse_libfuzzer(&log);
        if !out.status.success() && run.crash.is_none() {
            bail!(
                "cargo fuzz run {t} failed ({}); see {}",
                out.status,
                out_dir.join(format!("{t}.log")).display()
            );
        }
        if let Some(c) = &run.crash {
            crashes.push(format!("{t}: {c}"));
        }
        rows.push(format!(
            "| {t} | {} | {} | {} | {} | {} |",
            run.executions,
            run.per_second,
            run.coverage,
            run.corpus,
            run.crash
                .as_deref()
                .map_or("none".to_string(), |c| format!("crash: {c}"))
        ));
    }
    let table = format!(
        "| target | executions | per second | coverage | corpus | crashes |\n|---|---:|---:|---:|---:|---|\n{}\n",
        rows.join("\n")
    );
    std::fs::write(out_dir.join("summary.md"), &table)?;
    println!("\n{table}");
    if !crashes.is_empty() {
        bail!(
            "the fuzzer found crashes:\n  {}\ncopy each input into fuzz/corpus/<target>/ (the corpus tests replay it), then fix it",
            crashes.join("\n  ")
        );
    }
    Ok(())
}

/// The crates and the sanitizer each runs under.
const SANITIZED: &[(&str, &[&str])] = &[
    (
        "address",
        &[
            "storage-io-core",
            "storage-io-sync",
            "storage-io-testkit",
            "storage-io-uring",
            // The async file API: ops dropped at every await point on the callers' rings
            // (tests/caller_rings.rs) and through the workers.
            "storage-io-fs",
        ],
    ),
    (
        "thread",
        &["storage-io-sync", "storage-io-scheduler", "storage-io-wal"],
    ),
];

/// `cargo xtask sanitize [address|thread]`: the unit and integration tests under
/// AddressSanitizer and ThreadSanitizer (nightly, `-Zsanitizer`).
pub(crate) fn sanitize(root: &Path, args: &[String]) -> Result<()> {
    require_nightly()?;
    let wanted: Vec<&str> = if args.is_empty() {
        SANITIZED.iter().map(|s| s.0).collect()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let host = "x86_64-unknown-linux-gnu";
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for &(sanitizer, crates) in SANITIZED.iter().filter(|s| wanted.contains(&s.0)) {
        // ThreadSanitizer needs std built with it (-Zbuild-std, from the rust-src component):
        // rustc refuses to mix it with the prebuilt std, and forcing the mix reports races
        // inside the test harness's own synchronisation, which TSan cannot see.
        let build_std = sanitizer == "thread";
        if build_std && !has_rust_src() {
            let why = "thread: skipped, the nightly toolchain has no rust-src component for \
                       -Zbuild-std (`rustup component add rust-src --toolchain nightly`)";
            eprintln!("\n==> {why}");
            skipped.push(why);
            continue;
        }
        let mut cmd = nightly_cargo();
        cmd.current_dir(root)
            .env("RUSTFLAGS", format!("-Zsanitizer={sanitizer}"))
            .env("RUSTDOCFLAGS", format!("-Zsanitizer={sanitizer}"))
            .env(
                "CARGO_TARGET_DIR",
                root.join("target").join(format!("sanitize-{sanitizer}")),
            )
            // Leaks are not what this run is for: a test may end with a worker thread's buffers alive.
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .env("TSAN_OPTIONS", "halt_on_error=1")
            // The io_uring tests must run, not skip.
            .env("STORAGE_IO_REQUIRE_URING", "1")
            .args(["test", "--target", host, "--lib", "--tests"]);
        if build_std {
            cmd.arg("-Zbuild-std");
        }
        for c in crates {
            cmd.args(["-p", c]);
        }
        eprintln!("\n==> {sanitizer} sanitizer: {}", crates.join(", "));
        let started = Instant::now();
        let status = cmd.status().context("could not start cargo +nightly test")?;
        let secs = started.elapsed().as_secs_f64();
        if status.success() {
            eprintln!("==> {sanitizer} sanitizer: clean in {secs:.0} s");
        } else {
            failed.push(format!("{sanitizer} ({status}, {secs:.0} s)"));
        }
    }
    if !failed.is_empty() {
        bail!("sanitizer runs failed: {}", failed.join(", "));
    }
    if !skipped.is_empty() && args.iter().any(|a| a == "thread") {
        bail!("{}", skipped.join("; "));
    }
    Ok(())
}

/// Whether the nightly toolchain has std's sources (the rust-src component).
fn has_rust_src() -> bool {
    let Ok(out) = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/std")
        .is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_output_gives_executions_coverage_and_crashes() {
        let out = "#2\tINITED cov: 120 ft: 130 corp: 12/3Kb exec/s: 0 rss: 40Mb\n\
                   #524288\tpulse  cov: 151 ft: 402 corp: 88/20Kb lim: 4096 exec/s: 174762 rss: 50Mb\n\
                   #9000000\tDONE   cov: 153 ft: 410 corp: 91/21Kb lim: 4096 exec/s: 150000 rss: 51Mb\n\
                   stat::number_of_executed_units: 9000017\n";
        assert_eq!(
            parse_libfuzzer(out),
            FuzzRun {
                executions: 9_000_017,
                coverage: 153,
                corpus: 91,
                per_second: 150_000,
                crash: None
            }
        );
        let crashed = "==1== ERROR: libFuzzer: deadly signal\n\
                       artifact_prefix='artifacts/x/'; Test unit written to artifacts/x/crash-abc\n";
        assert_eq!(
            parse_libfuzzer(crashed).crash.as_deref(),
            Some("artifacts/x/crash-abc")
        );
    }
}
