//! The full check of a node's invariants (listed in docs/btree-node.md).
//! Never panics and always terminates, whatever the bytes: every offset is
//! range-checked before use and every walk is bounded.

use super::accessor::corrupt;
use super::layout::*;
use super::{hash, NodeAccessor, NodeError};
use crate::key::Key;

pub(super) fn verify(buf: &[u8], geo: &Geometry) -> Result<(), NodeError> {
    // Header sanity, as `new` checks it (`NodeMut::accessor` skips it).
    NodeAccessor::new(buf)?;
    let count = hdr_count(buf);
    let mut seen = Seen::new();
    check_items(buf, geo, count)?;
    let reached = check_avl(buf, count, &mut seen)?;
    if reached != count {
        return Err(corrupt(format!(
            "AVL tree reaches {reached} of {count} items"
        )));
    }
    check_values(buf, geo, count)?;
    if geo.hash_slots != 0 {
        seen = Seen::new();
        check_hash(buf, geo, count, &mut seen)?;
    }
    Ok(())
}

/// Per-item fields: reserved byte, value length and region bounds, owner.
fn check_items(buf: &[u8], geo: &Geometry, count: usize) -> Result<(), NodeError> {
    let low = hdr_value_low(buf);
    for index in 0..count {
        let item = item_offset(index);
        if rd8(buf, item + ITEM_RESERVED) != 0 {
            return Err(corrupt(format!("item {item}: reserved byte not zero")));
        }
        let (start, len) = (val_off(buf, item), val_len(buf, item));
        if len > geo.value_len_max {
            return Err(corrupt(format!(
                "item {item}: value length {len} > {}",
                geo.value_len_max
            )));
        }
        if start < low || start + len + OWNER_LEN > geo.values_end {
            return Err(corrupt(format!(
                "item {item}: value {start}+{len} outside the value area"
            )));
        }
        let owner = rd16(buf, start + len) as usize;
        if owner != item {
            return Err(corrupt(format!("item {item}: value owner is {owner}")));
        }
    }
    Ok(())
}

/// One bit per item index: has a walk reached it yet? On the stack, so
/// verifying a node read from disk allocates nothing.
struct Seen([u64; ITEMS_MAX_ANY.div_ceil(64)]);

impl Seen {
    fn new() -> Seen {
        Seen([0; ITEMS_MAX_ANY.div_ceil(64)])
    }

    /// Marks item `off`; false if it was marked already.
    fn mark(&mut self, off: usize) -> bool {
        let index = (off - HEADER_LEN) / ITEM_LEN;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// Pending subtrees of the AVL walk: a depth-first walk of a tree at most
/// `AVL_HEIGHT_MAX` deep keeps at most one pending sibling per level.
const PENDING_MAX: usize = AVL_HEIGHT_MAX + 2;

/// One pending subtree of the AVL walk: its offset, the exclusive key
/// bounds it must respect, and its depth.
#[derive(Clone, Copy)]
struct Pending {
    off: usize,
    lower: Option<Key>,
    upper: Option<Key>,
    depth: usize,
}

/// Walks the AVL tree: offsets valid, each item reached once, keys strictly
/// inside the bounds their ancestors set (so in-order is strictly
/// increasing), stored heights exact, balance within one. Returns the
/// number of items reached.
fn check_avl(buf: &[u8], count: usize, seen: &mut Seen) -> Result<usize, NodeError> {
    let root = hdr_root(buf);
    if root == 0 {
        return Ok(0);
    }
    let empty = Pending {
        off: 0,
        lower: None,
        upper: None,
        depth: 0,
    };
    let mut stack = [empty; PENDING_MAX];
    stack[0] = Pending {
        off: root,
        lower: None,
        upper: None,
        depth: 1,
    };
    let mut pending = 1;
    let mut reached = 0;
    while pending > 0 {
        pending -= 1;
        let p = stack[pending];
        let off = p.off;
        if !is_item_offset(off, count) {
            return Err(corrupt(format!("AVL link to {off}, not an item")));
        }
        if !seen.mark(off) {
            return Err(corrupt(format!("item {off} linked twice in the AVL tree")));
        }
        reached += 1;
        if p.depth > AVL_HEIGHT_MAX {
            return Err(corrupt(format!("AVL tree deeper than {AVL_HEIGHT_MAX}")));
        }
        let key = item_key(buf, off);
        if p.lower.is_some_and(|l| key <= l) || p.upper.is_some_and(|u| key >= u) {
            return Err(corrupt(format!("item {off}: key {key:?} out of order")));
        }
        let (l, r) = (left(buf, off), right(buf, off));
        let (hl, hr) = (height(buf, l), height(buf, r));
        if height(buf, off) as usize != hl.max(hr) as usize + 1 {
            return Err(corrupt(format!(
                "item {off}: stored height {} wrong",
                height(buf, off)
            )));
        }
        if hl.abs_diff(hr) > 1 {
            return Err(corrupt(format!(
                "item {off}: unbalanced, heights {hl} and {hr}"
            )));
        }
        // Children's stored heights are checked when they are popped, so a
        // wrong height anywhere is caught.
        for (child, lower, upper) in [(l, p.lower, Some(key)), (r, Some(key), p.upper)] {
            if child == 0 {
                continue;
            }
            if pending == PENDING_MAX {
                return Err(corrupt(format!("AVL tree deeper than {AVL_HEIGHT_MAX}")));
            }
            stack[pending] = Pending {
                off: child,
                lower,
                upper,
                depth: p.depth + 1,
            };
            pending += 1;
        }
    }
    Ok(reached)
}

/// Walks the value area from the top: regions tile it exactly, free
/// trailers sum to the header's count, live regions are exactly the items'.
fn check_values(buf: &[u8], geo: &Geometry, count: usize) -> Result<(), NodeError> {
    let low = hdr_value_low(buf);
    let mut end = geo.values_end;
    let (mut free, mut live) = (0, 0);
    while end > low {
        if end - low < OWNER_LEN {
            return Err(corrupt(format!(
                "value area: {} stray bytes at {low}",
                end - low
            )));
        }
        let trailer = rd16(buf, end - OWNER_LEN);
        if trailer & FREE_TRAILER_BIT != 0 {
            let len = (trailer >> 1) as usize;
            if len < OWNER_LEN || len > end - low {
                return Err(corrupt(format!(
                    "value area: free region of {len} bytes ending at {end}"
                )));
            }
            free += len;
            end -= len;
        } else {
            let item = trailer as usize;
            if !is_item_offset(item, count) {
                return Err(corrupt(format!(
                    "value area: owner {item} ending at {end} is not an item"
                )));
            }
            let len = val_len(buf, item) + OWNER_LEN;
            if val_off(buf, item) + len != end {
                return Err(corrupt(format!(
                    "value area: region ending at {end} not its owner {item}'s"
                )));
            }
            live += 1;
            end -= len;
        }
    }
    // Items' regions were checked to lie in the area with their own owner,
    // so distinct ends mean distinct items; equal counts make it a bijection.
    if live != count {
        return Err(corrupt(format!(
            "value area holds {live} values for {count} items"
        )));
    }
    if free != hdr_value_free(buf) {
        return Err(corrupt(format!(
            "free value bytes {free}, header says {}",
            hdr_value_free(buf)
        )));
    }
    Ok(())
}

/// The hash table holds each item exactly once, reachable by probing from
/// its key's home slot without crossing an empty slot.
fn check_hash(buf: &[u8], geo: &Geometry, count: usize, seen: &mut Seen) -> Result<(), NodeError> {
    let slots = geo.hash_slots;
    let mut filled = 0;
    for i in 0..slots {
        let item = hash::slot(buf, geo, i);
        if item == 0 {
            continue;
        }
        if !is_item_offset(item, count) {
            return Err(corrupt(format!("hash slot {i}: {item} is not an item")));
        }
        if !seen.mark(item) {
            return Err(corrupt(format!("hash slot {i}: item {item} in two slots")));
        }
        filled += 1;
        let home = home_slot(&item_key(buf, item), slots);
        let mut j = home;
        while j != i {
            if hash::slot(buf, geo, j) == 0 {
                return Err(corrupt(format!(
                    "hash slot {i}: item {item} unreachable from slot {home}"
                )));
            }
            j = if j + 1 == slots { 0 } else { j + 1 };
        }
    }
    if filled != count {
        return Err(corrupt(format!(
            "hash table holds {filled} of {count} items"
        )));
    }
    Ok(())
}
