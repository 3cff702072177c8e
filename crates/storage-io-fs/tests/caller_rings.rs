//! Ops submitted on the caller's runtime thread (`AsyncFsConfig::caller_rings`): they complete
//! under work stealing and when awaited on another thread, cancellation keeps buffers owned until
//! the kernel is done, syncs share fdatasyncs and cover what was called before them, and outside
//! a runtime the workers serve everything. io_uring is required in CI; elsewhere a missing
//! io_uring skips loudly.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendKind, IoConfig, OpKind, block_on};

fn uring_or_skip(test: &str) -> bool {
    match common::uring_status() {
        Ok(()) => true,
        Err(status) => {
            let required = std::env::var("STORAGE_IO_REQUIRE_URING").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "io_uring required (STORAGE_IO_REQUIRE_URING=1) but {status}"
            );
            eprintln!("SKIPPED {test}: {status}");
            false
        }
    }
}

fn real_dir() -> tempfile::TempDir {
    common::real_dir("caller-rings")
}

fn uring_fs(caller_rings: bool) -> AsyncFileSystem {
    let config = AsyncFsConfig {
        io_workers: 1,
        buffer_pool_size: 8 << 20,
        caller_rings,
        io: IoConfig {
            backend: BackendKind::IoUring,
            queue_depth: 16,
            ..IoConfig::default()
        },
        ..AsyncFsConfig::default()
    };
    common::open_fs(&config).unwrap()
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn completed(fs: &AsyncFileSystem, kind: OpKind) -> u64 {
    fs.metrics()
        .ops
        .iter()
        .find(|o| o.kind == kind)
        .unwrap()
        .completed
}

#[test]
fn ops_from_many_stealing_tasks_submit_on_the_callers_rings_and_complete() {
    if !uring_or_skip("ops_from_many_stealing_tasks_submit_on_the_callers_rings_and_complete") {
        return;
    }
    let dir = real_dir();
    let fs = uring_fs(true);
    let rt = runtime(2);
    let path = dir.path().join("log");
    rt.block_on(async {
        let log = Arc::new(fs.open_append(&path).await.unwrap());
        // More tasks than ring slots (16): some wait behind a full ring. Each yields between
        // its ops, so the scheduler moves tasks between the two worker threads.
        let mut tasks = Vec::new();
        for t in 0..64u8 {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                let mut at = Vec::new();
                for i in 0..8u8 {
                    let (off, _) = log.append(vec![t ^ i; 512]).await;
                    at.push((off.unwrap(), t ^ i));
                    tokio::task::yield_now().await;
                }
                log.sync_data().await.unwrap();
                for &(off, byte) in &at {
                    let (n, buf) = log.read_at(vec![0u8; 512], off).await;
                    assert_eq!(n.unwrap(), 512);
                    assert!(buf.iter().all(|&b| b == byte), "append at {off} reads back");
                }
                at.len()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 64 * 8);
        assert_eq!(log.size().await.unwrap(), 64 * 8 * 512, "appends never overlap");
    });
    let m = fs.metrics();
    assert!(m.caller_rings >= 1, "a runtime thread got a ring: {m:?}");
    assert!(
        m.caller_ring_ops >= 64 * 8 * 2,
        "reads and appends went through the rings: {m:?}"
    );
    assert_eq!(m.in_flight, 0);
    fs.shutdown();
}

#[test]
fn a_future_submitted_on_a_runtime_thread_completes_when_awaited_on_another_thread() {
    if !uring_or_skip("a_future_submitted_on_a_runtime_thread_completes_when_awaited_on_another_thread") {
        return;
    }
    let dir = real_dir();
    let fs = uring_fs(true);
    let rt = runtime(2);
    let path = dir.path().join("data");
    std::fs::write(&path, vec![7u8; 8192]).unwrap();
    let file = Arc::new(rt.block_on(fs.open(&path)).unwrap());
    // Called inside a task (so it is submitted on that thread's ring), awaited on a plain
    // thread with no runtime: the ring's drain task answers it.
    let f2 = Arc::clone(&file);
    let (tx, rx) = std::sync::mpsc::channel();
    rt.block_on(rt.spawn(async move {
        tx.send(f2.read_at(vec![0u8; 4096], 4096)).unwrap();
    }))
    .unwrap();
    let future = rx.recv().unwrap();
    let (n, buf) = std::thread::spawn(move || block_on(future)).join().unwrap();
    assert_eq!(n.unwrap(), 4096);
    assert!(buf.iter().all(|&b| b == 7));
    assert!(fs.metrics().caller_ring_ops >= 1);
    drop(file);
    drop(rt);
    fs.shutdown();
}

#[test]
fn syncs_called_together_share_one_fdatasync_and_cover_the_appends_before_them() {
    if !uring_or_skip("syncs_called_together_share_one_fdatasync_and_cover_the_appends_before_them") {
        return;
    }
    for caller_rings in [true, false] {
        let dir = real_dir();
        let fs = uring_fs(caller_rings);
        let rt = runtime(2);
        rt.block_on(async {
            let log = fs.open_append(dir.path().join("log")).await.unwrap();
            log.sync_data().await.unwrap(); // the directory and the first fdatasync
            let before = completed(&fs, OpKind::Datasync);
            // 256 appends in flight, then 256 syncs called before any is awaited: each sync must
            // cover every append, and they need only one fdatasync between them.
            let appends: Vec<_> = (0..256u32)
                .map(|i| log.append(i.to_le_bytes().to_vec()))
                .collect();
            let syncs: Vec<_> = (0..256).map(|_| log.sync_data()).collect();
            let syncs: Vec<_> = syncs.into_iter().map(tokio::spawn).collect();
            for s in syncs {
                s.await.unwrap().unwrap();
            }
            let datasyncs = completed(&fs, OpKind::Datasync) - before;
            assert_eq!(
                datasyncs, 1,
                "256 syncs called together share one fdatasync (caller_rings {caller_rings})"
            );
            // Every append had completed before the sync's fdatasync started.
            assert_eq!(completed(&fs, OpKind::Append), 256);
            for a in appends {
                a.await.0.unwrap();
            }
        });
        fs.shutdown();
    }
}

#[test]
fn dropped_futures_leave_no_hole_and_no_op_in_flight() {
    if !uring_or_skip("dropped_futures_leave_no_hole_and_no_op_in_flight") {
        return;
    }
    let dir = real_dir();
    let fs = uring_fs(true);
    let rt = runtime(2);
    rt.block_on(async {
        let log = fs.open_append(dir.path().join("log")).await.unwrap();
        // Appends and reads dropped right after the call: appends still land (their place was
        // taken), reads' buffers are freed only after the kernel is done with them.
        for i in 0..100u8 {
            drop(log.append(vec![i; 4096]));
            drop(log.read_at(vec![0u8; 4096], u64::from(i) * 4096));
        }
        let (at, _) = log.append(vec![200u8; 4096]).await;
        assert_eq!(at.unwrap(), 100 * 4096, "dropped appends took their places");
        log.sync_data().await.unwrap();
        for i in 0..100u8 {
            let (n, buf) = log.read_at(vec![0u8; 4096], u64::from(i) * 4096).await;
            assert_eq!(n.unwrap(), 4096);
            assert!(buf.iter().all(|&b| b == i), "dropped append {i} was written");
        }
    });
    assert_eq!(fs.metrics().in_flight, 0);
    fs.shutdown();
}

#[test]
fn a_current_thread_runtime_drains_its_own_ring() {
    if !uring_or_skip("a_current_thread_runtime_drains_its_own_ring") {
        return;
    }
    let dir = real_dir();
    let fs = uring_fs(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let f = fs.create(dir.path().join("x")).await.unwrap();
        let (n, _) = f.write_at(vec![1u8; 4096], 0).await;
        assert_eq!(n.unwrap(), 4096);
        f.sync_all().await.unwrap();
        let (n, buf) = f.read_at(vec![0u8; 4096], 0).await;
        assert_eq!((n.unwrap(), buf[4095]), (4096, 1));
        f.close().await.unwrap();
    });
    assert_eq!(fs.metrics().caller_rings, 1);
    fs.shutdown();
}

#[test]
fn outside_a_runtime_and_with_caller_rings_off_the_workers_serve_every_op() {
    if !uring_or_skip("outside_a_runtime_and_with_caller_rings_off_the_workers_serve_every_op") {
        return;
    }
    let dir = real_dir();
    for (caller_rings, in_runtime) in [(true, false), (false, true)] {
        let fs = uring_fs(caller_rings);
        let work = async {
            let f = fs.create(dir.path().join("y")).await.unwrap();
            let (n, _) = f.append(vec![3u8; 100]).await;
            assert_eq!(n.unwrap(), 0);
            f.sync_data().await.unwrap();
            assert_eq!(f.size().await.unwrap(), 100);
        };
        if in_runtime {
            runtime(2).block_on(work);
        } else {
            block_on(work);
        }
        let m = fs.metrics();
        assert_eq!(
            (m.caller_rings, m.caller_ring_ops),
            (0, 0),
            "caller_rings {caller_rings}, in runtime {in_runtime}"
        );
        fs.shutdown();
    }
}

#[test]
fn shutdown_answers_ops_in_flight_on_the_rings_and_refuses_later_ones() {
    if !uring_or_skip("shutdown_answers_ops_in_flight_on_the_rings_and_refuses_later_ones") {
        return;
    }
    let dir = real_dir();
    let fs = uring_fs(true);
    let rt = runtime(2);
    let path = dir.path().join("z");
    std::fs::write(&path, vec![5u8; 64 * 4096]).unwrap();
    let file = rt.block_on(fs.open(&path)).unwrap();
    let reads: Vec<_> = rt.block_on(async {
        (0..64u64)
            .map(|i| file.read_at(vec![0u8; 4096], i * 4096))
            .collect()
    });
    fs.shutdown();
    for r in reads {
        let (n, buf) = block_on(r);
        assert_eq!(
            n.unwrap(),
            4096,
            "a read called before shutdown gets its real result"
        );
        assert_eq!(buf[0], 5);
    }
    let (late, _) = rt.block_on(async { file.read_at(vec![0u8; 16], 0).await });
    assert!(late.is_err(), "after shutdown: {late:?}");
}

/// Polls `fut` `polls` times with a waker that does nothing, then drops it: a cancellation at
/// that await point.
fn poll_then_drop<F: std::future::Future + Unpin>(mut fut: F, polls: usize) {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..polls {
        if std::pin::Pin::new(&mut fut).poll(&mut cx).is_ready() {
            return;
        }
    }
}

#[test]
fn ops_dropped_at_every_await_point_never_corrupt_memory_or_data() {
    if !uring_or_skip("ops_dropped_at_every_await_point_never_corrupt_memory_or_data") {
        return;
    }
    let dir = real_dir();
    let fs = uring_fs(true);
    let rt = runtime(2);
    rt.block_on(async {
        let log = Arc::new(fs.open_append(dir.path().join("log")).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                // A fixed pseudo-random schedule per task: which op, how many polls before the drop.
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut kept = Vec::new();
                for _ in 0..200 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let polls = (x % 3) as usize;
                    match (x >> 8) % 4 {
                        0 => poll_then_drop(log.read_at(vec![0u8; 4096], (x >> 16) % (1 << 20)), polls),
                        1 => poll_then_drop(log.sync_data(), polls),
                        2 => poll_then_drop(log.size(), polls),
                        _ => {
                            let byte = (x >> 24) as u8;
                            let (at, _) = log.append(vec![byte; 1000]).await;
                            kept.push((at.unwrap(), byte));
                        }
                    }
                    tokio::task::yield_now().await;
                }
                kept
            }));
        }
        let mut kept = Vec::new();
        for t in tasks {
            kept.extend(t.await.unwrap());
        }
        log.sync_data().await.unwrap();
        for (at, byte) in kept {
            let (n, buf) = log.read_at(vec![0u8; 1000], at).await;
            assert_eq!(n.unwrap(), 1000);
            assert!(
                buf.iter().all(|&b| b == byte),
                "the append at {at} reads back whole"
            );
        }
    });
    // Every dropped op was still completed (shutdown waits for them) and its buffer freed by
    // the ring, not before.
    fs.shutdown();
    let m = fs.metrics();
    assert_eq!(m.in_flight, 0, "{m:?}");
}

/// A file dropped with appends still on a caller's ring keeps its append lock until they have
/// landed: another file system that gets the lock then appends after them, never over them.
#[test]
fn a_dropped_file_keeps_its_append_lock_until_its_appends_have_landed() {
    if !uring_or_skip("a_dropped_file_keeps_its_append_lock_until_its_appends_have_landed") {
        return;
    }
    let rt = runtime(2);
    for round in 0..6 {
        let dir = real_dir();
        let (a, b) = (uring_fs(true), uring_fs(true));
        let path = dir.path().join("log");
        rt.block_on(async {
            let f = a.open_append(&path).await.unwrap();
            let appends: Vec<_> = (0..32u8)
                .map(|i| {
                    let op = f.append(vec![b'a' + i % 20; 1 << 20]);
                    tokio::spawn(async move { op.await.0 })
                })
                .collect();
            tokio::task::yield_now().await;
            drop(f);
            let g = loop {
                match b.open_append(&path).await {
                    Ok(g) => break g,
                    Err(_) => tokio::task::yield_now().await,
                }
            };
            let at = g.append(vec![b'Z'; 10]).await.0.unwrap();
            for a in appends {
                a.await.unwrap().unwrap();
            }
            assert_eq!(
                at,
                32 << 20,
                "round {round}: the second appender starts after the first's appends"
            );
            g.close().await.unwrap();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(data.len(), (32 << 20) + 10, "round {round}: nothing overwritten");
            assert!(data[32 << 20..].iter().all(|&c| c == b'Z'));
        });
        a.shutdown();
        b.shutdown();
    }
}
