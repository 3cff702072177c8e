//! Vectored operations (issue 41): `append_vectored` places a run of buffers back to back with no
//! other append between them, `write_vectored_at` / `read_vectored_at` round-trip, on every
//! backend, from tokio tasks; a dropped `append_vectored` still takes its place.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::backends;

use std::sync::Arc;

use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendKind, IoConfig, block_on};

fn real_dir() -> tempfile::TempDir {
    common::real_dir("vectored")
}

fn fs_on(kind: BackendKind) -> AsyncFileSystem {
    common::open_fs(&AsyncFsConfig {
        io_workers: 2,
        buffer_pool_size: 8 << 20,
        io: IoConfig {
            backend: kind,
            queue_depth: 32,
            ..IoConfig::default()
        },
        ..AsyncFsConfig::default()
    })
    .unwrap()
}

#[test]
fn vectored_appends_from_many_tasks_never_interleave() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for kind in backends("vectored_appends_from_many_tasks_never_interleave") {
        let dir = real_dir();
        let fs = fs_on(kind);
        let path = dir.path().join("log");
        let log = Arc::new(rt.block_on(fs.open_append(&path)).unwrap());
        const TASKS: u8 = 8;
        const RECORDS: u8 = 20;
        let placed = rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let log = Arc::clone(&log);
                    tokio::spawn(async move {
                        let mut placed = Vec::new();
                        for r in 0..RECORDS {
                            // A 4-byte header and a 12-byte payload, never joined by the caller.
                            let (at, bufs) = log
                                .append_vectored(vec![vec![t, r, 0xAA, 0xBB], vec![t; 12]])
                                .await;
                            assert_eq!(bufs[1], vec![t; 12], "the buffers come back in order");
                            placed.push((at.unwrap(), t, r));
                        }
                        placed
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            log.sync_data().await.unwrap();
            all
        });
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            data.len(),
            usize::from(TASKS) * usize::from(RECORDS) * 16,
            "{kind}"
        );
        for (at, t, r) in placed {
            let at = usize::try_from(at).unwrap();
            assert_eq!(at % 16, 0, "{kind}: a run landed off the record grid");
            assert_eq!(&data[at..at + 4], &[t, r, 0xAA, 0xBB], "{kind}: header at {at}");
            assert_eq!(&data[at + 4..at + 16], &[t; 12], "{kind}: payload at {at}");
        }
        drop(log);
        fs.shutdown();
    }
}

#[test]
fn vectored_writes_and_reads_round_trip_and_stop_at_the_end() {
    for kind in backends("vectored_writes_and_reads_round_trip_and_stop_at_the_end") {
        let dir = real_dir();
        let fs = fs_on(kind);
        let file = block_on(fs.create(dir.path().join("f"))).unwrap();
        let (n, back) =
            block_on(file.write_vectored_at(vec![vec![1u8; 100], vec![2u8; 50], vec![3u8; 10]], 8));
        assert_eq!((n.unwrap(), back.len()), (160, 3), "{kind}");
        let (n, got) = block_on(file.read_vectored_at(vec![vec![0u8; 8], vec![0u8; 150], vec![0u8; 100]], 0));
        assert_eq!(n.unwrap(), 8 + 150 + 10, "{kind}: short only at the end");
        assert_eq!(got[0], vec![0u8; 8]);
        assert_eq!(got[1][..100], [1u8; 100]);
        assert_eq!(got[1][100..], [2u8; 50]);
        assert_eq!(
            got[2],
            vec![3u8; 10],
            "{kind}: the last buffer comes back truncated"
        );
        block_on(file.close()).unwrap();
        let (r, back) = block_on(file.write_vectored_at(vec![vec![0u8; 4]], 0));
        assert!(
            r.is_err() && back == vec![vec![0u8; 4]],
            "{kind}: after close, refused with the buffers back"
        );
        fs.shutdown();
    }
}

#[test]
fn a_dropped_vectored_append_still_takes_its_place() {
    let dir = real_dir();
    let fs = fs_on(BackendKind::ThreadPool);
    let path = dir.path().join("log");
    let log = block_on(fs.open_append(&path)).unwrap();
    drop(log.append_vectored(vec![vec![1u8; 3], vec![2u8; 5]]));
    let (at, _) = block_on(log.append(vec![9u8; 2]));
    assert_eq!(at.unwrap(), 8, "the dropped run kept its 8 bytes");
    block_on(log.sync_data()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        [&[1u8; 3][..], &[2u8; 5], &[9u8; 2]].concat()
    );
    drop(log);
    fs.shutdown();
}
