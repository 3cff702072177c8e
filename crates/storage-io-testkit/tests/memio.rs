//! MemIo's crash model: a crash drops exactly the unsynced writes.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use std::path::Path;
use storage_io_core::Namespace;

use storage_io_core::{IoCompletion, OpenOptions, StorageIo, StorageIoError};
use storage_io_testkit::memio::{CrashOptions, MemFs, SECTOR_BYTES, TearMode};

fn drain(io: &mut dyn StorageIo) -> Vec<IoCompletion> {
    let mut out = Vec::new();
    io.wait_completions(&mut out, usize::MAX, None)
        .expect("wait_completions");
    for c in &out {
        assert!(c.is_ok(), "{:?}", c.result);
    }
    out
}

#[test]
fn crash_drops_exactly_the_unsynced_writes() {
    let fs = MemFs::new(1);
    let mut io = fs.backend();
    let a = Path::new("/d/a");
    let b = Path::new("/d/b");
    let fa = io.open_file(a, &OpenOptions::create()).unwrap();
    let fb = io.open_file(b, &OpenOptions::create()).unwrap();
    io.sync_dir(Path::new("/d")).unwrap();
    io.submit_write(fa, b"aaaa", 0).unwrap();
    io.submit_write(fb, b"bbbb", 0).unwrap();
    io.submit_datasync(fa).unwrap(); // a's write is durable, b's is not
    io.submit_write(fa, b"AA", 4).unwrap(); // unsynced, after the sync
    drain(&mut io);
    assert_eq!(fs.read_file(a).unwrap(), b"aaaaAA", "reads see the page cache");

    let changed = fs.crash(CrashOptions::default());
    assert_eq!(fs.read_file(a).unwrap(), b"aaaa");
    assert_eq!(fs.read_file(b).unwrap(), b"", "b's data was never synced");
    assert_eq!(changed.len(), 2);
    assert_eq!(fs.crash_count(), 1);
}

#[test]
fn files_created_without_a_directory_sync_vanish_in_a_crash() {
    let fs = MemFs::new(2);
    let mut io = fs.backend();
    let kept = Path::new("/wal/000001");
    let lost = Path::new("/wal/000002");
    let fk = io.open_file(kept, &OpenOptions::create()).unwrap();
    io.sync_dir(Path::new("/wal")).unwrap();
    let fl = io.open_file(lost, &OpenOptions::create()).unwrap();
    io.submit_write(fk, b"k", 0).unwrap();
    io.submit_write(fl, b"l", 0).unwrap();
    io.submit_datasync(fk).unwrap();
    io.submit_datasync(fl).unwrap(); // data synced, but the name never was
    drain(&mut io);
    fs.crash(CrashOptions::default());
    assert_eq!(fs.list(), vec![kept.to_path_buf()]);
    assert_eq!(fs.read_file(kept).unwrap(), b"k");
}

#[test]
fn a_removal_is_undone_by_a_crash_until_the_directory_is_synced() {
    let fs = MemFs::new(3);
    let mut io = fs.backend();
    let p = Path::new("/x/seg");
    let fd = io.open_file(p, &OpenOptions::create()).unwrap();
    io.sync_dir(Path::new("/x")).unwrap();
    io.submit_write(fd, b"old", 0).unwrap();
    io.submit_fsync(fd).unwrap();
    drain(&mut io);
    io.remove_file(p).unwrap();
    assert!(fs.read_file(p).is_none());
    fs.crash(CrashOptions::default());
    assert_eq!(fs.read_file(p).unwrap(), b"old", "an unsynced removal is undone");

    let mut io = fs.backend();
    io.remove_file(p).unwrap();
    io.sync_dir(Path::new("/x")).unwrap();
    fs.crash(CrashOptions::default());
    assert!(fs.read_file(p).is_none(), "a synced removal stays");
}

#[test]
fn backends_from_before_a_crash_are_closed() {
    let fs = MemFs::new(4);
    let mut io = fs.backend();
    let fd = io.open_file(Path::new("/f"), &OpenOptions::create()).unwrap();
    fs.crash(CrashOptions::default());
    assert_eq!(io.submit_write(fd, b"x", 0), Err(StorageIoError::Closed));
    let mut fresh = fs.backend();
    assert!(
        fresh.open_file(Path::new("/f"), &OpenOptions::default()).is_err(),
        "the name was never synced"
    );
}

#[test]
fn torn_prefix_keeps_whole_sectors_of_the_last_write_only() {
    let mut seen_lengths = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let fs = MemFs::new(seed);
        let mut io = fs.backend();
        let p = Path::new("/t/log");
        let fd = io.open_file(p, &OpenOptions::create()).unwrap();
        io.sync_dir(Path::new("/t")).unwrap();
        io.submit_write(fd, &[1u8; 1000], 0).unwrap();
        io.submit_datasync(fd).unwrap();
        io.submit_write(fd, &[2u8; 300], 1000).unwrap(); // unsynced, dropped whole
        io.submit_write(fd, &[3u8; 4 * SECTOR_BYTES], 2048).unwrap(); // the last one: torn
        drain(&mut io);
        fs.crash(CrashOptions {
            tear: TearMode::Prefix,
        });
        let after = fs.read_file(p).unwrap();
        assert_eq!(
            &after[..1000],
            &[1u8; 1000][..],
            "synced data survives (seed {seed})"
        );
        if after.len() > 1000 {
            assert!(
                after[1000..2048].iter().all(|&x| x == 0),
                "the earlier unsynced write is gone"
            );
            let kept = after.len() - 2048;
            assert_eq!(kept % SECTOR_BYTES, 0, "tears fall on sector boundaries");
            assert!(after[2048..].iter().all(|&x| x == 3));
        }
        seen_lengths.insert(after.len());
        // Recovery twice gives the same state: a second crash with nothing new changes nothing.
        let again = fs.crash(CrashOptions {
            tear: TearMode::Prefix,
        });
        assert!(again.is_empty(), "a second crash changed {again:?}");
    }
    assert!(
        seen_lengths.len() >= 3,
        "the seed varies the tear point: {seen_lengths:?}"
    );
}

#[test]
fn any_sector_tearing_is_reproducible_from_the_seed() {
    let run = |seed| {
        let fs = MemFs::new(seed);
        let mut io = fs.backend();
        let p = Path::new("/s/f");
        let fd = io.open_file(p, &OpenOptions::create()).unwrap();
        io.sync_dir(Path::new("/s")).unwrap();
        io.submit_write(fd, &[9u8; 8 * SECTOR_BYTES], 0).unwrap();
        drain(&mut io);
        fs.crash(CrashOptions {
            tear: TearMode::AnySectors,
        });
        fs.read_file(p).unwrap()
    };
    assert_eq!(run(11), run(11));
    let variants: std::collections::BTreeSet<Vec<u8>> = (0..16).map(run).collect();
    assert!(variants.len() > 1);
}

#[test]
fn dsync_writes_are_durable_at_completion_and_an_interrupted_one_may_tear() {
    let fs = MemFs::new(9);
    let mut io = fs.backend();
    let path = Path::new("/d/log");
    let fd = io
        .open_file(path, &OpenOptions::create().with_dsync(true))
        .unwrap();
    io.sync_dir(Path::new("/d")).unwrap();
    io.submit_write(fd, &[1u8; 1000], 0).unwrap();
    io.submit_append(fd, &[2u8; 24]).unwrap();
    drain(&mut io);
    assert_eq!(fs.sync_count(), 0, "no datasync was issued");
    fs.crash(CrashOptions {
        tear: TearMode::Prefix,
    });
    let mut expected = vec![1u8; 1000];
    expected.extend_from_slice(&[2u8; 24]);
    assert_eq!(fs.read_file(path).unwrap(), expected, "both writes survive");

    // A crash that fires on a dsync write: the write never completes, and a whole-sector prefix
    // of it (the first 512 bytes here, over the old data, or none of it) is on the disk.
    let mut torn_seen = [false; 2];
    for seed in 0..64 {
        let fs = MemFs::new(seed);
        let mut io = fs.backend();
        let fd = io
            .open_file(path, &OpenOptions::create().with_dsync(true))
            .unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        io.submit_write(fd, &[1u8; 1024], 0).unwrap();
        drain(&mut io);
        fs.crash_after_ops(
            1,
            CrashOptions {
                tear: TearMode::Prefix,
            },
        );
        assert!(matches!(
            io.submit_write(fd, &[3u8; 1024], 0),
            Err(StorageIoError::Closed)
        ));
        let after = fs.read_file(path).unwrap();
        assert_eq!(after.len(), 1024);
        let new_sectors = after
            .chunks(SECTOR_BYTES)
            .take_while(|s| s.iter().all(|&b| b == 3))
            .count();
        assert!(
            after[new_sectors * SECTOR_BYTES..].iter().all(|&b| b == 1),
            "a prefix of whole sectors is new, the rest old"
        );
        torn_seen[usize::from(new_sectors == 1)] = true;
    }
    assert!(torn_seen[1], "some seed keeps exactly one new sector");
}

/// Several `O_DSYNC` writes submitted (by two backends) and not yet delivered are in flight: a
/// crash lands each on its own, so over seeds every subset of them is seen, whole writes under
/// `TearMode::None` and torn sectors under `AnySectors`. A delivered write is durable.
#[test]
fn dsync_writes_in_flight_land_in_any_subset_at_a_crash() {
    let path = Path::new("/d/log");
    let mut subsets = std::collections::BTreeSet::new();
    let mut torn = false;
    for seed in 0..200 {
        let fs = MemFs::new(seed);
        let mut a = fs.backend();
        let mut b = fs.backend();
        let dsync = OpenOptions::create().with_dsync(true);
        let fa = a.open_file(path, &dsync).unwrap();
        let fb = b.open_file(path, &dsync).unwrap();
        a.sync_dir(Path::new("/d")).unwrap();
        a.submit_write(fa, &[9u8; 512], 0).unwrap();
        drain(&mut a); // delivered: durable
        a.submit_write(fa, &[1u8; 1024], 512).unwrap();
        b.submit_write(fb, &[2u8; 1024], 1536).unwrap();
        b.submit_write(fb, &[3u8; 1024], 2560).unwrap();
        let tear = if seed % 2 == 0 {
            TearMode::None
        } else {
            TearMode::AnySectors
        };
        fs.crash(CrashOptions { tear });
        assert_eq!(fs.crashes_with_writes_in_flight(), 1);
        let after = fs.read_file(path).unwrap();
        assert!(
            after[..512].iter().all(|&x| x == 9),
            "seed {seed}: a delivered write was lost"
        );
        let mut landed = [false; 3];
        for (i, write) in landed.iter_mut().enumerate() {
            let range = 512 + i * 1024..512 + (i + 1) * 1024;
            let sectors: Vec<bool> = after
                .get(range.clone())
                .unwrap_or(&[])
                .chunks(SECTOR_BYTES)
                .map(|s| s.iter().all(|&x| x == i as u8 + 1))
                .collect();
            *write = sectors.len() == 2 && sectors.iter().all(|s| *s);
            if sectors.iter().any(|s| *s) && !*write {
                assert_eq!(
                    tear,
                    TearMode::AnySectors,
                    "seed {seed}: a whole-write crash tore one"
                );
                torn = true;
            }
        }
        if tear == TearMode::None {
            subsets.insert(landed);
        }
    }
    assert_eq!(
        subsets.len(),
        8,
        "every subset of three writes in flight lands for some seed"
    );
    assert!(torn, "some seed tears a write in flight at sectors");
}

#[test]
fn a_directory_lock_is_shared_by_every_backend_of_a_file_system_and_by_wrappers() {
    use storage_io_testkit::faulty::{FaultPlan, FaultyIo};
    use storage_io_testkit::gated::{Gate, GatedIo};

    let fs = MemFs::new(9);
    let dir = Path::new("/db");
    let locked = |r: storage_io_core::Result<storage_io_core::DirLock>| matches!(r, Err(StorageIoError::DirLocked { path }) if path == Path::new("/db/LOCK"));
    let first = fs.backend().lock_dir(dir).unwrap();
    assert!(locked(fs.backend().lock_dir(dir)));
    assert!(locked(
        FaultyIo::new(fs.backend(), FaultPlan::new(1)).lock_dir(dir)
    ));
    assert!(locked(GatedIo::new(fs.backend(), Gate::new(), &[]).lock_dir(dir)));
    let mut boxed: Box<dyn StorageIo> = Box::new(fs.backend());
    assert!(locked(boxed.lock_dir(dir)));
    // Another directory, or another file system, is another lock; no LOCK file appears.
    let other = fs.backend().lock_dir(Path::new("/other")).unwrap();
    drop(MemFs::new(10).backend().lock_dir(dir).unwrap());
    assert!(fs.list().is_empty());
    drop(first);
    let second = boxed.lock_dir(dir).unwrap();
    // A crash (the process dies) releases every lock; a guard from before releases nothing.
    fs.crash(CrashOptions::default());
    let after = fs.backend().lock_dir(dir).unwrap();
    drop(second);
    drop(other);
    assert!(locked(fs.backend().lock_dir(dir)));
    drop(after);
    drop(fs.backend().lock_dir(dir).unwrap());
}

/// Write a temporary file, sync it, rename it over the live one: until the directory is synced
/// a crash leaves the old live file (and the temporary name); after it, the new contents.
#[test]
fn memio_rename_is_durable_once_its_directory_is_synced() {
    let fs = MemFs::new(11);
    let dir = Path::new("/d");
    let (tmp, live) = (Path::new("/d/state.tmp"), Path::new("/d/state"));
    let replace = |contents: &[u8]| {
        let mut io = fs.backend();
        let fd = io.open_file(tmp, &OpenOptions::create()).unwrap();
        io.submit_write(fd, contents, 0).unwrap();
        io.submit_datasync(fd).unwrap();
        drain(&mut io);
        io.deregister_fd(fd).unwrap();
        io.rename(tmp, live).unwrap();
        io
    };
    let mut io = replace(b"old");
    io.sync_dir(dir).unwrap();
    assert_eq!(fs.durable_contents(live).unwrap(), b"old");
    assert_eq!(
        fs.durable_contents(tmp),
        None,
        "the old name is gone once the directory is synced"
    );

    let _io = replace(b"new");
    assert_eq!(
        fs.read_file(live).unwrap(),
        b"new",
        "reads see the rename at once"
    );
    fs.crash(CrashOptions::default());
    assert_eq!(
        fs.read_file(live).unwrap(),
        b"old",
        "a crash before sync_dir keeps the old file"
    );

    let mut io = replace(b"new");
    io.sync_dir(dir).unwrap();
    fs.crash(CrashOptions::default());
    assert_eq!(fs.read_file(live).unwrap(), b"new");
    let mut io = fs.backend();
    assert_eq!(io.metadata(live).unwrap().len, 3);
    assert!(io.metadata(dir).unwrap().is_dir);
    assert!(io.metadata(tmp).unwrap_err().is_not_found());
}
