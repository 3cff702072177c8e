//! Every type a public signature names comes with the crate: a user writing a wrapper backend,
//! calling `schedule_write` or reading latency histograms names it through storage-io, with no
//! second dependency (this crate's tests have no `bytes`, `flume` or `hdrhistogram` of their own).
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::sync::Arc;

use storage_io::bytes::Bytes;
use storage_io::scheduler::{DiskScheduler, PageRead, SchedulerConfig};
use storage_io::{BackendFactory, IoFd, IoStats, IoToken, OpKind, StorageIo};
use storage_io_testkit::memio::MemFs;

/// A wrapper backend's `submit_write_bytes` names `Bytes` through the façade.
fn forward_write_bytes(
    inner: &mut dyn StorageIo,
    fd: IoFd,
    data: Bytes,
    offset: u64,
) -> storage_io::Result<IoToken> {
    inner.submit_write_bytes(fd, data, offset)
}

#[test]
fn public_signatures_name_their_types_through_the_facade() {
    let fs = MemFs::new(3);
    let mut io = fs.backend();
    let fd = io
        .open_file("/f".as_ref(), &storage_io::OpenOptions::create())
        .unwrap();
    forward_write_bytes(&mut io, fd, Bytes::from_static(b"page"), 0).unwrap();

    let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
    let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
    let page = sched.schedule_allocate().recv().unwrap();
    sched
        .schedule_write(page, Bytes::from(vec![9u8; 4096]))
        .recv()
        .unwrap();
    let (tx, rx): (storage_io::scheduler::flume::Sender<PageRead>, _) =
        storage_io::scheduler::flume::unbounded();
    sched.schedule_read_tagged(page, 1, &tx);
    assert_eq!(rx.recv().unwrap().tag, 1);
    sched.shutdown().unwrap();

    let stats = IoStats::new();
    let histogram: &storage_io::hdrhistogram::Histogram<u64> = stats.latency_ns(OpKind::Write);
    assert_eq!(histogram.len(), 0);
}
