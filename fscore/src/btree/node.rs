//! One btree block's payload (seed 002). This file is the contract between
//! the block layout and the tree code; the layout itself is specified in
//! `docs/format.md` ("Btree block").
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
//! other accessors may assume a structurally valid node. They must still not
//! read outside the buffer.

use crate::key::Key;

/// Largest value a leaf item may carry. Bounded so that a split of a full
/// node always leaves room for any insert.
pub(crate) const VALUE_LEN_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeError {
    /// The node does not have room for this item, even after compaction.
    Full,
    /// The bytes do not describe a valid node; the string says what is wrong.
    Corrupt(String),
}

/// Read-only view of a node.
#[derive(Clone, Copy)]
pub(crate) struct NodeAccessor<'a> {
    buf: &'a [u8],
}

/// In-place editor of a dirty node.
pub(crate) struct NodeMut<'a> {
    buf: &'a mut [u8],
}

impl<'a> NodeAccessor<'a> {
    /// Wraps a payload; checks only the node header fields needed to not read
    /// out of bounds. Call `verify` for the full check.
    pub(crate) fn new(buf: &'a [u8]) -> Result<Self, NodeError> {
        let _ = buf;
        todo!("btree node layout")
    }
    /// 0 for leaves.
    pub(crate) fn level(&self) -> u8 {
        todo!()
    }
    pub(crate) fn item_count(&self) -> usize {
        todo!()
    }
    /// Exact lookup (leaves use the hash table, internal nodes the AVL tree).
    pub(crate) fn get(&self, key: &Key) -> Option<&'a [u8]> {
        let _ = key;
        todo!()
    }
    /// The first item with a key >= `key`.
    pub(crate) fn seek_ge(&self, key: &Key) -> Option<(Key, &'a [u8])> {
        let _ = key;
        todo!()
    }
    /// The last item with a key <= `key`.
    pub(crate) fn seek_le(&self, key: &Key) -> Option<(Key, &'a [u8])> {
        let _ = key;
        todo!()
    }
    pub(crate) fn first(&self) -> Option<(Key, &'a [u8])> {
        todo!()
    }
    pub(crate) fn last(&self) -> Option<(Key, &'a [u8])> {
        todo!()
    }
    /// All items in key order.
    pub(crate) fn items(&self) -> impl Iterator<Item = (Key, &'a [u8])> + 'a {
        std::iter::empty()
    }
    /// Bytes used by live items and their values (what a join or refill
    /// decision looks at), and the payload size.
    pub(crate) fn used_bytes(&self) -> usize {
        todo!()
    }
    pub(crate) fn payload_bytes(&self) -> usize {
        self.buf.len()
    }
    /// Below a quarter full: the tree should join or refill from a neighbour.
    pub(crate) fn wants_join(&self) -> bool {
        self.used_bytes() * 4 < self.payload_bytes()
    }
    /// Would an insert of an item with a value of `value_len` bytes fit
    /// (possibly after compaction)?
    pub(crate) fn has_room(&self, value_len: usize) -> bool {
        let _ = value_len;
        todo!()
    }
    /// Checks every invariant: key order, AVL balance and stored heights,
    /// hash table consistency, value owner offsets, free-space accounting.
    pub(crate) fn verify(&self) -> Result<(), NodeError> {
        todo!()
    }
}

impl<'a> NodeMut<'a> {
    /// Formats an empty node at `level` over the whole buffer.
    pub(crate) fn init(buf: &'a mut [u8], level: u8) -> Self {
        let _ = (buf, level);
        todo!()
    }
    /// Wraps an existing node for editing (same checks as `NodeAccessor::new`).
    pub(crate) fn open(buf: &'a mut [u8]) -> Result<Self, NodeError> {
        let _ = buf;
        todo!()
    }
    pub(crate) fn accessor(&self) -> NodeAccessor<'_> {
        NodeAccessor { buf: self.buf }
    }
    /// Inserts or replaces. Returns the old value's length if it replaced.
    /// `Err(Full)` leaves the node unchanged.
    pub(crate) fn insert(&mut self, key: &Key, value: &[u8]) -> Result<Option<usize>, NodeError> {
        let _ = (key, value);
        todo!()
    }
    /// Returns whether the key was present.
    pub(crate) fn delete(&mut self, key: &Key) -> bool {
        let _ = key;
        todo!()
    }
    /// Moves the upper half of the items (by bytes) into `right`, which must
    /// be empty and of the same level. Afterwards every key in self is less
    /// than every key in right.
    pub(crate) fn split_into(&mut self, right: &mut NodeMut<'_>) {
        let _ = right;
        todo!()
    }
    /// Moves items from `src` into `self` until self holds at least
    /// `used_goal` bytes or src is empty. `from_front` takes src's smallest
    /// items (src is self's right neighbour), otherwise its largest (src is
    /// the left neighbour). Returns the number of items moved.
    pub(crate) fn refill_from(&mut self, src: &mut NodeMut<'_>, from_front: bool, used_goal: usize) -> usize {
        let _ = (src, from_front, used_goal);
        todo!()
    }
}
