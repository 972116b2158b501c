//! Lookups and range iteration. A range visits one leaf per descent: after a
//! leaf it descends again from the root to the key just past the leaf's
//! bound (or just before its lower bound when going backward), so it never
//! needs sibling pointers, which copy-on-write could not keep up to date.

use super::path::{accessor, child_for, node_at, read_node, Tree};
use crate::block::{BlockBuf, BlockKind, BlockRef, BlockStore};
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

/// Bytes at the end of a leaf to prefetch: the leaf's hash table lives
/// there (docs/btree-node.md), so its cache lines load while the node
/// header is being read instead of after it (lookups are bound by memory
/// latency, not instructions).
const LEAF_TAIL_PREFETCH_BYTES: usize = 512;
const CACHE_LINE_BYTES: usize = 64;

fn prefetch_leaf_tail(block: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let tail = &block[block.len().saturating_sub(LEAF_TAIL_PREFETCH_BYTES)..];
        for line in tail.chunks(CACHE_LINE_BYTES) {
            // SAFETY: prefetching is a hint; the address is inside `block`.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    line.as_ptr().cast(),
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

impl Tree {
    /// Calls `found` with the value of `key` if present.
    pub(crate) fn with_value(
        &self,
        store: &mut BlockStore,
        key: &Key,
        found: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        self.check_height()?;
        let mut r: BlockRef = self.root;
        for level in (0..self.height as usize).rev() {
            let block = store.view(r, BlockKind::Node)?;
            if level == 0 {
                prefetch_leaf_tail(block);
            }
            let node = node_at(block, r, level)?;
            if level == 0 {
                if let Some(value) = node.get(key) {
                    found(value);
                }
                return Ok(());
            }
            r = child_for(&node, key, r.blkno)?.1;
        }
        Ok(())
    }

    /// The leaf whose range holds `key`; with `want_lower` also the lower
    /// bound of that range (an extra search per level, for backward scans).
    fn descend(&self, store: &mut BlockStore, key: &Key, want_lower: bool) -> Result<LeafAt> {
        self.check_height()?;
        let mut r: BlockRef = self.root;
        let (mut lower, mut upper) = (None, Key::MAX);
        for level in (1..self.height as usize).rev() {
            let block = store.read(r, BlockKind::Node)?;
            let node = node_at(&block, r, level)?;
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
            let leaf = self.descend(store, &cursor, false)?;
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
            let leaf = self.descend(store, &cursor, true)?;
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
