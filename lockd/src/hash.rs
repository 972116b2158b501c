//! A fast, deterministic hasher for the exact-lookup side tables (keys are
//! lock ranges and ids the process chose or the server handed out, so there
//! is no adversary to resist): the multiply-rotate hash of rustc's FxHasher.
//! SipHash, the std default, costs more than the rest of a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FxHasher`]; iteration order is not meaningful.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
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
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LockRange;

    #[test]
    fn neighbouring_ranges_spread_over_the_table() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<FxHasher>::default();
        // hashbrown takes the bucket from the low bits and a tag from the top 7.
        let mut low = std::collections::BTreeSet::new();
        let mut top = std::collections::BTreeSet::new();
        for slot in 0..1024u64 {
            let hash = build.hash_one(LockRange::new(1, slot, slot));
            low.insert(hash & 1023);
            top.insert(hash >> 57);
        }
        assert!(low.len() > 600, "{} distinct buckets of 1024", low.len());
        assert!(top.len() > 100, "{} distinct tags of 128", top.len());
    }
}
