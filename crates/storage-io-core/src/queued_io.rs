//! [`QueuedIo`]: the [`StorageIo`] implementation of every queued backend, over an
//! [`OpTable`] and the backend's [`OpDriver`].

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use crate::backend::OpenedFd;
use crate::backend::StorageIo;
use crate::buf::{AlignedBuf, IoBuf};
use crate::direct::OpenOptions;
use crate::error::{Result, SubmitError};
use crate::namespace::Namespace;
use crate::nowait::NowaitRead;
use crate::op::{Capabilities, IoCompletion, IoFd, IoToken, OpKind};
use crate::queued::{OpDriver, OpPayload, OpTable, registered_index};
use crate::stats::IoStats;
use crate::wake::WaitWaker;

/// A queued backend: the op table and the driver that runs its ops. It keeps the whole
/// [`StorageIo`] contract; the driver only starts ops and hands completions back.
///
/// Drop waits for every op ([`OpDriver::shutdown`]) before the table's memory goes; the driver
/// drops before the table, so a kernel ring closes before the buffers it was given.
pub struct QueuedIo<D: OpDriver> {
    driver: D,
    ops: OpTable<D::File>,
}

impl<D: OpDriver> QueuedIo<D> {
    /// A backend of `driver` over `ops`.
    pub fn new(driver: D, ops: OpTable<D::File>) -> Self {
        QueuedIo { driver, ops }
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The op table.
    pub fn ops(&self) -> &OpTable<D::File> {
        &self.ops
    }

    /// The driver and the op table, for a backend's own calls on its driver.
    pub fn parts_mut(&mut self) -> (&mut D, &mut OpTable<D::File>) {
        (&mut self.driver, &mut self.ops)
    }

    /// A copied write (`offset` `None`: an append), staged in registered or heap memory.
    /// Registers an adopted or opened handle with the table and the driver.
    fn insert(&mut self, handle: D::File) -> Result<IoFd> {
        let fd = self.ops.insert(handle)?;
        if let Err(e) = self.driver.file_registered(fd, self.ops.file(fd)?) {
            self.ops.remove(fd)?;
            return Err(e);
        }
        Ok(fd)
    }

    fn copied_write(&mut self, fd: IoFd, data: &[u8], offset: Option<u64>) -> Result<IoToken> {
        let plan = self.ops.plan(fd, data, offset)?;
        let payload = self.ops.stage_copy(self.driver.registered_bufs(), data)?;
        let token = self
            .ops
            .accept(
                &mut self.driver,
                (fd, plan.op, plan.offset, data.len()),
                0,
                payload,
            )
            .map_err(|(e, _)| e)?;
        self.ops.commit_cursor(fd, &plan);
        Ok(token)
    }

    fn sync(&mut self, fd: IoFd, op: OpKind) -> Result<IoToken> {
        self.ops.admit()?;
        self.ops
            .accept(&mut self.driver, (fd, op, 0, 0), 0, OpPayload::Sync)
            .map_err(|(e, _)| e)
    }
}

/// Real files: the `std::fs` defaults.
impl<D: OpDriver> Namespace for QueuedIo<D> {}

impl<D: OpDriver> StorageIo for QueuedIo<D> {
    fn capabilities(&self) -> Capabilities {
        self.driver.capabilities(self.ops.config())
    }

    fn register_fd(&mut self, file: File) -> Result<IoFd> {
        let handle = self.driver.adopt(file)?;
        self.insert(handle)
    }

    fn open_file(&mut self, path: &Path, options: &OpenOptions) -> Result<IoFd> {
        self.open_file_with_mode(path, options).map(|o| o.fd)
    }

    fn open_file_with_mode(&mut self, path: &Path, options: &OpenOptions) -> Result<OpenedFd> {
        let opened = self.driver.open(path, options)?;
        Ok(OpenedFd {
            fd: self.insert(opened.handle)?,
            mode: opened.mode,
            file: opened.file,
        })
    }

    fn deregister_fd(&mut self, fd: IoFd) -> Result<()> {
        while self.ops.ops_in_flight(fd)? > 0 {
            if !self.driver.wait_one(&mut self.ops)? {
                break;
            }
        }
        self.driver.file_deregistered(fd)?;
        // Every op of this fd is back: the table holds the last handle, and the file closes.
        let handle = self.ops.remove(fd)?;
        self.driver.close(handle)
    }

    fn file_len(&mut self, fd: IoFd) -> Result<u64> {
        self.ops.file_len(fd)
    }

    /// Lends a free registered buffer when the driver has one `len` fits (see
    /// [`StorageIo::alloc_buf`]); else a fresh aligned allocation.
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf> {
        match self.driver.registered_bufs().and_then(|f| f.take(len)) {
            Some(buf) => Ok(buf),
            None => AlignedBuf::zeroed(len, crate::DEFAULT_ALIGNMENT),
        }
    }

    fn submit_read(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        if let Err(e) = self.ops.check_read(fd, &buf, offset) {
            return Err(SubmitError::new(e, buf));
        }
        let len = buf.len();
        let mut buf = buf;
        let done = match self.ops.try_nowait(fd, &mut buf, offset) {
            Some((NowaitRead::Done(n), started)) => {
                return Ok(self.ops.complete_at_submit(fd, buf, offset, n, started));
            }
            Some((NowaitRead::Partial(n), _)) => n,
            _ => 0,
        };
        let registered = self.driver.registered_bufs();
        let in_place = registered_index(registered, &buf).is_some();
        // A read continued after a partial cache hit goes into the caller's buffer (its first
        // bytes are filled already), not through staging.
        let staging = match registered {
            Some(f) if !in_place && done == 0 => f.take(len),
            _ => None,
        };
        let payload = match staging {
            Some(staging) => OpPayload::ReadStaged { staging, user: buf },
            None => OpPayload::Read(buf),
        };
        let token = self
            .ops
            .accept(&mut self.driver, (fd, OpKind::Read, offset, len), done, payload)
            // A refused staged read's staging buffer goes back to its free list as it drops.
            .map_err(|(e, p)| SubmitError::new(e, p.into_user_buf()))?;
        self.ops.count_in_place(in_place);
        Ok(token)
    }

    fn submit_write(&mut self, fd: IoFd, data: &[u8], offset: u64) -> Result<IoToken> {
        self.copied_write(fd, data, Some(offset))
    }

    fn submit_write_buf(&mut self, fd: IoFd, buf: IoBuf, offset: u64) -> Result<IoToken, SubmitError<IoBuf>> {
        let plan = match self.ops.plan(fd, &buf, Some(offset)) {
            Ok(x) => x,
            Err(e) => return Err(SubmitError::new(e, buf)),
        };
        let len = buf.len();
        let in_place = registered_index(self.driver.registered_bufs(), &buf).is_some();
        let token = self
            .ops
            .accept(
                &mut self.driver,
                (fd, plan.op, plan.offset, len),
                0,
                OpPayload::WriteOwned(buf),
            )
            .map_err(|(e, p)| SubmitError::new(e, p.into_user_buf()))?;
        self.ops.commit_cursor(fd, &plan);
        self.ops.count_in_place(in_place);
        Ok(token)
    }

    /// Writes from `data` in place where the file's direct I/O takes its address; else from
    /// an aligned copy.
    fn submit_write_bytes(&mut self, fd: IoFd, data: bytes::Bytes, offset: u64) -> Result<IoToken> {
        if !self.ops.address_fits(fd, data.as_ptr() as usize)? {
            let copy = AlignedBuf::from_slice(&data, crate::DEFAULT_ALIGNMENT)?;
            return self
                .submit_write_buf(fd, copy.into(), offset)
                .map_err(|e| e.error);
        }
        let plan = self.ops.plan(fd, &data, Some(offset))?;
        let len = data.len();
        let token = self
            .ops
            .accept(
                &mut self.driver,
                (fd, plan.op, plan.offset, len),
                0,
                OpPayload::WriteShared(data),
            )
            .map_err(|(e, _)| e)?;
        self.ops.commit_cursor(fd, &plan);
        Ok(token)
    }

    fn submit_append(&mut self, fd: IoFd, data: &[u8]) -> Result<IoToken> {
        self.copied_write(fd, data, None)
    }

    fn submit_datasync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync(fd, OpKind::Datasync)
    }

    fn submit_fsync(&mut self, fd: IoFd) -> Result<IoToken> {
        self.sync(fd, OpKind::Fsync)
    }

    fn flush(&mut self) -> Result<usize> {
        self.driver.flush(&mut self.ops)
    }

    fn poll_completions(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.driver.poll(&mut self.ops);
        self.ops.deliver(out)
    }

    fn wait_completions(
        &mut self,
        out: &mut Vec<IoCompletion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        self.driver.wait(&mut self.ops, min, timeout)?;
        Ok(self.ops.deliver(out))
    }

    fn wait_waker(&mut self) -> Option<WaitWaker> {
        self.driver.waker()
    }

    fn pending_count(&self) -> usize {
        self.ops.pending()
    }

    fn stats(&self) -> &IoStats {
        self.ops.stats()
    }
}

impl<D: OpDriver> Drop for QueuedIo<D> {
    fn drop(&mut self) {
        self.driver.shutdown(&mut self.ops);
    }
}

/// Implements [`Namespace`] for a struct by forwarding every method to one of its fields: how a
/// wrapper of a backend (the testkit's `FaultyIo`, `GatedIo`) keeps the inner backend's names.
///
/// ```
/// use storage_io_core::StorageIo;
///
/// struct Wrapper<B>(B);
/// storage_io_core::forward_namespace!([B: StorageIo] Wrapper<B> => 0);
/// ```
#[macro_export]
macro_rules! forward_namespace {
    ([$($generics:tt)*] $ty:ty => $field:tt) => {
        impl<$($generics)*> $crate::Namespace for $ty {
            fn sync_dir(&mut self, dir: &::std::path::Path) -> $crate::Result<()> {
                self.$field.sync_dir(dir)
            }
            fn remove_file(&mut self, path: &::std::path::Path) -> $crate::Result<()> {
                self.$field.remove_file(path)
            }
            fn rename(&mut self, from: &::std::path::Path, to: &::std::path::Path) -> $crate::Result<()> {
                self.$field.rename(from, to)
            }
            fn metadata(&mut self, path: &::std::path::Path) -> $crate::Result<$crate::FileMetadata> {
                self.$field.metadata(path)
            }
            fn list_dir(&mut self, dir: &::std::path::Path) -> $crate::Result<Vec<::std::path::PathBuf>> {
                self.$field.list_dir(dir)
            }
            fn create_dir_all(&mut self, dir: &::std::path::Path) -> $crate::Result<()> {
                self.$field.create_dir_all(dir)
            }
            fn lock_dir(&mut self, dir: &::std::path::Path) -> $crate::Result<$crate::DirLock> {
                self.$field.lock_dir(dir)
            }
        }
    };
    ($ty:ty => $field:tt) => {
        $crate::forward_namespace!([] $ty => $field);
    };
}

/// Implements [`StorageIo`] and [`Namespace`] for a struct by forwarding every method — provided ones included,
/// so none silently falls back to its default — to one of its fields: how a backend type of
/// its own (`ThreadPoolStorageIo`, `UringStorageIo`) wraps a [`QueuedIo`].
///
/// ```
/// use storage_io_core::StorageIo;
///
/// struct Named(Box<dyn StorageIo>);
/// storage_io_core::forward_storage_io!(Named => 0);
///
/// struct Generic<T>(T);
/// storage_io_core::forward_storage_io!([T: StorageIo] Generic<T> => 0);
/// ```
#[macro_export]
macro_rules! forward_storage_io {
    ([$($generics:tt)*] $ty:ty => $field:tt) => {
        $crate::forward_namespace!([$($generics)*] $ty => $field);
        impl<$($generics)*> $crate::StorageIo for $ty {
            fn capabilities(&self) -> $crate::Capabilities {
                self.$field.capabilities()
            }
            fn name(&self) -> &'static str {
                self.$field.name()
            }
            fn register_fd(&mut self, file: ::std::fs::File) -> $crate::Result<$crate::IoFd> {
                self.$field.register_fd(file)
            }
            fn deregister_fd(&mut self, fd: $crate::IoFd) -> $crate::Result<()> {
                self.$field.deregister_fd(fd)
            }
            fn open_file(
                &mut self,
                path: &::std::path::Path,
                options: &$crate::OpenOptions,
            ) -> $crate::Result<$crate::IoFd> {
                self.$field.open_file(path, options)
            }
            fn open_file_with_mode(
                &mut self,
                path: &::std::path::Path,
                options: &$crate::OpenOptions,
            ) -> $crate::Result<$crate::OpenedFd> {
                self.$field.open_file_with_mode(path, options)
            }
            fn file_len(&mut self, fd: $crate::IoFd) -> $crate::Result<u64> {
                self.$field.file_len(fd)
            }
            fn alloc_buf(&mut self, len: usize) -> $crate::Result<$crate::AlignedBuf> {
                self.$field.alloc_buf(len)
            }
            fn submit_read(
                &mut self,
                fd: $crate::IoFd,
                buf: $crate::IoBuf,
                offset: u64,
            ) -> $crate::Result<$crate::IoToken, $crate::SubmitError<$crate::IoBuf>> {
                self.$field.submit_read(fd, buf, offset)
            }
            fn submit_write(
                &mut self,
                fd: $crate::IoFd,
                data: &[u8],
                offset: u64,
            ) -> $crate::Result<$crate::IoToken> {
                self.$field.submit_write(fd, data, offset)
            }
            fn submit_write_buf(
                &mut self,
                fd: $crate::IoFd,
                buf: $crate::IoBuf,
                offset: u64,
            ) -> $crate::Result<$crate::IoToken, $crate::SubmitError<$crate::IoBuf>> {
                self.$field.submit_write_buf(fd, buf, offset)
            }
            fn submit_write_bytes(
                &mut self,
                fd: $crate::IoFd,
                data: $crate::bytes::Bytes,
                offset: u64,
            ) -> $crate::Result<$crate::IoToken> {
                self.$field.submit_write_bytes(fd, data, offset)
            }
            fn submit_append(&mut self, fd: $crate::IoFd, data: &[u8]) -> $crate::Result<$crate::IoToken> {
                self.$field.submit_append(fd, data)
            }
            fn submit_datasync(&mut self, fd: $crate::IoFd) -> $crate::Result<$crate::IoToken> {
                self.$field.submit_datasync(fd)
            }
            fn submit_fsync(&mut self, fd: $crate::IoFd) -> $crate::Result<$crate::IoToken> {
                self.$field.submit_fsync(fd)
            }
            fn flush(&mut self) -> $crate::Result<usize> {
                self.$field.flush()
            }
            fn poll_completions(&mut self, out: &mut Vec<$crate::IoCompletion>) -> usize {
                self.$field.poll_completions(out)
            }
            fn wait_completions(
                &mut self,
                out: &mut Vec<$crate::IoCompletion>,
                min: usize,
                timeout: Option<::std::time::Duration>,
            ) -> $crate::Result<usize> {
                self.$field.wait_completions(out, min, timeout)
            }
            fn wait_waker(&mut self) -> Option<$crate::WaitWaker> {
                self.$field.wait_waker()
            }
            fn pending_count(&self) -> usize {
                self.$field.pending_count()
            }
            fn stats(&self) -> &$crate::IoStats {
                self.$field.stats()
            }
        }
    };
    ($ty:ty => $field:tt) => {
        $crate::forward_storage_io!([] $ty => $field);
    };
}
