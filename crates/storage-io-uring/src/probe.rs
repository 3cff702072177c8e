//! Can io_uring be used here? A small ring, the opcodes we need, and a typed reason when not.

use std::fmt;

/// Why io_uring cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unavailable {
    /// Not Linux: io_uring does not exist here.
    NotLinux,
    /// `ENOSYS`: the kernel has no io_uring (it came in 5.1; this backend needs 5.6 for the
    /// opcodes it uses) or was built without it.
    NoKernelSupport,
    /// `EPERM`: forbidden — `kernel.io_uring_disabled` is set, or a seccomp filter (common in
    /// containers) blocks `io_uring_setup`.
    PermissionDenied,
    /// `ENOMEM`: the ring could not be allocated (RLIMIT_MEMLOCK on kernels before 5.12).
    OutOfMemory,
    /// The kernel lacks an opcode this backend needs.
    MissingOpcode(&'static str),
    /// `io_uring_enter` failed although `io_uring_setup` succeeded — a seccomp filter that lets
    /// a ring be created but not used — with its errno.
    EnterFailed(i32),
    /// Any other failure of `io_uring_setup`, with its errno.
    Other(i32),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotLinux => f.write_str("io_uring exists only on Linux"),
            Unavailable::NoKernelSupport => {
                f.write_str("the kernel has no io_uring (ENOSYS); it needs Linux 5.6 or newer built with CONFIG_IO_URING")
            }
            Unavailable::PermissionDenied => f.write_str(
                "io_uring_setup is not permitted (EPERM): check sysctl kernel.io_uring_disabled and the container's seccomp profile",
            ),
            Unavailable::OutOfMemory => {
                f.write_str("io_uring_setup ran out of memory (ENOMEM): raise RLIMIT_MEMLOCK (ulimit -l)")
            }
            Unavailable::MissingOpcode(op) => write!(f, "the kernel's io_uring lacks the {op} opcode"),
            Unavailable::EnterFailed(errno) if *errno == EPERM => f.write_str(
                "io_uring_enter is not permitted (EPERM) although io_uring_setup succeeded: check the container's seccomp profile",
            ),
            Unavailable::EnterFailed(errno) => write!(
                f,
                "io_uring_enter failed after io_uring_setup succeeded: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Unavailable::Other(errno) => write!(
                f,
                "io_uring_setup failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

/// `EPERM` (the same number on every Linux architecture; spelled out so the message compiles
/// off Linux too).
const EPERM: i32 = 1;
#[cfg(target_os = "linux")]
const _: () = assert!(EPERM == libc::EPERM);

impl std::error::Error for Unavailable {}

/// What the probe found when io_uring is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// `uname -r`.
    pub kernel: String,
    /// The kernel keeps completions that do not fit the CQ instead of dropping them.
    pub nodrop: bool,
    /// `io_uring_enter` takes a timeout argument (Linux 5.11). Without it, every deadline of
    /// `wait_completions` is a timeout op in the ring.
    pub ext_arg: bool,
}

/// The running kernel's release string, or "unknown".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Creates a small ring, checks the opcodes this backend uses, and says why not when it cannot.
/// Never panics. Logs the outcome with `tracing`.
pub fn probe() -> Result<ProbeReport, Unavailable> {
    let outcome = probe_impl();
    match &outcome {
        Ok(r) => tracing::debug!(kernel = %r.kernel, nodrop = r.nodrop, "io_uring probe passed"),
        Err(why) => tracing::info!(kernel = %kernel_release(), reason = %why, "io_uring unavailable"),
    }
    outcome
}

#[cfg(target_os = "linux")]
fn probe_impl() -> Result<ProbeReport, Unavailable> {
    use io_uring::{IoUring, Probe, opcode};

    let mut ring = IoUring::new(8).map_err(|e| unavailable_from(&e))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| unavailable_from(&e))?;
    let needed: [(u8, &'static str); 7] = [
        (opcode::Read::CODE, "IORING_OP_READ"),
        (opcode::Write::CODE, "IORING_OP_WRITE"),
        (opcode::ReadFixed::CODE, "IORING_OP_READ_FIXED"),
        (opcode::WriteFixed::CODE, "IORING_OP_WRITE_FIXED"),
        (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
        (opcode::Nop::CODE, "IORING_OP_NOP"),
        (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(Unavailable::MissingOpcode(name));
        }
    }
    // A ring that can be created but not entered (a seccomp filter that denies io_uring_enter
    // only) is as unusable as none: one NOP goes through the ring before io_uring is chosen.
    let nop = opcode::Nop::new().build();
    // SAFETY: a NOP names no buffer and no file: nothing must outlive its completion.
    unsafe { ring.submission().push(&nop) }.map_err(|_| Unavailable::Other(libc::EBUSY))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(Unavailable::EnterFailed(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    match ring.completion().next() {
        Some(cqe) if cqe.result() >= 0 => {}
        Some(cqe) => return Err(Unavailable::EnterFailed(-cqe.result())),
        None => return Err(Unavailable::EnterFailed(libc::EIO)),
    }
    Ok(ProbeReport {
        kernel: kernel_release(),
        nodrop: ring.params().is_feature_nodrop(),
        ext_arg: ring.params().is_feature_ext_arg(),
    })
}

#[cfg(not(target_os = "linux"))]
fn probe_impl() -> Result<ProbeReport, Unavailable> {
    Err(Unavailable::NotLinux)
}

/// Maps an `io_uring_setup`/`register` failure to a reason.
#[cfg(target_os = "linux")]
pub(crate) fn unavailable_from(e: &std::io::Error) -> Unavailable {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => Unavailable::NoKernelSupport,
        Some(libc::EPERM) | Some(libc::EACCES) => Unavailable::PermissionDenied,
        Some(libc::ENOMEM) => Unavailable::OutOfMemory,
        Some(n) => Unavailable::Other(n),
        None => Unavailable::Other(libc::EIO),
    }
}

/// True when `STORAGE_IO_REQUIRE_URING` asks for io_uring tests to fail instead of skipping.
#[cfg(any(test, feature = "testing"))]
pub fn uring_required() -> bool {
    std::env::var("STORAGE_IO_REQUIRE_URING").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// For tests that need io_uring: `true` when it is usable. When it is not, prints a loud skip
/// line naming `test` and the reason and returns `false` — or panics if `STORAGE_IO_REQUIRE_URING`
/// is set (as in CI), so a missing io_uring can never pass as a skip there.
#[cfg(any(test, feature = "testing"))]
pub fn usable_or_skip(test: &str) -> bool {
    match probe() {
        Ok(_) => true,
        Err(why) if uring_required() => {
            panic!("{test}: io_uring is required (STORAGE_IO_REQUIRE_URING is set) but unavailable: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED {test}: io_uring unavailable: {why} (set STORAGE_IO_REQUIRE_URING=1 to fail instead)"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_says_what_to_do() {
        for (why, needle) in [
            (Unavailable::PermissionDenied, "io_uring_disabled"),
            (Unavailable::NoKernelSupport, "5.6"),
            (Unavailable::OutOfMemory, "RLIMIT_MEMLOCK"),
            (Unavailable::MissingOpcode("IORING_OP_READ"), "IORING_OP_READ"),
            (Unavailable::Other(22), "Invalid argument"),
            (
                Unavailable::EnterFailed(EPERM),
                "io_uring_enter is not permitted (EPERM)",
            ),
            (Unavailable::EnterFailed(22), "io_uring_enter failed"),
        ] {
            assert!(why.to_string().contains(needle), "{why}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn errno_maps_to_a_typed_reason() {
        use std::io::Error;
        assert_eq!(
            unavailable_from(&Error::from_raw_os_error(libc::ENOSYS)),
            Unavailable::NoKernelSupport
        );
        assert_eq!(
            unavailable_from(&Error::from_raw_os_error(libc::EPERM)),
            Unavailable::PermissionDenied
        );
        assert_eq!(
            unavailable_from(&Error::from_raw_os_error(libc::ENOMEM)),
            Unavailable::OutOfMemory
        );
        assert_eq!(
            unavailable_from(&Error::from_raw_os_error(libc::EINVAL)),
            Unavailable::Other(libc::EINVAL)
        );
    }

    #[test]
    fn probe_reports_the_kernel_or_a_reason() {
        match probe() {
            Ok(report) => assert!(!report.kernel.is_empty()),
            Err(why) => {
                assert!(!uring_required(), "io_uring required but unavailable: {why}");
                eprintln!("SKIPPED probe_reports_the_kernel_or_a_reason: {why}");
            }
        }
    }
}
