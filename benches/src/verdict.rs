//! The thresholds behind the report's verdicts, in one table: a verdict in report.md is a
//! measured ratio set against one of these, never a number written into the prose.
//! (The async cells' targets are their own table, [`crate::async_report::THRESHOLDS`].)

/// Every threshold a verdict of the report uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Hot buffered cells: io_uring "holds its own" at this share of the inline sync
    /// backend's IOPS or more (a read answered from the page cache at submit).
    pub hot_uring_vs_sync: f64,
    /// Uncached cells: the page-cache fast path costs nothing when io_uring with it keeps this
    /// share of io_uring without it.
    pub fast_path_on_vs_off: f64,
    /// The closed-loop knee: the smallest queue depth reaching this share of the best IOPS.
    pub knee_share_of_peak: f64,
    /// With one round per cell, two backends count as apart only when one leads by this factor.
    pub single_round_margin: f64,
    /// Below this many round pairs the report suggests more rounds for an interval that
    /// straddles 1.0.
    pub narrow_interval_pairs: usize,
    /// `--compare`: an IOPS drop beyond this share is a regression.
    pub regression_iops_drop: f64,
    /// `--compare`: a p99 rise beyond this share is a regression.
    pub regression_p99_rise: f64,
    /// Open loop: the knee of a latency-against-load curve is the first rate whose p99 is this
    /// many times the lowest rate's p99.
    pub open_loop_knee_p99_factor: f64,
    /// Open loop, the raw cells' target: our p99 at most this many times fio's at the same rate
    /// (at 50 % and 75 % of peak).
    pub open_loop_p99_vs_fio: f64,
}

/// The table.
pub const THRESHOLDS: Thresholds = Thresholds {
    hot_uring_vs_sync: 0.95,
    fast_path_on_vs_off: 0.97,
    knee_share_of_peak: 0.90,
    single_round_margin: 1.05,
    narrow_interval_pairs: 40,
    regression_iops_drop: 0.10,
    regression_p99_rise: 0.25,
    open_loop_knee_p99_factor: 2.0,
    open_loop_p99_vs_fio: 1.1,
};

// A margin below 1 would call every pair apart; a share above 1 could never be met.
const _: () = assert!(THRESHOLDS.single_round_margin > 1.0);
const _: () = assert!(THRESHOLDS.knee_share_of_peak > 0.0 && THRESHOLDS.knee_share_of_peak <= 1.0);
const _: () = assert!(THRESHOLDS.open_loop_knee_p99_factor > 1.0);
