//! Property test: random interleavings of read (owned, shared, and blocking on the caller's
//! thread) / write / read_pages / allocate / deallocate / sync, issued several at a time
//! without waiting (a blocking read waits for its own answer only), on backends that reorder and delay
//! completions, against an in-memory page model. Then a reopen must show the model's state.
//! It runs in every allocation mode: managed (also with changes made durable at the next sync,
//! and with reused ids zeroed) and external (the engine owns allocation; ids past `max_pages`
//! are refused).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use storage_io_scheduler::{
    AllocDurability, AllocationMode, DiskScheduler, PageId, Reply, SchedulerConfig, SchedulerError,
};
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::memio::MemFs;

#[derive(Debug, Clone)]
enum Step {
    Allocate,
    Deallocate(usize),
    Write(usize, bool),
    Read(usize),
    /// `schedule_read_shared`: the zero-copy answer.
    ReadShared(usize),
    /// `read_blocking`, answered before the next step while the others stay outstanding.
    ReadBlocking(usize),
    ReadPages(Vec<usize>),
    Sync,
    /// Wait for every answer outstanding so far.
    Drain,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Allocate),
        1 => (0usize..24).prop_map(Step::Deallocate),
        4 => (0usize..24, any::<bool>()).prop_map(|(p, d)| Step::Write(p, d)),
        4 => (0usize..24).prop_map(Step::Read),
        2 => (0usize..24).prop_map(Step::ReadShared),
        2 => (0usize..24).prop_map(Step::ReadBlocking),
        2 => prop::collection::vec(0usize..24, 0..8).prop_map(Step::ReadPages),
        1 => Just(Step::Sync),
        1 => Just(Step::Drain),
    ]
}

/// The allocation setups the model runs in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Managed,
    /// Managed, with `alloc_durability = next_sync` and `zero_on_reuse`.
    ManagedDeferredZeroing,
    /// External, with `max_pages = EXTERNAL_MAX` (the steps touch ids up to 23).
    External,
}

const EXTERNAL_MAX: u64 = 20;

fn mode_config(mode: Mode) -> SchedulerConfig {
    let base = config(2);
    match mode {
        Mode::Managed => base,
        Mode::ManagedDeferredZeroing => SchedulerConfig {
            alloc_durability: AllocDurability::NextSync,
            zero_on_reuse: true,
            ..base
        },
        Mode::External => SchedulerConfig {
            allocation: AllocationMode::External,
            max_pages: Some(EXTERNAL_MAX),
            ..base
        },
    }
}

/// Why a call must fail.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    NotAllocated(u64),
    OutOfRange(u64),
    External,
}

fn is(got: &SchedulerError, why: Why) -> bool {
    match (got, why) {
        (SchedulerError::NotAllocated(p), Why::NotAllocated(q)) => p.0 == q,
        (SchedulerError::OutOfRange { page, .. }, Why::OutOfRange(q)) => page.0 == q,
        (SchedulerError::ExternalAllocation { .. }, Why::External) => true,
        _ => false,
    }
}

/// The reference: which ids are allocated and the newest bytes of every page ever written.
struct Model {
    mode: Mode,
    next: u64,
    free: BTreeSet<u64>,
    contents: HashMap<u64, Bytes>,
    version: u32,
}

impl Model {
    fn new(mode: Mode) -> Self {
        Model {
            mode,
            next: 0,
            free: BTreeSet::new(),
            contents: HashMap::new(),
            version: 0,
        }
    }
    /// Why page `p` cannot be read or written, if it cannot.
    fn refuses(&self, p: u64) -> Option<Why> {
        match self.mode {
            Mode::External if p >= EXTERNAL_MAX => Some(Why::OutOfRange(p)),
            Mode::External => None,
            _ if p < self.next && !self.free.contains(&p) => None,
            _ => Some(Why::NotAllocated(p)),
        }
    }
    fn allocated(&self, p: u64) -> bool {
        self.refuses(p).is_none()
    }
    fn allocate(&mut self) -> Result<u64, Why> {
        if self.mode == Mode::External {
            return Err(Why::External);
        }
        match self.free.pop_first() {
            Some(p) => {
                if self.mode == Mode::ManagedDeferredZeroing {
                    self.contents.remove(&p); // zero_on_reuse
                }
                Ok(p)
            }
            None => {
                self.next += 1;
                Ok(self.next - 1)
            }
        }
    }
    fn deallocate(&mut self, p: u64) -> Result<(), Why> {
        match self.mode {
            Mode::External => Err(Why::External),
            _ => match self.refuses(p) {
                Some(why) => Err(why),
                None => {
                    self.free.insert(p);
                    Ok(())
                }
            },
        }
    }
    fn bytes(&self, p: u64) -> Bytes {
        self.contents
            .get(&p)
            .cloned()
            .unwrap_or_else(|| Bytes::from(vec![0u8; PAGE]))
    }
}

enum Expect {
    Page(Reply<BytesMut>, Result<Bytes, Why>),
    Shared(Reply<Bytes>, Result<Bytes, Why>),
    Pages(Reply<Vec<BytesMut>>, Result<Vec<Bytes>, usize>),
    Unit(Reply<()>, Result<(), Why>),
    Id(Reply<PageId>, Result<u64, Why>),
}

/// A page read's answer against the model's.
fn check_page<B: AsRef<[u8]> + std::fmt::Debug>(
    what: &str,
    got: Result<B, SchedulerError>,
    want: Result<Bytes, Why>,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Ok(got), Ok(want)) => prop_assert_eq!(stamp(got.as_ref()), stamp(&want)),
        (Err(e), Err(why)) if is(&e, why) => {}
        (got, want) => prop_assert!(false, "{what}: got {got:?}, want {want:?}"),
    }
    Ok(())
}

fn check(e: Expect) -> Result<(), TestCaseError> {
    match e {
        Expect::Shared(r, want) => check_page("shared read", r.recv(), want)?,
        Expect::Page(r, want) => check_page("read", r.recv(), want)?,
        Expect::Pages(r, want) => match (r.recv(), want) {
            (Ok(got), Ok(want)) => {
                let got: Vec<_> = got.iter().map(|b| stamp(b)).collect();
                let want: Vec<_> = want.iter().map(|b| stamp(b)).collect();
                prop_assert_eq!(got, want);
            }
            (Err(SchedulerError::Batch { index, .. }), Err(want)) => prop_assert_eq!(index, want),
            (got, want) => prop_assert!(false, "read_pages: got {got:?}, want {want:?}"),
        },
        Expect::Unit(r, want) => match (r.recv(), want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(why)) if is(&e, why) => {}
            (got, want) => prop_assert!(false, "write/deallocate/sync: got {got:?}, want {want:?}"),
        },
        Expect::Id(r, want) => match (r.recv(), want) {
            (Ok(got), Ok(want)) => prop_assert_eq!(got.0, want),
            (Err(e), Err(why)) if is(&e, why) => {}
            (got, want) => prop_assert!(false, "allocate: got {got:?}, want {want:?}"),
        },
    }
    Ok(())
}

fn run(steps: Vec<Step>, seed: u64, mode: Mode) -> Result<(), TestCaseError> {
    let fs = MemFs::new(seed);
    let plan = FaultPlan::new(seed)
        .reorder(true)
        .with_probability(None, 0.3, Fault::Delay { polls: 3 });
    let sched = open(&faulty_factory(&fs, plan), mode_config(mode));
    let mut model = Model::new(mode);
    let mut outstanding: Vec<Expect> = Vec::new();
    for s in steps {
        match s {
            Step::Allocate => {
                let want = model.allocate();
                outstanding.push(Expect::Id(sched.schedule_allocate(), want));
            }
            Step::Deallocate(p) => {
                let p = p as u64;
                let want = model.deallocate(p);
                outstanding.push(Expect::Unit(sched.schedule_deallocate(PageId(p)), want));
            }
            Step::Write(p, durable) => {
                let p = p as u64;
                model.version += 1;
                let data = page_bytes(PageId(p), model.version);
                let want = model.refuses(p).map_or(Ok(()), Err);
                if want.is_ok() {
                    model.contents.insert(p, data.clone());
                }
                let reply = if durable {
                    sched.schedule_write_durable(PageId(p), data)
                } else {
                    sched.schedule_write(PageId(p), data)
                };
                outstanding.push(Expect::Unit(reply, want));
            }
            Step::Read(p) => {
                let p = p as u64;
                let want = model.refuses(p).map_or_else(|| Ok(model.bytes(p)), Err);
                outstanding.push(Expect::Page(sched.schedule_read(PageId(p)), want));
            }
            Step::ReadShared(p) => {
                let p = p as u64;
                let want = model.refuses(p).map_or_else(|| Ok(model.bytes(p)), Err);
                outstanding.push(Expect::Shared(sched.schedule_read_shared(PageId(p)), want));
            }
            Step::ReadBlocking(p) => {
                let p = p as u64;
                let want = model.refuses(p).map_or_else(|| Ok(model.bytes(p)), Err);
                check_page("blocking read", sched.read_blocking(PageId(p)), want)?;
            }
            Step::ReadPages(ps) => {
                let ids: Vec<u64> = ps.into_iter().map(|p| p as u64).collect();
                let want = match ids.iter().position(|&p| !model.allocated(p)) {
                    Some(i) => Err(i),
                    None => Ok(ids.iter().map(|&p| model.bytes(p)).collect()),
                };
                outstanding.push(Expect::Pages(
                    sched.schedule_read_pages(ids.into_iter().map(PageId).collect()),
                    want,
                ));
            }
            Step::Sync => outstanding.push(Expect::Unit(sched.schedule_sync(), Ok(()))),
            Step::Drain => {
                for e in outstanding.drain(..) {
                    check(e)?;
                }
            }
        }
    }
    for e in outstanding.drain(..) {
        check(e)?;
    }
    sched.shutdown().unwrap();
    drop(sched);

    // Everything acknowledged is there after a reopen (no crash: unsynced data counts too).
    let sched = DiskScheduler::open(DIR, mode_config(mode), mem_factory(&fs)).unwrap();
    if mode != Mode::External {
        prop_assert_eq!(
            sched.stats().allocated_pages,
            model.next - model.free.len() as u64
        );
    }
    for p in 0..(model.next + 2).max(24) {
        let got = sched.schedule_read(PageId(p)).recv();
        match model.refuses(p) {
            None => prop_assert_eq!(stamp(&got.unwrap()), stamp(&model.bytes(p))),
            Some(why) => prop_assert!(
                matches!(&got, Err(e) if is(e, why)),
                "page {p}: {got:?}, want {why:?}"
            ),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn order_and_contents_match_the_page_model(steps in prop::collection::vec(step(), 1..80), seed in any::<u64>()) {
        run(steps, seed, Mode::Managed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn external_allocation_matches_the_page_model(steps in prop::collection::vec(step(), 1..80), seed in any::<u64>()) {
        run(steps, seed, Mode::External)?;
    }

    #[test]
    fn deferred_zeroing_allocation_matches_the_page_model(steps in prop::collection::vec(step(), 1..80), seed in any::<u64>()) {
        run(steps, seed, Mode::ManagedDeferredZeroing)?;
    }
}

#[test]
fn order_model_smoke_with_a_fixed_interleaving() {
    let mut steps = vec![Step::Allocate; 10];
    steps.extend([
        Step::Write(3, false),
        Step::Read(3),
        Step::Deallocate(3),
        Step::Read(3),
        Step::Allocate, // reuses 3, which keeps its old bytes
        Step::Read(3),
        Step::ReadBlocking(3),
        Step::ReadShared(3),
        Step::ReadPages(vec![3, 2, 3, 9, 11]),
        Step::Write(9, true),
        Step::Sync,
        Step::Drain,
        Step::ReadPages(vec![9, 8, 7, 6, 5, 4, 3]),
    ]);
    for mode in [Mode::Managed, Mode::ManagedDeferredZeroing, Mode::External] {
        run(steps.clone(), 1, mode).unwrap();
    }
}
