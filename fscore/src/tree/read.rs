//! Lookups and range iteration. A range visits one leaf per descent: after a
//! leaf it descends again from the root to the key just past the leaf's
//! bound (or just before its lower bound when going backward), so it never
//! needs sibling pointers, which copy-on-write could not keep up to date.

use super::path::{accessor, child_for, read_node, Tree};
use crate::block::{BlockBuf, BlockRef, BlockStore};
use crate::error::{Error, Result};
use crate::key::Key;

/// A leaf reached by a descent and the key range its parents give it:
/// keys in (lower, upper]; `lower` None means unbounded.
struct LeafAt {
    block: BlockBuf,
    blkno: u64,
    lower: Option<Key>,
    upper: Key,
}

impl Tree {
    /// Calls `found` with the value of `key` if present.
    pub(crate) fn with_value(
        &self,
        store: &mut BlockStore,
        key: &Key,
        found: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let leaf = self.descend(store, key)?;
        if let Some(value) = accessor(&leaf.block, leaf.blkno)?.get(key) {
            found(value);
        }
        Ok(())
    }

    fn descend(&self, store: &mut BlockStore, key: &Key) -> Result<LeafAt> {
        self.check_height()?;
        let mut r: BlockRef = self.root;
        let (mut lower, mut upper) = (None, Key::MAX);
        for level in (1..self.height as usize).rev() {
            let block = read_node(store, r, level)?;
            let node = accessor(&block, r.blkno)?;
            let (bound, child) = child_for(&node, key, r.blkno)?;
            if let Some((previous, _)) = bound.predecessor().and_then(|below| node.seek_le(&below))
            {
                lower = Some(lower.map_or(previous, |lower: Key| lower.max(previous)));
            }
            upper = upper.min(bound);
            r = child;
        }
        let block = read_node(store, r, 0)?;
        Ok(LeafAt {
            block,
            blkno: r.blkno,
            lower,
            upper,
        })
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
            let leaf = self.descend(store, &cursor)?;
            for (key, value) in accessor(&leaf.block, leaf.blkno)?.items_from(&cursor) {
                if key > *end || !visit(&key, value) {
                    return Ok(());
                }
            }
            match leaf.upper.successor() {
                Some(next) if next > cursor => cursor = next,
                Some(_) => return Err(Error::corrupt(leaf.blkno, "range did not advance")),
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
            let leaf = self.descend(store, &cursor)?;
            for (key, value) in accessor(&leaf.block, leaf.blkno)?.items_rev_from(&cursor) {
                if key < *start || !visit(&key, value) {
                    return Ok(());
                }
            }
            match leaf.lower {
                Some(lower) if lower < cursor => cursor = lower,
                Some(_) => return Err(Error::corrupt(leaf.blkno, "range did not advance")),
                None => return Ok(()),
            }
        }
        Ok(())
    }
}
