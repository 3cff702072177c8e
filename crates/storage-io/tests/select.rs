//! Auto-selection, the environment override and the forced "unavailable" paths.

#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io::{BackendKind, IoConfig, StorageIo, StorageIoError, UringStatus, select_backend};

fn available() -> UringStatus {
    UringStatus::Available {
        kernel: "6.18.0-test".into(),
        features: vec!["nodrop", "ext_arg"],
    }
}

fn unavailable() -> UringStatus {
    UringStatus::Unavailable {
        reason: "io_uring_setup is not permitted (EPERM): check sysctl kernel.io_uring_disabled".into(),
    }
}

#[test]
fn auto_picks_io_uring_when_the_probe_passes() {
    let s = select_backend(&IoConfig::default(), None, &available()).unwrap();
    assert_eq!(s.kind, BackendKind::IoUring);
    assert!(s.reason.contains("6.18.0-test"), "{}", s.reason);
}

#[test]
fn auto_fallback_to_thread_pool_names_the_reason() {
    for status in [unavailable(), UringStatus::NotCompiled] {
        let s = select_backend(&IoConfig::default(), None, &status).unwrap();
        assert_eq!(s.kind, BackendKind::ThreadPool);
        assert!(s.reason.contains("thread pool"), "{}", s.reason);
    }
    let s = select_backend(&IoConfig::default(), None, &unavailable()).unwrap();
    assert!(s.reason.contains("EPERM"), "the fallback says why: {}", s.reason);
}

#[test]
fn asking_for_io_uring_where_unavailable_is_an_error_not_a_fallback() {
    let cfg = IoConfig {
        backend: BackendKind::IoUring,
        ..IoConfig::default()
    };
    let err = select_backend(&cfg, None, &unavailable()).unwrap_err();
    assert!(matches!(err, StorageIoError::Unsupported { .. }));
    let text = err.to_string();
    assert!(
        text.contains("asked for by the config") && text.contains("EPERM"),
        "{text}"
    );
    let err = select_backend(&IoConfig::default(), Some("io_uring"), &UringStatus::NotCompiled).unwrap_err();
    assert!(err.to_string().contains("STORAGE_IO_BACKEND"), "{err}");
}

#[test]
fn env_override_beats_the_config_and_bad_values_are_errors() {
    let cfg = IoConfig {
        backend: BackendKind::IoUring,
        ..IoConfig::default()
    };
    let s = select_backend(&cfg, Some("sync"), &unavailable()).unwrap();
    assert_eq!(s.kind, BackendKind::Sync);
    assert!(s.reason.contains("STORAGE_IO_BACKEND"));
    let s = select_backend(&IoConfig::default(), Some("thread_pool"), &available()).unwrap();
    assert_eq!(s.kind, BackendKind::ThreadPool);
    let s = select_backend(&IoConfig::default(), Some("  "), &available()).unwrap();
    assert_eq!(s.kind, BackendKind::IoUring, "an empty override is no override");
    let err = select_backend(&IoConfig::default(), Some("spdk"), &available()).unwrap_err();
    assert!(err.to_string().contains("unknown backend"), "{err}");
}

#[test]
fn auto_open_backend_on_this_machine_probe() {
    let status = storage_io::uring_status();
    let io = storage_io::open_backend(&IoConfig::default()).unwrap();
    let required = std::env::var("STORAGE_IO_REQUIRE_URING").is_ok_and(|v| v == "1");
    let overridden = std::env::var("STORAGE_IO_BACKEND").is_ok();
    match status {
        UringStatus::Available { .. } if !overridden => assert_eq!(io.name(), "io_uring"),
        UringStatus::Available { .. } => {}
        other => {
            assert!(!required, "io_uring required in CI but {other}");
            eprintln!("SKIPPED part of auto_open_backend_on_this_machine_probe: {other}");
            assert_eq!(io.name(), "thread_pool");
        }
    }
}

#[test]
fn auto_factory_builds_one_working_backend_per_worker() {
    let (factory, selection) = storage_io::backend_factory(&IoConfig {
        queue_depth: 16,
        ..IoConfig::default()
    })
    .unwrap();
    assert!(!selection.reason.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<Box<dyn StorageIo>> = (0..3).map(|w| factory(w).unwrap()).collect();
    for (w, io) in workers.iter_mut().enumerate() {
        let fd = io
            .open_file(
                &dir.path().join(format!("w{w}")),
                &storage_io::OpenOptions::create(),
            )
            .unwrap();
        io.submit_append(fd, b"hello").unwrap();
        io.submit_datasync(fd).unwrap();
        let mut done = Vec::new();
        io.wait_completions(&mut done, 2, None).unwrap();
        assert!(done.iter().all(|c| c.is_ok()));
    }
}

#[test]
fn auto_backend_conformance() {
    storage_io_testkit::conformance::run_with(
        || storage_io::open_backend(&IoConfig::default()).unwrap(),
        &storage_io_testkit::conformance::ConformanceOptions {
            dir: Some(env!("CARGO_TARGET_TMPDIR").into()),
            model_cases: 16,
            ..Default::default()
        },
    );
}

#[test]
fn a_config_without_io_uring_names_the_thread_pool_and_is_never_a_fallback() {
    // What `enable_io_uring = false` did: `backend = thread_pool` says it, whatever the kernel
    // offers (and STORAGE_IO_BACKEND still overrides it).
    let cfg = IoConfig {
        backend: BackendKind::ThreadPool,
        ..IoConfig::default()
    };
    let s = select_backend(&cfg, None, &available()).unwrap();
    assert_eq!(s.kind, BackendKind::ThreadPool);
    assert!(s.reason.contains("asked for by the config"), "{}", s.reason);
    let s = select_backend(&cfg, Some("sync"), &available()).unwrap();
    assert_eq!(s.kind, BackendKind::Sync);
    let err = serde_json::from_str::<IoConfig>(r#"{"enable_io_uring": false}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn selection_exposes_the_kernel_and_the_probe_verdict() {
    let s = select_backend(&IoConfig::default(), None, &available()).unwrap();
    assert!(s.kernel.starts_with(std::env::consts::OS), "{}", s.kernel);
    assert!(
        s.probe.contains("nodrop, ext_arg"),
        "the features found: {}",
        s.probe
    );
    let s = select_backend(&IoConfig::default(), None, &unavailable()).unwrap();
    assert!(s.probe.contains("EPERM"), "why it was refused: {}", s.probe);
    let s = select_backend(&IoConfig::default(), None, &UringStatus::NotCompiled).unwrap();
    assert!(s.probe.contains("not compiled in"), "{}", s.probe);
}
