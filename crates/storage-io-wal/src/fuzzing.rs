//! Entry points for the cargo-fuzz targets in `fuzz/` and for the test that replays their
//! corpus. Not part of the API.

use crate::config::RecoveryPolicy;
use crate::format::{
    KIND_DATA, RECORD_HEADER_BYTES, ScanEnd, encode_record, scan_segment, valid_frames_after,
};
use crate::recovery::{Planner, SegmentStream};

/// Segment size the fuzz inputs are cut into.
pub const FUZZ_SEGMENT_BYTES: u64 = 512;

/// Treats `data` as a log: byte 0 picks the first segment number (bits 0-3), the in-flight
/// window in segments (bits 4-6) and whether segment numbers skip (bit 7), the rest is cut into 512-byte segment images. Runs the record decoder and the recovery
/// planner over it and panics if any invariant breaks:
/// - every decoded record lies inside its segment, carries its own position as LSN, and
///   re-encodes to exactly the bytes it was decoded from;
/// - a scan never ends before its last record, and nothing before the end is reported as
///   "valid after the end";
/// - the plan's end lies inside a segment, and the torn range to zero starts at the end;
/// - no batch marker claims a durable end past its own position, and a plan whose end lies
///   below the highest durable end found is never `Strict`'s, always reports the damage and
///   cuts nothing as in flight.
pub fn check_log_image(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let size = FUZZ_SEGMENT_BYTES;
    let first = u64::from(control & 0x0f);
    let skip = u64::from(control >> 7);
    let segments: Vec<(u64, &[u8])> = rest
        .chunks(size as usize)
        .enumerate()
        .map(|(i, image)| (first + i as u64 * (1 + skip), image))
        .collect();
    for &(segment, image) in &segments {
        check_segment(image, segment, size);
    }
    let fed: Vec<u64> = segments.iter().map(|s| s.0).collect();
    let window = u64::from(control >> 4 & 0x07) * size;
    for policy in [RecoveryPolicy::PointInTime, RecoveryPolicy::Strict] {
        let mut planner = Planner::new(size, window);
        for &(segment, image) in &segments {
            planner.feed(segment, image);
        }
        let planned = planner.finish(policy);
        // Streamed in pieces (as recovery reads), the planner decides the same.
        let piece = 1 + usize::from(control) % 67;
        let streamed = plan_streamed(&segments, size, window, piece, policy);
        assert_eq!(
            format!("{planned:?}"),
            format!("{streamed:?}"),
            "streaming the segments in pieces of {piece} bytes changed the plan"
        );
        if let Ok(plan) = planned {
            assert!(
                plan.end_offset < size,
                "end offset {} outside the segment",
                plan.end_offset
            );
            assert!(plan.end_offset == 0 || plan.zero_to >= plan.end_offset);
            assert!(plan.kept.iter().all(|s| fed.contains(s)));
            assert!(plan.kept.iter().all(|s| *s <= plan.end_segment));
            assert!(plan.remove.iter().all(|s| *s >= plan.end_segment));
            // A hole below the durable end a marker carries is damage under every policy:
            // `Strict` refuses it, `PointInTime` reports it, and nothing is cut as in flight.
            let end = plan.end_segment * size + plan.end_offset;
            if plan.durable > end {
                assert_eq!(
                    policy,
                    RecoveryPolicy::PointInTime,
                    "strict opened a log cut below its durable end"
                );
                assert_eq!(
                    plan.corruption_at,
                    Some(end),
                    "a cut below the durable end went unreported"
                );
                assert_eq!(plan.in_window, 0, "acknowledged records were cut as in flight");
            }
        }
    }
}

/// The plan recovery makes of `segments`: streamed in pieces of `piece` bytes until the end is
/// found, fed whole after it.
fn plan_streamed(
    segments: &[(u64, &[u8])],
    size: u64,
    window: u64,
    piece: usize,
    policy: RecoveryPolicy,
) -> Result<crate::recovery::Plan, crate::WalError> {
    let mut planner = Planner::new(size, window);
    let mut stream = SegmentStream::new(0, size, window);
    for &(segment, image) in segments {
        if !planner.streams(segment) {
            planner.feed(segment, image);
            continue;
        }
        stream.reset(segment);
        for bytes in image.chunks(piece) {
            stream.push(bytes);
        }
        stream.finish();
        planner.feed_summary(segment, &stream.summary());
    }
    planner.finish(policy)
}

fn check_segment(image: &[u8], segment: u64, size: u64) {
    let base = segment * size;
    let scan = scan_segment(image, segment, size);
    let mut last_end = 0;
    for (lsn, range) in &scan.records {
        assert!(
            range.end <= image.len() && range.end as u64 <= size,
            "record past the segment"
        );
        let frame_start = range.start - RECORD_HEADER_BYTES as usize;
        assert_eq!(*lsn, base + frame_start as u64, "a record's LSN is its position");
        let mut again = Vec::new();
        encode_record(&mut again, KIND_DATA, *lsn, &image[range.clone()]);
        assert_eq!(
            again,
            image[frame_start..range.end],
            "decode then encode changed the record"
        );
        last_end = range.end;
    }
    match scan.end {
        ScanEnd::Stopped(at) | ScanEnd::Switched(at) => {
            assert!(at >= last_end, "scan ended inside a record");
            if let ScanEnd::Stopped(at) = scan.end {
                let after = valid_frames_after(image, at + 1, segment, size);
                assert!(after.iter().all(|(l, _)| *l > base + at as u64));
                // A batch marker never claims a durable end past its own position.
                for (l, frame) in &after {
                    if let crate::format::Frame::Marker(d) = frame {
                        assert!(d <= l, "a marker at {l} claims the durable end {d}");
                    }
                }
            }
        }
        ScanEnd::BadHeader => assert!(scan.records.is_empty()),
    }
    let end = match scan.end {
        ScanEnd::Stopped(at) | ScanEnd::Switched(at) => at,
        ScanEnd::BadHeader => 0,
    };
    assert!(
        scan.durable <= base + end as u64,
        "a marker before {end} claims the durable end {}",
        scan.durable
    );
}

/// The frame decoder on its own: `data` is byte 0 (a position, mod 64, and a base LSN, in its
/// top bits) and then one segment image. Panics if a frame decodes as valid yet does not fit its
/// segment, or does not re-encode to exactly the bytes it was decoded from.
pub fn check_frame(data: &[u8]) {
    let Some((&control, image)) = data.split_first() else {
        return;
    };
    let size = FUZZ_SEGMENT_BYTES;
    let pos = usize::from(control & 0x3f);
    let base = u64::from(control >> 6) * size;
    match crate::format::decode_frame(image, pos, base, size) {
        crate::format::Frame::Data(len) => {
            let end = pos + RECORD_HEADER_BYTES as usize + len;
            assert!(
                end as u64 <= size,
                "a frame of {len} bytes at {pos} passes the segment end"
            );
            let mut again = Vec::new();
            let payload = &image[pos + RECORD_HEADER_BYTES as usize..end];
            encode_record(&mut again, KIND_DATA, base + pos as u64, payload);
            assert_eq!(
                again,
                &image[pos..end],
                "a decoded frame does not re-encode to itself"
            );
        }
        crate::format::Frame::Pad(total) => {
            let end = pos + total;
            assert!(
                end as u64 <= size,
                "a pad of {total} bytes at {pos} passes the segment end"
            );
            assert!(
                (base + end as u64).is_multiple_of(crate::format::PAD_BLOCK_BYTES),
                "a pad at {pos} does not end on a block boundary"
            );
            let mut again = Vec::new();
            crate::format::encode_pad(&mut again, base + pos as u64);
            assert_eq!(
                again,
                &image[pos..end],
                "a decoded pad does not re-encode to itself"
            );
        }
        crate::format::Frame::Marker(durable) => {
            let end = pos + crate::format::MARKER_BYTES as usize;
            assert!(end as u64 <= size, "a marker at {pos} passes the segment end");
            assert!(
                durable <= base + pos as u64,
                "a marker at {pos} claims the durable end {durable}"
            );
            let mut again = Vec::new();
            crate::format::encode_marker(&mut again, base + pos as u64, durable);
            assert_eq!(
                again,
                &image[pos..end],
                "a decoded marker does not re-encode to itself"
            );
        }
        crate::format::Frame::SegmentEnd | crate::format::Frame::Invalid => {}
    }
}

/// The image of segment `segment_no` as the version-1 writer left it: a version-1 header and
/// `payloads` as data records (no batch markers), zeros to `segment_size`. Tests build
/// version-1 logs with it.
pub fn version_1_segment(segment_no: u64, segment_size: u64, payloads: &[&[u8]]) -> Vec<u8> {
    let mut img = Vec::new();
    crate::format::encode_segment_header_version(
        &mut img,
        segment_size,
        segment_no,
        crate::format::VERSION_1,
    );
    for p in payloads {
        let lsn = segment_no * segment_size + img.len() as u64;
        encode_record(&mut img, KIND_DATA, lsn, p);
    }
    assert!(
        img.len() as u64 + RECORD_HEADER_BYTES <= segment_size,
        "the records do not fit the segment"
    );
    img.resize(segment_size as usize, 0);
    img
}
