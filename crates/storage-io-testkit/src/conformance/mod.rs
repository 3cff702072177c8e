//! The conformance suite: one call checks the whole [`StorageIo`] contract against any backend.
//!
//! ```no_run
//! // In your backend crate's tests/conformance.rs:
//! use storage_io_core::StorageIo;
//! # mod my_backend { pub fn new() -> storage_io_testkit::memio::MemIo { storage_io_testkit::memio::MemFs::new(1).backend() } }
//! #[test]
//! fn my_backend_conformance() {
//!     // `my_backend::new()` stands for your backend's constructor.
//!     storage_io_testkit::conformance::run(|| -> Box<dyn StorageIo> { Box::new(my_backend::new()) });
//! }
//! ```
//!
//! Every case opens its files through the backend ([`StorageIo::open_file`]), so in-memory
//! backends run the suite too; the direct-I/O case needs real files and says so when it skips.
//! A failing case panics with the case's name and what the contract expected.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use storage_io_core::{
    AlignedBuf, InvalidArgument, IoBuf, IoCompletion, IoFd, IoToken, OpKind, OpenOptions, StorageIo,
    StorageIoError, open_file,
};

/// How long any wait for completions may take before the suite calls the backend stuck.
const STUCK_AFTER: Duration = Duration::from_secs(30);

/// Options of a conformance run.
#[derive(Debug, Clone)]
pub struct ConformanceOptions {
    /// Where real files are made; a fresh temporary directory is created inside it.
    /// Default: `STORAGE_IO_TEST_DIR` if set, else the system temporary directory.
    pub dir: Option<PathBuf>,
    /// Random op sequences checked against the in-memory model. Default 48
    /// (`STORAGE_IO_CONFORMANCE_CASES` overrides).
    pub model_cases: u32,
    /// Longest random op sequence. Default 160.
    pub model_max_ops: usize,
    /// Print a line per case to stderr. Default true.
    pub verbose: bool,
}

impl Default for ConformanceOptions {
    fn default() -> Self {
        ConformanceOptions {
            dir: std::env::var_os("STORAGE_IO_TEST_DIR").map(PathBuf::from),
            model_cases: std::env::var("STORAGE_IO_CONFORMANCE_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(48),
            model_max_ops: 160,
            verbose: true,
        }
    }
}

mod cases;
mod model;

use cases::*;
use model::random_ops_match_the_model;

/// The names of every case, in the order [`run`] runs them (the list behind
/// [`conformance_tests!`](crate::conformance_tests) too).
pub const CASES: &[&str] = CASE_TABLE_NAMES;

crate::conformance_tests!(@list table);

/// Runs every case against backends made by `make` (a fresh backend per case), with default
/// options. Panics on the first violation, naming the case. To see every failing case at once,
/// make one test per case with [`conformance_tests!`](crate::conformance_tests).
pub fn run<F>(make: F)
where
    F: Fn() -> Box<dyn StorageIo>,
{
    run_with(make, &ConformanceOptions::default());
}

/// Runs every case with `options`.
pub fn run_with<F>(make: F, options: &ConformanceOptions)
where
    F: Fn() -> Box<dyn StorageIo>,
{
    for name in CASES {
        run_case(name, &make, options);
    }
}

/// Runs the case called `name` (one of [`CASES`]) with `options`, in a temporary directory of
/// its own. Panics on a violation, naming the case, and on a name that is not a case.
pub fn run_case<F>(name: &str, make: F, options: &ConformanceOptions)
where
    F: Fn() -> Box<dyn StorageIo>,
{
    let Some((_, case)) = CASE_TABLE.iter().find(|(n, _)| *n == name) else {
        panic!("conformance: no case named {name:?}; the cases are {CASES:?}");
    };
    let tmp = match &options.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("conformance: cannot create a temporary directory (set STORAGE_IO_TEST_DIR)");
    let probe = make();
    let caps = probe.capabilities();
    drop(probe);
    assert!(
        caps.max_io_bytes >= MIN_MAX_IO_BYTES,
        "conformance: the suite needs max_io_bytes >= {MIN_MAX_IO_BYTES} (one direct-I/O page); {} has {}",
        caps.name,
        caps.max_io_bytes
    );
    let mut ctx = Ctx {
        make: &make,
        root: tmp.path().to_path_buf(),
        next: 0,
        options: options.clone(),
        backend: caps.name,
        max_io: caps.max_io_bytes,
    };
    let started = Instant::now();
    case(&mut ctx);
    if options.verbose {
        eprintln!(
            "conformance [{}] {name}: ok ({} ms)",
            ctx.backend,
            started.elapsed().as_millis()
        );
    }
}

/// One `#[test]` per conformance case, so that one failure does not hide the rest: put it in a
/// module of its own per backend (or configuration) in a test file. The backend expression is
/// a closure that makes a fresh `Box<dyn StorageIo>`; the options default to
/// [`ConformanceOptions::default`].
///
/// ```no_run
/// // In your backend crate's tests/conformance.rs:
/// # mod my_backend { pub fn new() -> storage_io_testkit::memio::MemIo { storage_io_testkit::memio::MemFs::new(1).backend() } }
/// mod my_backend_conformance {
///     use storage_io_core::StorageIo;
///     // `super::my_backend::new()` stands for your backend's constructor.
///     storage_io_testkit::conformance_tests!(|| -> Box<dyn StorageIo> {
///         Box::new(super::my_backend::new())
///     });
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    // The one list of cases, in run order, handed to the rule named after `@list`.
    (@list $($then:tt)*) => {
        $crate::conformance_tests!(@ $($then)* ;
            read_after_write,
            write_bytes_matches_a_copied_write,
            unique_tokens_across_op_kinds,
            write_datasync_returns_buffers_and_drains,
            datasync_completes_after_earlier_writes,
            append_assigns_offsets_in_order,
            bad_fd_is_refused_and_buffers_come_back,
            deregister_waits_for_in_flight_ops,
            errors_return_buffers_and_keep_errno,
            direct_io_alignment_is_enforced,
            eof_reads_are_short_successes,
            queue_full_is_reported_and_nothing_is_lost,
            wait_completions_returns_when_idle,
            stats_count_every_op,
            random_ops_match_the_model,
            alloc_buf_carries_io_and_outlives_the_backend,
            wait_waker_ends_a_wait,
            namespace_rename_and_metadata
        );
    };
    // Inside the testkit: the table `run_case` looks cases up in.
    (@table ; $($case:ident),*) => {
        const CASE_TABLE_NAMES: &[&str] = &[$(stringify!($case)),*];
        const CASE_TABLE: &[(&str, fn(&mut Ctx<'_>))] = &[$((stringify!($case), $case)),*];
    };
    (@tests $make:expr, $options:expr ; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(stringify!($case), $make, &$options);
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::conformance_tests!(@list tests $make, $crate::conformance::ConformanceOptions::default());
    };
    ($make:expr, $options:expr $(,)?) => {
        $crate::conformance_tests!(@list tests $make, $options);
    };
}

struct Ctx<'a> {
    make: &'a dyn Fn() -> Box<dyn StorageIo>,
    root: PathBuf,
    next: usize,
    options: ConformanceOptions,
    backend: &'static str,
    /// The backend's `max_io_bytes`: no case submits a larger transfer unless it tests the limit.
    max_io: usize,
}

impl Ctx<'_> {
    /// A fresh backend behind [`WithRoom`]: a submit the backend's queue cannot take yet waits
    /// for a completion and is retried, so the cases run at any queue depth.
    fn backend(&self) -> Box<dyn StorageIo> {
        Box::new(WithRoom::new((self.make)()))
    }

    /// A fresh backend as made, for the case that checks `QueueFull` itself.
    fn raw_backend(&self) -> Box<dyn StorageIo> {
        (self.make)()
    }

    /// `len`, or the backend's `max_io_bytes` if that is smaller.
    fn io_len(&self, len: usize) -> usize {
        len.min(self.max_io)
    }

    fn path(&mut self, name: &str) -> PathBuf {
        self.next += 1;
        self.root.join(format!("{}-{name}", self.next))
    }

    fn create(&mut self, io: &mut dyn StorageIo, name: &str) -> (IoFd, PathBuf) {
        let path = self.path(name);
        let fd = io
            .open_file(&path, &OpenOptions::create())
            .unwrap_or_else(|e| panic!("open_file({}) failed: {e}", path.display()));
        (fd, path)
    }
}

/// The smallest `max_io_bytes` the suite runs with: one 4 KiB direct-I/O page.
pub const MIN_MAX_IO_BYTES: usize = 4096;

/// A backend wrapper that makes room instead of answering `QueueFull`: it waits for one
/// completion of the backend (kept, and handed out first by the next poll or wait) and
/// submits again. Ops stay in submission order and every completion is delivered once, so the
/// contract checks hold at any queue depth; the wrapper only spares the cases the bookkeeping.
struct WithRoom {
    io: Box<dyn StorageIo>,
    kept: std::collections::VecDeque<IoCompletion>,
    scratch: Vec<IoCompletion>,
}

impl WithRoom {
    fn new(io: Box<dyn StorageIo>) -> Self {
        WithRoom {
            io,
            kept: std::collections::VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// Waits for at least one completion of the backend and keeps it.
    fn make_room(&mut self) {
        let deadline = Instant::now() + STUCK_AFTER;
        loop {
            self.io
                .wait_completions(&mut self.scratch, 1, Some(Duration::from_millis(200)))
                .expect("wait_completions failed while making room");
            if !self.scratch.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "backend stuck: queue full and nothing completed after {STUCK_AFTER:?}"
            );
        }
        self.kept.extend(self.scratch.drain(..));
    }

    fn retry<T>(
        &mut self,
        mut submit: impl FnMut(&mut dyn StorageIo) -> Result<T, StorageIoError>,
    ) -> Result<T, StorageIoError> {
        loop {
            match submit(self.io.as_mut()) {
                Err(StorageIoError::QueueFull { .. }) if self.io.pending_count() > 0 => self.make_room(),
                other => return other,
            }
        }
    }

    fn retry_buf(
        &mut self,
        mut buf: IoBuf,
        mut submit: impl FnMut(&mut dyn StorageIo, IoBuf) -> Result<IoToken, storage_io_core::SubmitError<IoBuf>>,
    ) -> Result<IoToken, storage_io_core::SubmitError<IoBuf>> {
        loop {
            match submit(self.io.as_mut(), buf) {
                Err(e)
                    if matches!(e.error, StorageIoError::QueueFull { .. }) && self.io.pending_count() > 0 =>
                {
                    buf = e.buf;
                    self.make_room();
                }
                other => return other,
            }
        }
    }
}

storage_io_core::forward_namespace!( WithRoom => io);

impl StorageIo for WithRoom {
    fn capabilities(&self) -> storage_io_core::Capabilities {
        self.io.capabilities()
    }
    fn name(&self) -> &'static str {
        self.io.name()
    }
    fn register_fd(&mut self, file: std::fs::File) -> storage_io_core::Result<IoFd> {
        self.io.register_fd(file)
    }
    fn deregister_fd(&mut self, fd: IoFd) -> storage_io_core::Result<()> {
        self.io.deregister_fd(fd)
    }
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> storage_io_core::Result<IoFd> {
        self.io.open_file(path, options)
    }
    fn open_file_with_mode(
        &mut self,
        path: &Path,
        options: &OpenOptions,
    ) -> storage_io_core::Result<storage_io_core::OpenedFd> {
        self.io.open_file_with_mode(path, options)
    }
    fn file_len(&mut self, fd: IoFd) -> storage_io_core::Result<u64> {
        self.io.file_len(fd)
    }
    fn alloc_buf(&mut self, len: usize) -> storage_io_core::Result<AlignedBuf> {
        self.io.alloc_buf(len)
    }
    fn submit_read(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
    ) -> Result<IoToken, storage_io_core::SubmitError<IoBuf>> {
        self.retry_buf(buf, |io, b| io.submit_read(fd, b, offset))
    }
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> storage_io_core::Result<IoToken> {
        self.retry(|io| io.submit_write(fd, data, offset))
    }
    fn submit_write_buf(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
    ) -> Result<IoToken, storage_io_core::SubmitError<IoBuf>> {
        self.retry_buf(buf, |io, b| io.submit_write_buf(fd, b, offset))
    }
    fn submit_write_bytes(
        &mut self,
        fd: IoFd,
        data: bytes::Bytes,
        offset: u64,
    ) -> storage_io_core::Result<IoToken> {
        self.retry(|io| io.submit_write_bytes(fd, data.clone(), offset))
    }
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> storage_io_core::Result<IoToken> {
        self.retry(|io| io.submit_append(fd, data))
    }
    fn submit_datasync(&mut self, fd: IoFd) -> storage_io_core::Result<IoToken> {
        self.retry(|io| io.submit_datasync(fd))
    }
    fn submit_fsync(&mut self, fd: IoFd) -> storage_io_core::Result<IoToken> {
        self.retry(|io| io.submit_fsync(fd))
    }
    fn flush(&mut self) -> storage_io_core::Result<usize> {
        self.io.flush()
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let kept = self.kept.len();
        out.extend(self.kept.drain(..));
        kept + self.io.poll_completions(out)
    }
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> storage_io_core::Result<usize> {
        let kept = self.kept.len();
        out.extend(self.kept.drain(..));
        if kept >= min || self.io.pending_count() == 0 {
            return Ok(kept + self.io.poll_completions(out));
        }
        Ok(kept + self.io.wait_completions(out, min - kept, timeout)?)
    }
    fn wait_waker(&mut self) -> Option<storage_io_core::WaitWaker> {
        self.io.wait_waker()
    }
    fn pending_count(&self) -> usize {
        self.io.pending_count() + self.kept.len()
    }
    fn stats(&self) -> &storage_io_core::IoStats {
        self.io.stats()
    }
}

/// How many ops of a burst of `wanted` fit in the backend's queue (leaving one slot spare).
fn burst(io: &dyn StorageIo, wanted: usize) -> usize {
    wanted
        .min(io.capabilities().max_in_flight.saturating_sub(1))
        .max(1)
}

/// Deterministic test bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits until nothing is pending, returning every completion in delivery order.
fn drain(io: &mut dyn StorageIo) -> Vec<IoCompletion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + STUCK_AFTER;
    while io.pending_count() > 0 {
        let want = io.pending_count();
        io.wait_completions(&mut out, want, Some(Duration::from_millis(200)))
            .expect("wait_completions failed");
        assert!(
            Instant::now() < deadline,
            "backend stuck: {} ops still pending after {STUCK_AFTER:?}",
            io.pending_count()
        );
    }
    io.poll_completions(&mut out);
    out
}

fn ok_bytes(c: &IoCompletion) -> usize {
    match &c.result {
        Ok(n) => *n,
        Err(e) => panic!("{} {} failed: {e}", c.op, c.token),
    }
}

/// Reads `len` bytes at `offset` and waits for them.
fn read_back(io: &mut dyn StorageIo, fd: IoFd, offset: u64, len: usize) -> Vec<u8> {
    let token = io
        .submit_read(fd, IoBuf::Vec(vec![0; len]), offset)
        .map_err(|e| e.error)
        .expect("submit_read");
    let done = drain(io);
    let c = done
        .into_iter()
        .find(|c| c.token == token)
        .expect("the read's completion");
    let n = ok_bytes(&c);
    let buf = c.buf.expect("a read hands its buffer back").into_vec();
    assert_eq!(buf.len(), n, "the returned buffer is truncated to the bytes read");
    buf
}
