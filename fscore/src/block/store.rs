//! The metadata block store of one pool handle: reads checked blocks through
//! the cache, keeps the open transaction's dirty blocks in memory, and
//! copies clean blocks on write (copy-on-write: a block on disk is never
//! overwritten while a durable superblock may reference it).

use super::cache::{BlockBuf, BlockCache, CachedInfo, Slot, SlotId};
use super::hash::BlockMap;
use super::header::{self, BlockKind, BlockRef, HEADER_BYTES};
use super::index::{Child, ChildIndex};
use super::mem::BlockArena;
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
    /// Memory of every block buffer (huge-page backed, see `mem`).
    arena: BlockArena,
    dirty: BlockMap<BlockBuf>,
    /// The blocks of a commit being written (`begin_commit`), by number:
    /// clean, and read from here until they are on disk.
    committing: BlockMap<(BlockBuf, u64)>,
    pub(crate) alloc: Allocator,
    /// Set by a failed write or flush (to its error's text, which later
    /// refusals repeat); nothing is written afterwards.
    poisoned: Option<String>,
}

/// Requests of an internal node's `ChildIndex` before it is built.
const INDEX_AFTER_HITS: u8 = 4;
/// Hit count marking a node whose index could not be built.
const INDEX_FAILED: u8 = u8::MAX;

/// The level of a node block (payload byte 0); 0 for other kinds.
fn node_level(block: &[u8], kind: u8) -> u8 {
    if kind == BlockKind::Node as u8 {
        block.get(HEADER_BYTES).copied().unwrap_or(0)
    } else {
        0
    }
}

/// A dirty block taken out of the store for editing (see `take`). Its
/// buffer is made unshared when it is taken and no handle to it is cloned
/// while it is out (only its bytes are lent), so edits need no check.
pub(crate) struct BlockMut(BlockBuf);

impl BlockMut {
    fn new(mut block: BlockBuf) -> BlockMut {
        block.make_mut();
        BlockMut(block)
    }
}

/// The bytes of a block for writing, copying first if a reader still
/// shares them (readers drop their handles before edits, so this is rare).
fn unique(block: &mut BlockBuf) -> &mut [u8] {
    block.make_mut()
}

impl std::ops::Deref for BlockMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for BlockMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: unshared since `new`, and never cloned (see the type).
        unsafe { self.0.get_mut_unchecked() }
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
            arena: BlockArena::new(block_bytes as usize),
            dirty: BlockMap::default(),
            committing: BlockMap::default(),
            alloc,
            poisoned: None,
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
        let id = self.load(r, kind)?;
        Ok(self
            .cache
            .slot(id)
            .block
            .clone()
            .expect("a cached slot holds a block"))
    }

    /// Like `read`, but borrows the block instead of sharing it: no
    /// reference count traffic and no touch of the block's header line on a
    /// cache hit.
    pub(crate) fn view(&mut self, r: BlockRef, kind: BlockKind) -> Result<&[u8]> {
        if r.seq == self.txn_seq {
            return Ok(self.dirty_block(r)?);
        }
        let id = self.load(r, kind)?;
        Ok(self.cache.slot(id).bytes())
    }

    fn dirty_block(&self, r: BlockRef) -> Result<&BlockBuf> {
        self.dirty
            .get(&r.blkno)
            .ok_or_else(|| Error::corrupt(r.blkno, "reference to an unwritten block"))
    }

    /// Makes sure a clean block is cached (reading and checking it if not)
    /// and checks the cached block against the reference; returns its slot.
    fn load(&mut self, r: BlockRef, kind: BlockKind) -> Result<SlotId> {
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
        let id = match self.cache.find(r.blkno) {
            Some(id) => id,
            None => {
                // A block of a commit being written is read from memory: it
                // may not be on disk yet. The pool wrote it, so it is
                // verified before an index is built from it.
                let (block, verified) = match self.committing.get(&r.blkno) {
                    Some((block, seq)) if *seq == r.seq => (block.clone(), false),
                    _ => (self.read_from_disk(r, kind)?, true),
                };
                let info = CachedInfo {
                    seq: r.seq,
                    kind: kind as u8,
                    level: node_level(&block, kind as u8),
                    verified,
                };
                self.cache.insert(r.blkno, block, info)
            }
        };
        let slot = self.cache.slot(id);
        if slot.seq != r.seq || slot.kind != kind as u8 {
            return Err(Error::corrupt(
                r.blkno,
                "stale reference (cached block has another seq or kind)",
            ));
        }
        Ok(id)
    }

    /// The cache slot of the clean node `r` for a lookup: `hint` (the slot
    /// a parent's `ChildIndex` remembers) when it still holds the block
    /// with the reference's seq, which skips the block map; else as `read`
    /// finds it (reading and checking it if not cached).
    #[inline]
    pub(crate) fn clean_node(&mut self, r: BlockRef, hint: SlotId) -> Result<SlotId> {
        if let Some(slot) = self.cache.slot_holding(hint, r.blkno) {
            if slot.seq == r.seq && slot.kind == BlockKind::Node as u8 {
                return Ok(hint);
            }
        }
        self.load(r, BlockKind::Node)
    }

    #[inline]
    pub(crate) fn slot(&self, id: SlotId) -> &Slot {
        self.cache.slot(id)
    }

    /// Slot addresses, for prefetching only.
    #[inline]
    pub(crate) fn slot_addresses(&self) -> super::cache::SlotAddresses {
        self.cache.slot_addresses()
    }

    /// The `ChildIndex` of the cached internal node in slot `id`, built on
    /// the slot's `INDEX_AFTER_HITS`th request (cold nodes are not worth
    /// the build) from the node after checking it with `verify` if the
    /// pool wrote it itself (blocks read from disk were verified then).
    /// None while the node is cold or when it cannot be indexed.
    pub(crate) fn child_index(&mut self, id: SlotId) -> Result<Option<&ChildIndex>> {
        let slot = self.cache.slot(id);
        if slot.index.is_none() {
            let hits = slot.hits.get();
            if hits < INDEX_AFTER_HITS {
                slot.hits.set(hits + 1);
                return Ok(None);
            }
            if hits == INDEX_FAILED {
                return Ok(None);
            }
            slot.hits.set(INDEX_FAILED);
            let blkno = slot.blkno;
            let node = NodeAccessor::new(&slot.bytes()[HEADER_BYTES..])
                .map_err(|error| node_error(blkno, error))?;
            if !slot.verified {
                node.verify().map_err(|error| node_error(blkno, error))?;
            }
            let index = ChildIndex::build(&node).map(Box::new);
            if let Some(index) = &index {
                self.seed_child_hints(index);
            }
            let slot = self.cache.slot_mut(id);
            slot.verified = true;
            slot.index = index;
        }
        Ok(self.cache.slot(id).index.as_deref())
    }

    /// Fills a new index's hints with where its cached children are now.
    /// Without this each child's first descent through the new index went
    /// through the block map (a dependent miss, and no prefetch of the
    /// child's hash line): after a run of inserts most nodes are new
    /// copies, so at 10M items a quarter of the next 1M lookups did.
    /// The probes here are independent of each other.
    fn seed_child_hints(&self, index: &ChildIndex) {
        for child in index.children() {
            if let Some(id) = self.cache.peek(child.r.blkno) {
                self.point_at(child, id);
            }
        }
    }

    /// Records in `entry` that its child is in slot `id`, and where the
    /// child's bytes are (for prefetching).
    #[inline]
    fn point_at(&self, entry: &Child, id: SlotId) {
        entry.slot.set(id);
        entry
            .bytes
            .set(self.cache.slot(id).bytes().as_ptr() as usize);
    }

    /// The entry of the child at `position` in the index of the node in
    /// slot `parent`, if that slot holds an indexed node. It is a hint: if
    /// `parent` was evicted meanwhile this names another node's child,
    /// whose hints then fail their checks and cost nothing.
    #[inline]
    fn child_entry(&self, parent: SlotId, position: usize) -> Option<&Child> {
        self.cache.slot(parent).index.as_deref()?.get(position)
    }

    /// Remembers in the parent's index where the child's own index is (0:
    /// none), for the next descent to prefetch. Written only when it
    /// changed, so a hot path does not dirty the parent's cache line every
    /// time.
    #[inline]
    pub(crate) fn remember_child_index(&self, parent: SlotId, position: usize, address: usize) {
        if let Some(entry) = self.child_entry(parent, position) {
            if entry.index.get() != address {
                entry.index.set(address);
            }
        }
    }

    /// Remembers in the parent's index that its child at `position` is in
    /// slot `child` (checked in `clean_node` before use).
    #[inline]
    pub(crate) fn remember_child(&self, parent: SlotId, position: usize, child: SlotId) {
        if let Some(entry) = self.child_entry(parent, position) {
            self.point_at(entry, child);
        }
    }

    fn read_from_disk(&mut self, r: BlockRef, kind: BlockKind) -> Result<BlockBuf> {
        let mut block = self.arena.alloc();
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
        let mut block = self.arena.alloc_zeroed();
        header::init_header(unique(&mut block), self.pool_id, self.txn_seq, blkno, kind);
        self.dirty.insert(blkno, block);
        Ok(BlockRef {
            blkno,
            seq: self.txn_seq,
        })
    }

    /// The dirty version of a block: itself if dirty, else a copy at a new
    /// location (the old location becomes busy). The copy reuses the cached
    /// buffer in place (the old location's cache entry goes away anyway): no
    /// 4 KiB copy, allocation or free per copied block unless a reader still
    /// shares the buffer.
    pub(crate) fn cow(&mut self, r: BlockRef, kind: BlockKind) -> Result<BlockRef> {
        if self.is_dirty(r) {
            return Ok(r);
        }
        if r.seq == self.txn_seq {
            return Err(Error::corrupt(r.blkno, "reference to an unwritten block"));
        }
        let id = self.load(r, kind)?;
        let (mut block, info) = self.cache.take(id);
        let blkno = match self.alloc.alloc_one() {
            Ok(blkno) => blkno,
            Err(error) => {
                self.cache.insert(r.blkno, block, info);
                return Err(error);
            }
        };
        header::init_header(unique(&mut block), self.pool_id, self.txn_seq, blkno, kind);
        self.dirty.insert(blkno, block);
        self.alloc.free(Extent::new(r.blkno, 1))?;
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
            Some(block) if r.seq == self.txn_seq => Ok(BlockMut::new(block)),
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
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned(cause.clone())),
            None => Ok(()),
        }
    }

    /// The failure that poisoned the store, if one did.
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Nothing more is written until reopen; the first cause is kept.
    pub(crate) fn poison(&mut self, cause: &dyn std::fmt::Display) {
        self.poisoned.get_or_insert_with(|| cause.to_string());
    }

    fn poison_on_error(&mut self, result: std::io::Result<()>) -> Result<()> {
        if let Err(e) = &result {
            self.poison(e);
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
            let info = CachedInfo {
                seq,
                kind,
                level: node_level(&block, kind),
                verified: false,
            };
            self.cache.insert(blkno, block, info);
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
