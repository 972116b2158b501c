//! `BlockSet`: a set of blocks kept as bits, 64 blocks to a word, in a
//! hash map keyed by word number (block / 64).
//!
//! The allocator keeps the blocks a transaction allocates and frees in
//! these. A volume's random 4 KiB overwrites add one scattered block to
//! each per write, so the sets grow to tens of thousands of single-block
//! runs between commits; as ordered maps of runs, the inserts and overlap
//! checks were ~7% of the NBD thread's time at 4k randwrite (deep descents,
//! each node a cache miss). Here an insert or a membership test is one hash
//! probe and a few bit operations, and nearby blocks share a word. Runs come
//! out in block order, merged, only when asked for: at a commit, by sorting
//! the word numbers.
//!
//! Memory: ~20 bytes per word holding any block (the key, the bits, the
//! table's control byte and load factor), so no more per block than an
//! ordered map of runs when blocks are scattered (one run, one word each),
//! and far less when they are dense. Words whose last block goes are
//! removed.
//!
//! The number of runs is kept exact as blocks come and go (from the bits
//! on either side of each change), because commits size their logs by it.

use super::extents::Extent;
use rustc_hash::FxHashMap;

const WORD_BITS: u64 = 64;

#[derive(Clone, Debug, Default)]
pub(crate) struct BlockSet {
    /// Word number -> its blocks' bits (never zero).
    words: FxHashMap<u64, u64>,
    blocks: u64,
    /// Maximal runs of consecutive blocks.
    runs: usize,
}

/// `bits` set bits from bit `bit` of a word (`bit + bits` <= 64).
fn mask(bit: u64, bits: u64) -> u64 {
    if bits == WORD_BITS {
        u64::MAX
    } else {
        ((1u64 << bits) - 1) << bit
    }
}

/// The bits of word `word` that `extent` covers (0 if none).
fn word_mask(extent: Extent, word: u64) -> u64 {
    let base = word * WORD_BITS;
    let lo = extent.start.max(base);
    let hi = extent.end().min(base + WORD_BITS);
    if lo >= hi {
        return 0;
    }
    mask(lo - base, hi - lo)
}

/// One word's share of an extent: word number and bit mask.
fn spans(extent: Extent) -> impl Iterator<Item = (u64, u64)> {
    let mut at = extent.start;
    let end = extent.end();
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let bit = at % WORD_BITS;
        let bits = (WORD_BITS - bit).min(end - at);
        let word = at / WORD_BITS;
        at += bits;
        Some((word, mask(bit, bits)))
    })
}

impl BlockSet {
    /// Maximal runs of consecutive blocks (what `runs` returns).
    pub(crate) fn len(&self) -> usize {
        self.runs
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Empties the set, keeping the hash map's memory for the next use.
    pub(crate) fn clear(&mut self) {
        self.words.clear();
        self.blocks = 0;
        self.runs = 0;
    }

    pub(crate) fn has(&self, blkno: u64) -> bool {
        self.words
            .get(&(blkno / WORD_BITS))
            .is_some_and(|bits| bits & (1 << (blkno % WORD_BITS)) != 0)
    }

    /// Whether any block of `extent` is in the set. An extent spanning
    /// more words than the set holds (a whole device's free extent at
    /// open) is tested against the set's words instead of probing each of
    /// its own.
    pub(crate) fn overlaps(&self, extent: Extent) -> bool {
        if extent.len == 0 {
            return false;
        }
        let spanned = (extent.end() - 1) / WORD_BITS - extent.start / WORD_BITS + 1;
        if spanned > self.words.len() as u64 {
            return self
                .words
                .iter()
                .any(|(&word, &bits)| bits & word_mask(extent, word) != 0);
        }
        spans(extent).any(|(word, mask)| self.words.get(&word).is_some_and(|bits| bits & mask != 0))
    }

    /// Some block of the set (the lowest of whichever word the table
    /// yields first), or None if it is empty.
    pub(crate) fn any(&self) -> Option<u64> {
        let (&word, &bits) = self.words.iter().next()?;
        Some(word * WORD_BITS + u64::from(bits.trailing_zeros()))
    }

    /// Gives back the table's memory once it holds less than an eighth of
    /// what it has room for, so that `any`, which walks the table from its
    /// start, never walks a mostly empty one. Amortized O(1) per removal.
    pub(crate) fn shrink_if_sparse(&mut self) {
        let capacity = self.words.capacity();
        if capacity > 1024 && self.words.len() < capacity / 8 {
            self.words.shrink_to(self.words.len() * 2);
        }
    }

    /// Whether every block of `extent` is in the set.
    pub(crate) fn contains(&self, extent: Extent) -> bool {
        extent.len > 0
            && spans(extent).all(|(word, mask)| {
                self.words
                    .get(&word)
                    .is_some_and(|bits| bits & mask == mask)
            })
    }

    /// Whether the blocks just before and just after `extent` are in the set.
    fn neighbours(&self, extent: Extent) -> (bool, bool) {
        let below = extent.start > 0 && self.has(extent.start - 1);
        (below, self.has(extent.end()))
    }

    /// Adds an extent disjoint from the set.
    pub(crate) fn insert(&mut self, extent: Extent) {
        let inserted = self.try_insert(extent);
        debug_assert!(inserted, "extent {extent:?} overlaps the set");
    }

    /// Adds `extent`; false, and nothing changed, if any of its blocks is
    /// already in the set.
    pub(crate) fn try_insert(&mut self, extent: Extent) -> bool {
        debug_assert!(extent.len > 0);
        if self.overlaps(extent) {
            return false;
        }
        let (below, above) = self.neighbours(extent);
        for (word, mask) in spans(extent) {
            *self.words.entry(word).or_insert(0) |= mask;
        }
        // A new run, less one for each neighbouring run it joins.
        self.runs = self.runs + 1 - usize::from(below) - usize::from(above);
        self.blocks += extent.len;
        true
    }

    /// Removes an extent that `contains` holds.
    pub(crate) fn remove(&mut self, extent: Extent) {
        debug_assert!(self.contains(extent));
        for (word, mask) in spans(extent) {
            let bits = self
                .words
                .get_mut(&word)
                .expect("removed blocks are in the set");
            *bits &= !mask;
            if *bits == 0 {
                self.words.remove(&word);
            }
        }
        // The run that held the extent goes; what is left of it on either
        // side stays a run.
        let (below, above) = self.neighbours(extent);
        self.runs = self.runs + usize::from(below) + usize::from(above) - 1;
        self.blocks -= extent.len;
    }

    /// The maximal runs, in block order.
    pub(crate) fn runs(&self) -> Vec<Extent> {
        let mut words: Vec<(u64, u64)> = self.words.iter().map(|(&w, &b)| (w, b)).collect();
        words.sort_unstable_by_key(|&(word, _)| word);
        let mut out: Vec<Extent> = Vec::with_capacity(self.runs);
        for (word, mut bits) in words {
            let base = word * WORD_BITS;
            while bits != 0 {
                let first = u64::from(bits.trailing_zeros());
                let ones = u64::from((bits >> first).trailing_ones());
                let run = Extent::new(base + first, ones);
                match out.last_mut() {
                    Some(last) if last.end() == run.start => last.len += ones,
                    _ => out.push(run),
                }
                if first + ones == WORD_BITS {
                    break;
                }
                bits &= !(((1u64 << ones) - 1) << first);
            }
        }
        debug_assert_eq!(out.len(), self.runs);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::model_runs;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn runs_merge_on_insert_and_split_on_remove() {
        let mut set = BlockSet::default();
        set.insert(Extent::new(10, 5));
        set.insert(Extent::new(20, 5));
        assert_eq!(set.len(), 2);
        set.insert(Extent::new(15, 5));
        assert_eq!(set.runs(), vec![Extent::new(10, 15)]);
        assert_eq!(set.len(), 1);
        assert!(set.contains(Extent::new(12, 10)));
        assert!(!set.contains(Extent::new(20, 6)));
        set.remove(Extent::new(12, 3));
        assert_eq!(set.runs(), vec![Extent::new(10, 2), Extent::new(15, 10)]);
        assert_eq!((set.blocks(), set.len()), (12, 2));
        set.remove(Extent::new(10, 2));
        set.remove(Extent::new(15, 10));
        assert!(set.is_empty() && set.words.is_empty());
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn try_insert_refuses_every_overlap_and_changes_nothing() {
        let mut set = BlockSet::default();
        assert!(set.try_insert(Extent::new(10, 5)));
        assert!(set.try_insert(Extent::new(30, 5)));
        for (start, len) in [
            (8, 3),
            (10, 1),
            (14, 1),
            (14, 20),
            (5, 40),
            (34, 2),
            (12, 1),
        ] {
            let extent = Extent::new(start, len);
            assert!(!set.try_insert(extent), "{extent:?} overlaps");
        }
        assert_eq!(set.runs(), vec![Extent::new(10, 5), Extent::new(30, 5)]);
        assert_eq!(set.blocks(), 10);
        // Touching on both sides merges all three into one run.
        assert!(set.try_insert(Extent::new(15, 15)));
        assert_eq!(set.runs(), vec![Extent::new(10, 25)]);
        assert!(set.try_insert(Extent::new(9, 1)) && set.try_insert(Extent::new(35, 1)));
        assert!(set.try_insert(Extent::new(40, 1)));
        assert_eq!(set.runs(), vec![Extent::new(9, 27), Extent::new(40, 1)]);
        assert_eq!((set.blocks(), set.len()), (28, 2));
    }

    #[test]
    fn runs_cross_word_boundaries() {
        let mut set = BlockSet::default();
        // Whole words, a run over a word boundary, block 0, a far word.
        set.insert(Extent::new(0, 1));
        set.insert(Extent::new(64, 128));
        set.insert(Extent::new(500, 30));
        set.insert(Extent::new(1 << 40, 3));
        assert_eq!(
            set.runs(),
            vec![
                Extent::new(0, 1),
                Extent::new(64, 128),
                Extent::new(500, 30),
                Extent::new(1 << 40, 3)
            ]
        );
        assert!(set.overlaps(Extent::new(511, 1)) && set.contains(Extent::new(505, 20)));
        assert!(!set.overlaps(Extent::new(530, 1000)));
        set.remove(Extent::new(64, 128));
        assert_eq!(set.len(), 3);
        assert!(!set.overlaps(Extent::new(1, 499)));
    }

    /// An operation on both the set and a model of it (a set of blocks).
    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        /// `overlaps` of an extent, short or spanning more words than the set holds.
        Probe(u64, u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let extent = (0u64..2_000, 1u64..200);
        proptest::collection::vec(
            prop_oneof![
                extent.clone().prop_map(|(s, l)| Op::Insert(s, l)),
                extent.prop_map(|(s, l)| Op::Remove(s, l)),
                (0u64..2_500, 1u64..3_000).prop_map(|(s, l)| Op::Probe(s, l)),
            ],
            1..200,
        )
    }

    proptest! {
        #[test]
        fn matches_a_set_of_blocks(ops in ops()) {
            let mut set = BlockSet::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(start, len) => {
                        let extent = Extent::new(start, len);
                        let free = (start..start + len).all(|b| !model.contains(&b));
                        prop_assert_eq!(set.try_insert(extent), free);
                        if free {
                            model.extend(start..start + len);
                        }
                    }
                    Op::Remove(pick, len) => {
                        // Up to `len` blocks of the set from its pick-th block.
                        let Some(&start) = model.iter().nth(pick as usize % model.len().max(1)) else {
                            continue;
                        };
                        let len = (start..start + len).take_while(|b| model.contains(b)).count() as u64;
                        let extent = Extent::new(start, len);
                        prop_assert!(set.contains(extent));
                        prop_assert!(!set.contains(Extent::new(start, len + 1)) || model.contains(&(start + len)));
                        set.remove(extent);
                        set.shrink_if_sparse();
                        for b in start..start + len {
                            model.remove(&b);
                        }
                    }
                    Op::Probe(start, len) => {
                        let expected = model.range(start..start + len).next().is_some();
                        prop_assert_eq!(set.overlaps(Extent::new(start, len)), expected);
                    }
                }
                match set.any() {
                    Some(block) => prop_assert!(model.contains(&block)),
                    None => prop_assert!(model.is_empty()),
                }
                let expected = model_runs(&model);
                prop_assert_eq!(set.len(), expected.len());
                prop_assert_eq!(set.blocks(), model.len() as u64);
                prop_assert_eq!(set.runs(), expected);
            }
        }
    }
}
