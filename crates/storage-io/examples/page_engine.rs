//! A small engine on the page scheduler and the write-ahead log, composed the way a database
//! uses them: the engine owns page allocation, and recovers by physical redo.
//!
//! - The pages live in the engine's own file (`heap.pages`), opened with
//!   `allocation = external`: the scheduler allocates nothing and writes no allocation images.
//! - Page 0 is the engine's meta page. It holds its own free list, the next unused page id and
//!   the list of live data pages, oldest first.
//! - The engine is a bounded queue of numbers 1, 2, 3, …: each push appends to the tail page;
//!   a full tail page gets a new page (off the free list when one is free), and past
//!   `--retain` live pages the oldest is freed, so page ids are reused all the time.
//! - Every change is logged before any page is written: a push logs the image of each page it
//!   changed (the tail page, then the meta page when the page list changed) as WAL records
//!   `[page id u64][page bytes]`, waits until they are durable, and only then writes the pages
//!   through the scheduler (not durably). The meta page's record comes last, so a crash that
//!   keeps only part of a push's records leaves a data page nobody points to, never a list
//!   that points at a page that was not written.
//! - A checkpoint syncs the page file and truncates the log before the checkpoint's LSN.
//! - Recovery replays every record still in the log, in LSN order, onto the page file (the
//!   newest image of a page wins), syncs, and reads the meta page back.
//!
//! Two runs: on disk (the façade picks the backend) with a restart between two halves of the
//! pushes, and `--crash-points N` simulated power cuts on the testkit's in-memory file system,
//! each at a different op, after which recovery must find every acknowledged push.
//!
//! ```text
//! cargo run --release -p storage-io --example page_engine -- --pushes 20000 --crash-points 200
//! ```

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use storage_io::scheduler::{AllocationMode, DiskScheduler, PageId, Reply, SchedulerConfig};
use storage_io::wal::{WalConfig, WalManager};
use storage_io::{BackendFactory, IoConfig, StorageIo};
use storage_io_testkit::memio::{CrashOptions, MemFs, TearMode};

const PAGE: usize = 4096;
const META: PageId = PageId(0);
const META_MAGIC: &[u8; 4] = b"PGEN";
/// Values a data page holds: a u32 count, then u64 values.
const PER_PAGE: usize = (PAGE - 4) / 8;

/// The engine's own allocation state, kept in page 0.
#[derive(Debug, Clone, PartialEq)]
struct Meta {
    next_page: u64,
    live: VecDeque<u64>,
    free: Vec<u64>,
}

impl Meta {
    fn new() -> Self {
        Meta {
            next_page: 1,
            live: VecDeque::new(),
            free: Vec::new(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut page = Vec::with_capacity(PAGE);
        page.extend_from_slice(META_MAGIC);
        page.extend_from_slice(&self.next_page.to_le_bytes());
        page.extend_from_slice(&(self.live.len() as u32).to_le_bytes());
        page.extend_from_slice(&(self.free.len() as u32).to_le_bytes());
        for id in self.live.iter().chain(&self.free) {
            page.extend_from_slice(&id.to_le_bytes());
        }
        assert!(page.len() <= PAGE, "the meta page overflowed; lower --retain");
        page.resize(PAGE, 0);
        page
    }

    /// The meta page as read back; a page of zeros is a fresh engine.
    fn decode(page: &[u8]) -> anyhow::Result<Self> {
        if page.iter().all(|&b| b == 0) {
            return Ok(Meta::new());
        }
        ensure!(&page[..4] == META_MAGIC, "page 0 is not this engine's meta page");
        let u64_at = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_le_bytes(page[at..at + 4].try_into().unwrap_or_default()) as usize;
        let (live, free) = (u32_at(12), u32_at(16));
        ensure!(
            20 + 8 * (live + free) <= PAGE,
            "the meta page lists more ids than fit"
        );
        let ids: Vec<u64> = (0..live + free).map(|i| u64_at(20 + 8 * i)).collect();
        Ok(Meta {
            next_page: u64_at(4),
            live: ids[..live].iter().copied().collect(),
            free: ids[live..].to_vec(),
        })
    }
}

fn values_of(page: &[u8]) -> Vec<u64> {
    let n = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as usize;
    (0..n.min(PER_PAGE))
        .map(|i| u64::from_le_bytes(page[4 + 8 * i..12 + 8 * i].try_into().unwrap_or_default()))
        .collect()
}

/// A WAL record: which page, and its whole image.
fn record(page: PageId, bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(8 + bytes.len());
    r.extend_from_slice(&page.0.to_le_bytes());
    r.extend_from_slice(bytes);
    r
}

struct Engine {
    sched: DiskScheduler,
    wal: WalManager,
    meta: Meta,
    /// The tail page's bytes (the last live page).
    tail: Vec<u8>,
    last_value: u64,
    retain: usize,
    /// Records replayed by the last recovery.
    replayed: usize,
}

fn scheduler_config() -> SchedulerConfig {
    SchedulerConfig {
        allocation: AllocationMode::External,
        page_file: "heap.pages".into(),
        workers: 1,
        ..SchedulerConfig::default()
    }
}

fn wal_config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 1 << 20,
        ..WalConfig::default()
    }
}

impl Engine {
    /// Opens the engine in `dir` and recovers it: physical redo of the log, then the meta page.
    fn open(dir: &Path, factory: BackendFactory, retain: usize) -> anyhow::Result<Engine> {
        let sched = DiskScheduler::open(dir.join("pages"), scheduler_config(), factory.clone())
            .context("opening the page file")?;
        let (wal, _) = WalManager::open(dir.join("wal"), wal_config(), factory).context("opening the log")?;
        // Physical redo: every logged page image, in LSN order, onto the page file.
        let mut writes: Vec<Reply<()>> = Vec::new();
        for entry in wal.reader(wal.first_lsn())? {
            let (_, bytes) = entry?;
            ensure!(bytes.len() == 8 + PAGE, "a log record of {} bytes", bytes.len());
            let page = PageId(u64::from_le_bytes(bytes[..8].try_into()?));
            writes.push(sched.schedule_write(page, bytes[8..].to_vec().into()));
        }
        let replayed = writes.len();
        for w in writes {
            w.recv().context("replaying a page image")?;
        }
        sched.schedule_sync().recv().context("syncing the redone pages")?;
        let meta = Meta::decode(&sched.schedule_read(META).recv()?)?;
        let tail = match meta.live.back() {
            Some(&id) => sched.schedule_read(PageId(id)).recv()?.to_vec(),
            None => vec![0u8; PAGE],
        };
        let last_value = values_of(&tail).last().copied().unwrap_or(0);
        let mut engine = Engine {
            sched,
            wal,
            meta,
            tail,
            last_value,
            retain,
            replayed,
        };
        engine.checkpoint()?;
        Ok(engine)
    }

    /// Appends the next value; returns once it is durable (in the log).
    fn push(&mut self) -> anyhow::Result<u64> {
        let value = self.last_value + 1;
        let mut meta_changed = false;
        let full = values_of(&self.tail).len() == PER_PAGE;
        if self.meta.live.is_empty() || full {
            // A new tail page: the engine's own allocation, off its free list first.
            let id = self.meta.free.pop().unwrap_or_else(|| {
                self.meta.next_page += 1;
                self.meta.next_page - 1
            });
            self.meta.live.push_back(id);
            if self.meta.live.len() > self.retain
                && let Some(old) = self.meta.live.pop_front()
            {
                self.meta.free.push(old);
            }
            self.tail = vec![0u8; PAGE];
            meta_changed = true;
        }
        let n = values_of(&self.tail).len();
        self.tail[4 + 8 * n..12 + 8 * n].copy_from_slice(&value.to_le_bytes());
        self.tail[..4].copy_from_slice(&(n as u32 + 1).to_le_bytes());
        let tail_id = PageId(*self.meta.live.back().context("no tail page")?);
        let mut pages = vec![(tail_id, self.tail.clone())];
        if meta_changed {
            pages.push((META, self.meta.encode())); // last: the push's commit point
        }
        // Log first, durably; only then may the pages reach the page file.
        let records: Vec<Vec<u8>> = pages.iter().map(|(p, b)| record(*p, b)).collect();
        let lsns = self.wal.append_batch(records.iter().map(Vec::as_slice))?;
        self.wal.wait_durable(*lsns.last().context("no records")?)?;
        let writes: Vec<Reply<()>> = pages
            .into_iter()
            .map(|(p, b)| self.sched.schedule_write(p, b.into()))
            .collect();
        for w in writes {
            w.recv()?;
        }
        self.last_value = value;
        Ok(value)
    }

    /// Makes the page file durable up to now and drops the log before it.
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        let upto = self.wal.durable_lsn();
        self.sched.schedule_sync().recv()?;
        self.wal.truncate_before(upto)?;
        Ok(())
    }

    /// Every value in the live pages, oldest first.
    fn contents(&self) -> anyhow::Result<Vec<u64>> {
        let mut all = Vec::new();
        for &id in &self.meta.live {
            all.extend(values_of(&self.sched.schedule_read(PageId(id)).recv()?));
        }
        Ok(all)
    }

    /// Checks what recovery found: the live pages hold a run of consecutive values ending at
    /// `last_value`, at least `acked` (every acknowledged push) and at most `acked + 1` (the
    /// push a crash cut short may have made it).
    fn verify(&self, acked: u64) -> anyhow::Result<()> {
        ensure!(
            (acked..=acked + 1).contains(&self.last_value),
            "recovered up to value {}, but {acked} pushes were acknowledged",
            self.last_value
        );
        let all = self.contents()?;
        let expect_first = self.last_value + 1 - all.len() as u64;
        for (i, &v) in all.iter().enumerate() {
            if v != expect_first + i as u64 {
                bail!("value {v} at position {i}: the live pages do not hold one consecutive run");
            }
        }
        let in_use: Vec<u64> = self.meta.live.iter().chain(&self.meta.free).copied().collect();
        let mut sorted = in_use.clone();
        sorted.sort_unstable();
        sorted.dedup();
        ensure!(
            sorted.len() == in_use.len(),
            "a page id is both live and free, or listed twice"
        );
        ensure!(
            sorted.iter().all(|&id| id >= 1 && id < self.meta.next_page),
            "the meta page lists an id outside 1..{}",
            self.meta.next_page
        );
        Ok(())
    }
}

struct Args {
    pushes: u64,
    retain: usize,
    checkpoint_every: u64,
    crash_points: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        pushes: 20_000,
        retain: 8,
        checkpoint_every: 1_000,
        crash_points: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse().with_context(|| format!("{name} {v}: not a number"))
        };
        match flag.as_str() {
            "--pushes" => args.pushes = value("--pushes")?,
            "--retain" => args.retain = value("--retain")? as usize,
            "--checkpoint-every" => args.checkpoint_every = value("--checkpoint-every")?,
            "--crash-points" => args.crash_points = value("--crash-points")?,
            other => bail!(
                "unknown argument {other}; use --pushes N, --retain PAGES, --checkpoint-every N, --crash-points N"
            ),
        }
    }
    ensure!(
        (1..=200).contains(&args.retain),
        "--retain {} is out of range: 1 to 200 pages (the meta page lists them)",
        args.retain
    );
    ensure!(args.checkpoint_every > 0, "--checkpoint-every must be at least 1");
    Ok(args)
}

/// Pushes on a real disk, with a restart (and recovery) in the middle.
fn on_disk(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (factory, selection) = storage_io::backend_factory(&IoConfig::default())?;
    let started = Instant::now();
    let half = args.pushes / 2;
    {
        let mut engine = Engine::open(dir.path(), factory.clone(), args.retain)?;
        for i in 1..=half {
            engine.push()?;
            if i % args.checkpoint_every == 0 {
                engine.checkpoint()?;
            }
        }
        // Stop without a last checkpoint: what came after the last one is only in the log.
    }
    let mut engine = Engine::open(dir.path(), factory, args.retain)?;
    engine.verify(half)?;
    let replayed = engine.replayed;
    for i in half + 1..=args.pushes {
        engine.push()?;
        if i % args.checkpoint_every == 0 {
            engine.checkpoint()?;
        }
    }
    engine.verify(args.pushes)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "on disk ({:?}): {} durable pushes in {secs:.2} s ({:.0}/s); the restart replayed {replayed} page images; {} live pages, {} free",
        selection.kind,
        args.pushes,
        args.pushes as f64 / secs,
        engine.meta.live.len(),
        engine.meta.free.len(),
    );
    Ok(())
}

/// Power cuts at `args.crash_points` different ops on the in-memory file system.
fn crash_points(args: &Args) -> anyhow::Result<()> {
    let pushes = args.pushes.min(3_000);
    let factory_of = |fs: &MemFs| -> BackendFactory {
        let fs = fs.clone();
        Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>))
    };
    // How many mutating ops the whole run takes, to spread the crash points over it.
    let dry = MemFs::new(0);
    run_until_crash(&dry, factory_of(&dry), pushes, args)?;
    let total = dry.mutation_count();
    let dir = Path::new("/engine");
    let mut replayed = 0;
    for point in 0..args.crash_points {
        let tear = [TearMode::None, TearMode::Prefix, TearMode::AnySectors][point as usize % 3];
        let fs = MemFs::new(point);
        let at = 1 + (point * 7919 + 13) % total;
        fs.crash_after_ops(at, CrashOptions { tear });
        let acked = run_until_crash(&fs, factory_of(&fs), pushes, args)?;
        fs.crash_after_ops(0, CrashOptions { tear });
        fs.crash(CrashOptions { tear });
        let engine = Engine::open(dir, factory_of(&fs), args.retain)
            .with_context(|| format!("recovery after a crash at op {at} of {total}"))?;
        engine
            .verify(acked)
            .with_context(|| format!("after a crash at op {at} of {total} ({tear:?})"))?;
        replayed += engine.replayed;
    }
    println!(
        "crash points: {} power cuts over {total} ops of {pushes} pushes, every acknowledged push recovered ({replayed} page images replayed in all)",
        args.crash_points
    );
    Ok(())
}

/// Pushes until the first error (the crash) and returns how many were acknowledged.
fn run_until_crash(fs: &MemFs, factory: BackendFactory, pushes: u64, args: &Args) -> anyhow::Result<u64> {
    let mut engine = match Engine::open(Path::new("/engine"), factory, args.retain) {
        Ok(e) => e,
        Err(_) if fs.crash_count() > 0 => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut acked = 0;
    for i in 1..=pushes {
        let done = engine.push().map(|v| acked = v);
        let done = done.and_then(|()| {
            if i % args.checkpoint_every == 0 {
                engine.checkpoint()
            } else {
                Ok(())
            }
        });
        match done {
            Ok(()) => {}
            Err(_) if fs.crash_count() > 0 => return Ok(acked),
            Err(e) => return Err(e),
        }
    }
    Ok(acked)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    on_disk(&args)?;
    if args.crash_points > 0 {
        crash_points(&args)?;
    }
    Ok(())
}
