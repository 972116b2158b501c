//! [`SeqMap`]: the ordered map a session keeps its in-flight requests (by
//! request id) and unacked responses (by send seq) in.
//!
//! Seed 000: with tens of thousands of messages in flight, finding the request
//! a response answers and freeing the responses an ack covers must not scan;
//! both maps are ordered and searched in O(log n). Their keys have a shape a
//! general ordered map does not use: the session hands them out itself, in
//! increasing order, so every insertion is at the end; acks free from the
//! front; and responses come back mostly in the order their requests went
//! out. So the map is a sorted array in a ring buffer:
//!
//! - insert (always a larger key than any present): push at the back, O(1);
//! - lookup/remove: the slot `key - first key` when no gap lies before it (the
//!   usual case), else a binary search, O(log n); a removed entry leaves a
//!   hole that is popped once it reaches either end;
//! - free everything at or below a key (an ack): pop from the front;
//! - holes never outnumber live entries (plus a small slack): past that the
//!   array is compacted in one O(n) pass, so memory stays within twice the
//!   live entries and compaction costs O(1) per removal, amortized.
//!
//! Against a B-tree with tens of thousands of entries this keeps them in one
//! contiguous run that is walked front to back (prefetched, not a miss per
//! node), with no node splits, merges or allocations per entry.

use std::collections::VecDeque;

/// Holes allowed beyond the number of live entries before compacting.
const HOLES_SLACK: usize = 64;

#[derive(Debug)]
pub struct SeqMap<V> {
    /// Sorted by key, strictly increasing; `None` is a removed entry.
    slots: VecDeque<(u64, Option<V>)>,
    live: usize,
}

impl<V> Default for SeqMap<V> {
    fn default() -> SeqMap<V> {
        SeqMap {
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<V> SeqMap<V> {
    #[inline]
    pub fn len(&self) -> usize {
        self.live
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The smallest key present.
    #[inline]
    pub fn first_key(&self) -> Option<u64> {
        self.slots.front().map(|(key, _)| *key)
    }

    /// Inserts `key`, which must be larger than every key present (the
    /// session's counters only grow).
    #[inline]
    pub fn push(&mut self, key: u64, value: V) {
        assert!(
            !matches!(self.slots.back(), Some((last, _)) if *last >= key),
            "SeqMap keys must increase"
        );
        self.slots.push_back((key, Some(value)));
        self.live += 1;
    }

    #[inline]
    fn index_of(&self, key: u64) -> Option<usize> {
        let first = self.first_key()?;
        let guess = usize::try_from(key.checked_sub(first)?).ok()?;
        if self.slots.get(guess).is_some_and(|(k, _)| *k == key) {
            return Some(guess);
        }
        self.slots.binary_search_by_key(&key, |(k, _)| *k).ok()
    }

    #[cfg(test)]
    pub fn get(&self, key: u64) -> Option<&V> {
        self.slots[self.index_of(key)?].1.as_ref()
    }

    #[inline]
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let index = self.index_of(key)?;
        let value = self.slots[index].1.take()?;
        self.live -= 1;
        while self.slots.front().is_some_and(|(_, v)| v.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|(_, v)| v.is_none()) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.live + HOLES_SLACK {
            self.slots.retain(|(_, v)| v.is_some());
        }
        self.trim();
        Some(value)
    }

    /// Gives memory back once the map is a quarter of its capacity (after a
    /// burst): halving at most once per halving of the length, O(1) amortized.
    #[inline]
    fn trim(&mut self) {
        if self.slots.capacity() > 4 * self.slots.len() + 1024 {
            self.slots.shrink_to(2 * self.slots.len() + 1024);
        }
    }

    /// Removes every entry with a key at or below `key`; returns how many.
    #[inline]
    pub fn remove_through(&mut self, key: u64) -> usize {
        let mut removed = 0;
        while let Some((first, _)) = self.slots.front() {
            if *first > key {
                break;
            }
            if self.slots.pop_front().is_some_and(|(_, v)| v.is_some()) {
                removed += 1;
            }
        }
        self.live -= removed;
        self.trim();
        removed
    }

    /// The live entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.slots
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|v| (*key, v)))
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Random pushes (with gaps in the keys), removals anywhere (mostly near
    /// the front, as responses come back) and front frees, against a BTreeMap.
    #[test]
    fn behaves_as_an_ordered_map() {
        for seed in 0..200 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut map = SeqMap::default();
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            for step in 0..2_000u64 {
                match rng.gen_range(0..10) {
                    0..=3 => {
                        next += rng.gen_range(1..3);
                        map.push(next, step);
                        model.insert(next, step);
                    }
                    4..=7 if !model.is_empty() => {
                        let keys: Vec<u64> = model.keys().copied().collect();
                        let key = if rng.gen_bool(0.7) {
                            keys[rng.gen_range(0..keys.len().min(4))]
                        } else {
                            keys[rng.gen_range(0..keys.len())]
                        };
                        assert_eq!(map.remove(key), model.remove(&key), "seed {seed}");
                        assert_eq!(map.remove(key), None);
                    }
                    8 => {
                        let key = rng.gen_range(0..=next);
                        assert_eq!(map.get(key), model.get(&key), "seed {seed}");
                        assert_eq!(map.remove(next + 1), None);
                    }
                    _ => {
                        let key = rng.gen_range(0..=next);
                        let freed = model.range(..=key).count();
                        model = model.split_off(&(key + 1));
                        assert_eq!(map.remove_through(key), freed, "seed {seed}");
                    }
                }
                assert_eq!(map.len(), model.len(), "seed {seed}");
                assert!(map.slots() <= 2 * map.len() + HOLES_SLACK, "seed {seed}");
                assert!(
                    map.iter()
                        .map(|(k, v)| (k, *v))
                        .eq(model.iter().map(|(k, v)| (*k, *v))),
                    "seed {seed}"
                );
                assert_eq!(map.first_key().is_some(), !model.is_empty());
            }
        }
    }

    #[test]
    fn a_burst_gives_its_memory_back() {
        let mut map = SeqMap::default();
        for key in 1..=100_000u64 {
            map.push(key, key);
        }
        map.remove_through(99_990);
        for key in 99_991..=99_999u64 {
            map.remove(key);
        }
        assert_eq!(map.len(), 1);
        assert!(map.slots.capacity() <= 4 * 1024, "{}", map.slots.capacity());
    }

    #[test]
    fn a_straggler_does_not_pin_memory() {
        let mut map = SeqMap::default();
        for key in 1..=100_000u64 {
            map.push(key, key);
        }
        // Everything but the first is answered, in order: holes pile up
        // behind the straggler until a compaction.
        for key in 2..=99_000u64 {
            assert_eq!(map.remove(key), Some(key));
        }
        assert_eq!(map.len(), 1_001);
        assert!(map.slots() <= 2 * 1_001 + HOLES_SLACK);
        // Lookups behind compacted holes go by binary search.
        assert_eq!(map.get(99_500), Some(&99_500));
        for key in 99_001..=100_000u64 {
            assert_eq!(map.remove(key), Some(key));
        }
        assert_eq!(map.len(), 1);
        assert!(map.slots() <= 2 + HOLES_SLACK);
        assert_eq!(map.remove(1), Some(1));
        assert!(map.is_empty());
    }
}
