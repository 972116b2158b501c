//! The data device's label: data block 0 names the pool the device belongs
//! to. A pool is opened only with its own data device, so a metadata
//! device paired with another pool's data device (or with a disk holding
//! something else) is refused before a single data block is written; and
//! mkfs refuses a data device that holds a pool's data unless told to.
//!
//! Every commit that writes a superblock rewrites the label with that
//! commit's seq first, made durable by the commit's data flush, before the
//! superblock is written. So the label's seq is the superblock's, or one
//! more when a crash kept the superblock from landing; anything else means
//! one device is an older copy than the other (a data file restored from a
//! backup beside a newer metadata file), and open refuses the pair instead
//! of serving blocks whose checksums will not match.
//!
//! ```text
//!   0 crc32c u32 (over bytes 4..4096)   4 magic u32 "FSDL"   8 format_version u32
//!  12 zero u32   16 pool_id u64   24 data_blocks u64   32 commit_seq u64
//!  40..4096 zero
//! ```

use super::superblock::FORMAT_VERSION;
use crate::block::header::{is_sealed, le_u32, le_u64, seal};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::DATA_BLOCK_BYTES;

const LABEL_MAGIC: u32 = u32::from_le_bytes(*b"FSDL");
const LABEL_BYTES: usize = DATA_BLOCK_BYTES as usize;
const ZERO_FROM: usize = 40;
/// The data blocks the allocator manages start after the label.
pub const FIRST_DATA_BLOCK: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataLabel {
    pub(crate) pool_id: u64,
    pub(crate) data_blocks: u64,
    /// The seq of the last commit that wrote it (0 from mkfs, before the
    /// first superblock).
    pub(crate) commit_seq: u64,
}

impl DataLabel {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; LABEL_BYTES];
        out[4..8].copy_from_slice(&LABEL_MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.pool_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_blocks.to_le_bytes());
        out[32..40].copy_from_slice(&self.commit_seq.to_le_bytes());
        seal(&mut out);
        out
    }

    /// None: no label magic (a device that never held a pool's data).
    fn decode(bytes: &[u8]) -> Result<Option<DataLabel>> {
        if le_u32(bytes, 4) != LABEL_MAGIC {
            return Ok(None);
        }
        let bad = |what: String| Err(Error::BadFormat(format!("data device label: {what}")));
        if !is_sealed(bytes) {
            return bad("checksum mismatch".into());
        }
        let version = le_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return bad(format!(
                "format version {version}, this code reads {FORMAT_VERSION}"
            ));
        }
        if le_u32(bytes, 12) != 0 || bytes[ZERO_FROM..].iter().any(|byte| *byte != 0) {
            return bad("reserved bytes are not zero".into());
        }
        Ok(Some(DataLabel {
            pool_id: le_u64(bytes, 16),
            data_blocks: le_u64(bytes, 24),
            commit_seq: le_u64(bytes, 32),
        }))
    }
}

/// The label's bytes at its place on the data device (for a commit's batch).
pub(crate) fn label_write(label: DataLabel) -> (u64, Vec<u8>) {
    (0, label.encode())
}

/// Writes the label and makes it durable.
pub(crate) fn write_label(data: &mut dyn Storage, label: DataLabel) -> Result<()> {
    let (at, bytes) = label_write(label);
    data.write_batch(&[(at, &bytes)])?;
    data.flush()?;
    Ok(())
}

/// The device's label, None when it carries none.
pub(crate) fn read_label(data: &mut dyn Storage) -> Result<Option<DataLabel>> {
    if data.len_bytes() < LABEL_BYTES as u64 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; LABEL_BYTES];
    data.read_at(0, &mut bytes)?;
    DataLabel::decode(&bytes)
}

/// Refuses a data device that is not `pool_id`'s, saying whose it is, and
/// one from another time than the metadata device at commit `seq`.
pub(crate) fn verify_label(
    data: &mut dyn Storage,
    pool_id: u64,
    data_blocks: u64,
    seq: u64,
) -> Result<()> {
    match read_label(data)? {
        Some(label) if label.pool_id == pool_id && label.data_blocks == data_blocks => {
            let at = label.commit_seq;
            if at == seq || at == seq + 1 {
                Ok(())
            } else if at < seq {
                Err(Error::BadFormat(format!(
                    "the data device is older than the metadata device: its label is from \
                     commit {at}, the metadata is at commit {seq} (a stale copy of the data device?)"
                )))
            } else {
                Err(Error::BadFormat(format!(
                    "the metadata device is older than the data device: it is at commit {seq}, \
                     the data device's label is from commit {at} (a stale copy of the metadata device?)"
                )))
            }
        }
        Some(label) if label.pool_id == pool_id => Err(Error::BadFormat(format!(
            "the data device's label says {} data blocks, the pool {data_blocks}",
            label.data_blocks
        ))),
        Some(label) => Err(Error::BadFormat(format!(
            "the data device belongs to pool {:#018x}, not to this pool {pool_id:#018x}",
            label.pool_id
        ))),
        None => Err(Error::BadFormat(format!(
            "the data device carries no pool label: it is not the data device of pool {pool_id:#018x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimDisk;

    #[test]
    fn labels_round_trip_and_name_the_pool() {
        let mut disk = SimDisk::new(1 << 20);
        assert_eq!(read_label(&mut disk).unwrap(), None);
        let label = DataLabel {
            pool_id: 0xfeed,
            data_blocks: 256,
            commit_seq: 7,
        };
        write_label(&mut disk, label).unwrap();
        assert_eq!(read_label(&mut disk).unwrap(), Some(label));
        // The superblock at the label's commit, or one before (the commit
        // that wrote the label did not land its superblock).
        verify_label(&mut disk, 0xfeed, 256, 7).unwrap();
        verify_label(&mut disk, 0xfeed, 256, 6).unwrap();
        for (pool, blocks, seq, says) in [
            (0xbeef, 256, 7, "belongs to pool 0x000000000000feed"),
            (0xfeed, 255, 7, "says 256 data blocks"),
            (
                0xfeed,
                256,
                8,
                "the data device is older than the metadata device",
            ),
            (
                0xfeed,
                256,
                5,
                "the metadata device is older than the data device",
            ),
        ] {
            let e = verify_label(&mut disk, pool, blocks, seq)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
        // A flipped byte: the checksum catches it.
        let mut byte = disk.peek(20, 1);
        byte[0] ^= 1;
        disk.poke(20, &byte);
        assert!(read_label(&mut disk).is_err());
    }
}
