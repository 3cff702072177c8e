//! Errors of open and namespace calls: `Os { what, errno }` naming the call and the path, with
//! the OS error printed once.
#![allow(clippy::unwrap_used)] // test set-up that fails should panic right there

use storage_io_core::Namespace;
use storage_io_core::{IoConfig, OpenOptions, StorageIo, StorageIoError};
use storage_io_sync::SyncStorageIo;

/// A regular file, so that paths "under" it fail with ENOTDIR.
fn file_in_tempdir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    (dir, file)
}

fn assert_names(err: &StorageIoError, what: &str, path: &std::path::Path) {
    let text = err.to_string();
    assert!(
        matches!(err, StorageIoError::Os { what: w, .. } if *w == what),
        "{what} should fail as Os {{ what: {what:?} }}: {err:?}"
    );
    let expected = format!("{what} {}: ", path.display());
    assert!(
        text.starts_with(&expected),
        "{text:?} should start with {expected:?}"
    );
    assert_eq!(text.matches("os error").count(), 1, "errno printed once: {text}");
}

#[test]
fn namespace_errors_name_the_call_and_the_path() {
    let (_dir, file) = file_in_tempdir();
    let mut io = SyncStorageIo::new(&IoConfig::default()).unwrap();
    let under = file.join("sub");

    let err = io.create_dir_all(&under).unwrap_err();
    assert_names(&err, "create_dir_all", &under);
    // ENOTDIR; Windows answers ERROR_ALREADY_EXISTS (183) for a file in the way.
    assert_eq!(err.errno(), if cfg!(windows) { 183 } else { 20 });

    let err = io.list_dir(&under).unwrap_err();
    assert_names(&err, "list_dir", &under);

    let missing = file.with_file_name("missing");
    let err = io.remove_file(&missing).unwrap_err();
    assert_names(&err, "remove_file", &missing);
    assert_eq!(err.errno(), 2); // ENOENT

    let err = io.sync_dir(&missing).unwrap_err();
    assert_names(&err, "sync_dir", &missing);
}

#[test]
fn open_errors_name_the_path_and_print_the_errno_once() {
    let (_dir, file) = file_in_tempdir();
    let mut io = SyncStorageIo::new(&IoConfig::default()).unwrap();
    let under = file.join("x");
    for options in [OpenOptions::default(), OpenOptions::create().with_direct(true)] {
        let err = io.open_file(&under, &options).unwrap_err();
        assert_names(&err, "open", &under);
        // Windows: ERROR_PATH_NOT_FOUND for a file in the way.
        let expected = if cfg!(windows) {
            "(os error 3)"
        } else {
            "Not a directory (os error 20)"
        };
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn io_errors_print_the_errno_once() {
    let err = StorageIoError::from_io(
        storage_io_core::OpKind::Datasync,
        &std::io::Error::from_raw_os_error(5),
    );
    assert_eq!(err.to_string().matches("os error").count(), 1, "{err}");
}

/// `max_files = usize::MAX` allocated an fd table of that many slots and aborted the process;
/// the backends that validate their config refuse it, and MemIo (which takes any config)
/// caps its table instead.
#[test]
fn max_files_usize_max_is_refused_or_capped_never_an_abort() {
    let config = IoConfig {
        max_files: usize::MAX,
        ..IoConfig::default()
    };
    let err = SyncStorageIo::new(&config).map(drop).unwrap_err();
    assert!(err.to_string().contains("max_files"), "{err}");
    let err = storage_io_sync::ThreadPoolStorageIo::new(&config)
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains("max_files"), "{err}");
    let mem = storage_io_testkit::memio::MemFs::new(1);
    let mut io = mem.backend_with(&config);
    io.open_file(std::path::Path::new("/m/f"), &OpenOptions::create())
        .unwrap();
}
