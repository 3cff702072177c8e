//! What page allocation costs an allocate-heavy engine: 10,000 allocations, one after the
//! other (each waits for its answer, as an insert that needs a fresh page does), then one
//! `schedule_sync`, on a real directory with the backend the façade picks. Two ways:
//! `immediate` (each allocation answered once its image is durable: an image write and an
//! fdatasync each) and `next_sync` (answered at once; one image at the sync).
#![allow(missing_docs)] // criterion_group! expands to an undocumented pub fn
#![allow(clippy::unwrap_used)] // a bench set-up failure should stop the bench loudly

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use storage_io_scheduler::{AllocDurability, SchedulerConfig};

const ALLOCATIONS: u64 = 10_000;

fn allocate_10k(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_allocate_10k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, durability) in [
        ("immediate", AllocDurability::Immediate),
        ("next_sync", AllocDurability::NextSync),
    ] {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A fresh directory each time (under target/, on the disk being measured).
                    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
                    let config = SchedulerConfig {
                        alloc_durability: durability,
                        ..SchedulerConfig::default()
                    };
                    let sched =
                        storage_io::open_scheduler(dir.path(), config, &storage_io::IoConfig::default())
                            .unwrap();
                    let started = Instant::now();
                    for _ in 0..ALLOCATIONS {
                        sched.schedule_allocate().recv().unwrap();
                    }
                    sched.schedule_sync().recv().unwrap();
                    total += started.elapsed();
                    assert_eq!(sched.stats().allocated_pages, ALLOCATIONS);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, allocate_10k);
criterion_main!(benches);
