//! Byte layout of a btree node payload: constants, field offsets, the
//! geometry derived from the payload size, and bounds-checked field access.
//!
//! ```text
//! offset 0                                                          payload_bytes
//! | header 16 | item array -> |   free gap   | <- values + owners | hash table |
//!                              ^items_end     ^value_low           ^values_end
//! ```
//!
//! Every multi-byte field is little-endian. Reads outside the buffer return 0
//! and writes outside it are dropped, so a corrupt offset can never panic or
//! touch memory beyond the payload (`verify` is what reports it).

use crate::key::{Key, KEY_LEN};

/// Smallest payload a node may live in (tiny blocks exercise splits in tests).
pub(crate) const PAYLOAD_BYTES_MIN: usize = 512;
/// Largest payload: every in-node offset is a u16.
pub(crate) const PAYLOAD_BYTES_MAX: usize = 1 << 16;

/// Node header, at payload offset 0.
pub(crate) const HEADER_LEN: usize = 16;
pub(crate) const HDR_LEVEL: usize = 0; // u8: 0 = leaf
pub(crate) const HDR_RESERVED0: usize = 1; // u8: must be 0
pub(crate) const HDR_ITEM_COUNT: usize = 2; // u16
pub(crate) const HDR_AVL_ROOT: usize = 4; // u16 item offset, 0 = empty
pub(crate) const HDR_RESERVED1: usize = 6; // u16: must be 0
pub(crate) const HDR_VALUE_LOW: usize = 8; // u32: lowest byte of the value area
pub(crate) const HDR_VALUE_FREE: usize = 12; // u32: freed bytes inside the value area

/// One item of the array: key, AVL links, value reference.
pub(crate) const ITEM_LEN: usize = 26;
pub(crate) const ITEM_KEY: usize = 0; // 16 bytes: hi u64, lo u64
pub(crate) const ITEM_LEFT: usize = 16; // u16 item offset, 0 = none
pub(crate) const ITEM_RIGHT: usize = 18; // u16 item offset, 0 = none
pub(crate) const ITEM_VAL_OFF: usize = 20; // u16 payload offset of the value bytes
pub(crate) const ITEM_VAL_LEN: usize = 22; // u16
pub(crate) const ITEM_HEIGHT: usize = 24; // u8 AVL height of the subtree, leaf = 1
pub(crate) const ITEM_RESERVED: usize = 25; // u8: must be 0

/// Each value region ends with a u16 owner: the offset of the item owning it.
pub(crate) const OWNER_LEN: usize = 2;
/// A hash slot holds a u16 item offset, 0 = empty.
pub(crate) const HASH_SLOT_LEN: usize = 2;
/// Leaf hash slots per item that could fit: load factor at most 1/2.
pub(crate) const HASH_SLOTS_PER_ITEM: usize = 2;

/// Largest value a leaf item may carry in a payload of at least
/// `PAYLOAD_BYTES_FULL_VALUES` (smaller test payloads allow less; see
/// `NodeAccessor::value_len_max`). Bounded so that a split of a full node
/// always leaves room for any insert.
pub(crate) const VALUE_LEN_MAX: usize = 1024;

/// Bytes a leaf item costs at least when sizing the hash table: the item, an
/// empty value's owner, and its hash slots.
const LEAF_ITEM_COST_MIN: usize = ITEM_LEN + OWNER_LEN + HASH_SLOTS_PER_ITEM * HASH_SLOT_LEN;

/// Most items any node can hold (an internal 64 KiB node of empty values).
pub(crate) const ITEMS_MAX_ANY: usize = (PAYLOAD_BYTES_MAX - HEADER_LEN) / (ITEM_LEN + OWNER_LEN);

/// Tallest AVL tree a node can hold: the smallest AVL tree of height
/// `AVL_HEIGHT_MAX + 1` has more nodes than `ITEMS_MAX_ANY`.
pub(crate) const AVL_HEIGHT_MAX: usize = 15;
/// Path stacks hold one entry per level of the AVL tree.
pub(crate) const AVL_PATH_LEN: usize = AVL_HEIGHT_MAX + 1;

/// A free region's trailer is `(len << 1) | 1`; owners are even offsets.
pub(crate) const FREE_TRAILER_BIT: u16 = 1;

/// Payloads at least this large accept values of the full `VALUE_LEN_MAX`
/// (a 4 KiB block minus a block header of up to 256 bytes).
pub(crate) const PAYLOAD_BYTES_FULL_VALUES: usize = 4096 - 256;

/// Nodes of the fewest items of height `h`: N(h) = N(h-1) + N(h-2) + 1.
const fn avl_min_items(height: usize) -> usize {
    let (mut a, mut b) = (0usize, 1usize); // N(0), N(1)
    let mut h = 1;
    while h < height {
        let c = a + b + 1;
        a = b;
        b = c;
        h += 1;
    }
    if height == 0 {
        0
    } else {
        b
    }
}

const _: () = assert!(avl_min_items(AVL_HEIGHT_MAX + 1) > ITEMS_MAX_ANY);
const _: () = assert!(
    avl_min_items(AVL_HEIGHT_MAX) <= ITEMS_MAX_ANY,
    "bound is tight"
);
// Item offsets are even (so odd trailers mark free space) and nonzero.
const _: () = assert!(HEADER_LEN % 2 == 0 && ITEM_LEN % 2 == 0 && HEADER_LEN > 0);
const _: () = assert!(ITEM_KEY + KEY_LEN == ITEM_LEFT && ITEM_RESERVED + 1 == ITEM_LEN);
const _: () = assert!(HDR_VALUE_FREE + 4 == HEADER_LEN);
// Every offset, value length and free-region trailer fits a u16.
const _: () = assert!(PAYLOAD_BYTES_MAX - 1 <= u16::MAX as usize);
const _: () = assert!(((VALUE_LEN_MAX + OWNER_LEN) << 1 | 1) <= u16::MAX as usize);
const _: () = assert!(ITEMS_MAX_ANY <= u16::MAX as usize);
// Splitting a full node leaves room for any insert in either half.
const _: () = assert!(Geometry::new(PAYLOAD_BYTES_FULL_VALUES, 0).value_len_max == VALUE_LEN_MAX);
const _: () = assert!(Geometry::new(PAYLOAD_BYTES_FULL_VALUES, 1).value_len_max == VALUE_LEN_MAX);
// Even the tiniest node fits a 16-byte child reference and several items.
const _: () = assert!(Geometry::new(PAYLOAD_BYTES_MIN, 0).value_len_max >= 64);
const _: () =
    assert!(Geometry::new(PAYLOAD_BYTES_MAX, 0).hash_slots * HASH_SLOT_LEN < PAYLOAD_BYTES_MAX / 4);

/// Sizes derived from the payload length and the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Leaves: hash slots at the end of the payload; internal nodes: 0.
    pub(crate) hash_slots: usize,
    /// One past the value area (start of the hash table).
    pub(crate) values_end: usize,
    /// Most items the node may hold.
    pub(crate) items_max: usize,
    /// Largest value an item may carry in this node.
    pub(crate) value_len_max: usize,
}

impl Geometry {
    pub(crate) const fn new(payload_bytes: usize, level: u8) -> Geometry {
        let (hash_slots, items_max) = if level == 0 {
            let items = (payload_bytes - HEADER_LEN) / LEAF_ITEM_COST_MIN;
            (items * HASH_SLOTS_PER_ITEM, items)
        } else {
            (0, (payload_bytes - HEADER_LEN) / (ITEM_LEN + OWNER_LEN))
        };
        let values_end = payload_bytes - hash_slots * HASH_SLOT_LEN;
        let capacity = values_end - HEADER_LEN;
        // A split leaves each half at most half the bytes plus half an item,
        // so an item of a third of the capacity always fits afterwards.
        let third = capacity / 3 - ITEM_LEN - OWNER_LEN;
        let value_len_max = if third < VALUE_LEN_MAX {
            third
        } else {
            VALUE_LEN_MAX
        };
        Geometry {
            hash_slots,
            values_end,
            items_max,
            value_len_max,
        }
    }

    /// Bytes for items and values: everything but the header and hash table.
    pub(crate) const fn capacity_bytes(&self) -> usize {
        self.values_end - HEADER_LEN
    }
}

/// Payload offset of the item at array index `index`.
#[inline]
pub(crate) const fn item_offset(index: usize) -> usize {
    HEADER_LEN + index * ITEM_LEN
}

/// Is `off` the offset of one of the first `count` items?
#[inline]
pub(crate) fn is_item_offset(off: usize, count: usize) -> bool {
    off >= HEADER_LEN && off < item_offset(count) && (off - HEADER_LEN) % ITEM_LEN == 0
}

#[inline]
pub(crate) fn rd8(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}

#[inline]
pub(crate) fn rd16(buf: &[u8], off: usize) -> u16 {
    match buf.get(off..off + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

#[inline]
pub(crate) fn rd32(buf: &[u8], off: usize) -> u32 {
    match buf.get(off..off + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

#[inline]
pub(crate) fn rd64(buf: &[u8], off: usize) -> u64 {
    match buf.get(off..off + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
        None => 0,
    }
}

#[inline]
pub(crate) fn wr8(buf: &mut [u8], off: usize, v: u8) {
    if let Some(b) = buf.get_mut(off) {
        *b = v;
    }
}

#[inline]
pub(crate) fn wr16(buf: &mut [u8], off: usize, v: u16) {
    if let Some(b) = buf.get_mut(off..off + 2) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

#[inline]
pub(crate) fn wr32(buf: &mut [u8], off: usize, v: u32) {
    if let Some(b) = buf.get_mut(off..off + 4) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// The key of the item at `off`.
#[inline]
pub(crate) fn item_key(buf: &[u8], off: usize) -> Key {
    Key {
        hi: rd64(buf, off + ITEM_KEY),
        lo: rd64(buf, off + ITEM_KEY + 8),
    }
}

/// A key as one u128 in key order (hi in the upper half), so comparisons
/// compile to branch-free wide compares.
#[inline]
pub(crate) fn key_ord(key: &Key) -> u128 {
    (key.hi as u128) << 64 | key.lo as u128
}

/// The key of the item at `off`, as `key_ord` would give it.
#[inline]
pub(crate) fn item_key_ord(buf: &[u8], off: usize) -> u128 {
    match buf.get(off + ITEM_KEY..off + ITEM_KEY + 16) {
        Some(b) => {
            let hi = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
            let lo = u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8]));
            (hi as u128) << 64 | lo as u128
        }
        None => 0,
    }
}

/// The child of the item at `off` on the side a search for a key that
/// compares `greater` than the item's goes: one read, no branch.
#[inline]
pub(crate) fn child_toward(buf: &[u8], off: usize, greater: bool) -> usize {
    (rd32(buf, off + ITEM_LEFT) >> (16 * greater as u32) & 0xffff) as usize
}

#[inline]
pub(crate) fn left(buf: &[u8], off: usize) -> usize {
    rd16(buf, off + ITEM_LEFT) as usize
}

#[inline]
pub(crate) fn right(buf: &[u8], off: usize) -> usize {
    rd16(buf, off + ITEM_RIGHT) as usize
}

/// AVL height of the subtree at `off`; 0 for the empty subtree.
#[inline]
pub(crate) fn height(buf: &[u8], off: usize) -> u8 {
    if off == 0 {
        0
    } else {
        rd8(buf, off + ITEM_HEIGHT)
    }
}

#[inline]
pub(crate) fn val_off(buf: &[u8], off: usize) -> usize {
    rd16(buf, off + ITEM_VAL_OFF) as usize
}

#[inline]
pub(crate) fn val_len(buf: &[u8], off: usize) -> usize {
    rd16(buf, off + ITEM_VAL_LEN) as usize
}

/// The value bytes of the item at `off` (empty if its reference is corrupt).
#[inline]
pub(crate) fn value(buf: &[u8], off: usize) -> &[u8] {
    let start = val_off(buf, off);
    buf.get(start..start + val_len(buf, off)).unwrap_or(&[])
}

#[inline]
pub(crate) fn set_left(buf: &mut [u8], off: usize, child: usize) {
    wr16(buf, off + ITEM_LEFT, child as u16);
}

#[inline]
pub(crate) fn set_right(buf: &mut [u8], off: usize, child: usize) {
    wr16(buf, off + ITEM_RIGHT, child as u16);
}

#[inline]
pub(crate) fn set_height(buf: &mut [u8], off: usize, h: u8) {
    wr8(buf, off + ITEM_HEIGHT, h);
}

/// Header fields.
#[inline]
pub(crate) fn hdr_level(buf: &[u8]) -> u8 {
    rd8(buf, HDR_LEVEL)
}

#[inline]
pub(crate) fn hdr_count(buf: &[u8]) -> usize {
    rd16(buf, HDR_ITEM_COUNT) as usize
}

#[inline]
pub(crate) fn hdr_root(buf: &[u8]) -> usize {
    rd16(buf, HDR_AVL_ROOT) as usize
}

#[inline]
pub(crate) fn hdr_value_low(buf: &[u8]) -> usize {
    rd32(buf, HDR_VALUE_LOW) as usize
}

#[inline]
pub(crate) fn hdr_value_free(buf: &[u8]) -> usize {
    rd32(buf, HDR_VALUE_FREE) as usize
}

#[inline]
pub(crate) fn set_hdr_count(buf: &mut [u8], count: usize) {
    wr16(buf, HDR_ITEM_COUNT, count as u16);
}

#[inline]
pub(crate) fn set_hdr_root(buf: &mut [u8], root: usize) {
    wr16(buf, HDR_AVL_ROOT, root as u16);
}

#[inline]
pub(crate) fn set_hdr_value_low(buf: &mut [u8], low: usize) {
    wr32(buf, HDR_VALUE_LOW, low as u32);
}

#[inline]
pub(crate) fn set_hdr_value_free(buf: &mut [u8], free: usize) {
    wr32(buf, HDR_VALUE_FREE, free as u32);
}

/// Bytes live items and their values use.
#[inline]
pub(crate) fn used_bytes(buf: &[u8], geo: &Geometry) -> usize {
    let values = geo
        .values_end
        .saturating_sub(hdr_value_low(buf))
        .saturating_sub(hdr_value_free(buf));
    hdr_count(buf) * ITEM_LEN + values
}

/// The hash of a key, part of the format: leaves find items by it.
#[inline]
pub(crate) fn key_hash(key: &Key) -> u32 {
    // murmur3's 64-bit finaliser over a mix of both halves.
    let mut h = key.hi.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.lo;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 32) as u32
}

/// The slot a key's probe starts at: the hash scaled onto `0..slots`.
#[inline]
pub(crate) fn home_slot(key: &Key, slots: usize) -> usize {
    ((key_hash(key) as u64 * slots as u64) >> 32) as usize
}
