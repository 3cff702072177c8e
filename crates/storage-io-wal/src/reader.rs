//! [`WalReader`]: the records of a log, in order, verified.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};

use storage_io_core::{IoCompletion, OpenOptions, StorageIo, StorageIoError};

use crate::Lsn;
use crate::error::WalError;
use crate::format::{SEGMENT_HEADER_BYTES, ScanEnd, decode_segment_header, scan_segment};
use crate::segio::{parse_segment_name, read_prefix, read_whole, segment_file_name};

const READ_CHUNK_BYTES: usize = 1 << 20;

/// Iterates `(lsn, payload)` of every valid record from a start LSN up to a limit, one segment
/// in memory at a time. Only records whose checksum and LSN verify are returned; the iteration
/// ends at the first position without one (as recovery does).
///
/// Get one from [`WalManager::reader`](crate::WalManager::reader), or read a log that no
/// manager has open with [`WalReader::open`].
pub struct WalReader {
    io: Box<dyn StorageIo>,
    dir: PathBuf,
    segment_size: u64,
    segment: u64,
    from: u64,
    limit: u64,
    image: Vec<u8>,
    records: VecDeque<(u64, Range<usize>)>,
    more_segments: bool,
    done: Vec<IoCompletion>,
}

impl WalReader {
    pub(crate) fn new(io: Box<dyn StorageIo>, dir: &Path, segment_size: u64, from: u64, limit: u64) -> Self {
        WalReader {
            io,
            dir: dir.to_path_buf(),
            segment_size,
            segment: from / segment_size,
            from,
            limit,
            image: Vec::new(),
            records: VecDeque::new(),
            more_segments: true,
            done: Vec::new(),
        }
    }

    /// Reads the log in `dir` from its first segment, without recovering it (nothing is
    /// written). For tools and checks; an open [`WalManager`](crate::WalManager) gives readers
    /// that stop at what it has written.
    pub fn open(dir: impl AsRef<Path>, mut io: Box<dyn StorageIo>) -> Result<WalReader, WalError> {
        let dir = dir.as_ref();
        let mut segments: Vec<u64> = io
            .list_dir(dir)?
            .iter()
            .filter_map(|p| parse_segment_name(p))
            .collect();
        segments.sort_unstable();
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

    /// Loads the next segment; false when there is none.
    fn load(&mut self) -> Result<bool, WalError> {
        if !self.more_segments {
            return Ok(false);
        }
        let path = self.dir.join(segment_file_name(self.segment));
        let fd = match self.io.open_file(&path, &OpenOptions::read_only()) {
            Ok(fd) => fd,
            Err(StorageIoError::Io { errno: 2, .. }) => {
                self.more_segments = false;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let image = read_whole(&mut *self.io, &mut self.done, fd, READ_CHUNK_BYTES);
        self.io.deregister_fd(fd)?;
        self.image = image?;
        let scan = scan_segment(&self.image, self.segment, self.segment_size);
        self.records = scan.records.into();
        self.more_segments = matches!(scan.end, ScanEnd::Switched(_));
        self.segment += 1;
        Ok(true)
    }
}

impl Iterator for WalReader {
    type Item = Result<(Lsn, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((lsn, range)) = self.records.pop_front() {
                if lsn >= self.limit {
                    self.records.clear();
                    self.more_segments = false;
                    return None;
                }
                if lsn < self.from {
                    continue;
                }
                return Some(Ok((Lsn(lsn), self.image[range].to_vec())));
            }
            match self.load() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.more_segments = false;
                    return Some(Err(e));
                }
            }
        }
    }
}
