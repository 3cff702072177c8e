//! [`DatasyncBarrier`]: the contract's datasync barrier for one file, for a backend whose
//! device (or worker pool) runs ops in any order.
//!
//! The rule (contract rule 4): a datasync or fsync of a file completes only after every write to
//! that file submitted before it. A backend that cannot ask its device for that ordering holds
//! the sync back until the writes submitted before it have finished, and holds every write
//! submitted while a sync is held behind it (so the sync never covers a later write and the
//! order stays submission order). Reads are never held. The backend counts its own writes
//! outstanding (in the kernel, at a worker) and keeps the held ops here.

use std::collections::VecDeque;

use crate::op::OpKind;

/// The ops of one file held back by the datasync barrier, in submission order.
///
/// ```
/// use storage_io_core::OpKind;
/// use storage_io_core::backend_kit::DatasyncBarrier;
/// let mut barrier = DatasyncBarrier::new();
/// let mut writes_out = 1; // one write of this file is on the device
/// assert!(barrier.must_hold(OpKind::Datasync, writes_out));
/// barrier.hold("sync");
/// assert!(barrier.must_hold(OpKind::Write, writes_out)); // queues behind the held sync
/// barrier.hold("write after the sync");
/// assert!(!barrier.must_hold(OpKind::Read, writes_out)); // reads pass
/// let op = |s: &&str| if s.starts_with("sync") { OpKind::Datasync } else { OpKind::Write };
/// assert_eq!(barrier.next_released(writes_out, op), None); // the write is still out
/// writes_out = 0;
/// assert_eq!(barrier.next_released(writes_out, op), Some("sync"));
/// assert_eq!(barrier.next_released(writes_out, op), Some("write after the sync"));
/// assert!(barrier.is_empty());
/// ```
#[derive(Debug)]
pub struct DatasyncBarrier<T> {
    held: VecDeque<T>,
}

impl<T> Default for DatasyncBarrier<T> {
    fn default() -> Self {
        DatasyncBarrier::new()
    }
}

impl<T> DatasyncBarrier<T> {
    /// A barrier holding nothing.
    pub fn new() -> Self {
        DatasyncBarrier {
            held: VecDeque::new(),
        }
    }

    /// Whether a new `op` of this file must be held rather than dispatched, with `writes_out`
    /// of its writes dispatched and not yet finished: a sync while any write is out or anything
    /// is held, a write while anything is held, a read never.
    pub fn must_hold(&self, op: OpKind, writes_out: usize) -> bool {
        match op {
            OpKind::Datasync | OpKind::Fsync => writes_out > 0 || !self.held.is_empty(),
            OpKind::Write | OpKind::Append => !self.held.is_empty(),
            OpKind::Read => false,
        }
    }

    /// Holds an op that [`must_hold`](Self::must_hold) said must wait.
    pub fn hold(&mut self, item: T) {
        self.held.push_back(item);
    }

    /// The next held op the barrier now lets go, given `writes_out` (call again after
    /// dispatching it, with the count updated: a released write is out from then on); `op_of`
    /// says what a held item is. A held sync goes only once no write is out.
    pub fn next_released(&mut self, writes_out: usize, op_of: impl Fn(&T) -> OpKind) -> Option<T> {
        let front = self.held.front()?;
        let op = op_of(front);
        // Paired with `must_hold`, which never holds a read: a held read means a backend held
        // an op the rule lets pass (and it would wait behind a sync for nothing).
        crate::invariant!(op != OpKind::Read, "a read held by the datasync barrier");
        if op.is_sync() && writes_out > 0 {
            return None;
        }
        self.held.pop_front()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How many ops are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Takes every held op (a file closing, a backend failing them all).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.held.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(op: &(OpKind, u32)) -> OpKind {
        op.0
    }

    #[test]
    fn a_sync_waits_for_earlier_writes_and_later_writes_wait_for_it() {
        let mut b = DatasyncBarrier::new();
        let mut out = 0;
        // Nothing out, nothing held: everything goes.
        for op in [
            OpKind::Write,
            OpKind::Read,
            OpKind::Datasync,
            OpKind::Fsync,
            OpKind::Append,
        ] {
            assert!(!b.must_hold(op, out), "{op:?}");
        }
        out = 2; // two writes on the device
        assert!(b.must_hold(OpKind::Datasync, out));
        assert!(b.must_hold(OpKind::Fsync, out));
        assert!(
            !b.must_hold(OpKind::Write, out),
            "writes pass while no sync is held"
        );
        b.hold((OpKind::Datasync, 1));
        assert!(b.must_hold(OpKind::Write, out) && b.must_hold(OpKind::Append, out));
        assert!(!b.must_hold(OpKind::Read, out), "reads are never held");
        b.hold((OpKind::Write, 2));
        b.hold((OpKind::Fsync, 3));
        assert_eq!(b.len(), 3);
        // One write finishes: the sync still waits.
        out = 1;
        assert_eq!(b.next_released(out, kind), None);
        out = 0;
        assert_eq!(b.next_released(out, kind), Some((OpKind::Datasync, 1)));
        // The write after it goes, and is out from then on: the fsync waits for it.
        assert_eq!(b.next_released(out, kind), Some((OpKind::Write, 2)));
        out = 1;
        assert_eq!(b.next_released(out, kind), None);
        assert!(b.must_hold(OpKind::Write, out), "still behind the held fsync");
        out = 0;
        assert_eq!(b.next_released(out, kind), Some((OpKind::Fsync, 3)));
        assert!(b.is_empty());
        assert_eq!(b.next_released(out, kind), None);
    }

    #[test]
    fn drain_gives_back_everything_held_in_order() {
        let mut b = DatasyncBarrier::new();
        b.hold((OpKind::Datasync, 1));
        b.hold((OpKind::Write, 2));
        let all: Vec<_> = b.drain().collect();
        assert_eq!(all, vec![(OpKind::Datasync, 1), (OpKind::Write, 2)]);
        assert!(b.is_empty());
    }
}
