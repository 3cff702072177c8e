//! [`replay`]: a fuzz target's corpus as a regression test on stable Rust.

use std::path::Path;

/// Replays every input in the corpus directory `dir` through `check` (the function the
/// cargo-fuzz target calls), after checking that each of `seeds` passes it too. With the
/// environment variable `write_env` set, the seeds are first written into `dir` (how a corpus is
/// regenerated after a format change). Panics if `dir` holds fewer than `min` inputs, so a
/// corpus that went missing fails loudly.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("one"), b"abc").unwrap();
/// let seeds = vec![("seed".to_string(), b"xyz".to_vec())];
/// storage_io_testkit::corpus::replay(dir.path(), &seeds, "NO_SUCH_VARIABLE", 1, |data| {
///     assert_eq!(data.len(), 3);
/// });
/// ```
pub fn replay(dir: &Path, seeds: &[(String, Vec<u8>)], write_env: &str, min: usize, check: impl Fn(&[u8])) {
    if std::env::var_os(write_env).is_some() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write seed {name}: {e}"));
        }
    }
    for (name, bytes) in seeds {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(bytes))).is_err() {
            panic!("seed {name} fails the check");
        }
    }
    let mut replayed = 0;
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("the corpus {} is in the repository: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        check(&data);
        replayed += 1;
    }
    assert!(
        replayed >= min,
        "only {replayed} corpus inputs in {}",
        dir.display()
    );
}
