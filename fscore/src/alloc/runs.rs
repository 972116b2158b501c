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
        let inserted = self.try_insert(extent);
        debug_assert!(inserted, "extent {extent:?} overlaps a run");
    }

    /// Adds `extent`, merging it with the runs that touch it; false, and
    /// nothing changed, if it overlaps a run. The same descent finds a run
    /// it overlaps and the run below it to merge with (the allocator frees
    /// one block per overwritten block: this is on every write's path).
    pub(crate) fn try_insert(&mut self, extent: Extent) -> bool {
        debug_assert!(extent.len > 0);
        let above = self.by_start.get(&extent.end()).copied();
        // The last run starting below the end: it overlaps the extent if
        // it reaches past the start, touches it if it ends there.
        let merged_below = match self.by_start.range_mut(..extent.end()).next_back() {
            Some((&start, len)) if start + *len > extent.start => return false,
            Some((&start, len)) if start + *len == extent.start => {
                *len += extent.len + above.unwrap_or(0);
                true
            }
            _ => false,
        };
        if above.is_some() {
            self.by_start.remove(&extent.end());
        }
        if !merged_below {
            self.by_start
                .insert(extent.start, extent.len + above.unwrap_or(0));
        }
        self.blocks += extent.len;
        true
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

    #[test]
    fn try_insert_refuses_every_overlap_and_changes_nothing() {
        let mut runs = Runs::default();
        assert!(runs.try_insert(Extent::new(10, 5)));
        assert!(runs.try_insert(Extent::new(30, 5)));
        for overlapping in [
            (8, 3),
            (10, 1),
            (14, 1),
            (14, 20),
            (5, 40),
            (34, 2),
            (12, 1),
        ] {
            let extent = Extent::new(overlapping.0, overlapping.1);
            assert!(!runs.try_insert(extent), "{extent:?} overlaps");
        }
        assert_eq!(
            runs.iter().collect::<Vec<_>>(),
            vec![Extent::new(10, 5), Extent::new(30, 5)]
        );
        assert_eq!(runs.blocks(), 10);
        // Touching on both sides merges all three into one run.
        assert!(runs.try_insert(Extent::new(15, 15)));
        assert_eq!(runs.iter().collect::<Vec<_>>(), vec![Extent::new(10, 25)]);
        assert!(runs.try_insert(Extent::new(9, 1)) && runs.try_insert(Extent::new(35, 1)));
        assert!(runs.try_insert(Extent::new(40, 1)));
        assert_eq!(
            runs.iter().collect::<Vec<_>>(),
            vec![Extent::new(9, 27), Extent::new(40, 1)]
        );
        assert_eq!(runs.blocks(), 28);
    }
}
