//! The metadata block store of one pool handle: reads checked blocks through
//! the cache, keeps the open transaction's dirty blocks in memory, and
//! copies clean blocks on write (copy-on-write: a block on disk is never
//! overwritten while a durable superblock may reference it).

use super::cache::{BlockBuf, BlockCache};
use super::header::{self, BlockKind, BlockRef, HEADER_BYTES};
use crate::alloc::{Allocator, Extent};
use crate::btree::node::{NodeAccessor, NodeError};
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) struct BlockStore {
    storage: Box<dyn Storage>,
    pub(crate) block_bytes: u32,
    pub(crate) pool_id: u64,
    /// Seq of the open transaction: the last durable seq plus one. Every
    /// dirty block carries it.
    pub(crate) txn_seq: u64,
    /// Metadata blocks are `[first_block, end_block)`; lower numbers hold
    /// the superblock slots.
    pub(crate) first_block: u64,
    pub(crate) end_block: u64,
    cache: BlockCache,
    dirty: HashMap<u64, BlockBuf>,
    pub(crate) alloc: Allocator,
    /// Set by a failed write or flush; nothing is written afterwards.
    pub(crate) poisoned: bool,
}

pub(crate) fn node_error(blkno: u64, error: NodeError) -> Error {
    match error {
        NodeError::Corrupt(what) => Error::corrupt(blkno, what),
        NodeError::Full => Error::corrupt(blkno, "node unexpectedly full"),
    }
}

impl BlockStore {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        storage: Box<dyn Storage>,
        block_bytes: u32,
        pool_id: u64,
        txn_seq: u64,
        first_block: u64,
        end_block: u64,
        cache_blocks: usize,
        alloc: Allocator,
    ) -> BlockStore {
        BlockStore {
            storage,
            block_bytes,
            pool_id,
            txn_seq,
            first_block,
            end_block,
            cache: BlockCache::new(cache_blocks),
            dirty: HashMap::new(),
            alloc,
            poisoned: false,
        }
    }

    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.dirty.len() as u64 * self.block_bytes as u64
    }

    pub(crate) fn is_dirty(&self, r: BlockRef) -> bool {
        r.seq == self.txn_seq && self.dirty.contains_key(&r.blkno)
    }

    /// A block, checked against the reference that led to it: header fields,
    /// crc, and for nodes the node's own `verify`.
    pub(crate) fn read(&mut self, r: BlockRef, kind: BlockKind) -> Result<BlockBuf> {
        if r.seq == self.txn_seq {
            return self
                .dirty
                .get(&r.blkno)
                .cloned()
                .ok_or_else(|| Error::corrupt(r.blkno, "reference to an unwritten block"));
        }
        if r.blkno < self.first_block || r.blkno >= self.end_block {
            return Err(Error::corrupt(
                r.blkno,
                "reference outside the metadata device",
            ));
        }
        if r.seq > self.txn_seq {
            return Err(Error::corrupt(
                r.blkno,
                format!("reference from the future (seq {})", r.seq),
            ));
        }
        if let Some(block) = self.cache.get(r.blkno) {
            if header::header_seq(&block) != r.seq || header::header_kind(&block) != kind as u8 {
                return Err(Error::corrupt(
                    r.blkno,
                    "stale reference (cached block has another seq or kind)",
                ));
            }
            return Ok(block);
        }
        let block = self.read_from_disk(r, kind)?;
        let block = Arc::new(block);
        self.cache.insert(r.blkno, block.clone());
        Ok(block)
    }

    fn read_from_disk(&mut self, r: BlockRef, kind: BlockKind) -> Result<Vec<u8>> {
        let mut block = vec![0u8; self.block_bytes as usize];
        self.storage
            .read_at(r.blkno * self.block_bytes as u64, &mut block)?;
        header::check(&block, self.pool_id, r, kind)?;
        if kind == BlockKind::Node {
            let node = NodeAccessor::new(&block[HEADER_BYTES..])
                .map_err(|error| node_error(r.blkno, error))?;
            node.verify().map_err(|error| node_error(r.blkno, error))?;
        }
        Ok(block)
    }

    /// A new zeroed dirty block with its header.
    pub(crate) fn alloc_block(&mut self, kind: BlockKind) -> Result<BlockRef> {
        let blkno = self.alloc.alloc_one()?;
        let mut block = vec![0u8; self.block_bytes as usize];
        header::init_header(&mut block, self.pool_id, self.txn_seq, blkno, kind);
        self.dirty.insert(blkno, Arc::new(block));
        Ok(BlockRef {
            blkno,
            seq: self.txn_seq,
        })
    }

    /// The dirty version of a block: itself if dirty, else a copy at a new
    /// location (the old location becomes busy).
    pub(crate) fn cow(&mut self, r: BlockRef, kind: BlockKind) -> Result<BlockRef> {
        if self.is_dirty(r) {
            return Ok(r);
        }
        let old = self.read(r, kind)?;
        let blkno = self.alloc.alloc_one()?;
        let mut block = old.as_ref().clone();
        header::init_header(&mut block, self.pool_id, self.txn_seq, blkno, kind);
        self.dirty.insert(blkno, Arc::new(block));
        self.alloc.free(Extent::new(r.blkno, 1))?;
        self.cache.remove(r.blkno);
        Ok(BlockRef {
            blkno,
            seq: self.txn_seq,
        })
    }

    /// Frees a block: a dirty one is free at once, a clean one is busy until
    /// the transaction is durable.
    pub(crate) fn free(&mut self, r: BlockRef) -> Result<()> {
        if self.is_dirty(r) {
            self.dirty.remove(&r.blkno);
            self.alloc.free_unreferenced(Extent::new(r.blkno, 1))
        } else {
            self.cache.remove(r.blkno);
            self.alloc.free(Extent::new(r.blkno, 1))
        }
    }

    /// Takes a dirty block out for editing (two blocks can be out at once);
    /// `put` returns it.
    pub(crate) fn take(&mut self, r: BlockRef) -> Result<Vec<u8>> {
        match self.dirty.remove(&r.blkno) {
            Some(block) if r.seq == self.txn_seq => {
                Ok(Arc::try_unwrap(block).unwrap_or_else(|shared| shared.as_ref().clone()))
            }
            Some(block) => {
                self.dirty.insert(r.blkno, block);
                Err(Error::corrupt(r.blkno, "edit of a clean block"))
            }
            None => Err(Error::corrupt(r.blkno, "edit of a block that is not dirty")),
        }
    }

    pub(crate) fn put(&mut self, r: BlockRef, block: Vec<u8>) {
        debug_assert_eq!(r.seq, self.txn_seq);
        self.dirty.insert(r.blkno, Arc::new(block));
    }

    /// Writes every dirty block (sealed with its crc) to its location.
    pub(crate) fn write_dirty(&mut self) -> Result<()> {
        self.check_writable()?;
        let block_bytes = self.block_bytes as u64;
        let mut sealed: Vec<(u64, BlockBuf)> = Vec::with_capacity(self.dirty.len());
        for (blkno, block) in self.dirty.iter_mut() {
            header::seal(Arc::make_mut(block).as_mut_slice());
            sealed.push((*blkno * block_bytes, block.clone()));
        }
        let writes: Vec<(u64, &[u8])> = sealed
            .iter()
            .map(|(offset, block)| (*offset, block.as_slice()))
            .collect();
        let result = self.storage.write_batch(&writes);
        self.poison_on_error(result)
    }

    /// Makes every written block durable.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.check_writable()?;
        let result = self.storage.flush();
        self.poison_on_error(result)
    }

    /// Writes raw bytes (the superblock) at a byte offset.
    pub(crate) fn write_raw(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        let result = self.storage.write_batch(&[(offset, bytes)]);
        self.poison_on_error(result)
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn poison_on_error(&mut self, result: std::io::Result<()>) -> Result<()> {
        if result.is_err() {
            self.poisoned = true;
        }
        Ok(result?)
    }

    /// The transaction is durable: dirty blocks become clean cached blocks
    /// and the next transaction begins.
    pub(crate) fn commit_done(&mut self) {
        for (blkno, block) in self.dirty.drain() {
            self.cache.insert(blkno, block);
        }
        self.alloc.commit_done();
        self.txn_seq += 1;
    }
}
