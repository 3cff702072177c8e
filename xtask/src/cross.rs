//! The cross-platform build check: every library crate, with default features, must compile and
//! pass clippy (`-D warnings`) for the non-Linux targets in [`TARGETS`]. `cargo check` and
//! `cargo clippy` only: nothing is linked, so no cross linker or SDK is needed, only the target's
//! standard library (`rustup target add`).
//!
//! - `cargo xtask cross`: installs the targets that are missing (saying loudly when the download
//!   is refused, and going on with the rest), then runs `check` and `clippy` per target and crate.
//! - `cargo xtask cross` then also runs the test suites for `x86_64-pc-windows-gnu` under Wine
//!   (installing `wine`, `wine64` and `gcc-mingw-w64-x86-64` with apt-get when missing, and
//!   saying loudly when that is refused); `--no-wine` leaves that out.
//! - `cargo xtask ci` calls [`clippy_installed`]: clippy per crate for every target already
//!   installed, saying which ran and which were skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, run_step};

/// The targets the library crates must build for, besides the host's Linux.
pub(crate) const TARGETS: [&str; 5] = [
    "x86_64-unknown-freebsd",
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
    "x86_64-pc-windows-gnu",
    "x86_64-pc-windows-msvc",
];

/// The library crates checked per target (storage-io-uring comes in through the façade, and
/// compiles to nothing off Linux).
const LIB_CRATES: [&str; 7] = [
    "storage-io-core",
    "storage-io-sync",
    "storage-io-testkit",
    "storage-io-wal",
    "storage-io-scheduler",
    "storage-io-fs",
    "storage-io",
];

/// The sysroot of the toolchain cargo uses here (the pinned one).
fn sysroot(root: &Path) -> Result<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc)
        .current_dir(root)
        .args(["--print", "sysroot"])
        .output()
        .context("could not run rustc --print sysroot")?;
    if !out.status.success() {
        bail!(
            "rustc --print sysroot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Whether the standard library for `target` is installed in the toolchain's sysroot.
fn installed(sysroot: &Path, target: &str) -> bool {
    sysroot.join("lib/rustlib").join(target).join("lib").is_dir()
}

/// Splits [`TARGETS`] into those installed and those not.
fn partition(root: &Path) -> Result<(Vec<&'static str>, Vec<&'static str>)> {
    let sysroot = sysroot(root)?;
    Ok(TARGETS.iter().partition(|t| installed(&sysroot, t)))
}

/// `rustup target add` for each missing target; a refused download (no network, no rustup) is
/// reported loudly and the run goes on with the targets that are there.
fn install_missing(root: &Path) -> Result<()> {
    let (_, missing) = partition(root)?;
    for target in missing {
        eprintln!("\n==> install target {target}: rustup target add {target}");
        let started = Instant::now();
        let status = Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", target])
            .status();
        match status {
            Ok(s) if s.success() => {
                eprintln!(
                    "==> install target {target}: ok in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            other => {
                let why = match other {
                    Ok(s) => format!("rustup exited with {s}"),
                    Err(e) => format!("could not run rustup: {e}"),
                };
                eprintln!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     !!! WARNING: could not install target {target} ({why}).\n\
                     !!! It is NOT checked in this run; the other targets go on.\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
                );
            }
        }
    }
    Ok(())
}

fn cargo_for(root: &Path, tool: &str, target: &str, krate: &str) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([tool, "--locked", "--target", target, "-p", krate]);
    if tool == "clippy" {
        cmd.args(["--", "-D", "warnings"]);
    }
    cmd
}

/// Runs `tool` (check or clippy) for every library crate on `target`; returns the failed steps.
fn run_target(root: &Path, target: &str, tools: &[&str]) -> Vec<String> {
    let mut failed = Vec::new();
    for tool in tools {
        for krate in LIB_CRATES {
            let name = format!("{tool} {krate} --target {target}");
            if let Err(e) = run_step(&name, &mut cargo_for(root, tool, target, krate)) {
                eprintln!("==> {e}");
                failed.push(name);
            }
        }
    }
    failed
}

/// `cargo xtask cross`.
pub(crate) fn cross(root: &Path, args: &[String]) -> Result<()> {
    let wine = match args {
        [] => true,
        [flag] if flag == "--no-wine" => false,
        other => bail!("cargo xtask cross takes only --no-wine (got {other:?})"),
    };
    let started = Instant::now();
    install_missing(root)?;
    let (ready, missing) = partition(root)?;
    let mut failed = Vec::new();
    for target in &ready {
        let t = Instant::now();
        failed.extend(run_target(root, target, &["check", "clippy"]));
        eprintln!("==> target {target}: done in {:.1} s", t.elapsed().as_secs_f64());
    }
    if wine {
        if ready.contains(&WINE_TARGET) {
            failed.extend(wine_tests(root));
        } else {
            eprintln!("\n!!! WARNING: {WINE_TARGET} is not installed: the Wine test run is SKIPPED");
        }
    }
    eprintln!(
        "\ncross: checked {} in {:.1} s (Windows tests under Wine: {wine}){}",
        ready.join(", "),
        started.elapsed().as_secs_f64(),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; NOT checked (not installed): {}", missing.join(", "))
        }
    );
    if !failed.is_empty() {
        bail!("cross: {} step(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// The target whose tests run under Wine.
const WINE_TARGET: &str = "x86_64-pc-windows-gnu";

/// Whether `program` runs (`program --version`).
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs Wine and the MinGW linker with apt-get when either is missing; false (after a loud
/// warning) when they are still missing.
fn ensure_wine() -> bool {
    if runs("wine") && runs("x86_64-w64-mingw32-gcc") {
        return true;
    }
    eprintln!("\n==> install wine: apt-get install -y wine wine64 gcc-mingw-w64-x86-64");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "wine", "wine64", "gcc-mingw-w64-x86-64"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if ok && runs("wine") && runs("x86_64-w64-mingw32-gcc") {
        return true;
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! WARNING: Wine or the MinGW linker is missing and could not be installed\n\
         !!! (apt-get install -y wine wine64 gcc-mingw-w64-x86-64). The Windows tests are NOT run.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    );
    false
}

/// The test suites run under Wine, per crate (the uring crate has nothing to test off Linux).
const WINE_CRATES: [&str; 7] = LIB_CRATES;

/// The Wine binary for 64-bit programs: Debian's `wine` wrapper wants the 32-bit half too.
fn wine_binary() -> PathBuf {
    let wine64 = PathBuf::from("/usr/lib/wine/wine64");
    if wine64.is_file() {
        wine64
    } else {
        PathBuf::from("wine")
    }
}

/// A Wine prefix of our own under `target/`, initialised, with a `bcryptprimitives.dll` stand-in
/// (Rust's std imports its `ProcessPrng`, which Wine 8 lacks), built from `xtask/src/wine/`.
fn wine_prefix(root: &Path, wine: &Path) -> Result<PathBuf> {
    // Under cargo's target directory (CARGO_TARGET_DIR when set), which must exist before
    // wineboot runs: it does not create the prefix's parent.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let prefix = target.join("wine-prefix");
    let system32 = prefix.join("drive_c/windows/system32");
    if !system32.is_dir() {
        run_step(
            "wine prefix",
            Command::new(wine)
                .args(["wineboot", "--init"])
                .env("WINEPREFIX", &prefix)
                .env("WINEDEBUG", "-all"),
        )?;
    }
    let dll = system32.join("bcryptprimitives.dll");
    if !dll.is_file() {
        let src = root.join("xtask/src/wine");
        run_step(
            "bcryptprimitives.dll stand-in",
            Command::new("x86_64-w64-mingw32-gcc")
                .args(["-shared", "-O2", "-o"])
                .arg(&dll)
                .arg(src.join("bcryptprimitives.c"))
                .arg(src.join("bcryptprimitives.def"))
                .arg("-ladvapi32"),
        )?;
    }
    Ok(prefix)
}

/// `cargo test --target x86_64-pc-windows-gnu -p <crate>` under Wine for every library crate;
/// returns the failed steps.
fn wine_tests(root: &Path) -> Vec<String> {
    if !ensure_wine() {
        return Vec::new();
    }
    let wine = wine_binary();
    let prefix = match wine_prefix(root, &wine) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("==> {e}");
            return vec!["wine prefix".to_string()];
        }
    };
    let mut failed = Vec::new();
    for krate in WINE_CRATES {
        let name = format!("test {krate} --target {WINE_TARGET} under wine");
        let mut cmd = cargo();
        cmd.current_dir(root)
            .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER", &wine)
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            // There is no io_uring to require on Windows: auto's thread pool is the backend
            // under test there, not a fallback to refuse.
            .env_remove("STORAGE_IO_REQUIRE_URING")
            // The WAL's in-flight crash test runs 10,000 crash points in `cargo xtask ci` on
            // Linux; under Wine each point costs ~100× more (20 minutes were not enough), so the
            // Windows run checks a sample of them.
            .env("STORAGE_IO_WAL_CRASH_POINTS", "300")
            .args([
                "test",
                "--locked",
                "--no-fail-fast",
                "--target",
                WINE_TARGET,
                "-p",
                krate,
            ]);
        if let Err(e) = run_step(&name, &mut cmd) {
            eprintln!("==> {e}");
            failed.push(name);
        }
    }
    failed
}

/// The `cargo xtask ci` part: clippy `-D warnings` per library crate for every installed target
/// of [`TARGETS`], failing fast; the targets not installed are named and skipped.
pub(crate) fn clippy_installed(root: &Path) -> Result<()> {
    let (ready, missing) = partition(root)?;
    let started = Instant::now();
    if !ready.is_empty() {
        // One cargo run for every target and crate: the host's build scripts and proc macros
        // are built once and the targets build side by side (CI's time budget).
        let mut cmd = cargo();
        cmd.current_dir(root).args(["clippy", "--locked"]);
        for krate in LIB_CRATES {
            cmd.args(["-p", krate]);
        }
        for target in &ready {
            cmd.args(["--target", target]);
        }
        cmd.args(["--", "-D", "warnings"]);
        run_step(
            &format!("clippy of the library crates for [{}]", ready.join(", ")),
            &mut cmd,
        )?;
    }
    eprintln!(
        "==> cross-target clippy: ran for [{}] in {:.1} s; skipped (not installed; `rustup target add` them or run `cargo xtask cross`): [{}]",
        ready.join(", "),
        started.elapsed().as_secs_f64(),
        missing.join(", ")
    );
    Ok(())
}
