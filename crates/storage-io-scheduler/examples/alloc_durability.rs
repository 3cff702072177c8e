//! `new_page()` ×N through a [`PageCache`] on a real directory, once per `alloc_durability`,
//! then one `flush_all`: the figures behind the default in `SchedulerConfig`'s docs.
//!
//! ```text
//! cargo run --release -p storage-io-scheduler --example alloc_durability -- [DIR] [PAGES]
//! ```
//!
//! DIR defaults to a fresh directory under the system's temp dir (use one on the disk you care
//! about: a tmpfs makes every sync free); PAGES to 10,000. The inline sync backend, 64 frames.
#![allow(clippy::unwrap_used)] // an example: a failure ends it with its message

use std::sync::Arc;
use std::time::Instant;

use storage_io_core::{BackendFactory, IoConfig, StorageIo};
use storage_io_scheduler::{AllocDurability, DiskScheduler, PageCache, SchedulerConfig};
use storage_io_sync::SyncStorageIo;

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sio-alloc-durability-{}", std::process::id())));
    let pages: u32 = args.next().map_or(10_000, |n| n.parse().unwrap());
    for durability in [AllocDurability::NextSync, AllocDurability::Immediate] {
        let dir = base.join(format!("{durability:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let factory: BackendFactory =
            Arc::new(|_| Ok(Box::new(SyncStorageIo::new(&IoConfig::default())?) as Box<dyn StorageIo>));
        let config = SchedulerConfig {
            alloc_durability: durability,
            ..SchedulerConfig::default()
        };
        let sched = Arc::new(DiskScheduler::open(&dir, config, factory).unwrap());
        let cache = PageCache::new(Arc::clone(&sched), 64).unwrap();
        let started = Instant::now();
        for i in 0..pages {
            let page = cache.new_page().unwrap();
            page.write()[..4].copy_from_slice(&i.to_le_bytes());
        }
        let allocated = started.elapsed();
        cache.close().unwrap();
        let total = started.elapsed();
        sched.shutdown().unwrap();
        println!(
            "alloc_durability = {durability:?}: {pages} new_page() in {:.2} s ({:.0}/s), with the closing flush {:.2} s",
            allocated.as_secs_f64(),
            f64::from(pages) / allocated.as_secs_f64(),
            total.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
