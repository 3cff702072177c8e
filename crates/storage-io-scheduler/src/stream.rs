//! [`ReadStream`]: a sequential scan that keeps a window of pages in flight ahead of its
//! consumer (the idea of PostgreSQL's read_stream).

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

use crate::PageId;
use crate::error::{Result, SchedulerError};
use crate::reply::Reply;
use crate::scheduler::DiskScheduler;

/// Yields pages `range.start..range.end` in order as `(PageId, Bytes)`, with up to
/// `distance` pages requested ahead of the one being consumed. Requests are runs of adjacent
/// pages (at most `max_combine_pages`, never crossing a routing extent), so each becomes one
/// merged read on one worker. After an error the stream yields that error and ends.
///
/// Pages at or past the scheduler's limit (`max_pages`, or the last id whose bytes end below
/// 2^64) are not requested: the stream reads the pages below it, then yields `OutOfRange` for
/// the first page past it and ends. `distance` is clamped to at least 1 and at most what the
/// workers can hold in flight (`workers × queue_depth × max_combine_pages` pages): more would
/// only queue.
///
/// The pages are not copied: the pages of one merged read are slices of the buffer it landed
/// in ([`DiskScheduler::schedule_read_pages_shared`]).
///
/// ```
/// # use std::sync::Arc;
/// # use storage_io_core::{BackendFactory, StorageIo};
/// # use storage_io_scheduler::{DiskScheduler, SchedulerConfig, PageId};
/// # let fs = storage_io_testkit::memio::MemFs::new(1);
/// # let factory: BackendFactory = Arc::new(move |_| Ok(Box::new(fs.backend()) as Box<dyn StorageIo>));
/// let sched = DiskScheduler::open("/db", SchedulerConfig::default(), factory).unwrap();
/// for _ in 0..100 {
///     sched.schedule_allocate().recv().unwrap();
/// }
/// let scanned = sched.read_stream(PageId(0)..PageId(100), 32).map(|p| p.unwrap().0).count();
/// assert_eq!(scanned, 100);
/// ```
pub struct ReadStream<'a> {
    sched: &'a DiskScheduler,
    next_page: u64,
    /// The end of the range, or the scheduler's page limit if that comes first.
    end: u64,
    /// The first page of the range at or past the scheduler's page limit, if any: yielded as
    /// `OutOfRange` once every page below it has been.
    out_of_range: Option<PageId>,
    distance: usize,
    extent: u64,
    in_flight_pages: usize,
    requests: VecDeque<(u64, Reply<Vec<Bytes>>)>,
    ready: VecDeque<(PageId, Bytes)>,
    failed: bool,
}

impl DiskScheduler {
    /// Reads pages `range` in order, keeping up to `distance` pages in flight ahead of the
    /// consumer (adjacent pages merged; `distance` is clamped to what the workers can hold in
    /// flight). Pages past the scheduler's limit end the stream with `OutOfRange`. See
    /// [`ReadStream`].
    pub fn read_stream(&self, range: std::ops::Range<PageId>, distance: usize) -> ReadStream<'_> {
        ReadStream::new(self, range, distance)
    }
}

impl std::fmt::Debug for ReadStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream")
            .field("next_page", &self.next_page)
            .field("end", &self.end)
            .field("distance", &self.distance)
            .field("in_flight_pages", &self.in_flight_pages)
            .finish()
    }
}

impl<'a> ReadStream<'a> {
    pub(crate) fn new(sched: &'a DiskScheduler, range: Range<PageId>, distance: usize) -> Self {
        let config = sched.config();
        let limit = config.page_limit();
        let (start, end) = (range.start.0, range.end.0.max(range.start.0));
        // Every page requested is below the limit, so no arithmetic on page ids below can
        // overflow (the limit is at most 2^64 / page_size).
        let out_of_range = (end > limit).then(|| PageId(start.max(limit)));
        let most_in_flight = config
            .workers
            .saturating_mul(config.queue_depth)
            .saturating_mul(config.max_combine_pages)
            .max(1);
        ReadStream {
            sched,
            next_page: start.min(limit),
            end: end.min(limit),
            out_of_range,
            distance: distance.clamp(1, most_in_flight),
            extent: config.max_combine_pages as u64,
            in_flight_pages: 0,
            requests: VecDeque::new(),
            ready: VecDeque::new(),
            failed: false,
        }
    }

    /// Pages requested and not yet handed to the consumer.
    pub fn in_flight_pages(&self) -> usize {
        self.in_flight_pages
    }

    /// Requests runs until `distance` pages are ahead of the consumer or the range is done.
    fn fill(&mut self) {
        while self.in_flight_pages < self.distance && self.next_page < self.end {
            let extent_end = (self.next_page / self.extent)
                .saturating_add(1)
                .saturating_mul(self.extent);
            let room = (self.distance - self.in_flight_pages) as u64;
            let run_end = self.end.min(extent_end);
            // Wait for room for a whole run rather than trickle out one-page reads that could
            // have been merged — unless nothing is in flight at all.
            if run_end - self.next_page > room && self.in_flight_pages > 0 {
                break;
            }
            let last = run_end.min(self.next_page.saturating_add(room));
            debug_assert!(self.next_page < last && last <= self.end);
            let pages: Vec<PageId> = (self.next_page..last).map(PageId).collect();
            self.in_flight_pages += pages.len();
            self.requests
                .push_back((self.next_page, self.sched.schedule_read_pages_shared(pages)));
            self.next_page = last;
        }
    }
}

impl Iterator for ReadStream<'_> {
    type Item = Result<(PageId, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.ready.is_empty() {
            self.fill();
            let Some((first, reply)) = self.requests.pop_front() else {
                // Every page below the limit is done: the rest of the range is out of range.
                self.failed = true;
                let page = self.out_of_range.take()?;
                return Some(Err(SchedulerError::OutOfRange {
                    page,
                    limit: self.sched.config().page_limit(),
                }));
            };
            match reply.recv() {
                Ok(pages) => {
                    self.ready.extend(
                        pages
                            .into_iter()
                            .enumerate()
                            .map(|(i, p)| (PageId(first + i as u64), p)),
                    );
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let page = self.ready.pop_front()?;
        self.in_flight_pages -= 1;
        // Top the window up before handing the page over, so the disk works while the
        // consumer does.
        self.fill();
        Some(Ok(page))
    }
}
