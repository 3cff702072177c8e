//! Every ```rust snippet of the repository's README.md and docs/*.md compiles: each is copied
//! verbatim into a function below (`rustfmt::skip` keeps it as written), and
//! `markdown_snippets_are_the_compiled_ones` checks that the documents' snippets and these copies
//! have not drifted apart (a new snippet in any of them fails the test until it is copied in).
//! (The crates' own READMEs are doctests of their crates.) Reads ../../README.md and
//! ../../docs/, so it is not packaged.
#![allow(clippy::unwrap_used, dead_code, unused_variables)] // compile-only copies of snippets

use storage_io::IoConfig;
use storage_io::bytes::Bytes;
use storage_io::scheduler::{AllocationMode, PageId, SchedulerConfig};

#[rustfmt::skip]
fn example_backend() -> storage_io::Result<()> {
// snippet
use storage_io::{IoConfig, OpenOptions, StorageIo};

// io_uring where the kernel allows it (else the thread pool, and the log says why);
// STORAGE_IO_BACKEND=sync|thread_pool|io_uring overrides.
let mut io = storage_io::open_backend(&IoConfig::default())?;
let fd = io.open_file("wal.log".as_ref(), &OpenOptions::create())?;
io.submit_append(fd, b"commit 42")?;          // copied; returns a token at once
io.submit_datasync(fd)?;                      // a barrier: covers the append above
let mut done = Vec::new();
io.wait_completions(&mut done, 2, None)?;     // or poll_completions, which never blocks
assert!(done.iter().all(|c| c.is_ok()));
// end
    Ok(())
}

#[rustfmt::skip]
async fn example_async_file() -> storage_io::Result<()> {
// snippet
let fs = storage_io::open_async_fs(&storage_io::AsyncFsConfig::default())?;
let log = fs.open_append("segment-0.log").await?;
let (at, _buf) = log.append(b"record".to_vec()).await; // the offset it landed at
log.sync_data().await?;
// end
    Ok(())
}

#[rustfmt::skip]
fn example_scheduler(page_image: Bytes) -> anyhow::Result<()> {
// snippet
let config = SchedulerConfig { allocation: AllocationMode::External, page_file: "heap.pages".into(), ..Default::default() };
let sched = storage_io::open_scheduler("db/pages", config, &IoConfig::default())?;
sched.schedule_write(PageId(42), page_image).recv()?; // any page id: the engine's free list chose it
// end
    Ok(())
}

/// The README's stand-in for a user's backend: here, an in-memory one.
struct MyBackend;

impl MyBackend {
    #[allow(clippy::new_ret_no_self)] // a stand-in: the snippet only needs `MyBackend::new()` to be a backend
    fn new() -> storage_io_testkit::memio::MemIo {
        storage_io_testkit::memio::MemFs::new(1).backend()
    }
}

#[rustfmt::skip]
fn example_conformance() {
// snippet
storage_io_testkit::conformance::run(|| Box::new(MyBackend::new()));
// end
}

#[rustfmt::skip]
fn example_custom_backend() -> storage_io::Result<()> {
// snippet
use std::{fs::File, io, path::Path};
use storage_io::{platform, BlockingBackend, BlockingIo, IoConfig, OpenOptions};

struct MyFiles; // your storage behind five blocking calls; the workers run them
impl BlockingBackend for MyFiles {
    type File = File;
    fn open(&self, path: &Path, o: &OpenOptions) -> io::Result<File> {
        std::fs::OpenOptions::new().read(o.read).write(o.write).create(o.create).truncate(o.truncate).open(path)
    }
    fn read_at(&self, f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> { platform::read_at(f, buf, at) }
    fn write_at(&self, f: &File, data: &[u8], at: u64) -> io::Result<usize> { platform::write_at(f, data, at) }
    fn datasync(&self, f: &File) -> io::Result<()> { platform::datasync(f) }
    fn len(&self, f: &File) -> io::Result<u64> { Ok(f.metadata()?.len()) }
}
let io = BlockingIo::with_backend(MyFiles, &IoConfig::default())?; // a full StorageIo
// end
    Ok(())
}

/// The ```rust blocks of `markdown`, each as its lines.
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```rust") => current = Some(Vec::new()),
            (Some(block), l) if l.starts_with("```") => {
                blocks.push(block.join("\n"));
                current = None;
            }
            (Some(block), _) => block.push(line),
            (None, _) => {}
        }
    }
    blocks
}

/// The `// snippet` … `// end` sections of this file.
fn copies() -> Vec<String> {
    let me = include_str!("doc_snippets.rs");
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in me.lines() {
        match (&mut current, line) {
            (None, "// snippet") => current = Some(Vec::new()),
            (Some(block), "// end") => {
                out.push(block.join("\n"));
                current = None;
            }
            (Some(block), _) => block.push(line),
            (None, _) => {}
        }
    }
    out
}

/// README.md and every docs/*.md, by path relative to the repository.
fn documents() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    std::iter::once(root.join("README.md"))
        .chain(docs)
        .map(|p| {
            let name = p.strip_prefix(&root).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn markdown_snippets_are_the_compiled_ones() {
    let compiled = copies();
    let mut found = 0;
    for (name, text) in documents() {
        let blocks = rust_blocks(&text);
        if name == "README.md" {
            assert!(
                !blocks.is_empty(),
                "README.md has no rust snippets: the extraction is broken"
            );
        }
        for snippet in &blocks {
            assert!(
                compiled.contains(snippet),
                "this {name} snippet is not compiled by tests/doc_snippets.rs (copy it in, verbatim):\n{snippet}"
            );
        }
        found += blocks.len();
    }
    assert_eq!(
        found,
        compiled.len(),
        "a compiled copy no longer in README.md or docs/*.md: remove it"
    );
}
