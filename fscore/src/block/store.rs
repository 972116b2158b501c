//! The metadata block store of one pool handle: reads checked blocks through
//! the cache, keeps the open transaction's dirty blocks in memory, and
//! copies clean blocks on write (copy-on-write: a block on disk is never
//! overwritten while a durable superblock may reference it).

use super::cache::{BlockBuf, BlockCache};
use super::hash::BlockMap;
use super::header::{self, BlockKind, BlockRef, HEADER_BYTES};
use crate::alloc::{Allocator, Extent};
use crate::btree::node::{NodeAccessor, NodeError};
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device shared between the pool's state (reads of uncached blocks)
/// and a commit being written without the pool's lock.
pub(crate) type SharedStorage = Arc<Mutex<Box<dyn Storage>>>;

pub(crate) fn lock_storage(storage: &SharedStorage) -> MutexGuard<'_, Box<dyn Storage>> {
    // A panic mid-I/O leaves nothing half-done in memory; the device state
    // is unknown either way, which poisoning covers.
    storage.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct BlockStore {
    storage: SharedStorage,
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
    dirty: BlockMap<BlockBuf>,
    /// The blocks of a commit being written (`begin_commit`), by number:
    /// clean, and read from here until they are on disk.
    committing: BlockMap<(BlockBuf, u64)>,
    pub(crate) alloc: Allocator,
    /// Set by a failed write or flush; nothing is written afterwards.
    pub(crate) poisoned: bool,
}

/// A dirty block taken out of the store for editing (see `take`).
pub(crate) struct BlockMut(BlockBuf);

/// The bytes of a block for writing, copying first if a reader still
/// shares them (readers drop their handles before edits, so this is rare).
fn unique(block: &mut BlockBuf) -> &mut [u8] {
    if Arc::get_mut(block).is_none() {
        *block = Arc::from(&block[..]);
    }
    Arc::get_mut(block).expect("just made unique")
}

/// A zeroed block, allocated once (no Vec to copy from).
fn zeroed_block(block_bytes: u32) -> BlockBuf {
    let block = Arc::<[u8]>::new_zeroed_slice(block_bytes as usize);
    // SAFETY: zeroed bytes are valid u8s.
    unsafe { block.assume_init() }
}

impl std::ops::Deref for BlockMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for BlockMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        unique(&mut self.0)
    }
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
            storage: Arc::new(Mutex::new(storage)),
            block_bytes,
            pool_id,
            txn_seq,
            first_block,
            end_block,
            cache: BlockCache::new(cache_blocks),
            dirty: BlockMap::default(),
            committing: BlockMap::default(),
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
            return self.dirty_block(r).cloned();
        }
        self.load(r, kind)?;
        Ok(self.cached(r, kind)?.clone())
    }

    /// Like `read`, but borrows the block instead of sharing it: no
    /// reference count traffic and no touch of the block's header line on a
    /// cache hit (the hot path of lookups).
    pub(crate) fn view(&mut self, r: BlockRef, kind: BlockKind) -> Result<&[u8]> {
        if r.seq == self.txn_seq {
            return Ok(self.dirty_block(r)?);
        }
        self.load(r, kind)?;
        Ok(self.cached(r, kind)?)
    }

    fn dirty_block(&self, r: BlockRef) -> Result<&BlockBuf> {
        self.dirty
            .get(&r.blkno)
            .ok_or_else(|| Error::corrupt(r.blkno, "reference to an unwritten block"))
    }

    /// Makes sure a clean block is cached (reading and checking it if not).
    fn load(&mut self, r: BlockRef, kind: BlockKind) -> Result<()> {
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
        if !self.cache.contains(r.blkno) {
            let block = match self.committing.get(&r.blkno) {
                Some((block, seq)) if *seq == r.seq => block.clone(),
                _ => self.read_from_disk(r, kind)?,
            };
            self.cache
                .insert(r.blkno, Arc::from(block), r.seq, kind as u8);
        }
        Ok(())
    }

    /// A cached block, checked against the reference by the seq and kind
    /// the cache recorded when the block was read and checked.
    fn cached(&mut self, r: BlockRef, kind: BlockKind) -> Result<&BlockBuf> {
        match self.cache.get(r.blkno) {
            Some((block, seq, cached_kind)) if seq == r.seq && cached_kind == kind as u8 => {
                Ok(block)
            }
            Some(_) => Err(Error::corrupt(
                r.blkno,
                "stale reference (cached block has another seq or kind)",
            )),
            None => Err(Error::corrupt(r.blkno, "block vanished from the cache")),
        }
    }

    fn read_from_disk(&mut self, r: BlockRef, kind: BlockKind) -> Result<BlockBuf> {
        let mut block = zeroed_block(self.block_bytes);
        lock_storage(&self.storage)
            .read_at(r.blkno * self.block_bytes as u64, unique(&mut block))?;
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
        let mut block = zeroed_block(self.block_bytes);
        header::init_header(unique(&mut block), self.pool_id, self.txn_seq, blkno, kind);
        self.dirty.insert(blkno, block);
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
        let mut block: BlockBuf = Arc::from(&old[..]);
        drop(old);
        header::init_header(unique(&mut block), self.pool_id, self.txn_seq, blkno, kind);
        self.dirty.insert(blkno, block);
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
    pub(crate) fn take(&mut self, r: BlockRef) -> Result<BlockMut> {
        match self.dirty.remove(&r.blkno) {
            Some(block) if r.seq == self.txn_seq => Ok(BlockMut(block)),
            Some(block) => {
                self.dirty.insert(r.blkno, block);
                Err(Error::corrupt(r.blkno, "edit of a clean block"))
            }
            None => Err(Error::corrupt(r.blkno, "edit of a block that is not dirty")),
        }
    }

    pub(crate) fn put(&mut self, r: BlockRef, block: BlockMut) {
        debug_assert_eq!(r.seq, self.txn_seq);
        self.dirty.insert(r.blkno, block.0);
    }

    /// Makes every written block durable.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.check_writable()?;
        let result = lock_storage(&self.storage).flush();
        self.poison_on_error(result)
    }

    /// Writes raw bytes (the superblock) at a byte offset.
    pub(crate) fn write_raw(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        let result = lock_storage(&self.storage).write_batch(&[(offset, bytes)]);
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

    /// Ends the open transaction without writing it: its dirty blocks are
    /// sealed and become clean cached blocks of a commit in flight (kept in
    /// memory until `end_commit`, so a cache eviction never sends a read to
    /// a block not yet on disk; changing one copies it, as for any clean
    /// block), its busy space is set aside, and the next transaction opens.
    /// Returns the writes the commit must make (byte offset, block).
    pub(crate) fn begin_commit(&mut self) -> Vec<(u64, BlockBuf)> {
        debug_assert!(self.committing.is_empty(), "two commits in flight");
        let seq = self.txn_seq;
        let block_bytes = self.block_bytes as u64;
        let mut writes = Vec::with_capacity(self.dirty.len());
        for (blkno, mut block) in self.dirty.drain() {
            header::seal(unique(&mut block));
            let kind = header::header_kind(&block);
            writes.push((blkno * block_bytes, block.clone()));
            self.committing.insert(blkno, (block.clone(), seq));
            self.cache.insert(blkno, block, seq, kind);
        }
        self.alloc.begin_commit();
        self.txn_seq += 1;
        writes
    }

    /// The commit begun by `begin_commit` is durable.
    pub(crate) fn end_commit(&mut self) {
        self.committing.clear();
        self.alloc.end_commit();
    }

    /// The device, for writing a commit without the pool's lock.
    pub(crate) fn shared_storage(&self) -> SharedStorage {
        self.storage.clone()
    }
}
