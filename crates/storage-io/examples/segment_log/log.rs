//! The segment log of `examples/segment_log.rs`, in a module of its own so that the crash test
//! (tests/segment_log_crash.rs) runs the very code the example runs, on MemIo.
// The example and its crash test each use a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use storage_io::{AsyncFile, AsyncFileSystem};

/// The base offset of a segment file named `<base offset>.log`, or `None` for any other file.
pub(crate) fn segment_base(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()
}

pub(crate) const HEADER: usize = 8;

/// One segment file: its first offset and where each of its records starts.
pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    pub(crate) file: AsyncFile,
    /// (position, payload length) of each record, by offset − base_offset.
    pub(crate) index: Vec<(u64, u32)>,
    /// The end of the last intact record: where the next record goes. Not the file's length,
    /// which a torn tail (zeroed at open) may exceed, so records are written at positions the
    /// log chooses (`write_at`), not with `append`.
    pub(crate) size: u64,
}

/// The log: segments in offset order, the last one active.
pub(crate) struct SegmentLog {
    fs: AsyncFileSystem,
    dir: PathBuf,
    segment_bytes: u64,
    pub(crate) segments: Vec<Segment>,
}

pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&len);
    f.extend_from_slice(&checksum(len, payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// CRC32C of a frame's length bytes and payload: four zero bytes alone do not check out, so
/// zeros are not an empty record.
pub(crate) fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

impl SegmentLog {
    /// Opens the log in `dir`, rebuilding the index of every existing segment; `bases` are
    /// the base offsets of the segment files there (see [`segment_base`]).
    pub(crate) async fn open(
        fs: AsyncFileSystem,
        dir: &Path,
        segment_bytes: u64,
        mut bases: Vec<u64>,
    ) -> anyhow::Result<Self> {
        bases.sort_unstable();
        let mut log = SegmentLog {
            fs,
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::new(),
        };
        for base in bases {
            let segment = log.scan(base).await?;
            log.segments.push(segment);
        }
        if log.segments.is_empty() {
            log.roll(0).await?;
        }
        Ok(log)
    }

    /// Reads one segment front to back and indexes every intact record.
    async fn scan(&self, base_offset: u64) -> anyhow::Result<Segment> {
        let file = self.fs.open_append(self.path(base_offset)).await?;
        let len = file.size().await?;
        let (n, data) = file.read_at(vec![0u8; len as usize], 0).await;
        ensure!(n? as u64 == len, "segment {base_offset} shrank while being read");
        let (mut pos, mut index) = (0usize, Vec::new());
        while pos + HEADER <= data.len() {
            let len: [u8; 4] = data[pos..pos + 4].try_into()?;
            let plen = u32::from_le_bytes(len) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into()?);
            let Some(payload) = data.get(pos + HEADER..pos + HEADER + plen) else {
                break;
            };
            if checksum(len, payload) != crc {
                break;
            }
            index.push((pos as u64, plen as u32));
            pos += HEADER + plen;
        }
        if (pos as u64) < len {
            // A torn tail: bytes of writes a crash cut, never acknowledged. The next record goes
            // at `pos`, over them; the rest are zeroed (and the zeros made durable) first, so that
            // no intact frame of that unfinished batch can follow the new records and come back
            // at the next scan (zeros never make a valid frame).
            println!(
                "segment {base_offset}: {} torn bytes after record {} cleared",
                len - pos as u64,
                index.len()
            );
            let zeros = vec![0u8; (len - pos as u64) as usize];
            let (n, _) = file.write_at(zeros, pos as u64).await;
            ensure!(
                n? as u64 == len - pos as u64,
                "clearing the torn tail of segment {base_offset}"
            );
            file.sync_data().await?;
        }
        Ok(Segment {
            base_offset,
            file,
            index,
            size: pos as u64,
        })
    }

    fn path(&self, base_offset: u64) -> PathBuf {
        self.dir.join(format!("{base_offset:020}.log"))
    }

    async fn roll(&mut self, base_offset: u64) -> anyhow::Result<()> {
        let file = self.fs.open_append(self.path(base_offset)).await?;
        ensure!(file.size().await? == 0, "segment {base_offset} already exists");
        // The new segment's name must survive a crash, or so would none of its records.
        self.fs.sync_dir(&self.dir).await?;
        self.segments.push(Segment {
            base_offset,
            file,
            index: Vec::new(),
            size: 0,
        });
        Ok(())
    }

    /// The offset the next record gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.base_offset + s.index.len() as u64)
    }

    /// Appends a batch — every record in flight at once — and makes it durable with one
    /// `sync_data`. Returns the offset of the first record.
    pub(crate) async fn append_batch(&mut self, payloads: &[Vec<u8>]) -> anyhow::Result<u64> {
        let first = self.next_offset();
        let full = self.segments.last().is_none_or(|s| s.size >= self.segment_bytes);
        if full {
            self.roll(first).await?;
        }
        let Some(active) = self.segments.last_mut() else {
            bail!("no active segment")
        };
        // Each write is sent when called, at the position after the previous record, so all
        // are in flight at once; the sync, sent last, covers every one of them. A record counts
        // (is indexed, its offset handed out) only once the sync has completed.
        let mut at = active.size;
        let mut writes = Vec::with_capacity(payloads.len());
        for p in payloads {
            let f = frame(p);
            let len = f.len() as u64;
            writes.push((active.file.write_at(f, at), at, len));
            at += len;
        }
        let sync = active.file.sync_data();
        for (write, at, len) in writes {
            let n = write.await.0?;
            ensure!(n as u64 == len, "short write of a record at {at}");
        }
        sync.await?;
        let mut pos = active.size;
        for p in payloads {
            active.index.push((pos, p.len() as u32));
            pos += (HEADER + p.len()) as u64;
        }
        active.size = pos;
        Ok(first)
    }

    /// The payload of the record at `offset`.
    pub(crate) async fn read(&self, offset: u64) -> anyhow::Result<Vec<u8>> {
        let i = self.segments.partition_point(|s| s.base_offset <= offset);
        let segment = i
            .checked_sub(1)
            .map(|i| &self.segments[i])
            .context("offset before the log")?;
        let &(pos, len) = segment
            .index
            .get((offset - segment.base_offset) as usize)
            .with_context(|| format!("offset {offset} is past the end"))?;
        let (n, payload) = segment
            .file
            .read_at(vec![0u8; len as usize], pos + HEADER as u64)
            .await;
        ensure!(n? == len as usize, "record {offset} is cut short");
        Ok(payload)
    }
}
