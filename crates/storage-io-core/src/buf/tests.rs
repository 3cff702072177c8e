//! Unit tests of the buffers and pools.

use super::*;

#[test]
fn aligned_buf_is_aligned_zeroed_and_resizable_within_capacity() {
    for align in [512, 4096, 65536] {
        let mut b = AlignedBuf::zeroed(3 * align, align).unwrap();
        assert_eq!(b.as_ptr() as usize % align, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[0] = 7;
        b.truncate(1);
        assert_eq!(&b[..], &[7]);
        b.set_len(3 * align).unwrap();
        assert_eq!(b[0], 7);
        assert!(b.set_len(3 * align + 1).is_err());
    }
}

#[test]
fn bad_alignment_is_an_error_not_a_panic() {
    assert!(matches!(
        AlignedBuf::zeroed(4096, 3000),
        Err(StorageIoError::InvalidArgument(_))
    ));
    let empty = AlignedBuf::zeroed(0, 4096).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn extend_stops_at_capacity() {
    let mut b = AlignedBuf::zeroed(8, 8).unwrap();
    b.clear();
    b.extend_from_slice(b"abcd").unwrap();
    b.extend_from_slice(b"efgh").unwrap();
    assert!(b.extend_from_slice(b"i").is_err());
    assert_eq!(&b[..], b"abcdefgh");
}

#[test]
fn pool_reuses_memory_and_keeps_capacity() {
    let pool = BufferPool::new(BufferPoolConfig {
        classes: vec![(4096, 2), (65536, 1)],
        align: 4096,
    })
    .unwrap();
    let a = pool.acquire(10).unwrap();
    let addr = a.as_ptr() as usize;
    assert_eq!((a.len(), a.capacity()), (10, 4096));
    drop(a);
    let b = pool.acquire(4000).unwrap();
    assert_eq!(b.as_ptr() as usize, addr, "a freed buffer is reused");
    assert_eq!(b.capacity(), 4096);
    let big = pool.acquire(5000).unwrap();
    assert_eq!(big.capacity(), 65536);
}

#[test]
fn pool_is_bounded_per_class_and_says_so() {
    let pool = BufferPool::new(BufferPoolConfig {
        classes: vec![(4096, 2)],
        align: 4096,
    })
    .unwrap();
    let a = pool.acquire(1).unwrap();
    let _b = pool.acquire(1).unwrap();
    let err = pool.acquire(1).unwrap_err();
    assert_eq!(
        err,
        StorageIoError::BufferExhausted {
            size_bytes: 4096,
            limit: 2
        }
    );
    drop(a);
    assert!(pool.acquire(1).is_ok());
    assert!(matches!(
        pool.acquire(4097),
        Err(StorageIoError::InvalidArgument(InvalidArgument::TooLarge { .. }))
    ));
}

#[test]
fn buffers_outliving_the_pool_are_freed_safely() {
    let pool = BufferPool::new(BufferPoolConfig::default()).unwrap();
    pool.prefill();
    let buf = pool.acquire(4096).unwrap();
    drop(pool);
    assert_eq!(buf.len(), 4096);
    drop(buf);
}

#[test]
fn pool_is_shared_across_threads() {
    let pool = BufferPool::new(BufferPoolConfig {
        classes: vec![(4096, 8)],
        align: 4096,
    })
    .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let pool = pool.clone();
            s.spawn(move || {
                for _ in 0..1000 {
                    let mut b = pool.acquire(4096).unwrap();
                    b[0] = 1;
                }
            });
        }
    });
    assert_eq!(pool.outstanding(4096), Some(0));
}

#[test]
fn fixed_bufs_lend_once_and_come_back_on_drop() {
    let fixed = FixedBufs::new(3, 8192, 4096).unwrap();
    let regions: Vec<_> = fixed.regions().collect();
    assert_eq!(regions.len(), 3);
    let mut lent: Vec<AlignedBuf> = (0..3).map(|_| fixed.take(8192).unwrap()).collect();
    assert!(fixed.take(1).is_none());
    assert!(fixed.take(8193).is_none(), "larger than a buffer");
    let mut seen: Vec<u16> = lent.iter().map(|b| fixed.index_of(b).unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2]);
    for b in &mut lent {
        let i = usize::from(fixed.index_of(b).unwrap());
        assert_eq!(b.as_ptr() as usize, regions[i].0 as usize);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        b[0] = i as u8 + 1;
    }
    let other = FixedBufs::new(1, 4096, 4096).unwrap();
    assert_eq!(other.index_of(&lent[0]), None, "another area's buffer");
    assert_eq!(fixed.index_of(&AlignedBuf::zeroed(8192, 4096).unwrap()), None);
    assert_eq!(fixed.index_of(&lent[0].clone()), None, "a clone is a plain copy");
    lent.pop();
    assert_eq!(fixed.available(), 1);
    let again = fixed.take(10).unwrap();
    assert_eq!(again.len(), 10);
    assert!(again.is_pooled());
}

#[test]
fn fixed_bufs_outlive_their_area_handle() {
    let fixed = FixedBufs::new(2, 4096, 4096).unwrap();
    let mut buf = fixed.take(4096).unwrap();
    drop(fixed);
    buf[4095] = 9;
    assert_eq!(buf[4095], 9);
    drop(buf);
}

#[test]
fn fixed_bufs_refuse_bad_shapes() {
    for (count, size, align) in [
        (0, 4096, 4096),
        (1, 0, 4096),
        (1, 4096, 3000),
        (1, 100, 4096),
        (70_000, 4096, 4096),
    ] {
        assert!(
            matches!(
                FixedBufs::new(count, size, align),
                Err(StorageIoError::InvalidArgument(_))
            ),
            "{count} × {size} @ {align}"
        );
    }
}

#[test]
fn iobuf_reports_alignment_and_length() {
    let a: IoBuf = AlignedBuf::zeroed(4096, 4096).unwrap().into();
    assert!(a.is_aligned_to(4096));
    let mut v: IoBuf = vec![1u8; 10].into();
    v.truncate(3);
    assert_eq!(v.len(), 3);
    assert_eq!(v.into_vec(), vec![1, 1, 1]);
}
