//! A bounded cache of clean metadata blocks (already checked), evicted with
//! the CLOCK algorithm (second chance): cheap on hits, close to LRU.

use std::collections::HashMap;
use std::sync::Arc;

pub(crate) type BlockBuf = Arc<Vec<u8>>;

struct Slot {
    blkno: u64,
    block: BlockBuf,
    referenced: bool,
}

pub(crate) struct BlockCache {
    slots: Vec<Slot>,
    index: HashMap<u64, usize>,
    capacity_blocks: usize,
    hand: usize,
}

impl BlockCache {
    /// A cache of at most `capacity_blocks` blocks (at least one).
    pub(crate) fn new(capacity_blocks: usize) -> BlockCache {
        let capacity_blocks = capacity_blocks.max(1);
        BlockCache {
            slots: Vec::new(),
            index: HashMap::new(),
            capacity_blocks,
            hand: 0,
        }
    }

    pub(crate) fn get(&mut self, blkno: u64) -> Option<BlockBuf> {
        let slot = &mut self.slots[*self.index.get(&blkno)?];
        slot.referenced = true;
        Some(slot.block.clone())
    }

    pub(crate) fn insert(&mut self, blkno: u64, block: BlockBuf) {
        if let Some(&at) = self.index.get(&blkno) {
            self.slots[at].block = block;
            self.slots[at].referenced = true;
            return;
        }
        if self.slots.len() < self.capacity_blocks {
            self.index.insert(blkno, self.slots.len());
            self.slots.push(Slot {
                blkno,
                block,
                referenced: false,
            });
            return;
        }
        // Sweep: clear reference bits until an unreferenced slot turns up;
        // at most two turns of the clock.
        loop {
            let slot = &mut self.slots[self.hand];
            if !slot.referenced {
                break;
            }
            slot.referenced = false;
            self.hand = (self.hand + 1) % self.slots.len();
        }
        let at = self.hand;
        self.index.remove(&self.slots[at].blkno);
        self.index.insert(blkno, at);
        self.slots[at] = Slot {
            blkno,
            block,
            referenced: false,
        };
        self.hand = (self.hand + 1) % self.slots.len();
    }

    pub(crate) fn remove(&mut self, blkno: u64) {
        if let Some(at) = self.index.remove(&blkno) {
            let last = self.slots.len() - 1;
            self.slots.swap(at, last);
            self.slots.pop();
            if at < self.slots.len() {
                self.index.insert(self.slots[at].blkno, at);
            }
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_referenced_blocks() {
        let mut cache = BlockCache::new(4);
        for blkno in 0..4 {
            cache.insert(blkno, Arc::new(vec![blkno as u8]));
        }
        assert!(cache.get(0).is_some());
        for blkno in 10..13 {
            cache.insert(blkno, Arc::new(vec![blkno as u8]));
        }
        assert_eq!(cache.len(), 4);
        assert_eq!(
            cache.get(0).unwrap()[0],
            0,
            "a referenced block survives a sweep"
        );
        cache.remove(0);
        assert!(cache.get(0).is_none());
        assert_eq!(cache.get(12).unwrap()[0], 12);
    }
}
