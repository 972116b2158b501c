//! Settings for mkfs and open, and what `Pool::info` reports.

/// Data blocks are 4 KiB: the volume's block size and its crc granularity.
pub const DATA_BLOCK_BYTES: u32 = 4096;
/// Default metadata block size (see bench-results/fscore.md for the
/// measurement behind it).
pub const META_BLOCK_BYTES_DEFAULT: u32 = 4096;
/// Smallest metadata block: tiny blocks make tall trees in tests (values
/// are then limited to what a tiny node can split; see
/// `Pool::value_len_max`). O_DIRECT devices need at least their sector size.
pub const META_BLOCK_BYTES_MIN: u32 = 1024;
/// Largest metadata block: node offsets are 16 bits.
pub const META_BLOCK_BYTES_MAX: u32 = 65536;
/// Default block cache: enough for the upper levels of a tree of tens of
/// millions of items plus a working set of leaves.
pub const CACHE_BYTES_DEFAULT: u64 = 256 << 20;

const _: () =
    assert!(META_BLOCK_BYTES_MIN.is_power_of_two() && META_BLOCK_BYTES_MAX.is_power_of_two());
const _: () = assert!(
    META_BLOCK_BYTES_DEFAULT >= META_BLOCK_BYTES_MIN
        && META_BLOCK_BYTES_DEFAULT <= META_BLOCK_BYTES_MAX
);

pub(crate) fn valid_meta_block_bytes(bytes: u32) -> bool {
    bytes.is_power_of_two() && (META_BLOCK_BYTES_MIN..=META_BLOCK_BYTES_MAX).contains(&bytes)
}

#[derive(Clone, Debug)]
pub struct MkfsOptions {
    /// Bytes of the metadata device to use.
    pub meta_bytes: u64,
    /// Bytes of the data device to use.
    pub data_bytes: u64,
    /// Metadata (btree) block size: a power of two in 1 KiB..=64 KiB.
    pub meta_block_bytes: u32,
    /// Write zeros over every block of devices that are regular files
    /// before formatting (`FileStorage::write_zeros`), so no later write
    /// lands in a hole or an unwritten extent of the host file system.
    pub preallocate: bool,
    /// Format even when the metadata device already holds a pool (its
    /// superblock carries the fscore magic). Off by default: mkfs over a
    /// pool would lose every volume in it.
    pub overwrite: bool,
}

impl MkfsOptions {
    pub fn new(meta_bytes: u64, data_bytes: u64) -> MkfsOptions {
        MkfsOptions {
            meta_bytes,
            data_bytes,
            meta_block_bytes: META_BLOCK_BYTES_DEFAULT,
            preallocate: false,
            overwrite: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Bound of the clean block cache.
    pub cache_bytes: u64,
    /// Size of the journal region this handle's commits give the next
    /// transaction (data blocks; further bounded by the device and its free
    /// space, see docs/format.md "Journal"). 0, the default, for callers
    /// that never log: no data space is set aside, and a sync is a commit.
    pub journal_blocks_max: u64,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            cache_bytes: CACHE_BYTES_DEFAULT,
            journal_blocks_max: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    pub pool_id: u64,
    /// Seq of the last durable commit.
    pub seq: u64,
    pub meta_block_bytes: u32,
    pub data_block_bytes: u32,
    pub meta_blocks: u64,
    /// Blocks of the data device the pool covers; the first
    /// `FIRST_DATA_BLOCK` hold its label and are never allocated.
    pub data_blocks: u64,
    /// Allocatable now.
    pub meta_free_blocks: u64,
    /// Freed in the open transaction; allocatable after the next commit.
    pub meta_busy_blocks: u64,
    pub data_free_blocks: u64,
    pub data_busy_blocks: u64,
    pub items: u64,
    pub tree_height: u8,
    /// Extents in the last full free-space chain (metadata and data).
    pub freelist_extents: u64,
    /// The free-space log appended since that chain: blocks and entries.
    pub freelog_blocks: u64,
    pub freelog_entries: u64,
    /// Bytes of metadata the next commit will write (dirty blocks); the
    /// caller commits at its own limit.
    pub dirty_bytes: u64,
    /// The open transaction's journal region: its size, the blocks syncs
    /// wrote since the last commit, the bytes of records logged and not yet
    /// synced, and the room left for records (none in a region found at
    /// open: the handle's first sync is a commit, which gives a new one).
    pub journal_blocks: u64,
    pub journal_used_blocks: u64,
    pub journal_pending_bytes: u64,
    pub journal_free_bytes: u64,
}
