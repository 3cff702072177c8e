//! The on-disk format: segment headers, record frames, and the scanner that reads them back.
//!
//! A segment file holds a 32-byte header, then records back to back, then (once the writer has
//! moved on) a segment-end record; the rest is zeros. Every position in the log has one LSN:
//! `segment number × segment size + offset in the segment`, so an LSN names its segment and its
//! offset without an index.
//!
//! ```text
//! segment header (32 B): magic "SIOW" | version u16 | reserved u16 | segment_size u64 |
//!                        first_lsn u64 | crc32c of the 24 bytes before u32 | reserved u32
//! record header  (20 B): payload_len u32 | kind u8 | reserved [u8; 3] | lsn u64 |
//!                        crc32c of the 16 header bytes before it and the payload u32
//! ```
//!
//! All integers are little-endian. A record never spans two segments: when the next record
//! does not fit, the writer closes the segment with a segment-end record and starts the next
//! segment. Each record carries its own LSN, so a stale record left in a reused or recycled
//! file never validates at another position.
//!
//! A *pad* record (kind 3) fills the rest of a 4 KiB block so that the next batch starts on a
//! fresh block: with several direct writes in flight, no two of them may share a block. Its
//! payload is zeros, at least 0 bytes long, and it ends on a block boundary ([`pad_bytes`]).
//! Readers skip it; it has an LSN like any record but is never returned.
//!
//! A *batch marker* (kind 4, format version 2) ends every flush's batch: its 8-byte payload is
//! the log's durable end (an LSN, little-endian) when the batch was submitted. Every byte below
//! it had been acknowledged before the marker was written, so recovery reads a hole below the
//! highest durable end of any valid marker as damage, never as a torn tail. Readers skip it.
//! Version-1 segments hold no markers and are read the same way (recovery then falls back to
//! the window rule alone); the writer writes version-2 headers.

use std::ops::Range;

/// Bytes of the header at the start of every segment.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of the frame before every record's payload.
pub const RECORD_HEADER_BYTES: u64 = 20;
/// The smallest segment size accepted (a header and a few small records).
pub const MIN_SEGMENT_BYTES: u64 = 512;

const MAGIC: [u8; 4] = *b"SIOW";
/// The format version the writer puts in segment headers.
pub const VERSION: u16 = 2;
/// The oldest format version still read: its segments hold no batch markers.
pub const VERSION_1: u16 = 1;
pub(crate) const KIND_DATA: u8 = 1;
pub(crate) const KIND_SEGMENT_END: u8 = 2;
pub(crate) const KIND_PAD: u8 = 3;
pub(crate) const KIND_MARKER: u8 = 4;
/// Bytes of a batch marker, frame included.
pub const MARKER_BYTES: u64 = RECORD_HEADER_BYTES + 8;
/// The block a pad record fills up to: the direct-I/O write unit.
pub const PAD_BLOCK_BYTES: u64 = 4096;
/// The segment header's fields, as [`encode_segment_header`] writes them: magic, version,
/// reserved, segment size, first LSN, CRC32C, reserved.
const SEGMENT_HEADER_FIELDS: [usize; 7] = [MAGIC.len(), 2, 2, 8, 8, 4, 4];
/// A record frame's fields, as [`encode_record`] writes them: payload length, kind (and three
/// reserved bytes), LSN, CRC32C.
const RECORD_HEADER_FIELDS: [usize; 4] = [4, 4, 8, 4];

const fn total_bytes(fields: &[usize]) -> u64 {
    let (mut i, mut total) = (0, 0);
    while i < fields.len() {
        total += fields[i];
        i += 1;
    }
    total as u64
}

// The sizes the reader and the writer's arithmetic use are the sizes the encoders write (which
// check it again at run time), and a segment holds a header, a record and its end.
const _: () = assert!(total_bytes(&SEGMENT_HEADER_FIELDS) == SEGMENT_HEADER_BYTES);
const _: () = assert!(total_bytes(&RECORD_HEADER_FIELDS) == RECORD_HEADER_BYTES);
const _: () = assert!(MARKER_BYTES == RECORD_HEADER_BYTES + size_of::<u64>() as u64);
const _: () = assert!(MIN_SEGMENT_BYTES >= SEGMENT_HEADER_BYTES + 2 * RECORD_HEADER_BYTES + MARKER_BYTES);
// A pad fills at most two blocks (`pad_bytes`), from the zeros below, and several flushes in
// flight fit in the torn window.
const _: () = assert!(PAD_BLOCK_BYTES >= RECORD_HEADER_BYTES && TORN_WINDOW_BYTES >= 4 * PAD_BLOCK_BYTES);

/// A pad's payload: zeros, never longer than two blocks.
static ZEROS: [u8; 2 * PAD_BLOCK_BYTES as usize] = [0; 2 * PAD_BLOCK_BYTES as usize];

/// The in-flight window: the writer never lets bytes go in flight more than this far past the
/// durable end of the log while another flush is in flight (a lone flush may be larger). A
/// crash can leave a hole with valid frames after it only inside this window, so recovery
/// reads a hole whose later valid frames all lie within this many bytes of it as a torn tail,
/// under every policy, and valid frames farther on as damage.
pub const TORN_WINDOW_BYTES: u64 = 8 << 20;

/// Bytes of the pad record (frame included) that takes a log position `at` to the next block
/// boundary, given that the frame needs `RECORD_HEADER_BYTES`: when fewer are left in the
/// block, the pad runs to the end of the following block. 0 when `at` is on a boundary.
pub const fn pad_bytes(at: u64) -> u64 {
    let left = (PAD_BLOCK_BYTES - at % PAD_BLOCK_BYTES) % PAD_BLOCK_BYTES;
    if left == 0 {
        0
    } else if left < RECORD_HEADER_BYTES {
        left + PAD_BLOCK_BYTES
    } else {
        left
    }
}

/// The largest payload one record may carry in segments of `segment_size` bytes: the segment
/// less its header, the record's frame and room for the segment-end record.
pub const fn max_payload_bytes(segment_size: u64) -> u64 {
    segment_size.saturating_sub(SEGMENT_HEADER_BYTES + 2 * RECORD_HEADER_BYTES)
}

/// Whether every position of segment `segment` (of `segment_size`-byte segments) lies below
/// 2^64, so that its end is a position too: the writer never goes on in a segment for which
/// this is false, and recovery refuses a file of one as foreign.
pub(crate) const fn segment_in_lsn_space(segment: u64, segment_size: u64) -> bool {
    match segment.checked_add(1) {
        Some(end) => end.checked_mul(segment_size).is_some(),
        None => false,
    }
}

/// Appends the header of segment `segment_no` to `out`.
pub(crate) fn encode_segment_header(out: &mut Vec<u8>, segment_size: u64, segment_no: u64) {
    encode_segment_header_version(out, segment_size, segment_no, VERSION);
}

/// [`encode_segment_header`] with a given format version (tests write version-1 logs).
pub(crate) fn encode_segment_header_version(
    out: &mut Vec<u8>,
    segment_size: u64,
    segment_no: u64,
    version: u16,
) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&segment_size.to_le_bytes());
    out.extend_from_slice(&(segment_no * segment_size).to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let written = (out.len() - start) as u64;
    storage_io_core::invariant!(
        written == SEGMENT_HEADER_BYTES,
        "a segment header of {written} bytes"
    );
}

/// The segment size written in a segment header, if the header is intact (magic, a version
/// read — 1 or 2 — and checksum); the caller still checks the size and first LSN against what
/// it expects.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let h = bytes.get(..SEGMENT_HEADER_BYTES as usize)?;
    if h[..4] != MAGIC
        || !(VERSION_1..=VERSION).contains(&u16_at(h, 4))
        || u16_at(h, 6) != 0
        || u32_at(h, 28) != 0
    {
        return None;
    }
    if crc32c::crc32c(&h[..24]) != u32_at(h, 24) {
        return None;
    }
    Some((u64_at(h, 8), u64_at(h, 16)))
}

/// Appends the pad record that takes log position `lsn` (where `out` ends) to the next block
/// boundary ([`pad_bytes`]); nothing when `lsn` is on one.
pub(crate) fn encode_pad(out: &mut Vec<u8>, lsn: u64) {
    let total = pad_bytes(lsn);
    if total == 0 {
        return;
    }
    encode_record(
        out,
        KIND_PAD,
        lsn,
        &ZEROS[..(total - RECORD_HEADER_BYTES) as usize],
    );
}

/// Appends the batch marker at log position `lsn` (where `out` ends): the log's durable end
/// `durable` when the batch is submitted.
pub(crate) fn encode_marker(out: &mut Vec<u8>, lsn: u64, durable: u64) {
    debug_assert!(
        durable <= lsn,
        "a batch marker at {lsn} claims the durable end {durable}"
    );
    encode_record(out, KIND_MARKER, lsn, &durable.to_le_bytes());
}

/// Appends one record frame and its payload to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, kind: u8, lsn: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..]), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    let header = (out.len() - start) as u64;
    storage_io_core::invariant!(header == RECORD_HEADER_BYTES, "a record header of {header} bytes");
    out.extend_from_slice(payload);
}

/// What is found at one position of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A valid data record with this payload length.
    Data(usize),
    /// A valid segment-end record: the log continues in the next segment.
    SegmentEnd,
    /// A valid pad record of this many bytes (frame included): the next record follows it.
    Pad(usize),
    /// A valid batch marker ([`MARKER_BYTES`] long) carrying the durable end at its submission.
    Marker(u64),
    /// Anything else: zeros, a torn or corrupt frame, a stale record from another position.
    Invalid,
}

/// Decodes the frame at `pos` of a segment image whose first byte has LSN `base_lsn`.
/// `segment_size` bounds the payload, so a corrupt length cannot reach past the segment.
pub(crate) fn decode_frame(image: &[u8], pos: usize, base_lsn: u64, segment_size: u64) -> Frame {
    let hdr = RECORD_HEADER_BYTES as usize;
    let Some(h) = image.get(pos..pos.saturating_add(hdr)) else {
        return Frame::Invalid;
    };
    let len = u32_at(h, 0) as usize;
    let kind = h[4];
    if h[5..8] != [0, 0, 0] || u64_at(h, 8) != base_lsn + pos as u64 {
        return Frame::Invalid;
    }
    let room = (segment_size as usize).saturating_sub(pos + hdr);
    let payload = match kind {
        KIND_DATA if len <= room => image.get(pos + hdr..pos + hdr + len),
        KIND_SEGMENT_END if len == 0 => Some(&[][..]),
        // Never past the marker's own position: every byte below it was written before it.
        KIND_MARKER if len == 8 && len <= room => image
            .get(pos + hdr..pos + hdr + len)
            .filter(|p| u64_at(p, 0) <= base_lsn + pos as u64),
        // A pad ends on a block boundary (of the log, which segments start on) and holds zeros.
        KIND_PAD if len <= room && (base_lsn + (pos + hdr + len) as u64).is_multiple_of(PAD_BLOCK_BYTES) => {
            image
                .get(pos + hdr..pos + hdr + len)
                .filter(|p| ZEROS.get(..p.len()) == Some(*p))
        }
        _ => None,
    };
    let Some(payload) = payload else {
        return Frame::Invalid;
    };
    if crc32c::crc32c_append(crc32c::crc32c(&h[..16]), payload) != u32_at(h, 16) {
        return Frame::Invalid;
    }
    match kind {
        KIND_DATA => Frame::Data(len),
        KIND_PAD => Frame::Pad(hdr + len),
        KIND_MARKER => Frame::Marker(u64_at(payload, 0)),
        _ => Frame::SegmentEnd,
    }
}

/// How the scan of one segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The header is missing, corrupt, or names another segment or size.
    BadHeader,
    /// A valid segment-end record at this offset: the log goes on in the next segment.
    Switched(usize),
    /// The first offset that holds no valid record.
    Stopped(usize),
}

/// The records of one segment image, in order, and where the scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    /// (LSN, payload range in the image) of each valid data record.
    pub records: Vec<(u64, Range<usize>)>,
    /// Where and why the scan stopped.
    pub end: ScanEnd,
    /// The highest durable end of a batch marker among the valid frames (0: none).
    pub durable: u64,
}

/// Scans segment `segment_no` from its header until the first position without a valid record.
/// `image` is the file's content (it may be shorter than the segment: missing bytes are invalid).
pub(crate) fn scan_segment(image: &[u8], segment_no: u64, segment_size: u64) -> SegmentScan {
    let base = segment_no * segment_size;
    let mut records = Vec::new();
    if decode_segment_header(image) != Some((segment_size, base)) {
        return SegmentScan {
            records,
            end: ScanEnd::BadHeader,
            durable: 0,
        };
    }
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    let mut durable = 0;
    let end = loop {
        match decode_frame(image, pos, base, segment_size) {
            Frame::Data(len) => {
                let start = pos + RECORD_HEADER_BYTES as usize;
                records.push((base + pos as u64, start..start + len));
                pos = start + len;
            }
            Frame::Pad(len) => pos += len,
            Frame::Marker(d) => {
                durable = durable.max(d);
                pos += MARKER_BYTES as usize;
            }
            Frame::SegmentEnd => break ScanEnd::Switched(pos),
            Frame::Invalid => break ScanEnd::Stopped(pos),
        }
    };
    SegmentScan {
        records,
        end,
        durable,
    }
}

/// The valid frames at or after `from` in a segment image, with their LSNs: what recovery
/// looks for past the first invalid frame, to tell a torn tail (nothing valid after it, or
/// nothing below a marker's durable end) from damage in the middle of the log.
pub(crate) fn valid_frames_after(
    image: &[u8],
    from: usize,
    segment_no: u64,
    segment_size: u64,
) -> Vec<(u64, Frame)> {
    valid_frames_in(image, 0, 0, from, segment_no, segment_size)
}

/// [`valid_frames_after`] over a piece of a segment: `piece` holds the segment's bytes from
/// offset `piece_at` on, followed by `zeros` zero bytes that are not stored, and the search
/// starts at `from` (an index into the piece). Recovery keeps only the bytes after the end of
/// the valid frames, up to the last non-zero one: not the segment, not its zeroed rest.
pub(crate) fn valid_frames_in(
    piece: &[u8],
    piece_at: usize,
    zeros: usize,
    from: usize,
    segment_no: u64,
    segment_size: u64,
) -> Vec<(u64, Frame)> {
    // The LSN of `piece[0]`; positions within the piece.
    let base = (segment_no * segment_size).wrapping_add(piece_at as u64);
    // Room is counted from the piece's start: a frame still may not pass the segment end.
    let size = segment_size.saturating_sub(piece_at as u64);
    let hdr = RECORD_HEADER_BYTES as usize;
    let stored = piece.len();
    let mut out = Vec::new();
    let Some(last) = (stored + zeros).checked_sub(hdr) else {
        return out;
    };
    let mut scratch = Vec::new();
    let mut pos = from;
    while pos <= last {
        let mut field = [0u8; 8];
        if pos + 16 <= stored {
            field.copy_from_slice(&piece[pos + 8..pos + 16]);
        } else if pos + 8 < stored {
            field[..stored - pos - 8].copy_from_slice(&piece[pos + 8..]);
        }
        // A frame's LSN field equals its position, never 0 (the segment header comes first):
        // over zeros, jump to where the next non-zero byte could be part of an LSN field.
        if field == [0u8; 8] {
            match piece.get(pos + 16..).and_then(first_nonzero) {
                Some(i) => {
                    pos = (pos + 16 + i).saturating_sub(15).max(pos + 1);
                    continue;
                }
                None => break,
            }
        }
        // The LSN field must equal the position: a cheap filter before the checksum.
        if field == (base + pos as u64).to_le_bytes() {
            // (A non-zero LSN field has a stored byte after `pos + 8`: the length is stored.)
            let len = u32_at(piece, pos) as u64;
            let room = size.saturating_sub(pos as u64 + hdr as u64);
            // The bytes the decoder looks at: the header, and the payload when it fits.
            let need =
                (hdr as u64 + if len <= room { len } else { 0 }).min((stored + zeros - pos) as u64) as usize;
            let frame = if pos + need <= stored {
                decode_frame(piece, pos, base, size)
            } else {
                // The frame runs into the zeros that are not stored: decode it from a copy.
                scratch.clear();
                scratch.extend_from_slice(&piece[pos..]);
                scratch.resize(need, 0);
                decode_frame(&scratch, 0, base + pos as u64, size.saturating_sub(pos as u64))
            };
            if frame != Frame::Invalid {
                out.push((base + pos as u64, frame));
            }
        }
        pos += 1;
    }
    out
}

/// The index of the first non-zero byte of `bytes`, 16 at a time.
pub(crate) fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(16);
    let mut at = 0;
    for c in &mut chunks {
        let mut word = [0u8; 16];
        word.copy_from_slice(c);
        if u128::from_ne_bytes(word) != 0 {
            return c.iter().position(|b| *b != 0).map(|i| at + i);
        }
        at += 16;
    }
    chunks.remainder().iter().position(|b| *b != 0).map(|i| at + i)
}

/// One past the index of the last non-zero byte of `bytes` (0 when all are zero).
pub(crate) fn nonzero_end(bytes: &[u8]) -> usize {
    let mut chunks = bytes.rchunks_exact(16);
    let mut end = bytes.len();
    for c in &mut chunks {
        let mut word = [0u8; 16];
        word.copy_from_slice(c);
        if u128::from_ne_bytes(word) != 0 {
            let start = end - 16;
            return c.iter().rposition(|b| *b != 0).map_or(0, |i| start + i + 1);
        }
        end -= 16;
    }
    chunks
        .remainder()
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i + 1)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 4096;

    fn image(records: &[&[u8]], close: bool) -> Vec<u8> {
        let mut img = Vec::new();
        encode_segment_header(&mut img, SEG, 3);
        for r in records {
            let lsn = 3 * SEG + img.len() as u64;
            encode_record(&mut img, KIND_DATA, lsn, r);
        }
        if close {
            let lsn = 3 * SEG + img.len() as u64;
            encode_record(&mut img, KIND_SEGMENT_END, lsn, &[]);
        }
        img.resize(SEG as usize, 0);
        img
    }

    #[test]
    fn records_round_trip_with_their_lsns() {
        let img = image(&[b"alpha", b"", b"gamma!"], false);
        let scan = scan_segment(&img, 3, SEG);
        let payloads: Vec<&[u8]> = scan.records.iter().map(|(_, r)| &img[r.clone()]).collect();
        assert_eq!(payloads, [&b"alpha"[..], b"", b"gamma!"]);
        assert_eq!(scan.records[0].0, 3 * SEG + SEGMENT_HEADER_BYTES);
        let end = SEGMENT_HEADER_BYTES as usize + 3 * RECORD_HEADER_BYTES as usize + 11;
        assert_eq!(scan.end, ScanEnd::Stopped(end));
        assert!(valid_frames_after(&img, end, 3, SEG).is_empty());
    }

    #[test]
    fn a_closed_segment_says_so() {
        let img = image(&[b"x"], true);
        assert!(matches!(scan_segment(&img, 3, SEG).end, ScanEnd::Switched(_)));
    }

    #[test]
    fn a_segment_read_as_another_number_or_size_has_a_bad_header() {
        let img = image(&[b"x"], false);
        assert_eq!(scan_segment(&img, 4, SEG).end, ScanEnd::BadHeader);
        assert_eq!(scan_segment(&img, 3, SEG * 2).end, ScanEnd::BadHeader);
        assert_eq!(scan_segment(&[], 3, SEG).end, ScanEnd::BadHeader);
    }

    #[test]
    fn every_single_bit_flip_in_a_record_is_caught() {
        let img = image(&[b"payload under test"], false);
        let first = SEGMENT_HEADER_BYTES as usize;
        let last = first + RECORD_HEADER_BYTES as usize + 18;
        for byte in first..last {
            for bit in 0..8 {
                let mut bad = img.clone();
                bad[byte] ^= 1 << bit;
                let scan = scan_segment(&bad, 3, SEG);
                assert!(
                    scan.records.is_empty(),
                    "flip at byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_corrupt_length_cannot_reach_past_the_segment() {
        let mut img = image(&[b"abc"], false);
        let at = SEGMENT_HEADER_BYTES as usize;
        img[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(scan_segment(&img, 3, SEG).end, ScanEnd::Stopped(at));
    }

    #[test]
    fn damage_in_the_middle_leaves_later_records_findable() {
        let img = image(&[b"one", b"two", b"three"], false);
        let scan = scan_segment(&img, 3, SEG);
        let second = (scan.records[1].0 - 3 * SEG) as usize;
        let mut bad = img.clone();
        bad[second + RECORD_HEADER_BYTES as usize] ^= 0xff;
        let scan = scan_segment(&bad, 3, SEG);
        assert_eq!(scan.end, ScanEnd::Stopped(second));
        let after = valid_frames_after(&bad, second + 1, 3, SEG);
        assert_eq!(after, vec![(img_lsn_of_third(&img), Frame::Data(5))]);
    }

    fn img_lsn_of_third(img: &[u8]) -> u64 {
        scan_segment(img, 3, SEG).records[2].0
    }

    #[test]
    fn a_pad_ends_on_a_block_boundary_and_the_scan_skips_it() {
        assert_eq!(pad_bytes(8192), 0);
        assert_eq!(pad_bytes(8192 + 100), 4096 - 100);
        // Fewer bytes left than a frame needs: the pad runs to the end of the next block.
        assert_eq!(pad_bytes(8192 - 10), 10 + 4096);
        const BIG: u64 = 16384;
        let mut img = Vec::new();
        encode_segment_header(&mut img, BIG, 1);
        let base = BIG;
        let first = base + img.len() as u64;
        encode_record(&mut img, KIND_DATA, first, b"before");
        let pad_at = img.len();
        encode_pad(&mut img, base + pad_at as u64);
        assert!((base + img.len() as u64).is_multiple_of(PAD_BLOCK_BYTES));
        let after = img.len();
        encode_record(&mut img, KIND_DATA, base + after as u64, b"after");
        img.resize(BIG as usize, 0);
        assert_eq!(decode_frame(&img, pad_at, base, BIG), Frame::Pad(after - pad_at));
        let scan = scan_segment(&img, 1, BIG);
        let payloads: Vec<&[u8]> = scan.records.iter().map(|(_, r)| &img[r.clone()]).collect();
        assert_eq!(payloads, [&b"before"[..], b"after"]);
        // A pad whose payload is not zeros, or that does not end on a boundary, is invalid.
        let mut bad = img.clone();
        bad[pad_at + 30] = 1;
        assert_eq!(decode_frame(&bad, pad_at, base, BIG), Frame::Invalid);
        assert_eq!(decode_frame(&img, pad_at, base + 512, BIG), Frame::Invalid);
    }

    #[test]
    fn max_payload_leaves_room_for_the_segment_end() {
        let max = max_payload_bytes(SEG) as usize;
        let mut img = Vec::new();
        encode_segment_header(&mut img, SEG, 0);
        let lsn = img.len() as u64;
        encode_record(&mut img, KIND_DATA, lsn, &vec![7u8; max]);
        let lsn = img.len() as u64;
        encode_record(&mut img, KIND_SEGMENT_END, lsn, &[]);
        assert_eq!(img.len() as u64, SEG);
        let scan = scan_segment(&img, 0, SEG);
        assert_eq!(scan.records.len(), 1);
        assert!(matches!(scan.end, ScanEnd::Switched(_)));
    }
}
