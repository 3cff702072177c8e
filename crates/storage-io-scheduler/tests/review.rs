//! Defects found in review of the scheduler and the page cache (issue 38, items 1 to 10): each
//! test is named after its defect and checks the behaviour through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use common::*;
use storage_io_core::{
    AlignedBuf, BackendFactory, Capabilities, IoBuf, IoCompletion, IoFd, IoStats, IoToken, OpKind,
    OpenOptions, StorageIo, SubmitError,
};
use storage_io_scheduler::AllocDurability;
use storage_io_scheduler::{DiskScheduler, PageCache, PageId, SchedulerConfig, SchedulerError};
use storage_io_testkit::faulty::{Fault, FaultPlan, FaultSwitch, FaultyIo};
use storage_io_testkit::gated::{Gate, GatedIo};
use storage_io_testkit::memio::{CrashOptions, MemFs};

/// A page file named like one of the scheduler's own files (an allocation slot) would have its
/// pages overwritten by allocation images: every such name is refused, whatever directory it
/// is written with.
#[test]
fn page_file_named_like_an_allocation_slot_is_refused() {
    for name in [
        "pages.alloc.0",
        "pages.alloc.1",
        "./pages.alloc.0",
        "/db/pages.alloc.1",
        "sub/pages.alloc.0",
        "PAGES.ALLOC.1",
    ] {
        let config = SchedulerConfig {
            page_file: PathBuf::from(name),
            ..config(1)
        };
        let err = config.validate().map(|()| name).unwrap_err();
        assert!(
            matches!(&err, SchedulerError::InvalidConfig(m) if m.contains("page_file")),
            "{name}: {err}"
        );
        let fs = MemFs::new(1);
        let opened = DiskScheduler::open(DIR, config, mem_factory(&fs));
        assert!(
            matches!(opened, Err(SchedulerError::InvalidConfig(_))),
            "{name}: open must refuse it too"
        );
        assert!(
            fs.list().is_empty(),
            "{name}: nothing is created: {:?}",
            fs.list()
        );
    }
    // Names that only look alike are the engine's to choose.
    for name in ["pages.alloc", "pages.alloc.2", "my.pages.alloc.0", "pages.db"] {
        let config = SchedulerConfig {
            page_file: PathBuf::from(name),
            ..config(1)
        };
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A read stream over a range near `u64::MAX` overflowed computing its routing extent (a panic
/// in debug builds, a wrap to page 0 in release): it answers `OutOfRange` for the first page
/// past the scheduler's limit, and reads every page below it.
#[test]
fn read_stream_near_u64_max_answers_out_of_range_instead_of_overflowing() {
    let fs = MemFs::new(8);
    let sched = open(&mem_factory(&fs), config(2));
    let limit = sched.config().page_limit();
    for range in [
        PageId(u64::MAX - 3)..PageId(u64::MAX),
        PageId(u64::MAX - 1)..PageId(u64::MAX),
        PageId(limit)..PageId(u64::MAX),
        PageId(limit + 5)..PageId(limit + 6),
    ] {
        let items: Vec<_> = sched.read_stream(range.clone(), 8).collect();
        assert_eq!(items.len(), 1, "{range:?}: one error, then the end: {items:?}");
        match &items[0] {
            Err(SchedulerError::OutOfRange { page, limit: l }) => {
                assert_eq!((*page, *l), (range.start, limit), "{range:?}");
            }
            other => panic!("{range:?}: expected OutOfRange, got {other:?}"),
        }
    }
    // With max_pages: the pages below the limit are read, then OutOfRange at the limit.
    let fs = MemFs::new(9);
    let sched = open(
        &mem_factory(&fs),
        SchedulerConfig {
            max_pages: Some(10),
            ..config(2)
        },
    );
    allocate(&sched, 10);
    let items: Vec<_> = sched.read_stream(PageId(6)..PageId(u64::MAX), 4).collect();
    let pages: Vec<u64> = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|(p, _)| p.0)
        .collect();
    assert_eq!(pages, [6, 7, 8, 9]);
    assert!(
        matches!(
            items.last(),
            Some(Err(SchedulerError::OutOfRange {
                page: PageId(10),
                limit: 10
            }))
        ),
        "{:?}",
        items.last()
    );
    assert_eq!(items.len(), 5);
}

/// `distance = usize::MAX` overflowed `next_page + room`: it is clamped, the pages come in
/// order, and the window stays bounded.
#[test]
fn read_stream_with_distance_usize_max_neither_overflows_nor_floods_the_scheduler() {
    let fs = MemFs::new(10);
    // One worker of depth 2 holds at most 2 × 4 pages in flight.
    let sched = open(
        &mem_factory(&fs),
        SchedulerConfig {
            queue_depth: 2,
            ..config(1)
        },
    );
    let ids = allocate(&sched, 200);
    for &p in &ids {
        sched.schedule_write(p, page_bytes(p, 1)).recv().unwrap();
    }
    let mut stream = sched.read_stream(PageId(5)..PageId(200), usize::MAX);
    let mut next = 5;
    while let Some(item) = stream.next() {
        let (page, bytes) = item.unwrap();
        assert_eq!(page, PageId(next));
        assert_eq!(stamp(&bytes), (next, 1));
        assert!(stream.in_flight_pages() <= 8, "{stream:?}");
        next += 1;
    }
    assert_eq!(next, 200);
}

/// Reopened with a smaller `max_pages`, the scheduler handed out a freed id past the limit
/// (which then refused every write), and `allocate_at` allocated one below `next`: no id at or
/// past `max_pages` is ever allocated.
#[test]
fn max_pages_applies_to_free_ids_and_to_allocate_at_below_next() {
    let fs = MemFs::new(5);
    {
        let sched = open(&mem_factory(&fs), config(2));
        allocate(&sched, 10);
        for p in [8, 9, 6] {
            sched.schedule_deallocate(PageId(p)).recv().unwrap();
        }
        sched.shutdown().unwrap();
    }
    let limited = |max: u64| SchedulerConfig {
        max_pages: Some(max),
        ..config(2)
    };
    let sched = open(&mem_factory(&fs), limited(7));
    // Id 6 is free and below the limit: it is the one handed out, and it can be written.
    let page = sched.schedule_allocate().recv().unwrap();
    assert_eq!(page, PageId(6));
    sched.schedule_write(page, page_bytes(page, 1)).recv().unwrap();
    // Ids 8 and 9 are free but past the limit: no page is left.
    let got = sched.schedule_allocate().recv();
    assert!(matches!(got, Err(SchedulerError::OutOfPages)), "{got:?}");
    for p in [8, 9] {
        let got = sched.schedule_allocate_at(PageId(p)).recv();
        assert!(
            matches!(got, Err(SchedulerError::OutOfRange { page, limit: 7 }) if page == PageId(p)),
            "allocate_at({p}): {got:?}"
        );
    }
    assert_eq!(
        sched.stats().allocated_pages,
        8,
        "nothing past the limit was allocated"
    );
    sched.shutdown().unwrap();
    // The ids refused stay free: without the limit they are handed out again.
    let sched = open(&mem_factory(&fs), config(2));
    assert_eq!(allocate(&sched, 2), [PageId(8), PageId(9)]);
}

/// `new_page` allocated an id durably, then found every frame pinned and returned
/// `AllFramesPinned`: the id stayed allocated and nobody held it. A `new_page` that fails
/// leaves no id allocated.
#[test]
fn new_page_with_every_frame_pinned_leaks_no_page_id() {
    let fs = MemFs::new(9);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 2).unwrap();
    let pinned = [cache.new_page().unwrap(), cache.new_page().unwrap()];
    assert_eq!(sched.stats().allocated_pages, 2);
    for _ in 0..3 {
        let got = cache.new_page().map(|p| p.id());
        assert!(
            matches!(got, Err(SchedulerError::AllFramesPinned { frames: 2 })),
            "{got:?}"
        );
    }
    assert_eq!(
        sched.stats().allocated_pages,
        2,
        "a failed new_page kept an id allocated"
    );
    drop(pinned);
    // The next page is the next id: none was lost.
    assert_eq!(cache.new_page().unwrap().id(), PageId(2));
}

/// The same when the frame `new_page` needs cannot be written back: the id it allocated is
/// freed again before the error is returned.
#[test]
fn new_page_whose_victim_cannot_be_written_back_leaks_no_page_id() {
    let fs = MemFs::new(10);
    // Writes: 1 = the image at open, 2 = page 0's image, 3 = page 1's image, 4 = the
    // write-back of page 0, which fails.
    let plan = FaultPlan::new(10).fail_nth(OpKind::Write, 4, Fault::Eio);
    let sched = Arc::new(open(&faulty_factory(&fs, plan), config(1)));
    let cache = PageCache::new(Arc::clone(&sched), 1).unwrap();
    let first = cache.new_page().unwrap().id();
    let err = cache.new_page().map(|p| p.id()).unwrap_err();
    assert_eq!(err.errno(), Some(5), "{err}");
    assert_eq!(
        sched.stats().allocated_pages,
        1,
        "the failed new_page kept its id"
    );
    let got = sched.schedule_read(PageId(first.0 + 1)).recv().map(|b| b.len());
    assert!(matches!(got, Err(SchedulerError::NotAllocated(_))), "{got:?}");
}

/// A backend that calls `hook` before it submits a read, a write or a datasync (to panic
/// there, or to hold the thread), and counts the backends alive.
struct HookIo {
    inner: Box<dyn StorageIo>,
    hook: Arc<dyn Fn(OpKind) + Send + Sync>,
    alive: Arc<AtomicUsize>,
}

impl Drop for HookIo {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

storage_io_core::forward_namespace!( HookIo => inner);

impl StorageIo for HookIo {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn register_fd(&mut self, file: std::fs::File) -> storage_io_core::Result<IoFd> {
        self.inner.register_fd(file)
    }
    fn deregister_fd(&mut self, fd: IoFd) -> storage_io_core::Result<()> {
        self.inner.deregister_fd(fd)
    }
    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> storage_io_core::Result<IoFd> {
        self.inner.open_file(path, options)
    }
    fn file_len(&mut self, fd: IoFd) -> storage_io_core::Result<u64> {
        self.inner.file_len(fd)
    }
    fn submit_write_bytes(&mut self, fd: IoFd, data: Bytes, offset: u64) -> storage_io_core::Result<IoToken> {
        (self.hook)(OpKind::Write);
        self.inner.submit_write_bytes(fd, data, offset)
    }
    fn alloc_buf(&mut self, len: usize) -> storage_io_core::Result<AlignedBuf> {
        self.inner.alloc_buf(len)
    }
    fn submit_read(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
    ) -> storage_io_core::Result<IoToken, SubmitError<IoBuf>> {
        (self.hook)(OpKind::Read);
        self.inner.submit_read(fd, buf, offset)
    }
    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> storage_io_core::Result<IoToken> {
        (self.hook)(OpKind::Write);
        self.inner.submit_write(fd, data, offset)
    }
    fn submit_write_buf(
        &mut self,
        fd: IoFd,
        buf: IoBuf,
        offset: u64,
    ) -> storage_io_core::Result<IoToken, SubmitError<IoBuf>> {
        (self.hook)(OpKind::Write);
        self.inner.submit_write_buf(fd, buf, offset)
    }
    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> storage_io_core::Result<IoToken> {
        self.inner.submit_append(fd, data)
    }
    fn submit_datasync(&mut self, fd: IoFd) -> storage_io_core::Result<IoToken> {
        (self.hook)(OpKind::Datasync);
        self.inner.submit_datasync(fd)
    }
    fn submit_fsync(&mut self, fd: IoFd) -> storage_io_core::Result<IoToken> {
        self.inner.submit_fsync(fd)
    }
    fn flush(&mut self) -> storage_io_core::Result<usize> {
        self.inner.flush()
    }
    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.inner.poll_completions(out)
    }
    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> storage_io_core::Result<usize> {
        self.inner.wait_completions(out, min, timeout)
    }
    fn pending_count(&self) -> usize {
        self.inner.pending_count()
    }
    fn stats(&self) -> &IoStats {
        self.inner.stats()
    }
}

/// Caller backends that panic on reads while the switch is set; the counter is how many are
/// alive.
fn panicky_factory(fs: &MemFs) -> (BackendFactory, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let panic = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&panic);
    let hook = move |_: usize| -> Arc<dyn Fn(OpKind) + Send + Sync> {
        let p = Arc::clone(&p);
        Arc::new(move |op| {
            assert!(
                op != OpKind::Read || !p.load(Ordering::SeqCst),
                "HookIo: a read panicked"
            )
        })
    };
    (hook_factory(fs, hook, &alive), panic, alive)
}

/// Backends on `fs` whose hooks `hook(index)` makes.
fn hook_factory(
    fs: &MemFs,
    hook: impl Fn(usize) -> Arc<dyn Fn(OpKind) + Send + Sync> + Send + Sync + 'static,
    alive: &Arc<AtomicUsize>,
) -> BackendFactory {
    let (fs, alive) = (fs.clone(), Arc::clone(alive));
    Arc::new(move |index| {
        alive.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(HookIo {
            inner: Box::new(fs.backend()),
            hook: hook(index),
            alive: Arc::clone(&alive),
        }) as Box<dyn StorageIo>)
    })
}

/// Runs `f` on a thread and waits up to 10 s for it: a hang fails the test instead of hanging
/// it (the thread is left behind).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s (it hangs)"))
}

/// A panic while the cache loaded a page (in the read underneath) left the frame loading, with
/// a pin, forever: every later fetch of the page waited for it. The load is guarded: later
/// fetches load the page again.
#[test]
fn page_cache_fetch_after_a_loader_panicked_loads_again_instead_of_hanging() {
    let fs = MemFs::new(3);
    let (callers, panic, _) = panicky_factory(&fs);
    let sched = DiskScheduler::open_with_caller_backends(DIR, config(1), mem_factory(&fs), callers).unwrap();
    let sched = Arc::new(sched);
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 4)).recv().unwrap();
    let cache = Arc::new(PageCache::new(Arc::clone(&sched), 2).unwrap());
    panic.store(true, Ordering::SeqCst);
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.fetch(page).map(|_| ())));
    assert!(loaded.is_err(), "the loader must have panicked: {loaded:?}");
    panic.store(false, Ordering::SeqCst);
    let cache2 = Arc::clone(&cache);
    let got = within_10s("a fetch after the loader panicked", move || {
        cache2.fetch(page).map(|p| stamp(&p.read()))
    });
    assert_eq!(got.unwrap(), (page.0, 4));
    // No pin was left behind: both frames can be used for other pages.
    let more = allocate(&sched, 2);
    let pinned: Vec<_> = more.iter().map(|&p| cache.fetch(p).unwrap()).collect();
    assert_eq!(pinned.len(), 2);
}

/// A panic during a read on the caller's thread dropped that caller backend without handing it
/// back, and the pool went on counting it: with `caller_backends` spent that way, no read ran
/// on a caller's thread again. The pool recovers: a backend lost to a panic is dropped,
/// uncounted, and a new one is made when needed.
#[test]
fn a_panic_during_a_caller_read_does_not_lose_the_caller_backend_for_good() {
    let fs = MemFs::new(4);
    let (callers, panic, alive) = panicky_factory(&fs);
    let config = SchedulerConfig {
        caller_backends: 1,
        ..config(1)
    };
    let sched = DiskScheduler::open_with_caller_backends(DIR, config, mem_factory(&fs), callers).unwrap();
    let page = allocate(&sched, 1)[0];
    sched.schedule_write(page, page_bytes(page, 2)).recv().unwrap();
    assert_eq!(stamp(&sched.read_blocking(page).unwrap()), (page.0, 2));
    assert_eq!(sched.stats().caller_reads, 1);
    for round in 0..3 {
        panic.store(true, Ordering::SeqCst);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.read_blocking(page)));
        assert!(read.is_err(), "round {round}: the read must have panicked");
        panic.store(false, Ordering::SeqCst);
        let before = sched.stats().caller_reads;
        assert_eq!(stamp(&sched.read_blocking(page).unwrap()), (page.0, 2));
        assert_eq!(
            sched.stats().caller_reads,
            before + 1,
            "round {round}: after a panic, reads never ran on the caller's thread again"
        );
        assert_eq!(
            alive.load(Ordering::SeqCst),
            1,
            "round {round}: one caller backend, the new one"
        );
    }
    sched.shutdown().unwrap();
    assert_eq!(
        alive.load(Ordering::SeqCst),
        0,
        "shutdown closes the caller backends"
    );
}

/// A refused tagged read's error was sent with a blocking `send`, under the scheduler's lock,
/// into the caller's channel: a full bounded channel froze every caller. Now neither the lock
/// nor a worker ever waits on a caller's channel, and every answer still arrives.
#[test]
fn a_full_tagged_answer_channel_freezes_no_other_caller() {
    let fs = MemFs::new(6);
    let sched = Arc::new(open(&mem_factory(&fs), config(1)));
    let pages = allocate(&sched, 4);
    let (done, answers) = flume::bounded(1);
    // Refused at once (not allocated), then read by the worker: four answers for a channel
    // with room for one, and nobody receiving yet.
    {
        let (sched, done) = (Arc::clone(&sched), done.clone());
        let pages = pages.clone();
        within_10s("schedule_read_tagged into a full channel", move || {
            sched.schedule_read_tagged(PageId(9_999), 1, &done);
            sched.schedule_read_tagged(PageId(9_998), 2, &done);
            for (i, &p) in pages.iter().enumerate() {
                sched.schedule_read_tagged(p, 10 + i as u64, &done);
            }
        });
    }
    // Every other caller goes on: an allocation (the dispatcher and worker 0), a read and a
    // write on the same worker.
    let other = Arc::clone(&sched);
    let p = pages[0];
    within_10s("another caller while a tagged channel is full", move || {
        let page = other.schedule_allocate().recv().unwrap();
        other.schedule_write(page, page_bytes(page, 3)).recv().unwrap();
        assert_eq!(stamp(&other.schedule_read(page).recv().unwrap()), (page.0, 3));
        other.schedule_read(p).recv().unwrap();
    });
    // Every answer arrives once there is room.
    let mut tags: Vec<u64> = (0..6)
        .map(|_| answers.recv_timeout(Duration::from_secs(10)).unwrap())
        .map(|read| {
            match read.tag {
                1 | 2 => assert!(matches!(read.result, Err(SchedulerError::NotAllocated(_)))),
                _ => assert_eq!(read.result.unwrap().len(), PAGE),
            }
            read.tag
        })
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, [1, 2, 10, 11, 12, 13]);
    drop(done);
    sched.shutdown().unwrap();
}

/// Two `shutdown()` calls at once: the second found the dispatcher gone and the threads taken
/// by the first, and returned `Ok` at once, while a write accepted before both was still in
/// flight. Every `shutdown()` returns only once everything accepted before it is answered and
/// every thread is joined.
#[test]
fn a_second_concurrent_shutdown_waits_for_the_work_accepted_before_it() {
    let fs = MemFs::new(7);
    let gate = Gate::new();
    gate.open();
    let sched = Arc::new(open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), config(1)));
    let page = allocate(&sched, 1)[0];
    gate.close();
    let held = gate.submitted();
    let write = sched.schedule_write(page, page_bytes(page, 1));
    wait_until("the write to reach the backend", || gate.submitted() > held);
    // The first shutdown takes the dispatcher and waits for the worker, which waits for the
    // write's completion at the gate.
    let first = {
        let sched = Arc::clone(&sched);
        std::thread::spawn(move || sched.shutdown())
    };
    wait_until("the first shutdown to close the scheduler", || {
        matches!(
            sched.schedule_sync().try_recv(),
            Some(Err(SchedulerError::Closed))
        )
    });
    let (returned_tx, returned) = std::sync::mpsc::channel();
    let second = {
        let sched = Arc::clone(&sched);
        std::thread::spawn(move || {
            let result = sched.shutdown();
            // What a caller of shutdown may rely on once it returns.
            let answered = write.try_recv().map(|r| r.is_ok());
            let _ = returned_tx.send((result.is_ok(), answered));
        })
    };
    // Nothing signals "the second shutdown is waiting", so give a wrong early return a moment
    // to show itself before the gate lets the write finish (a right one never returns here).
    let early = returned.recv_timeout(Duration::from_millis(300)).ok();
    gate.open();
    let (ok, answered) = early.unwrap_or_else(|| returned.recv_timeout(Duration::from_secs(10)).unwrap());
    assert!(ok, "the second shutdown failed");
    assert_eq!(
        answered,
        Some(true),
        "the second shutdown returned before the write accepted before it was answered"
    );
    second.join().unwrap();
    first.join().unwrap().unwrap();
}

/// Worker backends whose datasyncs fail with EIO while `faults` is on, and whose datasync
/// completions wait at `gate`.
fn failing_sync_factory(fs: &MemFs, faults: &FaultSwitch, gate: &Gate) -> BackendFactory {
    let (fs, gate) = (fs.clone(), gate.clone());
    let plan = FaultPlan::new(1)
        .fail_from_nth(OpKind::Datasync, 1, Fault::Eio)
        .only_while(faults);
    Arc::new(move |_| {
        let faulty = FaultyIo::new(fs.backend(), plan.clone());
        Ok(Box::new(GatedIo::new(faulty, gate.clone(), &[OpKind::Datasync])) as Box<dyn StorageIo>)
    })
}

/// A deallocation answered with an error had still freed the id in memory, and the next
/// allocation handed it out (its image, written after, made that durable): the caller told
/// "error" and the new owner both held the page. An allocation image that cannot be made
/// durable poisons allocation until reopen: no id is handed out again in this run, and the
/// reopened scheduler holds the last durable image.
#[test]
fn a_failed_deallocation_never_lets_its_id_be_handed_out() {
    let fs = MemFs::new(11);
    let (faults, gate) = (FaultSwitch::new(), Gate::new());
    gate.open();
    let sched = open(&failing_sync_factory(&fs, &faults, &gate), config(1));
    let pages = allocate(&sched, 4);
    let victim = pages[2];
    faults.set(true);
    let err = sched.schedule_deallocate(victim).recv().unwrap_err();
    assert_eq!(err.errno(), Some(5), "{err}");
    faults.set(false); // the disk is fine again: it must not matter
    for _ in 0..2 {
        let got = sched.schedule_allocate().recv();
        assert!(
            matches!(got, Err(SchedulerError::AllocationPoisoned { .. })),
            "an allocation after a failed image: {got:?}"
        );
    }
    let got = sched.schedule_deallocate(pages[0]).recv();
    assert!(
        matches!(got, Err(SchedulerError::AllocationPoisoned { .. })),
        "{got:?}"
    );
    let got = sched.schedule_allocate_extent(2).recv();
    assert!(
        matches!(got, Err(SchedulerError::AllocationPoisoned { .. })),
        "{got:?}"
    );
    // Pages go on being read and written.
    sched
        .schedule_write(pages[1], page_bytes(pages[1], 1))
        .recv()
        .unwrap();
    sched.schedule_sync().recv().unwrap();
    drop(sched);
    let sched = open(&mem_factory(&fs), config(1));
    assert_eq!(
        stamp(&sched.schedule_read(pages[1]).recv().unwrap()),
        (pages[1].0, 1)
    );
    assert_reopened_consistently(&sched, victim, 4);
}

/// After an allocation image failed, whether its deallocation of `victim` reached the disk is
/// for the reopened scheduler to say, from the image it loads: either way it is consistent
/// (`victim` free and handed out next, or allocated and `fresh` handed out next).
fn assert_reopened_consistently(sched: &DiskScheduler, victim: PageId, fresh: u64) {
    let freed = match sched.schedule_read(victim).recv() {
        Ok(_) => false,
        Err(SchedulerError::NotAllocated(_)) => true,
        Err(e) => panic!("reading {victim} after reopen: {e}"),
    };
    assert_eq!(
        sched.stats().allocated_pages,
        if freed { fresh - 1 } else { fresh }
    );
    let next = sched.schedule_allocate().recv().unwrap();
    assert_eq!(next, if freed { victim } else { PageId(fresh) });
}

/// The same with an allocation pipelined behind the failing image: it took the freed id in
/// memory and its own image could have been written fine, but it must not be answered with it.
#[test]
fn an_allocation_queued_behind_a_failed_deallocation_never_gets_its_id() {
    let fs = MemFs::new(12);
    let (faults, gate) = (FaultSwitch::new(), Gate::new());
    gate.open();
    let sched = open(&failing_sync_factory(&fs, &faults, &gate), config(1));
    let pages = allocate(&sched, 4);
    let victim = pages[2];
    // The deallocation's image: written, its datasync failing but held at the gate.
    gate.close();
    faults.set(true);
    let synced = gate.submitted();
    let freed = sched.schedule_deallocate(victim);
    wait_until("the image's datasync to reach the backend", || {
        gate.submitted() > synced
    });
    faults.set(false);
    // Allocations behind it (the dispatcher hands out the freed id in memory at once).
    let before = sched.stats().allocated_pages;
    let taken = sched.schedule_allocate();
    wait_until("the dispatcher to handle the allocation", || {
        sched.stats().allocated_pages > before
    });
    gate.open();
    assert_eq!(freed.recv().unwrap_err().errno(), Some(5));
    let got = taken.recv();
    assert!(
        !matches!(got, Ok(p) if p == victim),
        "page {victim} was handed out although its deallocation failed: two owners"
    );
    assert!(
        matches!(got, Err(SchedulerError::AllocationPoisoned { .. })),
        "{got:?}"
    );
    drop(sched);
    let sched = open(&mem_factory(&fs), config(1));
    assert_reopened_consistently(&sched, victim, 4);
}

/// A page file whose allocation image lags its data after a crash: under `next_sync`, pages 3
/// and 4 allocated (answered at once) and written with 0xAB, then a sync whose page-file
/// fdatasync ran and whose image write the crash hit. Returns the file system; its durable
/// image says 3 pages.
fn crashed_with_data_past_the_durable_end(seed: u64) -> MemFs {
    let fs = MemFs::new(seed);
    let config = SchedulerConfig {
        alloc_durability: AllocDurability::NextSync,
        ..config(1)
    };
    let sched = open(&mem_factory(&fs), config);
    allocate(&sched, 3);
    sched.schedule_sync().recv().unwrap();
    for p in allocate(&sched, 2) {
        sched
            .schedule_write(p, Bytes::from(vec![0xAB; PAGE]))
            .recv()
            .unwrap();
    }
    // The sync's first op is the page file's fdatasync; the second, the image write, crashes.
    fs.crash_after_ops(2, CrashOptions::default());
    assert!(
        sched.schedule_sync().recv().is_err(),
        "the crash must hit the sync"
    );
    drop(sched);
    assert_eq!(fs.crash_count(), 1);
    fs
}

/// After a crash, an id past the durable end of the allocator counted as fresh and was handed
/// out with the bytes written to it before the crash (0xAB), though a page allocated and never
/// written reads as zeros. Every way of handing out such an id gives zeros, whatever
/// `zero_on_reuse` and `alloc_durability` say.
#[test]
fn a_fresh_id_after_a_crash_reads_zeros_not_its_pre_crash_bytes() {
    let modes = [
        (AllocDurability::NextSync, true),
        (AllocDurability::NextSync, false),
        (AllocDurability::Immediate, false),
        (AllocDurability::Immediate, true),
    ];
    for (seed, (durability, zero_on_reuse)) in modes.into_iter().enumerate() {
        for call in ["allocate", "allocate_extent", "allocate_at"] {
            let fs = crashed_with_data_past_the_durable_end(seed as u64);
            let reopened = SchedulerConfig {
                alloc_durability: durability,
                zero_on_reuse,
                ..config(1)
            };
            let sched = open(&mem_factory(&fs), reopened);
            let what = format!("{call} under {durability:?}, zero_on_reuse = {zero_on_reuse}");
            let pages = match call {
                "allocate" => allocate(&sched, 2),
                "allocate_extent" => {
                    let range = sched.schedule_allocate_extent(2).recv().unwrap();
                    (range.start.0..range.end.0).map(PageId).collect()
                }
                _ => {
                    assert!(sched.schedule_allocate_at(PageId(4)).recv().unwrap(), "{what}");
                    vec![PageId(4)]
                }
            };
            if call != "allocate_at" {
                assert_eq!(pages, [PageId(3), PageId(4)], "{what}: ids past the durable end");
            }
            for &p in &pages {
                let bytes = sched.schedule_read(p).recv().unwrap();
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "{what}: fresh page {p} reads its pre-crash bytes ({:#x})",
                    bytes[0]
                );
                assert!(sched.read_blocking(p).unwrap().iter().all(|&b| b == 0), "{what}");
            }
            // And durably so: after a sync and another crash, still zeros.
            sched.schedule_sync().recv().unwrap();
            drop(sched);
            fs.crash(CrashOptions::default());
            let sched = open(&mem_factory(&fs), config(1));
            for &p in &pages {
                let bytes = sched.schedule_read(p).recv().unwrap();
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "{what}: page {p} after a second crash"
                );
            }
        }
    }
}

/// The rule behind the test above, at every crash point of a `next_sync` workload (opening
/// included, three tear modes): after reopening, every id `schedule_allocate` hands out (the
/// workload frees none, so each is fresh) reads as zeros, with `zero_on_reuse` off.
#[test]
fn crash_at_every_op_then_every_fresh_id_reads_zeros() {
    let config = SchedulerConfig {
        alloc_durability: AllocDurability::NextSync,
        ..config(2)
    };
    let workload = |sched: &DiskScheduler| -> storage_io_scheduler::Result<()> {
        for round in 0..3u32 {
            let mut pages = vec![
                sched.schedule_allocate().recv()?,
                sched.schedule_allocate().recv()?,
            ];
            let extent = sched.schedule_allocate_extent(2).recv()?;
            pages.extend((extent.start.0..extent.end.0).map(PageId));
            for &p in &pages {
                sched.schedule_write(p, page_bytes(p, round + 1)).recv()?;
            }
            if round == 1 {
                sched
                    .schedule_write_durable(pages[0], page_bytes(pages[0], 9))
                    .recv()?;
            } else {
                sched.schedule_sync().recv()?;
            }
        }
        Ok(())
    };
    let dry = MemFs::new(0);
    {
        let sched = open(&mem_factory(&dry), config.clone());
        workload(&sched).unwrap();
    }
    let total = dry.mutation_count();
    for seed in 0..3u64 {
        let tear = [
            storage_io_testkit::memio::TearMode::None,
            storage_io_testkit::memio::TearMode::Prefix,
            storage_io_testkit::memio::TearMode::AnySectors,
        ][seed as usize];
        for n in 1..=total + 1 {
            let fs = MemFs::new(seed * 1000 + n);
            fs.crash_after_ops(n, CrashOptions { tear });
            if let Ok(sched) = DiskScheduler::open(DIR, config.clone(), mem_factory(&fs)) {
                let _ = workload(&sched);
            }
            if fs.crash_count() == 0 {
                fs.crash_after_ops(0, CrashOptions { tear });
                fs.crash(CrashOptions { tear });
            }
            let sched = DiskScheduler::open(DIR, config.clone(), mem_factory(&fs))
                .unwrap_or_else(|e| panic!("crash at op {n} ({tear:?}): reopen: {e}"));
            for _ in 0..14 {
                let p = sched.schedule_allocate().recv().unwrap();
                let bytes = sched.schedule_read(p).recv().unwrap();
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "crash at op {n} of {total} ({tear:?}): fresh page {p} reads {:?}",
                    stamp(&bytes)
                );
            }
        }
    }
}

/// The same when the caller backend's factory panics while making it: the slot it counted is
/// given back, so a later read makes one.
#[test]
fn a_panic_while_making_a_caller_backend_does_not_use_up_the_pool() {
    let fs = MemFs::new(13);
    let fail = Arc::new(AtomicBool::new(false));
    let callers: BackendFactory = {
        let (fs, fail) = (fs.clone(), Arc::clone(&fail));
        Arc::new(move |_| {
            assert!(
                !fail.load(Ordering::SeqCst),
                "a caller backend's factory panicked"
            );
            Ok(Box::new(fs.backend()) as Box<dyn StorageIo>)
        })
    };
    let config = SchedulerConfig {
        caller_backends: 1,
        ..config(1)
    };
    let sched = DiskScheduler::open_with_caller_backends(DIR, config, mem_factory(&fs), callers).unwrap();
    let page = allocate(&sched, 1)[0];
    fail.store(true, Ordering::SeqCst);
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.read_blocking(page)));
    assert!(read.is_err(), "the factory must have panicked");
    fail.store(false, Ordering::SeqCst);
    sched.read_blocking(page).unwrap();
    assert_eq!(sched.stats().caller_reads, 1, "the pool was used up by the panic");
}

/// Under `next_sync`, the zero page written over a stale id went out without a sync, and the
/// next `schedule_sync` sent its allocation image at the same time as its page-file barrier:
/// worker 0 wrote and synced the image while the barrier still waited behind a parked write, so
/// a crash left the id allocated (answered, never written) with its pre-crash bytes. An image
/// goes out only once every zero page written before it is durable.
#[test]
fn next_sync_image_durable_before_the_zero_page_of_a_stale_id() {
    let fs = crashed_with_data_past_the_durable_end(21);
    let gate = Gate::new();
    gate.open();
    let next_sync = SchedulerConfig {
        alloc_durability: AllocDurability::NextSync,
        ..config(1)
    };
    let sched = open(&gated_factory_for(&fs, &gate, &[OpKind::Write]), next_sync);
    let p = sched.schedule_allocate().recv().unwrap();
    assert_eq!(p, PageId(3), "the first stale id");
    assert!(sched.schedule_read(p).recv().unwrap().iter().all(|&b| b == 0));
    // A write to page 0 held in flight and another parked behind it: the sync's page-file
    // barrier waits for them, the image does not.
    gate.close();
    let _held = sched.schedule_write(PageId(0), page_bytes(PageId(0), 1));
    let _parked = sched.schedule_write(PageId(0), page_bytes(PageId(0), 2));
    let syncs = fs.sync_count();
    let _sync = sched.schedule_sync();
    wait_until("the image's datasync", || fs.sync_count() > syncs);
    fs.crash(CrashOptions::default());
    gate.open();
    drop(sched);
    let sched = open(&mem_factory(&fs), config(1));
    match sched.schedule_read(p).recv() {
        Err(SchedulerError::NotAllocated(_)) => {}
        Ok(bytes) => assert!(
            bytes.iter().all(|&b| b == 0),
            "page {p} (allocated, answered, never written) reads {:#x} after the crash",
            bytes[0]
        ),
        Err(e) => panic!("reading {p} after the crash: {e}"),
    }
}

/// With `zero_on_reuse`, the zero-page write over a reused id failed and the allocation was
/// answered with that error, yet the allocator kept the id allocated (and the image made it
/// durable) and allocation went on: an error that neither rolled back nor poisoned. A failed
/// zero page poisons allocation until reopen, as a failed image does.
#[test]
fn a_failed_zero_page_write_poisons_allocation() {
    let fs = MemFs::new(24);
    {
        let sched = open(&mem_factory(&fs), config(1));
        allocate(&sched, 3);
        sched.schedule_deallocate(PageId(1)).recv().unwrap();
        sched.shutdown().unwrap();
    }
    // The reopened worker's first write is the zero page over the reused id 1: it fails.
    let plan = FaultPlan::new(3).fail_nth(OpKind::Write, 1, Fault::Eio);
    let zero_on_reuse = SchedulerConfig {
        zero_on_reuse: true,
        ..config(1)
    };
    let sched = open(&faulty_factory(&fs, plan), zero_on_reuse);
    let got = sched.schedule_allocate().recv();
    assert_eq!(
        got.as_ref().map_err(SchedulerError::errno).unwrap_err(),
        Some(5),
        "{got:?}"
    );
    for _ in 0..2 {
        let next = sched.schedule_allocate().recv();
        assert!(
            matches!(next, Err(SchedulerError::AllocationPoisoned { .. })),
            "an allocation answered with an error changed the allocator and allocation goes on: {next:?}"
        );
    }
    // Reads and writes go on.
    sched
        .schedule_write(PageId(0), page_bytes(PageId(0), 1))
        .recv()
        .unwrap();
    drop(sched);
    let sched = open(&mem_factory(&fs), config(1));
    assert_reopened_consistently(&sched, PageId(1), 3);
}

/// A read that joined a read on a caller's thread is accepted work, answered by that caller;
/// shutdown returned `Ok` while it was still unanswered. Shutdown waits for every read on a
/// caller's thread in progress.
#[test]
fn shutdown_waits_for_a_read_joined_to_a_caller_read() {
    let fs = MemFs::new(22);
    let gate = Gate::new();
    let sched = Arc::new(
        DiskScheduler::open_with_caller_backends(DIR, config(1), mem_factory(&fs), gated_factory(&fs, &gate))
            .unwrap(),
    );
    let p = allocate(&sched, 1)[0];
    sched.schedule_write(p, page_bytes(p, 1)).recv().unwrap();
    let caller = {
        let s = Arc::clone(&sched);
        std::thread::spawn(move || s.read_blocking(p).map(|b| stamp(&b)))
    };
    wait_until("the caller read to reach its backend", || gate.submitted() >= 1);
    let joined = sched.schedule_read(p);
    assert_eq!(sched.stats().reads_joined, 1);
    // The caller read may end once shutdown has closed the scheduler (new calls get `Closed`).
    let opener = {
        let (s, gate) = (Arc::clone(&sched), gate.clone());
        std::thread::spawn(move || {
            wait_until("shutdown to close the scheduler", || {
                matches!(s.schedule_read(PageId(999)).recv(), Err(SchedulerError::Closed))
            });
            gate.open();
        })
    };
    sched.shutdown().unwrap();
    let answered = joined.try_recv().map(|r| r.map(|b| stamp(&b)));
    opener.join().unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), (p.0, 1));
    assert_eq!(
        answered.map(|r| r.unwrap()),
        Some((p.0, 1)),
        "shutdown returned Ok while a read accepted before it was unanswered"
    );
}

/// Under `next_sync`, shutdown is a durability point: its last allocation image holds the
/// allocations answered at once. When that image failed, shutdown still returned `Ok` (the
/// worker only logged it), and after a crash the allocations were gone. Shutdown returns the
/// error of its durability point.
#[test]
fn shutdown_returns_the_error_of_its_final_allocation_image() {
    let fs = MemFs::new(27);
    let faults = FaultSwitch::new();
    let plan = FaultPlan::new(1)
        .fail_from_nth(OpKind::Write, 1, Fault::Eio)
        .only_while(&faults);
    let next_sync = SchedulerConfig {
        alloc_durability: AllocDurability::NextSync,
        ..config(1)
    };
    let sched = open(&faulty_factory(&fs, plan), next_sync.clone());
    let pages = allocate(&sched, 3);
    faults.set(true);
    let result = sched.shutdown();
    faults.set(false);
    assert_eq!(
        sched.shutdown().map_err(|e| e.errno()),
        result.clone().map_err(|e| e.errno()),
        "a second shutdown returns the same"
    );
    drop(sched);
    fs.crash(CrashOptions::default());
    let sched = open(&mem_factory(&fs), next_sync);
    let got = sched.schedule_read(pages[2]).recv().map(|b| b.len());
    assert!(
        result.is_err() || got.is_ok(),
        "shutdown said Ok though its durability point failed: {} is gone after the crash ({got:?})",
        pages[2]
    );
    assert_eq!(result.unwrap_err().errno(), Some(5));
}
