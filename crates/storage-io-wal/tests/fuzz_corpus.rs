//! Replays the fuzz corpus (`fuzz/corpus/wal_recovery`) through the same check the cargo-fuzz
//! target runs, so every input the fuzzer ever kept is a regression test on stable Rust.
//! `STORAGE_IO_WAL_WRITE_CORPUS=1` rewrites the seed inputs from logs the WAL writes itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use storage_io_testkit::corpus::replay;
use storage_io_testkit::memio::MemFs;
use storage_io_wal::WalManager;
use storage_io_wal::fuzzing::{FUZZ_SEGMENT_BYTES, check_frame, check_log_image};

use common::{DIR, mem_factory, small_config};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wal_recovery")
}

/// A log image in the fuzz input layout: control byte, then the segments back to back.
fn log_image(records: usize, seed: u64) -> Vec<u8> {
    let fs = MemFs::new(seed);
    let (wal, _) = WalManager::open(DIR, small_config(FUZZ_SEGMENT_BYTES), mem_factory(&fs)).unwrap();
    for i in 0..records {
        let len = (i * 37 + seed as usize) % 120;
        wal.commit(&vec![i as u8; len]).unwrap();
    }
    wal.close().unwrap();
    let mut image = vec![0u8];
    for path in fs.list() {
        let mut seg = fs.read_file(&path).unwrap();
        seg.resize(FUZZ_SEGMENT_BYTES as usize, 0);
        image.extend_from_slice(&seg);
    }
    image
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (records, seed) in [(1, 1), (6, 2), (20, 3)] {
        let clean = log_image(records, seed);
        out.push((format!("clean-{records}"), clean.clone()));
        for cut in [40usize, 300, clean.len() / 2] {
            let mut torn = clean.clone();
            torn.truncate(cut.min(torn.len()));
            out.push((format!("torn-{records}-{cut}"), torn));
        }
        for at in [33usize, 70, clean.len() / 3] {
            let mut flipped = clean.clone();
            if at < flipped.len() {
                flipped[at] ^= 0x40;
            }
            out.push((format!("flip-{records}-{at}"), flipped));
        }
        let mut gapped = clean.clone();
        gapped[0] = 0x80 | 2;
        out.push((format!("gap-{records}"), gapped));
    }
    out
}

#[test]
fn fuzz_corpus_replays_without_breaking_an_invariant() {
    let dir = corpus_dir();
    if std::env::var_os("STORAGE_IO_WAL_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus directory is in the repository") {
        let path = entry.unwrap().path();
        check_log_image(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(
        replayed >= 20,
        "only {replayed} corpus inputs in {}",
        dir.display()
    );
}

#[test]
fn fuzz_seeds_written_now_pass_the_check() {
    // The generator itself, so a format change that breaks the seeds is seen at once.
    for (name, bytes) in seeds() {
        std::panic::catch_unwind(|| check_log_image(&bytes)).unwrap_or_else(|_| panic!("seed {name}"));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Stable-Rust fuzzing in CI: random byte edits of a real log through the same check.
    #[test]
    fn fuzz_random_edits_of_a_real_log_break_no_invariant(
        records in 1usize..30,
        edits in proptest::collection::vec((0usize..8192, proptest::num::u8::ANY), 0..12),
        cut in proptest::option::of(0usize..8192),
        control in proptest::num::u8::ANY,
    ) {
        let mut image = log_image(records, records as u64);
        image[0] = control;
        for (at, byte) in edits {
            let len = image.len();
            image[at % len] = byte;
        }
        if let Some(cut) = cut {
            image.truncate(cut.max(1));
        }
        check_log_image(&image);
    }
}

/// Seeds of the `wal_frame` target: the first segment of real logs, with the control byte at the
/// first record (position 32, base LSN 0), and a few positions that hold no frame.
fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (records, seed) in [(1, 1), (6, 2)] {
        let image = log_image(records, seed);
        let segment = &image[1..1 + FUZZ_SEGMENT_BYTES as usize];
        for control in [32u8, 0, 40] {
            let mut input = vec![control];
            input.extend_from_slice(segment);
            out.push((format!("frame-{records}-{control}"), input));
        }
    }
    out
}

#[test]
fn wal_frame_fuzz_corpus_replays_without_breaking_an_invariant() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wal_frame");
    replay(
        &dir,
        &frame_seeds(),
        "STORAGE_IO_WAL_WRITE_CORPUS",
        6,
        check_frame,
    );
}
