//! Entry point of the `sched_alloc_image` cargo-fuzz target in `fuzz/`, and of the test that
//! replays its corpus. Not part of the API.

use crate::alloc::Allocator;

/// Decodes arbitrary bytes as an allocation image. Panics if one decodes yet breaks an
/// invariant: its free ids lie below `next`, it re-encodes to exactly the bytes it came from
/// (trailing bytes aside), and what it says is allocated agrees with its free list.
pub fn check_alloc_image(data: &[u8]) {
    let Ok((alloc, page_size)) = Allocator::decode(data) else {
        return;
    };
    let again = alloc.encode(page_size as usize);
    assert_eq!(
        &data[..again.len()],
        &again[..],
        "a decoded image does not re-encode to itself"
    );
    let (next, free) = alloc.parts();
    assert!(free.iter().all(|&id| id < next), "a free id at or past next");
    assert_eq!(alloc.allocated_count(), next - free.len() as u64);
    if let Some(&id) = free.first() {
        assert!(!alloc.is_allocated(crate::PageId(id)));
    }
}
