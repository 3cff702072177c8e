//! `TokioFile` (feature `tokio`): tokio's own `copy`, `BufReader` and seeks over the async
//! file API, and its futures dropped mid-flight.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::future::Future;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use storage_io_fs::bytes::{Bytes, BytesMut};
use storage_io_fs::{AsyncFileSystem, AsyncFsConfig, BackendFactory, OpKind, StorageIo, TokioFile};
use storage_io_testkit::gated::{Gate, GatedIo};
use storage_io_testkit::memio::MemFs;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn poll_once<F: Future>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// Files on MemFs whose completions of `kinds` wait for `gate` (open at first).
fn gated_fs(kinds: &[OpKind]) -> (Gate, AsyncFileSystem) {
    let mem = MemFs::new(41);
    let gate = Gate::new();
    gate.open();
    let config = AsyncFsConfig {
        io_workers: 1,
        ..AsyncFsConfig::default()
    };
    let (g, io, kinds) = (gate.clone(), config.io.clone(), kinds.to_vec());
    let factory: BackendFactory = Arc::new(move |_| {
        Ok(Box::new(GatedIo::new(mem.backend_with(&io), g.clone(), &kinds)) as Box<dyn StorageIo>)
    });
    (gate, AsyncFileSystem::with_factory(&config, factory).unwrap())
}

/// 5 MiB (more than one TokioFile transfer) copied in with `tokio::io::copy` from a slice,
/// and out again into a Vec: the bytes on disk and the bytes read back are the ones written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_copy_in_and_out_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.bin");
    let fs = common::open_fs(&AsyncFsConfig::default()).unwrap();
    let file = Arc::new(fs.create(&path).await.unwrap());
    let data = pattern(5 << 20 | 123);
    let mut writer = TokioFile::new(Arc::clone(&file));
    let copied = tokio::io::copy(&mut &data[..], &mut writer).await.unwrap();
    writer.flush().await.unwrap();
    assert_eq!(copied, data.len() as u64);
    assert_eq!(writer.position(), data.len() as u64);
    file.sync_data().await.unwrap();
    assert!(
        std::fs::read(&path).unwrap() == data,
        "the file holds what was copied in"
    );

    let mut back = Vec::new();
    let mut reader = TokioFile::new(Arc::clone(&file));
    let n = tokio::io::copy(&mut reader, &mut back).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(back == data, "copied out as written");
}

/// `BufReader::lines` over a file, and seeks from the start, the cursor and the end.
#[tokio::test]
async fn bufreader_lines_and_seeks() {
    let dir = tempfile::tempdir().unwrap();
    let fs = common::open_fs(&AsyncFsConfig::default()).unwrap();
    let file = Arc::new(fs.create(dir.path().join("lines.txt")).await.unwrap());
    let mut w = TokioFile::new(Arc::clone(&file));
    for i in 0..1000 {
        w.write_all(format!("line {i}\n").as_bytes()).await.unwrap();
    }
    w.shutdown().await.unwrap();

    let mut lines = BufReader::new(TokioFile::new(Arc::clone(&file))).lines();
    let mut count = 0;
    while let Some(line) = lines.next_line().await.unwrap() {
        assert_eq!(line, format!("line {count}"));
        count += 1;
    }
    assert_eq!(count, 1000);

    let mut r = TokioFile::new(Arc::clone(&file));
    assert_eq!(
        r.seek(SeekFrom::End(-9)).await.unwrap(),
        file.size().await.unwrap() - 9
    );
    let mut tail = String::new();
    r.read_to_string(&mut tail).await.unwrap();
    assert_eq!(tail, "line 999\n");
    r.seek(SeekFrom::Start(7)).await.unwrap();
    r.seek(SeekFrom::Current(-7)).await.unwrap();
    let mut head = [0u8; 7];
    r.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"line 0\n");
    assert!(
        r.seek(SeekFrom::Current(-100)).await.is_err(),
        "a seek before 0 is refused"
    );
}

/// A `read` dropped while its read is in flight, then the file read again: the answer of the
/// first read is used (or dropped), never lost or read twice; the cursor stays consistent.
#[test]
fn a_read_dropped_mid_flight_leaves_the_cursor_consistent() {
    let (gate, fs) = gated_fs(&[OpKind::Read]);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let file = Arc::new(rt.block_on(fs.create("/f")).unwrap());
    rt.block_on(async {
        let mut w = TokioFile::new(Arc::clone(&file));
        w.write_all(b"abcdefgh").await.unwrap();
        w.flush().await.unwrap();
    });
    let mut r = TokioFile::new(Arc::clone(&file));
    gate.close();
    {
        let mut buf = [0u8; 4];
        let mut read = Box::pin(r.read(&mut buf));
        assert!(poll_once(&mut read).is_pending(), "the read is held at the gate");
    }
    gate.open();
    let mut rest = Vec::new();
    rt.block_on(r.read_to_end(&mut rest)).unwrap();
    assert_eq!(rest, b"abcdefgh");

    // A seek after a dropped read: the read's answer belongs to the old cursor and is dropped.
    let mut r = TokioFile::new(Arc::clone(&file));
    gate.close();
    {
        let mut buf = [0u8; 4];
        let mut read = Box::pin(r.read(&mut buf));
        assert!(poll_once(&mut read).is_pending());
    }
    gate.open();
    rt.block_on(async {
        r.seek(SeekFrom::Start(6)).await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"gh");
    });
}

/// `flush` and a seek from the end dropped while the write is in flight: the write still
/// lands, and the next flush and seek answer from it.
#[test]
fn flush_and_seek_dropped_mid_flight_are_finished_by_the_next_call() {
    let (gate, fs) = gated_fs(&[OpKind::Write]);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let file = Arc::new(rt.block_on(fs.create("/f")).unwrap());
    let mut w = TokioFile::new(Arc::clone(&file));
    gate.close();
    assert!(matches!(
        poll_once(&mut Box::pin(w.write(b"0123456789"))),
        Poll::Ready(Ok(10))
    ));
    {
        let mut flush = Box::pin(w.flush());
        assert!(
            poll_once(&mut flush).is_pending(),
            "the write is held at the gate"
        );
    }
    {
        let mut seek = Box::pin(w.seek(SeekFrom::End(-2)));
        assert!(poll_once(&mut seek).is_pending(), "the seek waits for the write");
    }
    gate.open();
    rt.block_on(async {
        // The dropped seek waited for the write before it began (tokio completes a seek in
        // progress first): nothing of it is left, the cursor is where the write left it.
        assert_eq!(w.seek(SeekFrom::Current(0)).await.unwrap(), 10);
        assert_eq!(w.seek(SeekFrom::End(-2)).await.unwrap(), 8);
        w.flush().await.unwrap();
        assert_eq!(file.size().await.unwrap(), 10);
    });
}

/// `Bytes` and `BytesMut` as owned buffers: written and read back, each coming back as it went.
#[tokio::test]
async fn bytes_and_bytes_mut_are_owned_buffers() {
    let (_gate, fs) = gated_fs(&[]);
    let file = fs.create("/b").await.unwrap();
    let (n, back) = file.write_at(Bytes::from_static(b"shared bytes"), 0).await;
    assert_eq!((n.unwrap(), &back[..]), (12, &b"shared bytes"[..]));
    let mut mine = BytesMut::with_capacity(64);
    mine.extend_from_slice(b"!!");
    let (n, _) = file.write_at(mine, 12).await;
    assert_eq!(n.unwrap(), 2);
    let (n, got) = file.read_at(BytesMut::zeroed(14), 0).await;
    assert_eq!((n.unwrap(), &got[..]), (14, &b"shared bytes!!"[..]));
}
