//! Config files at the façade's edge: `load_config` and `load_async_fs_config` read TOML and
//! JSON, apply the `STORAGE_IO_*` overrides, and name the file and the field that is wrong.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use storage_io::BackendKind;

#[test]
fn load_config_reads_toml_and_json_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("io.toml");
    std::fs::write(
        &toml,
        "io_workers = 3\npreallocate_appends = true\n[io]\nbackend = \"thread_pool\"\nsq_depth = 64\n",
    )
    .unwrap();
    let cfg = storage_io::load_async_fs_config(&toml).unwrap();
    assert_eq!(
        (
            cfg.io.backend,
            cfg.io_workers,
            cfg.io.sq_depth,
            cfg.preallocate_appends,
            cfg.io.queue_depth
        ),
        (BackendKind::ThreadPool, 3, 64, true, 128)
    );
    // The async settings are not the backend's: a backend config refuses them by name.
    let err = storage_io::load_config(&toml).unwrap_err().to_string();
    assert!(err.contains("unknown field") && err.contains("io.toml"), "{err}");
    let json = dir.path().join("io.json");
    std::fs::write(&json, r#"{"fixed_buffers": false, "buffer_pool_size": 16777216}"#).unwrap();
    let cfg = storage_io::load_async_fs_config(&json).unwrap_err().to_string();
    assert!(
        cfg.contains("fixed_buffers"),
        "backend fields live under io: {cfg}"
    );
    std::fs::write(
        &json,
        r#"{"io": {"fixed_buffers": false}, "buffer_pool_size": 16777216}"#,
    )
    .unwrap();
    let cfg = storage_io::load_async_fs_config(&json).unwrap();
    assert!(!cfg.io.fixed_buffers);
    assert_eq!(cfg.buffer_pool_size, 16 << 20);

    std::fs::write(&toml, "io_worker = 3\n").unwrap();
    let err = storage_io::load_config(&toml).unwrap_err().to_string();
    assert!(err.contains("io_worker") && err.contains("io.toml"), "{err}");
    std::fs::write(&toml, "queue_depth = 0\n").unwrap();
    let err = storage_io::load_config(&toml).unwrap_err().to_string();
    assert!(err.contains("queue_depth"), "{err}");
    let yaml = dir.path().join("io.yaml");
    std::fs::write(&yaml, "x").unwrap();
    assert!(
        storage_io::load_config(&yaml)
            .unwrap_err()
            .to_string()
            .contains(".toml or .json")
    );
    assert!(storage_io::load_config(dir.path().join("missing.toml")).is_err());
}

#[test]
fn config_file_errors_name_the_file() {
    let missing = "/no/such/dir/storage-io.toml";
    let text = storage_io::load_async_fs_config(missing).unwrap_err().to_string();
    assert!(text.contains(missing), "the error names no file: {text}");
    assert_eq!(text.matches("os error").count(), 1, "the errno once: {text}");
}
