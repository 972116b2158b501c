//! The copy-on-write btree over metadata blocks: shared types and the
//! descent helpers of every operation.
//!
//! Parent items: an internal node holds one item per child whose key is the
//! child's *upper bound*: every key in the child's subtree is greater than
//! the previous item's key and at most this item's key. The last item of
//! every internal node equals the node's own upper bound, so the root's last
//! item is `Key::MAX` and a descent always finds a child. Inserts never touch
//! parent keys; splits, joins and refills set them (see `edit`).

use crate::block::store::node_error;
use crate::block::{BlockBuf, BlockKind, BlockRef, BlockStore, HEADER_BYTES};
use crate::btree::node::{NodeAccessor, NodeMut};
use crate::error::{Error, Result};
use crate::key::Key;

/// Tree height limit: with 4 KiB blocks even a quarter-full tree of this
/// height holds more items than any device, so reaching it means corruption
/// (or a bug), and it bounds every path vector and recursion.
pub(crate) const HEIGHT_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tree {
    pub(crate) root: BlockRef,
    /// Number of levels: 1 when the root is a leaf.
    pub(crate) height: u8,
    pub(crate) items: u64,
}

/// One node on a descent path and the upper bound its parent gives it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Step {
    pub(super) r: BlockRef,
    pub(super) bound: Key,
}

pub(super) fn accessor(block: &[u8], blkno: u64) -> Result<NodeAccessor<'_>> {
    NodeAccessor::new(&block[HEADER_BYTES..]).map_err(|error| node_error(blkno, error))
}

pub(super) fn editor(block: &mut [u8], blkno: u64) -> Result<NodeMut<'_>> {
    NodeMut::open(&mut block[HEADER_BYTES..]).map_err(|error| node_error(blkno, error))
}

/// Reads a node and checks it sits at the level its parent implies.
pub(super) fn read_node(store: &mut BlockStore, r: BlockRef, level: usize) -> Result<BlockBuf> {
    let block = store.read(r, BlockKind::Node)?;
    node_at(&block, r, level)?;
    Ok(block)
}

/// The view of a node read for `r`, checked to sit at `level`.
pub(super) fn node_at(block: &[u8], r: BlockRef, level: usize) -> Result<NodeAccessor<'_>> {
    let node = accessor(block, r.blkno)?;
    if node.level() as usize != level {
        let actual = node.level();
        return Err(Error::corrupt(
            r.blkno,
            format!("node at level {actual}, parent expects {level}"),
        ));
    }
    Ok(node)
}

/// The child of an internal node whose key range holds `key`.
pub(super) fn child_for(node: &NodeAccessor<'_>, key: &Key, blkno: u64) -> Result<(Key, BlockRef)> {
    let (bound, value) = node
        .seek_ge(key)
        .ok_or_else(|| Error::corrupt(blkno, "key beyond the last child's bound"))?;
    Ok((bound, BlockRef::decode(value, blkno)?))
}

impl Tree {
    pub(super) fn check_height(&self) -> Result<()> {
        if self.height == 0 || self.height as usize > HEIGHT_MAX {
            return Err(Error::corrupt(
                self.root.blkno,
                format!("tree height {} out of range", self.height),
            ));
        }
        Ok(())
    }

    /// Most new blocks one insert or delete can need: a copy of every node
    /// on the path, a split (or a sibling copy) at every level, a new root.
    pub(crate) fn op_blocks_max(&self) -> u64 {
        2 * self.height as u64 + 2
    }

    /// Makes every node from the root to the leaf whose range holds `key`
    /// dirty, updating parents' child references. Returns the path, root
    /// first.
    pub(super) fn cow_path(&mut self, store: &mut BlockStore, key: &Key) -> Result<Vec<Step>> {
        self.check_height()?;
        self.root = store.cow(self.root, BlockKind::Node)?;
        let mut path = Vec::with_capacity(self.height as usize);
        path.push(Step {
            r: self.root,
            bound: Key::MAX,
        });
        for level in (1..self.height as usize).rev() {
            let parent = *path.last().expect("path starts with the root");
            let block = store.view(parent.r, BlockKind::Node)?;
            let (bound, child) = child_for(&node_at(block, parent.r, level)?, key, parent.r.blkno)?;
            let dirty_child = store.cow(child, BlockKind::Node)?;
            if dirty_child != child {
                set_child(store, parent.r, &bound, dirty_child)?;
            }
            path.push(Step {
                r: dirty_child,
                bound,
            });
        }
        let leaf = path.last().expect("path holds the leaf").r;
        node_at(store.view(leaf, BlockKind::Node)?, leaf, 0)?;
        Ok(path)
    }
}

/// Points the item `bound` of dirty internal node `parent` at `child`.
pub(super) fn set_child(
    store: &mut BlockStore,
    parent: BlockRef,
    bound: &Key,
    child: BlockRef,
) -> Result<()> {
    let mut block = store.take(parent)?;
    let result = editor(&mut block, parent.blkno).and_then(|mut node| {
        node.insert(bound, &child.encode())
            .map_err(|error| node_error(parent.blkno, error))
    });
    store.put(parent, block);
    match result? {
        Some(_) => Ok(()),
        None => Err(Error::corrupt(
            parent.blkno,
            "child reference replaced a missing item",
        )),
    }
}
