//! A small Kafka-style segment log on tokio, on the async file API.
//!
//! Records get consecutive offsets and are appended to the active segment file
//! (`<base offset>.log`); a segment that reaches `--segment-bytes` is closed and a new one
//! started. Each record is framed as `[len u32][crc32c u32][payload]`, the checksum taken over
//! the length and the payload (so a run of zeros, the hole a torn write can leave, is never a
//! valid frame). A batch is appended with
//! every record in flight at once and made durable by one `sync_data` (group commit); an
//! in-memory index maps offsets to file positions, and reopening rebuilds it by scanning the
//! segments (a torn tail — a frame whose CRC fails — ends the scan). The torn bytes are zeroed
//! and the next record is written where the last intact one ends, so records acknowledged after
//! a crash survive the next reopen and no offset is handed out twice. The log itself lives in
//! `segment_log/log.rs`, which tests/segment_log_crash.rs crash-tests on MemIo.
//!
//! ```text
//! cargo run --release -p storage-io --example segment_log -- --records 20000 --batch 64
//! STORAGE_IO_BACKEND=thread_pool cargo run --release -p storage-io --example segment_log
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use storage_io::AsyncFsConfig;

#[path = "segment_log/log.rs"]
mod log;
use log::{SegmentLog, segment_base};

/// The base offsets of the segment files in `dir` (created if missing).
fn segment_bases(dir: &Path) -> anyhow::Result<Vec<u64>> {
    std::fs::create_dir_all(dir)?;
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        bases.extend(segment_base(&entry?.path()));
    }
    Ok(bases)
}

fn payload(offset: u64) -> Vec<u8> {
    let len = 100 + (offset * 7919 % 101) as usize;
    let mut p = vec![(offset % 251) as u8; len];
    p[..8].copy_from_slice(&offset.to_le_bytes());
    p
}

fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).context("missing value")?.parse()?),
        None => Ok(default),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let records = arg("--records", 10_000)?;
    let batch = arg("--batch", 64)?.max(1);
    let segment_bytes = arg("--segment-bytes", 1 << 20)?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("topic-0");

    // The STORAGE_IO_* overrides apply on top (open_async_fs applies them).
    let config = AsyncFsConfig {
        preallocate_appends: true,
        preallocate_size: segment_bytes + (64 << 10),
        ..AsyncFsConfig::default()
    };
    let fs = storage_io::open_async_fs(&config)?;
    println!(
        "backend {} with {} worker(s); log in {}",
        fs.backend(),
        fs.workers(),
        dir.display()
    );

    // Produce: batches of records, each batch durable before the next starts.
    let mut log = SegmentLog::open(fs.clone(), &dir, segment_bytes, segment_bases(&dir)?).await?;
    let mut latencies_us = Vec::new();
    let t0 = Instant::now();
    let mut next = 0;
    while next < records {
        let n = batch.min(records - next);
        let payloads: Vec<_> = (next..next + n).map(payload).collect();
        let t = Instant::now();
        let first = log.append_batch(&payloads).await?;
        latencies_us.push(t.elapsed().as_micros() as u64);
        ensure!(first == next, "offsets are consecutive");
        next += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    println!(
        "appended {records} records in {} segments: {:.0} records/s; batch append+sync p50 {} µs, p99 {} µs",
        log.segments.len(),
        records as f64 / secs,
        latencies_us[latencies_us.len() / 2],
        latencies_us[latencies_us.len() * 99 / 100],
    );

    // Reopen: the index is rebuilt from the files.
    drop(log);
    let log = Arc::new(SegmentLog::open(fs.clone(), &dir, segment_bytes, segment_bases(&dir)?).await?);
    ensure!(
        log.next_offset() == records,
        "recovered {} of {records} records",
        log.next_offset()
    );

    // Consume: four readers over the whole log, every record checked.
    let t0 = Instant::now();
    let readers: Vec<_> = (0..4u64)
        .map(|r| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut bytes = 0u64;
                for offset in (r..records).step_by(4) {
                    let got = log.read(offset).await?;
                    ensure!(got == payload(offset), "record {offset} differs");
                    bytes += got.len() as u64;
                }
                anyhow::Ok(bytes)
            })
        })
        .collect();
    let mut bytes = 0;
    for r in readers {
        bytes += r.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "read back {records} records ({:.1} MB) in {:.3} s: {:.1} MB/s, all intact",
        bytes as f64 / 1e6,
        secs,
        bytes as f64 / 1e6 / secs
    );

    let m = fs.metrics();
    for kind in [
        storage_io::OpKind::Write,
        storage_io::OpKind::Datasync,
        storage_io::OpKind::Read,
    ] {
        let o = m.op(kind);
        println!(
            "{kind:>8}: {:>6} ops, p50 {:>7.1} µs, p99 {:>7.1} µs",
            o.completed, o.latency_us_p50, o.latency_us_p99
        );
    }
    drop(log);
    fs.shutdown();
    Ok(())
}
