//! The defects review rev41 (issue 41) found through the public API, one test (or two) per
//! defect, named after it. Each failed before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use storage_io_fs::{
    AsyncFileSystem, AsyncFsConfig, BackendFactory, BackendKind, IoConfig, OpenOptions, StorageIo, block_on,
};
use storage_io_testkit::memio::MemFs;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn real_dir() -> tempfile::TempDir {
    common::real_dir("rev41")
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

fn backends() -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Sync, BackendKind::ThreadPool];
    if common::uring_status().is_ok() {
        kinds.push(BackendKind::IoUring);
    }
    kinds
}

fn fs_on(kind: BackendKind, config: &AsyncFsConfig) -> AsyncFileSystem {
    let mut config = config.clone();
    config.io.backend = kind;
    common::open_fs(&config).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. set_len took effect when polled, after appends called after it: it cut them off
// ---------------------------------------------------------------------------------------------

/// `set_len(0)` is called, then an append; the append answers an offset. Its bytes must be
/// in the file at that offset afterwards (call order), and a later append must not land on it.
#[test]
fn an_append_called_after_set_len_is_not_truncated_away() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("seg");
        block_on(async {
            let f = fs.open_append(&path).await.unwrap();
            assert_eq!(f.append(vec![1u8; 100]).await.0.unwrap(), 0);
            let truncate = f.set_len(0);
            let after = f.append(vec![2u8; 100]);
            let (at, _) = after.await;
            let at = at.unwrap();
            truncate.await.unwrap();
            let later = f.append(vec![3u8; 100]).await.0.unwrap();
            let (n, back) = f.read_at(vec![0u8; 100], at).await;
            assert_eq!(
                (n.unwrap(), back.iter().all(|&b| b == 2)),
                (100, true),
                "{kind}: the append called after set_len answered offset {at} and must be there"
            );
            assert!(
                later >= at + 100 || later + 100 <= at,
                "{kind}: a later append (at {later}) overlaps the earlier one (at {at})"
            );
        });
        fs.shutdown();
    }
}

/// The same from a tokio runtime thread (io_uring: the callers' rings).
#[test]
fn an_append_called_after_set_len_is_not_truncated_away_on_a_runtime() {
    let rt = runtime();
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("seg");
        let fs2 = fs.clone();
        rt.block_on(rt.spawn(async move {
            let f = fs2.open_append(&path).await.unwrap();
            assert_eq!(f.append(vec![1u8; 100]).await.0.unwrap(), 0);
            let truncate = f.set_len(0);
            let after = f.append(vec![2u8; 100]);
            truncate.await.unwrap();
            let at = after.await.0.unwrap();
            let later = f.append(vec![3u8; 100]).await.0.unwrap();
            let (n, back) = f.read_at(vec![0u8; 100], at).await;
            assert_eq!(
                (n.unwrap(), back.iter().all(|&b| b == 2)),
                (100, true),
                "{kind}: the append called after set_len answered offset {at} and must be there (later at {later})"
            );
        }))
        .unwrap();
        fs.shutdown();
    }
}

/// set_len to extend, then append after it completed: lands at len (documented).
#[test]
fn set_len_extend_then_append_lands_at_len_and_errors_name_call_and_path() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let path = dir.path().join("seg");
        block_on(async {
            let f = fs.open_append(&path).await.unwrap();
            f.append(vec![1u8; 10]).await.0.unwrap();
            f.set_len(5000).await.unwrap();
            assert_eq!(f.append(vec![2u8; 10]).await.0.unwrap(), 5000, "{kind}");
            assert_eq!(f.size().await.unwrap(), 5010);
            let ro = fs.open(&path).await.unwrap();
            let e = ro.set_len(0).await.unwrap_err().to_string();
            assert!(e.contains("set_len") && e.contains("seg"), "{kind}: {e}");
        });
        fs.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A new file at a removed or renamed-away name took over the old file's cursor and append lock
// ---------------------------------------------------------------------------------------------

/// A log's retention removes a segment while a handle on it is still open, and a new segment
/// is created under the same name: the new file's first append must land at 0, not after the
/// removed file's data (a hole of zeros).
#[test]
fn a_new_file_at_a_removed_name_starts_its_appends_at_zero() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let path = dir.path().join("seg");
        block_on(async {
            let old = fs.open_append(&path).await.unwrap();
            old.append(vec![1u8; 100]).await.0.unwrap();
            fs.remove_file(&path).await.unwrap();
            let new = fs.open_append(&path).await.unwrap();
            assert_eq!(new.size().await.unwrap(), 0, "{kind}: a new file");
            let at = new.append(b"fresh".to_vec()).await.0.unwrap();
            assert_eq!(at, 0, "{kind}: the new file's first append");
            drop(old);
        });
        fs.shutdown();
    }
}

/// The same with `rename` (a segment rotated to `seg.old` while its handle is open).
#[test]
fn a_new_file_at_a_renamed_away_name_starts_its_appends_at_zero() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let path = dir.path().join("seg");
        block_on(async {
            let old = fs.open_append(&path).await.unwrap();
            old.append(vec![1u8; 100]).await.0.unwrap();
            fs.rename(&path, dir.path().join("seg.old")).await.unwrap();
            let new = fs.open_append(&path).await.unwrap();
            let at = new.append(b"fresh".to_vec()).await.0.unwrap();
            // And the old handle's appends keep going to the renamed file.
            let old_at = old.append(vec![9u8; 10]).await.0.unwrap();
            assert_eq!(
                (at, old_at),
                (0, 100),
                "{kind}: new file's first append, old file's next"
            );
        });
        let new_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(new_len, 5, "{kind}: the new segment holds just its one record");
        fs.shutdown();
    }
}

/// `rename` onto the name of a file open under open_append: the replaced file's handle keeps
/// its own cursor, and a new open_append of the name gets the moved-in file's length.
#[test]
fn rename_onto_an_open_appenders_name() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        block_on(async {
            let on_b = fs.open_append(&b).await.unwrap();
            on_b.append(vec![1u8; 100]).await.0.unwrap();
            std::fs::write(&a, [2u8; 7]).unwrap();
            fs.rename(&a, &b).await.unwrap();
            let again = fs.open_append(&b).await.unwrap();
            let at = again.append(vec![3u8; 1]).await.0.unwrap();
            assert_eq!(at, 7, "{kind}: the file now at b is 7 bytes long");
            drop(on_b);
        });
        fs.shutdown();
    }
}

/// The new file at a removed segment's name must take the append lock (open_append's docs:
/// "across file systems in one process, open_append takes an exclusive advisory lock"): a
/// second file system's open_append of it is refused.
#[test]
fn a_new_file_at_a_removed_name_is_append_locked_against_another_file_system() {
    for kind in backends() {
        let dir = real_dir();
        let fs1 = fs_on(kind, &config(1));
        let fs2 = fs_on(kind, &config(1));
        let path = dir.path().join("seg");
        block_on(async {
            let old = fs1.open_append(&path).await.unwrap();
            assert!(
                fs2.open_append(&path).await.is_err(),
                "{kind}: control: the lock works"
            );
            fs1.remove_file(&path).await.unwrap();
            let _new = fs1.open_append(&path).await.unwrap();
            let other = fs2.open_append(&path).await;
            assert!(
                other.is_err(),
                "{kind}: a second file system got open_append of the new file: two appenders"
            );
            drop(old);
        });
        fs1.shutdown();
        fs2.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A misaligned Vec appended to a direct-I/O file was refused instead of staged; a refused
//    write counted as staged and its error named neither the call nor the path
// ---------------------------------------------------------------------------------------------

/// A Vec whose address is off the 4096 alignment.
fn misaligned(len: usize, fill: u8) -> Vec<u8> {
    let mut keep = Vec::new();
    let mut data = vec![fill; len];
    while (data.as_ptr() as usize).is_multiple_of(4096) {
        keep.push(std::mem::replace(&mut data, vec![fill; len]));
    }
    data
}

/// The CHANGELOG: "A Vec or Bytes written to a direct-I/O file is staged through an aligned copy
/// instead of failing Misaligned". An append is a write.
#[test]
fn a_misaligned_vec_appended_to_a_direct_file_is_staged() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("direct-append");
        block_on(async {
            let f = fs
                .open_with(&path, OpenOptions::create().with_direct(true), None)
                .await
                .unwrap();
            assert!(f.is_direct());
            let (r, back) = f.append(misaligned(4096, 7)).await;
            assert_eq!(r.map_err(|e| e.to_string()), Ok(0), "{kind}: append of a Vec");
            assert_eq!(back.len(), 4096);
            let (r, _) = f
                .append_vectored(vec![misaligned(4096, 8), misaligned(4096, 9)])
                .await;
            assert_eq!(
                r.map_err(|e| e.to_string()),
                Ok(4096),
                "{kind}: append_vectored of Vecs"
            );
        });
        fs.shutdown();
    }
}

/// Staged writes through write_vectored_at and from a runtime thread (caller rings): data
/// correct, metrics count them; a misaligned offset is still refused, clearly.
#[test]
fn staged_writes_data_metrics_and_misaligned_offsets() {
    let rt = runtime();
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(1));
        let path = dir.path().join("direct");
        let shown = path.display().to_string();
        let fs2 = fs.clone();
        rt.block_on(rt.spawn(async move {
            let f = fs2
                .open_with(&path, OpenOptions::create().with_direct(true), None)
                .await
                .unwrap();
            // Not `Bytes::from(vec![..; 4097]).slice(1..)`: a unique Bytes becomes a Vec by moving
            // its data to the allocation's start, which can be aligned by chance (a flaky test).
            let bytes = storage_io_fs::bytes::Bytes::from(misaligned(4096, 4));
            let (n, _) = f
                .write_vectored_at(vec![misaligned(4096, 1).into(), bytes], 0)
                .await;
            assert_eq!(n.unwrap(), 8192, "{kind}");
            let (n, back) = f.read_at(fs2.buffers().acquire(8192).unwrap(), 0).await;
            assert_eq!(n.unwrap(), 8192);
            assert!(back[..4096].iter().all(|&b| b == 1) && back[4096..].iter().all(|&b| b == 4));
            let m = fs2.metrics();
            assert_eq!((m.staged_writes, m.staged_bytes), (2, 8192), "{kind}");
            let mis = misaligned(4096, 1);
            let addr = format!("{:#x}", mis.as_ptr() as usize);
            let e = f.write_at(mis, 100).await.0.unwrap_err().to_string();
            assert!(
                e.contains("align") && e.contains("write_at") && e.contains(&shown) && e.contains(&addr),
                "{kind}: a misaligned offset names the call, the path and the caller's buffer {addr}: {e}"
            );
            let e = f.append(vec![1u8; 100]).await.0.unwrap_err().to_string();
            assert!(
                e.contains("align") && e.contains("append") && e.contains(&shown),
                "{kind}: a misaligned append length: {e}"
            );
            let m = fs2.metrics();
            assert_eq!(
                (m.staged_writes, m.staged_bytes),
                (2, 8192),
                "{kind}: a refused write staged nothing that was written"
            );
        }))
        .unwrap();
        fs.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// 4. rename and metadata went to the OS file system whatever the backend
// ---------------------------------------------------------------------------------------------

fn mem_fs(mem: &MemFs) -> AsyncFileSystem {
    let mem = mem.clone();
    let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(mem.backend()) as Box<dyn StorageIo>));
    AsyncFileSystem::with_factory(&config(1), factory).unwrap()
}

/// On an in-memory backend, `rename` must rename the backend's file (or refuse clearly), and
/// must never touch the OS file system.
#[test]
fn rename_on_an_in_memory_backend_renames_the_backends_file_not_an_os_file() {
    let dir = real_dir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // An OS file that happens to have the same path as the in-memory one.
    std::fs::write(&a, b"os file").unwrap();
    let mem = MemFs::new(1);
    let fs = mem_fs(&mem);
    let result = block_on(async {
        let f = fs.create(&a).await.unwrap();
        f.write_at(b"mem file".to_vec(), 0).await.0.unwrap();
        f.close().await.unwrap();
        fs.rename(&a, &b).await
    });
    let os_a_still_there = a.exists();
    let mem_list = mem.list();
    fs.shutdown();
    assert!(
        os_a_still_there,
        "rename on MemIo moved the OS file {} (result {result:?}); MemFs lists {mem_list:?}",
        a.display()
    );
    if let Err(e) = result {
        assert!(e.to_string().contains("rename"), "{e}");
    } else {
        assert!(mem_list.contains(&b), "renamed: MemFs lists {mem_list:?}");
    }
}

/// `metadata` on an in-memory backend answers for the backend's file (or refuses), not the OS's.
#[test]
fn metadata_on_an_in_memory_backend_answers_for_the_backends_file() {
    let dir = real_dir();
    let a = dir.path().join("a");
    std::fs::write(&a, b"os file, 20 bytes...").unwrap();
    let mem = MemFs::new(1);
    let fs = mem_fs(&mem);
    let m = block_on(async {
        let f = fs.create(&a).await.unwrap();
        f.write_at(vec![1u8; 3], 0).await.0.unwrap();
        f.close().await.unwrap();
        fs.metadata(&a).await
    });
    fs.shutdown();
    let m = m.unwrap();
    assert_eq!(
        (m.len, m.is_dir),
        (3, false),
        "metadata answered the OS file's length, not MemIo's"
    );
}

/// A failed rename names the call and both paths.
#[test]
fn rename_errors_name_both_paths() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let (from, to) = (dir.path().join("from-missing"), dir.path().join("to-target"));
        let e = block_on(fs.rename(&from, &to)).unwrap_err().to_string();
        assert!(
            e.contains("rename") && e.contains("from-missing") && e.contains("to-target"),
            "{kind}: {e}"
        );
        fs.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// 5. One file reached by two names (a directory renamed between opens) had two cursors
// ---------------------------------------------------------------------------------------------

/// A directory renamed between two opens of (what is then) one file, via open_rw: the second
/// handle appends after the first handle's appends, never on them (the name says what it did
/// before: two cursors; now the file's identity gives it one).
#[test]
fn a_directory_renamed_between_opens_gives_one_file_two_cursors() {
    for kind in backends() {
        let dir = real_dir();
        let fs = fs_on(kind, &config(2));
        let (d, e) = (dir.path().join("d"), dir.path().join("e"));
        std::fs::create_dir(&d).unwrap();
        block_on(async {
            let first = fs.open_append(d.join("log")).await.unwrap();
            first.append(vec![1u8; 100]).await.0.unwrap();
            fs.rename(&d, &e).await.unwrap();
            let second = fs.open_rw(e.join("log")).await.unwrap();
            let x = first.append(vec![2u8; 10]).await.0.unwrap();
            let y = second.append(vec![3u8; 10]).await.0.unwrap();
            assert_ne!(x, y, "{kind}: two handles on one file appended over each other");
            assert_eq!((x, y), (100, 110), "{kind}: one cursor for the file's two names");
        });
        fs.shutdown();
    }
}

/// Item 2 on an in-memory backend (its files have no identity, so the path keys their state):
/// `remove_file` and `rename` through the file system drop the name's state, so a new file at
/// the name starts its appends at its own length; the old handle keeps its own cursor.
#[test]
fn a_new_file_at_a_removed_or_renamed_away_name_of_an_in_memory_backend_starts_at_zero() {
    let mem = MemFs::new(1);
    let fs = mem_fs(&mem);
    block_on(async {
        let old = fs.open_append("/m/seg").await.unwrap();
        old.append(vec![1u8; 100]).await.0.unwrap();
        fs.remove_file("/m/seg").await.unwrap();
        let new = fs.open_append("/m/seg").await.unwrap();
        assert_eq!(
            new.append(b"fresh".to_vec()).await.0.unwrap(),
            0,
            "after remove_file"
        );
        assert_eq!(
            old.append(vec![2u8; 10]).await.0.unwrap(),
            100,
            "the old handle's cursor"
        );

        fs.rename("/m/seg", "/m/seg.old").await.unwrap();
        let newer = fs.open_append("/m/seg").await.unwrap();
        assert_eq!(newer.append(b"x".to_vec()).await.0.unwrap(), 0, "after rename");
        assert_eq!(
            new.append(b"y".to_vec()).await.0.unwrap(),
            5,
            "the renamed file's cursor"
        );
    });
    fs.shutdown();
}
