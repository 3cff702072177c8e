//! Opening files through the async file API: several handles on one path, cancelled opens,
//! on every backend (io_uring included where the kernel has it; required in CI) and on MemIo.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::backends;

use std::sync::Arc;

use storage_io_fs::{
    AsyncFileSystem, AsyncFsConfig, BackendFactory, BackendKind, IoConfig, StorageIo, block_on,
};
use storage_io_testkit::memio::MemFs;

fn real_dir() -> tempfile::TempDir {
    common::real_dir("async-open")
}

fn config(workers: usize, max_files: usize) -> AsyncFsConfig {
    AsyncFsConfig {
        io_workers: workers,
        buffer_pool_size: 8 << 20,
        io: IoConfig {
            queue_depth: 32,
            max_files,
            ..IoConfig::default()
        },
        ..AsyncFsConfig::default()
    }
}

fn fs_on(kind: BackendKind, config: &AsyncFsConfig) -> AsyncFileSystem {
    let backend_config = config.io.clone();
    let factory: BackendFactory = Arc::new(move |_| common::build_backend(kind, &backend_config));
    AsyncFileSystem::with_factory(config, factory).unwrap()
}

fn mem_fs(mem: &MemFs, config: &AsyncFsConfig) -> AsyncFileSystem {
    let mem = mem.clone();
    let io = config.io.clone();
    let factory: BackendFactory =
        Arc::new(move |_| Ok(Box::new(mem.backend_with(&io)) as Box<dyn StorageIo>));
    AsyncFileSystem::with_factory(config, factory).unwrap()
}

/// Two `open_append`s of one path, and an `open_rw` of it, append in turn: every append gets
/// its own offset and every byte survives.
fn appends_through_two_handles_keep_every_record(fs: &AsyncFileSystem, path: &std::path::Path) -> Vec<u8> {
    block_on(async {
        let a = fs.open_append(path).await.unwrap();
        let b = fs.open_append(path).await.unwrap();
        let c = fs.open_rw(path).await.unwrap();
        let mut offsets = Vec::new();
        for round in 0..4u8 {
            for (h, tag) in [(&a, b'a'), (&b, b'b'), (&c, b'c')] {
                let (at, _) = h.append(vec![tag; 10 + round as usize]).await;
                offsets.push(at.unwrap());
            }
        }
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            offsets.len(),
            "every append got its own offset: {offsets:?}"
        );
        let len = a.size().await.unwrap();
        let (n, data) = c.read_at(vec![0u8; len as usize], 0).await;
        assert_eq!(n.unwrap(), len as usize);
        data
    })
}

fn check_records(data: &[u8]) {
    // 4 rounds × 3 handles, lengths 10..13: 3 × (10 + 11 + 12 + 13) bytes.
    assert_eq!(data.len(), 3 * 46, "no append overwrote another");
    for tag in [b'a', b'b', b'c'] {
        assert_eq!(data.iter().filter(|&&x| x == tag).count(), 46, "{}", tag as char);
    }
}

#[test]
fn two_append_handles_on_one_path_get_distinct_offsets_on_every_backend() {
    for kind in backends("two_append_handles_on_one_path_get_distinct_offsets_on_every_backend") {
        for workers in [1, 3] {
            let dir = real_dir();
            let fs = fs_on(kind, &config(workers, 64));
            let data = appends_through_two_handles_keep_every_record(&fs, &dir.path().join("log"));
            check_records(&data);
            fs.shutdown();
        }
    }
}

#[test]
fn two_append_handles_on_one_path_get_distinct_offsets_on_memio() {
    for workers in [1, 3] {
        let mem = MemFs::new(7);
        let fs = mem_fs(&mem, &config(workers, 64));
        let data = appends_through_two_handles_keep_every_record(&fs, std::path::Path::new("/m/log"));
        check_records(&data);
        fs.shutdown();
    }
}

/// Another file system (as another process would) cannot open a file for appending while one
/// appends to it: the advisory lock `open_append` takes refuses it with a clear error.
#[test]
fn open_append_of_a_file_another_file_system_appends_to_is_refused() {
    let dir = real_dir();
    let path = dir.path().join("log");
    let first = fs_on(BackendKind::Sync, &config(1, 64));
    let second = fs_on(BackendKind::Sync, &config(1, 64));
    let held = block_on(first.open_append(&path)).unwrap();
    let err = block_on(second.open_append(&path)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "names the path: {text}"
    );
    assert!(text.contains("appending"), "says why: {text}");
    drop(held);
    first.shutdown();
    // Once the first appender is closed, the file is free again.
    block_on(second.open_append(&path)).unwrap();
}

/// Starts `open` and abandons it: once after one poll (as `tokio::time::timeout` with no time
/// does), once from a `select!` whose other branch wins.
fn cancel_opens(fs: &AsyncFileSystem, paths: &[std::path::PathBuf], rounds: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..rounds {
            let path = &paths[i % paths.len()];
            // A file opened anyway (the race went to the open) is dropped, which closes it.
            let _ = tokio::time::timeout(std::time::Duration::ZERO, fs.open_append(path)).await;
            tokio::select! {
                biased;
                opened = fs.open_rw(path) => drop(opened),
                () = tokio::task::yield_now() => {}
            }
        }
    });
}

/// After many abandoned opens, a file system with `max_files` = 4 still opens 4 files: no
/// abandoned open kept its fd-table slot (or its fds).
fn abandoned_opens_leave_every_slot_free(fs: &AsyncFileSystem, dir: &std::path::Path) {
    let paths: Vec<_> = (0..3).map(|i| dir.join(format!("f{i}"))).collect();
    for p in &paths {
        drop(block_on(fs.open_append(p)).unwrap()); // the files exist for open_rw
    }
    cancel_opens(fs, &paths, 50);
    let held: Vec<_> = (0..4)
        .map(|i| {
            block_on(fs.open_rw(&paths[i % paths.len()]))
                .unwrap_or_else(|e| panic!("open {i} of 4 after abandoned opens: {e}"))
        })
        .collect();
    drop(held);
}

#[test]
fn cancelled_opens_close_what_they_opened_on_every_backend() {
    for kind in backends("cancelled_opens_close_what_they_opened_on_every_backend") {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1, 4));
        abandoned_opens_leave_every_slot_free(&fs, dir.path());
        fs.shutdown();
    }
}

#[test]
fn cancelled_opens_close_what_they_opened_on_memio() {
    let mem = MemFs::new(11);
    let fs = mem_fs(&mem, &config(1, 4));
    abandoned_opens_leave_every_slot_free(&fs, std::path::Path::new("/m"));
    fs.shutdown();
}
