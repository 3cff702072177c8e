//! The io-patterns driver's command line at its edges.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

/// `--file` under a directory that does not exist: a clear error naming the directory, a
/// non-zero exit, and nothing created (fio refuses such a path too).
#[test]
fn bench_file_in_a_missing_directory_is_refused_and_nothing_is_created() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new().prefix("cli").tempdir_in(base).unwrap();
    let missing = tmp.path().join("missing");
    let file = missing.join("dir").join("x.dat");
    let out_dir = tmp.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_io-patterns"))
        .args(["--smoke", "--no-fio", "--file"])
        .arg(&file)
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail; stderr: {stderr}");
    assert!(
        stderr.contains(&missing.join("dir").display().to_string()),
        "the error must name the missing directory: {stderr}"
    );
    assert!(!missing.exists(), "the missing directories were created");
    assert!(
        !out_dir.exists(),
        "an output directory was created for a refused run"
    );
}
