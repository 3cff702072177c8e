//! Setup and registration: probing, building the ring, registering buffers and files.

use super::*;

impl UringStorageIo {
    /// Builds the ring. Fails with `Unsupported` naming the reason when io_uring cannot be used,
    /// or when SQPOLL was asked for and the kernel refused it.
    pub fn new(config: &IoConfig) -> Result<Self> {
        Self::build(config, true)
    }

    /// A ring driven from an async reactor instead of blocking waits: its owner registers
    /// [`ring_fd`](Self::ring_fd) with the reactor's epoll and calls `poll_completions` when the
    /// fd turns readable.
    ///
    /// Two things differ from [`new`](Self::new):
    /// - no `COOP_TASKRUN`: a completion must interrupt the submitting thread even while it
    ///   sleeps in the reactor's `epoll_wait`, or its CQE is not posted until that thread next
    ///   enters the kernel on its own, and the readiness that would wake it never comes;
    /// - no datasync barrier: a datasync is pushed at once, and writes submitted after it are not
    ///   held behind it. The owner orders syncs itself (it submits a sync only once the writes it
    ///   must cover have completed), so the barrier would only stall later writes.
    pub fn for_reactor(config: &IoConfig) -> Result<Self> {
        Self::build(config, false)
    }

    fn build(config: &IoConfig, blocking_owner: bool) -> Result<Self> {
        config.validate()?;
        let report = probe().map_err(unsupported)?;
        let (ring, coop_taskrun) = build_ring(config, blocking_owner)?;
        let mut notes = vec![format!("kernel {}", report.kernel)];
        if !coop_taskrun && blocking_owner {
            notes.push("kernel lacks IORING_SETUP_COOP_TASKRUN; completions interrupt the thread".into());
        }
        if !report.nodrop {
            notes.push("kernel lacks IORING_FEAT_NODROP; in-flight ops are capped at queue_depth".into());
        }
        let registered_files = register_file_table(&ring, config, &mut notes);
        if let Some(why) = sqpoll_refusal(
            config.sqpoll_idle_ms.is_some(),
            registered_files,
            ring.params().is_feature_sqpoll_nonfixed(),
        ) {
            return Err(StorageIoError::Unsupported { what: why.into() });
        }
        let fixed = config
            .fixed_buffers
            .then(|| register_buffer_pool(&ring, config, &mut notes))
            .flatten();
        let driver = RingDriver {
            sqpoll: config.sqpoll_idle_ms.is_some(),
            ext_arg: report.ext_arg,
            ring,
            fixed,
            registered_files,
            notes,
            reaped: Vec::with_capacity(config.queue_depth * 2),
            reaping: false,
            deferred: VecDeque::with_capacity(config.queue_depth),
            report,
            wake: None,
            timers: RingTimers::new(),
            #[cfg(test)]
            enter_fault: None,
        };
        // A ring built for a reactor has no datasync barrier: its owner orders syncs itself.
        let ops = OpTable::new(config, blocking_owner);
        Ok(UringStorageIo {
            io: QueuedIo::new(driver, ops),
        })
    }
}

/// Why SQPOLL cannot be used, if it cannot: before Linux 5.11 (no `IORING_FEAT_SQPOLL_NONFIXED`)
/// the SQ thread accepts only registered files, so without the fixed-file table (sparse
/// registration came in 5.19) every op would fail with EBADF.
pub(super) fn sqpoll_refusal(sqpoll: bool, registered_files: bool, sqpoll_nonfixed: bool) -> Option<String> {
    (sqpoll && !registered_files && !sqpoll_nonfixed).then(|| {
        "io_uring SQPOLL on this kernel (before 5.11) works only with registered files, and the \
         fixed-file table could not be registered (sparse registration needs 5.19): turn \
         sqpoll_idle_ms off"
            .to_string()
    })
}

pub(super) fn unsupported(why: Unavailable) -> StorageIoError {
    StorageIoError::Unsupported {
        what: format!("io_uring unavailable: {why}").into(),
    }
}

/// Allocates `count` buffers of `size` bytes (rounded up to a whole page) and registers them.
pub(super) fn register_buffers(ring: &IoUring, count: usize, size: usize) -> std::io::Result<FixedBufs> {
    let align = storage_io_core::DEFAULT_ALIGNMENT;
    let size = size
        .checked_next_multiple_of(align)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let fixed =
        FixedBufs::new(count, size, align).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let iovecs: Vec<libc::iovec> = fixed
        .regions()
        .map(|(base, len)| libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        })
        .collect();
    // The kernel writes a registered buffer only for a ReadFixed naming its index, which this
    // backend issues only while a slot owns that buffer (lent and moved in, or its own staging).
    // SAFETY: each iovec is one buffer of the area, allocated while the FixedBufs (dropped after
    // the ring, which unregisters them) or any buffer lent from it lives.
    unsafe { ring.submitter().register_buffers(&iovecs)? };
    Ok(fixed)
}

/// Creates the ring: SQ = `sq_depth`, CQ twice the larger of it and the in-flight cap (and
/// always room for the wake read and the two ring timers besides), SQPOLL if asked for.
/// COOP_TASKRUN + TASKRUN_FLAG (Linux 5.19+) are tried first: completions then do not interrupt
/// this thread with an IPI but run at our next io_uring_enter, and the SQ ring's TASKRUN flag
/// tells a non-blocking poll when to enter; an older kernel's EINVAL retries without them.
/// SINGLE_ISSUER/DEFER_TASKRUN are not used: a backend is `Send` and may move to another thread
/// between calls. `try_coop: false` (a reactor-driven ring, see `for_reactor`) skips them.
/// Returns the ring and whether COOP_TASKRUN is on.
fn build_ring(config: &IoConfig, try_coop: bool) -> Result<(IoUring, bool)> {
    let sq = u32::try_from(config.effective_sq_depth()).unwrap_or(u32::MAX);
    let most = u32::try_from(config.effective_sq_depth().max(config.queue_depth)).unwrap_or(u32::MAX);
    let cq = most.saturating_mul(2).max(most.saturating_add(3));
    let build = |coop: bool| {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq);
        if coop {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        if let Some(idle_ms) = config.sqpoll_idle_ms {
            builder.setup_sqpoll(idle_ms);
        }
        builder.build(sq)
    };
    let (ring, coop_taskrun) = match build(try_coop) {
        Ok(ring) => (Ok(ring), try_coop),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (build(false), false),
        Err(e) => (Err(e), false),
    };
    let ring = ring.map_err(|e| {
        let why = unavailable_from(&e);
        if config.sqpoll_idle_ms.is_some() {
            StorageIoError::Unsupported {
                what: format!("io_uring with SQPOLL could not be set up: {why} (turn sqpoll_idle_ms off)")
                    .into(),
            }
        } else {
            unsupported(why)
        }
    })?;
    Ok((ring, coop_taskrun))
}

/// Registers a sparse fixed-file table of `max_files` entries; false (with a note) where the
/// kernel refuses it, and ops then use plain fds.
fn register_file_table(ring: &IoUring, config: &IoConfig, notes: &mut Vec<String>) -> bool {
    let max_files = u32::try_from(config.max_files).unwrap_or(u32::MAX);
    match ring.submitter().register_files_sparse(max_files) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not register a fixed-file table; using plain fds");
            notes.push(format!("registered files off: {e}"));
            false
        }
    }
}

/// Registers `queue_depth` buffers of `buffer_size` bytes; `None` (with a note naming the
/// likely cause) where registration fails, and the backend runs unregistered.
fn register_buffer_pool(ring: &IoUring, config: &IoConfig, notes: &mut Vec<String>) -> Option<FixedBufs> {
    match register_buffers(
        ring,
        config.queue_depth.min(u16::MAX as usize),
        config.buffer_size,
    ) {
        Ok(f) => Some(f),
        Err(e) => {
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                " (RLIMIT_MEMLOCK too low: raise ulimit -l or lower queue_depth/buffer_size)"
            } else {
                ""
            };
            tracing::warn!(error = %e, "{}", format!("running without registered buffers{hint}"));
            notes.push(format!("registered buffers off: {e}{hint}"));
            None
        }
    }
}
