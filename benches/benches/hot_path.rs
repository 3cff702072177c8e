//! Microbenchmarks of the paths every op takes: submit + completion of one 4 KiB read on
//! page-cache resident data for every backend (so the backend's own overhead shows, not the
//! disk's), and buffer-pool acquire/release.
#![allow(missing_docs)] // criterion_group! expands to an undocumented pub fn
#![allow(clippy::unwrap_used)] // a bench set-up failure should stop the bench loudly

use criterion::{Criterion, criterion_group, criterion_main};
use storage_io_core::{
    AlignedBuf, BackendKind, BufferPool, BufferPoolConfig, IoBuf, IoConfig, OpenOptions, StorageIo,
};
use storage_io_sync::SyncStorageIo;

fn submit_poll(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut io = SyncStorageIo::new(&IoConfig::default()).unwrap();
    let fd = io
        .open_file(&dir.path().join("f"), &OpenOptions::create())
        .unwrap();
    io.submit_write(fd, &vec![1u8; 1 << 20], 0).unwrap();
    let mut done = Vec::with_capacity(8);
    io.poll_completions(&mut done);
    done.clear();
    let mut page = 0u64;
    c.bench_function("sync_write_4k_cached_submit_poll", |b| {
        let data = [3u8; 4096];
        b.iter(|| {
            page = (page + 1) % 256;
            io.submit_write(fd, &data, page * 4096).unwrap();
            io.poll_completions(&mut done);
            done.clear();
        })
    });
}

fn buffer_pool(c: &mut Criterion) {
    let pool = BufferPool::new(BufferPoolConfig::default()).unwrap();
    pool.prefill();
    c.bench_function("buffer_pool_acquire_release_4k", |b| {
        b.iter(|| {
            let buf = pool.acquire(4096).unwrap();
            std::hint::black_box(&buf);
        })
    });
}

/// One cached 4 KiB read, submit to completion, through each backend the façade can build here.
fn read_round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![5u8; 1 << 20]).unwrap();
    let mut kinds = vec![BackendKind::Sync, BackendKind::ThreadPool];
    if matches!(
        storage_io::uring_status(),
        storage_io::UringStatus::Available { .. }
    ) {
        kinds.push(BackendKind::IoUring);
    }
    for kind in kinds {
        let config = IoConfig {
            queue_depth: 8,
            workers: 1,
            ..IoConfig::default()
        };
        let mut io = storage_io::build_backend(kind, &config).unwrap();
        let fd = io.open_file(&path, &OpenOptions::default()).unwrap();
        let mut done = Vec::with_capacity(8);
        let mut buf = Some(IoBuf::from(AlignedBuf::page_aligned(4096).unwrap()));
        let mut page = 0u64;
        c.bench_function(&format!("{}_read_4k_cached_round_trip", kind.name()), |b| {
            b.iter(|| {
                let mut rb = buf.take().unwrap();
                if let IoBuf::Aligned(a) = &mut rb {
                    a.set_len(4096).unwrap();
                }
                page = (page + 1) % 256;
                io.submit_read(fd, rb, page * 4096).map_err(|e| e.error).unwrap();
                io.wait_completions(&mut done, 1, None).unwrap();
                buf = done.pop().and_then(|c| c.buf);
            })
        });
    }
}

criterion_group!(benches, submit_poll, read_round_trip, buffer_pool);
criterion_main!(benches);
