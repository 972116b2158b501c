mod cache;
mod hash;
pub(crate) mod header;
pub(crate) mod index;
mod mem;
pub(crate) mod store;

pub(crate) use cache::{BlockBuf, SlotId, NO_SLOT};
pub(crate) use header::{BlockKind, BlockRef, HEADER_BYTES};
pub(crate) use store::BlockStore;
