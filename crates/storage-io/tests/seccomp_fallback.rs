//! io_uring refused at run time, as Docker's default seccomp profile and
//! `kernel.io_uring_disabled = 2` refuse it: each test re-runs itself in a child process (this
//! test binary, `--exact` its own name, the role in [`ROLE`]) that installs a seccomp filter
//! answering `io_uring_setup` — or only `io_uring_enter`, after setup succeeded — with EPERM, then
//! drives every opener of the façade. Without `STORAGE_IO_REQUIRE_URING` they must fall back to
//! the thread pool, say why (in the log and on `Selection`) and work (the testkit's conformance
//! suite passes on the fallback); with `STORAGE_IO_REQUIRE_URING=1` each must refuse with an
//! error naming the variable and the reason. The child sets that variable itself: CI runs with
//! it set for every test.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use storage_io::scheduler::SchedulerConfig;
use storage_io::wal::WalConfig;
use storage_io::{AsyncFsConfig, BackendKind, IoConfig, StorageIo, UringStatus};
use storage_io_testkit::conformance::{self, ConformanceOptions};

/// The environment variable that makes a run of this binary the child: `setup` or `enter` (which
/// call the filter denies), then `:fallback` or `:require`.
const ROLE: &str = "STORAGE_IO_SECCOMP_CHILD";

/// The backend name the thread pool reports.
const THREAD_POOL: &str = "thread_pool";

#[test]
fn io_uring_setup_denied_every_opener_falls_back_to_the_thread_pool() {
    child_or_parent(
        "io_uring_setup_denied_every_opener_falls_back_to_the_thread_pool",
        Denied::Setup,
        false,
    );
}

#[test]
fn io_uring_enter_denied_after_setup_every_opener_falls_back_to_the_thread_pool() {
    child_or_parent(
        "io_uring_enter_denied_after_setup_every_opener_falls_back_to_the_thread_pool",
        Denied::Enter,
        false,
    );
}

#[test]
fn io_uring_setup_denied_with_require_uring_every_opener_refuses() {
    child_or_parent(
        "io_uring_setup_denied_with_require_uring_every_opener_refuses",
        Denied::Setup,
        true,
    );
}

#[test]
fn io_uring_enter_denied_with_require_uring_every_opener_refuses() {
    child_or_parent(
        "io_uring_enter_denied_with_require_uring_every_opener_refuses",
        Denied::Enter,
        true,
    );
}

/// Which system call the child's filter answers with EPERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    Setup,
    Enter,
}

impl Denied {
    fn syscall(self) -> i64 {
        match self {
            Denied::Setup => libc::SYS_io_uring_setup,
            Denied::Enter => libc::SYS_io_uring_enter,
        }
    }

    /// What the refusal's reason must name.
    fn call_name(self) -> &'static str {
        match self {
            Denied::Setup => "io_uring_setup",
            Denied::Enter => "io_uring_enter",
        }
    }
}

/// In the child (ROLE set), runs the checks; in the parent, re-runs this test in a child and
/// checks that it passed.
fn child_or_parent(test: &str, denied: Denied, require: bool) {
    if let Ok(role) = std::env::var(ROLE) {
        assert_eq!(
            role,
            format!("{denied:?}:{require}"),
            "the child runs the test it was started for"
        );
        return child(denied, require);
    }
    // The refusal is simulated on a kernel that has io_uring; without one there is nothing to
    // take away (the ordinary selection tests cover that machine).
    if let UringStatus::Unavailable { reason } = storage_io::uring_status() {
        let required = std::env::var("STORAGE_IO_REQUIRE_URING").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: io_uring required (STORAGE_IO_REQUIRE_URING=1) but {reason}"
        );
        eprintln!("SKIPPED {test}: io_uring is unavailable here already: {reason}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{denied:?}:{require}"))
        // Set explicitly either way: CI sets it for every test.
        .env("STORAGE_IO_REQUIRE_URING", if require { "1" } else { "0" })
        .env_remove("STORAGE_IO_BACKEND")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test}: the child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// Denies `denied`'s system call with EPERM in every thread of this process, now and later.
fn install_filter(denied: Denied) {
    let filter = SeccompFilter::new(
        BTreeMap::from([(denied.syscall(), vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter_all_threads(&program).unwrap();
}

fn child(denied: Denied, require: bool) {
    let log = Log::install();
    install_filter(denied);
    let name = denied.call_name();

    // The probe sees the refusal and names the call.
    let status = storage_io::uring_status();
    let UringStatus::Unavailable { reason } = &status else {
        panic!("with {name} denied, the probe must refuse io_uring, not say {status}");
    };
    assert!(
        reason.contains(name) && reason.contains("EPERM"),
        "the reason names the call: {reason}"
    );

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let io = IoConfig::default();
    if require {
        return every_opener_refuses(&io, dir.path(), name);
    }

    // open_backend
    let backend = storage_io::open_backend(&io).unwrap();
    assert_eq!(backend.name(), THREAD_POOL);
    drop(backend);

    // backend_factory: the Selection carries the reason, the probe's verdict and the kernel.
    let (factory, selection) = storage_io::backend_factory(&io).unwrap();
    assert_eq!(selection.kind, BackendKind::ThreadPool);
    assert!(
        selection.reason.contains(name) && selection.reason.contains("thread pool"),
        "{selection:?}"
    );
    assert!(selection.probe.contains(name), "{selection:?}");
    assert!(selection.kernel.starts_with("linux "), "{selection:?}");

    // open_wal: opens, commits and recovers on the fallback.
    let wal_dir = dir.path().join("wal");
    let wal_config = WalConfig {
        segment_size_bytes: 1 << 20,
        ..WalConfig::default()
    };
    {
        let (wal, _) = storage_io::open_wal(&wal_dir, wal_config.clone(), &io).unwrap();
        for i in 0..10u32 {
            wal.commit(&i.to_le_bytes()).unwrap();
        }
    }
    let (wal, _) = storage_io::open_wal(&wal_dir, wal_config, &io).unwrap();
    assert_eq!(wal.recovery_report().records, 10);
    drop(wal);

    // open_scheduler: a durable page write reads back.
    let sched =
        storage_io::open_scheduler(dir.path().join("pages"), SchedulerConfig::default(), &io).unwrap();
    let page = sched.schedule_allocate().recv().unwrap();
    let data = vec![0x5a_u8; SchedulerConfig::default().page_size];
    sched
        .schedule_write_durable(page, data.clone().into())
        .recv()
        .unwrap();
    assert_eq!(&sched.schedule_read(page).recv().unwrap()[..], &data[..]);
    sched.shutdown().unwrap();

    // open_async_fs: runs on the thread pool and does I/O.
    let fs = storage_io::open_async_fs(&AsyncFsConfig::default()).unwrap();
    assert_eq!(fs.backend(), THREAD_POOL);
    let file = storage_io::block_on(fs.create(dir.path().join("async.bin"))).unwrap();
    let (n, _) = storage_io::block_on(file.write_at(vec![7u8; 4096], 0));
    assert_eq!(n.unwrap(), 4096);
    storage_io::block_on(file.sync_data()).unwrap();
    let (n, buf) = storage_io::block_on(file.read_at(vec![0u8; 4096], 0));
    assert_eq!(n.unwrap(), 4096);
    assert!(buf.iter().all(|&b| b == 7));
    storage_io::block_on(file.close()).unwrap();
    fs.shutdown();

    // Every opener logged the fallback and why: the selection line (once per selection) and
    // each opener's own line.
    let lines = log.lines();
    let fallbacks = lines
        .iter()
        .filter(|l| l.contains("storage-io backend selected") && l.contains(THREAD_POOL) && l.contains(name))
        .count();
    assert!(
        fallbacks >= 5,
        "five openers, each selection logged with its reason: {lines:#?}"
    );
    for opener in [
        "wal backend selected",
        "scheduler backend selected",
        "async file system backend selected",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(opener) && l.contains(name)),
            "{opener} with the reason: {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("storage-io start-up") && l.contains("linux ") && l.contains(name)),
        "the start-up line names the kernel and the probe's verdict: {lines:#?}"
    );

    // The conformance suite passes on what the fallback builds.
    let options = ConformanceOptions {
        dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
        ..ConformanceOptions::default()
    };
    conformance::run_with(|| -> Box<dyn StorageIo> { factory(0).unwrap() }, &options);
}

/// With STORAGE_IO_REQUIRE_URING=1, every opener refuses the fallback with an error naming the
/// variable and the refused call.
fn every_opener_refuses(io: &IoConfig, dir: &std::path::Path, name: &str) {
    let check = |opener: &str, message: String| {
        assert!(
            message.contains("STORAGE_IO_REQUIRE_URING") && message.contains(name),
            "{opener}: the error names the variable and the reason: {message}"
        );
    };
    check(
        "open_backend",
        storage_io::open_backend(io)
            .err()
            .expect("open_backend refuses")
            .to_string(),
    );
    check(
        "backend_factory",
        storage_io::backend_factory(io)
            .err()
            .expect("backend_factory refuses")
            .to_string(),
    );
    check(
        "open_wal",
        storage_io::open_wal(dir.join("wal"), WalConfig::default(), io)
            .err()
            .expect("open_wal refuses")
            .to_string(),
    );
    check(
        "open_scheduler",
        storage_io::open_scheduler(dir.join("pages"), SchedulerConfig::default(), io)
            .expect_err("open_scheduler refuses")
            .to_string(),
    );
    check(
        "open_async_fs",
        storage_io::open_async_fs(&AsyncFsConfig::default())
            .expect_err("open_async_fs refuses")
            .to_string(),
    );
}

/// A `tracing` subscriber that keeps every event as one line (`message k=v …`), so the test can
/// read what the façade logged.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn install() -> Log {
        let log = Log::default();
        tracing::subscriber::set_global_default(log.clone()).unwrap();
        log
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Log {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
