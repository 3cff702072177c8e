//! A fixed-capacity table of registered files with generation-checked handles.

use crate::error::{InvalidArgument, Result, StorageIoError};
use crate::op::IoFd;

/// Slots for registered files. Capacity is fixed at construction (a limit with a name, not a
/// growing map), lookups are an index plus a generation compare, and a freed slot gets a new
/// generation so stale [`IoFd`]s are refused with `BadFd`.
#[derive(Debug)]
pub struct FdTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> FdTable<T> {
    /// A table that holds at most `capacity` files, capped at
    /// [`MAX_FILES_LIMIT`](crate::MAX_FILES_LIMIT): every slot is allocated here, and a config
    /// that skipped `IoConfig::validate` must not abort the process.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.min(crate::MAX_FILES_LIMIT);
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || Slot {
            generation: 0,
            value: None,
        });
        FdTable {
            slots,
            free: (0..capacity as u32).rev().collect(),
        }
    }

    /// How many files the table can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many files are registered.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True when no file is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `value` and returns its handle; fails when every slot is taken.
    pub fn insert(&mut self, value: T) -> Result<IoFd> {
        let Some(slot) = self.free.pop() else {
            return Err(StorageIoError::InvalidArgument(InvalidArgument::Message(
                format!(
                    "fd table full: {} files registered; deregister one or raise max_files",
                    self.slots.len()
                ),
            )));
        };
        let entry = &mut self.slots[slot as usize];
        entry.value = Some(value);
        Ok(IoFd {
            slot,
            generation: entry.generation,
        })
    }

    /// The value behind `fd`, or `BadFd`.
    pub fn get(&self, fd: IoFd) -> Result<&T> {
        match self.slots.get(fd.slot as usize) {
            Some(Slot {
                generation,
                value: Some(v),
            }) if *generation == fd.generation => Ok(v),
            _ => Err(StorageIoError::BadFd { fd }),
        }
    }

    /// The value behind `fd`, mutably, or `BadFd`.
    pub fn get_mut(&mut self, fd: IoFd) -> Result<&mut T> {
        match self.slots.get_mut(fd.slot as usize) {
            Some(Slot {
                generation,
                value: Some(v),
            }) if *generation == fd.generation => Ok(v),
            _ => Err(StorageIoError::BadFd { fd }),
        }
    }

    /// Removes and returns the value behind `fd`; the slot's next handle has a new generation.
    pub fn remove(&mut self, fd: IoFd) -> Result<T> {
        self.get(fd)?;
        let entry = &mut self.slots[fd.slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(fd.slot);
        entry.value.take().ok_or(StorageIoError::BadFd { fd })
    }

    /// Every registered handle with its value.
    pub fn iter(&self) -> impl Iterator<Item = (IoFd, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| {
                (
                    IoFd {
                        slot: i as u32,
                        generation: s.generation,
                    },
                    v,
                )
            })
        })
    }

    /// Every registered value, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.slots.iter_mut().filter_map(|s| s.value.as_mut())
    }

    /// Removes every entry (for teardown).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(v) = s.value.take() {
                s.generation = s.generation.wrapping_add(1);
                self.free.push(i as u32);
                out.push(v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_are_refused_after_reuse() {
        let mut t = FdTable::with_capacity(1);
        let a = t.insert("a").unwrap();
        assert_eq!(*t.get(a).unwrap(), "a");
        assert!(t.insert("x").is_err(), "capacity is a hard limit");
        assert_eq!(t.remove(a).unwrap(), "a");
        let b = t.insert("b").unwrap();
        assert_eq!(a.slot, b.slot);
        assert_eq!(t.get(a).unwrap_err(), StorageIoError::BadFd { fd: a });
        assert_eq!(*t.get(b).unwrap(), "b");
        assert!(t.remove(a).is_err());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn out_of_range_handles_are_bad_fd() {
        let t: FdTable<u8> = FdTable::with_capacity(2);
        let fd = IoFd {
            slot: 99,
            generation: 0,
        };
        assert_eq!(t.get(fd).unwrap_err(), StorageIoError::BadFd { fd });
    }
}
