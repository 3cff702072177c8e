//! Property test: random interleavings of read / write / read_pages / allocate / deallocate /
//! sync, issued several at a time without waiting, on backends that reorder and delay
//! completions, against an in-memory page model. Then a reopen must show the model's state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use storage_io_scheduler::{DiskScheduler, PageId, Reply, SchedulerError};
use storage_io_testkit::faulty::{Fault, FaultPlan};
use storage_io_testkit::memio::MemFs;

#[derive(Debug, Clone)]
enum Step {
    Allocate,
    Deallocate(usize),
    Write(usize, bool),
    Read(usize),
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
        2 => prop::collection::vec(0usize..24, 0..8).prop_map(Step::ReadPages),
        1 => Just(Step::Sync),
        1 => Just(Step::Drain),
    ]
}

/// The reference: which ids are allocated and the newest bytes of every page ever written.
#[derive(Default)]
struct Model {
    next: u64,
    free: BTreeSet<u64>,
    contents: HashMap<u64, Bytes>,
    version: u32,
}

impl Model {
    fn allocated(&self, p: u64) -> bool {
        p < self.next && !self.free.contains(&p)
    }
    fn allocate(&mut self) -> u64 {
        match self.free.pop_first() {
            Some(p) => p,
            None => {
                self.next += 1;
                self.next - 1
            }
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
    Page(Reply<BytesMut>, Result<Bytes, u64>),
    Pages(Reply<Vec<BytesMut>>, Result<Vec<Bytes>, usize>),
    Unit(Reply<()>, Result<(), u64>),
    Id(Reply<PageId>, u64),
}

fn check(e: Expect) -> Result<(), TestCaseError> {
    match e {
        Expect::Page(r, want) => match (r.recv(), want) {
            (Ok(got), Ok(want)) => prop_assert_eq!(stamp(&got), stamp(&want)),
            (Err(SchedulerError::NotAllocated(p)), Err(want)) => prop_assert_eq!(p.0, want),
            (got, want) => prop_assert!(false, "read: got {got:?}, want {want:?}"),
        },
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
            (Err(SchedulerError::NotAllocated(p)), Err(want)) => prop_assert_eq!(p.0, want),
            (got, want) => prop_assert!(false, "write/deallocate/sync: got {got:?}, want {want:?}"),
        },
        Expect::Id(r, want) => prop_assert_eq!(r.recv().unwrap().0, want),
    }
    Ok(())
}

fn run(steps: Vec<Step>, seed: u64) -> Result<(), TestCaseError> {
    let fs = MemFs::new(seed);
    let plan = FaultPlan::new(seed)
        .reorder(true)
        .with_probability(None, 0.3, Fault::Delay { polls: 3 });
    let sched = open(&faulty_factory(&fs, plan), config(2));
    let mut model = Model::default();
    let mut outstanding: Vec<Expect> = Vec::new();
    for s in steps {
        match s {
            Step::Allocate => {
                let want = model.allocate();
                outstanding.push(Expect::Id(sched.schedule_allocate(), want));
            }
            Step::Deallocate(p) => {
                let p = p as u64;
                let want = if model.allocated(p) { Ok(()) } else { Err(p) };
                if want.is_ok() {
                    model.free.insert(p);
                }
                outstanding.push(Expect::Unit(sched.schedule_deallocate(PageId(p)), want));
            }
            Step::Write(p, durable) => {
                let p = p as u64;
                model.version += 1;
                let data = page_bytes(PageId(p), model.version);
                let want = if model.allocated(p) { Ok(()) } else { Err(p) };
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
                let want = if model.allocated(p) {
                    Ok(model.bytes(p))
                } else {
                    Err(p)
                };
                outstanding.push(Expect::Page(sched.schedule_read(PageId(p)), want));
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
    let sched = DiskScheduler::open(DIR, config(2), mem_factory(&fs)).unwrap();
    prop_assert_eq!(
        sched.stats().allocated_pages,
        model.next - model.free.len() as u64
    );
    for p in 0..model.next + 2 {
        let got = sched.schedule_read(PageId(p)).recv();
        if model.allocated(p) {
            prop_assert_eq!(stamp(&got.unwrap()), stamp(&model.bytes(p)));
        } else {
            prop_assert!(
                matches!(got, Err(SchedulerError::NotAllocated(_))),
                "page {p}: {got:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn order_and_contents_match_the_page_model(steps in prop::collection::vec(step(), 1..80), seed in any::<u64>()) {
        run(steps, seed)?;
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
        Step::ReadPages(vec![3, 2, 3, 9, 11]),
        Step::Write(9, true),
        Step::Sync,
        Step::Drain,
        Step::ReadPages(vec![9, 8, 7, 6, 5, 4, 3]),
    ]);
    run(steps, 1).unwrap();
}
