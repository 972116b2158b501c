//! In-order iteration over the AVL tree with a fixed-size stack (no
//! allocation, no recursion). The stack holds the ancestors still to visit;
//! a corrupt tree deeper than `AVL_PATH_LEN` or with cycles ends early.

use super::layout::*;
use crate::key::Key;

/// Ascending iterator, optionally starting at the first key >= a bound.
pub(crate) struct ItemIter<'a> {
    buf: &'a [u8],
    stack: [u16; AVL_PATH_LEN],
    depth: usize,
    /// Items left to yield at most: ends even a cyclic (corrupt) tree.
    budget: usize,
}

/// Descending iterator, optionally starting at the last key <= a bound.
pub(crate) struct ItemIterRev<'a> {
    buf: &'a [u8],
    stack: [u16; AVL_PATH_LEN],
    depth: usize,
    /// Items left to yield at most: ends even a cyclic (corrupt) tree.
    budget: usize,
}

impl<'a> ItemIter<'a> {
    pub(crate) fn new(buf: &'a [u8], from: Option<&Key>) -> Self {
        let mut it = ItemIter {
            buf,
            stack: [0; AVL_PATH_LEN],
            depth: 0,
            budget: hdr_count(buf),
        };
        let mut cur = hdr_root(buf);
        // Push every node on the search path whose key is >= the bound: they
        // are exactly the ancestors whose turn is still to come.
        // One step per tree level: bounded even when links form a cycle.
        for _ in 0..AVL_PATH_LEN {
            if cur == 0 {
                break;
            }
            match from {
                Some(k) if item_key(buf, cur) < *k => cur = right(buf, cur),
                _ => {
                    it.stack[it.depth] = cur as u16;
                    it.depth += 1;
                    cur = left(buf, cur);
                }
            }
        }
        it
    }

    fn push_left_spine(&mut self, mut cur: usize) {
        while cur != 0 && self.depth < AVL_PATH_LEN {
            self.stack[self.depth] = cur as u16;
            self.depth += 1;
            cur = left(self.buf, cur);
        }
    }
}

impl<'a> Iterator for ItemIter<'a> {
    type Item = (Key, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.depth == 0 || self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        self.depth -= 1;
        let off = self.stack[self.depth] as usize;
        self.push_left_spine(right(self.buf, off));
        Some((item_key(self.buf, off), value(self.buf, off)))
    }
}

impl<'a> ItemIterRev<'a> {
    pub(crate) fn new(buf: &'a [u8], from: Option<&Key>) -> Self {
        let mut it = ItemIterRev {
            buf,
            stack: [0; AVL_PATH_LEN],
            depth: 0,
            budget: hdr_count(buf),
        };
        let mut cur = hdr_root(buf);
        // One step per tree level: bounded even when links form a cycle.
        for _ in 0..AVL_PATH_LEN {
            if cur == 0 {
                break;
            }
            match from {
                Some(k) if item_key(buf, cur) > *k => cur = left(buf, cur),
                _ => {
                    it.stack[it.depth] = cur as u16;
                    it.depth += 1;
                    cur = right(buf, cur);
                }
            }
        }
        it
    }

    fn push_right_spine(&mut self, mut cur: usize) {
        while cur != 0 && self.depth < AVL_PATH_LEN {
            self.stack[self.depth] = cur as u16;
            self.depth += 1;
            cur = right(self.buf, cur);
        }
    }
}

impl<'a> Iterator for ItemIterRev<'a> {
    type Item = (Key, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.depth == 0 || self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        self.depth -= 1;
        let off = self.stack[self.depth] as usize;
        self.push_right_spine(left(self.buf, off));
        Some((item_key(self.buf, off), value(self.buf, off)))
    }
}
