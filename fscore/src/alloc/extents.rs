//! A set of disjoint block extents indexed two ways: by start (to find and
//! merge neighbours) and by (length, start) (to find a run of a given size).

use std::collections::{BTreeMap, BTreeSet};

/// A run of blocks: `len` blocks from `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub const fn new(start: u64, len: u64) -> Extent {
        Extent { start, len }
    }
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

#[derive(Default, Clone, Debug)]
pub(crate) struct ExtentSet {
    by_start: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    blocks: u64,
}

impl ExtentSet {
    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    pub(crate) fn extent_count(&self) -> usize {
        self.by_start.len()
    }

    /// Length of the largest extent (0 when empty).
    pub(crate) fn largest_len(&self) -> u64 {
        self.by_size.last().map_or(0, |(len, _)| *len)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.by_start
            .iter()
            .map(|(start, len)| Extent::new(*start, *len))
    }

    /// Whether any block of `extent` is in the set.
    pub(crate) fn overlaps(&self, extent: Extent) -> bool {
        if let Some((start, len)) = self.by_start.range(..extent.end()).next_back() {
            return start + len > extent.start;
        }
        false
    }

    /// Adds an extent that overlaps nothing in the set, merging it with the
    /// extents that touch it.
    pub(crate) fn insert(&mut self, extent: Extent) {
        debug_assert!(extent.len > 0 && !self.overlaps(extent));
        let mut merged = extent;
        if let Some((&start, &len)) = self.by_start.range(..extent.start).next_back() {
            if start + len == extent.start {
                self.remove_whole(start, len);
                merged = Extent::new(start, len + merged.len);
            }
        }
        if let Some(&len) = self.by_start.get(&extent.end()) {
            self.remove_whole(extent.end(), len);
            merged.len += len;
        }
        self.by_start.insert(merged.start, merged.len);
        self.by_size.insert((merged.len, merged.start));
        self.blocks += merged.len;
    }

    fn remove_whole(&mut self, start: u64, len: u64) {
        self.by_start.remove(&start);
        self.by_size.remove(&(len, start));
        self.blocks -= len;
    }

    /// Takes `len` blocks from the front of the extent that starts at `start`.
    fn take_front(&mut self, start: u64, len: u64) -> Extent {
        let whole = self.by_start[&start];
        debug_assert!(len <= whole);
        self.remove_whole(start, whole);
        if whole > len {
            self.by_start.insert(start + len, whole - len);
            self.by_size.insert((whole - len, start + len));
            self.blocks += whole - len;
        }
        Extent::new(start, len)
    }

    /// Removes `extent`, which must lie inside one free extent (which is
    /// split around it). False, changing nothing, if it does not.
    pub(crate) fn remove_within(&mut self, extent: Extent) -> bool {
        let Some((&start, &len)) = self.by_start.range(..=extent.start).next_back() else {
            return false;
        };
        if extent.len == 0 || start + len < extent.end() {
            return false;
        }
        self.remove_whole(start, len);
        if extent.start > start {
            self.by_start.insert(start, extent.start - start);
            self.by_size.insert((extent.start - start, start));
            self.blocks += extent.start - start;
        }
        if start + len > extent.end() {
            let rest = start + len - extent.end();
            self.by_start.insert(extent.end(), rest);
            self.by_size.insert((rest, extent.end()));
            self.blocks += rest;
        }
        true
    }

    /// Up to `want` contiguous blocks: the smallest extent that holds `want`
    /// (best fit), else the whole largest extent.
    pub(crate) fn take_best_fit(&mut self, want: u64) -> Option<Extent> {
        let (len, start) = match self.by_size.range((want, 0)..).next() {
            Some(&(len, start)) => (len, start),
            None => *self.by_size.iter().next_back()?,
        };
        Some(self.take_front(start, len.min(want)))
    }

    /// One block from the end of the largest extent: consecutive
    /// allocations are contiguous (descending), and the extent keeps its
    /// start, so only its length changes in the indexes.
    pub(crate) fn take_one_from_largest(&mut self) -> Option<u64> {
        let (len, start) = self.by_size.pop_last()?;
        Some(self.take_last_block(start, len))
    }

    /// The last block of the extent that ends at `end`, if one does.
    pub(crate) fn take_one_ending_at(&mut self, end: u64) -> Option<u64> {
        let (&start, &len) = self.by_start.range(..end).next_back()?;
        if start + len != end {
            return None;
        }
        self.by_size.remove(&(len, start));
        Some(self.take_last_block(start, len))
    }

    /// Takes the last block of the extent `start`+`len`, already removed
    /// from `by_size`; the rest keeps its start, so only its length changes.
    fn take_last_block(&mut self, start: u64, len: u64) -> u64 {
        self.blocks -= 1;
        if len == 1 {
            self.by_start.remove(&start);
        } else {
            self.by_start.insert(start, len - 1);
            self.by_size.insert((len - 1, start));
        }
        start + len - 1
    }

    /// Adds every extent of `other` (disjoint from the set).
    pub(crate) fn absorb(&mut self, other: impl IntoIterator<Item = Extent>) {
        for extent in other {
            self.insert(extent);
        }
    }

    /// Checks that both indexes agree and extents are disjoint and merged.
    pub(crate) fn verify(&self) -> Result<(), String> {
        let mut blocks = 0;
        let mut previous_end = None;
        for (start, len) in &self.by_start {
            if *len == 0 || !self.by_size.contains(&(*len, *start)) {
                return Err(format!(
                    "extent {start}+{len} missing from the size index or empty"
                ));
            }
            if let Some(end) = previous_end {
                if *start <= end {
                    return Err(format!(
                        "extent {start}+{len} overlaps or touches its predecessor"
                    ));
                }
            }
            previous_end = Some(start + len);
            blocks += len;
        }
        if self.by_size.len() != self.by_start.len() || blocks != self.blocks {
            return Err("extent indexes disagree".into());
        }
        Ok(())
    }
}
