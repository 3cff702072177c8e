//! Page allocation: which page ids are in use, and the crash-safe image of that on disk.
//!
//! **Invariant:** a page id is handed out by `allocate` only if no acknowledged allocation
//! holds it; an acknowledged allocate or deallocate survives a crash.
//!
//! The state is two numbers and a set: `next` (every id below it was handed out once) and the
//! free ids below `next`. It is written whole, as an *image*, into one of two files
//! (`pages.alloc.0` and `pages.alloc.1`, the *slots*), and is followed by an fdatasync before
//! anyone is told. Opening picks the valid image with the highest sequence number. No rename
//! and no directory sync is needed after the files exist.
//!
//! **Invariant (image slots):** an image is never written into the slot that holds the newest
//! durable image (the last one whose fdatasync succeeded, or the one opening loaded). It goes
//! into the other slot, and only when its fdatasync succeeds does that slot become the durable
//! one. One image is written at a time, so a crash tears at most the slot being written and the
//! durable slot still holds every acknowledged change. A failed write or sync leaves the durable
//! slot where it was, and no image follows it in this run (see below). Images queued
//! behind one in flight are collapsed into the newest (each is a whole snapshot); it too goes
//! into the slot that is not the durable one once the image in flight completes.
//!
//! **Invariant (fresh ids):** an id handed out that no acknowledged, durable allocation ever
//! held reads as zeros, after any crash. The page file may hold bytes past the durable `next`
//! (pages allocated under `next_sync` and written, or written in a redo, whose image a crash
//! lost; or kernel write-back): opening counts the ids up to the file's end as *stale*, and
//! the dispatcher writes a zero page over a stale id before it answers its allocation. Zero
//! pages are durable writes, and worker 0 writes an image only once every zero page sent
//! before it has finished, so no image makes an id allocated whose zero page a crash can undo.
//!
//! **Invariant (poisoning):** once an image fails (its write or its fdatasync), or a zero page
//! (an allocation answered with that error still holds its id in memory), allocation is
//! poisoned until the scheduler is reopened: the images queued behind it and every later
//! allocation change are refused (`AllocationPoisoned`) and nothing more is written to the
//! slots. The in-memory allocator may hold changes whose fate on disk is unknown (a failed
//! fdatasync may have written some of the image, or none), so an id it freed must not be handed
//! out again: with no change accepted, no id can get two owners. Reopening decides, from the
//! image it loads.
//!
//! Image layout (little endian): magic `SIOA`, version u32, page size u32, reserved u32,
//! seq u64, next u64, free count u64, the free ids (u64 each), CRC32C of everything before it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use storage_io_core::{IoCompletion, IoFd, IoToken, OpenOptions, StorageIo, StorageIoError};

use crate::PageId;
use crate::error::{Result, SchedulerError};

const MAGIC: &[u8; 4] = b"SIOA";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 40;

/// How far past the end `allocate_at` may reach: the ids it skips go on the free list, and
/// each costs 8 bytes of every later allocation image (1 Mi ids: 8 MiB).
pub const MAX_ALLOCATE_AT_GAP: u64 = 1 << 20;

/// The file names of the two image slots, in the scheduler's directory. A page file may not
/// be named like either (`SchedulerConfig::validate` refuses it): the images would overwrite
/// its first pages.
pub(crate) const SLOT_NAMES: [&str; 2] = ["pages.alloc.0", "pages.alloc.1"];

/// The paths of the two image slots.
pub(crate) fn meta_paths(dir: &Path) -> [PathBuf; 2] {
    SLOT_NAMES.map(|name| dir.join(name))
}

/// Which page ids are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allocator {
    next: u64,
    free: BTreeSet<u64>,
    /// Sequence number of the last image built.
    seq: u64,
}

impl Allocator {
    pub(crate) fn new() -> Self {
        Allocator {
            next: 0,
            free: BTreeSet::new(),
            seq: 0,
        }
    }

    /// Hands out the lowest free id, or a new one past the end; never one at or past
    /// `max_pages` (free ids up there, left by a run with a larger limit, stay free).
    pub(crate) fn allocate(&mut self, max_pages: u64) -> Result<PageId> {
        if let Some(id) = self.free.first().copied().filter(|&id| id < max_pages) {
            self.free.remove(&id);
            return Ok(PageId(id));
        }
        if self.next >= max_pages {
            return Err(SchedulerError::OutOfPages);
        }
        self.next += 1;
        Ok(PageId(self.next - 1))
    }

    /// Like [`allocate`](Self::allocate), and whether the id came off the free list (it was
    /// handed out before and may still hold that page's bytes).
    pub(crate) fn allocate_reporting_reuse(&mut self, max_pages: u64) -> Result<(PageId, bool)> {
        let end = self.next;
        self.allocate(max_pages).map(|page| (page, page.0 < end))
    }

    /// Hands out `n` new, adjacent ids past the end (the free list is not used, so the pages
    /// are contiguous on disk: bulk loading, extending a table).
    pub(crate) fn allocate_extent(&mut self, n: u64, max_pages: u64) -> Result<std::ops::Range<PageId>> {
        let end = self
            .next
            .checked_add(n)
            .filter(|&e| e <= max_pages)
            .ok_or(SchedulerError::OutOfPages)?;
        let start = self.next;
        self.next = end;
        Ok(PageId(start)..PageId(end))
    }

    /// Allocates `page` itself: taken off the free list, or, past the end, with every id
    /// between the end and it put on the free list. `Ok(false)` if it was allocated already.
    /// `OutOfRange` at or past `max_pages`, below `next` too. At most [`MAX_ALLOCATE_AT_GAP`]
    /// ids past the end, so the image stays bounded.
    pub(crate) fn allocate_at(&mut self, page: PageId, max_pages: u64) -> Result<bool> {
        // Like reads and writes, an id at or past the limit is refused even if a run with a
        // larger limit allocated it.
        if page.0 >= max_pages {
            return Err(SchedulerError::OutOfRange {
                page,
                limit: max_pages,
            });
        }
        if self.is_allocated(page) {
            return Ok(false);
        }
        if page.0 < self.next {
            self.free.remove(&page.0);
            return Ok(true);
        }
        if page.0 - self.next > MAX_ALLOCATE_AT_GAP {
            return Err(SchedulerError::AllocationGap {
                page,
                next: self.next,
                max_gap: MAX_ALLOCATE_AT_GAP,
            });
        }
        self.free.extend(self.next..page.0);
        self.next = page.0 + 1;
        Ok(true)
    }

    /// Every id below `pages` allocated, nothing free: an existing page file adopted whole.
    pub(crate) fn adopting(pages: u64) -> Self {
        Allocator {
            next: pages,
            free: BTreeSet::new(),
            seq: 0,
        }
    }

    pub(crate) fn deallocate(&mut self, page: PageId) -> Result<()> {
        if !self.is_allocated(page) {
            return Err(SchedulerError::NotAllocated(page));
        }
        self.free.insert(page.0);
        Ok(())
    }

    pub(crate) fn is_allocated(&self, page: PageId) -> bool {
        page.0 < self.next && !self.free.contains(&page.0)
    }

    /// Pages in use.
    pub(crate) fn allocated_count(&self) -> u64 {
        self.next - self.free.len() as u64
    }

    /// Serialises the state as the next image (bumps the sequence number).
    pub(crate) fn next_image(&mut self, page_size: usize) -> (u64, Vec<u8>) {
        self.seq += 1;
        (self.seq, self.encode(page_size))
    }

    /// `next` and the free ids.
    pub(crate) fn parts(&self) -> (u64, &BTreeSet<u64>) {
        (self.next, &self.free)
    }

    /// The image of the current state with its current sequence number (what `decode` read).
    pub(crate) fn encode(&self, page_size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 8 * self.free.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(page_size as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        out.extend_from_slice(&(self.free.len() as u64).to_le_bytes());
        for id in &self.free {
            out.extend_from_slice(&id.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an image; `Err` says why it is not a valid one. Bytes after the image (left by a
    /// longer earlier image in the same file) are ignored.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<(Allocator, u32), String> {
        if bytes.len() < HEADER_BYTES + 4 {
            return Err(format!("{} bytes is shorter than an image header", bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err("bad magic (not an allocation image)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(4);
        if version != VERSION {
            return Err(format!("version {version}, this build reads version {VERSION}"));
        }
        let page_size = u32_at(8);
        if u32_at(12) != 0 {
            return Err("reserved field is not zero".into());
        }
        let seq = u64_at(16);
        let next = u64_at(24);
        let free_count = u64_at(32);
        let body = free_count
            .checked_mul(8)
            .and_then(|n| n.checked_add(HEADER_BYTES as u64))
            .filter(|&n| n + 4 <= bytes.len() as u64)
            .ok_or_else(|| format!("free count {free_count} runs past the end of the file"))?
            as usize;
        let stored = u32_at(body);
        if crc32c::crc32c(&bytes[..body]) != stored {
            return Err("checksum mismatch (torn or damaged write)".into());
        }
        // Free ids are written in increasing order; anything else was not written by us.
        let mut free = BTreeSet::new();
        for i in 0..free_count as usize {
            let id = u64_at(HEADER_BYTES + 8 * i);
            if id >= next || free.last().is_some_and(|&last| id <= last) {
                return Err(format!(
                    "free id {id} is past the end ({next}), listed twice or out of order"
                ));
            }
            free.insert(id);
        }
        Ok((Allocator { next, free, seq }, page_size))
    }
}

/// Waits for the completions of `tokens` (in that order) on a backend used by one thread only.
pub(crate) fn wait_for(
    io: &mut dyn StorageIo,
    tokens: &[IoToken],
    what: &'static str,
) -> Result<Vec<IoCompletion>> {
    let mut done: Vec<IoCompletion> = Vec::new();
    while tokens.iter().any(|t| !done.iter().any(|c| c.token == *t)) {
        if io.pending_count() == 0 {
            return Err(SchedulerError::Worker(format!(
                "{what}: the backend lost a completion"
            )));
        }
        io.wait_completions(&mut done, 1, None)
            .map_err(|source| SchedulerError::Backend { what, source })?;
    }
    Ok(tokens
        .iter()
        .filter_map(|t| {
            done.iter()
                .position(|c| c.token == *t)
                .map(|i| done.swap_remove(i))
        })
        .collect())
}

fn read_whole(io: &mut dyn StorageIo, fd: IoFd) -> Result<Vec<u8>> {
    let what = "reading allocation metadata";
    let len = io
        .file_len(fd)
        .map_err(|source| SchedulerError::Backend { what, source })? as usize;
    let token = io
        .submit_read(fd, vec![0; len].into(), 0)
        .map_err(|e| SchedulerError::Backend {
            what,
            source: e.error,
        })?;
    let done = wait_for(io, &[token], what)?.pop();
    let done = done.ok_or_else(|| SchedulerError::Worker(format!("{what}: no completion")))?;
    done.result
        .map_err(|source| SchedulerError::Backend { what, source })?;
    Ok(done.buf.map(|b| b.into_vec()).unwrap_or_default())
}

/// Writes `image` into the slot `fd` and datasyncs it, synchronously.
pub(crate) fn write_image_blocking(io: &mut dyn StorageIo, fd: IoFd, image: &[u8]) -> Result<()> {
    let what = "writing allocation metadata";
    let backend = |source: StorageIoError| SchedulerError::Backend { what, source };
    // One op at a time: a backend may allow only one in flight.
    let write = io.submit_write(fd, image, 0).map_err(backend)?;
    for done in wait_for(io, &[write], what)? {
        done.result.map_err(backend)?;
    }
    let sync = io.submit_datasync(fd).map_err(backend)?;
    for done in wait_for(io, &[sync], what)? {
        done.result.map_err(backend)?;
    }
    Ok(())
}

/// The two image slots of an open page file, and which one holds the newest durable image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaSlots {
    pub(crate) fds: [IoFd; 2],
    /// The slot of the newest durable image: never written until another slot is durable.
    pub(crate) durable: usize,
}

impl MetaSlots {
    /// The slot the next image goes into.
    pub(crate) fn target(&self) -> usize {
        1 - self.durable
    }
}

/// Opens both slots (creating them) and loads the newest valid image. A fresh directory gets an
/// empty allocator whose first image is written before this returns; so does a page file with
/// data and no images when `adopt` is set, with every page up to its length allocated.
/// Returns the allocator and the slots.
pub(crate) fn load(
    io: &mut dyn StorageIo,
    dir: &Path,
    page_size: usize,
    data_len: u64,
    adopt: bool,
) -> Result<(Allocator, MetaSlots)> {
    let what = "opening allocation metadata";
    let paths = meta_paths(dir);
    let existed: Vec<bool> = {
        let listed = io
            .list_dir(dir)
            .map_err(|source| SchedulerError::Backend { what, source })?;
        paths.iter().map(|p| listed.contains(p)).collect()
    };
    let no_images = |detail: &str| SchedulerError::CorruptMetadata {
        path: dir.to_path_buf(),
        reason: format!(
            "the page file has {data_len} bytes but there is no allocation metadata \
             (pages.alloc.0/1{detail}); restore those files, or set adopt_existing = true to \
             adopt the file with every page up to its length allocated"
        ),
    };
    // Refused before anything is created: a second attempt gets the same answer.
    if data_len > 0 && !adopt && !existed.iter().any(|&e| e) {
        return Err(no_images(""));
    }
    let mut fds = Vec::with_capacity(2);
    for path in &paths {
        fds.push(
            io.open_file(path, &OpenOptions::create())
                .map_err(|source| SchedulerError::Backend { what, source })?,
        );
    }
    let fds = [fds[0], fds[1]];
    // Each slot is read once; a new directory has nothing to read.
    let slots: Vec<Vec<u8>> = if existed.iter().any(|&e| e) {
        vec![read_whole(io, fds[0])?, read_whole(io, fds[1])?]
    } else {
        vec![Vec::new(), Vec::new()]
    };
    // A crash while a fresh directory was being set up leaves both slots blank (empty or
    // zeros) and the page file empty: nothing was ever acknowledged, so start fresh. (A crash
    // while adopting a file leaves the same, with the file's data: adopt it again.)
    let blank = slots.iter().all(|s| s.iter().all(|&b| b == 0));
    if (blank && (data_len == 0 || adopt)) || !existed.iter().any(|&e| e) {
        let mut alloc = Allocator::adopting(data_len.div_ceil(page_size as u64));
        let (_, image) = alloc.next_image(page_size);
        write_image_blocking(io, fds[1], &image)?;
        io.sync_dir(dir)
            .map_err(|source| SchedulerError::Backend { what, source })?;
        return Ok((alloc, MetaSlots { fds, durable: 1 }));
    }
    if blank && !adopt {
        return Err(no_images(" are empty"));
    }
    let mut best: Option<(Allocator, usize)> = None;
    let mut reasons = Vec::new();
    for (i, bytes) in slots.iter().enumerate() {
        match Allocator::decode(bytes) {
            Ok((alloc, stored_page_size)) => {
                if stored_page_size as usize != page_size {
                    return Err(SchedulerError::CorruptMetadata {
                        path: paths[i].clone(),
                        reason: format!(
                            "the page file was created with {stored_page_size}-byte pages; open it with page_size = {stored_page_size}, not {page_size}"
                        ),
                    });
                }
                if best.as_ref().is_none_or(|(b, _)| alloc.seq > b.seq) {
                    best = Some((alloc, i));
                }
            }
            Err(reason) => reasons.push(format!("{}: {reason}", paths[i].display())),
        }
    }
    match best {
        Some((alloc, durable)) => {
            if !reasons.is_empty() {
                tracing::warn!(
                    ?reasons,
                    seq = alloc.seq,
                    "one allocation image was torn; using the other"
                );
            }
            Ok((alloc, MetaSlots { fds, durable }))
        }
        None => Err(SchedulerError::CorruptMetadata {
            path: dir.to_path_buf(),
            reason: format!("no valid image in either slot: {}", reasons.join("; ")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_reuses_the_lowest_free_id_and_refuses_double_free() {
        let mut a = Allocator::new();
        let ids: Vec<u64> = (0..4).map(|_| a.allocate(u64::MAX).unwrap().0).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        a.deallocate(PageId(2)).unwrap();
        a.deallocate(PageId(1)).unwrap();
        assert!(matches!(
            a.deallocate(PageId(1)),
            Err(SchedulerError::NotAllocated(PageId(1)))
        ));
        assert!(matches!(
            a.deallocate(PageId(9)),
            Err(SchedulerError::NotAllocated(PageId(9)))
        ));
        assert!(!a.is_allocated(PageId(1)));
        assert_eq!(a.allocate(u64::MAX).unwrap(), PageId(1));
        assert_eq!(a.allocated_count(), 3);
        assert!(matches!(
            Allocator::new().allocate(0),
            Err(SchedulerError::OutOfPages)
        ));
    }

    #[test]
    fn images_round_trip_and_any_damage_is_detected() {
        let mut a = Allocator::new();
        for _ in 0..10 {
            a.allocate(u64::MAX).unwrap();
        }
        a.deallocate(PageId(3)).unwrap();
        a.deallocate(PageId(7)).unwrap();
        let (seq, image) = a.next_image(4096);
        let (back, page_size) = Allocator::decode(&image).unwrap();
        assert_eq!((back.clone(), page_size, back.seq), (a.clone(), 4096, seq));
        // Trailing bytes from an older, longer image are ignored.
        let mut longer = image.clone();
        longer.extend_from_slice(&[0xAB; 100]);
        assert_eq!(Allocator::decode(&longer).unwrap().0, a);
        for cut in 0..image.len() {
            assert!(
                Allocator::decode(&image[..cut]).is_err(),
                "a {cut}-byte prefix was accepted"
            );
        }
        for byte in 0..image.len() {
            let mut flipped = image.clone();
            flipped[byte] ^= 0x10;
            assert!(
                Allocator::decode(&flipped).is_err(),
                "a flip at byte {byte} was accepted"
            );
        }
    }
}
