//! `NodeMut`: the in-place editor of a dirty node (insert, replace, delete,
//! split, refill).

use super::accessor::NodeAccessor;
use super::fields::*;
use super::layout::*;
use super::rebuild::{self, Order};
use super::{avl, hash, values, NodeError};
use crate::key::Key;

/// In-place editor of a dirty node.
pub(crate) struct NodeMut<'a> {
    buf: &'a mut [u8],
    geo: Geometry,
}

impl<'a> NodeMut<'a> {
    /// Formats an empty node at `level` over the whole buffer, which must be
    /// `PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX` bytes long.
    pub(crate) fn init(buf: &'a mut [u8], level: u8) -> Self {
        assert!(
            (PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX).contains(&buf.len()),
            "node payload of {} bytes",
            buf.len()
        );
        let geo = Geometry::new(buf.len(), level);
        buf[..HEADER_LEN].fill(0);
        buf[HDR_LEVEL] = level;
        set_hdr_value_low(buf, geo.values_end);
        buf[geo.values_end..].fill(0);
        NodeMut { buf, geo }
    }

    /// Wraps an existing node for editing (same checks as `NodeAccessor::new`).
    pub(crate) fn open(buf: &'a mut [u8]) -> Result<Self, NodeError> {
        let geo = NodeAccessor::new(buf)?.geo;
        Ok(NodeMut { buf, geo })
    }

    pub(crate) fn accessor(&self) -> NodeAccessor<'_> {
        NodeAccessor {
            buf: self.buf,
            geo: self.geo,
        }
    }

    /// Inserts or replaces. Returns the old value's length if it replaced.
    /// `Err(Full)` leaves the node unchanged; it is also the answer for a
    /// value longer than `value_len_max()` (which no split can make fit).
    pub(crate) fn insert(&mut self, key: &Key, value: &[u8]) -> Result<Option<usize>, NodeError> {
        if value.len() > self.geo.value_len_max {
            return Err(NodeError::Full);
        }
        let mut s = avl::search(self.buf, key);
        match s.found {
            Some(item) => self.replace(item, value).map(Some),
            None => self.insert_new(&mut s, key, value).map(|()| None),
        }
    }

    /// Replaces the value of `item`. The region keeps its end (and owner)
    /// when it can: a value at the bottom of the value area grows or shrinks
    /// into the gap, any other value shrinking by at least a trailer's worth
    /// frees its lower part. Otherwise the old region is freed and a new one
    /// allocated, compacting if needed.
    fn replace(&mut self, item: usize, value: &[u8]) -> Result<usize, NodeError> {
        let old_len = val_len(self.buf, item);
        let old_start = val_off(self.buf, item);
        let old_end = old_start + old_len;
        let new_len = value.len();
        let items_end = item_offset(hdr_count(self.buf));
        let bottom = old_start == hdr_value_low(self.buf);
        let start = match old_end.checked_sub(new_len) {
            _ if new_len == old_len => old_start,
            Some(start) if bottom && start >= items_end => {
                set_hdr_value_low(self.buf, start);
                start
            }
            Some(start) if new_len + OWNER_LEN <= old_len => {
                values::free(self.buf, old_start, old_len - new_len);
                start
            }
            _ => {
                if new_len > self.accessor().free_bytes() + old_len {
                    return Err(NodeError::Full);
                }
                values::free(self.buf, old_start, old_len + OWNER_LEN);
                self.alloc_value(new_len + OWNER_LEN, 0)
            }
        };
        values::write(self.buf, start, item, value);
        wr16(self.buf, item + ITEM_VAL_OFF, start as u16);
        wr16(self.buf, item + ITEM_VAL_LEN, new_len as u16);
        Ok(old_len)
    }

    fn insert_new(
        &mut self,
        s: &mut avl::Search,
        key: &Key,
        value: &[u8],
    ) -> Result<(), NodeError> {
        if !self.accessor().has_room(value.len()) {
            return Err(NodeError::Full);
        }
        let count = hdr_count(self.buf);
        let item = item_offset(count);
        let start = self.alloc_value(value.len() + OWNER_LEN, ITEM_LEN);
        values::write(self.buf, start, item, value);
        let fields = &mut self.buf[item..item + ITEM_LEN];
        fields[ITEM_KEY..ITEM_KEY + 16].copy_from_slice(&key.encode());
        fields[ITEM_LEFT..ITEM_VAL_OFF].fill(0);
        fields[ITEM_VAL_OFF..ITEM_VAL_LEN].copy_from_slice(&(start as u16).to_le_bytes());
        fields[ITEM_VAL_LEN..ITEM_HEIGHT].copy_from_slice(&(value.len() as u16).to_le_bytes());
        fields[ITEM_HEIGHT] = 1;
        fields[ITEM_RESERVED] = 0;
        set_hdr_count(self.buf, count + 1);
        avl::link(self.buf, s, key, item);
        if self.geo.hash_slots != 0 {
            hash::insert(self.buf, &self.geo, key, item);
        }
        Ok(())
    }

    /// Takes a value region of `len` bytes from the gap, leaving `reserve`
    /// bytes above the item array for a new item; compacts first if the gap
    /// is too small. The caller checked that the space exists.
    fn alloc_value(&mut self, len: usize, reserve: usize) -> usize {
        let items_end = item_offset(hdr_count(self.buf));
        if hdr_value_low(self.buf) < items_end + reserve + len {
            values::compact(self.buf, &self.geo);
        }
        values::alloc(self.buf, len)
    }

    /// Returns whether the key was present.
    pub(crate) fn delete(&mut self, key: &Key) -> bool {
        let mut s = avl::search(self.buf, key);
        let Some(item) = s.found else {
            return false;
        };
        avl::unlink(self.buf, &mut s);
        if self.geo.hash_slots != 0 {
            if let Some((slot, _)) = hash::find(self.buf, &self.geo, key) {
                hash::remove_at(self.buf, &self.geo, slot);
            }
        }
        values::free(
            self.buf,
            val_off(self.buf, item),
            val_len(self.buf, item) + OWNER_LEN,
        );
        self.fill_hole(item);
        true
    }

    /// Moves the last item of the array into the unlinked item's slot `hole`
    /// so the array stays dense, repointing its parent, owner and hash slot.
    fn fill_hole(&mut self, hole: usize) {
        let count = hdr_count(self.buf);
        let last = item_offset(count - 1);
        if hole != last {
            copy_item_within(self.buf, last, hole);
            let key = item_key(self.buf, hole);
            let parent = avl::parent_of(self.buf, &key, last);
            avl::replace_child(self.buf, parent, last, hole);
            let owner = val_off(self.buf, hole) + val_len(self.buf, hole);
            wr16(self.buf, owner, hole as u16);
            if self.geo.hash_slots != 0 {
                hash::repoint(self.buf, &self.geo, &key, last, hole);
            }
        }
        set_hdr_count(self.buf, count - 1);
    }

    /// Moves the upper half of the items (by bytes) into `right`, which must
    /// be empty and of the same level. Afterwards every key in self is less
    /// than every key in right, each half holds at most half the bytes plus
    /// half an item, and either half has room for a maximal item. A node of
    /// fewer than two items is left alone (it always has room).
    pub(crate) fn split_into(&mut self, right: &mut NodeMut<'_>) {
        let order = Order::of(self.buf);
        let split = self.split_index(order.as_slice());
        self.move_upper_into(right, order, split);
    }

    /// The split for an insert of `key` at the right end of this node
    /// (above every key but the last): the items from the key's place on,
    /// at most one, move into `right`, and the key goes there. Ascending
    /// inserts (a volume written from start to end) then leave full nodes
    /// behind instead of half-full ones; a random insert lands here about
    /// twice per node's worth of items. Returns false, changing nothing,
    /// when the key's place is further left (split in half instead).
    pub(crate) fn split_at_end_for(&mut self, right: &mut NodeMut<'_>, key: &Key) -> bool {
        let order = Order::of(self.buf);
        let keys = order.as_slice();
        let count = keys.len();
        let key_at = |position: usize| item_key(self.buf, keys[position] as usize);
        // Only the last two keys decide; the left part keeps at least one item.
        if count < 2 || *key <= key_at(count - 2) {
            return false;
        }
        let place = if *key > key_at(count - 1) {
            count
        } else {
            count - 1
        };
        self.move_upper_into(right, order, place);
        true
    }

    /// Moves the items from key-order position `split` on into `right`.
    fn move_upper_into(&mut self, right: &mut NodeMut<'_>, mut order: Order, split: usize) {
        assert_eq!(
            right.accessor().item_count(),
            0,
            "split into a non-empty node"
        );
        assert_eq!(
            right.accessor().level(),
            self.accessor().level(),
            "split across levels"
        );
        assert_eq!(
            right.buf.len(),
            self.buf.len(),
            "split across payload sizes"
        );
        let count = order.as_slice().len();
        if split == count {
            return;
        }
        right.reset_empty();
        rebuild::append(
            right.buf,
            &right.geo,
            self.buf,
            &order.as_slice()[split..],
            false,
        );
        rebuild::keep_range(self.buf, &self.geo, &mut order, 0..split);
    }

    /// Where the upper half starts in key order: walking down from the
    /// largest item, an item moves right as long as that makes the two
    /// halves' bytes more even (at least one moves, at least one stays).
    fn split_index(&self, order: &[u16]) -> usize {
        let total = self.accessor().used_bytes();
        let mut moved_bytes = 0;
        let mut split = order.len();
        while split > 1 {
            let size = ITEM_LEN + val_len(self.buf, order[split - 1] as usize) + OWNER_LEN;
            if split < order.len() && 2 * moved_bytes + size >= total {
                break;
            }
            moved_bytes += size;
            split -= 1;
        }
        split
    }

    /// Clears the bookkeeping of an empty node so its whole capacity is one
    /// contiguous gap.
    fn reset_empty(&mut self) {
        debug_assert_eq!(hdr_count(self.buf), 0);
        set_hdr_root(self.buf, 0);
        set_hdr_value_low(self.buf, self.geo.values_end);
        set_hdr_value_free(self.buf, 0);
    }

    /// Moves items from `src` into `self` until self holds at least
    /// `used_goal` bytes, src is empty, or the next item does not fit.
    /// `from_front` takes src's smallest items (src is self's right
    /// neighbour), otherwise its largest (src is the left neighbour).
    /// Returns the number of items moved.
    pub(crate) fn refill_from(
        &mut self,
        src: &mut NodeMut<'_>,
        from_front: bool,
        used_goal: usize,
    ) -> usize {
        debug_assert_eq!(self.accessor().level(), src.accessor().level());
        let mut order = Order::of(src.buf);
        let count = order.as_slice().len();
        let node = self.accessor();
        let (mut used, mut free, mut items) =
            (node.used_bytes(), node.free_bytes(), node.item_count());
        let mut moved = 0;
        while moved < count && used < used_goal {
            let next = if from_front { moved } else { count - 1 - moved };
            let len = val_len(src.buf, order.as_slice()[next] as usize);
            let size = ITEM_LEN + len + OWNER_LEN;
            if size > free || items >= self.geo.items_max || len > self.geo.value_len_max {
                break;
            }
            used += size;
            free -= size;
            items += 1;
            moved += 1;
        }
        if moved == 0 {
            return 0;
        }
        let (taken, kept) = if from_front {
            (0..moved, moved..count)
        } else {
            (count - moved..count, 0..count - moved)
        };
        rebuild::append(
            self.buf,
            &self.geo,
            src.buf,
            &order.as_slice()[taken],
            !from_front,
        );
        rebuild::keep_range(src.buf, &src.geo, &mut order, kept);
        moved
    }
}
