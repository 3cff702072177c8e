//! [`MemFs`] and [`MemIo`]: an in-memory file system and backend that model what survives a
//! crash.
//!
//! Each file has a *volatile* state (what reads see: the page cache) and a *durable* state
//! (what a crash leaves). A datasync or fsync makes the file's data durable, and so does each
//! write to a file opened with `OpenOptions::dsync` (`O_DSYNC`); creating or removing
//! a file becomes durable when its directory is synced with `sync_dir`. So does a rename: until
//! the new name's directory is synced, a crash leaves the names as they were (the target's old
//! contents, or no target), and the renamed file's data goes with the lost name; after it, the
//! new name holds the file's durable data. (Handles address files by path: rename a file once
//! its handles are closed.) [`MemFs::crash`] throws
//! away everything volatile — optionally tearing each file's last unsynced write at 512-byte
//! sector granularity — and invalidates every backend opened before it. Randomness comes from
//! the seed given to [`MemFs::new`], so a crash is reproducible.
//!
//! A write to an `O_DSYNC` file is *in flight* from its submit until its backend delivers its
//! completion (the next poll or wait): a crash lands each write then in flight independently —
//! whole, not at all, or torn at 512-byte sectors, as the crash's [`TearMode`] says — the way
//! several direct writes queued on a disk land in any subset. Two writes in flight to the same
//! sector land in an unspecified order (as on a disk): components must not issue them.
//! [`MemFs::set_write_latency`] holds each delivery back for a while, so that threads sharing
//! a file system overlap their writes as they would on a device.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use storage_io_core::backend_kit::{
    FdTable, InlineBackend, InlineQueue, InlineWrite, plan_write, validate_transfer,
};
use storage_io_core::{
    Capabilities, DirectMode, IoBuf, IoCompletion, IoConfig, IoFd, IoStats, IoToken, OpKind, OpenOptions,
    OpenedFd, Result, StorageIo, StorageIoError, SubmitError,
};

mod names;

/// The sector size a torn write is cut at.
pub const SECTOR_BYTES: usize = 512;

const ENOENT: i32 = 2;
const EBADF: i32 = 9;
const EEXIST: i32 = 17;

/// How a crash treats each file's last write that was not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TearMode {
    /// Drop every unsynced write whole.
    #[default]
    None,
    /// Keep a random prefix of the last unsynced write's sectors (a torn tail).
    Prefix,
    /// Keep a random subset of the last unsynced write's sectors (sectors land out of order).
    AnySectors,
}

/// What a crash does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashOptions {
    /// How to treat the last unsynced write of each file.
    pub tear: TearMode,
}

#[derive(Debug, Clone)]
struct WriteRecord {
    offset: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemFile {
    /// What reads see; `None` when the file is removed.
    live: Option<Vec<u8>>,
    /// What a crash leaves of the data.
    durable: Vec<u8>,
    /// Whether the file exists after a crash.
    durable_exists: bool,
    /// Writes since the last sync, oldest first (the last one may be torn by a crash).
    unsynced: Vec<WriteRecord>,
    /// Renamed here and the directory not synced since: the renamed file's durable data, which
    /// becomes this name's at the next `sync_dir` (a crash before it drops it, and the name
    /// keeps `durable`/`durable_exists` from before the rename).
    renamed: Option<Vec<u8>>,
}

impl MemFile {
    /// Where a sync puts the file's data: the renamed file's durable data while its new name
    /// is not durable yet, else the name's.
    fn durable_mut(&mut self) -> &mut Vec<u8> {
        match &mut self.renamed {
            Some(d) => d,
            None => &mut self.durable,
        }
    }
}

/// An `O_DSYNC` write submitted and not yet delivered: a crash may land any part of it.
#[derive(Debug)]
struct InFlight {
    /// Which backend submitted it (its completion makes the write durable).
    backend: u64,
    path: PathBuf,
    write: WriteRecord,
}

#[derive(Debug)]
struct FsState {
    files: BTreeMap<PathBuf, MemFile>,
    /// `O_DSYNC` writes in flight, in submission order.
    in_flight: Vec<InFlight>,
    /// Identifies the next backend made (for `in_flight`).
    next_backend: u64,
    /// How long a backend holds back the delivery of completions while it has a write in flight.
    write_latency: Duration,
    /// Crashes that found two or more writes in flight.
    crashes_with_writes_in_flight: u64,
    rng: SmallRng,
    /// Bumped by every crash; backends from an older epoch are dead.
    epoch: u64,
    syncs: u64,
    crashes: u64,
    /// A crash armed by [`MemFs::crash_after_ops`]: mutating ops left before it fires.
    scheduled: Option<(u64, CrashOptions)>,
    /// Mutating ops (writes, syncs, creations, removals) performed so far.
    mutations: u64,
    /// Directory locks held ([`Namespace::lock_dir`](storage_io_core::Namespace::lock_dir)), by lock path: the holder's lock number.
    dir_locks: BTreeMap<PathBuf, u64>,
    /// Numbers the next directory lock.
    next_dir_lock: u64,
}

/// An in-memory file system shared by any number of [`MemIo`] backends (one per worker).
///
/// ```
/// use storage_io_core::{Namespace, OpenOptions, StorageIo};
/// use storage_io_testkit::memio::{CrashOptions, MemFs};
///
/// let fs = MemFs::new(7);
/// let mut io = fs.backend();
/// let fd = io.open_file("/db/a".as_ref(), &OpenOptions::create()).unwrap();
/// io.sync_dir("/db".as_ref()).unwrap();
/// io.submit_write(fd, b"durable", 0).unwrap();
/// io.submit_datasync(fd).unwrap();
/// io.submit_write(fd, b"lost", 7).unwrap();
/// fs.crash(CrashOptions::default());
/// assert_eq!(fs.read_file("/db/a".as_ref()).unwrap(), b"durable");
/// ```
#[derive(Debug, Clone)]
pub struct MemFs {
    state: Arc<Mutex<FsState>>,
}

impl MemFs {
    /// An empty file system whose crash randomness is seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        MemFs {
            state: Arc::new(Mutex::new(FsState {
                files: BTreeMap::new(),
                in_flight: Vec::new(),
                next_backend: 0,
                write_latency: Duration::ZERO,
                crashes_with_writes_in_flight: 0,
                rng: SmallRng::seed_from_u64(seed),
                epoch: 0,
                syncs: 0,
                crashes: 0,
                scheduled: None,
                mutations: 0,
                dir_locks: BTreeMap::new(),
                next_dir_lock: 0,
            })),
        }
    }

    /// A backend on this file system with default limits.
    pub fn backend(&self) -> MemIo {
        self.backend_with(&IoConfig::default())
    }

    /// A backend on this file system with the queue depth, file and size limits of `config`.
    pub fn backend_with(&self, config: &IoConfig) -> MemIo {
        let (epoch, id) = {
            let mut st = self.state.lock();
            st.next_backend += 1;
            (st.epoch, st.next_backend)
        };
        MemIo {
            fs: self.clone(),
            epoch,
            id,
            writes_in_flight: false,
            dsync_submitted: false,
            dsync_tokens: Vec::new(),
            max_io_bytes: config.max_io_bytes,
            files: FdTable::with_capacity(config.max_files),
            queue: InlineQueue::new(config.queue_depth),
        }
    }

    /// Simulates power loss: every file goes back to its durable state (with the last unsynced
    /// write torn as `options` says), unsynced creations and removals are undone, and every
    /// backend made before now fails with `Closed`. Returns the paths whose content changed.
    pub fn crash(&self, options: CrashOptions) -> Vec<PathBuf> {
        crash_locked(&mut self.state.lock(), options)
    }

    /// Arms a crash that fires instead of the `n`-th mutating op from now (1 = the next one):
    /// a write, append, datasync, fsync, file creation, removal or `sync_dir`, on any backend
    /// of this file system. The op that hits it fails with `Closed`, as does everything after.
    /// This puts crash points between any two steps of a component's I/O, not only between
    /// its calls. `n = 0` disarms.
    ///
    /// ```
    /// use storage_io_core::{OpenOptions, StorageIo};
    /// use storage_io_testkit::memio::{CrashOptions, MemFs};
    ///
    /// let fs = MemFs::new(3);
    /// let mut io = fs.backend();
    /// let fd = io.open_file("/d/f".as_ref(), &OpenOptions::create()).unwrap(); // op 1
    /// fs.crash_after_ops(2, CrashOptions::default());
    /// io.submit_write(fd, b"a", 0).unwrap(); // op 2: runs
    /// assert!(io.submit_datasync(fd).is_err()); // op 3: the crash fires here
    /// assert_eq!(fs.crash_count(), 1);
    /// assert_eq!(fs.read_file("/d/f".as_ref()), None); // the creation was never made durable
    /// ```
    pub fn crash_after_ops(&self, n: u64, options: CrashOptions) {
        self.state.lock().scheduled = (n > 0).then_some((n, options));
    }

    /// Makes every backend of this file system wait `latency` before it delivers completions
    /// while it has an `O_DSYNC` write in flight (the device's write time): other threads'
    /// writes go in flight meanwhile, so a crash can find several. Zero (the default) delivers
    /// at once.
    pub fn set_write_latency(&self, latency: Duration) {
        self.state.lock().write_latency = latency;
    }

    /// Crashes so far that found two or more `O_DSYNC` writes in flight, so that a test of
    /// several writes in flight can check that it tested them.
    pub fn crashes_with_writes_in_flight(&self) -> u64 {
        self.state.lock().crashes_with_writes_in_flight
    }

    /// Releases every directory lock ([`Namespace::lock_dir`](storage_io_core::Namespace::lock_dir)) held on this file system, as
    /// the death of the process holding them does: for a test that models a process crash
    /// without a power loss (forgetting a component) and reopens. [`MemFs::crash`] does it too.
    /// A guard from before still alive releases nothing when dropped later.
    pub fn release_dir_locks(&self) {
        self.state.lock().dir_locks.clear();
    }

    /// Mutating ops performed so far on this file system (what [`MemFs::crash_after_ops`]
    /// counts), so a test can size its range of crash points.
    pub fn mutation_count(&self) -> u64 {
        self.state.lock().mutations
    }

    /// Counts one mutating op; fires an armed crash when its count runs out. On success it
    /// returns the state still locked, and the op makes its change under that same lock: with
    /// two threads doing I/O, a crash fired by one can then never fall between another's count
    /// and its change (a write or sync that counted before the crash would otherwise land
    /// after it, and a sync would report success for data the crash dropped).
    fn tick(&self, epoch: u64) -> Result<MutexGuard<'_, FsState>> {
        self.tick_with(epoch, None)
    }

    /// [`tick`](MemFs::tick) for a write to an `O_DSYNC` file, given as `(path, offset, data)`:
    /// such a write goes to the disk at once, so a crash that fires on it may leave some of its
    /// sectors on the disk (as the crash's tear mode says).
    fn tick_with(
        &self,
        epoch: u64,
        interrupted: Option<(&Path, u64, &[u8])>,
    ) -> Result<MutexGuard<'_, FsState>> {
        let mut st = self.state.lock();
        if st.epoch != epoch {
            return Err(StorageIoError::Closed);
        }
        st.mutations += 1;
        if let Some((left, options)) = st.scheduled.as_mut() {
            *left -= 1;
            if *left == 0 {
                let options = *options;
                st.scheduled = None;
                crash_locked(&mut st, options);
                if let Some((path, offset, data)) = interrupted {
                    let FsState { files, rng, .. } = &mut *st;
                    if let Some(f) = files.get_mut(path) {
                        let write = WriteRecord {
                            offset,
                            data: data.to_vec(),
                        };
                        tear_into(&mut f.durable, &write, options.tear, rng);
                        f.live = Some(f.durable.clone());
                    }
                }
                return Err(StorageIoError::Closed);
            }
        }
        Ok(st)
    }
}

/// The body of [`MemFs::crash`], on already-locked state.
fn crash_locked(st: &mut FsState, options: CrashOptions) -> Vec<PathBuf> {
    st.epoch += 1;
    // The process died: its directory locks are gone with it.
    st.dir_locks.clear();
    st.crashes += 1;
    if st.in_flight.len() >= 2 {
        st.crashes_with_writes_in_flight += 1;
    }
    let FsState {
        files,
        rng,
        in_flight,
        ..
    } = &mut *st;
    // Each write in flight lands on its own: whole or not at all, or torn like the last
    // unsynced write.
    for w in in_flight.drain(..) {
        let Some(f) = files.get_mut(&w.path) else { continue };
        if f.renamed.is_some() {
            // The file's new name is lost in this crash, and its writes with it.
            continue;
        }
        match options.tear {
            TearMode::None => {
                if rng.random_bool(0.5) {
                    apply(&mut f.durable, &w.write);
                }
            }
            mode => tear_into(&mut f.durable, &w.write, mode, rng),
        }
    }
    let mut changed = Vec::new();
    files.retain(|path, f| {
        if f.renamed.take().is_some() {
            // A rename whose directory was not synced: the name reverts, and the unsynced
            // writes belonged to the renamed file.
            f.unsynced.clear();
        }
        let mut after = f.durable.clone();
        if let (Some(last), true) = (f.unsynced.last(), f.durable_exists) {
            tear_into(&mut after, last, options.tear, rng);
        }
        let before = f.live.take();
        if before.as_ref() != Some(&after) || !f.durable_exists {
            changed.push(path.clone());
        }
        f.unsynced.clear();
        if f.durable_exists {
            f.durable = after.clone();
            f.live = Some(after);
            true
        } else {
            false
        }
    });
    changed
}

impl MemFs {
    /// The volatile contents of `path` (what a read sees now).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        self.state.lock().files.get(path).and_then(|f| f.live.clone())
    }

    /// The contents `path` would have after a crash without tearing.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        let f = st.files.get(path)?;
        f.durable_exists.then(|| f.durable.clone())
    }

    /// Paths of the files that exist now, sorted.
    pub fn list(&self) -> Vec<PathBuf> {
        let st = self.state.lock();
        st.files
            .iter()
            .filter(|(_, f)| f.live.is_some())
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Data syncs (datasync + fsync) performed so far, across all backends.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Crashes simulated so far.
    pub fn crash_count(&self) -> u64 {
        self.state.lock().crashes
    }
}

/// Applies a whole `write` onto `data`.
fn apply(data: &mut Vec<u8>, write: &WriteRecord) {
    let (start, end) = (write.offset as usize, write.offset as usize + write.data.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(&write.data);
}

/// Applies the kept sectors of a torn `write` onto `data`.
fn tear_into(data: &mut Vec<u8>, write: &WriteRecord, mode: TearMode, rng: &mut SmallRng) {
    if mode == TearMode::None || write.data.is_empty() {
        return;
    }
    // Sector boundaries are absolute file offsets, as on a disk.
    let start = write.offset as usize;
    let end = start + write.data.len();
    let mut cuts = vec![start];
    let mut next = (start / SECTOR_BYTES + 1) * SECTOR_BYTES;
    while next < end {
        cuts.push(next);
        next += SECTOR_BYTES;
    }
    cuts.push(end);
    let sectors = cuts.len() - 1;
    let keep: Vec<bool> = match mode {
        TearMode::Prefix => {
            let n = rng.random_range(0..=sectors);
            (0..sectors).map(|i| i < n).collect()
        }
        TearMode::AnySectors => (0..sectors).map(|_| rng.random_bool(0.5)).collect(),
        TearMode::None => return,
    };
    for (i, kept) in keep.into_iter().enumerate() {
        if !kept {
            continue;
        }
        let (a, b) = (cuts[i], cuts[i + 1]);
        if data.len() < b {
            data.resize(b, 0);
        }
        data[a..b].copy_from_slice(&write.data[a - start..b - start]);
    }
}

struct MemHandle {
    path: PathBuf,
    readable: bool,
    writable: bool,
    /// Opened with `O_DSYNC`: each write is durable when it completes.
    dsync: bool,
    append_cursor: u64,
}

/// A backend whose files live in a [`MemFs`]. Ops complete inside `submit_*` (like the inline
/// sync backend) and completions wait for the next poll, so runs are deterministic.
///
/// Files are opened by path with [`StorageIo::open_file`]; `register_fd` with a real `File` is
/// unsupported. After [`MemFs::crash`], every op of a backend made before the crash fails with
/// `Closed`, and so does the completion it delivers after the crash of an `O_DSYNC` write that
/// was in flight (the crash may have dropped it): make a new backend, as a restarted process
/// would.
pub struct MemIo {
    fs: MemFs,
    epoch: u64,
    /// Names this backend's writes in flight.
    id: u64,
    /// Writes of this backend are in flight (delivery makes them durable).
    writes_in_flight: bool,
    /// The last `inline_write` put an `O_DSYNC` write in flight (its token goes to `dsync_tokens`).
    dsync_submitted: bool,
    /// Tokens of this backend's `O_DSYNC` writes not yet delivered: after a crash their
    /// completions say `Closed`, since the crash may have dropped them.
    dsync_tokens: Vec<IoToken>,
    max_io_bytes: usize,
    files: FdTable<MemHandle>,
    queue: InlineQueue,
}

impl MemIo {
    /// The file system this backend works on.
    pub fn fs(&self) -> &MemFs {
        &self.fs
    }

    fn check_alive(&self) -> Result<()> {
        if self.fs.state.lock().epoch != self.epoch {
            return Err(StorageIoError::Closed);
        }
        Ok(())
    }

    fn admit(&self) -> Result<()> {
        self.check_alive()?;
        self.queue.admit()
    }

    /// Remembers the token of a write that went in flight as `O_DSYNC`.
    fn note_dsync(&mut self, token: Result<IoToken>) -> Result<IoToken> {
        if std::mem::take(&mut self.dsync_submitted)
            && let Ok(t) = &token
        {
            self.dsync_tokens.push(*t);
        }
        token
    }

    /// Delivery: this backend's `O_DSYNC` writes in flight reach the disk (unless a crash came
    /// first, which took them already).
    fn land_writes(&mut self) {
        if !std::mem::take(&mut self.writes_in_flight) {
            return;
        }
        let mut st = self.fs.state.lock();
        if st.epoch != self.epoch {
            return;
        }
        let FsState { files, in_flight, .. } = &mut *st;
        in_flight.retain(|w| {
            if w.backend != self.id {
                return true;
            }
            if let Some(f) = files.get_mut(&w.path) {
                apply(f.durable_mut(), &w.write);
            }
            false
        });
    }

    fn sync_inner(&mut self, fd: IoFd, op: OpKind) -> Result<IoToken> {
        self.admit()?;
        let path = &self.files.get(fd)?.path;
        let mut st = self.fs.tick(self.epoch)?;
        let started = Instant::now();
        st.syncs += 1;
        // A sync covers the writes in flight to the file too (they were submitted before it).
        st.in_flight.retain(|w| &w.path != path);
        let result = match st.files.get_mut(path) {
            Some(f) => {
                if let Some(live) = f.live.clone() {
                    *f.durable_mut() = live;
                }
                f.unsynced.clear();
                Ok(0)
            }
            None => Err(StorageIoError::os(op, ENOENT)),
        };
        drop(st);
        Ok(self.queue.finish(started, (op, fd, 0, 0), result, None))
    }
}

impl InlineBackend for MemIo {
    fn inline_queue(&mut self) -> &mut InlineQueue {
        &mut self.queue
    }

    fn inline_write(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<InlineWrite> {
        self.admit()?;
        let h = self.files.get_mut(fd)?;
        let interrupted = (h.dsync && h.writable).then(|| {
            let at = offset.unwrap_or(h.append_cursor);
            (h.path.as_path(), at, data)
        });
        let mut st = self.fs.tick_with(self.epoch, interrupted)?;
        let (op, offset) = plan_write(&mut h.append_cursor, None, offset, data, self.max_io_bytes)?;
        let failed = |errno| Ok(InlineWrite::new(op, offset, Err(StorageIoError::os(op, errno))));
        if !h.writable {
            return failed(EBADF);
        }
        let Some(file) = st.files.get_mut(&h.path) else {
            return failed(ENOENT);
        };
        let Some(live) = file.live.as_mut() else {
            return failed(ENOENT);
        };
        let (start, end) = (offset as usize, offset as usize + data.len());
        if live.len() < end {
            live.resize(end, 0);
        }
        live[start..end].copy_from_slice(data);
        if h.dsync {
            // O_DSYNC: on the disk when it completes, i.e. when this backend delivers its
            // completion; until then in flight (earlier unsynced writes stay unsynced).
            st.in_flight.push(InFlight {
                backend: self.id,
                path: h.path.clone(),
                write: WriteRecord {
                    offset,
                    data: data.to_vec(),
                },
            });
            self.writes_in_flight = true;
            self.dsync_submitted = true;
        } else {
            file.unsynced.push(WriteRecord {
                offset,
                data: data.to_vec(),
            });
        }
        Ok(InlineWrite::new(op, offset, Ok(data.len())))
    }
}

impl StorageIo for MemIo {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "mem",
            max_in_flight: self.queue.limit(),
            asynchronous: false,
            worker_threads: 0,
            registered_buffers: false,
            registered_files: false,
            sqpoll: false,
            direct_io: false,
            max_io_bytes: self.max_io_bytes,
            notes: vec!["in-memory files; crash() drops unsynced writes".to_string()],
        }
    }

    fn register_fd(&mut self, _file: File) -> Result<IoFd> {
        Err(StorageIoError::unsupported(
            "MemIo keeps its files in memory; open them by path with open_file",
        ))
    }

    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        self.check_alive()?;
        let mut st = if options.create || options.create_new || (options.truncate && options.write) {
            self.fs.tick(self.epoch)?
        } else {
            self.fs.state.lock()
        };
        let entry = st.files.entry(path.to_path_buf()).or_default();
        match (&mut entry.live, options.create || options.create_new) {
            (Some(_), _) if options.create_new => return Err(StorageIoError::os_at("open", path, EEXIST)),
            (Some(data), _) => {
                if options.truncate && options.write {
                    data.clear();
                }
            }
            (live @ None, true) => {
                *live = Some(Vec::new());
                // A new name, or one brought back after a removal, is durable only after sync_dir.
                entry.durable_exists = false;
                entry.durable.clear();
                entry.renamed = None;
            }
            (None, false) => return Err(StorageIoError::os_at("open", path, ENOENT)),
        }
        let len = entry.live.as_ref().map_or(0, |d| d.len() as u64);
        drop(st);
        self.files.insert(MemHandle {
            path: path.to_path_buf(),
            readable: options.read,
            writable: options.write,
            dsync: options.dsync,
            append_cursor: len,
        })
    }
    /// An in-memory file: no OS handle, and buffered (the model has no page cache to bypass).
    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        let fd = self.open_file(path, options)?;
        let fallback_reason = options
            .direct
            .then(|| "an in-memory file has no direct I/O".to_string());
        Ok(OpenedFd {
            fd,
            mode: DirectMode::Buffered { fallback_reason },
            file: None,
        })
    }

    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        self.files.remove(fd).map(|_| ())
    }

    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        self.check_alive()?;
        let path = &self.files.get(fd)?.path;
        let st = self.fs.state.lock();
        st.files
            .get(path)
            .and_then(|f| f.live.as_ref())
            .map(|d| d.len() as u64)
            .ok_or(StorageIoError::os(OpKind::Read, ENOENT))
    }

    fn submit_read(&mut self, fd: IoFd, mut buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let checked = self.admit().and_then(|()| {
            let h = self.files.get(fd)?;
            validate_transfer(None, offset, buf.len(), buf.addr(), self.max_io_bytes)?;
            Ok((h.path.clone(), h.readable))
        });
        let (path, readable) = match checked {
            Ok(x) => x,
            Err(e) => return Err(SubmitError::new(e, buf)),
        };
        let started = Instant::now();
        let len = buf.len();
        let result = if readable {
            let st = self.fs.state.lock();
            match st.files.get(&path).and_then(|f| f.live.as_ref()) {
                Some(data) => {
                    let start = (offset as usize).min(data.len());
                    let n = (data.len() - start).min(len);
                    buf[..n].copy_from_slice(&data[start..start + n]);
                    Ok(n)
                }
                None => Err(StorageIoError::os(OpKind::Read, ENOENT)),
            }
        } else {
            Err(StorageIoError::os(OpKind::Read, EBADF))
        };
        if let Ok(n) = result {
            buf.truncate(n);
        }
        Ok(self
            .queue
            .finish(started, (OpKind::Read, fd, offset, len), result, Some(buf)))
    }

    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        let token = self.write_copied(fd, data, Some(offset));
        self.note_dsync(token)
    }

    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let token = self.write_owned(fd, buf, offset)?;
        Ok(self.note_dsync(Ok(token)).unwrap_or(token))
    }

    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        let token = self.write_copied(fd, data, None);
        self.note_dsync(token)
    }

    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync_inner(fd, OpKind::Datasync)
    }

    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync_inner(fd, OpKind::Fsync)
    }

    fn flush(&mut self) -> Result<usize> {
        Ok(0)
    }

    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.land_writes();
        let from = out.len();
        let n = self.queue.poll(out);
        if self.check_alive().is_err() {
            // A crash came between these O_DSYNC writes and their delivery, and may have
            // dropped them: their process learns nothing of how they ended.
            for c in &mut out[from..] {
                if self.dsync_tokens.contains(&c.token) {
                    c.result = Err(StorageIoError::Closed);
                }
            }
        }
        self.dsync_tokens.clear();
        n
    }

    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        _min: usize,
        _timeout: Option<Duration>,
    ) -> Result<usize> {
        if self.writes_in_flight {
            let latency = self.fs.state.lock().write_latency;
            // Yield rather than sleep: a sleep's timer slack would stretch short latencies.
            let started = Instant::now();
            while started.elapsed() < latency {
                std::thread::yield_now();
            }
        }
        Ok(self.poll_completions(out))
    }

    fn pending_count(&self) -> usize {
        self.queue.pending()
    }

    fn stats(&self) -> &IoStats {
        self.queue.stats()
    }
}
