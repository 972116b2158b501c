//! The one error type of node operations.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeError {
    /// The node does not have room for this item, even after compaction.
    Full,
    /// The bytes do not describe a valid node; the string says what is wrong.
    Corrupt(String),
}
