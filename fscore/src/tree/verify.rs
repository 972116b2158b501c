//! The tree verifier: walks every node reachable from the root and checks
//! each node's own invariants (`NodeAccessor::verify`), its level, that its
//! keys lie in the range its parent gives it, that internal nodes end with
//! their own bound, that non-root nodes are not empty, and (by levels
//! descending by one per step) that all leaves are at the same depth.
//! Problems are reported, not returned as the first error, so check can list
//! them all.

use super::path::{accessor, read_node, Tree};
use crate::block::{BlockRef, BlockStore};
use crate::error::Error;
use crate::key::Key;

/// What a walk reports.
pub(crate) trait TreeVisitor {
    /// A node block is referenced (called once per reference).
    fn node(&mut self, blkno: u64);
    /// A leaf item.
    fn item(&mut self, key: &Key, value: &[u8]);
    fn problem(&mut self, block: u64, what: String);
}

impl Tree {
    /// Walks the whole tree; returns the number of leaf items seen.
    pub(crate) fn walk(&self, store: &mut BlockStore, visitor: &mut dyn TreeVisitor) -> u64 {
        if let Err(error) = self.check_height() {
            report(visitor, self.root.blkno, error);
            return 0;
        }
        walk_node(
            store,
            self.root,
            self.height as usize - 1,
            None,
            Key::MAX,
            true,
            visitor,
        )
    }
}

fn report(visitor: &mut dyn TreeVisitor, blkno: u64, error: Error) {
    match error {
        Error::Corrupt { block, what } => visitor.problem(block, what),
        other => visitor.problem(blkno, other.to_string()),
    }
}

fn walk_node(
    store: &mut BlockStore,
    r: BlockRef,
    level: usize,
    lower: Option<Key>,
    upper: Key,
    is_root: bool,
    visitor: &mut dyn TreeVisitor,
) -> u64 {
    visitor.node(r.blkno);
    let block = match read_node(store, r, level) {
        Ok(block) => block,
        Err(error) => {
            report(visitor, r.blkno, error);
            return 0;
        }
    };
    let node = match accessor(&block, r.blkno) {
        Ok(node) => node,
        Err(error) => {
            report(visitor, r.blkno, error);
            return 0;
        }
    };
    if let Err(error) = node.verify() {
        report(
            visitor,
            r.blkno,
            crate::block::store::node_error(r.blkno, error),
        );
        return 0;
    }
    let mut problem = |what: String| visitor.problem(r.blkno, what);
    if !is_root && node.item_count() == 0 {
        problem("empty non-root node".into());
    }
    if let (Some(lower), Some((first, _))) = (lower, node.first()) {
        if first <= lower {
            problem(format!(
                "first key {first:?} not above the range's lower bound {lower:?}"
            ));
        }
    }
    if let Some((last, _)) = node.last() {
        if last > upper {
            problem(format!(
                "last key {last:?} above the range's upper bound {upper:?}"
            ));
        }
        if level > 0 && last != upper {
            problem(format!(
                "internal node ends with {last:?}, not its bound {upper:?}"
            ));
        }
    }
    if level == 0 {
        let mut count = 0;
        for (key, value) in node.items() {
            visitor.item(&key, value);
            count += 1;
        }
        return count;
    }
    let children: Vec<(Key, Result<BlockRef, Error>)> = node
        .items()
        .map(|(key, value)| (key, BlockRef::decode(value, r.blkno)))
        .collect();
    drop(block);
    let mut count = 0;
    let mut previous = lower;
    for (bound, child) in children {
        match child {
            Ok(child) => {
                count += walk_node(store, child, level - 1, previous, bound, false, visitor)
            }
            Err(error) => report(visitor, r.blkno, error),
        }
        previous = Some(bound);
    }
    count
}
