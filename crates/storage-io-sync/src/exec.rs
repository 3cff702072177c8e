//! Blocking positional I/O that finishes short transfers and retries `EINTR`, over any
//! [`BlockingBackend`]: the one place the portable backends do their I/O.

use std::io;

use storage_io_core::{OpKind, StorageIoError};

use crate::blocking::BlockingBackend;

/// Reads until `buf` is full or end of file; returns the bytes read (short only at EOF).
pub(crate) fn read_full_at<B: BlockingBackend + ?Sized>(
    b: &B,
    file: &B::File,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize, StorageIoError> {
    let mut done = 0;
    while done < buf.len() {
        match b.read_at(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(StorageIoError::from_io(OpKind::Read, &e)),
        }
    }
    Ok(done)
}

/// Writes all of `data` at `offset`, continuing after short writes.
pub(crate) fn write_all_at<B: BlockingBackend + ?Sized>(
    b: &B,
    file: &B::File,
    data: &[u8],
    offset: u64,
    op: OpKind,
) -> Result<usize, StorageIoError> {
    let mut done = 0;
    while done < data.len() {
        match b.write_at(file, &data[done..], offset + done as u64) {
            // A write that makes no progress would loop forever; report it as an I/O error.
            Ok(0) => return Err(StorageIoError::os(op, EIO)),
            Ok(n) => done += n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(StorageIoError::from_io(op, &e)),
        }
    }
    Ok(done)
}

/// `fdatasync` (data) or `fsync` (data and metadata), retried on `EINTR`; per platform (macOS's
/// `F_FULLFSYNC`, Windows' `FlushFileBuffers`) as [`storage_io_core::platform`] does them.
pub(crate) fn sync<B: BlockingBackend + ?Sized>(
    b: &B,
    file: &B::File,
    op: OpKind,
) -> Result<usize, StorageIoError> {
    loop {
        let r = if op == OpKind::Fsync {
            b.fsync(file)
        } else {
            b.datasync(file)
        };
        match r {
            Ok(()) => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StorageIoError::from_io(op, &e)),
        }
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock)
}

const EIO: i32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking::StdFiles;
    use std::fs::File;

    #[test]
    fn read_stops_at_eof_and_reports_the_short_count() {
        let f = tempfile::tempfile().unwrap();
        write_all_at(&StdFiles, &f, b"hello", 0, OpKind::Write).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(read_full_at(&StdFiles, &f, &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(read_full_at(&StdFiles, &f, &mut buf, 100).unwrap(), 0);
    }

    #[test]
    fn errors_keep_errno_and_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let ro = File::open(&path).unwrap();
        let err = write_all_at(&StdFiles, &ro, b"y", 0, OpKind::Append).unwrap_err();
        // EBADF on a read-only fd; Windows says ERROR_ACCESS_DENIED on a read-only handle.
        let errno = if cfg!(windows) { 5 } else { 9 };
        assert_eq!(
            err,
            StorageIoError::os(OpKind::Append, errno),
            "a write to a read-only file"
        );
    }
}
