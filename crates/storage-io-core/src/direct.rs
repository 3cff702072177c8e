//! Opening files for direct I/O, with an honest fallback, and checking requests against a
//! file's alignment.
//!
//! The OS calls themselves (`O_DIRECT`, `F_NOCACHE`, `FILE_FLAG_NO_BUFFERING`, `F_GETFL`) are in
//! [`crate::platform`].

use std::fs::File;
use std::path::Path;

use crate::error::{InvalidArgument, Result, StorageIoError};
use crate::op::OpKind;

/// How to open a file through [`open_file`] or [`StorageIo::open_file`](crate::StorageIo::open_file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OpenOptions {
    /// Open for reading. Default true.
    pub read: bool,
    /// Open for writing. Default true.
    pub write: bool,
    /// Create the file if it does not exist. Default false.
    pub create: bool,
    /// Fail if the file exists (implies create). Default false.
    pub create_new: bool,
    /// Truncate to zero length on open. Default false.
    pub truncate: bool,
    /// Ask for direct I/O (bypass the page cache). Falls back to buffered where the file system
    /// refuses, with a warning. Default false.
    pub direct: bool,
    /// Open with `O_DSYNC`: every write is durable (data, and the metadata needed to read it
    /// back) when it completes, so no datasync is needed after it. Kept when direct I/O falls
    /// back to buffered. A backend that opens its own files (an in-memory one) must honour it.
    /// Default false.
    pub dsync: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read: true,
            write: true,
            create: false,
            create_new: false,
            truncate: false,
            direct: false,
            dsync: false,
        }
    }
}

impl OpenOptions {
    /// Read and write, creating the file if missing.
    pub fn create() -> Self {
        OpenOptions {
            create: true,
            ..OpenOptions::default()
        }
    }

    /// Read only.
    pub fn read_only() -> Self {
        OpenOptions {
            write: false,
            ..OpenOptions::default()
        }
    }

    /// The same options with direct I/O asked for (or not).
    pub fn with_direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// The same options with `O_DSYNC` asked for (or not): writes are durable when they complete.
    pub fn with_dsync(mut self, dsync: bool) -> Self {
        self.dsync = dsync;
        self
    }

    /// The same options with truncation on open (or not).
    pub fn with_truncate(mut self, truncate: bool) -> Self {
        self.truncate = truncate;
        self
    }

    fn std_options(&self) -> std::fs::OpenOptions {
        let mut o = std::fs::OpenOptions::new();
        o.read(self.read)
            .write(self.write)
            .create(self.create)
            .create_new(self.create_new)
            .truncate(self.truncate);
        if self.dsync {
            crate::platform::add_dsync_flag(&mut o);
        }
        o
    }
}

/// Whether a file ended up with direct I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectMode {
    /// Direct I/O granted; every request must be aligned to `align` bytes.
    Direct {
        /// The alignment requests must keep.
        align: usize,
    },
    /// Buffered I/O (the page cache), because it was asked for or because direct I/O was refused.
    Buffered {
        /// Why direct I/O is not in effect; `None` when it was not asked for.
        fallback_reason: Option<String>,
    },
}

impl DirectMode {
    /// True when direct I/O is in effect.
    pub fn is_direct(&self) -> bool {
        matches!(self, DirectMode::Direct { .. })
    }
}

/// A file opened by [`open_file`], with the I/O mode actually in effect.
#[derive(Debug)]
pub struct OpenedFile {
    /// The open file.
    pub file: File,
    /// Direct or buffered, and why.
    pub mode: DirectMode,
}

/// Opens `path`. With `options.direct`, tries `O_DIRECT` first; where the file system refuses it
/// (tmpfs answers `EINVAL`) or the platform lacks it, opens buffered, logs a warning, and says so
/// in [`OpenedFile::mode`].
///
/// ```
/// use storage_io_core::{open_file, OpenOptions};
/// let dir = tempfile::tempdir().unwrap();
/// let opened = open_file(&dir.path().join("data"), &OpenOptions::create().with_direct(true)).unwrap();
/// println!("direct I/O in effect: {}", opened.mode.is_direct());
/// ```
pub fn open_file(path: &Path, options: &OpenOptions) -> Result<OpenedFile> {
    open_file_via(path, options, open_direct)
}

/// [`open_file`] with the `O_DIRECT` open passed in, so that tests can play a file system that
/// refuses direct I/O.
fn open_file_via(
    path: &Path,
    options: &OpenOptions,
    open_direct: impl Fn(&Path, &OpenOptions) -> std::io::Result<File>,
) -> Result<OpenedFile> {
    let open_err = |e: std::io::Error| {
        tracing::debug!(path = %path.display(), error = %e, "open failed");
        StorageIoError::from_os_at("open", path, &e)
    };
    if !options.direct {
        let file = options.std_options().open(path).map_err(open_err)?;
        return Ok(OpenedFile {
            file,
            mode: DirectMode::Buffered {
                fallback_reason: None,
            },
        });
    }
    match open_direct(path, options) {
        Ok(file) => {
            let align = direct_alignment(&file).unwrap_or(crate::buf::DEFAULT_ALIGNMENT);
            Ok(OpenedFile {
                file,
                mode: DirectMode::Direct { align },
            })
        }
        Err(e) if e.raw_os_error() == Some(EINVAL) || e.kind() == std::io::ErrorKind::Unsupported => {
            let reason = format!("the file system refused direct I/O ({e}); using buffered I/O");
            tracing::warn!(path = %path.display(), "{reason}");
            // The kernel checks O_EXCL before O_DIRECT and may have created the file before
            // refusing (ramfs, tmpfs before 6.6): `create_new` was honoured by that attempt (it
            // would have failed with EEXIST otherwise), so the retry opens the file it created
            // — or creates it — without O_EXCL, leaving exactly one file.
            let buffered = OpenOptions {
                create: options.create || options.create_new,
                create_new: false,
                ..options.clone()
            };
            let file = buffered.std_options().open(path).map_err(open_err)?;
            Ok(OpenedFile {
                file,
                mode: DirectMode::Buffered {
                    fallback_reason: Some(reason),
                },
            })
        }
        Err(e) => Err(open_err(e)),
    }
}

const EINVAL: i32 = 22;

/// The direct-I/O open, per platform (`O_DIRECT`, `F_NOCACHE`, `FILE_FLAG_NO_BUFFERING`): see
/// [`crate::platform`].
fn open_direct(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    crate::platform::open_direct(&mut options.std_options(), options.dsync, path)
}

/// The alignment a file's requests must keep: `Some(4096)` when it was opened with direct I/O
/// (the conservative logical-block size) on Linux, FreeBSD and Windows, `None` for buffered
/// files and on macOS (`F_NOCACHE` needs no alignment and cannot be read back).
pub fn direct_alignment(file: &File) -> Option<usize> {
    crate::platform::is_direct(file).then_some(crate::buf::DEFAULT_ALIGNMENT)
}

/// Checks one transfer before a backend accepts it: the length against `max_io_bytes`, the end
/// offset against overflow, and — for a direct-I/O file (`align` is `Some`) — that offset, length
/// and buffer address are multiples of the alignment.
pub fn validate_transfer(
    align: Option<usize>,
    offset: u64,
    len: usize,
    buf_addr: usize,
    max_io_bytes: usize,
) -> Result<()> {
    if len > max_io_bytes {
        return Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge {
            len,
            max: max_io_bytes,
        }));
    }
    let end_ok = offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= i64::MAX as u64);
    if !end_ok {
        return Err(StorageIoError::InvalidArgument(InvalidArgument::OffsetOverflow {
            offset,
            len,
        }));
    }
    if let Some(align) = align {
        let a = align as u64;
        if !offset.is_multiple_of(a)
            || !(len as u64).is_multiple_of(a)
            || !(buf_addr as u64).is_multiple_of(a)
        {
            return Err(StorageIoError::InvalidArgument(InvalidArgument::Misaligned {
                offset,
                len,
                buf_addr,
                align,
            }));
        }
    }
    Ok(())
}

/// Plans one write on a file whose append cursor is `cursor`: `offset` = `Some` for a positional
/// write, `None` for an append at the cursor. Validates the transfer (see [`validate_transfer`]),
/// then moves the cursor past the write when it is an append or ends beyond it — at submit time,
/// so appends in flight never overlap, and an append that fails after it was accepted leaves a
/// hole rather than letting a later append land on top of it. The cursor must move only for a
/// write the backend accepts: a backend that can still refuse the submit after planning (a full
/// ring) plans on a copy of the cursor and stores it once the write is accepted. Returns the op
/// kind and the offset to write at.
pub fn plan_write(
    cursor: &mut u64,
    align: Option<usize>,
    offset: Option<u64>,
    data: &[u8],
    max_io_bytes: usize,
) -> Result<(OpKind, u64)> {
    let (op, offset) = match offset {
        Some(o) => (OpKind::Write, o),
        None => (OpKind::Append, *cursor),
    };
    validate_transfer(align, offset, data.len(), data.as_ptr() as usize, max_io_bytes)?;
    let end = offset + data.len() as u64;
    if op == OpKind::Append || end > *cursor {
        *cursor = end;
    }
    Ok((op, offset))
}

/// What a backend learns about a file when it is registered: its length (the append cursor's
/// start) and the direct-I/O alignment it requires, if any.
pub fn file_facts(file: &File) -> Result<(u64, Option<usize>)> {
    Ok((file_len_of(file)?, direct_alignment(file)))
}

/// The current length of an open file (an `fstat`), as every real-file backend's `file_len`.
pub fn file_len_of(file: &File) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| StorageIoError::from_os("fstat", &e))
}

/// Whether the file system holding `path` is one known to make an `O_DIRECT | O_DSYNC` write
/// durable when it completes, however it was submitted (pwrite, io_uring, libaio): ext4, XFS
/// and btrfs. Elsewhere a caller that needs durability should add an fdatasync behind such
/// writes. Measured on a FUSE file system (Linux 6.18): `O_DIRECT | O_DSYNC` writes submitted
/// through io_uring or libaio reached the daemon with no sync at all, while the same writes
/// through pwrite were synced. `Ok(false)` where the file system cannot be asked.
///
/// ```
/// // The build directory is on a real disk file system here; a trusted one answers true.
/// let trusted = storage_io_core::dsync_trusted_at(std::path::Path::new(".")).unwrap();
/// # let _ = trusted;
/// ```
pub fn dsync_trusted_at(path: &Path) -> std::io::Result<bool> {
    fs_magic(path).map(|m| m.is_some_and(dsync_trusted_magic))
}

/// Whether a file system, by its `statfs` magic number, honours `O_DSYNC` on direct writes
/// submitted asynchronously (see [`dsync_trusted_at`]).
pub fn dsync_trusted_magic(magic: i64) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    matches!(magic, EXT4 | XFS | BTRFS)
}

/// The `statfs` magic number of the file system holding `path`.
#[cfg(target_os = "linux")]
fn fs_magic(path: &Path) -> std::io::Result<Option<i64>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: `statfs` fills `buf`, a plain C struct for which all-zero bytes are a valid
    // value; `c` is a NUL-terminated path that lives for the whole call.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `buf` is a valid, writable `statfs` and nothing is kept after the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some(buf.f_type as i64))
}

/// Elsewhere the file system is not asked: nothing is trusted. A path the OS does not know is
/// an error here as it is from `statfs` on Linux, so a backend with a file system of its own (an
/// in-memory one) is told the same on every platform.
#[cfg(not(target_os = "linux"))]
fn fs_magic(path: &Path) -> std::io::Result<Option<i64>> {
    std::fs::metadata(path).map(|_| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file system like ramfs (or tmpfs before Linux 6.6): an `O_CREAT` open with `O_DIRECT`
    /// creates the file, then refuses direct I/O with `EINVAL`.
    fn refusing_direct_after_creating(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
        if options.create || options.create_new {
            options.std_options().open(path)?;
        }
        Err(std::io::Error::from_raw_os_error(EINVAL))
    }

    /// The same on a real ramfs, where the test may mount one (root); skipped loudly otherwise.
    #[cfg(target_os = "linux")] // mounts a Linux ramfs
    #[test]
    fn ramfs_create_new_direct_falls_back_and_leaves_one_file() {
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "SKIPPED ramfs_create_new_direct_falls_back_and_leaves_one_file: cannot mount a ramfs here (needs root)"
            );
            return;
        }
        let _unmount = Unmount(dir.path());
        let path = dir.path().join("new");
        let options = OpenOptions {
            create_new: true,
            ..OpenOptions::default().with_direct(true)
        };
        let opened = open_file(&path, &options).expect("buffered fallback on ramfs");
        assert!(!opened.mode.is_direct(), "ramfs has no O_DIRECT");
        drop(opened);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "exactly one file"
        );
    }

    #[test]
    fn create_new_direct_on_a_fs_refusing_o_direct_falls_back_and_leaves_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        let options = OpenOptions {
            create_new: true,
            ..OpenOptions::default().with_direct(true)
        };
        let opened = open_file_via(&path, &options, refusing_direct_after_creating)
            .expect("the buffered fallback opens the file the refused open created");
        assert!(!opened.mode.is_direct());
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "exactly one file");
        // create_new still refuses a file that existed before the call.
        let err = open_file_via(&path, &options, refusing_direct_after_creating)
            .map(drop)
            .unwrap_err();
        // EEXIST; Windows says ERROR_FILE_EXISTS.
        assert_eq!(err.errno(), if cfg!(windows) { 80 } else { 17 }, "{err}");
    }

    #[test]
    fn o_dsync_is_trusted_on_ext4_xfs_and_btrfs_only() {
        for magic in [0xEF53, 0x5846_5342, 0x9123_683E] {
            assert!(dsync_trusted_magic(magic), "{magic:#x}");
        }
        // FUSE, tmpfs, NFS, overlayfs.
        for magic in [0x6573_5546, 0x0102_1994, 0x6969, 0x794C_7630] {
            assert!(!dsync_trusted_magic(magic), "{magic:#x}");
        }
    }

    #[cfg(target_os = "linux")] // only Linux asks the file system (statfs); elsewhere nothing is trusted
    #[test]
    fn the_file_system_of_a_path_is_asked() {
        // /proc is procfs: not a disk file system, never trusted.
        assert!(!dsync_trusted_at(Path::new("/proc")).unwrap());
        assert!(dsync_trusted_at(Path::new("/no/such/dir")).is_err());
    }

    /// The WAL reads an error as "an in-memory file system of the backend's own", on every
    /// platform (on Windows this said Ok(false), so the WAL datasynced behind MemIo's direct
    /// writes there).
    #[test]
    fn a_directory_the_os_does_not_know_is_an_error_everywhere() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(dsync_trusted_at(&tmp.path().join("no-such-dir")).is_err());
        assert!(dsync_trusted_at(tmp.path()).is_ok());
    }

    #[test]
    fn plan_write_moves_the_cursor_for_appends_and_extending_writes() {
        let mut cursor = 10;
        assert_eq!(
            plan_write(&mut cursor, None, None, b"abc", 100).unwrap(),
            (OpKind::Append, 10)
        );
        assert_eq!(cursor, 13);
        assert_eq!(
            plan_write(&mut cursor, None, Some(0), b"xy", 100).unwrap(),
            (OpKind::Write, 0)
        );
        assert_eq!(cursor, 13, "a write inside the file leaves the cursor");
        plan_write(&mut cursor, None, Some(20), b"z", 100).unwrap();
        assert_eq!(cursor, 21, "a write past the cursor moves it");
        assert!(plan_write(&mut cursor, Some(4096), None, b"odd", 100).is_err());
        assert_eq!(cursor, 21, "a refused write leaves the cursor");
    }

    #[test]
    fn validate_transfer_names_each_fault() {
        assert!(validate_transfer(None, 3, 5, 1, 1 << 20).is_ok());
        assert!(validate_transfer(Some(4096), 4096, 8192, 4096 * 3, 1 << 20).is_ok());
        for (off, len, addr) in [(1, 4096, 0), (0, 100, 0), (0, 4096, 8)] {
            assert!(matches!(
                validate_transfer(Some(4096), off, len, addr, 1 << 20),
                Err(StorageIoError::InvalidArgument(
                    InvalidArgument::Misaligned { .. }
                ))
            ));
        }
        assert!(matches!(
            validate_transfer(None, 0, 2 << 20, 0, 1 << 20),
            Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge { .. }))
        ));
        assert!(matches!(
            validate_transfer(None, u64::MAX - 1, 10, 0, 1 << 20),
            Err(StorageIoError::InvalidArgument(
                InvalidArgument::OffsetOverflow { .. }
            ))
        ));
    }

    #[test]
    fn buffered_open_reports_buffered_without_reason() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open_file(&dir.path().join("f"), &OpenOptions::create()).unwrap();
        assert_eq!(
            opened.mode,
            DirectMode::Buffered {
                fallback_reason: None
            }
        );
        assert_eq!(direct_alignment(&opened.file), None);
    }

    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    fn status_flags(file: &File) -> i32 {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL reads the status flags of a descriptor `file` keeps open; no pointers.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) }
    }

    // Only Linux and FreeBSD show O_DIRECT in F_GETFL (macOS uses F_NOCACHE, Windows handle flags).
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    #[test]
    fn dsync_is_set_on_buffered_and_direct_opens_and_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let plain = open_file(&dir.path().join("a"), &OpenOptions::create()).unwrap();
        assert_eq!(status_flags(&plain.file) & libc::O_DSYNC, 0);
        let buffered = open_file(&dir.path().join("b"), &OpenOptions::create().with_dsync(true)).unwrap();
        assert_ne!(status_flags(&buffered.file) & libc::O_DSYNC, 0);
        let direct = open_file(
            &dir.path().join("c"),
            &OpenOptions::create().with_direct(true).with_dsync(true),
        )
        .unwrap();
        // Granted or fallen back to buffered (tmpfs), the file keeps O_DSYNC.
        assert_ne!(status_flags(&direct.file) & libc::O_DSYNC, 0, "{:?}", direct.mode);
        assert_eq!(
            status_flags(&direct.file) & libc::O_DIRECT != 0,
            direct.mode.is_direct()
        );
    }

    #[test]
    fn direct_open_is_granted_or_falls_back_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open_file(&dir.path().join("f"), &OpenOptions::create().with_direct(true)).unwrap();
        match &opened.mode {
            // macOS cannot read F_NOCACHE back from an open file.
            DirectMode::Direct { align } if crate::platform::DIRECT_FLAG_READABLE => {
                assert_eq!(direct_alignment(&opened.file), Some(*align));
            }
            DirectMode::Direct { .. } => assert_eq!(direct_alignment(&opened.file), None),
            DirectMode::Buffered { fallback_reason } => {
                let reason = fallback_reason.as_deref().unwrap_or_default();
                assert!(reason.contains("refused direct I/O"), "{reason}");
                eprintln!(
                    "note: {} does not support O_DIRECT: {reason}",
                    dir.path().display()
                );
            }
        }
    }

    #[cfg(target_os = "linux")] // needs /dev/shm, a Linux tmpfs
    #[test]
    fn direct_open_on_tmpfs_falls_back_when_dev_shm_is_tmpfs() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("skipping: /dev/shm is missing, no tmpfs to test the fallback on");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let opened = open_file(&dir.path().join("f"), &OpenOptions::create().with_direct(true)).unwrap();
        // tmpfs refuses O_DIRECT on older kernels (EINVAL) and accepts it on newer ones; either
        // way the helper must give a usable file and say which mode is in effect.
        match opened.mode {
            DirectMode::Direct { .. } => assert!(direct_alignment(&opened.file).is_some()),
            DirectMode::Buffered { fallback_reason } => assert!(fallback_reason.is_some()),
        }
    }
}
