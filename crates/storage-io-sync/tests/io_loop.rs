//! `storage_io_core::io_thread::IoLoop` on both sync backends: the thread pool (which has a
//! `WaitWaker`: the loop blocks without a timeout and senders wake it) and the inline backend
//! (no waker: the loop looks at its channel every fallback poll). Every request is answered
//! exactly once, and a shutdown still answers every request accepted before it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use storage_io_core::io_thread::{Accepted, Intake, IoHandler, IoLoop};
use storage_io_core::{IoCompletion, IoConfig, IoFd, IoToken, StorageIo, WaitWaker};
use storage_io_sync::{SyncStorageIo, ThreadPoolStorageIo};

/// Fewer than either backend's own limit (`IoConfig::default().queue_depth`).
const QUEUE_DEPTH: usize = 32;

enum Msg {
    Write {
        page: u64,
        reply: flume::Sender<std::io::Result<u64>>,
    },
    Shutdown,
}

struct Writer {
    io: Box<dyn StorageIo>,
    fd: IoFd,
    queued: std::collections::VecDeque<(u64, flume::Sender<std::io::Result<u64>>)>,
    in_flight: std::collections::HashMap<IoToken, (u64, flume::Sender<std::io::Result<u64>>)>,
}

impl IoHandler for Writer {
    type Msg = Msg;
    type Io = dyn StorageIo;

    fn io(&mut self) -> &mut Self::Io {
        self.io.as_mut()
    }

    fn accept(&mut self, msg: Msg) -> Accepted {
        match msg {
            Msg::Write { page, reply } => {
                self.queued.push_back((page, reply));
                Accepted::Continue
            }
            Msg::Shutdown => Accepted::Stop,
        }
    }

    fn pump(&mut self) {
        // Up to the queue depth in flight; the rest waits here for completions.
        while self.in_flight.len() < QUEUE_DEPTH {
            let Some((page, reply)) = self.queued.pop_front() else {
                break;
            };
            let token = self
                .io
                .submit_write(self.fd, &page.to_le_bytes(), page * 8)
                .expect("submit_write");
            self.in_flight.insert(token, (page, reply));
        }
        self.io.flush().expect("flush");
    }

    fn has_work(&self) -> bool {
        !self.queued.is_empty() || !self.in_flight.is_empty()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn complete(&mut self, done: &mut Vec<IoCompletion>, intake: &mut Intake<Msg>) {
        for c in done.drain(..) {
            let (page, reply) = self
                .in_flight
                .remove(&c.token)
                .expect("a completion for an op in flight");
            let _ = reply.send(c.result.map(|_| page).map_err(std::io::Error::other));
            if intake.take(self) > 0 {
                self.pump();
            }
        }
    }
}

/// Runs a loop over `io` on a thread, sends `writes` requests from four threads (waking after
/// each send when the backend has a waker), then a shutdown right behind them, and checks that
/// every request was answered once with its own page.
fn serve(mut io: Box<dyn StorageIo>, writes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("pages"))
        .unwrap();
    let fd = io.register_fd(file).unwrap();
    let waker: Option<WaitWaker> = io.wait_waker();
    let (tx, rx) = flume::unbounded();
    let looped = IoLoop::new(rx, waker.as_ref(), Duration::from_micros(50));
    let thread = std::thread::spawn(move || {
        let mut writer = Writer {
            io,
            fd,
            queued: Default::default(),
            in_flight: Default::default(),
        };
        looped.run(&mut writer);
        assert!(!writer.has_work(), "the loop returned with work unfinished");
    });
    let mut replies = Vec::new();
    std::thread::scope(|s| {
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let tx = tx.clone();
                let waker = waker.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in (t..writes).step_by(4) {
                        let (reply, answer) = flume::bounded(1);
                        tx.send(Msg::Write { page: i, reply }).unwrap();
                        if let Some(w) = &waker {
                            w.wake();
                        }
                        mine.push((i, answer));
                    }
                    mine
                })
            })
            .collect();
        for s in senders {
            replies.extend(s.join().unwrap());
        }
    });
    tx.send(Msg::Shutdown).unwrap();
    if let Some(w) = &waker {
        w.wake();
    }
    thread.join().unwrap();
    assert_eq!(replies.len() as u64, writes);
    for (page, answer) in replies {
        assert_eq!(answer.recv().unwrap().unwrap(), page);
        assert!(answer.try_recv().is_err(), "page {page} answered twice");
    }
}

#[test]
fn the_loop_answers_every_request_on_the_thread_pool_with_its_waker() {
    let io = ThreadPoolStorageIo::new(&IoConfig::default()).unwrap();
    let mut boxed: Box<dyn StorageIo> = Box::new(io);
    assert!(boxed.wait_waker().is_some(), "the thread pool has a waker");
    serve(boxed, 2_000);
}

#[test]
fn the_loop_answers_every_request_on_the_inline_backend_by_fallback_poll() {
    let io = SyncStorageIo::new(&IoConfig::default()).unwrap();
    serve(Box::new(io), 2_000);
}

#[test]
fn a_closed_channel_ends_the_loop_after_answering_what_it_took() {
    let io = ThreadPoolStorageIo::new(&IoConfig::default()).unwrap();
    let mut io: Box<dyn StorageIo> = Box::new(io);
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("pages")).unwrap();
    let fd = io.register_fd(file).unwrap();
    let (tx, rx) = flume::unbounded();
    let mut answers = Vec::new();
    for page in 0..10 {
        let (reply, answer) = flume::bounded(1);
        tx.send(Msg::Write { page, reply }).unwrap();
        answers.push(answer);
    }
    drop(tx);
    let mut writer = Writer {
        io,
        fd,
        queued: Default::default(),
        in_flight: Default::default(),
    };
    let waker = writer.io.wait_waker();
    IoLoop::new(rx, waker.as_ref(), Duration::from_micros(50)).run(&mut writer);
    for (page, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.recv().unwrap().unwrap(), page as u64);
    }
}
