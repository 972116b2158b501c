//! The commit protocol (docs/format.md, "Commit"):
//! 1. the data device is made durable (data the new metadata points at);
//! 2. the previous free-list chain is freed (busy) and a new one allocated
//!    and filled with the free space as it will be after this commit;
//! 3. every dirty metadata block is written to its (new) location;
//! 4. the metadata device is made durable;
//! 5. the superblock with seq = txn seq goes to slot seq % 2 and is made
//!    durable. Only now does the commit count;
//! 6. busy space becomes free, dirty blocks clean, the next txn opens.
//! Any failure poisons the handle: nothing more is written until reopen.

use super::freelist;
use super::state::PoolState;
use super::superblock::Superblock;
use crate::alloc::Extent;
use crate::block::BlockKind;
use crate::error::Result;

impl PoolState {
    pub(crate) fn commit(&mut self) -> Result<()> {
        self.store.check_writable()?;
        let result = self.commit_steps();
        if result.is_err() {
            self.store.poisoned = true;
        }
        result
    }

    fn nothing_to_write(&self) -> bool {
        self.store.dirty_bytes() == 0
            && self.store.alloc.busy_blocks() == 0
            && self.data_alloc.busy_blocks() == 0
            && self.sb.seq > 0
    }

    fn commit_steps(&mut self) -> Result<()> {
        self.data.flush()?;
        if self.nothing_to_write() {
            return Ok(());
        }
        for r in std::mem::take(&mut self.freelist_chain) {
            self.store.free(r)?;
        }
        let block_bytes = self.store.block_bytes;
        let mut chain = Vec::new();
        let (meta_free, data_free) = loop {
            let meta_free = self.store.alloc.free_after_commit();
            let data_free = self.data_alloc.free_after_commit();
            let need = freelist::blocks_for(meta_free.len() + data_free.len(), block_bytes);
            if chain.len() >= need {
                break (meta_free, data_free);
            }
            while chain.len() < need {
                chain.push(self.store.alloc_block(BlockKind::FreeList)?);
            }
        };
        let extents: Vec<Extent> = meta_free.iter().chain(&data_free).copied().collect();
        freelist::write_chain(&mut self.store, &chain, &extents)?;
        let sb = Superblock {
            seq: self.store.txn_seq,
            tree_height: self.tree.height,
            root: self.tree.root,
            freelist: chain.first().copied().unwrap_or_default(),
            meta_free_extents: meta_free.len() as u64,
            data_free_extents: data_free.len() as u64,
            meta_free_blocks: meta_free.iter().map(|extent| extent.len).sum(),
            data_free_blocks: data_free.iter().map(|extent| extent.len).sum(),
            item_count: self.tree.items,
            ..self.sb.clone()
        };
        self.store.write_dirty()?;
        self.store.flush()?;
        self.store
            .write_raw(Superblock::slot_offset(sb.seq), &sb.encode())?;
        self.store.flush()?;
        self.store.commit_done();
        self.data_alloc.commit_done();
        self.sb = sb;
        self.freelist_chain = chain;
        Ok(())
    }
}
