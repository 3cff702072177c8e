#![allow(missing_docs, clippy::unwrap_used)]
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_io::{AsyncFileSystem, AsyncFsConfig, BackendKind, IoConfig, OpenOptions};

fn rusage() -> (f64, i64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let cpu = (u.ru_utime.tv_sec + u.ru_stime.tv_sec) as f64
        + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) as f64 / 1e6;
    (cpu, u.ru_nvcsw + u.ru_nivcsw)
}

fn main() {
    let path = std::path::PathBuf::from("/work/probe/data.bin");
    let size: u64 = 256 << 20;
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != size {
        std::fs::write(&path, vec![1u8; size as usize]).unwrap();
    }
    let tasks_list: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or("1,32,256".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let direct = std::env::args().nth(2).map_or(true, |s| s == "direct");
    let mode = std::env::args().nth(3).unwrap_or("read".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for &tasks in &tasks_list {
        let mut res: Vec<(bool, f64, f64, f64)> = Vec::new();
        let only: Option<bool> = std::env::args().nth(4).map(|s| s == "caller");
        for round in 0..3 {
            for caller in [true, false] {
                if only.is_some_and(|o| o != caller) {
                    continue;
                }
                let cfg = AsyncFsConfig {
                    io_workers: 1,
                    caller_rings: caller,
                    io: IoConfig {
                        backend: BackendKind::IoUring,
                        queue_depth: 256,
                        direct_io: direct,
                        ..IoConfig::default()
                    },
                    ..AsyncFsConfig::default()
                };
                let fs = AsyncFileSystem::new(&cfg).unwrap();
                let (ops, secs, cpu, cs) = rt.block_on(async {
                    let f = if mode == "read" {
                        Arc::new(fs.open_with(&path, OpenOptions::read_only(), None).await.unwrap())
                    } else {
                        let p = format!("/work/probe/log-{round}-{caller}");
                        let _ = std::fs::remove_file(&p);
                        Arc::new(fs.open_append(p).await.unwrap())
                    };
                    let stop = Instant::now() + Duration::from_secs(2);
                    let (c0, s0) = rusage();
                    let t0 = Instant::now();
                    let mut hs = Vec::new();
                    for t in 0..tasks {
                        let f = Arc::clone(&f);
                        let pool = fs.buffers().clone();
                        let mode = mode.clone();
                        hs.push(tokio::spawn(async move {
                            let mut n = 0u64;
                            let mut x = (t as u64 + 1) * 0x9E3779B97F4A7C15;
                            let mut buf = pool.acquire(4096).unwrap();
                            while Instant::now() < stop {
                                if mode == "read" {
                                    x ^= x << 13;
                                    x ^= x >> 7;
                                    x ^= x << 17;
                                    let off = (x % (size / 4096)) * 4096;
                                    let (r, b) = f.read_at(buf, off).await;
                                    r.unwrap();
                                    buf = b;
                                    n += 1;
                                } else {
                                    for _ in 0..8 {
                                        let (r, b) = f.append(buf).await;
                                        r.unwrap();
                                        buf = b;
                                        n += 1;
                                    }
                                    f.sync_data().await.unwrap();
                                }
                            }
                            n
                        }));
                    }
                    let mut ops = 0;
                    for h in hs {
                        ops += h.await.unwrap();
                    }
                    let secs = t0.elapsed().as_secs_f64();
                    let (c1, s1) = rusage();
                    (ops as f64, secs, c1 - c0, (s1 - s0) as f64)
                });
                let m = fs.metrics();
                fs.shutdown();
                println!(
                    "tasks {tasks} caller {caller} round {round}: {:.0} ops/s cpu {:.1} us/op cs {:.2}/op rings {} ring_ops {}",
                    ops / secs,
                    cpu * 1e6 / ops,
                    cs / ops,
                    m.caller_rings,
                    m.caller_ring_ops
                );
                res.push((caller, ops / secs, cpu * 1e6 / ops, cs / ops));
            }
        }
        for caller in [true, false] {
            if only.is_some_and(|o| o != caller) {
                continue;
            }
            let mut v: Vec<f64> = res.iter().filter(|r| r.0 == caller).map(|r| r.1).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "== tasks {tasks} caller {caller}: median {:.0} ops/s (min {:.0} max {:.0})",
                v[1], v[0], v[2]
            );
        }
    }
}
