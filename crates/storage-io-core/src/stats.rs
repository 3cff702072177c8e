//! [`IoStats`]: per-op-kind counters, bytes, errors, an in-flight gauge and latency histograms,
//! cheap enough to leave on.
//!
//! A backend owns one `IoStats` and updates it on its own thread (no atomics, no locks); callers
//! read it through [`StorageIo::stats`](crate::StorageIo::stats) and take a serialisable
//! [`IoStatsSnapshot`], which can be merged across workers. Recording never allocates: the
//! histograms are sized at construction and record saturating at their bounds.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::op::OpKind;

/// Highest latency a histogram tracks exactly; longer ones are recorded as this value.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Live statistics of one backend instance.
#[derive(Debug, Clone)]
pub struct IoStats {
    kinds: [KindStats; 5],
    in_flight: u64,
    max_in_flight: u64,
    held_ns: u64,
    submit_calls: u64,
    submit_call_ns: u64,
}

#[derive(Debug, Clone)]
struct KindStats {
    submitted: u64,
    completed: u64,
    errors: u64,
    bytes: u64,
    latency_ns: Histogram<u64>,
}

impl KindStats {
    fn new() -> Self {
        KindStats {
            submitted: 0,
            completed: 0,
            errors: 0,
            bytes: 0,
            latency_ns: new_histogram(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Two significant figures: 1% resolution at every magnitude, about 20 KiB per histogram.
    match Histogram::new_with_bounds(1, MAX_TRACKED_NS, 2) {
        Ok(h) => h,
        Err(_) => unreachable!("constant bounds are valid"),
    }
}

impl Default for IoStats {
    fn default() -> Self {
        Self::new()
    }
}

impl IoStats {
    /// Empty statistics.
    pub fn new() -> Self {
        IoStats {
            kinds: std::array::from_fn(|_| KindStats::new()),
            in_flight: 0,
            max_in_flight: 0,
            held_ns: 0,
            submit_calls: 0,
            submit_call_ns: 0,
        }
    }

    /// Records that an op of `kind` was accepted.
    #[inline]
    pub fn record_submit(&mut self, kind: OpKind) {
        self.kinds[kind.index()].submitted += 1;
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
    }

    /// Records that an op of `kind` completed: `Ok(bytes)` or an error, after `latency`.
    #[inline]
    pub fn record_complete(&mut self, kind: OpKind, result: Result<usize, ()>, latency: Duration) {
        let k = &mut self.kinds[kind.index()];
        k.completed += 1;
        match result {
            Ok(bytes) => k.bytes += bytes as u64,
            Err(()) => k.errors += 1,
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        k.latency_ns.saturating_record(ns);
        self.held_ns = self.held_ns.saturating_add(ns);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Records one system call that only handed queued requests to the kernel (it did not
    /// wait for completions) and the wall time it took. Backends that queue requests in user
    /// space and submit them in batches (io_uring) call this; the others never do.
    #[inline]
    pub fn record_submit_call(&mut self, took: Duration) {
        self.submit_calls += 1;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.submit_call_ns = self.submit_call_ns.saturating_add(ns);
    }

    /// System calls recorded by [`record_submit_call`](Self::record_submit_call).
    pub fn submit_calls(&self) -> u64 {
        self.submit_calls
    }

    /// Total wall time of the calls counted by [`submit_calls`](Self::submit_calls), in
    /// nanoseconds. Differences of two readings give the mean over a span, as the scheduler's
    /// stats do across its workers.
    pub fn submit_call_ns(&self) -> u64 {
        self.submit_call_ns
    }

    /// The mean wall time of a submit-only system call, or `None` if there was none.
    ///
    /// On a virtual machine this is mostly the cost of notifying the virtual disk: some
    /// hypervisors hold the vCPU for tens of µs per notification, which makes handing requests
    /// over in batches worth more there than on bare metal.
    ///
    /// ```
    /// use std::time::Duration;
    /// use storage_io_core::IoStats;
    ///
    /// let mut stats = IoStats::new();
    /// assert_eq!(stats.mean_submit_call(), None);
    /// stats.record_submit_call(Duration::from_micros(10));
    /// stats.record_submit_call(Duration::from_micros(30));
    /// assert_eq!(stats.mean_submit_call(), Some(Duration::from_micros(20)));
    /// ```
    pub fn mean_submit_call(&self) -> Option<Duration> {
        (self.submit_calls > 0).then(|| Duration::from_nanos(self.submit_call_ns / self.submit_calls))
    }

    /// Ops accepted and not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The most ops ever in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight
    }

    /// Ops of `kind` completed so far.
    pub fn completed(&self, kind: OpKind) -> u64 {
        self.kinds[kind.index()].completed
    }

    /// Failed ops of `kind` so far.
    pub fn errors(&self, kind: OpKind) -> u64 {
        self.kinds[kind.index()].errors
    }

    /// Bytes moved by ops of `kind` so far.
    pub fn bytes(&self, kind: OpKind) -> u64 {
        self.kinds[kind.index()].bytes
    }

    /// Total submit → completion time of every completed op, in nanoseconds (exact, unlike
    /// the histograms). Divided by a span of wall time in which the backend was busy, it is the
    /// mean number of ops the backend held then ([`mean_ops_held`](Self::mean_ops_held)).
    pub fn held_ns(&self) -> u64 {
        self.held_ns
    }

    /// The mean number of ops in the backend over `wall` (Little's law: total time ops spent
    /// between submit and completion, divided by `wall`), counting ops completed so far.
    ///
    /// A caller that keeps 32 ops outstanding but takes time to hand each completion back
    /// sees fewer than 32 here: the gap is how much of its queue depth never reached the
    /// backend. 0 for an empty span.
    ///
    /// ```
    /// use std::time::Duration;
    /// use storage_io_core::{IoStats, OpKind};
    ///
    /// let mut stats = IoStats::new();
    /// for _ in 0..4 {
    ///     stats.record_submit(OpKind::Read);
    ///     stats.record_complete(OpKind::Read, Ok(4096), Duration::from_millis(5));
    /// }
    /// // Four 5 ms reads within 10 ms of wall time: two in the backend on average.
    /// assert_eq!(stats.mean_ops_held(Duration::from_millis(10)), 2.0);
    /// ```
    pub fn mean_ops_held(&self, wall: Duration) -> f64 {
        let wall = wall.as_nanos() as f64;
        if wall > 0.0 {
            self.held_ns as f64 / wall
        } else {
            0.0
        }
    }

    /// The latency histogram of `kind`, in nanoseconds.
    pub fn latency_ns(&self, kind: OpKind) -> &Histogram<u64> {
        &self.kinds[kind.index()].latency_ns
    }

    /// Adds another instance's numbers to these (for totals across workers).
    pub fn merge(&mut self, other: &IoStats) {
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds.iter()) {
            mine.submitted += theirs.submitted;
            mine.completed += theirs.completed;
            mine.errors += theirs.errors;
            mine.bytes += theirs.bytes;
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.latency_ns.add(&theirs.latency_ns);
        }
        self.in_flight += other.in_flight;
        self.max_in_flight = self.max_in_flight.max(other.max_in_flight);
        self.held_ns = self.held_ns.saturating_add(other.held_ns);
        self.submit_calls += other.submit_calls;
        self.submit_call_ns = self.submit_call_ns.saturating_add(other.submit_call_ns);
    }

    /// A plain, serialisable copy of the numbers.
    pub fn snapshot(&self) -> IoStatsSnapshot {
        IoStatsSnapshot {
            ops: OpKind::ALL
                .iter()
                .map(|&kind| {
                    let k = &self.kinds[kind.index()];
                    let h = &k.latency_ns;
                    let us = |ns: u64| ns as f64 / 1000.0;
                    OpKindSnapshot {
                        kind,
                        submitted: k.submitted,
                        completed: k.completed,
                        errors: k.errors,
                        bytes: k.bytes,
                        latency_us_mean: h.mean() / 1000.0,
                        latency_us_p50: us(h.value_at_quantile(0.50)),
                        latency_us_p99: us(h.value_at_quantile(0.99)),
                        latency_us_max: us(h.max()),
                    }
                })
                .collect(),
            in_flight: self.in_flight,
            max_in_flight: self.max_in_flight,
            held_ns: self.held_ns,
            submit_calls: self.submit_calls,
            submit_call_ns: self.submit_call_ns,
        }
    }
}

/// A copy of [`IoStats`] for reports and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IoStatsSnapshot {
    /// One entry per op kind, in [`OpKind::ALL`] order.
    pub ops: Vec<OpKindSnapshot>,
    /// Ops in flight when the snapshot was taken.
    pub in_flight: u64,
    /// The most ops ever in flight at once.
    pub max_in_flight: u64,
    /// Total submit → completion time of the completed ops, nanoseconds (see
    /// [`IoStats::held_ns`]).
    #[serde(default)]
    pub held_ns: u64,
    /// Submit-only system calls (see [`IoStats::record_submit_call`]).
    #[serde(default)]
    pub submit_calls: u64,
    /// Wall time spent in them, nanoseconds.
    #[serde(default)]
    pub submit_call_ns: u64,
}

/// The numbers of one op kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpKindSnapshot {
    /// Which op kind.
    pub kind: OpKind,
    /// Ops accepted.
    pub submitted: u64,
    /// Ops completed (success or error).
    pub completed: u64,
    /// Ops that failed.
    pub errors: u64,
    /// Bytes moved by successful ops.
    pub bytes: u64,
    /// Mean latency, microseconds.
    pub latency_us_mean: f64,
    /// Median latency, microseconds.
    pub latency_us_p50: f64,
    /// 99th percentile latency, microseconds.
    pub latency_us_p99: f64,
    /// Largest latency, microseconds.
    pub latency_us_max: f64,
}

impl IoStatsSnapshot {
    /// The entry for `kind`.
    pub fn op(&self, kind: OpKind) -> &OpKindSnapshot {
        &self.ops[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_errors_and_latency_per_kind() {
        let mut s = IoStats::new();
        s.record_submit(OpKind::Read);
        s.record_submit(OpKind::Read);
        s.record_submit(OpKind::Datasync);
        assert_eq!(s.in_flight(), 3);
        s.record_complete(OpKind::Read, Ok(4096), Duration::from_micros(100));
        s.record_complete(OpKind::Read, Err(()), Duration::from_micros(300));
        s.record_complete(OpKind::Datasync, Ok(0), Duration::from_millis(2));
        let snap = s.snapshot();
        let r = snap.op(OpKind::Read);
        assert_eq!((r.submitted, r.completed, r.errors, r.bytes), (2, 2, 1, 4096));
        assert!((99.0..=101.0).contains(&r.latency_us_p50), "{r:?}");
        assert!(r.latency_us_max >= 299.0, "{r:?}");
        assert_eq!(snap.in_flight, 0);
        assert_eq!(snap.max_in_flight, 3);
    }

    #[test]
    fn merge_adds_workers_together() {
        let mut a = IoStats::new();
        let mut b = IoStats::new();
        for s in [&mut a, &mut b] {
            s.record_submit(OpKind::Write);
            s.record_complete(OpKind::Write, Ok(10), Duration::from_micros(5));
        }
        a.record_submit_call(Duration::from_micros(4));
        b.record_submit_call(Duration::from_micros(8));
        a.merge(&b);
        assert_eq!(a.held_ns(), 10_000);
        assert_eq!(a.submit_calls(), 2);
        assert_eq!(a.mean_submit_call(), Some(Duration::from_micros(6)));
        let snap = a.snapshot();
        assert_eq!((snap.submit_calls, snap.submit_call_ns), (2, 12_000));
        assert_eq!(a.completed(OpKind::Write), 2);
        assert_eq!(a.bytes(OpKind::Write), 20);
        assert_eq!(a.latency_ns(OpKind::Write).len(), 2);
    }

    #[test]
    fn held_time_is_exact_and_gives_the_mean_ops_held() {
        let mut s = IoStats::new();
        assert_eq!(
            s.mean_ops_held(Duration::ZERO),
            0.0,
            "an empty span is not a division by zero"
        );
        for us in [100, 250, 650] {
            s.record_submit(OpKind::Read);
            s.record_complete(OpKind::Read, Ok(4096), Duration::from_micros(us));
        }
        // Exact nanoseconds, not the histogram's two significant figures.
        assert_eq!(s.held_ns(), 1_000_000);
        assert_eq!(s.snapshot().held_ns, 1_000_000);
        assert_eq!(s.mean_ops_held(Duration::from_micros(500)), 2.0);
    }

    #[test]
    fn absurd_latencies_saturate_instead_of_failing() {
        let mut s = IoStats::new();
        s.record_submit(OpKind::Fsync);
        s.record_complete(OpKind::Fsync, Ok(0), Duration::from_secs(3600));
        assert_eq!(s.latency_ns(OpKind::Fsync).len(), 1);
    }
}
