//! The futures the async file API answers with ([`BufOp`], [`Op`]), and [`block_on`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use storage_io_core::{IoBuf, Result};

use crate::slot::Waiting;
use crate::{OwnedBuf, worker_gone};

/// Runs a future to completion on the calling thread, parking it between polls: a way for
/// synchronous code (a CLI, a benchmark, a test) to use the async file API without a runtime.
/// It is not an executor for tasks; inside async code, just `.await`.
///
/// ```no_run
/// # let factory: storage_io_fs::BackendFactory = std::sync::Arc::new(|_| {
/// #     Ok(Box::new(storage_io_sync::SyncStorageIo::new(&Default::default())?) as Box<dyn storage_io_fs::StorageIo>)
/// # });
/// let fs = storage_io_fs::AsyncFileSystem::with_factory(&storage_io_fs::AsyncFsConfig::default(), factory)?;
/// let file = storage_io_fs::block_on(fs.open("data.bin"))?;
/// let (n, buf) = storage_io_fs::block_on(file.read_at(vec![0u8; 4096], 0));
/// # Ok::<(), storage_io_fs::StorageIoError>(())
/// ```
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    // Ops called inside take the worker path: a ring on this thread would not be drained
    // while it blocks here.
    #[cfg(caller_rings)]
    let _scope = crate::local::BlockingScope::enter();
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // A wake that came before this park makes it return at once (the token is kept).
        std::thread::park();
    }
}

/// The answer to an operation that moved a buffer in: the result and the buffer.
///
/// The request was sent when the method was called; this future only waits for the answer.
/// Dropping it cancels the operation if its worker has not started it; otherwise the operation
/// runs to completion and the buffer is dropped once the backend has given it back.
#[must_use = "the operation was sent; await the future to get the result and the buffer back"]
pub struct BufOp<T, B> {
    pub(crate) waiting: Waiting<(Result<T>, IoBuf)>,
    /// The caller's buffer, kept here while an aligned copy of it is written; it comes back
    /// instead of the copy.
    pub(crate) staged: Option<IoBuf>,
    pub(crate) buf: PhantomData<fn() -> B>,
}

impl<T, B> BufOp<T, B> {
    /// The future of an op whose request went out with `waiting`'s other half, on the caller's
    /// own buffer (nothing staged).
    pub(crate) fn sent(waiting: Waiting<(Result<T>, IoBuf)>) -> Self {
        BufOp {
            waiting,
            staged: None,
            buf: PhantomData,
        }
    }
}

impl<T, B: OwnedBuf> Future for BufOp<T, B> {
    type Output = (Result<T>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = std::task::ready!(Pin::new(&mut self.waiting).poll(cx));
        let staged = self.staged.take();
        Poll::Ready(match (answer, staged) {
            (Some((result, _copy)), Some(original)) => (result, B::from_io_buf(original)),
            (Some((result, buf)), None) => (result, B::from_io_buf(buf)),
            (None, Some(original)) => (Err(worker_gone()), B::from_io_buf(original)),
            (None, None) => (Err(worker_gone()), B::lost()),
        })
    }
}

/// The answer to an operation without a buffer (sync, size, allocate, close).
///
/// A sync is started when it is called as far as ordering goes (it covers the writes called
/// before it); its system call starts once those have completed. Size, allocate and close wait
/// for the writes called before them in the same way.
#[must_use = "await the future to learn the result; a sync not awaited may not run"]
pub struct Op<T> {
    inner: Pin<Box<dyn Future<Output = Result<T>> + Send>>,
}

impl<T> Op<T> {
    pub(crate) fn boxed(fut: impl Future<Output = Result<T>> + Send + 'static) -> Self {
        Op { inner: Box::pin(fut) }
    }
}

impl<T> Future for Op<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> std::fmt::Debug for Op<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").finish_non_exhaustive()
    }
}
