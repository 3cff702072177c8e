//! Random op sequences checked against an in-memory model of the files (proptest).

use super::*;

/// One step of a random op sequence.
#[derive(Debug, Clone)]
enum ModelOp {
    Write {
        file: usize,
        offset: u32,
        len: u16,
        seed: u8,
        owned: bool,
    },
    Append {
        file: usize,
        len: u16,
        seed: u8,
    },
    Read {
        file: usize,
        offset: u32,
        len: u16,
    },
    Sync {
        file: usize,
        full: bool,
    },
    Poll,
    Wait,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (0..2usize, 0..49_152u32, 1..6000u16, any::<u8>(), any::<bool>())
            .prop_map(|(file, offset, len, seed, owned)| ModelOp::Write { file, offset, len, seed, owned }),
        3 => (0..2usize, 1..3000u16, any::<u8>()).prop_map(|(file, len, seed)| ModelOp::Append { file, len, seed }),
        5 => (0..2usize, 0..60_000u32, 1..8000u16).prop_map(|(file, offset, len)| ModelOp::Read { file, offset, len }),
        2 => (0..2usize, any::<bool>()).prop_map(|(file, full)| ModelOp::Sync { file, full }),
        2 => Just(ModelOp::Poll),
        1 => Just(ModelOp::Wait),
    ]
}

enum Expect {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        owned: Option<Vec<u8>>,
    },
    Read {
        file: usize,
        expected: Vec<u8>,
    },
    Sync {
        writes_before: Vec<IoToken>,
    },
}

struct Harness<'a> {
    io: &'a mut dyn StorageIo,
    fds: [IoFd; 2],
    model: [Vec<u8>; 2],
    cursor: [u64; 2],
    expect: HashMap<IoToken, Expect>,
    /// Writes in flight per file: token and byte range.
    writes: [Vec<(IoToken, u64, u64)>; 2],
    /// Reads in flight per file: token and start offset.
    reads: [Vec<(IoToken, u64)>; 2],
    /// The backend's `max_io_bytes`: transfers are cut to it.
    max_io: usize,
    delivered: HashSet<IoToken>,
    out: Vec<IoCompletion>,
}

impl Harness<'_> {
    fn check(&mut self) -> Result<(), TestCaseError> {
        let batch = std::mem::take(&mut self.out);
        for c in batch {
            let exp = self
                .expect
                .remove(&c.token)
                .ok_or_else(|| TestCaseError::fail(format!("unknown or repeated token {}", c.token)))?;
            self.delivered.insert(c.token);
            match exp {
                Expect::Write {
                    file,
                    offset,
                    len,
                    owned,
                } => {
                    prop_assert_eq!(&c.result, &Ok(len), "write {}", c.token);
                    prop_assert_eq!(c.offset, offset, "write offset");
                    if let Some(data) = owned {
                        prop_assert_eq!(c.buf.as_ref().map(|b| b.as_slice()), Some(&data[..]));
                    }
                    self.writes[file].retain(|w| w.0 != c.token);
                }
                Expect::Read { file, expected } => {
                    if c.result != Ok(expected.len()) {
                        let fd = self.fds[file];
                        let now = self.io.file_len(fd);
                        prop_assert!(
                            false,
                            "read {} of file {} at {} (len {}): got {:?}, model says {} bytes; model length {}, \
                             file length now {:?}, writes in flight {:?}",
                            c.token,
                            file,
                            c.offset,
                            c.len_requested,
                            c.result,
                            expected.len(),
                            self.model[file].len(),
                            now,
                            self.writes[file]
                        );
                    }
                    self.reads[file].retain(|r| r.0 != c.token);
                    let got = c.buf.as_ref().map(|b| b.as_slice().to_vec()).unwrap_or_default();
                    prop_assert!(
                        got == expected,
                        "read {} at {} returned other bytes",
                        c.token,
                        c.offset
                    );
                }
                Expect::Sync { writes_before } => {
                    prop_assert!(c.result.is_ok(), "sync failed: {:?}", c.result);
                    for w in writes_before {
                        prop_assert!(
                            self.delivered.contains(&w),
                            "sync {} delivered before write {}",
                            c.token,
                            w
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn wait_all(&mut self) -> Result<(), TestCaseError> {
        let deadline = Instant::now() + STUCK_AFTER;
        while self.io.pending_count() > 0 {
            let want = self.io.pending_count();
            self.io
                .wait_completions(&mut self.out, want, Some(Duration::from_millis(200)))
                .map_err(|e| TestCaseError::fail(format!("wait_completions: {e}")))?;
            prop_assert!(Instant::now() < deadline, "backend stuck with ops pending");
        }
        self.check()
    }

    /// Makes room when the backend says its queue is full.
    fn retry<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn StorageIo) -> Result<T, StorageIoError>,
    ) -> Result<T, TestCaseError> {
        loop {
            match f(&mut *self.io) {
                Err(StorageIoError::QueueFull { .. }) => self.wait_all()?,
                Err(e) => return Err(TestCaseError::fail(format!("submit failed: {e}"))),
                Ok(t) => return Ok(t),
            }
        }
    }

    /// Ops in flight are unordered (as in io_uring): before a write that could change what an
    /// in-flight read sees — its bytes, or the file length under it — wait for the reads.
    /// Two overlapping writes in flight may land in either order, so wait for those too.
    fn settle_before_write(&mut self, file: usize, start: u64, end: u64) -> Result<(), TestCaseError> {
        let read_affected = self.reads[file].iter().any(|&(_, r)| r < end);
        let overlaps = self.writes[file].iter().any(|&(_, s, e)| s < end && start < e);
        if read_affected || overlaps {
            self.wait_all()?;
        }
        Ok(())
    }

    fn apply_write(&mut self, file: usize, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        let m = &mut self.model[file];
        if m.len() < end {
            m.resize(end, 0);
        }
        m[offset as usize..end].copy_from_slice(data);
        self.cursor[file] = self.cursor[file].max(end as u64);
    }

    fn step(&mut self, op: &ModelOp) -> Result<(), TestCaseError> {
        match *op {
            ModelOp::Write {
                file,
                offset,
                len,
                seed,
                owned,
            } => {
                let len = usize::from(len).min(self.max_io);
                let data = pattern(u64::from(seed) << 16 | len as u64, len);
                let offset = u64::from(offset);
                self.settle_before_write(file, offset, offset + data.len() as u64)?;
                let fd = self.fds[file];
                let t = if owned {
                    self.retry(|io| {
                        io.submit_write_buf(fd, IoBuf::Vec(data.clone()), offset)
                            .map_err(|e| e.error)
                    })?
                } else {
                    self.retry(|io| io.submit_write(fd, &data, offset))?
                };
                self.apply_write(file, offset, &data);
                self.writes[file].push((t, offset, offset + data.len() as u64));
                let owned = owned.then(|| data.clone());
                self.expect.insert(
                    t,
                    Expect::Write {
                        file,
                        offset,
                        len: data.len(),
                        owned,
                    },
                );
            }
            ModelOp::Append { file, len, seed } => {
                let len = usize::from(len).min(self.max_io);
                let data = pattern(u64::from(seed) << 20 | len as u64, len);
                let at = self.cursor[file];
                self.settle_before_write(file, at, at + data.len() as u64)?;
                let fd = self.fds[file];
                let t = self.retry(|io| io.submit_append(fd, &data))?;
                let offset = self.cursor[file];
                self.apply_write(file, offset, &data);
                self.writes[file].push((t, offset, offset + data.len() as u64));
                self.expect.insert(
                    t,
                    Expect::Write {
                        file,
                        offset,
                        len: data.len(),
                        owned: None,
                    },
                );
            }
            ModelOp::Read { file, offset, len } => {
                let (offset, len) = (u64::from(offset), usize::from(len).min(self.max_io));
                // A read racing a write in flight may see either state; wait first so the model
                // has one answer.
                // A write in flight at or past the read's start can change the bytes or the file
                // length the read sees.
                if self.writes[file].iter().any(|&(_, _, end)| end > offset) {
                    self.wait_all()?;
                }
                let m = &self.model[file];
                let start = (offset as usize).min(m.len());
                let expected = m[start..(start + len).min(m.len())].to_vec();
                let fd = self.fds[file];
                let t = self.retry(|io| {
                    io.submit_read(fd, IoBuf::Vec(vec![0; len]), offset)
                        .map_err(|e| e.error)
                })?;
                self.reads[file].push((t, offset));
                self.expect.insert(t, Expect::Read { file, expected });
            }
            ModelOp::Sync { file, full } => {
                let fd = self.fds[file];
                let t = self.retry(|io| {
                    if full {
                        io.submit_fsync(fd)
                    } else {
                        io.submit_datasync(fd)
                    }
                })?;
                let writes_before = self.writes[file].iter().map(|w| w.0).collect();
                self.expect.insert(t, Expect::Sync { writes_before });
            }
            ModelOp::Poll => {
                self.io.poll_completions(&mut self.out);
                self.check()?;
            }
            ModelOp::Wait => self.wait_all()?,
        }
        Ok(())
    }
}

pub(super) fn random_ops_match_the_model(ctx: &mut Ctx<'_>) {
    let config = ProptestConfig {
        cases: ctx.options.model_cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(model_op(), 1..ctx.options.model_max_ops);
    let root = ctx.root.clone();
    let make = ctx.make;
    let case_no = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |ops| {
        let n = case_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("model-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
        run_model_case(make, &dir, &ops)
    });
    if let Err(e) = result {
        panic!("random ops diverged from the model: {e}");
    }
}

fn run_model_case(
    make: &dyn Fn() -> Box<dyn StorageIo>,
    dir: &Path,
    ops: &[ModelOp],
) -> Result<(), TestCaseError> {
    let mut io = make();
    let max_io = io.capabilities().max_io_bytes;
    let mut open = |name: &str| {
        io.open_file(&dir.join(name), &OpenOptions::create().with_truncate(true))
            .map_err(|e| TestCaseError::fail(format!("open: {e}")))
    };
    let fds = [open("f0")?, open("f1")?];
    let mut h = Harness {
        io: io.as_mut(),
        fds,
        model: [Vec::new(), Vec::new()],
        cursor: [0, 0],
        expect: HashMap::new(),
        writes: [Vec::new(), Vec::new()],
        reads: [Vec::new(), Vec::new()],
        delivered: HashSet::new(),
        out: Vec::new(),
        max_io,
    };
    for op in ops {
        h.step(op)?;
    }
    h.wait_all()?;
    prop_assert!(h.expect.is_empty(), "{} ops never completed", h.expect.len());
    for file in 0..2 {
        let fd = h.fds[file];
        let len =
            h.io.file_len(fd)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(len, h.model[file].len() as u64, "file {} length", file);
        let want = h.model[file].clone();
        let mut got = Vec::with_capacity(want.len());
        while got.len() < want.len() {
            let chunk = (want.len() - got.len()).min(max_io);
            got.extend(read_back(h.io, fd, got.len() as u64, chunk));
        }
        prop_assert!(got == want, "file {} contents differ from the model", file);
    }
    prop_assert_eq!(h.io.pending_count(), 0);
    Ok(())
}
