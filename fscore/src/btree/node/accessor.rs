//! `NodeAccessor`: the read-only view of a node (lookups, seeks, iteration,
//! space accounting).

use super::fields::*;
use super::hash;
use super::iter::{ItemIter, ItemIterRev};
use super::layout::*;
use super::NodeError;
use crate::key::Key;

/// Read-only view of a node.
#[derive(Clone, Copy)]
pub(crate) struct NodeAccessor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) geo: Geometry,
}

impl<'a> NodeAccessor<'a> {
    /// Wraps a payload; checks only the node header fields needed to not read
    /// out of bounds. Call `verify` for the full check.
    pub(crate) fn new(buf: &'a [u8]) -> Result<Self, NodeError> {
        let geo = check_header(buf)?;
        Ok(NodeAccessor { buf, geo })
    }

    /// Wraps a payload that already passed `verify` at `level` (a cached
    /// node): no header checks, so a lookup in a cached leaf need not touch
    /// the leaf's header line. Every read stays bounds-checked, as for any
    /// bytes (see the trust model in `node.rs`).
    #[inline]
    pub(crate) fn verified(buf: &'a [u8], level: u8) -> Self {
        debug_assert!(buf.len() >= PAYLOAD_BYTES_MIN && hdr_level(buf) == level);
        let len = buf.len().clamp(PAYLOAD_BYTES_MIN, PAYLOAD_BYTES_MAX);
        NodeAccessor {
            buf,
            geo: Geometry::new(len, level),
        }
    }

    /// Payload offset of the hash slot a lookup of `key` in a leaf of
    /// `payload_bytes` reads first (for prefetching).
    #[inline]
    pub(crate) fn leaf_home_slot_at(payload_bytes: usize, key: &Key) -> usize {
        let geo = Geometry::new(payload_bytes.clamp(PAYLOAD_BYTES_MIN, PAYLOAD_BYTES_MAX), 0);
        geo.values_end + home_slot(key, geo.hash_slots) * HASH_SLOT_LEN
    }

    /// 0 for leaves.
    pub(crate) fn level(&self) -> u8 {
        hdr_level(self.buf)
    }

    pub(crate) fn item_count(&self) -> usize {
        hdr_count(self.buf)
    }

    /// Exact lookup (leaves use the hash table, internal nodes the AVL tree).
    pub(crate) fn get(&self, key: &Key) -> Option<&'a [u8]> {
        let item = if self.geo.hash_slots != 0 {
            hash::find(self.buf, &self.geo, key).map(|(_, item)| item)
        } else {
            self.avl_find(key)
        }?;
        Some(value(self.buf, item))
    }

    /// The first item with a key >= `key`.
    pub(crate) fn seek_ge(&self, key: &Key) -> Option<(Key, &'a [u8])> {
        let want = key_ord(key);
        let mut cur = hdr_root(self.buf);
        let mut best = 0;
        for _ in 0..AVL_PATH_LEN {
            if cur == 0 {
                break;
            }
            let Some((have, links)) = item_head(self.buf, cur) else {
                break;
            };
            if want <= have {
                best = cur;
                if want == have {
                    break;
                }
            }
            cur = link_toward(links, want > have);
        }
        (best != 0).then(|| self.entry(best))
    }

    /// The last item with a key <= `key`.
    pub(crate) fn seek_le(&self, key: &Key) -> Option<(Key, &'a [u8])> {
        let want = key_ord(key);
        let mut cur = hdr_root(self.buf);
        let mut best = 0;
        for _ in 0..AVL_PATH_LEN {
            if cur == 0 {
                break;
            }
            let Some((have, links)) = item_head(self.buf, cur) else {
                break;
            };
            if want >= have {
                best = cur;
                if want == have {
                    break;
                }
            }
            cur = link_toward(links, want > have);
        }
        (best != 0).then(|| self.entry(best))
    }

    pub(crate) fn first(&self) -> Option<(Key, &'a [u8])> {
        let off = self.extreme(left);
        (off != 0).then(|| self.entry(off))
    }

    pub(crate) fn last(&self) -> Option<(Key, &'a [u8])> {
        let off = self.extreme(right);
        (off != 0).then(|| self.entry(off))
    }

    /// All items in key order.
    pub(crate) fn items(&self) -> impl Iterator<Item = (Key, &'a [u8])> + 'a {
        ItemIter::new(self.buf, None)
    }

    /// Items with keys >= `key`, in key order (a forward range scan).
    pub(crate) fn items_from(&self, key: &Key) -> impl Iterator<Item = (Key, &'a [u8])> + 'a {
        ItemIter::new(self.buf, Some(key))
    }

    /// Items with keys <= `key`, in descending key order (a backward scan).
    pub(crate) fn items_rev_from(&self, key: &Key) -> impl Iterator<Item = (Key, &'a [u8])> + 'a {
        ItemIterRev::new(self.buf, Some(key))
    }

    /// Bytes used by live items and their values (what a join or refill
    /// decision looks at): `ITEM_LEN + value length + OWNER_LEN` per item.
    pub(crate) fn used_bytes(&self) -> usize {
        used_bytes(self.buf, &self.geo)
    }

    /// The payload size.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes available to items and values: the payload minus the header and
    /// (leaves) the hash table. `used_bytes() + free_bytes()` equals it.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.geo.capacity_bytes()
    }

    /// Bytes an insert could use after compaction.
    pub(crate) fn free_bytes(&self) -> usize {
        self.capacity_bytes().saturating_sub(self.used_bytes())
    }

    /// Bytes an item with a value of `value_len` bytes occupies in a node.
    pub(crate) fn item_bytes(value_len: usize) -> usize {
        ITEM_LEN + value_len + OWNER_LEN
    }

    /// Largest value an item of this node may carry: `VALUE_LEN_MAX` for
    /// payloads of at least 3840 bytes, less for tiny test payloads.
    pub(crate) fn value_len_max(&self) -> usize {
        self.geo.value_len_max
    }

    /// Below a quarter full: the tree should join or refill from a neighbour.
    pub(crate) fn wants_join(&self) -> bool {
        self.used_bytes() * 4 < self.payload_bytes()
    }

    /// Would an insert of a new item with a value of `value_len` bytes fit
    /// (possibly after compaction)?
    pub(crate) fn has_room(&self, value_len: usize) -> bool {
        value_len <= self.geo.value_len_max
            && self.item_count() < self.geo.items_max
            && Self::item_bytes(value_len) <= self.free_bytes()
    }

    /// Checks every invariant: key order, AVL balance and stored heights,
    /// hash table consistency, value owner offsets, free-space accounting.
    pub(crate) fn verify(&self) -> Result<(), NodeError> {
        super::verify::verify(self.buf, &self.geo)
    }

    /// The item at `off` as (key, value).
    #[inline]
    fn entry(&self, off: usize) -> (Key, &'a [u8]) {
        (item_key(self.buf, off), value(self.buf, off))
    }

    /// The leftmost (`step` = left) or rightmost item; 0 when empty.
    fn extreme(&self, step: fn(&[u8], usize) -> usize) -> usize {
        let mut cur = hdr_root(self.buf);
        if cur == 0 {
            return 0;
        }
        for _ in 0..AVL_PATH_LEN {
            let next = step(self.buf, cur);
            if next == 0 {
                break;
            }
            cur = next;
        }
        cur
    }

    /// Exact lookup through the AVL tree; the item offset.
    pub(super) fn avl_find(&self, key: &Key) -> Option<usize> {
        let want = key_ord(key);
        let mut cur = hdr_root(self.buf);
        for _ in 0..AVL_PATH_LEN {
            if cur == 0 {
                return None;
            }
            let (have, links) = item_head(self.buf, cur)?;
            if want == have {
                return Some(cur);
            }
            cur = link_toward(links, want > have);
        }
        None
    }
}

/// The checks `new` makes: sizes, reserved fields, and the header offsets
/// that bound every later access.
fn check_header(buf: &[u8]) -> Result<Geometry, NodeError> {
    let len = buf.len();
    if !(PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX).contains(&len) {
        return Err(corrupt(format!(
            "payload of {len} bytes outside {PAYLOAD_BYTES_MIN}..={PAYLOAD_BYTES_MAX}"
        )));
    }
    let geo = Geometry::new(len, hdr_level(buf));
    if rd8(buf, HDR_RESERVED0) != 0 || rd16(buf, HDR_RESERVED1) != 0 {
        return Err(corrupt("reserved header bytes are not zero".into()));
    }
    let count = hdr_count(buf);
    if count > geo.items_max {
        return Err(corrupt(format!(
            "item count {count} exceeds the maximum {}",
            geo.items_max
        )));
    }
    let items_end = item_offset(count);
    let low = hdr_value_low(buf);
    if low < items_end || low > geo.values_end {
        return Err(corrupt(format!(
            "value area start {low} outside {items_end}..={}",
            geo.values_end
        )));
    }
    let free = hdr_value_free(buf);
    if free > geo.values_end - low {
        return Err(corrupt(format!(
            "free value bytes {free} exceed the value area"
        )));
    }
    let root = hdr_root(buf);
    if (count == 0) != (root == 0) || (root != 0 && !is_item_offset(root, count)) {
        return Err(corrupt(format!(
            "AVL root {root} invalid for {count} items"
        )));
    }
    Ok(geo)
}

pub(super) fn corrupt(msg: String) -> NodeError {
    NodeError::Corrupt(msg)
}
