//! Project automation for storage-io.
//!
//! - `cargo xtask ci`: everything CI checks, in order, failing fast: rustfmt, clippy (warnings
//!   denied), clippy for every installed non-Linux target, all tests, the fuzz corpus replay,
//!   docs (warnings denied), every published crate packaged and built from its `.crate`, the
//!   layering rule, and a bench smoke run.
//! - `cargo xtask bench [ARGS]`: builds the io-patterns driver in release mode and runs it on a
//!   temp file under `target/`; every argument is passed on (see `cargo xtask bench --help`),
//!   except `--features LIST`, which builds the driver with those cargo features (the optional
//!   peers: `async-peers`, `rocksdb`, …).
//! - `cargo xtask layering`: only the layering check.
//! - `cargo xtask package`: only the packaging step of `ci`.
//! - `cargo xtask cross`: installs the non-Linux targets and runs check and clippy of every library
//!   crate for each, then the Windows tests under Wine (see cross.rs); `ci` runs the clippy part
//!   for the targets already installed.
//! - `cargo xtask fuzz [--target NAME] [--time SECONDS]`, `cargo xtask sanitize [address|thread]`:
//!   the nightly-only checks (see fuzz.rs), not part of `ci`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod cross;
mod fuzz;

/// The bench driver's command line, the same file the driver compiles: help, `--list` and
/// argument errors answer here, without building the release driver first.
// The driver reads every field and uses every item; xtask checks the arguments only, and the
// items are `pub` for the driver's library.
#[allow(dead_code, unreachable_pub)]
#[path = "../../benches/src/cli.rs"]
mod bench_cli;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..], false),
        Some("layering") => layering(&root),
        Some("package") => package(&root, false),
        Some("cross") => cross::cross(&root, &args[1..]),
        Some("fuzz") => fuzz::fuzz(&root, &args[1..]),
        Some("sanitize") => fuzz::sanitize(&root, &args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            println!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 ci         fmt, clippy -D warnings, tests, fuzz corpus, docs, package, layering, bench smoke (what CI runs)\n  \
                 bench      the queue-depth benchmark (cargo xtask bench --help for flags)\n  \
                 layering   check that no crate depends on a crate of a higher layer\n  \
                 package    only the packaging step: every published crate packaged and built from its .crate\n  \
                 cross      [--no-wine]: install the macOS/Windows/FreeBSD targets, check + clippy the library\n             \
                 crates for each, and run the tests for x86_64-pc-windows-gnu under Wine\n  \
                 fuzz       [--target NAME] [--time SECONDS]: run the cargo-fuzz targets (nightly, cargo-fuzz)\n  \
                 sanitize   [address|thread]: the tests under AddressSanitizer / ThreadSanitizer (nightly)"
            );
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}; try `cargo xtask help`"),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

fn run_step(name: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("\n==> {name}: {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {name}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{name} failed ({status}) after {secs:.1} s");
    }
    eprintln!("==> {name}: ok in {secs:.1} s");
    Ok(())
}

/// Runs `crates/storage-io/examples/<name>.rs` (debug build, as the tests) with `args`.
fn run_example(root: &Path, name: &str, what: &str, args: &[&str]) -> Result<()> {
    run_step(
        &format!("example {name} ({what})"),
        cargo()
            .current_dir(root)
            .args([
                "run",
                "--quiet",
                "--locked",
                "-p",
                "storage-io",
                "--example",
                name,
                "--",
            ])
            .args(args),
    )
}

/// The features that compile the fuzz entry points (`pub mod fuzzing`) and the `fuzz_corpus`
/// test targets, which need the repository's `fuzz/corpus/` and are not packaged.
const FUZZING_FEATURES: &str = "storage-io-wal/fuzzing,storage-io-scheduler/fuzzing,storage-io/fuzzing";

/// Workspace members that are never published (`publish = false`), left out of `cargo package`.
const UNPUBLISHED: &[&str] = &["storage-io-benches", "xtask"];

/// rustfmt, clippy with warnings denied (with the fuzzing features), and clippy of the façade
/// without io_uring.
fn lint(root: &Path) -> Result<()> {
    run_step(
        "rustfmt",
        cargo().current_dir(root).args(["fmt", "--all", "--", "--check"]),
    )?;
    run_step(
        "clippy",
        cargo().current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--features",
            FUZZING_FEATURES,
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step(
        "clippy (storage-io and storage-io-fs without the io-uring and tokio features)",
        cargo().current_dir(root).args([
            "clippy",
            "-p",
            "storage-io",
            "-p",
            "storage-io-fs",
            "--no-default-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    Ok(())
}

fn ci(root: &Path, args: &[String]) -> Result<()> {
    let started = Instant::now();
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if in_ci && std::env::var_os("STORAGE_IO_REQUIRE_URING").is_none() {
        eprintln!(
            "note: CI is set but STORAGE_IO_REQUIRE_URING is not; io_uring tests may skip instead of failing"
        );
    }
    let skip_bench = args.iter().any(|a| a == "--no-bench");
    lint(root)?;
    cross::clippy_installed(root)?;
    run_step(
        "tests",
        cargo()
            .current_dir(root)
            .args(["test", "--workspace", "--locked"]),
    )?;
    run_step(
        "fuzz corpus replay and the tests that need the fuzzing feature (on stable)",
        cargo().current_dir(root).args([
            "test",
            "--locked",
            "-p",
            "storage-io-wal",
            "-p",
            "storage-io-scheduler",
            "-p",
            "storage-io",
            "--features",
            FUZZING_FEATURES,
            "--test",
            "fuzz_corpus",
            // Its version-1 log is built by the fuzzing module's writer.
            "--test",
            "precise_window",
        ]),
    )?;
    run_example(
        root,
        "segment_log",
        "a segment log on tokio through the async file API",
        &["--records", "3000", "--segment-bytes", "131072"],
    )?;
    run_example(
        root,
        "page_engine",
        "engine-owned allocation and physical redo, with power cuts",
        &[
            "--pushes",
            "1500",
            "--checkpoint-every",
            "400",
            "--crash-points",
            "40",
        ],
    )?;
    run_step(
        "docs",
        cargo()
            .current_dir(root)
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--workspace", "--no-deps", "--locked"]),
    )?;
    package(root, in_ci)?;
    eprintln!("\n==> layering");
    layering(root)?;
    if !skip_bench {
        eprintln!("\n==> bench smoke");
        bench(root, &["--smoke".to_string()], true)?;
    }
    eprintln!(
        "\nci: all steps passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(root: &Path, args: &[String], debug: bool) -> Result<()> {
    let (features, args) = split_features(args);
    // Help, --list and a wrong argument answer at once; only a run builds the driver.
    let parsed = match bench_cli::parse("cargo xtask bench", &args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(()), // --help or --version, printed
        Err(e) => {
            // A usage error, as clap reports one: the message and exit status 2, no trace.
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if parsed.list {
        let text = bench_cli::list_text(&|name, needs| peer_here(name, needs, &features));
        print!("{text}");
        println!(
            "\n(peers behind a feature: `cargo xtask bench --features NAME`; `async-peers` turns on the four \
             io_uring runtimes)"
        );
        return Ok(());
    }
    let mut cmd = cargo();
    cmd.current_dir(root).args(["run", "--quiet", "--locked"]);
    if !debug {
        cmd.arg("--release");
    }
    cmd.args(["-p", "storage-io-benches", "--bin", "io-patterns"]);
    for f in &features {
        cmd.args(["--features", f]);
    }
    cmd.arg("--");
    cmd.args(args);
    run_step("io-patterns", &mut cmd)
}

/// Whether the driver built with `features` (plus its default, okaywal) runs a peer that needs `needs`
/// on this machine.
fn peer_here(_name: &str, needs: bench_cli::Needs, features: &[String]) -> std::result::Result<(), String> {
    let on: Vec<&str> = features
        .iter()
        .flat_map(|f| f.split([',', ' ']))
        .map(str::trim)
        .collect();
    match needs {
        bench_cli::Needs::Nothing => Ok(()),
        bench_cli::Needs::Program(p) if bench_cli::program_found(p) => Ok(()),
        bench_cli::Needs::Program(p) => Err(format!("{p} not found (apt-get install {p})")),
        bench_cli::Needs::Feature(f) => {
            let via_group =
                on.contains(&"async-peers") && ["tokio-uring", "compio", "monoio", "glommio"].contains(&f);
            if f == "okaywal" || on.contains(&f) || via_group {
                Ok(())
            } else {
                let extra = if f == "rocksdb" {
                    " (apt-get install librocksdb-dev libclang-dev; ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu)"
                } else {
                    ""
                };
                Err(format!("not built: add --features {f}{extra}"))
            }
        }
    }
}

/// The bench's `--features LIST` (or `--features=LIST`) arguments, which go to cargo, and the
/// rest, which go to the driver.
fn split_features(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut features, mut rest) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--features" {
            features.extend(it.next().cloned());
        } else if let Some(list) = a.strip_prefix("--features=") {
            features.push(list.to_string());
        } else {
            rest.push(a.clone());
        }
    }
    (features, rest)
}

/// Every published crate as crates.io would get it: packaged, then built from its `.crate`
/// against the other crates' `.crate`s (so a path-only dependency, a dev-dependency cycle or a
/// file outside the package fails here). On a 2-core machine: about 2 min with the crates.io
/// dependencies already built in `target/package-check`, 4.5 min from cold. A clean checkout
/// needs no `--allow-dirty`; outside CI, uncommitted edits are allowed so that `ci` runs before
/// a commit.
fn package(root: &Path, in_ci: bool) -> Result<()> {
    let published = forget_unpacked_packages(root)?;
    // The crates are verified in a target directory of their own, with our crates' artifacts
    // removed first: cargo takes a registry crate of an unchanged version for unchanged, so it
    // would link the previous run's build of a dependency that has changed since (the
    // dependencies from crates.io stay built there between runs).
    let target_dir = root.join("target").join("package-check");
    if target_dir.is_dir() {
        let mut clean = cargo();
        clean
            .current_dir(root)
            .arg("clean")
            .arg("--target-dir")
            .arg(&target_dir);
        for name in &published {
            clean.args(["-p", name]);
        }
        run_step("package: forget the last run's builds of our crates", &mut clean)?;
    }
    let mut package = cargo();
    package
        .current_dir(root)
        .args(["package", "--workspace", "--locked", "--target-dir"])
        .arg(&target_dir);
    for name in UNPUBLISHED {
        package.args(["--exclude", name]);
    }
    if !in_ci {
        package.arg("--allow-dirty");
    }
    run_step(
        "package (every published crate, verified from its .crate)",
        &mut package,
    )
}

/// Removes the copies of our own crates that an earlier `cargo package` unpacked from its
/// temporary local registry (`$CARGO_HOME/registry/src/-<hash>/<name>-<version>`, the directory
/// without a host name is a local registry's). Cargo does not unpack a crate again when a
/// directory of that name and version exists, so without this the second run would verify each
/// crate against the *first* run's sources of its dependencies (seen: `unresolved import
/// storage_io_core::bytes` after the re-export was added). Returns the published crates' names.
fn forget_unpacked_packages(root: &Path) -> Result<Vec<String>> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cargo"),
            None => return Ok(Vec::new()),
        },
    };
    let meta = workspace_metadata(root)?;
    let packages = meta["packages"].as_array().context("metadata has no packages")?;
    let published: Vec<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|name| !UNPUBLISHED.contains(name))
        .map(str::to_string)
        .collect();
    let unpacked: Vec<String> = packages
        .iter()
        .filter_map(|p| Some(format!("{}-{}", p["name"].as_str()?, p["version"].as_str()?)))
        .collect();
    let Ok(sources) = std::fs::read_dir(cargo_home.join("registry").join("src")) else {
        return Ok(published);
    };
    for source in sources.flatten() {
        if !source.file_name().to_string_lossy().starts_with('-') {
            continue; // a real registry (crates.io): never touched
        }
        for name in &unpacked {
            let dir = source.path().join(name);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
                eprintln!("package: removed the stale unpacked copy {}", dir.display());
            }
        }
    }
    Ok(published)
}

/// The layer of each workspace crate; tools may depend on anything.
fn layer_of(name: &str) -> Option<u8> {
    Some(match name {
        "storage-io-core" => 0,
        "storage-io-uring" | "storage-io-sync" | "storage-io-testkit" => 1,
        "storage-io-scheduler" | "storage-io-wal" | "storage-io-fs" => 2,
        "storage-io" => 3,
        "storage-io-benches" | "xtask" => 9,
        _ => return None,
    })
}

/// `cargo metadata` of the workspace's own packages (no dependencies), parsed.
fn workspace_metadata(root: &Path) -> Result<serde_json::Value> {
    let out = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("parse cargo metadata")
}

/// Crates that would make core OS-specific.
const FORBIDDEN_IN_CORE: &[&str] = &["io-uring", "nix", "storage-io-uring"];

fn layering(root: &Path) -> Result<()> {
    let meta = workspace_metadata(root)?;
    let problems = check_layers(&meta)?;
    if !problems.is_empty() {
        bail!("layering violated:\n  {}", problems.join("\n  "));
    }
    eprintln!("layering: ok (no crate depends on a higher layer; core has no OS-specific crates)");
    Ok(())
}

fn check_layers(meta: &serde_json::Value) -> Result<Vec<String>> {
    let packages = meta["packages"].as_array().context("metadata has no packages")?;
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut problems = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        let Some(layer) = layer_of(name) else {
            problems.push(format!(
                "{name}: not in the layer map of xtask/src/main.rs; give it a layer"
            ));
            continue;
        };
        for dep in p["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or("?");
            let kind = dep["kind"].as_str().unwrap_or("normal");
            if layer == 0 && FORBIDDEN_IN_CORE.contains(&dep_name) && kind != "dev" {
                problems.push(format!(
                    "{name} (L0) depends on {dep_name}: core must stay OS-neutral"
                ));
            }
            if !members.contains(&dep_name) {
                continue;
            }
            let Some(dep_layer) = layer_of(dep_name) else {
                continue;
            };
            let ok = if kind == "dev" {
                dep_layer <= layer
            } else {
                dep_layer < layer
            };
            if !ok {
                problems.push(format!(
                    "{name} (L{layer}) has a {kind} dependency on {dep_name} (L{dep_layer}); arrows only point down"
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_features_go_to_cargo_and_the_rest_to_the_driver() {
        let args: Vec<String> = [
            "--features",
            "async-peers",
            "--workload",
            "async_rand_read",
            "--features=rocksdb",
        ]
        .map(String::from)
        .to_vec();
        let (features, rest) = split_features(&args);
        assert_eq!(features, ["async-peers", "rocksdb"]);
        assert_eq!(rest, ["--workload", "async_rand_read"]);
    }

    #[test]
    fn bench_arguments_are_checked_before_the_driver_is_built() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = |a: &[&str]| {
            bench_cli::parse("cargo xtask bench", &argv(a))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["--workload", "rand_reed"]).contains("unknown workload \"rand_reed\""));
        assert!(err(&["--rounds", "3"]).contains("is odd"));
        assert!(err(&["--frobnicate"]).contains("--frobnicate"));
        let ok = bench_cli::parse("cargo xtask bench", &argv(&["--list"])).unwrap();
        assert!(ok.is_some_and(|a| a.list));
        let text = bench_cli::list_text(&|name, needs| peer_here(name, needs, &["async-peers".into()]));
        assert!(
            text.contains("rand_read") && text.contains("wal_recover"),
            "{text}"
        );
        let line = |peer: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{peer} ")))
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            line("compio").contains("[yes]"),
            "async-peers builds compio: {text}"
        );
        assert!(
            line("rocksdb").contains("[no: not built: add --features rocksdb"),
            "{text}"
        );
    }

    fn meta(pkgs: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "packages": pkgs })
    }

    #[test]
    fn upward_and_os_specific_dependencies_are_reported() {
        let m = meta(serde_json::json!([
            {"name": "storage-io-core", "dependencies": [{"name": "nix", "kind": null}]},
            {"name": "storage-io-sync", "dependencies": [
                {"name": "storage-io-core", "kind": null},
                {"name": "storage-io-testkit", "kind": "dev"},
                {"name": "storage-io-scheduler", "kind": null}
            ]},
            {"name": "storage-io-testkit", "dependencies": [{"name": "storage-io-sync", "kind": null}]},
            {"name": "storage-io-scheduler", "dependencies": []},
            {"name": "mystery", "dependencies": []}
        ]));
        let problems = check_layers(&m).unwrap();
        let text = problems.join("\n");
        assert!(text.contains("storage-io-core (L0) depends on nix"), "{text}");
        assert!(
            text.contains("storage-io-sync (L1) has a normal dependency on storage-io-scheduler"),
            "{text}"
        );
        assert!(
            text.contains("storage-io-testkit (L1) has a normal dependency on storage-io-sync"),
            "{text}"
        );
        assert!(text.contains("mystery: not in the layer map"), "{text}");
        assert!(!text.contains("dev dependency on storage-io-testkit"), "{text}");
        assert_eq!(problems.len(), 4, "{text}");
    }
}
