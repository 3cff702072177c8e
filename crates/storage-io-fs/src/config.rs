//! [`AsyncFsConfig`]: the async file API's own settings, beside the [`IoConfig`] of the backends
//! its I/O workers build.

use serde::{Deserialize, Serialize};
use storage_io_core::{
    IoConfig, Result, StorageIoError, parse_override as parse, parse_override_bool as parse_bool,
};

/// Configuration of an [`AsyncFileSystem`](crate::AsyncFileSystem) (serde; unknown fields are
/// refused, missing ones take their defaults).
///
/// | field | default | environment override |
/// |---|---|---|
/// | `io` | [`IoConfig::default`] | the `STORAGE_IO_*` of [`IoConfig`] |
/// | `io_workers` | 0 = max(1, available cores / 2) | `STORAGE_IO_IO_WORKERS` |
/// | `buffer_pool_size` | 48 MiB | `STORAGE_IO_BUFFER_POOL_SIZE` |
/// | `preallocate_appends` | false | `STORAGE_IO_PREALLOCATE_APPENDS` |
/// | `preallocate_size` | 64 MiB | `STORAGE_IO_PREALLOCATE_SIZE` |
///
/// ```
/// use storage_io_fs::{AsyncFsConfig, BackendKind};
/// let config: AsyncFsConfig = serde_json::from_str(
///     r#"{ "io_workers": 2, "preallocate_appends": true, "io": { "backend": "thread_pool" } }"#,
/// ).unwrap();
/// assert_eq!(config.io.backend, BackendKind::ThreadPool);
/// assert_eq!(config.effective_io_workers(), 2);
/// config.validate().unwrap();
/// // A backend config alone is an async config with the API's defaults.
/// let plain: AsyncFsConfig = storage_io_fs::IoConfig::default().into();
/// assert_eq!(plain.buffer_pool_size, 48 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AsyncFsConfig {
    /// The backend each I/O worker builds (`[io]` in a TOML file).
    pub io: IoConfig,
    /// I/O worker threads, each owning one backend; 0 picks max(1, available cores / 2).
    pub io_workers: usize,
    /// Bytes the buffer pool ([`IoBufferPool`](crate::IoBufferPool)) may hold, split evenly
    /// over its three size classes (at least one buffer per class, so at least 3 MiB).
    pub buffer_pool_size: usize,
    /// Preallocate files opened for appending (log segments), so that appends do not allocate
    /// blocks one at a time.
    pub preallocate_appends: bool,
    /// How many bytes to preallocate when `preallocate_appends` is on. The file's size does not
    /// change (the space is reserved past its end), so appends still land at its end.
    pub preallocate_size: u64,
    /// Inside a tokio runtime on the io_uring backend, submit on the caller's thread: each
    /// runtime thread gets its own ring, driven by tokio's reactor, and an op never hops to an
    /// I/O worker (opens, closes, `size` and `allocate` still run on the workers). Off, or
    /// outside a tokio runtime, or on another backend, every op goes through the workers.
    /// Needs the `tokio` feature (on by default).
    pub caller_rings: bool,
}

impl Default for AsyncFsConfig {
    fn default() -> Self {
        AsyncFsConfig {
            io: IoConfig::default(),
            io_workers: 0,
            buffer_pool_size: 48 << 20,
            preallocate_appends: false,
            preallocate_size: 64 << 20,
            caller_rings: true,
        }
    }
}

impl From<IoConfig> for AsyncFsConfig {
    fn from(io: IoConfig) -> Self {
        AsyncFsConfig {
            io,
            ..AsyncFsConfig::default()
        }
    }
}

impl AsyncFsConfig {
    /// Applies `STORAGE_IO_*` overrides ([`IoConfig`]'s to `io`, and this table's own) from any
    /// lookup — the façade's `open_async_fs` passes its environment reader; unset names leave their field alone, and a value that
    /// does not parse is an error naming the variable. Validates the result.
    pub fn apply_overrides(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<()> {
        self.io.apply_overrides(&lookup)?;
        if let Some(v) = lookup("STORAGE_IO_IO_WORKERS") {
            self.io_workers = parse("STORAGE_IO_IO_WORKERS", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_BUFFER_POOL_SIZE") {
            self.buffer_pool_size = parse("STORAGE_IO_BUFFER_POOL_SIZE", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_PREALLOCATE_APPENDS") {
            self.preallocate_appends = parse_bool("STORAGE_IO_PREALLOCATE_APPENDS", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_PREALLOCATE_SIZE") {
            self.preallocate_size = parse("STORAGE_IO_PREALLOCATE_SIZE", &v)?;
        }
        if let Some(v) = lookup("STORAGE_IO_CALLER_RINGS") {
            self.caller_rings = parse_bool("STORAGE_IO_CALLER_RINGS", &v)?;
        }
        self.validate()
    }

    /// Checks every field (and `io`'s); the error says which one is wrong and what would be
    /// right.
    pub fn validate(&self) -> Result<()> {
        self.io.validate()?;
        let bad = |msg: &'static str| Err(StorageIoError::invalid(msg));
        if self.io_workers > 1024 {
            return bad("io_workers must be at most 1024 (0 picks a default)");
        }
        if self.buffer_pool_size < 3 << 20 {
            return bad("buffer_pool_size must be at least 3 MiB (one 1 MiB buffer per size class)");
        }
        if self.preallocate_appends && self.preallocate_size == 0 {
            return bad("preallocate_size must be non-zero when preallocate_appends is on");
        }
        Ok(())
    }

    /// The I/O worker count: `io_workers`, or max(1, available cores / 2) when it is 0.
    pub fn effective_io_workers(&self) -> usize {
        if self.io_workers > 0 {
            self.io_workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn overrides_reach_both_tables_and_bad_values_are_refused() {
        let env = [
            ("STORAGE_IO_IO_WORKERS", "3"),
            ("STORAGE_IO_BUFFER_POOL_SIZE", "8388608"),
            ("STORAGE_IO_PREALLOCATE_APPENDS", "yes"),
            ("STORAGE_IO_PREALLOCATE_SIZE", "1048576"),
            ("STORAGE_IO_QUEUE_DEPTH", "16"),
        ];
        let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let mut cfg = AsyncFsConfig::default();
        cfg.apply_overrides(lookup).unwrap();
        assert_eq!(cfg.effective_io_workers(), 3);
        assert_eq!(cfg.buffer_pool_size, 8 << 20);
        assert!(cfg.preallocate_appends);
        assert_eq!(cfg.preallocate_size, 1 << 20);
        assert_eq!(cfg.io.queue_depth, 16, "the backend's overrides apply to io");

        let mut cfg = AsyncFsConfig::default();
        let err = cfg
            .apply_overrides(|k| (k == "STORAGE_IO_IO_WORKERS").then(|| "many".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("STORAGE_IO_IO_WORKERS"), "{err}");
        for bad in [
            AsyncFsConfig {
                buffer_pool_size: 4096,
                ..AsyncFsConfig::default()
            },
            AsyncFsConfig {
                preallocate_appends: true,
                preallocate_size: 0,
                ..AsyncFsConfig::default()
            },
            AsyncFsConfig {
                io_workers: 5000,
                ..AsyncFsConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
