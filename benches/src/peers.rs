//! The wal_commit workload's external peers, in the same rounds, directory and record size as
//! our WAL: okaywal (pure Rust, its own group commit; feature `okaywal`, on by default). Each
//! commit is `begin_entry`, one `write_chunk` of the record, `commit` (durable when it returns).
//! A peer that is not built in is skipped with a one-line hint, like fio.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::Row;

pub use crate::{ENGINE_OKAYWAL, ENGINE_ROCKSDB};

/// Why the okaywal cells cannot run, if they cannot.
pub fn okaywal_missing() -> Option<&'static str> {
    if cfg!(feature = "okaywal") {
        None
    } else {
        Some("okaywal peer skipped: build the bench with `--features okaywal` (a crates.io dependency)")
    }
}

/// `committers` threads committing `record_bytes`-byte records through okaywal for `duration`.
#[cfg(feature = "okaywal")]
pub fn run_okaywal_cell(
    root: &Path,
    committers: usize,
    duration: Duration,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Row> {
    use crate::cell::ScratchDir;
    use crate::wal::{RECORD_BYTES, commit_threads, row};

    /// Recovery and checkpoints that keep nothing: the bench only writes.
    #[derive(Debug)]
    struct Discard;

    impl okaywal::LogManager for Discard {
        fn recover(&mut self, _entry: &mut okaywal::Entry<'_>) -> std::io::Result<()> {
            Ok(())
        }

        fn checkpoint_to(
            &mut self,
            _last: okaywal::EntryId,
            _entries: &mut okaywal::SegmentReader,
            _wal: &okaywal::WriteAheadLog,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    let dir = ScratchDir::new(root, &format!("wal-okaywal-{committers}"))?;
    let log = okaywal::WriteAheadLog::recover(dir.path(), Discard)?;
    // Warm-up, like ours: the first commit creates the first log file.
    commit(&log, &[0u8; RECORD_BYTES])?;
    let (measured, hist) = commit_threads(committers, duration, stop, |record| commit(&log, record))?;
    Ok(row(
        ENGINE_OKAYWAL,
        "okaywal",
        committers,
        RECORD_BYTES,
        measured,
        &hist,
    ))
}

#[cfg(feature = "okaywal")]
fn commit(log: &okaywal::WriteAheadLog, record: &[u8]) -> Result<()> {
    let mut entry = log.begin_entry()?;
    entry.write_chunk(record)?;
    entry.commit()?;
    Ok(())
}

/// Without the feature there is no okaywal cell to run.
#[cfg(not(feature = "okaywal"))]
pub fn run_okaywal_cell(
    _root: &Path,
    _committers: usize,
    _duration: Duration,
    _stop: &(dyn Fn() -> bool + Sync),
) -> Result<Row> {
    anyhow::bail!("{}", okaywal_missing().unwrap_or_default())
}

#[cfg(all(test, feature = "okaywal"))]
mod tests {
    use super::*;
    use crate::wal::{WalCell, run_wal_cell, section};

    #[test]
    fn the_okaywal_peer_runs_beside_ours_and_the_section_divides_by_it() {
        let root = tempfile::tempdir().unwrap();
        let never = || false;
        let short = Duration::from_millis(100);
        let peer = run_okaywal_cell(root.path(), 4, short, &never).unwrap();
        assert_eq!(peer.engine, ENGINE_OKAYWAL);
        assert!(peer.ops > 0 && peer.lat_us.mean > 0.0);
        let ours = run_wal_cell(
            root.path(),
            &WalCell {
                backend: crate::cell::Backend::Sync,
                committers: 4,
                tasks: false,
                direct: false,
                duration: short,
            },
            &never,
        )
        .unwrap();
        let text = section(&[peer, ours]);
        assert!(text.contains("| 4 threads |"), "{text}");
        assert!(text.contains("ours ÷ peer"), "{text}");
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "cell directories are removed"
        );
    }
}

/// Why the RocksDB cells cannot run, if they cannot.
pub fn rocksdb_missing() -> Option<&'static str> {
    if cfg!(feature = "rocksdb") {
        None
    } else {
        Some(
            "RocksDB peer skipped: apt-get install librocksdb-dev libclang-dev, then build the bench with \
             ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu and --features rocksdb",
        )
    }
}

/// `committers` threads putting `RECORD_BYTES`-byte values into RocksDB with a synced write each
/// (`WriteOptions::set_sync(true)`: the write-ahead log is fsynced before the put returns).
#[cfg(feature = "rocksdb")]
pub fn run_rocksdb_cell(
    root: &Path,
    committers: usize,
    duration: Duration,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Row> {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::cell::ScratchDir;
    use crate::wal::{RECORD_BYTES, commit_threads, row};

    let dir = ScratchDir::new(root, &format!("wal-rocksdb-{committers}"))?;
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = rocksdb::DB::open(&options, dir.path())?;
    let mut write = rocksdb::WriteOptions::default();
    write.set_sync(true);
    let key = AtomicU64::new(0);
    let put = |value: &[u8]| -> Result<()> {
        let k = key.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        db.put_opt(k, value, &write)?;
        Ok(())
    };
    put(&[0u8; RECORD_BYTES])?; // warm-up: the first write creates the log
    let (measured, hist) = commit_threads(committers, duration, stop, put)?;
    let out = row(
        ENGINE_ROCKSDB,
        "rocksdb",
        committers,
        RECORD_BYTES,
        measured,
        &hist,
    );
    drop(db);
    Ok(out)
}

/// Without the feature there is no RocksDB cell to run.
#[cfg(not(feature = "rocksdb"))]
pub fn run_rocksdb_cell(
    _root: &Path,
    _committers: usize,
    _duration: Duration,
    _stop: &(dyn Fn() -> bool + Sync),
) -> Result<Row> {
    anyhow::bail!("{}", rocksdb_missing().unwrap_or_default())
}
