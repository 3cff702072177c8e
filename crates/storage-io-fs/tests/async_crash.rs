//! Crash tests of the async file API on MemIo (the API opens files through its backend, so an
//! in-memory one hosts it): a crash at every mutating op of a workload, then the file as a crash
//! leaves it. Every append covered by a completed `sync_data` (in a file whose creation a
//! completed `sync_dir` covered) must be there, at the offset its append returned; records are
//! framed as in `examples/segment_log.rs` (`[len u32][crc32c u32][payload]`), and that example's
//! scan must find every covered record, in order, and nothing that was never appended.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use storage_io_core::{BackendFactory, StorageIo};
use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, block_on};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};

const DIR: &str = "/topic-0";
const SEGMENT: &str = "/topic-0/00000000000000000000.log";
const HEADER: usize = 8;

fn mem_factory(fs: &MemFs) -> BackendFactory {
    let fs = fs.clone();
    Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>))
}

/// `examples/segment_log.rs`'s frame: the checksum covers the length and the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&len);
    f.extend_from_slice(&crc32c::crc32c_append(crc32c::crc32c(&len), payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// `examples/segment_log.rs`'s scan: intact frames from the start; the first bad one ends it.
fn scan(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let (mut pos, mut out) = (0usize, Vec::new());
    while pos + HEADER <= data.len() {
        let len_bytes: [u8; 4] = data[pos..pos + 4].try_into().unwrap();
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
        let Some(payload) = data.get(pos + HEADER..pos + HEADER + len) else {
            break;
        };
        if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != crc {
            break;
        }
        out.push((pos as u64, payload.to_vec()));
        pos += HEADER + len;
    }
    out
}

fn payload(i: usize) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; 40 + i * 37 % 700];
    p[..8].copy_from_slice(&(i as u64).to_le_bytes());
    p
}

/// What the workload saw before the crash stopped it.
#[derive(Default)]
struct Seen {
    /// Every append that returned an offset, in order: (offset, payload).
    appended: Vec<(u64, Vec<u8>)>,
    /// How many of them a completed `sync_data` covers (a prefix: batches are sequential).
    covered: usize,
}

/// Batches of appends, all in flight at once, each batch followed by one `sync_data` (the
/// example's group commit). With `sync_dir`, the segment's creation is made durable by an
/// explicit `sync_dir` first; without, the first `sync_data` of a created file does it.
fn workload(fs: &AsyncFileSystem, seen: &mut Seen, sync_dir: bool) {
    block_on(async {
        let Ok(log) = fs.open_append(SEGMENT).await else {
            return;
        };
        if sync_dir && fs.sync_dir(DIR).await.is_err() {
            return;
        }
        let mut i = 0;
        for batch in [1, 3, 8, 2, 5] {
            let appends: Vec<_> = (i..i + batch).map(|k| log.append(frame(&payload(k)))).collect();
            let sync = log.sync_data();
            for (k, append) in (i..i + batch).zip(appends) {
                if let Ok(at) = append.await.0 {
                    seen.appended.push((at, payload(k)));
                }
            }
            i += batch;
            if sync.await.is_err() {
                return;
            }
            seen.covered = seen.appended.len();
        }
    });
}

fn tear(k: u64) -> TearMode {
    [TearMode::None, TearMode::Prefix, TearMode::AnySectors][k as usize % 3]
}

#[test]
fn async_file_api_on_memio_keeps_every_append_a_completed_sync_data_covers_across_a_crash() {
    for sync_dir in [true, false] {
        sweep(sync_dir);
    }
}

fn sweep(sync_dir: bool) {
    let config = AsyncFsConfig {
        io_workers: 1,
        ..AsyncFsConfig::default()
    };
    let total = {
        let mem = MemFs::new(0);
        let fs = AsyncFileSystem::with_factory(&config, mem_factory(&mem)).unwrap();
        let mut seen = Seen::default();
        workload(&fs, &mut seen, sync_dir);
        fs.shutdown();
        assert_eq!(seen.covered, 19, "the dry run must complete");
        mem.mutation_count()
    };
    assert!(total > 10, "the workload is too small: {total} mutating ops");
    let mut points = 0;
    for k in 1..=total + 1 {
        let mem = MemFs::new(k);
        mem.crash_after_ops(k, CrashOptions { tear: tear(k) });
        let fs = AsyncFileSystem::with_factory(&config, mem_factory(&mem)).unwrap();
        let mut seen = Seen::default();
        workload(&fs, &mut seen, sync_dir);
        fs.shutdown();
        if mem.crash_count() == 0 {
            mem.crash_after_ops(0, CrashOptions::default());
            mem.crash(CrashOptions { tear: tear(k) });
        }
        let ctx = format!("sync_dir {sync_dir}, crash at op {k} of {total} ({:?})", tear(k));
        let data = mem.read_file(Path::new(SEGMENT)).unwrap_or_default();
        for (at, p) in &seen.appended[..seen.covered] {
            let f = frame(p);
            let at = *at as usize;
            assert_eq!(
                data.get(at..at + f.len()),
                Some(&f[..]),
                "{ctx}: a record a completed sync_data covered is not at offset {at}"
            );
        }
        let found = scan(&data);
        assert!(
            found.len() >= seen.covered,
            "{ctx}: the example's scan found {} records, {} were covered by a sync",
            found.len(),
            seen.covered
        );
        assert_eq!(
            found[..],
            seen.appended[..found.len().min(seen.appended.len())],
            "{ctx}: the scan found records that differ from what was appended"
        );
        points += 1;
    }
    assert_eq!(points, total + 1);
}
