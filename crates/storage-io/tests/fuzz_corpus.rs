//! Replays the `config_text` fuzz corpus (`fuzz/corpus/config_text`) through the check the
//! cargo-fuzz target runs. `STORAGE_IO_WRITE_CORPUS=1` rewrites the seeds: each config's
//! defaults as JSON and TOML, and one bad value of each.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use storage_io::fuzzing::check_config_text;
use storage_io::scheduler::SchedulerConfig;
use storage_io::wal::WalConfig;
use storage_io_testkit::corpus::replay;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let texts: [(u8, &str, String, String); 3] = [
        (
            0,
            "io",
            serde_json::to_string(&storage_io::IoConfig::default()).unwrap(),
            toml::to_string(&storage_io::IoConfig::default()).unwrap(),
        ),
        (
            2,
            "wal",
            serde_json::to_string(&WalConfig::default()).unwrap(),
            toml::to_string(&WalConfig::default()).unwrap(),
        ),
        (
            4,
            "sched",
            serde_json::to_string(&SchedulerConfig::default()).unwrap(),
            toml::to_string(&SchedulerConfig::default()).unwrap(),
        ),
    ];
    let mut out = Vec::new();
    for (which, name, json, toml) in texts {
        let mut j = vec![which];
        j.extend_from_slice(json.as_bytes());
        out.push((format!("{name}-json"), j));
        let mut t = vec![which | 1];
        t.extend_from_slice(toml.as_bytes());
        out.push((format!("{name}-toml"), t));
        let mut bad = vec![which];
        bad.extend_from_slice(br#"{"queue_depth": 0, "segment_size_bytes": 1, "page_size": 3}"#);
        out.push((format!("{name}-bad"), bad));
    }
    out
}

#[test]
fn config_text_fuzz_corpus_replays_without_breaking_an_invariant() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_text");
    replay(&dir, &seeds(), "STORAGE_IO_WRITE_CORPUS", 9, check_config_text);
}
