//! The journal: records a caller logs between commits, made durable by a
//! *sync* (one write and one flush of the data device) instead of a commit
//! (many block writes and two flushes in a row). A commit makes the
//! journal's records redundant and starts an empty one.
//!
//! Every commit gives the next transaction a *region*: contiguous blocks of
//! the **data device** named in its superblock, so that one flush of that
//! device makes a sync's records and the data they point at durable
//! together. Each sync writes the records logged
//! since the previous one into the next unused blocks of the region, never
//! into a block written before (a torn rewrite could lose records that an
//! earlier sync made durable). A region too full for a sync's records turns
//! that sync into a commit (`Pool::begin_sync`).
//!
//! fscore does not interpret records. A caller that logs must describe in
//! them every change it makes to the pool between commits, take the records
//! found at open (`Pool::take_journal`) and apply them again before
//! its first commit (a commit refuses until it has).
//!
//! Block layout (docs/format.md, "Journal"), 4096 bytes: the common header
//! with kind 4, blkno = the data block number, and seq = the seq of the
//! transaction the records belong to (the region's superblock seq + 1), then
//!
//! ```text
//!  48 sync_first u32   52 sync_blocks u32   56 records u32   60 zero u32
//!  64 nonce u64        72 records: { len u8, bytes[len] } ...   (then zeros)
//! ```
//! `sync_first` is the region index of the first block of the sync that
//! wrote the block and `sync_blocks` how many blocks it wrote: a sync is
//! replayed only when all of its blocks are intact. `nonce` is the random
//! number the superblock gives the region: the region is reused data
//! space, and a volume's user must not be able to plant records in it.
//!
//! The data a sync's records point at and the sync's own blocks reach the
//! device in any order before the flush: after a crash, the last sync may
//! be intact while some of its data is not. Its caller checks that data
//! (`JournalReplay::last_sync_from`) and drops the last sync if it is not
//! all there (that sync was never acknowledged: its flush did not finish).

use crate::alloc::Extent;
use crate::block::header::{self, le_u32, le_u64};
use crate::block::{BlockKind, BlockRef, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Largest record `Pool::log` accepts.
pub const JOURNAL_RECORD_BYTES_MAX: usize = 255;
/// Blocks a commit asks for as the next transaction's region (16 MiB of
/// data blocks: at ~120 volume records a block, thousands of syncs between
/// commits), at most `1 / JOURNAL_DEVICE_FRACTION` of the data device.
pub const JOURNAL_BLOCKS_MAX: u64 = 4096;
pub(crate) const JOURNAL_DEVICE_FRACTION: u64 = 16;
/// Region blocks read per I/O at open.
const READ_BLOCKS: u64 = 64;

const SYNC_FIRST_AT: usize = HEADER_BYTES;
const SYNC_BLOCKS_AT: usize = HEADER_BYTES + 4;
const RECORDS_AT: usize = HEADER_BYTES + 8;
const ZERO_AT: usize = HEADER_BYTES + 12;
const NONCE_AT: usize = HEADER_BYTES + 16;
const BODY_AT: usize = HEADER_BYTES + 24;
/// Journal blocks are data blocks.
pub(crate) const JOURNAL_BLOCK_BYTES: u32 = crate::DATA_BLOCK_BYTES;

/// The journal of the open transaction.
#[derive(Default)]
pub(crate) struct Journal {
    /// Where this transaction's syncs write (the durable superblock's
    /// region, data blocks); empty when it has none.
    pub(crate) region: Extent,
    /// The region's nonce (`JournalReplay`'s blocks must carry it).
    pub(crate) nonce: u64,
    /// Region blocks written by this transaction's syncs (or found intact
    /// at open).
    pub(crate) used: u64,
    /// Found at open: no sync may write into the region until a commit
    /// gives a new one (see `state::open_journal`).
    pub(crate) sealed: bool,
    /// Syncs made in this transaction.
    pub(crate) syncs: u64,
    /// Records logged since the last sync, each as `len u8, bytes`.
    pending: Vec<u8>,
    /// Records found at open that the caller has not taken yet.
    pub(crate) replay: Option<JournalReplay>,
}

/// The records of the intact syncs found at open, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JournalReplay {
    pub records: Vec<Vec<u8>>,
    /// Index in `records` of the last sync's first record. That sync may
    /// have been cut short by the crash after its journal blocks landed and
    /// before all of its data did: the caller applies it only if the data
    /// it points at is intact.
    pub last_sync_from: usize,
}

impl Journal {
    pub(crate) fn new(region: Extent, nonce: u64) -> Journal {
        Journal {
            region,
            nonce,
            ..Journal::default()
        }
    }

    pub(crate) fn log(&mut self, record: &[u8]) -> Result<()> {
        if record.is_empty() || record.len() > JOURNAL_RECORD_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "journal record of {} bytes (1..={JOURNAL_RECORD_BYTES_MAX})",
                record.len()
            )));
        }
        self.pending.push(record.len() as u8);
        self.pending.extend_from_slice(record);
        Ok(())
    }

    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pending.len() as u64
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Region blocks syncs may still write.
    fn room(&self) -> u64 {
        if self.sealed {
            0
        } else {
            self.region.len - self.used
        }
    }

    /// Region bytes left for records.
    pub(crate) fn free_bytes(&self) -> u64 {
        self.room() * (JOURNAL_BLOCK_BYTES as usize - BODY_AT) as u64
    }

    /// A commit covers everything logged: the next transaction starts an
    /// empty journal in `region`.
    pub(crate) fn restart(&mut self, region: Extent, nonce: u64) {
        *self = Journal {
            replay: self.replay.take(),
            ..Journal::new(region, nonce)
        };
    }

    /// The blocks (byte offset, bytes) a sync of the pending records
    /// writes, taking them from the pending list; None when the region has
    /// no room for them (they stay pending: a commit covers them).
    pub(crate) fn encode_sync(&mut self, pool_id: u64, seq: u64) -> Option<Vec<(u64, Vec<u8>)>> {
        let block_bytes = JOURNAL_BLOCK_BYTES;
        let body_bytes = block_bytes as usize - BODY_AT;
        // Records never straddle blocks: pack greedily.
        let mut blocks: Vec<(usize, usize, u32)> = Vec::new(); // (from, to, records)
        let mut at = 0;
        while at < self.pending.len() {
            let from = at;
            let mut records = 0;
            while at < self.pending.len() {
                let len = 1 + self.pending[at] as usize;
                if at + len - from > body_bytes {
                    break;
                }
                at += len;
                records += 1;
            }
            blocks.push((from, at, records));
        }
        if blocks.is_empty() || blocks.len() as u64 > self.room() {
            return None;
        }
        let first = self.used;
        let count = blocks.len() as u32;
        let writes = blocks
            .iter()
            .enumerate()
            .map(|(i, &(from, to, records))| {
                let blkno = self.region.start + first + i as u64;
                let mut block = vec![0u8; block_bytes as usize];
                header::init_header(&mut block, pool_id, seq, blkno, BlockKind::Journal);
                put_u32(&mut block, SYNC_FIRST_AT, first as u32);
                put_u32(&mut block, SYNC_BLOCKS_AT, count);
                put_u32(&mut block, RECORDS_AT, records);
                block[NONCE_AT..NONCE_AT + 8].copy_from_slice(&self.nonce.to_le_bytes());
                block[BODY_AT..BODY_AT + (to - from)].copy_from_slice(&self.pending[from..to]);
                header::seal(&mut block);
                (blkno * block_bytes as u64, block)
            })
            .collect();
        self.used += blocks.len() as u64;
        self.syncs += 1;
        self.pending.clear();
        Some(writes)
    }
}

fn put_u32(block: &mut [u8], at: usize, value: u32) {
    block[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// What open finds in a region: the records of every intact sync, and
/// the blocks they fill.
pub(crate) struct Found {
    pub(crate) replay: JournalReplay,
    pub(crate) used: u64,
}

/// Reads the region of the transaction after `sb_seq`.
///
/// Syncs are taken in order while every block of one is intact (header
/// checks, seq `sb_seq + 1`, its place in the sync). The first one that is
/// not ends the journal: it was being written when the pool stopped, and
/// its flush never completed. A later intact block of a later sync means
/// the journal was damaged after syncs that completed: `Corrupt`, never a
/// silent loss of what they made durable.
pub(crate) fn read_region(
    data: &mut dyn Storage,
    region: Extent,
    nonce: u64,
    pool_id: u64,
    sb_seq: u64,
) -> Result<Found> {
    let seq = sb_seq + 1;
    let block_bytes = JOURNAL_BLOCK_BYTES;
    let bb = block_bytes as usize;
    let mut found = Found {
        replay: JournalReplay::default(),
        used: 0,
    };
    // Per block: the (sync_first, sync_blocks) of an intact block.
    let mut intact: Vec<Option<(u64, u64)>> = Vec::with_capacity(region.len as usize);
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; READ_BLOCKS as usize * bb];
    let mut index = 0;
    while index < region.len {
        let n = READ_BLOCKS.min(region.len - index);
        let bytes = &mut buf[..n as usize * bb];
        data.read_at((region.start + index) * block_bytes as u64, bytes)?;
        for (i, block) in bytes.chunks(bb).enumerate() {
            let at = index + i as u64;
            let r = BlockRef {
                blkno: region.start + at,
                seq,
            };
            let ok = header::check(block, pool_id, r, BlockKind::Journal).is_ok()
                && le_u32(block, ZERO_AT) == 0
                && le_u64(block, NONCE_AT) == nonce;
            intact.push(ok.then(|| {
                (
                    le_u32(block, SYNC_FIRST_AT) as u64,
                    le_u32(block, SYNC_BLOCKS_AT) as u64,
                )
            }));
            // Bodies are kept only for the prefix that may replay.
            if ok && at == bodies.len() as u64 {
                bodies.push(block.to_vec());
            }
        }
        index += n;
    }
    // Whole syncs from the start.
    let mut at = 0u64;
    while let Some(Some((first, blocks))) = intact.get(at as usize).copied() {
        let whole = first == at
            && blocks > 0
            && at + blocks <= region.len
            && (at..at + blocks).all(|b| {
                intact[b as usize] == Some((first, blocks)) && (b as usize) < bodies.len()
            });
        if !whole {
            break;
        }
        found.replay.last_sync_from = found.replay.records.len();
        for b in at..at + blocks {
            parse_records(
                &bodies[b as usize],
                region.start + b,
                &mut found.replay.records,
            )?;
        }
        at += blocks;
    }
    found.used = at;
    // Past the end: nothing of a later sync may be intact.
    if let Some(b) =
        (at..region.len).find(|&b| matches!(intact[b as usize], Some((first, _)) if first > at))
    {
        return Err(Error::corrupt(
            region.start + at,
            format!(
                "journal block {} is damaged but a later sync (block {}) is intact",
                region.start + at,
                region.start + b
            ),
        ));
    }
    Ok(found)
}

fn parse_records(block: &[u8], blkno: u64, out: &mut Vec<Vec<u8>>) -> Result<()> {
    let records = le_u32(block, RECORDS_AT);
    let mut at = BODY_AT;
    for _ in 0..records {
        let len = *block
            .get(at)
            .ok_or_else(|| Error::corrupt(blkno, "journal record past the block end"))?
            as usize;
        if len == 0 || at + 1 + len > block.len() {
            return Err(Error::corrupt(blkno, "malformed journal record"));
        }
        out.push(block[at + 1..at + 1 + len].to_vec());
        at += 1 + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimDisk;

    const BB: u32 = JOURNAL_BLOCK_BYTES;
    const NONCE: u64 = 0x0dd_ba11;
    const POOL: u64 = 0x5eed;

    fn write(disk: &mut SimDisk, writes: &[(u64, Vec<u8>)]) {
        let batch: Vec<(u64, &[u8])> = writes.iter().map(|(o, b)| (*o, &b[..])).collect();
        disk.write_batch(&batch).unwrap();
    }

    fn logged(journal: &mut Journal, from: u32, count: u32, len: usize) -> Vec<Vec<u8>> {
        (from..from + count)
            .map(|i| {
                let record: Vec<u8> = (0..len).map(|b| (i as usize * 7 + b) as u8 | 1).collect();
                journal.log(&record).unwrap();
                record
            })
            .collect()
    }

    #[test]
    fn syncs_read_back_in_order_and_a_torn_last_sync_is_dropped() {
        let region = Extent::new(10, 16);
        let mut disk = SimDisk::new(64 * BB as u64);
        let mut journal = Journal::new(region, NONCE);
        // 1 block, then 3 blocks (200 records of 60 bytes), then 1 block.
        let mut expect = logged(&mut journal, 0, 5, 30);
        write(&mut disk, &journal.encode_sync(POOL, 8).unwrap());
        expect.extend(logged(&mut journal, 5, 190, 60));
        let second = journal.encode_sync(POOL, 8).unwrap();
        assert_eq!(second.len(), 3);
        write(&mut disk, &second);
        let last = logged(&mut journal, 195, 2, 255);
        let third = journal.encode_sync(POOL, 8).unwrap();
        assert_eq!(journal.used, 5);
        write(&mut disk, &third);
        let mut all = expect.clone();
        all.extend(last);
        let found = read_region(&mut disk, region, NONCE, POOL, 7).unwrap();
        assert_eq!((found.replay.records.clone(), found.used), (all, 5));
        assert_eq!(found.replay.last_sync_from, expect.len());
        // Blocks of another region's nonce are not this journal's.
        assert_eq!(
            read_region(&mut disk, region, NONCE + 1, POOL, 7)
                .unwrap()
                .used,
            0
        );
        // Another transaction's seq: nothing is this transaction's.
        assert_eq!(
            read_region(&mut disk, region, NONCE, POOL, 8).unwrap().used,
            0
        );
        // The middle sync torn (its last block lost): it and what follows
        // could be a sync being written... but the third sync is intact,
        // so the damage is after completed syncs: corrupt.
        disk.poke(12 * BB as u64 + 100, &[0xff]);
        assert!(matches!(
            read_region(&mut disk, region, NONCE, POOL, 7),
            Err(Error::Corrupt { .. })
        ));
        // Without the third sync, the torn second one just ends the journal.
        disk.poke(14 * BB as u64 + 100, &[0xff]);
        let found = read_region(&mut disk, region, NONCE, POOL, 7).unwrap();
        assert_eq!(
            (found.replay.records, found.used),
            (expect[..5].to_vec(), 1)
        );
        assert_eq!(found.replay.last_sync_from, 0);
    }

    #[test]
    fn a_full_region_refuses_the_sync_and_keeps_the_records() {
        let mut journal = Journal::new(Extent::new(10, 1), NONCE);
        logged(&mut journal, 0, 100, 60);
        assert!(journal.encode_sync(POOL, 3).is_none());
        assert!(journal.has_pending());
        assert!(journal.log(&[]).is_err());
        assert!(journal.log(&[0; 256]).is_err());
        let mut none = Journal::default();
        logged(&mut none, 0, 1, 1);
        assert!(none.encode_sync(POOL, 3).is_none());
        let mut sealed = Journal {
            sealed: true,
            ..Journal::new(Extent::new(10, 16), NONCE)
        };
        logged(&mut sealed, 0, 1, 1);
        assert_eq!(sealed.free_bytes(), 0);
        assert!(sealed.encode_sync(POOL, 3).is_none());
    }
}
