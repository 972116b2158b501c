//! `Runs`: disjoint block extents in an ordered map keyed by start block,
//! merged with their neighbours on insert and split on removal. The
//! allocator keeps the extents it handed out in the open transaction in
//! one, so a commit can log what changed without scanning the free space.

use super::extents::Extent;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub(crate) struct Runs {
    by_start: BTreeMap<u64, u64>,
    blocks: u64,
}

impl Runs {
    pub(crate) fn len(&self) -> usize {
        self.by_start.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The runs as a map from start block to length.
    pub(crate) fn as_map(&self) -> &BTreeMap<u64, u64> {
        &self.by_start
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.by_start
            .iter()
            .map(|(start, len)| Extent::new(*start, *len))
    }

    pub(crate) fn clear(&mut self) {
        self.by_start.clear();
        self.blocks = 0;
    }

    /// Adds an extent disjoint from every run, merging it with the runs
    /// that touch it.
    pub(crate) fn insert(&mut self, extent: Extent) {
        debug_assert!(extent.len > 0 && !self.overlaps(extent));
        let mut merged = extent;
        if let Some((&start, &len)) = self.by_start.range(..extent.start).next_back() {
            if start + len == extent.start {
                self.by_start.remove(&start);
                merged = Extent::new(start, len + merged.len);
            }
        }
        if let Some(len) = self.by_start.remove(&extent.end()) {
            merged.len += len;
        }
        self.by_start.insert(merged.start, merged.len);
        self.blocks += extent.len;
    }

    /// Whether every block of `extent` is in one run.
    pub(crate) fn contains(&self, extent: Extent) -> bool {
        self.by_start
            .range(..=extent.start)
            .next_back()
            .is_some_and(|(start, len)| start + len >= extent.end())
    }

    pub(crate) fn overlaps(&self, extent: Extent) -> bool {
        self.by_start
            .range(..extent.end())
            .next_back()
            .is_some_and(|(start, len)| start + len > extent.start)
    }

    /// Removes an extent that `contains` holds, splitting its run.
    pub(crate) fn remove(&mut self, extent: Extent) {
        debug_assert!(self.contains(extent));
        let (&start, &len) = self
            .by_start
            .range(..=extent.start)
            .next_back()
            .expect("removed extent is in a run");
        self.by_start.remove(&start);
        if extent.start > start {
            self.by_start.insert(start, extent.start - start);
        }
        if start + len > extent.end() {
            self.by_start
                .insert(extent.end(), start + len - extent.end());
        }
        self.blocks -= extent.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_on_insert_and_split_on_remove() {
        let mut runs = Runs::default();
        runs.insert(Extent::new(10, 5));
        runs.insert(Extent::new(20, 5));
        runs.insert(Extent::new(15, 5));
        assert_eq!(runs.iter().collect::<Vec<_>>(), vec![Extent::new(10, 15)]);
        assert!(runs.contains(Extent::new(12, 10)));
        assert!(!runs.contains(Extent::new(20, 6)));
        runs.remove(Extent::new(12, 3));
        assert_eq!(
            runs.iter().collect::<Vec<_>>(),
            vec![Extent::new(10, 2), Extent::new(15, 10)]
        );
        assert_eq!(runs.blocks(), 12);
        runs.remove(Extent::new(10, 2));
        runs.remove(Extent::new(15, 10));
        assert!(runs.is_empty());
        assert_eq!(runs.blocks(), 0);
    }
}
