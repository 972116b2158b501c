//! A bounded cache of clean metadata blocks (already checked), evicted with
//! the CLOCK algorithm (second chance): cheap on hits, close to LRU. A hit
//! is one hash probe; the entry holds the block pointer and its reference
//! bit, and the clock's ring of block numbers is touched only on insert.

use super::hash::BlockMap;
use std::sync::Arc;

/// A block's bytes, shared between the cache and readers.
pub(crate) type BlockBuf = Arc<[u8]>;

struct Entry {
    block: BlockBuf,
    /// Header seq and kind of the block (checked when it was read), so a
    /// hit is checked against its reference without touching the block.
    seq: u64,
    kind: u8,
    referenced: bool,
    /// Position in `ring`.
    at: usize,
}

pub(crate) struct BlockCache {
    entries: BlockMap<Entry>,
    /// Block numbers in clock order.
    ring: Vec<u64>,
    capacity_blocks: usize,
    hand: usize,
}

impl BlockCache {
    /// A cache of at most `capacity_blocks` blocks (at least one).
    pub(crate) fn new(capacity_blocks: usize) -> BlockCache {
        let capacity_blocks = capacity_blocks.max(1);
        BlockCache {
            entries: BlockMap::default(),
            ring: Vec::new(),
            capacity_blocks,
            hand: 0,
        }
    }

    /// The block, its seq and its kind.
    pub(crate) fn get(&mut self, blkno: u64) -> Option<(&BlockBuf, u64, u8)> {
        let entry = self.entries.get_mut(&blkno)?;
        entry.referenced = true;
        Some((&entry.block, entry.seq, entry.kind))
    }

    pub(crate) fn contains(&self, blkno: u64) -> bool {
        self.entries.contains_key(&blkno)
    }

    pub(crate) fn insert(&mut self, blkno: u64, block: BlockBuf, seq: u64, kind: u8) {
        if let Some(entry) = self.entries.get_mut(&blkno) {
            *entry = Entry {
                block,
                seq,
                kind,
                referenced: true,
                at: entry.at,
            };
            return;
        }
        if self.ring.len() < self.capacity_blocks {
            self.entries.insert(
                blkno,
                Entry {
                    block,
                    seq,
                    kind,
                    referenced: false,
                    at: self.ring.len(),
                },
            );
            self.ring.push(blkno);
            return;
        }
        // Sweep: clear reference bits until an unreferenced entry turns up;
        // at most two turns of the clock.
        loop {
            let entry = self
                .entries
                .get_mut(&self.ring[self.hand])
                .expect("ring and map agree");
            if !entry.referenced {
                break;
            }
            entry.referenced = false;
            self.hand = (self.hand + 1) % self.ring.len();
        }
        let at = self.hand;
        self.entries.remove(&self.ring[at]);
        self.entries.insert(
            blkno,
            Entry {
                block,
                seq,
                kind,
                referenced: false,
                at,
            },
        );
        self.ring[at] = blkno;
        self.hand = (self.hand + 1) % self.ring.len();
    }

    pub(crate) fn remove(&mut self, blkno: u64) {
        let Some(entry) = self.entries.remove(&blkno) else {
            return;
        };
        let last = self.ring.len() - 1;
        self.ring.swap(entry.at, last);
        self.ring.pop();
        if entry.at < self.ring.len() {
            let moved = self.ring[entry.at];
            self.entries.get_mut(&moved).expect("ring and map agree").at = entry.at;
        }
        if self.hand >= self.ring.len() {
            self.hand = 0;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> BlockBuf {
        Arc::from(vec![byte])
    }

    #[test]
    fn stays_bounded_and_keeps_referenced_blocks() {
        let mut cache = BlockCache::new(4);
        for blkno in 0..4 {
            cache.insert(blkno, block(blkno as u8), 1, 1);
        }
        assert!(cache.get(0).is_some());
        for blkno in 10..13 {
            cache.insert(blkno, block(blkno as u8), 1, 1);
        }
        assert_eq!(cache.len(), 4);
        assert_eq!(
            cache.get(0).unwrap().0[0],
            0,
            "a referenced block survives a sweep"
        );
        cache.remove(0);
        assert!(cache.get(0).is_none());
        assert_eq!(cache.get(12).unwrap().0[0], 12);
        cache.remove(12);
        cache.insert(20, block(20), 1, 1);
        cache.insert(21, block(21), 1, 1);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.get(21).unwrap().0[0], 21);
    }
}
