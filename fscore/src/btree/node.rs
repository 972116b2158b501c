//! One btree block's payload (seed 002). This module is the contract between
//! the block layout and the tree code; the layout is specified, byte by byte,
//! in `docs/btree-node.md`.
//!
//! A node lives in the payload of a metadata block (the bytes after the
//! generic block header, which the block layer owns). It knows nothing of
//! block numbers, checksums or I/O.
//!
//! - Items sit in an array at the front of the payload, keys inline.
//! - An AVL tree over 16-bit item offsets orders them (no memmove of a sorted
//!   array on insert or delete).
//! - Values are packed from the end of the payload, each followed by a
//!   trailing owner offset so freed value space can be found and compacted
//!   only when fragmented space is needed.
//! - Leaves (level 0) end with a small linear-probing hash table of item
//!   offsets for exact-key lookups at a light load factor.
//! - Internal nodes (level > 0) hold one item per child: key = the greatest
//!   key the child may hold, value = the encoded child reference.
//!
//! Trust model: the tree code runs `NodeAccessor::verify` on every node it
//! reads from disk (after the block layer checked the crc and header), so the
//! other accessors may assume a structurally valid node. They still never
//! read outside the buffer, never panic and always terminate on bad bytes
//! (they may return wrong answers for a node that fails `verify`).

mod accessor;
mod avl;
mod error;
mod hash;
mod iter;
mod layout;
mod mutator;
mod rebuild;
mod values;
mod verify;

#[cfg(test)]
mod tests;

pub(crate) use accessor::NodeAccessor;
pub(crate) use error::NodeError;
pub(crate) use layout::VALUE_LEN_MAX;
pub(crate) use mutator::NodeMut;
