//! Defects found in review of the scheduler and the page cache (issue 38, items 1 to 10): each
//! test is named after its defect and checks the behaviour through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use common::*;
use storage_io_scheduler::{DiskScheduler, SchedulerConfig, SchedulerError};
use storage_io_testkit::memio::MemFs;

/// A page file named like one of the scheduler's own files (an allocation slot) would have its
/// pages overwritten by allocation images: every such name is refused, whatever directory it
/// is written with.
#[test]
fn page_file_named_like_an_allocation_slot_is_refused() {
    for name in [
        "pages.alloc.0",
        "pages.alloc.1",
        "./pages.alloc.0",
        "/db/pages.alloc.1",
        "sub/pages.alloc.0",
        "PAGES.ALLOC.1",
    ] {
        let config = SchedulerConfig {
            page_file: PathBuf::from(name),
            ..config(1)
        };
        let err = config.validate().map(|()| name).unwrap_err();
        assert!(
            matches!(&err, SchedulerError::InvalidConfig(m) if m.contains("page_file")),
            "{name}: {err}"
        );
        let fs = MemFs::new(1);
        let opened = DiskScheduler::open(DIR, config, mem_factory(&fs));
        assert!(
            matches!(opened, Err(SchedulerError::InvalidConfig(_))),
            "{name}: open must refuse it too"
        );
        assert!(
            fs.list().is_empty(),
            "{name}: nothing is created: {:?}",
            fs.list()
        );
    }
    // Names that only look alike are the engine's to choose.
    for name in ["pages.alloc", "pages.alloc.2", "my.pages.alloc.0", "pages.db"] {
        let config = SchedulerConfig {
            page_file: PathBuf::from(name),
            ..config(1)
        };
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
