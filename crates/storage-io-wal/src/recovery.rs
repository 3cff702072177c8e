//! Recovery: scan the segments, find where the log really ends, and make the files say so.
//!
//! The decision is a pure function of the segment images (the `Planner`), so the fuzz target
//! and the unit tests drive it without any I/O; `recover` feeds it from the backend and applies
//! its plan. Recovery never holds a segment's image: until the end of the log is found, each
//! segment is streamed through a few reused read buffers into a `SegmentStream`, which decodes
//! the frames where they lie and keeps only the bytes after the valid ones; the planner decides
//! from that summary what it decides from the whole image (the fuzz target checks both ways).
//!
//! The *window* is [`TORN_WINDOW_BYTES`](crate::format::TORN_WINDOW_BYTES) from the first
//! invalid position: the writer keeps every write in flight inside it, so valid frames there
//! after a hole are writes that landed while an earlier one did not (never acknowledged).
//!
//! The *durable end* is the highest one carried by a valid batch marker anywhere in the log
//! (format version 2; 0 in a version-1 log): every byte below it was acknowledged before that
//! marker was written. A hole below it is damage whatever the window says; the window rule
//! applies only to a hole at or above it.
//!
//! | what the scan finds | `PointInTime` (default) | `Strict` |
//! |---|---|---|
//! | every segment valid to its last record, then zeros | keep everything | same |
//! | a torn or zeroed record with nothing valid after it (a crash mid-write) | cut there, zero the torn bytes | same |
//! | a hole at or above the durable end with valid frames after it, all inside the window (writes in flight at a crash) | cut at the hole, zero the rest, report `in_flight_records_cut` | same |
//! | a hole below the durable end (acknowledged bytes lost), or an invalid record with valid records after it beyond the window, same or later segments | cut at the invalid record; report the valid records cut | refuse to open: `Corrupt` |
//! | a segment whose header is invalid (torn creation, or damage) | the log ends where that segment begins | same, but refuse if it begins below the durable end or valid records follow beyond the window |
//! | a missing segment number in the sequence | the log ends at the gap; later segments removed | refuse if the gap is below the durable end or they hold valid records beyond the window |
//! | segment files after the end | removed, then the directory synced | refuse if the end is below the durable end or they hold valid records beyond the window |

use serde::{Deserialize, Serialize};

use crate::Lsn;
use crate::config::{RecoveryPolicy, WalConfig};
use crate::error::WalError;
use crate::format::{
    Frame, SEGMENT_HEADER_BYTES, ScanEnd, decode_segment_header, scan_segment, valid_frames_after,
    valid_frames_in,
};
use crate::segio::{ReadBufs, SEGMENTS_OPEN_AT_ONCE, SegmentIo};

/// What recovery found and did, returned by [`WalManager::recovery_report`](crate::WalManager::recovery_report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Segment size of the log (read from its headers when the log exists).
    pub segment_size_bytes: u64,
    /// Segments kept.
    pub segments: usize,
    /// Valid records kept.
    pub records: u64,
    /// LSN of the first position still in the log.
    pub first_lsn: Lsn,
    /// LSN the next record gets.
    pub next_lsn: Lsn,
    /// Bytes of a torn tail that were zeroed (0 after a clean shutdown).
    pub torn_tail_bytes: u64,
    /// Where the log was cut if an invalid record was followed by valid ones.
    pub corruption_at: Option<Lsn>,
    /// Valid records after the cut, dropped by the `PointInTime` policy.
    pub skipped_valid_records: usize,
    /// Valid frames found after a hole but inside the in-flight window (writes that landed
    /// while an earlier one in flight did not; never acknowledged), cut as part of the torn
    /// tail under every policy.
    pub in_flight_records_cut: usize,
    /// Segment numbers removed because they lay after the end of the log.
    pub removed_segments: Vec<u64>,
}

/// Where the log ends, and what to clean up so that the files agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Segment the next record goes into.
    pub end_segment: u64,
    /// Offset in it of the next record; 0 = that segment must be (re)created with a header.
    pub end_offset: u64,
    /// In the end segment: bytes `[end_offset, zero_to)` hold garbage to zero.
    pub zero_to: u64,
    /// Segments with a valid header up to and including the end (kept).
    pub kept: Vec<u64>,
    /// Segments to remove: after the end, and the end segment itself when its header is bad.
    pub remove: Vec<u64>,
    pub records: u64,
    pub corruption_at: Option<u64>,
    pub skipped_valid: usize,
    /// Valid frames after the end inside the in-flight window (a torn tail).
    pub in_window: usize,
    /// The highest durable end carried by a valid batch marker (0: none, a version-1 log).
    pub durable: u64,
}

/// Decides where the log ends from the segment images, fed in order.
#[derive(Debug)]
pub(crate) struct Planner {
    segment_size: u64,
    /// Valid frames less than this far past the end are writes that were in flight.
    window: u64,
    plan: Plan,
    /// Set once the end is found: later images only count as "valid after the end".
    ended: bool,
    expected: Option<u64>,
    first_valid_after: Option<u64>,
    /// LSNs of the valid frames after the end (batch markers left out), in order.
    after: Vec<u64>,
    /// The highest durable end of a valid batch marker seen anywhere.
    durable: u64,
    /// (LSN, durable end) of the batch markers after the end.
    marks_after: Vec<(u64, u64)>,
}

impl Planner {
    pub(crate) fn new(segment_size: u64, window: u64) -> Self {
        Planner {
            segment_size,
            window,
            plan: Plan::default(),
            ended: false,
            expected: None,
            first_valid_after: None,
            after: Vec::new(),
            durable: 0,
            marks_after: Vec::new(),
        }
    }

    /// Takes the next segment (`segment` numbers must increase): `image` is its content from
    /// the start, as far as it was read (what it lacks reads as zeros).
    pub(crate) fn feed(&mut self, segment: u64, image: &[u8]) {
        if !self.ended && self.expected.is_some_and(|e| e != segment) {
            // A missing segment: the log ends where it should have begun.
            self.end_at(self.expected.unwrap_or(segment), 0, 0);
        }
        if self.ended {
            self.feed_after_end(segment, image);
            return;
        }
        let scan = scan_segment(image, segment, self.segment_size);
        let (end, tail_at) = match scan.end {
            ScanEnd::Switched(at) => (Prefix::Switched, at),
            ScanEnd::Stopped(at) => (Prefix::Stopped(at as u64), at),
            ScanEnd::BadHeader => (Prefix::BadHeader, SEGMENT_HEADER_BYTES as usize),
        };
        let summary = SegmentSummary {
            records: scan.records.len() as u64,
            durable: scan.durable,
            end,
            tail_at: tail_at as u64,
            tail: image.get(tail_at..).unwrap_or_default(),
            zeros: 0,
        };
        self.feed_summary(segment, &summary);
    }

    /// Whether `segment`, the next one, comes before the end of the log is found: then it may be
    /// streamed ([`feed_summary`](Planner::feed_summary)); else (after the end, or after a
    /// missing segment) it is searched for valid frames, [`feed`](Planner::feed) whole as far
    /// as read.
    pub(crate) fn streams(&self, segment: u64) -> bool {
        !self.ended && self.expected.is_none_or(|e| e == segment)
    }

    /// Takes the next segment as its streamed scan summed it up ([`SegmentStream`]): what
    /// [`feed`](Planner::feed) decides from the whole image, from the valid prefix's counts
    /// and the bytes read after it. Only for a segment that [`streams`](Planner::streams).
    pub(crate) fn feed_summary(&mut self, segment: u64, summary: &SegmentSummary<'_>) {
        let streams = self.streams(segment);
        debug_assert!(streams, "segment {segment} streamed after the end of the log");
        if !streams {
            // What the summary kept, where it lies: the best image there is.
            let mut image = vec![0u8; summary.tail_at as usize];
            image.extend_from_slice(summary.tail);
            image.resize(image.len() + summary.zeros as usize, 0);
            self.feed(segment, &image);
            return;
        }
        self.durable = self.durable.max(summary.durable);
        self.plan.records += summary.records;
        let (tail_at, zeros) = (summary.tail_at as usize, summary.zeros as usize);
        match summary.end {
            Prefix::Switched => {
                self.plan.kept.push(segment);
                self.expected = Some(segment + 1);
            }
            Prefix::Stopped(at) => {
                debug_assert_eq!(at, summary.tail_at, "the bytes after a stop start at the stop");
                self.plan.kept.push(segment);
                let zero_to = (tail_at + crate::format::nonzero_end(summary.tail)).max(tail_at);
                self.end_at(segment, at, zero_to as u64);
                let after = valid_frames_in(summary.tail, tail_at, zeros, 1, segment, self.segment_size);
                self.note_valid_after(&after);
            }
            Prefix::BadHeader => {
                debug_assert_eq!(summary.tail_at, SEGMENT_HEADER_BYTES);
                self.end_at(segment, 0, 0);
                self.plan.remove.push(segment);
                let after = valid_frames_in(summary.tail, tail_at, zeros, 0, segment, self.segment_size);
                self.note_valid_after(&after);
            }
        }
    }

    /// A segment after the end: everything valid in it is counted as after the end.
    fn feed_after_end(&mut self, segment: u64, image: &[u8]) {
        self.plan.remove.push(segment);
        let scan = scan_segment(image, segment, self.segment_size);
        if scan.records.is_empty() {
            // A bad header hides nothing from the frame search.
            let after = valid_frames_after(image, SEGMENT_HEADER_BYTES as usize, segment, self.segment_size);
            self.note_valid_after(&after);
        } else {
            let base = segment * self.segment_size;
            self.after.extend(scan.records.iter().map(|r| r.0));
            // The markers of the valid prefix: where one lies does not matter here, any
            // LSN after the end names the damage as well.
            if scan.durable > 0 {
                self.marks_after.push((base + SEGMENT_HEADER_BYTES, scan.durable));
            }
            self.durable = self.durable.max(scan.durable);
        }
    }

    fn end_at(&mut self, segment: u64, offset: u64, zero_to: u64) {
        self.ended = true;
        self.plan.end_segment = segment;
        self.plan.end_offset = offset;
        self.plan.zero_to = zero_to;
    }

    /// Takes the valid frames found after the end; they are judged in `finish`, once every
    /// batch marker is known.
    fn note_valid_after(&mut self, frames: &[(u64, Frame)]) {
        for &(lsn, frame) in frames {
            match frame {
                Frame::Marker(durable) => {
                    self.durable = self.durable.max(durable);
                    self.marks_after.push((lsn, durable));
                }
                _ => self.after.push(lsn),
            }
        }
    }

    /// Sorts the valid frames after the end into a torn tail (inside the window of a hole at
    /// or above the durable end) and damage (past the window, or after a hole below the
    /// durable end: acknowledged bytes are missing).
    fn judge_valid_after(&mut self) {
        let end = self.plan.end_segment * self.segment_size + self.plan.end_offset;
        self.plan.durable = self.durable;
        let damaged = self.durable > end;
        let (inside, beyond): (Vec<u64>, Vec<u64>) = self
            .after
            .iter()
            .partition(|&&l| !damaged && l.saturating_sub(end) < self.window);
        self.plan.in_window = inside.len();
        self.plan.skipped_valid = beyond.len();
        // A hole below the durable end is damage even when only the marker that says so follows.
        let first = beyond.first().copied().or_else(|| {
            damaged
                .then(|| self.marks_after.iter().find(|m| m.1 > end).map(|m| m.0))
                .flatten()
        });
        if let Some(first) = first {
            self.plan.corruption_at = Some(end);
            self.first_valid_after = Some(first);
        }
    }

    /// The plan, or `Corrupt` when the policy refuses to cut valid records.
    pub(crate) fn finish(mut self, policy: RecoveryPolicy) -> Result<Plan, WalError> {
        if !self.ended {
            // Every segment was closed (or there were none): start the next one.
            let next = self.expected.unwrap_or(0);
            self.end_at(next, 0, 0);
        }
        self.judge_valid_after();
        if policy == RecoveryPolicy::Strict
            && let (Some(at), Some(first)) = (self.plan.corruption_at, self.first_valid_after)
        {
            return Err(WalError::Corrupt {
                at: Lsn(at),
                valid_after: self.plan.skipped_valid,
                first_valid_after: Lsn(first),
            });
        }
        Ok(self.plan)
    }
}

/// How the valid prefix of a segment ended (the scan's [`ScanEnd`] without the offsets that
/// only a whole image gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// The header is missing, corrupt, or names another segment or size.
    BadHeader,
    /// A valid segment-end frame: the log goes on in the next segment.
    Switched,
    /// The first offset without a valid frame.
    Stopped(u64),
}

/// One segment, as [`Planner::feed_summary`] takes it: the valid prefix's counts, and the
/// bytes read after it (from `tail_at`: the stop, or the end of a bad header), `tail` then
/// `zeros` zero bytes (read, not stored).
#[derive(Debug)]
pub(crate) struct SegmentSummary<'a> {
    pub records: u64,
    pub durable: u64,
    pub end: Prefix,
    pub tail_at: u64,
    pub tail: &'a [u8],
    pub zeros: u64,
}

/// Scans one segment as its bytes arrive, in order and in pieces of any size, without
/// keeping them: each frame is decoded where it lies in the piece (a frame cut by the end of
/// a piece is carried, and only it is copied), records are counted and batch markers'
/// durable ends kept. Once the valid frames stop, the bytes after the stop are kept up to the
/// last non-zero one (the planner searches them for valid frames), and [`wants`](SegmentStream::wants) says how far
/// reading must go: to the in-flight window past the last non-zero byte, as [`TailProbe`]
/// decides for a whole image. Memory: the largest frame, and the bytes read after the stop up
/// to the last non-zero one (none at all after a clean close).
#[derive(Debug)]
pub(crate) struct SegmentStream {
    base: u64,
    segment_size: u64,
    window: u64,
    /// Offset in the segment of the next byte fed.
    fed: u64,
    /// Offset of the next frame to decode (`carry` holds its bytes so far).
    pos: u64,
    carry: Vec<u8>,
    records: u64,
    durable: u64,
    end: Option<Prefix>,
    /// After a stop or a bad header: the bytes from `tail_at` on, up to the last non-zero
    /// one, then `tail_zeros` zeros (counted, not stored: a preallocated tail costs nothing).
    tail: Vec<u8>,
    tail_at: u64,
    tail_zeros: usize,
}

impl SegmentStream {
    pub(crate) fn new(segment: u64, segment_size: u64, window: u64) -> Self {
        SegmentStream {
            base: segment.wrapping_mul(segment_size),
            segment_size,
            window,
            fed: 0,
            pos: 0,
            carry: Vec::new(),
            records: 0,
            durable: 0,
            end: None,
            tail: Vec::new(),
            tail_at: 0,
            tail_zeros: 0,
        }
    }

    /// Starts this stream over for another segment, keeping its allocations.
    pub(crate) fn reset(&mut self, segment: u64) {
        let (mut carry, mut tail) = (std::mem::take(&mut self.carry), std::mem::take(&mut self.tail));
        carry.clear();
        tail.clear();
        *self = SegmentStream {
            carry,
            tail,
            ..SegmentStream::new(segment, self.segment_size, self.window)
        };
    }

    /// How far the segment must be read: `None` once enough is read (a segment-end frame, or
    /// the window past the stop and the last non-zero byte after it), else the offset below
    /// which bytes are still needed (`u64::MAX` while the valid frames go on).
    pub(crate) fn wants(&self) -> Option<u64> {
        match self.end {
            None => Some(u64::MAX),
            Some(Prefix::Switched) => None,
            Some(_) => {
                // (`tail` ends at its last non-zero byte.)
                let nonzero = self.tail_at + self.tail.len() as u64;
                let need = nonzero.saturating_add(self.window);
                (self.fed < need).then_some(need)
            }
        }
    }

    /// Takes the next `bytes` of the segment.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        self.fed += bytes.len() as u64;
        while self.end.is_none() && !bytes.is_empty() {
            if self.carry.is_empty() {
                // Decode in place every frame that lies whole in `bytes`; carry the cut one.
                let used = self.decode(bytes, false);
                bytes = &bytes[used..];
                if self.end.is_none() {
                    self.carry.extend_from_slice(bytes);
                    return;
                }
            } else {
                // Complete the frame cut at the end of the last piece.
                let need = self.need(&self.carry);
                let take = need.saturating_sub(self.carry.len()).min(bytes.len());
                self.carry.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.carry.len() < self.need(&self.carry) {
                    continue; // (`bytes` is empty, or the header told of a longer frame)
                }
                let mut carry = std::mem::take(&mut self.carry);
                let used = self.decode(&carry, false);
                if self.end.is_some() {
                    self.extend_tail(&carry[used..]);
                } else {
                    debug_assert_eq!(used, carry.len(), "a carried frame is decoded whole");
                }
                carry.clear();
                self.carry = carry;
            }
        }
        self.extend_tail(bytes);
    }

    /// The segment ends (the file is shorter, or nothing more is read): a frame still cut
    /// decodes as far as it goes, which makes it invalid.
    pub(crate) fn finish(&mut self) {
        if self.end.is_none() {
            let mut carry = std::mem::take(&mut self.carry);
            let used = self.decode(&carry, true);
            debug_assert!(self.end.is_some(), "a scan at the end of its bytes ends");
            self.extend_tail(&carry[used.min(carry.len())..]);
            carry.clear();
            self.carry = carry;
        }
    }

    /// Keeps bytes read after the stop (nothing once the segment switched).
    fn extend_tail(&mut self, bytes: &[u8]) {
        if !matches!(self.end, Some(Prefix::Stopped(_) | Prefix::BadHeader)) {
            return;
        }
        let nonzero = crate::format::nonzero_end(bytes);
        if nonzero > 0 {
            // The zeros before these bytes are stored now, the ones after them counted.
            self.tail.resize(self.tail.len() + self.tail_zeros, 0);
            self.tail.extend_from_slice(&bytes[..nonzero]);
            self.tail_zeros = 0;
        }
        self.tail_zeros += bytes.len() - nonzero;
    }

    /// What the planner takes, once [`finish`](SegmentStream::finish)ed or enough is read.
    pub(crate) fn summary(&self) -> SegmentSummary<'_> {
        debug_assert!(self.end.is_some(), "a segment summed up before its scan ended");
        SegmentSummary {
            records: self.records,
            durable: self.durable,
            end: self.end.unwrap_or(Prefix::Stopped(self.pos)),
            tail_at: self.tail_at,
            tail: &self.tail,
            zeros: self.tail_zeros as u64,
        }
    }

    /// Bytes from `pos` that decide the frame there (its header, then its whole length when
    /// the header names a length that fits).
    fn need(&self, at_pos: &[u8]) -> usize {
        use crate::format::{KIND_DATA, KIND_MARKER, KIND_PAD, RECORD_HEADER_BYTES};
        if self.pos == 0 {
            return SEGMENT_HEADER_BYTES as usize;
        }
        let hdr = RECORD_HEADER_BYTES as usize;
        let Some(h) = at_pos.get(..hdr) else {
            return hdr;
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
        let room = self.segment_size.saturating_sub(self.pos + hdr as u64);
        if matches!(h[4], KIND_DATA | KIND_PAD | KIND_MARKER) && len <= room {
            hdr + len as usize
        } else {
            hdr
        }
    }

    /// Decodes frames from the start of `at_pos` (the bytes at `pos`) while they lie whole in
    /// it, or (`eof`) as far as it goes; returns the bytes used. Sets `end` at the first invalid
    /// frame, the segment-end frame, or a bad header.
    fn decode(&mut self, at_pos: &[u8], eof: bool) -> usize {
        use crate::format::{Frame, MARKER_BYTES, RECORD_HEADER_BYTES, decode_frame};
        let hdr = RECORD_HEADER_BYTES as usize;
        let mut used = 0;
        if self.pos == 0 {
            let header = SEGMENT_HEADER_BYTES as usize;
            if !eof && at_pos.len() < header {
                return 0;
            }
            if decode_segment_header(at_pos) == Some((self.segment_size, self.base)) {
                self.pos = SEGMENT_HEADER_BYTES;
                used = header;
            } else {
                // The frame search starts after the header, whatever it holds.
                self.end = Some(Prefix::BadHeader);
                self.tail_at = SEGMENT_HEADER_BYTES;
                return header.min(at_pos.len());
            }
        }
        loop {
            let rest = &at_pos[used..];
            if !eof && (rest.is_empty() || self.need(rest) > rest.len()) {
                return used;
            }
            // Room is counted from `pos`: a frame may not pass the segment end.
            let room_size = self.segment_size.saturating_sub(self.pos);
            match decode_frame(rest, 0, self.base + self.pos, room_size) {
                Frame::Data(len) => {
                    self.records += 1;
                    self.advance(&mut used, hdr + len);
                }
                Frame::Pad(total) => self.advance(&mut used, total),
                Frame::Marker(d) => {
                    self.durable = self.durable.max(d);
                    self.advance(&mut used, MARKER_BYTES as usize);
                }
                Frame::SegmentEnd => {
                    self.end = Some(Prefix::Switched);
                    return used;
                }
                Frame::Invalid => {
                    self.end = Some(Prefix::Stopped(self.pos));
                    self.tail_at = self.pos;
                    return used;
                }
            }
        }
    }

    fn advance(&mut self, used: &mut usize, n: usize) {
        *used += n;
        self.pos += n as u64;
    }
}

/// Decides, as a segment is read in chunks, when recovery has read enough of it: a valid
/// segment-end frame (the log goes on in the next segment), or, past the first position
/// without a valid frame, the in-flight window ([`WalConfig::in_flight_window_bytes`]) after
/// the last non-zero byte read — no write in flight at a crash reaches past it, so the zeros
/// beyond (a preallocated tail) need no reading. The planner sees the prefix read as the
/// segment's image: what it lacks reads as zeros.
struct TailProbe {
    base: u64,
    segment_size: u64,
    window: u64,
    /// The next frame to decode (offset in the segment).
    pos: usize,
    /// Where the valid frames stopped, once known.
    end: Option<usize>,
    /// Bytes of the image searched for non-zero bytes so far, and the last one found (+1).
    searched: usize,
    nonzero_end: usize,
}

impl TailProbe {
    fn new(segment: u64, segment_size: u64, window: u64) -> Self {
        TailProbe {
            base: segment.wrapping_mul(segment_size),
            segment_size,
            window,
            pos: SEGMENT_HEADER_BYTES as usize,
            end: None,
            searched: 0,
            nonzero_end: 0,
        }
    }

    fn enough(&mut self, image: &[u8]) -> bool {
        use crate::format::{
            KIND_DATA, KIND_MARKER, KIND_PAD, MARKER_BYTES, RECORD_HEADER_BYTES, decode_frame,
        };
        let hdr = RECORD_HEADER_BYTES as usize;
        if self.end.is_none()
            && image.len() >= SEGMENT_HEADER_BYTES as usize
            && self.pos == SEGMENT_HEADER_BYTES as usize
            && decode_segment_header(image) != Some((self.segment_size, self.base))
        {
            self.end = Some(self.pos);
        }
        while self.end.is_none() {
            let pos = self.pos;
            let Some(h) = image.get(pos..pos + hdr) else {
                return false; // the next frame's header is not read yet
            };
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let room = (self.segment_size as usize).saturating_sub(pos + hdr);
            if matches!(h[4], KIND_DATA | KIND_PAD | KIND_MARKER)
                && len <= room
                && image.len() < pos + hdr + len
            {
                return false; // its payload is not read yet
            }
            match decode_frame(image, pos, self.base, self.segment_size) {
                Frame::Data(len) => self.pos = pos + hdr + len,
                Frame::Pad(total) => self.pos = pos + total,
                Frame::Marker(_) => self.pos = pos + MARKER_BYTES as usize,
                // The log goes on in the next segment: nothing after this frame matters.
                Frame::SegmentEnd => return true,
                Frame::Invalid => self.end = Some(pos),
            }
        }
        if let Some(i) = image[self.searched..].iter().rposition(|b| *b != 0) {
            self.nonzero_end = self.searched + i + 1;
        }
        self.searched = image.len();
        let end = self.end.unwrap_or(self.pos).max(self.nonzero_end) as u64;
        image.len() as u64 >= end.saturating_add(self.window)
    }
}

/// Reads the segment size from the first segment whose header is intact.
fn segment_size_on_disk(io: &mut SegmentIo, segments: &[u64]) -> Result<Option<u64>, WalError> {
    for &s in segments {
        if let Some((size, first)) = decode_segment_header(&io.read_header(s)?)
            && size > 0
            && first == s.wrapping_mul(size)
        {
            return Ok(Some(size));
        }
    }
    Ok(None)
}

/// A segment's positions are `number * size ..`: a number for which they pass 2^64 cannot be
/// a segment of any log of `segment_size`-byte segments. `ForeignFile` names the first such
/// file (`path_of` builds its path); recovery and `WalReader::open` refuse it alike.
pub(crate) fn refuse_foreign_numbers(
    segments: &[u64],
    segment_size: u64,
    path_of: impl Fn(u64) -> std::path::PathBuf,
) -> Result<(), WalError> {
    match segments
        .iter()
        .find(|&&s| !crate::format::segment_in_lsn_space(s, segment_size))
    {
        Some(&s) => Err(WalError::ForeignFile {
            path: path_of(s),
            reason: format!("segment number {s} of {segment_size}-byte segments"),
        }),
        None => Ok(()),
    }
}

/// Recovers the log in `io`'s directory: returns the plan (already applied: torn bytes zeroed,
/// segments after the end removed, the directory and the kept segments synced) and the report.
pub(crate) fn recover(io: &mut SegmentIo, config: &WalConfig) -> Result<(Plan, RecoveryReport), WalError> {
    let segments = io.list_segments()?;
    let segment_size = match segment_size_on_disk(io, &segments)? {
        Some(size) if size != config.segment_size_bytes => {
            tracing::warn!(
                on_disk = size,
                configured = config.segment_size_bytes,
                "the wal keeps the segment size it was written with"
            );
            size
        }
        Some(size) => size,
        None => config.segment_size_bytes,
    };
    io.set_segment_size(segment_size);
    // Refuse before changing anything, naming the file.
    refuse_foreign_numbers(&segments, segment_size, |s| io.path_of(s))?;
    let mut planner = Planner::new(segment_size, crate::format::TORN_WINDOW_BYTES);
    // The planner judges frames after a hole by the torn window; reading needs to reach only as
    // far as a write in flight can (the configuration's in-flight window, at most that).
    let read_window = config.in_flight_window_bytes();
    // Until the end is found, each segment is streamed through a few reused buffers: the
    // planner gets its valid frames' counts and the bytes after them, never the segment.
    let mut bufs = ReadBufs::default();
    let mut stream = SegmentStream::new(0, segment_size, read_window);
    for &s in &segments {
        if !planner.streams(s) {
            // After the end (damage, a gap or a torn creation): searched whole, as far as read.
            let mut probe = TailProbe::new(s, segment_size, read_window);
            let image = io
                .read_segment_until(s, |image| probe.enough(image))?
                .unwrap_or_default();
            planner.feed(s, &image);
            continue;
        }
        stream.reset(s);
        let found = io.stream_segment(s, &mut bufs, |bytes| {
            stream.push(bytes);
            stream.wants()
        })?;
        if found {
            stream.finish();
            planner.feed_summary(s, &stream.summary());
        } else {
            // Removed since it was listed: an empty image, as a file of no bytes.
            planner.feed(s, &[]);
        }
    }
    drop(bufs);
    let plan = planner.finish(config.recovery)?;
    if !crate::format::segment_in_lsn_space(plan.end_segment, segment_size) {
        // The last segment was closed, and none can follow it below 2^64 (the writer never
        // closes that one; a log copied together by hand can): refuse before changing anything.
        return Err(WalError::LsnSpaceExhausted {
            at: Lsn(plan.end_segment.saturating_mul(segment_size)),
        });
    }

    // Make the files agree with the plan. Zero the torn tail first, so that no stale frame can
    // line up with a record written later; then remove what lies after the end.
    let torn = plan.zero_to.saturating_sub(plan.end_offset);
    if plan.end_offset > 0 && torn > 0 {
        let fd = io.existing(plan.end_segment)?;
        let zeros = vec![0u8; torn as usize];
        let job = crate::segio::WriteJob {
            fd,
            offset: plan.end_offset,
            data: &zeros,
        };
        io.write_all(&[job], true).map_err(|f| WalError::Io(f.error))?;
    }
    for &s in &plan.remove {
        io.remove(s)?;
    }
    if !plan.remove.is_empty() {
        io.sync_dir()?;
    }
    // What the scan read may be in the page cache only (a process crash): make it durable
    // before anything is built on it. A few segments at a time, each group closed once synced
    // (except the end segment, which the writer goes on in): a log of more segments than the
    // backend's fd table holds reopens.
    for group in plan.kept.chunks(SEGMENTS_OPEN_AT_ONCE) {
        for &s in group {
            io.existing(s)?;
        }
        io.sync_open().map_err(|f| WalError::Io(f.error))?;
        io.close_below(plan.end_segment);
    }
    debug_assert!(
        io.lowest_open().is_none_or(|s| s >= plan.end_segment),
        "recovery left a segment below the end open"
    );

    let first_segment = plan.kept.first().copied().unwrap_or(plan.end_segment);
    let next = plan.end_segment * segment_size + plan.end_offset.max(SEGMENT_HEADER_BYTES);
    let report = RecoveryReport {
        segment_size_bytes: segment_size,
        segments: plan.kept.len(),
        records: plan.records,
        first_lsn: Lsn(first_segment * segment_size + SEGMENT_HEADER_BYTES),
        next_lsn: Lsn(next),
        torn_tail_bytes: torn,
        corruption_at: plan.corruption_at.map(Lsn),
        skipped_valid_records: plan.skipped_valid,
        in_flight_records_cut: plan.in_window,
        removed_segments: plan.remove.clone(),
    };
    if report.skipped_valid_records > 0 {
        tracing::warn!(
            cut_at = %Lsn(plan.corruption_at.unwrap_or(0)),
            skipped = report.skipped_valid_records,
            "wal recovery cut the log at an invalid record that valid records follow"
        );
    }
    Ok((plan, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{KIND_DATA, KIND_SEGMENT_END, encode_record, encode_segment_header};

    const SEG: u64 = 1024;

    fn segment(n: u64, records: &[&[u8]], close: bool) -> Vec<u8> {
        let mut img = Vec::new();
        encode_segment_header(&mut img, SEG, n);
        for r in records {
            let lsn = n * SEG + img.len() as u64;
            encode_record(&mut img, KIND_DATA, lsn, r);
        }
        if close {
            let lsn = n * SEG + img.len() as u64;
            encode_record(&mut img, KIND_SEGMENT_END, lsn, &[]);
        }
        img.resize(SEG as usize, 0);
        img
    }

    fn plan(images: &[(u64, Vec<u8>)], policy: RecoveryPolicy) -> Result<Plan, WalError> {
        plan_with_window(images, policy, 0)
    }

    fn plan_with_window(
        images: &[(u64, Vec<u8>)],
        policy: RecoveryPolicy,
        window: u64,
    ) -> Result<Plan, WalError> {
        let mut p = Planner::new(SEG, window);
        for (n, img) in images {
            p.feed(*n, img);
        }
        p.finish(policy)
    }

    #[test]
    fn an_empty_directory_starts_segment_zero() {
        let p = plan(&[], RecoveryPolicy::Strict).unwrap();
        assert_eq!((p.end_segment, p.end_offset), (0, 0));
    }

    #[test]
    fn a_clean_log_ends_after_its_last_record() {
        let imgs = [
            (4, segment(4, &[b"a", b"b"], true)),
            (5, segment(5, &[b"c"], false)),
        ];
        let p = plan(&imgs, RecoveryPolicy::Strict).unwrap();
        assert_eq!(p.records, 3);
        assert_eq!(p.kept, vec![4, 5]);
        assert_eq!(p.end_segment, 5);
        assert_eq!(p.end_offset, SEGMENT_HEADER_BYTES + 21);
        assert!(p.remove.is_empty() && p.corruption_at.is_none());
    }

    #[test]
    fn a_closed_last_segment_starts_the_next() {
        let p = plan(&[(0, segment(0, &[b"a"], true))], RecoveryPolicy::Strict).unwrap();
        assert_eq!((p.end_segment, p.end_offset), (1, 0));
    }

    #[test]
    fn a_torn_tail_is_cut_and_zeroed_under_both_policies() {
        let mut img = segment(0, &[b"keep", b"torn record"], false);
        let second = SEGMENT_HEADER_BYTES as usize + 24;
        img[second + 25] ^= 1;
        for policy in [RecoveryPolicy::Strict, RecoveryPolicy::PointInTime] {
            let p = plan(&[(0, img.clone())], policy).unwrap();
            assert_eq!(p.records, 1);
            assert_eq!(p.end_offset, second as u64);
            assert_eq!(p.zero_to, (second + 20 + 11) as u64);
        }
    }

    #[test]
    fn damage_with_valid_records_after_it_is_cut_or_refused_by_policy() {
        let mut img = segment(0, &[b"one", b"two", b"three"], false);
        let second = SEGMENT_HEADER_BYTES as usize + 23;
        img[second + 21] ^= 0x10;
        let p = plan(&[(0, img.clone())], RecoveryPolicy::PointInTime).unwrap();
        assert_eq!(p.records, 1);
        assert_eq!(p.skipped_valid, 1);
        assert_eq!(p.corruption_at, Some(second as u64));
        let err = plan(&[(0, img)], RecoveryPolicy::Strict).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { valid_after: 1, .. }), "{err}");
    }

    #[test]
    fn valid_frames_after_a_hole_inside_the_window_are_a_torn_tail_under_both_policies() {
        let mut img = segment(0, &[b"one", b"two", b"three"], false);
        let second = SEGMENT_HEADER_BYTES as usize + 23;
        img[second + 21] ^= 0x10;
        for policy in [RecoveryPolicy::Strict, RecoveryPolicy::PointInTime] {
            let p = plan_with_window(&[(0, img.clone())], policy, SEG).unwrap();
            assert_eq!(p.records, 1);
            assert_eq!(p.end_offset, second as u64);
            assert_eq!(p.in_window, 1);
            assert_eq!((p.corruption_at, p.skipped_valid), (None, 0));
            // The frames after the hole are zeroed with the torn bytes.
            assert_eq!(p.zero_to as usize, second + 23 + 25);
        }
    }

    #[test]
    fn the_window_counts_from_the_hole_frames_beyond_it_are_damage() {
        // A hole in segment 0, valid records in segments 1 (inside a one-segment window) and 2.
        let mut first = segment(0, &[b"a", b"b"], true);
        let hole = SEGMENT_HEADER_BYTES as usize + 21;
        first[hole + 20] ^= 1;
        let imgs = [
            (0, first),
            (1, segment(1, &[b"c"], true)),
            (2, segment(2, &[b"d", b"e"], false)),
        ];
        let p = plan_with_window(&imgs, RecoveryPolicy::PointInTime, SEG).unwrap();
        assert_eq!(p.end_offset, hole as u64);
        assert_eq!(p.remove, vec![1, 2]);
        // Segment 0's end frame and segment 1's record are inside; segment 2's two are not.
        assert_eq!((p.in_window, p.skipped_valid), (2, 2));
        assert_eq!(p.corruption_at, Some(hole as u64));
        let err = plan_with_window(&imgs, RecoveryPolicy::Strict, SEG).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { valid_after: 2, .. }), "{err}");
    }

    #[test]
    fn a_torn_creation_or_a_gap_with_valid_frames_inside_the_window_opens_under_strict() {
        let imgs = [
            (0, segment(0, &[b"a"], true)),
            (1, vec![0u8; SEG as usize]),
            (2, segment(2, &[b"c"], false)),
        ];
        let p = plan_with_window(&imgs, RecoveryPolicy::Strict, 2 * SEG).unwrap();
        assert_eq!((p.end_segment, p.end_offset), (1, 0));
        assert_eq!(p.remove, vec![1, 2]);
        assert_eq!(p.in_window, 1);
        let gap = [(0, segment(0, &[b"a"], true)), (2, segment(2, &[b"c"], false))];
        let p = plan_with_window(&gap, RecoveryPolicy::Strict, 2 * SEG).unwrap();
        assert_eq!((p.end_segment, p.remove.clone(), p.in_window), (1, vec![2], 1));
        assert!(
            plan_with_window(&gap, RecoveryPolicy::Strict, SEG).is_err(),
            "segment 2 starts a window past the gap"
        );
    }

    #[test]
    fn a_hole_below_a_markers_durable_end_is_damage_even_inside_the_window() {
        use crate::format::encode_marker;
        // Segment 0: "one", a marker, "two", a marker that says "one" and "two" are durable.
        let mut img = Vec::new();
        encode_segment_header(&mut img, SEG, 0);
        let one = img.len() as u64;
        encode_record(&mut img, KIND_DATA, one, b"one");
        let at = img.len() as u64;
        encode_marker(&mut img, at, 0);
        let two = img.len() as u64;
        encode_record(&mut img, KIND_DATA, two, b"two");
        let at = img.len() as u64;
        encode_marker(&mut img, at, two);
        img.resize(SEG as usize, 0);
        let mut bad = img.clone();
        bad[one as usize + 21] ^= 1;
        let p = plan_with_window(&[(0, bad.clone())], RecoveryPolicy::PointInTime, SEG).unwrap();
        assert_eq!((p.end_offset, p.corruption_at), (one, Some(one)));
        assert_eq!((p.in_window, p.skipped_valid, p.durable), (0, 1, two));
        let err = plan_with_window(&[(0, bad)], RecoveryPolicy::Strict, SEG).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { valid_after: 1, .. }), "{err}");
        // A hole at the durable end (the last batch) is a torn tail under `Strict`.
        let mut torn = img.clone();
        torn[two as usize + 21] ^= 1;
        let p = plan_with_window(&[(0, torn)], RecoveryPolicy::Strict, SEG).unwrap();
        assert_eq!((p.end_offset, p.corruption_at, p.in_window), (two, None, 0));
        // A missing segment below a later marker's durable end is damage too.
        let mut later = Vec::new();
        encode_segment_header(&mut later, SEG, 2);
        let at = 2 * SEG + later.len() as u64;
        encode_marker(&mut later, at, 2 * SEG);
        later.resize(SEG as usize, 0);
        let gap = [(0, segment(0, &[b"a"], true)), (2, later)];
        assert!(plan_with_window(&gap, RecoveryPolicy::Strict, 4 * SEG).is_err());
    }

    #[test]
    fn a_missing_segment_ends_the_log_and_later_ones_go() {
        let imgs = [(0, segment(0, &[b"a"], true)), (2, segment(2, &[b"c"], false))];
        let p = plan(&imgs, RecoveryPolicy::PointInTime).unwrap();
        assert_eq!((p.end_segment, p.end_offset), (1, 0));
        assert_eq!(p.remove, vec![2]);
        assert_eq!(p.skipped_valid, 1);
        assert!(plan(&imgs, RecoveryPolicy::Strict).is_err());
    }

    #[test]
    fn a_bad_header_on_the_last_segment_is_a_torn_creation() {
        let imgs = [(0, segment(0, &[b"a"], true)), (1, vec![0u8; SEG as usize])];
        let p = plan(&imgs, RecoveryPolicy::Strict).unwrap();
        assert_eq!((p.end_segment, p.end_offset), (1, 0));
        assert_eq!(p.remove, vec![1]);
        assert_eq!(p.kept, vec![0]);
    }
}
