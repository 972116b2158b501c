//! The header every metadata block (other than the superblock) starts with,
//! and the reference {block number, seq} that leads to a block.

use crate::error::{Error, Result};

/// Block header, 48 bytes, little-endian:
///
/// ```text
///  0      4      8          16         24         32   33          48
///  | crc  | magic| pool_id  | seq      | blkno    |kind| zero (15)  | payload ...
/// ```
/// crc32c covers bytes 4..block_bytes (everything after the crc).
pub(crate) const HEADER_BYTES: usize = 48;
pub(crate) const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"FSMB");

const CRC_AT: usize = 0;
const MAGIC_AT: usize = 4;
const POOL_ID_AT: usize = 8;
const SEQ_AT: usize = 16;
const BLKNO_AT: usize = 24;
const KIND_AT: usize = 32;
const ZERO_AT: usize = 33;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// A btree node (`btree::node`).
    Node = 1,
    /// A block of the persisted free-extent lists (`pool::freelist`).
    FreeList = 2,
    /// A block of the free-space log (`pool::freelog`).
    FreeLog = 3,
    /// A block of the journal (`pool::journal`).
    Journal = 4,
}

/// What a parent (or the superblock) records about a block: where it is and
/// the seq of the transaction that wrote it. 16 bytes on disk: blkno, seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct BlockRef {
    pub(crate) blkno: u64,
    pub(crate) seq: u64,
}

pub(crate) const REF_BYTES: usize = 16;

impl BlockRef {
    pub(crate) const NONE: BlockRef = BlockRef { blkno: 0, seq: 0 };

    pub(crate) fn encode(&self) -> [u8; REF_BYTES] {
        let mut out = [0u8; REF_BYTES];
        out[..8].copy_from_slice(&self.blkno.to_le_bytes());
        out[8..].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Decodes a reference found in block `holder`.
    pub(crate) fn decode(bytes: &[u8], holder: u64) -> Result<BlockRef> {
        if bytes.len() != REF_BYTES {
            return Err(Error::corrupt(
                holder,
                format!("block reference of {} bytes", bytes.len()),
            ));
        }
        Ok(BlockRef {
            blkno: le_u64(bytes, 0),
            seq: le_u64(bytes, 8),
        })
    }
}

pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Writes the header fields (all but the crc) of a new block.
pub(crate) fn init_header(block: &mut [u8], pool_id: u64, seq: u64, blkno: u64, kind: BlockKind) {
    block[..HEADER_BYTES].fill(0);
    block[MAGIC_AT..MAGIC_AT + 4].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
    block[POOL_ID_AT..POOL_ID_AT + 8].copy_from_slice(&pool_id.to_le_bytes());
    block[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    block[BLKNO_AT..BLKNO_AT + 8].copy_from_slice(&blkno.to_le_bytes());
    block[KIND_AT] = kind as u8;
}

/// Stamps the crc just before the block is written. Also the superblock's
/// and the data label's: the crc32c of bytes 4.. in bytes 0..4.
pub(crate) fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[MAGIC_AT..]);
    block[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the crc `seal` stamped still matches the bytes.
pub(crate) fn is_sealed(block: &[u8]) -> bool {
    crc32c::crc32c(&block[MAGIC_AT..]) == le_u32(block, CRC_AT)
}

pub(crate) fn header_seq(block: &[u8]) -> u64 {
    le_u64(block, SEQ_AT)
}

pub(crate) fn header_kind(block: &[u8]) -> u8 {
    block[KIND_AT]
}

/// Checks a block read from disk against the reference that led to it.
pub(crate) fn check(block: &[u8], pool_id: u64, expected: BlockRef, kind: BlockKind) -> Result<()> {
    let at = expected.blkno;
    if !is_sealed(block) {
        return Err(Error::corrupt(at, "checksum mismatch"));
    }
    if le_u32(block, MAGIC_AT) != BLOCK_MAGIC {
        return Err(Error::corrupt(at, "bad magic"));
    }
    if le_u64(block, POOL_ID_AT) != pool_id {
        return Err(Error::corrupt(
            at,
            format!("belongs to pool {:#x}", le_u64(block, POOL_ID_AT)),
        ));
    }
    if le_u64(block, BLKNO_AT) != at {
        return Err(Error::corrupt(
            at,
            format!(
                "header names block {} (misdirected write)",
                le_u64(block, BLKNO_AT)
            ),
        ));
    }
    if header_seq(block) != expected.seq {
        return Err(Error::corrupt(
            at,
            format!(
                "seq {} but reference expects {} (stale block)",
                header_seq(block),
                expected.seq
            ),
        ));
    }
    if header_kind(block) != kind as u8 {
        return Err(Error::corrupt(
            at,
            format!("kind {} but expected {:?}", header_kind(block), kind),
        ));
    }
    if block[ZERO_AT..HEADER_BYTES].iter().any(|byte| *byte != 0) {
        return Err(Error::corrupt(at, "reserved header bytes are not zero"));
    }
    Ok(())
}
