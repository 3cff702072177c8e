//! The OS-specific file calls of storage-io, in one place: positional reads and writes, datasync
//! and fsync, the open flags for direct I/O and `O_DSYNC`, and directory sync. Every other crate
//! calls these instead of `std::os::unix` / `std::os::windows`, so a new platform is one module.
//!
//! | | Linux | FreeBSD | macOS | Windows |
//! |---|---|---|---|---|
//! | positional I/O | `pread`/`pwrite` | `pread`/`pwrite` | `pread`/`pwrite` | `seek_read`/`seek_write` (moves the handle's cursor, which nothing here uses) |
//! | [`datasync`] | `fdatasync` | `fdatasync` | `fcntl(F_FULLFSYNC)`, `fsync` where refused | `FlushFileBuffers` |
//! | [`full_sync`] | `fsync` | `fsync` | `fcntl(F_FULLFSYNC)`, `fsync` where refused | `FlushFileBuffers` |
//! | direct I/O | `O_DIRECT` | `O_DIRECT` | `fcntl(F_NOCACHE)` after open | `FILE_FLAG_NO_BUFFERING` |
//! | `dsync` | `O_DSYNC` | `O_DSYNC` | `O_DSYNC` | `FILE_FLAG_WRITE_THROUGH` |
//! | [`try_lock_advisory`] | `flock` | `flock` | `flock` | `LockFileEx` on one byte past any data |
//! | [`reserve_keep_size`] | `fallocate(FALLOC_FL_KEEP_SIZE)` | not supported | not supported | not supported |
//! | [`sync_dir`] | `fsync` of the directory | `fsync` of the directory | `F_FULLFSYNC` of the directory | nothing (see [`sync_dir`]) |

use std::fs::File;
use std::io;
use std::path::Path;

/// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
/// The caller finishes short reads.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        // seek_read moves the handle's cursor as a side effect; every op here is positional, so
        // the cursor is never relied on.
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

/// Writes up to `data.len()` bytes at `offset`; returns how many were written. The caller
/// finishes short writes (or uses [`write_all_at`]).
pub fn write_at(file: &File, data: &[u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_at(file, data, offset)
    }
    #[cfg(windows)]
    {
        // As in read_at: the cursor moves and is never relied on.
        std::os::windows::fs::FileExt::seek_write(file, data, offset)
    }
}

/// Writes all of `data` at `offset`, continuing after short writes and retrying `EINTR`; a write
/// that makes no progress is a `WriteZero` error.
pub fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        match write_at(file, data, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "positional write made no progress",
                ));
            }
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the file's data (and the metadata needed to read it back) durable: on stable storage,
/// not just handed to the drive.
///
/// - Linux, FreeBSD: `fdatasync`.
/// - macOS: `fsync` only hands the data to the drive, whose volatile cache may still lose it on
///   power loss, so this is `fcntl(F_FULLFSYNC)`, which also flushes the drive's cache (as
///   SQLite's `fullfsync`, PostgreSQL's `fsync_writethrough` and RocksDB do). It costs a cache
///   flush of the whole drive per call — milliseconds on an SSD rather than microseconds — so
///   batch datasyncs (group commit) there. Where the file system refuses it (some network and
///   FUSE file systems answer `ENOTSUP`/`EINVAL`), falls back to `fsync`, the best that file
///   system offers, and logs that once.
/// - Windows: `FlushFileBuffers` (std's `sync_data`), which flushes the drive's cache too.
pub fn datasync(file: &File) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        full_fsync(file)
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        file.sync_data()
    }
}

/// Makes the file's data and all its metadata durable: `fsync` (Linux, FreeBSD),
/// `fcntl(F_FULLFSYNC)` with the same fallback as [`datasync`] (macOS), `FlushFileBuffers`
/// (Windows).
pub fn full_sync(file: &File) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        full_fsync(file)
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        file.sync_all()
    }
}

/// `fcntl(F_FULLFSYNC)`, retried on `EINTR`; `fsync` where the file system refuses it.
#[cfg(target_vendor = "apple")]
fn full_fsync(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let fd = file.as_raw_fd();
    loop {
        // SAFETY: F_FULLFSYNC takes no pointer; `fd` stays open for as long as `file` lives.
        if unsafe { libc::fcntl(fd, libc::F_FULLFSYNC) } != -1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOTSUP | libc::EINVAL | libc::ENOTTY) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e,
                        "the file system refuses fcntl(F_FULLFSYNC); falling back to fsync, which may leave data in the drive's cache");
                }
                return retry_eintr(|| {
                    // SAFETY: fsync takes no pointer; `fd` stays open for as long as `file` lives.
                    unsafe { libc::fsync(fd) }
                });
            }
            _ => return Err(e),
        }
    }
}

#[cfg(target_vendor = "apple")]
fn retry_eintr(mut call: impl FnMut() -> libc::c_int) -> io::Result<()> {
    loop {
        if call() != -1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The running OS and its release, for start-up logs: `linux 6.18.0` (from
/// `/proc/sys/kernel/osrelease`), `freebsd 14.1-RELEASE` / `macos 24.1.0` (`uname`), `windows`.
/// The release is `unknown` where it cannot be read.
pub fn os_release() -> String {
    format!("{} {}", std::env::consts::OS, release())
}

#[cfg(target_os = "linux")]
fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn release() -> String {
    // SAFETY: `utsname` is a plain C struct of byte arrays, for which all-zero bytes are valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname that `uname` fills; nothing is kept after the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_string();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(not(unix))]
fn release() -> String {
    "(release not read)".to_string()
}

/// Makes the entries of directory `dir` durable (a file created, renamed or removed in it).
///
/// On Unix this is an `fsync` of the directory ([`full_sync`], so `F_FULLFSYNC` on macOS). On
/// Windows a directory cannot be opened for syncing (`FlushFileBuffers` needs a handle with
/// write access, which a directory does not give) and this is a no-op: NTFS journals its
/// metadata, so a create, rename or remove is in the log before the call that made it returns,
/// and `FlushFileBuffers` on a file in the directory flushes that log too. The WAL and the
/// scheduler datasync a new file before relying on its name, so on NTFS the name is durable by
/// then. (FAT/exFAT volumes have no such journal; they are not supported for durable data.)
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        full_sync(&File::open(dir)?)
    }
    #[cfg(windows)]
    {
        // Still say when the directory is not there, as the Unix call would.
        if std::fs::metadata(dir)?.is_dir() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))
        }
    }
}

/// Reserves disk space for the first `len` bytes of `file` without changing its size:
/// `fallocate(FALLOC_FL_KEEP_SIZE)` on Linux, retried on `EINTR`. `Unsupported` elsewhere;
/// `InvalidInput` for a length past `i64::MAX`.
pub fn reserve_keep_size(file: &File, len: u64) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let len = i64::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds i64::MAX"))?;
        if len == 0 {
            return Ok(());
        }
        loop {
            // SAFETY: fallocate reads no memory of ours; the fd is open for as long as `file` lives.
            if unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (file, len);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "reserving space without changing the size is only implemented on Linux",
        ))
    }
}

/// What [`try_lock_advisory`] found.
#[derive(Debug)]
pub enum AdvisoryLock {
    /// This handle holds the lock now, until it (and every duplicate of it) is closed.
    Held,
    /// Another holder has it (another process, or another open of the file in this one): the
    /// OS's answer (`EWOULDBLOCK`, `ERROR_LOCK_VIOLATION`).
    HeldElsewhere(io::Error),
    /// The file system refuses such locks (some network and FUSE ones): the caller goes on
    /// without one, and should say so.
    Unsupported(io::Error),
}

/// Takes an exclusive, advisory lock on `file` without waiting, one that does not stop other
/// handles from reading or writing the file: `flock(LOCK_EX | LOCK_NB)` on Unix (it belongs
/// to the open file description, so a second open in the same process is refused too);
/// `LockFileEx` on one byte at offset 2^64 − 2 on Windows, far past any data, as Windows byte
/// range locks are mandatory for the bytes they cover (the same trick SQLite uses). Released
/// when the last handle of this open closes, or the process ends.
pub fn try_lock_advisory(file: &File) -> io::Result<AdvisoryLock> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: flock takes no pointers; the fd is open for as long as `file` lives.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(AdvisoryLock::Held);
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // EWOULDBLOCK is EAGAIN on Linux.
                Some(libc::EWOULDBLOCK) => Ok(AdvisoryLock::HeldElsewhere(e)),
                Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL) => Ok(AdvisoryLock::Unsupported(e)),
                _ => Err(e),
            };
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawHandle;
        #[repr(C)]
        struct Overlapped {
            internal: usize,
            internal_high: usize,
            offset: u32,
            offset_high: u32,
            event: *mut std::ffi::c_void,
        }
        #[link(name = "kernel32")]
        unsafe extern "system" {
            fn LockFileEx(
                file: *mut std::ffi::c_void,
                flags: u32,
                reserved: u32,
                len_low: u32,
                len_high: u32,
                overlapped: *mut Overlapped,
            ) -> i32;
        }
        const LOCKFILE_FAIL_IMMEDIATELY: u32 = 0x1;
        const LOCKFILE_EXCLUSIVE_LOCK: u32 = 0x2;
        const ERROR_LOCK_VIOLATION: i32 = 33;
        const ERROR_NOT_SUPPORTED: i32 = 50;
        const ERROR_INVALID_FUNCTION: i32 = 1;
        let mut overlapped = Overlapped {
            internal: 0,
            internal_high: 0,
            offset: 0xFFFF_FFFE,
            offset_high: 0xFFFF_FFFF,
            event: std::ptr::null_mut(),
        };
        // SAFETY: the handle stays open while `file` lives; the handle is synchronous (std opens
        // without FILE_FLAG_OVERLAPPED), so the call completes before it returns and
        // `overlapped`, valid and writable, is not used after it.
        let ok = unsafe {
            LockFileEx(
                file.as_raw_handle(),
                LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                1,
                0,
                &mut overlapped,
            )
        };
        if ok != 0 {
            return Ok(AdvisoryLock::Held);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(ERROR_LOCK_VIOLATION) => Ok(AdvisoryLock::HeldElsewhere(e)),
            Some(ERROR_NOT_SUPPORTED | ERROR_INVALID_FUNCTION) => Ok(AdvisoryLock::Unsupported(e)),
            _ => Err(e),
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = file;
        Ok(AdvisoryLock::Unsupported(io::Error::new(
            io::ErrorKind::Unsupported,
            "no advisory file lock on this platform",
        )))
    }
}

/// Adds the open flag that makes every write durable when it completes: `O_DSYNC` on Unix,
/// `FILE_FLAG_WRITE_THROUGH` on Windows.
pub(crate) fn add_dsync_flag(o: &mut std::fs::OpenOptions) {
    custom_flags(o, dsync_flag());
}

#[cfg(unix)]
fn dsync_flag() -> i32 {
    libc::O_DSYNC
}

#[cfg(windows)]
fn dsync_flag() -> u32 {
    FILE_FLAG_WRITE_THROUGH
}

#[cfg(unix)]
fn custom_flags(o: &mut std::fs::OpenOptions, flags: i32) {
    std::os::unix::fs::OpenOptionsExt::custom_flags(o, flags);
}

#[cfg(windows)]
fn custom_flags(o: &mut std::fs::OpenOptions, flags: u32) {
    std::os::windows::fs::OpenOptionsExt::custom_flags(o, flags);
}

/// `FILE_FLAG_WRITE_THROUGH` (winbase.h): writes go through the cache to the disk before they
/// complete.
#[cfg(windows)]
const FILE_FLAG_WRITE_THROUGH: u32 = 0x8000_0000;

/// `FILE_FLAG_NO_BUFFERING` (winbase.h): no system cache; offsets, lengths and buffer addresses
/// must be multiples of the volume's sector size.
#[cfg(windows)]
const FILE_FLAG_NO_BUFFERING: u32 = 0x2000_0000;

/// Whether this platform has a direct-I/O open ([`crate::open_file`] with `direct`); where it
/// does not, such an open falls back to buffered I/O with a reason.
pub const DIRECT_IO: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_vendor = "apple",
    windows
));

/// Opens `o` (already set up, with the dsync flag when asked) for direct I/O:
/// `O_DIRECT` on Linux and FreeBSD, `FILE_FLAG_NO_BUFFERING` on Windows, `F_NOCACHE` set after
/// the open on macOS. `Unsupported` elsewhere; the file system's refusal (`EINVAL`) as it comes.
pub(crate) fn open_direct(o: &mut std::fs::OpenOptions, dsync: bool, path: &Path) -> io::Result<File> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let extra = if dsync { libc::O_DSYNC } else { 0 };
        custom_flags(o, libc::O_DIRECT | extra);
        o.open(path)
    }
    #[cfg(target_vendor = "apple")]
    {
        use std::os::fd::AsRawFd;
        let _ = dsync; // already among `o`'s flags
        let file = o.open(path)?;
        // SAFETY: F_NOCACHE takes an int argument, no pointer; the fd is open while `file` lives.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }
    #[cfg(windows)]
    {
        let extra = if dsync { FILE_FLAG_WRITE_THROUGH } else { 0 };
        custom_flags(o, FILE_FLAG_NO_BUFFERING | extra);
        o.open(path)
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_vendor = "apple",
        windows
    )))]
    {
        let _ = (o, dsync, path);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "direct I/O is not available on this platform",
        ))
    }
}

/// Whether [`is_direct`] can read the direct-I/O flag back from an open file (not on macOS).
#[cfg(test)]
pub(crate) const DIRECT_FLAG_READABLE: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    windows
));

/// Whether `file` was opened for direct I/O with an alignment rule the OS enforces: `O_DIRECT`
/// in `F_GETFL` on Linux and FreeBSD, `FILE_NO_INTERMEDIATE_BUFFERING` in the handle's mode
/// (`NtQueryInformationFile(FileModeInformation)`) on Windows. macOS's `F_NOCACHE` imposes no
/// alignment and cannot be read back: false there.
pub(crate) fn is_direct(file: &File) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL only reads the status flags of a descriptor that `file` keeps open for
        // the whole call; it takes no pointers.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        flags >= 0 && flags & libc::O_DIRECT != 0
    }
    #[cfg(windows)]
    {
        windows_mode(file).is_some_and(|mode| mode & FILE_NO_INTERMEDIATE_BUFFERING != 0)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd", windows)))]
    {
        let _ = file;
        false
    }
}

/// `FILE_NO_INTERMEDIATE_BUFFERING` (ntifs.h): the handle was opened with
/// `FILE_FLAG_NO_BUFFERING`.
#[cfg(windows)]
const FILE_NO_INTERMEDIATE_BUFFERING: u32 = 0x0000_0008;

/// The handle's mode flags (`FILE_MODE_INFORMATION`), or `None` when ntdll will not say.
#[cfg(windows)]
fn windows_mode(file: &File) -> Option<u32> {
    use std::os::windows::io::AsRawHandle;
    #[repr(C)]
    struct IoStatusBlock {
        status: usize,
        information: usize,
    }
    #[link(name = "ntdll")]
    unsafe extern "system" {
        fn NtQueryInformationFile(
            handle: *mut std::ffi::c_void,
            io_status: *mut IoStatusBlock,
            info: *mut std::ffi::c_void,
            len: u32,
            class: u32,
        ) -> i32;
    }
    const FILE_MODE_INFORMATION_CLASS: u32 = 16;
    let mut status = IoStatusBlock {
        status: 0,
        information: 0,
    };
    let mut mode: u32 = 0;
    // SAFETY: the handle stays open while `file` lives; `status` and `mode` are valid, writable
    // and as large as the call is told (FILE_MODE_INFORMATION is one ULONG); nothing is kept.
    let rc = unsafe {
        NtQueryInformationFile(
            file.as_raw_handle(),
            &mut status,
            std::ptr::from_mut(&mut mode).cast(),
            4,
            FILE_MODE_INFORMATION_CLASS,
        )
    };
    (rc >= 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_writes_and_reads_meet_and_syncs_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        write_all_at(&file, b"world", 6).unwrap();
        write_all_at(&file, b"hello ", 0).unwrap();
        let mut buf = [0u8; 16];
        let n = read_at(&file, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"hello world");
        assert_eq!(read_at(&file, &mut buf, 11).unwrap(), 0);
        datasync(&file).unwrap();
        full_sync(&file).unwrap();
        sync_dir(dir.path()).unwrap();
        assert!(sync_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn an_advisory_lock_has_one_holder_and_leaves_the_file_readable_and_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let first = open();
        assert!(matches!(try_lock_advisory(&first).unwrap(), AdvisoryLock::Held));
        // Another open of the file, in this process as in another, is refused the lock...
        let second = open();
        assert!(matches!(
            try_lock_advisory(&second).unwrap(),
            AdvisoryLock::HeldElsewhere(_)
        ));
        // ...but reads and writes it as usual.
        write_all_at(&second, b"data", 0).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(read_at(&first, &mut buf, 0).unwrap(), 4);
        assert_eq!(&buf, b"data");
        drop(first);
        assert!(matches!(try_lock_advisory(&second).unwrap(), AdvisoryLock::Held));
    }

    #[test]
    fn os_release_names_the_os_and_a_release() {
        let r = os_release();
        assert!(r.starts_with(std::env::consts::OS), "{r}");
        assert!(r.len() > std::env::consts::OS.len() + 1, "{r}");
    }
}
