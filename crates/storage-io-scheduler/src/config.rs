//! [`SchedulerConfig`]: how many workers, how deep, how big a page.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::SchedulerError;

/// Smallest page size accepted: one 512-byte sector, the unit direct I/O aligns to.
pub const MIN_PAGE_SIZE: usize = 512;
/// Largest page size accepted (1 MiB, the largest buffer class of the core pool).
pub const MAX_PAGE_SIZE: usize = 1 << 20;

/// Configuration of a [`DiskScheduler`](crate::DiskScheduler) (serde; unknown fields are
/// refused): the scheduler's own knobs only. Which backend its workers run is the factory's
/// business (`storage_io::open_scheduler` takes an `IoConfig` for that).
///
/// ```
/// use storage_io_scheduler::SchedulerConfig;
/// let config: SchedulerConfig =
///     serde_json::from_str(r#"{ "workers": 2, "page_size": 8192, "direct_io": true }"#).unwrap();
/// assert_eq!(config.queue_depth, 32); // the default
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Worker threads, each with its own backend. Default `max(1, available_parallelism / 2)`:
    /// the other half of the cores is left to the callers and the dispatcher.
    pub workers: usize,
    /// Most ops one worker keeps in flight on its backend (capped by the backend's own limit).
    /// Default 32.
    pub queue_depth: usize,
    /// Page size in bytes: a multiple of 512, from 512 to 1 MiB. Default 4096. An existing
    /// page file must be opened with the size it was created with.
    pub page_size: usize,
    /// Open the page file with O_DIRECT (falls back to buffered I/O, with a warning, where the
    /// file system refuses it). Default false.
    pub direct_io: bool,
    /// Most adjacent pages merged into one read (batch reads and read streams). Pages are also
    /// routed to workers in extents of this many pages, so a run that could merge is always on
    /// one worker. Default 16 (64 KiB at 4 KiB pages).
    pub max_combine_pages: usize,
    /// How long a worker with ops in flight waits for a completion before it looks at its
    /// request channel again, in microseconds. Default 50.
    pub poll_interval_us: u64,
    /// Who owns page allocation: the scheduler (`managed`, the default) or the engine
    /// (`external`). See [`AllocationMode`].
    pub allocation: AllocationMode,
    /// The page file: a path relative to the scheduler's directory, or an absolute one.
    /// Default `pages.db`. The allocation images (`managed`) stay in the directory, as
    /// `pages.alloc.0` and `pages.alloc.1`: a page file with either name (in any directory,
    /// in any case) is refused.
    pub page_file: PathBuf,
    /// Page ids from this one up are refused (`OutOfRange`): reads, writes and allocations.
    /// Default none: any id whose bytes end below 2^64.
    pub max_pages: Option<u64>,
    /// `managed` only: open a page file that has data but no allocation images by allocating
    /// every page up to its length (rounded up), instead of refusing it. Never silent: without
    /// this such a file is an error. Default false.
    pub adopt_existing: bool,
    /// `managed` only (ignored with `external`, which has no allocator): when an allocate or
    /// deallocate is answered. Default `next_sync`: made
    /// durable by the next sync or durable write, which is when the page's own bytes become
    /// durable too. See [`AllocDurability`] for the figures behind the choice.
    pub alloc_durability: AllocDurability,
    /// `managed` only: a page id handed out again after a deallocation reads as zeros, not as
    /// what it held before (a zero page is written, durably, before the allocation is answered,
    /// and before any allocation image holding it is written). Fresh ids past the end always read as zeros,
    /// whatever this says, after a crash too: an id past the allocator's durable end that the
    /// page file holds bytes for (written before a crash that the allocation image did not
    /// survive, under `next_sync` or in a redo never ended) gets a zero page written the same
    /// way before it is handed out. Default false.
    pub zero_on_reuse: bool,
    /// Most backends kept for [`DiskScheduler::read_blocking`](crate::DiskScheduler::read_blocking),
    /// which reads on the caller's own thread: one per caller reading at the same moment,
    /// made when first needed (none for an engine that never calls it) and kept for the next
    /// caller. Past this many at once, `read_blocking` goes through the workers. 0 sends every
    /// `read_blocking` through the workers. Default 64. Only a scheduler opened with a factory
    /// of caller backends has any (`open_with_caller_backends`, `storage_io::open_scheduler`).
    pub caller_backends: usize,
}

/// The old name of [`SchedulerConfig`].
#[deprecated(since = "0.1.0", note = "renamed SchedulerConfig")]
pub type IOSchedulerConfig = SchedulerConfig;

/// Who owns page allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationMode {
    /// The scheduler's crash-safe allocator: page ids come from `schedule_allocate`, a page
    /// never allocated (or freed) reads and writes as `NotAllocated`, and every change is kept
    /// in two alternating allocation images.
    #[default]
    Managed,
    /// The engine owns allocation (its own free list, in its own pages): every page id below
    /// `max_pages` can be read and written, a page past the end of the file reads as zeros,
    /// no allocation image is written, and `schedule_allocate` / `schedule_deallocate` are
    /// refused with `ExternalAllocation`. An existing page file is adopted as it is.
    External,
}

/// When a `managed` allocation change (allocate, allocate an extent, allocate at, deallocate)
/// is answered.
///
/// **The default is `next_sync`**, what an engine expects: a new page is worth keeping only
/// once its contents are durable, and the sync that makes them durable (`schedule_sync`,
/// a durable write, [`PageCache::flush_all`](crate::PageCache::flush_all) or its close) makes
/// the allocation durable with them; an engine with a WAL logs its allocations and redoes them
/// ([`DiskScheduler::schedule_allocate_at`](crate::DiskScheduler::schedule_allocate_at)).
/// `immediate` pays an allocation image and an fdatasync per allocation that does not share
/// one: 10,000 `PageCache::new_page()` calls in a loop on one thread (ext4 on a virtio disk,
/// the inline sync backend, 64 frames; `cargo run --release -p storage-io-scheduler --example
/// alloc_durability`) took 0.21–0.24 s with `next_sync` (42–47k pages/s) and 35.9–40.7 s with
/// `immediate` (250–280 pages/s), 150–190× longer, for no page the caller could read back
/// after a crash that it could not with `next_sync` after its first sync. Choose `immediate`
/// when nothing else makes allocations durable and an id must never come back free after a
/// crash before the next sync (a page id handed to another system at once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocDurability {
    /// Once the change is durable: an allocation image and an fdatasync (changes that arrive
    /// while one image is being made durable share the next).
    Immediate,
    /// The default. At once. The change becomes durable at the next durability point the caller asks for:
    /// `schedule_sync`, or a durable write, which are answered only once every earlier change
    /// is durable too. A crash before that point may undo it: an allocated id may be free
    /// again, a freed one allocated (leaked, never handed out twice while the scheduler runs).
    #[default]
    NextSync,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        SchedulerConfig {
            workers: (cores / 2).max(1),
            queue_depth: 32,
            page_size: 4096,
            direct_io: false,
            max_combine_pages: 16,
            poll_interval_us: 50,
            allocation: AllocationMode::Managed,
            page_file: PathBuf::from(crate::PAGE_FILE),
            max_pages: None,
            adopt_existing: false,
            alloc_durability: AllocDurability::NextSync,
            zero_on_reuse: false,
            caller_backends: 64,
        }
    }
}

impl SchedulerConfig {
    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let bad = |msg: String| Err(SchedulerError::InvalidConfig(msg));
        if self.workers == 0 || self.workers > 256 {
            return bad(format!(
                "workers = {} is out of range: use 1 to 256",
                self.workers
            ));
        }
        if self.queue_depth == 0 || self.queue_depth > 4096 {
            return bad(format!(
                "queue_depth = {} is out of range: use 1 to 4096",
                self.queue_depth
            ));
        }
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&self.page_size)
            || !self.page_size.is_multiple_of(MIN_PAGE_SIZE)
        {
            return bad(format!(
                "page_size = {} is not allowed: use a multiple of {MIN_PAGE_SIZE} from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        if self.max_combine_pages == 0
            || self.max_combine_pages.saturating_mul(self.page_size) > MAX_PAGE_SIZE
        {
            return bad(format!(
                "max_combine_pages = {} is out of range: use 1 to {} for {}-byte pages (merged reads stay within 1 MiB)",
                self.max_combine_pages,
                MAX_PAGE_SIZE / self.page_size.max(1),
                self.page_size
            ));
        }
        if self.caller_backends > 4096 {
            return bad(format!(
                "caller_backends = {} is out of range: use 0 to 4096",
                self.caller_backends
            ));
        }
        if self.poll_interval_us == 0 || self.poll_interval_us > 1_000_000 {
            return bad(format!(
                "poll_interval_us = {} is out of range: use 1 to 1000000",
                self.poll_interval_us
            ));
        }
        if self.page_file.as_os_str().is_empty() || self.page_file.file_name().is_none() {
            return bad(format!(
                "page_file = {:?} does not name a file: use a file name such as \"pages.db\"",
                self.page_file
            ));
        }
        // The scheduler's own files live in its directory; a page file of the same name (in
        // any directory: a relative name may be spelt many ways, and a file system may ignore
        // case) would have its first pages overwritten by allocation images.
        if let Some(name) = self.page_file.file_name().and_then(|n| n.to_str())
            && let Some(own) = crate::alloc::SLOT_NAMES
                .iter()
                .find(|own| own.eq_ignore_ascii_case(name))
        {
            return bad(format!(
                "page_file = {:?} is named like the scheduler's own file {own} (an allocation image slot): choose another name, such as \"pages.db\"",
                self.page_file
            ));
        }
        if let Some(max) = self.max_pages
            && (max == 0 || max > self.id_limit())
        {
            return bad(format!(
                "max_pages = {max} is out of range: use 1 to {} for {}-byte pages",
                self.id_limit(),
                self.page_size
            ));
        }
        if self.allocation == AllocationMode::External {
            let managed_only = [
                // (`alloc_durability` is not refused: with no allocator it has nothing to
                // say, and a config shared by managed and external schedulers may set it.)
                ("adopt_existing", self.adopt_existing),
                ("zero_on_reuse", self.zero_on_reuse),
            ];
            if let Some((field, _)) = managed_only.iter().find(|(_, set)| *set) {
                return bad(format!(
                    "{field} applies to allocation = managed only; with allocation = external the engine owns allocation (and any existing page file is adopted as it is)"
                ));
            }
        }
        Ok(())
    }

    /// The first page id refused: `max_pages`, or the first whose bytes would pass 2^64.
    pub fn page_limit(&self) -> u64 {
        self.max_pages.unwrap_or_else(|| self.id_limit())
    }

    fn id_limit(&self) -> u64 {
        u64::MAX / self.page_size.max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_fields_are_named() {
        SchedulerConfig::default().validate().unwrap();
        for (config, field) in [
            (
                SchedulerConfig {
                    workers: 0,
                    ..Default::default()
                },
                "workers",
            ),
            (
                SchedulerConfig {
                    queue_depth: 0,
                    ..Default::default()
                },
                "queue_depth",
            ),
            (
                SchedulerConfig {
                    page_size: 1000,
                    ..Default::default()
                },
                "page_size",
            ),
            (
                SchedulerConfig {
                    max_combine_pages: 257,
                    ..Default::default()
                },
                "max_combine_pages",
            ),
            (
                SchedulerConfig {
                    poll_interval_us: 0,
                    ..Default::default()
                },
                "poll_interval_us",
            ),
            (
                SchedulerConfig {
                    page_file: PathBuf::new(),
                    ..Default::default()
                },
                "page_file",
            ),
            (
                SchedulerConfig {
                    max_pages: Some(0),
                    ..Default::default()
                },
                "max_pages",
            ),
            (
                SchedulerConfig {
                    allocation: AllocationMode::External,
                    zero_on_reuse: true,
                    ..Default::default()
                },
                "zero_on_reuse",
            ),
            (
                SchedulerConfig {
                    allocation: AllocationMode::External,
                    adopt_existing: true,
                    ..Default::default()
                },
                "adopt_existing",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn allocation_modes_read_from_text() {
        let config: SchedulerConfig = serde_json::from_str(
            r#"{ "allocation": "external", "page_file": "heap.dat", "max_pages": 1000 }"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.allocation, AllocationMode::External);
        assert_eq!(config.page_limit(), 1000);
        let config: SchedulerConfig =
            serde_json::from_str(r#"{ "alloc_durability": "next_sync", "zero_on_reuse": true }"#).unwrap();
        config.validate().unwrap();
        assert_eq!(config.alloc_durability, AllocDurability::NextSync);
        let err = serde_json::from_str::<SchedulerConfig>(r#"{ "allocation": "engine" }"#).unwrap_err();
        assert!(err.to_string().contains("managed"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SchedulerConfig>(r#"{ "page_sise": 4096 }"#).unwrap_err();
        assert!(err.to_string().contains("page_sise"), "{err}");
    }
}
