//! Owned I/O buffers: [`AlignedBuf`] for direct I/O, [`IoBuf`] for anything a backend accepts,
//! and a bounded [`BufferPool`] with size classes.
//!
//! An [`AlignedBuf`] is allocated zeroed and freed with the very [`Layout`] it was allocated with,
//! so every byte up to its capacity is always initialised and its length can move freely within
//! the capacity. Buffers taken from a [`BufferPool`] go back to their pool when dropped.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::error::{InvalidArgument, Result, StorageIoError};

/// The default alignment for direct I/O: the page size and the logical block size of most devices.
pub const DEFAULT_ALIGNMENT: usize = 4096;

mod aligned;
mod fixed;
mod pool;
#[cfg(test)]
mod tests;

pub use aligned::AlignedBuf;
use aligned::{Home, layout_for};
use fixed::FixedArea;
pub use fixed::FixedBufs;
pub use pool::{BufferPool, BufferPoolConfig};
use pool::{PoolClass, RawBuf};

/// An owned buffer that a backend accepts for reads and zero-copy writes and hands back in the
/// completion.
///
/// For a read, the transfer length is the buffer's current `len()`; on completion the buffer is
/// truncated to the bytes actually read (shorter only at end of file).
#[derive(Debug, PartialEq)]
pub enum IoBuf {
    /// Aligned memory, required for direct I/O.
    Aligned(AlignedBuf),
    /// Plain heap memory (fine for buffered I/O).
    Vec(Vec<u8>),
}

impl IoBuf {
    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Aligned(b) => b,
            IoBuf::Vec(v) => v,
        }
    }

    /// The bytes in use, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Aligned(b) => b,
            IoBuf::Vec(v) => v,
        }
    }

    /// The number of bytes in use.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the buffer to `len` bytes; does nothing if it is already shorter.
    pub fn truncate(&mut self, len: usize) {
        match self {
            IoBuf::Aligned(b) => b.truncate(len),
            IoBuf::Vec(v) => v.truncate(len),
        }
    }

    /// The address of the first byte.
    pub fn addr(&self) -> usize {
        self.as_slice().as_ptr() as usize
    }

    /// True when the buffer's address is a multiple of `align`.
    pub fn is_aligned_to(&self, align: usize) -> bool {
        align <= 1 || self.addr().is_multiple_of(align)
    }

    /// Copies the bytes in use into a `Vec` (or returns the `Vec` itself without copying).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            IoBuf::Aligned(b) => b.to_vec(),
            IoBuf::Vec(v) => v,
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl From<Vec<u8>> for IoBuf {
    fn from(v: Vec<u8>) -> Self {
        IoBuf::Vec(v)
    }
}

impl From<AlignedBuf> for IoBuf {
    fn from(b: AlignedBuf) -> Self {
        IoBuf::Aligned(b)
    }
}
