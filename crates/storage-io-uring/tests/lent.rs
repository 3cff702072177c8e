//! Registered buffers lent to callers ([`StorageIo::alloc_buf`]): I/O in place, fallbacks, and
//! buffers that outlive their ring or travel to another one.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::os::unix::fs::FileExt;

use storage_io_core::{
    AlignedBuf, IoBuf, IoCompletion, IoConfig, IoFd, OpenOptions, StorageIo, StorageIoError,
};
use storage_io_uring::{UringStorageIo, usable_or_skip};

mod common;
use common::{dir, drain};

fn page(i: u64) -> Vec<u8> {
    (0..4096u64).map(|j| (i * 131 + j * 7) as u8).collect()
}

/// Reads `len` bytes at `offset` into `buf` and returns the completion.
fn read_into(io: &mut UringStorageIo, fd: IoFd, buf: AlignedBuf, offset: u64) -> IoCompletion {
    let t = io
        .submit_read(fd, buf.into(), offset)
        .map_err(|e| e.error)
        .unwrap();
    drain(io).into_iter().find(|c| c.token == t).unwrap()
}

fn lent_of(c: IoCompletion) -> AlignedBuf {
    match c.buf {
        Some(IoBuf::Aligned(b)) => b,
        other => panic!("expected the aligned buffer back, got {other:?}"),
    }
}

#[test]
fn uring_lent_buffers_carry_reads_and_writes_in_place() {
    if !usable_or_skip("uring_lent_buffers_carry_reads_and_writes_in_place") {
        return;
    }
    let d = dir();
    let path = d.path().join("lent");
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io
        .open_file(&path, &OpenOptions::create().with_direct(true))
        .unwrap();
    for i in 0..16u64 {
        let mut buf = io.alloc_buf(4096).unwrap();
        assert!(buf.is_pooled(), "a free registered buffer is lent");
        buf.copy_from_slice(&page(i));
        io.submit_write_buf(fd, buf.into(), i * 4096)
            .map_err(|e| e.error)
            .unwrap();
    }
    io.submit_datasync(fd).unwrap();
    assert!(drain(&mut io).iter().all(IoCompletion::is_ok));
    assert_eq!(io.in_place_ops(), 16);
    let file = std::fs::File::open(&path).unwrap();
    let mut on_disk = vec![0u8; 4096];
    for i in 0..16u64 {
        file.read_exact_at(&mut on_disk, i * 4096).unwrap();
        assert_eq!(on_disk, page(i), "page {i} written from a lent buffer");
        let buf = io.alloc_buf(4096).unwrap();
        let c = read_into(&mut io, fd, buf, i * 4096);
        assert_eq!(c.result, Ok(4096));
        let back = lent_of(c);
        assert!(back.is_pooled(), "the lent buffer itself comes back");
        assert_eq!(&back[..], &page(i)[..], "page {i} read into a lent buffer");
    }
    assert_eq!(io.in_place_ops(), 32);
}

#[test]
fn uring_lent_buffers_finish_short_reads_and_keep_their_errors() {
    if !usable_or_skip("uring_lent_buffers_finish_short_reads_and_keep_their_errors") {
        return;
    }
    let d = dir();
    let path = d.path().join("short");
    std::fs::write(&path, &page(3)[..1000]).unwrap();
    let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io.open_file(&path, &OpenOptions::default()).unwrap();
    // Buffered: a lent buffer at an odd length and offset, across the end of the file.
    let mut buf = io.alloc_buf(4096).unwrap();
    buf.truncate(700);
    let c = read_into(&mut io, fd, buf, 500);
    assert_eq!(c.result, Ok(500));
    assert!(c.is_eof());
    let back = lent_of(c);
    assert_eq!(&back[..], &page(3)[500..1000]);
    // An error (a read on a write-only file) hands the lent buffer back with the errno.
    let wo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let wfd = io.register_fd(wo).unwrap();
    let c = read_into(&mut io, wfd, back, 0);
    assert_eq!(
        c.result.as_ref().map_err(StorageIoError::errno).err(),
        Some(libc::EBADF)
    );
    assert!(lent_of(c).is_pooled());
    assert_eq!(io.in_place_ops(), 2);
}

#[test]
fn uring_lent_buffer_outlives_its_ring_and_works_on_another() {
    if !usable_or_skip("uring_lent_buffer_outlives_its_ring_and_works_on_another") {
        return;
    }
    let d = dir();
    let path = d.path().join("travel");
    std::fs::write(&path, [page(0), page(1)].concat()).unwrap();
    let config = IoConfig::default();
    let mut a = UringStorageIo::new(&config).unwrap();
    let mut b = UringStorageIo::new(&config).unwrap();
    let fd_a = a
        .open_file(&path, &OpenOptions::default().with_direct(true))
        .unwrap();
    let fd_b = b
        .open_file(&path, &OpenOptions::default().with_direct(true))
        .unwrap();
    // Ring a's buffer on ring b: b cannot name it by index, so it reads into it as plain memory.
    let from_a = a.alloc_buf(4096).unwrap();
    let c = read_into(&mut b, fd_b, from_a, 4096);
    assert_eq!(c.result, Ok(4096));
    assert_eq!(
        b.in_place_ops(),
        0,
        "another ring's buffer is not registered with this one"
    );
    let from_a = lent_of(c);
    assert_eq!(&from_a[..], &page(1)[..]);
    // Read into a lent buffer, then drop the ring that lent it: the buffer keeps its memory.
    let c = read_into(&mut a, fd_a, from_a, 0);
    assert_eq!(a.in_place_ops(), 1);
    drop(a);
    let mut orphan = lent_of(c);
    assert_eq!(
        &orphan[..],
        &page(0)[..],
        "the data is there after its ring is gone"
    );
    orphan.fill(9);
    let t = b
        .submit_write_buf(fd_b, orphan.into(), 4096)
        .map_err(|e| e.error)
        .unwrap();
    let done = drain(&mut b);
    assert!(done.iter().find(|c| c.token == t).unwrap().is_ok());
    let mut got = vec![0u8; 4096];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut got, 4096)
        .unwrap();
    assert!(got.iter().all(|&x| x == 9));
}

#[test]
fn uring_alloc_buf_falls_back_when_no_registered_buffer_fits() {
    if !usable_or_skip("uring_alloc_buf_falls_back_when_no_registered_buffer_fits") {
        return;
    }
    let d = dir();
    let path = d.path().join("fallback");
    std::fs::write(&path, (0..6).flat_map(page).collect::<Vec<u8>>()).unwrap();
    let config = IoConfig {
        queue_depth: 4,
        buffer_size: 4096,
        ..IoConfig::default()
    };
    let mut io = UringStorageIo::new(&config).unwrap();
    let fd = io
        .open_file(&path, &OpenOptions::default().with_direct(true))
        .unwrap();
    let mut bufs: Vec<AlignedBuf> = (0..5).map(|_| io.alloc_buf(4096).unwrap()).collect();
    let lent = bufs.iter().filter(|b| b.is_pooled()).count();
    assert_eq!(lent, 4, "four registered buffers lent, the fifth is heap");
    let big = io.alloc_buf(8192).unwrap();
    assert!(!big.is_pooled(), "larger than a registered buffer: heap");
    assert_eq!(big.as_ptr() as usize % 4096, 0);
    // With every registered buffer lent, a copied write stages in heap memory and still lands.
    let data = AlignedBuf::from_slice(&page(9), 4096).unwrap();
    io.submit_write(fd, &data, 5 * 4096).unwrap();
    assert!(drain(&mut io).iter().all(IoCompletion::is_ok));
    for (i, buf) in bufs.drain(..).enumerate() {
        let c = read_into(&mut io, fd, buf, i as u64 * 4096);
        assert_eq!(c.result, Ok(4096));
        assert_eq!(&lent_of(c)[..], &page(i as u64)[..]);
    }
    let c = read_into(&mut io, fd, big, 4 * 4096);
    assert_eq!(&lent_of(c)[..], &[page(4), page(9)].concat()[..]);
    assert_eq!(io.in_place_ops(), 4);
    // Unregistered rings lend nothing.
    let mut plain = UringStorageIo::new(&IoConfig {
        fixed_buffers: false,
        ..config
    })
    .unwrap();
    assert!(!plain.alloc_buf(4096).unwrap().is_pooled());
}

#[test]
fn uring_drop_with_lent_buffers_in_flight_waits_for_the_kernel() {
    if !usable_or_skip("uring_drop_with_lent_buffers_in_flight_waits_for_the_kernel") {
        return;
    }
    let d = dir();
    let path = d.path().join("drop");
    std::fs::write(&path, vec![1u8; 64 * 4096]).unwrap();
    for _ in 0..20 {
        let mut io = UringStorageIo::new(&IoConfig::default()).unwrap();
        let fd = io
            .open_file(&path, &OpenOptions::default().with_direct(true))
            .unwrap();
        let kept = io.alloc_buf(4096).unwrap();
        for i in 0..32u64 {
            let buf = io.alloc_buf(4096).unwrap();
            io.submit_read(fd, buf.into(), i * 4096)
                .map_err(|e| e.error)
                .unwrap();
        }
        io.flush().unwrap();
        // The ring waits for the 32 reads into its own lent memory; the buffer held outside
        // keeps the area allocated after the ring is gone.
        drop(io);
        assert_eq!(kept.len(), 4096);
    }
}
