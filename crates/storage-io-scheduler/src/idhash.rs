//! A fast hasher for the worker's maps, whose keys are single `u64`s (op ids, tokens, page
//! ids). The std default (SipHash) is built to resist hash flooding and costs several times as
//! much per lookup; a worker does about five lookups per page read, on the path every answer
//! waits on. Page ids come from callers, so the hash still mixes every input bit into every
//! output bit (a folded 64 × 64 → 128-bit multiply): keys with a power-of-two stride, common
//! for extents, spread over the table instead of sharing a few buckets.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by one integer, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hashes the integers written to it with a folded multiply.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// An odd constant with well-spread bits (2^64 / φ).
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Keys here are integers; other input still hashes correctly, eight bytes at a time.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * u128::from(MUL);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    fn hash(n: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(n)
    }

    #[test]
    fn strided_keys_spread_over_low_and_high_bits() {
        // hashbrown picks the bucket from the low bits and a tag from the top 7 bits: both
        // must vary for keys a power of two apart.
        for stride in [1u64, 8, 1024, 1 << 20] {
            let keys: Vec<u64> = (0..4096).map(|i| i * stride).collect();
            let low: HashSet<u64> = keys.iter().map(|&k| hash(k) & 0xfff).collect();
            let top: HashSet<u64> = keys.iter().map(|&k| hash(k) >> 57).collect();
            assert!(
                low.len() > 2000,
                "stride {stride}: {} distinct low buckets",
                low.len()
            );
            assert_eq!(top.len(), 128, "stride {stride}: top-7-bit tags not all used");
        }
    }

    #[test]
    fn maps_work_with_it() {
        let mut map: IdMap<u64, u64> = IdMap::default();
        for k in 0..10_000u64 {
            map.insert(k << 12, k);
        }
        assert!((0..10_000u64).all(|k| map.get(&(k << 12)) == Some(&k)));
        assert_eq!(map.len(), 10_000);
    }
}
