//! The async file API: owned buffers, many concurrent ops from many tasks, cancellation,
//! shutdown with ops in flight, metrics, preallocation — on real files (ext4 under
//! the target dir, so O_DIRECT works) and every backend, io_uring included (required in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::backends;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use storage_io_fs::{
    AlignedBuf, AsyncFileSystem, AsyncFsConfig, BackendFactory, BackendKind, IoConfig, OpKind, StorageIo,
    StorageIoError, block_on,
};
use storage_io_sync::SyncStorageIo;
use storage_io_testkit::gated::{Gate, GatedIo};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn real_dir() -> tempfile::TempDir {
    common::real_dir("async-fs")
}

fn config(workers: usize) -> AsyncFsConfig {
    AsyncFsConfig {
        io_workers: workers,
        buffer_pool_size: 8 << 20,
        io: IoConfig {
            queue_depth: 32,
            ..IoConfig::default()
        },
        ..AsyncFsConfig::default()
    }
}

/// io_uring goes through `with_backend_kind` (as `storage_io::open_async_fs` does), so that ops called inside a runtime take the
/// callers' rings (`caller_rings`); the other backends through a factory (the worker path).
fn fs_on(kind: BackendKind, config: &AsyncFsConfig) -> AsyncFileSystem {
    if kind == BackendKind::IoUring {
        let mut config = config.clone();
        config.io.backend = BackendKind::IoUring;
        return common::open_fs(&config).unwrap();
    }
    let backend_config = config.io.clone();
    let factory: BackendFactory = Arc::new(move |_| common::build_backend(kind, &backend_config));
    AsyncFileSystem::with_factory(config, factory).unwrap()
}

/// A file system whose one worker runs the sync backend behind `gate`: completions of every
/// kind wait until the test opens it.
fn gated_fs(gate: &Gate) -> AsyncFileSystem {
    let gate = gate.clone();
    let factory: BackendFactory = Arc::new(move |_| {
        let inner = SyncStorageIo::new(&IoConfig::default())?;
        Ok(Box::new(GatedIo::new(inner, gate.clone(), &[])) as Box<dyn StorageIo>)
    });
    AsyncFileSystem::with_factory(&config(1), factory).unwrap()
}

/// Opens the gate when dropped, so a failing test unwinds instead of hanging in a shutdown that
/// waits for held completions.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Waits until `cond` holds (checked every millisecond) or panics after 10 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn block(task: u64, i: u64) -> Vec<u8> {
    let mut v = vec![(task * 31 + i) as u8; 4096];
    v[..16].copy_from_slice(&[task.to_le_bytes(), i.to_le_bytes()].concat());
    v
}

#[test]
fn tokio_many_concurrent_ops_from_many_tasks_on_every_backend() {
    let rt = runtime();
    for kind in backends("tokio_many_concurrent_ops_from_many_tasks_on_every_backend") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let path = dir.path().join("data");
        let file = Arc::new(rt.block_on(fs.create(&path)).unwrap());
        const TASKS: u64 = 8;
        const OPS: u64 = 64;
        rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let file = Arc::clone(&file);
                tasks.push(tokio::spawn(async move {
                    // Every write of this task in flight at once, then every read.
                    let writes: Vec<_> = (0..OPS)
                        .map(|i| file.write_at(block(t, i), (t * OPS + i) * 4096))
                        .collect();
                    for (r, buf) in futures_all(writes).await {
                        assert_eq!(r.unwrap(), 4096);
                        assert_eq!(buf.len(), 4096, "the buffer came back whole");
                    }
                    let reads: Vec<_> = (0..OPS)
                        .map(|i| file.read_at(vec![0u8; 4096], (t * OPS + i) * 4096))
                        .collect();
                    for (i, (r, buf)) in futures_all(reads).await.into_iter().enumerate() {
                        assert_eq!(r.unwrap(), 4096);
                        assert_eq!(buf, block(t, i as u64), "{kind}: task {t} block {i}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            file.sync_data().await.unwrap();
            assert_eq!(file.size().await.unwrap(), TASKS * OPS * 4096);
        });
        let m = fs.metrics();
        assert_eq!(m.backend, kind.name());
        assert_eq!(m.op(OpKind::Write).completed, TASKS * OPS);
        assert_eq!(m.op(OpKind::Read).completed, TASKS * OPS);
        assert_eq!(m.op(OpKind::Read).bytes, TASKS * OPS * 4096);
        assert_eq!(m.op(OpKind::Datasync).completed, 1);
        assert!(m.ops.iter().all(|o| o.errors == 0), "{m:?}");
        if kind != BackendKind::Sync {
            // (The inline backend finishes each op inside its submit call.)
            assert!(
                m.max_in_flight > 1,
                "{kind}: ops were pipelined, not run one at a time: {m:?}"
            );
        }
        assert_eq!(m.in_flight, 0);
        drop(file);
        fs.shutdown();
    }
}

/// Awaits every future, concurrently, in order (no extra crate for join_all).
async fn futures_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(handles.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}

#[test]
fn block_on_drives_the_futures_without_a_runtime() {
    let dir = real_dir();
    let fs = common::open_fs(&config(1)).unwrap();
    let path = dir.path().join("segment.log");
    let log = block_on(fs.open_append(&path)).unwrap();
    let mut offsets = Vec::new();
    for record in [&b"first"[..], b"second", b"third"] {
        let (at, back) = block_on(log.append(record.to_vec()));
        assert_eq!(back, record, "the record's buffer came back");
        offsets.push(at.unwrap());
    }
    assert_eq!(offsets, vec![0, 5, 11]);
    block_on(log.sync_all()).unwrap();
    assert_eq!(block_on(log.size()).unwrap(), 16);
    let (n, buf) = block_on(log.read_at(vec![0u8; 32], 5));
    assert_eq!(n.unwrap(), 11, "a read past the end is short, not an error");
    assert_eq!(buf, b"secondthird");
    block_on(log.close()).unwrap();
    // Reopened for appending: new records land after the old ones.
    let log = block_on(fs.open_append(&path)).unwrap();
    assert_eq!(block_on(log.append(b"fourth".to_vec())).0.unwrap(), 16);
    drop(log);
    fs.shutdown();
    assert_eq!(std::fs::read(&path).unwrap(), b"firstsecondthirdfourth");
}

#[test]
fn owned_buffers_come_back_on_success_and_on_error() {
    for kind in backends("owned_buffers_come_back_on_success_and_on_error") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();

        // Success: the very same allocation comes back, filled.
        let file = block_on(fs.open(&path)).unwrap();
        let buf = vec![0u8; 4096];
        let ptr = buf.as_ptr();
        let (n, buf) = block_on(file.read_at(buf, 0));
        assert_eq!((n.unwrap(), buf.as_ptr()), (4096, ptr));
        assert!(buf.iter().all(|&b| b == 7));

        // Error from the OS: writing a read-only file is EBADF; the bytes come back untouched.
        let data = vec![42u8; 4096];
        let ptr = data.as_ptr();
        let (r, back) = block_on(file.write_at(data, 0));
        // Windows answers ERROR_ACCESS_DENIED (5) for a read-only handle.
        let ebadf = if cfg!(windows) { 5 } else { 9 };
        assert_eq!(r.unwrap_err().errno(), ebadf, "{kind}: EBADF");
        assert_eq!((back.as_ptr(), back.len()), (ptr, 4096));
        assert!(back.iter().all(|&b| b == 42));

        // Refused at submit: a misaligned buffer on a direct-I/O file.
        let direct = block_on(fs.open_with(
            &path,
            storage_io_fs::OpenOptions::default().with_direct(true),
            None,
        ))
        .unwrap();
        assert!(
            direct.is_direct(),
            "{} is on ext4: O_DIRECT must be granted",
            path.display()
        );
        let mut aligned = AlignedBuf::zeroed(4096 + 1, 4096).unwrap();
        aligned.truncate(4096);
        let (r, back) = block_on(direct.read_at(aligned, 1));
        assert!(
            matches!(r, Err(StorageIoError::InvalidArgument(_))),
            "{kind}: {r:?}"
        );
        assert_eq!(back.len(), 4096);
        let pooled = fs.buffers().acquire(4096).unwrap();
        let (r, back) = block_on(direct.read_at(pooled, 4096));
        assert_eq!(r.unwrap(), 4096);
        assert!(back.iter().all(|&b| b == 7));
        drop(back);

        // After shutdown: Closed, and the buffer still comes back.
        fs.shutdown();
        let buf = vec![1u8; 100];
        let ptr = buf.as_ptr();
        let (r, back) = block_on(file.read_at(buf, 0));
        assert_eq!(r.unwrap_err(), StorageIoError::Closed);
        assert_eq!(back.as_ptr(), ptr);
        assert!(block_on(file.sync_data()).is_err());
        assert!(block_on(fs.open(&path)).is_err());
        assert_eq!(
            fs.buffers().usage().iter().map(|c| c.1).sum::<usize>(),
            0,
            "every pool buffer is back"
        );
    }
}

#[test]
fn cancellation_never_frees_a_buffer_in_flight_nor_loses_its_completion() {
    let dir = real_dir();
    let gate = Gate::new();
    let _unblock = OpenOnDrop(gate.clone());
    let fs = gated_fs(&gate);
    let path = dir.path().join("f");
    std::fs::write(&path, vec![3u8; 64 * 4096]).unwrap();
    gate.open();
    let file = block_on(fs.open_rw(&path)).unwrap();
    gate.close();

    // 16 reads into pool buffers: each future is polled once (so its request is sent) and
    // dropped once its read is in flight.
    let noop = Waker::noop();
    let mut futs: Vec<_> = (0..16u64)
        .map(|i| Box::pin(file.read_at(fs.buffers().acquire(4096).unwrap(), i * 4096)))
        .collect();
    for fut in &mut futs {
        assert!(fut.as_mut().poll(&mut Context::from_waker(noop)).is_pending());
    }
    wait_until("16 reads in flight", || fs.metrics().in_flight == 16);
    drop(futs);
    // The caller let go, but the buffers are the kernel's (here: the backend's) until the
    // completions arrive: none has gone back to the pool, let alone been freed.
    assert_eq!(fs.buffers().usage()[0].1, 16);
    assert_eq!(fs.metrics().op(OpKind::Read).completed, 0);

    gate.open();
    wait_until("the completions of the dropped reads", || {
        fs.metrics().op(OpKind::Read).completed == 16
    });
    wait_until("the buffers back in the pool", || fs.buffers().usage()[0].1 == 0);
    let m = fs.metrics();
    assert_eq!((m.in_flight, m.op(OpKind::Read).errors), (0, 0));

    // The worker goes on as if nothing happened.
    let (n, buf) = block_on(file.read_at(vec![0u8; 4096], 0));
    assert_eq!(n.unwrap(), 4096);
    assert!(buf.iter().all(|&b| b == 3));
    // A request dropped while it still waits for a free slot is skipped, not run: fill all 32
    // slots with held reads, queue a write behind them, drop it, then let everything through.
    gate.close();
    let reads: Vec<_> = (0..32u64)
        .map(|i| file.read_at(vec![0u8; 512], i * 512))
        .collect();
    wait_until("32 reads in flight", || fs.metrics().in_flight == 32);
    let write = file.write_at(vec![9u8; 4096], 0);
    wait_until("the write queued behind them", || fs.metrics().queued == 1);
    drop(write);
    gate.open();
    for r in reads {
        assert_eq!(block_on(r).0.unwrap(), 512);
    }
    block_on(file.sync_data()).unwrap();
    assert_eq!(
        fs.metrics().op(OpKind::Write).completed,
        0,
        "the dropped write never ran"
    );
    assert!(std::fs::read(&path).unwrap()[..4096].iter().all(|&b| b == 3));
}

#[test]
fn shutdown_with_ops_in_flight_answers_every_op() {
    let dir = real_dir();
    let gate = Gate::new();
    let _unblock = OpenOnDrop(gate.clone());
    let fs = gated_fs(&gate);
    let path = dir.path().join("f");
    gate.open();
    let file = Arc::new(block_on(fs.create(&path)).unwrap());
    gate.close();
    let rt = runtime();
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let file = Arc::clone(&file);
            rt.spawn(async move { file.write_at(vec![i as u8; 4096], i * 4096).await.0 })
        })
        .collect();
    wait_until("20 writes in flight", || fs.metrics().in_flight == 20);

    let stopper = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.shutdown())
    };
    // Once the shutdown has begun, new requests are refused at once...
    // (Opening a missing file answers NotFound from a live worker, Closed once stopping.)
    let missing = dir.path().join("missing");
    wait_until("new requests refused", || {
        matches!(block_on(fs.open(&missing)), Err(StorageIoError::Closed))
    });
    // ...while the 20 accepted writes still complete, with their real results.
    gate.open();
    stopper.join().unwrap();
    for t in tasks {
        assert_eq!(rt.block_on(t).unwrap().unwrap(), 4096);
    }
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), 20 * 4096);
    assert!((0..20).all(|i| data[i * 4096] == i as u8));
    let (r, back) = block_on(file.append(vec![1u8; 10]));
    assert_eq!((r.unwrap_err(), back.len()), (StorageIoError::Closed, 10));
}

#[test]
fn shutdown_under_load_on_every_backend_leaves_no_future_hanging() {
    let rt = runtime();
    for kind in backends("shutdown_under_load_on_every_backend_leaves_no_future_hanging") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let file = Arc::new(rt.block_on(fs.create(dir.path().join("f"))).unwrap());
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let file = Arc::clone(&file);
                rt.spawn(async move {
                    let (mut ok, mut closed) = (0u64, 0u64);
                    for i in 0..500u64 {
                        match file.write_at(vec![t as u8; 512], (t * 500 + i) * 512).await.0 {
                            Ok(512) => ok += 1,
                            Err(StorageIoError::Closed) => closed += 1,
                            other => panic!("{kind}: {other:?}"),
                        }
                    }
                    (ok, closed)
                })
            })
            .collect();
        wait_until("some writes done", || {
            fs.metrics().op(OpKind::Write).completed > 50
        });
        fs.shutdown();
        let mut acked = 0;
        for t in tasks {
            let (ok, closed) = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), t).await })
                .expect("no future hangs after shutdown")
                .unwrap();
            assert_eq!(ok + closed, 500);
            acked += ok;
        }
        assert_eq!(
            fs.metrics().op(OpKind::Write).completed,
            acked,
            "{kind}: every acked write was counted"
        );
    }
}

#[test]
fn appends_in_flight_never_overlap() {
    let rt = runtime();
    for kind in backends("appends_in_flight_never_overlap") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("log");
        let log = Arc::new(rt.block_on(fs.open_append(&path)).unwrap());
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let log = Arc::clone(&log);
                rt.spawn(async move {
                    let len = 1 + (i as usize * 37) % 300;
                    let (at, _) = log.append(vec![i as u8; len]).await;
                    (at.unwrap(), len, i as u8)
                })
            })
            .collect();
        let mut placed: Vec<_> = tasks.into_iter().map(|t| rt.block_on(t).unwrap()).collect();
        placed.sort();
        let data = std::fs::read(&path).unwrap();
        let mut end = 0;
        for (at, len, byte) in placed {
            assert_eq!(at, end, "{kind}: appends are contiguous and never overlap");
            assert!(data[at as usize..at as usize + len].iter().all(|&b| b == byte));
            end += len as u64;
        }
        assert_eq!(end, data.len() as u64);
    }
}

#[cfg(target_os = "linux")] // allocate is fallocate(FALLOC_FL_KEEP_SIZE), which only Linux has
#[test]
fn allocate_and_preallocate_appends_reserve_space_without_growing_the_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = real_dir();
    let cfg = AsyncFsConfig {
        preallocate_appends: true,
        preallocate_size: 4 << 20,
        ..config(1)
    };
    let fs = common::open_fs(&cfg).unwrap();
    let path = dir.path().join("wal-0");
    let log = block_on(fs.open_append(&path)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 0, "the size does not change");
    assert!(
        meta.blocks() * 512 >= 4 << 20,
        "4 MiB reserved: {} blocks",
        meta.blocks()
    );
    assert_eq!(
        block_on(log.append(vec![5u8; 100])).0.unwrap(),
        0,
        "appends still start at the end"
    );

    let other = block_on(fs.create(dir.path().join("other"))).unwrap();
    block_on(other.allocate(1 << 20)).unwrap();
    assert_eq!(block_on(other.size()).unwrap(), 0);
    assert!(std::fs::metadata(dir.path().join("other")).unwrap().blocks() * 512 >= 1 << 20);
    let err = block_on(other.allocate(u64::MAX)).unwrap_err();
    assert!(matches!(err, StorageIoError::InvalidArgument(_)), "{err}");
}

#[test]
fn metrics_snapshot_and_prometheus_text_agree() {
    let dir = real_dir();
    let fs = common::open_fs(&config(2)).unwrap();
    let file = block_on(fs.create(dir.path().join("m"))).unwrap();
    for i in 0..10u64 {
        block_on(file.write_at(vec![1u8; 1000], i * 1000)).0.unwrap();
    }
    for i in 0..7u64 {
        block_on(file.read_at(vec![0u8; 1000], i * 1000)).0.unwrap();
    }
    block_on(file.sync_data()).unwrap();
    // A read at a misaligned offset of a direct file is refused at submit: counted as an error.
    let direct = block_on(fs.open_with(
        dir.path().join("m"),
        storage_io_fs::OpenOptions::default().with_direct(true),
        None,
    ))
    .unwrap();
    assert!(direct.is_direct());
    let (r, _) = block_on(direct.read_at(vec![0u8; 4096], 1));
    assert!(r.is_err());
    let held = fs.buffers().acquire(70_000).unwrap();

    let m = fs.metrics();
    assert_eq!(m.op(OpKind::Write).completed, 10);
    assert_eq!(m.op(OpKind::Write).bytes, 10_000);
    assert_eq!(m.op(OpKind::Read).completed, 8);
    assert_eq!(m.op(OpKind::Read).errors, 1);
    assert_eq!(m.op(OpKind::Datasync).completed, 1);
    let w = m.op(OpKind::Write);
    assert!(w.latency_us_p50 > 0.0 && w.latency_us_p50 <= w.latency_us_max);
    assert_eq!(
        *w.latency_buckets.last().unwrap(),
        10,
        "every write took under 10 s"
    );
    assert!(
        w.latency_buckets.windows(2).all(|p| p[0] <= p[1]),
        "buckets are cumulative"
    );
    assert_eq!(m.buffer_pool[1].outstanding, 0);
    assert_eq!(
        m.buffer_pool[2].outstanding, 1,
        "70 000 bytes come from the 1 MiB class"
    );
    drop(held);

    let text = m.to_prometheus();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP storage_io_") || line.starts_with("# TYPE storage_io_"),
                "{line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(name.starts_with("storage_io_"), "{line}");
        if let Some((_, labels)) = name.split_once('{') {
            assert!(labels.ends_with('}'), "{line}");
        }
        samples.insert(name.to_string(), value);
    }
    assert_eq!(samples[r#"storage_io_ops_total{op="write"}"#], 10.0);
    assert_eq!(samples[r#"storage_io_bytes_total{op="write"}"#], 10_000.0);
    assert_eq!(
        samples[r#"storage_io_op_latency_seconds_bucket{op="write",le="+Inf"}"#],
        10.0
    );
    assert_eq!(
        samples[r#"storage_io_op_latency_seconds_count{op="datasync"}"#],
        1.0
    );
    assert!(samples[r#"storage_io_op_latency_seconds_sum{op="write"}"#] > 0.0);
    assert_eq!(samples["storage_io_in_flight"], 0.0);
    assert!(text.contains(&format!(
        r#"storage_io_info{{backend="{}",workers="2"}} 1"#,
        m.backend
    )));
}

#[test]
fn calls_take_effect_in_call_order_whatever_the_poll_order() {
    for kind in backends("calls_take_effect_in_call_order_whatever_the_poll_order") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let log = block_on(fs.open_append(dir.path().join("log"))).unwrap();
        let ops: Vec<_> = (0..50u8).map(|i| log.append(vec![i; 10])).collect();
        let size = log.size();
        // Awaited last-first: the positions still follow the calls.
        let mut offsets: Vec<u64> = ops.into_iter().rev().map(|op| block_on(op).0.unwrap()).collect();
        offsets.reverse();
        assert_eq!(offsets, (0..50).map(|i| i * 10).collect::<Vec<u64>>(), "{kind}");
        assert_eq!(
            block_on(size).unwrap(),
            500,
            "{kind}: size() saw every append called before it"
        );
    }
}

#[test]
fn cancellation_storm_on_every_backend_returns_every_buffer() {
    for kind in backends("cancellation_storm_on_every_backend_returns_every_buffer") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("f");
        std::fs::write(&path, vec![5u8; 256 * 4096]).unwrap();
        let file = block_on(fs.open_with(
            &path,
            storage_io_fs::OpenOptions::read_only().with_direct(true),
            None,
        ))
        .unwrap();
        // 400 reads into pool buffers, every future dropped at once: some are skipped, the rest
        // are in the kernel (or a worker thread) when their caller lets go.
        for round in 0..4u64 {
            let futs: Vec<_> = (0..100u64)
                .map(|i| {
                    file.read_at(
                        fs.buffers().acquire(4096).unwrap(),
                        ((round * 100 + i) % 256) * 4096,
                    )
                })
                .collect();
            drop(futs);
        }
        let (n, buf) = block_on(file.read_at(fs.buffers().acquire(4096).unwrap(), 0));
        assert_eq!(n.unwrap(), 4096, "{kind}: the worker goes on");
        assert!(buf.iter().all(|&b| b == 5));
        drop(buf);
        wait_until("every buffer back in the pool", || {
            fs.buffers().usage()[0].1 == 0 && fs.metrics().in_flight == 0
        });
        let m = fs.metrics();
        assert_eq!(m.op(OpKind::Read).errors, 0, "{kind}");
        assert!(m.op(OpKind::Read).completed >= 1 && m.op(OpKind::Read).completed <= 401);
    }
}

/// A plain `Vec` (or `Bytes`) is not aligned for direct I/O: written to an O_DIRECT file at an
/// aligned offset and length, it is staged into aligned memory instead of refused, the caller's
/// buffer comes back as it was, and the metrics count what was copied. Inside a tokio runtime
/// too (where io_uring submits on the caller's ring).
#[test]
fn a_misaligned_vec_written_to_a_direct_file_is_staged_not_refused() {
    let rt = runtime();
    for kind in backends("a_misaligned_vec_written_to_a_direct_file_is_staged_not_refused") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("direct");
        let direct = rt
            .block_on(fs.open_with(
                &path,
                storage_io_fs::OpenOptions::create().with_direct(true),
                None,
            ))
            .unwrap();
        assert!(
            direct.is_direct(),
            "{} is on ext4: O_DIRECT must be granted",
            path.display()
        );
        // A Vec whose address is off the 4096 alignment (keep allocating until one is).
        let mut keep = Vec::new();
        let mut data = vec![5u8; 8192];
        while (data.as_ptr() as usize).is_multiple_of(4096) {
            keep.push(std::mem::replace(&mut data, vec![5u8; 8192]));
        }
        data[..4].copy_from_slice(b"head");
        let ptr = data.as_ptr();
        for (i, on_runtime) in [false, true].into_iter().enumerate() {
            let write = direct.write_at(data, i as u64 * 8192);
            let (r, back) = if on_runtime {
                rt.block_on(write)
            } else {
                block_on(write)
            };
            assert_eq!(r.unwrap(), 8192, "{kind}, on a runtime thread: {on_runtime}");
            assert_eq!(
                (back.as_ptr(), back.len()),
                (ptr, 8192),
                "{kind}: the caller's own buffer comes back"
            );
            data = back;
        }
        let m = fs.metrics();
        assert_eq!((m.staged_writes, m.staged_bytes), (2, 8192 * 2), "{kind}");
        // A sliced `Bytes` moves in as a fresh copy, aligned or not by chance: it is written
        // either way.
        let shared = storage_io_fs::bytes::Bytes::from(vec![6u8; 4097]).slice(1..4097);
        let (r, _) = rt.block_on(direct.write_at(shared, 16384));
        assert_eq!(r.unwrap(), 4096, "{kind}: Bytes");
        rt.block_on(direct.sync_data()).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 20480);
        assert_eq!(&on_disk[..4], b"head");
        assert_eq!(&on_disk[8192..8196], b"head");
        assert!(on_disk[16384..].iter().all(|&b| b == 6));
        // An offset the file cannot take is still refused: staging fixes the address only.
        let (r, _) = block_on(direct.write_at(vec![0u8; 4096], 1));
        assert!(
            matches!(r, Err(StorageIoError::InvalidArgument(_))),
            "{kind}: {r:?}"
        );
        drop(direct);
        fs.shutdown();
    }
}
