//! Crash tests of `examples/segment_log.rs`'s reopen path on MemIo: the example's own log code
//! (its module, included here) runs batches of appends, a crash cuts them at every mutating op
//! (tearing the last unsynced write), and the log is reopened, appended to, and reopened again.
//! Every acknowledged record must stay readable at the offset it was given, and no offset may
//! be handed out twice.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../examples/segment_log/log.rs"]
mod log;

use std::path::Path;
use std::sync::Arc;

use log::{SegmentLog, segment_base};
use storage_io::{AsyncFileSystem, AsyncFsConfig, BackendFactory, StorageIo, block_on};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};

const DIR: &str = "/topic-0";
const SEGMENT_BYTES: u64 = 2048;

fn file_system(mem: &MemFs) -> AsyncFileSystem {
    let mem = mem.clone();
    let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(mem.backend()) as Box<dyn StorageIo>));
    let config = AsyncFsConfig {
        io_workers: 1,
        ..AsyncFsConfig::default()
    };
    AsyncFileSystem::with_factory(&config, factory).unwrap()
}

fn bases(mem: &MemFs) -> Vec<u64> {
    mem.list()
        .iter()
        .filter(|p| p.parent() == Some(Path::new(DIR)))
        .filter_map(|p| segment_base(p))
        .collect()
}

fn payload(offset: u64, salt: u8) -> Vec<u8> {
    let mut p = vec![salt ^ (offset % 251) as u8; 60 + (offset * 37 % 200) as usize];
    p[..8].copy_from_slice(&offset.to_le_bytes());
    p
}

/// Appends `batches` through a log opened on `mem`; returns every acknowledged record
/// (offset, payload). Stops at the first error (the crash).
fn produce(mem: &MemFs, batches: &[u64], salt: u8) -> Vec<(u64, Vec<u8>)> {
    let fs = file_system(mem);
    let mut acked = Vec::new();
    block_on(async {
        let Ok(mut log) = SegmentLog::open(fs.clone(), Path::new(DIR), SEGMENT_BYTES, bases(mem)).await
        else {
            return;
        };
        for &n in batches {
            let first = log.next_offset();
            let payloads: Vec<_> = (first..first + n).map(|o| payload(o, salt)).collect();
            match log.append_batch(&payloads).await {
                Ok(at) => {
                    assert_eq!(at, first, "a batch starts at next_offset");
                    acked.extend((at..).zip(payloads));
                }
                Err(_) => return,
            }
        }
    });
    fs.shutdown();
    acked
}

/// Reopens the log and checks that every acknowledged record reads back at its offset;
/// returns the log's next offset.
fn check(mem: &MemFs, acked: &[(u64, Vec<u8>)], ctx: &str) -> u64 {
    let fs = file_system(mem);
    let next = block_on(async {
        let log = SegmentLog::open(fs.clone(), Path::new(DIR), SEGMENT_BYTES, bases(mem))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e:#}"));
        for (offset, p) in acked {
            let got = log
                .read(*offset)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: acknowledged record {offset} lost: {e:#}"));
            assert_eq!(&got, p, "{ctx}: record {offset} differs");
        }
        log.next_offset()
    });
    fs.shutdown();
    next
}

fn tear(k: u64) -> TearMode {
    [TearMode::Prefix, TearMode::AnySectors, TearMode::None][k as usize % 3]
}

const FIRST: &[u64] = &[3, 5, 1, 8, 4, 6];
const SECOND: &[u64] = &[4, 7];

#[test]
fn segment_log_example_keeps_acknowledged_records_after_a_torn_tail() {
    let total = {
        let mem = MemFs::new(0);
        let acked = produce(&mem, FIRST, 0);
        assert_eq!(
            acked.len() as u64,
            FIRST.iter().sum::<u64>(),
            "the dry run completes"
        );
        mem.mutation_count()
    };
    for k in 1..=total {
        let mem = MemFs::new(k);
        mem.crash_after_ops(k, CrashOptions { tear: tear(k) });
        let mut acked = produce(&mem, FIRST, 0);
        if mem.crash_count() == 0 {
            mem.crash_after_ops(0, CrashOptions::default());
            mem.crash(CrashOptions { tear: tear(k) });
        }
        let ctx = format!("crash at op {k} of {total} ({:?})", tear(k));
        let next = check(&mem, &acked, &ctx);
        assert!(
            next >= acked.len() as u64,
            "{ctx}: next offset {next} reissues acknowledged offsets"
        );
        // Appends after the recovery are acknowledged and must survive the next reopen, at
        // offsets never handed out before.
        let more = produce(&mem, SECOND, 0x5a);
        assert_eq!(
            more.len() as u64,
            SECOND.iter().sum::<u64>(),
            "{ctx}: appends after recovery"
        );
        assert_eq!(
            more[0].0, next,
            "{ctx}: appends continue at the recovered next offset"
        );
        acked.extend(more);
        let end = check(&mem, &acked, &format!("{ctx}, reopened after more appends"));
        assert_eq!(
            end,
            next + SECOND.iter().sum::<u64>(),
            "{ctx}: every new record is found"
        );
    }
}
