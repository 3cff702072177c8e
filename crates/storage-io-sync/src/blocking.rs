//! [`BlockingBackend`]: a backend of your own from five blocking calls, run by the thread pool.
//!
//! Implement `open`, `read_at`, `write_at`, `datasync` and `len` (plus `close`, `fsync` where
//! the defaults do not fit) over whatever holds your data, and [`BlockingIo`] turns it into a
//! full [`StorageIo`](storage_io_core::StorageIo): worker threads run the calls, and the
//! thread pool's op table keeps the contract — tokens, the datasync barrier, append cursors,
//! short transfers continued, `EINTR` retried, buffers handed back. Directory calls
//! ([`Namespace`](storage_io_core::Namespace)) default to the real file system; implement them
//! on [`BlockingIo`]'s backend type with a wrapper where your names live elsewhere.

use std::fs::File;
use std::io;
use std::path::Path;

use storage_io_core::{DirectMode, OpenOptions, Result, StorageIoError};

/// Five blocking calls on files of your own kind; see the module docs. Every call may block;
/// each runs on a worker thread, one op per call (a call may be made from any worker).
pub trait BlockingBackend: Send + Sync + 'static {
    /// An open file.
    type File: Send + Sync + 'static;

    /// The backend's short name, as `capabilities().name` gives it.
    const NAME: &'static str = "blocking";

    /// Whether files may be opened for direct I/O (then [`std_file`](Self::std_file) gives
    /// their OS file, whose alignment the pool enforces).
    const DIRECT_IO: bool = false;

    /// Opens (or, as `options` say, creates or truncates) the file at `path`.
    fn open(&self, path: &Path, options: &OpenOptions) -> io::Result<Self::File>;

    /// Reads into `buf` at `offset`; returns the bytes read (0 at end of file). A short read
    /// is continued; `Interrupted`/`WouldBlock` are retried.
    fn read_at(&self, file: &Self::File, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes from `data` at `offset`; returns the bytes written. A short write is continued.
    fn write_at(&self, file: &Self::File, data: &[u8], offset: u64) -> io::Result<usize>;

    /// Makes every completed write of `file` durable.
    fn datasync(&self, file: &Self::File) -> io::Result<()>;

    /// The file's length in bytes.
    fn len(&self, file: &Self::File) -> io::Result<u64>;

    /// Opens like [`open`](Self::open) and says which I/O mode is in effect. The default:
    /// buffered (a request for direct I/O is noted as refused); errors keep their errno and
    /// name the path.
    fn open_with_mode(&self, path: &Path, options: &OpenOptions) -> Result<(Self::File, DirectMode)> {
        let file = self
            .open(path, options)
            .map_err(|e| StorageIoError::from_os_at("open", path, &e))?;
        let fallback_reason = options
            .direct
            .then(|| "this backend has no direct I/O".to_string());
        Ok((file, DirectMode::Buffered { fallback_reason }))
    }

    /// Makes the file's data and metadata durable. The default is [`datasync`](Self::datasync).
    fn fsync(&self, file: &Self::File) -> io::Result<()> {
        self.datasync(file)
    }

    /// Closes a file once no op uses it. The default drops it.
    fn close(&self, file: Self::File) -> io::Result<()> {
        drop(file);
        Ok(())
    }

    /// Takes an OS file (`register_fd`). The default refuses: open files by path.
    fn adopt(&self, file: File) -> io::Result<Self::File> {
        drop(file);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this backend opens its files by path: use open_file",
        ))
    }

    /// The OS file behind `file`, where there is one: the pool then enforces its direct-I/O
    /// alignment and answers buffered reads from the page cache at submit. The default: none.
    fn std_file<'a>(&self, file: &'a Self::File) -> Option<&'a File> {
        let _ = file;
        None
    }
}

/// Real files through the platform layer: what [`ThreadPoolStorageIo`](crate::ThreadPoolStorageIo)
/// runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFiles;

impl BlockingBackend for StdFiles {
    type File = File;
    const NAME: &'static str = "thread_pool";
    const DIRECT_IO: bool = storage_io_core::platform::DIRECT_IO;

    fn open(&self, path: &Path, options: &OpenOptions) -> io::Result<File> {
        storage_io_core::open_file(path, options)
            .map(|o| o.file)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
    /// [`storage_io_core::open_file`]: direct I/O where the file system takes it, else
    /// buffered with the reason.
    fn open_with_mode(&self, path: &Path, options: &OpenOptions) -> Result<(File, DirectMode)> {
        storage_io_core::open_file(path, options).map(|o| (o.file, o.mode))
    }
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        storage_io_core::platform::read_at(file, buf, offset)
    }
    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<usize> {
        storage_io_core::platform::write_at(file, data, offset)
    }
    /// `fdatasync` (macOS `F_FULLFSYNC`, Windows `FlushFileBuffers`), as the platform layer does it.
    fn datasync(&self, file: &File) -> io::Result<()> {
        storage_io_core::platform::datasync(file)
    }
    fn fsync(&self, file: &File) -> io::Result<()> {
        storage_io_core::platform::full_sync(file)
    }
    fn len(&self, file: &File) -> io::Result<u64> {
        file.metadata().map(|m| m.len())
    }
    fn adopt(&self, file: File) -> io::Result<File> {
        Ok(file)
    }
    fn std_file<'a>(&self, file: &'a File) -> Option<&'a File> {
        Some(file)
    }
}
