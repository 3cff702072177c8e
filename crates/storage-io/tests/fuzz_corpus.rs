//! Replays the `config_text` fuzz corpus (`fuzz/corpus/config_text`) through the check the
//! cargo-fuzz target runs. `STORAGE_IO_WRITE_CORPUS=1` rewrites the seeds: each config's
//! defaults as JSON and TOML, and one bad value of each.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use storage_io::fuzzing::check_config_text;
use storage_io::scheduler::IOSchedulerConfig;
use storage_io::wal::WalConfig;

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
            serde_json::to_string(&IOSchedulerConfig::default()).unwrap(),
            toml::to_string(&IOSchedulerConfig::default()).unwrap(),
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
    if std::env::var_os("STORAGE_IO_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds() {
        std::panic::catch_unwind(|| check_config_text(&bytes)).unwrap_or_else(|_| panic!("seed {name}"));
    }
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the config_text corpus is in the repository") {
        check_config_text(&std::fs::read(entry.unwrap().path()).unwrap());
        replayed += 1;
    }
    assert!(
        replayed >= 9,
        "only {replayed} corpus inputs in {}",
        dir.display()
    );
}
