//! A small Kafka-style segment log on tokio, on the async file API.
//!
//! Records get consecutive offsets and are appended to the active segment file
//! (`<base offset>.log`); a segment that reaches `--segment-bytes` is closed and a new one
//! started. Each record is framed as `[len u32][crc32c u32][payload]`, the checksum taken over
//! the length and the payload (so a run of zeros, the hole a torn write can leave, is never a
//! valid frame). A batch is appended with
//! every record in flight at once and made durable by one `sync_data` (group commit); an
//! in-memory index maps offsets to file positions, and reopening rebuilds it by scanning the
//! segments (a torn tail — a frame whose CRC fails — ends the scan).
//!
//! ```text
//! cargo run --release -p storage-io --example segment_log -- --records 20000 --batch 64
//! STORAGE_IO_BACKEND=thread_pool cargo run --release -p storage-io --example segment_log
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use storage_io::{AsyncFile, AsyncFileSystem, AsyncFsConfig};

const HEADER: usize = 8;

/// One segment file: its first offset and where each of its records starts.
struct Segment {
    base_offset: u64,
    file: AsyncFile,
    /// (position, payload length) of each record, by offset − base_offset.
    index: Vec<(u64, u32)>,
    size: u64,
}

/// The log: segments in offset order, the last one active.
struct SegmentLog {
    fs: AsyncFileSystem,
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&len);
    f.extend_from_slice(&checksum(len, payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// CRC32C of a frame's length bytes and payload: four zero bytes alone do not check out, so
/// zeros are not an empty record.
fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

impl SegmentLog {
    /// Opens the log in `dir`, rebuilding the index of every existing segment.
    async fn open(fs: AsyncFileSystem, dir: &Path, segment_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut bases: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        let mut log = SegmentLog {
            fs,
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::new(),
        };
        for base in bases {
            let segment = log.scan(base).await?;
            log.segments.push(segment);
        }
        if log.segments.is_empty() {
            log.roll(0).await?;
        }
        Ok(log)
    }

    /// Reads one segment front to back and indexes every intact record.
    async fn scan(&self, base_offset: u64) -> anyhow::Result<Segment> {
        let file = self.fs.open_append(self.path(base_offset)).await?;
        let len = file.size().await?;
        let (n, data) = file.read_at(vec![0u8; len as usize], 0).await;
        ensure!(n? as u64 == len, "segment {base_offset} shrank while being read");
        let (mut pos, mut index) = (0usize, Vec::new());
        while pos + HEADER <= data.len() {
            let len: [u8; 4] = data[pos..pos + 4].try_into()?;
            let plen = u32::from_le_bytes(len) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into()?);
            let Some(payload) = data.get(pos + HEADER..pos + HEADER + plen) else {
                break;
            };
            if checksum(len, payload) != crc {
                break;
            }
            index.push((pos as u64, plen as u32));
            pos += HEADER + plen;
        }
        if (pos as u64) < len {
            println!(
                "segment {base_offset}: {} torn bytes after record {} ignored",
                len - pos as u64,
                index.len()
            );
        }
        Ok(Segment {
            base_offset,
            file,
            index,
            size: pos as u64,
        })
    }

    fn path(&self, base_offset: u64) -> PathBuf {
        self.dir.join(format!("{base_offset:020}.log"))
    }

    async fn roll(&mut self, base_offset: u64) -> anyhow::Result<()> {
        let file = self.fs.open_append(self.path(base_offset)).await?;
        ensure!(file.size().await? == 0, "segment {base_offset} already exists");
        // The new segment's name must survive a crash, or so would none of its records.
        self.fs.sync_dir(&self.dir).await?;
        self.segments.push(Segment {
            base_offset,
            file,
            index: Vec::new(),
            size: 0,
        });
        Ok(())
    }

    /// The offset the next record gets.
    fn next_offset(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.base_offset + s.index.len() as u64)
    }

    /// Appends a batch — every record in flight at once — and makes it durable with one
    /// `sync_data`. Returns the offset of the first record.
    async fn append_batch(&mut self, payloads: &[Vec<u8>]) -> anyhow::Result<u64> {
        let first = self.next_offset();
        let full = self.segments.last().is_none_or(|s| s.size >= self.segment_bytes);
        if full {
            self.roll(first).await?;
        }
        let Some(active) = self.segments.last_mut() else {
            bail!("no active segment")
        };
        // Each append is sent when called, so the records reach the file in this order and all
        // are in flight at once; the sync, sent last, covers every one of them.
        let appends: Vec<_> = payloads.iter().map(|p| active.file.append(frame(p))).collect();
        let sync = active.file.sync_data();
        for (append, p) in appends.into_iter().zip(payloads) {
            let at = append.await.0?;
            active.index.push((at, p.len() as u32));
            active.size = active.size.max(at + (HEADER + p.len()) as u64);
        }
        sync.await?;
        Ok(first)
    }

    /// The payload of the record at `offset`.
    async fn read(&self, offset: u64) -> anyhow::Result<Vec<u8>> {
        let i = self.segments.partition_point(|s| s.base_offset <= offset);
        let segment = i
            .checked_sub(1)
            .map(|i| &self.segments[i])
            .context("offset before the log")?;
        let &(pos, len) = segment
            .index
            .get((offset - segment.base_offset) as usize)
            .with_context(|| format!("offset {offset} is past the end"))?;
        let (n, payload) = segment
            .file
            .read_at(vec![0u8; len as usize], pos + HEADER as u64)
            .await;
        ensure!(n? == len as usize, "record {offset} is cut short");
        Ok(payload)
    }
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

    // The STORAGE_IO_* overrides apply on top (AsyncFileSystem::new applies them).
    let config = AsyncFsConfig {
        preallocate_appends: true,
        preallocate_size: segment_bytes + (64 << 10),
        ..AsyncFsConfig::default()
    };
    let fs = AsyncFileSystem::new(&config)?;
    println!(
        "backend {} with {} worker(s); log in {}",
        fs.backend(),
        fs.workers(),
        dir.display()
    );

    // Produce: batches of records, each batch durable before the next starts.
    let mut log = SegmentLog::open(fs.clone(), &dir, segment_bytes).await?;
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
    let log = Arc::new(SegmentLog::open(fs.clone(), &dir, segment_bytes).await?);
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
        storage_io::OpKind::Append,
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
