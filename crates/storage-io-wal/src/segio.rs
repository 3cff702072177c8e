//! [`SegmentIo`]: the WAL's side of a [`StorageIo`] backend — segment files by number, a cache
//! of open segments, and blocking helpers (write, sync, read a whole segment) built on
//! submit/wait.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::WalError;
use storage_io_core::{
    AlignedBuf, DEFAULT_ALIGNMENT, DirLock, IoBuf, IoCompletion, IoFd, IoToken, OpKind, OpenOptions,
    StorageIo, StorageIoError,
};

/// The block that direct-mode writes are widened to: offsets, lengths and buffers are multiples.
const BLOCK: usize = DEFAULT_ALIGNMENT;

/// Segments recovery (and a flush across many segments) holds open at once: well below any
/// backend's fd table (`IoConfig::max_files`, 1,024 by default), so a log of any number of
/// segments reopens and any batch is written.
pub(crate) const SEGMENTS_OPEN_AT_ONCE: usize = 8;

/// The file name of segment `n`: 16 lower-case hex digits and `.wal`, so names sort in log
/// order. The only name the WAL gives a segment, and the only one it accepts as one.
pub(crate) fn segment_file_name(n: u64) -> String {
    format!("{n:016x}.wal")
}

/// The segment number of a canonical segment file name (exactly what [`segment_file_name`]
/// builds), or `None` for any other file.
pub(crate) fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_suffix(".wal")?;
    let canonical = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let n = u64::from_str_radix(hex, 16).ok().filter(|_| canonical)?;
    debug_assert_eq!(
        segment_file_name(n),
        name,
        "a parsed segment name rebuilds to itself"
    );
    Some(n)
}

/// The segment numbers among a directory's `entries`, in order. Any other name that ends in
/// `.wal` (`+000000000000000.wal`, upper-case digits, another length) is refused as
/// [`WalError::ForeignFile`]: it is not a segment this log wrote, and nothing may read, replace
/// or remove it as one. Names that do not end in `.wal` are not the log's business.
pub(crate) fn segments_in(entries: &[PathBuf]) -> Result<Vec<u64>, WalError> {
    let mut segments = Vec::with_capacity(entries.len());
    for path in entries {
        let looks_like_segment = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().ends_with(b".wal"));
        if !looks_like_segment {
            continue;
        }
        match parse_segment_name(path) {
            Some(n) => segments.push(n),
            None => {
                return Err(WalError::ForeignFile {
                    path: path.clone(),
                    reason: "a segment's name is exactly 16 lower-case hex digits and .wal".into(),
                });
            }
        }
    }
    segments.sort_unstable();
    // Canonical names are one per number: no segment can be listed twice.
    debug_assert!(
        segments.windows(2).all(|w| w[0] < w[1]),
        "a segment number listed twice"
    );
    Ok(segments)
}

/// A failed op, with its kind, so the caller can tell a full disk from a failed sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IoFailure {
    pub op: OpKind,
    pub error: StorageIoError,
}

impl From<StorageIoError> for IoFailure {
    fn from(error: StorageIoError) -> Self {
        let op = match &error {
            StorageIoError::Io { op, .. } => *op,
            _ => OpKind::Write,
        };
        IoFailure { op, error }
    }
}

/// One write of a flush: `data` at `offset` of the segment open as `fd`.
pub(crate) struct WriteJob<'a> {
    pub fd: IoFd,
    pub offset: u64,
    pub data: &'a [u8],
}

/// The last block a direct-mode flush wrote, exactly as it is on the disk.
struct TailBlock {
    fd: IoFd,
    offset: u64,
    bytes: Vec<u8>,
}

/// One write of a direct-mode flush: block-aligned, from the caller's memory when that was
/// aligned already, else from a widened copy.
enum Widened<'a> {
    Borrowed(IoFd, u64, &'a [u8]),
    Owned(IoFd, u64, AlignedBuf),
}

impl Widened<'_> {
    fn job(&self) -> WriteJob<'_> {
        match self {
            Widened::Borrowed(fd, offset, data) => WriteJob {
                fd: *fd,
                offset: *offset,
                data,
            },
            Widened::Owned(fd, offset, buf) => WriteJob {
                fd: *fd,
                offset: *offset,
                data: buf,
            },
        }
    }
}

/// A direct-mode write staged by the writer (widened to whole blocks) for a flush slot to
/// submit on its own backend: segment numbers, not the writer's descriptors.
pub(crate) struct Staged<'a> {
    segment: u64,
    offset: u64,
    data: Widened<'a>,
}

/// The WAL's handle on its backend.
pub(crate) struct SegmentIo {
    io: Box<dyn StorageIo>,
    dir: PathBuf,
    segment_size: u64,
    write_chunk: usize,
    open: BTreeMap<u64, IoFd>,
    done: Vec<IoCompletion>,
    zeros: Option<AlignedBuf>,
    /// Segments are opened `O_DIRECT | O_DSYNC`: every write is widened to whole blocks and is
    /// durable when it completes, so flushes issue no datasync.
    direct: bool,
    /// Direct mode: the partly filled block the last flush ended in, so that the next flush,
    /// which starts inside it, need not read it back from the disk.
    tail: Option<TailBlock>,
    /// `inline_io`: an OS handle on each open segment (where the backend has one), so that a
    /// buffered flush writes and syncs on the flushing thread instead of through the backend.
    os_files: Option<HashMap<IoFd, Arc<File>>>,
    /// Direct mode on a file system that may not honour O_DSYNC for asynchronous direct
    /// writes: every flush also datasyncs.
    sync_direct: bool,
}

impl SegmentIo {
    pub(crate) fn new(
        io: Box<dyn StorageIo>,
        dir: &Path,
        segment_size: u64,
        write_chunk: usize,
        direct: bool,
    ) -> Self {
        let mut write_chunk = write_chunk.min(io.capabilities().max_io_bytes.max(BLOCK));
        if direct {
            write_chunk = (write_chunk / BLOCK).max(1) * BLOCK;
        }
        SegmentIo {
            io,
            dir: dir.to_path_buf(),
            segment_size,
            write_chunk,
            open: BTreeMap::new(),
            done: Vec::with_capacity(64),
            zeros: None,
            direct,
            tail: None,
            os_files: None,
            sync_direct: false,
        }
    }

    /// Direct mode: also datasync after every flush's writes (O_DSYNC not trusted).
    pub(crate) fn set_sync_direct(&mut self, on: bool) {
        self.sync_direct = on;
    }

    /// Buffered mode: makes flushes write (`pwrite`) and fdatasync on the calling thread, on OS
    /// handles of the segments, where the backend opens OS files (in-memory backends keep
    /// going through the backend, and so does direct mode). On io_uring a buffered write to
    /// ext4 and every datasync are handed to a kernel worker thread: a cross-CPU wake-up on the
    /// way there and one back, which a single committer pays in every commit.
    pub(crate) fn inline_io(mut self) -> Self {
        self.os_files = Some(HashMap::new());
        self
    }

    /// Opens a segment through the backend, keeping its OS handle for inline syncs.
    fn open_segment(&mut self, segment: u64, options: &OpenOptions) -> Result<IoFd, StorageIoError> {
        let path = self.path_of(segment);
        match &mut self.os_files {
            Some(files) => {
                let opened = self.io.open_file_with_mode(&path, options)?;
                if let Some(file) = opened.file {
                    files.insert(opened.fd, Arc::new(file));
                }
                Ok(opened.fd)
            }
            None => self.io.open_file(&path, options),
        }
    }

    /// Closes a segment's handles: the backend's and the OS one.
    fn close_segment(&mut self, fd: IoFd) -> Result<(), StorageIoError> {
        self.forget_tail(fd);
        if let Some(files) = &mut self.os_files {
            files.remove(&fd);
        }
        self.io.deregister_fd(fd)
    }

    /// How segments are opened for writing.
    fn write_options(&self) -> OpenOptions {
        OpenOptions::default()
            .with_direct(self.direct)
            .with_dsync(self.direct)
    }

    pub(crate) fn set_segment_size(&mut self, segment_size: u64) {
        self.segment_size = segment_size;
    }

    pub(crate) fn backend_name(&self) -> &'static str {
        self.io.name()
    }

    pub(crate) fn path_of(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_file_name(segment))
    }

    /// Creates the directory if needed and takes its exclusive lock (one owner per directory,
    /// [`Namespace::lock_dir`](storage_io_core::Namespace::lock_dir)): held until the returned guard is dropped.
    pub(crate) fn lock_dir(&mut self) -> Result<DirLock, WalError> {
        self.io.create_dir_all(&self.dir)?;
        self.io.lock_dir(&self.dir).map_err(|e| match e {
            StorageIoError::DirLocked { path } => WalError::DirLocked { path },
            other => WalError::Io(other),
        })
    }

    /// Segment numbers present in the directory, in order (creating the directory if needed);
    /// refuses a directory holding a `.wal` file with any other name (see [`segments_in`]).
    pub(crate) fn list_segments(&mut self) -> Result<Vec<u64>, WalError> {
        self.io.create_dir_all(&self.dir)?;
        segments_in(&self.io.list_dir(&self.dir)?)
    }

    /// The handle of an existing segment (opened and cached on first use).
    pub(crate) fn existing(&mut self, segment: u64) -> Result<IoFd, StorageIoError> {
        if let Some(fd) = self.open.get(&segment) {
            return Ok(*fd);
        }
        let options = self.write_options();
        let fd = self.open_segment(segment, &options)?;
        self.open.insert(segment, fd);
        Ok(fd)
    }

    /// Creates segment `segment` (empty, or zero-filled to full size with `preallocate`) and
    /// caches its handle. The zero-fill has completed when this returns, so later writes to the
    /// same range cannot be overtaken by it; the caller's next datasync on the handle covers it
    /// and a `sync_dir` makes the name durable.
    /// A handle this segment still has open (from an earlier attempt that failed, on a full
    /// disk) is closed first, so retries leak nothing.
    pub(crate) fn create(&mut self, segment: u64, preallocate: bool) -> Result<IoFd, IoFailure> {
        let opts = OpenOptions {
            create: true,
            truncate: true,
            ..self.write_options()
        };
        if let Some(old) = self.open.remove(&segment) {
            self.close_segment(old)?;
        }
        let fd = self.open_segment(segment, &opts)?;
        self.open.insert(segment, fd);
        if preallocate {
            self.zero_fill(fd, self.segment_size, false, &|| false)?;
        }
        Ok(fd)
    }

    /// Writes zeros over the whole segment open as `fd`, `group` bytes (rounded up to whole
    /// `write_chunk`s) in flight at a time, each group made durable with a datasync before the
    /// next when `sync_each`; `stop` is asked between groups, and a `true` ends the fill early.
    /// Returns whether it filled the whole segment.
    pub(crate) fn zero_fill(
        &mut self,
        fd: IoFd,
        group: u64,
        sync_each: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<bool, IoFailure> {
        let zeros = match self.zeros.take() {
            Some(z) if z.len() == self.write_chunk => z,
            _ => AlignedBuf::zeroed(self.write_chunk, BLOCK)?,
        };
        let chunk = zeros.len() as u64;
        let group = group.div_ceil(chunk).max(1) * chunk;
        let mut result = Ok(true);
        for start in (0..self.segment_size).step_by(group as usize) {
            if stop() {
                result = Ok(false);
                break;
            }
            let end = (start + group).min(self.segment_size);
            let jobs: Vec<WriteJob<'_>> = (start..end)
                .step_by(chunk as usize)
                .map(|offset| WriteJob {
                    fd,
                    offset,
                    data: &zeros[..(end - offset).min(chunk) as usize],
                })
                .collect();
            if let Err(f) = self.write_all(&jobs, sync_each) {
                result = Err(f);
                break;
            }
        }
        self.zeros = Some(zeros);
        result
    }

    /// Closes the handles of segments below `segment` (the writer has moved past them).
    pub(crate) fn close_below(&mut self, segment: u64) {
        let keep = self.open.split_off(&segment);
        for (_, fd) in std::mem::replace(&mut self.open, keep) {
            if let Err(e) = self.close_segment(fd) {
                tracing::warn!(error = %e, "closing an old wal segment failed");
            }
        }
    }

    /// The lowest segment this `SegmentIo` has open, if any.
    pub(crate) fn lowest_open(&self) -> Option<u64> {
        self.open.keys().next().copied()
    }

    /// Removes segment `segment` (closing it first). A missing file is not an error.
    pub(crate) fn remove(&mut self, segment: u64) -> Result<(), StorageIoError> {
        if let Some(fd) = self.open.remove(&segment) {
            self.close_segment(fd)?;
        }
        match self.io.remove_file(&self.path_of(segment)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub(crate) fn sync_dir(&mut self) -> Result<(), StorageIoError> {
        self.io.sync_dir(&self.dir)
    }

    /// Writes every job and makes it durable (with `sync`; in direct mode every write is), then
    /// returns how many datasyncs that took. See [`submit_jobs`](SegmentIo::submit_jobs); in
    /// direct mode the jobs are first widened to whole blocks (see [`widen`](SegmentIo::widen)).
    /// Returns the first failure; every submitted op has completed either way.
    pub(crate) fn write_all(&mut self, jobs: &[WriteJob<'_>], sync: bool) -> Result<usize, IoFailure> {
        if !self.direct {
            return self.submit_jobs(jobs, sync);
        }
        let sync_direct = sync && self.sync_direct;
        let result = self.widen(jobs).and_then(|(widened, tail)| {
            let jobs: Vec<WriteJob<'_>> = widened.iter().map(Widened::job).collect();
            let synced = self.submit_jobs(&jobs, sync_direct)?;
            Ok((tail, synced))
        });
        match result {
            Ok((tail, synced)) => {
                if tail.is_some() {
                    self.tail = tail;
                }
                Ok(synced)
            }
            Err(f) => {
                // What the failed flush left in its blocks is unknown: read them back next time.
                self.tail = None;
                Err(f)
            }
        }
    }

    /// Direct mode, several flushes in flight: widens `jobs` (as [`write_all`](Self::write_all)
    /// would) without writing them, for a flush slot's [`write_staged`](Self::write_staged).
    /// The widened last block becomes the cached tail at once: the caller lets no flush start
    /// inside that block before this one's writes complete, and calls
    /// [`forget_tails`](Self::forget_tails) if they fail.
    pub(crate) fn stage_direct<'a>(&mut self, jobs: &[WriteJob<'a>]) -> Result<Vec<Staged<'a>>, IoFailure> {
        let (widened, tail) = self.widen(jobs).inspect_err(|_| self.tail = None)?;
        if tail.is_some() {
            self.tail = tail;
        }
        widened
            .into_iter()
            .map(|w| {
                let fd = w.job().fd;
                let segment = self.open.iter().find(|(_, f)| **f == fd).map(|(s, _)| *s);
                let segment = segment.ok_or(StorageIoError::invalid(
                    "a staged wal write names a closed segment",
                ))?;
                let offset = w.job().offset;
                Ok(Staged {
                    segment,
                    offset,
                    data: w,
                })
            })
            .collect()
    }

    /// Forgets the cached tail block (a staged flush failed: what its blocks hold is unknown).
    pub(crate) fn forget_tails(&mut self) {
        self.tail = None;
    }

    /// A flush slot (a direct-mode `SegmentIo` on a backend of its own): submits staged writes
    /// on its own descriptors of the same segments, waits for them (each is durable when it
    /// completes, O_DSYNC; with `sync`, where O_DSYNC is not trusted, one datasync per
    /// segment follows) and closes the segments below the last one written. Returns the
    /// datasyncs.
    pub(crate) fn write_staged(&mut self, staged: &[Staged<'_>], sync: bool) -> Result<usize, IoFailure> {
        let mut jobs = Vec::with_capacity(staged.len());
        for s in staged {
            let job = s.data.job();
            jobs.push(WriteJob {
                fd: self.existing(s.segment)?,
                offset: s.offset,
                data: job.data,
            });
        }
        let synced = self.submit_jobs(&jobs, sync && self.sync_direct)?;
        if let Some(last) = staged.last() {
            self.close_below(last.segment);
        }
        Ok(synced)
    }

    /// Direct mode: turns jobs into block-aligned writes. Jobs that continue each other inside
    /// one block are merged (two writes in flight to one block could land in either order); a
    /// write that starts inside a block gets the block's earlier bytes — from the cached tail
    /// of the last flush, else read back from the disk — and every write is padded with zeros
    /// to a block boundary. Rewriting those earlier bytes is safe under a torn write: each
    /// sector of the block holds the same bytes before and after. Also returns the block the
    /// last write ends in, as the next tail.
    fn widen<'a>(
        &mut self,
        jobs: &[WriteJob<'a>],
    ) -> Result<(Vec<Widened<'a>>, Option<TailBlock>), IoFailure> {
        let block = BLOCK as u64;
        // Runs of jobs on one file where each starts where the previous ended, mid-block.
        let mut runs: Vec<(IoFd, u64, Vec<&'a [u8]>)> = Vec::new();
        for job in jobs.iter().filter(|j| !j.data.is_empty()) {
            if let Some((fd, offset, parts)) = runs.last_mut() {
                let end = *offset + parts.iter().map(|p| p.len() as u64).sum::<u64>();
                if *fd == job.fd && end == job.offset && !end.is_multiple_of(block) {
                    parts.push(job.data);
                    continue;
                }
            }
            runs.push((job.fd, job.offset, vec![job.data]));
        }
        let mut out: Vec<Widened<'a>> = Vec::with_capacity(runs.len());
        let mut spans: Vec<(IoFd, u64, u64)> = Vec::with_capacity(runs.len());
        for (fd, offset, parts) in runs {
            let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
            let start = offset - offset % block;
            let end = (offset + len).div_ceil(block) * block;
            if spans.iter().any(|&(f, s, e)| f == fd && s < end && start < e) {
                return Err(IoFailure::from(StorageIoError::invalid(
                    "direct-mode wal writes of one flush share a block",
                )));
            }
            spans.push((fd, start, end));
            let aligned_in_place = parts.len() == 1
                && start == offset
                && end == offset + len
                && (parts[0].as_ptr() as usize).is_multiple_of(BLOCK);
            if aligned_in_place {
                out.push(Widened::Borrowed(fd, offset, parts[0]));
                continue;
            }
            let mut buf = AlignedBuf::zeroed((end - start) as usize, BLOCK)?;
            let head = (offset - start) as usize;
            if head > 0 {
                match &self.tail {
                    Some(t) if t.fd == fd && t.offset == start => {
                        buf[..head].copy_from_slice(&t.bytes[..head])
                    }
                    _ => {
                        let block = self.read_block(fd, start)?;
                        buf[..head].copy_from_slice(&block[..head]);
                    }
                }
            }
            let mut at = head;
            for p in parts {
                buf[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            out.push(Widened::Owned(fd, start, buf));
        }
        let tail = out.last().map(|w| {
            let job = w.job();
            let last = job.data.len() - BLOCK;
            TailBlock {
                fd: job.fd,
                offset: job.offset + last as u64,
                bytes: job.data[last..].to_vec(),
            }
        });
        Ok((out, tail))
    }

    /// Reads the block at `offset` (aligned) of `fd`, zeros past the end of the file.
    fn read_block(&mut self, fd: IoFd, offset: u64) -> Result<Vec<u8>, IoFailure> {
        let buf = IoBuf::Aligned(AlignedBuf::zeroed(BLOCK, BLOCK)?);
        self.io
            .submit_read(fd, buf, offset)
            .map_err(|e| IoFailure::from(e.error))?;
        self.done.clear();
        self.io.wait_completions(&mut self.done, 1, None)?;
        let c = self.done.pop().ok_or(StorageIoError::invalid(
            "backend returned no completion for a read",
        ))?;
        let n = c.result.map_err(|error| IoFailure {
            op: OpKind::Read,
            error,
        })?;
        let mut block = vec![0u8; BLOCK];
        if let Some(buf) = c.buf {
            block[..n].copy_from_slice(&buf[..n]);
        }
        Ok(block)
    }

    fn forget_tail(&mut self, fd: IoFd) {
        if self.tail.as_ref().is_some_and(|t| t.fd == fd) {
            self.tail = None;
        }
    }

    /// Writes every job (split into `write_chunk` pieces), continuing short writes, then — with
    /// `sync` — makes them durable with one datasync per file. Datasyncs are submitted right
    /// behind the writes: the backend's barrier orders them after every write to the same file.
    /// Returns the number of datasyncs, or the first failure; every submitted op has completed
    /// either way.
    fn submit_jobs(&mut self, jobs: &[WriteJob<'_>], sync: bool) -> Result<usize, IoFailure> {
        let mut flight = Flight::default();
        let mut queue: Vec<Span> = Vec::new();
        for (job, j) in jobs.iter().zip(0..) {
            let mut at = 0;
            while at < job.data.len() {
                let end = (at + self.write_chunk).min(job.data.len());
                queue.push(Span {
                    job: j,
                    start: at,
                    end,
                });
                at = end;
            }
        }
        if self.inline_covers(jobs) {
            return self.inline_jobs(jobs, sync);
        }
        let mut to_sync: Vec<IoFd> = Vec::new();
        if sync {
            push_distinct(&mut to_sync, jobs.iter().map(|j| j.fd));
        }
        let mut synced = 0;
        loop {
            for span in queue.drain(..) {
                let job = &jobs[span.job];
                let data = &job.data[span.start..span.end];
                let offset = job.offset + span.start as u64;
                if let Some(t) =
                    self.submit_with_room(&mut flight, |io| io.submit_write(job.fd, data, offset))?
                {
                    flight.writes.insert(t, span);
                }
            }
            if flight.first_err.is_none() {
                for fd in to_sync.drain(..) {
                    if self
                        .submit_with_room(&mut flight, |io| io.submit_datasync(fd))?
                        .is_some()
                    {
                        synced += 1;
                    }
                }
            }
            while self.io.pending_count() > 0 {
                self.reap(&mut flight, usize::MAX)?;
            }
            if flight.first_err.is_some() || flight.short.is_empty() {
                break;
            }
            // A continued write needs a datasync submitted after it.
            queue = std::mem::take(&mut flight.short);
            if sync {
                push_distinct(&mut to_sync, queue.iter().map(|s| jobs[s.job].fd));
            }
        }
        flight.first_err.map_or(Ok(synced), Err)
    }

    /// Writes every job like [`write_all`](Self::write_all) with `sync`, except that where the
    /// writes went inline (`inline_io`, buffered) the fdatasyncs are left to the caller: it
    /// gets the OS handles to sync, which it may do without this `SegmentIo` (another flush can
    /// write meanwhile). An empty list means the jobs are durable already (or `sync` is off).
    pub(crate) fn write_all_sync_later(
        &mut self,
        jobs: &[WriteJob<'_>],
        sync: bool,
    ) -> Result<(Vec<Arc<File>>, usize), IoFailure> {
        if !self.inline_covers(jobs) {
            return self.write_all(jobs, sync).map(|n| (Vec::new(), n));
        }
        self.inline_jobs(jobs, false)?;
        let mut handles: Vec<Arc<File>> = Vec::new();
        if sync && let Some(files) = &self.os_files {
            let mut fds = Vec::new();
            push_distinct(&mut fds, jobs.iter().map(|j| j.fd));
            handles.extend(fds.iter().filter_map(|fd| files.get(fd).cloned()));
        }
        Ok((handles, 0))
    }

    /// Whether these jobs go inline: buffered mode, and an OS handle for every file.
    fn inline_covers(&self, jobs: &[WriteJob<'_>]) -> bool {
        !self.direct
            && self
                .os_files
                .as_ref()
                .is_some_and(|files| jobs.iter().all(|j| files.contains_key(&j.fd)))
    }

    /// `inline_io`, buffered mode: the jobs written with `pwrite` on this thread, then (with
    /// `sync`) one fdatasync per file, on the segments' OS handles. Returns the datasyncs.
    fn inline_jobs(&mut self, jobs: &[WriteJob<'_>], sync: bool) -> Result<usize, IoFailure> {
        use storage_io_core::platform::{datasync, write_all_at};
        let Some(files) = &self.os_files else {
            return Ok(0);
        };
        let failed = |op: OpKind| {
            move |e: std::io::Error| IoFailure {
                op,
                error: StorageIoError::from_io(op, &e),
            }
        };
        for job in jobs {
            if let Some(file) = files.get(&job.fd) {
                write_all_at(file, job.data, job.offset).map_err(failed(OpKind::Write))?;
            }
        }
        let mut synced = 0;
        if sync {
            let mut fds = Vec::new();
            push_distinct(&mut fds, jobs.iter().map(|j| j.fd));
            for fd in fds {
                if let Some(file) = files.get(&fd) {
                    datasync(file).map_err(failed(OpKind::Datasync))?;
                    synced += 1;
                }
            }
        }
        Ok(synced)
    }

    /// Submits one op, reaping completions while the backend's queue is full. A refusal other
    /// than a full queue is recorded as the flight's failure (`Ok(None)`).
    fn submit_with_room(
        &mut self,
        flight: &mut Flight,
        mut submit: impl FnMut(&mut dyn StorageIo) -> Result<IoToken, StorageIoError>,
    ) -> Result<Option<IoToken>, IoFailure> {
        loop {
            match submit(&mut *self.io) {
                Ok(t) => return Ok(Some(t)),
                Err(StorageIoError::QueueFull { .. }) => self.reap(flight, 1)?,
                Err(e) => {
                    flight.fail(IoFailure::from(e));
                    return Ok(None);
                }
            }
        }
    }

    /// Waits for at least `min` completions (every pending one with `usize::MAX`), recording
    /// the first error and queueing the rest of each short write.
    fn reap(&mut self, flight: &mut Flight, min: usize) -> Result<(), IoFailure> {
        self.done.clear();
        self.io.wait_completions(&mut self.done, min, None)?;
        for c in self.done.drain(..) {
            let span = flight.writes.remove(&c.token);
            match (c.result, span) {
                (Err(error), _) => flight.fail(IoFailure { op: c.op, error }),
                // No progress at all: a full device that answers 0 instead of ENOSPC.
                (Ok(0), Some(s)) if s.end > s.start => flight.fail(IoFailure {
                    op: c.op,
                    error: StorageIoError::os(c.op, ENOSPC),
                }),
                (Ok(n), Some(s)) if n < s.end - s.start => flight.short.push(Span {
                    start: s.start + n,
                    ..s
                }),
                _ => {}
            }
        }
        Ok(())
    }

    /// Datasyncs every open segment (recovery: what the scan read may still be only in the page
    /// cache after a process crash, whatever mode wrote it).
    pub(crate) fn sync_open(&mut self) -> Result<(), IoFailure> {
        let jobs: Vec<WriteJob<'_>> = self
            .open
            .values()
            .map(|&fd| WriteJob {
                fd,
                offset: 0,
                data: &[],
            })
            .collect();
        self.submit_jobs(&jobs, true).map(drop)
    }

    /// Opens segment `segment` read-only for a scan (buffered, so any buffer will do).
    fn open_for_read(&mut self, segment: u64) -> Result<IoFd, StorageIoError> {
        self.io
            .open_file(&self.path_of(segment), &OpenOptions::read_only())
    }

    /// The first `SEGMENT_HEADER_BYTES` of segment `segment` (its header, if intact).
    pub(crate) fn read_header(&mut self, segment: u64) -> Result<Vec<u8>, StorageIoError> {
        let fd = self.open_for_read(segment)?;
        let len = crate::format::SEGMENT_HEADER_BYTES as usize;
        let header = read_prefix(&mut *self.io, &mut self.done, fd, len, len);
        self.io.deregister_fd(fd)?;
        header
    }
}

impl SegmentIo {
    /// The content of segment `segment` from its start, read `write_chunk` bytes at a time
    /// until `enough` (asked after each read, with everything read so far) says so or the file
    /// ends; `None` if the file does not exist. Recovery reads a segment only up to what proves
    /// where its log ends.
    pub(crate) fn read_segment_until(
        &mut self,
        segment: u64,
        mut enough: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StorageIoError> {
        let fd = match self.open_for_read(segment) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let result = (|| {
            let len = self.io.file_len(fd)?;
            let mut image = Vec::new();
            while (image.len() as u64) < len {
                let want = (len - image.len() as u64).min(self.write_chunk as u64) as usize;
                let at = image.len() as u64;
                let n = read_at(&mut *self.io, &mut self.done, fd, at, want, &mut image)?;
                if n < want || enough(&image) {
                    break;
                }
            }
            Ok(image)
        })();
        self.io.deregister_fd(fd)?;
        result.map(Some)
    }
}

/// Reads a stream keeps in flight at once on an asynchronous backend: the next read is
/// submitted before the bytes of the one that came are scanned. A backend that completes ops
/// inline gets one at a time: a read submitted ahead would only run early, before the scan has
/// said how far it needs the file.
const READS_AHEAD: usize = 2;

/// The buffers a segment is streamed through ([`SegmentIo::stream_segment`]): allocated once
/// (zeroed then, never again: a read overwrites what it returns, and only those bytes are
/// looked at) and reused for every read of every segment.
#[derive(Debug, Default)]
pub(crate) struct ReadBufs {
    free: Vec<AlignedBuf>,
    /// Buffers allocated so far (a test checks that they are reused, not replaced).
    pub allocated: usize,
}

impl SegmentIo {
    /// Streams segment `segment` from its start to `take`, `write_chunk` bytes a read, with up
    /// to [`READS_AHEAD`] reads in flight through `bufs` ([`ChunkReads`]). `take` gets each read's bytes in
    /// order and answers how far the segment is still needed (`None`: enough); reads stop
    /// there or at the end of the file. False if the file does not exist.
    pub(crate) fn stream_segment(
        &mut self,
        segment: u64,
        bufs: &mut ReadBufs,
        mut take: impl FnMut(&[u8]) -> Option<u64>,
    ) -> Result<bool, StorageIoError> {
        let fd = match self.open_for_read(segment) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        let streamed = self.stream_fd(fd, bufs, &mut take);
        let closed = self.io.deregister_fd(fd);
        streamed.and(closed).map(|()| true)
    }

    fn stream_fd(
        &mut self,
        fd: IoFd,
        bufs: &mut ReadBufs,
        take: &mut dyn FnMut(&[u8]) -> Option<u64>,
    ) -> Result<(), StorageIoError> {
        let len = self.io.file_len(fd)?;
        let mut reads = ChunkReads::new(&*self.io, fd, len, self.write_chunk);
        let streamed = loop {
            match reads.advance(&mut *self.io, bufs) {
                Ok(true) => match take(reads.held()) {
                    Some(until) => reads.want_until(until),
                    None => break Ok(()),
                },
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let stopped = reads.stop(&mut *self.io, bufs);
        streamed.and(stopped)
    }
}

/// Reads one file front to back in chunks, with up to [`READS_AHEAD`] reads in flight (on an
/// asynchronous backend) through
/// the buffers of a [`ReadBufs`]: recovery's scan and [`WalReader`](crate::WalReader) take
/// the chunks in order, one at a time ([`advance`](ChunkReads::advance), then
/// [`held`](ChunkReads::held)); [`stop`](ChunkReads::stop) waits for the reads still in flight
/// and gives their buffers back.
#[derive(Debug)]
pub(crate) struct ChunkReads {
    /// Reads in flight at most.
    ahead: usize,
    fd: IoFd,
    len: u64,
    chunk: usize,
    /// Offset of the next read to submit.
    next: u64,
    /// Reads start only below this.
    wanted: u64,
    /// (token, bytes asked) of the reads in flight, oldest first.
    in_flight: std::collections::VecDeque<(IoToken, usize)>,
    /// Completions that came before their turn (a backend completes in any order).
    arrived: Vec<IoCompletion>,
    done: Vec<IoCompletion>,
    /// The chunk handed out last (`bytes` of it), given back at the next `advance`.
    held: Option<(AlignedBuf, usize)>,
    /// A read came back short: the file ends there.
    at_end: bool,
}

impl ChunkReads {
    /// Reads of `fd` (`len` bytes long) in chunks of `chunk` bytes, through `io`.
    pub(crate) fn new(io: &dyn StorageIo, fd: IoFd, len: u64, chunk: usize) -> Self {
        ChunkReads {
            ahead: if io.capabilities().asynchronous {
                READS_AHEAD
            } else {
                1
            },
            fd,
            len,
            chunk: chunk.max(BLOCK),
            next: 0,
            wanted: u64::MAX,
            in_flight: Default::default(),
            arrived: Vec::new(),
            done: Vec::new(),
            held: None,
            at_end: false,
        }
    }

    /// From now on, reads start only below `until` (rounded up to whole blocks); those in
    /// flight complete.
    pub(crate) fn want_until(&mut self, until: u64) {
        self.wanted = until;
    }

    /// The bytes of the chunk the last [`advance`](ChunkReads::advance) brought.
    pub(crate) fn held(&self) -> &[u8] {
        self.held.as_ref().map_or(&[], |(b, n)| &b[..*n])
    }

    /// Gives the held chunk's buffer back, keeps the reads ahead going, and waits for the next
    /// chunk in order; false at the end of the file (or of what is wanted).
    pub(crate) fn advance(
        &mut self,
        io: &mut dyn StorageIo,
        bufs: &mut ReadBufs,
    ) -> Result<bool, StorageIoError> {
        if let Some((buf, _)) = self.held.take() {
            bufs.free.push(buf);
        }
        if self.at_end {
            return Ok(false);
        }
        while bufs.free.len() + self.in_flight.len() < self.ahead {
            bufs.free.push(io.alloc_buf(self.chunk)?);
            bufs.allocated += 1;
        }
        let block = BLOCK as u64;
        let up_to = self
            .len
            .min(self.wanted.saturating_add(block - 1) / block * block);
        while self.in_flight.len() < self.ahead && self.next < up_to {
            let Some(mut buf) = bufs.free.pop() else { break };
            let want = (up_to - self.next).min(buf.capacity().min(self.chunk) as u64) as usize;
            if let Err(e) = buf.set_len(want) {
                bufs.free.push(buf);
                return Err(e);
            }
            match io.submit_read(self.fd, IoBuf::Aligned(buf), self.next) {
                Ok(token) => {
                    self.in_flight.push_back((token, want));
                    self.next += want as u64;
                }
                Err(refused) => {
                    if let IoBuf::Aligned(b) = refused.buf {
                        bufs.free.push(b);
                    }
                    // A full queue waits for the reads in flight; anything else fails.
                    if !matches!(refused.error, StorageIoError::QueueFull { .. }) || self.in_flight.is_empty()
                    {
                        return Err(refused.error);
                    }
                    break;
                }
            }
        }
        let Some((token, want)) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        let c = self.completion_of(io, token)?;
        let buf = match c.buf {
            Some(IoBuf::Aligned(b)) => b,
            // A backend that handed other memory back: copy it into a buffer of ours.
            Some(IoBuf::Vec(v)) => AlignedBuf::from_slice(&v, BLOCK)?,
            None => return Err(StorageIoError::invalid("backend lost a read buffer")),
        };
        match c.result {
            Ok(n) => {
                let n = n.min(buf.len());
                self.at_end = n < want;
                self.held = Some((buf, n));
                Ok(true)
            }
            Err(e) => {
                bufs.free.push(buf);
                Err(e)
            }
        }
    }

    /// Waits for every read still in flight and gives every buffer back (the file may be
    /// closed then).
    pub(crate) fn stop(&mut self, io: &mut dyn StorageIo, bufs: &mut ReadBufs) -> Result<(), StorageIoError> {
        if let Some((buf, _)) = self.held.take() {
            bufs.free.push(buf);
        }
        let mut result = Ok(());
        while let Some((token, _)) = self.in_flight.pop_front() {
            match self.completion_of(io, token) {
                Ok(c) => {
                    if let Some(IoBuf::Aligned(b)) = c.buf {
                        bufs.free.push(b);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        debug_assert!(
            result.is_err() || self.arrived.is_empty(),
            "a completion of no read of this file"
        );
        self.at_end = true;
        result
    }

    /// Waits for the completion of `token`, keeping the others that arrive meanwhile.
    fn completion_of(
        &mut self,
        io: &mut dyn StorageIo,
        token: IoToken,
    ) -> Result<IoCompletion, StorageIoError> {
        loop {
            if let Some(i) = self.arrived.iter().position(|c| c.token == token) {
                return Ok(self.arrived.swap_remove(i));
            }
            self.done.clear();
            io.wait_completions(&mut self.done, 1, None)?;
            if self.done.is_empty() {
                return Err(StorageIoError::invalid(
                    "backend returned no completion for a read",
                ));
            }
            self.arrived.append(&mut self.done);
        }
    }
}

/// Reads up to `want` bytes at `offset` of `fd` onto the end of `out`; returns how many came
/// (fewer at the end of the file).
pub(crate) fn read_at(
    io: &mut dyn StorageIo,
    done: &mut Vec<IoCompletion>,
    fd: IoFd,
    offset: u64,
    want: usize,
    out: &mut Vec<u8>,
) -> Result<usize, StorageIoError> {
    io.submit_read(fd, vec![0u8; want].into(), offset)
        .map_err(|e| e.error)?;
    done.clear();
    io.wait_completions(done, 1, None)?;
    let c = done.pop().ok_or(StorageIoError::invalid(
        "backend returned no completion for a read",
    ))?;
    let n = c.result?;
    let buf = c
        .buf
        .ok_or(StorageIoError::invalid("backend lost a read buffer"))?;
    out.extend_from_slice(&buf[..n]);
    Ok(n)
}

/// Reads the first `len` bytes of a file (fewer if it is shorter), chunk by chunk, in order.
pub(crate) fn read_prefix(
    io: &mut dyn StorageIo,
    done: &mut Vec<IoCompletion>,
    fd: IoFd,
    len: usize,
    chunk: usize,
) -> Result<Vec<u8>, StorageIoError> {
    let mut image = Vec::with_capacity(len);
    while image.len() < len {
        let want = (len - image.len()).min(chunk);
        let n = read_at(io, done, fd, image.len() as u64, want, &mut image)?;
        if n < want {
            break; // end of file moved under us: what was read is the file
        }
    }
    Ok(image)
}

const ENOSPC: i32 = 28;

/// A piece of one job's data: `data[start..end]`.
#[derive(Debug, Clone, Copy)]
struct Span {
    job: usize,
    start: usize,
    end: usize,
}

/// What is in flight during one `write_all`.
#[derive(Default)]
struct Flight {
    writes: HashMap<IoToken, Span>,
    short: Vec<Span>,
    /// The failure the flight reports: the first one, unless a sync failed too.
    first_err: Option<IoFailure>,
}

impl Flight {
    /// Records a failure. A failed sync outranks any other failure of the flight, whatever came
    /// first: it must reach the WAL (which poisons itself), not hide behind a write's ENOSPC
    /// that would be retried as a full disk.
    fn fail(&mut self, failure: IoFailure) {
        match &self.first_err {
            Some(f) if f.op.is_sync() || !failure.op.is_sync() => {}
            _ => self.first_err = Some(failure),
        }
    }
}

fn push_distinct(out: &mut Vec<IoFd>, fds: impl Iterator<Item = IoFd>) {
    for fd in fds {
        if !out.contains(&fd) {
            out.push(fd);
        }
    }
}
