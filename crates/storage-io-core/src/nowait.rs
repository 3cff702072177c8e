//! Buffered reads answered from the page cache on the caller's thread, without blocking:
//! `preadv2(..., RWF_NOWAIT)`, and the per-file estimate ([`NowaitGate`]) that decides whether
//! an attempt is worth its system call.
//!
//! A queued backend (io_uring, the thread pool) pays for every read it hands on: a ring round
//! trip or a worker wake-up. For data in the page cache that costs more than the copy itself,
//! so such a backend first tries the read in place with `RWF_NOWAIT`, which copies what is
//! cached and returns `EAGAIN` instead of waiting for the disk. A hit completes at submit, like
//! the inline backend; a miss costs one system call, and the gate stops trying on a file whose
//! reads keep missing (it probes again now and then).

#[cfg(unix)]
use std::os::fd::RawFd;
use std::time::Instant;

use crate::buf::IoBuf;
use crate::op::{IoCompletion, IoFd, IoToken, OpKind};
use crate::stats::IoStats;

/// A queued backend's attempt at a read from the page cache: tried when `enabled`, the file is
/// buffered (`align` is `None`) and its `gate` says so. Returns the outcome (already recorded in
/// the gate) and when the attempt started, or `None` when it was not tried.
#[cfg(unix)]
pub(crate) fn try_cached_read(
    enabled: bool,
    align: Option<usize>,
    gate: &mut NowaitGate,
    fd: RawFd,
    buf: &mut [u8],
    offset: u64,
) -> Option<(NowaitRead, Instant)> {
    if !enabled || align.is_some() || !gate.should_try() {
        return None;
    }
    let started = Instant::now();
    let outcome = read_nowait(fd, buf, offset);
    gate.record_outcome(outcome);
    Some((outcome, started))
}

/// [`try_cached_read`] on a `File`, on every platform: where there is no `RWF_NOWAIT` (off
/// Linux) the attempt answers `Unsupported` and the gate stops trying on the file.
pub(crate) fn try_cached_read_file(
    enabled: bool,
    align: Option<usize>,
    gate: &mut NowaitGate,
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> Option<(NowaitRead, Instant)> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        try_cached_read(enabled, align, gate, file.as_raw_fd(), buf, offset)
    }
    #[cfg(not(unix))]
    {
        let _ = (file, buf, offset);
        if !enabled || align.is_some() || !gate.should_try() {
            return None;
        }
        gate.record_outcome(NowaitRead::Unsupported);
        None
    }
}

/// The completion of a read the page cache answered whole at submit (`n` bytes of `buf`, read at
/// `offset` of `fd`), counted in `stats` as submitted and completed.
pub(crate) fn cached_read_completion(
    token: IoToken,
    stats: &mut IoStats,
    fd: IoFd,
    mut buf: IoBuf,
    offset: u64,
    n: usize,
    started: Instant,
) -> IoCompletion {
    let len = buf.len();
    buf.truncate(n);
    stats.record_submit(OpKind::Read);
    stats.record_complete(OpKind::Read, Ok(n), started.elapsed());
    IoCompletion {
        token,
        op: OpKind::Read,
        fd,
        offset,
        len_requested: len,
        result: Ok(n),
        buf: Some(buf),
    }
}

/// What one non-blocking read attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NowaitRead {
    /// The whole transfer was cached and copied, or the read started at or past the end of
    /// the file (`0`): the read is complete with this many bytes.
    Done(usize),
    /// Only this many bytes (fewer than asked, more than 0) were cached, or the file ends
    /// there: the rest must be read the blocking way.
    Partial(usize),
    /// Nothing was cached at the offset (`EAGAIN`): read it the blocking way.
    WouldBlock,
    /// The file or kernel does not support `RWF_NOWAIT` (or the attempt failed otherwise):
    /// read the blocking way, and stop trying on this file.
    Unsupported,
}

/// Reads into `buf` at `offset` from what the page cache holds, never waiting for the disk.
/// `fd` must be an open, readable descriptor (not `O_DIRECT`: direct I/O never hits the cache).
#[cfg(target_os = "linux")]
pub fn read_nowait(fd: RawFd, buf: &mut [u8], offset: u64) -> NowaitRead {
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return NowaitRead::Unsupported;
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        let n = preadv2_nowait(fd, &iov, offset);
        if n >= 0 {
            let n = n as usize;
            return if n == buf.len() || n == 0 {
                NowaitRead::Done(n)
            } else {
                NowaitRead::Partial(n)
            };
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return NowaitRead::WouldBlock,
            _ => return NowaitRead::Unsupported,
        }
    }
}

/// One `preadv2(fd, iov, 1, offset, RWF_NOWAIT)`, returning what the system call returns.
///
/// On 64-bit Linux this is the raw system call rather than glibc's wrapper: the wrapper is a
/// thread-cancellation point, and in a process with more than one thread (the thread pool's
/// workers, any server) it brackets every call with two atomic cancellation-state updates,
/// which on a cached 4 KiB read cost a few per cent of the whole read.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn preadv2_nowait(fd: RawFd, iov: &libc::iovec, offset: libc::off_t) -> isize {
    // The arguments follow the kernel's preadv2 ABI on 64-bit targets: (fd, vec, vlen, pos_l,
    // pos_h, flags), the whole offset in pos_l and 0 in pos_h.
    // SAFETY: `iov` is one live iovec over a buffer the caller holds mutably borrowed for the whole call; the kernel writes at most `iov_len` bytes there and keeps no pointer afterwards.
    let n = unsafe {
        libc::syscall(
            libc::SYS_preadv2,
            libc::c_long::from(fd),
            std::ptr::from_ref(iov),
            1 as libc::c_long,
            offset,
            0 as libc::c_long,
            libc::c_long::from(libc::RWF_NOWAIT),
        )
    };
    n as isize
}

/// On 32-bit Linux the offset is split across two registers: glibc's wrapper does that.
#[cfg(all(target_os = "linux", not(target_pointer_width = "64")))]
fn preadv2_nowait(fd: RawFd, iov: &libc::iovec, offset: libc::off_t) -> isize {
    // SAFETY: as above: one live iovec over a buffer the caller holds mutably borrowed; the
    // kernel keeps no pointer after the call returns.
    unsafe { libc::preadv2(fd, iov, 1, offset, libc::RWF_NOWAIT) }
}

/// Elsewhere there is no `RWF_NOWAIT`: every attempt says so.
#[cfg(all(unix, not(target_os = "linux")))]
pub fn read_nowait(_fd: RawFd, _buf: &mut [u8], _offset: u64) -> NowaitRead {
    NowaitRead::Unsupported
}

/// Whether to try a file's next read from the cache: a score that a hit raises by
/// [`NowaitGate::HIT_GAIN`] and a miss lowers by 1 (clamped), tried while it is not negative. A
/// hit saves a ring round trip or a wake-up (several µs here), a miss costs one system call
/// (under 1 µs), so attempts pay while more than about one in seven hits. Below that, one read
/// in [`NowaitGate::PROBE_EVERY`] still tries, so a file that becomes cached is noticed.
///
/// ```
/// use storage_io_core::backend_kit::NowaitGate;
/// let mut gate = NowaitGate::default();
/// assert!(gate.should_try());
/// for _ in 0..100 {
///     gate.record(false); // a cold file
/// }
/// let tries = (0..640).filter(|_| gate.should_try()).count();
/// assert_eq!(tries, 10); // one probe in 64
/// gate.record(true); // a probe hit: try every read again
/// assert!(gate.should_try());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NowaitGate {
    score: i16,
    skipped: u16,
    disabled: bool,
}

impl NowaitGate {
    /// What a hit adds to the score.
    pub const HIT_GAIN: i16 = 6;
    /// The score's bounds.
    pub const MAX_SCORE: i16 = 64;
    /// A file whose reads keep missing still gets one attempt in this many.
    pub const PROBE_EVERY: u16 = 64;

    /// True when the next read should be tried from the cache.
    pub fn should_try(&mut self) -> bool {
        if self.disabled {
            return false;
        }
        if self.score >= 0 {
            return true;
        }
        self.skipped += 1;
        if self.skipped >= Self::PROBE_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    /// Records an attempt's outcome: a hit (the whole read, or part of it, came from the cache)
    /// or a miss.
    pub fn record(&mut self, hit: bool) {
        self.score = if hit {
            // A probe that hits lets every read try again at once.
            self.score
                .max(-1)
                .saturating_add(Self::HIT_GAIN)
                .min(Self::MAX_SCORE)
        } else {
            (self.score - 1).max(-Self::MAX_SCORE)
        };
    }

    /// Records an attempt's outcome from what the read did; `Unsupported` stops every later
    /// attempt on this file.
    pub fn record_outcome(&mut self, outcome: NowaitRead) {
        match outcome {
            NowaitRead::Done(_) | NowaitRead::Partial(_) => self.record(true),
            NowaitRead::WouldBlock => self.record(false),
            NowaitRead::Unsupported => self.disabled = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_backs_off_a_cold_file_and_comes_back_when_it_turns_hot() {
        let mut gate = NowaitGate::default();
        // Mostly misses: after a short run it tries one read in PROBE_EVERY.
        for _ in 0..1000 {
            if gate.should_try() {
                gate.record(false);
            }
        }
        let tries = (0..6400).filter(|_| gate.should_try()).count();
        assert_eq!(tries, 100);
        // A hot file again: the first probe that hits opens it up.
        while !gate.should_try() {}
        gate.record(true);
        assert!((0..100).all(|_| gate.should_try()));
        // One hit in seven keeps it trying; fewer lets it back off.
        let mut gate = NowaitGate::default();
        for i in 0..7000 {
            if gate.should_try() {
                gate.record(i % 7 == 0);
            }
        }
        assert!(gate.should_try());
        gate.record_outcome(NowaitRead::Unsupported);
        assert!(!gate.should_try() && !gate.should_try());
    }

    #[cfg(target_os = "linux")] // preadv2(RWF_NOWAIT) is Linux-only
    #[test]
    fn read_nowait_reads_cached_bytes_and_says_eof() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut file = tempfile_in_target();
        file.write_all(&[7u8; 8192]).unwrap();
        let fd = file.as_raw_fd();
        let mut buf = vec![0u8; 4096];
        // Just written, so in the page cache.
        assert_eq!(read_nowait(fd, &mut buf, 0), NowaitRead::Done(4096));
        assert!(buf.iter().all(|&b| b == 7));
        assert_eq!(read_nowait(fd, &mut buf, 6144), NowaitRead::Partial(2048));
        assert_eq!(read_nowait(fd, &mut buf, 8192), NowaitRead::Done(0));
    }

    #[cfg(target_os = "linux")]
    fn tempfile_in_target() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("storage-io-nowait-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
