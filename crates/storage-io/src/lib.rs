//! # storage-io
//!
//! Asynchronous disk I/O for database and streaming engines — the top layer (L3). Depend on this
//! crate alone: it re-exports the [`StorageIo`] contract and its types from `storage-io-core`,
//! the portable backends from `storage-io-sync`, and (feature `io-uring`, on by default, Linux)
//! the io_uring backend, and it picks the best backend at run time.
//!
//! ```no_run
//! use storage_io::{IoConfig, OpenOptions, StorageIo};
//!
//! // io_uring where the kernel allows it, else the thread pool; STORAGE_IO_BACKEND overrides.
//! let mut io = storage_io::open_backend(&IoConfig::default())?;
//! println!("using {}", io.name());
//! let fd = io.open_file("pages.db".as_ref(), &OpenOptions::create().with_direct(true))?;
//! io.submit_write(fd, &[0u8; 4096], 0)?;
//! io.submit_datasync(fd)?;
//! let mut done = Vec::new();
//! io.wait_completions(&mut done, 2, None)?;
//! # Ok::<(), storage_io::StorageIoError>(())
//! ```
//!
//! Multi-threaded users (a scheduler with one backend per worker) take a factory instead:
//! [`backend_factory`] decides once and builds the same kind for every worker.
//!
//! Async engines use [`AsyncFileSystem`] and [`AsyncFile`] (`storage-io-fs`, opened on the
//! selected backend by [`open_async_fs`]): owned buffers in and out, many operations in flight
//! per file, futures that any executor can drive, an aligned [`IoBufferPool`], and
//! [`AsyncIoMetrics`] with a Prometheus rendering. The page scheduler ([`scheduler`], opened by
//! [`open_scheduler`]) and the write-ahead log ([`wal`], opened by [`open_wal`]) are re-exported
//! too.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README is this crate's page on crates.io: its example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

use std::fmt;
use std::sync::Arc;

mod caller;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

// The async file API (`storage-io-fs`), by name; `open_async_fs` opens it on the selected backend.
pub use storage_io_fs::{
    AsyncFile, AsyncFileSystem, AsyncFsConfig, AsyncIoMetrics, BufOp, IoBufferPool, LATENCY_BUCKETS_SECONDS,
    Op, OpMetrics, OwnedBuf, POOL_CLASSES, PoolClassMetrics, block_on,
};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use storage_io_fs::{TOKIO_FILE_MAX_BUF, TokioFile};

// The core types a user of a backend needs, by name; implementers take
// `storage_io_core::backend_kit` from the core crate itself.
/// The `bytes` crate, re-exported: [`StorageIo::submit_write_bytes`] and the scheduler's
/// `schedule_write` take its `Bytes`.
pub use storage_io_core::bytes;
/// The `hdrhistogram` crate, re-exported: [`IoStats::latency_ns`] returns its `Histogram`.
pub use storage_io_core::hdrhistogram;
/// Positional I/O, datasync and directory sync per OS (for a [`BlockingBackend`] of your own).
pub use storage_io_core::platform;
pub use storage_io_core::{
    AlignedBuf, BackendFactory, BackendKind, BufferPool, BufferPoolConfig, Capabilities, DEFAULT_ALIGNMENT,
    DirectMode, FileMetadata, InvalidArgument, IoBuf, IoCompletion, IoConfig, IoFd, IoStats, IoStatsSnapshot,
    IoToken, Namespace, OpKind, OpKindSnapshot, OpenOptions, OpenedFd, OpenedFile, Result, StorageIo,
    StorageIoError, SubmitError, WaitWaker, direct_alignment, dsync_trusted_at, dsync_trusted_magic,
    open_file,
};
/// The page scheduler (`storage-io-scheduler`, all of it), and the factory of the small
/// backends its `read_blocking` runs on ([`scheduler::caller_backend_factory`]), which only the
/// façade can build; [`open_scheduler`] opens a scheduler on the auto-selected backend.
pub mod scheduler {
    pub use crate::caller::caller_backend_factory;
    pub use storage_io_scheduler::*;
}
pub use storage_io_sync::{BlockingBackend, BlockingIo, StdFiles, SyncStorageIo, ThreadPoolStorageIo};
#[cfg(all(feature = "io-uring", target_os = "linux"))]
pub use storage_io_uring::UringStorageIo;
#[cfg(feature = "io-uring")]
pub use storage_io_uring::{ProbeReport, Unavailable, probe};
/// The write-ahead log (`storage-io-wal`); [`open_wal`] opens one on the auto-selected backend.
pub use storage_io_wal as wal;

/// Whether io_uring can be used, as auto-selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringStatus {
    /// The probe passed on this kernel.
    Available {
        /// The kernel release it passed on.
        kernel: String,
        /// The optional kernel features the probe found (`nodrop`, `ext_arg`).
        features: Vec<&'static str>,
    },
    /// The probe failed, for this reason.
    Unavailable {
        /// Why (from the probe: ENOSYS, EPERM, missing opcode, …).
        reason: String,
    },
    /// This build has no io_uring backend: feature `io-uring` off, or not Linux (on macOS,
    /// Windows and FreeBSD `storage-io-uring` compiles to nothing and auto picks the thread pool).
    NotCompiled,
}

impl fmt::Display for UringStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UringStatus::Available { kernel, features } => write!(
                f,
                "io_uring available on kernel {kernel} (features: {})",
                if features.is_empty() {
                    "none optional".to_string()
                } else {
                    features.join(", ")
                }
            ),
            UringStatus::Unavailable { reason } => write!(f, "io_uring unavailable: {reason}"),
            UringStatus::NotCompiled if cfg!(target_os = "linux") => {
                f.write_str("io_uring not compiled in (enable the io-uring feature)")
            }
            UringStatus::NotCompiled => write!(
                f,
                "io_uring not compiled in: it is a Linux interface and this build is for {}",
                std::env::consts::OS
            ),
        }
    }
}

/// Probes io_uring on this machine (cheap: one small ring, created and closed).
pub fn uring_status() -> UringStatus {
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    {
        match storage_io_uring::probe() {
            Ok(report) => UringStatus::Available {
                features: [("nodrop", report.nodrop), ("ext_arg", report.ext_arg)]
                    .into_iter()
                    .filter_map(|(name, found)| found.then_some(name))
                    .collect(),
                kernel: report.kernel,
            },
            Err(why) => UringStatus::Unavailable {
                reason: why.to_string(),
            },
        }
    }
    #[cfg(not(all(feature = "io-uring", target_os = "linux")))]
    {
        UringStatus::NotCompiled
    }
}

/// The backend chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// What will be built (never `Auto`).
    pub kind: BackendKind,
    /// One sentence a log reader can act on.
    pub reason: String,
    /// The OS and its kernel release ([`storage_io_core::platform::os_release`]), e.g. `linux 6.18.0`.
    pub kernel: String,
    /// The io_uring probe's verdict: the optional features it found, or why io_uring was refused
    /// or is not compiled in (the [`UringStatus`] display).
    pub probe: String,
}

/// Decides which backend to build, without building it: `env_backend` (the value of
/// `STORAGE_IO_BACKEND`, if set) overrides `config.backend`; `auto` takes io_uring when `uring`
/// says it is available and the thread pool otherwise. Asking for io_uring where it is not
/// available is an error naming the reason — never a silent fallback.
pub fn select_backend(
    config: &IoConfig,
    env_backend: Option<&str>,
    uring: &UringStatus,
) -> Result<Selection> {
    let selected = |kind: BackendKind, reason: String| Selection {
        kind,
        reason,
        kernel: storage_io_core::platform::os_release(),
        probe: uring.to_string(),
    };
    let (kind, source) = match env_backend {
        Some(v) if !v.trim().is_empty() => (v.parse::<BackendKind>()?, "STORAGE_IO_BACKEND"),
        _ => (config.backend, "the config"),
    };
    match kind {
        BackendKind::Auto => Ok(match uring {
            UringStatus::Available { kernel, .. } => selected(
                BackendKind::IoUring,
                format!("auto: io_uring probe passed on kernel {kernel}"),
            ),
            other => selected(
                BackendKind::ThreadPool,
                format!("auto: {other}; using the thread pool"),
            ),
        }),
        BackendKind::IoUring => match uring {
            UringStatus::Available { kernel, .. } => Ok(selected(
                kind,
                format!("io_uring asked for by {source}; probe passed on kernel {kernel}"),
            )),
            other => Err(StorageIoError::Unsupported {
                what: format!("io_uring was asked for by {source} but {other}").into(),
            }),
        },
        BackendKind::ThreadPool | BackendKind::Sync => {
            Ok(selected(kind, format!("{kind} asked for by {source}")))
        }
    }
}

/// Builds one backend of an already selected kind.
pub fn build_backend(kind: BackendKind, config: &IoConfig) -> Result<Box<dyn StorageIo>> {
    Ok(match kind {
        BackendKind::Sync => Box::new(SyncStorageIo::new(config)?),
        BackendKind::ThreadPool => Box::new(ThreadPoolStorageIo::new(config)?),
        BackendKind::IoUring => {
            #[cfg(all(feature = "io-uring", target_os = "linux"))]
            {
                Box::new(UringStorageIo::new(config)?)
            }
            #[cfg(not(all(feature = "io-uring", target_os = "linux")))]
            {
                return Err(StorageIoError::unsupported(
                    "io_uring is not compiled into this build (enable the io-uring feature, on Linux)",
                ));
            }
        }
        BackendKind::Auto => return build_backend(select(config)?.kind, config),
    })
}

fn select(config: &IoConfig) -> Result<Selection> {
    select_with(config, &uring_status())
}

/// [`select`] with an io_uring status already probed.
fn select_with(config: &IoConfig, uring: &UringStatus) -> Result<Selection> {
    config.validate()?;
    let env = env_override("STORAGE_IO_BACKEND");
    let selection = select_backend(config, env.as_deref(), uring)?;
    let required = env_override("STORAGE_IO_REQUIRE_URING").is_some_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    });
    if required && is_fallback(config, env.as_deref(), uring) {
        tracing::error!(reason = %selection.reason, "io_uring is required (STORAGE_IO_REQUIRE_URING) but unavailable");
        return Err(StorageIoError::Unsupported {
            what: format!(
                "io_uring is required (STORAGE_IO_REQUIRE_URING is set) but {uring}; unset STORAGE_IO_REQUIRE_URING to let auto fall back to the thread pool"
            )
            .into(),
        });
    }
    static STARTUP: std::sync::Once = std::sync::Once::new();
    STARTUP.call_once(|| {
        tracing::info!(kernel = %selection.kernel, io_uring = %selection.probe, "storage-io start-up");
    });
    tracing::info!(backend = %selection.kind, reason = %selection.reason, "storage-io backend selected");
    Ok(selection)
}

/// Whether `auto` (asked for by `env_backend` or the config) falls back because io_uring is
/// unavailable: what `STORAGE_IO_REQUIRE_URING` turns into an error. An explicit backend is a
/// choice, not a fallback.
fn is_fallback(config: &IoConfig, env_backend: Option<&str>, uring: &UringStatus) -> bool {
    let asked = match env_backend {
        Some(v) if !v.trim().is_empty() => v.parse::<BackendKind>().ok(),
        _ => Some(config.backend),
    };
    asked == Some(BackendKind::Auto) && !matches!(uring, UringStatus::Available { .. })
}

/// `config` with every `STORAGE_IO_*` override from the environment applied: what every opener
/// here ([`open_backend`], [`backend_factory`], [`open_wal`], [`open_scheduler`],
/// [`open_async_fs`]) builds with, so that an override means the same thing whichever
/// one a program calls. [`build_backend`] builds exactly what it is given.
pub fn with_env(config: &IoConfig) -> Result<IoConfig> {
    let mut config = config.clone();
    config.apply_overrides(env_override)?;
    Ok(config)
}

/// The value of the environment variable `name` (a `STORAGE_IO_*` override), if it is set and
/// valid Unicode: the one function of the library crates that reads the environment. Lower
/// crates take config values; the openers here apply the overrides ([`with_env`]).
pub fn env_override(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Selects (see [`select_backend`]), logs the choice and why, and builds the backend, with the
/// `STORAGE_IO_*` overrides applied ([`with_env`]).
pub fn open_backend(config: &IoConfig) -> Result<Box<dyn StorageIo>> {
    let config = with_env(config)?;
    let selection = select(&config)?;
    build_backend(selection.kind, &config)
}

/// Selects once and returns a factory that builds that kind for every worker, with the choice
/// (the `STORAGE_IO_*` overrides applied, [`with_env`]).
///
/// ```no_run
/// let (factory, selection) = storage_io::backend_factory(&storage_io::IoConfig::default())?;
/// println!("{}", selection.reason);
/// let per_worker: Vec<_> = (0..4).map(|w| factory(w)).collect::<Result<_, _>>()?;
/// # Ok::<(), storage_io::StorageIoError>(())
/// ```
pub fn backend_factory(config: &IoConfig) -> Result<(BackendFactory, Selection)> {
    let config = with_env(config)?;
    let selection = select(&config)?;
    Ok((factory_of(selection.kind, &config), selection))
}

/// A factory building `kind` with `config` for every worker.
fn factory_of(kind: BackendKind, config: &IoConfig) -> BackendFactory {
    let config = config.clone();
    Arc::new(move |_worker| build_backend(kind, &config))
}

/// Opens (and recovers) the write-ahead log in `dir` on the backend `io` selects (io_uring where
/// the probe passes, else the thread pool; `STORAGE_IO_BACKEND` overrides); returns the log and
/// the LSN its next record gets.
///
/// ```no_run
/// use storage_io::wal::WalConfig;
/// let (wal, _next) = storage_io::open_wal("db/wal", WalConfig::default(), &storage_io::IoConfig::default())?;
/// wal.commit(b"begin; insert; commit")?; // durable when it returns
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn open_wal(
    dir: impl AsRef<std::path::Path>,
    config: wal::WalConfig,
    io: &IoConfig,
) -> std::result::Result<(wal::WalManager, wal::Lsn), wal::WalError> {
    let (factory, selection) = backend_factory(io)?;
    tracing::info!(?selection, "wal backend selected");
    wal::WalManager::open(dir, config, factory)
}

/// Opens the page scheduler in `dir`, one backend per worker, of the kind `io` selects (`auto`:
/// io_uring where the probe passes, else the thread pool), built with `io` and sized for the
/// scheduler's `queue_depth`; `STORAGE_IO_*` overrides apply to `io` as for every opener here.
///
/// ```no_run
/// use storage_io::scheduler::{PageCache, SchedulerConfig};
/// let io = storage_io::IoConfig::default();
/// let sched = std::sync::Arc::new(storage_io::open_scheduler("db/pages", SchedulerConfig::default(), &io)?);
/// let page = sched.schedule_allocate().recv()?;
/// sched.schedule_write_durable(page, vec![0u8; 4096].into()).recv()?;
/// let cache = PageCache::new(sched, 1024)?; // a buffer pool of 1024 frames on top
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn open_scheduler(
    dir: impl AsRef<std::path::Path>,
    config: scheduler::SchedulerConfig,
    io: &IoConfig,
) -> std::result::Result<scheduler::DiskScheduler, scheduler::SchedulerError> {
    let io = IoConfig {
        queue_depth: config.queue_depth,
        direct_io: config.direct_io,
        ..io.clone()
    };
    let (factory, selection) = backend_factory(&io).map_err(|source| scheduler::SchedulerError::Backend {
        what: "selecting a backend",
        source,
    })?;
    tracing::info!(?selection, "scheduler backend selected");
    let page_size = config.page_size;
    let callers = scheduler::caller_backend_factory(
        selection.kind,
        &with_env(&io).map_err(|source| scheduler::SchedulerError::Backend {
            what: "selecting a backend",
            source,
        })?,
        page_size,
    );
    scheduler::DiskScheduler::open_with_caller_backends(dir, config, factory, callers)
}

/// Starts the async file API ([`AsyncFileSystem`]) on the backend `config.io` selects (io_uring
/// where the probe passes, else the thread pool; `STORAGE_IO_BACKEND` and the other
/// `STORAGE_IO_*` overrides apply, [`with_env`]), logging the kernel version, the
/// backend chosen and why. On io_uring inside a tokio runtime (features `io-uring` and `tokio`,
/// Linux, `config.caller_rings`), ops submit on the callers' threads.
///
/// ```no_run
/// use storage_io::AsyncFsConfig;
/// # async fn demo() -> storage_io::Result<()> {
/// let fs = storage_io::open_async_fs(&AsyncFsConfig::default())?;
/// let log = fs.open_append("segment-0.log").await?;
/// let (at, _record) = log.append(b"hello".to_vec()).await;
/// log.sync_data().await?; // durable from here on
/// # let _ = at; Ok(()) }
/// ```
pub fn open_async_fs(config: &AsyncFsConfig) -> Result<AsyncFileSystem> {
    let mut config = config.clone();
    config.apply_overrides(env_override)?;
    // One probe serves both the log line and the selection.
    let uring = uring_status();
    match &uring {
        UringStatus::Available { kernel, .. } => tracing::info!(%kernel, "io_uring available"),
        other => tracing::info!(status = %other, "io_uring not in use"),
    }
    let selection = select_with(&config.io, &uring)?;
    tracing::info!(backend = %selection.kind, reason = %selection.reason, "async file system backend selected");
    let factory = factory_of(selection.kind, &config.io);
    AsyncFileSystem::with_backend_kind(&config, factory, selection.kind)
}

/// Reads an [`IoConfig`] from a TOML (`.toml`) or JSON (`.json`) file, applies the
/// `STORAGE_IO_*` environment overrides on top, and validates it. Missing fields take their
/// defaults; unknown fields are refused with their name.
///
/// ```no_run
/// // storage-io.toml:  backend = "io_uring"
/// //                   queue_depth = 64
/// let config = storage_io::load_config("storage-io.toml")?;
/// let backend = storage_io::open_backend(&config)?;
/// # Ok::<(), storage_io::StorageIoError>(())
/// ```
pub fn load_config(path: impl AsRef<std::path::Path>) -> Result<IoConfig> {
    let mut config: IoConfig = read_config_file(path.as_ref())?;
    config.apply_overrides(env_override)?;
    Ok(config)
}

/// Reads an [`AsyncFsConfig`] (the async file API's settings, the backend's under `io`) like
/// [`load_config`]: TOML or JSON, the `STORAGE_IO_*` overrides on top, validated.
///
/// ```no_run
/// // storage-io.toml:  io_workers = 2
/// //                   [io]
/// //                   backend = "io_uring"
/// let config = storage_io::load_async_fs_config("storage-io.toml")?;
/// let fs = storage_io::open_async_fs(&config)?;
/// # Ok::<(), storage_io::StorageIoError>(())
/// ```
pub fn load_async_fs_config(path: impl AsRef<std::path::Path>) -> Result<AsyncFsConfig> {
    let mut config: AsyncFsConfig = read_config_file(path.as_ref())?;
    config.apply_overrides(env_override)?;
    Ok(config)
}

/// A config of any kind from a `.toml` or `.json` file; errors name the file.
fn read_config_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StorageIoError::from_os_at("reading the config file", path, &e))?;
    let bad = |what: String| {
        StorageIoError::InvalidArgument(InvalidArgument::Message(format!("{}: {what}", path.display())))
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str(&text).map_err(|e| bad(e.to_string())),
        Some("json") => serde_json::from_str(&text).map_err(|e| bad(e.to_string())),
        _ => Err(bad("a config file must end in .toml or .json".into())),
    }
}
