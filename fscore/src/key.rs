//! The key every btree item is ordered by: two u64s compared as a tuple.
//!
//! On disk a key is 16 bytes: `hi` then `lo`, each little-endian.

/// Length of an encoded key in bytes.
pub const KEY_LEN: usize = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub hi: u64,
    pub lo: u64,
}

impl Key {
    pub const MIN: Key = Key { hi: 0, lo: 0 };
    pub const MAX: Key = Key {
        hi: u64::MAX,
        lo: u64::MAX,
    };

    pub const fn new(hi: u64, lo: u64) -> Key {
        Key { hi, lo }
    }

    pub fn encode(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        out[..8].copy_from_slice(&self.hi.to_le_bytes());
        out[8..].copy_from_slice(&self.lo.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; KEY_LEN]) -> Key {
        let hi = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let lo = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        Key { hi, lo }
    }

    /// The smallest key greater than this one, or None for `Key::MAX`.
    pub fn successor(&self) -> Option<Key> {
        match self.lo.checked_add(1) {
            Some(lo) => Some(Key { hi: self.hi, lo }),
            None => self.hi.checked_add(1).map(|hi| Key { hi, lo: 0 }),
        }
    }

    /// The greatest key smaller than this one, or None for `Key::MIN`.
    pub fn predecessor(&self) -> Option<Key> {
        match self.lo.checked_sub(1) {
            Some(lo) => Some(Key { hi: self.hi, lo }),
            None => self.hi.checked_sub(1).map(|hi| Key { hi, lo: u64::MAX }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_and_order_is_tuple_order() {
        let a = Key::new(1, u64::MAX);
        let b = Key::new(2, 0);
        assert!(a < b);
        assert_eq!(Key::decode(&a.encode()), a);
        assert_eq!(a.successor(), Some(b));
        assert_eq!(b.predecessor(), Some(a));
        assert_eq!(Key::MAX.successor(), None);
        assert_eq!(Key::MIN.predecessor(), None);
    }
}
