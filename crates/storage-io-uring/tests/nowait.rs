//! Reads answered from the page cache at submit (`IoConfig::nowait_reads`): a cached read never
//! enters the ring, a partly cached one reads only the rest through it, direct files are never
//! tried, and the switch turns it off.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Write;

use common::{dir, drain};
use storage_io_core::{IoConfig, OpenOptions, StorageIo};
use storage_io_uring::{UringStorageIo, usable_or_skip};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 241) as u8).collect()
}

#[test]
fn uring_cached_read_completes_at_submit_without_entering_the_ring() {
    if !usable_or_skip("uring_cached_read_completes_at_submit_without_entering_the_ring") {
        return;
    }
    let tmp = dir();
    let path = tmp.path().join("hot");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&pattern(16384))
        .unwrap(); // in the page cache now
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io.open_file(&path, &OpenOptions::read_only()).unwrap();
    let calls = io.stats().submit_calls();
    for i in 0..4u64 {
        io.submit_read(fd, vec![0u8; 4096].into(), i * 4096).unwrap();
    }
    assert_eq!(io.nowait_hits(), 4, "every cached read was answered at submit");
    assert_eq!(
        io.pending_count(),
        4,
        "each still completes exactly once, at the next poll"
    );
    let mut done = Vec::new();
    assert_eq!(io.poll_completions(&mut done), 4);
    assert_eq!(
        io.stats().submit_calls(),
        calls,
        "no io_uring_enter was made for them"
    );
    done.sort_by_key(|c| c.offset);
    for c in &done {
        assert_eq!(c.result.as_ref().copied().unwrap(), 4096);
        let at = c.offset as usize;
        assert_eq!(&c.buf.as_ref().unwrap()[..], &pattern(16384)[at..at + 4096]);
    }
    // A read past the cached end of the file: the cached part at submit, the rest (EOF) in the
    // ring, one completion with what the file holds.
    io.submit_read(fd, vec![0u8; 8192].into(), 12288).unwrap();
    let c = drain(&mut io).pop().unwrap();
    assert_eq!(c.result.unwrap(), 4096);
    assert_eq!(&c.buf.unwrap()[..], &pattern(16384)[12288..]);
    assert_eq!(
        io.nowait_hits(),
        4,
        "a partial hit is finished in the ring, not counted as a hit"
    );
}

#[test]
fn uring_nowait_reads_off_and_direct_files_always_use_the_ring() {
    if !usable_or_skip("uring_nowait_reads_off_and_direct_files_always_use_the_ring") {
        return;
    }
    let tmp = dir();
    let path = tmp.path().join("hot");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&pattern(8192))
        .unwrap();
    let off = IoConfig {
        nowait_reads: false,
        ..IoConfig::default()
    };
    for (what, config, options) in [
        ("nowait_reads off", off, OpenOptions::read_only()),
        (
            "an O_DIRECT file",
            IoConfig::default(),
            OpenOptions::read_only().with_direct(true),
        ),
    ] {
        let mut io = UringStorageIo::new(&config).unwrap();
        let fd = io.open_file(&path, &options).unwrap();
        let buf = io.alloc_buf(4096).unwrap();
        io.submit_read(fd, buf.into(), 4096).unwrap();
        let c = drain(&mut io).pop().unwrap();
        assert_eq!(c.result.unwrap(), 4096, "{what}");
        assert_eq!(&c.buf.unwrap()[..], &pattern(8192)[4096..], "{what}");
        assert_eq!(io.nowait_hits(), 0, "{what}: no read may be tried from the cache");
    }
}
