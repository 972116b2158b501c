//! Persisted free space: at each commit the free extents of both allocators
//! as they will be once the commit is durable (free plus busy, merged) are
//! written into a chain of freshly allocated FreeList blocks; the superblock
//! points at the first one. The previous chain is freed (busy) in the same
//! commit.
//!
//! Recursion: the chain's own blocks come out of the free space it records.
//! Taking a block from the front of a free extent never adds an extent, so
//! the commit allocates blocks until the chain can hold the (re-measured)
//! extent count; surplus blocks, if merging shrank the count, stay in the
//! chain with zero entries, so nothing leaks. See docs/format.md.

use crate::alloc::Extent;
use crate::block::header::{le_u32, le_u64};
use crate::block::{BlockKind, BlockRef, BlockStore, HEADER_BYTES};
use crate::error::{Error, Result};

/// FreeList payload, little-endian:
///
/// ```text
///  0 next ref {blkno u64, seq u64} (NONE at the end)  16 count u32  20 zero u32
/// 24 count x {start u64, len u64}
/// ```
const LIST_HEADER_BYTES: usize = 24;
pub(crate) const ENTRY_BYTES: usize = 16;

pub(crate) fn entries_per_block(block_bytes: u32) -> usize {
    (block_bytes as usize - HEADER_BYTES - LIST_HEADER_BYTES) / ENTRY_BYTES
}

pub(crate) fn blocks_for(extents: usize, block_bytes: u32) -> usize {
    extents.div_ceil(entries_per_block(block_bytes))
}

/// Fills the dirty blocks `chain` with `extents`, in order.
pub(crate) fn write_chain(
    store: &mut BlockStore,
    chain: &[BlockRef],
    extents: &[Extent],
) -> Result<()> {
    let per_block = entries_per_block(store.block_bytes);
    assert!(
        chain.len() * per_block >= extents.len(),
        "free-list chain too short"
    );
    let mut rest = extents;
    for (index, r) in chain.iter().enumerate() {
        let take = rest.len().min(per_block);
        let (these, tail) = rest.split_at(take);
        rest = tail;
        let next = chain.get(index + 1).copied().unwrap_or(BlockRef::NONE);
        let encoded = these.iter().map(|extent| {
            let mut entry = [0u8; ENTRY_BYTES];
            entry[..8].copy_from_slice(&extent.start.to_le_bytes());
            entry[8..].copy_from_slice(&extent.len.to_le_bytes());
            entry
        });
        fill_chain_block(store, *r, next, encoded)?;
    }
    Ok(())
}

/// Fills the dirty block `r` as a chain block (FreeList and FreeLog blocks
/// share the layout): the next ref, the entry count, then the entries.
pub(crate) fn fill_chain_block(
    store: &mut BlockStore,
    r: BlockRef,
    next: BlockRef,
    entries: impl ExactSizeIterator<Item = [u8; ENTRY_BYTES]>,
) -> Result<()> {
    let mut block = store.take(r)?;
    let payload = &mut block[HEADER_BYTES..];
    payload.fill(0);
    payload[..16].copy_from_slice(&next.encode());
    payload[16..20].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (slot, entry) in entries.enumerate() {
        let at = LIST_HEADER_BYTES + slot * ENTRY_BYTES;
        payload[at..at + ENTRY_BYTES].copy_from_slice(&entry);
    }
    store.put(r, block);
    Ok(())
}

/// Reads the chain from `first`: its blocks and the extents, in order.
/// At most `blocks_max` blocks (a loop in a corrupt chain ends there).
pub(crate) fn read_chain(
    store: &mut BlockStore,
    first: BlockRef,
    blocks_max: u64,
) -> Result<(Vec<BlockRef>, Vec<Extent>)> {
    let mut chain = Vec::new();
    let mut extents = Vec::new();
    walk_chain(
        store,
        first,
        BlockKind::FreeList,
        blocks_max,
        |r, entries| {
            chain.push(r);
            extents.extend(entries.map(|entry| Extent::new(le_u64(entry, 0), le_u64(entry, 8))));
            Ok(())
        },
    )?;
    Ok((chain, extents))
}

/// Walks a chain of blocks of `kind` laid out as FreeList blocks are (next
/// ref, count, zero, `ENTRY_BYTES`-byte entries; FreeLog blocks share it),
/// calling `visit` with each block's reference and its entries. At most
/// `blocks_max` blocks (a loop in a corrupt chain ends there).
pub(crate) fn walk_chain(
    store: &mut BlockStore,
    first: BlockRef,
    kind: BlockKind,
    blocks_max: u64,
    mut visit: impl FnMut(BlockRef, &mut dyn Iterator<Item = &[u8]>) -> Result<()>,
) -> Result<()> {
    let per_block = entries_per_block(store.block_bytes);
    let mut next = first;
    let mut blocks = 0u64;
    while next != BlockRef::NONE {
        if blocks >= blocks_max {
            return Err(Error::corrupt(
                next.blkno,
                format!("{kind:?} chain longer than the device"),
            ));
        }
        blocks += 1;
        let block = store.read(next, kind)?;
        let payload = &block[HEADER_BYTES..];
        let count = le_u32(payload, 16) as usize;
        if count > per_block || le_u32(payload, 20) != 0 {
            return Err(Error::corrupt(
                next.blkno,
                format!("{kind:?} block claims {count} entries"),
            ));
        }
        let mut entries = payload[LIST_HEADER_BYTES..LIST_HEADER_BYTES + count * ENTRY_BYTES]
            .chunks_exact(ENTRY_BYTES);
        visit(next, &mut entries)?;
        next = BlockRef::decode(&payload[..16], next.blkno)?;
    }
    Ok(())
}
