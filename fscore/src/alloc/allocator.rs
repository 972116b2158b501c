//! A block allocator over one device's range of blocks.
//!
//! Free space is an `ExtentSet` (by position and by size). Space freed in the
//! open transaction is *busy* (seed 004): it sits in an ordered map keyed by
//! block number, merged with its neighbours, and is never handed out, because
//! the last durable superblock may still reference it. When the transaction
//! is durable, `commit_done` moves every busy extent into the free set.
//!
//! When only busy space is left, `alloc` returns `Error::NoSpace` and the
//! caller decides: the pool reports NoSpace to its caller, who may commit
//! (which turns busy space free) and retry. Allocating never forces a commit
//! by itself, so a commit never happens in the middle of a caller's
//! multi-step update.

use super::extents::{Extent, ExtentSet};
use crate::error::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Allocator {
    /// The blocks this allocator manages: `[first_block, end_block)`.
    first_block: u64,
    end_block: u64,
    free: ExtentSet,
    /// Freed in the open transaction, keyed by start block, merged.
    busy: BTreeMap<u64, u64>,
    busy_blocks: u64,
}

impl Allocator {
    /// An allocator over `[first_block, end_block)` with nothing free.
    pub fn new(first_block: u64, end_block: u64) -> Allocator {
        Allocator {
            first_block,
            end_block,
            free: ExtentSet::default(),
            busy: BTreeMap::new(),
            busy_blocks: 0,
        }
    }

    /// An allocator whose whole range is free.
    pub fn all_free(first_block: u64, end_block: u64) -> Allocator {
        let mut allocator = Allocator::new(first_block, end_block);
        if end_block > first_block {
            allocator
                .free
                .insert(Extent::new(first_block, end_block - first_block));
        }
        allocator
    }

    pub fn free_blocks(&self) -> u64 {
        self.free.blocks()
    }
    pub fn busy_blocks(&self) -> u64 {
        self.busy_blocks
    }
    pub fn busy_extents(&self) -> usize {
        self.busy.len()
    }
    pub(crate) fn range(&self) -> (u64, u64) {
        (self.first_block, self.end_block)
    }

    /// The lowest free block (first fit). Never a busy block. Keeping the
    /// used area compact means a metadata file's blocks are overwritten
    /// rather than newly allocated by the file system (measured: writes to
    /// fresh sparse areas cost a journal commit per flush), and neighbours
    /// freed together are reused together, so writes still coalesce.
    pub fn alloc_one(&mut self) -> Result<u64> {
        self.free
            .take_one_near(self.first_block)
            .ok_or(Error::NoSpace)
    }

    /// Between 1 and `want` contiguous blocks (best fit). Never busy blocks.
    pub fn alloc(&mut self, want: u64) -> Result<Extent> {
        if want == 0 {
            return Err(Error::Invalid("allocation of zero blocks".into()));
        }
        self.free.take_best_fit(want).ok_or(Error::NoSpace)
    }

    /// Frees an extent that a durable superblock may reference: it becomes
    /// busy until `commit_done`. Freeing space that is not allocated (free,
    /// busy, or out of range) is an error and changes nothing.
    pub fn free(&mut self, extent: Extent) -> Result<()> {
        self.check_allocated(extent)?;
        let mut merged = extent;
        if let Some((&start, &len)) = self.busy.range(..extent.start).next_back() {
            if start + len == extent.start {
                self.busy.remove(&start);
                merged = Extent::new(start, len + merged.len);
            }
        }
        if let Some(len) = self.busy.remove(&extent.end()) {
            merged.len += len;
        }
        self.busy.insert(merged.start, merged.len);
        self.busy_blocks += extent.len;
        Ok(())
    }

    /// Frees an extent allocated in the open transaction and never referenced
    /// by a durable superblock: it is free again at once.
    pub fn free_unreferenced(&mut self, extent: Extent) -> Result<()> {
        self.check_allocated(extent)?;
        self.free.insert(extent);
        Ok(())
    }

    /// Adds a free extent (used when rebuilding state from disk).
    pub(crate) fn mark_free(&mut self, extent: Extent) -> Result<()> {
        if extent.len == 0
            || extent.start < self.first_block
            || extent.end() > self.end_block
            || self.free.overlaps(extent)
        {
            return Err(Error::Invalid(format!(
                "free extent {}+{} out of range or overlapping",
                extent.start, extent.len
            )));
        }
        self.free.insert(extent);
        Ok(())
    }

    fn check_allocated(&self, extent: Extent) -> Result<()> {
        let in_range = extent.len > 0
            && extent.start >= self.first_block
            && extent
                .start
                .checked_add(extent.len)
                .is_some_and(|end| end <= self.end_block);
        if !in_range {
            return Err(Error::Invalid(format!(
                "extent {}+{} outside the device",
                extent.start, extent.len
            )));
        }
        let busy = self
            .busy
            .range(..extent.end())
            .next_back()
            .is_some_and(|(start, len)| start + len > extent.start);
        if busy || self.free.overlaps(extent) {
            return Err(Error::Invalid(format!(
                "extent {}+{} freed twice",
                extent.start, extent.len
            )));
        }
        Ok(())
    }

    /// The freeing transaction is durable: busy space becomes free.
    pub fn commit_done(&mut self) {
        let busy = std::mem::take(&mut self.busy);
        self.free.absorb(&busy);
        self.busy_blocks = 0;
    }

    /// What is free once the open transaction is durable: free and busy
    /// extents merged, in block order. This is what a commit persists.
    pub(crate) fn free_after_commit(&self) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::with_capacity(self.free.extent_count() + self.busy.len());
        let mut free = self.free.iter().peekable();
        let mut busy = self
            .busy
            .iter()
            .map(|(start, len)| Extent::new(*start, *len))
            .peekable();
        loop {
            let next = match (free.peek(), busy.peek()) {
                (Some(a), Some(b)) if a.start < b.start => free.next(),
                (Some(_), Some(_)) => busy.next(),
                (Some(_), None) => free.next(),
                (None, Some(_)) => busy.next(),
                (None, None) => break,
            };
            let next = next.expect("peeked");
            match out.last_mut() {
                Some(last) if last.end() == next.start => last.len += next.len,
                _ => out.push(next),
            }
        }
        out
    }

    /// Upper bound of `free_after_commit().len()`, in O(1).
    pub(crate) fn free_after_commit_extents_max(&self) -> usize {
        self.free.extent_count() + self.busy.len()
    }

    /// Checks both indexes of the free set and that busy extents are
    /// merged and disjoint from free ones.
    pub fn verify(&self) -> std::result::Result<(), String> {
        self.free.verify()?;
        let mut end = None;
        let mut blocks = 0;
        for (start, len) in &self.busy {
            if end.is_some_and(|end| *start <= end) || self.free.overlaps(Extent::new(*start, *len))
            {
                return Err(format!("busy extent {start}+{len} overlaps or is unmerged"));
            }
            end = Some(start + len);
            blocks += len;
        }
        if blocks != self.busy_blocks {
            return Err("busy block count is wrong".into());
        }
        Ok(())
    }
}
