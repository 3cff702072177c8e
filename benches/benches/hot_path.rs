//! Microbenchmarks of the paths every op takes: submit+poll on the inline backend (page-cache
//! resident data, so the backend's own overhead shows), and buffer-pool acquire/release.
#![allow(missing_docs)] // criterion_group! expands to an undocumented pub fn
#![allow(clippy::unwrap_used)] // a bench set-up failure should stop the bench loudly

use criterion::{Criterion, criterion_group, criterion_main};
use storage_io_core::{AlignedBuf, BufferPool, BufferPoolConfig, IoBuf, IoConfig, OpenOptions, StorageIo};
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
    let mut buf = Some(IoBuf::from(AlignedBuf::page_aligned(4096).unwrap()));
    let mut page = 0u64;
    c.bench_function("sync_read_4k_cached_submit_poll", |b| {
        b.iter(|| {
            let mut rb = buf.take().unwrap();
            if let IoBuf::Aligned(a) = &mut rb {
                a.set_len(4096).unwrap();
            }
            page = (page + 1) % 256;
            io.submit_read(fd, rb, page * 4096).map_err(|e| e.error).unwrap();
            io.poll_completions(&mut done);
            buf = done.pop().and_then(|c| c.buf);
        })
    });
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

criterion_group!(benches, submit_poll, buffer_pool);
criterion_main!(benches);
