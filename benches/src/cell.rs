//! What every cell of ours shares: the workload and backend names, [`Cell`], building its
//! backend, CPU time, and the row a cell makes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use storage_io_core::{BackendFactory, BackendKind, IoConfig, IoStats, StorageIo, StorageIoError};

use crate::{Latency, Row};

/// Every workload the driver knows, by the name the command line, the rows and the report use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// `seq_read`: one sequential reader.
    SeqRead,
    /// `rand_read`: uniform random reads.
    RandRead,
    /// `rand_write`: uniform random writes.
    RandWrite,
    /// `multistream_scan`: several sequential streams at once.
    MultistreamScan,
    /// `wal_commit`: committers of the write-ahead log (`wal.rs`).
    WalCommit,
    /// `scheduler_rand_read`: random page reads through the page scheduler (`sched.rs`).
    SchedulerRandRead,
    /// `scheduler_batch_read`: batches of page reads through the scheduler.
    SchedulerBatchRead,
    /// `raw_round_read`: the scheduler cells' raw peer, rounds of reads on one backend.
    RawRoundRead,
    /// `scheduler_seq_scan`: a `ReadStream` over the file.
    SchedulerSeqScan,
    /// `scheduler_client_read`: `qd` blocking client threads, each waiting for its own random
    /// page read through the scheduler (a buffer pool's misses from many threads).
    SchedulerClientRead,
    /// `scheduler_task_read`: `qd` async tasks on a 2-thread tokio runtime, each awaiting its
    /// own random page read through the scheduler (`recv_async`).
    SchedulerTaskRead,
    /// `raw_handoff_read`: the raw backend loop on one thread, each read asked for by one of
    /// `qd` client threads and its completion handed back to it over a channel: the least a
    /// dispatcher/worker design pays per read on this machine.
    RawHandoffRead,
    /// `raw_tagged_handoff_read`: the raw backend loop on one thread serving one client thread
    /// that keeps `qd` reads outstanding over channels and sends its refills together: the
    /// least a worker thread costs a client with many reads in flight (the peer of
    /// `scheduler_rand_read`).
    RawTaggedHandoffRead,
    /// `segment_append`: appends and a sync through the async file API (`segment.rs`).
    SegmentAppend,
    /// `segment_read`: a sequential consumer through the async file API.
    SegmentRead,
    /// `async_rand_read`: tasks reading 4 KiB at random offsets through the async file API and
    /// its Rust peers (`async_cells.rs`).
    AsyncRandRead,
    /// `async_append_sync`: tasks each appending 8 × 4 KiB then one `sync_data`, ours and peers.
    AsyncAppendSync,
    /// `async_seq_read`: consumer tasks reading the file front to back, ours and peers.
    AsyncSeqRead,
    /// `wal_recover`: reopening an existing write-ahead log, cold (`recover.rs`).
    WalRecover,
}

impl Workload {
    /// Every workload, in the order the driver runs them.
    pub const ALL: [Workload; 19] = [
        Workload::SeqRead,
        Workload::RandRead,
        Workload::RandWrite,
        Workload::MultistreamScan,
        Workload::WalCommit,
        Workload::SchedulerRandRead,
        Workload::SchedulerBatchRead,
        Workload::RawRoundRead,
        Workload::SchedulerSeqScan,
        Workload::SchedulerClientRead,
        Workload::SchedulerTaskRead,
        Workload::RawHandoffRead,
        Workload::RawTaggedHandoffRead,
        Workload::SegmentAppend,
        Workload::SegmentRead,
        Workload::AsyncRandRead,
        Workload::AsyncAppendSync,
        Workload::AsyncSeqRead,
        Workload::WalRecover,
    ];

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            Workload::SeqRead => "seq_read",
            Workload::RandRead => "rand_read",
            Workload::RandWrite => "rand_write",
            Workload::MultistreamScan => "multistream_scan",
            Workload::WalCommit => "wal_commit",
            Workload::SchedulerRandRead => "scheduler_rand_read",
            Workload::SchedulerBatchRead => "scheduler_batch_read",
            Workload::RawRoundRead => "raw_round_read",
            Workload::SchedulerSeqScan => "scheduler_seq_scan",
            Workload::SchedulerClientRead => "scheduler_client_read",
            Workload::SchedulerTaskRead => "scheduler_task_read",
            Workload::RawHandoffRead => "raw_handoff_read",
            Workload::RawTaggedHandoffRead => "raw_tagged_handoff_read",
            Workload::SegmentAppend => "segment_append",
            Workload::SegmentRead => "segment_read",
            Workload::AsyncRandRead => "async_rand_read",
            Workload::AsyncAppendSync => "async_append_sync",
            Workload::AsyncSeqRead => "async_seq_read",
            Workload::WalRecover => "wal_recover",
        }
    }

    /// The workload called `name`.
    pub fn named(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialised as its name, as results.json has always stored it.
impl serde::Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Workload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Workload, D::Error> {
        let name = String::deserialize(d)?;
        Workload::named(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown workload {name:?}")))
    }
}

impl Default for Workload {
    /// `rand_read`, the workload a row starts from in tests and builders.
    fn default() -> Workload {
        Workload::RandRead
    }
}

/// Who ran a row's cell: a row's `engine`, serialised by name as results.json has always held it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Engine {
    /// `storage-io`: our backends, scheduler and async file API.
    #[default]
    StorageIo,
    /// `fio`.
    Fio,
    /// `storage-io-wal`: the WAL with thread committers.
    Wal,
    /// `storage-io-wal async`: the WAL with async-task committers.
    WalAsync,
    /// `okaywal`.
    Okaywal,
    /// `rocksdb`.
    Rocksdb,
    /// `raw`: the WAL cells' raw durable-write peer.
    Raw,
    /// `read(2)`: wal_recover's sequential-read floor.
    Read,
    /// `tokio::fs`.
    TokioFs,
    /// `tokio-uring`.
    TokioUring,
    /// `compio`.
    Compio,
    /// `monoio`.
    Monoio,
    /// `glommio`.
    Glommio,
}

impl Engine {
    /// Every engine.
    pub const ALL: [Engine; 13] = [
        Engine::StorageIo,
        Engine::Fio,
        Engine::Wal,
        Engine::WalAsync,
        Engine::Okaywal,
        Engine::Rocksdb,
        Engine::Raw,
        Engine::Read,
        Engine::TokioFs,
        Engine::TokioUring,
        Engine::Compio,
        Engine::Monoio,
        Engine::Glommio,
    ];

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            Engine::StorageIo => "storage-io",
            Engine::Fio => "fio",
            Engine::Wal => "storage-io-wal",
            Engine::WalAsync => "storage-io-wal async",
            Engine::Okaywal => "okaywal",
            Engine::Rocksdb => "rocksdb",
            Engine::Raw => "raw",
            Engine::Read => "read(2)",
            Engine::TokioFs => "tokio::fs",
            Engine::TokioUring => "tokio-uring",
            Engine::Compio => "compio",
            Engine::Monoio => "monoio",
            Engine::Glommio => "glommio",
        }
    }

    /// The engine called `name`.
    pub fn named(name: &str) -> Option<Engine> {
        Engine::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Engine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Engine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Engine, D::Error> {
        let name = String::deserialize(d)?;
        Engine::named(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown engine {name:?}")))
    }
}

/// The state of the page cache (or the kind of cell) a row was measured in: a row's `regime`,
/// serialised by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Regime {
    /// `hot`: the file in the page cache.
    Hot,
    /// `pressure`: the cache capped at about file / 1.5.
    Pressure,
    /// `thrash`: the cache capped at about file / 4.
    Thrash,
    /// `uncached`: direct I/O, no cache in front of the disk.
    #[default]
    Uncached,
    /// `cold`: the file dropped from the cache before the cell (async cells, `wal_recover`).
    Cold,
    /// `new_file`: appends to a file the cell creates (`async_append_sync`).
    NewFile,
    /// `fdatasync`: durable commits (`wal_commit`).
    Fdatasync,
}

impl Regime {
    /// Every regime.
    pub const ALL: [Regime; 7] = [
        Regime::Hot,
        Regime::Pressure,
        Regime::Thrash,
        Regime::Uncached,
        Regime::Cold,
        Regime::NewFile,
        Regime::Fdatasync,
    ];

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            Regime::Hot => "hot",
            Regime::Pressure => "pressure",
            Regime::Thrash => "thrash",
            Regime::Uncached => "uncached",
            Regime::Cold => "cold",
            Regime::NewFile => "new_file",
            Regime::Fdatasync => "fdatasync",
        }
    }

    /// The regime called `name`.
    pub fn named(name: &str) -> Option<Regime> {
        Regime::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Regime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Regime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Regime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Regime, D::Error> {
        let name = String::deserialize(d)?;
        Regime::named(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown regime {name:?}")))
    }
}

/// O_DIRECT or the page cache: a row's `io`, serialised as `direct` / `buffered`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// O_DIRECT: no page cache in front of the disk.
    #[default]
    Direct,
    /// Through the page cache.
    Buffered,
}

impl IoMode {
    /// `direct` for true, `buffered` for false.
    pub fn of(direct: bool) -> IoMode {
        if direct { IoMode::Direct } else { IoMode::Buffered }
    }

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            IoMode::Direct => "direct",
            IoMode::Buffered => "buffered",
        }
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every workload's name.
pub const WORKLOADS: [&str; 19] = {
    let mut names = [""; 19];
    let mut i = 0;
    while i < names.len() {
        names[i] = Workload::ALL[i].name();
        i += 1;
    }
    names
};

/// Every backend variant the driver knows, by the name the command line and the rows use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// `sync`: inline blocking I/O.
    Sync,
    /// `thread_pool`: the worker pool.
    ThreadPool,
    /// `uring`: io_uring with registered buffers (lent to the cell: I/O in place).
    Uring,
    /// `uring_nofixed`: io_uring without registered buffers.
    UringNofixed,
    /// `uring_sqpoll`: io_uring with an SQ polling thread.
    UringSqpoll,
    /// `uring_heapbuf`: io_uring on the caller's own heap buffers (reads staged and copied).
    UringHeapbuf,
    /// `uring_nowait_off`: io_uring with every buffered read through the ring.
    UringNowaitOff,
    /// `thread_pool_nowait_off`: the pool with every buffered read on a worker.
    ThreadPoolNowaitOff,
}

impl Backend {
    /// Every variant.
    pub const ALL: [Backend; 8] = [
        Backend::Sync,
        Backend::ThreadPool,
        Backend::Uring,
        Backend::UringNofixed,
        Backend::UringSqpoll,
        Backend::UringHeapbuf,
        Backend::UringNowaitOff,
        Backend::ThreadPoolNowaitOff,
    ];

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Sync => "sync",
            Backend::ThreadPool => "thread_pool",
            Backend::Uring => "uring",
            Backend::UringNofixed => "uring_nofixed",
            Backend::UringSqpoll => "uring_sqpoll",
            Backend::UringHeapbuf => "uring_heapbuf",
            Backend::UringNowaitOff => "uring_nowait_off",
            Backend::ThreadPoolNowaitOff => "thread_pool_nowait_off",
        }
    }

    /// The variant called `name`, or an error listing them.
    pub fn named(name: &str) -> Result<Backend> {
        match Backend::ALL.into_iter().find(|b| b.name() == name) {
            Some(b) => Ok(b),
            None => bail!(
                "unknown backend {name:?}; expected one of {}",
                BACKENDS.join(", ")
            ),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every backend variant's name.
pub const BACKENDS: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < names.len() {
        names[i] = Backend::ALL[i].name();
        i += 1;
    }
    names
};

/// One cell of ours.
#[derive(Debug, Clone)]
pub struct Cell {
    /// What it runs.
    pub workload: Workload,
    /// What it runs on.
    pub backend: Backend,
    /// O_DIRECT or buffered.
    pub direct: bool,
    /// Ops kept in flight.
    pub qd: usize,
    /// Bytes per op.
    pub block: usize,
    /// How long to submit for.
    pub duration: Duration,
    /// Bytes of the file used, from offset 0.
    pub size: u64,
    /// Sequential streams of `multistream_scan`.
    pub streams: usize,
    /// Worker threads of the `scheduler_*` cells; `None` is the scheduler's own default.
    pub sched_workers: Option<usize>,
}

/// Builds the backend a cell names, sized for `qd`. `STORAGE_IO_*` variables tune it (for
/// example `STORAGE_IO_SUBMIT_BATCH`), except the queue depth, which the cell sets.
pub fn make_backend(backend: Backend, qd: usize) -> Result<Box<dyn StorageIo>> {
    let (kind, config) = backend_config(backend, qd)?;
    Ok(storage_io::build_backend(kind, &config)?)
}

/// The kind and config `make_backend` builds for `backend` at `qd`.
fn backend_config(backend: Backend, qd: usize) -> Result<(BackendKind, IoConfig)> {
    let mut config = IoConfig {
        workers: qd.clamp(1, 32),
        ..IoConfig::default()
    };
    config.apply_overrides(storage_io::env_override)?;
    config.queue_depth = qd.max(1);
    let (kind, config) = match backend {
        Backend::Sync => (BackendKind::Sync, config),
        Backend::ThreadPool => (BackendKind::ThreadPool, config),
        Backend::Uring | Backend::UringHeapbuf => (BackendKind::IoUring, config),
        Backend::UringNofixed => (
            BackendKind::IoUring,
            IoConfig {
                fixed_buffers: false,
                ..config
            },
        ),
        // The page-cache fast path off (`nowait_reads`): every read through the ring / a worker.
        Backend::UringNowaitOff => (
            BackendKind::IoUring,
            IoConfig {
                nowait_reads: false,
                ..config
            },
        ),
        Backend::ThreadPoolNowaitOff => (
            BackendKind::ThreadPool,
            IoConfig {
                nowait_reads: false,
                ..config
            },
        ),
        Backend::UringSqpoll => (
            BackendKind::IoUring,
            IoConfig {
                sqpoll_idle_ms: Some(50),
                ..config
            },
        ),
    };
    Ok((kind, config))
}

/// The factory of the small backends a scheduler cell's `read_blocking` runs on, for
/// `backend` (what `storage_io::open_scheduler` gives a user: a depth-2 ring for io_uring,
/// the inline sync backend for the thread pool).
pub fn caller_factory(backend: Backend, page_size: usize) -> Result<BackendFactory> {
    let (kind, config) = backend_config(backend, 2)?;
    Ok(storage_io::scheduler::caller_backend_factory(
        kind, &config, page_size,
    ))
}

/// User + system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: rusage is plain old data, so all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct we own, which lives across the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A row's `submit_call_us` and `submit_calls_per_op`: `calls` submit-only system calls that
/// took `call_ns` in all, over `ops` ops (0 where there were none).
pub fn submit_calls(calls: u64, call_ns: u64, ops: u64) -> (f64, f64) {
    let us = if calls > 0 {
        call_ns as f64 / calls as f64 / 1e3
    } else {
        0.0
    };
    let per_op = if ops > 0 { calls as f64 / ops as f64 } else { 0.0 };
    (us, per_op)
}

/// [`submit_calls`] of one backend's stats.
pub fn submit_calls_of(stats: &IoStats, ops: u64) -> (f64, f64) {
    submit_calls(stats.submit_calls(), stats.submit_call_ns(), ops)
}

/// The row of a cell that ran `ops` ops of `blocks_per_op` × `cell.block` bytes each.
pub fn cell_row(
    cell: &Cell,
    ops: u64,
    blocks_per_op: usize,
    secs: f64,
    cpu: f64,
    hist: &Histogram<u64>,
) -> Row {
    let iops = ops as f64 / secs;
    Row {
        workload: cell.workload,
        engine: crate::cell::Engine::StorageIo,
        backend: cell.backend.name().into(),
        io: crate::cell::IoMode::of(cell.direct),
        regime: crate::cell::Regime::default(),
        qd: cell.qd,
        block_size: cell.block,
        iops,
        mb_s: iops * (cell.block * blocks_per_op) as f64 / 1e6,
        lat_us: Latency::from_histogram_ns(hist),
        cpu_us_per_op: if ops > 0 { cpu * 1e6 / ops as f64 } else { 0.0 },
        ops,
        ..Row::default()
    }
}

/// A factory of the backend a cell names, sized for `qd`, for the WAL, the scheduler and the
/// async file API. It builds one backend first, so that a backend this machine cannot run fails
/// here, with its reason, rather than inside the component.
pub fn factory(backend: Backend, qd: usize) -> Result<BackendFactory> {
    drop(make_backend(backend, qd)?);
    Ok(Arc::new(move |_| {
        make_backend(backend, qd).map_err(|e| StorageIoError::Unsupported {
            what: e.to_string().into(),
        })
    }))
}

/// A fresh scratch directory for one cell, removed (with everything in it) on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `root/<label>-<pid>`, emptied first if a crashed run left it.
    pub fn new(root: &Path, label: &str) -> Result<ScratchDir> {
        let dir = root.join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64: fast uniform offsets with repetition (fio `--norandommap` does the same).
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed (0 is replaced).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// The next number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_tables_name_every_workload_and_backend_in_order() {
        let cli_workloads: Vec<&str> = crate::cli::WORKLOADS.iter().map(|(n, _)| *n).collect();
        assert_eq!(cli_workloads, WORKLOADS);
        let cli_backends: Vec<&str> = crate::cli::BACKENDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(cli_backends, BACKENDS);
    }
}
