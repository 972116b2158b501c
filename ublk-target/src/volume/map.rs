//! The volume map in fscore's btree: one item per written 4 KiB block.
//!
//! ```text
//! key   (16 bytes)  hi = KIND_MAP << 48 | volume id    lo = virtual block
//! value (24 bytes)  0..8   physical data block (u64 LE)
//!                   8..16  txn: the transaction that allocated it (u64 LE)
//!                   16..20 crc32c of the 4096 data bytes (u32 LE)
//!                   20..24 flags (u32 LE, none defined: must be 0)
//! ```
//! A volume's own record (size) lives at hi = KIND_VOLUME << 48 | id, lo = 0:
//! ```text
//! value (16 bytes)  0..8 size in bytes (u64 LE)   8..16 reserved, 0
//! ```
//! Unwritten blocks have no item: they read as zeros with no data I/O.

use fscore::{Extent, Key};

/// Bytes of one data block (fscore's data block size).
pub const BLOCK_BYTES: u64 = fscore::DATA_BLOCK_BYTES as u64;
const _: () = assert!(BLOCK_BYTES == 4096);

const KIND_VOLUME: u64 = 1;
const KIND_MAP: u64 = 2;
const KIND_SHIFT: u32 = 48;
pub const MAP_VALUE_BYTES: usize = 24;
pub const VOLUME_VALUE_BYTES: usize = 16;

pub fn volume_key(volume_id: u64) -> Key {
    Key::new(KIND_VOLUME << KIND_SHIFT | volume_id, 0)
}

pub fn map_key(volume_id: u64, vblock: u64) -> Key {
    Key::new(KIND_MAP << KIND_SHIFT | volume_id, vblock)
}

pub fn is_map_key(key: &Key) -> bool {
    key.hi >> KIND_SHIFT == KIND_MAP
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub pblock: u64,
    pub txn: u64,
    pub crc: u32,
}

impl Mapping {
    pub fn encode(&self) -> [u8; MAP_VALUE_BYTES] {
        let mut out = [0u8; MAP_VALUE_BYTES];
        out[0..8].copy_from_slice(&self.pblock.to_le_bytes());
        out[8..16].copy_from_slice(&self.txn.to_le_bytes());
        out[16..20].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// `None` for a value of the wrong length or with unknown flags.
    pub fn decode(bytes: &[u8]) -> Option<Mapping> {
        if bytes.len() != MAP_VALUE_BYTES || bytes[20..24] != [0; 4] {
            return None;
        }
        Some(Mapping {
            pblock: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
            txn: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            crc: u32::from_le_bytes(bytes[16..20].try_into().ok()?),
        })
    }
}

/// Splits items whose physical blocks (`pblock`) the caller has put in
/// order into index ranges of consecutive blocks, each at most `max_len`
/// items long: one data I/O per range. A small write's one run stays inline.
pub(crate) fn consecutive_runs<T>(
    items: &[T],
    pblock: impl Fn(&T) -> u64,
    max_len: usize,
) -> smallvec::SmallVec<[std::ops::Range<usize>; 1]> {
    let mut runs = smallvec::SmallVec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        let ends = i == items.len()
            || pblock(&items[i]) != pblock(&items[i - 1]) + 1
            || i - start == max_len;
        if ends {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

pub fn encode_volume(size_bytes: u64) -> [u8; VOLUME_VALUE_BYTES] {
    let mut out = [0u8; VOLUME_VALUE_BYTES];
    out[0..8].copy_from_slice(&size_bytes.to_le_bytes());
    out
}

pub fn decode_volume(bytes: &[u8]) -> Option<u64> {
    (bytes.len() == VOLUME_VALUE_BYTES).then(|| u64::from_le_bytes(bytes[0..8].try_into().unwrap()))
}

/// The data extents an item references, for fscore's check.
pub fn data_refs(key: &Key, value: &[u8]) -> Vec<Extent> {
    match (is_map_key(key), Mapping::decode(value)) {
        (true, Some(m)) => vec![Extent::new(m.pblock, 1)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_roundtrip_and_rejects_garbage() {
        let m = Mapping {
            pblock: 0x1234_5678_9abc,
            txn: 77,
            crc: 0xdead_beef,
        };
        assert_eq!(Mapping::decode(&m.encode()), Some(m));
        assert_eq!(Mapping::decode(&m.encode()[..23]), None);
        let mut flagged = m.encode();
        flagged[23] = 1;
        assert_eq!(Mapping::decode(&flagged), None);
        assert!(is_map_key(&map_key(0, 5)));
        assert!(!is_map_key(&volume_key(0)));
        assert!(map_key(0, u64::MAX) < map_key(1, 0));
        assert_eq!(
            data_refs(&map_key(0, 1), &m.encode()),
            vec![Extent::new(m.pblock, 1)]
        );
        assert_eq!(data_refs(&volume_key(0), &encode_volume(4096)), vec![]);
    }
}
