//! The state behind one open pool handle, and the steps that build it: mkfs
//! of an empty pool and recovery of the newest superblock at open.

use super::freelist;
use super::freelog::{self, LogEntry};
use super::journal::{self, Journal};
use super::label::{verify_label, write_label, DataLabel, FIRST_DATA_BLOCK};
use super::options::{
    valid_meta_block_bytes, MkfsOptions, OpenOptions, PoolInfo, DATA_BLOCK_BYTES,
};
use super::superblock::{has_super_magic, Superblock, SUPER_AREA_BYTES, SUPER_BYTES};
use crate::alloc::{Allocator, Extent};
use crate::block::store::SharedStorage;
use crate::block::{BlockKind, BlockRef, BlockStore, HEADER_BYTES};
use crate::btree::node::NodeMut;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tree::Tree;

pub(crate) struct PoolState {
    pub(crate) store: BlockStore,
    pub(crate) data: SharedStorage,
    pub(crate) data_alloc: Allocator,
    pub(crate) tree: Tree,
    /// The last durable superblock.
    pub(crate) sb: Superblock,
    /// The free-list chain the last durable superblock points at.
    pub(crate) freelist_chain: Vec<BlockRef>,
    /// The free-space log the last durable superblock points at, newest
    /// block first, and the entries of its newest block.
    pub(crate) freelog_chain: Vec<BlockRef>,
    pub(crate) freelog_head: Vec<LogEntry>,
    /// Largest leaf value a node of this block size can hold and split.
    pub(crate) value_len_max: usize,
    /// The metadata device as commits write it. A second handle on the
    /// device where the caller gives one (`use_meta_writer`), so reads of
    /// uncached blocks never wait behind a commit's writes; else the
    /// store's own.
    pub(crate) meta_writer: SharedStorage,
    /// Records logged in the open transaction, and where its syncs write.
    pub(crate) journal: Journal,
    /// `OpenOptions::journal_blocks_max`: the region a commit asks for.
    pub(crate) journal_blocks_max: u64,
}

fn value_len_max(block_bytes: u32) -> usize {
    let mut scratch = vec![0u8; block_bytes as usize - HEADER_BYTES];
    NodeMut::init(&mut scratch, 0).accessor().value_len_max()
}

pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(bytes)
}

fn cache_blocks(opts: &OpenOptions, block_bytes: u32) -> usize {
    (opts.cache_bytes / block_bytes as u64).max(16) as usize
}

impl PoolState {
    /// Formats: an empty leaf as the root, everything else free, committed
    /// as seq 1. Both superblock slots are zeroed first so no older pool's
    /// superblock can win at open.
    pub(crate) fn mkfs(
        meta: Box<dyn Storage>,
        data: Box<dyn Storage>,
        opts: &MkfsOptions,
    ) -> Result<PoolState> {
        let block_bytes = opts.meta_block_bytes;
        if !valid_meta_block_bytes(block_bytes) {
            return Err(Error::Invalid(format!("metadata block size {block_bytes}")));
        }
        if opts.meta_bytes > meta.len_bytes() || opts.data_bytes > data.len_bytes() {
            return Err(Error::Invalid(
                "a device is smaller than the size asked for".into(),
            ));
        }
        let meta_blocks = opts.meta_bytes / block_bytes as u64;
        let first_block = Superblock::first_meta_block(block_bytes);
        if meta_blocks < first_block + 8 {
            return Err(Error::Invalid("metadata device too small".into()));
        }
        let data_blocks = opts.data_bytes / DATA_BLOCK_BYTES as u64;
        if data_blocks < FIRST_DATA_BLOCK + 1 {
            return Err(Error::Invalid("data device too small".into()));
        }
        let pool_id = random_u64();
        let alloc = Allocator::all_free(first_block, meta_blocks);
        let mut store = BlockStore::new(
            meta,
            block_bytes,
            pool_id,
            1,
            first_block,
            meta_blocks,
            1024,
            alloc,
        );
        store.write_raw(0, &vec![0u8; SUPER_AREA_BYTES as usize])?;
        store.flush()?;
        let root = store.alloc_block(BlockKind::Node)?;
        let mut block = store.take(root)?;
        NodeMut::init(&mut block[HEADER_BYTES..], 0);
        store.put(root, block);
        let sb = Superblock {
            meta_block_bytes: block_bytes,
            pool_id,
            seq: 0,
            meta_blocks,
            data_blocks,
            data_block_bytes: DATA_BLOCK_BYTES,
            tree_height: 1,
            root,
            freelist: BlockRef::NONE,
            meta_free_extents: 0,
            data_free_extents: 0,
            meta_free_blocks: 0,
            data_free_blocks: 0,
            item_count: 0,
            freelog: BlockRef::NONE,
            freelog_blocks: 0,
            freelog_entries: 0,
            journal: Extent::default(),
            journal_nonce: 0,
        };
        // Labelled before the first superblock is written: a crash in
        // between leaves a metadata device holding no pool.
        let mut data = data;
        write_label(
            data.as_mut(),
            DataLabel {
                pool_id,
                data_blocks,
                commit_seq: 0,
            },
        )?;
        let meta_writer = store.shared_storage();
        let mut state = PoolState {
            store,
            data: std::sync::Arc::new(std::sync::Mutex::new(data)),
            data_alloc: Allocator::all_free(FIRST_DATA_BLOCK, data_blocks),
            tree: Tree {
                root,
                height: 1,
                items: 0,
            },
            sb,
            freelist_chain: Vec::new(),
            freelog_chain: Vec::new(),
            freelog_head: Vec::new(),
            value_len_max: value_len_max(block_bytes),
            meta_writer,
            journal: Journal::default(),
            journal_blocks_max: 0,
        };
        state.commit()?;
        Ok(state)
    }

    /// Opens: the valid superblock slot with the greater seq, then its
    /// free-list chain. Nothing is written.
    pub(crate) fn open(
        mut meta: Box<dyn Storage>,
        data: Box<dyn Storage>,
        opts: &OpenOptions,
    ) -> Result<PoolState> {
        if meta.len_bytes() < SUPER_AREA_BYTES {
            return Err(Error::BadFormat(
                "metadata device smaller than the superblocks".into(),
            ));
        }
        let mut area = vec![0u8; SUPER_AREA_BYTES as usize];
        meta.read_at(0, &mut area)?;
        if !area.chunks_exact(SUPER_BYTES).any(has_super_magic) {
            return Err(Error::BadFormat(
                "the metadata device holds no pool (no fscore superblock in either slot)".into(),
            ));
        }
        let slots = [
            Superblock::decode(&area[..SUPER_BYTES], 0),
            Superblock::decode(&area[SUPER_BYTES..], 1),
        ];
        let sb = match slots {
            [Ok(a), Ok(b)] if a.pool_id != b.pool_id => {
                return Err(Error::corrupt(0, "superblock slots name different pools"))
            }
            [Ok(a), Ok(b)] => {
                if a.seq >= b.seq {
                    a
                } else {
                    b
                }
            }
            [Ok(a), Err(_)] | [Err(_), Ok(a)] => a,
            // Report a damaged pool (a slot with our magic) over a device
            // that never held one.
            [Err(Error::BadFormat(_)), Err(b)] => return Err(b),
            [Err(a), Err(_)] => return Err(a),
        };
        for (device, have, needs) in [
            (
                "metadata",
                meta.len_bytes(),
                sb.meta_blocks * sb.meta_block_bytes as u64,
            ),
            (
                "data",
                data.len_bytes(),
                sb.data_blocks * DATA_BLOCK_BYTES as u64,
            ),
        ] {
            if have < needs {
                return Err(Error::BadFormat(format!(
                    "the {device} device holds {have} bytes, the pool on it {needs} (truncated, or another device?)"
                )));
            }
        }
        let mut data = data;
        verify_label(data.as_mut(), sb.pool_id, sb.data_blocks, sb.seq)?;
        let first_block = Superblock::first_meta_block(sb.meta_block_bytes);
        let alloc = Allocator::new(first_block, sb.meta_blocks);
        let cache = cache_blocks(opts, sb.meta_block_bytes);
        let mut store = BlockStore::new(
            meta,
            sb.meta_block_bytes,
            sb.pool_id,
            sb.seq + 1,
            first_block,
            sb.meta_blocks,
            cache,
            alloc,
        );
        let (chain, extents) = freelist::read_chain(&mut store, sb.freelist, sb.meta_blocks)?;
        let mut data_alloc = Allocator::new(FIRST_DATA_BLOCK, sb.data_blocks);
        load_free_extents(&mut store, &mut data_alloc, &sb, &extents)?;
        let log = freelog::read_log(&mut store, sb.freelog, sb.meta_blocks)?;
        let log_entries: u64 = log.iter().map(|(_, entries)| entries.len() as u64).sum();
        if log.len() as u64 != sb.freelog_blocks || log_entries != sb.freelog_entries {
            return Err(Error::corrupt(
                sb.freelog.blkno,
                "free-space log size disagrees with the superblock",
            ));
        }
        freelog::replay(&log, &mut store.alloc, &mut data_alloc)?;
        if store.alloc.free_blocks() != sb.meta_free_blocks
            || data_alloc.free_blocks() != sb.data_free_blocks
        {
            return Err(Error::corrupt(
                sb.freelist.blkno,
                "free block totals disagree with the superblock",
            ));
        }
        let freelog_head = log.first().map(|(_, e)| e.clone()).unwrap_or_default();
        let freelog_chain = log.into_iter().map(|(r, _)| r).collect();
        let tree = Tree {
            root: sb.root,
            height: sb.tree_height,
            items: sb.item_count,
        };
        let value_len_max = value_len_max(sb.meta_block_bytes);
        let store_storage = store.shared_storage();
        let data: SharedStorage = std::sync::Arc::new(std::sync::Mutex::new(data));
        let journal = open_journal(&data, &sb)?;
        Ok(PoolState {
            store,
            data,
            data_alloc,
            tree,
            sb,
            freelist_chain: chain,
            freelog_chain,
            freelog_head,
            value_len_max,
            meta_writer: store_storage,
            journal,
            journal_blocks_max: opts.journal_blocks_max,
        })
    }

    /// Commits write the metadata device through `writer`, a second handle
    /// on the same device (see `meta_writer`).
    pub(crate) fn use_meta_writer(&mut self, writer: Box<dyn Storage>) {
        self.meta_writer = std::sync::Arc::new(std::sync::Mutex::new(writer));
    }

    pub(crate) fn info(&self) -> PoolInfo {
        PoolInfo {
            pool_id: self.sb.pool_id,
            seq: self.sb.seq,
            meta_block_bytes: self.sb.meta_block_bytes,
            data_block_bytes: DATA_BLOCK_BYTES,
            meta_blocks: self.sb.meta_blocks,
            data_blocks: self.sb.data_blocks,
            meta_free_blocks: self.store.alloc.free_blocks(),
            meta_busy_blocks: self.store.alloc.busy_blocks(),
            data_free_blocks: self.data_alloc.free_blocks(),
            data_busy_blocks: self.data_alloc.busy_blocks(),
            items: self.tree.items,
            tree_height: self.tree.height,
            freelist_extents: self.sb.meta_free_extents + self.sb.data_free_extents,
            freelog_blocks: self.sb.freelog_blocks,
            freelog_entries: self.sb.freelog_entries,
            dirty_bytes: self.store.dirty_bytes(),
            journal_blocks: self.journal.region.len,
            journal_used_blocks: self.journal.used,
            journal_pending_bytes: self.journal.pending_bytes(),
            journal_free_bytes: self.journal.free_bytes(),
        }
    }

    /// Refuses a change that could leave too few free metadata blocks for
    /// the change itself (`op_blocks`) plus the next commit's free-list
    /// chain grown by `extra_extents` (every freed block can add an extent).
    pub(crate) fn ensure_meta_room(&self, op_blocks: u64, extra_extents: usize) -> Result<()> {
        self.store.check_writable()?;
        let alloc = &self.store.alloc;
        let extents_max = alloc.free_after_commit_extents_max()
            + self.data_alloc.free_after_commit_extents_max()
            + self.freelist_chain.len()
            + self.freelog_chain.len()
            + alloc.change_count()
            + self.data_alloc.change_count()
            + 2 * op_blocks as usize
            + extra_extents;
        // Room for a compaction (a whole new chain), or else a log head
        // holding every change (never more blocks than the chain).
        let reserve = freelist::blocks_for(extents_max, self.store.block_bytes) as u64 + 2;
        if alloc.free_blocks() < op_blocks + reserve {
            return Err(Error::NoSpace);
        }
        Ok(())
    }
}

/// The journal of the transaction after `sb`: the records of its intact
/// syncs, to be applied again by the caller. The region is then sealed,
/// so this handle's first sync is a commit (which gives a new region and
/// nonce): the region's blocks must not be written again under the same
/// seq and nonce, as the intact syncs (which a commit must cover first) or
/// the remains of a torn one (which could pass for part of a new sync) may
/// be in any of them.
fn open_journal(data: &SharedStorage, sb: &Superblock) -> Result<Journal> {
    let mut journal = Journal::new(sb.journal, sb.journal_nonce);
    if sb.journal.len == 0 {
        return Ok(journal);
    }
    let found = {
        let mut data = crate::block::store::lock_storage(data);
        journal::read_region(
            &mut **data,
            sb.journal,
            sb.journal_nonce,
            sb.pool_id,
            sb.seq,
        )?
    };
    journal.used = found.used;
    journal.sealed = true;
    if !found.replay.records.is_empty() {
        journal.replay = Some(found.replay);
    }
    Ok(journal)
}

/// Splits the chain's extents (metadata first, then data) into the two
/// allocators, checking the counts against the superblock.
fn load_free_extents(
    store: &mut BlockStore,
    data_alloc: &mut Allocator,
    sb: &Superblock,
    extents: &[Extent],
) -> Result<()> {
    let blkno = sb.freelist.blkno;
    if extents.len() as u64 != sb.meta_free_extents + sb.data_free_extents {
        return Err(Error::corrupt(
            blkno,
            "free-list extent count disagrees with the superblock",
        ));
    }
    let (meta, data) = extents.split_at(sb.meta_free_extents as usize);
    for extent in meta {
        store
            .alloc
            .mark_free(*extent)
            .map_err(|error| Error::corrupt(blkno, error))?;
    }
    for extent in data {
        data_alloc
            .mark_free(*extent)
            .map_err(|error| Error::corrupt(blkno, error))?;
    }
    Ok(())
}
