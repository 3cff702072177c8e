//! Zero-copy page reads: `schedule_read_shared` and `schedule_read_pages_shared` answer with
//! the buffer the read landed in, shared by every caller of one I/O; `schedule_read` still
//! gives each caller its own copy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::*;

#[test]
fn joined_shared_reads_share_one_buffer_and_owned_reads_get_their_own() {
    let (gate, sched) = open_gated(11, 1);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 3)).recv().unwrap();
    let before = sched.stats();

    gate.close();
    let shared: Vec<_> = (0..4).map(|_| sched.schedule_read_shared(page)).collect();
    let owned: Vec<_> = (0..2).map(|_| sched.schedule_read(page)).collect();
    wait_until("the other reads to join", || {
        sched.stats().reads_joined - before.reads_joined == 5
    });
    gate.open();

    let shared: Vec<_> = shared.into_iter().map(|r| r.recv().unwrap()).collect();
    let owned: Vec<_> = owned.into_iter().map(|r| r.recv().unwrap()).collect();
    for bytes in &shared {
        assert_eq!(stamp(bytes), (page.0, 3));
        assert_eq!(
            bytes.as_ptr(),
            shared[0].as_ptr(),
            "one buffer for every shared reader"
        );
    }
    for bytes in &owned {
        assert_eq!(stamp(bytes), (page.0, 3));
        assert_ne!(bytes.as_ptr(), shared[0].as_ptr(), "an owned read is a copy");
    }
    assert_ne!(owned[0].as_ptr(), owned[1].as_ptr());
    assert_eq!(sched.stats().read_ios - before.read_ios, 1);
}

#[test]
fn pages_of_one_merged_read_are_slices_of_one_buffer() {
    let fs = storage_io_testkit::memio::MemFs::new(12);
    let sched = open(&mem_factory(&fs), config(1));
    let pages = allocate(&sched, 4);
    for (v, &p) in pages.iter().enumerate() {
        sched.schedule_write(p, page_bytes(p, v as u32)).recv().unwrap();
    }
    let before = sched.stats();
    let got = sched.schedule_read_pages_shared(pages.clone()).recv().unwrap();
    assert_eq!(
        sched.stats().read_ios - before.read_ios,
        1,
        "four adjacent pages, one read"
    );
    for (i, (bytes, &p)) in got.iter().zip(&pages).enumerate() {
        assert_eq!(stamp(bytes), (p.0, i as u32));
        assert_eq!(bytes.len(), PAGE);
        assert_eq!(bytes.as_ptr() as usize, got[0].as_ptr() as usize + i * PAGE);
    }
    // The owned form answers the same bytes, each page its own.
    let owned = sched.schedule_read_pages(pages.clone()).recv().unwrap();
    assert_eq!(owned, got);
}

#[test]
fn a_read_of_a_page_being_written_shares_the_writers_bytes() {
    let fs = storage_io_testkit::memio::MemFs::new(13);
    let gate = storage_io_testkit::gated::Gate::new();
    gate.open();
    let factory = gated_factory_for(&fs, &gate, &[storage_io_core::OpKind::Write]);
    let sched = open(&factory, config(1));
    let page = allocate(&sched, 1)[0];

    gate.close(); // the write stays in flight
    let data = page_bytes(page, 9);
    let write = sched.schedule_write(page, data.clone());
    let read = sched.schedule_read_shared(page).recv().unwrap();
    assert_eq!(
        read.as_ptr(),
        data.as_ptr(),
        "answered from the pending write, not copied"
    );
    assert_eq!(stamp(&read), (page.0, 9));
    gate.open();
    write.recv().unwrap();
}

#[test]
fn a_page_past_the_end_of_the_file_reads_as_zeros_even_in_a_reused_buffer() {
    let fs = storage_io_testkit::memio::MemFs::new(14);
    let sched = open(&mem_factory(&fs), config(1));
    let pages = allocate(&sched, 2);
    sched
        .schedule_write(pages[0], page_bytes(pages[0], 1))
        .recv()
        .unwrap();
    // Read the written page first, so a pooled buffer may hold its bytes, then the page past
    // the end of the file.
    drop(sched.schedule_read_shared(pages[0]).recv().unwrap());
    let empty = sched.schedule_read_shared(pages[1]).recv().unwrap();
    assert_eq!(empty.len(), PAGE);
    assert!(empty.iter().all(|&b| b == 0));
}

#[test]
fn shared_pages_outlive_the_scheduler() {
    let fs = storage_io_testkit::memio::MemFs::new(15);
    let sched = Arc::new(open(&mem_factory(&fs), config(2)));
    let pages = allocate(&sched, 8);
    for &p in &pages {
        sched.schedule_write(p, page_bytes(p, 4)).recv().unwrap();
    }
    let held: Vec<_> = pages
        .iter()
        .map(|&p| sched.schedule_read_shared(p).recv().unwrap())
        .collect();
    sched.shutdown().unwrap();
    drop(sched);
    for (bytes, &p) in held.iter().zip(&pages) {
        assert_eq!(stamp(bytes), (p.0, 4));
    }
}
