//! The one error type of the crate. Corruption and bad input are values of
//! this type, never panics.

use std::fmt;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device failed a read, write or flush.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A block failed its checks. `block` is the metadata block number
    /// (superblock slots are blocks 0 and 1).
    #[error("corrupt metadata block {block}: {what}")]
    Corrupt { block: u64, what: String },
    /// No free (non-busy) space for the request. Space freed in the open
    /// transaction is busy; `Pool::commit` makes it allocatable again.
    #[error("no space left")]
    NoSpace,
    /// Another handle holds the pool's devices (flock).
    #[error("pool is in use by another process")]
    InUse,
    /// mkfs found a pool on the metadata device, or a pool's data on the
    /// data device, and was not told to overwrite (`MkfsOptions::overwrite`);
    /// the text says which.
    #[error("{0}")]
    PoolExists(String),
    /// The devices do not hold a pool this code can open.
    #[error("bad format: {0}")]
    BadFormat(String),
    /// An earlier write or flush failed; nothing more is written until the
    /// pool is reopened (what landed on disk is unknown).
    /// The text is the first failure's.
    #[error("pool is poisoned by an earlier error ({0}); reopen it")]
    Poisoned(String),
    /// The caller passed something out of bounds (value too long, bad size).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Not `#[from]`: that would also make the io::Error the source, and a
/// report of the error chain (anyhow's `{:#}`) would print its text twice.
impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Error {
        Error::Io(error)
    }
}

impl Error {
    /// An I/O error on the file at `path`, which its text names (an
    /// io::Error alone says "File too large", not which file).
    pub(crate) fn io_at(path: &std::path::Path, error: std::io::Error) -> Error {
        Error::Io(std::io::Error::new(
            error.kind(),
            format!("{}: {error}", path.display()),
        ))
    }

    pub(crate) fn corrupt(block: u64, what: impl fmt::Display) -> Error {
        Error::Corrupt {
            block,
            what: what.to_string(),
        }
    }
}
