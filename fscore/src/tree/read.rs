//! Lookups and range iteration. A range visits one leaf per descent: after a
//! leaf it descends again from the root to the key just past the leaf's
//! bound (or just before its lower bound when going backward), so it never
//! needs sibling pointers, which copy-on-write could not keep up to date.

use super::path::{accessor, child_for, node_at, Tree};
use crate::block::index::{ChildIndex, SEARCH_HEAD_BYTES};
use crate::block::{prefetch, BlockKind, BlockRef, BlockStore, SlotId, HEADER_BYTES, NO_SLOT};
use crate::btree::node::NodeAccessor;
use crate::error::{Error, Result};
use crate::key::Key;

/// A leaf reached by a descent and the key range its parents give it:
/// keys in (lower, upper]; `lower` None means unbounded.
struct LeafAt {
    r: BlockRef,
    lower: Option<Key>,
    upper: Key,
}

impl Tree {
    /// Calls `found` with the value of `key` if present.
    ///
    /// Clean nodes are used where they sit in the block cache: an internal
    /// node's `ChildIndex` (a sorted bound array built once from the
    /// verified node) picks the child and names the cache slot it was last
    /// found in, so no level costs a map probe, an AVL walk or a header
    /// check, and the leaf's hash slot for `key` is prefetched while the
    /// child's slot is checked. Lookups are bound by memory latency; this
    /// leaves about three dependent misses in a leaf not in the CPU cache
    /// (slot and hash line together, item, value). Nodes of the open
    /// transaction, and cold internal nodes, take the plain path.
    pub(crate) fn with_value(
        &self,
        store: &mut BlockStore,
        key: &Key,
        found: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        self.check_height()?;
        let mut r: BlockRef = self.root;
        let mut hint = NO_SLOT;
        // The parent's slot and the child's position in its index, to
        // remember where the child was found.
        let mut parent: Option<(SlotId, usize)> = None;
        let mut level = self.height as usize - 1;
        let payload = store.block_bytes as usize - HEADER_BYTES;
        loop {
            if r.seq == store.txn_seq {
                let block = store.view(r, BlockKind::Node)?;
                let node = node_at(block, r, level)?;
                if level == 0 {
                    if let Some(value) = node.get(key) {
                        found(value);
                    }
                    return Ok(());
                }
                r = child_for(&node, key, r.blkno)?.1;
                (hint, parent) = (NO_SLOT, None);
                level -= 1;
                continue;
            }
            let id = store.clean_node(r, hint)?;
            if let Some((parent, position)) = parent.filter(|_| id != hint) {
                store.remember_child(parent, position, id);
            }
            let slot = store.slot(id);
            if slot.level as usize != level {
                let actual = slot.level;
                return Err(Error::corrupt(
                    r.blkno,
                    format!("node at level {actual}, parent expects {level}"),
                ));
            }
            if level == 0 {
                let node = NodeAccessor::verified(&slot.bytes()[HEADER_BYTES..], 0);
                if let Some(value) = node.get(key) {
                    found(value);
                }
                return Ok(());
            }
            let slots = store.slot_addresses();
            let (next, index_address) = match store.child_index(id)? {
                Some(index) => {
                    let position = index.position(key).ok_or_else(|| {
                        Error::corrupt(r.blkno, "key beyond the last child's bound")
                    })?;
                    let child = index.child(position);
                    let bytes = child.bytes.get();
                    let child_slot = child.slot.get();
                    // What the next level reads first are independent loads
                    // whose addresses are known now: the child's slot, then
                    // for a leaf its hash line, for an internal node the
                    // head of its index. Start them all.
                    if child_slot != NO_SLOT {
                        prefetch(slots.of(child_slot));
                    }
                    if level == 1 && bytes != 0 {
                        prefetch(
                            bytes + HEADER_BYTES + NodeAccessor::leaf_home_slot_at(payload, key),
                        );
                    }
                    let child_index = child.index.get();
                    if level > 1 && child_index != 0 {
                        for line in (0..SEARCH_HEAD_BYTES).step_by(64) {
                            prefetch(child_index + line);
                        }
                    }
                    let address = index as *const ChildIndex as usize;
                    ((child.r, child_slot, Some((id, position))), address)
                }
                None => {
                    let node = accessor(store.slot(id).bytes(), r.blkno)?;
                    ((child_for(&node, key, r.blkno)?.1, NO_SLOT, None), 0)
                }
            };
            if let Some((parent, position)) = parent {
                store.remember_child_index(parent, position, index_address);
            }
            (r, hint, parent) = next;
            level -= 1;
        }
    }

    /// The leaf whose range holds `key`; with `want_lower` also the lower
    /// bound of that range (an extra search per level, for backward scans).
    fn descend(&self, store: &mut BlockStore, key: &Key, want_lower: bool) -> Result<LeafAt> {
        self.check_height()?;
        let mut r: BlockRef = self.root;
        let (mut lower, mut upper) = (None, Key::MAX);
        // Nodes are borrowed from the store (`view`), never shared: no
        // reference count traffic per level.
        for level in (1..self.height as usize).rev() {
            let node = node_at(store.view(r, BlockKind::Node)?, r, level)?;
            let (bound, child) = child_for(&node, key, r.blkno)?;
            if want_lower {
                if let Some((previous, _)) =
                    bound.predecessor().and_then(|below| node.seek_le(&below))
                {
                    lower = Some(lower.map_or(previous, |lower: Key| lower.max(previous)));
                }
            }
            upper = upper.min(bound);
            r = child;
        }
        Ok(LeafAt { r, lower, upper })
    }

    /// Visits items with `start <= key <= end` in ascending order until
    /// `visit` returns false.
    pub(crate) fn scan_forward(
        &self,
        store: &mut BlockStore,
        start: &Key,
        end: &Key,
        visit: &mut dyn FnMut(&Key, &[u8]) -> bool,
    ) -> Result<()> {
        let mut cursor = *start;
        while cursor <= *end {
            let leaf = self.descend(store, &cursor, false)?;
            let block = store.view(leaf.r, BlockKind::Node)?;
            for (key, value) in node_at(block, leaf.r, 0)?.items_from(&cursor) {
                if key > *end || !visit(&key, value) {
                    return Ok(());
                }
            }
            match leaf.upper.successor() {
                Some(next) if next > cursor => cursor = next,
                Some(_) => return Err(Error::corrupt(leaf.r.blkno, "range did not advance")),
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Visits items with `start <= key <= end` in descending order until
    /// `visit` returns false.
    pub(crate) fn scan_backward(
        &self,
        store: &mut BlockStore,
        start: &Key,
        end: &Key,
        visit: &mut dyn FnMut(&Key, &[u8]) -> bool,
    ) -> Result<()> {
        let mut cursor = *end;
        while cursor >= *start {
            let leaf = self.descend(store, &cursor, true)?;
            let block = store.view(leaf.r, BlockKind::Node)?;
            for (key, value) in node_at(block, leaf.r, 0)?.items_rev_from(&cursor) {
                if key < *start || !visit(&key, value) {
                    return Ok(());
                }
            }
            match leaf.lower {
                Some(lower) if lower < cursor => cursor = lower,
                Some(_) => return Err(Error::corrupt(leaf.r.blkno, "range did not advance")),
                None => return Ok(()),
            }
        }
        Ok(())
    }
}
