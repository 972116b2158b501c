//! The commit protocol (docs/format.md, "Commit"):
//! 1. the data device's label gets this commit's seq, and the data device
//!    is made durable (the label and the data the new metadata points at;
//!    started first, waited for before step 5);
//! 2. the free space as it will be after this commit is persisted: either
//!    appended to the free-space log (this transaction's allocations and
//!    frees), or, once the log outgrows the base chain, compacted: the old
//!    chain and log are freed (busy) and a new chain holds every free extent;
//! 3. every dirty metadata block is written to its (new) location;
//! 4. the metadata device is made durable;
//! 5. the superblock with seq = txn seq goes to slot seq % 2 and is made
//!    durable. Only now does the commit count;
//! 6. busy space becomes free.
//!
//! Step 2 ends the open transaction and opens the next one (`begin_commit`),
//! so a caller may go on changing the pool while steps 1 and 3-5 run without
//! its lock (`CommitIo`); step 6 is `end_commit`.
//!
//! Any failure poisons the handle: nothing more is written until reopen.

use super::freelist;
use super::freelog::{self, LogEntry};
use super::journal::{JOURNAL_BLOCKS_MAX, JOURNAL_DEVICE_FRACTION};
use super::label::{label_write, DataLabel};
use super::state::PoolState;
use super::superblock::Superblock;
use crate::alloc::Extent;
use crate::block::store::{lock_storage, SharedStorage};
use crate::block::{BlockBuf, BlockKind, BlockRef};
use crate::error::{Error, Result};

/// The log is compacted once it would hold more entries than the base
/// chain, but never while it holds fewer than this many blocks' worth:
/// replay at open stays linear in the free space, and each commit's cost
/// linear in its own changes (amortised).
const LOG_BLOCKS_MIN: usize = 2;

/// What step 2 leaves for the superblock and for the state after success.
struct FreeSpace {
    freelist: BlockRef,
    meta_free_extents: u64,
    data_free_extents: u64,
    freelist_chain: Vec<BlockRef>,
    freelog_chain: Vec<BlockRef>,
    freelog_head: Vec<LogEntry>,
    freelog_entries: u64,
}

/// A commit begun by `PoolState::begin_commit`: what its I/O must write.
/// `None` when nothing changed (the data device is still made durable).
pub(crate) struct CommitJob {
    work: Option<CommitWork>,
}

struct CommitWork {
    /// Sealed dirty blocks: (byte offset, block).
    blocks: Vec<(u64, BlockBuf)>,
    sb: Superblock,
    free_space: FreeSpace,
}

/// The devices a commit writes, usable without the pool's lock.
pub(crate) struct CommitIo {
    meta: SharedStorage,
    data: SharedStorage,
}

impl CommitIo {
    /// Steps 1 and 3-5: label written, data durable, dirty blocks written
    /// and durable, then the superblock written and durable.
    ///
    /// The data device's flush is started first and waited for only before
    /// the superblock: it runs while the metadata is written and flushed, so
    /// a commit costs two flush latencies in a row, not three.
    pub(crate) fn write(&self, job: &CommitJob) -> Result<()> {
        let Some(CommitWork { blocks, sb, .. }) = &job.work else {
            lock_storage(&self.data).flush()?;
            return Ok(());
        };
        let (label_at, label) = label_write(DataLabel {
            pool_id: sb.pool_id,
            data_blocks: sb.data_blocks,
            commit_seq: sb.seq,
        });
        {
            let mut data = lock_storage(&self.data);
            data.write_batch(&[(label_at, &label)])?;
            data.flush_begin()?;
        }
        let writes: Vec<(u64, &[u8])> = blocks
            .iter()
            .map(|(offset, block)| (*offset, &block[..]))
            .collect();
        let mut meta = lock_storage(&self.meta);
        let meta_written = meta.write_batch(&writes).and_then(|()| meta.flush());
        // Always collect the data flush, even after a metadata failure: the
        // device must not be left with a flush in flight.
        let data_flushed = lock_storage(&self.data).flush_end();
        meta_written?;
        data_flushed?;
        meta.write_batch(&[(Superblock::slot_offset(sb.seq), &sb.encode())])?;
        meta.flush()?;
        Ok(())
    }

    /// A sync: the journal blocks written to the data device, then one
    /// flush makes them and the data they point at durable together.
    pub(crate) fn write_journal(&self, blocks: &[(u64, Vec<u8>)]) -> Result<()> {
        let writes: Vec<(u64, &[u8])> = blocks.iter().map(|(o, b)| (*o, &b[..])).collect();
        let mut data = lock_storage(&self.data);
        if !writes.is_empty() {
            data.write_batch(&writes)?;
        }
        data.flush()?;
        Ok(())
    }
}

impl PoolState {
    /// A whole commit, holding the state throughout.
    pub(crate) fn commit(&mut self) -> Result<()> {
        let job = self.begin_commit(&[])?;
        let result = self.commit_io().write(&job);
        self.end_commit(job, result)
    }

    pub(crate) fn commit_io(&self) -> CommitIo {
        CommitIo {
            meta: self.meta_writer.clone(),
            data: self.data.clone(),
        }
    }

    /// Step 2, then the open transaction ends: its dirty blocks become the
    /// commit's writes (readable from memory until it is durable) and the
    /// next transaction opens, so changes can go on while `CommitIo::write`
    /// runs. `end_commit` must follow, with the write's result.
    ///
    /// `in_flight`: data extents allocated and not yet referenced
    /// (`Pool::begin_commit_carrying`). They are given back before the free
    /// space is persisted and claimed again by the next transaction: this
    /// commit records them free, the next one allocated.
    pub(crate) fn begin_commit(&mut self, in_flight: &[Extent]) -> Result<CommitJob> {
        self.store.check_writable()?;
        if self.journal.replay.is_some() {
            return Err(Error::Invalid(
                "the journal's records were not applied again (Pool::take_journal)".into(),
            ));
        }
        // The next journal region comes out of the data space while the
        // in-flight extents are still allocated: it must not take them.
        if !self.nothing_to_write() {
            if let Err(error) = self.renew_journal_region() {
                self.store.poison(&error);
                return Err(error);
            }
        }
        let job = in_flight
            .iter()
            .try_for_each(|&extent| self.data_alloc.free_unreferenced(extent))
            .and_then(|()| self.seal_transaction());
        // Claimed back even when nothing was written: nothing else can have
        // taken them, as the pool's lock is held throughout.
        let claimed = in_flight
            .iter()
            .try_for_each(|&extent| self.data_alloc.claim(extent));
        if let Err(error) = claimed {
            // The caller named an extent it had not allocated.
            self.store.poison(&error);
            return Err(error);
        }
        job
    }

    /// `begin_commit` once the in-flight extents are free.
    fn seal_transaction(&mut self) -> Result<CommitJob> {
        if self.nothing_to_write() {
            return Ok(CommitJob { work: None });
        }
        let free_space = match self.persist_free_space() {
            Ok(free_space) => free_space,
            Err(error) => {
                self.store.poison(&error);
                return Err(error);
            }
        };
        let sb = Superblock {
            seq: self.store.txn_seq,
            tree_height: self.tree.height,
            root: self.tree.root,
            freelist: free_space.freelist,
            meta_free_extents: free_space.meta_free_extents,
            data_free_extents: free_space.data_free_extents,
            meta_free_blocks: self.store.alloc.free_blocks() + self.store.alloc.busy_blocks(),
            data_free_blocks: self.data_alloc.free_blocks() + self.data_alloc.busy_blocks(),
            item_count: self.tree.items,
            freelog: free_space
                .freelog_chain
                .first()
                .copied()
                .unwrap_or_default(),
            freelog_blocks: free_space.freelog_chain.len() as u64,
            freelog_entries: free_space.freelog_entries,
            journal: self.journal.region,
            journal_nonce: self.journal.nonce,
            ..self.sb.clone()
        };
        let blocks = self.store.begin_commit();
        self.data_alloc.begin_commit();
        Ok(CommitJob {
            work: Some(CommitWork {
                blocks,
                sb,
                free_space,
            }),
        })
    }

    /// Step 6 once the write succeeded: the commit's busy space becomes
    /// free and its superblock the durable one. A failed write poisons.
    pub(crate) fn end_commit(&mut self, job: CommitJob, written: Result<()>) -> Result<()> {
        if let Err(error) = written {
            self.store.poison(&error);
            return Err(error);
        }
        let Some(CommitWork { sb, free_space, .. }) = job.work else {
            return Ok(());
        };
        self.store.end_commit();
        self.data_alloc.end_commit();
        self.sb = sb;
        self.freelist_chain = free_space.freelist_chain;
        self.freelog_chain = free_space.freelog_chain;
        self.freelog_head = free_space.freelog_head;
        Ok(())
    }

    /// Extents freed by durable commits that `absorb_freed` would merge.
    pub(crate) fn freed_extents(&self) -> usize {
        self.store.alloc.freed_extents() + self.data_alloc.freed_extents()
    }

    /// Makes the space durable commits freed allocatable (merged into the
    /// free-space indexes; see `Allocator::absorb_freed`).
    pub(crate) fn absorb_freed(&mut self) {
        self.store.alloc.absorb_freed();
        self.data_alloc.absorb_freed();
    }

    /// The commit covers every record logged so far: the next transaction
    /// gets an empty journal in a new region of the data device, and the
    /// old region is freed (busy until this commit is durable: a crash
    /// before then replays it). The region is as large as the handle's
    /// `journal_blocks_max` and `JOURNAL_BLOCKS_MAX` allow, a sixteenth of
    /// the device, a quarter of the free space, or one free extent; none
    /// for a handle that does not journal.
    fn renew_journal_region(&mut self) -> Result<()> {
        let old = self.journal.region;
        if old.len > 0 {
            self.data_alloc.free(old)?;
        }
        let want = self
            .journal_blocks_max
            .min(JOURNAL_BLOCKS_MAX)
            .min(self.sb.data_blocks / JOURNAL_DEVICE_FRACTION)
            .min(self.data_alloc.free_blocks() / 4);
        let region = if want == 0 {
            Extent::default()
        } else {
            self.data_alloc.alloc(want)?
        };
        self.journal.restart(region, super::state::random_u64());
        Ok(())
    }

    fn nothing_to_write(&self) -> bool {
        self.store.dirty_bytes() == 0
            && self.store.alloc.busy_blocks() == 0
            && self.data_alloc.busy_blocks() == 0
            && self.store.alloc.change_count() == 0
            && self.data_alloc.change_count() == 0
            && self.sb.seq > 0
            && !self.journal.has_pending()
            && self.journal.used == 0
    }

    fn log_is_due_for_compaction(&self) -> bool {
        let per_block = freelist::entries_per_block(self.store.block_bytes);
        let base = (self.sb.meta_free_extents + self.sb.data_free_extents) as usize;
        // An upper bound of the entries after this commit: the log so far,
        // this transaction's changes, and the log blocks it allocates and frees.
        let after = self.sb.freelog_entries as usize
            + self.store.alloc.change_count()
            + self.data_alloc.change_count()
            + 2;
        self.sb.seq == 0 || after > base.max(LOG_BLOCKS_MIN * per_block)
    }

    fn persist_free_space(&mut self) -> Result<FreeSpace> {
        if self.log_is_due_for_compaction() {
            self.write_new_chain()
        } else {
            self.append_to_log()
        }
    }

    /// Compaction: frees the old chain and log (busy) and writes every
    /// extent that will be free after this commit into a new chain.
    ///
    /// Recursion: the chain's own blocks come out of the free space it
    /// records. Taking a block from a free extent never adds an extent, so
    /// blocks are allocated until the chain holds the re-measured count.
    fn write_new_chain(&mut self) -> Result<FreeSpace> {
        let old = std::mem::take(&mut self.freelist_chain);
        let old_log = std::mem::take(&mut self.freelog_chain);
        for r in old.into_iter().chain(old_log) {
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
        Ok(FreeSpace {
            freelist: chain.first().copied().unwrap_or_default(),
            meta_free_extents: meta_free.len() as u64,
            data_free_extents: data_free.len() as u64,
            freelist_chain: chain,
            freelog_chain: Vec::new(),
            freelog_head: Vec::new(),
            freelog_entries: 0,
        })
    }

    /// Appends this transaction's allocations and frees to the log: the
    /// head block is rewritten (copy-on-write) with its old entries plus the
    /// new ones, spilling into more new blocks when they do not fit.
    fn append_to_log(&mut self) -> Result<FreeSpace> {
        let old_head = self.freelog_chain.first().copied();
        let older = self.freelog_chain.get(1).copied().unwrap_or_default();
        if let Some(head) = old_head {
            self.store.free(head)?;
        }
        let per_block = freelist::entries_per_block(self.store.block_bytes);
        let mut blocks = Vec::new();
        let entries = loop {
            let mut entries = self.freelog_head.clone();
            entries.extend(freelog::commit_entries(&self.store.alloc, &self.data_alloc));
            let need = entries.len().div_ceil(per_block).max(1);
            if blocks.len() >= need {
                break entries;
            }
            while blocks.len() < need {
                blocks.push(self.store.alloc_block(BlockKind::FreeLog)?);
            }
        };
        let head_entries = freelog::write_blocks(&mut self.store, &blocks, older, &entries)?;
        let freelog_entries =
            self.sb.freelog_entries - self.freelog_head.len() as u64 + entries.len() as u64;
        let mut chain = blocks;
        chain.extend(self.freelog_chain.iter().skip(1).copied());
        Ok(FreeSpace {
            freelist: self.sb.freelist,
            meta_free_extents: self.sb.meta_free_extents,
            data_free_extents: self.sb.data_free_extents,
            freelist_chain: self.freelist_chain.clone(),
            freelog_chain: chain,
            freelog_head: head_entries,
            freelog_entries,
        })
    }
}
