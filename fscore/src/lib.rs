//! fscore: the metadata engine of scoutfs-ublk. A pool is a metadata device
//! holding a copy-on-write btree and the persisted free space of both
//! devices, and a data device whose space fscore allocates for the caller.
//!
//! Module map (see `docs/format.md` for the on-disk specification):
//! - `key`: the fixed 16-byte key every btree item is ordered by.
//! - `storage`: the block-device interface; files and block devices through
//!   O_DIRECT + io_uring, and `SimDisk`, a crashable simulated disk.
//! - `block`: metadata block header and references, the bounded block cache,
//!   and the block store (checked reads, copy-on-write, dirty blocks).
//! - `btree::node`: the layout of one btree block (seed 002).
//! - `tree`: the copy-on-write btree over nodes: insert, delete, lookup,
//!   range both ways, verifier.
//! - `alloc`: extent allocator with busy extents (seed 004).
//! - `pool`: superblock, free-space persistence, commit, check, and the
//!   public `Pool` handle.

pub mod alloc;
mod block;
pub(crate) mod btree;
mod error;
pub mod key;
mod pool;
pub mod storage;
mod tree;

pub use alloc::{Allocator, Extent};
pub use error::{Error, Result};
pub use key::Key;
pub use pool::{
    check_with_data_refs, CheckReport, Device, JournalReplay, MkfsOptions, OpenOptions,
    PendingCommit, PendingSync, Pool, PoolInfo, Problem, CACHE_BYTES_DEFAULT, DATA_BLOCK_BYTES,
    FIRST_DATA_BLOCK, FREES_AFTER_CHANGE_MIN, JOURNAL_BLOCKS_MAX, JOURNAL_RECORD_BYTES_MAX,
    META_BLOCK_BYTES_DEFAULT, POOL_VALUE_LEN_MAX,
};
pub use storage::{FileStorage, SimDisk, Storage};
pub use tree::LevelShape;
