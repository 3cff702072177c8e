//! The `wal_recover` workload: how long `WalManager::open` takes on an existing log, and how
//! much memory it takes at its peak, from a cold page cache. Two logs: 100 records of
//! [`RECORD_BYTES`] in one preallocated segment (4, 64 and 256 MiB: the cost must not follow the
//! segment size), and a log of [`big_log_bytes`] (1 GiB; 16 MiB in the smoke run) in 64 MiB
//! segments. Beside them, the same device's floor for the big log: fio reading its segment files
//! sequentially (1 MiB reads, psync, cold), and a plain `read(2)` loop over them when fio is
//! missing; and okaywal's reopen of 100 records (feature `okaywal`). Targets (issue 37): a
//! 100-record reopen ≤ 10 ms whatever the segment size; the big log's recovery ≤ 1.2× fio's
//! sequential read of it.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use storage_io_wal::{SyncMode, WalConfig, WalManager};

use crate::cell::{Backend, Workload, factory};
use crate::{ENGINE_OKAYWAL, ENGINE_WAL, Latency, Row};

/// Payload bytes of each record of the 100-record log.
pub const RECORD_BYTES: usize = 128;
/// Records of the small log.
pub const SMALL_RECORDS: usize = 100;
/// Segment sizes of the 100-record log (the smoke run takes the first).
pub const SMALL_SEGMENTS: [u64; 3] = [4 << 20, 64 << 20, 256 << 20];
/// Segment size of the big log (the default).
pub const BIG_SEGMENT: u64 = 64 << 20;
/// Payload bytes of each record of the big log.
const BIG_RECORD_BYTES: usize = 64 << 10;
/// The regime label of recovery rows: every run starts with the log's pages dropped.
pub const REGIME: crate::cell::Regime = crate::cell::Regime::Cold;
/// The engine label of the sequential-read floor without fio.
pub const ENGINE_READ: crate::cell::Engine = crate::cell::Engine::Read;
/// The engine label of fio's sequential read.
pub const ENGINE_FIO: crate::cell::Engine = crate::cell::Engine::Fio;

/// Bytes of records in the big log: 1 GiB, 16 MiB in the smoke run.
pub fn big_log_bytes(smoke: bool) -> u64 {
    if smoke { 16 << 20 } else { 1 << 30 }
}

/// A log to reopen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// 100 records in one preallocated segment of this many bytes.
    Small(u64),
    /// This many bytes of records in 64 MiB segments.
    Big(u64),
}

impl Log {
    /// The row's `backend` column: what the log is.
    pub fn label(self) -> String {
        match self {
            Log::Small(_) => format!("{SMALL_RECORDS} records"),
            Log::Big(bytes) => format!("{} MiB log", bytes >> 20),
        }
    }

    fn segment_bytes(self) -> u64 {
        match self {
            Log::Small(s) => s,
            Log::Big(_) => BIG_SEGMENT,
        }
    }

    fn config(self) -> WalConfig {
        WalConfig {
            segment_size_bytes: self.segment_bytes(),
            prepare_ahead: false,
            sync_mode: SyncMode::Sync,
            ..WalConfig::default()
        }
    }
}

/// Who reopens (or reads) the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// `WalManager::open` on the sync backend.
    Ours,
    /// fio, reading the segment files one after another (the big log's floor).
    Fio,
    /// A `read(2)` loop over the segment files, 1 MiB at a time (the floor without fio).
    PlainRead,
    /// okaywal's `WriteAheadLog::recover` of the same records (100-record log only).
    Okaywal,
}

/// One cell: a reader on a log.
#[derive(Debug, Clone, Copy)]
pub struct RecoverCell {
    /// Who.
    pub reader: Reader,
    /// On what.
    pub log: Log,
}

/// The cells of one round: per log, ours and its references back to back, the references
/// first in odd rounds.
pub fn cells(smoke: bool, fio_on: bool, round: usize) -> Vec<RecoverCell> {
    let segments: &[u64] = if smoke {
        &SMALL_SEGMENTS[..1]
    } else {
        &SMALL_SEGMENTS
    };
    let mut out = Vec::new();
    let mut pair = |mut cells: Vec<RecoverCell>| {
        if round % 2 == 1 {
            cells.reverse();
        }
        out.extend(cells);
    };
    for &s in segments {
        let log = Log::Small(s);
        let mut cells = vec![RecoverCell {
            reader: Reader::Ours,
            log,
        }];
        if crate::peers::okaywal_missing().is_none() && s == segments[0] {
            cells.push(RecoverCell {
                reader: Reader::Okaywal,
                log,
            });
        }
        pair(cells);
    }
    let big = Log::Big(big_log_bytes(smoke));
    let floor = if fio_on { Reader::Fio } else { Reader::PlainRead };
    pair(vec![
        RecoverCell {
            reader: Reader::Ours,
            log: big,
        },
        RecoverCell {
            reader: floor,
            log: big,
        },
    ]);
    out
}

/// The logs under `root`, written on first use and kept for every round (remove them with
/// [`remove_logs`]).
fn log_dir(root: &Path, log: Log) -> Result<PathBuf> {
    let name = match log {
        Log::Small(s) => format!("wal-recover-small-{}m-{}", s >> 20, std::process::id()),
        Log::Big(b) => format!("wal-recover-big-{}m-{}", b >> 20, std::process::id()),
    };
    let dir = root.join(name);
    if dir.join("READY").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (wal, _) = WalManager::open(&dir, log.config(), factory(Backend::Sync, 1)?)?;
    match log {
        Log::Small(_) => {
            for i in 0..SMALL_RECORDS {
                wal.commit(&[i as u8; RECORD_BYTES])?;
            }
        }
        Log::Big(bytes) => {
            let record = vec![0x5au8; BIG_RECORD_BYTES];
            let mut written = 0u64;
            while written < bytes {
                wal.append(&record)?;
                written += BIG_RECORD_BYTES as u64;
                if written.is_multiple_of(16 << 20) {
                    wal.flush()?;
                }
            }
        }
    }
    wal.close()?;
    drop(wal);
    std::fs::write(dir.join("READY"), b"")?;
    Ok(dir)
}

/// Removes the logs this process wrote under `root`.
pub fn remove_logs(root: &Path) {
    let suffix = format!("-{}", std::process::id());
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("wal-recover-") && name.ends_with(&suffix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The log's segment files, in order.
fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    Ok(files)
}

fn drop_caches(dir: &Path) -> Result<()> {
    for f in segments(dir)? {
        crate::cache::drop_cache(&f).with_context(|| format!("drop the cache of {}", f.display()))?;
    }
    Ok(())
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", b"5");
}

/// Runs one cell (the log is written first if this run has not yet) and returns its row:
/// `iops` is reopens per second (1 / time), `lat_us` the reopen time, `mb_s` the log's bytes
/// over it, `rss_peak_bytes` the peak RSS growth during it (ours and okaywal).
pub fn run_cell(root: &Path, cell: &RecoverCell) -> Result<Row> {
    let log = cell.log;
    let (secs, rss, bytes, engine) = match cell.reader {
        Reader::Ours => {
            let dir = log_dir(root, log)?;
            let bytes = segments(&dir)?
                .iter()
                .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
                .sum::<u64>();
            drop_caches(&dir)?;
            let factory = factory(Backend::Sync, 1)?;
            reset_peak_rss();
            let before = status_bytes("VmRSS");
            let start = Instant::now();
            let (wal, _) = WalManager::open(&dir, log.config(), factory)?;
            let secs = start.elapsed().as_secs_f64();
            let peak = status_bytes("VmHWM").saturating_sub(before);
            let records = wal.recovery_report().records;
            wal.close()?;
            drop(wal);
            if records == 0 {
                bail!("the {} reopened empty", log.label());
            }
            (secs, Some(peak), bytes, ENGINE_WAL)
        }
        Reader::Fio => {
            let dir = log_dir(root, log)?;
            let (secs, bytes) = fio_read(&segments(&dir)?)?;
            (secs, None, bytes, ENGINE_FIO)
        }
        Reader::PlainRead => {
            let dir = log_dir(root, log)?;
            drop_caches(&dir)?;
            let start = Instant::now();
            let mut buf = vec![0u8; 1 << 20];
            let mut bytes = 0u64;
            for f in segments(&dir)? {
                let mut file = std::fs::File::open(&f)?;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                }
            }
            (start.elapsed().as_secs_f64(), None, bytes, ENGINE_READ)
        }
        Reader::Okaywal => {
            let (secs, peak) = okaywal_reopen(root)?;
            (
                secs,
                Some(peak),
                (SMALL_RECORDS * RECORD_BYTES) as u64,
                ENGINE_OKAYWAL,
            )
        }
    };
    let secs = secs.max(1e-9);
    let us = secs * 1e6;
    Ok(Row {
        workload: Workload::WalRecover,
        engine,
        backend: log.label(),
        io: crate::cell::IoMode::Buffered,
        regime: REGIME,
        qd: 1,
        block_size: log.segment_bytes() as usize,
        iops: 1.0 / secs,
        mb_s: bytes as f64 / secs / 1e6,
        lat_us: Latency {
            mean: us,
            p50: us,
            p95: us,
            p99: us,
            p999: us,
            max: us,
        },
        ops: 1,
        rss_peak_bytes: rss,
        ..Row::default()
    })
}

/// fio reading `files` one after another in 1 MiB reads (psync, its page cache dropped first):
/// seconds and bytes.
fn fio_read(files: &[PathBuf]) -> Result<(f64, u64)> {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let out = Command::new("fio")
        .args([
            "--name=wal-recover-floor".to_string(),
            format!("--filename={}", names.join(":")),
            "--rw=read".to_string(),
            "--bs=1M".to_string(),
            "--ioengine=psync".to_string(),
            "--invalidate=1".to_string(),
            "--file_service_type=sequential".to_string(),
            format!("--size={total}"),
            "--allow_file_create=0".to_string(),
            "--output-format=json".to_string(),
        ])
        .output()
        .context("start fio")?;
    if !out.status.success() {
        bail!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("fio's json")?;
    let read = &v["jobs"][0]["read"];
    let bytes = read["io_bytes"].as_u64().unwrap_or(0);
    let bw = read["bw_bytes"].as_f64().unwrap_or(0.0);
    if bytes == 0 || bw <= 0.0 {
        bail!("fio read nothing from the log's segments");
    }
    Ok((bytes as f64 / bw, bytes))
}

/// okaywal: writes 100 records into a fresh log (its recovery checkpoints what it reads, so
/// each round starts from a new one), drops its pages, and times `WriteAheadLog::recover`,
/// which hands every entry to the manager (which reads all its chunks). Seconds and peak RSS
/// growth.
#[cfg(feature = "okaywal")]
fn okaywal_reopen(root: &Path) -> Result<(f64, u64)> {
    #[derive(Debug)]
    struct ReadAll;

    impl okaywal::LogManager for ReadAll {
        fn recover(&mut self, entry: &mut okaywal::Entry<'_>) -> std::io::Result<()> {
            entry.read_all_chunks()?;
            Ok(())
        }

        fn checkpoint_to(
            &mut self,
            _last: okaywal::EntryId,
            _entries: &mut okaywal::SegmentReader,
            _wal: &okaywal::WriteAheadLog,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    let dir = crate::cell::ScratchDir::new(root, "wal-recover-okaywal")?;
    {
        let log = okaywal::WriteAheadLog::recover(dir.path(), ReadAll)?;
        for i in 0..SMALL_RECORDS {
            let mut entry = log.begin_entry()?;
            entry.write_chunk(&[i as u8; RECORD_BYTES])?;
            entry.commit()?;
        }
        log.shutdown()?;
    }
    for e in std::fs::read_dir(dir.path())?.flatten() {
        if e.path().is_file() {
            crate::cache::drop_cache(&e.path())?;
        }
    }
    reset_peak_rss();
    let before = status_bytes("VmRSS");
    let start = Instant::now();
    let log = okaywal::WriteAheadLog::recover(dir.path(), ReadAll)?;
    let secs = start.elapsed().as_secs_f64();
    let peak = status_bytes("VmHWM").saturating_sub(before);
    log.shutdown()?;
    Ok((secs, peak))
}

#[cfg(not(feature = "okaywal"))]
fn okaywal_reopen(_root: &Path) -> Result<(f64, u64)> {
    bail!("{}", crate::peers::okaywal_missing().unwrap_or_default())
}

/// The report's `wal_recover` section: per log, our reopen time and peak RSS growth, and the
/// references beside them (median round each), with the ratio to the floor.
pub fn section(rows: &[Row]) -> String {
    let ours: Vec<&Row> = rows
        .iter()
        .filter(|r| r.workload == Workload::WalRecover && r.engine == ENGINE_WAL)
        .collect();
    if ours.is_empty() {
        return String::new();
    }
    let find = |engine: crate::cell::Engine, log: &str| {
        rows.iter()
            .find(|r| r.workload == Workload::WalRecover && r.engine == engine && r.backend == log)
    };
    let ms = |r: &Row| r.lat_us.mean / 1e3;
    let mut s = String::from(
        "\n## wal_recover: reopening a log\n\n\
         `WalManager::open` on an existing log (sync backend, cold page cache, median round), its \
         peak RSS growth, and beside it: fio reading the big log's segment files sequentially \
         (1 MiB psync reads, cold; a plain read(2) loop when fio is missing) and okaywal's \
         recovery of the same 100 records. Targets: 100 records ≤ 10 ms whatever the segment \
         size; the big log ≤ 1.2× the sequential read.\n\n\
         | log | segment | ours ms | ours peak RSS MiB | reference | reference ms | ours ÷ reference |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in ours {
        let reference = find(ENGINE_FIO, &r.backend)
            .or_else(|| find(ENGINE_READ, &r.backend))
            .or_else(|| find(ENGINE_OKAYWAL, &r.backend));
        let (who, theirs, ratio) = match reference {
            Some(p) => (
                p.engine.to_string(),
                format!("{:.2}", ms(p)),
                format!("{:.2}", ms(r) / ms(p)),
            ),
            None => ("—".into(), "—".into(), "—".into()),
        };
        let rss = r.rss_peak_bytes.map_or("—".into(), |b| {
            format!("{:.1}", b as f64 / f64::from(1u32 << 20))
        });
        let _ = writeln!(
            s,
            "| {} | {} MiB | {:.2} | {rss} | {who} | {theirs} | {ratio} |",
            r.backend,
            r.block_size >> 20,
            ms(r)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smoke_cells_run_and_the_section_divides_by_the_floor() {
        let root = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        for cell in cells(true, false, 0) {
            rows.push(run_cell(root.path(), &cell).unwrap());
        }
        remove_logs(root.path());
        assert!(
            rows.iter()
                .any(|r| r.engine == ENGINE_WAL && r.rss_peak_bytes.is_some())
        );
        let text = section(&rows);
        assert!(text.contains("| 100 records | 4 MiB |"), "{text}");
        assert!(text.contains("| 16 MiB log | 64 MiB |"), "{text}");
        assert!(text.contains(ENGINE_READ.name()), "{text}");
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "logs left behind: {left:?}");
    }
}
