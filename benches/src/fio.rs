//! fio beside us: the same cell (file, block size, queue depth, direct flag, duration) run by
//! fio, parsed from its JSON output into the same [`Row`] as ours.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Latency, Row};

/// The fio engines we compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FioEngine {
    /// `psync`: one blocking `pread`/`pwrite` per thread; queue depth `qd` is `qd` threads.
    Psync,
    /// `io_uring` with plain buffers and descriptors.
    IoUring,
    /// `io_uring` with `fixedbufs` and `registerfiles` (what our uring backend does).
    IoUringFixed,
}

impl FioEngine {
    /// Every engine, in report order.
    pub const ALL: [FioEngine; 3] = [FioEngine::Psync, FioEngine::IoUring, FioEngine::IoUringFixed];

    /// The name in rows and reports.
    pub fn name(self) -> &'static str {
        match self {
            FioEngine::Psync => "psync",
            FioEngine::IoUring => "io_uring",
            FioEngine::IoUringFixed => "io_uring+fixed",
        }
    }
}

/// One fio run.
#[derive(Debug, Clone)]
pub struct FioJob {
    /// `seq_read`, `rand_read` or `rand_write` (or `wal_commit`'s durable writes).
    pub workload: crate::cell::Workload,
    /// Which engine.
    pub engine: FioEngine,
    /// O_DIRECT or buffered.
    pub direct: bool,
    /// Queue depth (threads for psync).
    pub qd: usize,
    /// Block size in bytes.
    pub block: usize,
    /// Run time.
    pub duration: Duration,
    /// Bytes of the file to use, from offset 0.
    pub size: u64,
    /// The file.
    pub file: PathBuf,
    /// Drop the file's cache before the run (fio `--invalidate=1`); false for hot runs.
    pub invalidate: bool,
    /// Writes made durable one by one (the WAL's peers): none, an fdatasync after each write
    /// (`--fdatasync=1`), or the file opened `O_DSYNC` (`--sync=dsync`).
    pub sync: FioSync,
    /// Open loop: issue at this many ops/s on a Poisson schedule (`--rate_iops`,
    /// `--rate_process=poisson`) instead of keeping `qd` in flight.
    pub rate_iops: Option<u64>,
}

/// How a fio write job makes each write durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FioSync {
    /// Not at all (the read and write workloads).
    #[default]
    None,
    /// An fdatasync after every write.
    Fdatasync,
    /// The file opened with O_DSYNC (with `direct`: O_DIRECT | O_DSYNC).
    Dsync,
}

/// fio's version string, or `None` when fio is not installed.
pub fn version() -> Option<String> {
    let out = Command::new("fio").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether fio can run `workload`.
pub fn supports(workload: &str) -> bool {
    matches!(
        workload,
        "seq_read" | "rand_read" | "rand_write" | "scheduler_client_read" | "scheduler_task_read"
    )
}

impl FioJob {
    /// fio's command-line arguments for this job.
    pub fn args(&self) -> Vec<String> {
        use crate::cell::Workload;
        let rw = match self.workload {
            Workload::SeqRead => "read",
            Workload::RandWrite | Workload::WalCommit => "randwrite",
            _ => "randread",
        };
        let mut a = vec![
            "--name=storage-io-bench".to_string(),
            format!("--filename={}", self.file.display()),
            format!("--rw={rw}"),
            format!("--bs={}", self.block),
            format!("--direct={}", u8::from(self.direct)),
            // fio reads a bare "0.5" as 0 s; milliseconds keep short cells exact.
            format!("--runtime={}ms", self.duration.as_millis().max(1)),
            "--time_based".to_string(),
            format!("--invalidate={}", u8::from(self.invalidate)),
            // The file exists and is filled already: never lay it out or extend it.
            "--allow_file_create=0".to_string(),
            "--output-format=json".to_string(),
            // Percentiles of the whole latency (submission + completion), like ours. fio's
            // default completion-only percentiles start once the submitting system call has
            // returned; at qd 1 on io_uring the read often finished inside it, and the p50
            // came out at about 1 µs.
            "--lat_percentiles=1".to_string(),
        ];
        if rw.starts_with("rand") {
            // Uniform offsets with repetition, like our driver (fio's default visits each block once).
            a.push("--norandommap".to_string());
        }
        if let Some(r) = self.rate_iops {
            a.push(format!("--rate_iops={}", r.max(1)));
            a.push("--rate_process=poisson".to_string());
        }
        match self.sync {
            FioSync::None => {}
            FioSync::Fdatasync => a.push("--fdatasync=1".to_string()),
            FioSync::Dsync => a.push("--sync=dsync".to_string()),
        }
        match self.engine {
            FioEngine::Psync => {
                a.push("--ioengine=psync".to_string());
                // psync has no queue: depth qd is qd threads, each on its own slice of the file.
                let jobs = self.qd.max(1) as u64;
                let slice = (self.size / jobs) / self.block as u64 * self.block as u64;
                a.push(format!("--size={}", slice.max(self.block as u64)));
                if jobs > 1 {
                    a.extend([
                        "--thread".to_string(),
                        format!("--numjobs={jobs}"),
                        format!("--offset_increment={slice}"),
                        "--group_reporting".to_string(),
                    ]);
                }
            }
            FioEngine::IoUring | FioEngine::IoUringFixed => {
                a.push("--ioengine=io_uring".to_string());
                a.push(format!("--iodepth={}", self.qd));
                a.push(format!("--size={}", self.size));
                if self.engine == FioEngine::IoUringFixed {
                    a.push("--fixedbufs".to_string());
                    a.push("--registerfiles".to_string());
                }
            }
        }
        a
    }

    /// Runs fio and parses its result into a row (regime left for the caller to fill).
    pub fn run(&self) -> Result<Row> {
        let out = Command::new("fio")
            .args(self.args())
            .output()
            .context("start fio")?;
        if !out.status.success() {
            bail!(
                "fio failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        self.parse(&text)
    }

    /// Parses fio's `--output-format=json` text.
    pub fn parse(&self, text: &str) -> Result<Row> {
        // fio may print notes before the JSON object.
        let start = text.find('{').context("fio printed no JSON")?;
        let v: Value = serde_json::from_str(&text[start..]).context("parse fio JSON")?;
        let job = &v["jobs"][0];
        let side = if self.workload == crate::cell::Workload::RandWrite
            || self.workload == crate::cell::Workload::WalCommit
        {
            &job["write"]
        } else {
            &job["read"]
        };
        let num = |x: &Value| x.as_f64().unwrap_or(0.0);
        let ios = num(&side["total_ios"]);
        let runtime_ms = num(&job["job_runtime"]).max(num(&side["runtime"]));
        if ios <= 0.0 || runtime_ms <= 0.0 {
            bail!("fio reported no I/O for {}", self.engine.name());
        }
        // A run much shorter or longer than asked means fio read its options differently from
        // what we meant; its numbers would not be comparable.
        let wall_ms = num(&side["runtime"]);
        let want_ms = self.duration.as_secs_f64() * 1000.0;
        if wall_ms > 0.0 && (wall_ms < want_ms * 0.5 || wall_ms > want_ms * 2.0 + 200.0) {
            bail!(
                "fio ran {wall_ms:.0} ms where {want_ms:.0} ms was asked; check its options: {}",
                self.args().join(" ")
            );
        }
        // Total-latency percentiles (`--lat_percentiles=1`); an fio that ignored the option
        // only has completion latency.
        let pct = match &side["lat_ns"]["percentile"] {
            Value::Null => &side["clat_ns"]["percentile"],
            p => p,
        };
        let us = |ns: f64| ns / 1000.0;
        // usr/sys are percentages of the (summed) job run time.
        let cpu_s = (num(&job["usr_cpu"]) + num(&job["sys_cpu"])) / 100.0 * runtime_ms / 1000.0;
        let iops = num(&side["iops"]);
        Ok(Row {
            workload: self.workload,
            engine: crate::cell::Engine::Fio,
            backend: self.engine.name().into(),
            io: crate::cell::IoMode::of(self.direct),
            regime: crate::cell::Regime::default(),
            qd: self.qd,
            block_size: self.block,
            iops,
            mb_s: num(&side["bw_bytes"]) / 1e6,
            lat_us: Latency {
                mean: us(num(&side["lat_ns"]["mean"])),
                p50: us(num(&pct["50.000000"])),
                p95: us(num(&pct["95.000000"])),
                p99: us(num(&pct["99.000000"])),
                p999: us(num(&pct["99.900000"])),
                max: us(num(&side["lat_ns"]["max"])),
            },
            cpu_us_per_op: cpu_s * 1e6 / ios,
            ops: ios as u64,
            // fio does not report the depth it kept (only bucketed percentages): left at 0, shown as "–".
            ..Row::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(engine: FioEngine, qd: usize) -> FioJob {
        FioJob {
            workload: crate::cell::Workload::RandRead,
            engine,
            direct: true,
            qd,
            block: 4096,
            duration: Duration::from_millis(1500),
            size: 64 << 20,
            file: "/data/f".into(),
            invalidate: false,
            sync: FioSync::None,
            rate_iops: None,
        }
    }

    #[test]
    fn durable_write_jobs_sync_each_write() {
        let mut j = job(FioEngine::Psync, 1);
        j.workload = crate::cell::Workload::WalCommit;
        j.direct = false;
        j.sync = FioSync::Fdatasync;
        let a = j.args().join(" ");
        assert!(
            a.contains("--rw=randwrite") && a.contains("--fdatasync=1") && a.contains("--direct=0"),
            "{a}"
        );
        j.engine = FioEngine::IoUring;
        j.direct = true;
        j.qd = 16;
        j.sync = FioSync::Dsync;
        let a = j.args().join(" ");
        assert!(
            a.contains("--sync=dsync") && a.contains("--iodepth=16") && a.contains("--direct=1"),
            "{a}"
        );
    }

    #[test]
    fn args_match_the_cell() {
        let a = job(FioEngine::IoUringFixed, 32).args().join(" ");
        for want in [
            "--rw=randread",
            "--bs=4096",
            "--direct=1",
            "--iodepth=32",
            "--lat_percentiles=1",
            "--fixedbufs",
            "--registerfiles",
            "--invalidate=0",
            "--runtime=1500ms",
            "--norandommap",
        ] {
            assert!(a.contains(want), "{want} missing from {a}");
        }
        let p = job(FioEngine::Psync, 4).args().join(" ");
        assert!(p.contains("--numjobs=4") && p.contains("--thread"), "{p}");
        assert!(p.contains(&format!("--size={}", 16 << 20)), "{p}");
        assert!(!p.contains("iodepth"), "{p}");
        let plain = job(FioEngine::IoUring, 1).args().join(" ");
        assert!(!plain.contains("fixedbufs"), "{plain}");
        assert!(!plain.contains("rate"), "closed loop: {plain}");
        let open = FioJob {
            rate_iops: Some(20_000),
            ..job(FioEngine::IoUringFixed, 128)
        };
        let o = open.args().join(" ");
        assert!(
            o.contains("--rate_iops=20000")
                && o.contains("--rate_process=poisson")
                && o.contains("--iodepth=128"),
            "{o}"
        );
    }

    #[test]
    fn json_is_parsed_into_a_row() {
        let text = r#"note: something
        {"jobs": [{"job_runtime": 2000, "usr_cpu": 5.0, "sys_cpu": 15.0,
          "read": {"iops": 50000.0, "bw_bytes": 204800000, "total_ios": 100000, "runtime": 1500,
                   "lat_ns": {"mean": 600000.0, "max": 5000000},
                   "clat_ns": {"percentile": {"50.000000": 550000, "95.000000": 900000, "99.000000": 1200000}}},
          "write": {"iops": 0.0}}]}"#;
        let row = job(FioEngine::IoUring, 32).parse(text).unwrap();
        assert_eq!(row.engine, crate::cell::Engine::Fio);
        assert_eq!(row.backend, "io_uring");
        assert_eq!(row.iops, 50000.0);
        assert_eq!(row.lat_us.p99, 1200.0);
        assert_eq!(row.lat_us.mean, 600.0);
        // With `--lat_percentiles=1` the total-latency percentiles are used, not clat's.
        let with_total = text.replace(
            r#""lat_ns": {"mean": 600000.0, "max": 5000000}"#,
            r#""lat_ns": {"mean": 600000.0, "max": 5000000, "percentile": {"50.000000": 580000, "95.000000": 950000, "99.000000": 1300000}}"#,
        );
        let row = job(FioEngine::IoUring, 32).parse(&with_total).unwrap();
        assert_eq!((row.lat_us.p50, row.lat_us.p99), (580.0, 1300.0));
        // 20 % of 2 s (summed over jobs) = 0.4 s over 100 000 ops = 4 us per op.
        assert!((row.cpu_us_per_op - 4.0).abs() < 1e-9, "{}", row.cpu_us_per_op);
        assert!(job(FioEngine::IoUring, 1).parse("garbage").is_err());
        let empty = r#"{"jobs": [{"job_runtime": 0, "read": {"total_ios": 0}}]}"#;
        assert!(job(FioEngine::IoUring, 1).parse(empty).is_err());
        let too_short = text.replace("\"runtime\": 1500", "\"runtime\": 10");
        let err = job(FioEngine::IoUring, 32).parse(&too_short).unwrap_err();
        assert!(
            err.to_string().contains("fio ran 10 ms where 1500 ms was asked"),
            "{err}"
        );
    }
}
