mod check;
mod commit;
mod freelist;
mod freelog;
mod handle;
mod journal;
mod label;
pub(crate) mod options;
mod state;
mod superblock;

pub use check::{check_with_data_refs, CheckReport, Device, Problem};
pub use handle::{PendingCommit, PendingSync, Pool, FREES_AFTER_CHANGE_MIN, POOL_VALUE_LEN_MAX};
pub use journal::{JournalReplay, JOURNAL_BLOCKS_MAX, JOURNAL_RECORD_BYTES_MAX};
pub use label::FIRST_DATA_BLOCK;
pub use options::{
    MkfsOptions, OpenOptions, PoolInfo, CACHE_BYTES_DEFAULT, DATA_BLOCK_BYTES,
    META_BLOCK_BYTES_DEFAULT,
};
