//! Bulk moves for split and refill: instead of one insert and one delete
//! per moved item, the receiving node appends the items and the giving node
//! keeps a contiguous range of its key order; both then rebuild a perfectly
//! balanced AVL tree (and leaves their hash table) in one pass. All scratch
//! space is on the stack (a few KiB), nothing is allocated.

use super::layout::*;
use super::{hash, values};
use std::ops::Range;

/// Item offsets in key order.
pub(super) struct Order {
    offs: [u16; ITEMS_MAX_ANY],
    len: usize,
}

/// Words of a bitmap with one bit per possible item index.
const INDEX_WORDS: usize = ITEMS_MAX_ANY.div_ceil(64);

impl Order {
    /// The node's items in key order (an in-order walk of the AVL tree).
    pub(super) fn of(buf: &[u8]) -> Order {
        let mut order = Order {
            offs: [0; ITEMS_MAX_ANY],
            len: 0,
        };
        let mut stack = [0u16; AVL_PATH_LEN];
        let mut depth = 0;
        let mut cur = hdr_root(buf);
        let count = hdr_count(buf).min(ITEMS_MAX_ANY);
        while order.len < count {
            while cur != 0 && depth < AVL_PATH_LEN {
                stack[depth] = cur as u16;
                depth += 1;
                cur = left(buf, cur);
            }
            if depth == 0 {
                break;
            }
            depth -= 1;
            let off = stack[depth] as usize;
            order.offs[order.len] = off as u16;
            order.len += 1;
            cur = right(buf, off);
        }
        order
    }

    pub(super) fn as_slice(&self) -> &[u16] {
        &self.offs[..self.len]
    }
}

#[inline]
fn is_kept(kept: &[u64; INDEX_WORDS], index: usize) -> bool {
    kept.get(index / 64)
        .is_some_and(|w| w >> (index % 64) & 1 != 0)
}

#[inline]
fn index_of(off: usize) -> usize {
    (off - HEADER_LEN) / ITEM_LEN
}

/// Keeps only the items `order[keep]`, dropping the others: compacts the
/// value area and the item array, then rebuilds the AVL tree and hash.
pub(super) fn keep_range(buf: &mut [u8], geo: &Geometry, order: &mut Order, keep: Range<usize>) {
    let mut kept = [0u64; INDEX_WORDS];
    for &off in &order.offs[keep.clone()] {
        let i = index_of(off as usize);
        kept[i / 64] |= 1 << (i % 64);
    }
    compact_kept(buf, geo, &kept);

    // Fill each dropped slot below `m` with a kept item from above `m`.
    let m = keep.len();
    let mut pos = [0u16; ITEMS_MAX_ANY];
    for (p, &off) in order.offs[keep.clone()].iter().enumerate() {
        pos[index_of(off as usize)] = p as u16;
    }
    let mut from = m;
    for hole in 0..m {
        if is_kept(&kept, hole) {
            continue;
        }
        while from < ITEMS_MAX_ANY && !is_kept(&kept, from) {
            from += 1;
        }
        let (src, dst) = (item_offset(from), item_offset(hole));
        buf.copy_within(src..src + ITEM_LEN, dst);
        wr16(buf, val_off(buf, dst) + val_len(buf, dst), dst as u16);
        order.offs[keep.start + pos[from] as usize] = dst as u16;
        from += 1;
    }
    set_hdr_count(buf, m);
    let kept_order = &order.offs[keep];
    let root = build_avl(buf, kept_order);
    set_hdr_root(buf, root);
    rebuild_hash(buf, geo, kept_order);
}

/// Compaction that also drops the values of items not in `kept`.
fn compact_kept(buf: &mut [u8], geo: &Geometry, kept: &[u64; INDEX_WORDS]) {
    let low = hdr_value_low(buf);
    let mut end = geo.values_end;
    let mut to = geo.values_end;
    while end > low {
        let trailer = rd16(buf, end - OWNER_LEN) as usize;
        let len = values::region_len(buf, end);
        if len < OWNER_LEN || len > end - low {
            debug_assert!(false, "corrupt value area during a rebuild");
            break;
        }
        let start = end - len;
        if trailer & FREE_TRAILER_BIT as usize == 0 && is_kept(kept, index_of(trailer)) {
            if to != end {
                buf.copy_within(start..end, to - len);
                wr16(buf, trailer + ITEM_VAL_OFF, (to - len) as u16);
            }
            to -= len;
        }
        end = start;
    }
    set_hdr_value_low(buf, to);
    set_hdr_value_free(buf, 0);
}

/// Appends `src`'s items at `src_offs` (key order; all below the node's
/// keys if `at_front`, else all above) and rebuilds the AVL tree. The
/// caller checked that they fit.
pub(super) fn append(buf: &mut [u8], geo: &Geometry, src: &[u8], src_offs: &[u16], at_front: bool) {
    let old = Order::of(buf);
    let count = hdr_count(buf);
    let need: usize = src_offs
        .iter()
        .map(|&o| ITEM_LEN + val_len(src, o as usize) + OWNER_LEN)
        .sum();
    if hdr_value_low(buf) < item_offset(count) + need {
        values::compact(buf, geo);
    }
    let mut order = Order {
        offs: [0; ITEMS_MAX_ANY],
        len: 0,
    };
    let (first, second) = if at_front {
        (src_offs.len(), 0)
    } else {
        (0, old.len)
    };
    order.offs[first..first + old.len].copy_from_slice(old.as_slice());
    for (i, &s) in src_offs.iter().enumerate() {
        let item = item_offset(count + i);
        copy_item(buf, src, s as usize, item);
        order.offs[second + i] = item as u16;
        if geo.hash_slots != 0 {
            hash::insert(buf, geo, &item_key(buf, item), item);
        }
    }
    order.len = old.len + src_offs.len();
    set_hdr_count(buf, order.len);
    let root = build_avl(buf, order.as_slice());
    set_hdr_root(buf, root);
}

/// Writes item `dst` of `buf` as a copy of item `src_item` of `src`, its
/// value taken from the bottom of the gap.
fn copy_item(buf: &mut [u8], src: &[u8], src_item: usize, dst: usize) {
    let value = value(src, src_item);
    let start = values::alloc(buf, value.len() + OWNER_LEN);
    values::write(buf, start, dst, value);
    buf[dst..dst + ITEM_LEN].copy_from_slice(&src[src_item..src_item + ITEM_LEN]);
    wr16(buf, dst + ITEM_VAL_OFF, start as u16);
}

/// Links the sorted `offs` into a perfectly balanced AVL tree (subtree
/// sizes differ by at most one, so heights do too); returns the root.
/// Recursion depth is log2 of the item count, at most 12.
fn build_avl(buf: &mut [u8], offs: &[u16]) -> usize {
    if offs.is_empty() {
        return 0;
    }
    let mid = offs.len() / 2;
    let node = offs[mid] as usize;
    let l = build_avl(buf, &offs[..mid]);
    let r = build_avl(buf, &offs[mid + 1..]);
    set_left(buf, node, l);
    set_right(buf, node, r);
    set_height(buf, node, height(buf, l).max(height(buf, r)) + 1);
    node
}

/// Refills a leaf's hash table from scratch with the items `offs`.
fn rebuild_hash(buf: &mut [u8], geo: &Geometry, offs: &[u16]) {
    if geo.hash_slots == 0 {
        return;
    }
    buf[geo.values_end..geo.values_end + geo.hash_slots * HASH_SLOT_LEN].fill(0);
    for &off in offs {
        let off = off as usize;
        hash::insert(buf, geo, &item_key(buf, off), off);
    }
}
