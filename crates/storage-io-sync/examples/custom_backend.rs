//! A backend of your own: five blocking calls, and the thread pool makes them a full
//! `StorageIo` (tokens, the datasync barrier, append cursors, short transfers, buffers handed
//! back). This one keeps real files and counts the bytes it writes; put your own storage behind
//! the same five calls. `tests/custom_backend.rs` runs the conformance suite on it.
//!
//! Run with `cargo run -p storage-io-sync --example custom_backend`.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use storage_io_core::{IoConfig, OpenOptions, StorageIo};
use storage_io_sync::{BlockingBackend, BlockingIo};

/// Real files, with every byte written counted.
#[derive(Debug, Default)]
pub(crate) struct MeteredFiles {
    /// Bytes written so far.
    pub(crate) written: AtomicU64,
}

impl BlockingBackend for MeteredFiles {
    type File = File;

    fn open(&self, path: &Path, options: &OpenOptions) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .read(options.read)
            .write(options.write)
            .create(options.create)
            .create_new(options.create_new)
            .truncate(options.truncate)
            .open(path)
    }
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        storage_io_core::platform::read_at(file, buf, offset)
    }
    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<usize> {
        let n = storage_io_core::platform::write_at(file, data, offset)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn datasync(&self, file: &File) -> io::Result<()> {
        storage_io_core::platform::datasync(file)
    }
    fn len(&self, file: &File) -> io::Result<u64> {
        Ok(file.metadata()?.len())
    }
}

/// The backend, on the thread pool's workers.
pub(crate) fn backend(config: &IoConfig) -> storage_io_core::Result<BlockingIo<MeteredFiles>> {
    BlockingIo::with_backend(MeteredFiles::default(), config)
}

fn main() -> storage_io_core::Result<()> {
    let path = std::env::temp_dir().join(format!("custom-backend-{}.log", std::process::id()));
    let mut io = backend(&IoConfig::default())?;
    let fd = io.open_file(&path, &OpenOptions::create())?;
    io.submit_append(fd, b"hello from a backend of my own\n")?;
    io.submit_datasync(fd)?; // a barrier: covers the append above
    let mut done = Vec::new();
    io.wait_completions(&mut done, 2, None)?;
    for c in &done {
        c.result.clone()?;
    }
    io.deregister_fd(fd)?;
    println!(
        "{} completions; {} now holds {} bytes",
        done.len(),
        path.display(),
        std::fs::metadata(&path).map_or(0, |m| m.len())
    );
    let _ = std::fs::remove_file(&path);
    Ok(())
}
