//! Issue 38 items 15 and 16, the variants a second review found: two spellings of one path
//! share one append cursor, and the error of an open's preallocation names the file (the config
//! loader's is the façade's: storage-io's tests/config_files.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendFactory, BackendKind, IoConfig, block_on};

fn real_dir() -> tempfile::TempDir {
    common::real_dir("review-followup")
}

fn config(workers: usize) -> AsyncFsConfig {
    AsyncFsConfig {
        io_workers: workers,
        buffer_pool_size: 8 << 20,
        io: IoConfig {
            queue_depth: 32,
            max_files: 64,
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

#[test]
fn two_spellings_of_one_path_share_one_append_cursor() {
    let dir = real_dir();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let plain = dir.path().join("log");
    let spellings = [
        dir.path().join("sub").join("..").join("log"),
        dir.path().join(".").join("log"),
    ];
    for workers in [1, 4] {
        for other in &spellings {
            let fs = fs_on(BackendKind::Sync, &config(workers));
            let _ = std::fs::remove_file(&plain);
            let (offsets, data) = block_on(async {
                let a = fs.open_append(&plain).await.unwrap();
                let b = fs.open_rw(other).await.unwrap();
                let mut offsets = Vec::new();
                for (h, tag) in [(&a, b'a'), (&b, b'b'), (&a, b'A'), (&b, b'B')] {
                    let (at, _) = h.append(vec![tag; 8]).await;
                    offsets.push(at.unwrap());
                }
                drop((a, b));
                (offsets, std::fs::read(&plain).unwrap())
            });
            fs.shutdown();
            assert_eq!(
                offsets,
                vec![0, 8, 16, 24],
                "workers {workers}, {}: appends through two spellings got one offset twice",
                other.display()
            );
            assert_eq!(data, [[b'a'; 8], [b'b'; 8], [b'A'; 8], [b'B'; 8]].concat());
        }
    }
}

#[cfg(target_os = "linux")] // preallocation is fallocate, Linux-only: elsewhere it is Unsupported before any file call
#[test]
fn a_failed_preallocation_names_the_file() {
    let dir = real_dir();
    let path = dir.path().join("seg.log");
    let cfg = AsyncFsConfig {
        preallocate_appends: true,
        // Past ext4's largest file: EFBIG before any block is taken.
        preallocate_size: 1 << 50,
        ..config(1)
    };
    let fs = fs_on(BackendKind::Sync, &cfg);
    let err = block_on(fs.open_append(&path)).map(|_| ()).unwrap_err();
    fs.shutdown();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "open_append's error names no file: {text}"
    );
    // Nothing is left open: the file can be opened again without preallocation.
    let fs = fs_on(BackendKind::Sync, &config(1));
    block_on(fs.open_append(&path)).unwrap();
    fs.shutdown();
}

/// Defect B of the review of issue 41: `d/sub/../log` with `sub` a symlink to another directory
/// names `other/log` (the kernel follows `sub` before `..`), not `d/log`. Two different files
/// must get two append cursors (and two append locks), whatever the spelling.
#[cfg(unix)] // a directory symlink without privileges
#[test]
fn a_symlinked_parent_is_resolved_before_dot_dot() {
    let dir = real_dir();
    let d = dir.path().join("d");
    let other = dir.path().join("other");
    std::fs::create_dir(&d).unwrap();
    std::fs::create_dir_all(other.join("inner")).unwrap();
    std::os::unix::fs::symlink(other.join("inner"), d.join("sub")).unwrap();
    let plain = d.join("log");
    let through_link = d.join("sub").join("..").join("log");
    for workers in [1, 4] {
        let _ = std::fs::remove_file(&plain);
        let _ = std::fs::remove_file(other.join("log"));
        let fs = fs_on(BackendKind::Sync, &config(workers));
        let offsets = block_on(async {
            let a = fs.open_append(&plain).await.unwrap();
            let b = fs.open_append(&through_link).await.unwrap();
            let mut offsets = Vec::new();
            for (h, tag) in [(&a, b'a'), (&b, b'b'), (&a, b'A'), (&b, b'B')] {
                let (at, _) = h.append(vec![tag; 8]).await;
                offsets.push(at.unwrap());
            }
            offsets
        });
        fs.shutdown();
        assert_eq!(
            offsets,
            vec![0, 0, 8, 8],
            "workers {workers}: d/log and d/sub/../log (= other/log) shared one append cursor"
        );
        assert_eq!(std::fs::read(&plain).unwrap(), [[b'a'; 8], [b'A'; 8]].concat());
        assert_eq!(
            std::fs::read(other.join("log")).unwrap(),
            [[b'b'; 8], [b'B'; 8]].concat()
        );
    }
}
