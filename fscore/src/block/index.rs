//! `ChildIndex`: an in-memory search structure for a cached internal node,
//! never written to disk. The node's AVL tree costs a dependent cache miss
//! per step (items are scattered over the item array); the index holds the
//! children's bounds in one sorted array of u128 (16 bytes each, contiguous)
//! plus a summary of every `GROUP`th bound. A search counts the summary
//! bounds below the key, then the bounds below it in the one group that
//! holds the answer: two rounds of independent loads (a few cache lines
//! each, which the CPU fetches in parallel) instead of the ~7 dependent
//! steps of a binary search over a node not in the L1/L2 cache. Each
//! child's reference sits beside the cache slot it was last found in, so
//! the descent skips the block map. The index is built only from a node
//! that passed `verify`, and is dropped with the cached block.

use super::cache::{SlotId, NO_SLOT};
use super::header::BlockRef;
use crate::btree::node::NodeAccessor;
use crate::key::Key;
use std::cell::Cell;

/// One child of an indexed internal node.
pub(crate) struct Child {
    pub(crate) r: BlockRef,
    /// The cache slot the child was last found in, or `NO_SLOT`; a hint,
    /// checked against `r` before use.
    pub(crate) slot: Cell<SlotId>,
    /// Address of the child's bytes when it was last found: only ever
    /// used to prefetch (a stale address costs nothing), never read.
    pub(crate) bytes: Cell<usize>,
    /// Address of the child's own `ChildIndex` when it was last used (0 if
    /// none): prefetched with the slot, like `bytes`, never read.
    pub(crate) index: Cell<usize>,
}

/// Bounds per group of the summary: 8 x 16 bytes = two cache lines.
const GROUP: usize = 8;

/// Summary entries kept inside the `ChildIndex` itself: enough for a 4 KiB
/// node's children (larger blocks spill to the heap).
const SUMMARY_INLINE: usize = 16;

/// Bytes from the start of a `ChildIndex` that a search reads first (the
/// struct with its inline summary): what a parent prefetches.
pub(crate) const SEARCH_HEAD_BYTES: usize = 64 + SUMMARY_INLINE * 16;

// The summary comes first, so one address covers what a search reads first.
#[repr(C)]
pub(crate) struct ChildIndex {
    /// The last bound of each group of `GROUP` bounds, inline: a search
    /// reads it without another pointer to follow.
    summary: smallvec::SmallVec<[u128; SUMMARY_INLINE]>,
    /// Upper bound of each child's key range, ascending, as `key_ord`.
    bounds: Box<[u128]>,
    children: Box<[Child]>,
}

#[inline]
fn key_ord(key: &Key) -> u128 {
    (key.hi as u128) << 64 | key.lo as u128
}

impl ChildIndex {
    /// The index of a verified internal node; None when the node is empty
    /// or an item's value is not a block reference (lookups then use the
    /// node itself, which reports the bad item if they reach it).
    pub(crate) fn build(node: &NodeAccessor<'_>) -> Option<ChildIndex> {
        let count = node.item_count();
        let mut bounds = Vec::with_capacity(count);
        let mut children = Vec::with_capacity(count);
        for (key, value) in node.items() {
            let r = BlockRef::decode(value, 0).ok()?;
            bounds.push(key_ord(&key));
            children.push(Child {
                r,
                slot: Cell::new(NO_SLOT),
                bytes: Cell::new(0),
                index: Cell::new(0),
            });
        }
        if bounds.is_empty() || bounds.len() != count || !bounds.is_sorted() {
            return None;
        }
        let summary = bounds
            .chunks(GROUP)
            .map(|group| group[group.len() - 1])
            .collect();
        Some(ChildIndex {
            bounds: bounds.into_boxed_slice(),
            summary,
            children: children.into_boxed_slice(),
        })
    }

    /// The position of the child whose range holds `key` (the first whose
    /// bound is >= `key`); None past the last bound.
    #[inline]
    pub(crate) fn position(&self, key: &Key) -> Option<usize> {
        let want = key_ord(key);
        // Groups whose last bound is below the key lie wholly below it;
        // the answer is in the next group. Branch-free counts.
        let below = |bounds: &[u128]| bounds.iter().map(|b| (*b < want) as usize).sum::<usize>();
        let start = below(&self.summary) * GROUP;
        // The answer's entry is one of this group's children: fetch their
        // lines while the group's bounds are compared.
        if let Some(children) = self
            .children
            .get(start..(start + GROUP).min(self.children.len()))
        {
            let (first, bytes) = (children.as_ptr() as usize, std::mem::size_of_val(children));
            for line in (0..bytes).step_by(64) {
                crate::block::prefetch(first + line);
            }
        }
        let group = self
            .bounds
            .get(start..(start + GROUP).min(self.bounds.len()))?;
        let at = start + below(group);
        (at < self.bounds.len()).then_some(at)
    }

    #[inline]
    pub(crate) fn child(&self, position: usize) -> &Child {
        &self.children[position]
    }

    pub(crate) fn children(&self) -> &[Child] {
        &self.children
    }

    pub(crate) fn get(&self, position: usize) -> Option<&Child> {
        self.children.get(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::node::NodeMut;

    #[test]
    fn finds_the_first_bound_at_or_above() {
        for count in (1..40u64).chain([63, 64, 65, 80, 92]) {
            let mut buf = vec![0u8; 4096];
            let mut node = NodeMut::init(&mut buf, 1);
            for i in 0..count {
                let r = BlockRef {
                    blkno: 100 + i,
                    seq: 7,
                };
                node.insert(&Key::new(0, 10 * (i + 1)), &r.encode())
                    .unwrap();
            }
            let index = ChildIndex::build(&node.accessor()).unwrap();
            for probe in 0..10 * count + 12 {
                let want = node
                    .accessor()
                    .seek_ge(&Key::new(0, probe))
                    .map(|(_, v)| BlockRef::decode(v, 0).unwrap());
                let got = index
                    .position(&Key::new(0, probe))
                    .map(|at| index.child(at).r);
                assert_eq!(got, want, "count {count} probe {probe}");
            }
        }
    }
}
