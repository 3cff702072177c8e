//! [`IoConfig`]: one serde struct for every backend, with documented defaults and
//! `STORAGE_IO_*` environment overrides.

use std::fmt;
use std::str::FromStr;

use crate::error::{InvalidArgument, Result, StorageIoError};

/// Which backend to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// io_uring where the kernel allows it, otherwise the thread pool.
    #[default]
    Auto,
    /// io_uring; an error (naming the reason) where it is unavailable.
    IoUring,
    /// Blocking `pread`/`pwrite` on worker threads.
    ThreadPool,
    /// Inline blocking I/O in `submit_*` (deterministic; no threads).
    Sync,
}

impl BackendKind {
    /// The name used in config files, `STORAGE_IO_BACKEND` and reports.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::IoUring => "io_uring",
            BackendKind::ThreadPool => "thread_pool",
            BackendKind::Sync => "sync",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = StorageIoError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(BackendKind::Auto),
            "io_uring" | "uring" => Ok(BackendKind::IoUring),
            "thread_pool" | "threadpool" | "pool" => Ok(BackendKind::ThreadPool),
            "sync" => Ok(BackendKind::Sync),
            other => Err(StorageIoError::InvalidArgument(InvalidArgument::Message(
                format!("unknown backend {other:?}; expected one of auto, io_uring, thread_pool, sync"),
            ))),
        }
    }
}

/// The largest `max_files` [`IoConfig::validate`] accepts: io_uring's limit on registered files
/// (`IORING_MAX_FIXED_FILES`). Every backend allocates its fd table of this many slots up front.
pub const MAX_FILES_LIMIT: usize = 1 << 20;

/// The most memory [`IoConfig::validate`] lets io_uring register up front with `fixed_buffers`
/// (`min(queue_depth, 65536)` buffers of `buffer_size` bytes, each rounded up to 4 KiB): 1 GiB.
pub const MAX_REGISTERED_BYTES: usize = 1 << 30;

/// Configuration shared by every backend. Missing fields take their defaults when deserialised.
///
/// | field | default | environment override |
/// |---|---|---|
/// | `backend` | `auto` | `STORAGE_IO_BACKEND` |
/// | `queue_depth` | 128 | `STORAGE_IO_QUEUE_DEPTH` |
/// | `workers` | 0 = max(2, available cores) | `STORAGE_IO_WORKERS` |
/// | `fixed_buffers` | true | `STORAGE_IO_FIXED_BUFFERS` |
/// | `buffer_size` | 65536 | `STORAGE_IO_BUFFER_SIZE` |
/// | `sqpoll_idle_ms` | none (off) | `STORAGE_IO_SQPOLL_IDLE_MS` (`off` or a number) |
/// | `direct_io` | false | `STORAGE_IO_DIRECT_IO` |
/// | `max_io_bytes` | 64 MiB | `STORAGE_IO_MAX_IO_BYTES` |
/// | `max_files` | 1024 | `STORAGE_IO_MAX_FILES` |
/// | `submit_batch` | 1 | `STORAGE_IO_SUBMIT_BATCH` |
/// | `sq_depth` | 0 = `queue_depth` | `STORAGE_IO_SQ_DEPTH` |
/// | `nowait_reads` | true | `STORAGE_IO_NOWAIT_READS` |
///
/// Components above the backends keep their own settings in configs of their own (the WAL's
/// `WalConfig`, the scheduler's `SchedulerConfig`, the async file API's `AsyncFsConfig`).
///
/// ```
/// use storage_io_core::{BackendKind, IoConfig};
/// let cfg: IoConfig = serde_json::from_str(r#"{"backend": "thread_pool", "queue_depth": 32}"#).unwrap();
/// assert_eq!(cfg.backend, BackendKind::ThreadPool);
/// assert_eq!(cfg.workers, 0); // default
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// Which backend to build.
    pub backend: BackendKind,
    /// Operations one backend instance keeps in flight before `submit_*` answers `QueueFull`
    /// (the io_uring SQ size unless `sq_depth` sets it; the CQ is twice the larger of the two,
    /// plus room for the backend's wake read and wait timers).
    pub queue_depth: usize,
    /// Worker threads of the thread-pool backend; 0 picks max(2, available cores).
    pub workers: usize,
    /// Register buffers with the kernel (io_uring `ReadFixed`/`WriteFixed`) where possible.
    pub fixed_buffers: bool,
    /// Size in bytes of each backend-owned buffer that copied writes are staged in (and of each
    /// registered buffer). With `fixed_buffers`, `min(queue_depth, 65536) × buffer_size` must
    /// stay within [`MAX_REGISTERED_BYTES`] (1 GiB), since io_uring registers it all up front.
    pub buffer_size: usize,
    /// Turn on io_uring SQPOLL with this idle time in milliseconds; `None` leaves it off.
    pub sqpoll_idle_ms: Option<u32>,
    /// Open files with direct I/O (bypassing the page cache) where the file system allows it.
    pub direct_io: bool,
    /// Largest single transfer accepted; larger requests are `InvalidArgument`.
    pub max_io_bytes: usize,
    /// Files one backend instance can have registered at once (1 to [`MAX_FILES_LIMIT`]; the fd
    /// table is allocated up front).
    pub max_files: usize,
    /// Queued backends (io_uring) hand queued requests to the kernel from inside `submit_*`
    /// once this many are waiting, without waiting for `flush`/`poll`/`wait`. Small values keep
    /// the device fed steadily: on a virtio disk, handing 32 reads over at once and then waiting
    /// settles into bursts that cost a fifth of the IOPS at qd 32, and 1 (one `io_uring_enter`
    /// per request, as fio does) measured best at every depth. A lone request while nothing else
    /// is in the kernel is left for the next wait, which submits and waits in one system call.
    /// Larger values save system calls where the device copes with bursts. 0 means only `flush`,
    /// `poll_completions` and `wait_completions` submit.
    pub submit_batch: usize,
    /// Entries of the io_uring submission queue; 0 uses `queue_depth`. The completion queue is
    /// twice the larger of the two, and `queue_depth` still caps the ops in flight.
    pub sq_depth: usize,
    /// Queued backends (io_uring, the thread pool) first try a buffered read on the caller's
    /// thread with `preadv2(RWF_NOWAIT)`: what the page cache holds completes at submit, as on the
    /// inline backend, with no ring round trip or worker wake-up; the rest goes the usual way. A
    /// per-file estimate stops the attempts while they mostly miss. Never tried on `O_DIRECT`
    /// files.
    pub nowait_reads: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            backend: BackendKind::Auto,
            queue_depth: 128,
            workers: 0,
            fixed_buffers: true,
            buffer_size: 64 << 10,
            sqpoll_idle_ms: None,
            direct_io: false,
            max_io_bytes: 64 << 20,
            max_files: 1024,
            submit_batch: 1,
            sq_depth: 0,
            nowait_reads: true,
        }
    }
}

impl IoConfig {
    /// Applies the `STORAGE_IO_*` overrides `lookup` finds. Core never reads the environment
    /// itself: the façade passes it (`storage_io::env_override`, the one function that reads
    /// it); tests and callers with their own settings source pass theirs. Unset names leave
    /// the field alone; a value that does not parse is an error naming the variable.
    pub fn apply_overrides(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = lookup("STORAGE_IO_BACKEND") {
            self.backend = v.parse()?;
        }
        if let Some(v) = lookup("STORAGE_IO_QUEUE_DEPTH") {
            self.queue_depth = parse_override("STORAGE_IO_QUEUE_DEPTH", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_WORKERS") {
            self.workers = parse_override("STORAGE_IO_WORKERS", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_FIXED_BUFFERS") {
            self.fixed_buffers = parse_override_bool("STORAGE_IO_FIXED_BUFFERS", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_NOWAIT_READS") {
            self.nowait_reads = parse_override_bool("STORAGE_IO_NOWAIT_READS", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_BUFFER_SIZE") {
            self.buffer_size = parse_override("STORAGE_IO_BUFFER_SIZE", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_SQPOLL_IDLE_MS") {
            self.sqpoll_idle_ms = match v.trim().to_ascii_lowercase().as_str() {
                "" | "off" | "none" => None,
                _ => Some(parse_override("STORAGE_IO_SQPOLL_IDLE_MS", &v)?),
            };
        }
        if let Some(v) = lookup("STORAGE_IO_DIRECT_IO") {
            self.direct_io = parse_override_bool("STORAGE_IO_DIRECT_IO", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_MAX_IO_BYTES") {
            self.max_io_bytes = parse_override("STORAGE_IO_MAX_IO_BYTES", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_MAX_FILES") {
            self.max_files = parse_override("STORAGE_IO_MAX_FILES", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_SUBMIT_BATCH") {
            self.submit_batch = parse_override("STORAGE_IO_SUBMIT_BATCH", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_SQ_DEPTH") {
            self.sq_depth = parse_override("STORAGE_IO_SQ_DEPTH", &v)?;
        }
        self.validate()
    }

    /// Checks every limit; the error says which field is wrong and what would be right.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &'static str| Err(StorageIoError::invalid(msg));
        if self.queue_depth == 0 || self.queue_depth > 32768 {
            return bad("queue_depth must be between 1 and 32768");
        }
        if self.workers > 1024 {
            return bad("workers must be at most 1024 (0 picks a default)");
        }
        if self.buffer_size == 0 || self.buffer_size > self.max_io_bytes {
            return bad("buffer_size must be non-zero and at most max_io_bytes");
        }
        // Linux moves at most 0x7ffff000 bytes in one read/write call.
        if self.max_io_bytes == 0 || self.max_io_bytes > 0x7fff_f000 {
            return bad("max_io_bytes must be between 1 and 2147479552 (0x7ffff000)");
        }
        // Every backend allocates its fd table (and io_uring its fixed-file table) up front.
        if self.max_files == 0 || self.max_files > MAX_FILES_LIMIT {
            return bad("max_files must be between 1 and 1048576 (io_uring's fixed-file limit)");
        }
        // io_uring registers (allocates and pins) min(queue_depth, 65536) buffers of
        // buffer_size bytes up front.
        let registered = self
            .queue_depth
            .min(usize::from(u16::MAX) + 1)
            .saturating_mul(self.buffer_size.next_multiple_of(4096));
        if self.fixed_buffers && registered > MAX_REGISTERED_BYTES {
            return bad(
                "queue_depth × buffer_size exceeds 1 GiB of registered buffers: lower buffer_size \
                 (the staging size of copied writes; larger writes are staged on the heap) or \
                 queue_depth, or turn fixed_buffers off",
            );
        }
        if self.sq_depth > 32768 {
            return bad("sq_depth must be at most 32768 (0 uses queue_depth)");
        }
        Ok(())
    }

    /// The io_uring submission-queue size to use: `sq_depth`, or `queue_depth` when it is 0.
    pub fn effective_sq_depth(&self) -> usize {
        if self.sq_depth > 0 {
            self.sq_depth
        } else {
            self.queue_depth
        }
    }

    /// The worker count to use: `workers`, or max(2, available cores) when it is 0.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
        }
    }
}

/// Parses the value of environment override `name` (for the `apply_overrides` of every
/// layer's config); an error names the variable and the value.
pub fn parse_override<T: FromStr>(name: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| {
        StorageIoError::InvalidArgument(InvalidArgument::Message(format!(
            "{name}={value:?} does not parse"
        )))
    })
}
/// [`parse_override`] for a switch: 1/0, true/false, yes/no, on/off.
pub fn parse_override_bool(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(StorageIoError::InvalidArgument(InvalidArgument::Message(
            format!("{name}={value:?} is not a boolean (use 1/0, true/false, on/off)"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_are_valid_and_round_trip_through_json() {
        let cfg = IoConfig::default();
        cfg.validate().unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        let back: IoConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let empty: IoConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, cfg);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<IoConfig>(r#"{"queue_dept": 4}"#).unwrap_err();
        assert!(err.to_string().contains("queue_dept"), "{err}");
    }

    #[test]
    fn env_overrides_apply_and_bad_values_name_the_variable() {
        let env: HashMap<&str, &str> = [
            ("STORAGE_IO_BACKEND", "thread-pool"),
            ("STORAGE_IO_QUEUE_DEPTH", "32"),
            ("STORAGE_IO_DIRECT_IO", "on"),
            ("STORAGE_IO_SQPOLL_IDLE_MS", "50"),
        ]
        .into_iter()
        .collect();
        let mut cfg = IoConfig::default();
        cfg.apply_overrides(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(cfg.backend, BackendKind::ThreadPool);
        assert_eq!(cfg.queue_depth, 32);
        assert!(cfg.direct_io);
        assert_eq!(cfg.sqpoll_idle_ms, Some(50));

        let mut cfg = IoConfig::default();
        let err = cfg
            .apply_overrides(|k| (k == "STORAGE_IO_QUEUE_DEPTH").then(|| "lots".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("STORAGE_IO_QUEUE_DEPTH"), "{err}");
        assert_eq!(cfg.queue_depth, 128, "a failed override leaves the field alone");

        let env: HashMap<&str, &str> = [("STORAGE_IO_SQ_DEPTH", "64"), ("STORAGE_IO_DIRECT_IO", "yes")]
            .into_iter()
            .collect();
        let mut cfg = IoConfig::default();
        cfg.apply_overrides(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(cfg.effective_sq_depth(), 64);
        assert!(cfg.direct_io);

        let err = "nvme".parse::<BackendKind>().unwrap_err();
        assert!(err.to_string().contains("io_uring, thread_pool, sync"), "{err}");
    }

    #[test]
    fn configs_that_would_abort_the_process_are_refused() {
        // 1024 registered buffers of 64 MiB = 64 GiB of pinned memory, and a fd table of
        // usize::MAX slots: validate() used to accept both, and building the backend aborted.
        let huge_registered = IoConfig {
            queue_depth: 1024,
            buffer_size: 64 << 20,
            max_io_bytes: 64 << 20,
            ..IoConfig::default()
        };
        let err = huge_registered.validate().unwrap_err();
        assert!(err.to_string().contains("buffer_size"), "{err}");
        // Without registered buffers nothing is allocated up front: the same sizes are fine.
        IoConfig {
            fixed_buffers: false,
            ..huge_registered
        }
        .validate()
        .unwrap();
        let huge_table = IoConfig {
            max_files: usize::MAX,
            ..IoConfig::default()
        };
        let err = huge_table.validate().unwrap_err();
        assert!(err.to_string().contains("max_files"), "{err}");
        IoConfig {
            max_files: MAX_FILES_LIMIT,
            ..IoConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn out_of_range_limits_are_refused() {
        for cfg in [
            IoConfig {
                queue_depth: 0,
                ..IoConfig::default()
            },
            IoConfig {
                buffer_size: 0,
                ..IoConfig::default()
            },
            IoConfig {
                max_io_bytes: usize::MAX,
                ..IoConfig::default()
            },
        ] {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
