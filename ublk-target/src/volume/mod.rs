//! The volume engine: a thin, copy-on-write, checksummed block device whose
//! map lives in fscore's btree (see `docs/volume.md`).

mod acked;
mod coalesce;
mod data_io;
mod gate;
mod handle;
mod in_flight;
mod journal;
mod locks;
mod map;
#[allow(clippy::module_inception)]
mod volume;

pub use coalesce::{CoalescingWrites, MERGED_BYTES_MAX};
pub use data_io::{open_data_device, DataIo, FileDataIo, UringDataIo, POLL_DEFAULT, URING_ENTRIES};
pub use handle::{VolumeHandle, CHUNK_BLOCKS, DISCARD_CHUNK_BLOCKS, READ_RETRIES_MAX};
pub use map::{Mapping, BLOCK_BYTES};
pub use volume::{
    Volume, VolumeError, VolumeOptions, CACHE_BYTES_DEFAULT, COMMIT_INTERVAL_MS_DEFAULT,
    DIRTY_BYTES_MAX_DEFAULT, FLUSH_WAITERS_MAX, RESERVE_BLOCKS_MAX, VOLUME_ID,
};
