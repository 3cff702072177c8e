//! Metrics of the async file API: a plain snapshot struct, and Prometheus text exposition.

use std::fmt::Write as _;

use storage_io_core::{IoStats, IoStatsSnapshot, OpKind};

/// Upper bounds (seconds) of the latency histogram buckets in the Prometheus rendering.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    1.0, 10.0,
];

/// A copy of the async file API's numbers at one moment. Latencies are end to end: from the
/// call that made the request to the completion reaching its future (queueing included).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AsyncIoMetrics {
    /// The backend the workers run (`io_uring`, `thread_pool`, …).
    pub backend: String,
    /// I/O worker threads.
    pub workers: usize,
    /// One entry per op kind, in [`OpKind::ALL`] order.
    pub ops: Vec<OpMetrics>,
    /// Operations submitted to the backends and not completed yet (gauge).
    pub in_flight: u64,
    /// Requests waiting in the workers' queues for a free slot (gauge).
    pub queued: u64,
    /// The most operations ever in flight on one worker at once.
    pub max_in_flight: u64,
    /// Buffer pool use per size class.
    pub buffer_pool: Vec<PoolClassMetrics>,
    /// Rings made on callers' runtime threads (`AsyncFsConfig::caller_rings`); 0 when every op
    /// goes through the workers.
    pub caller_rings: usize,
    /// Operations submitted on callers' rings rather than through a worker.
    pub caller_ring_ops: u64,
    /// Writes to direct-I/O files from memory off the file's alignment (a `Vec`, `Bytes`),
    /// staged into aligned memory: each cost an allocation and a copy.
    pub staged_writes: u64,
    /// The bytes those staged writes copied.
    pub staged_bytes: u64,
}

/// The numbers of one op kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpMetrics {
    /// Which op kind.
    pub kind: OpKind,
    /// Operations completed (success or error).
    pub completed: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Bytes moved by successful operations.
    pub bytes: u64,
    /// Mean latency, microseconds.
    pub latency_us_mean: f64,
    /// Median latency, microseconds.
    pub latency_us_p50: f64,
    /// 99th percentile latency, microseconds.
    pub latency_us_p99: f64,
    /// Largest latency, microseconds.
    pub latency_us_max: f64,
    /// Cumulative counts at each bound of [`LATENCY_BUCKETS_SECONDS`] (same order).
    pub latency_buckets: Vec<u64>,
    /// Sum of all latencies in seconds (from the histogram, so within its 1 % resolution).
    pub latency_seconds_sum: f64,
}

/// Reads one figure of a buffer-pool size class (for the Prometheus text).
type ClassField = fn(&PoolClassMetrics) -> usize;

/// One size class of the buffer pool.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PoolClassMetrics {
    /// Buffer size of the class.
    pub size_bytes: usize,
    /// Buffers handed out now.
    pub outstanding: usize,
    /// The class's bound.
    pub limit: usize,
}

impl OpMetrics {
    pub(crate) fn from_stats(stats: &IoStats, snapshot: &IoStatsSnapshot, kind: OpKind) -> Self {
        let h = stats.latency_ns(kind);
        let k = snapshot.op(kind);
        OpMetrics {
            kind,
            completed: k.completed,
            errors: k.errors,
            bytes: k.bytes,
            latency_us_mean: k.latency_us_mean,
            latency_us_p50: k.latency_us_p50,
            latency_us_p99: k.latency_us_p99,
            latency_us_max: k.latency_us_max,
            latency_buckets: LATENCY_BUCKETS_SECONDS
                .iter()
                .map(|&le| h.count_between(0, (le * 1e9) as u64))
                .collect(),
            latency_seconds_sum: h.mean() * h.len() as f64 / 1e9,
        }
    }

    /// The entry's op kind as a Prometheus label value.
    fn label(&self) -> &'static str {
        self.kind.name()
    }
}

impl AsyncIoMetrics {
    /// The entry for `kind`.
    pub fn op(&self, kind: OpKind) -> &OpMetrics {
        &self.ops[kind.index()]
    }

    /// Renders the snapshot in the Prometheus text exposition format (version 0.0.4), every
    /// metric prefixed `storage_io_`.
    ///
    /// ```
    /// # fn show(fs: &storage_io_fs::AsyncFileSystem) {
    /// let text = fs.metrics().to_prometheus();
    /// assert!(text.contains("# TYPE storage_io_ops_total counter"));
    /// # }
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "info",
            "gauge",
            "Backend and worker count of the async file API; always 1.",
        );
        let _ = writeln!(
            out,
            "storage_io_info{{backend=\"{}\",workers=\"{}\"}} 1",
            self.backend, self.workers
        );
        self.op_counters(&mut out);
        self.latency_histograms(&mut out);
        self.gauges(&mut out);
        self.pool_classes(&mut out);
        for (name, help, value) in [
            (
                "staged_writes_total",
                "Writes to direct-I/O files staged into aligned memory (a copy each).",
                self.staged_writes,
            ),
            (
                "staged_bytes_total",
                "Bytes copied by staged writes.",
                self.staged_bytes,
            ),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "storage_io_{name} {value}");
        }
        out
    }

    /// Operations, errors and bytes, by op kind.
    fn op_counters(&self, out: &mut String) {
        type Field = fn(&OpMetrics) -> u64;
        let counters: [(&str, &str, Field); 3] = [
            ("ops_total", "Operations completed, by op kind.", |o| o.completed),
            ("op_errors_total", "Operations that failed, by op kind.", |o| {
                o.errors
            }),
            (
                "bytes_total",
                "Bytes moved by successful operations, by op kind.",
                |o| o.bytes,
            ),
        ];
        for (name, help, field) in counters {
            header(out, name, "counter", help);
            for o in &self.ops {
                let _ = writeln!(out, "storage_io_{name}{{op=\"{}\"}} {}", o.label(), field(o));
            }
        }
    }

    /// The latency histogram of each op kind: cumulative buckets, `+Inf`, sum and count.
    fn latency_histograms(&self, out: &mut String) {
        header(
            out,
            "op_latency_seconds",
            "histogram",
            "End-to-end latency of operations, from request to completion, by op kind.",
        );
        for o in &self.ops {
            let op = o.label();
            for (le, count) in LATENCY_BUCKETS_SECONDS.iter().zip(&o.latency_buckets) {
                let _ = writeln!(
                    out,
                    "storage_io_op_latency_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "storage_io_op_latency_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                o.completed
            );
            let _ = writeln!(
                out,
                "storage_io_op_latency_seconds_sum{{op=\"{op}\"}} {}",
                o.latency_seconds_sum
            );
            let _ = writeln!(
                out,
                "storage_io_op_latency_seconds_count{{op=\"{op}\"}} {}",
                o.completed
            );
        }
    }

    /// In flight, queued, and the most ever in flight on one worker.
    fn gauges(&self, out: &mut String) {
        let gauges = [
            (
                "in_flight",
                "Operations submitted to the backends and not completed.",
                self.in_flight,
            ),
            (
                "queued",
                "Requests waiting in the workers' queues for a free slot.",
                self.queued,
            ),
            (
                "max_in_flight",
                "The most operations ever in flight on one worker.",
                self.max_in_flight,
            ),
        ];
        for (name, help, value) in gauges {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "storage_io_{name} {value}");
        }
    }

    /// Buffers handed out and the bound of each buffer pool size class.
    fn pool_classes(&self, out: &mut String) {
        let per_class: [(&str, &str, ClassField); 2] = [
            (
                "buffer_pool_outstanding",
                "Pool buffers handed out, by size class.",
                |c: &PoolClassMetrics| c.outstanding,
            ),
            (
                "buffer_pool_limit",
                "Bound of each buffer pool size class.",
                |c: &PoolClassMetrics| c.limit,
            ),
        ];
        for (name, help, value) in per_class {
            header(out, name, "gauge", help);
            for c in &self.buffer_pool {
                let _ = writeln!(
                    out,
                    "storage_io_{name}{{size_bytes=\"{}\"}} {}",
                    c.size_bytes,
                    value(c)
                );
            }
        }
    }
}

/// The `# HELP` and `# TYPE` lines of metric `storage_io_{name}`.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP storage_io_{name} {help}");
    let _ = writeln!(out, "# TYPE storage_io_{name} {kind}");
}
