//! What recovery reads: the log and the in-flight window of the configuration after it, not
//! the segment it sits in. Bytes are counted by a wrapper backend.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use storage_io_core::{
    AlignedBuf, BackendFactory, Capabilities, IoBuf, IoCompletion, IoFd, IoStats, IoToken, OpenOptions,
    OpenedFd, Result, StorageIo, SubmitError,
};
use storage_io_testkit::memio::MemFs;
use storage_io_wal::{SyncMode, WalConfig, WalManager};

use common::{DIR, mem_factory};

/// A backend that adds the length of every read it accepts to a shared counter, and counts
/// the buffers it allocates and the largest read it was asked for.
struct CountingIo<B> {
    inner: B,
    read_bytes: Arc<AtomicU64>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    allocated_bufs: AtomicU64,
    largest_read: AtomicU64,
    /// Addresses of the buffers `alloc_buf` gave out.
    allocated_addrs: std::sync::Mutex<std::collections::BTreeSet<usize>>,
    /// Reads of more than a segment header into memory that `alloc_buf` did not give out.
    reads_into_fresh_memory: AtomicU64,
}

storage_io_core::forward_namespace!([B: StorageIo] CountingIo<B> => inner);

impl<B: StorageIo> StorageIo for CountingIo<B> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        self.inner.register_fd(file)
    }
    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        self.inner.deregister_fd(fd)
    }
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        self.inner.open_file(path, options)
    }
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        self.inner.open_file_with_mode(path, options)
    }
    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        self.inner.file_len(fd)
    }
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        self.counts.allocated_bufs.fetch_add(1, Ordering::Relaxed);
        let buf = self.inner.alloc_buf(len)?;
        self.counts
            .allocated_addrs
            .lock()
            .unwrap()
            .insert(buf.as_ptr() as usize);
        Ok(buf)
    }
    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let len = buf.len() as u64;
        self.counts.largest_read.fetch_max(len, Ordering::Relaxed);
        if len > 32 && !self.counts.allocated_addrs.lock().unwrap().contains(&buf.addr()) {
            self.counts
                .reads_into_fresh_memory
                .fetch_add(1, Ordering::Relaxed);
        }
        let token = self.inner.submit_read(fd, buf, offset)?;
        self.read_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(token)
    }
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        self.inner.submit_write(fd, data, offset)
    }
    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        self.inner.submit_write_buf(fd, buf, offset)
    }
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        self.inner.submit_append(fd, data)
    }
    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.inner.submit_datasync(fd)
    }
    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.inner.submit_fsync(fd)
    }
    fn flush(&mut self) -> Result<usize> {
        self.inner.flush()
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.inner.poll_completions(out)
    }
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.inner.wait_completions(out, min, timeout)
    }
    fn pending_count(&self) -> usize {
        self.inner.pending_count()
    }
    fn stats(&self) -> &IoStats {
        self.inner.stats()
    }
}

/// Issue 37, item 12 (reviewer follow-up): reopening a 100-record log in a 64 MiB
/// preallocated segment reads the log and the configuration's in-flight window after it
/// (`max_flushes_in_flight` × the most one flush hands the backend at once), in reads of
/// `write_chunk_bytes`: not the 8 MiB torn-window constant, not the segment.
#[test]
fn recovery_reads_the_log_and_the_in_flight_window_not_the_segment() {
    let configs = [
        WalConfig {
            segment_size_bytes: 64 << 20,
            prepare_ahead: false,
            ..WalConfig::default()
        },
        WalConfig {
            segment_size_bytes: 64 << 20,
            prepare_ahead: false,
            sync_mode: SyncMode::Sync,
            write_chunk_bytes: 256 << 10,
            max_flushes_in_flight: 2,
            ..WalConfig::default()
        },
    ];
    for config in configs {
        let fs = MemFs::new(100);
        let dir = Path::new(DIR);
        let log_bytes = {
            let (wal, _) = WalManager::open(dir, config.clone(), mem_factory(&fs)).unwrap();
            for i in 0..100u32 {
                wal.commit(&i.to_le_bytes().repeat(16)).unwrap();
            }
            let end = wal.next_lsn().0;
            wal.close().unwrap();
            end
        };
        let read_bytes = Arc::new(AtomicU64::new(0));
        let factory: BackendFactory = {
            let (fs, read_bytes) = (fs.clone(), read_bytes.clone());
            Arc::new(move |_| {
                Ok(Box::new(CountingIo {
                    inner: fs.backend(),
                    read_bytes: read_bytes.clone(),
                    counts: Arc::default(),
                }) as Box<dyn StorageIo>)
            })
        };
        let (wal, _) = WalManager::open(dir, config.clone(), factory).unwrap();
        let read = read_bytes.load(Ordering::Relaxed);
        let batch = match config.sync_mode {
            SyncMode::Group { max_batch_bytes, .. } => max_batch_bytes,
            _ => 0,
        };
        let window = config.max_flushes_in_flight as u64 * config.write_chunk_bytes.max(batch) as u64;
        let chunk = config.write_chunk_bytes as u64;
        // The log and the window, each rounded up to whole reads, and the header read.
        let bound = (log_bytes + window).div_ceil(chunk) * chunk + chunk + 32;
        assert!(
            read <= bound,
            "reopening a {log_bytes}-byte log read {read} bytes: more than the log and the {window}-byte in-flight window ({bound}); config {config:?}"
        );
        assert_eq!(wal.recovery_report().records, 100);
        wal.close().unwrap();
    }
}

/// Issue 37, item 12: recovery streams every segment through the same two buffers, allocated
/// once, in reads of `write_chunk_bytes`: memory is bounded by the buffers, not by the segment
/// or the log, and nothing is allocated (or zero-filled) per read.
#[test]
fn recovery_streams_every_segment_through_two_reused_buffers() {
    let config = WalConfig {
        segment_size_bytes: 1 << 20,
        write_chunk_bytes: 64 << 10,
        prepare_ahead: false,
        sync_mode: SyncMode::Sync,
        ..WalConfig::default()
    };
    let fs = MemFs::new(100);
    let dir = Path::new(DIR);
    let records = {
        let (wal, _) = WalManager::open(dir, config.clone(), mem_factory(&fs)).unwrap();
        // About 5 MiB: six segments, each read in 16 chunks.
        let record = vec![0xa5u8; 10_000];
        for _ in 0..500 {
            wal.append(&record).unwrap();
        }
        wal.flush().unwrap();
        wal.close().unwrap();
        500
    };
    let counts = Arc::new(Counts::default());
    let read_bytes = Arc::new(AtomicU64::new(0));
    let factory: BackendFactory = {
        let (fs, counts, read_bytes) = (fs.clone(), counts.clone(), read_bytes.clone());
        Arc::new(move |_| {
            Ok(Box::new(CountingIo {
                inner: fs.backend(),
                read_bytes: read_bytes.clone(),
                counts: counts.clone(),
            }) as Box<dyn StorageIo>)
        })
    };
    let (wal, _) = WalManager::open(dir, config.clone(), factory).unwrap();
    let report = wal.recovery_report().clone();
    assert_eq!(report.records, records);
    assert!(report.segments >= 5, "{report:?}");
    let allocated = counts.allocated_bufs.load(Ordering::Relaxed);
    let fresh = counts.reads_into_fresh_memory.load(Ordering::Relaxed);
    assert!(
        allocated <= 2 && fresh == 0,
        "recovery of {} segments allocated {allocated} buffers and made {fresh} reads into other memory: not two reused buffers",
        report.segments
    );
    assert!(counts.largest_read.load(Ordering::Relaxed) <= config.write_chunk_bytes as u64);
    // Every segment but the last is read as far as its segment-end frame, the last one as far as
    // its end and the in-flight window after it: never the zeros of a segment past that.
    let log_bytes = report.next_lsn.0 - report.first_lsn.0;
    let chunk = config.write_chunk_bytes as u64;
    let bound = log_bytes
        + (report.segments as u64 + 1) * chunk
        + config.in_flight_window_bytes()
        + 32 * report.segments as u64;
    let read = read_bytes.load(Ordering::Relaxed);
    assert!(
        read <= bound,
        "recovery read {read} bytes of a {log_bytes}-byte log (bound {bound})"
    );
    wal.close().unwrap();
}

/// Issue 37, item 12: `WalReader` reads through the same stream as recovery: every record of a
/// log of several segments comes back, read into buffers allocated once and reused.
#[test]
fn the_reader_streams_every_segment_through_reused_buffers() {
    let config = WalConfig {
        segment_size_bytes: 1 << 20,
        prepare_ahead: false,
        sync_mode: SyncMode::Sync,
        ..WalConfig::default()
    };
    let fs = MemFs::new(100);
    let dir = Path::new(DIR);
    let payloads: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_le_bytes().repeat(2_500)).collect();
    {
        let (wal, _) = WalManager::open(dir, config, mem_factory(&fs)).unwrap();
        for p in &payloads {
            wal.append(p).unwrap();
        }
        wal.flush().unwrap();
        wal.close().unwrap();
    }
    let counts = Arc::new(Counts::default());
    let backend = CountingIo {
        inner: fs.backend(),
        read_bytes: Arc::default(),
        counts: counts.clone(),
    };
    let reader = storage_io_wal::WalReader::open(dir, Box::new(backend)).unwrap();
    let read: Vec<Vec<u8>> = reader.map(|r| r.unwrap().1).collect();
    assert!(
        read == payloads,
        "the reader returned {} of 500 records",
        read.len()
    );
    let allocated = counts.allocated_bufs.load(Ordering::Relaxed);
    let fresh = counts.reads_into_fresh_memory.load(Ordering::Relaxed);
    assert!(
        allocated <= 2 && fresh == 0,
        "reading 5 segments allocated {allocated} buffers and made {fresh} reads into other memory"
    );
}
