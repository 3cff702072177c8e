//! The testkit's wrappers (and `Box`) lose no method of the backend they wrap: every provided
//! method of `StorageIo` and `Namespace` reaches the inner backend, and a wake from another
//! thread ends a wait blocked in the inner backend.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use storage_io_core::backend_kit::WakeState;
use storage_io_core::{
    AlignedBuf, Capabilities, DirLock, FileMetadata, IoBuf, IoCompletion, IoFd, IoStats, IoToken, Namespace,
    OpKind, OpenOptions, OpenedFd, Result, StorageIo, StorageIoError, SubmitError, WaitWaker,
};
use storage_io_testkit::faulty::{FaultPlan, FaultyIo};
use storage_io_testkit::gated::{Gate, GatedIo};

/// What the stalled backend shares with wakers and the test's watchdog.
#[derive(Default)]
struct Stall {
    /// Set by the watchdog: the stalled op completes.
    released: Mutex<bool>,
    changed: Condvar,
    /// Armed while a wait blocks; the waker's kick notifies `changed`.
    wake: Arc<WakeState>,
}

/// A backend whose ops stay in flight until released, with a blocking wait that a
/// [`WaitWaker`] interrupts; it records every provided method that reaches it.
struct StallIo {
    stall: Arc<Stall>,
    pending: usize,
    calls: Arc<Mutex<BTreeSet<&'static str>>>,
    stats: IoStats,
}

impl StallIo {
    fn new(calls: &Arc<Mutex<BTreeSet<&'static str>>>) -> Self {
        StallIo {
            stall: Arc::new(Stall::default()),
            pending: 0,
            calls: Arc::clone(calls),
            stats: IoStats::new(),
        }
    }

    fn saw(&self, call: &'static str) {
        self.calls.lock().unwrap().insert(call);
    }

    fn accept(&mut self) -> Result<IoToken> {
        self.pending += 1;
        Ok(IoToken(self.pending as u64))
    }
}

impl Namespace for StallIo {
    fn sync_dir(&mut self, _: &Path) -> Result<()> {
        self.saw("sync_dir");
        Ok(())
    }
    fn remove_file(&mut self, _: &Path) -> Result<()> {
        self.saw("remove_file");
        Ok(())
    }
    fn rename(&mut self, _: &Path, _: &Path) -> Result<()> {
        self.saw("rename");
        Ok(())
    }
    fn metadata(&mut self, _: &Path) -> Result<FileMetadata> {
        self.saw("metadata");
        Ok(FileMetadata { len: 0, is_dir: true })
    }
    fn list_dir(&mut self, _: &Path) -> Result<Vec<PathBuf>> {
        self.saw("list_dir");
        Ok(Vec::new())
    }
    fn create_dir_all(&mut self, _: &Path) -> Result<()> {
        self.saw("create_dir_all");
        Ok(())
    }
    fn lock_dir(&mut self, dir: &Path) -> Result<DirLock> {
        self.saw("lock_dir");
        Ok(DirLock::from_guard(dir.to_path_buf(), ()))
    }
}

impl StorageIo for StallIo {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "stall",
            max_in_flight: 64,
            asynchronous: true,
            worker_threads: 0,
            registered_buffers: false,
            registered_files: false,
            sqpoll: false,
            direct_io: false,
            max_io_bytes: 1 << 20,
            notes: Vec::new(),
        }
    }
    fn name(&self) -> &'static str {
        self.saw("name");
        "stall"
    }
    fn register_fd(&mut self, _: File) -> Result<IoFd> {
        Err(StorageIoError::unsupported("the stalled backend opens by path"))
    }
    fn deregister_fd(&mut self, _: IoFd) -> Result<()> {
        Ok(())
    }
    fn open_file(&mut self, _: &Path, _: &OpenOptions) -> Result<IoFd> {
        self.saw("open_file");
        Ok(IoFd {
            slot: 0,
            generation: 1,
        })
    }
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        self.saw("open_file_with_mode");
        let fd = self.open_file(path, options)?;
        Ok(OpenedFd {
            fd,
            mode: storage_io_core::DirectMode::Buffered {
                fallback_reason: None,
            },
            file: None,
        })
    }
    fn file_len(&mut self, _: IoFd) -> Result<u64> {
        Ok(0)
    }
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        self.saw("alloc_buf");
        AlignedBuf::zeroed(len, storage_io_core::DEFAULT_ALIGNMENT)
    }
    fn submit_read(&mut self, _: IoFd, _: IoBuf, _: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        self.accept()
            .map_err(|e| SubmitError::new(e, IoBuf::Vec(Vec::new())))
    }
    fn submit_write(&mut self, _: IoFd, _: &[u8], _: u64) -> Result<IoToken> {
        self.accept()
    }
    fn submit_write_buf(&mut self, _: IoFd, _: IoBuf, _: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        self.accept()
            .map_err(|e| SubmitError::new(e, IoBuf::Vec(Vec::new())))
    }
    fn submit_write_bytes(&mut self, _: IoFd, _: bytes::Bytes, _: u64) -> Result<IoToken> {
        self.saw("submit_write_bytes");
        self.accept()
    }
    fn submit_append(&mut self, _: IoFd, _: &[u8]) -> Result<IoToken> {
        self.accept()
    }
    fn submit_datasync(&mut self, _: IoFd) -> Result<IoToken> {
        self.accept()
    }
    fn submit_fsync(&mut self, _: IoFd) -> Result<IoToken> {
        self.accept()
    }
    fn flush(&mut self) -> Result<usize> {
        self.saw("flush");
        Ok(0)
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        if self.pending == 0 || !*self.stall.released.lock().unwrap() {
            return 0;
        }
        let n = self.pending;
        for i in 0..n {
            out.push(IoCompletion {
                token: IoToken(i as u64 + 1),
                op: OpKind::Write,
                fd: IoFd {
                    slot: 0,
                    generation: 1,
                },
                offset: 0,
                len_requested: 0,
                result: Ok(0),
                buf: None,
            });
        }
        self.pending = 0;
        n
    }
    /// Blocks until the ops are released or a wake comes (no timeout needed by the test).
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        _: usize,
        _: Option<Duration>,
    ) -> Result<usize> {
        let mut released = self.stall.released.lock().unwrap();
        // The kick takes the lock before it notifies, and the lock is held from `arm` until
        // the condvar wait releases it: a wake cannot slip in between.
        if self.pending > 0 && !*released && self.stall.wake.arm() {
            loop {
                released = self.stall.changed.wait(released).unwrap();
                let woken = self.stall.wake.disarm();
                if *released || woken || !self.stall.wake.arm() {
                    break;
                }
            }
            self.stall.wake.disarm();
        }
        drop(released);
        Ok(self.poll_completions(out))
    }
    fn wait_waker(&mut self) -> Option<WaitWaker> {
        self.saw("wait_waker");
        let stall = Arc::clone(&self.stall);
        Some(WaitWaker::new(Arc::clone(&self.stall.wake), move || {
            let _guard = stall.released.lock().unwrap();
            stall.changed.notify_all();
        }))
    }
    fn pending_count(&self) -> usize {
        self.pending
    }
    fn stats(&self) -> &IoStats {
        &self.stats
    }
}

/// Every wrapper of the testkit, and `Box`, over a fresh [`StallIo`].
fn wrappers(
    calls: &Arc<Mutex<BTreeSet<&'static str>>>,
) -> Vec<(&'static str, Box<dyn StorageIo>, Arc<Stall>)> {
    let make = || {
        let io = StallIo::new(calls);
        let stall = Arc::clone(&io.stall);
        (io, stall)
    };
    let (a, sa) = make();
    let (b, sb) = make();
    let (c, sc) = make();
    let gate = Gate::new();
    gate.open();
    vec![
        (
            "Box",
            Box::new(Box::new(a) as Box<dyn StorageIo>) as Box<dyn StorageIo>,
            sa,
        ),
        ("GatedIo", Box::new(GatedIo::new(b, gate, &[])), sb),
        ("FaultyIo", Box::new(FaultyIo::new(c, FaultPlan::new(1))), sc),
    ]
}

#[test]
fn wrappers_forward_every_provided_method() {
    let provided = [
        "alloc_buf",
        "create_dir_all",
        "flush",
        "list_dir",
        "lock_dir",
        "metadata",
        "open_file",
        "open_file_with_mode",
        "remove_file",
        "rename",
        "submit_write_bytes",
        "sync_dir",
        "wait_waker",
    ];
    let calls = Arc::new(Mutex::new(BTreeSet::new()));
    for (name, mut io, _) in wrappers(&calls) {
        calls.lock().unwrap().clear();
        let p = Path::new("/d/f");
        io.open_file(p, &OpenOptions::create()).unwrap();
        let fd = io.open_file_with_mode(p, &OpenOptions::create()).unwrap().fd;
        io.alloc_buf(8).unwrap();
        io.submit_write_bytes(fd, bytes::Bytes::from_static(b"abc"), 0)
            .unwrap();
        io.flush().unwrap();
        let _ = io.wait_waker();
        io.create_dir_all(Path::new("/d")).unwrap();
        io.list_dir(Path::new("/d")).unwrap();
        io.lock_dir(Path::new("/d")).unwrap();
        io.metadata(p).unwrap();
        io.rename(p, Path::new("/d/g")).unwrap();
        io.remove_file(p).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        let seen = calls.lock().unwrap().clone();
        let missing: Vec<_> = provided.iter().filter(|m| !seen.contains(*m)).collect();
        assert!(missing.is_empty(), "{name} does not forward {missing:?}");
    }
}

#[test]
fn a_wake_ends_a_wait_blocked_in_the_inner_backend_through_every_wrapper() {
    let calls = Arc::new(Mutex::new(BTreeSet::new()));
    for (name, mut io, stall) in wrappers(&calls) {
        let fd = io.open_file(Path::new("/f"), &OpenOptions::create()).unwrap();
        io.submit_write(fd, b"stalled", 0).unwrap();
        let waker = io.wait_waker().unwrap_or_else(|| panic!("{name} gives no waker"));
        let waking = std::thread::spawn(move || waker.wake());
        // A lost wake leaves the wait blocked: the watchdog then releases the op, and the
        // completion it brings fails the assertion below instead of hanging the test.
        let watchdog = {
            let stall = Arc::clone(&stall);
            std::thread::spawn(move || {
                let released = stall.released.lock().unwrap();
                let (mut released, timeout) = stall
                    .changed
                    .wait_timeout_while(released, Duration::from_secs(60), |r| !*r)
                    .unwrap();
                if timeout.timed_out() {
                    *released = true;
                    stall.changed.notify_all();
                }
            })
        };
        let mut out = Vec::new();
        io.wait_completions(&mut out, 1, None).unwrap();
        assert!(out.is_empty(), "{name}: the wake must end the wait, not the op");
        assert_eq!(io.pending_count(), 1, "{name}: the op is still in flight");
        waking.join().unwrap();
        // Release the op (and the watchdog), then collect it.
        *stall.released.lock().unwrap() = true;
        stall.changed.notify_all();
        watchdog.join().unwrap();
        while io.pending_count() > 0 {
            io.wait_completions(&mut out, 1, None).unwrap();
        }
        assert_eq!(out.len(), 1, "{name}: the op completes once");
    }
}
