//! The superblock: two slots of SUPER_BYTES at byte offsets 0 and
//! SUPER_BYTES of the metadata device. A commit with seq `s` writes slot
//! `s % 2`; open takes the valid slot with the greater seq.

use crate::alloc::Extent;
use crate::block::header::{is_sealed, le_u32, le_u64, seal};
use crate::block::BlockRef;
use crate::error::{Error, Result};

/// Bytes of one superblock slot (the crc covers all of them).
pub(crate) const SUPER_BYTES: usize = 4096;
pub(crate) const SUPER_MAGIC: u32 = u32::from_le_bytes(*b"FSSB");
/// Format version: bumped on any incompatible layout change (see the log in
/// docs/format.md).
pub(crate) const FORMAT_VERSION: u32 = 5;
/// Both slots end here; metadata blocks start at the first block boundary
/// at or after it.
pub(crate) const SUPER_AREA_BYTES: u64 = 2 * SUPER_BYTES as u64;

/// Superblock, little-endian, zero after byte 184, crc32c over bytes 4..4096:
///
/// ```text
///   0 crc u32            4 magic u32 "FSSB"     8 format_version u32   12 meta_block_bytes u32
///  16 pool_id u64       24 seq u64             32 meta_blocks u64     40 data_blocks u64
///  48 data_block_bytes u32   52 tree_height u8  53 zero[3]
///  56 root ref {blkno u64, seq u64}            72 freelist ref {blkno u64, seq u64}
///  88 meta_free_extents u64   96 data_free_extents u64
/// 104 meta_free_blocks u64   112 data_free_blocks u64   120 item_count u64
/// 128 freelog ref {blkno u64, seq u64}   144 freelog_blocks u64   152 freelog_entries u64
/// 160 journal_start u64   168 journal_blocks u64   176 journal_nonce u64
/// ```
/// The extent counts describe the base chain (`freelist`); the block counts
/// are the free space after the log (`freelog`) is applied to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub(crate) meta_block_bytes: u32,
    pub(crate) pool_id: u64,
    pub(crate) seq: u64,
    pub(crate) meta_blocks: u64,
    pub(crate) data_blocks: u64,
    pub(crate) data_block_bytes: u32,
    /// Levels in the tree: 1 when the root is a leaf.
    pub(crate) tree_height: u8,
    pub(crate) root: BlockRef,
    /// First block of the free-extent list chain (`freelist`), or NONE.
    pub(crate) freelist: BlockRef,
    pub(crate) meta_free_extents: u64,
    pub(crate) data_free_extents: u64,
    pub(crate) meta_free_blocks: u64,
    pub(crate) data_free_blocks: u64,
    pub(crate) item_count: u64,
    /// Newest block of the free-space log (`freelog`), or NONE.
    pub(crate) freelog: BlockRef,
    pub(crate) freelog_blocks: u64,
    pub(crate) freelog_entries: u64,
    /// The next transaction's journal region (`journal`): data blocks
    /// `journal.start..journal.end()`, none when `len` is 0; and the nonce
    /// its blocks carry.
    pub(crate) journal: Extent,
    pub(crate) journal_nonce: u64,
}

const ZERO_FROM: usize = 184;

/// Whether a superblock slot carries the fscore magic (valid or not).
pub(crate) fn has_super_magic(slot: &[u8]) -> bool {
    le_u32(slot, 4) == SUPER_MAGIC
}

/// What the superblock area of a metadata device holds, for mkfs's refusal
/// to format over a pool: None when neither slot carries the fscore magic
/// (a fresh or foreign device), else a description of the pool found (a
/// damaged slot or another format version still counts as a pool).
pub(crate) fn existing_pool(meta: &mut dyn crate::storage::Storage) -> Result<Option<String>> {
    if meta.len_bytes() < SUPER_AREA_BYTES {
        return Ok(None);
    }
    let mut area = vec![0u8; SUPER_AREA_BYTES as usize];
    meta.read_at(0, &mut area)?;
    let mut newest: Option<Superblock> = None;
    let mut unreadable = None;
    for (bytes, slot) in area.chunks_exact(SUPER_BYTES).zip(0u64..) {
        if !has_super_magic(bytes) {
            continue;
        }
        match Superblock::decode(bytes, slot) {
            Ok(sb) if newest.as_ref().is_none_or(|n| sb.seq > n.seq) => newest = Some(sb),
            Ok(_) => {}
            Err(e) => unreadable = unreadable.or(Some(e)),
        }
    }
    Ok(match (newest, unreadable) {
        (Some(sb), _) => Some(format!("pool {:#018x} at commit {}", sb.pool_id, sb.seq)),
        (None, Some(e)) => Some(format!("a pool this code cannot read ({e})")),
        (None, None) => None,
    })
}

impl Superblock {
    pub(crate) fn slot_offset(seq: u64) -> u64 {
        (seq % 2) * SUPER_BYTES as u64
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; SUPER_BYTES];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(4, &SUPER_MAGIC.to_le_bytes());
        put(8, &FORMAT_VERSION.to_le_bytes());
        put(12, &self.meta_block_bytes.to_le_bytes());
        put(16, &self.pool_id.to_le_bytes());
        put(24, &self.seq.to_le_bytes());
        put(32, &self.meta_blocks.to_le_bytes());
        put(40, &self.data_blocks.to_le_bytes());
        put(48, &self.data_block_bytes.to_le_bytes());
        put(52, &[self.tree_height]);
        put(56, &self.root.encode());
        put(72, &self.freelist.encode());
        put(88, &self.meta_free_extents.to_le_bytes());
        put(96, &self.data_free_extents.to_le_bytes());
        put(104, &self.meta_free_blocks.to_le_bytes());
        put(112, &self.data_free_blocks.to_le_bytes());
        put(120, &self.item_count.to_le_bytes());
        put(128, &self.freelog.encode());
        put(144, &self.freelog_blocks.to_le_bytes());
        put(152, &self.freelog_entries.to_le_bytes());
        put(160, &self.journal.start.to_le_bytes());
        put(168, &self.journal.len.to_le_bytes());
        put(176, &self.journal_nonce.to_le_bytes());
        seal(&mut out);
        out
    }

    /// Decodes one slot; `slot` (0 or 1) names it in errors.
    pub(crate) fn decode(bytes: &[u8], slot: u64) -> Result<Superblock> {
        if bytes.len() < SUPER_BYTES {
            return Err(Error::corrupt(slot, "short superblock"));
        }
        let bytes = &bytes[..SUPER_BYTES];
        if !has_super_magic(bytes) {
            return Err(Error::BadFormat(format!(
                "superblock slot {slot}: no fscore magic"
            )));
        }
        if !is_sealed(bytes) {
            return Err(Error::corrupt(slot, "superblock checksum mismatch"));
        }
        let version = le_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(Error::BadFormat(format!(
                "format version {version}, this code reads {FORMAT_VERSION}"
            )));
        }
        if bytes[53..56]
            .iter()
            .chain(&bytes[ZERO_FROM..])
            .any(|byte| *byte != 0)
        {
            return Err(Error::corrupt(
                slot,
                "reserved superblock bytes are not zero",
            ));
        }
        let sb = Superblock {
            meta_block_bytes: le_u32(bytes, 12),
            pool_id: le_u64(bytes, 16),
            seq: le_u64(bytes, 24),
            meta_blocks: le_u64(bytes, 32),
            data_blocks: le_u64(bytes, 40),
            data_block_bytes: le_u32(bytes, 48),
            tree_height: bytes[52],
            root: BlockRef::decode(&bytes[56..72], slot)?,
            freelist: BlockRef::decode(&bytes[72..88], slot)?,
            meta_free_extents: le_u64(bytes, 88),
            data_free_extents: le_u64(bytes, 96),
            meta_free_blocks: le_u64(bytes, 104),
            data_free_blocks: le_u64(bytes, 112),
            item_count: le_u64(bytes, 120),
            freelog: BlockRef::decode(&bytes[128..144], slot)?,
            freelog_blocks: le_u64(bytes, 144),
            freelog_entries: le_u64(bytes, 152),
            journal: Extent::new(le_u64(bytes, 160), le_u64(bytes, 168)),
            journal_nonce: le_u64(bytes, 176),
        };
        sb.validate(slot)?;
        Ok(sb)
    }

    fn validate(&self, slot: u64) -> Result<()> {
        let block_ok = crate::pool::options::valid_meta_block_bytes(self.meta_block_bytes);
        if !block_ok || self.data_block_bytes != crate::DATA_BLOCK_BYTES {
            return Err(Error::corrupt(
                slot,
                "superblock has impossible block sizes",
            ));
        }
        if self.tree_height == 0 || self.tree_height as usize > crate::tree::HEIGHT_MAX {
            return Err(Error::corrupt(
                slot,
                format!("tree height {} out of range", self.tree_height),
            ));
        }
        if self.freelog_blocks > self.meta_blocks {
            return Err(Error::corrupt(
                slot,
                "free-space log longer than the device",
            ));
        }
        let journal = self.journal;
        if journal.len > 0
            && journal
                .start
                .checked_add(journal.len)
                .is_none_or(|end| end > self.data_blocks)
        {
            return Err(Error::corrupt(
                slot,
                "journal region outside the data device",
            ));
        }
        if self.meta_free_blocks > self.meta_blocks || self.data_free_blocks > self.data_blocks {
            return Err(Error::corrupt(slot, "free block counts exceed the devices"));
        }
        Ok(())
    }

    /// Metadata block numbers start here (after the superblock slots).
    pub(crate) fn first_meta_block(meta_block_bytes: u32) -> u64 {
        SUPER_AREA_BYTES.div_ceil(meta_block_bytes as u64)
    }
}
