//! Replays the `sched_alloc_image` fuzz corpus (`fuzz/corpus/sched_alloc_image`) through the
//! check the cargo-fuzz target runs, so every input the fuzzer kept is a regression test on
//! stable Rust. `STORAGE_IO_WRITE_CORPUS=1` rewrites the seeds from images the scheduler writes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::*;
use storage_io_scheduler::PageId;
use storage_io_scheduler::fuzzing::check_alloc_image;
use storage_io_testkit::corpus::replay;
use storage_io_testkit::memio::MemFs;

/// Images the scheduler wrote: a fresh one, after allocations, after frees.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let fs = MemFs::new(1);
    let sched = open(&mem_factory(&fs), config(1));
    let slot = |i: usize| {
        fs.read_file(&Path::new(DIR).join(format!("pages.alloc.{i}")))
            .unwrap()
    };
    let mut out = vec![("fresh".to_string(), slot(1))];
    allocate(&sched, 5);
    out.push(("allocated".into(), slot(0)));
    sched.schedule_deallocate(PageId(1)).recv().unwrap();
    sched.schedule_deallocate(PageId(3)).recv().unwrap();
    out.push(("freed-a".into(), slot(0)));
    out.push(("freed-b".into(), slot(1)));
    out
}

#[test]
fn sched_alloc_image_fuzz_corpus_replays_without_breaking_an_invariant() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sched_alloc_image");
    replay(&dir, &seeds(), "STORAGE_IO_WRITE_CORPUS", 4, check_alloc_image);
}
