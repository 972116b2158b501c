//! A fast, deterministic hasher for the exact-lookup side tables (keys are
//! lock ranges and ids the process chose or the server handed out, so there
//! is no adversary to resist): the add-multiply hash of rustc-hash 2 (Fx),
//! with its final rotation. SipHash, the std default, costs more than the
//! rest of a lookup.
//!
//! The rotation matters: the multiply mixes each word upward only, while
//! hashbrown takes the bucket from the low bits. Without it, ranges aligned
//! to 1024 keys filled 2,048 of 65,536 buckets and probes ran long (the
//! daemon's CPU per pair doubled).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FxHasher`]; iteration order is not meaningful.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

const SEED: u64 = 0xf135_7aea_2e62_a9c5;

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The best-mixed high bits down to where hashbrown picks buckets.
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LockRange;

    /// 40,000 ranges of three shapes into 65,536 buckets: as many buckets
    /// used as random hashing would (~29,600) and no long chains.
    #[test]
    fn ranges_spread_over_the_table() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<FxHasher>::default();
        type Shape = (&'static str, fn(u64) -> LockRange);
        let shapes: [Shape; 3] = [
            ("one key each", |i| LockRange::new(1, i, i)),
            ("aligned to 1024", |i| {
                LockRange::new(1, i * 1024, i * 1024 + 1023)
            }),
            ("four zones", |i| LockRange::new(i % 4 + 1, i / 4, i / 4)),
        ];
        for (shape, range) in shapes {
            let mut buckets = vec![0u32; 1 << 16];
            for i in 0..40_000u64 {
                buckets[(build.hash_one(range(i)) & 0xffff) as usize] += 1;
            }
            let used = buckets.iter().filter(|&&n| n > 0).count();
            let longest = *buckets.iter().max().unwrap();
            assert!(
                used > 27_000 && longest <= 6,
                "{shape}: {used} buckets used, {longest} at most"
            );
        }
    }
}
