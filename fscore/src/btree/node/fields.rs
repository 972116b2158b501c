//! Bounds-checked access to header and item fields, key ordering and the
//! key hash. Reads outside the buffer return 0 and writes outside it are
//! dropped, so a corrupt offset read through these helpers can never panic
//! or touch memory beyond the payload (`verify` is what reports it).

use super::layout::*;
use crate::key::Key;

/// Payload offset of the item at array index `index`.
#[inline]
pub(crate) const fn item_offset(index: usize) -> usize {
    HEADER_LEN + index * ITEM_LEN
}

/// Is `off` the offset of one of the first `count` items?
#[inline]
pub(crate) fn is_item_offset(off: usize, count: usize) -> bool {
    off >= HEADER_LEN
        && off < item_offset(count)
        && item_offset((off - HEADER_LEN) / ITEM_LEN) == off
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

/// The key (as `key_ord`) and both links of the item at `off`, from one
/// bounds check: what a search step needs. None if `off` is out of bounds.
#[inline]
pub(crate) fn item_head(buf: &[u8], off: usize) -> Option<(u128, u32)> {
    let b: &[u8; ITEM_VAL_OFF] = buf.get(off..off + ITEM_VAL_OFF)?.try_into().ok()?;
    let hi = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let lo = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let links = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    Some(((hi as u128) << 64 | lo as u128, links))
}

/// Of `links` (left | right << 16), the child a search for a key that
/// compares `greater` than the item's follows.
#[inline]
pub(crate) fn link_toward(links: u32, greater: bool) -> usize {
    (links >> (16 * greater as u32) & 0xffff) as usize
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
