//! [`IoLoop`]: the one loop of a thread that owns a backend and serves a request channel.
//!
//! Such a thread takes requests from its channel, submits their ops, waits for completions and
//! answers them. The loop here does the part every such thread shares — when to block on the
//! channel, how much to take from it at once, how long to wait for completions — and leaves the
//! requests' meaning to an [`IoHandler`]:
//!
//! 1. With no accepted work left and still accepting, block on the channel for a request.
//! 2. Take what else is queued, at most [`INTAKE_BATCH`] at a time (completions are not
//!    starved), then [`pump`](IoHandler::pump): submit what may go.
//! 3. Nothing in flight: stop if stopping and done; block on the channel if the handler waits
//!    for a message ([`waits_for_intake`](IoHandler::waits_for_intake)); else go round.
//! 4. Otherwise wait for a completion. With the backend's [`WaitWaker`] the wait has no timeout
//!    (a sender wakes it after sending); without one it ends after the fallback poll interval to
//!    look at the channel. While stopping nothing can arrive, and the wait has no timeout.
//! 5. Hand the completions to [`complete`](IoHandler::complete), which may take more requests
//!    meanwhile through the [`Intake`].
//!
//! A `Stop` (the handler's answer to a shutdown message) or a closed channel ends the intake;
//! the loop still finishes every accepted op before it returns: exactly one answer per request.

use std::time::Duration;

use crate::backend::StorageIo;
use crate::op::IoCompletion;
use crate::wake::WaitWaker;

/// The most requests taken from the channel between two looks at the backend.
pub const INTAKE_BATCH: usize = 256;

/// What [`IoHandler::accept`] says about the message it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Keep taking requests.
    Continue,
    /// A shutdown: take no more requests, finish what was accepted, then return.
    Stop,
}

/// The requests' meaning, for [`IoLoop::run`]: what a message does, what to submit, what a
/// completion answers.
pub trait IoHandler {
    /// A message on the channel.
    type Msg;
    /// The backend this thread owns.
    type Io: StorageIo + ?Sized;

    /// The backend, for the loop's waits.
    fn io(&mut self) -> &mut Self::Io;

    /// Takes one message.
    fn accept(&mut self, msg: Self::Msg) -> Accepted;

    /// Submits what may go now (and flushes the backend's submissions).
    fn pump(&mut self);

    /// Whether accepted work is unfinished: queued, in flight, or waiting for something.
    fn has_work(&self) -> bool;

    /// Ops submitted to the backend and not yet completed: what a wait for completions waits for.
    fn in_flight(&self) -> usize;

    /// With nothing in flight: whether the accepted work waits for a message (then the loop
    /// blocks on the channel, also while stopping). `false` by default.
    fn waits_for_intake(&self) -> bool {
        false
    }

    /// The channel closed while [`waits_for_intake`](IoHandler::waits_for_intake): the awaited
    /// message will never come. Nothing by default.
    fn intake_gone(&mut self) {}

    /// Answers the completions in `done` (draining it). May take more requests meanwhile with
    /// [`Intake::take`] (and pump them), so the device gets new work before the last answer.
    fn complete(&mut self, done: &mut Vec<IoCompletion>, intake: &mut Intake<Self::Msg>);
}

/// The channel side of an [`IoLoop`]: the receiver, and whether the intake has ended.
#[derive(Debug)]
pub struct Intake<M> {
    rx: flume::Receiver<M>,
    stopping: bool,
}

impl<M> Intake<M> {
    /// Takes what is queued on the channel into `handler`, at most [`INTAKE_BATCH`] messages
    /// and none once stopping; returns how many were taken.
    pub fn take<H: IoHandler<Msg = M> + ?Sized>(&mut self, handler: &mut H) -> usize {
        let mut taken = 0;
        while !self.stopping && taken < INTAKE_BATCH {
            match self.rx.try_recv() {
                Ok(msg) => self.stopping |= handler.accept(msg) == Accepted::Stop,
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => self.stopping = true,
            }
            taken += 1;
        }
        taken
    }

    /// Whether the intake has ended (a `Stop`, or every sender gone).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Blocks for one message; `false` when the channel is closed (every sender gone).
    fn recv<H: IoHandler<Msg = M> + ?Sized>(&mut self, handler: &mut H) -> bool {
        match self.rx.recv() {
            Ok(msg) => {
                self.stopping |= handler.accept(msg) == Accepted::Stop;
                true
            }
            Err(_) => {
                self.stopping = true;
                false
            }
        }
    }
}

/// The loop of a thread that owns a backend and serves a channel (see the module docs).
#[derive(Debug)]
pub struct IoLoop<M> {
    intake: Intake<M>,
    /// How long a wait for completions may block while requests could arrive: `None` when the
    /// backend has a [`WaitWaker`] (senders wake it).
    poll: Option<Duration>,
    done: Vec<IoCompletion>,
}

impl<M> IoLoop<M> {
    /// A loop over `rx`. `waker` is the backend's [`WaitWaker`] (what senders call after
    /// sending), if it has one; without one the loop looks at its channel every `fallback_poll`
    /// while ops are in flight — the most a new request waits for a busy thread to notice it.
    pub fn new(rx: flume::Receiver<M>, waker: Option<&WaitWaker>, fallback_poll: Duration) -> Self {
        IoLoop {
            intake: Intake { rx, stopping: false },
            poll: waker.is_none().then_some(fallback_poll),
            done: Vec::with_capacity(64),
        }
    }

    /// The wait's timeout while accepting: `None` with a waker, the fallback poll without.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.poll
    }

    /// Serves the channel until the intake ends (a `Stop`, or every sender gone), then
    /// finishes every accepted op and returns.
    pub fn run<H: IoHandler<Msg = M> + ?Sized>(mut self, handler: &mut H) {
        loop {
            if !self.intake.stopping && !handler.has_work() {
                self.intake.recv(handler);
            }
            self.intake.take(handler);
            handler.pump();
            if handler.in_flight() == 0 {
                if !handler.has_work() {
                    if self.intake.stopping {
                        break;
                    }
                } else if handler.waits_for_intake() && !self.intake.recv(handler) {
                    handler.intake_gone();
                }
                continue;
            }
            let timeout = if self.intake.stopping { None } else { self.poll };
            self.done.clear();
            if let Err(e) = handler.io().wait_completions(&mut self.done, 1, timeout) {
                tracing::error!(error = %e, "i/o thread: waiting for completions failed");
                handler.io().poll_completions(&mut self.done);
            }
            handler.complete(&mut self.done, &mut self.intake);
        }
    }
}
