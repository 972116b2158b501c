//! A bounded cache of clean metadata blocks (already checked), evicted with
//! the CLOCK algorithm (second chance): cheap on hits, close to LRU.
//!
//! Blocks live in a slab of slots; a map from block number to slot index
//! finds them. A slot index is stable while the block stays cached, so a
//! cached internal node can remember in which slot each of its children was
//! last found (`ChildIndex`) and a lookup skips the map: it checks that the
//! slot still holds the child's block number and seq (the same check a map
//! hit makes) and uses it. The clock hand sweeps the slab itself.

use super::hash::BlockMap;
use super::index::ChildIndex;
use std::cell::Cell;

pub(crate) use super::mem::BlockBuf;

/// Index of a slot of the cache.
pub(crate) type SlotId = u32;
/// No slot (a hint that never matches).
pub(crate) const NO_SLOT: SlotId = SlotId::MAX;

/// One cached block and what is known of it. Aligned to a cache line: a
/// lookup reads a slot's first fields and then the block.
#[repr(align(64))]
/// The slot array's address and length at one moment: enough to compute a
/// slot's address for a prefetch (never dereferenced, so staleness is
/// harmless).
#[derive(Clone, Copy)]
pub(crate) struct SlotAddresses {
    base: usize,
    count: usize,
}

impl SlotAddresses {
    /// Address of slot `id`, or 0 when out of range.
    #[inline]
    pub(crate) fn of(&self, id: SlotId) -> usize {
        if (id as usize) < self.count {
            self.base + id as usize * std::mem::size_of::<Slot>()
        } else {
            0
        }
    }
}

pub(crate) struct Slot {
    /// 0 = empty slot (block 0 is never a metadata block).
    pub(crate) blkno: u64,
    /// Header seq of the block (checked when it was read), so a hit is
    /// checked against its reference without touching the block.
    pub(crate) seq: u64,
    pub(crate) block: Option<BlockBuf>,
    /// Sorted children of an internal node, built from the verified node on
    /// demand (`BlockStore::child_index`).
    pub(crate) index: Option<Box<ChildIndex>>,
    /// Header kind; for nodes also the node level (payload byte 0).
    pub(crate) kind: u8,
    pub(crate) level: u8,
    /// Passed the node's `verify` (read from disk). Blocks the pool wrote
    /// itself enter unverified and are verified before an index is built.
    pub(crate) verified: bool,
    referenced: Cell<bool>,
    /// Hits while without an index (an index is built for hot nodes only).
    pub(crate) hits: Cell<u8>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            blkno: 0,
            seq: 0,
            block: None,
            index: None,
            kind: 0,
            level: 0,
            verified: false,
            referenced: Cell::new(false),
            hits: Cell::new(0),
        }
    }

    #[inline]
    pub(crate) fn touch(&self) {
        if !self.referenced.get() {
            self.referenced.set(true);
        }
    }

    /// The block's bytes (empty for an empty slot).
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// What a block is cached with.
pub(crate) struct CachedInfo {
    pub(crate) seq: u64,
    pub(crate) kind: u8,
    pub(crate) level: u8,
    pub(crate) verified: bool,
}

pub(crate) struct BlockCache {
    map: BlockMap<SlotId>,
    slots: Vec<Slot>,
    /// Empty slots below `slots.len()`.
    free: Vec<SlotId>,
    capacity_blocks: usize,
    hand: usize,
}

impl BlockCache {
    /// A cache of at most `capacity_blocks` blocks (at least one).
    pub(crate) fn new(capacity_blocks: usize) -> BlockCache {
        let capacity_blocks = capacity_blocks.clamp(1, NO_SLOT as usize);
        BlockCache {
            map: BlockMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            capacity_blocks,
            hand: 0,
        }
    }

    /// The slot holding `blkno`, marked referenced.
    #[inline]
    pub(crate) fn find(&self, blkno: u64) -> Option<SlotId> {
        let id = *self.map.get(&blkno)?;
        self.slots[id as usize].touch();
        Some(id)
    }

    /// The slot holding `blkno`, without marking it referenced (for hints
    /// that do not use the block now).
    #[inline]
    pub(crate) fn peek(&self, blkno: u64) -> Option<SlotId> {
        self.map.get(&blkno).copied()
    }

    /// The slot `id` if it holds `blkno` (a remembered slot is checked this
    /// way before use), marked referenced.
    #[inline]
    pub(crate) fn slot_holding(&self, id: SlotId, blkno: u64) -> Option<&Slot> {
        let slot = self.slots.get(id as usize)?;
        if slot.blkno != blkno || blkno == 0 {
            return None;
        }
        slot.touch();
        Some(slot)
    }

    /// Where slot addresses are computed from, for prefetch hints only.
    #[inline]
    pub(crate) fn slot_addresses(&self) -> SlotAddresses {
        SlotAddresses {
            base: self.slots.as_ptr() as usize,
            count: self.slots.len(),
        }
    }

    #[inline]
    pub(crate) fn slot(&self, id: SlotId) -> &Slot {
        &self.slots[id as usize]
    }

    #[inline]
    pub(crate) fn slot_mut(&mut self, id: SlotId) -> &mut Slot {
        &mut self.slots[id as usize]
    }

    /// The block, its seq and its kind.
    #[cfg(test)]
    pub(crate) fn get(&mut self, blkno: u64) -> Option<(&BlockBuf, u64, u8)> {
        let id = self.find(blkno)?;
        let slot = &self.slots[id as usize];
        Some((slot.block.as_ref()?, slot.seq, slot.kind))
    }

    /// Caches a block (replacing any cached copy of the same block number);
    /// returns its slot.
    pub(crate) fn insert(&mut self, blkno: u64, block: BlockBuf, info: CachedInfo) -> SlotId {
        debug_assert_ne!(blkno, 0);
        let fill = |slot: &mut Slot, referenced: bool| {
            *slot = Slot {
                blkno,
                seq: info.seq,
                block: Some(block),
                index: None,
                kind: info.kind,
                level: info.level,
                verified: info.verified,
                referenced: Cell::new(referenced),
                hits: Cell::new(0),
            }
        };
        if let Some(&id) = self.map.get(&blkno) {
            fill(&mut self.slots[id as usize], true);
            return id;
        }
        let id = if let Some(id) = self.free.pop() {
            id
        } else if self.slots.len() < self.capacity_blocks {
            let capacity = self.slots.capacity();
            self.slots.push(Slot::empty());
            if self.slots.capacity() != capacity {
                super::mem::advise_huge_pages(
                    self.slots.as_ptr().cast(),
                    self.slots.capacity() * std::mem::size_of::<Slot>(),
                );
            }
            (self.slots.len() - 1) as SlotId
        } else {
            self.evict()
        };
        fill(&mut self.slots[id as usize], false);
        self.map.insert(blkno, id);
        id
    }

    /// Empties the slot under the clock hand that has not been referenced
    /// since the hand last passed (clearing reference bits on the way; at
    /// most two turns) and returns it. Only called when every slot is full.
    fn evict(&mut self) -> SlotId {
        loop {
            let slot = &self.slots[self.hand];
            if !slot.referenced.get() {
                break;
            }
            slot.referenced.set(false);
            self.hand = (self.hand + 1) % self.slots.len();
        }
        let id = self.hand;
        self.hand = (self.hand + 1) % self.slots.len();
        let old = std::mem::replace(&mut self.slots[id], Slot::empty());
        self.map.remove(&old.blkno);
        id as SlotId
    }

    /// Takes the block out of slot `id` (which must hold one), with what it
    /// was cached with.
    pub(crate) fn take(&mut self, id: SlotId) -> (BlockBuf, CachedInfo) {
        let slot = std::mem::replace(&mut self.slots[id as usize], Slot::empty());
        self.map.remove(&slot.blkno);
        self.free.push(id);
        let info = CachedInfo {
            seq: slot.seq,
            kind: slot.kind,
            level: slot.level,
            verified: slot.verified,
        };
        (slot.block.expect("taken slot holds a block"), info)
    }

    pub(crate) fn remove(&mut self, blkno: u64) {
        let Some(id) = self.map.remove(&blkno) else {
            return;
        };
        self.slots[id as usize] = Slot::empty();
        self.free.push(id);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::BlockArena;
    use super::*;

    fn block(byte: u8) -> BlockBuf {
        BlockArena::new(1).copy_of(&[byte])
    }

    fn info() -> CachedInfo {
        CachedInfo {
            seq: 1,
            kind: 1,
            level: 0,
            verified: true,
        }
    }

    #[test]
    fn stays_bounded_and_keeps_referenced_blocks() {
        let mut cache = BlockCache::new(4);
        for blkno in 1..5 {
            cache.insert(blkno, block(blkno as u8), info());
        }
        assert!(cache.get(1).is_some());
        for blkno in 10..13 {
            cache.insert(blkno, block(blkno as u8), info());
        }
        assert_eq!(cache.len(), 4);
        assert_eq!(
            cache.get(1).unwrap().0[0],
            1,
            "a referenced block survives a sweep"
        );
        cache.remove(1);
        assert!(cache.get(1).is_none());
        assert_eq!(cache.get(12).unwrap().0[0], 12);
        cache.remove(12);
        cache.insert(20, block(20), info());
        cache.insert(21, block(21), info());
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.get(21).unwrap().0[0], 21);
    }

    #[test]
    fn a_remembered_slot_is_checked() {
        let mut cache = BlockCache::new(2);
        let a = cache.insert(5, block(5), info());
        assert_eq!(cache.slot_holding(a, 5).unwrap().bytes()[0], 5);
        cache.remove(5);
        assert!(cache.slot_holding(a, 5).is_none(), "removed");
        let b = cache.insert(6, block(6), info());
        assert!(cache.slot_holding(b, 5).is_none(), "slot reused");
        assert!(cache.slot_holding(NO_SLOT, 6).is_none());
        cache.insert(7, block(7), info());
        cache.insert(8, block(8), info());
        assert_eq!(cache.len(), 2);
    }
}
