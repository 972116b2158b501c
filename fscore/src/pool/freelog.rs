//! The free-space log: what each commit changed in the persisted free
//! space, so a commit writes O(its own changes) instead of every free
//! extent (docs/format.md, "Free-space log").
//!
//! The persisted free space of a commit is the base chain (`freelist`, a
//! full snapshot written at some earlier commit) with the log applied in
//! order. A log entry says that an extent of one device was allocated or
//! freed. Each commit appends its entries (allocations first, then frees)
//! by rewriting the head block copy-on-write with the old head's entries
//! plus its own; the log is compacted into a new base chain once it holds
//! more entries than the base (so replay at open stays linear in the base).
//!
//! Blocks are linked newest first; entries inside a block are oldest first.

use super::freelist::{self, entries_per_block, ENTRY_BYTES};
use crate::alloc::{Allocator, Extent};
use crate::block::header::{le_u32, le_u64};
use crate::block::{BlockKind, BlockRef, BlockStore};
use crate::error::{Error, Result};

/// FreeLog payload, little-endian:
///
/// ```text
///  0 next ref {blkno u64, seq u64} (the older block; NONE at the end)
/// 16 count u32   20 zero u32
/// 24 count x {start u64, len u32, flags u32}
///    flags: bit 0 = data device (else metadata), bit 1 = freed (else
///    allocated); other bits zero; len >= 1
/// ```
/// (The layout is the free-list chain's: `freelist::fill_chain_block`,
/// `freelist::walk_chain`; only the entries differ.)
const FLAG_DATA: u32 = 1;
const FLAG_FREED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogEntry {
    pub(crate) data: bool,
    pub(crate) freed: bool,
    pub(crate) extent: Extent,
}

/// The entries one commit logs for the changes of both allocators:
/// allocations first (a block allocated and then freed busy in the same
/// transaction must replay as allocated, then freed), each split to fit
/// the 32-bit length field.
pub(crate) fn commit_entries(meta: &Allocator, data: &Allocator) -> Vec<LogEntry> {
    let (meta_alloc, meta_freed) = meta.changes();
    let (data_alloc, data_freed) = data.changes();
    let groups = [
        (false, false, meta_alloc),
        (true, false, data_alloc),
        (false, true, meta_freed),
        (true, true, data_freed),
    ];
    let mut out = Vec::new();
    for (is_data, freed, extents) in groups {
        for extent in extents {
            let mut rest = extent;
            while rest.len > 0 {
                let len = rest.len.min(u32::MAX as u64);
                out.push(LogEntry {
                    data: is_data,
                    freed,
                    extent: Extent::new(rest.start, len),
                });
                rest = Extent::new(rest.start + len, rest.len - len);
            }
        }
    }
    out
}

/// Writes `entries` (oldest first) into the dirty blocks `blocks` (newest
/// first); the oldest block links to `older`. Older blocks are filled
/// first, so any empty blocks are at the head. Returns the entries that
/// landed in the head block.
pub(crate) fn write_blocks(
    store: &mut BlockStore,
    blocks: &[BlockRef],
    older: BlockRef,
    entries: &[LogEntry],
) -> Result<Vec<LogEntry>> {
    let per_block = entries_per_block(store.block_bytes);
    assert!(
        blocks.len() * per_block >= entries.len(),
        "free-space log blocks too few"
    );
    let mut rest = entries;
    let mut head_entries = Vec::new();
    for (index, r) in blocks.iter().enumerate().rev() {
        let take = rest.len().min(per_block);
        let (these, tail) = rest.split_at(take);
        rest = tail;
        let next = if index + 1 < blocks.len() {
            blocks[index + 1]
        } else {
            older
        };
        let encoded = these.iter().map(|entry| {
            let flags = (entry.data as u32 * FLAG_DATA) | (entry.freed as u32 * FLAG_FREED);
            let mut bytes = [0u8; ENTRY_BYTES];
            bytes[..8].copy_from_slice(&entry.extent.start.to_le_bytes());
            bytes[8..12].copy_from_slice(&(entry.extent.len as u32).to_le_bytes());
            bytes[12..].copy_from_slice(&flags.to_le_bytes());
            bytes
        });
        freelist::fill_chain_block(store, *r, next, encoded)?;
        if index == 0 {
            head_entries = these.to_vec();
        }
    }
    Ok(head_entries)
}

/// The log read from `head`: its blocks (newest first) and each block's
/// entries. At most `blocks_max` blocks (a loop in a corrupt log ends there).
pub(crate) fn read_log(
    store: &mut BlockStore,
    head: BlockRef,
    blocks_max: u64,
) -> Result<Vec<(BlockRef, Vec<LogEntry>)>> {
    let mut out = Vec::new();
    freelist::walk_chain(store, head, BlockKind::FreeLog, blocks_max, |r, entries| {
        let mut decoded = Vec::new();
        for (slot, entry) in entries.enumerate() {
            let len = le_u32(entry, 8) as u64;
            let flags = le_u32(entry, 12);
            if len == 0 || flags & !(FLAG_DATA | FLAG_FREED) != 0 {
                return Err(Error::corrupt(
                    r.blkno,
                    format!("free-space log entry {slot} is malformed"),
                ));
            }
            decoded.push(LogEntry {
                data: flags & FLAG_DATA != 0,
                freed: flags & FLAG_FREED != 0,
                extent: Extent::new(le_u64(entry, 0), len),
            });
        }
        out.push((r, decoded));
        Ok(())
    })?;
    Ok(out)
}

/// Applies the log (blocks newest first, as `read_log` returns them) to
/// allocators holding the base chain's free space, oldest entry first.
pub(crate) fn replay(
    log: &[(BlockRef, Vec<LogEntry>)],
    meta: &mut Allocator,
    data: &mut Allocator,
) -> Result<()> {
    for (r, entries) in log.iter().rev() {
        for entry in entries {
            let allocator = if entry.data { &mut *data } else { &mut *meta };
            let applied = if entry.freed {
                allocator.mark_free(entry.extent)
            } else {
                allocator.mark_allocated(entry.extent)
            };
            applied.map_err(|error| Error::corrupt(r.blkno, error))?;
        }
    }
    Ok(())
}
