//! fscore: the metadata engine of scoutfs-ublk.
//!
//! Module map (see `docs/format.md` for the on-disk specification):
//! - `key`: the fixed 16-byte key every btree item is ordered by.
//! - `btree::node`: the layout of one btree block (seed 002): item array with
//!   inline keys, an in-block AVL tree over 16-bit offsets, values packed from
//!   the end, and a linear-probing hash table at the end of leaves.

pub mod key;
pub(crate) mod btree;

pub use key::Key;
