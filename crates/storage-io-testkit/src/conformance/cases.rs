//! The contract cases: one function each, run on a fresh backend.

use super::*;

pub(super) fn read_after_write(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "raw");
    // Transfers of up to 10,000 bytes, or max_io_bytes when that is smaller.
    let a = pattern(1, ctx.io_len(4096));
    let b = pattern(2, ctx.io_len(10_000));
    let c = pattern(3, 1);
    let b_at = a.len() as u64;
    io.submit_write(fd, &a, 0).expect("write a");
    io.submit_write_buf(fd, IoBuf::Vec(b.clone()), b_at)
        .map_err(|e| e.error)
        .expect("write b");
    io.submit_write(fd, &c, 20_000).expect("write c");
    for comp in drain(io.as_mut()) {
        assert_eq!(
            ok_bytes(&comp),
            comp.len_requested,
            "writes are never short on success"
        );
    }
    assert_eq!(read_back(io.as_mut(), fd, 0, a.len()), a);
    assert_eq!(read_back(io.as_mut(), fd, b_at, b.len()), b);
    assert_eq!(read_back(io.as_mut(), fd, 20_000, 1), c);
    // A read across the boundary of two writes, and the hole between b and c reads as zeros.
    let across = read_back(io.as_mut(), fd, b_at - 96, 200);
    assert_eq!(&across[..96], &a[a.len() - 96..]);
    assert_eq!(&across[96..], &b[..104]);
    let hole = read_back(io.as_mut(), fd, b_at + b.len() as u64, 100);
    assert!(hole.iter().all(|&x| x == 0), "a hole reads as zeros");
    assert_eq!(io.file_len(fd).expect("file_len"), 20_001);
}

pub(super) fn write_bytes_matches_a_copied_write(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "write-bytes");
    let whole = bytes::Bytes::from(pattern(8, ctx.io_len(10_000)));
    io.submit_write_bytes(fd, whole.clone(), 0)
        .expect("write shared bytes");
    // A slice at an odd address, length and offset (a buffered file takes any).
    let part = whole.slice(3..1003);
    io.submit_write_bytes(fd, part.clone(), 20_001)
        .expect("write a slice of shared bytes");
    for c in drain(io.as_mut()) {
        assert_eq!(
            ok_bytes(&c),
            c.len_requested,
            "a shared write is never short on success"
        );
    }
    assert_eq!(read_back(io.as_mut(), fd, 0, whole.len()), &whole[..]);
    assert_eq!(read_back(io.as_mut(), fd, 20_001, part.len()), &part[..]);
    assert_eq!(
        &whole[..],
        &pattern(8, whole.len())[..],
        "the caller's bytes are untouched"
    );
}

pub(super) fn unique_tokens_across_op_kinds(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "tokens");
    let mut submitted: HashMap<IoToken, OpKind> = HashMap::new();
    let mut delivered = Vec::new();
    let limit = io.capabilities().max_in_flight;
    for i in 0..60u64 {
        if io.pending_count() + 5 > limit {
            delivered.extend(drain(io.as_mut()));
        }
        let data = pattern(i, 512);
        let kinds = [
            (OpKind::Write, io.submit_write(fd, &data, i * 512)),
            (OpKind::Append, io.submit_append(fd, &data)),
            (OpKind::Datasync, io.submit_datasync(fd)),
            (
                OpKind::Read,
                io.submit_read(fd, IoBuf::Vec(vec![0; 512]), i * 512)
                    .map_err(|e| e.error),
            ),
            (OpKind::Fsync, io.submit_fsync(fd)),
        ];
        for (kind, r) in kinds {
            let t = r.unwrap_or_else(|e| panic!("submit {kind}: {e}"));
            assert!(
                submitted.insert(t, kind).is_none(),
                "token {t} handed out twice (second time for a {kind})"
            );
        }
        if i % 7 == 0 {
            delivered.extend(drain(io.as_mut()));
        }
    }
    delivered.extend(drain(io.as_mut()));
    assert_eq!(
        delivered.len(),
        submitted.len(),
        "exactly one completion per accepted op"
    );
    let mut seen = HashSet::new();
    for c in &delivered {
        assert!(seen.insert(c.token), "token {} delivered twice", c.token);
        assert_eq!(
            submitted.get(&c.token),
            Some(&c.op),
            "completion {} has the wrong op kind",
            c.token
        );
        ok_bytes(c);
    }
    assert_eq!(io.pending_count(), 0);
}

pub(super) fn write_datasync_returns_buffers_and_drains(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "wds");
    let mut expected = HashMap::new();
    // 32 writes and 8 syncs, or as many as fit in the backend's queue.
    let writes = (burst(io.as_ref(), 40) * 4 / 5).max(4) as u64 / 4 * 4;
    for i in 0..writes {
        let data = pattern(100 + i, 4096);
        let t = io
            .submit_write_buf(fd, IoBuf::Vec(data.clone()), i * 4096)
            .map_err(|e| e.error)
            .expect("submit_write_buf");
        expected.insert(t, data);
        if i % 4 == 3 {
            io.submit_datasync(fd).expect("submit_datasync");
        }
    }
    assert!(io.pending_count() > 0 || !io.capabilities().asynchronous);
    let done = drain(io.as_mut());
    assert_eq!(done.len() as u64, writes + writes / 4);
    for c in done {
        ok_bytes(&c);
        if let Some(data) = expected.remove(&c.token) {
            let buf = c.buf.expect("an owned write hands its buffer back");
            assert_eq!(buf.as_slice(), &data[..], "the returned buffer is unchanged");
        } else {
            assert_eq!(c.op, OpKind::Datasync);
            assert!(c.buf.is_none());
        }
    }
    assert!(expected.is_empty(), "every owned buffer came back");
    assert_eq!(
        io.pending_count(),
        0,
        "pending_count is 0 once everything is delivered"
    );
}

pub(super) fn datasync_completes_after_earlier_writes(ctx: &mut Ctx<'_>) {
    for sync_kind in [OpKind::Datasync, OpKind::Fsync] {
        let mut io = ctx.backend();
        let (a, _) = ctx.create(io.as_mut(), "barrier-a");
        let (b, _) = ctx.create(io.as_mut(), "barrier-b");
        let mut before = HashSet::new();
        let limit = io.capabilities().max_in_flight;
        let later = (limit / 4).clamp(1, 16) as u64;
        let per_file = (limit.saturating_sub(2 + later as usize) / 2).clamp(1, 48) as u64;
        let big = ctx.io_len(8192) as u64;
        for i in 0..per_file {
            before.insert(
                io.submit_write(a, &pattern(i, big as usize), i * big)
                    .expect("write a"),
            );
            io.submit_write(b, &pattern(i, 512), i * 512).expect("write b");
        }
        before.insert(io.submit_append(a, &pattern(99, 100)).expect("append a"));
        let sync = match sync_kind {
            OpKind::Fsync => io.submit_fsync(a),
            _ => io.submit_datasync(a),
        }
        .expect("submit sync");
        for i in 0..later {
            io.submit_write(a, &pattern(1000 + i, ctx.io_len(4096)), (100 + i) * big)
                .expect("later write");
        }
        let done = drain(io.as_mut());
        let pos = done
            .iter()
            .position(|c| c.token == sync)
            .expect("the sync completes");
        ok_bytes(&done[pos]);
        let earlier: HashSet<IoToken> = done[..pos].iter().map(|c| c.token).collect();
        let missing = before.difference(&earlier).count();
        assert_eq!(
            missing, 0,
            "{sync_kind} on fd A was delivered before {missing} of the writes to A submitted before it"
        );
    }
}

pub(super) fn append_assigns_offsets_in_order(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, path) = ctx.create(io.as_mut(), "append");
    io.submit_write(fd, b"0123456789", 0).expect("write header");
    drain(io.as_mut());
    let mut expect = b"0123456789".to_vec();
    let mut tokens = Vec::new();
    for i in 0..burst(io.as_ref(), 50) {
        let rec = pattern(i as u64, 1 + (i * 37) % 700);
        tokens.push((
            io.submit_append(fd, &rec).expect("append"),
            expect.len() as u64,
            rec.len(),
        ));
        expect.extend_from_slice(&rec);
    }
    let done: HashMap<IoToken, IoCompletion> = drain(io.as_mut()).into_iter().map(|c| (c.token, c)).collect();
    for (t, offset, len) in tokens {
        let c = &done[&t];
        assert_eq!(c.op, OpKind::Append);
        assert_eq!(
            c.offset, offset,
            "appends take consecutive offsets in submission order"
        );
        assert_eq!(ok_bytes(c), len);
    }
    assert_eq!(read_back(io.as_mut(), fd, 0, expect.len() + 10), expect);
    // The cursor of a reopened file starts at its length.
    io.deregister_fd(fd).expect("deregister");
    let fd = io.open_file(&path, &OpenOptions::default()).expect("reopen");
    io.submit_append(fd, b"tail").expect("append after reopen");
    let c = drain(io.as_mut()).pop().expect("completion");
    assert_eq!(c.offset, expect.len() as u64);
}

pub(super) fn bad_fd_is_refused_and_buffers_come_back(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "badfd");
    let forged = IoFd {
        slot: 60_000,
        generation: 7,
    };
    io.deregister_fd(fd).expect("deregister");
    for bad in [forged, fd] {
        let marker = pattern(5, 300);
        let err = io
            .submit_read(bad, IoBuf::Vec(marker.clone()), 0)
            .expect_err("a read on a bad fd is refused");
        assert_eq!(err.error, StorageIoError::BadFd { fd: bad });
        assert_eq!(
            err.buf.as_slice(),
            &marker[..],
            "the refused buffer comes back unchanged"
        );
        let err = io
            .submit_write_buf(bad, IoBuf::Vec(marker.clone()), 0)
            .expect_err("an owned write on a bad fd is refused");
        assert_eq!(err.buf.as_slice(), &marker[..]);
        assert_eq!(
            io.submit_write(bad, b"x", 0),
            Err(StorageIoError::BadFd { fd: bad })
        );
        assert_eq!(
            io.submit_append(bad, b"x"),
            Err(StorageIoError::BadFd { fd: bad })
        );
        assert_eq!(io.submit_datasync(bad), Err(StorageIoError::BadFd { fd: bad }));
        assert_eq!(io.submit_fsync(bad), Err(StorageIoError::BadFd { fd: bad }));
        assert!(matches!(io.file_len(bad), Err(StorageIoError::BadFd { .. })));
        assert!(matches!(io.deregister_fd(bad), Err(StorageIoError::BadFd { .. })));
    }
    assert_eq!(io.pending_count(), 0, "refused ops are not pending");
    // A new file may take the old slot; the stale handle must still be refused.
    let (fresh, _) = ctx.create(io.as_mut(), "badfd-new");
    assert_ne!(fresh, fd);
    assert!(io.submit_write(fd, b"x", 0).is_err());
}

pub(super) fn deregister_waits_for_in_flight_ops(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, path) = ctx.create(io.as_mut(), "dereg");
    let mut submitted = HashSet::new();
    let writes = (burst(io.as_ref(), 73) * 8 / 9).max(1) as u64;
    for i in 0..writes {
        submitted.insert(io.submit_write(fd, &pattern(i, 4096), i * 4096).expect("write"));
        if i % 8 == 0 {
            submitted.insert(
                io.submit_read(fd, IoBuf::Vec(vec![0; 4096]), 0)
                    .map_err(|e| e.error)
                    .expect("read"),
            );
        }
    }
    submitted.insert(io.submit_datasync(fd).expect("datasync"));
    io.deregister_fd(fd).expect("deregister with ops in flight");
    let done = drain(io.as_mut());
    let got: HashSet<IoToken> = done.iter().map(|c| c.token).collect();
    assert_eq!(
        got, submitted,
        "every op in flight at deregister still completes, exactly once"
    );
    for c in &done {
        ok_bytes(c);
    }
    let fd = io.open_file(&path, &OpenOptions::default()).expect("reopen");
    for i in [0, writes / 2, writes - 1] {
        assert_eq!(read_back(io.as_mut(), fd, i * 4096, 4096), pattern(i, 4096));
    }
}

/// The op must fail — refused at submit with the buffer back, or completed with an errno-keeping
/// error and the buffer back.
fn expect_failure_with_buffer(
    io: &mut dyn StorageIo,
    submitted: Result<IoToken, storage_io_core::SubmitError<IoBuf>>,
    marker: &[u8],
    what: &str,
) {
    match submitted {
        Err(e) => assert_eq!(e.buf.as_slice(), marker, "{what}: refused buffer comes back"),
        Ok(t) => {
            let c = drain(io).into_iter().find(|c| c.token == t).expect("completion");
            let err = c.result.as_ref().expect_err(what);
            assert!(
                matches!(err, StorageIoError::Io { errno, .. } if *errno > 0),
                "{what}: the error keeps its errno, got {err:?}"
            );
            let buf = c
                .buf
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: buffer comes back on error"));
            assert_eq!(buf.len(), marker.len(), "{what}: buffer comes back whole");
        }
    }
}

pub(super) fn errors_return_buffers_and_keep_errno(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, path) = ctx.create(io.as_mut(), "errors");
    let seed = ctx.io_len(8192);
    io.submit_write(fd, &pattern(9, seed), 0).expect("seed data");
    drain(io.as_mut());
    io.deregister_fd(fd).expect("deregister");
    let ro = io
        .open_file(&path, &OpenOptions::read_only())
        .expect("open read-only");
    let wo = io
        .open_file(
            &path,
            &OpenOptions {
                read: false,
                ..OpenOptions::default()
            },
        )
        .expect("open write-only");
    let marker = pattern(77, 4096);
    let r = io.submit_write_buf(ro, IoBuf::Vec(marker.clone()), 0);
    expect_failure_with_buffer(io.as_mut(), r, &marker, "write on a read-only file");
    let r = io.submit_read(wo, IoBuf::Vec(marker.clone()), 0);
    expect_failure_with_buffer(io.as_mut(), r, &marker, "read on a write-only file");
    // The file is unchanged by the failed write.
    assert_eq!(read_back(io.as_mut(), ro, 0, seed), pattern(9, seed));
    // Oversized transfers are refused at submit, whatever the file.
    let max = io.capabilities().max_io_bytes;
    let err = io
        .submit_write(wo, &vec![0u8; max + 1], 0)
        .expect_err("oversized write");
    assert!(
        matches!(
            err,
            StorageIoError::InvalidArgument(InvalidArgument::TooLarge { .. })
        ),
        "{err:?}"
    );
    assert_eq!(io.pending_count(), 0);
}

pub(super) fn direct_io_alignment_is_enforced(ctx: &mut Ctx<'_>) {
    let path = ctx.path("direct");
    let opened = match open_file(&path, &OpenOptions::create().with_direct(true)) {
        Ok(o) => o,
        Err(e) => panic!("cannot create {}: {e}", path.display()),
    };
    if !opened.mode.is_direct() {
        eprintln!(
            "conformance [{}] direct_io_alignment_is_enforced: SKIPPED: {} does not support O_DIRECT \
             (set STORAGE_IO_TEST_DIR to a directory on ext4/xfs)",
            ctx.backend,
            ctx.root.display()
        );
        return;
    }
    let mut io = ctx.backend();
    let fd = match io.register_fd(opened.file) {
        Ok(fd) => fd,
        Err(StorageIoError::Unsupported { what }) => {
            eprintln!(
                "conformance [{}] direct_io_alignment_is_enforced: SKIPPED: backend takes no real files ({what})",
                ctx.backend
            );
            return;
        }
        Err(e) => panic!("register_fd of an O_DIRECT file failed: {e}"),
    };
    let aligned = || AlignedBuf::page_aligned(4096).expect("aligned buffer");
    let mut data = aligned();
    data.copy_from_slice(&pattern(4, 4096));
    io.submit_write_buf(fd, data.into(), 4096)
        .map_err(|e| e.error)
        .expect("an aligned direct write is accepted");
    let done = drain(io.as_mut());
    ok_bytes(&done[0]);
    // A copied write from an aligned slice is accepted too, and its backend-owned copy must
    // still be aligned when it reaches the kernel (else EINVAL at completion).
    let mut src = aligned();
    src.copy_from_slice(&pattern(5, 4096));
    io.submit_write(fd, &src, 8192)
        .expect("an aligned copied direct write is accepted");
    let done = drain(io.as_mut());
    ok_bytes(&done[0]);
    // Shared bytes: aligned ones are written (in place where the backend can), ones at an
    // unaligned address are copied into aligned memory first, never refused.
    let mut page = aligned();
    page.copy_from_slice(&pattern(6, 4096));
    io.submit_write_bytes(fd, bytes::Bytes::from_owner(page), 12_288)
        .expect("aligned shared bytes are accepted for a direct write");
    let mut wide = AlignedBuf::page_aligned(8192).expect("aligned buffer");
    wide[1..4097].copy_from_slice(&pattern(7, 4096));
    let shifted = bytes::Bytes::from_owner(wide).slice(1..4097);
    io.submit_write_bytes(fd, shifted, 16_384)
        .expect("shared bytes at an unaligned address are copied, not refused");
    for c in drain(io.as_mut()) {
        assert_eq!(ok_bytes(&c), 4096, "a shared direct write is whole");
    }
    for (offset, seed) in [(12_288u64, 6), (16_384, 7)] {
        io.submit_read(fd, aligned().into(), offset)
            .map_err(|e| e.error)
            .expect("read back a shared write");
        let c = drain(io.as_mut()).pop().expect("its completion");
        assert_eq!(ok_bytes(&c), 4096);
        let got = c.buf.expect("a read hands its buffer back");
        assert!(
            got.as_slice() == pattern(seed, 4096).as_slice(),
            "the shared write at {offset} read back wrong"
        );
    }
    // Misaligned offset, length and buffer address are each refused with the buffer back.
    let mut odd_len = aligned();
    odd_len.truncate(1000);
    let mut shifted = AlignedBuf::page_aligned(8192).expect("aligned buffer");
    shifted.truncate(4096 + 512);
    // A length off the alignment, within max_io_bytes (else the transfer is TooLarge first).
    let odd = if ctx.max_io > 4096 { 4097 } else { 4095 };
    let shifted_vec = IoBuf::Vec(vec![0u8; odd]);
    let misaligned_addr = if shifted_vec.is_aligned_to(4096) {
        IoBuf::Vec(vec![0u8; odd - 2])
    } else {
        shifted_vec
    };
    let cases: Vec<(&str, IoBuf, u64)> = vec![
        ("offset", aligned().into(), 100),
        ("length", odd_len.into(), 0),
        ("buffer address and length", misaligned_addr, 0),
    ];
    for (what, buf, offset) in cases {
        let len = buf.len();
        let err = io
            .submit_read(fd, buf, offset)
            .expect_err("misaligned direct read must be refused");
        assert!(
            matches!(
                err.error,
                StorageIoError::InvalidArgument(InvalidArgument::Misaligned { .. })
            ),
            "misaligned {what}: expected Misaligned, got {:?}",
            err.error
        );
        assert_eq!(err.buf.len(), len, "misaligned {what}: buffer comes back");
    }
    let err = io
        .submit_write(fd, &[1u8; 100], 0)
        .expect_err("misaligned direct write");
    assert!(matches!(
        err,
        StorageIoError::InvalidArgument(InvalidArgument::Misaligned { .. })
    ));
    let t = io
        .submit_read(fd, aligned().into(), 4096)
        .map_err(|e| e.error)
        .expect("aligned direct read");
    let c = drain(io.as_mut())
        .into_iter()
        .find(|c| c.token == t)
        .expect("read completes");
    assert_eq!(c.buf.expect("buffer").as_slice(), &pattern(4, 4096)[..]);
    assert_eq!(io.pending_count(), 0);
}

pub(super) fn eof_reads_are_short_successes(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "eof");
    // A file shorter than the first read (5000 and 8192 bytes, within max_io_bytes).
    let len = ctx.io_len(8192).min(5001) - 1;
    io.submit_write(fd, &pattern(8, len), 0).expect("write");
    drain(io.as_mut());
    let t1 = io
        .submit_read(fd, IoBuf::Vec(vec![0xAA; ctx.io_len(8192)]), 0)
        .map_err(|e| e.error)
        .expect("read");
    let t2 = io
        .submit_read(fd, IoBuf::Vec(vec![0xAA; 100]), 10_000)
        .map_err(|e| e.error)
        .expect("read");
    let t3 = io
        .submit_read(fd, IoBuf::Vec(vec![0xAA; 1000]), len as u64 - 500)
        .map_err(|e| e.error)
        .expect("read");
    let done: HashMap<IoToken, IoCompletion> = drain(io.as_mut()).into_iter().map(|c| (c.token, c)).collect();
    let c1 = &done[&t1];
    assert_eq!(c1.result, Ok(len));
    assert!(c1.is_eof(), "a read cut by end of file is a typed EOF");
    assert_eq!(c1.buf.as_ref().expect("buf").as_slice(), &pattern(8, len)[..]);
    assert_eq!(
        done[&t2].result,
        Ok(0),
        "a read wholly past the end reads 0 bytes"
    );
    assert_eq!(done[&t2].buf.as_ref().expect("buf").len(), 0);
    assert_eq!(done[&t3].result, Ok(500));
    let full = io
        .submit_read(fd, IoBuf::Vec(vec![0; len]), 0)
        .map_err(|e| e.error)
        .expect("read");
    let c = drain(io.as_mut())
        .into_iter()
        .find(|c| c.token == full)
        .expect("completion");
    assert!(!c.is_eof(), "a read that got all it asked for is not EOF");
}

pub(super) fn queue_full_is_reported_and_nothing_is_lost(ctx: &mut Ctx<'_>) {
    let mut io = ctx.raw_backend();
    let (fd, _) = ctx.create(io.as_mut(), "qfull");
    let limit = io.capabilities().max_in_flight;
    let mut accepted = 0usize;
    let mut refused = None;
    for i in 0..=limit as u64 + 8 {
        match io.submit_write(fd, &pattern(i, 64), i * 64) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, err) = refused.unwrap_or_else(|| {
        panic!(
            "{} ops accepted without polling; max_in_flight is {limit}",
            accepted
        )
    });
    assert!(
        matches!(err, StorageIoError::QueueFull { .. }),
        "expected QueueFull at op {at}, got {err:?}"
    );
    assert!(
        accepted <= limit,
        "accepted {accepted} ops, more than max_in_flight {limit}"
    );
    let done = drain(io.as_mut());
    assert_eq!(
        done.len(),
        accepted,
        "every accepted op completes after QueueFull"
    );
    io.submit_write(fd, b"again", 0)
        .expect("submits work again after draining");
    drain(io.as_mut());
}

pub(super) fn wait_completions_returns_when_idle(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "idle");
    let mut out = Vec::new();
    let started = Instant::now();
    let n = io
        .wait_completions(&mut out, 4, Some(Duration::from_secs(5)))
        .expect("wait with nothing pending");
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "wait_completions with nothing pending must not sit out its timeout"
    );
    assert_eq!(
        io.poll_completions(&mut out),
        0,
        "polling an idle backend finds nothing"
    );
    for i in 0..5u64 {
        io.submit_write(fd, b"abc", i * 3).expect("write");
    }
    let n = io
        .wait_completions(&mut out, 100, None)
        .expect("wait for more than pending");
    assert_eq!(n, 5, "asking for more than is pending waits for all of them");
    assert_eq!(io.pending_count(), 0);
}

pub(super) fn stats_count_every_op(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "stats");
    let writes = burst(io.as_ref(), 10) as u64;
    for i in 0..writes {
        io.submit_write(fd, &[1u8; 100], i * 100).expect("write");
    }
    io.submit_datasync(fd).expect("datasync");
    drain(io.as_mut());
    // Ops in flight together are unordered: read only once the writes are done.
    io.submit_read(fd, IoBuf::Vec(vec![0; 1000]), 0)
        .map_err(|e| e.error)
        .expect("read");
    drain(io.as_mut());
    let s = io.stats();
    assert_eq!(s.completed(OpKind::Write), writes);
    assert_eq!(s.bytes(OpKind::Write), writes * 100);
    assert_eq!(s.completed(OpKind::Datasync), 1);
    assert_eq!(s.completed(OpKind::Read), 1);
    assert_eq!(s.bytes(OpKind::Read), writes * 100);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.latency_ns(OpKind::Write).len(), writes);
}

/// [`StorageIo::alloc_buf`]: aligned buffers of the asked length, more of them than the backend
/// has in flight (a lending backend runs out of its own and must fall back), usable for owned
/// writes and reads, and valid after the backend is dropped.
pub(super) fn alloc_buf_carries_io_and_outlives_the_backend(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let (fd, _) = ctx.create(io.as_mut(), "alloc-buf");
    let empty = io.alloc_buf(0).expect("alloc_buf(0)");
    assert!(empty.is_empty(), "alloc_buf(0) has length 0");
    let count = io.capabilities().max_in_flight.clamp(1, 64) + 2;
    let mut bufs: Vec<AlignedBuf> = (0..count)
        .map(|i| {
            let mut b = io.alloc_buf(4096).expect("alloc_buf(4096)");
            assert_eq!(b.len(), 4096, "alloc_buf sets the length asked for");
            assert!(b.capacity() >= 4096);
            assert_eq!(b.as_ptr() as usize % 4096, 0, "alloc_buf is page-aligned");
            b.copy_from_slice(&pattern(100 + i as u64, 4096));
            b
        })
        .collect();
    let per_burst = burst(io.as_ref(), 8);
    let mut written = 0;
    while written < count {
        let end = (written + per_burst).min(count);
        for (i, b) in bufs.drain(..end - written).enumerate() {
            let offset = ((written + i) * 4096) as u64;
            io.submit_write_buf(fd, b.into(), offset)
                .map_err(|e| e.error)
                .expect("submit_write_buf with an alloc_buf buffer");
        }
        for c in drain(io.as_mut()) {
            ok_bytes(&c);
        }
        written = end;
    }
    for i in 0..count {
        let buf = io.alloc_buf(4096).expect("alloc_buf for a read");
        let token = io
            .submit_read(fd, buf.into(), (i * 4096) as u64)
            .map_err(|e| e.error)
            .expect("submit_read into an alloc_buf buffer");
        let c = drain(io.as_mut())
            .into_iter()
            .find(|c| c.token == token)
            .expect("the read's completion");
        assert_eq!(ok_bytes(&c), 4096);
        let got = c.buf.expect("a read hands its buffer back");
        assert!(
            got.as_slice() == pattern(100 + i as u64, 4096).as_slice(),
            "page {i} read back wrong"
        );
    }
    let mut kept = io.alloc_buf(4096).expect("alloc_buf");
    kept.fill(7);
    drop(io);
    kept[0] = 8;
    assert!(
        kept[0] == 8 && kept[4095] == 7,
        "a buffer from alloc_buf stays valid after its backend is dropped"
    );
}

/// Rule 1 with a waker: a backend that hands out a [`storage_io_core::WaitWaker`] (wrappers
/// included: they must pass the inner backend's on) ends a wait early after a wake — here one
/// sent before the wait, asking for more completions than are pending — and keeps working.
pub(super) fn wait_waker_ends_a_wait(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let Some(waker) = io.wait_waker() else {
        if ctx.options.verbose {
            eprintln!(
                "conformance [{}] wait_waker_ends_a_wait: skipped, the backend gives no waker",
                ctx.backend
            );
        }
        return;
    };
    let (fd, _) = ctx.create(io.as_mut(), "waker");
    io.submit_write(fd, b"woken", 0).expect("write");
    io.submit_datasync(fd).expect("datasync");
    let other = std::thread::spawn(move || waker.wake());
    other.join().expect("the waking thread");
    let mut out = Vec::new();
    // Without the wake this would wait for all pending ops (min is more than pending): with
    // it, the wait may return early with fewer, but it must return.
    io.wait_completions(&mut out, usize::MAX, None)
        .expect("a woken wait");
    out.extend(drain(io.as_mut()));
    assert_eq!(out.len(), 2, "every op completes once after a wake");
    assert_eq!(read_back(io.as_mut(), fd, 0, 5), b"woken");
}

/// The namespace ([`storage_io_core::Namespace`]) answers for the backend's own files: a
/// file written through the backend has its length in `metadata`, shows in `list_dir`, and
/// moves with `rename`; a missing path is `NotFound`.
pub(super) fn namespace_rename_and_metadata(ctx: &mut Ctx<'_>) {
    let mut io = ctx.backend();
    let dir = ctx.path("ns");
    io.create_dir_all(&dir).expect("create_dir_all");
    let tmp = dir.join("state.tmp");
    let live = dir.join("state");
    let fd = io.open_file(&tmp, &OpenOptions::create()).expect("open_file");
    io.submit_write(fd, &pattern(9, 300), 0).expect("write");
    io.submit_datasync(fd).expect("datasync");
    drain(io.as_mut());
    io.deregister_fd(fd).expect("deregister_fd");
    let m = io.metadata(&tmp).expect("metadata of the written file");
    assert_eq!(
        (m.len, m.is_dir),
        (300, false),
        "metadata gives the file's length"
    );
    assert!(io.metadata(&dir).expect("metadata of its directory").is_dir);
    io.rename(&tmp, &live).expect("rename");
    io.sync_dir(&dir).expect("sync_dir");
    assert_eq!(io.list_dir(&dir).expect("list_dir"), vec![live.clone()]);
    assert_eq!(io.metadata(&live).expect("metadata after rename").len, 300);
    let gone = io.metadata(&tmp).expect_err("the old name is gone");
    assert!(gone.is_not_found(), "a missing path is NotFound: {gone}");
    let fd = io
        .open_file(&live, &OpenOptions::default())
        .expect("open the new name");
    assert_eq!(read_back(io.as_mut(), fd, 0, 300), pattern(9, 300));
    io.deregister_fd(fd).expect("deregister_fd");
    io.remove_file(&live).expect("remove_file");
    io.sync_dir(&dir).expect("sync_dir");
    assert!(io.list_dir(&dir).expect("list_dir").is_empty());
}
