//! [`Preparer`]: zero-fills the next segment file on a background thread, so that the flush
//! that moves the log into a new segment does not write the whole segment first.
//!
//! The preparer owns its own backend and prepares one segment at a time, the one the writer
//! asked for last: it creates the file (truncating any leftover), writes zeros over its full
//! size, makes the data and the directory entry durable, closes it and marks it ready. The
//! writer takes a ready segment by number and opens it like an existing one; if the segment is
//! still being prepared it waits for it (the fill is already under way, so that is never
//! slower than starting over); if preparation failed it creates the segment itself.
//!
//! A prepared segment holds no header (the flush that moves into it writes one), so recovery
//! treats it as a torn creation past the end of the log and removes it: a crash costs only the
//! work of preparing it. A clean close removes an unused one, so a reopened log finds nothing
//! to remove.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::segio::{IoFailure, SegmentIo};

/// Bytes of zeros written (and, with `sync`, made durable) at a time while preparing: small
/// enough that a commit sharing the disk waits behind at most this much of the preparer's
/// writeback, and that closing the log soon stops a preparation under way.
const FILL_GROUP_BYTES: u64 = 1 << 20;

#[derive(Debug, Default)]
struct State {
    /// The segment to prepare next, not yet picked up by the thread.
    wanted: Option<u64>,
    /// The segment being prepared.
    busy: Option<u64>,
    /// A prepared segment the writer has not taken.
    ready: Option<u64>,
    /// The thread has ended (closed, or its backend failed for good).
    gone: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// Sets `gone` and wakes waiters when the thread ends, even by a panic, so a writer waiting
/// for a segment never waits for a thread that is not there.
struct Farewell(Arc<Shared>);

impl Drop for Farewell {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.gone = true;
        st.busy = None;
        st.wanted = None;
        self.0.changed.notify_all();
    }
}

/// The background preparer of the next segment (see the module docs).
pub(crate) struct Preparer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Preparer {
    /// Starts the thread, which prepares segments through `io`. With `sync` it makes each
    /// segment's zeros durable (fdatasync) before marking it ready, so that the commits'
    /// fdatasyncs later find no allocation or file size to write back; without it (the log's
    /// [`SyncMode::None`](crate::SyncMode::None), or direct segments, whose writes are durable
    /// as they complete) it issues none.
    pub(crate) fn start(io: SegmentIo, sync: bool) -> std::io::Result<Preparer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("wal-prepare".into())
            .spawn(move || run(io, sync, s))?;
        Ok(Preparer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks for `segment` to be prepared next (replacing an earlier request not yet started).
    pub(crate) fn request(&self, segment: u64) {
        let mut st = self.shared.state.lock();
        if st.gone || st.busy == Some(segment) || st.ready == Some(segment) {
            return;
        }
        st.wanted = Some(segment);
        self.shared.changed.notify_all();
    }

    /// Takes `segment` if it is prepared, waiting while it is asked for or under way. `false`
    /// means the caller creates it: it was never asked for, or its preparation failed.
    pub(crate) fn take(&self, segment: u64) -> bool {
        let mut st = self.shared.state.lock();
        loop {
            if st.ready == Some(segment) {
                st.ready = None;
                return true;
            }
            if st.gone || (st.wanted != Some(segment) && st.busy != Some(segment)) {
                return false;
            }
            self.shared.changed.wait(&mut st);
        }
    }

    /// Stops the thread (ending a preparation under way) and waits for it; it removes a
    /// prepared segment nobody took. Later calls do nothing.
    pub(crate) fn stop(&self) {
        {
            // Under the lock: the thread checks the flag and starts waiting under it, so the
            // wake-up cannot fall between the two.
            let _st = self.shared.state.lock();
            self.shared.stop.store(true, Ordering::Release);
            self.shared.changed.notify_all();
        }
        if let Some(handle) = self.thread.lock().take()
            && handle.join().is_err()
        {
            tracing::error!("the wal's segment preparer panicked");
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The longest pause between two groups of zeros.
const MAX_PAUSE: Duration = Duration::from_millis(20);

fn run(mut io: SegmentIo, sync: bool, shared: Arc<Shared>) {
    let _farewell = Farewell(Arc::clone(&shared));
    let stopping = || shared.stop.load(Ordering::Acquire);
    // Paced: before each group of zeros, a pause as long as the previous group took (at most
    // `MAX_PAUSE`), so the fill takes at most half of the disk's time and the commits'
    // writes and syncs never queue behind a long run of it.
    let group_started: Cell<Option<Instant>> = Cell::new(None);
    let paced = || {
        if let Some(started) = group_started.get() {
            let pause = started.elapsed().min(MAX_PAUSE);
            let until = Instant::now() + pause;
            let mut st = shared.state.lock();
            while !stopping() && !shared.changed.wait_until(&mut st, until).timed_out() {}
        }
        group_started.set(Some(Instant::now()));
        stopping()
    };
    loop {
        let segment = {
            let mut st = shared.state.lock();
            while !stopping() && st.wanted.is_none() {
                shared.changed.wait(&mut st);
            }
            if stopping() {
                break;
            }
            let Some(segment) = st.wanted.take() else { continue };
            if let Some(old) = st.ready.take() {
                // Never taken, and the writer has moved on: the file stays until recovery or
                // a later creation of that segment replaces it.
                tracing::debug!(segment = old, "an unused prepared wal segment was passed over");
            }
            st.busy = Some(segment);
            segment
        };
        group_started.set(None);
        let outcome = prepare(&mut io, segment, sync, &paced);
        let mut st = shared.state.lock();
        st.busy = None;
        match outcome {
            Ok(true) => st.ready = Some(segment),
            Ok(false) => {}
            Err(f) => {
                tracing::warn!(segment, op = %f.op, error = %f.error,
                    "preparing the next wal segment failed; the flush that needs it will create it");
            }
        }
        shared.changed.notify_all();
    }
    let unused = shared.state.lock().ready.take();
    if let Some(segment) = unused {
        let removed = io.remove(segment).and_then(|()| io.sync_dir());
        if let Err(e) = removed {
            tracing::warn!(segment, error = %e, "removing an unused prepared wal segment failed; recovery will");
        }
    }
}

/// Creates `segment` full of zeros (made durable with `sync`), syncs its directory entry, and
/// closes it. Returns false if `stop` ended it first; the partial file is removed then and on
/// failure.
fn prepare(io: &mut SegmentIo, segment: u64, sync: bool, stop: &dyn Fn() -> bool) -> Result<bool, IoFailure> {
    let filled = io.create(segment, false).and_then(|fd| {
        // With `sync`, each group is written back before the next is written: one fdatasync
        // of the whole segment at the end would put all of it in the disk's queue (and in the
        // file system's journal commit) at once, in front of the commits' own syncs.
        if !io.zero_fill(fd, FILL_GROUP_BYTES, sync, stop)? {
            return Ok(false);
        }
        io.sync_dir().map_err(IoFailure::from)?;
        Ok(true)
    });
    if filled != Ok(true) {
        // Best effort: recovery removes a partial segment past the end of the log anyway.
        let _ = io.remove(segment);
    } else {
        io.close_below(u64::MAX);
    }
    filled
}
