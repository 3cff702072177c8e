//! [`WalReader`]: the records of a log, in order, verified.

use std::path::{Path, PathBuf};

use storage_io_core::{IoFd, OpenOptions, StorageIo};

use crate::Lsn;
use crate::error::WalError;
use crate::format::{
    Frame, KIND_DATA, KIND_MARKER, KIND_PAD, MARKER_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    decode_frame, decode_segment_header,
};
use crate::segio::{ChunkReads, ReadBufs, read_prefix, segment_file_name, segments_in};

/// Iterates `(lsn, payload)` of every valid record from a start LSN up to a limit. Only
/// records whose checksum and LSN verify are returned; the iteration ends at the first
/// position without one (as recovery does).
///
/// Segments are streamed as recovery streams them: reads of 256 KiB (two in flight on an
/// asynchronous backend) into buffers allocated once and reused; the frames are decoded from a
/// window that holds the bytes from the next frame on (more than a read only while one record
/// is larger). Reading costs what the log holds, not the size of its segments, and the
/// zero-filled rest of a preallocated segment is not read beyond the reads in flight when the
/// log ends.
///
/// Get one from [`WalManager::reader`](crate::WalManager::reader), or read a log that no
/// manager has open with [`WalReader::open`].
pub struct WalReader {
    io: Box<dyn StorageIo>,
    dir: PathBuf,
    segment_size: u64,
    /// The segment being read (or the next to open when `fd` is `None`).
    segment: u64,
    from: u64,
    limit: u64,
    /// The open segment and its length.
    fd: Option<(IoFd, u64)>,
    /// The reads of the open segment, and the buffers they go through.
    reads: Option<ChunkReads>,
    bufs: ReadBufs,
    /// Bytes `[buf_at, buf_at + buf.len())` of the open segment.
    buf: Vec<u8>,
    buf_at: u64,
    /// Offset in the open segment of the next frame.
    pos: u64,
    more_segments: bool,
}

/// Bytes the reader reads at a time.
const READ_CHUNK_BYTES: usize = 256 << 10;

impl WalReader {
    pub(crate) fn new(io: Box<dyn StorageIo>, dir: &Path, segment_size: u64, from: u64, limit: u64) -> Self {
        WalReader {
            io,
            dir: dir.to_path_buf(),
            segment_size,
            segment: from / segment_size,
            from,
            limit,
            fd: None,
            reads: None,
            bufs: ReadBufs::default(),
            buf: Vec::new(),
            buf_at: 0,
            pos: 0,
            more_segments: true,
        }
    }

    /// Reads the log in `dir` from its first segment, without recovering it (nothing is
    /// written). For tools and checks; an open [`WalManager`](crate::WalManager) gives readers
    /// that stop at what it has written.
    pub fn open(dir: impl AsRef<Path>, mut io: Box<dyn StorageIo>) -> Result<WalReader, WalError> {
        let dir = dir.as_ref();
        let segments = segments_in(&io.list_dir(dir)?)?;
        let mut done = Vec::new();
        let Some(&first) = segments.first() else {
            return Ok(WalReader::new(io, dir, 1 << 20, 0, 0));
        };
        let fd = io.open_file(&dir.join(segment_file_name(first)), &OpenOptions::read_only())?;
        let header = read_prefix(
            &mut *io,
            &mut done,
            fd,
            SEGMENT_HEADER_BYTES as usize,
            READ_CHUNK_BYTES,
        );
        io.deregister_fd(fd)?;
        let segment_size = decode_segment_header(&header?).map_or(1 << 20, |(size, _)| size.max(1));
        crate::recovery::refuse_foreign_numbers(&segments, segment_size, |s| dir.join(segment_file_name(s)))?;
        Ok(WalReader::new(
            io,
            dir,
            segment_size,
            first * segment_size,
            u64::MAX,
        ))
    }

    /// Opens the next segment and checks its header; false when there is none (or its header
    /// does not belong to this log).
    fn open_next(&mut self) -> Result<bool, WalError> {
        if !self.more_segments {
            return Ok(false);
        }
        let path = self.dir.join(segment_file_name(self.segment));
        let fd = match self.io.open_file(&path, &OpenOptions::read_only()) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => {
                self.more_segments = false;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let len = match self.io.file_len(fd) {
            Ok(len) => len.min(self.segment_size),
            Err(e) => {
                let _ = self.io.deregister_fd(fd);
                return Err(e.into());
            }
        };
        self.fd = Some((fd, len));
        self.reads = Some(ChunkReads::new(&*self.io, fd, len, READ_CHUNK_BYTES));
        self.buf.clear();
        self.buf_at = 0;
        self.pos = 0;
        let base = self.segment * self.segment_size;
        let header_ok = self.fill(SEGMENT_HEADER_BYTES as usize)?
            && decode_segment_header(&self.buf) == Some((self.segment_size, base));
        self.pos = SEGMENT_HEADER_BYTES;
        if !header_ok {
            self.close_segment()?;
            self.more_segments = false;
        }
        Ok(header_ok)
    }

    /// Makes the buffer hold the `n` bytes at `pos` of the open segment (dropping what lies
    /// before `pos` when it must read more); false if the segment ends before them.
    fn fill(&mut self, n: usize) -> Result<bool, WalError> {
        let Some((_, len)) = self.fd else {
            return Ok(false);
        };
        let want_end = self.pos + n as u64;
        if want_end > len {
            return Ok(false);
        }
        if self.buf_at + (self.buf.len() as u64) < want_end && self.pos > self.buf_at {
            // Only before a read: the frames already in the window are decoded in place.
            let drop = ((self.pos - self.buf_at) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.buf_at += drop as u64;
        }
        while self.buf_at + (self.buf.len() as u64) < want_end {
            let Some(reads) = &mut self.reads else {
                return Ok(false);
            };
            if !reads.advance(&mut *self.io, &mut self.bufs)? || reads.held().is_empty() {
                return Ok(false);
            }
            self.buf.extend_from_slice(reads.held());
        }
        Ok(true)
    }

    fn close_segment(&mut self) -> Result<(), WalError> {
        // The reads in flight come back before the file is closed.
        let stopped = match self.reads.take() {
            Some(mut reads) => reads.stop(&mut *self.io, &mut self.bufs),
            None => Ok(()),
        };
        if let Some((fd, _)) = self.fd.take() {
            self.io.deregister_fd(fd)?;
        }
        self.buf.clear();
        self.buf.shrink_to(2 * READ_CHUNK_BYTES);
        stopped.map_err(WalError::from)
    }

    /// The next valid record of the log, reading on as needed; `None` at the end.
    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, WalError> {
        let hdr = RECORD_HEADER_BYTES as usize;
        loop {
            if self.fd.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let base = self.segment * self.segment_size;
            let pos = self.pos;
            let frame = if self.fill(hdr)? {
                let at = (pos - self.buf_at) as usize;
                let h = &self.buf[at..at + hdr];
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
                let room = self.segment_size.saturating_sub(pos + hdr as u64);
                if matches!(h[4], KIND_DATA | KIND_PAD | KIND_MARKER) && len <= room {
                    // What is not in the file reads as invalid, as in a whole-segment scan.
                    self.fill(hdr + len as usize)?;
                }
                let at = (pos - self.buf_at) as usize;
                decode_frame(&self.buf, at, base + self.buf_at, self.segment_size)
            } else {
                Frame::Invalid
            };
            match frame {
                Frame::Data(len) => {
                    let at = (pos - self.buf_at) as usize + hdr;
                    self.pos = pos + (hdr + len) as u64;
                    return Ok(Some((base + pos, self.buf[at..at + len].to_vec())));
                }
                Frame::Pad(total) => self.pos = pos + total as u64,
                Frame::Marker(_) => self.pos = pos + MARKER_BYTES,
                Frame::SegmentEnd => {
                    self.close_segment()?;
                    self.segment += 1;
                }
                Frame::Invalid => {
                    self.close_segment()?;
                    self.more_segments = false;
                    return Ok(None);
                }
            }
        }
    }
}

impl Iterator for WalReader {
    type Item = Result<(Lsn, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_record() {
                Ok(Some((lsn, payload))) => {
                    if lsn >= self.limit {
                        let _ = self.close_segment();
                        self.more_segments = false;
                        return None;
                    }
                    if lsn < self.from {
                        continue;
                    }
                    return Some(Ok((Lsn(lsn), payload)));
                }
                Ok(None) => return None,
                Err(e) => {
                    let _ = self.close_segment();
                    self.more_segments = false;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Drop for WalReader {
    fn drop(&mut self) {
        let _ = self.close_segment();
    }
}
