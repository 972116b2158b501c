//! Insert and delete: copy the path to the leaf, edit the leaf, then fix the
//! tree on the way up (splits after an insert; joins and refills after a
//! delete).
//!
//! Split of node N (upper bound B) into N and a new right node R: N keeps
//! the smaller keys and its bound becomes its last key L; R gets (L, B].
//! In the parent the item B is re-pointed at R and an item L -> N is
//! inserted. Join/refill happens only when a node is below a quarter full
//! (`wants_join`), so a population hovering near half does not thrash.

use super::path::{accessor, editor, read_node, set_child, Step, Tree, HEIGHT_MAX};
use crate::block::store::node_error;
use crate::block::HEADER_BYTES;
use crate::block::{BlockKind, BlockRef, BlockStore};
use crate::btree::node::{NodeError, NodeMut};
use crate::error::{Error, Result};
use crate::key::Key;

/// A node that split: the left part keeps its location.
struct Split {
    /// Upper bound of the node before the split (now the right part's).
    bound: Key,
    left: BlockRef,
    left_last: Key,
    right: BlockRef,
}

impl Tree {
    /// Inserts or replaces. The caller made sure enough blocks are free
    /// (`op_blocks_max`), so no allocation fails half-way.
    pub(crate) fn insert(&mut self, store: &mut BlockStore, key: &Key, value: &[u8]) -> Result<()> {
        if self.height as usize >= HEIGHT_MAX {
            return Err(Error::NoSpace);
        }
        let mut path = self.cow_path(store, key)?;
        let leaf = path.pop().expect("path holds the leaf");
        let mut block = store.take(leaf.r)?;
        let result = editor(&mut block, leaf.r.blkno).map(|mut node| node.insert(key, value));
        store.put(leaf.r, block);
        match result? {
            Ok(replaced) => {
                self.items += replaced.is_none() as u64;
                return Ok(());
            }
            Err(NodeError::Full) => {}
            Err(error) => return Err(node_error(leaf.r.blkno, error)),
        }
        let (split, replaced) = split_and_insert(store, leaf, 0, key, value)?;
        self.items += replaced.is_none() as u64;
        self.add_split(store, path, split)
    }

    /// Records a split in the parents, splitting them in turn when full, and
    /// grows a new root when the root split.
    fn add_split(
        &mut self,
        store: &mut BlockStore,
        mut path: Vec<Step>,
        mut split: Split,
    ) -> Result<()> {
        let mut level = self.height as usize - path.len();
        loop {
            let Some(parent) = path.pop() else {
                return self.grow_root(store, split);
            };
            set_child(store, parent.r, &split.bound, split.right)?;
            let mut block = store.take(parent.r)?;
            let result = editor(&mut block, parent.r.blkno)
                .map(|mut node| node.insert(&split.left_last, &split.left.encode()));
            store.put(parent.r, block);
            match result? {
                Ok(_) => return Ok(()),
                Err(NodeError::Full) => {}
                Err(error) => return Err(node_error(parent.r.blkno, error)),
            }
            let left = split.left.encode();
            split = split_and_insert(store, parent, level, &split.left_last, &left)?.0;
            level += 1;
        }
    }

    fn grow_root(&mut self, store: &mut BlockStore, split: Split) -> Result<()> {
        let root = store.alloc_block(BlockKind::Node)?;
        let mut block = store.take(root)?;
        // A new root: (left_last -> left), (MAX -> right).
        let result = (|| {
            let mut node = NodeMut::init(&mut block[HEADER_BYTES..], self.height);
            node.insert(&split.left_last, &split.left.encode())?;
            node.insert(&Key::MAX, &split.right.encode())
        })();
        store.put(root, block);
        result.map_err(|error| node_error(root.blkno, error))?;
        self.root = root;
        self.height += 1;
        Ok(())
    }

    /// Deletes; returns whether the key was present.
    pub(crate) fn delete(&mut self, store: &mut BlockStore, key: &Key) -> Result<bool> {
        if !self.contains(store, key)? {
            return Ok(false);
        }
        let path = self.cow_path(store, key)?;
        let leaf = *path.last().expect("path holds the leaf");
        let mut block = store.take(leaf.r)?;
        let deleted = editor(&mut block, leaf.r.blkno).map(|mut node| node.delete(key));
        store.put(leaf.r, block);
        if !deleted? {
            return Err(Error::corrupt(
                leaf.r.blkno,
                "item found by lookup is missing from its leaf",
            ));
        }
        self.items -= 1;
        self.rebalance(store, path)?;
        Ok(true)
    }

    /// Walks up from the leaf: a node below a quarter full joins its
    /// neighbour, or takes items from it when both don't fit in one block.
    fn rebalance(&mut self, store: &mut BlockStore, mut path: Vec<Step>) -> Result<()> {
        while path.len() > 1 {
            let step = path.pop().expect("len > 1");
            let level = self.height as usize - 1 - path.len();
            if !accessor(&read_node(store, step.r, level)?, step.r.blkno)?.wants_join() {
                break;
            }
            let parent = *path.last().expect("len > 1");
            join_or_refill(store, parent, step)?;
        }
        self.shrink_root(store)
    }

    /// An internal root with a single child is replaced by that child.
    fn shrink_root(&mut self, store: &mut BlockStore) -> Result<()> {
        while self.height > 1 {
            let block = read_node(store, self.root, self.height as usize - 1)?;
            let node = accessor(&block, self.root.blkno)?;
            if node.item_count() != 1 {
                break;
            }
            let (_, value) = node.first().expect("one item");
            let child = BlockRef::decode(value, self.root.blkno)?;
            drop(block);
            store.free(self.root)?;
            self.root = child;
            self.height -= 1;
        }
        Ok(())
    }

    fn contains(&self, store: &mut BlockStore, key: &Key) -> Result<bool> {
        let mut found = false;
        self.with_value(store, key, &mut |_| found = true)?;
        Ok(found)
    }
}

/// Splits dirty node `step` (full) into itself and a new right node, then
/// inserts the item into the half whose range holds it. An insert at the
/// node's right end moves at most one item (`split_at_end_for`), else the
/// node splits in half.
fn split_and_insert(
    store: &mut BlockStore,
    step: Step,
    level: usize,
    key: &Key,
    value: &[u8],
) -> Result<(Split, Option<usize>)> {
    let right = store.alloc_block(BlockKind::Node)?;
    let mut left_block = store.take(step.r)?;
    let mut right_block = store.take(right)?;
    let result = (|| -> Result<(Key, Option<usize>)> {
        let mut left_node = editor(&mut left_block, step.r.blkno)?;
        let mut right_node = NodeMut::init(&mut right_block[HEADER_BYTES..], level as u8);
        if !left_node.split_at_end_for(&mut right_node, key) {
            left_node.split_into(&mut right_node);
        }
        let (left_last, _) = left_node
            .accessor()
            .last()
            .ok_or_else(|| Error::corrupt(step.r.blkno, "split left an empty node"))?;
        let replaced = if *key <= left_last {
            left_node
                .insert(key, value)
                .map_err(|error| node_error(step.r.blkno, error))?
        } else {
            right_node
                .insert(key, value)
                .map_err(|error| node_error(right.blkno, error))?
        };
        let left_last = left_node.accessor().last().expect("not empty").0;
        Ok((left_last, replaced))
    })();
    store.put(step.r, left_block);
    store.put(right, right_block);
    let (left_last, replaced) = result?;
    Ok((
        Split {
            bound: step.bound,
            left: step.r,
            left_last,
            right,
        },
        replaced,
    ))
}

/// Joins dirty node `step` with a neighbour under the same parent, or
/// refills it from that neighbour, and fixes the parent's items.
fn join_or_refill(store: &mut BlockStore, parent: Step, step: Step) -> Result<()> {
    let block = store.read(parent.r, BlockKind::Node)?;
    let node = accessor(&block, parent.r.blkno)?;
    let right = step.bound.successor().and_then(|key| node.seek_ge(&key));
    let left = step.bound.predecessor().and_then(|key| node.seek_le(&key));
    let (sibling_bound, sibling_value, sibling_is_right) = match (right, left) {
        (Some((bound, value)), _) => (bound, value, true),
        (None, Some((bound, value))) => (bound, value, false),
        (None, None) => return Ok(()), // an only child: its parent joins next
    };
    let sibling = BlockRef::decode(sibling_value, parent.r.blkno)?;
    drop(block);
    let dirty_sibling = store.cow(sibling, BlockKind::Node)?;
    if dirty_sibling != sibling {
        set_child(store, parent.r, &sibling_bound, dirty_sibling)?;
    }
    let mut node_block = store.take(step.r)?;
    let mut sibling_block = store.take(dirty_sibling)?;
    let moved = (|| -> Result<(usize, Option<Key>, Option<Key>)> {
        let mut node = editor(&mut node_block, step.r.blkno)?;
        let mut source = editor(&mut sibling_block, dirty_sibling.blkno)?;
        let used = node.accessor().used_bytes() + source.accessor().used_bytes();
        let payload = node.accessor().payload_bytes();
        // Join when both fit with a quarter to spare, else share evenly.
        let goal = if used <= payload - payload / 4 {
            usize::MAX
        } else {
            used / 2
        };
        let moved = node.refill_from(&mut source, sibling_is_right, goal);
        Ok((
            moved,
            node.accessor().last().map(|item| item.0),
            source.accessor().last().map(|item| item.0),
        ))
    })();
    store.put(step.r, node_block);
    store.put(dirty_sibling, sibling_block);
    let (moved, node_last, sibling_last) = moved?;
    let mut parent_block = store.take(parent.r)?;
    let result = (|| -> std::result::Result<(), NodeError> {
        let mut parent_node = NodeMut::open(&mut parent_block[HEADER_BYTES..])?;
        match (sibling_last, sibling_is_right) {
            // Joined: the neighbour is gone; the node takes over its range.
            (None, true) => {
                parent_node.insert(&sibling_bound, &step.r.encode())?;
                parent_node.delete(&step.bound);
            }
            (None, false) => {
                parent_node.delete(&sibling_bound);
            }
            // Refilled from the right: the node's bound grows to its last key.
            (Some(_), true) if moved > 0 => {
                let last = node_last.expect("took items");
                parent_node.delete(&step.bound);
                parent_node.insert(&last, &step.r.encode())?;
            }
            // Refilled from the left: the neighbour's bound shrinks.
            (Some(last), false) if moved > 0 => {
                parent_node.delete(&sibling_bound);
                parent_node.insert(&last, &dirty_sibling.encode())?;
            }
            (Some(_), _) => {}
        }
        Ok(())
    })();
    store.put(parent.r, parent_block);
    result.map_err(|error| node_error(parent.r.blkno, error))?;
    if sibling_last.is_none() {
        store.free(dirty_sibling)?;
    }
    Ok(())
}
